"""Module values (type 7): id decoding, the annotated value walk, and the converters for
TairString, TairHash, TairZset and RedisBloom.

No server with these modules is available, so the fixtures are built byte by byte from the
documented module value format (protocols.md §1.10) and the modules' published rdb_save
layouts; the corpus files with real module values are walked as well.
"""

from __future__ import annotations

import struct

import pytest

from rdbgen import corpus_keys
from redshake.rdb.modules import (
    bloom_chain,
    bloom_header,
    decode_module_value,
    module_id_to_name,
    module_name_to_id,
    module_to_commands,
)
from redshake.rdb.primitives import RdbError
from redshake.rdb.rewrite import RewriteError, value_to_commands
from redshake.rdb.values import ModuleValue, decode_value


def enc_len(n: int) -> bytes:
    if n < 64:
        return bytes([n])
    if n < 16384:
        return bytes([0x40 | (n >> 8), n & 0xFF])
    if n < 2**32:
        return b"\x80" + struct.pack(">I", n)
    return b"\x81" + struct.pack(">Q", n)


def U(n: int) -> bytes:
    return b"\x02" + enc_len(n)


def S(b: bytes) -> bytes:
    return b"\x05" + enc_len(len(b)) + b


def D(x: float) -> bytes:
    return b"\x04" + struct.pack("<d", x)


def module_value(name: str, encver: int, *items: bytes) -> bytes:
    return enc_len(module_name_to_id(name, encver)) + b"".join(items) + b"\x00"


def test_module_id_roundtrip() -> None:
    for name in ("ReJSON-RL", "MBbloom--", "exstrtype", "tairhash-", "tairzset_", "graphdata"):
        for ver in (0, 1, 4, 1023):
            assert module_id_to_name(module_name_to_id(name, ver)) == (name, ver)
    with pytest.raises(ValueError):
        module_name_to_id("short", 0)


def test_walk_all_opcodes() -> None:
    raw = module_value(
        "testtype1", 3,
        b"\x01" + enc_len(2**64 - 5),  # SINT -5
        U(7), b"\x03" + struct.pack("<f", 1.5), D(-2.25), S(b"hello"),
    )  # fmt: skip
    v = decode_value(7, raw, valkey=False)
    assert isinstance(v, ModuleValue)
    assert (v.module_name, v.encver, v.raw) == ("testtype1", 3, raw)
    assert v.decoded == [(1, -5), (2, 7), (3, 1.5), (4, -2.25), (5, b"hello")]
    with pytest.raises(RdbError):
        decode_module_value(raw[:-1])  # no EOF
    with pytest.raises(RdbError, match="opcode"):
        decode_module_value(enc_len(module_name_to_id("testtype1", 0)) + b"\x09\x00")


def test_tairstring() -> None:
    raw = module_value("exstrtype", 0, U(3), U(9), S(b"val"))
    v = decode_value(7, raw, valkey=False)
    assert module_to_commands(b"k", v) == [[b"EXSET", b"k", b"val", b"ABS", b"3", b"FLAGS", b"9"]]
    # via value_to_commands, with the key TTL after it
    assert list(value_to_commands(b"k", v, expire_ms=10)) == [
        [b"EXSET", b"k", b"val", b"ABS", b"3", b"FLAGS", b"9"],
        [b"PEXPIREAT", b"k", b"10"],
    ]


def test_tairhash() -> None:
    raw = module_value(
        "tairhash-", 0, U(2), S(b"k"),
        S(b"f1"), U(4), U(1700000000000), S(b"v1"),
        S(b"f2"), U(1), U(0), S(b"v2"),
    )  # fmt: skip
    v = decode_value(7, raw, valkey=False)
    assert module_to_commands(b"k", v) == [
        [b"EXHSET", b"k", b"f1", b"v1", b"ABS", b"4", b"PXAT", b"1700000000000"],
        [b"EXHSET", b"k", b"f2", b"v2"],
    ]
    bad = module_value("tairhash-", 0, U(2), S(b"k"), S(b"f1"), U(4), U(0), S(b"v1"))
    with pytest.raises(RdbError, match="ends early"):
        module_to_commands(b"k", decode_value(7, bad, valkey=False))


