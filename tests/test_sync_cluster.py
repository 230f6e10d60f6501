"""Cluster sources: one sync process per source shard, into a standalone and a cluster target,
with writes during the run; and the slot-scoped flush a shard uses on a full resync."""

from __future__ import annotations

import threading
import time

import pytest

from harness import (
    Shake,
    digests,
    fill_cluster,
    move_slot,
    replica_offset,
    slot_owners,
    start_load,
    stat,
    wait_cluster_converged,
    wait_converged,
)
from helpers import MARKER_PREFIX
from redshake.commands.slots import key_slot


@pytest.mark.parametrize("target_kind", ["standalone", "cluster"])
def test_cluster_source(target_kind, servers, tmp_path, shakes):
    src = servers.cluster("redis-7.0", masters=3)
    fill_cluster(src, 3000, "before")
    if target_kind == "cluster":
        dst_cluster = servers.cluster("redis-7.0", masters=3)
        dst_nodes = dst_cluster.masters
        dst_addr = dst_cluster.seed
    else:
        dst = servers.start("redis-7.0")
        dst_nodes = [dst]
        dst_addr = dst.address
    shake = Shake(tmp_path, src.seed, dst_addr, reader={"cluster": True},
                  writer={"cluster": True} if target_kind == "cluster" else None)  # fmt: skip
    shakes.append(shake.start())
    stop = threading.Event()

    def writer() -> None:  # writes during the snapshot and after it
        i = 0
        while not stop.is_set() and i < 20:
            fill_cluster(src, 200, f"during{i}")
            i += 1
            time.sleep(0.05)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(1.0)
    finally:
        stop.set()
        t.join()
    fill_cluster(src, 500, "after")
    wait_cluster_converged(src, shake)
    assert digests(src.masters) == digests(dst_nodes)
    doc = shake.status()
    assert isinstance(doc["reader"], list) and len(doc["reader"]) == 3
    assert {r["status"] for r in doc["reader"]} == {"syncing aof"}
    assert doc["total_entries_count"]["write_count"] > 0
    assert shake.terminate() == 0, shake.log()[-3000:]
    log = shake.log()
    assert "3 shards" in log
    for m in src.masters:  # each shard kept its own work dir and checkpoint
        assert (shake.work / f"shard_127.0.0.1_{m.port}").is_dir()


def test_flush_slots_deletes_only_the_shards_keys(servers):
    from redshake.shards import flush_slots
    from redshake.writers.cluster import ClusterWriter
    from redshake.writers.redis import RedisWriter

    dst = servers.start("redis-7.0")
    cluster = servers.cluster("redis-7.0", masters=3)
    keys = [f"k:{i}".encode() for i in range(2000)]
    for node in [dst]:
        node.client().mset({k: b"1" for k in keys})
    _owners_c = slot_owners(cluster)
    for k in keys:
        _owners_c[key_slot(k)].client().set(k, b"1")
    ranges = [(0, 5000), (9000, 9100)]

    def inside(k: bytes) -> bool:
        return any(lo <= key_slot(k) <= hi for lo, hi in ranges)

    expected = {k for k in keys if not inside(k)}
    w = RedisWriter(dst.address)
    assert flush_slots(w, ranges) == len(keys) - len(expected)
    assert set(dst.client().keys()) == expected
    w.close()
    cw = ClusterWriter(cluster.seed)
    flush_slots(cw, ranges)
    assert set(digests(cluster.masters)) == expected
    cw.close()
    # redshake's own keys in those slots stay: another shard's position marker deleted by
    # this shard's full resync made that shard think the target had lost its writes
    own = [k for k in (b"redshake:pos:127.0.0.1:%d" % p for p in range(7000, 7400)) if inside(k)][:5]
    own += [k for k in (b"redshake:live:%d" % i for i in range(400)) if inside(k)][:5]
    assert len(own) == 10
    dst.client().mset({k: b"1" for k in [*own, *keys]})
    w = RedisWriter(dst.address)
    flush_slots(w, ranges, keep=(b"redshake:live:", b"redshake:pos:"))
    assert set(dst.client().keys()) == expected | set(own)
    w.close()


