"""DUMP payloads (protocols.md §2): building them from raw RDB value bytes, re-stamping them
for an older target, and re-encoding decoded values into the plain RDB encodings every
target understands.

A payload is ``type byte | value bytes | rdb version (u16 LE) | CRC64 (u64 LE)``.
"""

from __future__ import annotations

import struct

from .primitives import _CRC as _CRC_MODEL
from .types import STREAM_TYPES, value_types

__all__ = [
    "make_payload",
    "restore_version",
    "encode_string",
    "encode_length",
    "plain_encode",
    "PLAIN_TYPES",
    "stream_type_for",
    "stream_downgrade",
]

_U16 = struct.Struct("<H").pack
_U64 = struct.Struct("<Q").pack
_U32BE = struct.Struct(">I").pack
_U64BE = struct.Struct(">Q").pack
_DOUBLE = struct.Struct("<d").pack

_TYPE_BYTE = [bytes((i,)) for i in range(256)]
_VERSION_BYTES: dict[int, bytes] = {}
_CRC_CALC = _CRC_MODEL.calc


def make_payload(type_byte: int, raw, version: int) -> bytes:
    """``type | raw | version (u16 LE) | CRC64 (u64 LE)``. Hot path: one call per key."""
    v = _VERSION_BYTES.get(version)
    if v is None:
        v = _VERSION_BYTES[version] = _U16(version)
    body = _TYPE_BYTE[type_byte] + raw + v
    return body + _U64(_CRC_CALC(body))


def restore_version(
    type_byte: int, src_version: int, src_valkey: bool, accepts, target_plain_max: int
) -> int | None:
    """Pick the version to stamp on a RESTORE payload, or None when the target cannot load
    this type at all and the value must be re-encoded or rebuilt with commands.

    ``accepts(version, valkey_magic)`` says whether the target takes a payload version as is.
    ``target_plain_max`` is the newest *Redis-compatible* (non-foreign) version the target
    reads (11 for Valkey 8/9, the own version for Redis).

    The exact source version is used whenever the target accepts it. Otherwise the payload is
    re-stamped with the target's version when the type byte predates it: the value bytes of
    types 0..21 are laid out identically in every version that knows the type, and RESTORE
    only checks the version number before parsing the type.
    """
    if accepts(src_version, src_valkey):
        return src_version
    spec = value_types(src_valkey)[type_byte]
    if spec is not None and spec.portable and spec.since <= target_plain_max:
        return target_plain_max
    return None


def encode_length(n: int) -> bytes:
    if n < 64:
        return bytes((n,))
    if n < 16384:
        return bytes((0x40 | (n >> 8), n & 0xFF))
    if n <= 0xFFFFFFFF:
        return b"\x80" + _U32BE(n)
    return b"\x81" + _U64BE(n)


def encode_string(s: bytes) -> bytes:
    n = len(s)
    if n < 64:
        return bytes((n,)) + s
    return encode_length(n) + s


# Plain (non-compact) encodings, understood by every Redis/Valkey since RDB 1 (ZSET_2: 8).
PLAIN_TYPES = {"string": 0, "list": 1, "set": 2, "zset": 3, "hash": 4, "zset2": 5}


def plain_encode(kind: str, items, target_version: int) -> tuple[int, bytes]:
    """Encode a decoded value with the plain encodings: returns (type byte, raw value bytes).

    kind: 'string' (items = bytes), 'list'/'set' (iterable of bytes), 'zset' (list of
    (member, score text)), 'hash' (list of (field, value)).
    Zsets use binary doubles (ZSET_2) for targets >= RDB 8, string doubles otherwise.
    """
    if kind == "string":
        return 0, encode_string(items)
    es = encode_string
    if kind in ("list", "set"):
        parts = [encode_length(len(items))]
        parts.extend(es(x) for x in items)
        return (1 if kind == "list" else 2), b"".join(parts)
    if kind == "hash":
        parts = [encode_length(len(items))]
        for f, v in items:
            parts.append(es(f))
            parts.append(es(v))
        return 4, b"".join(parts)
    if kind == "zset":
        parts = [encode_length(len(items))]
        if target_version >= 8:
            for m, s in items:
                parts.append(es(m))
                parts.append(_DOUBLE(float(s)))
            return 5, b"".join(parts)
        for m, s in items:
            parts.append(es(m))
            f = float(s)
            if f != f:
                raise ValueError("NaN score")
            if f == float("inf"):
                parts.append(b"\xfe")
            elif f == float("-inf"):
                parts.append(b"\xff")
            else:
                t = repr(f).encode()
                parts.append(bytes((len(t),)) + t)
        return 3, b"".join(parts)
    raise ValueError(f"cannot plain-encode a {kind}")


