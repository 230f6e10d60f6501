"""Dual-channel vs single-channel full sync from the same Valkey source, under writes.

    python bench/dual_channel.py [--server valkey-9.1] [--keys 1000000] [--value 200]
                                 [--write-mbps 8] [--backlog 1mb] [--repeat 1]

For each mode a fresh source gets the same data (DEBUG POPULATE) with
``dual-channel-replication-enabled yes`` and ``repl-diskless-sync yes``; a writer changes it
at a fixed rate during the whole sync; redshake syncs it into an empty target of the same
server with ``dual_channel`` true or false (``try_diskless = true`` in both, so both
snapshots are streamed from the fork). Measured:

* snapshot time: redshake start -> its status says the snapshot is applied ("syncing aof");
* caught-up time: redshake start -> the writer stopped and the source lists redshake's ACK at
  its own offset (everything applied); redshake's CPU time (user + system) and the source
  main process's CPU time over the same span (wall times swing widely on a shared machine;
  CPU times much less);
* the source's output buffer for its replicas, sampled every ~10 ms during the sync: the
  peak of CLIENT LIST ``omem`` summed over replica connections, and the peaks of INFO memory
  ``mem_clients_slaves`` and ``mem_total_replication_buffers`` (Valkey shares the replicas'
  buffer with the backlog, so the latter never drops below the backlog in use).

Prints both modes and the single/dual ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import ROOT, kill_all, start_server

sys.path.insert(0, str(ROOT / "tests"))
from servers import free_port  # noqa: E402


class Sampler(threading.Thread):
    """Peaks of the source's replica output buffers while the sync runs."""

    def __init__(self, src) -> None:
        super().__init__(daemon=True)
        self.c = src.client(socket_timeout=10)
        self.halt = threading.Event()
        self.omem = 0
        self.clients_slaves = 0
        self.repl_buffers = 0
        self.channels: set[str] = set()

    def run(self) -> None:
        while not self.halt.is_set():
            listed = self.c.client_list(_type="replica")
            self.omem = max(self.omem, sum(int(cl.get("omem", 0)) for cl in listed))
            mem = self.c.info("memory")
            self.clients_slaves = max(self.clients_slaves, int(mem.get("mem_clients_slaves", 0)))
            self.repl_buffers = max(self.repl_buffers, int(mem.get("mem_total_replication_buffers", 0)))
            for k, v in self.c.info("replication").items():
                if k.startswith("slave") and isinstance(v, dict):
                    self.channels.add(str(v.get("type", "")))
            time.sleep(0.01)


