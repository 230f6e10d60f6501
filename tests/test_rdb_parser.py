"""Streaming RDB parser: every corpus file, chunked vs whole, corruption, big values."""

from __future__ import annotations

import math
import random
import struct
from collections import Counter

import pytest

from helpers import TESTDATA, feed_in_chunks
from rdbgen import ALL_EMPTY, RDB_FILES, expect_error, make_rdb, stream_from_items
from redshake.rdb.parser import RdbParser
from redshake.rdb.primitives import RdbError, crc64, read_string
from redshake.rdb.records import (
    BIG_ELEMENT,
    Aux,
    BigElementEnd,
    BigElementPart,
    BigElementStart,
    BigKeyEnd,
    BigKeyPart,
    BigKeyStart,
    Eof,
    Function,
    KeyValue,
    ModuleAux,
    ResizeDb,
    SelectDb,
    SlotInfo,
)
from redshake.rdb.values import (
    decode_value,
)

TYPE_IDS = {
    "STRING": 0, "LIST": 1, "SET": 2, "ZSET": 3, "HASH": 4, "ZSET_2": 5, "MODULE_PRE_GA": 6,
    "MODULE_2": 7, "HASH_ZIPMAP": 9, "LIST_ZIPLIST": 10, "SET_INTSET": 11, "ZSET_ZIPLIST": 12,
    "HASH_ZIPLIST": 13, "LIST_QUICKLIST": 14, "STREAM_LISTPACKS": 15, "HASH_LISTPACK": 16,
    "ZSET_LISTPACK": 17, "LIST_QUICKLIST_2": 18, "STREAM_LISTPACKS_2": 19, "SET_LISTPACK": 20,
    "STREAM_LISTPACKS_3": 21, "HASH_METADATA_PRE_GA": 22, "HASH_2": 22,
    "HASH_LISTPACK_EX_PRE_GA": 23, "HASH_METADATA": 24, "HASH_LISTPACK_EX": 25,
}  # fmt: skip

def parse_all(data: bytes, chunk_seed: int | None = None, **kw) -> tuple[RdbParser, list]:
    p = RdbParser(**kw)
    out: list = []
    if chunk_seed is None:
        p.feed(data)
        out.extend(p.records())
        p.finish()
    else:
        feed_in_chunks(p, data, chunk_seed, 4096, out)
    return p, out


def parse_until_error(data: bytes, chunk_seed: int | None = None) -> tuple[list, RdbError]:
    out: list = []
    with pytest.raises(RdbError) as ei:
        p = RdbParser()
        if chunk_seed is None:
            p.feed(data)
            for r in p.records():
                out.append(r)
            p.finish()
        else:
            feed_in_chunks(p, data, chunk_seed, 4096, out)
    return out, ei.value


def key_records(recs: list) -> list:
    return [r for r in recs if isinstance(r, KeyValue | BigKeyStart)]


@pytest.mark.parametrize("f", RDB_FILES, ids=[f["path"] for f in RDB_FILES])
def test_corpus_file(f: dict) -> None:
    data = (TESTDATA / f["path"]).read_bytes()
    info = f["rdb"]
    if expect_error(f):
        whole, err = parse_until_error(data)
        chunked, err2 = parse_until_error(data, chunk_seed=7)
        assert err.offset is not None and 0 <= err.offset <= len(data)
        assert (err.message, err.offset) == (err2.message, err2.offset)
        assert whole == chunked
        if info["scanner_stopped"]:  # records before the stop point still come out
            assert len(key_records(whole)) == info["keys_in_file"] - 1
        return
    p, whole = parse_all(data)
    _, chunked = parse_all(data, chunk_seed=12345)
    assert whole == chunked
    assert isinstance(whole[-1], Eof)
    assert p.done and p.trailing == data[p.offset :]
    keys = key_records(whole)
    assert all(isinstance(k, KeyValue) for k in keys)  # default threshold: nothing is big
    assert len(keys) == info["keys_in_file"]
    assert {k.db for k in keys} <= set(info["dbs"])
    assert {r.db for r in whole if isinstance(r, SelectDb)} == set(info["dbs"])
    want = Counter({TYPE_IDS[name]: n for name, n in info["types"].items()})
    assert Counter(k.type for k in keys) == want
    assert sum(1 for k in keys if k.expire_ms != -1) == info["keys_with_expiry"]
    if f["path"] in ALL_EMPTY:
        assert all(k.empty for k in keys)
    else:
        assert sum(1 for k in keys if k.empty) == info["empty_values"]
    eof = whole[-1]
    if info["checksum"].startswith("ok"):
        assert eof.verified and eof.checksum == struct.unpack("<Q", data[-8:])[0]
    else:
        assert not eof.verified
    assert (
        p.magic + str(p.version).zfill(4 if p.magic == b"REDIS" else 3).encode()
        == info["magic"].encode()
    )
    for k in keys:  # offset points at the record's first opcode or its type byte
        assert data[k.offset] in (0xFC, 0xFD, 0xF8, 0xF9, 107, k.type)
    aux = {r.key: r.value for r in whole if isinstance(r, Aux)}
    assert aux == p.aux
    names = {k.decode("latin-1") for k in aux} | {k.decode("utf-8", "replace") for k in aux}
    for name in info["aux_keys"]:
        assert name in names


