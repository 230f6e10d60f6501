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
"""

from __future__ import annotations

from collections.abc import Iterator

from ..rdb.primitives import RdbError

__all__ = ["AofParser", "AofError", "Annotation", "MAX_LINE"]

MAX_LINE = 64 * 1024  # a header or annotation line longer than this is corrupt input
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


def _show(b) -> str:
    return repr(bytes(b[:40]))


class AofParser:
    """Streaming parser; see the module docstring."""

    def __init__(self, start_offset: int = 0) -> None:
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
        if self._pos >= len(self._buf):
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
