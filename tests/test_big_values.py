"""Values bigger than the streaming threshold are never held whole: a long raw or
LZF-compressed string is written as SET + APPEND pieces, a big stream as XADDs followed by
its metadata and consumer groups, and redshake's memory stays far below the value's size."""

from __future__ import annotations

import base64
import os
import random
import struct
import time

import pytest

from harness import run_rdb_restore
from helpers import assert_same_data, feed_in_chunks
from rdbgen import compressible, make_rdb, pairs_to_dict, stream_from_items, stream_state
from redshake.rdb import records as R
from redshake.rdb.parser import RdbParser
from redshake.rdb.primitives import read_string
from redshake.rdb.values import decode_value

SIZE = 64 << 20


def _source_with_big_string(servers):
    src = servers.start("redis-7.0")
    c = src.client()
    c.config_set("proto-max-bulk-len", str(1 << 30))
    big = os.urandom(SIZE)  # incompressible: stored raw, not LZF
    c.set(b"big", big, px=3_600_000)
    c.execute_command("SELECT", 3)
    c.set(b"big3", big[: 20 << 20])
    c.set(b"small", b"x")
    c.execute_command("SELECT", 0)
    c.save()
    return src, big


def test_parser_streams_long_strings(servers):
    src, big = _source_with_big_string(servers)
    p = RdbParser(big_value_threshold=1 << 20)
    pieces: dict[bytes, list[bytes]] = {}
    cur = None
    with open(src.dir / "dump.rdb", "rb") as f:
        while chunk := f.read(256 * 1024):
            p.feed(chunk)
            for rec in p.records():
                if type(rec) is R.BigKeyStart:
                    assert rec.kind == "string"
                    cur = rec.key
                    pieces[cur] = []
                    assert rec.count == (SIZE if cur == b"big" else 20 << 20)
                elif type(rec) is R.BigKeyPart:
                    pieces[cur].extend(rec.items)
                    assert all(len(x) <= 1 << 20 for x in rec.items)
                elif type(rec) is R.KeyValue:
                    assert rec.key == b"small"
            assert len(p._buf) < 8 << 20  # never the whole value
    p.finish()
    assert b"".join(pieces[b"big"]) == big
    assert b"".join(pieces[b"big3"]) == big[: 20 << 20]


def test_restore_long_string_with_bounded_memory(servers, tmp_path):
    src, _big = _source_with_big_string(servers)
    dst = servers.start("redis-7.0")
    dst.client().config_set("proto-max-bulk-len", str(1 << 30))
    code, out, peak, _elapsed = run_rdb_restore(src, dst, tmp_path)
    assert code == 0, out[-3000:]
    assert "commands_streamed=2" in out, out[-2000:]
    assert_same_data(src, dst)
    assert 0 < peak < SIZE, f"peak RSS {peak / 1e6:.0f} MB for a {SIZE >> 20} MiB value"


# ---- LZF-compressed strings ------------------------------------------------------------

LZF_SIZE = 64 << 20


def _source_with_lzf_strings(servers):
    src = servers.start("redis-7.0")
    c = src.client()
    c.config_set("proto-max-bulk-len", str(1 << 30))
    big = compressible(LZF_SIZE, 1)
    small = compressible(1 << 20, 2)
    c.set(b"lzbig", big, px=3_600_000)
    c.execute_command("SELECT", 2)
    c.set(b"lzsmall", small)
    c.set(b"x", b"y")
    c.execute_command("SELECT", 0)
    c.save()
    return src, big, small


def _lzf_header(data: bytes, offset: int, key: bytes) -> tuple[int, int]:
    """(compressed, uncompressed) length of the LZF string value of the record at offset."""
    from redshake.rdb.primitives import read_length

    p = offset + 9 if data[offset] == 0xFC else offset  # EXPIRETIME_MS
    assert data[p] == 0 and data[p + 1 : p + 2 + len(key)] == bytes([len(key)]) + key
    p += 2 + len(key)
    assert data[p] == 0xC3, "the value is not LZF-compressed in the RDB"
    clen, p = read_length(data, p + 1)
    ulen, p = read_length(data, p)
    return clen, ulen


