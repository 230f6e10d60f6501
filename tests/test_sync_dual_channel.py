"""Dual-channel full sync (``[sync_reader] dual_channel``) against real Valkey 8.1 / 9.1.

The source's snapshot is slowed down (``rdb-key-save-delay``) so that the two connections can
be seen in its ``INFO replication`` (``type=rdb-channel`` and ``type=main-channel`` at the
same time) and in ``CLIENT LIST`` while writers keep changing several dbs. The links are
also killed during the load (as in Valkey's replication-psync.tcl): the run must start over
and converge. A source that refuses (or a run with the setting off) syncs over one channel.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
import redis

from datagen import populate
from harness import Shake
from helpers import assert_same_data, write_config
from redshake.repl.protocol import (
    EV_ENDOFF,
    EV_RDB_BEGIN,
    EV_RDB_DATA,
    EV_RDB_END,
    TransferFramer,
    parse_endoff,
    parse_psync_reply,
)
from servers import free_port

DUAL_SOURCE = ["--dual-channel-replication-enabled", "yes", "--repl-diskless-sync", "yes"]


def dual_run(tmp: Path, src, dst, **reader) -> Shake:
    """One redshake process (sync_reader -> redis_writer) with its status page."""
    cfg = write_config(
        tmp / "dual.toml",
        {
            "sync_reader": {"address": src.address, **reader},
            "redis_writer": {"address": dst.address},
            "advanced": {
                "dir": str(tmp / "work"), "log_interval": 1,
                "status_port": free_port(), "status_bind": "127.0.0.1",
            },  # fmt: skip
        },
    )
    return Shake.on_config(cfg)


class Writers:
    """Random writes of every common type over dbs 0, 1 and 4 until stopped."""

    def __init__(self, src, n: int = 2) -> None:
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(src, 7 + i), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, src, seed: int) -> None:
        rnd = random.Random(seed)
        conns = [src.client(db) for db in (0, 1, 4)]
        while not self.halt.is_set():
            c = rnd.choice(conns)
            pipe = c.pipeline(transaction=rnd.random() < 0.3)
            for _ in range(15):
                n = rnd.randrange(400)
                op = rnd.randrange(9)
                if op == 0:
                    pipe.set(f"s{n}", rnd.randbytes(rnd.choice((5, 60, 3000))))
                elif op == 1:
                    pipe.set(f"t{n}", n, px=rnd.randrange(60_000, 600_000))
                elif op == 2:
                    pipe.hset(f"h{n % 40}", f"f{rnd.randrange(50)}", rnd.randbytes(20))
                elif op == 3:
                    pipe.rpush(f"l{n % 30}", *[rnd.randbytes(6) for _ in range(rnd.randrange(1, 5))])
                elif op == 4:
                    pipe.zadd(f"z{n % 30}", {f"m{rnd.randrange(80)}": rnd.uniform(-5, 5)})
                elif op == 5:
                    pipe.sadd(f"e{n % 30}", rnd.randrange(500))
                elif op == 6:
                    pipe.incrby(f"c{n % 20}", rnd.randrange(1, 9))
                elif op == 7:
                    pipe.unlink(f"s{n}", f"t{n}")
                else:
                    pipe.xadd(f"x{n % 5}", {"n": n}, maxlen=50, approximate=False)
            try:
                pipe.execute()
            except redis.ConnectionError:
                return
            time.sleep(0.003)

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(30)


def seed_data(src) -> None:
    populate(src.client(), src.version, True, big=False)
    for db in (0, 1, 4):
        c = src.client(db)
        c.mset({f"pre:{db}:{i}": f"v{i}" * (i % 7 + 1) for i in range(300)})


def channels(src) -> tuple[set[str], int]:
    """(types of the replicas INFO lists, connections CLIENT LIST flags as replicas)."""
    info = src.info("replication")
    types = {v.get("type", "") for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)}
    with src.client() as c:
        listed = c.client_list()
    return types, sum(1 for cl in listed if "S" in cl.get("flags", ""))


def replica_clients(src) -> dict[str, int]:
    """Client id of the rdb channel ("sync") and of the main channel ("main")."""
    with src.client() as c:
        listed = c.client_list()
    out: dict[str, int] = {}
    for cl in listed:
        if "S" in cl.get("flags", ""):
            out["sync" if cl.get("cmd") == "sync" else "main"] = int(cl["id"])
    return out


def until(cond, timeout: float, what: str, run: Shake) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if run.proc is not None and run.proc.poll() is not None:
            raise AssertionError(f"redshake exited while waiting for {what}:\n" + run.log()[-4000:])
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n" + run.log()[-4000:])


def acked_offsets(src) -> list[int]:
    info = src.info("replication")
    return [int(v.get("offset", 0)) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]


def converge(src, run: Shake, timeout: float = 90) -> None:
    """Until the source lists redshake's ACK at its own offset (ACK = applied offset)."""

    def caught_up() -> bool:
        master = src.info("replication")["master_repl_offset"]
        return acked_offsets(src) == [master] and run.reader().get("lag_bytes") == 0

    until(caught_up, timeout, "the target to catch up", run)


