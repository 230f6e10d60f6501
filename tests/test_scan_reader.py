"""[scan_reader]: SCAN + DUMP/RESTORE copies, keyspace events (ksn), flush detection, cluster
sources, skip_unknown_type, prefer_replica - against real servers, compared by DEBUG DIGEST."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from datagen import populate
from harness import Shake, diff_data
from helpers import digest_map, keys_of, run_redshake, write_config
from servers import free_port

NOTIFY = ["--notify-keyspace-events", "AE"]


def _cfg(tmp: Path, reader: dict, target, **adv) -> Path:
    a = {"dir": str(tmp / "work"), "log_interval": 1, "status_port": free_port(), "status_bind": "127.0.0.1"}
    a.update(adv)
    reader = dict(reader)
    sentinel = reader.pop("sentinel", None)
    sections = {"scan_reader": reader, "redis_writer": {"address": target.address}, "advanced": a}
    if sentinel:
        sections["scan_reader.sentinel"] = sentinel
    return write_config(tmp / "shake.toml", sections)


def wait_same(src_clients, dst, dbs, timeout: float = 20.0, **kw) -> None:
    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        try:
            why = diff_data(src_clients, dst, dbs, **kw)
        except redis.ResponseError as e:  # a key vanished between SCAN and DIGEST
            why = str(e)
        if not why:
            return
        time.sleep(0.2)
    raise AssertionError(f"target did not converge: {why}")


def _output(r) -> str:
    return r.stdout[-4000:] + r.stderr[-4000:]


# -- one-pass scan ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src_name,dst_name",
    [
        ("redis-7.0", "redis-7.0"),
        ("redis-5.0", "redis-7.0"),
        ("valkey-9.1", "redis-7.0"),
        ("redis-7.0", "valkey-9.1"),
        ("redis-7.0", "redis-5.0"),
    ],
)
def test_scan_copy(src_name, dst_name, servers, tmp_path):
    src = servers.start(src_name)
    dst = servers.start(dst_name)
    functions = dst.version >= (7, 0, 0) or dst.is_valkey
    populate(src.client(), src.version, src.is_valkey, functions=functions,
             hfe=dst.is_valkey and dst.version >= (9, 0, 0),
             consumers_without_pel=dst.version >= (6, 2, 0))  # fmt: skip
    cfg = _cfg(tmp_path, {"address": src.address, "count": 50}, dst)
    r = run_redshake(cfg, timeout=120)
    assert r.returncode == 0, _output(r)
    if functions and src.version >= (7, 0, 0):
        assert dst.client().function_list(withcode=True) == src.client().function_list(withcode=True)
    assert "changed or deleted on the source while it runs may be missed" in r.stdout
    dbs = sorted(int(k[2:]) for k in src.client().info("keyspace"))
    assert dbs == [0, 3]
    assert not diff_data(lambda db: [src.client(db)], dst, dbs, valkey_mix=src.is_valkey != dst.is_valkey)


def test_scan_explicit_dbs_and_skip_type(servers, tmp_path):
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, src.is_valkey, functions=False, big=False)
    cfg = _cfg(tmp_path, {"address": src.address, "dbs": [3], "count": 10,
                          "skip_unknown_type": ["list", "stream"]}, dst)  # fmt: skip
    r = run_redshake(cfg, timeout=60)
    assert r.returncode == 0, _output(r)
    assert dst.client(0).dbsize() == 0
    s, d = src.client(3), dst.client(3)
    want = {k for k in keys_of(s) if s.type(k) not in (b"list", b"stream")}
    assert want and keys_of(d) == want
    assert digest_map(s, sorted(want)) == digest_map(d, sorted(want))
    assert "skip_unknown_type=" in r.stdout


# -- ksn -------------------------------------------------------------------------------------


def test_ksn_missing_notify_config(servers, tmp_path):
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    src.client().set(b"k", b"v")
    cfg = _cfg(tmp_path, {"address": src.address, "ksn": True}, dst)
    r = run_redshake(cfg, timeout=60)
    assert r.returncode == 2, _output(r)
    assert "CONFIG SET notify-keyspace-events AE" in r.stdout + r.stderr
    assert dst.client().dbsize() == 0


def test_ksn_follows_changes(servers, tmp_path):
    src = servers.start("redis-7.0", args=NOTIFY)
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, src.is_valkey, functions=False, big=False)
    cfg = _cfg(tmp_path, {"address": src.address, "ksn": True, "count": 100}, dst,
               rdb_restore_command_behavior="panic")  # fmt: skip
    shake = Shake.on_config(cfg).start()
    try:
        clients = lambda db: [src.client(db)]  # noqa: E731
        shake.wait_readers(lambda r: r.get("scan_finished"), 20, "the scan")
        wait_same(clients, dst, [0, 3])
        c0, c3 = src.client(0), src.client(3)
        c0.set(b"new", b"1")
        c0.set(b"d0:str", b"changed")  # overwrite of a copied key: RESTORE ... REPLACE
        c0.delete(b"d0:int")
        c0.rename(b"d0:bin", b"renamed")
        c0.hset(b"d0:hash:small", b"f9", b"v9")
        c0.rpush(b"d0:list:small", b"tail")
        c0.set(b"short", b"x", px=300)
        c0.set(b"d0:neg", b"y")
        c0.pexpire(b"d0:neg", 200)
        c3.zadd(b"d3:zset:small", {b"added": 7})
        c3.set(b"d3:new", b"x")
        c3.expire(b"d3:str", 1000)
        deadline = time.monotonic() + 10
        while c0.exists(b"short", b"d0:neg") and time.monotonic() < deadline:
            time.sleep(0.05)
        wait_same(clients, dst, [0, 3])
        assert dst.client(0).exists(b"d0:bin", b"short", b"d0:neg") == 0
        assert dst.client(0).get(b"renamed") == c0.get(b"renamed")
        # FLUSHDB / FLUSHALL emit no keyspace event: detected and applied anyway
        c3.flushdb()
        c3.set(b"after-flush", b"1")
        wait_same(clients, dst, [0, 3])
        assert keys_of(dst.client(3)) == {b"after-flush"}
        c0.flushall()
        c0.set(b"fresh", b"1")
        wait_same(clients, dst, [0, 3])
        assert dst.client(0).dbsize() == 1 and dst.client(3).dbsize() == 0
        # the source kills the subscriber (as client-output-buffer-limit pubsub would)
        c0.client_kill_filter(_type="pubsub")
        c0.set(b"after-kill", b"1")
        c3.set(b"db3-after-kill", b"1")
        shake.wait_readers(lambda r: r["subscription_lost"] >= 1, 20, "the lost subscription")
        wait_same(clients, dst, [0, 3])
        assert "Events were LOST" in shake.log()
        code = shake.terminate()
    finally:
        shake.kill()
    out = (tmp_path / "redshake.out").read_text()
    assert code == 0, out[-4000:]
    assert "all done" in out


def test_ksn_auto_enable_and_restore(servers, tmp_path):
    src = servers.start("valkey-9.1")
    dst = servers.start("valkey-9.1")
    src.client().config_set("notify-keyspace-events", "Kx")
    src.client().set(b"a", b"1")
    port = free_port()
    cfg = _cfg(tmp_path, {"address": src.address, "ksn": True, "ksn_auto_enable": True}, dst,
               status_port=port)  # fmt: skip
    shake = Shake.on_config(cfg).start()
    try:
        shake.wait_readers(lambda r: r.get("scan_finished"), 20, "the scan")
        deadline = time.monotonic() + 10
        while True:
            try:
                st = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read())
                if st["reader"] is not None and st["consistent"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "status never consistent"
            time.sleep(0.2)
        rd = st["reader"]
        assert rd["scan_finished"] is True and rd["need_update_count"] == 0
        assert rd["scan_percent"] == "100.00%" and "events_received" in rd
        flags = src.client().config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert set("AKE") <= set(flags.decode() if isinstance(flags, bytes) else flags)
        src.client().lpush(b"l", b"x", b"y")
        wait_same(lambda db: [src.client(db)], dst, [0])
        src.client().flushall()
        src.client().set(b"z", b"1")
        wait_same(lambda db: [src.client(db)], dst, [0])
        assert keys_of(dst.client()) == {b"z"}
        code = shake.terminate()
    finally:
        shake.kill()
    assert code == 0
    flags = src.client().config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert set(flags.decode() if isinstance(flags, bytes) else flags) == set("Kx")


# -- cluster / replica sources ------------------------------------------------------------------


def test_cluster_source_with_ksn(servers, tmp_path):
    cl = servers.cluster("redis-7.0", masters=3, args=NOTIFY)
    dst = servers.start("redis-7.0")
    rc = redis.RedisCluster(host=cl.masters[0].host, port=cl.masters[0].port)
    try:
        for i in range(300):
            rc.set(f"k{i}".encode(), str(i).encode())
        for i in range(20):
            rc.rpush(f"l{i}".encode(), *[b"x%d" % j for j in range(i + 1)])
            rc.hset(f"h{i}".encode(), mapping={b"a": b"1", b"b": str(i).encode()})
        rc.set(b"ttl", b"v", px=600_000)
        cfg = _cfg(tmp_path, {"address": cl.masters[0].address, "cluster": True, "ksn": True,
                              "count": 100}, dst)  # fmt: skip
        shake = Shake.on_config(cfg).start()
        try:
            clients = lambda db: [m.client() for m in cl.masters]  # noqa: E731
            wait_same(clients, dst, [0], timeout=30)
            for i in range(10):
                rc.delete(f"k{i}".encode())
                rc.set(f"n{i}".encode(), b"new")
            wait_same(clients, dst, [0])
            # a cluster FLUSHALL reaches every master; each shard is scanned again afterwards
            rc.flushall()
            for i in range(30):
                rc.set(f"after{i}".encode(), b"1")
            wait_same(clients, dst, [0])
            code = shake.terminate()
        finally:
            shake.kill()
    finally:
        rc.close()
    out = (tmp_path / "redshake.out").read_text()
    assert code == 0, out[-4000:]
    assert out.count("subscribed to keyspace events") == 3


def test_prefer_replica(servers, tmp_path):
    master = servers.start("redis-7.0")
    replica = servers.start("redis-7.0", args=["--replicaof", master.host, str(master.port)])
    dst = servers.start("redis-7.0")
    populate(master.client(), master.version, False, functions=False, big=False)
    deadline = time.monotonic() + 20
    while replica.client().dbsize() != master.client().dbsize() and time.monotonic() < deadline:
        time.sleep(0.1)
    cfg = _cfg(tmp_path, {"address": master.address, "prefer_replica": True}, dst)
    r = run_redshake(cfg, timeout=60)
    assert r.returncode == 0, _output(r)
    assert f"reading from replica {replica.address}" in r.stdout
    assert not diff_data(lambda db: [master.client(db)], dst, [0, 3])


def test_sentinel_source_with_password(servers, tmp_path):
    src = servers.start("redis-7.0", password="s3cret")
    dst = servers.start("redis-7.0")
    sentinel = servers.sentinel(src, "mymaster")
    c = src.client()
    for i in range(50):
        c.set(b"k%d" % i, b"v")
    cfg = _cfg(tmp_path, {"password": "s3cret",
                          "sentinel": {"master_name": "mymaster", "address": sentinel.address}}, dst)  # fmt: skip
    r = run_redshake(cfg, timeout=60)
    assert r.returncode == 0, _output(r)
    assert not diff_data(lambda db: [src.client(db)], dst, [0])


def test_unreachable_source_writes_nothing(servers, tmp_path):
    dst = servers.start("redis-7.0")
    # retried like sync_reader's source for connect_timeout seconds, then exit 1
    cfg = _cfg(tmp_path, {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 1}, dst)
    r = run_redshake(cfg, timeout=60)
    assert r.returncode == 1, _output(r)
    assert "cannot reach the source" in r.stdout and "Nothing was written" in r.stdout
    assert dst.client().dbsize() == 0


def test_ksn_evicted_keys_are_deleted(servers, tmp_path):
    src = servers.start("valkey-9.1", args=NOTIFY + ["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"])
    dst = servers.start("valkey-9.1")
    cfg = _cfg(tmp_path, {"address": src.address, "ksn": True, "count": 100}, dst)
    shake = Shake.on_config(cfg).start()
    try:
        shake.wait_readers(lambda r: r.get("scan_finished"), 20, "the scan")
        c = src.client()
        for i in range(60):  # ~6 MB into a 4 MB server: many keys get evicted
            c.set(b"big%d" % i, b"x" * 100_000)
        assert int(c.info("stats")["evicted_keys"]) > 0
        wait_same(lambda db: [src.client(db)], dst, [0])
        code = shake.terminate()
    finally:
        shake.kill()
    assert code == 0


def test_ksn_writes_during_scan(servers, tmp_path):
    """Keys created, changed, deleted and expiring while the first scan runs all converge."""
    import random
    import threading

    src = servers.start("redis-7.0", args=NOTIFY)
    dst = servers.start("redis-7.0")
    c = src.client()
    p = c.pipeline(transaction=False)
    for i in range(20_000):
        p.set(b"k%d" % i, b"v%d" % i)
    p.execute()
    cfg = _cfg(tmp_path, {"address": src.address, "ksn": True, "count": 10}, dst)
    halt = threading.Event()

    def writer() -> None:
        rnd = random.Random(3)
        w = src.client()
        while not halt.is_set():
            p = w.pipeline(transaction=False)
            for _ in range(50):
                k = b"k%d" % rnd.randrange(25_000)
                op = rnd.randrange(6)
                if op == 0:
                    p.delete(k)
                elif op == 1:
                    p.set(k, b"new%d" % rnd.random())
                elif op == 2:
                    p.pexpire(k, rnd.randrange(50, 400))
                elif op == 3:
                    p.append(k, b"+")
                elif op == 4:
                    p.rename(b"k%d" % rnd.randrange(25_000), k)
                else:
                    p.rpush(b"list%d" % rnd.randrange(50), b"x")
            p.execute(raise_on_error=False)
            time.sleep(0.01)

    shake = Shake.on_config(cfg).start()
    t = threading.Thread(target=writer)
    t.start()
    try:
        shake.wait_readers(lambda r: r.get("scan_finished"), 40, "the scan")
        halt.set()
        t.join()
        time.sleep(0.5)  # let the short TTLs run out on the source
        wait_same(lambda db: [src.client(db)], dst, [0], timeout=30)
        code = shake.terminate()
    finally:
        halt.set()
        t.join()
        shake.kill()
    out = (tmp_path / "redshake.out").read_text()
    assert code == 0, out[-4000:]


def test_commands_path_with_existing_keys(servers, tmp_path):
    """target_redis_proto_max_bulk_len = 0 rebuilds every key with commands: a key already on
    the target is kept (skip), and keys changed later (ksn) are replaced, never merged into."""
    src = servers.start("redis-7.0", args=NOTIFY)
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, src.is_valkey, functions=False, big=False)
    dst.client(0).rpush(b"d0:list:small", b"pre-existing")
    cfg = _cfg(tmp_path, {"address": src.address, "ksn": True, "count": 100}, dst,
               target_redis_proto_max_bulk_len=0, rdb_restore_command_behavior="skip")  # fmt: skip
    shake = Shake.on_config(cfg).start()
    try:
        shake.wait_readers(lambda r: r.get("scan_finished"), 20, "the scan")
        c = src.client(0)
        deadline = time.monotonic() + 20
        while dst.client(0).dbsize() < c.dbsize() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dst.client(0).lrange(b"d0:list:small", 0, -1) == [b"pre-existing"]
        c.rpush(b"d0:list:small", b"more")
        c.sadd(b"d0:set:str", b"zz")
        wait_same(lambda db: [src.client(db)], dst, [0, 3])
        code = shake.terminate()
    finally:
        shake.kill()
    assert code == 0


def test_cluster_prefer_replica(servers, tmp_path):
    cl = servers.cluster("redis-7.0", masters=2, replicas=1)
    dst = servers.start("redis-7.0")
    rc = redis.RedisCluster(host=cl.masters[0].host, port=cl.masters[0].port)
    try:
        for i in range(200):
            rc.set(f"k{i}".encode(), str(i).encode())
    finally:
        rc.close()
    deadline = time.monotonic() + 20
    while sum(r.client().dbsize() for r in cl.replicas) < 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    cfg = _cfg(tmp_path, {"address": cl.masters[0].address, "cluster": True, "prefer_replica": True,
                          "count": 50}, dst)  # fmt: skip
    r = run_redshake(cfg, timeout=60)
    assert r.returncode == 0, _output(r)
    for rep in cl.replicas:
        assert f"scan source {rep.address}" in r.stdout
    assert not diff_data(lambda db: [m.client() for m in cl.masters], dst, [0])


def test_ksn_survives_killed_connections(servers, tmp_path):
    """All redshake's source connections are killed (as a proxy restart would): it reconnects,
    subscribes again, scans again and converges."""
    src = servers.start("redis-6.2", args=NOTIFY)
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, src.is_valkey, functions=False, big=False)
    cfg = _cfg(tmp_path, {"address": src.address, "ksn": True, "count": 100}, dst)
    shake = Shake.on_config(cfg).start()
    try:
        shake.wait_readers(lambda r: r.get("scan_finished"), 20, "the scan")
        c = src.client()
        c.client_kill_filter(_type="pubsub")
        c.client_kill_filter(_type="normal", skipme=True)
        c.set(b"after", b"1")  # written while redshake is not subscribed: the re-scan finds it
        shake.wait_readers(lambda r: r["reconnects"] >= 1 and r["subscriptions"] >= 2, 20,
                           "the reconnection and the new subscription")
        assert "reconnected to the source" in shake.log()
        c.delete(b"d0:str")
        wait_same(lambda db: [src.client(db)], dst, [0, 3])
        code = shake.terminate()
    finally:
        shake.kill()
    assert code == 0


def test_ksn_only_without_scan(servers, tmp_path):
    src = servers.start("redis-7.0", args=NOTIFY)
    dst = servers.start("redis-7.0")
    src.client().set(b"old", b"1")
    cfg = _cfg(tmp_path, {"address": src.address, "ksn": True, "scan": False}, dst)
    shake = Shake.on_config(cfg).start()
    try:
        shake.wait_readers(lambda r: r["subscriptions"] >= 1, 20, "the subscription")
        src.client(2).set(b"new", b"2")
        deadline = time.monotonic() + 20
        while not dst.client(2).exists(b"new"):
            assert time.monotonic() < deadline, shake.log()[-3000:]
            time.sleep(0.05)
        code = shake.terminate()
    finally:
        shake.kill()
    assert code == 0
    assert dst.client(0).dbsize() == 0  # scan = false: existing keys are not copied
