"""Full-sync benchmark: a native replica's full sync (REPLICAOF) vs redshake's full sync
(sync_reader, sync_aof = false) from the same source into an empty redis-7.0, in one run.
Prints both times, the ratio and redshake's peak RSS.

    python bench/full_sync.py [--scale 1.0] [--repeat 1]

Both are timed from the start of the sync until the replica / target holds the whole data
set (native: master_link_status up and loading done; redshake: process exit).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import OUT, dataset, kill_all, run_measured, standard_2m, start_server


def source_from(rdb: Path):
    d = OUT / "full-sync-source"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    shutil.copy(rdb, d / "dump.rdb")
    return start_server("redis-7.0", dir=d, dbfilename="dump.rdb", timeout=600)


def keys_of(server) -> int:
    return sum(int(v["keys"]) for v in server.info("keyspace").values())


def native_seconds(src) -> float:
    rep = start_server("redis-7.0")
    try:
        c = rep.client()
        t = time.monotonic()
        c.execute_command("REPLICAOF", src.host, src.port)
        while True:
            info = c.info("replication")
            if info.get("master_link_status") == "up" and not int(info.get("master_sync_in_progress", 0)):
                break
            time.sleep(0.02)
        secs = time.monotonic() - t
        print(f"  native replica holds {keys_of(rep)} keys")
        return secs
    finally:
        rep.cleanup()


def redshake_seconds(src) -> tuple[float, int]:
    target = start_server("redis-7.0")
    try:
        work = Path(tempfile.mkdtemp(prefix="redshake-bench-"))
        cfg = work / "shake.toml"
        cfg.write_text(
            # the native replica announces capa eof: let the source send to both alike
            f'[sync_reader]\naddress = "{src.address}"\nsync_aof = false\ntry_diskless = true\n'
            f'[redis_writer]\naddress = "{target.address}"\n'
            f'[advanced]\ndir = "{work / "data"}"\nlog_interval = 0\n'
        )
        secs, code, rss = run_measured([sys.executable, "-m", "redshake.cli", str(cfg)])
        if code != 0:
            raise SystemExit(f"redshake failed with exit code {code}")
        print(f"  redshake target holds {keys_of(target)} keys")
        shutil.rmtree(work, ignore_errors=True)
        return secs, rss
    finally:
        target.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 2,000,000-key data set")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    try:
        rdb = dataset(f"std2m-x{a.scale:g}", standard_2m(a.scale))
        print(f"data set: {rdb} ({rdb.stat().st_size / 1e6:.1f} MB)", flush=True)
        src = source_from(rdb)
        print(f"source holds {keys_of(src)} keys", flush=True)
        natives, ours, rss = [], [], 0
        for i in range(a.repeat):
            natives.append(native_seconds(src))
            secs, r = redshake_seconds(src)
            ours.append(secs)
            rss = max(rss, r)
            print(f"  run {i + 1}: native {natives[-1]:.2f} s, redshake {secs:.2f} s", flush=True)
        native, secs = statistics.median(natives), statistics.median(ours)
        print(f"native replica full sync : {native:8.2f} s")
        print(f"redshake full sync       : {secs:8.2f} s   peak RSS {rss / 1e6:.0f} MB")
        print(f"ratio redshake / native  : {secs / native:8.2f} x   (target <= 1.5)")
    finally:
        kill_all()
        shutil.rmtree(OUT / "full-sync-source", ignore_errors=True)


if __name__ == "__main__":
    main()