# Stream value types, newest first, with the RDB version that introduced each: 27 adds the
# groups' NACK zones (Redis 8.8), 26 the IDMP section (Redis 8.6), 21 the consumers' active
# time (Redis 7.2), 19 the first / max-deleted ids, entries-added and the groups'
# entries-read (Redis 7.0), 15 is the original layout (Redis 5.0).
_STREAM_TYPES = tuple(
    (s.code, s.since) for s in reversed(value_types(False)) if s is not None and s.family == "stream"
)


def stream_type_for(target_plain_max: int) -> int | None:
    """The newest stream type a target whose plain RDB version is ``target_plain_max`` loads
    (None: no streams at all)."""
    for t, v in _STREAM_TYPES:
        if v <= target_plain_max:
            return t
    return None


def stream_downgrade(t: int, raw, to: int, dropped: list[int] | None = None) -> bytes:
    """Re-lay the value bytes of a stream of type ``t`` (15, 19, 21, 26 or 27) as the older
    type ``to``.

    The entries (node keys and listpacks), the groups' PELs and the consumers' pending ids are
    copied byte for byte, so every pending entry survives, also one whose message was deleted
    (which a command rebuild cannot claim). Only what the older layout has no room for is left
    out: first / max-deleted ids and entries-added (below 19), the groups' entries-read (below
    19), the consumers' active time (below 21; their seen time stays), the IDMP section
    (below 26), and (below 27) each group's NACK zone together with its entries in the
    group's PEL: an older server refuses or mishandles a PEL entry that no consumer owns.
    ``dropped`` (if given) gets ``[NACKed entries, IDMP producers, IDMP iids]`` added."""
    from .primitives import RdbError, read_length, skip_string
    from .walk import SHORT, skip_idmp_producer

    if to > t or t not in STREAM_TYPES or to not in STREAM_TYPES:
        raise ValueError(f"cannot re-lay a stream of type {t} as type {to}")
    buf = bytes(raw)
    out: list[bytes] = []
    el = encode_length
    nacked_total = 0
    try:
        nodes, p = read_length(buf, 0)
        for _ in range(nodes):
            p = skip_string(buf, skip_string(buf, p))
        out.append(buf[:p])
        s = p
        for _ in range(3):  # length, last id (ms, seq)
            _, p = read_length(buf, p)
        out.append(buf[s:p])
        if t >= 19:
            s = p
            for _ in range(5):  # first id, max deleted id, entries added
                _, p = read_length(buf, p)
            if to >= 19:
                out.append(buf[s:p])
        ngroups, p = read_length(buf, p)
        out.append(el(ngroups))
        for _ in range(ngroups):
            s = p
            p = skip_string(buf, p)  # name
            for _ in range(2):  # last delivered id
                _, p = read_length(buf, p)
            out.append(buf[s:p])
            if t >= 19:
                s = p
                _, p = read_length(buf, p)  # entries read
                if to >= 19:
                    out.append(buf[s:p])
            npel, p = read_length(buf, p)
            pel: list[tuple[int, int]] = []  # (start, end) of each PEL entry
            for _ in range(npel):  # id (16), delivery time (8), delivery count
                s = p
                _, p = read_length(buf, p + 24)
                pel.append((s, p))
            group: list[bytes] = []
            s = p
            nconsumers, p = read_length(buf, p)
            group.append(buf[s:p])
            for _ in range(nconsumers):
                s = p
                p = skip_string(buf, p) + 8  # name, seen time
                group.append(buf[s:p])
                if t >= 21:
                    p += 8  # active time
                    if to >= 21:
                        group.append(buf[p - 8 : p])
                s = p
                n, p = read_length(buf, p)
                p += 16 * n
                group.append(buf[s:p])
            nack: set[bytes] = set()
            if t >= 27:
                s = p
                n, p = read_length(buf, p)
                p += 16 * n
                if to >= 27:
                    group.append(buf[s:p])
                else:
                    nack = {buf[i : i + 16] for i in range(p - 16 * n, p, 16)}
                    nacked_total += len(nack)
            kept = [buf[a:b] for a, b in pel if buf[a : a + 16] not in nack] if nack else None
            if kept is None:
                out.append(el(npel))
                if pel:
                    out.append(buf[pel[0][0] : pel[-1][1]])
            else:
                out.append(el(len(kept)))
                out += kept
            out += group
        producers = iids = 0  # of an IDMP section left out
        if t >= 26:
            s = p
            for _ in range(2):  # duration, max entries
                _, p = read_length(buf, p)
            producers, p = read_length(buf, p)
            for _ in range(producers):
                p, n = skip_idmp_producer(buf, p)
                iids += n
            for _ in range(2):  # iids added, iids duplicates
                _, p = read_length(buf, p)
            if to >= 26:
                out.append(buf[s:p])
                producers = iids = 0
    except SHORT:
        raise RdbError("stream value is truncated") from None
    if p != len(buf):
        raise RdbError("stream value does not end where its last consumer group does")
    if dropped is not None:
        dropped[0] += nacked_total
        dropped[1] += producers
        dropped[2] += iids
    return b"".join(out)
