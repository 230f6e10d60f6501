"""AOFs written by real servers under a random workload, replayed into a fresh server and
compared key by key with the source (both directions, DEBUG DIGEST-VALUE, expiries):
Redis 7 / Valkey multi-part directories (base + several INCR files, with and without RDB
preamble), Redis 6.x / 5.0 single files, and point-in-time replays."""

from __future__ import annotations

import time

import pytest

from aof_workload import DBS, Workload
from harness import failed_rewrite, nkeys, run_aof, wait_rewrite
from helpers import assert_same_data, digest_map, expire_map, keys_of, run_redshake, write_config

SHIFTED = "expiries were already past or due within"


def aof_source(servers, name: str, preamble: str):
    args = ["--appendonly", "yes", "--aof-use-rdb-preamble", preamble]
    if name.startswith("valkey") or name >= "redis-7":
        args += ["--aof-timestamp-enabled", "yes"]
    return servers.start(name, args=args)


def rewrite(src) -> None:
    """BGREWRITEAOF with a key whose expiry of 2 s is cleared right after: the snapshot
    holds it with an expiry that is past by the time it is replayed."""
    c = src.client(DBS[1])
    c.set("snapshot:short", "v", px=2000)
    wait_rewrite(c)
    c.bgrewriteaof()
    wait_rewrite(c)
    c.persist("snapshot:short")


def replay_and_compare(servers, src, filepath, tmp_path) -> None:
    dst = servers.start(src.name)
    r = run_aof(tmp_path, filepath, dst)
    assert r.returncode == 0, r.stdout[-3000:]
    assert SHIFTED in r.stdout, r.stdout[-3000:]  # the workload has such expiries
    assert assert_same_data(src, dst) > 150


@pytest.mark.parametrize(
    "name, preamble, seed",
    [
        ("redis-7.0", "yes", 1),
        ("redis-7.0", "no", 2),
        ("valkey-8.1", "yes", 3),
        ("valkey-9.1", "no", 4),
        ("valkey-9.1", "yes", 5),
    ],
)
def test_multipart_random_workload(name, preamble, seed, servers, tmp_path):
    src = aof_source(servers, name, preamble)
    w = Workload(src, seed)
    w.run(500)
    rewrite(src)  # base + a new INCR file
    w.run(500)
    failed_rewrite(src)  # a second INCR file
    src.client(DBS[2]).flushdb()
    w.run(400)
    w.close()
    aofdir = src.dir / "appendonlydir"
    text = next(aofdir.glob("*.manifest")).read_text()
    assert text.count("type i") >= 2 and "type b" in text, text
    assert (".base.rdb" if preamble == "yes" else ".base.aof") in text
    replay_and_compare(servers, src, aofdir, tmp_path)


@pytest.mark.parametrize(
    "name, preamble, seed",
    [("redis-6.2", "yes", 6), ("redis-6.0", "no", 7), ("redis-5.0", "yes", 8), ("redis-5.0", "no", 9)],
)
def test_single_file_random_workload(name, preamble, seed, servers, tmp_path):
    src = aof_source(servers, name, preamble)
    w = Workload(src, seed)
    w.run(500)
    rewrite(src)  # the file now starts with the rewrite (an RDB preamble or commands)
    w.run(500)
    src.client(DBS[2]).flushdb()
    w.run(300)
    w.close()
    f = src.dir / "appendonly.aof"
    assert (f.read_bytes()[:5] == b"REDIS") == (preamble == "yes")
    replay_and_compare(servers, src, f, tmp_path)


def snapshot(src) -> dict[int, dict[bytes, tuple[bytes, int]]]:
    out = {}
    for db in DBS:
        c = src.client(db)
        keys = sorted(keys_of(c))
        d, e = digest_map(c, keys), expire_map(c, keys, absolute=True)
        out[db] = {k: (d[k], e[k]) for k in keys}
    return out


