"""Formats of servers newer than the ones installed here (Redis RDB 12-15, Valkey RDB 80/81),
the bytes whose meaning depends on the engine (22/23, 242/243/244), Redis 8.6 key metadata,
Redis 8 vector sets, and the newer commands in the command table.

No Redis 8.x or Valkey 9.2 binary exists here, so their files are built by hand from the
format's public description: the records of a real dump of a server we have (value layouts
0..21 are the same in every version that knows them), under the newer header, with the newer
opcodes inserted where those servers write them (SLOT_INFO after SELECTDB, KEY_META right
before a key's type byte). Where a real server can judge a file (valkey-9.1 loads VALKEY080
files, and REDIS files in relaxed mode), it does.
"""

from __future__ import annotations

import struct

from datagen import populate
from helpers import assert_same_data, restore_file, run_redshake, write_config
from redshake.commands.lookup import command_info
from redshake.rdb.dump import encode_length as L
from redshake.rdb.dump import encode_string as S
from redshake.rdb.modules import module_name_to_id
from redshake.rdb.parser import RdbParser, key_meta_class
from redshake.rdb.primitives import RdbError, crc64
from redshake.rdb.records import BigKeyStart, KeyValue, SelectDb, SlotImport, SlotInfo
from redshake.rdb.values import decode_value
from redshake.resp.conn import Connection

_KM_CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def _rdb(head: bytes, body: bytes) -> bytes:
    data = head + body + b"\xff"
    return data + struct.pack("<Q", crc64(data))


def _class_spec(name: str, ver: int, flags: int) -> bytes:
    """Redis 8.6 KEY_META class spec: 4 characters of 6 bits, 5-bit version, 3 flag bits."""
    v = 0
    for ch in name:
        v = (v << 6) | _KM_CHARSET.index(ch)
    return struct.pack("<I", (((v << 5) | ver) << 3) | flags)


# two ignorable classes (flags bit 0 = ALLOW_IGNORE), values as module-annotated streams:
# UINT 42, STRING "x" and SINT -1, DOUBLE 0.5, each ending with the module EOF opcode 0
KEY_META = (
    b"\xf3" + L(2)
    + _class_spec("TEST", 1, 1) + L(2) + L(42) + L(5) + S(b"x") + L(0)
    + _class_spec("ab_9", 0, 1) + L(1) + L((1 << 64) - 1) + L(4) + struct.pack("<d", 0.5) + L(0)
)  # fmt: skip


def _retag(data: bytes, head: bytes, *, meta_every: int = 0, slot_info: bool = False) -> tuple[bytes, int]:
    """A real dump's records under header ``head``: SLOT_INFO after each SELECTDB, KEY_META
    before the type byte of every ``meta_every``-th key. Returns (file, KEY_META blocks)."""
    p = RdbParser()
    p.feed(data)
    inserts: list[tuple[int, bytes]] = []
    n = metas = 0
    for rec in p.records():
        if slot_info and type(rec) is SelectDb:
            inserts.append((p.offset, b"\xf4" + L(100 + rec.db) + L(7) + L(1)))
        elif type(rec) in (KeyValue, BigKeyStart):
            n += 1
            if meta_every and n % meta_every == 0:
                q = rec.offset
                while data[q] in (0xFC, 0xFD, 0xF8, 0xF9):  # expire / idle / freq first
                    q += {0xFC: 9, 0xFD: 5, 0xF9: 2}.get(data[q], 2)
                inserts.append((q, KEY_META))
                metas += 1
    body, at = [], 9
    for pos, blob in sorted(inserts):
        body += [data[at:pos], blob]
        at = pos
    body.append(data[at : len(data) - 9])  # up to the EOF opcode and its CRC
    return _rdb(head, b"".join(body)), metas


def _parse(data: bytes) -> tuple[RdbParser, list]:
    p = RdbParser()
    p.feed(data)
    recs = list(p.records())
    p.finish()
    return p, recs


