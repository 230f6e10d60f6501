"""``redshake wait --converged``: the live sync has caught up and a verify sample passes.

Caught up means, for every source the running redshake reads: the status JSON (at
``advanced.status_port``) says ``consistent`` with ``lag_bytes`` 0 and an applied offset at
or past the source's ``master_repl_offset`` (same replication id); without a status port,
the checkpoint files in ``advanced.dir`` are compared with the sources the same way.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..config.schema import Config
from ..repl.checkpoint import PHASE_AOF, load_checkpoint
from ..resp.conn import ConnError, ReplyError, connect
from ..resp.server import read_info
from .compare import Options
from .run import Plan, verify
from .side import VerifyError

__all__ = ["wait_converged", "lag_state"]


def _source_offset(plan: Plan, address: str) -> tuple[str, int]:
    """(master_replid, master_repl_offset) of the source server at ``address``."""
    ep = plan.source
    with connect(address, **ep.connect_options(5.0)) as c:
        info = read_info(c, "replication")
    return info.get("master_replid", ""), int(info.get("master_repl_offset", "0"))


def _status_doc(cfg: Config) -> dict[str, Any]:
    adv = cfg.advanced
    host = adv.status_bind if adv.status_bind not in ("", "0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{host}:{adv.status_port}/", timeout=5) as r:
        return json.loads(r.read())


def lag_state(cfg: Config, plan: Plan) -> tuple[bool, str]:
    """(caught up?, what is still off)."""
    if cfg.reader_type != "sync":
        return True, ""  # a scan reader has no replication offset: the sample decides
    if cfg.advanced.status_port:
        try:
            doc = _status_doc(cfg)
        except (OSError, ValueError) as e:
            return False, f"status port {cfg.advanced.status_port} not answering ({e})"
        readers = doc.get("reader") or []
        readers = readers if isinstance(readers, list) else [readers]
        if not doc.get("consistent"):
            return False, "status: consistent=false (" + ", ".join(
                f"{r.get('address')}: {r.get('status')}, lag_bytes={r.get('lag_bytes')}" for r in readers
            ) + ")"
        positions = [(r.get("address", ""), r.get("replid", ""), int(r.get("aof_applied_offset", -1))) for r in readers]
    else:
        cps = sorted(Path(cfg.advanced.dir).glob("**/checkpoint.json"))
        if not cps:
            return False, f"no checkpoint in {cfg.advanced.dir} yet (and no status_port)"
        positions = []
        for path in cps:
            try:
                cp = load_checkpoint(path)
            except ValueError as e:
                return False, str(e)
            if cp is None or cp.phase != PHASE_AOF:
                return False, f"{path}: the snapshot is still being applied"
            positions.append((cp.source, cp.replid, cp.offset))
    for address, replid, applied in positions:
        try:
            sid, soff = _source_offset(plan, address)
        except (ConnError, ReplyError, ValueError) as e:
            return False, f"source {address}: {e}"
        if replid and sid != replid:
            return False, f"source {address}: replication id {sid} differs from the sync's {replid}"
        if applied < soff:
            return False, f"source {address}: applied offset {applied} < master_repl_offset {soff} ({soff - applied} bytes behind)"
    return True, ""


def wait_converged(
    cfg: Config | None, plan: Plan, opts: Options, timeout: float, interval: float
) -> tuple[int, dict[str, Any] | None]:
    if cfg is None:
        raise VerifyError("wait --converged needs the sync's config file")
    deadline = time.monotonic() + timeout
    report = None
    while True:
        ok, why = lag_state(cfg, plan)
        if ok:
            try:
                report, code = verify(plan, opts)
            except VerifyError as e:  # a server unreachable for a moment: try again
                code, why = 2, f"verify sample failed: {e}"
            else:
                if code == 0:
                    sys.stderr.write("converged: caught up and the verify sample is equal\n")
                    return 0, report
                why = f"caught up, but {report['total_differences']} sampled key(s) differ"
        if time.monotonic() >= deadline:
            sys.stderr.write(f"not converged after {timeout:g} s: {why}\n")
            return 1, report
        time.sleep(max(0.05, min(interval, deadline - time.monotonic())))
