"""`make demo`: redshake's main job, a LIVE sync, end to end on this machine.

Starts a source Redis with sample data of every type and an empty target, keeps writing to
the source (mixed commands over several dbs, TTLs, transactions), runs `redshake` on a
generated shake.toml (sync_reader -> redis_writer, status port on) and prints, every second,
what the status endpoint says: phase, applied offset, lag in bytes and seconds, rates. Then
the writes stop, `redshake wait --converged` waits until the target has caught up and
`redshake verify --mode full` compares the two servers key by key. Servers are stopped at the
end. `python scripts/demo.py --restore` runs the older demo: an RDB file restore.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from datagen import populate  # noqa: E402
from servers import free_port, kill_all, start_server  # noqa: E402

LOAD_SECONDS = 8


def _keyspace(server) -> str:
    ks = server.info("keyspace")
    return ", ".join(f"{db}: {v['keys']} keys" for db, v in sorted(ks.items())) or "empty"


def _load(src, stop: threading.Event, counter: list[int]) -> None:
    """Mixed writes on the source until ``stop``: strings with and without TTL, hashes, lists,
    sets, sorted sets, INCRs and deletes over dbs 0-2, some in MULTI/EXEC."""
    rnd = random.Random(1)
    clients = [src.client(db) for db in (0, 1, 2)]
    while not stop.is_set():
        c = rnd.choice(clients)
        p = c.pipeline(transaction=rnd.random() < 0.2)
        for _ in range(200):
            k = f"live:{rnd.randrange(20_000)}"
            r = rnd.random()
            if r < 0.3:
                p.set(k, rnd.randbytes(rnd.randrange(8, 2000)), px=rnd.choice((None, None, 3_600_000)))
            elif r < 0.45:
                p.hset("h" + k, f"f{rnd.randrange(50)}", rnd.randrange(10**9))
            elif r < 0.55:
                p.rpush("l" + k, rnd.randbytes(16))
            elif r < 0.65:
                p.sadd("s" + k, rnd.randrange(1000))
            elif r < 0.75:
                p.zadd("z" + k, {f"m{rnd.randrange(100)}": rnd.random()})
            elif r < 0.9:
                p.incrby("n" + k, rnd.randrange(1, 10))
            else:
                p.delete(k)
        p.execute()
        counter[0] += 200


def _status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def _line(doc: dict | None, t0: float, written_by_app: int) -> str:
    if not doc or not doc.get("reader"):
        return f"  {time.monotonic() - t0:5.1f}s  (redshake starting)"
    r = doc["reader"]
    tot = doc["total_entries_count"]
    return (
        f"  {time.monotonic() - t0:5.1f}s  {r['status']:<14} app writes {written_by_app:>8}  "
        f"redshake read {tot['read_count']:>8} ({tot['read_ops']:>8.0f}/s)  "
        f"lag {r['lag_bytes']:>8} B {r['lag_seconds']:>6.2f} s  consistent={doc['consistent']}"
    )


def live() -> int:
    work = Path(tempfile.mkdtemp(prefix="redshake-demo-"))
    try:
        print("== starting a source Redis 7.0 with sample data of every type (several dbs, TTLs)")
        src = start_server("redis-7.0", dir=work / "source")
        populate(src.client(), src.version, src.is_valkey)
        src.client().execute_command("DEBUG", "POPULATE", 200_000, "demo", 64)
        print(f"   source {src.address}: {_keyspace(src)}")
        dst = start_server("redis-7.0", dir=work / "target")
        print(f"== empty target {dst.address}")
        port = free_port()
        cfg = work / "shake.toml"
        cfg.write_text(
            f'[sync_reader]\naddress = "{src.address}"\n\n'
            f'[redis_writer]\naddress = "{dst.address}"\n\n'
            f'[advanced]\ndir = "{work / "data"}"\nlog_interval = 5\nstatus_port = {port}\nstatus_bind = "127.0.0.1"\n'
        )
        print(f"== redshake {cfg} (its log: {work / 'redshake.out'})\n")
        print(cfg.read_text())
        stop = threading.Event()
        counter = [0]
        loader = threading.Thread(target=_load, args=(src, stop, counter), daemon=True)
        loader.start()
        print(f"== the application keeps writing to the source; redshake starts (status page: "
              f"http://127.0.0.1:{port}/ui)")  # fmt: skip
        out = open(work / "redshake.out", "w")
        shake = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(cfg)], stdout=out, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        lags = []
        while time.monotonic() - t0 < LOAD_SECONDS:
            time.sleep(1)
            doc = _status(port)
            print(_line(doc, t0, counter[0]))
            if doc and doc.get("reader"):
                lags.append(doc["reader"]["lag_bytes"])
            if shake.poll() is not None:
                print((work / "redshake.out").read_text()[-3000:])
                return 1
        stop.set()
        loader.join()
        print(f"== the application stops writing ({counter[0]} writes while redshake ran; largest lag seen "
              f"{max(lags or [0])} bytes); the target catches up:")  # fmt: skip
        for _ in range(3):
            time.sleep(0.5)
            print(_line(_status(port), t0, counter[0]))
        print("\n== redshake wait --converged (lag 0 and a verify sample equal)")
        rc_wait = subprocess.call([sys.executable, "-m", "redshake.cli", "wait", "--converged", str(cfg),
                                   "--timeout", "120", "--sample", "1000"])  # fmt: skip
        print("\n== redshake verify --mode full (every key, both directions) while the sync still runs")
        rc_verify = subprocess.call([sys.executable, "-m", "redshake.cli", "verify", str(cfg), "--mode", "full",
                                     "--no-progress"])  # fmt: skip
        shake.send_signal(signal.SIGTERM)
        rc = shake.wait(60)
        out.close()
        print(f"\n== redshake stopped on SIGTERM with exit code {rc} (a restart resumes from its checkpoint)")
        print(f"   source {_keyspace(src)}\n   target {_keyspace(dst)} (+ redshake's position marker)")
        ok = rc == 0 and rc_wait == 0 and rc_verify == 0
        print("== demo " + ("succeeded: the live target holds exactly the source's data" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        kill_all()


def restore() -> int:
    work = Path(tempfile.mkdtemp(prefix="redshake-demo-"))
    try:
        print("== starting a source Redis 7.0 and filling it with sample data of every type")
        src = start_server("redis-7.0", dir=work / "source")
        populate(src.client(), src.version, src.is_valkey)
        src.client().execute_command("DEBUG", "POPULATE", 500_000, "demo", 64)
        src.client().save()
        rdb = src.dir / "dump.rdb"
        print(f"   source {src.address}: {_keyspace(src)}; RDB {rdb} ({rdb.stat().st_size / 1e6:.1f} MB)")
        dst = start_server("redis-7.0", dir=work / "target")
        cfg = work / "shake.toml"
        cfg.write_text(
            f'[rdb_reader]\nfilepath = "{rdb}"\n\n[redis_writer]\naddress = "{dst.address}"\n\n'
            f'[advanced]\ndir = "{work / "data"}"\nlog_interval = 1\n'
        )
        print(f"== redshake {cfg}\n")
        rc = subprocess.call([sys.executable, "-m", "redshake.cli", str(cfg)])
        a = src.client().execute_command("DEBUG", "DIGEST")  # covers every database
        b = dst.client().execute_command("DEBUG", "DIGEST")
        print(f"   source DEBUG DIGEST {a.decode()}\n   target DEBUG DIGEST {b.decode()}")
        ok = rc == 0 and a == b
        print("== demo " + ("succeeded: the target holds exactly the source's data" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(restore() if "--restore" in sys.argv[1:] else live())
