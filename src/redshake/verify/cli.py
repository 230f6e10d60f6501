"""``redshake verify`` and ``redshake wait --converged``: argument parsing and the report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .compare import Options
from .side import VerifyError

__all__ = ["main_verify", "main_wait"]

VERIFY_USAGE = """\
redshake verify CONFIG.toml [options]
       redshake verify --source URL --target URL [options]
URL: redis://[user:pass@]host:port[/db][?cluster=true]  (rediss:// for TLS)"""

WAIT_USAGE = "redshake wait --converged CONFIG.toml [--timeout S] [--sample N] [--mode quick|full]"


def _add_compare_options(p: argparse.ArgumentParser, sample_default: int) -> None:
    p.add_argument("--mode", choices=("count", "quick", "full"), default="quick",
                   help="count: DBSIZE per db; quick: exists + type + TTL; full: also the values")
    p.add_argument("--sample", type=int, default=sample_default, metavar="N",
                   help="compare N random keys (RANDOMKEY) instead of all")
    p.add_argument("--ttl-tolerance", type=float, default=2.0, metavar="S",
                   help="TTLs may differ by this many seconds (default 2)")
    p.add_argument("--rate", type=float, default=0.0, metavar="KEYS_PER_S", help="limit the keys read per second")
    p.add_argument("--max-keys", type=int, default=100, metavar="N", help="list at most N differing keys")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--format", choices=("table", "json"), default="table", help="report on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")  # fmt: skip


def _verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="redshake verify", usage=VERIFY_USAGE,
                                description="Compare a copy with its source; exit 0 equal, 1 different, "
                                "2 bad arguments or unusable server.")  # fmt: skip
    p.add_argument("config", nargs="?", help="the sync config (shake.toml / sync.toml)")
    p.add_argument("--source", metavar="URL")
    p.add_argument("--target", metavar="URL")
    p.add_argument("--source-cluster", action="store_true", help="the source URL is a cluster node")
    p.add_argument("--target-cluster", action="store_true", help="the target URL is a cluster node")
    _add_compare_options(p, 0)
    p.add_argument("--recheck", type=int, default=0, metavar="N",
                   help="re-compare differing keys up to N more times (live sync running)")
    p.add_argument("--recheck-delay", type=float, default=5.0, metavar="S", help="seconds before each re-check")
    return p  # fmt: skip


def _options(ns: argparse.Namespace) -> Options:
    if ns.sample < 0 or ns.rate < 0 or ns.ttl_tolerance < 0 or ns.max_keys < 0:
        raise VerifyError("--sample, --rate, --ttl-tolerance and --max-keys must not be negative")
    return Options(
        mode=ns.mode,
        sample=ns.sample,
        ttl_tolerance_ms=int(ns.ttl_tolerance * 1000),
        rate=ns.rate,
        recheck=max(0, getattr(ns, "recheck", 0)),
        recheck_delay=max(0.0, getattr(ns, "recheck_delay", 0.0)),
        max_keys=ns.max_keys,
    )


def load_plan(config: str | None, ns: argparse.Namespace):
    from .run import plan_from_config, plan_from_urls

    if config:
        if getattr(ns, "source", None) or getattr(ns, "target", None):
            raise VerifyError("give either a config file or --source/--target, not both")
        from ..config.loader import ConfigError, load_config

        try:
            cfg = load_config(config)
        except ConfigError as e:
            raise VerifyError(f"config error: {e}") from None
        return plan_from_config(cfg), cfg
    if not (ns.source and ns.target):
        raise VerifyError("give a config file, or both --source URL and --target URL")
    return plan_from_urls(ns.source, ns.target, ns.source_cluster, ns.target_cluster), None


def progress_factory(enabled: bool, stream):
    if not enabled:
        return None
    from ..status.progress import Progress

    return lambda total: Progress(total, "verify", file=stream, unit="keys")


