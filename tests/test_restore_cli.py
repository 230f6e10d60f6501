"""The restore as a user runs it: CLI, exit codes, both config formats, existing-key policy,
cluster and sentinel targets (with a resharding during the restore), status JSON, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import redis

from datagen import populate
from harness import slot_owners
from helpers import assert_same_data, restore_file, run_redshake, write_config
from redshake.commands.slots import key_slot
from servers import free_port


def _saved_source(servers, name="redis-7.0", **kw):
    src = servers.start(name)
    populate(src.client(), src.version, src.is_valkey, **kw)
    src.client().save()
    return src, src.dir / "dump.rdb"


def test_version_and_usage():
    out = subprocess.run([sys.executable, "-m", "redshake.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("redshake version ")
    out = subprocess.run([sys.executable, "-m", "redshake.cli"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr
    out = subprocess.run([sys.executable, "-m", "redshake.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "exit codes" in out.stdout


def test_bad_config_exits_2_and_writes_nothing(servers, tmp_path):
    src, rdb = _saved_source(servers)
    dst = servers.start("redis-7.0")
    cfg = write_config(
        tmp_path / "shake.toml",
        {
            "rdb_reader": {"filepath": str(rdb)},
            "redis_writer": {"adress": dst.address},
            "advanced": {"dir": str(tmp_path / "w")},
        },
    )
    r = run_redshake(cfg)
    assert r.returncode == 2
    assert 'did you mean "address"' in r.stderr
    assert dst.client().dbsize() == 0


def test_relative_paths_resolve_against_start_dir(servers, tmp_path):
    src, rdb = _saved_source(servers)
    dst = servers.start("redis-7.0")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.rdb").write_bytes(rdb.read_bytes())
    cfg = write_config(
        tmp_path / "conf.toml",
        {
            "rdb_reader": {"filepath": "in/x.rdb"},
            "redis_writer": {"address": dst.address},
            "advanced": {"dir": "work", "log_interval": 0},
        },
    )
    r = run_redshake(cfg, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "work" / "shake.log").exists()
    assert_same_data(src, dst)


def test_v3_restore_config(servers, tmp_path):
    src, rdb = _saved_source(servers, "redis-6.0")
    dst = servers.start("redis-7.0")
    (tmp_path / "restore.toml").write_text(
        f"""type = "restore"

[source]
version = 6.0
rdb_file_path = "{rdb}"

[target]
type = "standalone"
version = 7.0
address = "{dst.address}"
username = ""
password = ""
tls = false