def test_empty_values_flagged() -> None:
    data = (TESTDATA / "rdb/redis/corrupt_empty_keys.rdb").read_bytes()
    _, recs = parse_all(data)
    keys = key_records(recs)
    assert len(keys) == 9 and all(k.empty for k in keys)
    data = (TESTDATA / "rdb/redis-replicator/dumpV8.rdb").read_bytes()
    _, recs = parse_all(data)
    assert not any(k.empty for k in key_records(recs))


def test_worked_example_crc() -> None:
    body = b"REDIS0011" + bytes.fromhex("fe00fb0100") + b"\x00\x03foo\x03bar" + b"\xff"
    assert len(body) == 24
    crc = crc64(body)
    assert crc == 0x95AB6E674CB9868D
    data = body + struct.pack("<Q", crc)
    assert len(data) == 32
    p, recs = parse_all(data)
    assert recs == [
        SelectDb(0),
        ResizeDb(1, 0),
        KeyValue(0, b"foo", 0, b"\x03bar", -1, -1, -1, 14, False),
        Eof(0x95AB6E674CB9868D, True),
    ]
    # byte-at-a-time feeding gives the same records
    p2 = RdbParser()
    out = []
    for i in range(len(data)):
        p2.feed(data[i : i + 1])
        out.extend(p2.records())
    p2.finish()
    assert out == recs
    # a flipped byte inside the value -> checksum mismatch
    bad = bytearray(data)
    bad[22] ^= 0x01  # 'r' of "bar"
    _, err = parse_until_error(bytes(bad))
    assert "checksum mismatch" in err.message and err.offset == 24
    # checksum 0 = disabled: accepted, not verified
    _, recs = parse_all(body + b"\0" * 8)
    assert recs[-1] == Eof(0, False)


def test_flipped_byte_in_real_file() -> None:
    data = (TESTDATA / "rdb/redis-replicator/dumpV8.rdb").read_bytes()
    _, recs = parse_all(data)
    kv = next(r for r in key_records(recs) if r.type == 0 and len(r.raw) > 4 and r.raw[0] < 0x40)
    i = data.index(kv.raw, kv.offset) + 2  # a byte inside the string payload
    bad = bytearray(data)
    bad[i] ^= 0x20
    for seed in (None, 3):
        _, err = parse_until_error(bytes(bad), seed)
        assert "checksum mismatch" in err.message
        assert err.offset == len(data) - 8


@pytest.mark.parametrize(
    "path",
    ["rdb/redis-replicator/dumpV8.rdb", "rdb/librdb/function2.rdb", "rdb/redis/encodings.rdb"],
)
def test_truncated_file(path: str) -> None:
    data = (TESTDATA / path).read_bytes()
    rnd = random.Random(99)
    for cut in [
        len(data) // 2,
        len(data) - 1,
        len(data) - 9,
        5,
        *rnd.sample(range(9, len(data)), 10),
    ]:
        recs, err = parse_until_error(data[:cut], chunk_seed=cut)
        assert err.message.startswith("truncated RDB")
        assert err.offset is not None and err.offset <= cut
        assert not any(isinstance(r, Eof) for r in recs)


