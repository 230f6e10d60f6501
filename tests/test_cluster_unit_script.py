"""Exactly-once units into a cluster target as one script call per master: non-idempotent
commands applied once, per-command errors, the master markers and reading them back, a
slot moved under the writer, a target that lost its scripts, and the per-slot fallback of
targets older than 7.0."""

from __future__ import annotations

import random

import pytest

import servers as srv
from harness import Errors, cmdstat, move_slot, tag_on
from redshake.commands.slots import key_slot
from redshake.entry import Entry
from redshake.writers.cluster import ClusterWriter, marker_key

MK = b"mk"


def _unit(w: ClusterWriter, cmds: list[list[bytes]], offset: int) -> None:
    w.begin_unit()
    for i, argv in enumerate(cmds):
        w.write(Entry(0, argv, None, offset - len(cmds) + 1 + i))
    w.end_unit(0, MK, b"rid %d 0" % offset, offset)


def _load(rng: random.Random, n: int) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    for _ in range(n):
        k = b"k%d" % rng.randrange(300)
        op = rng.randrange(3)
        if op == 0:
            out.append([b"INCR", b"n:" + k])
        elif op == 1:
            out.append([b"LPUSH", b"l:" + k, b"%d" % rng.randrange(1000)])
        else:
            out.append([b"APPEND", b"s:" + k, b"x" * rng.randrange(1, 5000)])
    return out


def _apply(model: dict[bytes, object], cmds: list[list[bytes]]) -> None:
    for argv in cmds:
        name, key = argv[0], argv[1]
        if name == b"INCR":
            model[key] = int(model.get(key, 0)) + 1  # type: ignore[call-overload]
        elif name == b"LPUSH":
            model.setdefault(key, []).insert(0, argv[2])  # type: ignore[union-attr]
        else:
            model[key] = model.get(key, b"") + argv[2]  # type: ignore[operator]


def _check(cl: srv.Cluster, model: dict[bytes, object]) -> None:
    for key, want in model.items():
        with cl.owner_of(key_slot(key)).client() as c:
            if key.startswith(b"n:"):
                assert int(c.get(key)) == want, key
            elif key.startswith(b"l:"):
                assert c.lrange(key, 0, -1) == want, key
            else:
                assert c.get(key) == want, key


@pytest.mark.parametrize("name", ["redis-7.0", "valkey-9.1"])
def test_units_as_one_script_per_master(servers, name) -> None:
    cl = servers.cluster(name, 3)
    errs = Errors()
    w = ClusterWriter(cl.seed, on_error=errs)
    assert w.unit_scripts
    rng = random.Random(7)
    model: dict[bytes, object] = {}
    off = 0
    for _ in range(20):
        cmds = _load(rng, rng.randrange(1, 400))
        off += len(cmds)
        _unit(w, cmds, off)
        _apply(model, cmds)
    w.flush()
    assert errs == [] and w.acked_offset == off
    assert w.script_calls >= 20 and w.script_fallbacks == 0
    assert all(cmdstat(m, "multi") == 0 for m in cl.masters)  # no per-slot blocks
    _check(cl, model)
    # one marker per master, in a slot it owns, holding the position and its slot list
    for m in cl.masters:
        with m.client() as c:
            keys = list(c.scan_iter(match=MK + b":*"))
            assert len(keys) == 1 and cl.owner_of(key_slot(keys[0])) is m
            assert c.get(keys[0]).split()[:3] == [b"rid", b"%d" % off, b"0"]
    marks = w.read_markers(MK)
    assert len(marks) == 16384 and set(marks.values()) == {b"rid %d 0" % off}
    # an error inside: reported with its own entry, the rest applied
    tag = tag_on(cl, cl.masters[0])
    k = f"{{{tag}}}:e".encode()
    _unit(w, [[b"LPUSH", k, b"1"], [b"INCR", k], [b"LPUSH", k, b"2"]], off + 3)
    w.flush()
    assert len(errs) == 1 and errs[0][0].argv[0] == b"INCR" and "WRONGTYPE" in errs[0][1]
    with cl.masters[0].client() as c:
        assert c.lrange(k, 0, -1) == [b"2", b"1"]
    w.close()


def test_unit_script_lost_and_slot_moved(servers) -> None:
    cl = servers.cluster("redis-7.0", 3)
    errs = Errors()
    w = ClusterWriter(cl.seed, on_error=errs)
    rng = random.Random(3)
    model: dict[bytes, object] = {}
    off = 0

    def step(n: int = 200) -> None:
        nonlocal off
        cmds = _load(rng, n)
        off += len(cmds)
        _unit(w, cmds, off)
        _apply(model, cmds)

    step()
    w.flush()
    for m in cl.masters:  # a target that lost its scripts: NOSCRIPT -> EVAL
        with m.client() as c:
            c.execute_command("SCRIPT", "FLUSH")
    step()
    w.flush()
    assert errs == [] and w.script_fallbacks == 0
    # a slot moved under the writer (it still routes by the old map): the scripts of the
    # old and the new owner see another slot list and do nothing; those units go per slot
    a, b = cl.masters[0], cl.masters[1]
    slot = key_slot(b"n:k1")
    if cl.owner_of(slot) is not a:
        a, b = cl.owner_of(slot), next(m for m in cl.masters if m is not cl.owner_of(slot))
    move_slot(cl, slot, a, b)
    for _ in range(5):
        step()
    w.flush()
    assert errs == [] and w.acked_offset == off
    assert w.script_fallbacks > 0
    step()  # the writer knows the new map: scripts again
    fallbacks = w.script_fallbacks
    step()
    w.flush()
    assert w.script_fallbacks == fallbacks
    _check(cl, model)
    # per slot, the markers read back say the whole stream was applied
    marks = w.read_markers(MK)
    assert marks[slot] == b"rid %d 0" % off
    w.close()


def test_redis62_cluster_keeps_per_slot_units(servers) -> None:
    cl = servers.cluster("redis-6.2", 3)
    errs = Errors()
    w = ClusterWriter(cl.seed, on_error=errs)
    assert not w.unit_scripts
    rng = random.Random(5)
    model: dict[bytes, object] = {}
    cmds = _load(rng, 300)
    _unit(w, cmds, 300)
    _apply(model, cmds)
    w.flush()
    assert errs == [] and w.acked_offset == 300 and w.script_calls == 0
    _check(cl, model)
    marks = w.read_markers(MK)
    assert {key_slot(c[1]) for c in cmds} == set(marks)
    with cl.owner_of(key_slot(cmds[0][1])).client() as c:
        assert c.get(marker_key(MK, key_slot(cmds[0][1]))) == b"rid 300 0"
    w.close()
