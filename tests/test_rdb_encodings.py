"""Byte-level tests of the embedded encodings and of the command rewriter (no server)."""

from __future__ import annotations

import struct

import pytest

from rdbgen import lp_elem, make_listpack, make_ziplist
from redshake.rdb.encodings import (
    intset_members,
    listpack_entries,
    listpack_values,
    ziplist_entries,
    zipmap_pairs,
)
from redshake.rdb.primitives import RdbError
from redshake.rdb.rewrite import RewriteError, items_to_commands, value_to_commands
from redshake.rdb.values import (
    HashValue,
    ListValue,
    SetValue,
    StreamConsumer,
    StreamGroup,
    StreamValue,
    StringValue,
    ZSetValue,
    decode_value,
    format_score,
)

# ---------------------------------------------------------------------------------------
# listpacks (the writer for fixtures is rdbgen.lp_elem / make_listpack)


def test_listpack_every_encoding() -> None:
    values = [
        0, 127, 128, -1, 4095, -4096, 4096, -4097, 32767, -32768, 32768, 2**23 - 1, -(2**23),
        2**23, 2**31 - 1, -(2**31), 2**31, 2**63 - 1, -(2**63),
    ]  # fmt: skip
    strs = [b"", b"x", b"y" * 63, b"z" * 64, b"w" * 127, b"v" * 200, b"u" * 4095, b"t" * 4096]
    elems = [lp_elem(v) for v in values] + [lp_elem(s) for s in strs]
    elems.append(lp_elem(b"q" * 10, force="s32"))  # 32-bit string header on a short string
    elems.append(lp_elem(5, force="i64"))
    lp = make_listpack(elems)
    got = listpack_values(lp)
    assert got == values + strs + [b"q" * 10, 5]
    assert listpack_entries(lp) == [str(v).encode() for v in values] + strs + [b"q" * 10, b"5"]
    # unknown count (65535) is walked
    assert listpack_entries(make_listpack(elems, count=65535)) == listpack_entries(lp)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x07\x00\x00\x00\x00\x00",  # too short
        struct.pack("<IH", 8, 1) + b"\x81" + b"\xff",  # string runs past the end
        struct.pack("<IH", 9, 1) + b"\xf5\x01" + b"\xff",  # invalid encoding byte
        struct.pack("<IH", 9, 2) + b"\x01\x01" + b"\xff",  # wrong element count
        struct.pack("<IH", 99, 1) + b"\x01\x01" + b"\xff",  # wrong total size
        struct.pack("<IH", 9, 1) + b"\x01\x01" + b"\xfe",  # no terminator
        struct.pack("<IH", 10, 1) + b"\xf4\x01\x02" + b"\xff",  # int64 cut short
    ],
)
def test_listpack_corruption(blob: bytes) -> None:
    with pytest.raises(RdbError):
        listpack_entries(blob)


def test_ziplist_worked_example_and_all_encodings() -> None:
    assert ziplist_entries(bytes.fromhex("0f0000000c000000020000f302f6ff")) == [b"2", b"5"]
    ents = [
        b"\x00" + b"\x03abc",
        b"\x05" + b"\x40\x05hello",  # 14-bit length, big endian
        b"\x08" + b"\x80\x00\x00\x00\x03xyz",  # 32-bit length, big endian
        b"\x08" + b"\xc0" + struct.pack("<h", -300),
        b"\x03" + b"\xd0" + struct.pack("<i", 70000),
        b"\x05" + b"\xe0" + struct.pack("<q", -(2**40)),
        b"\x09" + b"\xf0" + (-(2**20) & 0xFFFFFF).to_bytes(3, "little"),
        b"\x04" + b"\xfe\x80",  # int8 -128
        b"\x02" + b"\xf1",  # immediate 0
        b"\x01" + b"\xfd",  # immediate 12
        b"\xfe\x01\x00\x00\x00" + b"\x00",  # 5-byte prevlen, empty string
    ]
    assert ziplist_entries(make_ziplist(ents)) == [
        b"abc", b"hello", b"xyz", b"-300", b"70000", str(-(2**40)).encode(),
        str(-(2**20)).encode(), b"-128", b"0", b"12", b"",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "blob",
    [
        make_ziplist([b"\x00\x05ab"]),  # string past the end
        make_ziplist([b"\x00\xc5"]),  # invalid 11xxxxxx encoding
        make_ziplist([b"\x00\x81abc"]),  # invalid 10xxxxxx encoding
        make_ziplist([b"\x00\xe0\x01"]),  # int64 cut short
        make_ziplist([b"\x00\x01a"])[:-1] + b"\x00",  # no terminator
    ],
)
def test_ziplist_corruption(blob: bytes) -> None:
    with pytest.raises(RdbError):
        ziplist_entries(blob)