def test_trailing_bytes_and_start_offset() -> None:
    data = (TESTDATA / "rdb/redis-rdb-tools/rdb_version_5_with_checksum.rdb").read_bytes()
    _, ref = parse_all(data)
    p = RdbParser(start_offset=1000)
    p.feed(data + b"*1\r\n$4\r\nPING\r\n")
    recs = list(p.records())
    p.feed(b"more")
    assert list(p.records()) == []
    p.finish()
    assert p.trailing == b"*1\r\n$4\r\nPING\r\nmore"
    assert p.offset == 1000 + len(data)
    for a, b in zip(key_records(recs), key_records(ref), strict=True):
        assert a.offset == b.offset + 1000 and a.raw == b.raw


def test_function_records() -> None:
    data = (TESTDATA / "rdb/redis-replicator/function.rdb").read_bytes()
    _, recs = parse_all(data)
    funcs = [r.code for r in recs if isinstance(r, Function)]
    assert len(funcs) == 2
    assert funcs[0].startswith(b"#!LUA name=lib2\nlocal function test2()")
    assert funcs[1].startswith(b"#!LUA name=lib1\nlocal function test1()")
    assert b"redis.register_function('test1'" in funcs[1]
    data = (TESTDATA / "rdb/librdb/function2.rdb").read_bytes()
    _, recs = parse_all(data)
    funcs = [r.code for r in recs if isinstance(r, Function)]
    assert len(funcs) == 2 and all(c.startswith(b"#!lua name=") for c in funcs)


def test_module_aux_and_slot_info() -> None:
    data = (TESTDATA / "rdb/librdb/module_aux_v12.rdb").read_bytes()
    _, recs = parse_all(data)
    mods = [r for r in recs if isinstance(r, ModuleAux)]
    assert len(mods) == 2 and all(m.raw.endswith(b"\x00") for m in mods)
    assert {m.module_name for m in mods} == {"test__rdb"}
    assert {m.when for m in mods} <= {1, 2}
    (kv,) = key_records(recs)
    assert kv.type == 7
    data = (TESTDATA / "rdb/redis-replicator/dump-slot.rdb").read_bytes()
    _, recs = parse_all(data)
    slots = [r for r in recs if isinstance(r, SlotInfo)]
    assert len(slots) == 4 and all(0 <= s.slot < 16384 and s.size >= 1 for s in slots)


def test_unknown_bytes_fail_cleanly() -> None:
    cases = [
        (b"REDIS0011", b"\xfe\x00\x16\x01k", "unknown value type 22 in REDIS0011", 11),
        (b"REDIS0009", b"\x08\x01k\x00", "unknown value type 8 in REDIS0009", 9),
        (b"VALKEY080", b"\xf3\x00", "SLOT_IMPORT opcode 243", 9),
        (b"REDIS0012", b"\x1a\x01k", "unknown value type 26 in REDIS0012", 9),
        (b"REDIS0013", b"\x1b\x01k", "unknown value type 27 in REDIS0013", 9),
        (b"REDIS0014", b"\x1c\x01k", "value type 28 (Redis array", 9),
        # (a KEY_META class without ALLOW_IGNORE: spec flags 0, empty module value)
        (b"REDIS0013", b"\xf3\x01\x08\x00\x00\x00\x00\x00\x01k", "KEY_META opcode 243", 9),
        (b"REDIS0011", b"\xf4\x00\x00\x00", "unknown opcode 244 in REDIS0011", 9),
        (b"VALKEY080", b"\x19\x01k", "unknown value type 25 in VALKEY080", 9),
        (b"REDIS0011", b"\x00\x01k\xc5", "unknown string encoding 0xc5", 12),
    ]
    for head, body, msg, off in cases:
        for seed in (None, 1):
            _, err = parse_until_error(make_rdb(head, body), seed)
            assert msg in err.message and err.offset == off, (head, body, err)
    _, err = parse_until_error(b"REDIS0016" + b"\xff" + b"\0" * 8)
    assert "version 16" in err.message and err.offset == 0
    _, err = parse_until_error(b"VALKEY011" + b"\xff" + b"\0" * 8)
    assert "version 11" in err.message
    _, err = parse_until_error(b"RUBBISH00" + b"\xff")
    assert "signature" in err.message


