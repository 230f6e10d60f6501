"""The summary counts only what the target acknowledged.

A key counts as written when the target's reply to its (last) command arrived and was not
an error; ``failed=`` counts the error replies; every run that exits non-zero ends with a
line saying the copy is incomplete. Checked against real targets that refuse writes: a
read-only replica, a full ``maxmemory`` with ``noeviction`` and a BUSYKEY with
``rdb_restore_command_behavior = "panic"``, for the rdb, scan and sync (snapshot) readers.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from datagen import populate
from harness import Shake, diff_data, start_load, wait_converged, wait_for
from helpers import OWN_PREFIXES, assert_same_data, run_redshake, write_config
from servers import free_port

SUMMARY = re.compile(r"summary[^:]*: keys read=(\d+), written=(\d+) of (\d+) sent .*failed=(\d+)")
READERS = ["rdb", "scan", "sync"]


def fill_source(c, version, seed: int) -> None:
    """Realistic data (every type, several dbs, TTLs, streams with groups) plus random
    strings of mixed sizes, some in MULTI blocks, over three dbs."""
    populate(c, version, False, seed=seed, big=True, functions=False)
    rnd = random.Random(seed)
    for db in (0, 1, 5):
        c.execute_command("SELECT", db)
        p = c.pipeline(transaction=rnd.random() < 0.5)
        for i in range(1500):
            size = rnd.choice((8, 64, 700, 3000))
            p.set(f"r{db}:{i}", rnd.randbytes(size), px=rnd.choice((None, None, 3_600_000)))
        p.execute()
    c.execute_command("SELECT", 0)


def total_keys(server) -> int:
    """Keys on ``server``, redshake's own marker keys (position, live sync) left out."""
    dbs = [int(k[2:]) for k in server.info("keyspace") if k.startswith("db")]
    return sum(
        1
        for db in dbs
        for k in server.client(db).scan_iter(count=1000)
        if not k.startswith(OWN_PREFIXES)
    )


def run_copy(reader: str, src, dst, tmp: Path, behavior: str = "panic"):
    """Copy src to dst with ``reader``; returns (exit code, output)."""
    adv = {"dir": str(tmp / "work"), "log_interval": 0, "rdb_restore_command_behavior": behavior}
    if reader == "rdb":
        src.client().save()
        rdb = tmp / "src.rdb"
        shutil.copy(src.dir / src.info("server").get("dbfilename", "dump.rdb"), rdb)
        sections = {"rdb_reader": {"filepath": str(rdb)}}
    elif reader == "scan":
        sections = {"scan_reader": {"address": src.address}}
    else:  # the sync reader's snapshot phase only: it exits once the snapshot is applied
        sections = {"sync_reader": {"address": src.address, "sync_aof": False}}
    sections["redis_writer"] = {"address": dst.address}
    sections["advanced"] = adv
    p = run_redshake(write_config(tmp / "shake.toml", sections), timeout=300)
    return p.returncode, p.stdout + p.stderr


def summary_of(out: str) -> tuple[int, int, int]:
    """(written, sent, failed) from the summary line."""
    m = SUMMARY.search(out)
    assert m, out[-3000:]
    return int(m.group(2)), int(m.group(3)), int(m.group(4))


def last_line(out: str) -> str:
    return [ln for ln in out.splitlines() if ln.strip()][-1]


@pytest.mark.parametrize("reader", READERS)
def test_written_equals_target_keys(servers, tmp_path, reader):
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    fill_source(src.client(), src.version, seed=11)
    code, out = run_copy(reader, src, dst, tmp_path)
    assert code == 0, out[-3000:]
    written, sent, failed = summary_of(out)
    assert written == sent == total_keys(dst) and failed == 0, out[-2000:]
    assert "incomplete" not in out
    assert last_line(out).endswith("all done")
    if reader == "scan":  # the scan reader writes TTLs as now + PTTL
        assert diff_data(lambda db: [src.client(db)], dst, [0, 1, 3, 5]) == ""
    else:
        assert_same_data(src, dst)


@pytest.mark.parametrize("reader", READERS)
def test_read_only_replica_target(servers, tmp_path, reader):
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    fill_source(src.client(), src.version, seed=12)
    # a replica of a master that is not there: read-only, and it keeps its (empty) dataset
    dst.client().execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    code, out = run_copy(reader, src, dst, tmp_path)
    assert code != 0, out[-3000:]
    assert total_keys(dst) == 0
    written, _sent, failed = summary_of(out)
    assert written == 0 and failed >= 1, out[-2000:]
    assert "READONLY" in out
    assert "incomplete" in last_line(out), out[-2000:]


@pytest.mark.parametrize("reader", READERS)
def test_full_target_noeviction(servers, tmp_path, reader):
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    fill_source(src.client(), src.version, seed=13)
    d = dst.client()
    used = int(dst.info("memory")["used_memory"])
    d.config_set("maxmemory-policy", "noeviction")
    d.config_set("maxmemory", used + 1_500_000)  # room for a part of the ~5 MB only
    code, out = run_copy(reader, src, dst, tmp_path)
    assert code != 0, out[-3000:]
    written, sent, failed = summary_of(out)
    present = total_keys(dst)
    assert 0 < present < sent
    assert written == present and failed >= 1, (present, out[-2000:])
    assert "OOM" in out
    assert "incomplete" in last_line(out), out[-2000:]


