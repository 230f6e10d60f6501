"""Decoders for the compact in-memory encodings that RDB values embed as blobs
(protocols.md §1.8): ziplist, listpack, intset and zipmap.

All functions take the complete blob (bytes-like) and return plain Python lists. They are
bounds-checked: any declared length that runs past the blob, a missing terminator or an
invalid encoding byte raises :class:`~redshake.rdb.primitives.RdbError`. Integers are
returned as decimal ASCII bytes (what a server would reply for that element), except by
:func:`listpack_values`, which keeps them as ``int`` for callers that need numbers
(stream nodes).

These loops are the hot path of RDB decoding: they use local aliases and precompiled
``struct`` unpackers, and avoid per-element function calls where possible.
"""

from __future__ import annotations

import struct

from .primitives import RdbError

__all__ = [
    "ziplist_entries",
    "listpack_entries",
    "listpack_values",
    "intset_members",
    "zipmap_pairs",
]

_U16LE = struct.Struct("<H").unpack_from
_U32LE = struct.Struct("<I").unpack_from
_U32BE = struct.Struct(">I").unpack_from
_I16LE = struct.Struct("<h").unpack_from
_I32LE = struct.Struct("<i").unpack_from
_I64LE = struct.Struct("<q").unpack_from

# Decimal text of small integers, reused instead of str(v).encode() for the common case.
_SMALL = [str(i).encode() for i in range(128)]
_SMALL_NEG = [str(i).encode() for i in range(-4096, 4096)]  # 13-bit listpack ints


def _as_bytes(blob) -> bytes:
    return blob if type(blob) is bytes else bytes(blob)


# --------------------------------------------------------------------------------------
# listpack
# --------------------------------------------------------------------------------------


def _backlen_size(n: int) -> int:
    if n <= 127:
        return 1
    if n < 16383:
        return 2
    if n < 2097151:
        return 3
    if n < 268435455:
        return 4
    return 5


def _listpack(blob, as_bytes: bool) -> list:
    b = _as_bytes(blob)
    size = len(b)
    if size < 7:
        raise RdbError(f"listpack too short ({size} bytes)")
    total = _U32LE(b, 0)[0]
    if total != size:
        raise RdbError(f"listpack header says {total} bytes but the blob has {size}")
    if b[size - 1] != 0xFF:
        raise RdbError("listpack is not terminated by 0xFF")
    declared = _U16LE(b, 4)[0]
    out: list = []
    append = out.append
    small = _SMALL
    small13 = _SMALL_NEG
    end = size - 1  # position of the 0xFF terminator
    pos = 6
    try:
        while pos < end:
            c = b[pos]
            if c < 0x80:  # 7-bit uint
                append(small[c] if as_bytes else c)
                pos += 2  # 1 byte + 1 byte backlen
            elif c < 0xC0:  # 6-bit string length
                n = c & 0x3F
                p = pos + 1
                append(b[p : p + n])
                pos = p + n + 1  # L = 1 + n <= 64: one backlen byte
            elif c < 0xE0:  # 13-bit int
                v = ((c & 0x1F) << 8) | b[pos + 1]
                if v >= 4096:
                    v -= 8192
                append(small13[v + 4096] if as_bytes else v)
                pos += 3
            elif c < 0xF0:  # 12-bit string length
                n = ((c & 0x0F) << 8) | b[pos + 1]
                p = pos + 2
                append(b[p : p + n])
                pos = p + n + _backlen_size(n + 2)
            elif c == 0xF0:  # 32-bit string length
                n = _U32LE(b, pos + 1)[0]
                p = pos + 5
                append(b[p : p + n])
                pos = p + n + _backlen_size(n + 5)
            elif c == 0xF1:
                v = _I16LE(b, pos + 1)[0]
                append(str(v).encode() if as_bytes else v)
                pos += 4
            elif c == 0xF2:
                v = b[pos + 1] | (b[pos + 2] << 8) | (b[pos + 3] << 16)
                if v >= 0x800000:
                    v -= 0x1000000
                append(str(v).encode() if as_bytes else v)
                pos += 5
            elif c == 0xF3:
                v = _I32LE(b, pos + 1)[0]
                append(str(v).encode() if as_bytes else v)
                pos += 6
            elif c == 0xF4:
                v = _I64LE(b, pos + 1)[0]
                append(str(v).encode() if as_bytes else v)
                pos += 10
            else:
                raise RdbError(
                    f"invalid listpack entry encoding byte 0x{c:02x} at blob offset {pos}"
                )
    except (IndexError, struct.error):
        raise RdbError("listpack entry runs past the end of the blob") from None
    if pos != end:
        raise RdbError("listpack entry runs past the end of the blob")
    if declared != 65535 and declared != len(out):
        raise RdbError(f"listpack header says {declared} elements but {len(out)} were found")
    return out


def listpack_entries(blob) -> list[bytes]:
    """All elements of a listpack, integers as decimal ASCII bytes."""
    return _listpack(blob, True)


def listpack_values(blob) -> list[int | bytes]:
    """All elements of a listpack; integer-encoded elements as ``int``, strings as bytes."""
    return _listpack(blob, False)


