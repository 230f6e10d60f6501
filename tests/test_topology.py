"""A cluster source whose topology changes while redshake follows it, writes going on:
failovers (CLUSTER FAILOVER, a killed master), slots moving between shards (MIGRATE), a
master joining and one leaving; and a sentinel-managed target failing over. The target is
compared key by key with the source at the end (missing keys, extra keys, values, TTLs)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import redis

from harness import Shake
from helpers import OWN_PREFIXES, digest_map, expire_map
from redshake.commands.slots import key_slot
from redshake.resp.server import parse_node_lines


def follow(tmp: Path, seed: str, dst, shakes: list, name: str = "redshake") -> Shake:
    """redshake (the CLI, in a subprocess) syncing the cluster source of ``seed`` into ``dst``."""
    f = Shake(tmp, seed, dst, reader={"cluster": True}, name=name).start()
    shakes.append(f)
    return f


def until(cond, timeout: float, what: str, follower: Shake | None = None) -> None:
    """Until ``cond()`` (on the servers: failovers, slot moves) holds; errors of servers
    changing roles are retried; fails at once if redshake exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if follower is not None and follower.proc.poll() is not None:
            raise AssertionError(f"redshake exited while waiting for {what}:\n" + follower.log()[-4000:])
        try:
            if cond():
                return
        except (redis.ConnectionError, redis.ResponseError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + ("\n" + follower.log()[-4000:] if follower else ""))


def view(cluster) -> list:
    """CLUSTER NODES (parsed) from the first live node of ``cluster``."""
    for s in cluster.servers:
        if s.alive():
            try:
                with s.client(socket_timeout=5) as c:
                    return parse_node_lines(c.execute_command("CLUSTER", "NODES"), "127.0.0.1")
            except redis.ConnectionError:
                continue
    raise AssertionError("no live node")


def masters_now(cluster) -> list:
    """The servers that are masters owning slots right now."""
    by_port = {s.port: s for s in cluster.servers}
    return [
        by_port[int(n.address.rsplit(":", 1)[1])]
        for n in view(cluster)
        if n.is_master and n.usable and n.ranges
    ]


def followed(master) -> bool:
    """redshake (the replica announcing port 0) has ACKed all of ``master``'s stream."""
    info = master.info("replication")
    off = int(info["master_repl_offset"])
    acks = [int(v["offset"]) for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict) and int(v.get("port", -1)) == 0]  # fmt: skip
    return bool(acks) and acks[0] == off


def caught_up(cluster, follower: Shake, timeout: float = 60) -> None:
    def done() -> bool:
        ms = masters_now(cluster)
        if not all(followed(m) for m in ms):
            return False
        time.sleep(0.3)
        return all(followed(m) for m in ms)

    until(done, timeout, "redshake to apply every shard's stream", follower)


def show(c: redis.Redis, key: bytes) -> str:
    """A short picture of a key's value (for assertion messages)."""
    kind = c.type(key).decode()
    if kind == "string":
        v = c.get(key)
        return repr(v if len(v) < 20 else v[:20] + b"...")
    if kind == "list":
        items = c.lrange(key, 0, -1)
        return f"list of {len(items)} {[int(x) for x in items][-6:]}"
    return f"{kind}"


def same_data(masters, dst) -> int:
    """Every key of the source masters is on the target with the same value and expiry, and
    the target has no other key (exactly-once markers aside)."""
    src_keys: dict[bytes, object] = {}
    for m in masters:
        for k in m.client().scan_iter(count=1000):
            src_keys[k] = m
    dc = dst.client()
    dst_keys = {k for k in dc.scan_iter(count=1000) if not k.startswith(OWN_PREFIXES)}
    missing, extra = set(src_keys) - dst_keys, dst_keys - set(src_keys)
    assert not missing and not extra, (
        f"{len(missing)} keys missing on the target (e.g. {sorted(missing)[:5]}), "
        f"{len(extra)} extra (e.g. {sorted(extra)[:5]})"
    )
    for m in masters:
        keys = sorted(k for k, owner in src_keys.items() if owner is m)
        a, b = digest_map(m.client(), keys), digest_map(dc, keys)
        diff = [k for k in keys if a[k] != b[k]]
        assert not diff, f"{len(diff)} keys differ, e.g. " + ", ".join(
            f"{k!r}: {show(m.client(), k)} on the source, {show(dc, k)} on the target" for k in diff[:5]
        )
        ea, eb = expire_map(m.client(), keys, True), expire_map(dc, keys, True)
        assert ea == eb, [k for k in keys if ea[k] != eb[k]][:5]
    return len(src_keys)


