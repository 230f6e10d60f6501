"""Writers against real servers: standalone, cluster (incl. resharding), sentinel, AUTH, TLS."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

import servers as srv
from helpers import make_certs
from redshake.commands.slots import key_slot
from redshake.entry import KEYLESS_ALL_MASTERS, Entry
from redshake.resp.conn import (
    AuthError,
    Connection,
    ConnError,
    ReplyError,
    TLSVerifyError,
    connect,
    parse_address,
)
from redshake.resp.encode import encode, encode_many
from redshake.writers.base import TargetInfo, WriterError, rdb_version_for
from redshake.writers.cluster import ClusterWriter, basic_command_keys
from redshake.writers.redis import RedisWriter


def E(db: int, *args: bytes | str, key: object = None, offset: int = -1) -> Entry:
    argv = [a.encode() if isinstance(a, str) else a for a in args]
    if key is None and len(argv) > 1:
        key = argv[1]
    return Entry(db, argv, key, offset)


# -- encoding / addresses ------------------------------------------------------------------


def test_encode() -> None:
    assert encode([b"SET", b"k", b"v"]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
    assert encode(["SET", "ké", 12]) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$2\r\n12\r\n"
    big = b"x" * 100000
    assert encode([big]) == b"*1\r\n$100000\r\n" + big + b"\r\n"
    assert (
        encode_many([[b"PING"], ["GET", 1]])
        == b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\n1\r\n"
    )
    assert encode([]) == b"*0\r\n"


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:6380") == ("127.0.0.1", 6380)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert parse_address("localhost") == ("localhost", 6379)
    with pytest.raises(ValueError):
        parse_address("::1:7000")
    with pytest.raises(ValueError):
        parse_address("h:notaport")


def test_rdb_version_mapping() -> None:
    assert rdb_version_for((3, 0, 7), False) == 6
    assert rdb_version_for((3, 2, 0), False) == 7
    assert rdb_version_for((4, 0, 14), False) == 8
    assert rdb_version_for((6, 2, 14), False) == 9
    assert rdb_version_for((7, 0, 15), False) == 10
    assert rdb_version_for((7, 2, 4), False) == 11
    assert rdb_version_for((8, 4, 0), False) == 12
    assert rdb_version_for((8, 1, 8), True) == 11
    assert rdb_version_for((9, 1, 2), True) == 80
    v9 = TargetInfo((9, 1, 2), True, 80)
    assert v9.accepts_rdb(11, False) and v9.accepts_rdb(80, True) and v9.accepts_rdb(1, False)
    assert not v9.accepts_rdb(12, False) and not v9.accepts_rdb(81, True)
    v8 = TargetInfo((8, 1, 8), True, 11)
    assert v8.accepts_rdb(11, False) and not v8.accepts_rdb(80, True)
    r7 = TargetInfo((7, 0, 15), False, 10)
    assert r7.accepts_rdb(10, False) and not r7.accepts_rdb(11, False)
    assert not r7.accepts_rdb(80, True) and not r7.accepts_rdb(0, False)


EXPECTED_RDB = {
    "redis-5.0": 9,
    "redis-6.0": 9,
    "redis-6.2": 9,
    "redis-7.0": 10,
    "valkey-8.1": 11,
    "valkey-9.1": 80,
}


@pytest.mark.parametrize("name", list(srv.SERVER_BINARIES))
def test_target_info_and_writes(servers, name: str) -> None:
    s = servers.start(name)
    w = RedisWriter(s.address)
    try:
        assert w.info.rdb_version == EXPECTED_RDB[name]
        assert w.info.is_valkey == name.startswith("valkey")
        assert w.info.version == s.version
        assert w.info.proto_max_bulk_len == 512 * 1024 * 1024
        assert w.info.databases == 16 and not w.info.cluster
        for i in range(100):
            w.write(E(i % 3, "SET", f"k{i}", f"v{i}"))
        w.flush()
        assert w.answered == 100
    finally:
        w.close()
    for db in range(3):
        with s.client(db) as c:
            assert c.dbsize() == len([i for i in range(100) if i % 3 == db])
            assert c.get(f"k{db}") == f"v{db}".encode()


# -- standalone writer ---------------------------------------------------------------------


def test_standalone_multi_db(servers) -> None:
    s = servers.start("redis-7.0")
    w = RedisWriter(s.address)
    assert w.status() == {
        "name": f"writer_127.0.0.1_{s.port}",
        "unanswered_bytes": 0,
        "unanswered_entries": 0,
    }
    dbs = [0, 5, 5, 1, 0, 15, 1]
    for rnd in range(50):
        for j, db in enumerate(dbs):
            w.write(E(db, "RPUSH", f"list{j % 3}", f"{rnd}:{j}", offset=rnd * 10 + j))
    w.write(E(3, "SET", "big", b"x" * (3 << 20), offset=10_000))
    w.flush()
    st = w.status()
    assert st["unanswered_bytes"] == 0 and st["unanswered_entries"] == 0
    assert w.written == w.answered == 50 * len(dbs) + 1
    assert w.acked_offset == 10_000
    assert w.errors == 0
    for db in sorted(set(dbs)):
        with s.client(db) as c:
            for k in range(3):
                expect = [
                    f"{rnd}:{j}".encode()
                    for rnd in range(50)
                    for j, d in enumerate(dbs)
                    if d == db and j % 3 == k
                ]
                assert c.lrange(f"list{k}", 0, -1) == expect
    with s.client(3) as c:
        assert c.strlen("big") == 3 << 20
    w.flushall()
    with s.client() as c:
        assert c.dbsize() == 0
    w.close()


def test_tiny_pipeline(servers) -> None:
    s = servers.start("redis-7.0")
    w = RedisWriter(s.address, pipeline_count_limit=1, querybuf_limit=100)
    for i in range(3000):
        w.write(E(0, "RPUSH", "l", str(i)))
        assert w.status()["unanswered_entries"] <= 2
    w.flush()
    with s.client() as c:
        assert c.lrange("l", 0, -1) == [str(i).encode() for i in range(3000)]
    w.close()


def test_max_qps_functional(servers) -> None:
    s = servers.start("redis-7.0")
    w = RedisWriter(s.address, max_qps=2000)
    for _ in range(200):
        w.write(E(0, "INCR", "n"))
    w.flush()
    with s.client() as c:
        assert c.get("n") == b"200"
    w.close()


def test_error_replies_reach_on_error(servers) -> None:
    s = servers.start("redis-7.0")
    seen: list[tuple[bytes, str]] = []
    w = RedisWriter(s.address, on_error=lambda e, m: seen.append((e.argv[1], m)))
    w.write(E(0, "SET", "s", "notanumber"))
    for i in range(10):
        w.write(E(0, "INCR", "s" if i % 2 else f"n{i}"))
    w.write(E(0, "NOSUCHCOMMAND", "x"))
    w.flush()
    assert w.errors == 6
    assert [k for k, _ in seen] == [b"s"] * 5 + [b"x"]
    assert "not an integer" in seen[0][1]
    assert "unknown command" in seen[-1][1]
    assert w.answered == 12
    w.close()


def test_exception_in_on_error_surfaces(servers) -> None:
    s = servers.start("redis-7.0")

    class Boom(Exception):
        pass

    def on_error(entry: Entry, message: str) -> None:
        raise Boom(message)

    w = RedisWriter(s.address, on_error=on_error)
    w.write(E(0, "SET", "s", "x"))
    w.write(E(0, "INCR", "s"))
    with pytest.raises(Boom, match="not an integer"):
        w.flush()
    with pytest.raises(Boom):
        w.write(E(0, "SET", "a", "b"))
    with pytest.raises(Boom):
        w.flush()
    w.close()


def test_error_without_handler_raises(servers) -> None:
    s = servers.start("redis-7.0")
    w = RedisWriter(s.address)
    w.write(E(0, "LPUSH", "k", "a"))
    w.write(E(0, "GET", "k"))
    with pytest.raises(WriterError, match="WRONGTYPE"):
        w.flush()
    with pytest.raises(WriterError):
        w.write(E(0, "SET", "x", "y"))
    w.close()


def test_select_error_is_fatal(servers) -> None:
    s = servers.start("redis-7.0", args=["--databases", "2"])
    w = RedisWriter(s.address, on_error=lambda e, m: None)
    assert w.info.databases == 2
    w.write(E(5, "SET", "a", "b"))
    with pytest.raises(WriterError, match="SELECT 5"):
        w.flush()
    w.close()


def test_connection_refused_names_address() -> None:
    port = srv.free_port()
    with pytest.raises(ConnError, match=f"127.0.0.1:{port}"):
        RedisWriter(f"127.0.0.1:{port}")


def test_connection_call_and_pipeline(servers) -> None:
    s = servers.start("redis-6.2")
    with connect(s.address) as c:
        assert c.call("PING") == b"PONG"
        assert c.call("SET", "a", 1) == b"OK"
        r = c.pipeline([["GET", "a"], ["INCR", "a"], ["HGET", "a", "f"]])
        assert r[:2] == [b"1", 2]
        assert isinstance(r[2], ReplyError) and r[2].code == "WRONGTYPE"
        with pytest.raises(ReplyError):
            c.call("NOPE")


# -- AUTH ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["redis-5.0", "redis-7.0", "valkey-9.1"])
def test_auth_password(servers, name: str) -> None:
    s = servers.start(name, password="s3cret")
    with pytest.raises(AuthError, match=s.address):
        RedisWriter(s.address, password="wrong")
    with pytest.raises(AuthError, match="NOAUTH"):
        RedisWriter(s.address)
    w = RedisWriter(s.address, password="s3cret")
    w.write(E(0, "SET", "a", "1"))
    w.flush()
    w.close()
    assert s.client().get("a") == b"1"


@pytest.mark.parametrize("name", ["redis-6.0", "redis-7.0", "valkey-8.1"])
def test_auth_acl_user(servers, name: str) -> None:
    s = servers.start(name)
    with s.client() as c:
        c.execute_command("ACL", "SETUSER", "shake", "on", ">pw1", "~*", "+@all", "-config")
    with pytest.raises(AuthError, match="shake"):
        RedisWriter(s.address, username="shake", password="bad")
    w = RedisWriter(s.address, username="shake", password="pw1")
    # CONFIG is forbidden for this user: the defaults are used
    assert w.info.proto_max_bulk_len == 512 * 1024 * 1024
    assert w.info.version == s.version
    w.write(E(2, "SET", "a", "1"))
    w.flush()
    w.close()
    assert s.client(2).get("a") == b"1"


# -- TLS -----------------------------------------------------------------------------------


def test_tls(servers, tmp_dir: Path) -> None:
    certs = make_certs(tmp_dir)
    tls_port = srv.free_port()
    s = servers.start(
        "redis-7.0",
        args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", certs["server.crt"],
            "--tls-key-file", certs["server.key"],
            "--tls-ca-cert-file", certs["ca.crt"],
            "--tls-auth-clients", "optional",
        ],
    )  # fmt: skip
    addr = f"127.0.0.1:{tls_port}"
    # the server certificate is verified by default: an unknown CA fails clearly
    with pytest.raises(TLSVerifyError, match=addr):
        RedisWriter(addr, tls=True)
    # verification can be skipped explicitly
    w = RedisWriter(addr, tls=True, tls_verify=False)
    w.write(E(0, "SET", "insecure", "1"))
    w.flush()
    w.close()
    # verified, with a client certificate (mTLS)
    tc = {"ca_cert": certs["ca.crt"], "cert": certs["client.crt"], "key": certs["client.key"]}
    w = RedisWriter(addr, tls=True, tls_config=tc, pipeline_count_limit=16)
    for i in range(5000):
        w.write(E(i % 2, "RPUSH", "l", str(i)))
    w.flush()
    w.close()
    with s.client() as c:
        assert c.get("insecure") == b"1"
        assert c.llen("l") == 2500
    with s.client(1) as c:
        assert c.lrange("l", 0, 2) == [b"1", b"3", b"5"]


# -- cluster -------------------------------------------------------------------------------


def _owner_client(cl: srv.Cluster, key: bytes) -> redis.Redis:
    return cl.owner_of(key_slot(key)).client()


def test_basic_command_keys() -> None:
    assert basic_command_keys([b"set", b"k", b"v"]) == [b"k"]
    assert basic_command_keys([b"MSET", b"a", b"1", b"b", b"2"]) == [b"a", b"b"]
    assert basic_command_keys([b"EVAL", b"return 1", b"2", b"x", b"y", b"z"]) == [b"x", b"y"]
    assert basic_command_keys([b"ZUNIONSTORE", b"d", b"2", b"a", b"b", b"WEIGHTS"]) == [
        b"d",
        b"a",
        b"b",
    ]
    assert basic_command_keys([b"PING"]) == []
    assert basic_command_keys([b"WHATEVER", b"x"]) is None


def test_cluster_routing(servers) -> None:
    cl = servers.cluster("redis-7.0", 3)
    errors: list[tuple[Entry, str]] = []
    w = ClusterWriter(cl.seed, on_error=lambda e, m: errors.append((e, m)))
    # one status per master, then the cluster-wide counters (transactions, redirects)
    assert w.info.cluster and len(w.status()) == 4 and w.status()[-1]["transactions_split"] == 0
    keys = [f"key:{i}".encode() for i in range(600)]
    for k in keys:
        w.write(Entry(0, [b"SET", k, k + b"!"], k))
    # entries without a key hint are looked up in the command table
    for i in range(50):
        w.write(Entry(0, [b"RPUSH", b"nohint:%d" % i, b"x"], None))
    # keyless -> every master
    w.write(Entry(0, [b"SCRIPT", b"LOAD", b"return 42"], KEYLESS_ALL_MASTERS))
    w.write(Entry(0, [b"FUNCTION", b"LOAD", b"#!lua name=lib\nredis.register_function('f', function() return 1 end)"], None))  # fmt: skip
    w.flush()
    assert errors == []
    counts = []
    for m in cl.masters:
        with m.client() as c:
            counts.append(c.dbsize())
            assert c.execute_command("SCRIPT", "EXISTS", "1fa00e76656cc152ad327c13fe365858fd7be306") == [1]  # fmt: skip
            assert c.execute_command("FUNCTION", "LIST")
    assert sum(counts) == 650 and all(n > 100 for n in counts)
    for k in keys[::37]:
        with _owner_client(cl, k) as c:
            assert c.get(k) == k + b"!"
    # DEL / MSET across slots are split exactly; other cross-slot commands are refused
    w.write(Entry(0, [b"DEL", *keys[:300]], None))
    w.write(Entry(0, [b"MSET", b"m1", b"1", b"m2", b"2", b"m3", b"3"], None))
    w.write(Entry(0, [b"EXISTS", *keys[300:310]], None))
    w.write(Entry(0, [b"SUNIONSTORE", b"dst", b"a", b"b"], None))
    w.write(Entry(0, [b"NOTACOMMAND", b"x"], None))
    w.write(Entry(1, [b"SET", b"indb1", b"v"], b"indb1"))
    w.flush()
    msgs = [m for _, m in errors]
    assert len(msgs) == 3, msgs
    assert "CROSSSLOT" in msgs[0] and "SUNIONSTORE" in msgs[0]
    assert "NOTACOMMAND" in msgs[1]
    assert "db 1 cannot be written to a cluster target" in msgs[2] and "allow_db" in msgs[2]
    remaining = 0
    for m in cl.masters:
        with m.client() as c:
            remaining += c.dbsize()
    assert remaining == 350 + 3
    for k in (b"m1", b"m2", b"m3"):
        with _owner_client(cl, k) as c:
            assert c.get(k) == k[1:]
    w.flushall()
    for m in cl.masters:
        with m.client() as c:
            assert c.dbsize() == 0
    w.close()


def test_cluster_db_error_without_handler(servers) -> None:
    cl = servers.cluster("redis-7.0", 3)
    w = ClusterWriter(cl.seed)
    with pytest.raises(WriterError, match="db 2 cannot be written"):
        w.write(Entry(2, [b"SET", b"a", b"b"], b"a"))
    with pytest.raises(WriterError):
        w.flush()
    w.close()


def test_cluster_old_server_topology(servers) -> None:
    # Redis 5.0 has no CLUSTER SHARDS: falls back to CLUSTER SLOTS
    cl = servers.cluster("redis-5.0", 3)
    w = ClusterWriter(cl.seed)
    for i in range(300):
        w.write(Entry(0, [b"SET", b"k%d" % i, b"v"], b"k%d" % i))
    w.flush()
    assert sum(m.client().dbsize() for m in cl.masters) == 300
    w.close()


def _reshard(cl: srv.Cluster, slot: int, src: srv.Server, dst: srv.Server, done: threading.Event,
             started: threading.Event) -> None:  # fmt: skip
    src_id, dst_id = cl.node_id(src), cl.node_id(dst)
    sc, dc = src.client(), dst.client()
    started.wait(30)
    time.sleep(0.05)
    dc.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    sc.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    time.sleep(0.05)
    while True:
        keys = sc.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 7)
        if not keys:
            break
        sc.execute_command("MIGRATE", dst.host, dst.port, "", 0, 5000, "REPLACE", "KEYS", *keys)
        time.sleep(0.01)
    time.sleep(0.05)
    for node in (dst, src, *[m for m in cl.masters if m not in (src, dst)]):
        with node.client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    sc.close()
    dc.close()
    done.set()


def test_cluster_resharding_during_writes(servers) -> None:
    cl = servers.cluster("redis-7.0", 3)
    tag = next(f"t{i}" for i in range(1000) if cl.owner_of(key_slot(f"t{i}".encode())) is cl.masters[0])  # fmt: skip
    slot = key_slot(tag.encode())
    src, dst = cl.masters[0], cl.masters[1]
    errors: list[str] = []
    w = ClusterWriter(cl.seed, pipeline_count_limit=32, on_error=lambda e, m: errors.append(m))
    lists: dict[bytes, list[bytes]] = {}
    strings: dict[bytes, bytes] = {}
    moving = [f"{{{tag}}}:l{j}".encode() for j in range(40)]
    others = [f"other:{j}".encode() for j in range(40)]
    done, started = threading.Event(), threading.Event()
    t = threading.Thread(target=_reshard, args=(cl, slot, src, dst, done, started), daemon=True)
    t.start()
    i = 0
    try:
        while not done.is_set() or i < 40000:
            if i == 2000:
                started.set()
            k = moving[i % 40] if i % 3 else others[i % 40]
            v = b"%d" % i
            lists.setdefault(k, []).append(v)
            w.write(Entry(0, [b"RPUSH", k, v], k))
            if i % 5 == 0:
                sk = f"{{{tag}}}:s{i % 7}".encode()
                strings[sk] = v
                w.write(Entry(0, [b"SET", sk, v], sk))
            if i % 200 == 0:
                w.poll()
            i += 1
            if i > 2_000_000:
                raise AssertionError("resharding did not finish")
        w.flush()
    finally:
        started.set()
        t.join(60)
    assert not t.is_alive()
    assert errors == []
    assert cl.owner_of(slot) is dst
    assert w.moved > 0 and w.asked > 0
    print("moved", w.moved, "asked", w.asked, "entries", i)
    with dst.client() as c:
        for k, vals in lists.items():
            if key_slot(k) == slot:
                assert c.lrange(k, 0, -1) == vals, k
        for k, v in strings.items():
            assert c.get(k) == v
    with src.client() as c:
        assert c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    for k in others:
        with _owner_client(cl, k) as c:
            assert c.lrange(k, 0, -1) == lists[k]
    w.close()


def test_connection_plain(servers) -> None:
    s = servers.start("valkey-9.1")
    c = Connection("127.0.0.1", s.port)
    assert c.call("ECHO", b"\x00\xff") == b"\x00\xff"
    c.close()