[advanced]
dir = "{tmp_path / "data"}"
ncpu = 4
pprof_port = 0
metrics_port = 0
log_file = "redis-shake.log"
log_level = "info"
log_interval = 5
rdb_restore_command_behavior = "rewrite"
pipeline_count_limit = 1024
target_redis_client_max_querybuf_len = 1024_000_000
target_redis_proto_max_bulk_len = 512_000_000
"""
    )
    r = run_redshake(tmp_path / "restore.toml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "data" / "redis-shake.log").exists()
    assert_same_data(src, dst)


@pytest.mark.parametrize("force_commands", [False, True], ids=["restore", "commands"])
@pytest.mark.parametrize("behavior", ["panic", "rewrite", "skip"])
def test_existing_keys_follow_rdb_restore_command_behavior(behavior, force_commands, servers, tmp_path):
    src, rdb = _saved_source(servers, big=False, functions=False)
    dst = servers.start("redis-7.0")
    c = dst.client()
    c.set(b"d0:str", b"already here")
    c.rpush(b"d0:list:small", b"old")
    adv = {"rdb_restore_command_behavior": behavior}
    if force_commands:
        adv["target_redis_proto_max_bulk_len"] = 0
    r = restore_file(rdb, dst, tmp_path, **adv)
    out = r.stdout + r.stderr
    if behavior == "panic":
        assert r.returncode == 1, out
        assert "already exists" in out
        # never merged into or replaced
        assert c.get(b"d0:str") == b"already here"
        assert c.lrange(b"d0:list:small", 0, -1) == [b"old"]
    elif behavior == "rewrite":
        assert r.returncode == 0, out
        assert_same_data(src, dst)
    else:
        assert r.returncode == 0, out
        assert c.get(b"d0:str") == b"already here"
        assert c.lrange(b"d0:list:small", 0, -1) == [b"old"]
        assert "busykey=2" in out
        assert c.get(b"d0:int") == b"12345"


def test_forced_commands_path_matches(servers, tmp_path):
    """target_redis_proto_max_bulk_len = 0 rebuilds every key with commands (downgrade aid)."""
    src, rdb = _saved_source(servers, "valkey-8.1", functions=False)
    dst = servers.start("redis-6.2")
    r = restore_file(rdb, dst, tmp_path, target_redis_proto_max_bulk_len=0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "commands=" in r.stdout + r.stderr
    assert_same_data(src, dst)


def test_empty_db_before_sync(servers, tmp_path):
    src, rdb = _saved_source(servers)
    dst = servers.start("redis-7.0")
    dst.client().set(b"stale", b"1")
    r = restore_file(rdb, dst, tmp_path, empty_db_before_sync=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_data(src, dst)


def _cluster_assert_same(src, cluster, keys) -> None:
    """Per-key DEBUG DIGEST-VALUE and PEXPIRETIME on the master that owns each key."""
    owners = slot_owners(cluster)
    by_node: dict = {}
    for k in keys:
        by_node.setdefault(owners[key_slot(k)], []).append(k)
    sc = src.client()
    for node, ks in by_node.items():
        nc = node.client()
        for i in range(0, len(ks), 1000):
            batch = ks[i : i + 1000]
            ps, pn = sc.pipeline(transaction=False), nc.pipeline(transaction=False)
            for k in batch:
                for p in (ps, pn):
                    p.execute_command("DEBUG", "DIGEST-VALUE", k)
                    p.execute_command("PEXPIRETIME", k)
            assert ps.execute() == pn.execute(), f"keys differ on {node} in {batch[:3]}..."


def test_restore_into_cluster_with_resharding_during_restore(servers, tmp_path):
    src = servers.start("redis-7.0")
    c = src.client()
    c.execute_command("DEBUG", "POPULATE", 150000, "k", 64)
    populate(c, src.version, src.is_valkey, functions=True)
    for db in (3,):  # a cluster has only db 0
        c.execute_command("SELECT", db)
        c.flushdb()
    c = src.client()
    c.save()
    cluster = servers.cluster("redis-7.0", masters=3)
    a, b = cluster.masters[0], cluster.masters[1]
    moved = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reshard() -> None:
        try:
            _reshard()
        except BaseException as e:  # surfaced by the main thread
            errors.append(e)

    def _reshard() -> None:
        """Move slots from master a to master b while the restore is running."""
        ac, bc = a.client(), b.client()
        aid, bid = cluster.node_id(a), cluster.node_id(b)
        slots = [s for s, o in enumerate(slot_owners(cluster)) if o is a][:400]
        while not stop.is_set() and ac.dbsize() < 1000:  # wait until the restore is writing
            time.sleep(0.01)
        for s in slots:
            if stop.is_set():
                break
            bc.execute_command("CLUSTER", "SETSLOT", s, "IMPORTING", aid)
            ac.execute_command("CLUSTER", "SETSLOT", s, "MIGRATING", bid)
            while True:
                ks = ac.execute_command("CLUSTER", "GETKEYSINSLOT", s, 100)
                if not ks:
                    break
                ac.execute_command("MIGRATE", b.host, b.port, "", 0, 5000, "KEYS", *ks)
            for m in cluster.masters:
                m.client().execute_command("CLUSTER", "SETSLOT", s, "NODE", bid)
            moved.append(s)

    t = threading.Thread(target=reshard)
    t.start()
    try:
        # throttled so the resharding overlaps a good part of the restore
        r = restore_file(src.dir / "dump.rdb", cluster.seed, tmp_path, cluster=True, target_redis_max_qps=40000)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert moved, "the resharding did not overlap the restore"
    keys = list(c.scan_iter(count=1000))
    assert sum(m.client().dbsize() for m in cluster.masters) == len(keys)
    _cluster_assert_same(src, cluster, keys)
    for m in cluster.masters:  # keyless FUNCTION LOAD reached every master
        assert m.client().execute_command("FUNCTION", "LIST")


def test_multi_db_source_into_cluster_fails_clearly(servers, tmp_path):
    src, rdb = _saved_source(servers, functions=False)
    cluster = servers.cluster("redis-7.0", masters=3)
    r = restore_file(rdb, cluster.seed, tmp_path, cluster=True)
    assert r.returncode == 2  # found by the pre-write check: nothing written
    out = r.stdout + r.stderr
    assert "keys in db 3" in out and "cluster" in out and "allow_db" in out
    assert sum(m.client().dbsize() for m in cluster.masters) == 0


def test_more_dbs_than_the_target_has_writes_nothing(servers, tmp_path):
    src, rdb = _saved_source(servers, functions=False)
    target = servers.start("redis-7.0", args=["--databases", "2"])
    r = restore_file(rdb, target, tmp_path)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert "keys in db 3" in r.stdout + r.stderr and "2 databases" in r.stdout + r.stderr
    assert target.client().dbsize() == 0


def test_sentinel_target(servers, tmp_path):
    src, rdb = _saved_source(servers)
    master = servers.start("redis-7.0")
    sentinel = servers.sentinel(master, "mymaster")
    cfg = write_config(
        tmp_path / "shake.toml",
        {
            "rdb_reader": {"filepath": str(rdb)},
            "redis_writer": {},
            "redis_writer.sentinel": {"master_name": "mymaster", "address": sentinel.address},
            "advanced": {"dir": str(tmp_path / "w"), "log_interval": 0},
        },
    )
    r = run_redshake(cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same_data(src, master)


def _big_source(servers, n=400_000):
    src = servers.start("redis-7.0")
    src.client().execute_command("DEBUG", "POPULATE", n, "key", 200)
    src.client().save()
    return src, src.dir / "dump.rdb"


def test_status_json_and_sigterm(servers, tmp_path):
    src, rdb = _big_source(servers)
    dst = servers.start("redis-7.0")
    port = free_port()
    cfg = write_config(
        tmp_path / "shake.toml",
        {
            "rdb_reader": {"filepath": str(rdb)},
            "redis_writer": {"address": dst.address},
            "advanced": {"dir": str(tmp_path / "w"), "status_port": port, "log_interval": 1,
                         "target_redis_max_qps": 50000},
        },
    )
    p = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(cfg)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        doc = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as resp:
                    doc = json.loads(resp.read())
                if doc["reader"] and doc["total_entries_count"]["write_count"] > 0:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert doc is not None, "status port never answered"
        for k in ("start_time", "consistent", "total_entries_count", "per_cmd_entries_count", "reader", "writer"):
            assert k in doc
        assert doc["reader"]["name"] == "rdb_reader"
        assert doc["reader"]["status"].startswith("[rdb_reader] rdb file synced: ")
        assert doc["writer"]["name"].startswith("writer_127.0.0.1_")
        assert doc["consistent"] is False
        time.sleep(1.5)  # let one progress line (log_interval = 1) be written
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1, out
    assert "got signal SIGTERM" in out and "incomplete" in out
    assert "read_count=[" in out  # the periodic progress line
    assert 0 < dst.client().dbsize() < 400_000


@pytest.mark.parametrize("behavior", ["panic", "skip", "rewrite"])
def test_existing_string_keys_on_a_cluster_target(behavior, servers, tmp_path):
    """Small strings go as SET ... NX (not RESTORE); on a cluster target an existing key
    still counts as BUSYKEY and follows rdb_restore_command_behavior."""
    src = servers.start("redis-7.0")
    c = src.client()
    for i in range(200):
        c.set(f"s:{i}", f"value-{i}")
    c.set("ttl", "x", px=600_000)  # a TTL: still RESTORE
    c.save()
    cluster = servers.cluster("redis-7.0", masters=3)
    m = cluster.masters[0]
    cc = redis.RedisCluster(host=m.host, port=m.port)
    cc.set("s:7", "already here")
    cc.set("s:150", "already here")
    r = restore_file(src.dir / "dump.rdb", cluster.seed, tmp_path, cluster=True,
                     rdb_restore_command_behavior=behavior)  # fmt: skip
    out = r.stdout + r.stderr
    if behavior == "panic":
        assert r.returncode == 1, out
        assert "already exists" in out
        assert cc.get("s:7") == b"already here"
    elif behavior == "skip":
        assert r.returncode == 0, out
        assert "busykey=2" in out
        assert cc.get("s:7") == b"already here" and cc.get("s:150") == b"already here"
        assert cc.get("s:8") == b"value-8" and cc.pttl("ttl") > 500_000
    else:
        assert r.returncode == 0, out
        assert all(cc.get(f"s:{i}") == f"value-{i}".encode() for i in range(200))
    if behavior != "panic":
        assert "set=200" in out or "set=198" in out, out[-2000:]
