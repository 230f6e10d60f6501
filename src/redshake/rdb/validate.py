"""Structural checks of the compact blobs inside a value, as strict as a server's own
integrity validation (Redis's ``ziplistValidateIntegrity`` / ``lpValidateIntegrity`` /
``intsetValidateIntegrity`` with deep checks, plus the duplicate and pairing checks it runs
when it converts them). The value decoders read these blobs leniently; a file without a
checksum gets this check before anything is written, so a corrupt blob that a target would
refuse (``Bad data format``), or accept and crash on later, stops the run up front instead of
half way.
"""

from __future__ import annotations

import re
import struct

from .encodings import listpack_values
from .primitives import RdbError, read_length, read_string

__all__ = ["check_blobs", "check_blob_headers"]

_U16LE = struct.Struct("<H").unpack_from
_U32LE = struct.Struct("<I").unpack_from
_U32BE = struct.Struct(">I").unpack_from

_DOUBLE_TEXT = re.compile(rb"[ \t\n\v\f\r]*[+-]?(?:[0-9]|\.[0-9]|inf|nan)", re.IGNORECASE)

_STREAM_ID = re.compile(rb"([0-9]+)-([0-9]+)")

# ziplist integer encodings -> payload size
_ZL_INT = {0xC0: 2, 0xD0: 4, 0xE0: 8, 0xF0: 3, 0xFE: 1}


def ziplist_check(b: bytes) -> int:
    """Deep check of a ziplist; returns its number of entries."""
    size = len(b)
    if size < 11 or _U32LE(b, 0)[0] != size or b[-1] != 0xFF:
        raise RdbError("ziplist header or terminator is invalid")
    tail = _U32LE(b, 4)[0]
    declared = _U16LE(b, 8)[0]
    end = size - 1
    pos = 10
    prev_len = 0
    last = 10
    n = 0
    while pos < end:
        start = pos
        c = b[pos]
        if c < 0xFE:
            plen = c
            pos += 1
        elif c == 0xFE:
            if pos + 5 > end:
                raise RdbError("ziplist entry runs past the end of the blob")
            plen = _U32LE(b, pos + 1)[0]
            pos += 5
        else:
            raise RdbError("ziplist entry has an invalid prevlen")
        if plen != prev_len:
            raise RdbError("ziplist entry prevlen does not match the previous entry")
        if pos >= end:
            raise RdbError("ziplist entry runs past the end of the blob")
        c = b[pos]
        t = c >> 6
        if t == 0:
            pos += 1 + (c & 0x3F)
        elif t == 1:
            if pos + 2 > end:
                raise RdbError("ziplist entry runs past the end of the blob")
            pos += 2 + (((c & 0x3F) << 8) | b[pos + 1])
        elif t == 2:
            if c != 0x80 or pos + 5 > end:
                raise RdbError(f"invalid ziplist string encoding byte 0x{c:02x}")
            pos += 5 + _U32BE(b, pos + 1)[0]
        elif 0xF1 <= c <= 0xFD:
            pos += 1
        elif c in _ZL_INT:
            pos += 1 + _ZL_INT[c]
        else:
            raise RdbError(f"invalid ziplist entry encoding byte 0x{c:02x}")
        if pos > end:
            raise RdbError("ziplist entry runs past the end of the blob")
        prev_len = pos - start
        last = start
        n += 1
    if tail != last:
        raise RdbError("ziplist tail offset does not point at its last entry")
    if declared != 65535 and declared != n:
        raise RdbError(f"ziplist header says {declared} elements but {n} were found")
    return n


def _backlen(n: int) -> bytes:
    """A listpack entry's back-length, as lpEncodeBacklen writes it."""
    size = 1 if n <= 127 else 2 if n < 16383 else 3 if n < 2097151 else 4 if n < 268435455 else 5
    return bytes(((n >> (7 * (size - 1 - i))) & 127) | (128 if i else 0) for i in range(size))


def _backlen_ok(b: bytes, pos: int, n: int) -> int:
    """Check the backlen of an entry of ``n`` bytes that ends at ``pos``; returns its end."""
    want = _backlen(n)
    if b[pos : pos + len(want)] != want:
        raise RdbError("listpack entry has a wrong back-length")
    return pos + len(want)