def test_intset_and_corruption() -> None:
    assert intset_members(bytes.fromhex("02000000040000000100020003000400")) == [
        b"1",
        b"2",
        b"3",
        b"4",
    ]
    blob = struct.pack("<II", 8, 2) + struct.pack("<qq", -(2**62), 2**62)
    assert intset_members(blob) == [str(-(2**62)).encode(), str(2**62).encode()]
    with pytest.raises(RdbError):
        intset_members(blob[:-1])
    with pytest.raises(RdbError):
        intset_members(struct.pack("<II", 3, 0))


def test_zipmap() -> None:
    zm = b"\x02\x02f1\x02\x00v1\x02f2\x02\x00v2\xff"
    assert zipmap_pairs(zm) == [(b"f1", b"v1"), (b"f2", b"v2")]
    # zmlen >= 254: count unknown, walk to 0xFF; free bytes after the value are skipped;
    # 254-prefixed big lengths
    big = b"B" * 300
    zm2 = b"\xfe" + b"\x01k" + b"\xfe" + struct.pack("<I", 300) + b"\x02" + big + b"..\xff"
    assert zipmap_pairs(zm2) == [(b"k", big)]
    with pytest.raises(RdbError):
        zipmap_pairs(b"\x01\x05ab")


# ---------------------------------------------------------------------------------------
# decode_value on hand-built payloads


def test_decode_valkey_and_redis_hash_types() -> None:
    # Valkey HASH_2: field, value, 8-byte signed absolute ms (-1 = none)
    raw = b"\x02" + b"\x01a\x011" + struct.pack("<q", 1234) + b"\x01b\x012" + struct.pack("<q", -1)
    v = decode_value(22, raw, valkey=True)
    assert v == HashValue([(b"a", b"1"), (b"b", b"2")], {b"a": 1234})
    # Redis HASH_METADATA: minExpire, count, (ttl, field, value) with expireAt = ttl+min-1
    raw24 = struct.pack("<Q", 1000) + b"\x02" + b"\x05\x01a\x011" + b"\x00\x01b\x012"
    assert decode_value(24, raw24, valkey=False) == HashValue(
        [(b"a", b"1"), (b"b", b"2")], {b"a": 1004}
    )
    # Redis HASH_LISTPACK_EX: minExpire then listpack of (field, value, ttl)
    lp = make_listpack(
        [lp_elem(b"f"), lp_elem(7), lp_elem(2**40), lp_elem(b"g"), lp_elem(b"x"), lp_elem(0)]
    )
    raw25 = struct.pack("<Q", 2**40) + bytes([len(lp)]) + lp
    assert decode_value(25, raw25, valkey=False) == HashValue(
        [(b"f", b"7"), (b"g", b"x")], {b"f": 2**40}
    )
    with pytest.raises(RdbError):
        decode_value(25, raw25 + b"\x00", valkey=False)  # trailing byte
    with pytest.raises(RdbError):
        decode_value(24, raw24[:-1], valkey=False)  # truncated
    with pytest.raises(RdbError, match="unsupported Valkey"):
        decode_value(23, raw25, valkey=True)


def test_decode_zset2_scores() -> None:
    items = [(b"a", 0.1), (b"b", float("inf")), (b"c", -float("inf")), (b"d", 5.0), (b"e", 1e300)]
    raw = bytes([len(items)]) + b"".join(
        bytes([len(m)]) + m + struct.pack("<d", s) for m, s in items
    )
    v = decode_value(5, raw, valkey=False)
    assert isinstance(v, ZSetValue)
    assert [m for m, _ in v.items] == [m for m, _ in items]
    assert [float(s) for _, s in v.items] == [s for _, s in items]
    assert v.items[1][1] == b"inf" and v.items[2][1] == b"-inf"
    with pytest.raises(RdbError, match="NaN"):
        decode_value(5, b"\x01\x01a" + struct.pack("<d", float("nan")), valkey=False)
    assert format_score(0.1) == b"0.1"


