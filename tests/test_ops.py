"""Operation: the reverse-sync guard and the DR runbook, env-only mode, the container and
Kubernetes files, the status web page (headless Chromium) and the Grafana dashboard."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from datagen import populate
from helpers import assert_same_data, write_config
from servers import free_port

ROOT = Path(__file__).resolve().parents[1]


class Sync:
    """``redshake CONFIG`` (a live sync) as a subprocess with a status port."""

    def __init__(self, tmp: Path, name: str, src, dst, **advanced) -> None:
        self.status_port = free_port()
        adv = {"dir": str(tmp / name), "log_interval": 1, "status_port": self.status_port,
               "status_bind": "127.0.0.1"}  # fmt: skip
        adv.update(advanced)
        self.cfg = write_config(tmp / f"{name}.toml", {
            "sync_reader": {"address": src.address}, "redis_writer": {"address": dst.address}, "advanced": adv,
        })  # fmt: skip
        self.out = tmp / f"{name}.out"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Sync:
        with open(self.out, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "redshake.cli", str(self.cfg)], stdout=fh, stderr=subprocess.STDOUT
            )
        return self

    def log(self) -> str:
        return self.out.read_text(errors="replace")[-4000:]

    def status(self, path: str = "/") -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def wait_consistent(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                doc = self.status()
                if doc.get("consistent"):
                    return doc
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("never consistent:\n" + self.log())

    def stop(self) -> int:
        """SIGTERM (a clean stop) and the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "redshake.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def writes(server, seed: int, n: int) -> None:
    """n mixed writes over dbs 0 and 2 (strings with TTLs, hashes, lists, sets, deletes)."""
    rnd = random.Random(seed)
    cs = {0: server.client(0), 2: server.client(2)}
    for i in range(n):
        c = cs[rnd.choice((0, 0, 2))]
        k = f"live:{seed}:{rnd.randrange(200)}"
        r = rnd.random()
        if r < 0.3:
            c.set(k, rnd.randbytes(rnd.randrange(1, 3000)), px=rnd.choice((None, 600_000)))
        elif r < 0.5:
            c.hset("h" + k, f"f{i % 40}", rnd.randrange(10**6))
        elif r < 0.65:
            c.rpush("l" + k, *[rnd.randbytes(8) for _ in range(rnd.randrange(1, 5))])
        elif r < 0.8:
            c.sadd("s" + k, rnd.randrange(500))
        else:
            c.delete(k)


@pytest.fixture
def syncs():
    started: list[Sync] = []
    try:
        yield started
    finally:
        for s in started:
            s.kill()


def test_reverse_sync_guard_and_dr_runbook(servers, tmp_path, syncs):
    """The README's DR runbook: A->B, fail over, B->A (refused while A->B writes), switch back."""
    a, b = servers.start("redis-7.0"), servers.start("redis-7.0")
    populate(a.client(), a.version, False, seed=31, big=False, functions=False)
    writes(a, 1, 300)
    fwd = Sync(tmp_path, "a_to_b", a, b).start()
    syncs.append(fwd)
    fwd.wait_consistent()
    r = cli("wait", "--converged", str(fwd.cfg), "--timeout", "120", "--sample", "200")
    assert r.returncode == 0, r.stderr + fwd.log()
    marker = b.client().keys("redshake:live:*")
    assert len(marker) == 1 and 0 < b.client().pttl(marker[0]) <= 15_000
    assert json.loads(b.client().get(marker[0]))["source"] == a.address
    # the reverse direction while A->B still writes into B: refused, nothing written
    rev = Sync(tmp_path, "b_to_a", b, a, empty_db_before_sync=True)
    a.client().set("canary", "1")
    r = subprocess.run([sys.executable, "-m", "redshake.cli", str(rev.cfg)], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "reverse sync refused" in out and f"{a.address} -> {b.address}" in out, out
    assert a.client().get("canary") == b"1" and fwd.proc.poll() is None
    # fail over: the forward sync stops, its marker goes with it; B takes the writes
    assert fwd.stop() == 0, fwd.log()
    assert b.client().keys("redshake:live:*") == []
    writes(b, 2, 300)
    syncs.append(rev.start())
    rev.wait_consistent()
    writes(b, 3, 200)  # (live, while B->A runs)
    r = cli("wait", "--converged", str(rev.cfg), "--timeout", "120", "--sample", "300")
    assert r.returncode == 0, r.stderr + rev.log()
    r = cli("verify", str(rev.cfg), "--mode", "full", "--no-progress")
    assert r.returncode == 0 and "EQUAL" in r.stdout, r.stdout + r.stderr
    assert_same_data(b, a, dbs=[0, 1, 2, 3])
    # now A->B is the reverse of the running B->A: refused too
    r = cli(str(fwd.cfg))
    assert r.returncode == 2 and f"{b.address} -> {a.address}" in r.stdout + r.stderr, r.stdout + r.stderr
    # switch back: stop B->A, A->B again
    assert rev.stop() == 0, rev.log()
    fwd2 = Sync(tmp_path, "a_to_b_again", a, b, empty_db_before_sync=True).start()
    syncs.append(fwd2)
    writes(a, 4, 200)
    fwd2.wait_consistent()
    r = cli("wait", "--converged", str(fwd2.cfg), "--timeout", "120", "--sample", "300")
    assert r.returncode == 0, r.stderr + fwd2.log()
    r = cli("verify", str(fwd2.cfg), "--mode", "full", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_data(a, b, dbs=[0, 1, 2, 3])


def test_a_killed_sync_stops_blocking_when_its_marker_expires(servers, tmp_path, syncs):
    a, b = servers.start("redis-7.0"), servers.start("redis-7.0")
    writes(a, 5, 100)
    fwd = Sync(tmp_path, "fwd", a, b).start()
    syncs.append(fwd)
    fwd.wait_consistent()
    deadline = time.monotonic() + 30
    while not b.client().keys("redshake:live:*") and time.monotonic() < deadline:
        time.sleep(0.1)
    fwd.kill()  # no clean stop: the marker stays until its TTL runs out
    (key,) = b.client().keys("redshake:live:*")
    rev = Sync(tmp_path, "rev", b, a, empty_db_before_sync=True)
    r = cli(str(rev.cfg))
    assert r.returncode == 2 and "reverse sync refused" in r.stdout + r.stderr
    b.client().pexpire(key, 1)  # (as if the 15 s had passed)
    time.sleep(0.05)
    syncs.append(rev.start())
    rev.wait_consistent()
    assert_same_data(b, a, dbs=[0, 2])
