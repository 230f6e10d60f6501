"""Sans-I/O parser of the AOF command stream (RESP arrays of bulk strings + annotations).

    p = AofParser()
    for chunk in chunks:
        p.feed(chunk)
        for item, end in p.items():
            if type(item) is list:      # a command: argv of bytes
                ...
            else:                       # an Annotation ('#...' line, e.g. '#TS:1700000000')
                ...
    p.finish()          # raises AofError if the input stopped inside a command

``end`` is the absolute byte offset right after the item (``start_offset`` + bytes consumed),
so a caller can always say exactly where it is. Arguments are read by their declared length
(binary safe: values may hold CR, LF or anything else); any number of arguments is accepted.
The grammar is stricter than the server's loader, which skips the two bytes after a bulk
string without looking at them: every header line and every bulk string must end in CRLF,
so an AOF whose line endings were converted to LF is reported as such instead of loading
garbage.

``AofParser(big_arg=n)``: an argument longer than ``n`` bytes is not buffered. The parser
yields a :class:`BigArg` (the arguments read so far, the index and length of this one), then
the argument's bytes as ``bytes`` pieces of at most ``PIECE`` bytes, and finally the command
whose argv holds ``None`` in place of each such argument. A bulk string declaring more than
``max_bulk`` bytes, or a command whose buffered part grows beyond ``max_bulk``, is an error
(a ``$9999999999`` header must not make the buffer grow without end).
"""

from __future__ import annotations

from collections.abc import Iterator

from ..rdb.primitives import RdbError

__all__ = ["AofParser", "AofError", "Annotation", "BigArg", "MAX_LINE", "MAX_BULK", "PIECE"]

MAX_LINE = 64 * 1024  # a header or annotation line longer than this is corrupt input
MAX_BULK = 512 << 20  # the servers' default proto-max-bulk-len
PIECE = 1 << 20  # size of the pieces a streamed argument is yielded in
_COMPACT_AT = 1 << 20


class AofError(RdbError):
    """Corrupt or truncated AOF input. ``offset`` is absolute, ``file`` names the file when
    known; ``truncated`` is true when the input merely stopped early (a tail the server's
    ``aof-load-truncated`` would drop)."""

    def __init__(
        self, message: str, offset: int | None = None, *, file: str = "", truncated: bool = False
    ) -> None:
        self.file = file
        self.truncated = truncated
        super().__init__(message, offset)

    def __str__(self) -> str:
        s = super().__str__()
        return f"{self.file}: {s}" if self.file else s


class Annotation:
    """A ``#...`` line between commands. ``ts`` is the Unix time of a ``#TS:<n>`` annotation
    (None for other annotations, and for a ``#TS:`` whose value is not a number:
    ``malformed_ts`` is then true); ``start`` is the absolute offset of its ``#``."""

    __slots__ = ("text", "ts", "malformed_ts", "start")

    def __init__(self, text: bytes, start: int = 0) -> None:
        self.text = text
        self.start = start  # absolute offset of the '#'
        self.ts: int | None = None
        self.malformed_ts = False
        if text.startswith(b"#TS:"):
            v = text[4:]
            if v.isdigit():
                self.ts = int(v)
            else:
                self.malformed_ts = True

    def __repr__(self) -> str:
        return f"Annotation({self.text!r})"


class BigArg:
    """An argument too long to buffer starts: ``argv`` holds the arguments read before it
    (the list the command is built in), ``index`` is its position, ``length`` its size."""

    __slots__ = ("argv", "argc", "index", "length")

    def __init__(self, argv: list, argc: int, length: int) -> None:
        self.argv = argv
        self.argc = argc
        self.index = len(argv)
        self.length = length


def _show(b) -> str:
    return repr(bytes(b[:40]))