@pytest.mark.parametrize("reader", READERS)
def test_busykey_panic(servers, tmp_path, reader):
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    fill_source(src.client(), src.version, seed=14)
    # a few of the source's keys already exist on the target (different values)
    rnd = random.Random(14)
    existing = rnd.sample(sorted(src.client(1).keys("r1:*")), 3)
    for k in existing:
        dst.client(1).set(k, b"already here")
    code, out = run_copy(reader, src, dst, tmp_path)
    assert code != 0, out[-3000:]
    written, _sent, failed = summary_of(out)
    assert written == total_keys(dst) - len(existing), out[-2000:]
    assert failed >= 1
    assert "BUSYKEY" in out and "incomplete" in last_line(out), out[-2000:]
    for k in existing:  # panic never replaces a key
        assert dst.client(1).get(k) == b"already here"


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
        assert r.status == 200
        return json.loads(r.read())


def test_live_stream_entries_acknowledged(servers, tmp_path, shakes):
    """The live stream: the status write_count is what the target acknowledged, and when
    the target turns read-only mid-stream the run fails, says so and counts the failure."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False, functions=False)
    port = free_port()
    shake = Shake(tmp_path, src, dst, status_port=port).start()
    shakes.append(shake)
    halt = start_load(src)
    try:
        shake.wait_streaming(60, "the stream")
        time.sleep(1)
    finally:
        halt()
    wait_converged(src, shake)
    wait_for(lambda: _status(port)["total_entries_count"]["write_count"] > 0, 30, "a tick", shake)
    doc = _status(port)
    per_cmd = sum(c["write_count"] for c in doc["per_cmd_entries_count"].values())
    assert doc["total_entries_count"]["write_count"] == per_cmd  # all answered, none refused
    assert doc["redshake"]["failed_count"] == 0
    dst.client().execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    src.client().set("after-read-only", b"x")
    assert shake.wait(60) != 0
    out = shake.log()
    assert "READONLY" in out and "incomplete" in last_line(out), out[-2000:]
    assert summary_of(out)[2] >= 1
    m = re.search(r"entries written=(\d+)", out)
    assert m and int(m.group(1)) == doc["total_entries_count"]["write_count"], out[-2000:]


def test_per_command_write_count_is_acknowledged(servers, tmp_path, shakes):
    """The status JSON's per-command write_count counts what the target acknowledged: the
    target refuses some of the snapshot's writes (keys it already holds, BUSYKEY, skipped),
    and the per-command counts still add up to the acknowledged total, RESTORE + SET to the
    keys actually written; the same after live commands."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    fill_source(src.client(), src.version, seed=16)
    rnd = random.Random(16)
    aggregates = sorted(k for k in src.client().keys() if src.client().type(k) != b"string")
    existing = rnd.sample(sorted(src.client(1).keys("r1:*")), 40) + rnd.sample(aggregates, 5)
    for k in existing:
        (dst.client(1) if k.startswith(b"r1:") else dst.client()).set(k, b"already here")
    port = free_port()
    shake = Shake(tmp_path, src, dst, status_port=port,
                  advanced={"rdb_restore_command_behavior": "skip"}).start()  # fmt: skip
    shakes.append(shake)
    shake.wait_streaming(120, "the stream")
    wait_converged(src, shake)

    def settled() -> dict:  # the 1 s ticker has seen the final counts
        doc = _status(port)
        tot = doc["total_entries_count"]["write_count"]
        return doc if tot and tot == sum(
            c["write_count"] for c in doc["per_cmd_entries_count"].values()) else {}  # fmt: skip

    wait_for(lambda: settled(), 30, "per-command counts", shake)
    doc = settled()
    per = doc["per_cmd_entries_count"]
    assert doc["redshake"]["skipped"].get("busykey") == len(existing), doc["redshake"]
    assert doc["redshake"]["failed_count"] == 0 and doc["redshake"]["failed_by_cmd"] == {}
    written = total_keys(dst) - len(existing)
    snapshot_writes = sum(per.get(c, {}).get("write_count", 0) for c in ("RESTORE", "SET"))
    assert snapshot_writes == written, (per, written)
    # what was handed to the writer for those two is more: the refused ones
    assert sum(per[c]["read_count"] for c in ("RESTORE", "SET") if c in per) >= written + len(existing)
    c = src.client()
    for i in range(300):
        c.lpush("live:list", i)
        c.sadd("live:set", i)
    wait_converged(src, shake)
    wait_for(lambda: (settled().get("per_cmd_entries_count", {}).get("SADD", {})
                      .get("write_count") == 300), 30, "the live counts", shake)  # fmt: skip
    per = settled()["per_cmd_entries_count"]
    assert per["LPUSH"]["write_count"] == 300


