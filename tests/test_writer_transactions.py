"""MULTI/EXEC blocks through the writers: errors inside transactions, atomic delivery to a
cluster, redirected blocks, and exact acknowledged offsets."""

from __future__ import annotations

import threading
import time

import pytest

import servers as srv
from harness import Errors, cmdstat, move_slot, tag_on
from redshake.commands.slots import key_slot
from redshake.entry import Entry, Run
from redshake.resp.conn import Connection
from redshake.resp.encode import encode
from redshake.writers.cluster import ClusterWriter
from redshake.writers.redis import RedisWriter


def E(*args: bytes | str, db: int = 0, offset: int = -1, key: object = None) -> Entry:
    argv = [a.encode() if isinstance(a, str) else a for a in args]
    return Entry(db, argv, key, offset)


def block(*cmds: tuple, offset: int = -1, db: int = 0) -> list[Entry]:
    """MULTI, cmds, EXEC; like the live reader, only EXEC carries the offset."""
    return [E("MULTI", db=db), *(E(*c, db=db) for c in cmds), E("EXEC", db=db, offset=offset)]


# -- standalone ------------------------------------------------------------------------------


def test_wrongtype_inside_exec_reaches_on_error(servers) -> None:
    s = servers.start("redis-7.0")
    errs = Errors()
    w = RedisWriter(s.address, on_error=errs)
    w.write(E("SET", "s", "1", offset=10))
    blk = block(("SET", "a", "1"), ("LPUSH", "s", "x"), ("SET", "b", "2"), offset=20)
    for e in blk:
        w.write(e)
    w.write(E("SET", "c", "3", offset=30))
    w.flush()
    assert [(e, m.split()[0]) for e, m in errs] == [(blk[2], "WRONGTYPE")]
    assert w.answered == w.written == 7 and w.status()["unanswered_entries"] == 0
    assert w.acked_offset == 30 and w.transactions == 1
    with s.client() as c:
        assert c.mget("a", "b", "c") == [b"1", b"2", b"3"]
    w.close()


def test_execabort_reports_the_command_that_failed_to_queue(servers) -> None:
    s = servers.start("redis-7.0")
    errs = Errors()
    w = RedisWriter(s.address, on_error=errs)
    blk = block(("SET", "a", "1"), ("GET",), ("SET", "b", "2"), offset=5)
    for e in blk:
        w.write(e)
    w.flush()
    assert len(errs) == 1
    assert errs[0][0] is blk[2]
    assert "wrong number of arguments" in errs[0][1] and "EXECABORT" in errs[0][1]
    assert w.answered == w.written == 5 and w.acked_offset == 5
    with s.client() as c:
        assert c.exists("a", "b") == 0
    w.close()


def test_transaction_error_without_handler_stops(servers) -> None:
    s = servers.start("redis-7.0")
    w = RedisWriter(s.address)
    for e in block(("SET", "s", "1"), ("LPUSH", "s", "x")):
        w.write(e)
    with pytest.raises(Exception, match="WRONGTYPE"):
        w.flush()
    w.close()


def test_acked_offset_moves_only_at_exec(servers) -> None:
    s = servers.start("redis-7.0")
    w = RedisWriter(s.address)
    w.write(E("SET", "x", "1", offset=100))
    w.flush()
    assert w.acked_offset == 100
    # offsets on MULTI and the commands too (as the AOF reader gives them)
    w.write(E("MULTI", offset=110))
    w.write(E("SET", "y", "1", offset=120))
    w.write(E("INCR", "n", offset=130))
    w.flush()  # MULTI and the queued commands are answered, nothing is applied yet
    assert w.acked_offset == 100
    assert w.status()["unanswered_entries"] == 3 and w.in_transaction
    with s.client() as c:
        assert c.exists("y") == 0
    w.write(E("EXEC", offset=140))
    w.flush()
    assert w.acked_offset == 140 and w.status()["unanswered_entries"] == 0
    with s.client() as c:
        assert c.get("y") == b"1" and c.get("n") == b"1"
    w.close()


