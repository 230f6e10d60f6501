"""RDB primitive encodings (protocols.md §1.3): length encoding, rdb-strings, LZF, CRC64.

Every reader takes ``(buf, pos)`` and returns ``(value, new_pos)``. ``buf`` is any bytes-like
object supporting slicing (bytes, bytearray, memoryview). When the buffer ends before the item
does, :class:`Truncated` is raised: a streaming parser treats that as "feed me more", a decoder
of a complete value treats it as corruption.
"""

from __future__ import annotations

import re
import struct

import lzf
from anycrc import Model

from ..errors import BadInput

__all__ = [
    "Truncated",
    "RdbError",
    "read_length",
    "read_string",
    "skip_string",
    "read_double_str",
    "lzf_decompress",
    "LzfStream",
    "crc64",
    "Crc64",
    "ENC_INT8",
    "ENC_INT16",
    "ENC_INT32",
    "ENC_LZF",
]


class Truncated(Exception):
    """The buffer ended inside an item."""


class RdbError(BadInput):
    """Corrupt, truncated or unsupported RDB input.

    ``offset`` is the absolute byte offset in the file/stream where the problem was found,
    ``key`` the key being parsed when known.
    """

    def __init__(self, message: str, offset: int | None = None, key: bytes | None = None):
        self.message = message
        self.offset = offset
        self.key = key
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = [self.message]
        if self.offset is not None:
            parts.append(f"at byte offset {self.offset}")
        if self.key is not None:
            parts.append(f"while reading key {self.key!r}")
        return " ".join(parts)


ENC_INT8, ENC_INT16, ENC_INT32, ENC_LZF = 0, 1, 2, 3

_U32BE = struct.Struct(">I").unpack_from
_U64BE = struct.Struct(">Q").unpack_from
_I16LE = struct.Struct("<h").unpack_from
_I32LE = struct.Struct("<i").unpack_from

# what running off the end of a buffer raises in the readers below (turned into Truncated)
_SHORT = (IndexError, struct.error)
_INT8 = [str(i - 256 if i > 127 else i).encode() for i in range(256)]


def read_length(buf, p: int) -> tuple[int, int]:
    """Read a plain len-enc integer (special encodings are an error here)."""
    try:
        b = buf[p]
        if b < 0x40:
            return b, p + 1
        if b < 0x80:
            return ((b & 0x3F) << 8) | buf[p + 1], p + 2
        if b == 0x80:
            return _U32BE(buf, p + 1)[0], p + 5
        if b == 0x81:
            return _U64BE(buf, p + 1)[0], p + 9
    except _SHORT:
        raise Truncated from None
    if b >= 0xC0:
        raise RdbError(f"unexpected string encoding byte 0x{b:02x} where a length was expected", p)
    raise RdbError(f"invalid length encoding byte 0x{b:02x}", p)


def lzf_decompress(data, ulen: int, pos: int = 0) -> bytes:
    if ulen == 0:
        return b""
    try:
        out = lzf.decompress(bytes(data), ulen)
    except Exception as e:  # python-lzf raises ValueError on bad data
        raise RdbError(f"invalid LZF data ({e})", pos) from None
    if out is None or len(out) != ulen:
        raise RdbError("LZF data does not decompress to the declared length", pos)
    return out


# ---- incremental LZF decompression ------------------------------------------------------
#
# python-lzf only decompresses whole buffers. An LZF stream is a sequence of instructions:
# ctrl < 32: a literal run of ctrl+1 bytes that follow; ctrl >= 32: a back-reference of
# (ctrl >> 5) + 2 bytes (one more length byte when ctrl >> 5 == 7), then one offset byte,
# reaching at most 8192 bytes back in the output. So a compressed stream cut at instruction
# boundaries decompresses piece by piece: before each piece, a prefix of literal runs
# re-creates the last 8192 output bytes (all a back-reference can see), and the first
# len(history) bytes of the result are dropped.

_LZF_WINDOW = 8192
# one whole instruction; under a possessive repeat, a match ends at the end of the last
# instruction that is complete in the searched range (at C speed)
_LZF_INSNS = re.compile(
    b"(?:[\\x20-\\xdf][\\s\\S]|[\\xe0-\\xff][\\s\\S]{2}|"
    + b"|".join(re.escape(bytes((c,))) + b"[\\s\\S]{%d}" % (c + 1) for c in range(32))
    + b")*+"
)
# where to start the cheap search for the last instruction boundary of a piece (see
# LzfStream.decompress)
_LZF_RESYNC = 512


def _lzf_literals(data: bytes) -> bytes:
    """LZF literal runs (32 bytes each, the last one shorter) that decompress to ``data``."""
    return b"".join(
        bytes((len(c) - 1,)) + c for c in (data[i : i + 32] for i in range(0, len(data), 32))
    )