def test_parser_streams_lzf_strings(servers):
    src, big, small = _source_with_lzf_strings(servers)
    data_path = src.dir / "dump.rdb"
    p = RdbParser(big_value_threshold=1 << 20)
    pieces: list[bytes] = []
    starts = []
    kvs = []
    max_buf = 0
    t0 = time.perf_counter()
    with open(data_path, "rb") as f:
        while chunk := f.read(256 * 1024):
            p.feed(chunk)
            for rec in p.records():
                if type(rec) is R.BigKeyStart:
                    starts.append(rec)
                elif type(rec) is R.BigKeyPart:
                    pieces.extend(rec.items)
                    assert all(0 < len(x) <= 1 << 20 for x in rec.items)
                elif type(rec) is R.KeyValue:
                    kvs.append(rec)
            max_buf = max(max_buf, len(p._buf))
    p.finish()
    elapsed = time.perf_counter() - t0
    (start,) = starts
    assert (start.key, start.kind, start.count, start.db) == (b"lzbig", "string", LZF_SIZE, 0)
    assert start.expire_ms > 0
    data = data_path.read_bytes()
    clen, ulen = _lzf_header(data, start.offset, b"lzbig")
    assert ulen == LZF_SIZE and 16 << 20 < clen < LZF_SIZE  # over the default threshold too
    assert b"".join(pieces) == big
    assert all(len(x) == 1 << 20 for x in pieces[:-1])
    assert max_buf < 2 << 20  # never the whole value, compressed or not
    (kv,) = [r for r in kvs if r.key == b"lzsmall"]
    assert kv.raw[0] == 0xC3 and read_string(kv.raw, 0)[0] == small
    print(f"\nLZF {clen >> 20} MiB -> {ulen >> 20} MiB streamed in {elapsed:.2f}s")


def test_restore_lzf_string_with_bounded_memory(servers, tmp_path):
    src, _big, _small = _source_with_lzf_strings(servers)
    dst = servers.start("redis-7.0")
    dst.client().config_set("proto-max-bulk-len", str(1 << 30))
    code, out, peak, elapsed = run_rdb_restore(src, dst, tmp_path)
    assert code == 0, out[-3000:]
    assert "commands_streamed=1" in out, out[-2000:]
    assert_same_data(src, dst)
    print(f"\nLZF string restore: peak RSS {peak / 1e6:.0f} MB, {elapsed:.1f}s")
    assert 0 < peak < LZF_SIZE, f"peak RSS {peak / 1e6:.0f} MB for a {LZF_SIZE >> 20} MiB value"


# ---- streams -----------------------------------------------------------------------------

STREAM_SOURCES = ["redis-7.0", "valkey-9.1", "redis-6.0"]  # stream types 19, 21, 15
# into an older stream type too (7.0 -> 6.2: 19 -> 15; Valkey 9.1 -> Redis 7.0: 21 -> 19)
STREAM_TARGETS = {"redis-7.0": "redis-6.2", "valkey-9.1": "redis-7.0", "redis-6.0": "redis-6.0"}
STREAM_TYPE = {"redis-7.0": 19, "valkey-9.1": 21, "redis-6.0": 15}