def test_db_change_inside_a_transaction(servers) -> None:
    s = servers.start("redis-7.0")
    errs = Errors()
    w = RedisWriter(s.address, on_error=errs)
    w.write(E("MULTI", db=1))
    w.write(E("SET", "k", "one", db=1))
    w.write(E("SET", "k", "two", db=2))
    w.write(E("LPUSH", "k", "x", db=2))
    w.write(E("EXEC", db=2, offset=9))
    w.write(E("SET", "after", "1", db=2))
    w.flush()
    assert [(e.argv[0], m.split()[0]) for e, m in errs] == [(b"LPUSH", "WRONGTYPE")]
    with s.client(db=1) as c1, s.client(db=2) as c2:
        assert c1.get("k") == b"one" and c2.get("k") == b"two" and c2.get("after") == b"1"
    # discarded block with a SELECT inside: the writer must not lose track of the db
    w.write(E("MULTI", db=2))
    w.write(E("SET", "z", "1", db=3))
    w.write(E("GET", db=3))
    w.write(E("EXEC", db=3))
    w.write(E("SET", "z3", "1", db=3))
    w.flush()
    assert errs[-1][0].argv == [b"GET"]
    with s.client(db=3) as c3:
        assert c3.get("z3") == b"1" and c3.get("z") is None
    w.close()


def _run(db: int, offset: int, *cmds: tuple) -> Run:
    """A Run as the sync reader hands it over: the commands' bytes as received."""
    argvs = [[a.encode() if isinstance(a, str) else a for a in c] for c in cmds]
    return Run(db, argvs, b"".join(encode(a) for a in argvs), offset)


def test_runs_inside_a_unit(servers) -> None:
    """Exactly-once units keep the fast path: runs go whole inside MULTI ... EXEC (+QUEUED
    each), a db change inside the unit is queued too, and the marker is set atomically."""
    s = servers.start("redis-7.0")
    errs = Errors()
    w = RedisWriter(s.address, on_error=errs, pipeline_count_limit=64)
    n = 0
    for u in range(20):  # more commands than the pipeline window: replies arrive in pieces
        w.begin_unit()
        w.write_run(_run(u % 2, -1, *(("INCR", f"n{i}") for i in range(50))))
        w.write_run(_run(3, -1, ("RPUSH", "l", str(u)), ("APPEND", "a", "xy")))
        w.write(E("SET", "single", str(u), db=1))
        n += 53
        w.end_unit(0, b"pos", b"r %d 0" % u, 1000 + u)
    w.flush()
    assert not errs and w.acked_offset == 1019
    assert w.answered == w.written == n + 20 * 3 and w.status()["unanswered_entries"] == 0
    with s.client(0) as c0, s.client(1) as c1, s.client(3) as c3:
        assert c0.get("n7") == c1.get("n7") == b"10" and c0.get("pos") == b"r 19 0"
        assert c3.lrange("l", 0, -1) == [str(u).encode() for u in range(20)]
        assert c3.get("a") == b"xy" * 20 and c1.get("single") == b"19"
    w.close()


def test_errors_of_runs_inside_a_unit(servers) -> None:
    """A run's command failing inside EXEC is reported with its own command and key; one
    refused at queue time discards the unit (EXECABORT: nothing applied, marker included)."""
    s = servers.start("redis-7.0")
    errs = Errors()
    w = RedisWriter(s.address, on_error=errs)
    w.write(E("LPUSH", "list", "x"))
    w.begin_unit()
    w.write_run(_run(0, -1, ("SET", "a", "1"), ("INCR", "list"), ("SET", "b", "2")))
    w.end_unit(0, b"pos", b"one", 10)
    w.flush()
    assert [(e.argv, m.split()[0]) for e, m in errs] == [([b"INCR", b"list"], "WRONGTYPE")]
    with s.client() as c:
        assert c.mget("a", "b", "pos") == [b"1", b"2", b"one"]
    errs.clear()
    w.begin_unit()
    w.write_run(_run(0, -1, ("SET", "c", "1"), ("GET",), ("SET", "d", "2")))
    w.end_unit(0, b"pos", b"two", 20)
    w.flush()
    assert [e.argv for e, _m in errs] == [[b"GET"]] and "discarded" in errs[0][1]
    with s.client() as c:
        assert c.mget("c", "d", "pos") == [None, None, b"one"]
    w.close()