def test_standalone_source_into_cluster_target(servers, tmp_path, shakes):
    """A standalone source synced into a 3-master cluster: snapshot, then the stream with
    transactions whose keys share a slot (kept atomic) and span slots (split)."""

    src = servers.start("redis-7.0")
    c = src.client()
    for i in range(2000):
        c.set(f"s:{i}".encode(), b"x" * (i % 50))
    c.rpush(b"list", *[b"%d" % i for i in range(100)])
    dst = servers.cluster("redis-7.0", masters=3)
    shake = Shake(tmp_path, src, dst.seed, writer={"cluster": True})
    shakes.append(shake.start())
    lib = "#!lua name=lib\nredis.register_function('f', function() return 1 end)"
    for i in range(300):
        c.set(f"after:{i}".encode(), b"v")
        c.hset(f"h:{i % 7}".encode(), f"f{i}".encode(), b"1")
        if i == 150:  # keyless, to every master (in exactly-once mode: between the slot blocks)
            p = c.pipeline(transaction=False)
            p.incr(b"n1").execute_command("FUNCTION", "LOAD", lib).incr(b"n2").incr(b"n1").execute()
    for i in range(50):
        p = c.pipeline(transaction=True)
        p.set(f"{{tx{i}}}:a".encode(), b"1")
        p.incr(f"{{tx{i}}}:b".encode())
        p.execute()
        p = c.pipeline(transaction=True)  # keys in different slots
        p.set(f"split{i}:a".encode(), b"1")
        p.set(f"split{i}:b".encode(), b"2")
        p.execute()
    c.delete(b"s:1", b"s:2")
    wait_converged(src, shake)
    assert digests([src]) == digests(dst.masters)
    for m in dst.masters:
        assert m.client().execute_command("FUNCTION", "LIST")[0][1] == b"lib"
    assert shake.terminate() == 0, shake.log()[-3000:]


def test_sync_into_cluster_survives_target_reconnects(servers, tmp_path, shakes):
    """Every master of the target cluster drops redshake's connections under load: it
    reconnects (topology read anew) and re-sends from the last acknowledged offset, skipping
    per slot what the slot's marker shows as applied (exactly-once, the default): the load
    is NOT idempotent (INCR, RPUSH), inside and outside transactions."""
    import random


    src = servers.start("redis-7.0")
    dst = servers.cluster("redis-7.0", masters=3)
    shake = Shake(tmp_path, src, dst.seed, writer={"cluster": True})
    shakes.append(shake.start())
    shake.wait_streaming(60, "the snapshot")
    stop = threading.Event()

    def load() -> None:
        rnd = random.Random(5)
        c = src.client()
        while not stop.is_set():
            p = c.pipeline(transaction=rnd.random() < 0.3)
            tag = rnd.randrange(100)
            for _ in range(10):
                r = rnd.random()
                k = f"{{t{tag}}}:{rnd.randrange(20)}"
                if r < 0.3:
                    p.set(k, rnd.randbytes(20))
                elif r < 0.4:
                    p.incr(f"{{t{tag}}}:n")
                elif r < 0.5:
                    p.rpush(f"{{t{rnd.randrange(100)}}}:l", rnd.randrange(100))
                elif r < 0.7:
                    p.hset(f"{{t{tag}}}:h", f"f{rnd.randrange(10)}", rnd.randrange(100))
                elif r < 0.85:
                    p.sadd(f"{{t{tag}}}:s", rnd.randrange(50))
                else:
                    p.delete(k)
            p.execute()

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        for _ in range(3):
            time.sleep(1)
            for m in dst.masters:
                m.client().execute_command("CLIENT", "KILL", "TYPE", "normal")
    finally:
        stop.set()
        t.join(30)
    wait_converged(src, shake)
    assert digests([src]) == digests(dst.masters)
    assert "target reconnected" in shake.log()
    assert "exactly-once: the commands of every stream batch go to each master" in shake.log()
    assert shake.terminate() == 0


