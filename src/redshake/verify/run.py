"""One verification run: endpoints from a config or URLs, then count / quick / full."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..config.schema import Config
from ..resp.conn import ConnError, ReplyError
from .compare import REASONS, Diff, Options, Verifier, transform_mapper
from .side import Endpoint, Side, VerifyError

__all__ = ["Plan", "plan_from_config", "plan_from_urls", "verify"]


@dataclass
class Plan:
    """What to compare: both endpoints, the key mapping (filter + function), the db map."""

    source: Endpoint
    target: Endpoint
    chain: Any = None  # TransformChain or None
    db_map: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ignore_target: set[tuple[int, bytes]] = field(default_factory=set)  # (db, key) not ours
    # redshake's own bookkeeping keys (position and live markers, either side): not data
    ignore_prefixes: tuple[bytes, ...] = ()
    rdb_path: str = ""  # the source is this RDB file (quick mode only)


def _endpoint(sec: Any, what: str) -> Endpoint:
    address = sec.address
    if sec.sentinel.enabled:
        from ..resp.server import SentinelError, resolve_from_config

        try:
            address = resolve_from_config(sec.sentinel, what)
        except (SentinelError, ConnError) as e:
            raise VerifyError(f"{what}: {e}") from None
    return Endpoint(
        address=address,
        cluster=sec.cluster,
        username=sec.username,
        password=sec.password,
        tls=sec.tls,
        tls_verify=not sec.tls_skip_verify,
        tls_config=sec.tls_config.as_dict(),
    )


def plan_from_config(cfg: Config) -> Plan:
    """The source and target of a sync config; refuses file readers and writers."""
    if cfg.reader_type not in ("sync", "scan", "rdb"):
        raise VerifyError(
            f"verify needs a live source server or an RDB file: this config has a [{cfg.reader_type}_reader]; "
            "restore the file into a scratch server and use --source URL --target URL instead"
        )
    if cfg.writer_type != "redis":
        raise VerifyError("verify needs a [redis_writer] target: this config writes to a file")
    if cfg.reader_type == "rdb":
        src = Endpoint(address=f"file {cfg.reader.filepath}")
    else:
        src = _endpoint(cfg.reader, "source")
    if cfg.reader_type == "scan" and cfg.reader.dbs:
        src.dbs = list(cfg.reader.dbs)
    dst = _endpoint(cfg.writer, "target")
    from ..transform import TransformError, build_transform

    try:
        chain = build_transform(cfg)
    except TransformError as e:
        raise VerifyError(str(e)) from None
    plan = Plan(src, dst, chain, rdb_path=cfg.reader.filepath if cfg.reader_type == "rdb" else "")
    if cfg.advanced.exactly_once_key:  # redshake's own marker on the target
        plan.ignore_target.add((cfg.advanced.exactly_once_db, cfg.advanced.exactly_once_key.encode()))
        # (the markers are "<key>:<source>", "<key>:<source>:{slot tag}" on a cluster)
        plan.ignore_prefixes += (cfg.advanced.exactly_once_key.encode() + b":",)
    if cfg.reader_type == "sync":
        from ..guard import LIVE_PREFIX

        plan.ignore_prefixes += (LIVE_PREFIX.encode(),)
    if chain is not None and chain.function is not None:
        plan.notes.append(
            "a Lua function is configured: keys are mapped through it (as for the snapshot's RESTORE); "
            "extra keys on the target are not looked for"
        )
    return plan


def plan_from_urls(source: str, target: str, source_cluster: bool, target_cluster: bool) -> Plan:
    from .side import parse_url

    src = parse_url(source, source_cluster)
    dst = parse_url(target, target_cluster)
    db_map: dict[int, int] = {}
    if src.db is not None and dst.db is None:
        dst.db = src.db
    elif dst.db is not None and src.db is None:
        src.db = dst.db
    if src.db is not None and dst.db is not None and src.db != dst.db:
        db_map[src.db] = dst.db
    return Plan(src, dst, None, db_map)


def _count(src: Side, dst: Side, plan: Plan, opts: Options) -> dict[str, Any]:
    if plan.chain is not None:
        raise VerifyError("--mode count cannot apply [filter] rules or a function: use --mode quick")
    s_nodes = src.dbsizes()
    d_nodes = dst.dbsizes()
    dbs = sorted(set(src.dbs()) | {k for k, v in plan.db_map.items()} | set(_inverse(dst.dbs(), plan)))
    per_db = []
    diffs = []
    for db in dbs:
        tdb = plan.db_map.get(db, db)
        a = sum(n.get(db, 0) for n in s_nodes)
        b = sum(n.get(tdb, 0) for n in d_nodes)
        per_db.append({"db": db, "target_db": tdb, "source": a, "target": b})
        if a != b:
            diffs.append({"reason": "count", "db": db, "key": "", "detail": f"{a} keys on the source, {b} on the target"})
    return {
        "per_db": per_db,
        "per_node": {
            "source": {c.address: per for c, per in zip(src.nodes, s_nodes, strict=True)},
            "target": {c.address: per for c, per in zip(dst.nodes, d_nodes, strict=True)},
        },
        "keys": diffs,
        "differences": {"count": len(diffs)},
    }


def _inverse(tdbs: list[int], plan: Plan) -> list[int]:
    inv = {v: k for k, v in plan.db_map.items()}
    if plan.source.db is not None:
        return [inv.get(d, d) for d in tdbs if inv.get(d, d) == plan.source.db]
    return [inv.get(d, d) for d in tdbs]


def verify(plan: Plan, opts: Options, progress_factory=None) -> tuple[dict[str, Any], int]:
    """Run one verification; returns (report, exit code 0 equal / 1 different).
    Raises VerifyError (exit 2) when a server is unusable."""
    if plan.rdb_path:
        return _verify_file(plan, opts, progress_factory)
    t0 = time.monotonic()
    try:
        src = Side(plan.source, "source")
    except (ConnError, ReplyError) as e:
        raise VerifyError(f"source {plan.source.address}: {e}") from None
    try:
        dst = Side(plan.target, "target")
    except (ConnError, ReplyError) as e:
        src.close()
        raise VerifyError(f"target {plan.target.address}: {e}") from None
    report: dict[str, Any] = {
        "mode": opts.mode,
        "source": plan.source.describe(),
        "target": plan.target.describe(),
        "sample": opts.sample or None,
        "notes": list(plan.notes),
    }
    progress = None
    try:
        if opts.mode == "count":
            report.update(_count(src, dst, plan, opts))
            n_diff = len(report["keys"])
            if plan.ignore_prefixes and n_diff:
                report["notes"].append(
                    "counts include redshake's own marker keys ("
                    + ", ".join(p.decode("utf-8", "replace") + "*" for p in plan.ignore_prefixes)
                    + ": one per source shard in the marker db); the other modes leave them out"
                )
        else:
            src_dbs = src.dbs()
            dst_dbs = dst.dbs()
            if plan.source.db is None and plan.target.db is None and plan.source.dbs:
                dst_dbs = [d for d in dst_dbs if d in plan.source.dbs]
            opts.check_extra = opts.check_extra and (plan.chain is None or plan.chain.function is None)
            if opts.mode == "full" and not (src.debug_everywhere and dst.debug_everywhere):
                report["notes"].append(
                    "DEBUG DIGEST-VALUE refused on "
                    + " and ".join(n for n, s in (("the source", src), ("the target", dst)) if not s.debug_everywhere)
                    + ": values compared page by page"
                )
            total = opts.sample * (2 if opts.check_extra else 1) if opts.sample else (
                sum(src.dbsize(d) for d in src_dbs) + (sum(dst.dbsize(d) for d in dst_dbs) if opts.check_extra else 0)
            )
            if progress_factory is not None:
                progress = progress_factory(total)
            mapper = transform_mapper(plan.chain, plan.db_map)
            extra_filter = None
            ignore = plan.ignore_target
            prefixes = plan.ignore_prefixes
            if prefixes:
                mapped = mapper

                def mapper(db: int, key: bytes):  # (on the source side too: a DR pair's old markers)
                    return None if key.startswith(prefixes) else mapped(db, key)

            if plan.chain is not None or ignore or prefixes:  # target keys the filter would not copy are not ours

                def extra_filter(db: int, key: bytes) -> bool:
                    return (db, key) not in ignore and mapper(db, key) is not None

            v = Verifier(
                src, dst, opts, mapper,
                extra_filter=extra_filter, inverse_db={t: s for s, t in plan.db_map.items()}, progress=progress,
            )  # fmt: skip
            diffs = v.run(src_dbs, dst_dbs)
            st = v.stats
            report.update(
                {
                    "dbs": {"source": src_dbs, "target": dst_dbs},
                    "keys_checked": {"source": st.checked_source, "target": st.checked_target},
                    "keys_equal": st.equal,
                    "differences": {r: st.differences[r] for r in REASONS},
                    "skipped": st.skipped,
                    "recheck_rounds": v.rechecks,
                    "keys": [d.as_json() for d in diffs[: opts.max_keys]],
                    "extra_checked": opts.check_extra,
                    "value_check": (
                        "none" if opts.mode == "quick"
                        else ("dump, " if v.dump_first else "")
                        + ("digest" if src.debug_everywhere and dst.debug_everywhere else "pages")
                    ),
                }
            )  # fmt: skip
            report["notes"].extend(v.notes)
            n_diff = sum(st.differences.values())
    except (ConnError, ReplyError) as e:
        raise VerifyError(f"verification stopped, incomplete: {e}") from None
    finally:
        if progress is not None:
            progress.close()
        src.close()
        dst.close()
    return _finish(report, n_diff, t0)


def _finish(report: dict[str, Any], n_diff: int, t0: float) -> tuple[dict[str, Any], int]:
    elapsed = time.monotonic() - t0
    report["seconds"] = round(elapsed, 3)
    checked = report.get("keys_checked", {})
    n_keys = sum(checked.values()) if checked else 0
    report["keys_per_second"] = round(n_keys / elapsed, 1) if elapsed > 0 else 0
    report["total_differences"] = n_diff
    report["result"] = "different" if n_diff else "equal"
    return report, 1 if n_diff else 0


def _verify_file(plan: Plan, opts: Options, progress_factory) -> tuple[dict[str, Any], int]:
    """An [rdb_reader] config: the file's keys, types and expiries against the target; keys
    on the target beyond the file's are counted per db (DBSIZE), not named."""
    from .rdbfile import compare_file

    if opts.mode != "quick" or opts.sample:
        raise VerifyError(
            "with an RDB file as the source only --mode quick over every key is possible "
            "(values are not decoded); load the file into a scratch server and compare with URLs for more"
        )
    t0 = time.monotonic()
    try:
        dst = Side(plan.target, "target")
    except (ConnError, ReplyError) as e:
        raise VerifyError(f"target {plan.target.address}: {e}") from None
    report: dict[str, Any] = {
        "mode": opts.mode, "source": plan.source.address, "target": plan.target.describe(),
        "sample": None, "notes": list(plan.notes),
    }  # fmt: skip
    progress = progress_factory(None) if progress_factory is not None else None
    try:
        v = Verifier(None, dst, opts, transform_mapper(plan.chain, plan.db_map), progress=progress)  # type: ignore[arg-type]
        diffs, found = compare_file(v, plan.rdb_path)
        for d in diffs:
            v.stats.differences[d.reason] += 1
        dbs = sorted(set(found) | set(dst.dbs()))
        if plan.chain is None:
            for tdb in dbs:
                beyond = dst.dbsize(tdb) - found.get(tdb, 0)
                if beyond > 0:
                    v.stats.differences["extra"] += beyond
                    diffs.append(Diff("extra", tdb, b"", f"{beyond} keys on the target that the file does not have "
                                      "(counted with DBSIZE, not named)", tdb, b""))  # fmt: skip
        else:
            report["notes"].append("a [filter] or function is configured: keys on the target beyond the file's are not counted")
    except (ConnError, ReplyError) as e:
        raise VerifyError(f"verification stopped, incomplete: {e}") from None
    finally:
        if progress is not None:
            progress.close()
        dst.close()
    st = v.stats
    report.update(
        {
            "dbs": {"source": sorted({d.db for d in diffs} | set(found)), "target": dbs},
            "keys_checked": {"source": st.checked_source, "target": 0},
            "keys_equal": st.equal,
            "differences": {r: st.differences[r] for r in REASONS},
            "skipped": st.skipped,
            "recheck_rounds": 0,
            "keys": [d.as_json() for d in diffs[: opts.max_keys]],
            "extra_checked": plan.chain is None,
            "value_check": "none",
        }
    )
    return _finish(report, sum(st.differences.values()), t0)
