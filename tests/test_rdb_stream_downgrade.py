"""Streams into older targets keep their consumer groups whole: random streams written by a
real server (XDEL'd and trimmed messages that are still pending, acks, claims, several
groups and consumers, several dbs, TTLs) -> SAVE -> redshake -> each older server version ->
per stream and group: XINFO STREAM / GROUPS / CONSUMERS, the full XPENDING list, entries."""

from __future__ import annotations

import random
import re

import pytest

from helpers import assert_same_data, restore_file

VERSIONS = ["redis-5.0", "redis-6.0", "redis-6.2", "redis-7.0", "valkey-8.1", "valkey-9.1"]
DOWNGRADES = [(s, d) for i, s in enumerate(VERSIONS) for d in VERSIONS[:i]]
DBS = (0, 2)


def _v7(s) -> bool:
    return s.is_valkey or s.version >= (7, 0, 0)


def write_streams(src, seed: int, n_streams: int = 10) -> int:
    """Random streams; returns how many pending entries point at deleted messages."""
    rnd = random.Random(seed)
    ghosts = 0
    for db in DBS:
        c = src.client(db)
        for i in range(n_streams):
            key = f"stream:{seed}:{i}".encode()
            for _ in range(rnd.randint(1, 90)):
                n = rnd.choice((1, 1, 2, 5))
                c.xadd(key, {f"f{j}".encode(): rnd.randbytes(rnd.choice((1, 8, 40, 300))) for j in range(n)})
            ids = [e[0] for e in c.xrange(key)]
            for g in range(rnd.randint(0, 3)):
                group = f"g{g}".encode()
                c.xgroup_create(key, group, id=rnd.choice((b"0", ids[len(ids) // 3])))
                for k in range(rnd.randint(1, 3)):
                    c.xreadgroup(group, f"c{k}".encode(), {key: ">"}, count=rnd.randint(1, 30))
                pending = [p["message_id"] for p in c.xpending_range(key, group, "-", "+", 10_000)]
                acked = rnd.sample(pending, len(pending) // 4)
                if acked:
                    c.xack(key, group, *acked)
                claim = rnd.sample(pending, len(pending) // 5)
                if claim:  # other consumers, delivery counts above 1
                    c.xclaim(key, group, b"c9", 0, claim)
                if src.version >= (6, 2, 0) and rnd.random() < 0.5:
                    c.execute_command("XGROUP", "CREATECONSUMER", key, group, b"idle")
            pel = {p["message_id"] for g in c.xinfo_groups(key)
                   for p in c.xpending_range(key, g["name"], "-", "+", 10_000)}  # fmt: skip
            alive = [e[0] for e in c.xrange(key)]
            doomed = rnd.sample(alive, min(len(alive), rnd.randint(0, 12)))
            doomed += rnd.sample(sorted(pel), min(len(pel), rnd.randint(0, 6)))
            if doomed:
                c.xdel(key, *set(doomed))
            if rnd.random() < 0.3:  # trimmed from the head, pending ones among them
                c.xtrim(key, maxlen=rnd.randint(0, 20), approximate=False)
            if rnd.random() < 0.2:
                c.pexpire(key, 3_600_000 + rnd.randint(0, 10_000))
            left = {e[0] for e in c.xrange(key)}
            ghosts += sum(1 for pid in pel if pid not in left)
    return ghosts


def stream_state(server, c, key: bytes, full: bool) -> dict:
    info = c.xinfo_stream(key)
    st = {
        "length": info["length"],
        "last": info["last-generated-id"],
        "entries": c.xrange(key),
        "groups": {},
    }
    if full:
        st["max_deleted"] = info["max-deleted-entry-id"]
        st["added"] = info["entries-added"]
        st["first"] = info["recorded-first-entry-id"]
    for g in c.xinfo_groups(key):
        name = g["name"]
        pend = c.xpending_range(key, name, "-", "+", 1_000_000)
        gs = {
            "pending": g["pending"],
            "last_delivered": g["last-delivered-id"],
            "consumers": sorted((x["name"], x["pending"]) for x in c.xinfo_consumers(key, name)),
            "pel": [(p["message_id"], p["consumer"], p["times_delivered"]) for p in pend],
            "idle": [p["time_since_delivered"] for p in pend],
        }
        if full:
            gs["entries_read"] = g["entries-read"]
        st["groups"][name] = gs
    return st


def assert_same_streams(src, dst, tolerance_ms: int = 120_000) -> int:
    """Every stream of the source against the target; returns the number of pending entries
    compared."""
    full = _v7(dst)
    compared = 0
    for db in DBS:
        a, b = src.client(db), dst.client(db)
        for key in sorted(a.scan_iter(_type="stream") if src.version >= (6, 0, 0) else
                          (k for k in a.scan_iter() if a.type(k) == b"stream")):  # fmt: skip
            sa, sb = stream_state(src, a, key, full), stream_state(dst, b, key, full)
            for gname, ga in sa["groups"].items():
                gb = sb["groups"].get(gname)
                assert gb is not None, f"{key!r}: group {gname!r} missing"
                ia, ib = ga.pop("idle"), gb.pop("idle")
                assert all(abs(x - y) <= tolerance_ms for x, y in zip(ia, ib, strict=False)), (
                    f"{key!r} {gname!r}: idle times {ia[:5]} vs {ib[:5]}"
                )
                compared += len(ga["pel"])
            assert sa == sb, f"db {db} {key!r}: source {sa}\ntarget {sb}"
    return compared


@pytest.mark.parametrize(("src_name", "dst_name"), DOWNGRADES)
def test_stream_pel_survives_downgrade(src_name, dst_name, servers, tmp_path):
    src = servers.start(src_name)
    dst = servers.start(dst_name)
    ghosts = write_streams(src, seed=VERSIONS.index(src_name) * 10 + VERSIONS.index(dst_name))
    assert ghosts > 0  # the case this is about: pending entries of deleted messages
    src.client().save()
    r = restore_file(src.dir / "dump.rdb", dst, tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert assert_same_streams(src, dst) > 0
    assert_same_data(src, dst, dbs=list(DBS))


@pytest.mark.parametrize(
    ("src_name", "dst_name"),
    [("redis-7.0", "redis-6.2"), ("valkey-9.1", "redis-7.0"), ("valkey-8.1", "valkey-8.1"),
     ("redis-6.2", "redis-5.0")],
)  # fmt: skip
def test_stream_pel_survives_command_rebuild(src_name, dst_name, servers, tmp_path):
    """Forced command rebuild (no RESTORE): pending entries of deleted messages are claimed
    through stand-in messages that are deleted again."""
    src = servers.start(src_name)
    dst = servers.start(dst_name)
    assert write_streams(src, seed=99) > 0
    src.client().save()
    r = restore_file(src.dir / "dump.rdb", dst, tmp_path, target_redis_proto_max_bulk_len=0)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert assert_same_streams(src, dst) > 0
    assert_same_data(src, dst, dbs=list(DBS))


@pytest.mark.parametrize(("src_name", "dst_name"), [*DOWNGRADES, ("valkey-9.1", "valkey-9.1")])
def test_stream_pel_survives_streamed_stream(src_name, dst_name, servers, tmp_path):
    """Streams too big to hold arrive in parts, entries before groups: they are kept in a
    spill file until their groups are known, then rebuilt with stand-ins for the pending
    entries of deleted messages. The streaming threshold is lowered (1 KiB) for the run, so
    these small streams take that path; the spill files are gone afterwards."""
    src = servers.start(src_name)
    dst = servers.start(dst_name)
    assert write_streams(src, seed=7 + VERSIONS.index(dst_name)) > 0
    src.client().save()
    r = restore_file(src.dir / "dump.rdb", dst, tmp_path, big_value_threshold=1024)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    streamed = re.search(r"commands_streamed=(\d+)", r.stdout + r.stderr)
    assert streamed and int(streamed.group(1)) >= 5, r.stdout[-2000:]
    assert assert_same_streams(src, dst) > 0
    assert_same_data(src, dst, dbs=list(DBS))
    assert not [p for p in (tmp_path / "work").rglob("*") if "stream" in p.name]
