"""Low-level walkers used by the streaming parser: find where RDB items end without
decoding them (no LZF decompression, no blob decoding), and read the few items that are
needed (keys, AUX strings, elements of big values). The string and length readers are
those of :mod:`~redshake.rdb.primitives`.

Conventions: every function takes ``(buf, pos)`` with ``buf`` a bytes-like buffer and
returns the new position. Running off the end of ``buf`` raises :class:`Truncated` (with
the position that must be available, when known), :class:`IndexError` or
:class:`struct.error`; the parser treats all three as "need more data". ``RdbError``
offsets raised here are positions in ``buf``; the parser turns them into file offsets.
"""

from __future__ import annotations

import struct

from .primitives import RdbError, Truncated, read_double_str, read_length, read_string, skip_string
from .values import stream_node_entries

_U16LE = struct.Struct("<H").unpack_from
_U32LE = struct.Struct("<I").unpack_from
_U32BE = struct.Struct(">I").unpack_from
_U64BE = struct.Struct(">Q").unpack_from
_I16LE = struct.Struct("<h").unpack_from
_I32LE = struct.Struct("<i").unpack_from
_I64LE = struct.Struct("<q").unpack_from
_F64LE = struct.Struct("<d").unpack_from

SHORT = (Truncated, IndexError, struct.error)


def _check(buf, e: int) -> int:
    if e > len(buf):
        raise Truncated(e)
    return e


# ---- element skippers of aggregate values: (buf, p) -> end of one element ----------------


def el_str(buf, p: int) -> int:
    return skip_string(buf, p)


def el_pair(buf, p: int) -> int:
    return skip_string(buf, skip_string(buf, p))


def el_zset_str(buf, p: int) -> int:
    q = skip_string(buf, p)
    n = buf[q]
    return _check(buf, q + 1 if n >= 253 else q + 1 + n)


def el_zset_bin(buf, p: int) -> int:
    return _check(buf, skip_string(buf, p) + 8)


def el_ql2(buf, p: int) -> int:
    c, q = read_length(buf, p)
    if c != 1 and c != 2:
        raise RdbError(f"invalid quicklist container {c} (expected 1 PLAIN or 2 PACKED)", p)
    return skip_string(buf, q)


def el_hash_ttl_first(buf, p: int) -> int:
    """Redis 7.4 HASH_METADATA(_PRE_GA) element: len-enc ttl, field, value."""
    _, q = read_length(buf, p)
    return skip_string(buf, skip_string(buf, q))


def el_hash_ttl_last(buf, p: int) -> int:
    """Valkey HASH_2 element: field, value, 8-byte LE expiry."""
    return _check(buf, skip_string(buf, skip_string(buf, p)) + 8)


# ---- element readers for big values: (buf, p, out, extra) -> end ----------------------


def rd_str(buf, p: int, out: list, extra: int) -> int:
    s, p = read_string(buf, p)
    out.append(s)
    return p


def rd_pair(buf, p: int, out: list, extra: int) -> int:
    f, p = read_string(buf, p)
    v, p = read_string(buf, p)
    out.append((f, v))
    return p


def rd_zset_str(buf, p: int, out: list, extra: int) -> int:
    m, p = read_string(buf, p)
    s, p = read_double_str(buf, p)
    out.append((m, s))
    return p


def rd_zset_bin(buf, p: int, out: list, extra: int) -> int:
    m, p = read_string(buf, p)
    d = _F64LE(buf, p)[0]
    out.append((m, repr(d).encode()))
    return p + 8


class StreamWalk:
    """State of a stream value streamed node by node: its type byte and the id of its
    first live entry (type 15 does not store it in its tail)."""

    __slots__ = ("type", "first")

    def __init__(self, t: int) -> None:
        self.type = t
        self.first = b""


def rd_stream_node(buf, p: int, out: list, st: StreamWalk) -> int:
    """One stream node (master id + listpack): its live entries ``(id, [field, value, ...])``."""
    nodekey, p = read_string(buf, p)
    lp, p = read_string(buf, p)
    entries = stream_node_entries(nodekey, lp)
    if entries and not st.first:
        st.first = entries[0][0]
    out += entries
    return p


# ---- composite walkers --------------------------------------------------------------


def skip_stream_tail(buf, p: int, t: int) -> int:
    """Walk a stream value after its nodes (§1.9): length, ids, groups, PELs, consumers."""
    for _ in range(3 if t == 15 else 8):  # length, last_id[, first_id, max_deleted, added]
        _, p = read_length(buf, p)
    groups, p = read_length(buf, p)
    for _ in range(groups):
        p = skip_stream_group(buf, p, t)
    if t >= 26:
        p = skip_stream_idmp(buf, p)
    return p


