"""Live sync over PSYNC (sync_reader) against real servers: versions, sentinel source,
killed replica links (partial and full resyncs), kill -9 and restart, sync_rdb / sync_aof.

Convergence is observed the way a master sees a replica: redshake ACKs only offsets the
target has applied, so once the source is idle and the replica's offset in INFO
replication equals master_repl_offset, the target has everything. Then every key is
compared with DEBUG DIGEST-VALUE and its expiry.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request

import pytest

from datagen import populate
from harness import (
    Shake,
    kill_replica_links,
    replica_offset,
    start_load,
    stat,
    streaming_sync,
    wait_converged,
    wait_for,
)
from helpers import assert_same_data, make_certs, write_config
from redshake.repl.protocol import (
    CommandStream,
    ReplProtocolError,
    TransferFramer,
    parse_psync_reply,
)
from redshake.repl.spool import Spool
from redshake.resp.encode import encode
from servers import free_port


@pytest.mark.parametrize("name", ["redis-5.0", "redis-6.2", "redis-7.0", "valkey-8.1", "valkey-9.1"])
def test_sync_versions(servers, tmp_path, shakes, name):
    src = servers.start(name)
    dst = servers.start(name)
    populate(src.client(), src.version, src.is_valkey, big=name == "redis-7.0")
    halt = start_load(src, 1)  # writes during the snapshot
    shake = Shake(tmp_path, src, dst).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    time.sleep(0.5)  # ... and after it
    halt()
    c = src.client(2)
    c.set("plain", "v")
    c.execute_command("SELECT", 2)
    with c.pipeline(transaction=True) as p:
        p.set("tx1", "a").lpush("tx2", "b", "c").expire("tx1", 1000).execute()
    c.swapdb(2, 5) if src.version >= (4, 0, 0) else None
    wait_converged(src, shake)
    assert assert_same_data(src, dst) > 0
    assert shake.terminate() == 0
    cp = shake.checkpoint()
    assert cp["phase"] == "aof" and cp["offset"] == replica_offset(src)[0]


def test_sync_sentinel_source(servers, tmp_path, shakes):
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    sentinel = servers.sentinel(src, "mymaster")
    populate(src.client(), src.version, False, big=False)
    port = free_port()
    shake = Shake(
        tmp_path, src, dst, status_port=port,
        reader={"address": ""}, sentinel={"master_name": "mymaster", "address": sentinel.address},
    ).start()  # fmt: skip
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    src.client().set("after", "1")
    wait_converged(src, shake)
    assert_same_data(src, dst)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        st = json.loads(r.read())
    rd = st["reader"]
    assert rd["name"] == f"reader_127.0.0.1_{src.port}" and rd["status"] == "syncing aof"
    assert rd["aof_applied_offset"] == rd["aof_received_offset"] == replica_offset(src)[0]
    assert rd["lag_bytes"] == 0 and rd["full_syncs"] == 1 and st["consistent"] is True
    for k in ("rdb_file_size_human", "aof_received_human", "lag_seconds", "reconnects", "partial_resyncs"):
        assert k in rd
    assert shake.terminate() == 0


@pytest.mark.parametrize(
    "name,args",
    [
        ("redis-7.0", ["--repl-backlog-size", "64mb"]),
        ("valkey-8.1", ["--repl-backlog-size", "16384", "--repl-backlog-ttl", "1"]),
    ],
    ids=["partial", "small-backlog"],
)
def test_sync_survives_killed_links(servers, tmp_path, shakes, name, args):
    """After Valkey's replication-psync.tcl: writers flood the source while the replica link
    is killed every 2 s; partial resyncs continue the stream, full resyncs re-seed the target."""
    src = servers.start(name, args=args)
    dst = servers.start(name)
    populate(src.client(), src.version, src.is_valkey, big=False)
    shake = Shake(tmp_path, src, dst).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    partial0, full0 = stat(src, "sync_partial_ok"), stat(src, "sync_full")
    halt = start_load(src)
    try:
        for _ in range(5):
            time.sleep(2)
            kill_replica_links(src)
    finally:
        halt()
    wait_converged(src, shake, 90)
    assert_same_data(src, dst)
    partial, full = stat(src, "sync_partial_ok") - partial0, stat(src, "sync_full") - full0
    if "16384" not in args:
        assert partial >= 3 and full == 0, shake.log()[-3000:]
    else:
        assert full >= 1, shake.log()[-3000:]
        assert "emptying the target first" in shake.log()
    assert shake.terminate() == 0
    assert "reconnecting" in shake.log()


def test_sync_restart_after_kill9(servers, tmp_path, shakes):
    """kill -9 under load, restart with the same config: PSYNC continues from the checkpoint
    (no new full sync) and the data converges (idempotent load: a few commands applied before
    the crash may be applied twice, see the documentation)."""
    src, dst, shake = streaming_sync(servers, tmp_path, shakes)
    halt = start_load(src, idempotent=True)
    try:
        time.sleep(2)
        shake.kill()
        full0, partial0 = stat(src, "sync_full"), stat(src, "sync_partial_ok")
        time.sleep(1)
        shake2 = Shake(tmp_path, src, dst).start()
        shakes.append(shake2)
        time.sleep(2)
    finally:
        halt()
    wait_converged(src, shake2)
    assert stat(src, "sync_full") == full0, shake2.log()[-3000:]
    assert stat(src, "sync_partial_ok") == partial0 + 1
    assert_same_data(src, dst)
    assert "resuming with PSYNC" in shake2.log()
    assert shake2.terminate() == 0
    # a clean stop and start resumes too
    src.client().set("between", "runs")
    shake3 = Shake(tmp_path, src, dst).start()
    shakes.append(shake3)
    wait_converged(src, shake3)
    assert dst.client().get("between") == b"runs"
    assert stat(src, "sync_full") == full0
    assert shake3.terminate() == 0


def test_sync_rdb_only(servers, tmp_path, shakes):
    """sync_aof = false: the snapshot is applied, then redshake exits 0."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False)
    shake = Shake(tmp_path, src, dst, reader={"sync_aof": False}).start()
    shakes.append(shake)
    assert shake.wait(60) == 0, shake.log()[-3000:]
    assert_same_data(src, dst)