def test_try_marker(servers) -> None:
    """The check before exactly-once mode: allowed -> ""; a user without SET -> NOPERM;
    a replica -> READONLY; a db out of range -> the error. The marker's value is kept."""
    s = servers.start("redis-7.0")
    with s.client() as c:
        c.execute_command("ACL", "SETUSER", "ro", "on", ">pw", "~*", "+@all", "-set")
        c.set("pos", "kept")
    w = RedisWriter(s.address)
    assert w.try_marker(0, b"pos") == "" and w.try_marker(0, b"new") == ""
    assert w.try_marker(99, b"pos").startswith("ERR")
    w.close()
    with s.client() as c:
        assert c.get("pos") == b"kept" and not c.exists("new")
    w = RedisWriter(s.address, username="ro", password="pw")
    assert w.try_marker(0, b"pos").startswith("NOPERM")
    w.close()
    rep = servers.start("redis-7.0", args=["--replicaof", s.host, str(s.port)])
    w = RedisWriter(rep.address)
    assert w.try_marker(0, b"pos").startswith("READONLY")
    w.close()


# -- cluster ---------------------------------------------------------------------------------


def _owner(cl: srv.Cluster, key: bytes) -> srv.Server:
    return cl.owner_of(key_slot(key))


def test_cluster_transactions(servers) -> None:
    cl = servers.cluster("redis-7.0", 3)
    errs = Errors()
    w = ClusterWriter(cl.seed, on_error=errs)
    a = cl.masters[0]
    tag = tag_on(cl, a)
    k1, k2 = f"{{{tag}}}:1".encode(), f"{{{tag}}}:2".encode()
    # same slot (+ a keyless PING along): atomic on the owner
    for e in block(("SET", k1, "1"), ("PING",), ("INCR", k2), offset=10):
        w.write(e)
    w.flush()
    assert errs == []
    assert cmdstat(a, "multi") == 1 and cmdstat(a, "exec") == 1
    assert all(cmdstat(m, "exec") == 0 for m in cl.masters[1:])
    with a.client() as c:
        assert c.get(k1) == b"1" and c.get(k2) == b"1"
    # an error inside: reported with its own entry, the rest applied
    blk = block(("LPUSH", k1, "x"), ("INCR", k2), offset=20)
    for e in blk:
        w.write(e)
    # cross-slot: split, applied, counted
    cross = [b"x:%d" % i for i in range(6)]
    assert len({key_slot(k) for k in cross}) > 1
    for e in block(*(("SET", k, k) for k in cross), ("DEL", *cross[:2]), offset=30):
        w.write(e)
    # failing to queue on a cluster node: EXECABORT reported with the command
    bad = block(("SET", k1, "2"), ("GET",), offset=40)
    for e in bad:
        w.write(e)
    # db != 0 inside a block
    dbx = [E("MULTI"), E("SET", k2, "9", db=1), E("INCR", k2), E("EXEC", offset=50)]
    for e in dbx:
        w.write(e)
    w.flush()
    by_entry = {id(e): m for e, m in errs}  # the db error is reported at once, the rest later
    assert len(errs) == 3
    assert by_entry[id(blk[1])].startswith("WRONGTYPE")
    assert "EXECABORT" in by_entry[id(bad[2])] and "wrong number" in by_entry[id(bad[2])]
    assert "db 1" in by_entry[id(dbx[1])]
    st = w.status()[-1]
    assert st["transactions"] == 5 and st["transactions_split"] == 1
    assert w.acked_offset == 50
    with a.client() as c:
        assert c.get(k1) == b"1" and c.get(k2) == b"3"
    for k in cross:
        with _owner(cl, k).client() as c:
            assert c.get(k) == (None if k in cross[:2] else k)
    w.close()