def _keys(recs: list) -> list[tuple[int, bytes, int, bytes, int]]:
    return [(r.db, r.key, r.type, bytes(r.raw), r.expire_ms) for r in recs if type(r) is KeyValue]


def _dir(tmp_path, name: str):
    d = tmp_path / name
    d.mkdir()
    return d


def _dump(server) -> bytes:
    c = server.client()
    c.save()
    return (server.dir / "dump.rdb").read_bytes()


def test_redis_rdb_12_to_15_into_servers_we_have(servers, tmp_path):
    """A real Redis 7.0 dump (every type, several dbs, TTLs, functions) under REDIS0012 ..
    REDIS0015, with SLOT_INFO and (13+) ignorable KEY_META blocks: parsed to the same records,
    restored into Redis 7.0 and Valkey 9.1 (payloads re-stamped for the target), compared key
    by key with the server the dump came from."""
    src = servers.start("redis-7.0")
    populate(src.client(), src.version, False)
    data = _dump(src)
    want = _keys(_parse(data)[1])
    assert len(want) > 30
    for name, versions in (("redis-7.0", (12, 13, 14, 15)), ("valkey-9.1", (13, 15))):
        dst = servers.start(name)
        for v in versions:
            f, metas = _retag(data, b"REDIS%04d" % v, meta_every=5 if v >= 13 else 0, slot_info=True)
            p, recs = _parse(f)
            assert _keys(recs) == want
            assert sum(type(r) is SlotInfo for r in recs) == sum(type(r) is SelectDb for r in recs) > 1
            assert p.key_meta_dropped == metas and (metas > 5) == (v >= 13)
            if metas:
                assert p.key_meta_classes == {"TEST": metas, "ab_9": metas}
            path = tmp_path / f"v{v}.rdb"
            path.write_bytes(f)
            r = restore_file(path, dst, _dir(tmp_path, f"{name}-{v}"))
            out = r.stdout + r.stderr
            assert r.returncode == 0, out[-3000:]
            assert ("key metadata of class 'TEST'" in out) == (v >= 13), out[-3000:]
            assert assert_same_data(src, dst) == len(want)
            libs = dst.client().execute_command("FUNCTION", "LIST")
            assert [lib[1] for lib in libs] == [b"testlib"], libs
            dst.client().flushall()
            dst.client().execute_command("FUNCTION", "FLUSH")


def _field_ttls(server) -> dict[tuple[int, bytes], list]:
    out = {}
    for db in (0, 3):
        c = server.client(db)
        for k in c.scan_iter(count=1000):
            if c.type(k) == b"hash":
                fields = c.hkeys(k)
                out[(db, k)] = sorted(
                    zip(fields, c.execute_command("HPEXPIRETIME", k, "FIELDS", len(fields), *fields),
                        strict=True)
                )  # fmt: skip
    return out


def test_valkey_80_and_81_files_into_valkey91(servers, tmp_path):
    """A real Valkey 9.1 dump (VALKEY080, hashes with field TTLs) with SLOT_INFO added - which
    valkey-9.1 itself loads - and the same records under VALKEY081 (Valkey 9.2): both restored
    into Valkey 9.1, the 81 one converted (9.1 takes no RDB 81 payload), compared key by key and
    field TTL by field TTL."""
    src = servers.start("valkey-9.1")
    populate(src.client(), src.version, True)
    data = _dump(src)
    assert data[:9] == b"VALKEY080"
    want = _keys(_parse(data)[1])
    assert any(t == 22 for _db, _k, t, _raw, _e in want)  # Valkey HASH_2
    src_ttls = _field_ttls(src)
    assert any(e > 0 for pairs in src_ttls.values() for _f, e in pairs)
    dst = servers.start("valkey-9.1")
    for head in (b"VALKEY080", b"VALKEY081"):
        f, _ = _retag(data, head, slot_info=True)
        assert _keys(_parse(f)[1]) == want
        path = tmp_path / f"{head.decode()}.rdb"
        path.write_bytes(f)
        if head == b"VALKEY080":  # the real server accepts the file as built
            own = servers.start("valkey-9.1", dir=tmp_path, dbfilename=path.name)
            assert assert_same_data(src, own) == len(want)
        r = restore_file(path, dst, _dir(tmp_path, head.decode()))
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert assert_same_data(src, dst) == len(want)
        assert _field_ttls(dst) == src_ttls
        dst.client().flushall()
        dst.client().execute_command("FUNCTION", "FLUSH")