def test_sync_without_rdb(servers, tmp_path, shakes):
    """sync_rdb = false: the snapshot is discarded, only later writes reach the target."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    src.client().set("before", "1")
    shake = Shake(tmp_path, src, dst, reader={"sync_rdb": False}).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    src.client().set("after", "2")
    wait_converged(src, shake)
    d = dst.client()
    assert d.get("before") is None and d.get("after") == b"2"
    assert "sync_rdb = false" in shake.log()
    assert shake.terminate() == 0


@pytest.mark.parametrize("exactly_once", [False, True, "lua"])
def test_sync_survives_target_reconnects(servers, tmp_path, shakes, exactly_once):
    """The target drops redshake's connection under load: by default it reconnects and
    re-sends from the target's position marker (any load: nothing applied twice); with
    exactly_once = false from the last acknowledged offset (idempotent load: a re-sent
    command may have been applied twice) and no marker is ever written. "lua": the default
    with a Lua function (commands one by one inside the batch's transaction, no runs)."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False)
    adv = {} if exactly_once else {"exactly_once": False}
    shake = Shake(tmp_path, src, dst, advanced=adv)
    if exactly_once == "lua":
        shake.cfg.write_text(shake.cfg.read_text() + '\n[filter]\nfunction = "shake.call(DB, ARGV)"\n')
    shake.start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    halt = start_load(src, idempotent=not exactly_once)
    try:
        for _ in range(3):
            time.sleep(1)
            with dst.client() as c:
                c.execute_command("CLIENT", "KILL", "TYPE", "normal")
    finally:
        halt()
    wait_converged(src, shake)
    assert_same_data(src, dst, dbs=list(range(15)))
    assert "target reconnected" in shake.log()
    markers = [k for db in range(16) for k in dst.client(db).keys("redshake:pos:*")]
    assert markers == ([f"redshake:pos:{src.address}".encode()] if exactly_once else [])
    assert ("exactly-once is off" in shake.log()) != bool(exactly_once)
    assert shake.terminate() == 0


def test_sync_follows_sentinel_failover(servers, tmp_path, shakes):
    """The source fails over: redshake finds the new master through Sentinel and continues
    with a partial resync (PSYNC2), never a full one."""
    src = servers.start("redis-7.0")
    rep = servers.start("redis-7.0", args=["--replicaof", src.host, str(src.port)])
    dst = servers.start("redis-7.0")
    wait_for(lambda: replica_offset(src)[2] == 1 and rep.info("replication")["master_link_status"] == "up",
             30, "the replica")  # fmt: skip
    sentinel = servers.sentinel(src, "mymaster")
    populate(src.client(), src.version, False, big=False)
    shake = Shake(
        tmp_path, src, dst,
        reader={"address": ""}, sentinel={"master_name": "mymaster", "address": sentinel.address},
    ).start()  # fmt: skip
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    src.client().set("before", "failover")

    def rep_caught_up() -> bool:
        return rep.info("replication")["master_repl_offset"] == src.info("replication")["master_repl_offset"]

    wait_for(rep_caught_up, 30, "the replica to catch up")
    sc = sentinel.client()
    wait_for(lambda: len(sc.execute_command("SENTINEL", "REPLICAS", "mymaster")) >= 1, 30, "discovery")
    sc.execute_command("SENTINEL", "FAILOVER", "mymaster")

    def promoted() -> bool:
        addr = sc.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        return int(addr[1]) == rep.port and rep.info("replication")["role"] == "master"

    wait_for(promoted, 60, "the failover", shake)
    kill_replica_links(src)  # the old master's replicas (redshake) must move on
    shake.wait_readers(lambda r: r["address"] == rep.address, 30, "the new master")
    assert f"source master is at {rep.address}" in shake.log()
    rep.client().set("after", "failover")
    wait_converged(rep, shake)
    # Usually a partial resync (PSYNC2). If the old master streamed a few bytes the
    # promoted replica never got (Sentinel's hello messages), the new master cannot
    # continue from our offset and a full resync over the old copy follows; both converge.
    log = shake.log()
    assert "partial resynchronisation accepted" in log or "cannot continue" in log, log[-3000:]
    assert_same_data(rep, dst)
    assert shake.terminate() == 0


def test_sync_retries_nomasterlink(servers, tmp_path, shakes):
    """A replica source whose own master is gone answers -NOMASTERLINK: redshake retries
    (logged) and syncs once the source can serve it."""
    up = servers.start("redis-7.0")
    src = servers.start("redis-7.0", args=["--replicaof", up.host, str(up.port)])
    dst = servers.start("redis-7.0")
    up.client().set("k", "v")
    wait_for(lambda: src.client().get("k") == b"v", 30, "the replica")
    up.stop()
    shake = Shake(tmp_path, src, dst).start()
    shakes.append(shake)
    shake.wait_readers(lambda r: "NOMASTERLINK" in r["last_link_error"], 30, "the retry")
    assert "NOMASTERLINK" in shake.log()
    src.client().execute_command("REPLICAOF", "NO", "ONE")
    shake.wait_streaming(60, "the snapshot")
    src.client().set("k2", "v2")
    wait_converged(src, shake)
    assert_same_data(src, dst)
    assert shake.terminate() == 0


def test_sync_adopts_new_replid(servers, tmp_path, shakes):
    """The source is demoted to a replica of its former replica (a failover without
    Sentinel): redshake reconnects, gets +CONTINUE <new replid> (PSYNC2) and adopts it."""
    src = servers.start("redis-7.0")
    rep = servers.start("redis-7.0", args=["--replicaof", src.host, str(src.port)])
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False)
    shake = Shake(tmp_path, src, dst).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    src.client().set("before", "1")
    wait_converged(src, shake)
    old_id = src.info("replication")["master_replid"]
    rep.client().execute_command("REPLICAOF", "NO", "ONE")
    src.client().execute_command("REPLICAOF", rep.host, rep.port)
    wait_for(lambda: src.info("replication").get("master_link_status") == "up", 30, "the demotion")
    kill_replica_links(src)
    rep.client().set("after", "2")
    wait_for(lambda: src.client().get("after") == b"2", 30, "the chain")
    new_id = rep.info("replication")["master_replid"]
    assert new_id != old_id
    shake.wait_readers(lambda r: r["replid"] == new_id, 30, "the new replid")
    wait_converged(src, shake)
    assert f"replication id changed to {new_id}" in shake.log()
    assert "full resynchronisation" not in shake.log().split("now following the stream", 1)[1]
    assert_same_data(rep, dst)
    assert shake.terminate() == 0
    assert shake.checkpoint()["replid"] == new_id