def test_cluster_transaction_moved_applied_once(servers) -> None:
    cl = servers.cluster("redis-7.0", 3)
    errs = Errors()
    w = ClusterWriter(cl.seed, on_error=errs)
    a, b = cl.masters[0], cl.masters[1]
    tag = tag_on(cl, a)
    slot = key_slot(tag.encode())
    n, lst = f"{{{tag}}}:n".encode(), f"{{{tag}}}:l".encode()
    for e in block(("INCR", n), ("RPUSH", lst, "1"), offset=1):
        w.write(e)
    w.flush()
    move_slot(cl, slot, a, b)  # the writer's slot map still says a
    for i in range(2, 5):
        for e in block(("INCR", n), ("RPUSH", lst, str(i)), offset=i):
            w.write(e)
        w.write(E("SET", f"{{{tag}}}:s{i}", "v", offset=i * 10))
    w.flush()
    assert errs == [] and w.moved > 0
    assert w.acked_offset == 40
    with b.client() as c:
        assert c.get(n) == b"4" and c.lrange(lst, 0, -1) == [b"1", b"2", b"3", b"4"]
        assert c.exists(*[f"{{{tag}}}:s{i}" for i in range(2, 5)]) == 3
    assert cmdstat(b, "exec") == 3
    w.close()


def test_cluster_transaction_ask_during_migration(servers) -> None:
    cl = servers.cluster("redis-7.0", 3)
    errs = Errors()
    w = ClusterWriter(cl.seed, on_error=errs)
    a, b = cl.masters[0], cl.masters[1]
    tag = tag_on(cl, a)
    slot = key_slot(tag.encode())
    moved, stays = f"{{{tag}}}:moved".encode(), f"{{{tag}}}:stays".encode()
    with a.client() as c:
        c.set(moved, "1")
        c.set(stays, "x")
    with a.client() as sc, b.client() as dc:  # slot migrating a -> b, only `moved` on b yet
        dc.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cl.node_id(a))
        sc.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cl.node_id(b))
        sc.execute_command("MIGRATE", b.host, b.port, "", 0, 5000, "KEYS", moved)
    # one key, gone from a: ASK, then ASKING + the block on b
    for e in block(("INCR", moved), ("EXPIRE", moved, "1000"), offset=1):
        w.write(e)
    w.flush()
    assert errs == [] and w.asked > 0 and w.acked_offset == 1
    with Connection(b.host, b.port) as c:  # ASKING: b only imports the slot so far
        c.call("ASKING")
        assert c.call("GET", moved) == b"2"
    # two keys, one on each side: TRYAGAIN until the migration ends, then MOVED to b
    for e in block(("INCR", moved), ("APPEND", stays, "y"), offset=2):
        w.write(e)
    finisher = threading.Timer(0.3, move_slot, args=(cl, slot, a, b))
    finisher.start()
    try:
        w.flush()
    finally:
        finisher.join()
    assert errs == []
    assert w.acked_offset == 2
    with b.client() as c:
        assert c.get(moved) == b"3" and c.get(stays) == b"xy" and c.ttl(moved) > 0
    w.close()


def test_cluster_acked_offset_waits_for_slow_master(servers) -> None:
    cl = servers.cluster("redis-7.0", 3)
    w = ClusterWriter(cl.seed, on_error=Errors())
    m0, m1, m2 = cl.masters
    k0, k1, k2 = (f"{{{tag_on(cl, m, 'k')}}}:x".encode() for m in (m0, m1, m2))
    # m1 holds writes: its entries stay unanswered while m0 and m2 answer
    with m1.client() as c:
        c.execute_command("CLIENT", "PAUSE", 20000, "WRITE")
    try:
        w.write(E("SET", k0, "a", offset=1))
        w.write(E("SET", k1, "b", offset=2))  # slow master
        w.write(E("SET", k2, "c", offset=3))
        w.write(E("DEL", k0, k1, k2, offset=4))  # split into three parts
        w.write(E("SET", k0, "d", offset=5))
        w.write(E("FLUSHALL", offset=6, key=None))  # keyless: every master
        w.write(E("SET", k2, "e", offset=7))
        for e in block(("SET", k0, "f"), ("INCR", k0 + b"n"), offset=8):
            w.write(e)
        w0, w2 = w._slots[key_slot(k0)], w._slots[key_slot(k2)]
        deadline = time.monotonic() + 30
        while w0.pending or w2.pending:
            w.poll()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert w.acked_offset == 1  # nothing after the paused master's entry
    finally:
        with m1.client() as c:
            c.execute_command("CLIENT", "UNPAUSE")
    w.flush()
    assert w.acked_offset == 8
    with m0.client() as c:
        assert c.get(k0) == b"f"
    w.close()
