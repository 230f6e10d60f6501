"""RESP2 encoding of commands (argv lists) into request bytes.

The hot path is an argv of ``bytes``; ``str``/``int``/``float`` arguments are converted on a
slower fallback path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["ARRAY_SIZES", "BULK_SIZES", "encode", "encode_many", "encoded_len", "to_bytes"]

_N_PRE = 4096
# "$<n>\r\n" and "*<n>\r\n" for small n, precomputed.
_BULK = [b"$%d\r\n" % i for i in range(_N_PRE)]
_ARRAY = [b"*%d\r\n" % i for i in range(_N_PRE)]
_CRLF = b"\r\n"
# Encoded sizes, for n < 4096: of a bulk string of n bytes, of an array header of n
# elements. Hot loops index them inline and fall back to encoded_len() on IndexError.
BULK_SIZES = [len(b) + i + 2 for i, b in enumerate(_BULK)]
ARRAY_SIZES = [len(b) for b in _ARRAY]


def to_bytes(a: object) -> bytes:
    """Convert one argument to bytes (bytes-like kept, str as UTF-8, numbers as decimal)."""
    if isinstance(a, bytes):
        return a
    if isinstance(a, (bytearray, memoryview)):
        return bytes(a)
    if isinstance(a, str):
        return a.encode("utf-8")
    if isinstance(a, bool):
        raise TypeError("bool is not a valid command argument")
    if isinstance(a, int):
        return b"%d" % a
    if isinstance(a, float):
        return repr(a).encode("ascii")
    raise TypeError(f"cannot encode argument of type {type(a).__name__}")


def _parts(argv: Sequence[bytes], out: list[bytes]) -> None:
    n = len(argv)
    out.append(_ARRAY[n] if n < _N_PRE else b"*%d\r\n" % n)
    bulk = _BULK
    for a in argv:
        ln = len(a)
        out.append(bulk[ln] if ln < _N_PRE else b"$%d\r\n" % ln)
        out.append(a)
        out.append(_CRLF)


def encode(argv: Sequence[bytes | str | int | float]) -> bytes:
    """Encode one command as a RESP2 array of bulk strings."""
    out: list[bytes] = []
    try:
        _parts(argv, out)  # type: ignore[arg-type]
        return b"".join(out)
    except TypeError:
        pass
    out.clear()
    _parts([to_bytes(a) for a in argv], out)
    return b"".join(out)


def encoded_len(argv: Sequence[bytes]) -> int:
    """``len(encode(argv))`` without encoding (argv of bytes)."""
    n = len(argv)
    size = _ARRAY[n].__len__() if n < _N_PRE else len(b"*%d\r\n" % n)
    for a in argv:
        ln = len(a)
        size += BULK_SIZES[ln] if ln < _N_PRE else len(b"$%d\r\n" % ln) + ln + 2
    return size


def encode_many(commands: Iterable[Sequence[bytes | str | int | float]]) -> bytes:
    """Encode several commands into one buffer (one ``b"".join`` for the batch)."""
    out: list[bytes] = []
    for argv in commands:
        mark = len(out)
        try:
            _parts(argv, out)  # type: ignore[arg-type]
            # join() below is where a non-bytes argument would fail; check cheaply here.
            for a in argv:
                if not isinstance(a, (bytes, bytearray, memoryview)):
                    raise TypeError
        except TypeError:
            del out[mark:]
            _parts([to_bytes(a) for a in argv], out)
    return b"".join(out)