def skip_stream_idmp(buf, p: int) -> int:
    """Walk the IDMP section of a stream of type 26 / 27: duration, max entries, producers
    (id, count, then per entry an iid and a stream id as two lengths), iids added / dups."""
    for _ in range(2):
        _, p = read_length(buf, p)
    producers, p = read_length(buf, p)
    for _ in range(producers):
        p, _ = skip_idmp_producer(buf, p)
    for _ in range(2):
        _, p = read_length(buf, p)
    return p


def skip_idmp_producer(buf, p: int) -> tuple[int, int]:
    """Walk one IDMP producer: its id, then its iids, each with a stream id as two lengths.
    Returns (end, number of iids)."""
    p = skip_string(buf, p)
    n, p = read_length(buf, p)
    for _ in range(n):
        p = skip_string(buf, p)
        _, p = read_length(buf, p)
        _, p = read_length(buf, p)
    return p, n


def skip_stream_group(buf, p: int, t: int) -> int:
    """Walk one consumer group of a stream tail. A PEL that is not buffered yet raises
    Truncated with (a lower bound of) its end, so a caller fed small chunks does not walk
    a big PEL again for every chunk."""
    p = skip_string(buf, p)
    for _ in range(2 if t == 15 else 3):  # last_id[, entries_read]
        _, p = read_length(buf, p)
    pel, p = read_length(buf, p)
    _check(buf, p + 25 * pel)  # id(16) + delivery time(8) + delivery count (>= 1 byte)
    for _ in range(pel):
        _, p = read_length(buf, p + 24)
    consumers, p = read_length(buf, p)
    for _ in range(consumers):
        p = skip_string(buf, p) + (16 if t >= 21 else 8)  # name, seen[, active] time
        n, p = read_length(buf, p)
        p = _check(buf, p + 16 * n)
    if t >= 27:  # NACK zone: unowned PEL ids
        n, p = read_length(buf, p)
        p = _check(buf, p + 16 * n)
    return _check(buf, p)


def skip_module_values(buf, p: int) -> int:
    """Walk an annotated module value stream (§1.10) up to and including its EOF opcode."""
    while True:
        start = p
        op, p = read_length(buf, p)
        if op == 0:
            return p
        if op == 1 or op == 2:
            _, p = read_length(buf, p)
        elif op == 3:
            p = _check(buf, p + 4)
        elif op == 4:
            p = _check(buf, p + 8)
        elif op == 5:
            p = skip_string(buf, p)
        else:
            raise RdbError(f"unknown module value opcode {op}", start)


_MODULE_CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def module_name(module_id: int) -> tuple[str, int]:
    """(9-character module type name, encoding version) of a 64-bit module type id."""
    name = "".join(_MODULE_CHARSET[(module_id >> (58 - 6 * i)) & 63] for i in range(9))
    return name, module_id & 1023


# ---- empty aggregate detection -------------------------------------------------------

BLOB_ZIPMAP, BLOB_ZIPLIST, BLOB_INTSET, BLOB_LISTPACK = 1, 2, 3, 4


def blob_empty(buf, p: int, fmt: int) -> bool:
    """True when the raw (non-LZF) blob string at ``p`` holds no element. A compressed
    blob is never empty: LZF is only used for strings longer than 20 bytes."""
    b = buf[p]
    if b < 0x40:
        s, n = p + 1, b
    elif b < 0x80:
        s, n = p + 2, ((b & 0x3F) << 8) | buf[p + 1]
    elif b == 0x80:
        s, n = p + 5, _U32BE(buf, p + 1)[0]
    else:
        return False
    if fmt == BLOB_LISTPACK:
        return n >= 7 and _U16LE(buf, s + 4)[0] == 0
    if fmt == BLOB_ZIPLIST:
        return n >= 11 and _U16LE(buf, s + 8)[0] == 0
    if fmt == BLOB_INTSET:
        return n >= 8 and _U32LE(buf, s + 4)[0] == 0
    if fmt == BLOB_ZIPMAP:
        return n >= 2 and (buf[s + 1] == 0xFF)
    return False


def quicklist_empty(buf, p: int, count: int, t: int) -> bool:
    """True when every node of the quicklist whose first node starts at ``p`` is empty."""
    for _ in range(count):
        if t == 18:
            c, p = read_length(buf, p)
            if c == 1:
                return False
            if not blob_empty(buf, p, BLOB_LISTPACK):
                return False
        elif not blob_empty(buf, p, BLOB_ZIPLIST):
            return False
        p = skip_string(buf, p)
    return True
