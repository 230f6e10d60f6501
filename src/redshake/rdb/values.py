"""Decode one RDB value (type byte + the value bytes that follow the key) into a logical
value (protocols.md §1.7, §1.9).

``decode_value(type, raw, valkey=...)`` works on the complete value bytes and never looks
at the file around it, so it serves RDB files, replication snapshots and DUMP payloads
alike. The type-byte dispatch depends on the producer family for ids ≥ 22 (``valkey=True``
for a ``VALKEY`` magic or a DUMP version ≥ 80).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator

from . import types as T
from .encodings import (
    intset_members,
    listpack_entries,
    listpack_values,
    ziplist_entries,
    zipmap_pairs,
)
from .primitives import (
    RdbError,
    Truncated,
    read_double_str,
    read_length,
    read_string,
)

__all__ = [
    "Value",
    "StringValue",
    "ListValue",
    "SetValue",
    "ZSetValue",
    "HashValue",
    "StreamValue",
    "StreamGroup",
    "StreamConsumer",
    "StreamGroupHead",
    "StreamConsumerPart",
    "StreamIdmp",
    "StreamDropped",
    "STREAM_CLAIMS_CHUNK",
    "ModuleValue",
    "decode_value",
    "decode_value_at",
    "stream_node_entries",
    "decode_stream_meta",
    "decode_stream_group",
    "decode_stream_group_head",
    "decode_stream_consumer_head",
    "read_stream_nacked",
    "read_stream_idmp",
    "stream_group_parts",
    "format_score",
    "TYPE_NAMES",
]

TYPE_NAMES = {
    0: "string", 1: "list", 2: "set", 3: "zset", 4: "hash", 5: "zset", 6: "module",
    7: "module", 9: "hash", 10: "list", 11: "set", 12: "zset", 13: "hash", 14: "list",
    15: "stream", 16: "hash", 17: "zset", 18: "list", 19: "stream", 20: "set",
    21: "stream", 22: "hash", 23: "hash", 24: "hash", 25: "hash", 26: "stream", 27: "stream",
}  # fmt: skip


class Value:
    """Base class of decoded values."""

    __slots__ = ()
    kind = ""

    def __len__(self) -> int:  # number of elements (1 for strings)
        return 1

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__)
        return f"{type(self).__name__}({inner})"


class StringValue(Value):
    __slots__ = ("data",)
    kind = "string"

    def __init__(self, data: bytes) -> None:
        self.data = data


class ListValue(Value):
    __slots__ = ("items",)
    kind = "list"

    def __init__(self, items: list[bytes]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)


class SetValue(Value):
    __slots__ = ("members",)
    kind = "set"

    def __init__(self, members: list[bytes]) -> None:
        self.members = members

    def __len__(self) -> int:
        return len(self.members)


class ZSetValue(Value):
    """``items`` = (member, score text ZADD accepts and that round-trips the double)."""

    __slots__ = ("items",)
    kind = "zset"

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)


class HashValue(Value):
    """``field_expire`` maps field → absolute unix ms, for fields that have a TTL (None when
    the encoding has no field TTLs or none is set)."""

    __slots__ = ("pairs", "field_expire")
    kind = "hash"

    def __init__(
        self, pairs: list[tuple[bytes, bytes]], field_expire: dict[bytes, int] | None = None
    ) -> None:
        self.pairs = pairs
        self.field_expire = field_expire

    def __len__(self) -> int:
        return len(self.pairs)


class StreamConsumer(Value):
    __slots__ = ("name", "seen_time", "active_time", "pel_ids")

    def __init__(self, name: bytes, seen_time: int, active_time: int, pel_ids: list[bytes]) -> None:
        self.name = name
        self.seen_time = seen_time
        self.active_time = active_time
        self.pel_ids = pel_ids


class StreamGroup(Value):
    """``pel`` = [(id, delivery_time_ms, delivery_count)]; ``entries_read`` −1 = unknown.
    ``nacked``: ids of the group's "NACK zone" (type 27, Redis 8.8 XNACK): PEL entries that
    no consumer owns, in the order stored."""

    __slots__ = ("name", "last_id", "entries_read", "pel", "consumers", "nacked")

    def __init__(
        self,
        name: bytes,
        last_id: bytes,
        entries_read: int,
        pel: list[tuple[bytes, int, int]],
        consumers: list[StreamConsumer],
        nacked: list[bytes] | None = None,
    ) -> None:
        self.name = name
        self.last_id = last_id
        self.entries_read = entries_read
        self.pel = pel
        self.consumers = consumers
        self.nacked = nacked if nacked is not None else []


class StreamIdmp(Value):
    """The IDMP (idempotent producer) section of a stream of type 26 / 27 (Redis 8.6+):
    ``duration`` (seconds) and ``max_entries`` (XCFGSET), ``producers`` =
    [(producer id, [(iid, stream id), ...])], and the all-time counters."""

    __slots__ = ("duration", "max_entries", "producers", "iids_added", "iids_duplicates")

    def __init__(
        self,
        duration: int,
        max_entries: int,
        producers: list[tuple[bytes, list[tuple[bytes, bytes]]]],
        iids_added: int,
        iids_duplicates: int,
    ) -> None:
        self.duration = duration
        self.max_entries = max_entries
        self.producers = producers
        self.iids_added = iids_added
        self.iids_duplicates = iids_duplicates

    def iids(self) -> int:
        return sum(len(e) for _, e in self.producers)


class StreamDropped(Value):
    """Item of a stream that arrives in parts, for what older servers cannot hold: the
    ``nacked`` ids of a group's NACK zone (type 27) or the ``iids`` / ``producers`` counts
    of the IDMP section (types 26, 27). Writes no command; the writer counts it."""

    __slots__ = ("group", "nacked", "producers", "iids")

    def __init__(
        self, group: bytes | None, nacked: int = 0, producers: int = 0, iids: int = 0
    ) -> None:
        self.group = group
        self.nacked = nacked
        self.producers = producers
        self.iids = iids


# A consumer's pending entries travel in items of at most this many entries (see
# StreamConsumerPart); the command rebuild batches XCLAIMs within one item.
STREAM_CLAIMS_CHUNK = 4096


class StreamGroupHead(Value):
    """Start of a consumer group, when a stream's groups arrive in parts (see
    :func:`stream_group_parts`): what XGROUP CREATE needs; ``pending`` = size of its PEL."""

    __slots__ = ("name", "last_id", "entries_read", "pending")

    def __init__(self, name: bytes, last_id: bytes, entries_read: int, pending: int) -> None:
        self.name = name
        self.last_id = last_id
        self.entries_read = entries_read
        self.pending = pending


class StreamConsumerPart(Value):
    """Pending entries of one consumer of group ``group``, when a stream's groups arrive in
    parts: ``pending`` = [(id, delivery_time_ms, delivery_count)] for at most
    STREAM_CLAIMS_CHUNK of its pending ids, in their order (time and count 0 for an id the
    group's PEL does not hold). A consumer with n pending ids comes as ceil(n / chunk) parts;
    one without any as a single part with an empty ``pending``."""

    __slots__ = ("group", "name", "seen_time", "active_time", "pending")

    def __init__(
        self,
        group: bytes,
        name: bytes,
        seen_time: int,
        active_time: int,
        pending: list[tuple[bytes, int, int]],
    ) -> None:
        self.group = group
        self.name = name
        self.seen_time = seen_time
        self.active_time = active_time
        self.pending = pending


def stream_group_parts(g: StreamGroup) -> Iterator[StreamGroupHead | StreamConsumerPart]:
    """The items a whole decoded group arrives as when its stream is streamed (what the
    streaming parser yields for it): a head, then each consumer's pending entries in chunks.
    PEL entries that no consumer owns are not in them (the command rebuild cannot claim an
    entry for nobody)."""
    yield StreamGroupHead(g.name, g.last_id, g.entries_read, len(g.pel))
    pel = {pid: (t, c) for pid, t, c in g.pel}
    step = STREAM_CLAIMS_CHUNK
    for c in g.consumers:
        ids = c.pel_ids
        if not ids:
            yield StreamConsumerPart(g.name, c.name, c.seen_time, c.active_time, [])
        for i in range(0, len(ids), step):
            pending = [(pid, *pel.get(pid, (0, 0))) for pid in ids[i : i + step]]
            yield StreamConsumerPart(g.name, c.name, c.seen_time, c.active_time, pending)


class StreamValue(Value):
    """``entries`` = [(id, [field, value, field, value, ...])] in id order (live entries only)."""

    __slots__ = (
        "entries",
        "length",
        "last_id",
        "first_id",
        "max_deleted_id",
        "entries_added",
        "groups",
        "idmp",
    )
    kind = "stream"

    def __init__(
        self,
        entries: list[tuple[bytes, list[bytes]]],
        length: int,
        last_id: bytes,
        first_id: bytes,
        max_deleted_id: bytes,
        entries_added: int,
        groups: list[StreamGroup],
        idmp: StreamIdmp | None = None,
    ) -> None:
        self.entries = entries
        self.length = length
        self.last_id = last_id
        self.first_id = first_id
        self.max_deleted_id = max_deleted_id
        self.entries_added = entries_added
        self.groups = groups
        self.idmp = idmp

    def __len__(self) -> int:
        return len(self.entries)


class ModuleValue(Value):
    """A module value (type 7). ``raw`` is the complete value (module id included), so it can
    be passed through in a DUMP payload; ``decoded`` is set when a decoder knows the module."""

    __slots__ = ("module_name", "encver", "raw", "decoded")
    kind = "module"

    def __init__(
        self, module_name: str, encver: int, raw: bytes, decoded: object | None = None
    ) -> None:
        self.module_name = module_name
        self.encver = encver
        self.raw = raw
        self.decoded = decoded


# --------------------------------------------------------------------------------------

_DOUBLE = struct.Struct("<d").unpack_from
_U64LE = struct.Struct("<Q").unpack_from
_I64LE = struct.Struct("<q").unpack_from
_ID = struct.Struct(">QQ").unpack_from

EB_EXPIRE_TIME_MAX = (1 << 48) - 1


def format_score(d: float) -> bytes:
    """Text of a binary double that ZADD parses back to the identical double."""
    if d == math.inf:
        return b"inf"
    if d == -math.inf:
        return b"-inf"
    if d != d:
        raise RdbError("NaN score in a sorted set")
    return repr(d).encode()


def _read_list(raw: bytes, pos: int) -> tuple[list[bytes], int]:
    n, pos = read_length(raw, pos)
    out = []
    append = out.append
    rs = read_string
    for _ in range(n):
        s, pos = rs(raw, pos)
        append(s)
    return out, pos


def _read_pairs(raw: bytes, pos: int) -> tuple[list[tuple[bytes, bytes]], int]:
    n, pos = read_length(raw, pos)
    out = []
    append = out.append
    rs = read_string
    for _ in range(n):
        f, pos = rs(raw, pos)
        v, pos = rs(raw, pos)
        append((f, v))
    return out, pos


def _pairs(flat: list[bytes], what: str) -> list[tuple[bytes, bytes]]:
    if len(flat) % 2:
        raise RdbError(f"{what} blob has an odd number of elements")
    it = iter(flat)
    return list(zip(it, it, strict=True))


def _fmt_id(ms: int, seq: int) -> bytes:
    return b"%d-%d" % (ms, seq)


def _raw_id(raw: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 16 > len(raw):
        raise Truncated
    ms, seq = _ID(raw, pos)
    return b"%d-%d" % (ms, seq), pos + 16


def _ms8(raw: bytes, pos: int) -> tuple[int, int]:
    if pos + 8 > len(raw):
        raise Truncated
    return _I64LE(raw, pos)[0], pos + 8


def _signed_len(raw: bytes, pos: int) -> tuple[int, int]:
    v, pos = read_length(raw, pos)
    if v >= 1 << 63:
        v -= 1 << 64
    return v, pos


def stream_node_entries(nodekey: bytes, lp: bytes) -> list[tuple[bytes, list[bytes]]]:
    """Live entries ``[(id, [field, value, ...])]`` of one stream node: its 16-byte master
    id and its listpack (entries flagged deleted are left out)."""
    if len(nodekey) != 16:
        raise RdbError(f"stream node key has {len(nodekey)} bytes instead of 16")
    base_ms, base_seq = _ID(nodekey, 0)
    vals = listpack_values(lp)
    if not vals:
        raise RdbError("empty listpack in a stream node")
    entries: list[tuple[bytes, list[bytes]]] = []
    append = entries.append
    try:
        count, deleted, nmf = vals[0], vals[1], vals[2]
        master = [v if type(v) is bytes else b"%d" % v for v in vals[3 : 3 + nmf]]
        i = 3 + nmf
        if vals[i] != 0:
            raise RdbError("stream node master entry is not terminated by 0")
        i += 1
        for _ in range(count + deleted):
            flags, msd, seqd = vals[i], vals[i + 1], vals[i + 2]
            i += 3
            if flags & 2:  # SAMEFIELDS
                vs = vals[i : i + nmf]
                i += nmf
                fv: list[bytes] = []
                for f, v in zip(master, vs, strict=True):
                    fv.append(f)
                    fv.append(v if type(v) is bytes else b"%d" % v)
            else:
                nf = vals[i]
                i += 1
                fv = [v if type(v) is bytes else b"%d" % v for v in vals[i : i + 2 * nf]]
                if len(fv) != 2 * nf:
                    raise IndexError
                i += 2 * nf
            i += 1  # lp-count
            if not flags & 1:
                append((b"%d-%d" % (base_ms + msd, base_seq + seqd), fv))
        if i != len(vals):
            raise RdbError("stream node listpack has trailing elements")
    except (IndexError, TypeError, ValueError):
        raise RdbError("malformed stream node listpack") from None
    return entries


def decode_stream_meta(t: int, raw, pos: int, first_id: bytes) -> tuple[StreamValue, int, int]:
    """The part of a stream value (type ``t``) that follows its nodes, up to the number of
    consumer groups: returns (StreamValue without entries and groups, number of groups, end).
    ``first_id`` is the id of the first live entry (b"0-0" if none): type 15 does not
    store it."""
    length, pos = read_length(raw, pos)
    lms, pos = read_length(raw, pos)
    lseq, pos = read_length(raw, pos)
    last_id = _fmt_id(lms, lseq)
    if t >= 19:
        fms, pos = read_length(raw, pos)
        fseq, pos = read_length(raw, pos)
        dms, pos = read_length(raw, pos)
        dseq, pos = read_length(raw, pos)
        entries_added, pos = read_length(raw, pos)
        first_id = _fmt_id(fms, fseq)
        max_deleted = _fmt_id(dms, dseq)
    else:
        max_deleted = b"0-0"
        entries_added = length
    ngroups, pos = read_length(raw, pos)
    meta = StreamValue([], length, last_id, first_id, max_deleted, entries_added, [])
    return meta, ngroups, pos


def decode_stream_group_head(t: int, raw, pos: int) -> tuple[bytes, bytes, int, int, int]:
    """The start of a consumer group of a stream of type ``t``: (name, last delivered id,
    entries read (-1 = unknown), number of PEL entries, position of the first PEL entry)."""
    gname, pos = read_string(raw, pos)
    gms, pos = read_length(raw, pos)
    gseq, pos = read_length(raw, pos)
    entries_read = -1
    if t >= 19:
        entries_read, pos = _signed_len(raw, pos)
    npel, pos = read_length(raw, pos)
    return gname, _fmt_id(gms, gseq), entries_read, npel, pos


def decode_stream_consumer_head(t: int, raw, pos: int) -> tuple[bytes, int, int, int, int]:
    """The start of a consumer of a stream of type ``t``: (name, seen time, active time,
    number of pending ids, position of the first 16-byte pending id)."""
    cname, pos = read_string(raw, pos)
    seen, pos = _ms8(raw, pos)
    active = seen
    if t >= 21:
        active, pos = _ms8(raw, pos)
    ncpel, pos = read_length(raw, pos)
    return cname, seen, active, ncpel, pos


def decode_stream_group(t: int, raw, pos: int) -> tuple[StreamGroup, int]:
    """One consumer group of a stream value of type ``t``, with its PEL and consumers."""
    gname, last_id, entries_read, npel, pos = decode_stream_group_head(t, raw, pos)
    pel: list[tuple[bytes, int, int]] = []
    for _ in range(npel):
        pid, pos = _raw_id(raw, pos)
        dtime, pos = _ms8(raw, pos)
        dcount, pos = read_length(raw, pos)
        pel.append((pid, dtime, dcount))
    nconsumers, pos = read_length(raw, pos)
    consumers: list[StreamConsumer] = []
    for _ in range(nconsumers):
        cname, seen, active, ncpel, pos = decode_stream_consumer_head(t, raw, pos)
        ids = []
        for _ in range(ncpel):
            pid, pos = _raw_id(raw, pos)
            ids.append(pid)
        consumers.append(StreamConsumer(cname, seen, active, ids))
    nacked: list[bytes] = []
    if t >= 27:
        nacked, pos = read_stream_nacked(raw, pos)
    return StreamGroup(gname, last_id, entries_read, pel, consumers, nacked), pos


def read_stream_nacked(raw, pos: int) -> tuple[list[bytes], int]:
    """A group's NACK zone (type 27, after its consumers): a count, then 16-byte raw ids."""
    n, pos = read_length(raw, pos)
    ids = []
    for _ in range(n):
        pid, pos = _raw_id(raw, pos)
        ids.append(pid)
    return ids, pos


def read_stream_idmp(raw, pos: int) -> tuple[StreamIdmp, int]:
    """The IDMP section of a stream of type 26 / 27 (after its consumer groups): duration,
    max entries, producers (id, then its (iid, stream id as two lengths) entries), iids
    added, iids duplicates."""
    duration, pos = read_length(raw, pos)
    max_entries, pos = read_length(raw, pos)
    nprod, pos = read_length(raw, pos)
    producers = []
    for _ in range(nprod):
        pid, pos = read_string(raw, pos)
        n, pos = read_length(raw, pos)
        ents = []
        for _ in range(n):
            iid, pos = read_string(raw, pos)
            ms, pos = read_length(raw, pos)
            seq, pos = read_length(raw, pos)
            ents.append((iid, _fmt_id(ms, seq)))
        producers.append((pid, ents))
    added, pos = read_length(raw, pos)
    dups, pos = read_length(raw, pos)
    return StreamIdmp(duration, max_entries, producers, added, dups), pos


def _decode_stream(t: int, raw: bytes, pos: int) -> tuple[StreamValue, int]:
    nodes, pos = read_length(raw, pos)
    entries: list[tuple[bytes, list[bytes]]] = []
    for _ in range(nodes):
        nodekey, pos = read_string(raw, pos)
        lp, pos = read_string(raw, pos)
        entries += stream_node_entries(nodekey, lp)
    value, ngroups, pos = decode_stream_meta(t, raw, pos, entries[0][0] if entries else b"0-0")
    value.entries = entries
    for _ in range(ngroups):
        group, pos = decode_stream_group(t, raw, pos)
        value.groups.append(group)
    if t >= 26:
        value.idmp, pos = read_stream_idmp(raw, pos)
    return value, pos


def _check_hfe(ms: int) -> int:
    if ms > EB_EXPIRE_TIME_MAX:
        raise RdbError(f"hash field expire time {ms} is out of range")
    return ms


# ---- one decoder per value layout (types.py): (type, raw, start) -> (value, end) -------


def _dec_string(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    s, pos = read_string(raw, start)
    return StringValue(s), pos


def _dec_list(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    items, pos = _read_list(raw, start)
    return ListValue(items), pos


def _dec_set(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    items, pos = _read_list(raw, start)
    return SetValue(items), pos


def _dec_zset(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    n, pos = read_length(raw, start)
    zitems = []
    for _ in range(n):
        m, pos = read_string(raw, pos)
        sc, pos = read_double_str(raw, pos)
        if sc == b"nan":
            raise RdbError("NaN score in a sorted set")
        zitems.append((m, sc))
    return ZSetValue(zitems), pos


def _dec_hash(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    pairs, pos = _read_pairs(raw, start)
    return HashValue(pairs), pos


def _dec_zset_2(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    n, pos = read_length(raw, start)
    zitems = []
    for _ in range(n):
        m, pos = read_string(raw, pos)
        if pos + 8 > len(raw):
            raise Truncated
        zitems.append((m, format_score(_DOUBLE(raw, pos)[0])))
        pos += 8
    return ZSetValue(zitems), pos


def _dec_module(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    from .modules import decode_module_value_at

    return decode_module_value_at(raw, start)


def _blob_decoder(make):
    """Decoder of a layout stored as one blob string: ``make(blob) -> value``."""

    def dec(t: int, raw: bytes, start: int) -> tuple[Value, int]:
        blob, pos = read_string(raw, start)
        return make(blob), pos

    return dec


def _dec_quicklist(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    n, pos = read_length(raw, start)
    items: list[bytes] = []
    for _ in range(n):
        blob, pos = read_string(raw, pos)
        items.extend(ziplist_entries(blob))
    return ListValue(items), pos


def _dec_quicklist_2(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    n, pos = read_length(raw, start)
    items: list[bytes] = []
    for _ in range(n):
        container, pos = read_length(raw, pos)
        blob, pos = read_string(raw, pos)
        if container == 2:
            items.extend(listpack_entries(blob))
        elif container == 1:
            items.append(blob)
        else:
            raise RdbError(f"invalid quicklist container {container}")
    return ListValue(items), pos


def _dec_hash_2(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    """Valkey HASH_2: field, value, 8-byte LE signed absolute ms (-1 = none)."""
    n, pos = read_length(raw, start)
    pairs = []
    fexp: dict[bytes, int] = {}
    for _ in range(n):
        f, pos = read_string(raw, pos)
        v, pos = read_string(raw, pos)
        ms, pos = _ms8(raw, pos)
        pairs.append((f, v))
        if ms != -1:
            if ms < 0:
                raise RdbError(f"invalid hash field expire time {ms}")
            fexp[f] = ms
    return HashValue(pairs, fexp or None), pos


def _dec_hash_ttl(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    """Redis 22 / 24: [8-byte min expire (24)], count, (len-enc ttl, field, value)."""
    pos = start
    min_expire = 0
    if t == 24:
        if len(raw) < start + 8:
            raise Truncated
        min_expire = _U64LE(raw, start)[0]
        if min_expire > EB_EXPIRE_TIME_MAX + 1:
            raise RdbError(f"hash minExpire {min_expire} is out of range")
        pos = start + 8
    n, pos = read_length(raw, pos)
    pairs = []
    fexp = {}
    for _ in range(n):
        ttl, pos = read_length(raw, pos)
        f, pos = read_string(raw, pos)
        v, pos = read_string(raw, pos)
        pairs.append((f, v))
        if ttl:
            fexp[f] = _check_hfe(ttl + min_expire - 1 if t == 24 else ttl)
    return HashValue(pairs, fexp or None), pos


def _dec_hash_listpack_ttl(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    """Redis 23 / 25: [8-byte min expire (25, informational)], listpack of (field, value,
    ttl) triples."""
    pos = start
    if t == 25:
        if len(raw) < start + 8:
            raise Truncated
        pos = start + 8
    blob, pos = read_string(raw, pos)
    vals = listpack_values(blob)
    if len(vals) % 3:
        raise RdbError("hash listpack with TTLs does not hold triples")
    pairs = []
    fexp = {}
    for i in range(0, len(vals), 3):
        f, v, ttl = vals[i], vals[i + 1], vals[i + 2]
        if type(f) is not bytes:
            f = b"%d" % f
        if type(v) is not bytes:
            v = b"%d" % v
        pairs.append((f, v))
        if type(ttl) is not int:
            raise RdbError("hash listpack field TTL is not an integer")
        if ttl:
            fexp[f] = _check_hfe(ttl)
    return HashValue(pairs, fexp or None), pos


def _dec_stream(t: int, raw: bytes, start: int) -> tuple[Value, int]:
    return _decode_stream(t, raw, start)


_DECODERS = {
    T.STRING: _dec_string,
    T.LIST: _dec_list,
    T.SET: _dec_set,
    T.ZSET: _dec_zset,
    T.HASH: _dec_hash,
    T.ZSET_2: _dec_zset_2,
    T.MODULE: _dec_module,
    T.HASH_ZIPMAP: _blob_decoder(lambda b: HashValue(zipmap_pairs(b))),
    T.LIST_ZIPLIST: _blob_decoder(lambda b: ListValue(ziplist_entries(b))),
    T.SET_INTSET: _blob_decoder(lambda b: SetValue(intset_members(b))),
    T.ZSET_ZIPLIST: _blob_decoder(lambda b: ZSetValue(_pairs(ziplist_entries(b), "zset ziplist"))),
    T.HASH_ZIPLIST: _blob_decoder(lambda b: HashValue(_pairs(ziplist_entries(b), "hash ziplist"))),
    T.HASH_LISTPACK: _blob_decoder(
        lambda b: HashValue(_pairs(listpack_entries(b), "hash listpack"))
    ),
    T.ZSET_LISTPACK: _blob_decoder(
        lambda b: ZSetValue(_pairs(listpack_entries(b), "zset listpack"))
    ),
    T.SET_LISTPACK: _blob_decoder(lambda b: SetValue(listpack_entries(b))),
    T.LIST_QUICKLIST: _dec_quicklist,
    T.LIST_QUICKLIST_2: _dec_quicklist_2,
    T.STREAM: _dec_stream,
    T.HASH_2: _dec_hash_2,
    T.HASH_TTL: _dec_hash_ttl,
    T.HASH_TTL_MIN: _dec_hash_ttl,
    T.HASH_LISTPACK_TTL: _dec_hash_listpack_ttl,
    T.HASH_LISTPACK_TTL_MIN: _dec_hash_listpack_ttl,
}


def _unknown(valkey: bool):
    def dec(t: int, raw: bytes, start: int) -> tuple[Value, int]:
        if t == 6:
            raise RdbError("pre-GA module value (type 6) cannot be decoded without the module")
        if valkey:
            raise RdbError(f"unsupported Valkey RDB value type {t}")
        raise RdbError(f"unknown RDB value type {t}")

    return dec


def _decoder_table(valkey: bool) -> tuple:
    """Decoder per type byte of a magic, any version (a DUMP payload or a decoded value
    does not say which file version it came from)."""
    unknown = _unknown(valkey)
    return tuple(
        unknown if s is None else _DECODERS.get(s.layout, unknown)
        for s in T.value_types(valkey, T.NEWEST)
    )


_DECODE_REDIS = _decoder_table(False)
_DECODE_VALKEY = _decoder_table(True)


def _decode(t: int, raw: bytes, start: int, valkey: bool) -> tuple[Value, int]:
    return (_DECODE_VALKEY if valkey else _DECODE_REDIS)[t](t, raw, start)


def decode_value_at(type: int, buf: bytes, pos: int, *, valkey: bool) -> tuple[Value, int]:
    """Decode the value of ``type`` that starts at ``buf[pos]``; returns (value, end
    position). Raises :class:`Truncated` when ``buf`` ends inside the value, RdbError on
    corruption. Lets a caller find where a value ends while decoding it."""
    return _decode(type, buf, pos, valkey)


def decode_value(type: int, raw: bytes, *, valkey: bool) -> Value:
    """Decode a complete value. ``raw`` must hold exactly the value bytes (trailing bytes
    are an error). Empty aggregates decode to empty values (the caller skips them)."""
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    try:
        value, pos = _decode(type, raw, 0, valkey)
    except Truncated:
        raise RdbError(f"value of type {type} is truncated") from None
    if pos != len(raw):
        raise RdbError(f"{len(raw) - pos} unexpected bytes after a value of type {type}")
    return value