def test_decode_empty_aggregates_and_unknown_type() -> None:
    assert decode_value(1, b"\x00", valkey=False) == ListValue([])
    assert decode_value(18, b"\x00", valkey=False) == ListValue([])
    with pytest.raises(RdbError, match="unknown RDB value type"):
        decode_value(8, b"\x00", valkey=False)
    with pytest.raises(RdbError, match="pre-GA module"):
        decode_value(6, b"\x00", valkey=False)
    with pytest.raises(RdbError, match="quicklist container"):
        decode_value(18, b"\x01\x03\x01a", valkey=False)


# ---------------------------------------------------------------------------------------
# rewriting


def test_chunking_limits() -> None:
    items = [b"%d" % i for i in range(1000)]
    cmds = list(value_to_commands(b"k", ListValue(items), max_items=100))
    assert len(cmds) == 10 and all(c[:2] == [b"RPUSH", b"k"] for c in cmds)
    assert [x for c in cmds for x in c[2:]] == items
    # byte limit: 10 elements of 100 bytes with max_bytes 250 -> 2 per command
    big = [bytes([65 + i]) * 100 for i in range(10)]
    cmds = list(value_to_commands(b"k", SetValue(big), max_bytes=250))
    assert [len(c) - 2 for c in cmds] == [2] * 5
    # one element larger than max_bytes still goes out (alone)
    cmds = list(value_to_commands(b"k", SetValue([b"x" * 1000, b"y"]), max_bytes=10))
    assert cmds == [[b"SADD", b"k", b"x" * 1000], [b"SADD", b"k", b"y"]]
    z = ZSetValue([(b"m%d" % i, b"%d" % i) for i in range(5)])
    cmds = list(value_to_commands(b"z", z, max_items=2))
    assert cmds[0] == [b"ZADD", b"z", b"0", b"m0", b"1", b"m1"] and len(cmds) == 3
    h = HashValue([(b"f%d" % i, b"v") for i in range(3)])
    assert list(value_to_commands(b"h", h, target_version=(3, 2, 0))) == [
        [b"HMSET", b"h", b"f0", b"v", b"f1", b"v", b"f2", b"v"]
    ]


def test_strings_and_ttls() -> None:
    assert list(value_to_commands(b"s", StringValue(b"v"), expire_ms=5)) == [
        [b"SET", b"s", b"v", b"PXAT", b"5"]
    ]
    assert list(value_to_commands(b"s", StringValue(b"v"), expire_ms=5, target_version=(6, 0, 0))) == [
        [b"SET", b"s", b"v"], [b"PEXPIREAT", b"s", b"5"],
    ]  # fmt: skip
    cmds = list(value_to_commands(b"s", StringValue(b"abcdefg"), expire_ms=9, max_bytes=3))
    assert cmds == [
        [b"SET", b"s", b"abc"], [b"APPEND", b"s", b"def"], [b"APPEND", b"s", b"g"],
        [b"PEXPIREAT", b"s", b"9"],
    ]  # fmt: skip
    assert list(value_to_commands(b"l", ListValue([b"a"]), expire_ms=7))[-1] == [
        b"PEXPIREAT",
        b"l",
        b"7",
    ]


