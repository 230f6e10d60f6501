"""Parse-and-decode benchmark: every value of the same RDB file decoded by redshake,
rdbtools and rdb-py (both on PyPI), in one run. Prints seconds and ratios.

    python bench/rdb_parse.py [--scale 0.1] [--file some.rdb]

The default data set is the restore benchmark's 2,000,000-key set scaled to 10% (rdbtools
needs minutes for the full one), written by Redis 6.0 because rdbtools reads RDB <= 9 only;
--scale 1 runs the full set.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import dataset, kill_all, standard_2m


def parse_redshake(path: Path) -> int:
    from redshake.rdb import records as R
    from redshake.rdb.parser import RdbParser
    from redshake.rdb.values import decode_value

    p = RdbParser()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(256 * 1024):
            p.feed(chunk)
            for rec in p.records():
                if type(rec) is R.KeyValue:
                    decode_value(rec.type, rec.raw, valkey=p.is_valkey)
                    n += 1
    p.finish()
    return n


def parse_rdbtools(path: Path) -> int:
    from rdbtools import RdbCallback, RdbParser

    class Count(RdbCallback):
        def __init__(self) -> None:
            super().__init__(string_escape=None)
            self.n = 0

        def set(self, key, value, expiry, info):
            self.n += 1

        def start_hash(self, key, length, expiry, info):
            self.n += 1

        def start_set(self, key, cardinality, expiry, info):
            self.n += 1

        def start_list(self, key, expiry, info):
            self.n += 1

        def start_sorted_set(self, key, length, expiry, info):
            self.n += 1

    cb = Count()
    RdbParser(cb).parse(str(path))
    return cb.n


def parse_rdbpy(path: Path) -> int:
    import rdb

    n = 0
    for item in rdb.RdbDecoder(str(path)):
        if item["type"] in ("string", "hash", "list", "set", "sorted_set"):
            n += 1
    return n


def timed(fn, path: Path) -> tuple[float, int]:
    t = time.perf_counter()
    n = fn(path)
    return time.perf_counter() - t, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--file", type=Path)
    a = ap.parse_args()
    try:
        # built by Redis 6.0 (RDB 9): rdbtools cannot read RDB 10+
        path = a.file or dataset(f"std2m-x{a.scale:g}-rdb9", standard_2m(a.scale), server="redis-6.0")
    finally:
        kill_all()
    print(f"file: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    results = {}
    for name, fn in (("redshake", parse_redshake), ("rdb-py", parse_rdbpy), ("rdbtools", parse_rdbtools)):
        try:
            secs, n = timed(fn, path)
        except ImportError as e:
            print(f"{name:9s}: not installed ({e})")
            continue
        results[name] = secs
        print(f"{name:9s}: {secs:8.2f} s  {n} keys  {n / secs:,.0f} keys/s")
    if "redshake" in results:
        for other in ("rdbtools", "rdb-py"):
            if other in results:
                print(f"{other} / redshake = {results[other] / results['redshake']:.2f} x")


if __name__ == "__main__":
    main()
