"""Verify benchmark: ``redshake verify --mode full`` over the 2 M-key set loaded by two
redis-7.0 servers, against an anchor measured in the same run: a pipelined DUMP loop over
the same source keys (SCAN + DUMP, batches of the same size as verify's).

    python bench/verify.py [--scale 1.0] [--modes quick,full,pages,cross,cross-pages]

``pages`` is full mode with DEBUG disabled on both servers; ``cross`` / ``cross-pages`` the
same with a Valkey 8.1 target (different builds: no DUMP shortcut, so DEBUG DIGEST-VALUE,
or with ``cross-pages`` every value read page by page). Prints
keys/s (source keys per second of wall time; verify also scans the target) for each mode
and the anchor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, dataset, kill_all, run_measured, standard_2m, start_server

sys.path.insert(0, str(ROOT / "src"))

from redshake.resp.conn import connect  # noqa: E402
from redshake.verify.compare import BATCH  # noqa: E402


def load(rdb: Path, args: list[str], name: str = "redis-7.0"):
    d = Path(tempfile.mkdtemp(prefix="redshake-bench-verify-"))
    shutil.copy(rdb, d / "dump.rdb")
    return start_server(name, dir=d, dbfilename="dump.rdb", args=args, timeout=600)


def dump_anchor(address: str) -> tuple[float, int]:
    """Seconds and key count of SCAN + pipelined DUMP (BATCH keys a pipeline) of db 0."""
    t = time.monotonic()
    n = 0
    with connect(address) as c:
        cursor = b"0"
        buf: list[bytes] = []
        while True:
            cursor, keys = c.call("SCAN", cursor, "COUNT", 1000)
            buf.extend(keys)
            if len(buf) >= BATCH or (cursor == b"0" and buf):
                c.pipeline([("DUMP", k) for k in buf])
                n += len(buf)
                buf = []
            if cursor == b"0":
                break
    return time.monotonic() - t, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--modes", default="quick,full,pages")
    ns = ap.parse_args()
    name = "standard_2m" if ns.scale == 1.0 else f"standard_2m_x{ns.scale}"
    rdb = dataset(name, standard_2m(ns.scale))
    try:
        for mode in ns.modes.split(","):
            extra = ["--enable-debug-command", "no"] if mode.endswith("pages") else []
            target = "valkey-8.1" if mode.startswith("cross") else "redis-7.0"
            src, dst = load(rdb, extra), load(rdb, extra, target)
            keys = src.client().dbsize()
            anchor_s, anchor_n = dump_anchor(src.address)
            out = Path(tempfile.mkdtemp(prefix="redshake-bench-verify-")) / "report.json"
            argv = [sys.executable, "-m", "redshake.cli", "verify", "--source", f"redis://{src.address}",
                    "--target", f"redis://{dst.address}", "--mode", "quick" if mode == "quick" else "full",
                    "--no-progress", "--json", str(out)]  # fmt: skip
            secs, code, rss = run_measured(argv)
            if code != 0:
                raise SystemExit(f"verify exited with {code} on equal copies")
            rep = json.loads(out.read_text())
            assert rep["keys_checked"]["source"] == keys, rep["keys_checked"]
            print(
                f"{mode:11s}: {keys} keys in {secs:.1f} s = {keys / secs:,.0f} source keys/s "
                f"(values: {rep['value_check']}, peak RSS {rss / 2**20:.0f} MiB); "
                f"anchor SCAN+DUMP: {anchor_n / anchor_s:,.0f} keys/s; ratio {anchor_s / secs:.2f}",
                flush=True,
            )
            src.cleanup()
            dst.cleanup()
    finally:
        kill_all()


if __name__ == "__main__":
    main()