TAGS = 24  # the Load's keys are spread over this many hash tags (slots)


class Load(threading.Thread):
    """Writes that are not idempotent (INCRBY, RPUSH, HINCRBY, SADD of new members, DEL,
    SET with TTL) through a cluster client, until stopped; ``pause`` holds it."""

    def __init__(self, cluster, seed: int = 1) -> None:
        super().__init__(daemon=True)
        n = cluster.masters[0]
        self.client = redis.RedisCluster(host=n.host, port=n.port, protocol=2)
        self.rnd = random.Random(seed)
        self.halt = threading.Event()
        self.pause = threading.Event()
        self.idle = threading.Event()
        self.done = 0

    def run(self) -> None:
        i = 0
        rnd = self.rnd
        while not self.halt.is_set():
            if self.pause.is_set():
                self.idle.set()
                time.sleep(0.02)
                continue
            self.idle.clear()
            i += 1
            k = rnd.randrange(300)
            try:
                op = i % 6
                if op == 0:
                    self.client.incrby(f"{{t{k % TAGS}}}cnt:{k}", rnd.randrange(1, 9))
                elif op == 1:
                    self.client.rpush(f"{{t{k % TAGS}}}list:{k % 60}", i)
                elif op == 2:
                    self.client.hincrby(f"{{t{k % TAGS}}}hash:{k % 40}", f"f{k % 7}", 1)
                elif op == 3:
                    self.client.sadd(f"{{t{k % TAGS}}}set:{k % 30}", i)
                elif op == 4:
                    self.client.set(f"{{t{k % TAGS}}}str:{k}", b"v" * rnd.choice((3, 40, 3000)), px=rnd.choice((None, 600_000)))
                else:
                    d = rnd.randrange(300)
                    self.client.delete(f"{{t{d % TAGS}}}str:{d}")
                self.done += 1
            except Exception:  # (redis.RedisError and the cluster client's own) noqa: BLE001
                time.sleep(0.05)  # a failover or a moving slot: the source decides what happened
            if i % 50 == 0:
                time.sleep(0.002)

    def hold(self) -> None:
        self.pause.set()
        self.idle.wait(10)

    def finish(self) -> None:
        self.halt.set()
        self.join(10)
        self.client.close()


def preload(cluster, n: int = 1500) -> None:
    c = redis.RedisCluster(host=cluster.masters[0].host, port=cluster.masters[0].port, protocol=2)
    p = c.pipeline()
    for i in range(n):
        p.set(f"{{t{i % TAGS}}}pre:{i}", b"x" * (i % 200), ex=3600 if i % 5 == 0 else None)
        if i % 10 == 0:
            p.hset(f"preh:{i}", mapping={f"f{j}": j for j in range(20)})
    p.execute()
    c.close()


def test_cluster_source_failovers(servers, tmp_path, shakes):
    """Shard 1 fails over with CLUSTER FAILOVER during writes; shard 2's master is killed
    and its replica takes over. redshake continues each from the promoted replica with
    PSYNC (no new snapshot) and the target ends equal to the source."""
    src = servers.cluster("redis-7.0", masters=2, replicas=1)
    dst = servers.start("redis-7.0")
    preload(src)
    load = Load(src)
    load.start()
    f = follow(tmp_path, src.seed, dst, shakes)
    try:
        f.wait_streaming(60, "both shards streaming", shards=2)
        time.sleep(0.5)
        m0, m1 = src.masters
        r0, r1 = src.replicas  # replicas[i] follows masters[i]
        r0.client().execute_command("CLUSTER", "FAILOVER")  # coordinated, writes go on
        until(lambda: r0.info("replication")["role"] == "master", 30, "the manual failover", f)
        time.sleep(1.0)
        load.hold()  # the replica has every write the master acknowledged: a clean takeover
        until(lambda: r1.info("replication")["master_repl_offset"]
              == m1.info("replication")["master_repl_offset"], 30, "the replica")  # fmt: skip
        m1.stop()
        r1.client().execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        until(lambda: r1.info("replication")["role"] == "master", 30, "the takeover", f)
        load.pause.clear()
        time.sleep(1.5)
    finally:
        load.finish()
    caught_up(src, f)
    assert set(masters_now(src)) == {r0, r1}
    n = same_data([r0, r1], dst)
    assert n > 1500
    log = f.log()
    assert f"the shard's master is now {r0.address}" in log, log[-4000:]
    assert f"the shard's master is now {r1.address}" in log, log[-4000:]
    # one snapshot per shard, at the start; after that partial resyncs only
    readers = f.readers()
    assert len(readers) == 2, readers
    for r in readers:
        assert r["full_syncs"] == 1 and r["partial_resyncs"] >= 1, r
    assert f.terminate(60) == 0, f.log()[-3000:]
    # a restart finds each shard's work (checkpoint) by its nodes and resumes with PSYNC
    load = Load(src, seed=9)
    load.start()
    f = follow(tmp_path, r0.address, dst, shakes, name="again")
    try:
        f.wait_streaming(60, "both shards streaming again", shards=2)
        time.sleep(1.0)
    finally:
        load.finish()
    caught_up(src, f)
    same_data([r0, r1], dst)
    assert f.log().count("was followed from") == 2, f.log()[-4000:]
    for r in f.readers():
        assert r["full_syncs"] == 0 and r["partial_resyncs"] == 1, r
    assert f.terminate(60) == 0, f.log()[-3000:]