@pytest.mark.parametrize("name", ["valkey-8.1", "valkey-9.1"])
def test_dual_channel_sync_under_writes(servers, tmp_path, shakes, name):
    src = servers.start(name, args=DUAL_SOURCE)
    dst = servers.start(name)
    seed_data(src)
    src.client().config_set("rdb-key-save-delay", 1500)  # µs per key: a snapshot of ~2 s
    writers = Writers(src)
    run = dual_run(tmp_path, src, dst).start()
    shakes.append(run)
    both, replicas, streamed = False, 0, 0
    try:
        def snapshot_seen() -> bool:
            nonlocal both, replicas, streamed
            types, n = channels(src)
            if {"rdb-channel", "main-channel"} <= types:
                both, replicas = True, max(replicas, n)
            rd = run.reader()
            if rd.get("status") in ("receiving rdb", "syncing rdb"):
                streamed = max(streamed, rd["aof_received_bytes"])
                # ACK = applied: nothing past the snapshot's offset is acknowledged yet
                snapshot_at = rd["aof_received_offset"] - rd["aof_received_bytes"]
                assert max(acked_offsets(src), default=0) <= snapshot_at, (acked_offsets(src), rd)
            return rd.get("status") == "syncing aof"

        until(snapshot_seen, 90, "the snapshot", run)
        time.sleep(0.5)  # writes after the snapshot too
    finally:
        writers.stop()
    src.client().config_set("rdb-key-save-delay", 0)
    # proof that two connections were used: both channel kinds listed at the same moment
    assert both and replicas >= 2, run.log()[-4000:]
    # ... and the stream arrived (spooled) while the snapshot was still being received/applied
    assert streamed > 0, run.log()[-4000:]
    converge(src, run)
    assert assert_same_data(src, dst) > 900
    rd = run.reader()
    assert (rd["dual_channel_syncs"], rd["full_syncs"], rd["failed_snapshots"]) == (1, 1, 0)
    assert rd["aof_applied_offset"] == src.info("replication")["master_repl_offset"]
    assert run.terminate(60) == 0
    assert "dual-channel sync: snapshot at offset" in run.log()[-4000:]
    # the checkpoint written after a dual-channel sync resumes with a partial resync
    (cp,) = (tmp_path / "work").glob("reader_*/checkpoint.json")
    saved = json.loads(cp.read_text())
    assert (saved["phase"], saved["offset"]) == ("aof", src.info("replication")["master_repl_offset"])
    partial0 = int(src.info("stats")["sync_partial_ok"])
    run2 = dual_run(tmp_path, src, dst).start()
    shakes.append(run2)
    src.client(4).set("after-restart", "1")
    converge(src, run2)
    assert int(src.info("stats")["sync_partial_ok"]) == partial0 + 1
    rd = run2.reader()
    assert (rd["full_syncs"], rd["dual_channel_syncs"], rd["partial_resyncs"]) == (0, 0, 1)
    assert dst.client(4).get("after-restart") == b"1"
    assert_same_data(src, dst)
    assert run2.terminate(60) == 0


def test_dual_channel_recovers_from_killed_links(servers, tmp_path, shakes):
    """Kill the rdb channel during one dual-channel load and the main channel during the
    next: each attempt is dropped whole, a new snapshot is asked for, and the run converges."""
    src = servers.start("valkey-9.1", args=DUAL_SOURCE)
    dst = servers.start("valkey-9.1")
    seed_data(src)
    c = src.client()
    c.config_set("rdb-key-save-delay", 4000)  # µs per key: each attempt takes several seconds
    full0 = int(src.info("stats")["sync_full"])
    writers = Writers(src)
    run = dual_run(tmp_path, src, dst).start()
    shakes.append(run)
    try:
        for attempt, victim in ((1, "sync"), (2, "main")):

            def loading(attempt=attempt) -> bool:  # attempt n is epoch n: no other full sync
                rd = run.reader()
                if (rd.get("dual_channel_syncs"), rd.get("epoch")) != (attempt, attempt):
                    return False
                return rd["rdb_received_bytes"] > 0 and set(replica_clients(src)) == {"sync", "main"}

            until(loading, 90, f"dual-channel attempt {attempt} to be loading", run)
            ids = replica_clients(src)
            if victim == "main":
                c.config_set("rdb-key-save-delay", 0)  # the next attempt goes at full speed
            c.execute_command("CLIENT", "KILL", "ID", ids[victim])
        until(lambda: run.reader().get("status") == "syncing aof", 120, "a complete snapshot", run)
        time.sleep(0.5)
    finally:
        writers.stop()
    converge(src, run)
    assert assert_same_data(src, dst) > 900
    rd = run.reader()
    assert rd["failed_snapshots"] >= 2 and rd["dual_channel_syncs"] >= 3, rd
    assert int(src.info("stats")["sync_full"]) - full0 >= 3
    assert run.terminate(60) == 0