def test_expiry_kept_across_non_key_opcode() -> None:
    exp = struct.pack("<q", 1_700_000_000_000)
    body = b"\xfe\x00\xfc" + exp + b"\xf9\x05\xfa\x01a\x01b\x00\x01k\x01v" + b"\x00\x02k2\x01w"
    for seed in (None, 2):
        _, recs = parse_all(make_rdb(b"REDIS0011", body), seed)
        keys = key_records(recs)
        assert keys[0] == KeyValue(0, b"k", 0, b"\x01v", 1_700_000_000_000, -1, 5, 11, False)
        assert keys[1].expire_ms == -1 and keys[1].freq == -1
    # EXPIRETIME (seconds) becomes ms; IDLE
    body = (
        b"\xfd"
        + struct.pack("<i", 1_600_000_000)
        + b"\xf8\x81\x00\x00\x00\x00\x00\x00\x01\x00\x00\x01k\x01v"
    )
    _, recs = parse_all(make_rdb(b"REDIS0009", body))
    (kv,) = key_records(recs)
    assert kv.expire_ms == 1_600_000_000_000 and kv.idle == 256 and kv.offset == 9


# ---- big values, from real servers ------------------------------------------------------


def _reassemble(recs: list, by_db: bool = False) -> dict:
    """key -> (type, kind, items) for streamed values; KeyValue keys -> (type, None, raw).
    ``by_db``: keyed by (db, key). Streamed element strings (BigElementStart ...) are put
    back in place of their BIG_ELEMENT placeholders."""
    out: dict = {}
    cur = None
    elems: list[bytes] = []
    piece: list[bytes] | None = None
    for r in recs:
        if isinstance(r, BigKeyStart):
            assert cur is None
            cur = r
            items: list = []
        elif isinstance(r, BigElementStart):
            assert cur is not None and piece is None
            piece = []
        elif isinstance(r, BigElementPart):
            assert piece is not None
            piece.extend(r.pieces)
        elif isinstance(r, BigElementEnd):
            assert piece is not None
            elems.append(b"".join(piece))
            piece = None
        elif isinstance(r, BigKeyPart):
            assert cur is not None and 0 < len(r.items)
            for it in r.items:
                if it is BIG_ELEMENT:
                    it = elems.pop(0)
                elif type(it) is tuple and BIG_ELEMENT in it:
                    it = tuple(elems.pop(0) if x is BIG_ELEMENT else x for x in it)
                items.append(it)
        elif isinstance(r, BigKeyEnd):
            assert cur is not None and not elems and piece is None
            out[(cur.db, cur.key) if by_db else cur.key] = (cur.type, cur.kind, items, cur)
            cur = None
        elif isinstance(r, KeyValue):
            assert cur is None
            out[(r.db, r.key) if by_db else r.key] = (r.type, None, r.raw, r)
    assert cur is None
    return out


def _populate(c, n_hash: int, n_list: int, n_set: int, n_zset: int) -> list[float]:
    pipe = c.pipeline(transaction=False)
    step = 5000
    for i in range(0, n_hash, step):
        pipe.hset(
            "bighash",
            mapping={
                f"field:{j}": f"value-{j}-" + "x" * (j % 13)
                for j in range(i, min(i + step, n_hash))
            },
        )
    for i in range(0, n_list, step):
        pipe.rpush(
            "biglist", *[f"e{j}" if j % 3 else str(j) for j in range(i, min(i + step, n_list))]
        )
    for i in range(0, n_set, step):
        pipe.sadd("bigset", *[f"member-{j}" for j in range(i, min(i + step, n_set))])
    rnd = random.Random(5)
    scores = [rnd.uniform(-1e6, 1e6) for _ in range(n_zset)]
    special = [1.5, 0.1, math.inf, -math.inf, 1e300, -0.0, 123456789012345.0]
    scores[: len(special)] = special
    for i in range(0, n_zset, step):
        pipe.zadd("bigzset", {f"z{j}": scores[j] for j in range(i, min(i + step, n_zset))})
    pipe.pexpireat("bighash", 4_000_000_000_000)
    pipe.set("small", "v")
    pipe.rpush("smalllist", "a", "b")
    pipe.execute()
    return scores