class Writer(threading.Thread):
    """SETs of ``value``-byte values in pipelines, paced to ``mbps`` MB/s of payload."""

    def __init__(self, src, mbps: float, value: int) -> None:
        super().__init__(daemon=True)
        self.c = src.client(socket_timeout=30)
        self.halt = threading.Event()
        self.rate = mbps * 1e6
        self.value = value
        self.written = 0

    def run(self) -> None:
        rnd = random.Random(5)
        t0 = time.monotonic()
        while not self.halt.is_set():
            p = self.c.pipeline(transaction=False)
            for _ in range(100):
                p.set(f"w:{rnd.randrange(200_000)}", rnd.randbytes(self.value))
            p.execute()
            self.written += 100 * self.value
            ahead = self.written / self.rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def source_cpu(src) -> float:
    """CPU seconds of the source's main process (the fork's are not included)."""
    info = src.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def status(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return json.loads(r.read())["reader"]
    except (OSError, ValueError, KeyError):
        return {}


def one_run(args, dual: bool) -> dict:
    src = start_server(
        args.server,
        args=[
            "--dual-channel-replication-enabled", "yes", "--repl-diskless-sync", "yes",
            "--repl-backlog-size", args.backlog,
        ],
    )  # fmt: skip
    dst = start_server(args.server)
    work = Path(tempfile.mkdtemp(prefix="redshake-bench-dual-"))
    proc = None
    try:
        sc = src.client(socket_timeout=600)
        sc.execute_command("DEBUG", "POPULATE", args.keys, "key", args.value)
        port = free_port()
        cfg = work / "shake.toml"
        cfg.write_text(
            f'[sync_reader]\naddress = "{src.address}"\ntry_diskless = true\n'
            f"dual_channel = {'true' if dual else 'false'}\n"
            f'[redis_writer]\naddress = "{dst.address}"\n'
            f'[advanced]\ndir = "{work / "data"}"\nlog_interval = 0\n'
            f'status_port = {port}\nstatus_bind = "127.0.0.1"\n'
        )
        sampler, writer = Sampler(src), Writer(src, args.write_mbps, args.value)
        writer.start()
        time.sleep(0.5)  # the writer is at its pace before the sync starts
        sampler.start()
        log = open(work / "shake.out", "wb")
        src_cpu0 = source_cpu(src)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "redshake.cli", str(cfg)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        while status(port).get("status") != "syncing aof":
            if proc.poll() is not None:
                raise SystemExit((work / "shake.out").read_text(errors="replace")[-3000:])
            time.sleep(0.02)
        snapshot = time.monotonic() - t0
        writer.halt.set()
        writer.join()
        while True:
            info = src.info("replication")
            acked = [v["offset"] for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            if acked == [info["master_repl_offset"]]:
                break
            time.sleep(0.02)
        caught_up = time.monotonic() - t0
        shake_cpu = cpu_seconds(proc.pid)
        src_cpu = source_cpu(src) - src_cpu0
        sampler.halt.set()
        sampler.join()
        st = status(port)
        if bool(st.get("dual_channel_syncs")) != dual:
            raise SystemExit(f"expected dual_channel_syncs {'>0' if dual else '0'}, got {st}")
        return {
            "snapshot_s": snapshot,
            "caught_up_s": caught_up,
            "redshake_cpu_s": shake_cpu,
            "source_cpu_s": src_cpu,
            "omem_peak": sampler.omem,
            "mem_clients_slaves_peak": sampler.clients_slaves,
            "repl_buffers_peak": sampler.repl_buffers,
            "channels": sorted(sampler.channels - {""}),
            "rdb_bytes": st.get("rdb_file_size_bytes", 0),
            "written_mb": writer.written / 1e6,
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        src.cleanup()
        dst.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="valkey-9.1", choices=["valkey-8.1", "valkey-9.1"])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value", type=int, default=200, help="value size in bytes")
    ap.add_argument("--write-mbps", type=float, default=8.0, help="write load during the sync")
    ap.add_argument(
        "--backlog", default="1mb",
        help="the source's repl-backlog-size: Valkey shares the replicas' output buffer with the "
        "backlog, so only a replica lagging by more than this costs the source extra memory",
    )  # fmt: skip
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT / "src"))
    results: dict[str, list[dict]] = {"single": [], "dual": []}
    try:
        for i in range(args.repeat):
            for mode in ("single", "dual"):
                r = one_run(args, mode == "dual")
                results[mode].append(r)
                print(
                    f"run {i + 1} {mode:6}: snapshot {r['snapshot_s']:.2f}s, caught up "
                    f"{r['caught_up_s']:.2f}s, redshake CPU {r['redshake_cpu_s']:.2f}s, source main "
                    f"process CPU {r['source_cpu_s']:.2f}s, replica omem peak {r['omem_peak'] / 1e6:.2f} MB, "
                    f"mem_clients_slaves peak {r['mem_clients_slaves_peak'] / 1e6:.2f} MB, "
                    f"mem_total_replication_buffers peak {r['repl_buffers_peak'] / 1e6:.2f} MB, "
                    f"channels seen {r['channels']}, rdb {r['rdb_bytes'] / 1e6:.1f} MB, "
                    f"written during the sync {r['written_mb']:.1f} MB",
                    flush=True,
                )
    finally:
        kill_all()

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print(
        f"\n{args.server}, {args.keys} keys x {args.value} B, writes {args.write_mbps} MB/s, "
        f"repl-backlog-size {args.backlog} (medians):"
    )
    for key, unit, scale in (
        ("snapshot_s", "s", 1.0),
        ("caught_up_s", "s", 1.0),
        ("redshake_cpu_s", "s", 1.0),
        ("source_cpu_s", "s", 1.0),
        ("omem_peak", "MB", 1e6),
        ("mem_clients_slaves_peak", "MB", 1e6),
        ("repl_buffers_peak", "MB", 1e6),
    ):
        s, d = med("single", key), med("dual", key)
        ratio = f"{s / d:.2f}x" if d else "inf (dual 0)"
        print(f"  {key:24} single {s / scale:9.2f} {unit:2}  dual {d / scale:9.2f} {unit:2}  single/dual {ratio}")


if __name__ == "__main__":
    main()