class AofParser:
    """Streaming parser; see the module docstring."""

    def __init__(self, start_offset: int = 0, big_arg: int = 0, max_bulk: int = 0) -> None:
        self._big = big_arg  # stream arguments longer than this (0: buffer everything)
        self._max_bulk = max_bulk or (MAX_BULK if big_arg else 0)
        self._stream = 0  # bytes of the streamed argument still to come
        self._buf = bytearray()
        self._base = start_offset  # absolute offset of _buf[0]
        self._pos = 0  # index of the first byte of the next item
        self._need = 0  # absolute offset that must be buffered before parsing again
        # a command being read: (argv so far, argc, absolute offset of the next argument)
        self._partial: tuple[list[bytes], int, int] | None = None
        self.commands = 0
        self.annotations = 0

    def feed(self, data) -> None:
        self._buf += data

    @property
    def offset(self) -> int:
        """Absolute offset right after the last complete item."""
        return self._base + self._pos

    @property
    def pending(self) -> int:
        """Bytes buffered after the last complete item."""
        return len(self._buf) - self._pos

    def finish(self) -> None:
        """End of input: raise AofError(truncated=True) if a command is incomplete."""
        if self._pos >= len(self._buf) and self._partial is None:
            return
        what = "inside a command"
        if self._partial is not None:
            argv, argc, _ = self._partial
            what = f"inside a command after argument {len(argv)} of {argc}"
            if argv:
                what += f" ({argv[0][:32]!r}...)"
        elif self._buf[self._pos] == 0x23:
            what = "inside an annotation line"
        raise AofError(
            f"truncated AOF: input ended {what} ({self.pending} bytes of an incomplete "
            "command at the end)",
            self.offset,
            truncated=True,
        )

    def _error(self, msg: str, at: int) -> AofError:
        return AofError(msg, self._base + at)

    def _line(self, buf: bytearray, p: int, n: int, what: str) -> int:
        """Index of the CR of the CRLF ending the line at p, or -1 if more data is needed."""
        nl = buf.find(b"\n", p, min(n, p + MAX_LINE))
        if nl < 0:
            if n - p >= MAX_LINE:
                raise self._error(f"{what}: no end of line within {MAX_LINE} bytes", p)
            return -1
        if nl == p or buf[nl - 1] != 0x0D:
            raise self._error(
                f"{what} ends with LF instead of CRLF ({_show(buf[p : nl + 1])}): the file's "
                "line endings were converted (e.g. by git or an editor) and it is not a valid AOF",
                p,
            )
        return nl - 1

    def items(self) -> Iterator[tuple[list[bytes] | Annotation, int]]:
        """Yield (argv or Annotation, absolute end offset) for every complete item buffered."""
        buf = self._buf
        n = len(buf)
        base = self._base
        if base + n < self._need:
            return
        pos = self._pos
        line = self._line
        try:
            while pos < n:
                partial = self._partial
                if partial is not None:
                    argv, argc, ap = partial
                    p = ap - base
                    self._partial = None
                else:
                    c = buf[pos]
                    if c == 0x2A:  # '*'
                        cr = line(buf, pos, n, "command header")
                        if cr < 0:
                            break
                        s = buf[pos + 1 : cr]
                        if not s.isdigit() or int(s) < 1:
                            raise self._error(
                                f"bad command header {_show(buf[pos:cr])}: expected '*<number of "
                                "arguments>' with at least one argument",
                                pos,
                            )
                        argc = int(s)
                        argv = []
                        p = cr + 2
                    elif c == 0x23:  # '#'
                        nl = buf.find(b"\n", pos, min(n, pos + MAX_LINE))
                        if nl < 0:
                            if n - pos >= MAX_LINE:
                                raise self._error(
                                    f"annotation line longer than {MAX_LINE} bytes", pos
                                )
                            break
                        end = nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl
                        ann = Annotation(bytes(buf[pos:end]), base + pos)
                        pos = nl + 1
                        self._pos = pos
                        self.annotations += 1
                        yield ann, base + pos
                        continue
                    else:
                        raise self._error(
                            f"expected '*' (start of a command) or '#' (annotation), found "
                            f"{_show(buf[pos : pos + 20])}",
                            pos,
                        )
                # arguments
                incomplete = False
                while len(argv) < argc:
                    if self._stream:  # an argument streamed in pieces
                        rem = self._stream
                        take = rem if rem < PIECE else PIECE
                        if n - p < take + (2 if take == rem else 0):
                            self._need = base + p + take + (2 if take == rem else 0)
                            incomplete = True
                            break
                        piece = bytes(buf[p : p + take])
                        p += take
                        self._stream = rem = rem - take
                        if not rem:
                            if buf[p] != 0x0D or buf[p + 1] != 0x0A:
                                raise self._error(
                                    f"bulk string not followed by CRLF (found "
                                    f"{_show(buf[p : p + 2])}): wrong length or damaged file",
                                    p,
                                )
                            p += 2
                            argv.append(None)
                        self._pos = pos = p  # consumed: the buffer may drop it
                        self._partial = (argv, argc, base + p)
                        yield piece, base + p
                        self._partial = None
                        continue
                    if p >= n:
                        incomplete = True
                        break
                    if buf[p] != 0x24:  # '$'
                        raise self._error(
                            f"expected '$' (bulk string {len(argv) + 1} of {argc}), found "
                            f"{_show(buf[p : p + 20])}",
                            p,
                        )
                    cr = line(buf, p, n, "bulk string header")
                    if cr < 0:
                        incomplete = True
                        break
                    s = buf[p + 1 : cr]
                    if not s.isdigit():
                        raise self._error(f"bad bulk string length {_show(buf[p:cr])}", p)
                    start = cr + 2
                    end = start + int(s)
                    if end + 2 > n:
                        if self._big:
                            size = int(s)
                            if size > self._big:
                                self._stream = size
                                self._pos = pos = p = start
                                self._partial = (argv, argc, base + p)
                                # the consumer may refuse it first, with its own message
                                yield BigArg(argv, argc, size), base + p
                                self._partial = None
                                if size > self._max_bulk:
                                    raise self._error(
                                        f"bulk string length {size} exceeds the maximum of "
                                        f"{self._max_bulk} bytes (argument {len(argv) + 1} of "
                                        f"{argc})",
                                        cr + 2 - len(s) - 3,
                                    )
                                continue
                        self._need = base + end + 2
                        incomplete = True
                        break
                    if buf[end] != 0x0D or buf[end + 1] != 0x0A:
                        raise self._error(
                            f"bulk string of {int(s)} bytes not followed by CRLF (found "
                            f"{_show(buf[end : end + 2])}): wrong length or damaged file",
                            end,
                        )
                    argv.append(bytes(buf[start:end]))
                    p = end + 2
                if incomplete:
                    self._partial = (argv, argc, base + p)
                    if self._big and n - pos > self._max_bulk:
                        raise self._error(
                            f"command of more than {self._max_bulk} bytes (argument "
                            f"{len(argv) + 1} of {argc})",
                            pos,
                        )
                    break
                pos = p
                self._pos = pos
                self.commands += 1
                yield argv, base + pos
        finally:
            self._pos = pos
            if pos >= _COMPACT_AT:
                del buf[:pos]
                self._base += pos
                self._pos = 0