@pytest.mark.parametrize("target", ["redis-7.0", "valkey-9.1", "redis-6.2"])
def test_sync_into_cluster_exactly_once_after_kill9(servers, tmp_path, shakes, target):
    """The default config into a 3-master cluster: kill -9 three times under a NON-idempotent
    load (INCR, RPUSH, APPEND, transactions over several slots); each restart resumes from
    the checkpoint and skips, per slot, what the markers show as applied: equal data, no
    full sync, nothing applied twice. Redis >= 7.0 / Valkey: one script call per master and
    batch, one marker per master (in one of its slots); Redis 6.2: one MULTI/EXEC and
    marker per slot."""

    # (source of the target's kind: DEBUG DIGEST-VALUE of a non-integer zset score differs
    # between Redis 7.0 and Valkey 9.1)
    run = _IntoCluster(servers, tmp_path, shakes, target)
    src, dst = run.src, run.dst
    scripts = target != "redis-6.2"
    try:
        for _ in range(3):
            time.sleep(1.5)
            run.restart()
        time.sleep(1)
    finally:
        run.halt()
    shake = run.shake
    wait_converged(src, shake, timeout=90)
    assert "partial resynchronisation accepted" in shake.log()
    assert stat(src, "sync_full") == run.full0, shake.log()[-3000:]
    assert len(digests([src])) > 100 and digests([src]) == digests(dst.masters)
    assert "slots are ahead of offset" in "".join(s.log() for s in shakes)
    for m in dst.masters:  # each master holds the markers of its own slots only
        markers = list(m.client().scan_iter(match=MARKER_PREFIX + b"*", count=1000))
        assert markers and all(_owner_port(dst, k) == m.port for k in markers)
        if scripts:  # one per master (its position and slot list)
            assert len(markers) == 1 and len(m.client().get(markers[0]).split()) == 4
    log = "".join(s.log() for s in shakes)
    assert ("exactly-once unit scripts" in log) == scripts
    assert shake.terminate() == 0


class _IntoCluster:
    """A standalone source (``name``) synced into a 3-master cluster of the same kind with the
    default config, past the snapshot, under a NON-idempotent load (stop it with ``halt()``);
    ``restart()`` kills redshake with -9 and starts it again until it resumed (PSYNC)."""

    def __init__(self, servers, tmp_path, shakes, name: str) -> None:
        self.src = servers.start(name, args=["--repl-backlog-size", "64mb"])
        self.dst = servers.cluster(name, masters=3)
        self.tmp_path, self.shakes = tmp_path, shakes
        self.shake = self._start()
        self.shake.wait_streaming(60, "the snapshot")
        self.full0 = stat(self.src, "sync_full")
        self.halt = start_load(self.src, dbs=(0,))

    def _start(self) -> Shake:
        shake = Shake(self.tmp_path, self.src, self.dst.seed, writer={"cluster": True})
        self.shakes.append(shake.start())
        return shake

    def restart(self) -> Shake:
        self.shake.kill()
        self.shake = self._start()
        self.shake.wait_readers(lambda r: r["partial_resyncs"] >= 1, 60, "the restart")
        return self.shake


def _owner_port(cluster, key: bytes) -> int:
    return slot_owners(cluster)[key_slot(key)].port