def test_colliding_bytes_follow_magic_and_version():
    """Type 22 and opcodes 243/244 mean different things (or nothing) by engine and version."""
    exp = 1_900_000_000_000
    valkey22 = L(2) + S(b"f1") + S(b"v1") + struct.pack("<q", exp) + S(b"f2") + S(b"v2") + struct.pack("<q", -1)
    redis22 = L(2) + L(exp) + S(b"f1") + S(b"v1") + L(0) + S(b"f2") + S(b"v2")
    _, recs = _parse(_rdb(b"VALKEY080", b"\xfe\x00\x16\x01h" + valkey22))
    (kv,) = [r for r in recs if type(r) is KeyValue]
    v = decode_value(22, kv.raw, valkey=True)
    assert v.pairs == [(b"f1", b"v1"), (b"f2", b"v2")] and v.field_expire == {b"f1": exp}
    _, recs = _parse(_rdb(b"REDIS0012", b"\xfe\x00\x16\x01h" + redis22))
    (kv,) = [r for r in recs if type(r) is KeyValue]
    v = decode_value(22, kv.raw, valkey=False)
    assert v.pairs == [(b"f1", b"v1"), (b"f2", b"v2")] and v.field_expire == {b"f1": exp}
    # the Valkey bytes under the Redis header do not even parse (a field length of 0x66..)
    try:
        _parse(_rdb(b"REDIS0012", b"\xfe\x00\x16\x01h" + valkey22))
        raise AssertionError("Valkey HASH_2 bytes parsed under REDIS0012")
    except RdbError as e:
        assert "truncated" in e.message, e
    kv0 = b"\x00\x01k\x01v"
    # 243: Redis 13+ KEY_META (left out, key kept); Valkey SLOT_IMPORT; nothing in Redis 12
    p, recs = _parse(_rdb(b"REDIS0013", b"\xfe\x00" + KEY_META + kv0))
    assert _keys(recs) == [(0, b"k", 0, b"\x01v", -1)] and p.key_meta_dropped == 1
    for head, msg in ((b"VALKEY080", "SLOT_IMPORT opcode 243"), (b"REDIS0012", "unknown opcode 243")):
        try:
            _parse(_rdb(head, b"\xfe\x00" + KEY_META + kv0))
            raise AssertionError(head)
        except RdbError as e:
            assert msg in e.message and e.offset == 11, (head, e)
    # 244 SLOT_INFO: Redis 12+ and Valkey 80/81 (valkey-9.1 loads it), not RDB 11
    for head in (b"REDIS0012", b"REDIS0015", b"VALKEY080", b"VALKEY081"):
        _, recs = _parse(_rdb(head, b"\xfe\x00\xf4" + L(5) + L(1) + L(0) + kv0))
        assert [r for r in recs if type(r) is SlotInfo] == [SlotInfo(5, 1, 0)]
    # the class spec decodes as Redis writes it
    assert key_meta_class(struct.unpack("<I", _class_spec("ab_9", 7, 5))[0]) == ("ab_9", 7, 5)