def _check_big(server, n_hash: int, n_list: int, n_set: int, n_zset: int) -> dict:
    c = server.client()
    _populate(c, n_hash, n_list, n_set, n_zset)
    c.save()
    data = (server.dir / "dump.rdb").read_bytes()
    p = RdbParser(big_value_threshold=64 << 10, part_items=1000)
    recs = feed_in_chunks(p, data, 1, 32 << 10, [], 4 << 20)
    got = _reassemble(recs)
    assert got[b"bighash"][1] == "hash"
    assert dict(got[b"bighash"][2]) == c.hgetall("bighash")
    assert len(got[b"bighash"][2]) == n_hash
    start = got[b"bighash"][3]
    assert start.expire_ms == 4_000_000_000_000 and start.count == n_hash and start.db == 0
    assert data[start.offset] == 0xFC  # the record starts at its EXPIRETIME_MS opcode
    assert got[b"biglist"][1] == "list" and got[b"biglist"][2] == c.lrange("biglist", 0, -1)
    assert got[b"bigset"][1] == "set" and set(got[b"bigset"][2]) == c.smembers("bigset")
    assert got[b"bigset"][3].count == n_set
    zs = got[b"bigzset"]
    assert zs[1] == "zset" and zs[3].count == n_zset
    want = dict(c.zrange("bigzset", 0, -1, withscores=True))
    assert len(zs[2]) == n_zset
    for member, score in zs[2]:
        assert float(score) == want[member] or (
            math.isnan(float(score)) and math.isnan(want[member])
        )
    assert got[b"small"][1] is None and got[b"smalllist"][1] is None
    for part in (r for r in recs if isinstance(r, BigKeyPart)):
        assert len(part.items) <= 1000
    return got


@pytest.mark.timeout(600)
def test_big_values_redis70(servers) -> None:
    s = servers.start("redis-7.0")
    got = _check_big(s, 200_000, 300_000, 200_000, 200_000)
    assert got[b"biglist"][0] == 18 and got[b"bighash"][0] == 4
    assert got[b"bigzset"][0] == 5 and got[b"bigset"][0] == 2


@pytest.mark.timeout(600)
def test_big_values_redis50(servers) -> None:
    s = servers.start("redis-5.0")
    got = _check_big(s, 200_000, 300_000, 200_000, 200_000)
    assert got[b"biglist"][0] == 14  # quicklist of ziplists


@pytest.mark.timeout(600)
def test_big_values_valkey81(servers) -> None:
    s = servers.start("valkey-8.1")
    got = _check_big(s, 200_000, 300_000, 200_000, 200_000)
    assert got[b"bigset"][0] == 2


@pytest.mark.timeout(600)
def test_big_hash_with_field_ttl_valkey91(servers) -> None:
    s = servers.start("valkey-9.1")
    c = s.client()
    n = 60_000
    pipe = c.pipeline(transaction=False)
    for i in range(0, n, 5000):
        pipe.hset("h", mapping={f"f{j}": f"v{j}" for j in range(i, i + 5000)})
    pipe.execute()
    fields = [f"f{j}" for j in range(0, n, 2)]
    for i in range(0, len(fields), 5000):
        c.execute_command(
            "HPEXPIREAT",
            "h",
            4_000_000_000_000,
            "FIELDS",
            len(fields[i : i + 5000]),
            *fields[i : i + 5000],
        )
    c.save()
    data = (s.dir / "dump.rdb").read_bytes()
    assert data[:9] == b"VALKEY080"
    p = RdbParser(big_value_threshold=64 << 10, part_items=500)
    recs: list = []
    for i in range(0, len(data), 8192):
        p.feed(data[i : i + 8192])
        recs.extend(p.records())
    p.finish()
    got = _reassemble(recs)
    typ, kind, items, start = got[b"h"]
    assert typ == 22 and kind == "hash" and start.count == n
    assert {f: v for f, v, _ in items} == c.hgetall("h")
    exp = {f: e for f, _, e in items}
    assert all(exp[f"f{j}".encode()] == (4_000_000_000_000 if j % 2 == 0 else -1) for j in range(n))
    # whole-file parse of the same data: one KeyValue with the exact value bytes
    _, whole = parse_all(data)
    (kv,) = key_records(whole)
    assert kv.type == 22 and not kv.empty