class LzfStream:
    """Decompress one LZF stream fed in consecutive pieces, holding at most the last 8192
    output bytes and an incomplete trailing instruction between calls (see above).

    ``ulen`` is the declared uncompressed length: more output, or less at the end, is an
    error. Raises :class:`RdbError` (without offset) on corrupt data."""

    __slots__ = ("left", "_hist", "_carry")

    def __init__(self, ulen: int) -> None:
        self.left = ulen  # uncompressed bytes still expected
        self._hist = b""
        self._carry = b""

    def decompress(self, chunk, final: bool) -> bytes:
        """Output of ``chunk`` (the next compressed bytes; ``final``: the stream ends with it),
        up to the end of its last complete instruction."""
        data = self._carry + bytes(chunk) if self._carry else bytes(chunk)
        if final:
            cut = len(data)
        elif len(data) <= _LZF_RESYNC:
            cut = _LZF_INSNS.match(data).end()
        else:
            # Cheap guess: instruction boundaries found by parsing from an arbitrary point
            # almost always line up with the real ones within a few instructions. The
            # decompressor checks it: it fails unless its input ends on a real boundary.
            cut = _LZF_INSNS.match(data, len(data) - _LZF_RESYNC).end()
        out = self._run(data, cut)
        if out is None and not final:
            full = _LZF_INSNS.match(data).end()  # parse the piece from its first instruction
            if full != cut:
                cut = full
                out = self._run(data, cut)
        if out is None:
            raise RdbError("invalid LZF data (corrupt, or longer than its declared length)")
        self._carry = data[cut:]
        self.left -= len(out)
        if len(out) >= _LZF_WINDOW:
            self._hist = out[-_LZF_WINDOW:]
        elif out:
            self._hist = (self._hist + out)[-_LZF_WINDOW:]
        if final and self.left:
            raise RdbError(f"LZF data ends {self.left} bytes short of its declared length")
        return out

    def _run(self, data: bytes, cut: int) -> bytes | None:
        if cut == 0:
            return b""
        hist = self._hist
        # a 3-byte back-reference yields at most 264 bytes: never allocate more than needed
        limit = len(hist) + min(self.left, 88 * cut + 64)
        try:
            out = lzf.decompress(_lzf_literals(hist) + data[:cut], limit)
        except ValueError:
            return None
        if out is None or len(out) < len(hist):
            return None
        return out[len(hist) :]


def _bad_string(b: int, p: int) -> RdbError:
    """The error for an rdb-string starting with byte ``b`` that is no valid encoding."""
    if b >= 0xC0:
        return RdbError(f"unknown string encoding 0x{b:02x}", p)
    return RdbError(f"invalid length encoding byte 0x{b:02x}", p)


def read_string(buf, p: int) -> tuple[bytes, int]:
    """Read an rdb-string (raw, int-encoded or LZF). Returns bytes."""
    try:
        b = buf[p]
        if b < 0x40:
            e = p + 1 + b
            if e > len(buf):
                raise Truncated(e)
            return bytes(buf[p + 1 : e]), e
        if b < 0x80:
            s = p + 2
            e = s + (((b & 0x3F) << 8) | buf[p + 1])
        elif b == 0x80:
            s = p + 5
            e = s + _U32BE(buf, p + 1)[0]
        elif b == 0x81:
            s = p + 9
            e = s + _U64BE(buf, p + 1)[0]
        elif b == 0xC0:
            return _INT8[buf[p + 1]], p + 2
        elif b == 0xC1:
            return str(_I16LE(buf, p + 1)[0]).encode(), p + 3
        elif b == 0xC2:
            return str(_I32LE(buf, p + 1)[0]).encode(), p + 5
        elif b == 0xC3:
            clen, q = read_length(buf, p + 1)
            ulen, q = read_length(buf, q)
            e = q + clen
            if e > len(buf):
                raise Truncated(e)
            return lzf_decompress(buf[q:e], ulen, q), e
        else:
            raise _bad_string(b, p)
    except _SHORT:
        raise Truncated from None
    if e > len(buf):
        raise Truncated(e)
    return bytes(buf[s:e]), e


def skip_string(buf, p: int) -> int:
    """End of the rdb-string at ``p``, by length arithmetic only (no copy, no LZF)."""
    try:
        b = buf[p]
        if b < 0x40:
            e = p + 1 + b
        elif b < 0x80:
            e = p + 2 + (((b & 0x3F) << 8) | buf[p + 1])
        elif b >= 0xC0:
            if b == 0xC0:
                e = p + 2
            elif b == 0xC1:
                e = p + 3
            elif b == 0xC2:
                e = p + 5
            elif b == 0xC3:
                clen, q = read_length(buf, p + 1)
                _, q = read_length(buf, q)
                e = q + clen
            else:
                raise _bad_string(b, p)
        elif b == 0x80:
            e = p + 5 + _U32BE(buf, p + 1)[0]
        elif b == 0x81:
            e = p + 9 + _U64BE(buf, p + 1)[0]
        else:
            raise _bad_string(b, p)
        if e > len(buf):
            raise Truncated(e)
    except _SHORT:
        raise Truncated from None
    return e


def read_double_str(buf, pos: int) -> tuple[bytes, int]:
    """Read an RDB<8 string-encoded double (type 3 scores). Returns the score as text bytes
    usable in ZADD (``nan``, ``inf``, ``-inf`` for the special lengths)."""
    try:
        n = buf[pos]
    except IndexError:
        raise Truncated from None
    if n == 253:
        return b"nan", pos + 1
    if n == 254:
        return b"inf", pos + 1
    if n == 255:
        return b"-inf", pos + 1
    end = pos + 1 + n
    if end > len(buf):
        raise Truncated
    return bytes(buf[pos + 1 : end]), end


_CRC = Model("CRC64-REDIS")


def crc64(data, crc: int = 0) -> int:
    """Redis CRC-64/Jones (init 0, reflected). ``crc`` continues a previous value."""
    if crc:
        return _CRC.calc(data, crc)
    return _CRC.calc(data)


class Crc64:
    """Incremental CRC64 over a stream of chunks."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data) -> None:
        if len(data):
            self.value = _CRC.calc(data, self.value) if self.value else _CRC.calc(data)
