"""resp/server.py: INFO, cluster topology, replica choice and sentinel resolution, parsed from
what real servers answer (Redis 7.0, Valkey 9.1, Redis 5.0)."""

from __future__ import annotations

import time

import pytest

import servers as srv
from redshake.config.schema import RedisWriterConfig, SyncReaderConfig, TlsConfig
from redshake.entry import Entry
from redshake.guard import _masters
from redshake.resp.conn import Connection, connect
from redshake.resp.server import (
    ClusterShard,
    NodeLine,
    SentinelError,
    ServerInfo,
    best_replica,
    cluster_shards,
    keyspace_counts,
    parse_cluster_nodes,
    parse_cluster_shards,
    parse_cluster_slots,
    parse_node_lines,
    read_info,
    replicas_of,
    resolve_sentinel_master,
    version_tuple,
)
from redshake.shards import source_shards
from redshake.writers.cluster import ClusterWriter
from redshake.writers.redis import RedisWriter

ENGINES = ["redis-7.0", "valkey-9.1", "redis-5.0"]


def _wait(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _view(shards: list[ClusterShard]) -> list[tuple]:
    """What any of the three topology replies must agree on."""
    return sorted(
        (sh.master.address, sorted(sh.ranges), sorted(r.address for r in sh.replicas)) for sh in shards
    )


def test_version_tuple() -> None:
    assert version_tuple("7.0.15") == (7, 0, 15)
    assert version_tuple("8.1.0-rc1") == (8, 1, 0)
    assert version_tuple("9") == (9, 0, 0)
    assert version_tuple("") == (0, 0, 0)


@pytest.mark.parametrize("engine", ENGINES)
def test_standalone_info(servers, engine: str) -> None:
    s = servers.start(engine)
    with s.client(3) as c:
        c.set("a", "1")
        c.set("b", "2", px=60_000)
    with s.client(0) as c:
        c.set("z", "1")
    with connect(s.address) as conn:
        info = ServerInfo.probe(conn)
        counts = keyspace_counts(read_info(conn, "keyspace"))
        assert read_info(conn, "nosuchsection", "keyspace") == read_info(conn, "keyspace")
    assert info.version == s.version
    assert info.is_valkey == s.is_valkey
    assert not info.cluster
    assert info.describe() == ("valkey " if s.is_valkey else "redis ") + ".".join(map(str, s.version))
    assert counts == {0: 1, 3: 2}


@pytest.mark.parametrize("engine", ["redis-7.0", "redis-5.0"])
def test_best_replica(servers, engine: str) -> None:
    master = servers.start(engine)
    replica = servers.start(engine)
    with connect(master.address) as conn:
        assert best_replica(read_info(conn, "replication")) is None
    with replica.client() as c:
        c.execute_command("REPLICAOF", master.host, master.port)

    def online() -> bool:
        with connect(master.address) as conn:
            return [r.state for r in replicas_of(read_info(conn, "replication"))] == ["online"]

    _wait(online, "the replica to be online")
    with connect(master.address) as conn:
        assert best_replica(read_info(conn, "replication")) == replica.address
    # the prefer_replica choice of the sync reader
    from redshake.readers.sync_reader import _pick_replica

    rc = SyncReaderConfig(address=master.address, prefer_replica=True)
    assert _pick_replica(master.address, rc) == replica.address


@pytest.mark.parametrize("engine", ENGINES)
def test_cluster_topology_replies_agree(servers, engine: str) -> None:
    cl = servers.cluster(engine, masters=2, replicas=1)
    seed = cl.masters[0]
    replicas = {r.address for r in cl.replicas}

    def all_healthy() -> bool:
        with connect(seed.address) as conn:
            return {sh.read_address(True) for sh in cluster_shards(conn)} == replicas

    # (first: right after the cluster forms, one reply may not list a replica yet)
    _wait(all_healthy, "every replica to be healthy")
    with connect(seed.address) as conn:
        assert ServerInfo.probe(conn).cluster
        nodes = parse_cluster_nodes(conn.call("CLUSTER", "NODES"), seed.host)
        slots = parse_cluster_slots(conn.call("CLUSTER", "SLOTS"), seed.host)
        chosen = cluster_shards(conn)
        if seed.version >= (7, 0, 0) or seed.is_valkey:
            shards = parse_cluster_shards(conn.call("CLUSTER", "SHARDS"), seed.host)
            assert _view(shards) == _view(nodes)
            assert _view(chosen) == _view(shards)
        else:
            assert _view(chosen) == _view(nodes)  # (SHARDS unknown before 7.0)
    assert _view(slots) == _view(nodes)
    masters = sorted(m.address for m in cl.masters)
    assert [v[0] for v in _view(chosen)] == masters
    assert sum(hi - lo + 1 for sh in chosen for lo, hi in sh.ranges) == 16384
    ids = {cl.node_id(s) for s in cl.servers}
    assert set().union(*(sh.ids for sh in chosen)) == ids
    # every caller sees the same topology
    assert sorted(a for a, _r, _i in source_shards(seed.address)) == masters
    assert sorted(a for a, _r, _i in source_shards(seed.address, prefer_replica=True)) == sorted(replicas)
    # (the reverse-sync guard unpacked source_shards' triples as pairs before)
    assert sorted(_masters(RedisWriterConfig(cluster=True), seed.address, {})) == masters
    w = ClusterWriter(seed.address)
    try:
        assert sorted(m.address for m in w.masters) == masters
    finally:
        w.close()


def test_cluster_hostname_endpoint(servers) -> None:
    """With cluster-preferred-endpoint-type hostname the announced hostname is the address
    to use (what CLUSTER SLOTS and cluster clients give); CLUSTER NODES still gives the IP."""
    cl = servers.cluster("redis-7.0", masters=2, replicas=1)
    for s in cl.servers:
        with s.client() as c:
            c.config_set("cluster-announce-hostname", "localhost")
            c.config_set("cluster-preferred-endpoint-type", "hostname")
    seed = cl.masters[0]

    def gossiped() -> bool:
        with seed.client() as c:
            rows = c.execute_command("CLUSTER", "SLOTS")
        return all(n[0] == b"localhost" for row in rows for n in row[2:])

    _wait(gossiped, "the hostnames to be known")
    with connect(seed.address) as conn:
        chosen = cluster_shards(conn)
        slots = parse_cluster_slots(conn.call("CLUSTER", "SLOTS"), seed.host)
        nodes = parse_cluster_nodes(conn.call("CLUSTER", "NODES"), seed.host)
    assert _view(chosen) == _view(slots)
    assert {sh.master.address for sh in chosen} == {f"localhost:{m.port}" for m in cl.masters}
    assert {sh.master.address for sh in nodes} == {m.address for m in cl.masters}
    assert sorted(a for a, _r, _i in source_shards(seed.address)) == sorted(f"localhost:{m.port}" for m in cl.masters)
    # "?" (unknown-endpoint): the IP is used
    for s in cl.servers:
        with s.client() as c:
            c.config_set("cluster-preferred-endpoint-type", "unknown-endpoint")
    with connect(seed.address) as conn:
        assert {sh.master.address for sh in cluster_shards(conn)} == {m.address for m in cl.masters}


def test_sentinel_resolution(servers) -> None:
    master = servers.start("redis-7.0")
    sentinel = servers.sentinel(master, "mymaster")
    assert resolve_sentinel_master(sentinel.address, "mymaster") == master.address
    bad = f"127.0.0.1:{srv.free_port()}"
    assert resolve_sentinel_master(f"{bad},{sentinel.address}", "mymaster") == master.address
    with pytest.raises(SentinelError, match="nosuchmaster"):
        resolve_sentinel_master(sentinel.address, "nosuchmaster")
    with pytest.raises(SentinelError, match="no sentinel"):
        resolve_sentinel_master(bad, "mymaster")
    w = RedisWriter(resolve_sentinel_master(sentinel.address, "mymaster"))
    w.write(Entry(0, [b"SET", b"via", b"sentinel"], b"via"))
    w.flush()
    w.close()
    assert master.client().get("via") == b"sentinel"


def test_connect_options(servers) -> None:
    s = servers.start("redis-7.0", password="pw")
    cfg = RedisWriterConfig(address=s.address, password="pw", tls_skip_verify=True,
                            tls_config=TlsConfig(ca_cert="/ca", cert="/c", key="/k"))  # fmt: skip
    opts = cfg.connect_options(5.0)
    assert opts == dict(username=None, password="pw", tls=False, tls_verify=False,
                        ca_cert="/ca", cert="/c", key="/k", timeout=5.0)  # fmt: skip
    with Connection(s.host, s.port, **RedisWriterConfig(password="pw").connect_options()) as conn:
        assert conn.call("PING") == b"PONG"


def test_node_lines_of_a_cluster(servers) -> None:
    """parse_node_lines: every node of a real 3-master cluster with replicas, and the
    migration markers while a slot moves (only on the answering node's own line)."""
    from harness import finish_move, move_slot

    cl = servers.cluster("redis-7.0", masters=3, replicas=1)
    m0, m1 = cl.masters[0], cl.masters[1]
    ids = {cl.node_id(s): s for s in cl.servers}

    def lines(server) -> list[NodeLine]:
        with connect(server.address) as conn:
            return parse_node_lines(conn.call("CLUSTER", "NODES"), server.host)

    def settled() -> bool:
        return len(lines(m0)) == len(cl.servers) and all(n.usable for n in lines(m0))

    _wait(settled, "every node to be known")
    nodes = lines(m0)
    assert {n.id for n in nodes} == set(ids)
    for n in nodes:
        assert n.address == ids[n.id].address
        assert n.is_master == (ids[n.id] in cl.masters)
        assert n.is_replica == (ids[n.id] in cl.replicas)
        assert ("myself" in n.flags) == (ids[n.id] is m0)
        assert not n.migrating and not n.importing
    masters = [n for n in nodes if n.is_master]
    assert all(n.master_id == "-" for n in masters)
    assert {n.master_id for n in nodes if n.is_replica} == {n.id for n in masters}
    assert sum(hi - lo + 1 for n in masters for lo, hi in n.ranges) == 16384
    # the shard view is built from the same lines
    with connect(m0.address) as conn:
        shards = parse_cluster_nodes(conn.call("CLUSTER", "NODES"), m0.host)
    assert _view(shards) == sorted(
        (n.address, sorted(n.ranges), sorted(r.address for r in nodes if r.master_id == n.id)) for n in masters
    )

    # a slot half-way from m0 to m1: m0 migrates it, m1 imports it, m0 still owns it
    slot = next(lo for n in lines(m0) if n.id == cl.node_id(m0) for lo, _ in n.ranges)
    move_slot(cl, slot, m0, m1, finish=False)
    me = next(n for n in lines(m0) if "myself" in n.flags)
    assert me.migrating == {slot: cl.node_id(m1)} and not me.importing
    assert any(lo <= slot <= hi for lo, hi in me.ranges)
    them = next(n for n in lines(m1) if "myself" in n.flags)
    assert them.importing == {slot: cl.node_id(m0)} and not them.migrating
    assert not any(lo <= slot <= hi for lo, hi in them.ranges)
    # other nodes' lines never carry markers
    assert not any(n.migrating or n.importing for n in lines(m0) if "myself" not in n.flags)
    finish_move(cl, slot, m1)
    me = next(n for n in lines(m0) if "myself" in n.flags)
    assert not me.migrating and not any(lo <= slot <= hi for lo, hi in me.ranges)
    them = next(n for n in lines(m1) if "myself" in n.flags)
    assert not them.importing and any(lo <= slot <= hi for lo, hi in them.ranges)


def test_node_lines_flags_and_addresses() -> None:
    """What a live cluster rarely shows on demand: IPv6 and hostnames, failing nodes, a node
    without its IP yet, one without an address at all."""
    text = (
        "a1 ::1:7000@17000,host-a myself,master - 0 0 1 connected 0-100 [5->-b1] [7-<-c1]\n"
        "b1 10.0.0.2:7001@17001 master,fail - 0 0 2 disconnected 101-200\n"
        "c1 :7002@17002 master - 0 0 3 connected 201\n"
        "d1 10.0.0.4:7003@17003 slave,fail? a1 0 0 1 connected\n"
        "e1 :0@0 master,noaddr - 0 0 0 disconnected\n"
        "f1 10.0.0.6:7005@17005 handshake - 0 0 0 disconnected\n"
    )
    nodes = {n.id: n for n in parse_node_lines(text, "seed.example")}
    assert set(nodes) == {"a1", "b1", "c1", "d1", "f1"}  # (no address: left out)
    a = nodes["a1"]
    assert a.address == "[::1]:7000" and a.hostname == "host-a"
    assert a.ranges == [(0, 100)] and a.migrating == {5: "b1"} and a.importing == {7: "c1"}
    assert a.usable and a.is_master and a.master_id == "-" and a.link == "connected"
    assert nodes["c1"].address == "seed.example:7002" and nodes["c1"].ranges == [(201, 201)]
    assert not nodes["b1"].usable and not nodes["d1"].usable and not nodes["f1"].usable
    assert nodes["d1"].is_replica and nodes["d1"].master_id == "a1"
    # the shard view: the failed master is no shard; a replica suspected failing is unhealthy
    shards = {sh.master.id: sh for sh in parse_cluster_nodes(text, "seed.example")}
    assert set(shards) == {"a1", "c1"}
    assert [(r.id, r.healthy) for r in shards["a1"].replicas] == [("d1", False)]
