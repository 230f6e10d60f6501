"""Restore benchmark: redshake restoring an RDB into an empty redis-7.0 vs redis-server
loading the same file natively, in one run. Prints both, the ratio and redshake's peak RSS.

    python bench/rdb_restore.py [--scale 1.0] [--repeat 3] [--bighash 10000000]

Each measurement is repeated (native and redshake alternating) and the median printed, as
single runs on a shared machine vary by up to 2x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from common import (
    dataset,
    fill,
    kill_all,
    native_load_seconds,
    run_measured,
    standard_2m,
    start_server,
)


def restore_seconds(rdb: Path) -> tuple[float, int]:
    target = start_server("redis-7.0")
    try:
        work = Path(tempfile.mkdtemp(prefix="redshake-bench-"))
        cfg = work / "shake.toml"
        cfg.write_text(
            f'[rdb_reader]\nfilepath = "{rdb}"\n[redis_writer]\naddress = "{target.address}"\n'
            f'[advanced]\ndir = "{work / "data"}"\nlog_interval = 0\n'
        )
        secs, code, rss = run_measured([sys.executable, "-m", "redshake.cli", str(cfg)])
        if code != 0:
            raise SystemExit(f"redshake failed with exit code {code}")
        keys = sum(int(v["keys"]) for v in target.info("keyspace").values())
        print(f"  target holds {keys} keys")
        return secs, rss
    finally:
        target.cleanup()


def compare(rdb: Path, repeat: int) -> tuple[float, float, int]:
    natives, ours, rss = [], [], 0
    for i in range(repeat):
        natives.append(native_load_seconds(rdb))
        secs, r = restore_seconds(rdb)
        ours.append(secs)
        rss = max(rss, r)
        print(f"  run {i + 1}: native {natives[-1]:.2f} s, redshake {secs:.2f} s", flush=True)
    return statistics.median(natives), statistics.median(ours), rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 2,000,000-key data set")
    ap.add_argument("--bighash", type=int, default=0, help="also restore a file holding one hash of N fields")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    try:
        rdb = dataset(f"std2m-x{a.scale:g}", standard_2m(a.scale))
        print(f"data set: {rdb} ({rdb.stat().st_size / 1e6:.1f} MB)")
        native, secs, rss = compare(rdb, a.repeat)
        print(f"redis-server 7.0 native load : {native:8.2f} s (median)")
        print(f"redshake restore             : {secs:8.2f} s (median)   peak RSS {rss / 1e6:.0f} MB")
        print(f"ratio redshake / native      : {secs / native:8.2f} x   (target <= 2.0)")
        if a.bighash:
            n = a.bighash
            big = dataset(f"bighash-{n}", lambda c: fill(c, "hash", "bighash", 1, n, batch=1))
            print(f"\none hash of {n} fields: {big} ({big.stat().st_size / 1e6:.1f} MB)")
            native, secs, rss = compare(big, a.repeat)
            print(
                f"native load {native:.2f} s, redshake {secs:.2f} s (ratio {secs / native:.2f}), "
                f"peak RSS {rss / 1e6:.0f} MB (target <= 300)"
            )
    finally:
        kill_all()


if __name__ == "__main__":
    main()
