"""Peak memory of redshake for one huge SET, live and in an AOF replay.

    python bench/big_bulk.py [--mib 200] [--cluster [--at-least-once]]

live: redshake follows a source (sync_reader -> redis_writer); once it is in the stream
phase the source gets one ``SET big <N MiB> EX 3600``; when the target has acknowledged the
source's offset, redshake's peak RSS (VmHWM) is read. A native replica of the same source
is the anchor (its peak RSS holds the value once, plus the replication buffers).

aof: a Redis 7.0 source with ``appendonly yes`` takes the same SET; redshake replays its
``appendonlydir`` (manifest, BASE + INCR files) into an empty target. The anchor is a
redis-server loading the same directory at start-up.

--cluster: the live case only, into a 3-master cluster target (exactly-once unless
--at-least-once); the peak is given with redshake's RSS before the SET (its growth is what
the value costs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import kill_all, start_server, wait_with_peak_rss

from helpers import peak_rss

MB = 1 << 20


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live(value: bytes, work: Path, cluster: bool = False, exactly_once: bool = True) -> None:
    from servers import start_cluster

    src = start_server("redis-7.0")
    native = start_server("redis-7.0")
    if cluster:
        cl = start_cluster("redis-7.0", masters=3)
        dst, address, targets = cl.masters[0], cl.seed, list(cl.masters)
    else:
        dst = start_server("redis-7.0")
        address, targets = dst.address, [dst]
    for s in (src, native, *targets):
        s.client().config_set("proto-max-bulk-len", str(1 << 30))
    native.client().execute_command("REPLICAOF", src.host, src.port)
    port = free_port()
    cfg = work / "live.toml"
    cfg.write_text(
        f'[sync_reader]\naddress = "{src.address}"\n[redis_writer]\naddress = "{address}"\n'
        f'cluster = {"true" if cluster else "false"}\n'
        f'[advanced]\ndir = "{work / "live"}"\nlog_interval = 5\nstatus_port = {port}\n'
        f'status_bind = "127.0.0.1"\nexactly_once = {"true" if exactly_once else "false"}\n'
    )
    out = work / "live.out"
    proc = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(cfg)],
                            stdout=open(out, "w"), stderr=subprocess.STDOUT)  # fmt: skip

    def status() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return json.loads(r.read())

    def wait(cond, what: str) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"redshake exited ({what}):\n" + out.read_text()[-2000:])
            try:
                if cond():
                    return
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.05)
        raise SystemExit(f"timed out: {what}\n" + out.read_text()[-2000:])

    wait(lambda: status()["reader"]["status"] == "syncing aof", "stream phase")
    wait(lambda: native.info("replication").get("master_link_status") == "up", "native replica")
    idle = peak_rss(proc.pid)
    t0 = time.monotonic()
    src.client().set(b"big", value, ex=3600)
    final = int(src.info("replication")["master_repl_offset"])
    wait(lambda: int(status()["reader"]["aof_applied_offset"]) >= final, "applied")
    elapsed = time.monotonic() - t0
    wait(lambda: int(native.info("replication")["slave_repl_offset"]) >= final, "native replica")
    peak = peak_rss(proc.pid)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    def holds_big(t) -> bool:
        try:
            return bool(t.client().exists("big"))
        except Exception:  # noqa: BLE001 - MOVED: another master owns the slot
            return False

    owner = next(t for t in targets if holds_big(t))
    same = owner.client().execute_command("DEBUG", "DIGEST-VALUE", "big") == src.client().execute_command(
        "DEBUG", "DIGEST-VALUE", "big"
    ) and owner.client().ttl("big") > 3000
    into = ("a 3-master cluster, " + ("exactly-once" if exactly_once else "at-least-once")
            if cluster else "standalone")  # fmt: skip
    print(f"live ({into}): redshake peak RSS {peak / 1e6:6.0f} MB (idle {idle / 1e6:.0f} MB, "
          f"growth {(peak - idle) / 1e6:.0f} MB), applied in {elapsed:.1f} s, exit {code}, "
          f"target value and TTL equal: {same}")  # fmt: skip
    print(f"       native replica peak RSS {peak_rss(native.pid) / 1e6:6.0f} MB (anchor)")
    for s in (src, native, *targets):
        s.stop()


def aof(value: bytes, work: Path) -> None:
    src = start_server("redis-7.0", args=["--appendonly", "yes", "--aof-use-rdb-preamble", "yes"])
    c = src.client()
    c.config_set("proto-max-bulk-len", str(1 << 30))
    c.set(b"small", b"1")
    c.set(b"big", value, ex=3600)
    c.set(b"after", b"2")
    src.stop()
    adir = work / "appendonlydir"
    shutil.copytree(src.dir / "appendonlydir", adir)
    native = start_server("redis-7.0", dir=work / "native", args=[
        "--appendonly", "yes", "--appenddirname", "appendonlydir", "--proto-max-bulk-len", "1gb"])  # fmt: skip
    shutil.rmtree(work / "native" / "appendonlydir", ignore_errors=True)
    native.stop()
    shutil.copytree(adir, work / "native" / "appendonlydir")
    native = start_server("redis-7.0", dir=work / "native", args=[
        "--appendonly", "yes", "--appenddirname", "appendonlydir", "--proto-max-bulk-len", "1gb"])  # fmt: skip
    anchor = peak_rss(native.pid)
    native.stop()
    dst = start_server("redis-7.0")
    dst.client().config_set("proto-max-bulk-len", str(1 << 30))
    cfg = work / "aof.toml"
    cfg.write_text(
        f'[aof_reader]\nfilepath = "{adir}"\n[redis_writer]\naddress = "{dst.address}"\n'
        f'[advanced]\ndir = "{work / "aofwork"}"\nlog_interval = 5\n'
    )
    out = work / "aof.out"
    t0 = time.monotonic()
    with open(out, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(cfg)], stdout=fh,
                                stderr=subprocess.STDOUT)  # fmt: skip
        code, peak = wait_with_peak_rss(proc)
    elapsed = time.monotonic() - t0
    same = dst.client().strlen("big") == len(value) and dst.client().ttl("big") > 3000
    print(f"aof  : redshake peak RSS {peak / 1e6:6.0f} MB, {elapsed:.1f} s, exit {code}, target "
          f"value length and TTL right: {same}")  # fmt: skip
    print(f"       redis-server loading the same AOF: peak RSS {anchor / 1e6:6.0f} MB (anchor)")
    dst.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--cluster", action="store_true", help="live only, into a cluster target")
    ap.add_argument("--at-least-once", action="store_true", help="with exactly_once = false")
    a = ap.parse_args()
    value = os.urandom(a.mib * MB)
    work = Path(tempfile.mkdtemp(prefix="redshake-bigbulk-"))
    print(f"one SET of {a.mib} MiB (EX 3600)")
    try:
        live(value, work, a.cluster, not a.at_least_once)
        if not a.cluster:
            aof(value, work)
    finally:
        kill_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