@pytest.mark.parametrize("name, preamble, seed", [("redis-7.0", "yes", 11), ("valkey-9.1", "no", 12)])
def test_point_in_time_random_workload(name, preamble, seed, servers, tmp_path):
    """Replay up to the end of phase A (a #TS second boundary) and compare with the
    source's keys, digests and expiries recorded right then (less what has expired since)."""
    src = aof_source(servers, name, preamble)
    c = src.client()
    w = Workload(src, seed)
    w.run(400)
    before_base = int(c.time()[0]) - 1
    rewrite(src)
    w.run(400)
    t_a = int(c.time()[0])
    snap = snapshot(src)
    while int(c.time()[0]) <= t_a:
        time.sleep(0.05)
    w.run(300)  # phase B: not replayed
    src.client(DBS[1]).flushdb()
    w.run(200)
    w.close()
    aofdir = src.dir / "appendonlydir"

    dst = servers.start(name)
    r = run_aof(tmp_path, aofdir, dst, timestamp=t_a)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "stopped before #TS:" in r.stdout, r.stdout[-3000:]
    now = int(c.time()[0]) * 1000
    compared = 0
    for db in DBS:
        # -1: no expiry; -2: expired while the snapshot was read
        want = {k: v for k, v in snap[db].items() if v[1] == -1 or v[1] > now + 1000}
        t = dst.client(db)
        got = keys_of(t)
        assert got == set(want), (
            f"db {db}: missing {sorted(set(want) - got)[:5]}, extra {sorted(got - set(want))[:5]}"
        )
        keys = sorted(got)
        d, e = digest_map(t, keys), expire_map(t, keys, absolute=True)
        assert {k: (d[k], e[k]) for k in keys} == want, f"db {db}"
        compared += len(keys)
    assert compared > 100

    # a point in time before the base snapshot cannot be honoured: refused, nothing written
    dst.client().flushall()
    r = run_aof(tmp_path, aofdir, dst, timestamp=before_base)
    assert r.returncode == 2, r.stdout[-3000:]
    assert "before the snapshot this AOF starts from" in r.stdout, r.stdout[-3000:]
    assert nkeys(dst) == 0


def test_past_expiries_into_cluster(servers, tmp_path):
    """A Redis 7.0 AOF whose keys' expiries are past or due soon when replayed into a cluster:
    the keys made persistent or renamed (to a key of the same slot) in time survive, the
    others expire; each expiry check goes to the master of its key."""
    src = aof_source(servers, "redis-7.0", "yes")
    c = src.client()
    for i in range(60):
        p = c.pipeline(transaction=False)
        p.set(f"k{i}", "v", px=40)
        if i % 2:
            p.persist(f"k{i}")
        if i % 5 == 0:
            p.rename(f"k{i}", f"{{k{i}}}r")
        p.set(f"f{i}", "v", px=600_000)
        p.execute()
    time.sleep(0.1)  # the unsaved ones run out at the source
    want = {k: c.execute_command("PEXPIRETIME", k) for k in keys_of(c)}
    assert 60 < len(want) < 120
    cl = servers.cluster("redis-7.0", 3)
    cfg_dir = tmp_path / "cluster"
    cfg_dir.mkdir()
    cfg = write_config(
        cfg_dir / "shake.toml",
        {
            "aof_reader": {"filepath": str(src.dir / "appendonlydir")},
            "redis_writer": {"address": cl.seed, "cluster": True},
            "advanced": {"dir": str(cfg_dir / "work"), "log_interval": 0},
        },
    )
    r = run_redshake(cfg)
    assert r.returncode == 0, r.stdout[-3000:]
    got = {}
    for m in cl.masters:
        mc = m.client()
        got.update({k: mc.execute_command("PEXPIRETIME", k) for k in keys_of(mc)})
    assert got == want


def test_replay_to_file_then_loaded_by_server(servers, tmp_path):
    """aof_reader -> [file_writer] type aof: the file (shifted expiries and their EVALs
    included) loaded as an AOF by a server gives the source's data."""
    src = aof_source(servers, "redis-7.0", "yes")
    w = Workload(src, 21)
    w.run(400)
    rewrite(src)
    w.run(400)
    w.close()
    out = tmp_path / "loaded" / "appendonly.aof"
    out.parent.mkdir()
    cfg = write_config(
        tmp_path / "shake.toml",
        {
            "aof_reader": {"filepath": str(src.dir / "appendonlydir")},
            "file_writer": {"filepath": str(out), "type": "aof"},
            "advanced": {"dir": str(tmp_path / "work"), "log_interval": 0},
        },
    )
    r = run_redshake(cfg)
    assert r.returncode == 0, r.stdout[-3000:]
    assert SHIFTED in r.stdout and b"EVAL" in out.read_bytes()
    loaded = servers.start("redis-7.0", dir=out.parent, args=["--appendonly", "yes"])
    assert assert_same_data(src, loaded) > 100
