"""Building and reading RDB data for tests: the corpus manifest's RDB files, RDB framing,
listpack / ziplist writers, compressible payloads, streamed-stream reassembly, and the
logical state of a stream on a server."""

from __future__ import annotations

import json
import random
import struct

import redis

from helpers import TESTDATA
from redshake.rdb.parser import RdbParser
from redshake.rdb.primitives import crc64
from redshake.rdb.records import KeyValue
from redshake.rdb.values import (
    STREAM_CLAIMS_CHUNK,
    StreamConsumer,
    StreamConsumerPart,
    StreamGroup,
    StreamGroupHead,
    StreamValue,
)

# -- the corpus ----------------------------------------------------------------------------

MANIFEST = json.loads((TESTDATA / "manifest.json").read_text())
RDB_FILES = [f for f in MANIFEST["files"] if f["kind"] == "rdb"]


# Intentionally corrupt files whose damage lies inside a value blob only: the streaming
# parser walks blobs by length and never decodes them, so it parses these files fine; the
# damage surfaces when the value is decoded (or RESTOREd) later.
BLOB_ONLY_CORRUPT = {
    "rdb/redis/corrupt_ziplist.rdb",  # invalid hash ziplist (CRC disabled)
    "rdb/hdt3213-rdb/zipmap_big_len.rdb",  # zipmap count byte 0xFF
}
# Benign "corrupt": every key is an empty aggregate, flagged empty=True.
ALL_EMPTY = {"rdb/redis/corrupt_empty_keys.rdb"}


def expect_error(f: dict) -> bool:
    """Whether the streaming parser must fail on this corpus file."""
    if f["path"] in BLOB_ONLY_CORRUPT or f["path"] in ALL_EMPTY:
        return False
    return f["intentionally_corrupt"].startswith("YES") or bool(f["rdb"]["scanner_stopped"])


def corpus_keys(path: str) -> list[tuple[int, bytes, int, bytes, int, bool]]:
    """(db, key, type, raw value bytes, expire_ms, valkey) for every key of the file."""
    p = RdbParser()
    p.feed((TESTDATA / path).read_bytes())
    out = [
        (r.db, r.key, r.type, r.raw, r.expire_ms, p.is_valkey)
        for r in p.records()
        if type(r) is KeyValue
    ]
    p.finish()
    return out



# -- building RDB data --------------------------------------------------------------------


def make_rdb(head: bytes, body: bytes) -> bytes:
    """An RDB file: header, body, EOF opcode and CRC64."""
    data = head + body + b"\xff"
    return data + struct.pack("<Q", crc64(data))


# a tiny listpack writer for fixtures (protocols.md §1.8.2)


def _backlen(n: int) -> bytes:
    if n <= 127:
        return bytes([n])
    groups = []
    while n:
        groups.append(n & 127)
        n >>= 7
    groups.reverse()  # most significant group first; the others carry the 0x80 flag
    return bytes([groups[0]] + [g | 128 for g in groups[1:]])


def lp_elem(x: int | bytes, force: str | None = None) -> bytes:
    if isinstance(x, int):
        kind = force
        if kind is None:
            if 0 <= x <= 127:
                kind = "u7"
            elif -4096 <= x <= 4095:
                kind = "i13"
            elif -(2**15) <= x < 2**15:
                kind = "i16"
            elif -(2**23) <= x < 2**23:
                kind = "i24"
            elif -(2**31) <= x < 2**31:
                kind = "i32"
            else:
                kind = "i64"
        if kind == "u7":
            enc = bytes([x])
        elif kind == "i13":
            u = x & 0x1FFF
            enc = bytes([0xC0 | (u >> 8), u & 0xFF])
        elif kind == "i16":
            enc = b"\xf1" + struct.pack("<h", x)
        elif kind == "i24":
            enc = b"\xf2" + (x & 0xFFFFFF).to_bytes(3, "little")
        elif kind == "i32":
            enc = b"\xf3" + struct.pack("<i", x)
        else:
            enc = b"\xf4" + struct.pack("<q", x)
    else:
        n = len(x)
        if n < 64 and force is None:
            enc = bytes([0x80 | n]) + x
        elif n < 4096 and force != "s32":
            enc = bytes([0xE0 | (n >> 8), n & 0xFF]) + x
        else:
            enc = b"\xf0" + struct.pack("<I", n) + x
    return enc + _backlen(len(enc))


def make_listpack(elems: list[bytes], count: int | None = None) -> bytes:
    body = b"".join(elems)
    total = 6 + len(body) + 1
    return struct.pack("<IH", total, len(elems) if count is None else count) + body + b"\xff"