def listpack_check(b: bytes) -> int:
    """Deep check of a listpack; returns its number of entries."""
    size = len(b)
    if size < 7 or _U32LE(b, 0)[0] != size or b[-1] != 0xFF:
        raise RdbError("listpack header or terminator is invalid")
    declared = _U16LE(b, 4)[0]
    end = size - 1
    pos = 6
    n = 0
    try:
        while pos < end:
            c = b[pos]
            if c < 0x80:
                ln = 1
            elif c < 0xC0:
                ln = 1 + (c & 0x3F)
            elif c < 0xE0:
                ln = 2
            elif c < 0xF0:
                ln = 2 + (((c & 0x0F) << 8) | b[pos + 1])
            elif c == 0xF0:
                ln = 5 + _U32LE(b, pos + 1)[0]
            elif c == 0xF1:
                ln = 3
            elif c == 0xF2:
                ln = 4
            elif c == 0xF3:
                ln = 5
            elif c == 0xF4:
                ln = 9
            else:
                raise RdbError(f"invalid listpack entry encoding byte 0x{c:02x}")
            if pos + ln > end:
                raise RdbError("listpack entry runs past the end of the blob")
            pos = _backlen_ok(b, pos + ln, ln)
            n += 1
    except (IndexError, struct.error):
        raise RdbError("listpack entry runs past the end of the blob") from None
    if pos != end:
        raise RdbError("listpack entry runs past the end of the blob")
    if declared != 65535 and declared != n:
        raise RdbError(f"listpack header says {declared} elements but {n} were found")
    return n


def intset_check(b: bytes) -> None:
    if len(b) < 8:
        raise RdbError("intset too short")
    width, count = struct.unpack_from("<II", b, 0)
    fmt = {2: "h", 4: "i", 8: "q"}.get(width)
    if fmt is None or count == 0 or len(b) != 8 + width * count:
        raise RdbError("intset header is invalid")
    vals = struct.unpack_from(f"<{count}{fmt}", b, 8)
    if any(vals[i] >= vals[i + 1] for i in range(count - 1)):
        raise RdbError("intset members are not in ascending order")


def _no_dups(items, what: str) -> None:
    if len(set(items)) != len(items):
        raise RdbError(f"{what} has duplicate elements")


def _stream_node_check(blob: bytes) -> None:
    """What ``streamValidateListpackIntegrity`` checks in a stream node that the decoder does
    not: each entry's trailing lp-count (its number of listpack elements, which a server uses
    to walk the node backwards, e.g. XREVRANGE). Runs after the node decoded."""
    vals = listpack_values(blob)
    try:
        count, deleted, nmf = vals[0], vals[1], vals[2]
        i = 4 + nmf  # after the master fields and their 0 terminator
        for _ in range(count + deleted):
            if vals[i] & 2:  # SAMEFIELDS: flags, ms, seq, the values
                want = nmf + 3
            else:  # flags, ms, seq, nf, the fields and values
                want = 2 * vals[i + 3] + 4
            i += want
            if vals[i] != want:
                raise RdbError("stream entry has a wrong lp-count")
            i += 1
    except (IndexError, TypeError):
        raise RdbError("malformed stream node listpack") from None


def _stream_groups_check(groups) -> None:
    """What a server refuses in consumer groups when it loads a stream: duplicate group,
    consumer or pending ids, and a consumer's pending id missing from its group's PEL."""
    _no_dups([g.name for g in groups], "stream consumer group list")
    for g in groups:
        pel = {pid for pid, _t, _c in g.pel}
        if len(pel) != len(g.pel):
            raise RdbError(f"consumer group {g.name!r} has a pending id twice")
        _no_dups([c.name for c in g.consumers], f"consumer group {g.name!r}")
        for c in g.consumers:
            _no_dups(c.pel_ids, f"consumer {c.name!r}")
            if any(pid not in pel for pid in c.pel_ids):
                raise RdbError(f"consumer {c.name!r} has a pending id its group does not have")
        if g.nacked:  # type 27: NACKed ids are PEL entries that no consumer owns
            _no_dups(g.nacked, f"NACK zone of consumer group {g.name!r}")
            owned = {pid for c in g.consumers for pid in c.pel_ids}
            if any(pid not in pel or pid in owned for pid in g.nacked):
                raise RdbError(
                    f"NACK zone of consumer group {g.name!r} has an id that is not an "
                    "unowned entry of its PEL"
                )