def migrate_slot(cluster, slot: int, src, dst, batch: int = 10) -> int:
    """Classic resharding of one slot (SETSLOT IMPORTING / MIGRATING, MIGRATE in batches,
    SETSLOT NODE everywhere). Returns the number of keys moved."""
    sid, did = cluster.node_id(src), cluster.node_id(dst)
    sc, dc = src.client(), dst.client()
    dc.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
    sc.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", did)
    moved = 0
    while True:
        keys = sc.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
        if not keys:
            break
        sc.execute_command("MIGRATE", dst.host, dst.port, "", 0, 5000, "REPLACE", "KEYS", *keys)
        moved += len(keys)
        time.sleep(0.01)
    dc.execute_command("CLUSTER", "SETSLOT", slot, "NODE", did)
    for node in (src, *[m for m in cluster.masters if m not in (src, dst)]):
        try:
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", did)
        except redis.ResponseError:  # a master that gave its last slot away is a replica now
            pass
    return moved


def tag_slots() -> list[int]:
    """The slots of the Load's hash tags: moving them moves keys being written."""
    return sorted({key_slot(b"{t%d}" % t) for t in range(TAGS)})


def following(servers, tmp: Path, shakes: list, *, preloaded: int, seed: int, name: str = "redis-7.0"):
    """A 2-master source cluster with data and a running Load, a standalone target, and
    redshake following the source: (source, target, load, follower)."""
    src = servers.cluster(name, masters=2)
    dst = servers.start(name)
    preload(src, preloaded)
    load = Load(src, seed=seed)
    load.start()
    return src, dst, load, follow(tmp, src.seed, dst, shakes)


def test_cluster_source_slot_migration(servers, tmp_path, shakes):
    """Slots move between the source's shards (MIGRATE) while writes go on: the old owner's
    DELs of moved keys must not delete what the new owner's stream restored."""
    src, dst, load, f = following(servers, tmp_path, shakes, preloaded=800, seed=2)
    moved = 0
    try:
        f.wait_streaming(60, "both shards streaming", shards=2)
        a, b = src.masters
        for slot in tag_slots()[::2]:
            owner = src.owner_of(slot)
            moved += migrate_slot(src, slot, owner, b if owner is a else a)
    finally:
        load.finish()
    assert moved > 20
    caught_up(src, f)
    same_data(src.masters, dst)
    doc = f.status()
    assert doc["redshake"]["skipped"].get("moved_to_other_shard", 0) > 0, doc["redshake"]
    assert f.terminate(60) == 0, f.log()[-3000:]