def test_cluster_target_counts_acknowledged_keys(servers, tmp_path):
    """A cluster target (keys spread over three masters, big values rebuilt with several
    commands): written is the sum of the masters' DBSIZE."""
    src = servers.start("redis-7.0")
    cluster = servers.cluster("redis-7.0", masters=3)
    c = src.client()
    rnd = random.Random(15)
    p = c.pipeline(transaction=False)
    for i in range(2000):
        kind = i % 4
        if kind == 0:
            p.set(f"s:{i}", rnd.randbytes(rnd.choice((10, 500))), px=rnd.choice((None, 3_600_000)))
        elif kind == 1:
            p.hset(f"h:{i}", mapping={f"f{j}": j for j in range(rnd.choice((3, 300)))})
        elif kind == 2:
            p.rpush(f"l:{i}", *[rnd.randbytes(20) for _ in range(rnd.choice((2, 200)))])
        else:
            p.xadd(f"x:{i}", {"a": "1"})
    p.execute()
    c.save()
    rdb = tmp_path / "src.rdb"
    shutil.copy(src.dir / "dump.rdb", rdb)
    cfg = write_config(
        tmp_path / "shake.toml",
        {
            "rdb_reader": {"filepath": str(rdb)},
            "redis_writer": {"address": cluster.seed, "cluster": True},
            # commands for values over 1 KiB: one key, several commands
            "advanced": {"dir": str(tmp_path / "work"), "log_interval": 0,
                         "target_redis_proto_max_bulk_len": 1024},
        },
    )  # fmt: skip
    r = run_redshake(cfg, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    written, sent, failed = summary_of(out)
    assert "commands=" in out  # some keys were rebuilt with commands
    assert written == sent == sum(total_keys(m) for m in cluster.masters) == 2000, out[-2000:]
    assert failed == 0


def test_streamed_big_keys_count_once_when_their_last_command_is_acknowledged(servers):
    """Values over the streaming threshold arrive in parts (BigKeyStart / parts / end):
    exactly one command per key is marked as its last, it is the key's last command, and a
    real writer counts every key once."""
    from redshake.rdb import records as R
    from redshake.rdb.parser import RdbParser
    from redshake.readers.rdb_entries import RdbToEntries, TargetCaps
    from redshake.writers.redis import RedisWriter

    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    c = src.client()
    rnd = random.Random(16)
    c.rpush("big:list", *[rnd.randbytes(30) for _ in range(6000)])
    c.hset("big:hash", mapping={f"f{i}": rnd.randbytes(20) for i in range(5000)})
    c.pexpire("big:hash", 3_600_000)
    p = c.pipeline(transaction=False)
    for _ in range(3000):
        p.xadd("big:stream", {"a": rnd.randbytes(20)})
    p.execute()
    c.xgroup_create("big:stream", "g", id="0")
    c.xreadgroup("g", "c1", {"big:stream": ">"}, count=50)
    c.set("big:string", rnd.randbytes(300_000))
    for i in range(50):
        c.set(f"small:{i}", i)
    c.save()
    data = (src.dir / "dump.rdb").read_bytes()
    parser = RdbParser(big_value_threshold=64 << 10, part_items=100)
    w = RedisWriter(dst.address)
    conv = RdbToEntries(TargetCaps.from_target_info(w.info, 0), src_version=11, src_valkey=False)
    entries = []
    starts = 0
    step = 4 << 10  # small feeds: every value over the threshold is incomplete when it passes it
    for i in range(0, len(data), step):
        parser.feed(data[i : i + step])
        for rec in parser.records():
            starts += type(rec) is R.BigKeyStart
            entries += conv.convert(rec)
    parser.finish()
    assert starts == 4  # the four big values were streamed in parts
    ends = [i for i, e in enumerate(entries) if e.ends_key]
    assert len(ends) == 54
    for i in ends:  # nothing of the same key after its marked command
        key = entries[i].key
        assert all(e.key != key for e in entries[i + 1 :]), key
    for e in entries:
        w.write(e)
    w.flush()
    w.close()
    assert w.keys_acked == 54 == total_keys(dst)
    assert_same_data(src, dst)


def test_keyless_command_error_names_the_command_not_a_key(servers, tmp_path):
    """A function library the target refuses (its function name is taken by another library)
    is reported as FUNCTION LOAD, not as an error "on key b'LOAD'"; the run is incomplete."""
    src = servers.start("redis-7.0")
    with src.client() as c:
        c.function_load("#!lua name=mylib\nredis.register_function('myfunc', function() return 1 end)")
        c.set("k", "v")
        c.save()
    dst = servers.start("redis-7.0")
    with dst.client() as c:
        c.function_load("#!lua name=other\nredis.register_function('myfunc', function() return 2 end)")
    cfg = write_config(tmp_path / "shake.toml", {
        "rdb_reader": {"filepath": str(src.dir / "dump.rdb")},
        "redis_writer": {"address": dst.address},
        "advanced": {"dir": str(tmp_path / "work"), "log_interval": 0},
    })  # fmt: skip
    r = run_redshake(cfg)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out, out[-2000:]
    assert "target replied error to FUNCTION LOAD (db 0): ERR Function myfunc already exists" in out, out
    assert "b'LOAD'" not in out and "the copy is incomplete" in out
