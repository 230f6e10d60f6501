"""RDB value decoding and command rewriting, verified against real servers.

For every server version, keys of every type and internal encoding are created, DUMPed,
decoded with ``decode_value`` and compared with what the server itself returns. Then the
decoded values are rewritten into commands, replayed into db 1 of every server of the same
or an older version, and compared with ``DEBUG DIGEST-VALUE``, the key TTL and (for
streams) the full group/consumer/PEL state.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
import redis

import servers as srv
from rdbgen import corpus_keys, pairs_to_dict, stream_state
from redshake.rdb.rewrite import RewriteError, value_to_commands
from redshake.rdb.values import (
    HashValue,
    ListValue,
    SetValue,
    StreamValue,
    StringValue,
    ZSetValue,
    decode_value,
)

ORDER = ["redis-5.0", "redis-6.0", "redis-6.2", "redis-7.0", "valkey-8.1", "valkey-9.1"]
FUTURE_MS = 4102444800123  # 2100-01-01, fixed so TTLs compare exactly
SRC_DB = 0
DST_DB = 1


def raw_from_dump(payload: bytes) -> tuple[int, bytes, bool]:
    """(type byte, raw value bytes, valkey) from a DUMP payload (protocols.md §2.1)."""
    assert len(payload) >= 11
    version = struct.unpack_from("<H", payload, len(payload) - 10)[0]
    return payload[0], payload[1:-10], version >= 80


# --------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------


def _identity(response, **options):
    return response


def client(s: srv.Server, db: int) -> redis.Redis:
    """A client that returns raw replies for the commands we compare element by element."""
    c = s.client(db)
    for cmd in ("XRANGE", "XPENDING", "ZRANGE", "XCLAIM", "XREADGROUP"):
        c.set_response_callback(cmd, _identity)
    return c


class Fleet:
    def __init__(self) -> None:
        self.started: dict[str, srv.Server] = {}
        self.populated: dict[str, dict[bytes, int]] = {}
        self.missing: dict[str, str] = {}

    def get(self, name: str) -> srv.Server:
        if name in self.missing:
            pytest.fail(self.missing[name])
        if name not in self.started:
            try:
                self.started[name] = srv.start_server(name)
            except srv.ServerBinaryMissing as e:
                self.missing[name] = str(e)
                pytest.fail(str(e) + " (run scripts/install-servers.sh; `make test` does)")
        return self.started[name]

    def source(self, name: str) -> tuple[srv.Server, dict[bytes, int]]:
        s = self.get(name)
        if name not in self.populated:
            with client(s, SRC_DB) as c:
                self.populated[name] = populate(c, s.version, s.is_valkey)
        return s, self.populated[name]

    def close(self) -> None:
        for s in self.started.values():
            s.cleanup()


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    try:
        yield f
    finally:
        f.close()


# --------------------------------------------------------------------------------------
# data of every type and encoding
# --------------------------------------------------------------------------------------

INTS = [
    0, 1, 12, 13, -1, 127, 128, -128, 255, -129, 4095, -4096, 4096, -4097, 32767, -32768,
    32768, 8388607, -8388608, 8388608, 2**31 - 1, -(2**31), 2**31, 2**63 - 1, -(2**63),
]  # fmt: skip
STRS = [b"", b"a", b"b" * 63, b"c" * 64, b"d" * 200, b"e" * 4095, b"f" * 4096, b"\x00\xff\r\n"]
SCORES = [
    "1", "-2.5", "0.1", "1e300", "-1e-300", "inf", "-inf", "3.141592653589793",
    "12345678901234567", "4.9e-324", "-0", "1.7976931348623157e308", "100",
]  # fmt: skip


def populate(c: redis.Redis, ver: tuple[int, int, int], valkey: bool) -> dict[bytes, int]:
    """Create test keys; return {key: absolute expire ms} for keys with a TTL."""
    c.flushdb()
    ttl: dict[bytes, int] = {}
    c.set("s:small", "hello")
    c.set("s:int", "12345")
    c.set("s:neg", "-5")
    c.set("s:big", str(1 << 40))
    c.set("s:lzf", "a" * 3000)
    c.set("s:bin", bytes(range(256)) * 40)
    c.set("s:empty", "")
    c.set("s:ttl", "v")
    c.pexpireat("s:ttl", FUTURE_MS)
    ttl[b"s:ttl"] = FUTURE_MS

    c.rpush("l:small", *INTS, *STRS)
    c.rpush("l:big", *[f"item-{i}" if i % 3 else str(i * 7919) for i in range(3000)])
    c.rpush("l:ttl", "x", "y")
    c.pexpireat("l:ttl", FUTURE_MS)
    ttl[b"l:ttl"] = FUTURE_MS
    if ver >= (7, 0, 0):  # PLAIN quicklist nodes
        try:
            c.execute_command("DEBUG", "QUICKLIST-PACKED-THRESHOLD", "100")
            c.rpush("l:plain", "small", "p" * 500, "tail", "q" * 300)
        finally:
            c.execute_command("DEBUG", "QUICKLIST-PACKED-THRESHOLD", str(1 << 30))

    c.sadd("set:i16", *[str(i) for i in range(-50, 50)])
    c.sadd("set:i32", "1", "-70000", "70000")
    c.sadd("set:i64", "1", str(2**40), str(-(2**62)))
    c.sadd("set:small", "a", "b", "c", "12", "-7")  # listpack on 7.2+, hashtable before
    c.sadd("set:big", *[f"m{i}" for i in range(1000)])
    c.sadd("set:bigint", *[str(i * 3) for i in range(1000)])

    c.execute_command("ZADD", "z:small", *[x for i, s in enumerate(SCORES) for x in (s, f"m{i}")])
    c.zadd("z:ints", {str(v): v for v in INTS[:18]})
    c.execute_command(
        "ZADD", "z:big", *[x for i in range(300) for x in (repr(i / 7 - 20), f"member-{i}")]
    )
    c.execute_command(
        "ZADD", "z:bigsc", *[x for i, s in enumerate(SCORES) for x in (s, "w" * 80 + str(i))]
    )

    c.hset("h:small", mapping={"a": "1", "b": "hello", "n": str(-(2**40)), "e": "", "12": "13"})
    c.hset("h:big", mapping={f"field:{i}": f"value:{i}" if i % 2 else str(i) for i in range(600)})
    c.hset("h:long", mapping={"k": "v" * 100, "k2": "x"})
    if valkey and ver >= (9, 0, 0):
        c.hset("h:fttl", mapping={f"f{i}": f"v{i}" for i in range(10)})
        c.execute_command("HPEXPIREAT", "h:fttl", FUTURE_MS, "FIELDS", 3, "f1", "f2", "f3")
        c.execute_command("HPEXPIREAT", "h:fttl", FUTURE_MS + 5000, "FIELDS", 1, "f7")
        c.hset("h:fttl2", mapping={"only": "one"})
        c.execute_command("HPEXPIREAT", "h:fttl2", FUTURE_MS + 1, "FIELDS", 1, "only")
        c.pexpireat("h:fttl2", FUTURE_MS + 99)
        ttl[b"h:fttl2"] = FUTURE_MS + 99

    # streams
    c.xadd("st:basic", {"a": "1", "b": "2"}, id="1-1")
    c.xadd("st:basic", {"a": "3", "b": "4"}, id="1-2")
    c.xadd("st:basic", {"x": "y"}, id="5-0")
    c.xadd("st:basic", {"a": "hello", "b": "-42"}, id="5-1")
    c.xadd("st:basic", {"a": "q", "b": "r", "c": "s"}, id="1000000000000-7")
    c.xdel("st:basic", "1-2")
    c.config_set("stream-node-max-entries", "5")
    try:
        for i in range(30):
            c.xadd("st:nodes", {"f": str(i), "g": "v" * (i % 4)}, id=f"{100 + i}-{i % 3}")
    finally:
        c.config_set("stream-node-max-entries", "100")
    c.xdel("st:nodes", "103-0", "120-2")
    c.xgroup_create("st:nodes", "g1", id="0")
    c.xreadgroup("g1", "alice", {"st:nodes": ">"}, count=5)
    c.xreadgroup("g1", "bob", {"st:nodes": ">"}, count=3)
    c.xack("st:nodes", "g1", "101-1")
    c.execute_command(
        "XCLAIM", "st:nodes", "g1", "bob", 0, "105-2", "TIME", 1600000000000, "RETRYCOUNT", 7
    )
    c.xreadgroup("g1", "dave", {"st:nodes": "0"})  # consumer without pending entries
    c.xgroup_create("st:nodes", "g2", id="$")
    c.xgroup_create("st:nodes", "g3", id="110-0")
    c.xgroup_create("st:empty", "g", id="$", mkstream=True)
    c.xadd("st:alldel", {"a": "b"}, id="7-7")
    c.xadd("st:alldel", {"a": "c"}, id="8-8")
    c.xdel("st:alldel", "7-7", "8-8")
    for i in range(10):
        c.xadd("st:trim", {"n": str(i)}, id=f"{i + 1}-0")
    c.xtrim("st:trim", maxlen=3, approximate=False)
    c.xadd("st:ttl", {"k": "v"}, id="3-3")
    c.pexpireat("st:ttl", FUTURE_MS)
    ttl[b"st:ttl"] = FUTURE_MS
    return ttl


# --------------------------------------------------------------------------------------
# comparing with the server
# --------------------------------------------------------------------------------------


def check_decoded(c: redis.Redis, key: bytes, v, ver, valkey: bool) -> None:
    t = c.type(key)
    if t == b"string":
        assert isinstance(v, StringValue)
        assert v.data == c.get(key)
    elif t == b"list":
        assert isinstance(v, ListValue)
        assert v.items == c.lrange(key, 0, -1)
    elif t == b"set":
        assert isinstance(v, SetValue)
        assert sorted(v.members) == sorted(c.smembers(key))
        assert len(v.members) == c.scard(key)
    elif t == b"zset":
        assert isinstance(v, ZSetValue)
        got = c.execute_command("ZRANGE", key, 0, -1, "WITHSCORES")
        server = {got[i]: float(got[i + 1]) for i in range(0, len(got), 2)}
        mine = {m: float(s) for m, s in v.items}
        assert mine == server
        assert len(v.items) == len(server)
    elif t == b"hash":
        assert isinstance(v, HashValue)
        assert dict(v.pairs) == c.hgetall(key)
        assert len(v.pairs) == c.hlen(key)
        if valkey and ver >= (9, 0, 0):
            fields = [f for f, _ in v.pairs]
            got = c.execute_command("HPEXPIRETIME", key, "FIELDS", len(fields), *fields)
            server_exp = {f: ms for f, ms in zip(fields, got, strict=True) if ms >= 0}
            assert (v.field_expire or {}) == server_exp
        else:
            assert not v.field_expire
    elif t == b"stream":
        assert isinstance(v, StreamValue)
        xr = c.execute_command("XRANGE", key, "-", "+")
        assert [(eid, fv) for eid, fv in v.entries] == [(e[0], e[1]) for e in xr]
        info = pairs_to_dict(c.execute_command("XINFO", "STREAM", key))
        assert v.length == info[b"length"]
        assert v.last_id == info[b"last-generated-id"]
        if b"entries-added" in info:
            assert v.entries_added == info[b"entries-added"]
            assert v.max_deleted_id == info[b"max-deleted-entry-id"]
            assert v.first_id == info[b"recorded-first-entry-id"]
        groups = c.execute_command("XINFO", "GROUPS", key)
        assert [g.name for g in v.groups] == [pairs_to_dict(g)[b"name"] for g in groups]
        for g, sg in zip(v.groups, groups, strict=True):
            sg = pairs_to_dict(sg)
            assert g.last_id == sg[b"last-delivered-id"]
            assert len(g.pel) == sg[b"pending"]
            if b"entries-read" in sg:
                assert g.entries_read == (
                    -1 if sg[b"entries-read"] is None else sg[b"entries-read"]
                )
            pend = c.execute_command("XPENDING", key, g.name, "-", "+", 1000)
            owner = {pid: cons.name for cons in g.consumers for pid in cons.pel_ids}
            assert [(p[0], owner[p[0]], p[3]) for p in pend] == [
                (pid, owner[pid], n) for pid, _, n in g.pel
            ]
            cons = c.execute_command("XINFO", "CONSUMERS", key, g.name)
            assert sorted(cons_.name for cons_ in g.consumers) == sorted(
                pairs_to_dict(x)[b"name"] for x in cons
            )
            if ver >= (6, 0, 0):
                full = pairs_to_dict(c.execute_command("XINFO", "STREAM", key, "FULL"))
                fg = next(
                    pairs_to_dict(x) for x in full[b"groups"] if pairs_to_dict(x)[b"name"] == g.name
                )
                assert [(p[0], p[2], p[3]) for p in fg[b"pending"]] == g.pel
                for fc in fg[b"consumers"]:
                    fc = pairs_to_dict(fc)
                    mine = next(x for x in g.consumers if x.name == fc[b"name"])
                    assert mine.seen_time == fc[b"seen-time"]
                    if b"active-time" in fc:
                        assert mine.active_time == fc[b"active-time"]
    else:
        raise AssertionError(f"unexpected type {t!r}")


def zset_doubles(c: redis.Redis, key: bytes) -> list[tuple[bytes, float]]:
    got = c.execute_command("ZRANGE", key, 0, -1, "WITHSCORES")
    return [(got[i], float(got[i + 1])) for i in range(0, len(got), 2)]


def all_keys(c: redis.Redis) -> list[bytes]:
    return sorted(c.scan_iter(count=1000))


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ORDER)
def test_decode_matches_server(fleet: Fleet, name: str) -> None:
    s, _ = fleet.source(name)
    seen_types: set[int] = set()
    with client(s, SRC_DB) as c:
        keys = all_keys(c)
        assert len(keys) >= 29
        for key in keys:
            t, raw, valkey = raw_from_dump(c.dump(key))
            seen_types.add(t)
            v = decode_value(t, raw, valkey=valkey)
            check_decoded(c, key, v, s.version, valkey)
    # the encodings we meant to exercise were really produced
    if s.version >= (7, 0, 0) or s.is_valkey:
        assert {0, 2, 5, 4, 11, 16, 17, 18}.issubset(seen_types)
        assert (19 in seen_types) or (21 in seen_types)
    else:
        assert {0, 2, 4, 5, 11, 12, 13, 14, 15}.issubset(seen_types)
    if s.is_valkey:
        assert 20 in seen_types and 21 in seen_types
        if s.version >= (9, 0, 0):
            assert 22 in seen_types


PAIRS = [(src, dst) for i, src in enumerate(ORDER) for dst in ORDER[: i + 1]]


@pytest.mark.parametrize(("src_name", "dst_name"), PAIRS)
def test_rewrite_roundtrip(fleet: Fleet, src_name: str, dst_name: str) -> None:
    src, ttls = fleet.source(src_name)
    dst = fleet.get(dst_name)
    checked = 0
    with client(src, SRC_DB) as sc, client(dst, DST_DB) as dc:
        dc.flushdb()
        for key in all_keys(sc):
            t, raw, valkey = raw_from_dump(sc.dump(key))
            v = decode_value(t, raw, valkey=valkey)
            kw = dict(
                expire_ms=ttls.get(key, -1),
                target_version=dst.version,
                target_valkey=dst.is_valkey,
                max_items=7,
                max_bytes=3000,
            )
            if (
                isinstance(v, HashValue)
                and v.field_expire
                and not (dst.is_valkey and dst.version >= (9, 0, 0))
            ):
                with pytest.raises(RewriteError, match="HPEXPIREAT"):
                    list(value_to_commands(key, v, **kw))
                continue
            cmds = list(value_to_commands(key, v, **kw))
            for argv in cmds:
                if argv[0] in (b"RPUSH", b"SADD", b"HSET", b"HMSET"):
                    assert len(argv) - 2 <= 7 * (2 if argv[0] in (b"HSET", b"HMSET") else 1)
                dc.execute_command(*argv)
            checked += 1
            if isinstance(v, ZSetValue) and src.is_valkey != dst.is_valkey:
                # Valkey digests scores in shortest round-trip form, Redis with %.17g, so
                # zset digests differ across families: compare the exact doubles instead
                assert zset_doubles(dc, key) == zset_doubles(sc, key), key
            else:
                assert dc.execute_command("DEBUG", "DIGEST-VALUE", key) == sc.execute_command(
                    "DEBUG", "DIGEST-VALUE", key
                ), key
            if key in ttls:
                if dst.version >= (7, 0, 0):
                    assert dc.execute_command("PEXPIRETIME", key) == ttls[key]
                else:
                    assert dc.pttl(key) > 0
            else:
                assert dc.pttl(key) == -1
            if isinstance(v, StreamValue):
                ver = min(src.version, dst.version)
                assert stream_state(dc, key, ver) == stream_state(sc, key, ver), key
            if isinstance(v, HashValue) and v.field_expire:
                fields = [f for f, _ in v.pairs]
                assert dc.execute_command(
                    "HPEXPIRETIME", key, "FIELDS", len(fields), *fields
                ) == sc.execute_command("HPEXPIRETIME", key, "FIELDS", len(fields), *fields)
        assert checked >= 25
        assert dc.dbsize() == checked


def test_redis_hfe_corpus_into_valkey9(fleet: Fleet) -> None:
    """Redis 7.4 hashes with field TTLs (types 24 and 25, real files) rebuilt on Valkey 9
    with HSET + HPEXPIREAT; the field TTLs must arrive exactly."""


    dst = fleet.get("valkey-9.1")
    files = ["rdb/hdt3213-rdb/hash_with_hfe.rdb", "rdb/hdt3213-rdb/hash_as_listpack_with_hfe.rdb"]
    with client(dst, 2) as dc:
        dc.flushdb()
        for f in files:
            for _, key, t, raw, expire, vk in corpus_keys(f):
                assert t in (24, 25)
                v = decode_value(t, raw, valkey=vk)
                assert isinstance(v, HashValue) and v.field_expire
                for argv in value_to_commands(
                    key, v, expire_ms=expire, target_version=dst.version, target_valkey=True
                ):
                    dc.execute_command(*argv)
                assert dc.hgetall(key) == dict(v.pairs)
                fields = [f for f, _ in v.pairs]
                got = dc.execute_command("HPEXPIRETIME", key, "FIELDS", len(fields), *fields)
                assert {
                    f: ms for f, ms in zip(fields, got, strict=True) if ms >= 0
                } == v.field_expire