STREAMABLE = {0, 1, 2, 3, 4, 5, 14, 15, 18, 19, 21, 22, 24}  # 0: long raw / LZF strings


@pytest.mark.parametrize(
    "f",
    [f for f in RDB_FILES if not expect_error(f)],
    ids=[f["path"] for f in RDB_FILES if not expect_error(f)],
)
def test_corpus_streamed_with_tiny_threshold(f: dict) -> None:
    """With a 1-byte threshold and small chunks every element-wise aggregate that spans a
    chunk boundary is streamed; keys, order and element counts must match the plain parse."""
    data = (TESTDATA / f["path"]).read_bytes()
    _, plain = parse_all(data)
    p = RdbParser(big_value_threshold=1, part_items=7)
    recs = feed_in_chunks(p, data, len(data), 64, [])
    want = key_records(plain)
    got = key_records(recs)
    assert [(k.key, k.type, k.db, k.expire_ms, k.offset) for k in got] == [
        (k.key, k.type, k.db, k.expire_ms, k.offset) for k in want
    ]
    streamed = _reassemble(recs, by_db=True)
    ttl_fields = 0
    n_streams = 0
    for kv in want:
        typ, kind, items, start = streamed[kv.db, kv.key]
        if kind is None:
            continue
        assert typ in STREAMABLE and not kv.empty
        if typ == 0:  # a raw or LZF string streamed in byte pieces
            assert kind == "string" and b"".join(items) == read_string(kv.raw, 0)[0]
            assert start.count == sum(map(len, items))
            continue
        if typ in (15, 19, 21):
            assert kind == "stream" and start.count == -1
            assert stream_from_items(items) == decode_value(typ, kv.raw, valkey=False)
            n_streams += 1
            continue
        if start.count >= 0:
            assert len(items) == start.count
        if typ in (22, 24):
            ttl_fields += sum(1 for it in items if it[2] != -1)
            assert all(it[2] == -1 or it[2] > 1_600_000_000_000 for it in items)
    if f["rdb"]["types"].keys() <= {"HASH_METADATA", "HASH_METADATA_PRE_GA", "HASH_2"}:
        assert ttl_fields == f["rdb"]["fields_with_ttl"]
    # streams that span several chunks were streamed (tiny ones may fit in one chunk)
    assert not [r.key for r in recs if type(r) is KeyValue and r.type in (15, 19, 21)
                and len(r.raw) > 256]  # fmt: skip
    if "rdb_with_stream" in f["path"] or "misc_with_stream" in f["path"]:
        assert n_streams


def test_field_ttl_values_streamed() -> None:
    want = {
        "rdb/hdt3213-rdb/hash_with_hfe.rdb": (b"F2", 2755483429282, b"F8", -1),
        "rdb/hdt3213-rdb/valkey_hash2_with_hfe.rdb": (b"F1", 2715785640000, b"F3", -1),
    }
    for path, (f1, e1, f2, e2) in want.items():
        data = (TESTDATA / path).read_bytes()
        p = RdbParser(big_value_threshold=1)
        recs: list = []
        for i in range(len(data)):
            p.feed(data[i : i + 1])
            recs.extend(p.records())
        p.finish()
        ((typ, kind, items, _),) = _reassemble(recs).values()
        exp = {f: e for f, _, e in items}
        assert kind == "hash" and exp[f1] == e1 and exp[f2] == e2


# ---- long LZF strings, streamed -----------------------------------------------------------