def render(report: dict[str, Any], fmt: str, json_file: str | None, out=None) -> None:
    out = out or sys.stdout
    if json_file:
        with open(json_file, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    if fmt == "json":
        json.dump(report, out, indent=2)
        out.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    con = Console(file=out, highlight=False)
    con.print(f"source {report['source']}  ->  target {report['target']}", markup=False)
    if report["mode"] == "count":
        t = Table(title="keys per db (DBSIZE)")
        for c in ("db", "source", "target", ""):
            t.add_column(c)
        for row in report["per_db"]:
            db = str(row["db"]) if row["db"] == row["target_db"] else f"{row['db']} -> {row['target_db']}"
            t.add_row(db, str(row["source"]), str(row["target"]), "" if row["source"] == row["target"] else "DIFFERENT")
        con.print(t)
    else:
        checked = report["keys_checked"]
        con.print(
            f"mode {report['mode']} (values: {report['value_check']}), "
            f"{checked['source']} source keys and {checked['target']} target keys checked"
            f"{' (sample)' if report['sample'] else ''}, {report['keys_equal']} equal, "
            f"{report['recheck_rounds']} re-check round(s), {report['seconds']} s ({report['keys_per_second']} keys/s)",
            markup=False,
        )
        t = Table(title="differences")
        t.add_column("reason")
        t.add_column("keys", justify="right")
        for r, n in report["differences"].items():
            t.add_row(r, str(n))
        con.print(t)
        if report["skipped"]:
            con.print("not compared: " + ", ".join(f"{k}={v}" for k, v in sorted(report["skipped"].items())), markup=False)
        if report["keys"]:
            kt = Table(title=f"differing keys (first {len(report['keys'])})")
            for c in ("reason", "db", "key", "detail"):
                kt.add_column(c, overflow="fold")
            for d in report["keys"]:
                key = d["key"] if "target_key" not in d else f"{d['key']} -> db {d['target_db']} {d['target_key']}"
                kt.add_row(d["reason"], str(d["db"]), key, d["detail"])
            con.print(kt)
    for n in report["notes"]:
        con.print(f"note: {n}", markup=False)
    con.print(f"result: {report['result'].upper()}", markup=False)


def main_verify(argv: list[str]) -> int:
    p = _verify_parser()
    ns = p.parse_args(argv)
    from .run import verify

    try:
        opts = _options(ns)
        plan, cfg = load_plan(ns.config, ns)
        stream = sys.stderr if ns.format == "json" else sys.stdout
        report, code = verify(plan, opts, None if ns.no_progress else progress_factory(True, stream))
    except VerifyError as e:
        sys.stderr.write(f"verify: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("verify: interrupted, incomplete\n")
        return 2
    if cfg is not None:  # the running sync's status page and /metrics show the last result
        from ..status.server import save_verify_result

        save_verify_result(cfg.advanced.dir, report)
    render(report, ns.format, ns.json)
    return code


def main_wait(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="redshake wait", usage=WAIT_USAGE,
                                description="Wait until a running live sync has caught up and a verify "
                                "sample passes: exit 0 converged, 1 timeout, 2 bad config.")  # fmt: skip
    p.add_argument("config")
    p.add_argument("--converged", action="store_true", required=True, help="wait for convergence")
    _add_compare_options(p, 1000)
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up after S seconds (default 300)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between checks")
    ns = p.parse_args(argv)
    from .wait import wait_converged

    try:
        opts = _options(ns)
        plan, cfg = load_plan(ns.config, ns)
        code, report = wait_converged(cfg, plan, opts, ns.timeout, ns.interval)
        if cfg is not None and report is not None:
            from ..status.server import save_verify_result

            save_verify_result(cfg.advanced.dir, report)
    except VerifyError as e:
        sys.stderr.write(f"wait: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("wait: interrupted\n")
        return 1
    if report is not None:
        render(report, ns.format, ns.json, sys.stdout)
    return code
