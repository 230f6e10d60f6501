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
    "read_length_special",
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


def read_length_special(buf, pos: int) -> tuple[int, bool, int]:
    """Read a len-enc value. Returns (value, is_special_encoding, new_pos)."""
    try:
        b = buf[pos]
    except IndexError:
        raise Truncated from None
    t = b >> 6
    if t == 0:
        return b & 0x3F, False, pos + 1
    if t == 1:
        if pos + 2 > len(buf):
            raise Truncated
        return ((b & 0x3F) << 8) | buf[pos + 1], False, pos + 2
    if t == 2:
        if b == 0x80:
            if pos + 5 > len(buf):
                raise Truncated
            return _U32BE(buf, pos + 1)[0], False, pos + 5
        if b == 0x81:
            if pos + 9 > len(buf):
                raise Truncated
            return _U64BE(buf, pos + 1)[0], False, pos + 9
        raise RdbError(f"invalid length encoding byte 0x{b:02x}", pos)
    return b & 0x3F, True, pos + 1


def read_length(buf, pos: int) -> tuple[int, int]:
    """Read a plain len-enc integer (special encodings are an error here)."""
    v, special, npos = read_length_special(buf, pos)
    if special:
        raise RdbError(
            f"unexpected string encoding byte 0x{buf[pos]:02x} where a length was expected", pos
        )
    return v, npos


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


def read_string(buf, pos: int) -> tuple[bytes, int]:
    """Read an rdb-string (raw, int-encoded or LZF). Returns bytes."""
    v, special, p = read_length_special(buf, pos)
    if not special:
        end = p + v
        if end > len(buf):
            raise Truncated
        return bytes(buf[p:end]), end
    if v == ENC_INT8:
        if p + 1 > len(buf):
            raise Truncated
        x = buf[p]
        return str(x - 256 if x > 127 else x).encode(), p + 1
    if v == ENC_INT16:
        if p + 2 > len(buf):
            raise Truncated
        return str(_I16LE(buf, p)[0]).encode(), p + 2
    if v == ENC_INT32:
        if p + 4 > len(buf):
            raise Truncated
        return str(_I32LE(buf, p)[0]).encode(), p + 4
    if v == ENC_LZF:
        clen, p = read_length(buf, p)
        ulen, p = read_length(buf, p)
        end = p + clen
        if end > len(buf):
            raise Truncated
        return lzf_decompress(buf[p:end], ulen, p), end
    raise RdbError(f"unknown string encoding {v}", pos)


def skip_string(buf, pos: int) -> int:
    """Skip an rdb-string without materialising or decompressing it."""
    v, special, p = read_length_special(buf, pos)
    if not special:
        end = p + v
    elif v == ENC_INT8:
        end = p + 1
    elif v == ENC_INT16:
        end = p + 2
    elif v == ENC_INT32:
        end = p + 4
    elif v == ENC_LZF:
        clen, p = read_length(buf, p)
        _, p = read_length(buf, p)
        end = p + clen
    else:
        raise RdbError(f"unknown string encoding {v}", pos)
    if end > len(buf):
        raise Truncated
    return end


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