def make_ziplist(entries: list[bytes]) -> bytes:
    body = b"".join(entries)
    total = 10 + len(body) + 1
    return struct.pack("<IIH", total, 0, len(entries)) + body + b"\xff"



def compressible(size: int, seed: int) -> bytes:
    """Text that LZF compresses about 3:1 (words from a small vocabulary, numbers): a
    256 KiB block repeated, which compresses like fresh text (LZF looks back 8 KiB only)."""
    rnd = random.Random(seed)
    words = [
        bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz", k=rnd.randint(2, 9))) for _ in range(300)
    ]
    block = bytearray()
    while len(block) < 256 << 10:
        block += b" ".join(rnd.choices(words, k=40)) + b" %d\n" % rnd.getrandbits(32)
    return (bytes(block[: 256 << 10]) * (-(-size // (256 << 10))))[:size]

# -- streams ------------------------------------------------------------------------------


def stream_from_items(items: list) -> StreamValue:
    """The StreamValue a streamed stream's items describe: entries, metadata, groups. A
    group arrives as a StreamGroupHead and its consumers' StreamConsumerParts: its PEL is
    rebuilt from their pending entries (in id order)."""
    (meta,) = [it for it in items if isinstance(it, StreamValue)]
    i = items.index(meta)
    assert all(type(it) is tuple for it in items[:i])
    meta.entries = items[:i]
    heads: list[StreamGroupHead] = []
    for it in items[i + 1 :]:
        if type(it) is StreamGroupHead:
            heads.append(it)
            g = StreamGroup(it.name, it.last_id, it.entries_read, [], [])
            meta.groups.append(g)
            continue
        assert type(it) is StreamConsumerPart and it.group == g.name
        assert len(it.pending) <= STREAM_CLAIMS_CHUNK
        last = g.consumers[-1] if g.consumers else None
        if (last is not None and last.name == it.name and last.pel_ids
                and len(last.pel_ids) % STREAM_CLAIMS_CHUNK == 0):  # fmt: skip
            assert it.pending  # the next chunk of the same consumer
        else:
            last = StreamConsumer(it.name, it.seen_time, it.active_time, [])
            g.consumers.append(last)
        last.pel_ids += [pid for pid, _, _ in it.pending]
        g.pel += it.pending
    for g, h in zip(meta.groups, heads, strict=True):
        g.pel.sort(key=lambda e: tuple(map(int, e[0].split(b"-"))))
        assert len(g.pel) <= h.pending
    return meta



def pairs_to_dict(flat: list) -> dict:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def stream_state(c: redis.Redis, key: bytes, ver: tuple[int, int, int]) -> dict:
    """Logical stream state that commands can reproduce (no seen/active times, no node layout)."""
    out: dict = {"entries": c.execute_command("XRANGE", key, "-", "+")}
    if ver >= (6, 0, 0):
        full = pairs_to_dict(c.execute_command("XINFO", "STREAM", key, "FULL"))
        top = [b"length", b"last-generated-id"]
        if ver >= (7, 0, 0):
            top += [b"max-deleted-entry-id", b"entries-added", b"recorded-first-entry-id"]
        for k in top:
            out[k] = full[k]
        groups = []
        for g in full[b"groups"]:
            g = pairs_to_dict(g)
            consumers = []
            for cons in g[b"consumers"]:
                cons = pairs_to_dict(cons)
                consumers.append((cons[b"name"], cons[b"pel-count"], cons[b"pending"]))
            skip = {b"consumers"} if ver >= (7, 0, 0) else {b"consumers", b"entries-read", b"lag"}
            gs = {k: v for k, v in g.items() if k not in skip}
            gs[b"consumers"] = consumers
            groups.append(gs)
        out["groups"] = groups
    else:
        info = pairs_to_dict(c.execute_command("XINFO", "STREAM", key))
        out["length"] = info[b"length"]
        out["last"] = info[b"last-generated-id"]
        groups = []
        for g in c.execute_command("XINFO", "GROUPS", key):
            g = pairs_to_dict(g)
            cons = [
                pairs_to_dict(x) for x in c.execute_command("XINFO", "CONSUMERS", key, g[b"name"])
            ]
            pend = c.execute_command("XPENDING", key, g[b"name"], "-", "+", 1000)
            groups.append(
                (
                    g[b"name"], g[b"last-delivered-id"], g[b"pending"],
                    sorted((x[b"name"], x[b"pending"]) for x in cons),
                    [(p[0], p[1], p[3]) for p in pend],
                )
            )  # fmt: skip
        out["groups"] = groups
    return out

