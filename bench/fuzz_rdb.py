"""Fuzz the RDB restore with mutated corpus files, each through the real CLI into a real
server: one changed byte (or a record's type byte set to one no server knows), with the
CRC64 recomputed, zeroed or left stale. Every input must end as either

* ok-restored: exit 0 and the target equal (key by key) to a server that loaded the same
  file natively, or
* ok-refused: exit 2 with nothing written;

anything else (a traceback, a hang, exit 1, keys written before a refusal, exit 0 for a file
the server refuses or loads differently) is counted as a failure and kept for inspection.

``--verify`` is the ``[rdb_reader] verify`` mode used for every restore (auto, checksum or
full); the report gives the count per outcome and per (mutation, checksum, outcome).

    python bench/fuzz_rdb.py [--n 1000] [--seed 1] [--server redis-7.0] [--verify full]
                             [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import kill_all, start_server

from helpers import assert_same_data  # noqa: E402 (tests/ is on the path through common)
from rdbfuzz import cases, judge  # noqa: E402

OK = ("ok-restored", "ok-refused")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--server", default="redis-7.0")
    ap.add_argument("--verify", default="auto", choices=("auto", "checksum", "full"))
    ap.add_argument("--keep", type=Path, default=None, help="where failing inputs are saved")
    a = ap.parse_args()
    keep = a.keep or Path(tempfile.mkdtemp(prefix="redshake-fuzz-failures-"))
    keep.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="redshake-fuzz-"))
    counts: Counter[str] = Counter()
    by_kind: Counter[tuple[str, str, str]] = Counter()
    t0 = time.monotonic()
    target = start_server(a.server)
    try:
        for i, case in enumerate(cases(a.n, a.seed, a.server)):
            if not target.alive():
                target.cleanup()
                target = start_server(a.server)
            res = judge(case, target, tmp, a.server, start_server, assert_same_data, a.verify)
            counts[res] += 1
            by_kind[(case.what, case.crc, res)] += 1
            if res not in OK:
                (keep / f"{i:05d}-{res}-{case.name.replace('/', '_')}").write_bytes(case.data)
                print(f"{res}: {case.name}", flush=True)
            if (i + 1) % 100 == 0:
                print(f"{i + 1} inputs: {dict(counts)}", flush=True)
    finally:
        target.cleanup()
        kill_all()
    print(f"\n{a.n} inputs in {time.monotonic() - t0:.0f}s against {a.server}, verify={a.verify}")
    for k, v in sorted(counts.items()):
        print(f"  {k:24s} {v}")
    print("by mutation (what, crc, result):")
    for k, v in sorted(by_kind.items()):
        print(f"  {k}: {v}")
    bad = sum(v for k, v in counts.items() if k not in OK)
    print(f"failures: {bad} (inputs kept in {keep})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