def _fill_stream(s, n: int, payload: int) -> None:
    """Stream ``st`` with n entries (some deleted), two consumer groups with pending entries
    and consumers with and without pending entries; a small stream and a string beside it."""
    c = s.client()
    rnd = random.Random(n)
    pipe = c.pipeline(transaction=False)
    for i in range(n):
        fields = {b"i": b"%d" % i, b"p": base64.b64encode(rnd.randbytes(payload))}
        if i % 10 == 0:
            fields[b"extra"] = b"x" * (i % 7)  # entries with other fields than the master's
        pipe.xadd(b"st", fields, id=f"{1_700_000_000_000 + i // 3}-{i % 3}")
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()
    c.xgroup_create(b"st", b"g1", id="0")
    c.xreadgroup(b"g1", b"alice", {b"st": ">"}, count=500)
    c.xreadgroup(b"g1", b"bob", {b"st": ">"}, count=300)
    ids = [e[0] for e in c.xrange(b"st", count=100)]
    c.xack(b"st", b"g1", *ids[::2])
    c.execute_command("XCLAIM", b"st", b"g1", b"bob", 0, ids[1], "TIME", 1_600_000_000_000,
                      "RETRYCOUNT", 7)  # fmt: skip
    c.xreadgroup(b"g1", b"carol", {b"st": "0"})  # a consumer without pending entries
    mid = c.xrange(b"st", min="-", max="+", count=n // 2)[-1][0]
    c.xgroup_create(b"st", b"g2", id=mid)
    c.xreadgroup(b"g2", b"dave", {b"st": ">"}, count=1000)
    # pending entries whose message is gone: deleted ones of both groups, and the head
    # trimmed away (the rebuild claims them through stand-ins)
    pend = [p["message_id"] for p in c.xpending_range(b"st", b"g1", "-", "+", 300)]
    c.xdel(b"st", *pend[50:250:3])
    pend = [p["message_id"] for p in c.xpending_range(b"st", b"g2", "-", "+", 100)]
    c.xdel(b"st", *pend[::7])
    c.xtrim(b"st", maxlen=c.xlen(b"st") - 40, approximate=False)
    # delete entries nobody has pending
    doomed = [e[0] for e in c.xrange(b"st", min=f"{1_700_000_000_000 + n // 3 - 1000}", count=2000)]
    for i in range(0, len(doomed), 500):
        c.xdel(b"st", *doomed[i : i + 500 : 3])
    c.xdel(b"st", c.xrange(b"st", count=1)[0][0])  # the first entry
    c.xadd(b"small", {b"a": b"b"})
    c.set(b"plain", b"v")
    c.pexpireat(b"st", 4_000_000_000_000)


@pytest.mark.parametrize("name", STREAM_SOURCES)
def test_parser_streams_big_streams(servers, name):
    """With a small threshold a stream arrives as entries, then its metadata, then one
    StreamGroup per group; together they equal the whole value decoded."""
    s = servers.start(name)
    _fill_stream(s, 30_000, 40)
    s.client().save()
    data = (s.dir / "dump.rdb").read_bytes()
    p = RdbParser(big_value_threshold=64 << 10, part_items=500)
    recs = feed_in_chunks(p, data, 7, 64 << 10, [], 1 << 20)
    starts = [r for r in recs if type(r) is R.BigKeyStart]
    assert [(r.key, r.kind, r.type, r.count) for r in starts] == [
        (b"st", "stream", STREAM_TYPE[name], -1)
    ]
    assert starts[0].expire_ms == 4_000_000_000_000
    whole = RdbParser()
    whole.feed(data)
    (kv,) = [r for r in whole.records() if type(r) is R.KeyValue and r.key == b"st"]
    want = decode_value(kv.type, kv.raw, valkey=whole.is_valkey)
    items = [it for r in recs if type(r) is R.BigKeyPart for it in r.items]
    assert all(len(r.items) <= 500 for r in recs if type(r) is R.BigKeyPart)
    assert stream_from_items(items) == want
    assert len(want.groups) == 2 and want.groups[0].pel and len(want.entries) < 30_000


@pytest.mark.parametrize("name", STREAM_SOURCES)
def test_restore_big_stream_with_bounded_memory(servers, tmp_path, name):
    """Pending entries of deleted / trimmed messages survive (the stream is replayed from a
    spill file once its groups are known), also into an older stream type."""

    src = servers.start(name)
    n = 300_000
    _fill_stream(src, n, 90)
    c = src.client()
    c.save()
    data_size = (src.dir / "dump.rdb").stat().st_size
    assert data_size > 24 << 20  # the stream alone is well over the 16 MiB threshold
    dst = servers.start(STREAM_TARGETS[name])
    code, out, peak, elapsed = run_rdb_restore(src, dst, tmp_path)
    assert code == 0, out[-3000:]
    assert "commands_streamed=1" in out, out[-2000:]
    assert_same_data(src, dst)
    assert not list((tmp_path / "w").rglob("redshake-stream-*"))  # spill files are gone
    ver = min(src.version, dst.version) if not dst.is_valkey else src.version
    sc, dc = src.client(), dst.client()
    for cl in (sc, dc):
        for cmd in ("XRANGE", "XPENDING"):
            cl.set_response_callback(cmd, lambda r, **kw: r)
    assert stream_state(dc, b"st", ver) == stream_state(sc, b"st", ver)
    assert dc.xlen(b"st") == sc.xlen(b"st") < n
    print(
        f"\n{name} stream ({data_size >> 20} MiB RDB) into {STREAM_TARGETS[name]}: "
        f"peak RSS {peak / 1e6:.0f} MB, {elapsed:.1f}s"
    )
    # Holding the value costs about 6x the file (measured on redis-7.0: 239 MB through
    # RESTORE); streamed, the peak is the interpreter (~35 MB) plus the up to 16 MiB the
    # parser buffers before it decides to stream (~68 MB in all).
    assert 0 < peak < 2 * data_size, f"peak RSS {peak / 1e6:.0f} MB for a {data_size >> 20} MiB RDB"


# ---- a consumer group with a million pending entries -------------------------------------

HUGE_PEL = 1_000_000
_LUA_XADD = """
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  redis.call('XADD', KEYS[1], (1700000000000 + i) .. '-' .. (i % 2), 'n', i)
end
"""
_LUA_READ = """
for r = 1, tonumber(ARGV[1]) do
  for k = 2, 5 do
    redis.call('XREADGROUP', 'GROUP', 'g', 'c' .. k, 'COUNT', ARGV[2], 'STREAMS', KEYS[1], '>')
  end
end
"""
# XACK or XCLAIM (ARGV[3..]) the ids i = ARGV[1], ARGV[1] + ARGV[2], ... of ARGV[4] ids
_LUA_IDS = """
local args = {KEYS[1], 'g'}
if ARGV[3] ~= 'ack' then
  args = {KEYS[1], 'g', ARGV[3], 0}
end
for j = 0, tonumber(ARGV[4]) - 1 do
  local i = tonumber(ARGV[1]) + j * tonumber(ARGV[2])
  args[#args + 1] = (1700000000000 + i) .. '-' .. (i % 2)
end
if ARGV[3] == 'ack' then
  return redis.call('XACK', unpack(args))
end
for _, a in ipairs({'TIME', ARGV[5], 'RETRYCOUNT', ARGV[6], 'JUSTID'}) do
  args[#args + 1] = a
end
return #redis.call('XCLAIM', unpack(args))
"""


def _fill_huge_pel(s) -> int:
    """Stream ``st`` of HUGE_PEL + 10,000 entries, all read into group ``g`` (c1 a
    contiguous 600,000, c2..c5 the rest round-robin, 100 at a time), 10,000 acked; c6
    holds entries claimed one by one (each its own delivery time and count), c2 a run
    claimed with one time and count, c7 none. Group ``g2``: a few. Returns the PEL size."""
    c = s.client()
    n = HUGE_PEL + 10_000
    for i in range(0, n, 200_000):
        c.eval(_LUA_XADD, 1, "st", i, min(i + 200_000, n) - 1)
    c.xgroup_create("st", "g", id="0")
    c.execute_command("XREADGROUP", "GROUP", "g", "c1", "COUNT", 600_000, "STREAMS", "st", ">")
    c.eval(_LUA_READ, 1, "st", -(-(n - 600_000) // 400), 100)
    assert c.eval(_LUA_IDS, 1, "st", 100_000, 1, "ack", 5000) == 5000
    assert c.eval(_LUA_IDS, 1, "st", 700_001, 3, "ack", 5000) == 5000
    for k in range(600):  # 600 entries of c1 to c6, each with its own time and count
        c.eval(_LUA_IDS, 1, "st", 300_007 + k * 497, 1, "c6", 1, 1_600_000_000_000 + k, k)
    for k in range(3):  # 15,000 entries of c3..c5 to c2, with one time and count
        c.eval(_LUA_IDS, 1, "st", 800_000 + k * 5000, 1, "c2", 5000, 1_650_000_000_000, 9)
    c.execute_command("XGROUP", "CREATECONSUMER", "st", "g", "c7")
    c.xgroup_create("st", "g2", id="0")
    c.xreadgroup("g2", "solo", {"st": ">"}, count=10)
    c.set("plain", "v")
    return c.xpending("st", "g")["pending"]


def _same_pending(sc, dc, group: bytes, total: int, page: int = 100_000) -> None:
    """XPENDING of ``group``, page by page on both servers: same ids, consumers and delivery
    counts; idle times equal up to the time between the two reads (delivery times are
    copied). XINFO STREAM FULL would give the times but cannot be paged."""
    start, seen = b"-", 0
    while True:
        a = sc.execute_command("XPENDING", "st", group, start, "+", page)
        b = dc.execute_command("XPENDING", "st", group, start, "+", page)
        assert [(x[0], x[1], x[3]) for x in a] == [(x[0], x[1], x[3]) for x in b]
        assert max((abs(x[2] - y[2]) for x, y in zip(a, b, strict=True)), default=0) < 2000
        seen += len(a)
        if len(a) < page:
            break
        start = b"(" + a[-1][0]
    assert seen == total


def _full_groups(c, count: int) -> list:
    """XINFO STREAM FULL's groups with the first ``count`` entries of each PEL and of each
    consumer's (with their delivery times), without the consumers' seen / active times."""

    full = pairs_to_dict(c.execute_command("XINFO", "STREAM", "st", "FULL", "COUNT", count))
    out = []
    for g in full[b"groups"]:
        g = pairs_to_dict(g)
        cons = [pairs_to_dict(x) for x in g.pop(b"consumers")]
        out.append((g, [(x[b"name"], x[b"pel-count"], x[b"pending"]) for x in cons]))
    return out


def test_restore_stream_with_huge_pel(servers, tmp_path):
    """A consumer group with a million pending entries (a stuck group): its PEL is held in a
    compact store (32 bytes an entry) while its consumers are read, not as Python objects."""
    src = servers.start("redis-7.0")
    t0 = time.perf_counter()
    pending = _fill_huge_pel(src)
    assert pending == HUGE_PEL
    sc = src.client()
    sc.save()
    built = time.perf_counter() - t0
    data_size = (src.dir / "dump.rdb").stat().st_size
    dst = servers.start("redis-7.0")
    code, out, peak, elapsed = run_rdb_restore(src, dst, tmp_path)
    assert code == 0, out[-3000:]
    assert "commands_streamed=1" in out, out[-2000:]
    t1 = time.perf_counter()
    assert_same_data(src, dst)
    dc = dst.client()
    for cl in (sc, dc):
        cl.set_response_callback("XPENDING", lambda r, **kw: r)
    for cmd in (("XINFO", "STREAM", "st"), ("XINFO", "GROUPS", "st")):
        assert dc.execute_command(*cmd) == sc.execute_command(*cmd), cmd
    want = _full_groups(sc, 20_000)
    assert _full_groups(dc, 20_000) == want
    assert [len(p) for _, cons in want for _, _, p in cons] == [20_000] * 5 + [600, 0, 10]
    for g, n in ((b"g", HUGE_PEL), (b"g2", 10)):
        summary = sc.execute_command("XPENDING", "st", g)
        assert dc.execute_command("XPENDING", "st", g) == summary and summary[0] == n
        cons = [(x["name"], x["pending"]) for x in sc.xinfo_consumers("st", g)]
        assert [(x["name"], x["pending"]) for x in dc.xinfo_consumers("st", g)] == cons
        _same_pending(sc, dc, g, n)
    print(
        f"\n{HUGE_PEL:,} pending entries ({data_size >> 20} MiB RDB, built in {built:.1f}s): "
        f"peak RSS {peak / 1e6:.0f} MB, {elapsed:.1f}s; compared in {time.perf_counter() - t1:.1f}s"
    )
    # Decoded whole, the group took 397 MB (tuples per PEL entry, a dict over the PEL);
    # streamed: the interpreter, the 16 MiB buffered before streaming, the 32 MB store.
    assert 0 < peak < 150 << 20, f"peak RSS {peak / 1e6:.0f} MB"


def test_parser_streams_stream_with_big_pel(servers):
    """Few entries but a consumer group tail over the threshold (pending entries whose
    messages were trimmed away): the stream goes big while its tail is being read."""
    s = servers.start("redis-7.0")
    c = s.client()
    pipe = c.pipeline(transaction=False)
    for i in range(20_000):
        pipe.xadd(b"st", {b"n": b"%d" % i}, id=f"{i + 1}-0")
    pipe.execute()
    c.xgroup_create(b"st", b"g", id="0")
    c.xreadgroup(b"g", b"alice", {b"st": ">"}, count=12_000)
    c.xreadgroup(b"g", b"bob", {b"st": ">"})
    c.xtrim(b"st", maxlen=5, approximate=False)
    c.save()
    data = (s.dir / "dump.rdb").read_bytes()
    whole = RdbParser()
    whole.feed(data)
    (kv,) = [r for r in whole.records() if type(r) is R.KeyValue]
    want = decode_value(kv.type, kv.raw, valkey=False)
    assert len(want.entries) == 5 and len(want.groups[0].pel) == 20_000
    p = RdbParser(big_value_threshold=64 << 10, part_items=100)
    recs: list = []
    for i in range(0, len(data), 16 << 10):
        p.feed(data[i : i + (16 << 10)])
        recs.extend(p.records())
    p.finish()
    assert [type(r) for r in recs if type(r) in (R.KeyValue, R.BigKeyStart)] == [R.BigKeyStart]
    parts = [r.items for r in recs if type(r) is R.BigKeyPart]
    items = [it for part in parts for it in part]
    # 5 entries, the metadata, the group head, alice's 12,000 pending ids in 3 parts of at
    # most 4096, bob's 8,000 in 2; every group item is a BigKeyPart of its own
    assert [type(it).__name__ for it in items[5:]] == [
        "StreamValue",
        "StreamGroupHead",
        *["StreamConsumerPart"] * 5,
    ]
    assert [len(it.pending) for it in items[7:]] == [4096, 4096, 3808, 4096, 3904]
    assert all(len(part) == 1 for part in parts[-6:])
    assert stream_from_items(items) == want


def _stream_commands(data: bytes, threshold: int, seed: int | None) -> tuple[dict, dict]:
    """Commands (per (db, key)) and methods written for the streams of an RDB, parsed with
    ``threshold``: whole (``seed`` None) or fed in random chunks of 1..64 bytes."""
    from redshake.readers.rdb_entries import RdbToEntries, TargetCaps

    caps = TargetCaps((7, 0, 0), False, 10, 0, lambda v, valkey: True)
    p = RdbParser(big_value_threshold=threshold, part_items=3)
    recs = feed_in_chunks(p, data, seed, 64, []) if seed is not None else parse(p, data)
    conv = RdbToEntries(caps, src_version=p.version, src_valkey=p.is_valkey, max_items=4,
                        now_ms=lambda: 0)  # fmt: skip
    cmds: dict = {}
    for rec in recs:
        for e in conv.convert(rec):
            if type(rec) is R.KeyValue and rec.type not in (15, 19, 21):
                continue
            cmds.setdefault((e.db, e.key), []).append(e.argv)
    return cmds, conv.methods


def parse(p: RdbParser, data: bytes) -> list:
    p.feed(data)
    recs = list(p.records())
    p.finish()
    return recs


def test_streamed_stream_commands_equal_plain_commands():
    """For every stream of the corpus, the commands written when it arrives in parts (tiny
    threshold, random tiny chunks) are exactly those of the whole-value command rebuild."""
    from helpers import TESTDATA, manifest

    files = [f for f in manifest() if f["kind"] == "rdb"
             and any(t.startswith("STREAM") for t in f["rdb"]["types"])]  # fmt: skip
    assert len(files) >= 8
    compared = 0
    for f in files:
        data = (TESTDATA / f["path"]).read_bytes()
        plain, m1 = _stream_commands(data, 1 << 30, None)
        streams = {k: v for k, v in plain.items() if any(a[0] == b"XSETID" for a in v)}
        assert streams and m1["commands_streamed"] == 0
        for seed in range(3):
            streamed, m2 = _stream_commands(data, 1, seed)
            assert m2["commands_streamed"] > 0
            for k, argvs in streams.items():
                assert streamed[k] == argvs, (f["path"], seed, k)
                compared += 1
    assert compared >= 45


def _stream_rdb(t: int, groups: list) -> bytes:
    """An RDB holding stream ``s`` of type ``t`` without entries (its messages all deleted)
    whose tail has the given groups: (name, entries_read, [(ms, seq, time, count)] PEL in
    file order, [(name, seen, active, [(ms, seq)])] consumers)."""
    from redshake.rdb.dump import encode_length as ln
    from redshake.rdb.dump import encode_string

    def rid(ms: int, seq: int) -> bytes:
        return struct.pack(">QQ", ms, seq)

    out = bytearray(ln(0) + ln(0) + ln(900) + ln(5))  # no nodes, length 0, last id 900-5
    if t >= 19:
        out += ln(1) + ln(0) + ln(900) + ln(5) + ln(20_000)  # first, max deleted, added
    out += ln(len(groups))
    for name, entries_read, pel, consumers in groups:
        out += encode_string(name) + ln(800) + ln(0)
        if t >= 19:
            out += ln(entries_read % (1 << 64))
        out += ln(len(pel))
        for ms, seq, when, count in pel:
            out += rid(ms, seq) + struct.pack("<q", when) + ln(count)
        out += ln(len(consumers))
        for cname, seen, active, ids in consumers:
            out += encode_string(cname) + struct.pack("<q", seen)
            if t == 21:
                out += struct.pack("<q", active)
            out += ln(len(ids)) + b"".join(rid(ms, seq) for ms, seq in ids)
    return make_rdb(b"REDIS0011", b"\xfe\x00" + bytes((t,)) + encode_string(b"s") + bytes(out))


@pytest.mark.parametrize("t", [15, 19, 21])
def test_streamed_group_commands_edge_cases(t):
    """Crafted consumer groups: a PEL of 10,000 entries (several chunks) with mixed delivery
    times and counts (multi-byte ones too), consumers owning contiguous runs longer than a
    chunk, interleaved ids, no pending entry, ids the PEL does not hold; PEL entries nobody
    owns; an unsorted PEL; empty groups. Streamed (random chunks, 1-byte threshold) they
    give the commands of the whole-value rebuild, which decodes the group whole."""
    rnd = random.Random(t)
    times = [1_600_000_000_000, 1_700_000_000_123, 0, 5]
    counts = [1, 2, 63, 64, 16_384, 1 << 40]
    pel = [(1000 + i, i % 3, rnd.choice(times), rnd.choice(counts)) for i in range(10_000)]
    ids = [(ms, seq) for ms, seq, _, _ in pel]
    long_run, rest = ids[:5000], ids[5000:9000]  # ids[9000:] are owned by nobody
    missing = sorted([(1, 0), (1500, 7), (99_999, 0)] + rest[::50])
    g1 = (b"g1", 9000, pel, [
        (b"a-long", 11, 12, long_run),
        (b"b-every-2nd", 13, 14, rest[::2]),
        (b"c-none", 15, 16, []),
        (b"d-missing", 17, 18, missing),
        (b"e-every-2nd", 19, 20, rest[1::2]),
    ])  # fmt: skip
    shuffled = pel[:300]
    rnd.shuffle(shuffled)
    g2 = (b"g2-unsorted", -1, shuffled, [(b"x", 1, 2, ids[:100]), (b"y", 3, 4, ids[150:300])])
    g3 = (b"g3-empty", 0, [], [])
    g4 = (b"g4-no-pel", 5, [], [(b"idle", 1, 1, [])])
    data = _stream_rdb(t, [g1, g2, g3, g4])
    plain, m1 = _stream_commands(data, 1 << 30, None)
    assert m1["commands"] == 1 and m1["commands_streamed"] == 0
    (want,) = plain.values()
    claimed = [a for a in want if a[0] == b"XCLAIM"]
    assert sum(len(a) - 11 for a in claimed) == 5000 + 4000 + len(missing) + 250
    assert [a[4] for a in want if a[:2] == [b"XGROUP", b"CREATECONSUMER"]] == [b"c-none", b"idle"]
    # the pending ids whose message is gone are claimed through stand-ins, streamed or not
    # (a streamed stream is replayed from its spill file once its groups are known); only
    # ids a consumer claims get one, not those nobody owns nor those the PEL lacks
    stand_ins = [a[2] for a in want if a[0] == b"XADD" and a[-2:] == [b"redshake", b"deleted"]]
    owned = {b"%d-%d" % i for i in ids[:9000]}
    assert len(stand_ins) == len(owned) and set(stand_ins) == owned
    assert sum(len(a) - 2 for a in want if a[0] == b"XDEL") == len(owned)
    for seed in range(3):
        streamed, m2 = _stream_commands(data, 1, seed)
        assert m2["commands_streamed"] == 1
        assert list(streamed.values()) == [want]
