"""`make demo`: a real restore on this machine, end to end.

Starts a source Redis with sample data of every type, saves it, starts an empty target,
runs `redshake` on a generated shake.toml (rdb_reader -> redis_writer), then compares the two
servers with DEBUG DIGEST and prints the result. Servers are stopped at the end.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from datagen import populate  # noqa: E402
from servers import kill_all, start_server  # noqa: E402


def _keyspace(server) -> str:
    ks = server.info("keyspace")
    return ", ".join(f"{db}: {v['keys']} keys" for db, v in sorted(ks.items())) or "empty"


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="redshake-demo-"))
    try:
        print("== starting a source Redis 7.0 and filling it with sample data of every type")
        src = start_server("redis-7.0", dir=work / "source")
        populate(src.client(), src.version, src.is_valkey)
        # plus half a million small strings, so the restore runs long enough to show progress
        src.client().execute_command("DEBUG", "POPULATE", 500_000, "demo", 64)
        src.client().save()
        rdb = src.dir / "dump.rdb"
        print(f"   source {src.address}: {_keyspace(src)}; RDB {rdb} ({rdb.stat().st_size / 1e6:.1f} MB)")
        dst = start_server("redis-7.0", dir=work / "target")
        print(f"== empty target {dst.address}")
        cfg = work / "shake.toml"
        cfg.write_text(
            f'[rdb_reader]\nfilepath = "{rdb}"\n\n'
            f'[redis_writer]\naddress = "{dst.address}"\n\n'
            f'[advanced]\ndir = "{work / "data"}"\nlog_interval = 1\n'
        )
        print(f"== redshake {cfg}\n")
        print(cfg.read_text())
        rc = subprocess.call([sys.executable, "-m", "redshake.cli", str(cfg)])
        print(f"\n== redshake exited with {rc}")
        a = src.client().execute_command("DEBUG", "DIGEST")  # covers every database
        b = dst.client().execute_command("DEBUG", "DIGEST")
        print(f"   source {_keyspace(src)}, DEBUG DIGEST {a.decode()}")
        print(f"   target {_keyspace(dst)}, DEBUG DIGEST {b.decode()}")
        ok = rc == 0 and a == b
        print("== demo " + ("succeeded: the target holds exactly the source's data" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(main())
