"""Incremental-sync benchmark: redshake follows a source while redis-benchmark floods it.

    python bench/incremental.py [--requests 2000000] [--pipeline 16]

redis-benchmark -t set -r 1000000 -n N -P 16 -d 8 runs against the source once redshake is
in the stream phase. Prints the rate the source accepted (N / benchmark time), the rate
redshake applied to the target (N / time until the target has acknowledged the source's
final offset, read from redshake's status; the source learns it with the next REPLCONF
ACK, up to 1 s later, as from a native replica), their ratio, the largest lag seen (bytes and seconds) and redshake's peak RSS.

--catchup measures redshake alone: it is stopped (SIGTERM, checkpoint written) once in the
stream phase, the source takes the whole benchmark into a 1 GB backlog, then redshake is
restarted, resumes with PSYNC and applies the backlog as fast as it can. Prints the apply rate
and redshake's CPU time per command, which unlike the live ratio does not depend on how much
CPU the co-located source and redis-benchmark take.

Live sync is exactly-once by default (each stream batch one MULTI/EXEC with a position
marker; into a cluster one script call per master); --at-least-once measures it with
``advanced.exactly_once = false``. --cluster writes into a 3-master Redis 7.0 cluster.

REDSHAKE_PYSPY=out.txt attaches py-spy (raw format) to redshake for 25 s (with --catchup:
REDSHAKE_PYSPY_SECS seconds of the catch-up, default 4).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import kill_all, start_server

from servers import start_cluster

BENCH = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_offsets(src) -> tuple[int, int]:
    info = src.info("replication")
    off = -1
    for k, v in info.items():
        if k.startswith("slave") and isinstance(v, dict):
            off = max(off, int(v.get("offset", -1)))
    return int(info.get("master_repl_offset", 0)), off


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2_000_000)
    ap.add_argument("--pipeline", type=int, default=16)
    ap.add_argument("--catchup", action="store_true", help="apply a backlog with the source idle")
    ap.add_argument("--at-least-once", action="store_true", help="with advanced.exactly_once = false")
    ap.add_argument("--cluster", action="store_true", help="target: a 3-master cluster")
    a = ap.parse_args()
    src = start_server("redis-7.0", args=["--repl-backlog-size", "1gb"] if a.catchup else [])
    if a.cluster:
        cluster = start_cluster("redis-7.0", masters=3)
        dst_addr, dst_extra = cluster.seed, "cluster = true\n"
    else:
        dst_addr, dst_extra = start_server("redis-7.0").address, ""
    work = Path(tempfile.mkdtemp(prefix="redshake-bench-"))
    port = free_port()
    cfg = work / "shake.toml"
    cfg.write_text(
        f'[sync_reader]\naddress = "{src.address}"\n[redis_writer]\naddress = "{dst_addr}"\n{dst_extra}'
        f'[advanced]\ndir = "{work / "data"}"\nlog_interval = 5\nstatus_port = {port}\n'
        'status_bind = "127.0.0.1"\n' + ("exactly_once = false\n" if a.at_least_once else "")
    )
    log = open(work / "shake.out", "w")
    argv = [sys.executable, "-m", "redshake.cli", str(cfg)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    spy = os.environ.get("REDSHAKE_PYSPY")  # profile redshake: REDSHAKE_PYSPY=out.txt (py-spy)
    if spy and not a.catchup:
        subprocess.Popen(["py-spy", "record", "-r", "200", "-f", "raw", "-o", spy, "-d", "25",
                          "-p", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"

        def status() -> dict:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())

        deadline = time.monotonic() + 60
        while True:
            try:
                if status()["reader"]["status"] == "syncing aof":
                    break
            except (OSError, KeyError, TypeError, ValueError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("redshake did not reach the stream phase:\n" + (work / "shake.out").read_text()[-2000:])
            time.sleep(0.1)
        def wait_applied(final: int) -> float:
            """When redshake's target has acknowledged everything up to ``final``."""
            while True:
                if proc.poll() is not None:
                    raise SystemExit("redshake exited:\n" + (work / "shake.out").read_text()[-2000:])
                try:
                    if int(status()["reader"]["aof_applied_offset"]) >= final:
                        return time.monotonic()
                except (OSError, KeyError, TypeError, ValueError):
                    pass
                time.sleep(0.01)

        max_lag_bytes, max_lag_s = 0, 0.0
        done = threading.Event()

        def sample() -> None:
            nonlocal max_lag_bytes, max_lag_s
            while not done.is_set():
                try:
                    m, r = replica_offsets(src)
                    max_lag_bytes = max(max_lag_bytes, m - r)
                    max_lag_s = max(max_lag_s, float(status()["reader"]["lag_seconds"]))
                except Exception:
                    pass
                time.sleep(0.2)

        bench = [BENCH, "-h", src.host, "-p", str(src.port), "-t", "set", "-r", "1000000",
                 "-n", str(a.requests), "-P", str(a.pipeline), "-d", "8", "-q"]  # fmt: skip
        if a.catchup:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            t0 = time.monotonic()
            subprocess.run(bench, check=True, stdout=subprocess.DEVNULL)
            t_bench = time.monotonic() - t0
            final = int(src.info("replication")["master_repl_offset"])
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            if spy:
                subprocess.Popen(["py-spy", "record", "-r", "200", "-f", "raw", "-o", spy, "-d",
                                  os.environ.get("REDSHAKE_PYSPY_SECS", "4"),
                                  "-p", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t_applied = wait_applied(final) - t0
            proc.send_signal(signal.SIGTERM)
            _, st, ru = os.wait4(proc.pid, 0)
            cpu = ru.ru_utime + ru.ru_stime
            print(f"mode              : {_mode(work)}")
            print(f"source accepted   : {a.requests / t_bench:12,.0f} SET/s ({t_bench:.2f} s, redshake stopped)")
            print(f"redshake catch-up : {a.requests / t_applied:12,.0f} SET/s ({t_applied:.2f} s from restart to the last offset acked)")
            print(f"redshake CPU      : {cpu:12.2f} s = {cpu / a.requests * 1e6:.2f} us per command (incl. start-up)")
            print(f"redshake peak RSS : {ru.ru_maxrss / 1024:12.0f} MB, exit code {os.waitstatus_to_exitcode(st)}")
            return
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        subprocess.run(bench, check=True, stdout=subprocess.DEVNULL)
        t_bench = time.monotonic() - t0
        final = int(src.info("replication")["master_repl_offset"])
        t_applied = wait_applied(final) - t0
        while replica_offsets(src)[1] < final:  # the source hears of it with the next ACK (1/s)
            time.sleep(0.02)
        t_acked = time.monotonic() - t0
        done.set()
        sampler.join()
        proc.send_signal(signal.SIGTERM)
        _, st, ru = os.wait4(proc.pid, 0)
        accepted = a.requests / t_bench
        applied = a.requests / t_applied
        print(f"mode              : {_mode(work)}")
        print(f"source accepted   : {accepted:12,.0f} SET/s ({t_bench:.2f} s)")
        print(f"redshake applied  : {applied:12,.0f} SET/s ({t_applied:.2f} s until the target acked the last "
              f"offset; the source heard of it after {t_acked:.2f} s)")
        print(f"ratio             : {applied / accepted:12.3f}   (target >= 0.97)")
        print(f"max lag           : {max_lag_bytes / 1e6:12.1f} MB, {max_lag_s:.2f} s")
        print(f"redshake peak RSS : {ru.ru_maxrss / 1024:12.0f} MB, exit code {os.waitstatus_to_exitcode(st)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all()
        shutil.rmtree(work, ignore_errors=True)


def _mode(work: Path) -> str:
    """What redshake's log says it did: exactly-once (with the marker) or at-least-once."""
    text = (work / "shake.out").read_text(errors="replace")
    if "exactly-once unit scripts" in text:
        return "exactly-once (one script call per master with its position marker per stream batch)"
    if "exactly-once: " in text:
        return "exactly-once (a MULTI/EXEC with the position marker per stream batch)"
    return "at-least-once (no marker)"


if __name__ == "__main__":
    main()