def test_field_ttls() -> None:
    h = HashValue([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")], {b"a": 100, b"c": 100, b"b": 200})
    cmds = list(value_to_commands(b"h", h, target_version=(7, 4, 0)))
    assert cmds[0] == [b"HSET", b"h", b"a", b"1", b"b", b"2", b"c", b"3"]
    assert sorted(cmds[1:]) == [
        [b"HPEXPIREAT", b"h", b"100", b"FIELDS", b"2", b"a", b"c"],
        [b"HPEXPIREAT", b"h", b"200", b"FIELDS", b"1", b"b"],
    ]
    assert list(value_to_commands(b"h", h, target_version=(9, 0, 0), target_valkey=True)) == cmds
    for ver, vk in (((7, 2, 4), False), ((8, 1, 0), True), ((7, 0, 0), False)):
        with pytest.raises(RewriteError, match="b'h'"):
            list(value_to_commands(b"h", h, target_version=ver, target_valkey=vk))


def test_items_to_commands() -> None:
    assert list(items_to_commands(b"k", "list", [b"a", b"b", b"c"], max_items=2, max_bytes=100)) == [
        [b"RPUSH", b"k", b"a", b"b"], [b"RPUSH", b"k", b"c"],
    ]  # fmt: skip
    assert list(items_to_commands(b"k", "set", [b"a"], max_items=2, max_bytes=100)) == [
        [b"SADD", b"k", b"a"]
    ]
    assert list(items_to_commands(b"k", "zset", [(b"m", b"1.5")], max_items=2, max_bytes=100)) == [
        [b"ZADD", b"k", b"1.5", b"m"]
    ]
    part = [(b"f", b"v", 50), (b"g", b"w", -1)]
    assert list(
        items_to_commands(b"k", "hash", part, max_items=10, max_bytes=100, target_version=(7, 4, 0))
    ) == [
        [b"HSET", b"k", b"f", b"v", b"g", b"w"],
        [b"HPEXPIREAT", b"k", b"50", b"FIELDS", b"1", b"f"],
    ]
    with pytest.raises(RewriteError):
        list(items_to_commands(b"k", "hash", part, max_items=10, max_bytes=100))
    # no TTL in this part: fine on any target
    assert list(
        items_to_commands(b"k", "hash", [(b"f", b"v", -1)], max_items=10, max_bytes=100)
    ) == [[b"HSET", b"k", b"f", b"v"]]
    with pytest.raises(ValueError):
        list(items_to_commands(b"k", "bogus", [], max_items=1, max_bytes=1))


def test_stream_commands_shape() -> None:
    g = StreamGroup(
        b"g", b"5-0", 3, [(b"1-0", 1000, 2), (b"2-0", 1000, 2), (b"3-0", 7, 1)],
        [StreamConsumer(b"c1", 1, 1, [b"1-0", b"2-0", b"3-0"]), StreamConsumer(b"c2", 1, 1, [])],
    )  # fmt: skip
    s = StreamValue([(b"1-0", [b"a", b"b"])], 1, b"9-9", b"1-0", b"4-0", 12, [g])
    cmds = list(value_to_commands(b"s", s, target_version=(7, 0, 0)))
    # 2-0 and 3-0 are pending but deleted: claimed through stand-ins, deleted again after
    assert cmds == [
        [b"XADD", b"s", b"1-0", b"a", b"b"],
        [b"XADD", b"s", b"2-0", b"redshake", b"deleted"],
        [b"XADD", b"s", b"3-0", b"redshake", b"deleted"],
        [b"XSETID", b"s", b"9-9"],
        [b"XGROUP", b"CREATE", b"s", b"g", b"5-0", b"ENTRIESREAD", b"3"],
        [b"XCLAIM", b"s", b"g", b"c1", b"0", b"1-0", b"2-0", b"TIME", b"1000", b"RETRYCOUNT", b"2", b"FORCE", b"JUSTID"],
        [b"XCLAIM", b"s", b"g", b"c1", b"0", b"3-0", b"TIME", b"7", b"RETRYCOUNT", b"1", b"FORCE", b"JUSTID"],
        [b"XGROUP", b"CREATECONSUMER", b"s", b"g", b"c2"],
        [b"XDEL", b"s", b"2-0", b"3-0"],
        [b"XSETID", b"s", b"9-9", b"ENTRIESADDED", b"12", b"MAXDELETEDID", b"4-0"],
    ]  # fmt: skip
    old = list(value_to_commands(b"s", s, target_version=(6, 0, 9)))
    assert old[3] == [b"XSETID", b"s", b"9-9"]
    assert old[4] == [b"XGROUP", b"CREATE", b"s", b"g", b"5-0"]
    assert old[-3][:2] == [b"XREADGROUP", b"GROUP"]
    assert old[-1] == [b"XSETID", b"s", b"9-9"]
    live = StreamValue([(b"1-0", [b"a", b"b"])], 1, b"9-9", b"1-0", b"4-0", 12, [])
    assert list(value_to_commands(b"s", live, target_version=(7, 0, 0)))[1] == [
        b"XSETID", b"s", b"9-9", b"ENTRIESADDED", b"12", b"MAXDELETEDID", b"4-0",
    ]  # fmt: skip
    empty = StreamValue([], 0, b"0-0", b"0-0", b"0-0", 0, [])
    assert list(value_to_commands(b"e", empty))[0] == [
        b"XADD",
        b"e",
        b"MAXLEN",
        b"0",
        b"0-1",
        b"x",
        b"y",
    ]
