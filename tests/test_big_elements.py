"""A single element of a list, set, sorted set or hash (types 1 to 5) longer than the
streaming threshold -- a 100 MB hash value, set member, ... -- is never held whole either:
the parser streams its bytes as BigElementStart / BigElementPart / BigElementEnd records
between the parts of its key (raw as read, LZF decompressed piece by piece), and the
converter builds it on the target in a temporary key (SET + APPENDs) that one EVAL moves
into the aggregate."""

from __future__ import annotations

import os
import random
import struct

import lzf
import pytest

from harness import run_rdb_restore
from helpers import assert_same_data, feed_in_chunks, write_config
from rdbgen import RDB_FILES, compressible, expect_error, lp_elem, make_listpack, make_ziplist
from redshake.commands.slots import key_slot
from redshake.rdb import records as R
from redshake.rdb.dump import encode_length, encode_string
from redshake.rdb.parser import RdbParser
from redshake.rdb.primitives import RdbError, crc64
from redshake.rdb.values import decode_value


def reassemble(recs: list) -> dict:
    """key -> (type, kind, items) of every key, streamed or not: streamed elements are put
    back in place of their BIG_ELEMENT placeholders; KeyValue keys are decoded whole."""
    out: dict = {}
    cur = None
    elems: list[bytes] = []  # streamed strings whose item has not come yet
    piece: list[bytes] | None = None
    for r in recs:
        t = type(r)
        if t is R.BigKeyStart:
            assert cur is None
            cur, items = r, []
        elif t is R.BigElementStart:
            assert cur is not None and piece is None and r.length > 0
            piece, length = [], r.length
        elif t is R.BigElementPart:
            assert piece is not None and r.pieces
            assert all(0 < len(x) <= 1 << 20 for x in r.pieces)
            piece.extend(r.pieces)
        elif t is R.BigElementEnd:
            assert piece is not None
            elems.append(b"".join(piece))
            assert len(elems[-1]) == length
            piece = None
        elif t is R.BigKeyPart:
            assert cur is not None and piece is None and r.items
            for it in r.items:
                if it is R.BIG_ELEMENT:
                    it = elems.pop(0)
                elif isinstance(it, tuple):
                    it = tuple(elems.pop(0) if x is R.BIG_ELEMENT else x for x in it)
                items.append(it)
        elif t is R.BigKeyEnd:
            assert not elems and piece is None
            out[cur.key] = (cur.type, cur.kind, items)
            cur = None
        elif t is R.KeyValue:
            assert cur is None
            out[r.key] = (r.type, None, decode_value(r.type, r.raw, valkey=False))
    assert cur is None
    return out


def _items(typ: int, value) -> list:
    if typ == 1:
        return value.items
    if typ == 2:
        return list(value.members)
    if typ == 4:
        return list(value.pairs)
    return list(value.items)


# ---- a synthetic RDB with every element type, huge raw and LZF strings in every role ------


def _lzf(data: bytes) -> bytes:
    comp = lzf.compress(data, len(data))
    assert comp is not None
    return b"\xc3" + encode_length(len(comp)) + encode_length(len(data)) + comp


def _raw(data: bytes) -> bytes:
    return encode_length(len(data)) + data