def test_sentinel_target_failover(servers, tmp_path, shakes):
    """The target's master fails over (Sentinel) while the stream is applied: the writer
    finds the new master through Sentinel and re-sends what it had not seen acknowledged
    there (exactly-once: from the new master's own position marker)."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    rep = servers.start("redis-7.0", args=["--replicaof", dst.host, str(dst.port)])
    until(lambda: rep.info("replication")["master_link_status"] == "up", 30, "the target's replica")
    sentinel = servers.sentinel(dst, "target")
    sc = sentinel.client()
    until(lambda: len(sc.execute_command("SENTINEL", "REPLICAS", "target")) >= 1, 30, "discovery")
    c = src.client()
    for i in range(500):
        c.set(f"pre:{i}", b"x" * (i % 300))
    f = Shake(tmp_path, src, "", name="redshake",
              writer_sentinel={"master_name": "target", "address": sentinel.address}).start()  # fmt: skip
    shakes.append(f)
    halt = threading.Event()

    def load() -> None:
        rnd = random.Random(3)
        i = 0
        with src.client() as lc:
            while not halt.is_set():
                i += 1
                p = lc.pipeline(transaction=False)
                p.incr(f"cnt:{rnd.randrange(50)}")
                p.rpush(f"list:{rnd.randrange(20)}", i)
                p.hincrby(f"hash:{rnd.randrange(10)}", f"f{i % 5}", 1)
                if i % 3 == 0:
                    p.delete(f"pre:{rnd.randrange(500)}")
                p.execute()
                time.sleep(0.002)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        f.wait_streaming(60, "the stream")
        time.sleep(0.5)
        sc.execute_command("SENTINEL", "FAILOVER", "target")
        until(lambda: int(sc.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "target")[1]) == rep.port
              and rep.info("replication")["role"] == "master", 60, "the failover", f)  # fmt: skip
        until(lambda: dst.info("replication")["role"] == "slave", 60, "the old master's demotion", f)
        time.sleep(1.0)
    finally:
        halt.set()
        t.join(10)

    def applied() -> bool:
        m = src.info("replication")
        return all(
            int(v["offset"]) == int(m["master_repl_offset"])
            for k, v in m.items() if k.startswith("slave") and isinstance(v, dict)
        ) and int(m["connected_slaves"]) == 1  # fmt: skip

    until(applied, 60, "redshake to apply the stream", f)
    time.sleep(0.5)
    same_data([src], rep)
    log = f.log()
    assert f"the target master is now {rep.address}" in log, log[-4000:]
    assert f.terminate(60) == 0, f.log()[-3000:]


def test_cluster_source_shard_joins_and_leaves(servers, tmp_path, shakes):
    """A master joins the source cluster and receives slots (resharding under writes):
    redshake starts following it. Later its slots are moved away and it is removed from the
    cluster: its process applies what it received and stops. The run goes on."""
    src, dst, load, f = following(servers, tmp_path, shakes, preloaded=600, seed=4)
    new = servers.start("redis-7.0", cluster=True)
    src.servers.append(new)
    moving = tag_slots()[::3]
    try:
        f.wait_streaming(60, "both shards streaming", shards=2)
        new.client().execute_command("CLUSTER", "MEET", src.masters[0].host, src.masters[0].port)
        def joined() -> bool:
            infos = [m.client().execute_command("CLUSTER", "INFO").decode() for m in src.servers]
            return all("cluster_known_nodes:3" in i and "cluster_state:ok" in i for i in infos)

        until(joined, 30, "the new node to join")
        for slot in moving:
            migrate_slot(src, slot, src.owner_of(slot), new)
        f.wait_streaming(60, "the new shard streaming", shards=3)
        assert f"master {new.address} joined" in f.log()
        time.sleep(1.0)
        for i, slot in enumerate(moving):  # empty the new master again
            migrate_slot(src, slot, new, src.masters[i % 2])
        time.sleep(0.5)
    finally:
        load.finish()
    gone = src.node_id(new)
    for m in src.masters:
        m.client().execute_command("CLUSTER", "FORGET", gone)
    new.stop()
    src.servers.remove(new)
    # its process stops once it applied what it received; the parent goes on
    f.wait_status(lambda doc: doc["redshake"].get("shards_ended", {}).get(new.address) == 0, 90,
                  "its process to stop")  # fmt: skip
    assert f"the shard of {new.address} left the cluster" in f.log(), f.log()[-3000:]
    caught_up(src, f)
    same_data(src.masters, dst)
    assert f.proc.poll() is None  # the other shards go on
    assert f.terminate(60) == 0, f.log()[-3000:]
    assert f"shard {new.address} exited with 0" in f.log()


def test_cluster_source_atomic_slot_migration(servers, tmp_path, shakes):
    """Valkey 9 atomic slot migration (CLUSTER MIGRATESLOTS) under writes: the slots' data
    reaches the new owner through its own stream; the old owner's cleanup afterwards must
    not delete it on the target; the new owner's writes to the slots reach the target only
    after everything the old owner wrote to them (lists and strings compared key by key)."""
    src, dst, load, f = following(servers, tmp_path, shakes, preloaded=800, seed=5, name="valkey-9.1")
    try:
        f.wait_streaming(60, "both shards streaming", shards=2)
        a, b = src.masters
        slots = tag_slots()[::2]
        for slot in slots:
            owner = src.owner_of(slot)
            other = b if owner is a else a
            owner.client().execute_command(
                "CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", slot, slot, "NODE", src.node_id(other)
            )
            until(lambda s=slot, o=other: src.owner_of(s) is o, 30, f"slot {slot} to move", f)
    finally:
        load.finish()
    caught_up(src, f)
    same_data(src.masters, dst)
    skipped = f.status()["redshake"]["skipped"]
    # the new owner's copy of the slots was not applied, nor the old owner's cleanup
    assert skipped.get("atomic_slot_import_copy", 0) > 0 and skipped.get("moved_to_other_shard", 0) > 0, skipped
    log = f.log()
    # each import's end waited for the old owner's stream (by offset), never applied anyway
    assert log.count("its new owner's writes follow the old owner's") >= len(slots), log[-3000:]
    assert "not guaranteed" not in log, log[-3000:]
    assert f.terminate(60) == 0, f.log()[-3000:]


def _migrations(node) -> list[dict]:
    """CLUSTER GETSLOTMIGRATIONS of ``node``, one dict per job (RESP2 flat lists)."""
    out = []
    for job in node.client().execute_command("CLUSTER", "GETSLOTMIGRATIONS"):
        if isinstance(job, dict):
            out.append({_s(k): _s(v) for k, v in job.items()})
        else:
            out.append({_s(job[i]): _s(job[i + 1]) for i in range(0, len(job), 2)})
    return out


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def test_cluster_source_atomic_slot_migration_cancelled(servers, tmp_path, shakes):
    """Valkey 9 atomic slot migrations cancelled after the new owner got its copy of the
    slots (writes going on): the slots stay with the old owner, the would-be new owner
    throws its copy away; nothing of that copy or of its removal may reach the target."""
    src, dst, load, f = following(servers, tmp_path, shakes, preloaded=800, seed=7, name="valkey-9.1")
    a, b = src.masters
    try:
        f.wait_streaming(60, "both shards streaming", shards=2)
        for m in (a, b):  # the old owner never pauses: the job waits until cancelled
            m.client().execute_command("DEBUG", "SLOTMIGRATION", "PREVENT-PAUSE", 1)
        slots = tag_slots()[1::3]
        for slot in slots:
            owner = src.owner_of(slot)
            other = b if owner is a else a
            owner.client().execute_command(
                "CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", slot, slot, "NODE", src.node_id(other)
            )
            until(lambda o=owner: any(j.get("state") == "waiting-to-pause" for j in _migrations(o)),
                  30, f"slot {slot}'s copy to reach the new owner", f)  # fmt: skip
            time.sleep(0.3)  # writes to the slot go on through the old owner meanwhile
            assert other.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
            owner.client().execute_command("CLUSTER", "CANCELSLOTMIGRATIONS")
            until(lambda o=other: all(j.get("state") in ("failed", "cancelled", "success")
                                      for j in _migrations(o)), 30, "the import to end", f)  # fmt: skip
            until(lambda s=slot, o=other: o.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", s) == 0,
                  30, f"slot {slot}'s copy to be thrown away", f)  # fmt: skip
            assert src.owner_of(slot) is owner
        for m in (a, b):
            m.client().execute_command("DEBUG", "SLOTMIGRATION", "PREVENT-PAUSE", 0)
        # and one that succeeds afterwards: the earlier cancels left nothing behind
        slot = slots[0]
        owner = src.owner_of(slot)
        other = b if owner is a else a
        owner.client().execute_command(
            "CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", slot, slot, "NODE", src.node_id(other)
        )
        until(lambda: src.owner_of(slot) is other, 30, f"slot {slot} to move", f)
    finally:
        load.finish()
    caught_up(src, f)
    n = same_data(src.masters, dst)
    assert n > 800
    log = f.log()
    # each cancelled import's copy and its removal (UNLINKs before SYNCSLOTS FINISH FAILED)
    # were skipped; the successful one waited for the old owner's stream
    assert log.count("ends (FAILED)") >= len(slots), log[-3000:]
    assert f.status()["redshake"]["skipped"].get("atomic_slot_import_copy", 0) > 0
    assert "its new owner's writes follow the old owner's" in log, log[-3000:]
    assert "not guaranteed" not in log, log[-3000:]
    assert f.terminate(60) == 0, f.log()[-3000:]