def test_dual_channel_empty_source(servers, tmp_path, shakes):
    """A snapshot of a few bytes, likely complete before the main channel's replies: the
    rdb channel is kept until the primary took its id, then the stream follows."""
    src = servers.start("valkey-9.1", args=DUAL_SOURCE)
    dst = servers.start("valkey-9.1")
    run = dual_run(tmp_path, src, dst).start()
    shakes.append(run)
    until(lambda: run.reader().get("status") == "syncing aof", 60, "the empty snapshot", run)
    src.client(0).set("a", "1")
    src.client(2).hset("h", mapping={"f": "v"})
    converge(src, run)
    assert assert_same_data(src, dst) == 2
    rd = run.reader()
    assert (rd["dual_channel_syncs"], rd["full_syncs"], rd["reconnects"]) == (1, 1, 0), rd
    assert run.terminate(60) == 0


SHAKE_USER = {"username": "shake", "password": "pw"}


@pytest.mark.parametrize(
    "source_args,reader",
    [
        (["--dual-channel-replication-enabled", "no"], {}),
        (DUAL_SOURCE, {"dual_channel": False}),
        (["--dual-channel-replication-enabled", "yes", "--repl-diskless-sync", "no"], {}),
        (DUAL_SOURCE, SHAKE_USER),
    ],
    ids=["source-off", "setting-off", "source-disk-sync", "sync-refused"],
)
def test_dual_channel_falls_back_to_one_channel(servers, tmp_path, shakes, source_args, reader):
    src = servers.start("valkey-8.1", args=source_args)
    dst = servers.start("valkey-8.1")
    refused = reader is SHAKE_USER
    if refused:  # an ACL user that may PSYNC but not SYNC: the rdb channel is refused
        src.client().acl_setuser("shake", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                                 commands=["+@all", "-sync"])  # fmt: skip
    seed_data(src)
    src.client().config_set("rdb-key-save-delay", 500)
    writers = Writers(src, 1)
    run = dual_run(tmp_path, src, dst, **reader).start()
    shakes.append(run)
    kinds: set[str] = set()
    try:
        def snapshot_done() -> bool:
            kinds.update(channels(src)[0])
            return run.reader().get("status") == "syncing aof"

        until(snapshot_done, 90, "the snapshot", run)
    finally:
        writers.stop()
    src.client().config_set("rdb-key-save-delay", 0)
    assert not kinds & {"rdb-channel", "main-channel"}, kinds
    converge(src, run)
    assert assert_same_data(src, dst) > 900
    rd = run.reader()
    # refused: the +DUALCHANNELSYNC attempt counts as a full sync that never got its snapshot
    assert (rd["dual_channel_syncs"], rd["full_syncs"]) == (0, 2 if refused else 1), rd
    assert run.terminate(60) == 0
    assert ("single-channel sync from now on" in run.log()[-4000:]) == refused


def test_rdb_channel_framing():
    """$ENDOFF, keepalives and the EOF-marked payload on the rdb channel, fed byte by byte."""
    mark = b"0123456789abcdef0123456789abcdef01234567"
    wire = (
        b"\n\n$ENDOFF:4711 " + b"a" * 40 + b" -1 17\r\n\n$EOF:" + mark + b"\r\nREDIS0011payload" + mark
    )
    framer = TransferFramer(rdb_channel=True)
    events = []
    for i in range(len(wire)):
        events += [e for e in framer.feed(wire[i : i + 1]) if e[0] != "keepalive"]
    end = events[0][1]
    assert events[0][0] == EV_ENDOFF and (end.offset, end.replid, end.db, end.client_id) == (4711, "a" * 40, -1, "17")
    assert events[1] == (EV_RDB_BEGIN, -1) and events[-1] == (EV_RDB_END, None)
    assert b"".join(v for k, v in events if k == EV_RDB_DATA) == b"REDIS0011payload"
    assert parse_psync_reply(b"+DUALCHANNELSYNC").kind == "dual"
    for bad in (b"$ENDOFF:x y 0 1", b"$ENDOFF:5 short 0 1", b"$ENDOFF:5 " + b"a" * 40):
        with pytest.raises(Exception, match="ENDOFF"):
            parse_endoff(bad)