def test_sync_waits_for_source_bgsave(servers, tmp_path, shakes):
    """The source is in its own BGSAVE: redshake says so and proceeds once it is over."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    c = src.client()
    populate(c, src.version, False, big=False)
    c.config_set("rdb-key-save-delay", 100_000)  # 0.1 s per key: a BGSAVE of a few seconds
    c.bgsave()
    c.config_set("rdb-key-save-delay", 0)  # (the running child keeps the slow setting)
    shake = Shake(tmp_path, src, dst).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    log = shake.log()
    assert "rdb_bgsave_in_progress" in log and "finished its bgsave" in log
    c.set("after", "1")
    wait_converged(src, shake)
    assert_same_data(src, dst)
    assert shake.terminate() == 0


def test_sync_renamed_psync(servers, tmp_path, shakes):
    """advanced.aws_psync: a source that only accepts a renamed PSYNC (as ElastiCache).
    Vanilla Redis serves a renamed PSYNC like the old SYNC (no offsets, no ACKs)."""
    src = servers.start("redis-7.0", args=["--rename-command", "PSYNC", "xpsync-4711"])
    dst = servers.start("redis-7.0")
    src.client().set("k", "v")
    aws = f"{src.address}@xpsync-4711"
    shake = Shake(tmp_path, src, dst, advanced={"aws_psync": aws}).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    src.client().set("k2", "v2")
    wait_for(lambda: dst.client().get("k2") == b"v2", 30, "the stream", shake)
    assert_same_data(src, dst)
    assert "like the old SYNC" in shake.log()
    assert shake.terminate() == 0


def test_spool_segments(tmp_path):
    sp = Spool(tmp_path, segment_bytes=100)
    sp.start_stream(1, 1000)
    data = bytes(range(256)) * 3
    for i in range(0, len(data), 37):
        sp.write_stream(1, data[i : i + 37])
    assert len(list(tmp_path.glob("aof-1-*.spool"))) > 3
    got, off = b"", 1000
    while off < 1000 + len(data):
        part = sp.read_stream(1, off, 50)
        assert part
        got += part
        off += len(part)
    assert got == data
    sp.release(1, 1000 + 400)
    assert sp.read_stream(1, 1000 + 450, 10) == data[450:460]
    assert sp.read_stream(1, 1000 + 50, 10) == b""  # released
    sp.start_stream(1, 1000 + len(data))  # a partial resync continues the same segment chain
    sp.write_stream(1, b"xyz")
    assert sp.read_stream(1, 1000 + len(data), 10) == b"xyz"
    sp.drop_epoch(1)
    sp.close()
    assert not list(tmp_path.glob("*.spool"))


# -- sans-I/O protocol pieces (no server) ----------------------------------------------------


def _events(framer: TransferFramer, data: bytes, step: int) -> list:
    out = []
    for i in range(0, len(data), step):
        out.extend(framer.feed(data[i : i + step]))
    return out


@pytest.mark.parametrize("step", [1, 7, 41, 1000])
def test_framer_diskless_and_disk(step):
    mark = b"0123456789abcdef0123456789abcdef01234567"
    payload = b"REDIS0011" + bytes(range(256)) * 3 + mark[:39]  # a near-miss of the mark
    stream = encode([b"SET", b"a", b"b"])
    for header, tail in ((b"$EOF:" + mark + b"\r\n", mark), (b"$%d\r\n" % len(payload), b"")):
        f = TransferFramer()
        wire = b"\n\n+FULLRESYNC " + b"f" * 40 + b" 77\r\n\n\n" + header + payload + tail + stream
        evs = []
        i = 0
        while i < len(wire):
            chunk = wire[i : i + step]
            i += step
            for ev in f.feed(chunk):
                evs.append(ev)
                if ev[0] == "reply":
                    r = parse_psync_reply(ev[1])
                    assert (r.kind, r.offset) == ("full", 77)
                    f.expect_payload()
                    evs.extend(f.feed(b""))
        rdb = b"".join(v for k, v in evs if k == "rdb_data")
        got_stream = b"".join(v for k, v in evs if k == "stream")
        assert rdb == payload and got_stream == stream
        kinds = [k for k, _ in evs]
        assert kinds.index("rdb_end") > kinds.index("rdb_begin")
        assert kinds.count("keepalive") == 4


def test_psync_replies():
    assert parse_psync_reply(b"+CONTINUE").kind == "continue"
    r = parse_psync_reply(b"+CONTINUE " + b"a" * 40)
    assert r.kind == "continue" and r.replid == "a" * 40
    assert parse_psync_reply(b"-LOADING Redis is loading").kind == "retry"
    assert parse_psync_reply(b"-NOMASTERLINK Can't SYNC while not connected").kind == "retry"
    assert parse_psync_reply(b"-ERR unknown command 'PSYNC'").kind == "unsupported"
    assert parse_psync_reply(b"-NOPERM no").kind == "error"


def test_command_stream_offsets():
    cmds = [[b"SELECT", b"3"], [b"PING"], [b"MULTI"], [b"SET", b"k", b"v" * 300], [b"EXEC"]]
    cmds += [[b"REPLCONF", b"GETACK", b"*"]] + [[b"INCR", b"n%d" % i] for i in range(600)]
    wire = b"".join(encode(c) for c in cmds)
    for step in (1, 5, 4096):
        cs = CommandStream(1000)
        got = []
        for i in range(0, len(wire), step):
            cs.feed(wire[i : i + step])
            while (item := cs.next()) is not None:
                got.append((item[0], cs.offset))
        ends, pos = [], 1000
        for c in cmds:
            pos += len(encode(c))
            ends.append(pos)
        assert [g[0] for g in got] == cmds and [g[1] for g in got] == ends


def test_command_stream_rejects_non_canonical():
    cs = CommandStream(0)
    cs.feed(b"*1\r\n$04\r\nPING\r\n")
    with pytest.raises(ReplProtocolError):
        cs.next()


def test_sync_prefer_replica(servers, tmp_path, shakes):
    src = servers.start("redis-7.0")
    rep = servers.start("redis-7.0", args=["--replicaof", src.host, str(src.port)])
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False)
    wait_for(lambda: replica_offset(src)[1] == replica_offset(src)[0] > 0, 30, "the replica")
    shake = Shake(tmp_path, src, dst, reader={"prefer_replica": True}).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    assert f"reading from replica {rep.address}" in shake.log()
    src.client().set("later", "x")
    wait_for(lambda: rep.client().get("later") == b"x", 30, "the replica")
    wait_converged(rep, shake)
    assert_same_data(src, dst)
    assert shake.terminate() == 0


def test_sync_restart_after_backlog_lost(servers, tmp_path, shakes):
    """Restart when the source's backlog no longer covers the checkpoint: a full sync over
    the earlier copy, and keys deleted on the source meanwhile do not survive."""
    src = servers.start("redis-7.0", args=["--repl-backlog-size", "16384"])
    dst = servers.start("redis-7.0")
    c = src.client()
    populate(c, src.version, False, big=False)
    shake = Shake(tmp_path, src, dst).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    c.set("after", "1")
    wait_converged(src, shake)
    assert shake.terminate() == 0
    c.delete(b"d0:str", b"d0:list:small")
    for i in range(100):
        c.set(f"fill:{i}", b"x" * 1000)  # 100 KB: more than the backlog holds
    full0 = stat(src, "sync_full")
    shake2 = Shake(tmp_path, src, dst).start()
    shakes.append(shake2)
    shake2.wait_readers(lambda r: r["full_syncs"] >= 1, 60, "the full sync")
    wait_converged(src, shake2)
    assert "emptying the target first" in shake2.log()
    assert stat(src, "sync_full") == full0 + 1
    assert dst.client().exists(b"d0:str", b"d0:list:small") == 0
    assert_same_data(src, dst)
    assert shake2.terminate() == 0


def test_sync_stream_runs(servers, tmp_path, shakes):
    """Plain commands travel as runs (received bytes forwarded whole): arguments and
    argument counts beyond the size tables, commands spanning several 64 KiB reads, SELECTs
    and transactions between runs; an error reply inside a run names its own command."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    shake = Shake(tmp_path, src, dst).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    c3 = src.client(3)
    with c3.pipeline(transaction=False) as p:
        for i in range(300):
            p.set(f"a:{i}", i)
        p.set("big", os.urandom(200_000))  # spans several stream reads
        p.rpush("many", *range(5000))  # 5001 arguments
        p.hset("h", "f" * 4096, "v" * 5000)
        for i in range(300):
            p.set(f"b:{i}", i)
        p.execute()
    with src.client(0).pipeline(transaction=True) as p:
        p.set("t1", 1).incr("t1").execute()
    c3.set("after", 1)
    wait_converged(src, shake)
    assert assert_same_data(src, dst) > 600
    # An error in the middle of a run: the target holds a list where the source has nothing
    dst.client(3).rpush("wrong", "x")
    with c3.pipeline(transaction=False) as p:
        for i in range(200):
            p.set(f"c:{i}", i)
        p.incrby("wrong", 2)
        for i in range(200):
            p.set(f"d:{i}", i)
        p.execute()
    assert shake.wait(30) == 1
    log = shake.log()
    assert "target replied error to INCRBY on key b'wrong' (db 3): WRONGTYPE" in log, log[-3000:]
    assert dst.client(3).get("c:199") == b"199"  # the run's commands before the error applied