# --------------------------------------------------------------------------------------
# ziplist
# --------------------------------------------------------------------------------------


def ziplist_entries(blob) -> list[bytes]:
    """All elements of a ziplist (RDB ≤ 9 lists/hashes/zsets, quicklist-v1 nodes)."""
    b = _as_bytes(blob)
    size = len(b)
    if size < 11:
        raise RdbError(f"ziplist too short ({size} bytes)")
    total = _U32LE(b, 0)[0]
    if total != size:
        raise RdbError(f"ziplist header says {total} bytes but the blob has {size}")
    if b[size - 1] != 0xFF:
        raise RdbError("ziplist is not terminated by 0xFF")
    declared = _U16LE(b, 8)[0]
    out: list[bytes] = []
    append = out.append
    small = _SMALL
    end = size - 1
    pos = 10
    try:
        while pos < end:
            # prevlen
            pos += 5 if b[pos] == 0xFE else 1
            c = b[pos]
            t = c >> 6
            if t == 0:
                p = pos + 1
                n = c & 0x3F
            elif t == 1:
                p = pos + 2
                n = ((c & 0x3F) << 8) | b[pos + 1]
            elif t == 2:
                if c != 0x80:
                    raise RdbError(f"invalid ziplist string encoding byte 0x{c:02x}")
                p = pos + 5
                n = _U32BE(b, pos + 1)[0]
            else:
                if 0xF1 <= c <= 0xFD:
                    append(small[c - 0xF1])
                    pos += 1
                elif c == 0xC0:
                    append(str(_I16LE(b, pos + 1)[0]).encode())
                    pos += 3
                elif c == 0xD0:
                    append(str(_I32LE(b, pos + 1)[0]).encode())
                    pos += 5
                elif c == 0xE0:
                    append(str(_I64LE(b, pos + 1)[0]).encode())
                    pos += 9
                elif c == 0xF0:
                    if pos + 4 > end:
                        raise IndexError
                    v = b[pos + 1] | (b[pos + 2] << 8) | (b[pos + 3] << 16)
                    if v >= 0x800000:
                        v -= 0x1000000
                    append(str(v).encode())
                    pos += 4
                elif c == 0xFE:
                    v = b[pos + 1]
                    append(str(v - 256 if v > 127 else v).encode())
                    pos += 2
                else:
                    raise RdbError(f"invalid ziplist entry encoding byte 0x{c:02x}")
                continue
            pos = p + n
            if pos > end:
                raise IndexError
            append(b[p:pos])
    except (IndexError, struct.error):
        raise RdbError("ziplist entry runs past the end of the blob") from None
    if pos != end:
        raise RdbError("ziplist entry runs past the end of the blob")
    if declared != 65535 and declared != len(out):
        raise RdbError(f"ziplist header says {declared} elements but {len(out)} were found")
    return out


# --------------------------------------------------------------------------------------
# intset
# --------------------------------------------------------------------------------------

_INTSET_FMT = {2: "h", 4: "i", 8: "q"}


def intset_members(blob) -> list[bytes]:
    """Members of an intset as decimal ASCII bytes (ascending order, as stored)."""
    b = _as_bytes(blob)
    if len(b) < 8:
        raise RdbError(f"intset too short ({len(b)} bytes)")
    width, count = struct.unpack_from("<II", b, 0)
    fmt = _INTSET_FMT.get(width)
    if fmt is None:
        raise RdbError(f"invalid intset encoding {width}")
    if len(b) != 8 + width * count:
        raise RdbError(
            f"intset declares {count} members of {width} bytes but the blob has {len(b)} bytes"
        )
    return [str(v).encode() for v in struct.unpack_from(f"<{count}{fmt}", b, 8)]


# --------------------------------------------------------------------------------------
# zipmap
# --------------------------------------------------------------------------------------


def zipmap_pairs(blob) -> list[tuple[bytes, bytes]]:
    """Field/value pairs of a zipmap (pre-2.6 small hashes). The 1-byte count is only a
    hint (≥ 254 means unknown), so the map is always walked up to its 0xFF terminator."""
    b = _as_bytes(blob)
    size = len(b)
    if size < 2:
        raise RdbError("zipmap too short")
    out: list[tuple[bytes, bytes]] = []
    pos = 1
    try:
        while True:
            n = b[pos]
            if n == 0xFF:
                pos += 1
                break
            if n == 0xFE:
                n = _U32LE(b, pos + 1)[0]
                pos += 5
            else:
                pos += 1
            if pos + n > size:
                raise IndexError
            field = b[pos : pos + n]
            pos += n
            n = b[pos]
            if n == 0xFE:
                n = _U32LE(b, pos + 1)[0]
                pos += 5
            elif n == 0xFF:
                raise RdbError("zipmap ends between a field and its value")
            else:
                pos += 1
            free = b[pos]
            pos += 1
            if pos + n + free > size:
                raise IndexError
            out.append((field, b[pos : pos + n]))
            pos += n + free
    except (IndexError, struct.error):
        raise RdbError("zipmap entry runs past the end of the blob") from None
    if pos != size:
        raise RdbError("trailing bytes after the zipmap terminator")
    return out