def test_unknown_type_or_opcode_stops_before_writing(servers, tmp_path):
    """Bytes a version does not define, or whose layout is not implemented, after a good key:
    the parser stops there naming the byte and the header; through the CLI (three of them):
    exit 2, nothing written."""
    dst = servers.start("redis-7.0")
    kv0 = b"\x00\x02ok\x01v"
    cases = [
        (b"REDIS0013", b"\x1b\x01s" + L(0), "unknown value type 27 in REDIS0013"),
        (b"REDIS0012", b"\x1a\x01s" + L(0), "unknown value type 26 in REDIS0012"),
        (b"REDIS0014", b"\x1c\x01a" + L(0), "value type 28 (Redis array"),
        (b"REDIS0015", b"\x1f\x01h" + L(0), "value type 31 (Redis hash template"),
        (b"VALKEY081", b"\x17\x01p" + L(0), "value type 23 (Valkey 9.2 PATH_HASH"),
        (b"VALKEY080", b"\x17\x01p" + L(0), "unknown value type 23 in VALKEY080"),
        (b"VALKEY081", b"\xf2" + L(0), "unknown opcode 242 in VALKEY081"),
        (b"VALKEY080", b"\xf3" + S(b"short") + L(0), "SLOT_IMPORT opcode 243 in VALKEY080: job name of 5"),
        (b"REDIS0013", b"\xf3" + L(1) + _class_spec("NOPE", 2, 0) + L(0) + b"\x00\x01k\x01v",
         "class 'NOPE' version 2"),
    ]  # fmt: skip
    for i, (head, bad, msg) in enumerate(cases):
        data = _rdb(head, b"\xfe\x00" + kv0 + bad)
        try:
            _parse(data)
            raise AssertionError(head)
        except RdbError as e:
            assert msg in e.message and e.offset == 17, (head, msg, e)
        if i not in (0, 4, 8):  # through the CLI: a few (each run costs a process start)
            continue
        path = tmp_path / f"bad{i}.rdb"
        path.write_bytes(data)
        r = restore_file(path, dst, _dir(tmp_path, f"w{i}"))
        out = r.stdout + r.stderr
        assert r.returncode == 2, (head, out[-3000:])
        assert msg in out and "offset 17" in out, (head, msg, out[-3000:])
        assert "Traceback" not in out
        assert dst.client().dbsize() == 0


def test_valkey_slot_import_is_read(servers, tmp_path):
    """Valkey 9 SLOT_IMPORT (243 under VALKEY magic): a 40-byte job name and slot ranges, as
    valkey-9.1 in cluster mode loads it ("slots: 0-100" in its log); read as a record, the keys
    copied, a warning logged."""
    job = b"0123456789abcdef0123456789abcdef01234567"
    body = b"\xf3" + S(job) + L(2) + L(0) + L(100) + L(200) + L(16383) + b"\xfe\x00\x00\x01k\x01v"
    f = _rdb(b"VALKEY080", body)
    _, recs = _parse(f)
    assert recs[0] == SlotImport(job, [(0, 100), (200, 16383)])
    assert _keys(recs) == [(0, b"k", 0, b"\x01v", -1)]
    path = tmp_path / "import.rdb"
    path.write_bytes(f)
    dst = servers.start("redis-7.0")
    r = restore_file(path, dst, _dir(tmp_path, "w"))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "unfinished Valkey atomic slot migration importing slots 0-100,200-16383" in out
    assert dst.client().get(b"k") == b"v"


def _vectorset_value() -> bytes:
    """A Redis 8 vector set as its module saves it (vset.c VectorSetRdbSave, encver 0): dim,
    count, hnsw config (quant type | M << 8), save flags, then per element: name, vector bytes
    (3 floats, no quantization), params count and params."""
    U = lambda n: L(2) + L(n)  # noqa: E731
    B = lambda b: L(5) + S(b)  # noqa: E731
    body = U(3) + U(2) + U(0 | (16 << 8)) + U(0)
    for i, name in enumerate((b"e1", b"e2")):
        body += B(name) + B(struct.pack("<3f", i, 1.0, 2.0)) + U(2) + U(0) + U(1 - i)
    return L(module_name_to_id("vectorset", 0)) + body + L(0)


