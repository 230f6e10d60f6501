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
from redshake.commands.slots import key_slot
from servers import free_port

ROOT = Path(__file__).resolve().parents[1]


class Sync:
    """``redshake CONFIG`` (a live sync) as a subprocess with a status port."""

    def __init__(self, tmp: Path, name: str, src: str | object, dst, reader: dict | None = None, **advanced) -> None:
        self.status_port = free_port()
        adv = {"dir": str(tmp / name), "log_interval": 1, "status_port": self.status_port,
               "status_bind": "127.0.0.1"}  # fmt: skip
        adv.update(advanced)
        rd = {"address": src if isinstance(src, str) else src.address, **(reader or {})}
        self.cfg = write_config(tmp / f"{name}.toml", {
            "sync_reader": rd, "redis_writer": {"address": dst.address}, "advanced": adv,
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


def test_env_only_mode_sync_and_scan(servers, tmp_path, syncs):
    """RedisShake's container entrypoint: SYNC=true / SCAN=true, no config file."""
    src, dst, dst2 = servers.start("redis-7.0"), servers.start("valkey-8.1"), servers.start("redis-7.0")
    populate(src.client(), src.version, False, seed=41, big=False, functions=False)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in ("SYNC", "SCAN") and not k.startswith("SHAKE_")}
    env = dict(base, SYNC="true", SHAKE_SRC_ADDRESS=src.address, SHAKE_DST_ADDRESS=dst.address,
               SHAKE_DIR=str(tmp_path / "envsync"), SHAKE_STATUS_PORT=str(port), SHAKE_LOG_LEVEL="info")  # fmt: skip
    sync = Sync(tmp_path, "unused", src, dst)
    sync.status_port = port
    with open(sync.out, "ab") as fh:  # the container's CMD: the default config path, absent here
        sync.proc = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(tmp_path / "etc/sync/sync.toml")],
                                     stdout=fh, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    syncs.append(sync)
    sync.wait_consistent()
    writes(src, 6, 300)
    deadline = time.monotonic() + 60
    while src.info("replication")["master_repl_offset"] != sync.status()["reader"]["aof_applied_offset"]:
        assert time.monotonic() < deadline, sync.log()
        time.sleep(0.1)
    assert "env-only mode" in sync.log() and (tmp_path / "envsync" / "shake.log").exists()
    assert sync.stop() == 0, sync.log()
    assert_same_data(src, dst, dbs=[0, 1, 2, 3])
    # SCAN=true: a one-shot copy, no argument at all
    env2 = dict(base, SCAN="true", SHAKE_SRC_ADDRESS=src.address, SHAKE_DST_ADDRESS=dst2.address,
                SHAKE_DIR=str(tmp_path / "envscan"))  # fmt: skip
    r = cli(env=env2)
    assert r.returncode == 0 and "scan_reader" in r.stdout + r.stderr, r.stdout + r.stderr
    # (a scan copies TTLs as relative PTTLs: compared within verify's tolerance)
    r = cli("verify", "--source", f"redis://{src.address}", "--target", f"redis://{dst2.address}", "--mode", "full",
            "--no-progress")  # fmt: skip
    assert r.returncode == 0 and "EQUAL" in r.stdout, r.stdout + r.stderr
    # a required variable missing, or a config file as well: exit 2, nothing written
    dst2.client().flushall()
    r = cli(env=dict(base, SYNC="true", SHAKE_SRC_ADDRESS=src.address))
    assert r.returncode == 2 and "SHAKE_DST_ADDRESS" in r.stderr, r.stderr
    r = cli(str(sync.cfg), env=dict(env2))
    assert r.returncode == 2 and "both given" in r.stderr, r.stderr
    r = cli(env=dict(env2, SHAKE_STATUS_PORT="http"))
    assert r.returncode == 2 and "status_port" in r.stderr, r.stderr
    assert dst2.client().dbsize() == 0


def test_shards_selector_splits_a_cluster_source(servers, tmp_path, syncs):
    """sync_reader.shards = "I/N": N processes (pods) each read their slice of the masters."""
    import redis

    cl = servers.cluster("redis-7.0", masters=3)
    dst = servers.start("redis-7.0")
    rc = redis.RedisCluster(host="127.0.0.1", port=cl.masters[0].port, protocol=2)
    rnd = random.Random(3)
    for i in range(600):
        rc.set(f"k{i}", rnd.randbytes(rnd.randrange(1, 500)), px=rnd.choice((None, 900_000)))
        if i % 3 == 0:
            rc.hset(f"h{i}", mapping={f"f{j}": j for j in range(rnd.randrange(1, 20))})
    parts = [Sync(tmp_path, f"part{i}", cl.seed, dst, reader={"cluster": True, "shards": f"{i}/2"}) for i in (0, 1)]
    for p in parts:
        syncs.append(p.start())
    docs = [p.wait_consistent() for p in parts]
    # 3 masters split 2 + 1, ordered by first slot; together every master exactly once
    read = [sorted(r["address"] for r in d["reader"]) for d in docs]
    assert sorted(len(x) for x in read) == [1, 2], read
    owners = sorted(cl.masters, key=lambda m: min(s[0] for s in m.client().execute_command("CLUSTER", "SLOTS")
                                                  if int(s[2][1]) == m.port))  # fmt: skip
    assert read[0] == sorted([owners[0].address, owners[2].address]) and read[1] == [owners[1].address]
    for i in range(600, 700):
        rc.set(f"k{i}", b"live")
    for p in parts:
        deadline = time.monotonic() + 60
        while not all(r["lag_bytes"] == 0 for r in p.status()["reader"]) or dst.client().get("k699") is None:
            assert time.monotonic() < deadline, p.log()
            time.sleep(0.1)
    for p in parts:
        assert p.stop() == 0, p.log()
    keys = {k for m in cl.masters for k in m.client().keys("*")}
    got = {k for k in dst.client().keys("*") if not k.startswith(b"redshake:")}
    assert got == keys and len(keys) == 900
    for k in rnd.sample(sorted(keys), 100):
        node = cl.owner_of(key_slot(k))
        assert node.client().execute_command("DEBUG", "DIGEST-VALUE", k) == dst.client().execute_command(
            "DEBUG", "DIGEST-VALUE", k)