def test_sync_from_tls_source(servers, tmp_path, shakes):
    """A source reached over TLS (server certificate verified, client certificate sent):
    snapshot, stream, and a killed link resumed with +CONTINUE over a new TLS connection."""
    certs = make_certs(tmp_path)
    tls_port = free_port()
    src = servers.start(
        "redis-7.0",
        args=[
            "--tls-port", str(tls_port),
            "--tls-cert-file", certs["server.crt"],
            "--tls-key-file", certs["server.key"],
            "--tls-ca-cert-file", certs["ca.crt"],
            "--tls-auth-clients", "yes",  # a client certificate is required
        ],
    )  # fmt: skip
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, src.is_valkey)
    reader = {
        "address": f"127.0.0.1:{tls_port}",
        "tls": True,
        "tls_config": {"ca_cert": certs["ca.crt"], "cert": certs["client.crt"], "key": certs["client.key"]},
    }
    shake = Shake(tmp_path, src, dst, reader=reader).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    halt = start_load(src, 2)
    time.sleep(1)
    assert kill_replica_links(src) >= 1
    time.sleep(1)
    halt()
    wait_converged(src, shake)
    assert assert_same_data(src, dst) > 0
    assert stat(src, "sync_partial_ok") >= 1
    assert shake.terminate() == 0