def _lzf_rdb(comp: bytes, ulen: int) -> bytes:
    """An RDB with an LZF-encoded string ``z`` (then a small key ``k``)."""
    from redshake.rdb.dump import encode_length

    value = b"\xc3" + encode_length(len(comp)) + encode_length(ulen) + comp
    return make_rdb(b"REDIS0009", b"\xfe\x00\x00\x01z" + value + b"\x00\x01k\x01v")


def _mixed_data(size: int, seed: int) -> bytes:
    """Runs of random bytes (LZF literals), of one repeated byte (long back-references) and
    of repeated text: every kind of LZF instruction, in every order."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        k = rnd.random()
        if k < 0.3:
            out += rnd.randbytes(rnd.randint(1, 3000))
        elif k < 0.5:
            out += bytes((rnd.randrange(256),)) * rnd.randint(1, 20000)
        else:
            out += b"abc%ddef " % rnd.randint(0, 99) * rnd.randint(1, 300)
    return bytes(out[:size])


def _parse_chunked(data: bytes, seed: int, max_chunk: int, **kw) -> list:
    return feed_in_chunks(RdbParser(**kw), data, seed, max_chunk, [], (256 << 10) + max_chunk)


@pytest.mark.parametrize("resync", [512, 2])  # 2: the cheap boundary guess mostly fails
def test_lzf_string_streamed_in_pieces(monkeypatch, resync: int) -> None:
    import lzf

    from redshake.rdb import primitives

    monkeypatch.setattr(primitives, "_LZF_RESYNC", resync)
    value = _mixed_data(3 << 20, resync)
    comp = lzf.compress(value, len(value))
    assert comp is not None and len(comp) > 256 << 10
    data = _lzf_rdb(comp, len(value))
    for seed, max_chunk in ((1, 100_000), (2, 7_000)):
        recs = _parse_chunked(data, seed, max_chunk, big_value_threshold=64 << 10)
        start = recs[1]
        assert type(start) is BigKeyStart and (start.key, start.kind) == (b"z", "string")
        assert start.count == len(value)
        pieces = [x for r in recs if type(r) is BigKeyPart for x in r.items]
        assert all(len(x) == 1 << 20 for x in pieces[:-1]) and len(pieces[-1]) <= 1 << 20
        assert b"".join(pieces) == value
        assert [type(r) for r in recs[-3:]] == [BigKeyEnd, KeyValue, Eof]
    # under the threshold: one KeyValue with the value bytes as stored
    _, recs = parse_all(data, big_value_threshold=len(comp))
    (kv,) = [r for r in recs if type(r) is KeyValue and r.key == b"z"]
    assert read_string(kv.raw, 0)[0] == value


def test_lzf_string_corrupt_fails_cleanly() -> None:
    import lzf

    value = _mixed_data(1 << 20, 9)
    comp = lzf.compress(value, len(value))
    bad_ref = bytearray(comp)
    bad_ref[len(comp) // 2 : len(comp) // 2 + 64] = b"\xff" * 64  # far back-references
    cases = [
        (comp, len(value) + 1, "short of its declared length"),
        (comp, len(value) - 1, "invalid LZF data"),
        (comp[:-1], len(value), "invalid LZF data"),  # the last instruction is cut
        (b"\x20\x00" + comp, len(value) + 3, "invalid LZF data"),  # reference before the start
        (bytes(bad_ref), len(value), "LZF"),
    ]
    for comp_, ulen, msg in cases:
        data = _lzf_rdb(comp_, ulen)
        for max_chunk in (len(data), 5000):
            with pytest.raises(RdbError) as ei:
                _parse_chunked(data, 3, max_chunk, big_value_threshold=1 << 10)
            err = ei.value
            assert msg in err.message and err.key == b"z", err
            assert err.offset is not None and 12 < err.offset <= len(data), err


def test_pre_ga_functions_load_on_redis70(servers) -> None:
    data = (TESTDATA / "rdb/redis-replicator/function.rdb").read_bytes()
    _, recs = parse_all(data)
    c = servers.start("redis-7.0").client()
    for r in recs:
        if isinstance(r, Function):
            c.execute_command("FUNCTION", "LOAD", r.code)
    assert c.fcall("test1", 0) == 1 and c.fcall("test2", 0) == 2