def test_v3_sync_toml_into_cluster(servers, tmp_path):
    """The v3 sync.toml of the deployment guides (type = "sync", target type = "cluster"),
    unchanged but for addresses and dir, syncs a source into a cluster and stops on SIGTERM."""
    import subprocess
    import sys

    src = servers.start("redis-6.2")
    c = src.client()
    for i in range(500):
        c.set(f"k{i}".encode(), b"v")
    dst = servers.cluster("redis-7.0", masters=3)
    cfg = tmp_path / "sync.toml"
    cfg.write_text(f"""type = "sync"

[source]
version = 6.0 # redis version, such as 2.8, 4.0, 5.0, 6.0, 6.2, 7.0, ...
address = "{src.address}"
username = "" # keep empty if not using ACL
password = "" # keep empty if no authentication is required
tls = false
elasticache_psync = "" # using when source is ElastiCache. ref: https://github.com/alibaba/RedisShake/issues/373

[target]
type = "cluster" # "standalone" or "cluster"
version = 6.0 # redis version, such as 2.8, 4.0, 5.0, 6.0, 6.2, 7.0, ...
address = "{dst.seed}"
username = "" # keep empty if not using ACL
password = "" # keep empty if no authentication is required
tls = false

[advanced]
dir = "{tmp_path / "data"}"
ncpu = 4
pprof_port = 0
metrics_port = 0
log_file = "redis-shake.log"
log_level = "info" # debug, info or warn
log_interval = 5 # in seconds
rdb_restore_command_behavior = "rewrite" # panic, rewrite or skip
pipeline_count_limit = 1024
target_redis_client_max_querybuf_len = 1024_000_000
target_redis_proto_max_bulk_len = 512_000_000
""")
    out = open(tmp_path / "out.txt", "w")
    p = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    try:
        for i in range(200):
            c.hset(b"h%d" % (i % 10), b"f%d" % i, b"1")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            master, off, _n = replica_offset(src)
            if master > 0 and off == master and digests([src]) == digests(dst.masters):
                break
            time.sleep(0.2)
        assert digests([src]) == digests(dst.masters), (tmp_path / "out.txt").read_text()[-3000:]
        p.send_signal(15)
        assert p.wait(30) == 0, (tmp_path / "out.txt").read_text()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
    assert (tmp_path / "data" / "redis-shake.log").exists()


def test_cluster_source_prefer_replica(servers, tmp_path, shakes):
    """prefer_replica: each shard is read from a replica; the masters get no extra replica."""
    src = servers.cluster("redis-7.0", masters=2, replicas=1)
    fill_cluster(src, 500, "k")
    dst = servers.start("redis-7.0")
    shake = Shake(tmp_path, src.seed, dst, reader={"cluster": True, "prefer_replica": True})
    shakes.append(shake.start())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = {s.port: int(s.info("replication").get("connected_slaves", 0)) for s in src.servers}
        if all(counts[r.port] == 1 for r in src.replicas):
            break
        time.sleep(0.2)
    assert all(counts[r.port] == 1 for r in src.replicas), counts
    assert all(counts[m.port] == 1 for m in src.masters), counts  # only their own replica
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and digests(src.masters) != digests([dst]):
        time.sleep(0.2)
    assert digests(src.masters) == digests([dst])
    assert shake.terminate() == 0, shake.log()[-3000:]


def test_sync_into_cluster_slots_moved_then_kill9(servers, tmp_path, shakes):
    """Exactly-once into a Redis 7.0 cluster while slots move between its masters (keys
    and all) under a NON-idempotent load: the unit scripts of the masters whose slot list
    changed do nothing and their part goes per slot after a topology refresh; then a
    kill -9 and a resume with master markers written under the old and the new slot
    lists: equal data, no full sync."""

    run = _IntoCluster(servers, tmp_path, shakes, "redis-7.0")
    src, dst = run.src, run.dst
    try:
        time.sleep(1)
        for i, key in enumerate((b"n:1", b"l:1", b"k:1")):
            slot = key_slot(key)
            owner = slot_owners(dst)[slot]
            dest = dst.masters[(dst.masters.index(owner) + 1 + i % 2) % 3]
            move_slot(dst, slot, owner, dest)
            time.sleep(0.5)
        time.sleep(1)
        run.restart()
        time.sleep(1)
    finally:
        run.halt()
    shake = run.shake
    wait_converged(src, shake, timeout=90)
    assert stat(src, "sync_full") == run.full0, shake.log()[-3000:]
    assert len(digests([src])) > 100 and digests([src]) == digests(dst.masters)
    assert "exactly-once unit scripts" in "".join(s.log() for s in shakes)
    assert shake.terminate() == 0