@pytest.mark.parametrize("named", [False, True])
def test_sync_exactly_once_after_kill9(servers, tmp_path, shakes, named):
    """Exactly-once (the default; or with a marker key and db named): each stream batch is
    one MULTI/EXEC with a position marker, so kill -9 under a NON-idempotent load (INCR,
    RPUSH, APPEND, two dbs) and a restart resume exactly where the target is: equal data, no
    full sync, nothing applied twice."""
    src = servers.start("redis-7.0", args=["--repl-backlog-size", "64mb"])
    dst = servers.start("redis-7.0")
    adv = {"exactly_once_key": "redshake:pos", "exactly_once_db": 15} if named else {}
    populate(src.client(), src.version, False, big=False)
    shake = Shake(tmp_path, src, dst, advanced=adv).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    full0, partial0 = stat(src, "sync_full"), stat(src, "sync_partial_ok")
    halt = start_load(src)
    try:
        for i in range(3):
            time.sleep(1.5)
            shake.kill()
            time.sleep(0.3)
            shake = Shake(tmp_path, src, dst, advanced=adv).start()
            shakes.append(shake)
            # the source accepted this restart's PSYNC (not merely redshake meaning to send it)
            wait_for(lambda n=partial0 + i + 1: stat(src, "sync_partial_ok") >= n, 30, "the restart", shake)
        time.sleep(1)
    finally:
        halt()
    last_write = replica_offset(src)[0]
    wait_converged(src, shake)
    assert stat(src, "sync_full") == full0, shake.log()[-3000:]
    assert stat(src, "sync_partial_ok") == partial0 + 3
    assert assert_same_data(src, dst, dbs=list(range(15))) > 0
    logs = "".join(s.log() for s in shakes)
    assert "marker" in logs and "is ahead of offset" in logs  # the marker set the resume point
    replid = src.info("replication")["master_replid"]
    master = replica_offset(src)[0]
    m_replid, m_off, _db = dst.client(15 if named else 0).get(f"redshake:pos:{src.address}").split()
    # past the last write (only PINGs, which are not written, may follow it)
    assert m_replid == replid.encode() and last_write <= int(m_off) <= master
    assert shake.terminate() == 0


def test_exactly_once_falls_back_with_a_warning(servers, tmp_path, shakes):
    """A target that refuses the marker (here: its db does not exist) -> at-least-once with a
    warning at start, and the sync goes on; a file target likewise."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    src.client().set("a", "1")
    shake = Shake(tmp_path, src, dst, advanced={"exactly_once_db": 99}).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    src.client(1).incr("n")
    wait_converged(src, shake)
    assert assert_same_data(src, dst) == 2
    assert "exactly-once is not possible: the target refused the position marker" in shake.log()
    assert "DB index is out of range" in shake.log()
    assert shake.terminate() == 0
    cfg = write_config(tmp_path / "file.toml", {
        "sync_reader": {"address": src.address},
        "file_writer": {"filepath": str(tmp_path / "out.aof"), "type": "aof"},
        "advanced": {"dir": str(tmp_path / "w2"), "status_port": free_port(), "status_bind": "127.0.0.1"},
    })  # fmt: skip
    to_file = Shake.on_config(cfg, out=tmp_path / "file.out").start()
    shakes.append(to_file)
    to_file.wait_streaming(60, "the file sync")
    assert to_file.terminate() == 0, to_file.log()[-3000:]
    assert "exactly-once is not possible (the target is a file" in to_file.log()