def test_vector_set_into_servers_without_vector_sets(servers, tmp_path):
    path = tmp_path / "vset.rdb"
    path.write_bytes(_rdb(b"REDIS0012", b"\xfe\x00\x00\x01k\x01v\x07\x03vec" + _vectorset_value()))
    _, recs = _parse(path.read_bytes())
    vs = [r for r in recs if type(r) is KeyValue and r.type == 7]
    mv = decode_value(7, vs[0].raw, valkey=False)
    assert (mv.module_name, mv.encver) == ("vectorset", 0)
    for name in ("redis-7.0", "valkey-9.1"):
        dst = servers.start(name)
        r = restore_file(path, dst, _dir(tmp_path, name))
        out = r.stdout + r.stderr
        assert r.returncode == 2, out[-3000:]
        assert "module type 'vectorset'" in out and "only Redis 8.0+ has vector sets" in out, out[-3000:]
        assert dst.client().dbsize() == 0
    # a file is no server: an AOF for a Redis 8 gets the vector set as a RESTORE payload
    aof = tmp_path / "out.aof"
    cfg = write_config(tmp_path / "file.toml", {
        "rdb_reader": {"filepath": str(path)},
        "file_writer": {"filepath": str(aof), "type": "aof"},
        "advanced": {"dir": str(tmp_path / "fw"), "log_interval": 0},
    })  # fmt: skip
    r = run_redshake(cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert b"RESTORE\r\n$3\r\nvec\r\n" in aof.read_bytes()


def test_newer_commands_in_the_table(servers):
    cases = {
        "XDELEX s KEEPREF IDS 2 1-1 2-2": [b"s"],
        "XACKDEL s g ACKED IDS 1 1-1": [b"s"],
        "DELEX k IFEQ v": [b"k"],
        "DIGEST k": [b"k"],
        "MSETEX 2 a 1 b 2 PX 100": [b"a", b"b"],
        "HSETEX h PX 100 FIELDS 1 f v": [b"h"],
        "HGETEX h PERSIST FIELDS 1 f": [b"h"],
        "HGETDEL h FIELDS 1 f": [b"h"],
        "XCFGSET s IDMP-DURATION 100": [b"s"],
        "VADD vs VALUES 3 1 2 3 e1": [b"vs"],
        "VREM vs e1": [b"vs"],
        "VSETATTR vs e1 {}": [b"vs"],
    }
    for line, keys in cases.items():
        ci = command_info([w.encode() for w in line.split()])
        assert ci.keys == keys and ci.group != "unknown", (line, ci)
    # the ones Valkey 9.1 has: as its COMMAND GETKEYS says
    v = servers.start("valkey-9.1")
    with Connection(v.host, v.port) as c:
        for line in ("MSETEX 2 a 1 b 2 PX 100", "MSETEX 3 a 1 b 2 c 3 NX", "HSETEX h PX 100 FIELDS 1 f v",
                     "HGETEX h PERSIST FIELDS 1 f", "HGETDEL h FIELDS 1 f", "DELIFEQ k v"):  # fmt: skip
            argv = [w.encode() for w in line.split()]
            assert command_info(argv).keys == c.call("COMMAND", "GETKEYS", *argv), line


def test_key_meta_in_dump_payloads():
    """A Redis 8.6 DUMP payload may start with KEY_META (scan reader): left out when ignorable,
    the value read from the type byte after it; a non-ignorable class stops with its name."""
    from redshake.rdb.dump import make_payload
    from redshake.readers.scan_node import payload_record

    payload = make_payload(0xF3, KEY_META[1:] + b"\x00" + S(b"hello"), 13)
    rec, version = payload_record(3, b"k", payload, -1)
    assert (rec.db, rec.key, rec.type, bytes(rec.raw), version) == (3, b"k", 0, S(b"hello"), 13)
    bad = make_payload(0xF3, L(1) + _class_spec("NOPE", 2, 0) + L(0) + b"\x00" + S(b"v"), 13)
    try:
        payload_record(0, b"k", bad, -1)
        raise AssertionError("non-ignorable key metadata accepted")
    except RdbError as e:
        assert "class 'NOPE' version 2" in e.message and e.key == b"k", e
    # (243 as a type byte before RDB 13 is no key metadata: left to the type checks)
    rec, _ = payload_record(0, b"k", make_payload(0xF3, b"\x00", 12), -1)
    assert rec.type == 0xF3