def test_tairzset() -> None:
    raw = module_value(
        "tairzset_", 0, U(2), U(2), S(b"a"), D(1.5), D(float("inf")), S(b"b"), D(0.1), D(-3.0)
    )
    v = decode_value(7, raw, valkey=False)
    assert module_to_commands(b"z", v) == [
        [b"EXZADD", b"z", b"1.5#inf", b"a"],
        [b"EXZADD", b"z", b"0.1#-3.0", b"b"],
    ]


def _bloom_value(encver: int, data: bytes) -> bytes:
    head = [U(100), U(1)]
    if encver >= 2:
        head.append(U(0))  # options
    if encver >= 4:
        head.append(U(2))  # growth
    link = [U(100), D(0.01), U(7), D(9.585)]
    if encver >= 1:
        link += [U(len(data) * 8), U(10)]
    link += [S(data), U(42)]
    return module_value("MBbloom--", encver, *head, *link)


def test_bloom_encver4() -> None:
    data = bytes(range(256)) * 4
    v = decode_value(7, _bloom_value(4, data), valkey=False)
    chain = bloom_chain(v)
    assert chain["growth"] == 2 and chain["links"][0]["bits"] == len(data) * 8
    cmds = module_to_commands(b"bf", v)
    hdr = cmds[0][3]
    assert cmds[0][:3] == [b"BF.LOADCHUNK", b"bf", b"1"]
    assert len(hdr) == 20 + 53  # header with growth, link with 64-bit entries
    size, nfilters, options, growth = struct.unpack_from("<QIII", hdr, 0)
    assert (size, nfilters, options, growth) == (100, 1, 0, 2)
    nbytes, bits, lsize, err, bpe, hashes, entries, n2 = struct.unpack_from("<QQQddIQB", hdr, 20)
    assert (nbytes, bits, lsize, err, bpe, hashes, entries, n2) == (
        len(data), len(data) * 8, 42, 0.01, 9.585, 7, 100, 10,
    )  # fmt: skip
    assert cmds[1] == [b"BF.LOADCHUNK", b"bf", b"%d" % (1 + len(data)), data]
    # older target layouts
    old = module_to_commands(b"bf", v, mbbloom_version=10000)
    assert len(old[0][3]) == 16 + 49
    mid = module_to_commands(b"bf", v, mbbloom_version=20200)
    assert len(mid[0][3]) == 20 + 49
    assert bloom_header(chain, True, True) == hdr


def test_bloom_encver0_and_1() -> None:
    data = b"\xaa" * 12
    v0 = decode_value(7, _bloom_value(0, data), valkey=False)
    assert bloom_chain(v0)["links"][0]["bits"] == int(100 * 9.585)
    assert len(module_to_commands(b"b", v0)[0][3]) == 16 + 49  # source encoding: no growth
    v1 = decode_value(7, _bloom_value(1, data), valkey=False)
    assert bloom_chain(v1)["links"][0]["n2"] == 10


def test_unknown_module_is_refused() -> None:
    raw = module_value("ReJSON-RL", 3, U(1), S(b"{}"))
    v = decode_value(7, raw, valkey=False)
    with pytest.raises(RdbError, match="ReJSON-RL"):
        module_to_commands(b"j", v)
    with pytest.raises(RewriteError, match="ReJSON-RL"):
        list(value_to_commands(b"j", v))




@pytest.mark.parametrize(
    "path", ["redis-rdb-tools/redis_40_with_module.rdb", "redis-replicator/dump-module-2.rdb"]
)
def test_corpus_module_values_walk(path: str) -> None:
    found = [
        decode_value(t, raw, valkey=vk) for _, _, t, raw, _, vk in corpus_keys("rdb/" + path) if t == 7
    ]
    assert found and all(isinstance(v, ModuleValue) and v.module_name for v in found)