def check_blobs(t: int, raw: bytes, value) -> None:
    """Deep-check the compact blobs of a value of type ``t`` (``raw``: its bytes) that was
    decoded to ``value``: what the decoder does not verify itself."""
    if t in (10, 12, 13):
        blob, _ = read_string(raw, 0)
        ziplist_check(blob)
    elif t in (16, 17, 20, 23, 25):
        blob, _ = read_string(raw, 8 if t == 25 else 0)
        listpack_check(blob)
    elif t == 11:
        blob, _ = read_string(raw, 0)
        intset_check(blob)
    elif t in (14, 18):
        n, pos = read_length(raw, 0)
        for _ in range(n):
            container = 2
            if t == 18:
                container, pos = read_length(raw, pos)
            blob, pos = read_string(raw, pos)
            if t == 14:
                ziplist_check(blob)
            elif container == 2:
                listpack_check(blob)
    elif t in (15, 19, 21, 26, 27):
        n, pos = read_length(raw, 0)
        for _ in range(n):
            _nodekey, pos = read_string(raw, pos)
            blob, pos = read_string(raw, pos)
            listpack_check(blob)
            _stream_node_check(blob)
        # (the length field is left alone: real files disagree with their entries, e.g. after
        # an XTRIM in old versions; Redis 7.0 loads them, Valkey 9 refuses them). Entry ids
        # must ascend: XADD never writes them out of order.
        ids = [_STREAM_ID.fullmatch(eid) for eid, _fv in value.entries]
        nums = [(int(m[1]), int(m[2])) for m in ids if m]
        # a negative or too large part: a node's delta points outside the 64-bit ids
        if len(nums) != len(ids) or any(ms >> 64 or seq >> 64 for ms, seq in nums):
            raise RdbError("stream entry id is out of range")
        if any(nums[i] >= nums[i + 1] for i in range(len(nums) - 1)):
            raise RdbError("stream entries are not in ascending id order")
        _stream_groups_check(value.groups)
    elif t == 3:  # scores as text: what the server's sscanf("%lg") must accept
        for _m, sc in value.items:
            if not _DOUBLE_TEXT.match(sc):
                raise RdbError(f"sorted set score {sc[:40]!r} is not a number")
    elif t == 9:
        blob, _ = read_string(raw, 0)
        if blob[0] < 254 and blob[0] != len(value.pairs):
            raise RdbError(f"zipmap says {blob[0]} pairs but holds {len(value.pairs)}")
    kind = getattr(value, "kind", None)
    if t in (12, 13, 16, 17, 23, 25):
        _no_dups([p[0] for p in (value.items if kind == "zset" else value.pairs)], "value")
    elif t in (11, 20, 2, 4, 3, 5):
        if t in (11, 20, 2):
            _no_dups(value.members, "set")
        elif t == 4:
            _no_dups([p[0] for p in value.pairs], "hash")
        else:
            _no_dups([m for m, _ in value.items], "sorted set")


def _header_ok(kind: int, b) -> bool:
    """The O(1) header checks a server makes on a blob: its own byte count, terminator,
    and (intsets) element width and size. kind: 0 ziplist, 1 listpack, 2 intset."""
    n = len(b)
    if kind == 2:
        return n >= 8 and _U32LE(b, 0)[0] in (2, 4, 8) and n == 8 + _U32LE(b, 0)[0] * _U32LE(b, 4)[0]
    if n < (11 if kind == 0 else 7) or b[n - 1] != 0xFF or _U32LE(b, 0)[0] != n:
        return False
    return kind == 1 or _U32LE(b, 4)[0] < n


# single-blob value types -> blob kind (0 ziplist, 1 listpack, 2 intset)
_BLOB_KIND = {10: 0, 12: 0, 13: 0, 16: 1, 17: 1, 20: 1, 11: 2}


def check_blob_headers(t: int, raw) -> None:
    """For a value whose bytes a checksum vouches for: the cheap header checks of its blobs
    that are stored uncompressed (an LZF-compressed blob is left alone: decompressing it is
    what a full check costs). Catches a blob whose header a server would refuse."""
    kind = _BLOB_KIND.get(t)
    try:
        if kind is not None:
            c = raw[0]
            if c >= 0xC0:  # LZF (or an integer: not a blob at all)
                return
            n, pos = read_length(raw, 0)
            if not _header_ok(kind, raw[pos : pos + n]):
                raise RdbError(f"value of type {t}: its blob header is invalid")
        elif t in (14, 18):
            count, pos = read_length(raw, 0)
            for _ in range(count):
                container = 2
                if t == 18:
                    container, pos = read_length(raw, pos)
                if raw[pos] >= 0xC0:
                    _s, pos = read_string(raw, pos) if raw[pos] != 0xC3 else _skip_lzf(raw, pos)
                    continue
                n, pos = read_length(raw, pos)
                if container == 2 and not _header_ok(0 if t == 14 else 1, raw[pos : pos + n]):
                    raise RdbError(f"value of type {t}: a node's blob header is invalid")
                pos += n
    except (IndexError, struct.error):
        raise RdbError(f"value of type {t} is truncated") from None


def _skip_lzf(raw, pos: int) -> tuple[None, int]:
    clen, p = read_length(raw, pos + 1)
    _ulen, p = read_length(raw, p)
    return None, p + clen