def _text(size: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    words = [bytes(rnd.choices(b"abcdefgh", k=rnd.randint(2, 7))) for _ in range(50)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rnd.choices(words, k=30)) + b" %d\n" % rnd.getrandbits(40)
    return bytes(out[:size])


def _elements_rdb() -> tuple[bytes, dict]:
    """An RDB (version 9) with a list (type 1), set (2), zsets (3 and 5) and hash (4) holding
    strings over 200 KiB (raw and LZF) in every role, and the items expected."""
    big = [os.urandom(300_000), _text(2_500_000, 1), os.urandom(1_200_000), _text(700_000, 2)]
    body = bytearray(b"\xfe\x00")
    want = {}

    def key(t: int, name: bytes, elems: list[bytes], items: list) -> None:
        body.extend(bytes((t,)) + _raw(name) + encode_length(len(elems)) + b"".join(elems))
        want[name] = (t, items)

    key(1, b"list", [_raw(b"a"), _raw(big[0]), _lzf(big[1]), _raw(b"b"), _lzf(big[3])],
        [b"a", big[0], big[1], b"b", big[3]])  # fmt: skip
    key(2, b"set", [_lzf(big[1]), _raw(b"m1"), _raw(big[2]), _raw(b"m2")],
        [big[1], b"m1", big[2], b"m2"])  # fmt: skip
    key(3, b"zset3", [_raw(b"x") + b"\x031.5", _raw(big[0]) + b"\x012", _lzf(big[3]) + b"\xfe"],
        [(b"x", b"1.5"), (big[0], b"2"), (big[3], b"inf")])  # fmt: skip
    key(5, b"zset5", [_lzf(big[1]) + struct.pack("<d", -0.25), _raw(b"y") + struct.pack("<d", 3)],
        [(big[1], b"-0.25"), (b"y", b"3.0")])  # fmt: skip
    key(4, b"hash", [
        _raw(b"f1") + _raw(b"v1"),
        _raw(b"f2") + _raw(big[2]),  # a huge raw value
        _lzf(big[1]) + _raw(b"v3"),  # a huge field
        _raw(big[0]) + _lzf(big[3]),  # both
        _raw(b"f5") + _lzf(big[1]),  # a huge LZF value
        _raw(b"f6") + encode_string(b"12345"),  # an integer-encoded value
    ], [(b"f1", b"v1"), (b"f2", big[2]), (big[1], b"v3"), (big[0], big[3]), (b"f5", big[1]),
        (b"f6", b"12345")])  # fmt: skip
    body += b"\x00\x01k\x01v"
    want[b"k"] = (0, None)
    data = b"REDIS0009" + bytes(body) + b"\xff"
    return data + struct.pack("<Q", crc64(data)), want


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parser_streams_huge_elements(seed: int) -> None:
    data, want = _elements_rdb()
    p = RdbParser(big_value_threshold=200 << 10, part_items=2)
    max_chunk = [300, 64 << 10, 1 << 20][seed - 1]
    recs = feed_in_chunks(p, data, seed, max_chunk, [], (1 << 20) + (400 << 10) + 2 * max_chunk)
    got = reassemble(recs)
    assert list(got) == list(want)
    for k, (t, items) in want.items():
        if t:
            assert got[k][0] == t and got[k][1] is not None, k
            assert got[k][2] == items, k
    roles = [(r.role, r.length) for r in recs if type(r) is R.BigElementStart]
    assert [x[0] for x in roles] == ["element"] * 3 + ["member"] * 5 + ["value", "field",
                                                                         "field", "value", "value"]  # fmt: skip
    # the items before a streamed element went out before it (list order)
    i = next(i for i, r in enumerate(recs) if type(r) is R.BigElementStart)
    assert type(recs[i - 1]) is R.BigKeyPart and recs[i - 1].items == [b"a"]
    # the same file parsed whole gives the same values
    whole = RdbParser()
    whole.feed(data)
    plain = reassemble(list(whole.records()))
    for k, (t, items) in want.items():
        if t in (1, 2, 4):
            assert _items(t, plain[k][2]) == items, k
        elif t:
            assert [(m, float(s)) for m, s in _items(t, plain[k][2])] == [
                (m, float(s)) for m, s in items
            ], k


def _corpus_files() -> list[dict]:
    return [f for f in RDB_FILES if not expect_error(f)
            and set(f["rdb"]["types"]) & {"LIST", "SET", "ZSET", "HASH", "ZSET_2"}]  # fmt: skip


@pytest.mark.parametrize("f", _corpus_files(), ids=lambda f: f["path"])
def test_corpus_elements_streamed_with_tiny_threshold(f: dict) -> None:
    """With a 1-byte threshold every string longer than one byte of a list, set, zset or hash
    of types 1 to 5 is streamed as an element: put back in place, the values equal the
    values decoded whole."""
    from helpers import TESTDATA

    data = (TESTDATA / f["path"]).read_bytes()
    whole = RdbParser()
    whole.feed(data)
    want = {r.key: r for r in whole.records() if type(r) is R.KeyValue and r.type in (1, 2, 3, 4, 5)}
    assert want
    p = RdbParser(big_value_threshold=1, part_items=3)
    recs = feed_in_chunks(p, data, len(data), 16, [])
    recs = [r for r in recs if type(r) is not R.KeyValue or r.type in (1, 2, 3, 4, 5)]
    got = reassemble(recs)
    for k, kv in want.items():
        t, kind, items = got[k]
        value = decode_value(kv.type, kv.raw, valkey=whole.is_valkey)
        if kind is None:
            assert items == value
        elif t in (3, 5):
            assert [(m, float(s)) for m, s in items] == [
                (m, float(s)) for m, s in _items(t, value)
            ], k
        else:
            assert items == _items(t, value), k


def test_corrupt_lzf_element_fails_with_its_key() -> None:
    value = _text(600_000, 5)
    enc = bytearray(_lzf(value))
    enc[len(enc) // 2 : len(enc) // 2 + 40] = b"\xff" * 40  # back-references out of range
    body = b"\xfe\x00\x04" + _raw(b"hk") + b"\x02" + _raw(b"f") + _raw(b"v") + _raw(b"g") + enc
    data = b"REDIS0009" + body + b"\xff"
    data += struct.pack("<Q", crc64(data))
    for seed in (1, 2):
        p = RdbParser(big_value_threshold=64 << 10)
        out: list = []
        with pytest.raises(RdbError) as ei:
            feed_in_chunks(p, data, seed, 50_000, out)
        assert ei.value.key == b"hk" and "LZF" in ei.value.message
        assert [type(r) for r in out[:4]] == [R.SelectDb, R.BigKeyStart, R.BigKeyPart,
                                              R.BigElementStart]  # fmt: skip
        assert out[2].items == [(b"f", b"v")] and out[3].role == "value"


def test_temp_key_names_share_the_key_slot() -> None:
    from redshake.readers.rdb_entries import temp_key_tag

    rnd = random.Random(7)
    for key in [b"", b"a", b"{user1}x", b"h" * 100] + [rnd.randbytes(12) for _ in range(50)]:
        tag = temp_key_tag(key_slot(key))
        assert b"{" not in tag and b"}" not in tag and 0 < len(tag) <= 4
        assert key_slot(b"{" + tag + b"}redshake:tmp:1") == key_slot(key)


@pytest.mark.parametrize("target", ["redis-7.0", "redis-6.0"])
def test_converter_builds_huge_elements_on_a_server(servers, target):
    """Every role (list element, set and zset member, hash field, value, both), raw and LZF,
    types 1 to 5: the commands written with a small threshold rebuild exactly the values a
    plain RESTORE gives."""
    from redshake.readers.rdb_entries import RdbToEntries, TargetCaps

    data, want = _elements_rdb()
    dst, ref = servers.start(target), servers.start(target)
    for server, threshold in ((dst, 200 << 10), (ref, 1 << 30)):
        ver = server.version
        caps = TargetCaps(ver, False, 9, 512 * MB, lambda v, valkey: v <= 9)
        conv = RdbToEntries(caps, src_version=9, src_valkey=False, behavior="rewrite")
        p = RdbParser(big_value_threshold=threshold, part_items=2)
        c = server.client()
        for rec in feed_in_chunks(p, data, 5, 100_000, []):
            for e in conv.convert(rec):
                c.execute_command(*e.argv)
        n = conv.methods["commands_streamed"]
        assert n == (5 if server is dst else 0)
    assert not list(dst.client().scan_iter(match="*redshake:tmp*"))
    assert assert_same_data(ref, dst) == len(want)
    assert dst.client().lrange(b"list", 0, -1) == want[b"list"][1]


# ---- real servers, the CLI with its default 16 MiB threshold ---------------------------------

MB = 1 << 20


def _source_with_huge_elements(servers):
    """A redis-7.0 source whose hash (type 4) holds an 80 MiB compressible value (LZF in the
    RDB, about 27 MiB compressed) and a 40 MiB random one (raw), whose set (type 2) and zset
    (type 5) hold a 40 MiB random member, beside small elements."""

    src = servers.start("redis-7.0")
    c = src.client()
    comp = compressible(80 * MB, 3)
    c.hset(b"h", mapping={b"a": b"1", b"lz": comp, b"b": b"2" * 100})
    del comp
    c.hset(b"h", b"raw", os.urandom(40 * MB))
    c.hset(b"h", mapping={b"f%d" % i: b"v%d" % i for i in range(1000)})
    c.pexpire(b"h", 3_600_000)
    c.sadd(b"s", *[b"m%d" % i for i in range(500)])
    c.sadd(b"s", os.urandom(40 * MB))
    c.zadd(b"z", {b"x": 1, b"y": 2.5})
    c.zadd(b"z", {os.urandom(40 * MB): -1.25})
    c.set(b"plain", b"v")
    c.save()
    return src


def test_restore_huge_elements_with_bounded_memory(servers, tmp_path):
    src = _source_with_huge_elements(servers)
    rdb = src.dir / "dump.rdb"
    # what the parser makes of it with the default threshold
    p = RdbParser()
    starts = []
    with open(rdb, "rb") as f:
        while chunk := f.read(1 * MB):
            p.feed(chunk)
            starts += [(r.role, r.length) for r in p.records() if type(r) is R.BigElementStart]
    p.finish()
    assert sorted(starts) == sorted([("value", 80 * MB), ("value", 40 * MB), ("member", 40 * MB),
                                     ("member", 40 * MB)])  # fmt: skip
    assert rdb.stat().st_size < 160 * MB  # the 80 MiB value is LZF-compressed (to ~33 MiB)
    dst = servers.start("redis-7.0")
    code, out, peak, elapsed = run_rdb_restore(src, dst, tmp_path)
    assert code == 0, out[-3000:]
    assert "commands_streamed=3" in out, out[-2000:]
    assert_same_data(src, dst)
    assert not list(dst.client().scan_iter(match="*redshake:tmp*"))
    print(f"\nhuge elements (80+40+40+40 MiB): peak RSS {peak / 1e6:.0f} MB, {elapsed:.1f}s")
    # held whole, one 80 MiB element costs several times its size; streamed, the peak is the
    # interpreter plus the up to 16 MiB the parser buffers before it decides to stream
    assert 0 < peak < 80 * MB, f"peak RSS {peak / 1e6:.0f} MB (measured: about 60 MB)"


def test_restore_huge_element_into_cluster(servers, tmp_path):
    """Into a cluster: the temporary key lives in the slot of its key (the EVAL would fail
    with CROSSSLOT otherwise), and is gone afterwards."""
    from helpers import run_redshake

    src = servers.start("redis-7.0")
    c = src.client()
    big = os.urandom(20 * MB)
    keys = [b"hash:%d" % i for i in range(3)]
    for k in keys:
        c.hset(k, mapping={b"f": b"v", b"big": big, b"g": b"w"})
    c.sadd(b"{hash:1}set", b"a", big[: 17 * MB], b"b")
    c.save()
    dst = servers.cluster("redis-7.0", masters=3)
    cfg = write_config(tmp_path / "shake.toml", {
        "rdb_reader": {"filepath": str(src.dir / "dump.rdb")},
        "redis_writer": {"address": dst.seed, "cluster": True},
        "advanced": {"dir": str(tmp_path / "w"), "log_interval": 0},
    })  # fmt: skip
    r = run_redshake(cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    slots = set()
    for k in keys:
        slot = key_slot(k)
        slots.add(dst.owner_of(slot).port)
        with dst.owner_of(slot).client() as cl:
            assert cl.hgetall(k) == {b"f": b"v", b"big": big, b"g": b"w"}
    assert len(slots) > 1  # the keys are on different masters
    with dst.owner_of(key_slot(b"{hash:1}set")).client() as cl:
        assert cl.smembers(b"{hash:1}set") == {b"a", big[: 17 * MB], b"b"}
    for m in dst.masters:
        with m.client() as cl:
            assert not list(cl.scan_iter(match="*redshake:tmp*"))


def test_huge_elements_with_a_filter_are_written_as_plain_items(servers, tmp_path):
    """With a [filter] the commands must be the real ones (a key filter would not see a
    temporary key's writes): huge elements are reassembled in memory instead, so filtered
    keys are dropped whole and no temporary key is ever written."""
    from helpers import run_redshake

    src = servers.start("redis-7.0")
    c = src.client()
    big = os.urandom(20 * MB)
    for k in (b"keep:1", b"drop:1"):
        c.hset(k, mapping={b"f": b"v", b"big": big})
    c.sadd(b"keep:set", b"a", big[: 17 * MB])
    c.save()
    dst = servers.start("redis-7.0")
    cfg = write_config(tmp_path / "shake.toml", {
        "rdb_reader": {"filepath": str(src.dir / "dump.rdb")},
        "redis_writer": {"address": dst.address},
        "filter": {"block_key_prefix": ["drop:"]},
        "advanced": {"dir": str(tmp_path / "w"), "log_interval": 0},
    })  # fmt: skip
    r = run_redshake(cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    d = dst.client()
    assert sorted(d.keys()) == [b"keep:1", b"keep:set"]
    assert d.hgetall(b"keep:1") == {b"f": b"v", b"big": big}
    assert d.smembers(b"keep:set") == {b"a", big[: 17 * MB]}


# ---- hashes with field TTLs: Redis 22 (pre-GA) / 24 (HASH_METADATA), Valkey 22 (HASH_2) -----

_FUTURE = 4_000_000_000_000


def _hfe_rdb(flavor: str) -> tuple[bytes, list]:
    """An RDB with one hash with field TTLs (``flavor``: "redis24", "redis22" (pre-GA) or
    "valkey22") whose fields and values include strings over 200 KiB (raw and LZF), then a
    plain string; and the items (field, value, expire ms or -1) expected."""
    big = [os.urandom(300_000), _text(2_500_000, 11), os.urandom(1_200_000), _text(700_000, 12)]
    elems = [
        (_raw(b"f1"), _raw(b"v1"), b"f1", b"v1", -1),
        (_raw(b"f2"), _raw(big[2]), b"f2", big[2], _FUTURE + 5),  # a huge raw value
        (_lzf(big[1]), _raw(b"v3"), big[1], b"v3", _FUTURE + 7),  # a huge LZF field
        (_raw(big[0]), _lzf(big[3]), big[0], big[3], _FUTURE),  # both
        (_raw(b"f5"), _lzf(big[1]), b"f5", big[1], -1),  # a huge LZF value, no TTL
        (_raw(b"f6"), encode_string(b"12345"), b"f6", b"12345", _FUTURE + 1),
    ]
    want = [(f, v, e) for _, _, f, v, e in elems]
    if flavor == "valkey22":
        magic, t, head = b"VALKEY080", 22, b""
        body = b"".join(fe + ve + struct.pack("<q", e) for fe, ve, _, _, e in elems)
    else:
        magic, t = b"REDIS0012", 24 if flavor == "redis24" else 22
        base = _FUTURE if t == 24 else 1  # type 24: TTLs relative to the min-expire (+1)
        head = struct.pack("<q", _FUTURE) if t == 24 else b""
        body = b"".join(encode_length(e - base + 1 if e >= 0 else 0) + fe + ve
                        for fe, ve, _, _, e in elems)  # fmt: skip
    data = (magic + b"\xfe\x00" + bytes((t,)) + _raw(b"hfe") + head + encode_length(len(elems))
            + body + b"\x00\x01k\x01v\xff")  # fmt: skip
    return data + struct.pack("<Q", crc64(data)), want


@pytest.mark.parametrize("flavor", ["redis24", "redis22", "valkey22"])
@pytest.mark.parametrize("seed", [1, 2])
def test_parser_streams_huge_elements_of_hashes_with_field_ttls(flavor: str, seed: int) -> None:
    data, want = _hfe_rdb(flavor)
    t = 24 if flavor == "redis24" else 22
    p = RdbParser(big_value_threshold=200 << 10, part_items=2)
    max_chunk = [300, 1 << 20][seed - 1]
    recs = feed_in_chunks(p, data, seed, max_chunk, [], (1 << 20) + (400 << 10) + 2 * max_chunk)
    got = reassemble(recs)
    assert got[b"hfe"] == (t, "hash", want)
    assert [r.role for r in recs if type(r) is R.BigElementStart] == [
        "value", "field", "field", "value", "value"]  # fmt: skip
    # the same file parsed whole decodes to the same pairs and field TTLs
    whole = RdbParser()
    whole.feed(data)
    (kv,) = [r for r in whole.records() if type(r) is R.KeyValue and r.key == b"hfe"]
    value = decode_value(t, kv.raw, valkey=whole.is_valkey)
    assert value.pairs == [(f, v) for f, v, _ in want]
    assert value.field_expire == {f: e for f, _, e in want if e >= 0}


def test_corpus_hashes_with_field_ttls_streamed_with_tiny_threshold() -> None:
    """Every corpus file with Redis 22/24 or Valkey 22 hashes, with a 1-byte threshold (every
    field and value longer than one byte streamed as an element): the same pairs and TTLs."""
    from helpers import TESTDATA

    files = [f for f in RDB_FILES if not expect_error(f) and set(f["rdb"]["types"])
             & {"HASH_METADATA", "HASH_METADATA_PRE_GA", "HASH_2"}]  # fmt: skip
    assert files
    n = 0
    for f in files:
        data = (TESTDATA / f["path"]).read_bytes()
        whole = RdbParser()
        whole.feed(data)
        want = {r.key: r for r in whole.records() if type(r) is R.KeyValue and r.type in (22, 24)}
        p = RdbParser(big_value_threshold=1, part_items=3)
        recs = feed_in_chunks(p, data, 3, 16, [])
        recs = [r for r in recs if type(r) is not R.KeyValue]
        got = reassemble(recs)
        for k, kv in want.items():
            value = decode_value(kv.type, kv.raw, valkey=whole.is_valkey)
            t, kind, items = got[k]
            assert (t, kind) == (kv.type, "hash")
            assert [(a, b) for a, b, _ in items] == value.pairs, (f["path"], k)
            assert {a: e for a, _, e in items if e >= 0} == (value.field_expire or {})
            n += 1
        assert any(type(r) is R.BigElementStart for r in recs)
    assert n


@pytest.mark.parametrize("temp_keys", [True, False])
@pytest.mark.parametrize("flavor", ["redis24", "redis22", "valkey22"])
def test_converter_builds_huge_elements_with_field_ttls(servers, flavor, temp_keys):
    """On Valkey 9.1 (hash field expiration): the huge fields and values of a hash with field
    TTLs, built in temporary keys (the EVAL sets the field TTL) or reassembled in memory."""
    from redshake.readers.rdb_entries import RdbToEntries, TargetCaps

    data, want = _hfe_rdb(flavor)
    dst = servers.start("valkey-9.1")
    caps = TargetCaps(dst.version, True, 80, 512 * MB, lambda v, valkey: False,
                      temp_keys=temp_keys)  # fmt: skip
    conv = RdbToEntries(caps, src_version=12 if flavor != "valkey22" else 80,
                        src_valkey=flavor == "valkey22", behavior="rewrite")  # fmt: skip
    p = RdbParser(big_value_threshold=200 << 10, part_items=2)
    c = dst.client()
    evals = 0
    for rec in feed_in_chunks(p, data, 5, 100_000, []):
        for e in conv.convert(rec):
            evals += e.argv[0] == b"EVAL"
            c.execute_command(*e.argv)
    assert conv.methods["commands_streamed"] == 1
    assert evals == (4 if temp_keys else 0)  # the items with a streamed string
    assert not list(c.scan_iter(match="*redshake:tmp*"))
    assert c.hgetall(b"hfe") == {f: v for f, v, _ in want}
    fields = [f for f, _, _ in want]
    got = c.execute_command("HPEXPIRETIME", b"hfe", "FIELDS", len(fields), *fields)
    assert got == [e for _, _, e in want]
    assert c.get(b"k") == b"v"


def test_converter_refuses_field_ttls_of_a_streamed_element_on_an_old_target() -> None:
    from redshake.readers.rdb_entries import ConversionError, RdbToEntries, TargetCaps

    data, _ = _hfe_rdb("redis24")
    caps = TargetCaps((7, 0, 0), False, 10, 512 * MB, lambda v, valkey: False)
    conv = RdbToEntries(caps, src_version=12, src_valkey=False, behavior="rewrite")
    p = RdbParser(big_value_threshold=200 << 10)
    p.feed(data)
    with pytest.raises(ConversionError, match="HPEXPIREAT"):
        for rec in p.records():
            conv.convert(rec)


def test_restore_hash_with_field_ttls_and_huge_values_valkey(servers, tmp_path):
    """Valkey 9.1 source and target: a hash with field TTLs (type 22) holding a 30 MiB random
    value and a 40 MiB compressible one (LZF in the RDB) with TTLs, restored by the CLI with
    its default 16 MiB threshold: same fields, values and field TTLs, bounded memory."""

    src = servers.start("valkey-9.1")
    c = src.client()
    raw = os.urandom(30 * MB)
    c.hset(b"h", mapping={b"a": b"1", b"raw": raw, b"b": b"2" * 100})
    del raw
    c.hset(b"h", b"lz", compressible(40 * MB, 4))
    c.hset(b"h", mapping={b"f%d" % i: b"v%d" % i for i in range(500)})
    c.execute_command("HPEXPIRE", b"h", 3_600_000, "FIELDS", 3, b"raw", b"a", b"f7")
    c.execute_command("HPEXPIRE", b"h", 7_200_000, "FIELDS", 1, b"lz")
    c.set(b"plain", b"v")
    c.save()
    rdb = src.dir / "dump.rdb"
    p = RdbParser()
    starts, types = [], set()
    with open(rdb, "rb") as f:
        while chunk := f.read(1 * MB):
            p.feed(chunk)
            for r in p.records():
                if type(r) is R.BigElementStart:
                    starts.append((r.role, r.length))
                elif type(r) is R.BigKeyStart:
                    types.add(r.type)
    p.finish()
    assert types == {22} and sorted(starts) == [("value", 30 * MB), ("value", 40 * MB)]
    assert rdb.stat().st_size < 60 * MB  # the 40 MiB value is LZF-compressed
    dst = servers.start("valkey-9.1")
    code, out, peak, elapsed = run_rdb_restore(src, dst, tmp_path)
    assert code == 0, out[-3000:]
    assert "commands_streamed=1" in out, out[-2000:]
    d = dst.client()
    assert not list(d.scan_iter(match="*redshake:tmp*"))
    assert d.hgetall(b"h") == c.hgetall(b"h")
    fields = list(c.hkeys(b"h"))
    ttl_src = c.execute_command("HPEXPIRETIME", b"h", "FIELDS", len(fields), *fields)
    ttl_dst = d.execute_command("HPEXPIRETIME", b"h", "FIELDS", len(fields), *fields)
    assert ttl_dst == ttl_src and sum(1 for x in ttl_src if x > 0) == 4
    assert d.get(b"plain") == b"v"
    print(f"\nhash with field TTLs (30+40 MiB): peak RSS {peak / 1e6:.0f} MB, {elapsed:.1f}s")
    # measured: 45-59 MB; held whole: 218 MB
    assert 0 < peak < 100 * MB, f"peak RSS {peak / 1e6:.0f} MB"


# ---- quicklists (types 14 and 18): huge node blobs parsed piecewise ---------------------------


def _zl_entries(elems: list) -> list[bytes]:
    """Ziplist entries (with real prevlens) of ``elems``: bytes, or int for an int16."""
    out, prev = [], 0
    for x in elems:
        pl = bytes((prev,)) if prev < 254 else b"\xfe" + struct.pack("<I", prev)
        if isinstance(x, int):
            enc = b"\xc0" + struct.pack("<h", x)
        elif len(x) < 64:
            enc = bytes((len(x),)) + x
        elif len(x) < 16384:
            enc = bytes((0x40 | (len(x) >> 8), len(x) & 0xFF)) + x
        else:
            enc = b"\x80" + struct.pack(">I", len(x)) + x
        out.append(pl + enc)
        prev = len(pl) + len(enc)
    return out


def _quicklist_rdb() -> tuple[bytes, dict]:
    """RDBs with quicklists: type 18 (version 10) and type 14 (version 9), whose node blobs
    (raw and LZF) hold strings over 200 KiB among small entries, PLAIN nodes, and a node of
    many small entries over 200 KiB; and the elements expected per key."""

    big = [os.urandom(300_000), _text(2_500_000, 21), os.urandom(1_200_000), _text(700_000, 22)]
    many = [b"e%d" % i for i in range(40_000)]  # a 300 KB listpack / ziplist node

    def lp(xs: list) -> bytes:
        return make_listpack([lp_elem(x) for x in xs])

    def el(x) -> bytes:
        return str(x).encode() if isinstance(x, int) else x

    nodes18 = [  # (container, blob as stored, elements)
        (2, _raw(lp([b"a", 1, -5000, b"b" * 100])), [b"a", 1, -5000, b"b" * 100]),
        (1, _raw(big[0]), [big[0]]),  # PLAIN, raw
        (2, _raw(lp([b"c", big[2], 7, b"d"])), [b"c", big[2], 7, b"d"]),  # huge raw node
        (2, _lzf(lp([big[1], 2**40, b"e", big[3]])), [big[1], 2**40, b"e", big[3]]),  # LZF
        (1, _lzf(big[3]), [big[3]]),  # PLAIN, LZF
        (2, _lzf(lp([b"f" * 50, 300, b"f" * 50])), [b"f" * 50, 300, b"f" * 50]),
        (2, _raw(lp(many)), many),  # over the threshold without a huge entry
        (2, _lzf(lp([big[1]])), [big[1]]),  # a node with only a huge entry
    ]
    body18 = b"".join(encode_length(c) + blob for c, blob, _ in nodes18)
    nodes14 = [
        (_raw(make_ziplist(_zl_entries([b"x", 12, big[0], b"y" * 300, -7]))),
         [b"x", 12, big[0], b"y" * 300, -7]),
        (_lzf(make_ziplist(_zl_entries([big[1], b"z"]))), [big[1], b"z"]),
        (_lzf(make_ziplist(_zl_entries(many))), many),
        (_raw(make_ziplist(_zl_entries([b"w"]))), [b"w"]),
    ]  # fmt: skip
    body14 = b"".join(blob for blob, _ in nodes14)
    out = {}
    for ver, t, n, body, nodes in ((10, 18, len(nodes18), body18, nodes18),
                                    (9, 14, len(nodes14), body14, nodes14)):  # fmt: skip
        data = (b"REDIS%04d" % ver + b"\xfe\x00" + bytes((t,)) + _raw(b"ql") + encode_length(n)
                + body + b"\x00\x01k\x01v\xff")  # fmt: skip
        out[t] = (data + struct.pack("<Q", crc64(data)), [el(x) for *_, xs in nodes for x in xs])
    return out[18], out[14]


@pytest.mark.parametrize("t", [18, 14])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parser_streams_huge_quicklist_nodes(t: int, seed: int) -> None:
    (data, want) = _quicklist_rdb()[t == 14]
    p = RdbParser(big_value_threshold=200 << 10, part_items=500)
    max_chunk = [300, 64 << 10, 1 << 20][seed - 1]
    recs = feed_in_chunks(p, data, seed, max_chunk, [], (1 << 20) + (400 << 10) + 2 * max_chunk)
    got = reassemble(recs)
    assert got[b"ql"] == (t, "list", want)
    assert got[b"k"][0] == 0
    n_big = sum(1 for x in want if len(x) > 200 << 10)
    starts = [r for r in recs if type(r) is R.BigElementStart]
    assert len(starts) == n_big and {r.role for r in starts} == {"element"}
    assert max(len(r.items) for r in recs if type(r) is R.BigKeyPart) <= 500
    # the same file parsed whole decodes to the same elements
    whole = RdbParser()
    whole.feed(data)
    (kv,) = [r for r in whole.records() if type(r) is R.KeyValue and r.key == b"ql"]
    assert decode_value(t, kv.raw, valkey=False).items == want


def test_quicklist_nodes_streamed_with_tiny_threshold() -> None:
    """Threshold 1, small chunks: every node blob parsed piecewise, every entry string longer
    than one byte streamed as an element."""
    for data, want in _quicklist_rdb():
        p = RdbParser(big_value_threshold=1, part_items=3)
        got = reassemble(feed_in_chunks(p, data, 4, 70_000, []))
        assert got[b"ql"][2] == want


def _corrupt_node_rdb(kind: str) -> bytes:
    big = _text(600_000, 5)
    blob = bytearray(make_listpack([lp_elem(b"a"), lp_elem(big), lp_elem(b"b")]))
    if kind == "lzf":
        enc = bytearray(_lzf(bytes(blob)))
        enc[len(enc) // 2 : len(enc) // 2 + 40] = b"\xff" * 40  # back-references out of range
    else:
        blob[-4] = 0xF7  # the last entry's encoding byte: invalid
        enc = bytearray(_raw(bytes(blob)))
    body = b"\xfe\x00\x12" + _raw(b"ql") + b"\x02" + b"\x02" + _raw(make_listpack(
        [lp_elem(b"x")])) + b"\x02" + enc  # fmt: skip
    data = b"REDIS0010" + body + b"\xff"
    return data + struct.pack("<Q", crc64(data))


@pytest.mark.parametrize("kind", ["lzf", "encoding"])
def test_corrupt_quicklist_node_fails_with_its_key(kind: str) -> None:
    data = _corrupt_node_rdb(kind)
    for seed in (1, 2):
        p = RdbParser(big_value_threshold=64 << 10)
        out: list = []
        with pytest.raises(RdbError) as ei:
            feed_in_chunks(p, data, seed, 50_000, out)
        assert ei.value.key == b"ql" and "quicklist node" in ei.value.message
        assert ("LZF" if kind == "lzf" else "encoding byte") in ei.value.message
        assert [type(r) for r in out[:4]] == [R.SelectDb, R.BigKeyStart, R.BigKeyPart,
                                              R.BigElementStart]  # fmt: skip
        assert out[2].items == [b"x", b"a"] and out[3].length == 600_000
        assert (R.BigElementEnd in map(type, out)) == (kind == "encoding")


def test_restore_list_with_huge_elements_with_bounded_memory(servers, tmp_path):
    """A redis-7.0 list (type 18) with small elements and a 40 MiB random element (raw node
    blob) and a 60 MiB compressible one (LZF node blob), each in a listpack node of its own,
    and a list with a 30 MiB element in a PLAIN node:
    the CLI with its default 16 MiB threshold parses these nodes piecewise and streams the
    elements, the rebuilt list is the same, and memory stays far below an element's size."""
    from redshake.rdb.parser import _big_head
    from redshake.rdb.primitives import read_length, skip_string

    src = servers.start("redis-7.0")
    c = src.client()
    c.rpush(b"l", *[b"a%d" % i for i in range(3000)])
    c.rpush(b"l", os.urandom(40 * MB))
    c.rpush(b"l", *[i for i in range(2000)])
    c.rpush(b"l", compressible(60 * MB, 5))
    c.rpush(b"l", b"last")
    # elements over 1 MiB in PLAIN nodes (Redis 7 does so over 1 GiB unless told otherwise)
    c.execute_command("DEBUG", "QUICKLIST-PACKED-THRESHOLD", str(MB))
    c.rpush(b"pl", b"x", b"y", os.urandom(30 * MB), b"z")
    c.set(b"plain", b"v")
    c.save()
    rdb = src.dir / "dump.rdb"
    p = RdbParser()
    starts, offsets = [], {}
    with open(rdb, "rb") as f:
        while chunk := f.read(1 * MB):
            p.feed(chunk)
            for r in p.records():
                if type(r) is R.BigElementStart:
                    starts.append(r.length)
                elif type(r) is R.BigKeyStart:
                    offsets[r.key] = r.offset
    p.finish()
    assert sorted(starts) == [30 * MB, 40 * MB, 60 * MB]

    def huge_nodes(data: bytes, name: bytes) -> list:
        i = offsets[name]
        assert data[i : i + 2 + len(name)] == b"\x12" + _raw(name)
        n, i = read_length(data, i + 2 + len(name))
        huge = []
        for _ in range(n):
            cont, i = read_length(data, i)
            h = _big_head(data, i, 16 * MB)
            if h is not None:
                huge.append((cont, h[1] if h[2] < 0 else h[2], h[2] >= 0))
            i = skip_string(data, i)
        return sorted(huge)

    # the huge elements are nodes of their own: listpacks of one entry (6-byte header, 5-byte
    # entry header, 4-byte backlen, end byte), or a PLAIN node
    data = rdb.read_bytes()
    assert huge_nodes(data, b"l") == [(2, 40 * MB + 16, False), (2, 60 * MB + 16, True)]
    assert huge_nodes(data, b"pl") == [(1, 30 * MB, False)]
    del data
    dst = servers.start("redis-7.0")
    code, out, peak, elapsed = run_rdb_restore(src, dst, tmp_path)
    assert code == 0, out[-3000:]
    assert "commands_streamed=2" in out, out[-2000:]
    assert_same_data(src, dst)
    assert not list(dst.client().scan_iter(match="*redshake:tmp*"))
    print(f"\nlists with huge elements (100+30 MiB): peak RSS {peak / 1e6:.0f} MB, {elapsed:.1f}s")
    # measured: 45-72 MB; held whole: 340 MB
    assert 0 < peak < 100 * MB, f"peak RSS {peak / 1e6:.0f} MB"
