"""Sans-I/O parts of the replication protocol (replica side).

* :func:`parse_psync_reply` reads the single line that answers ``PSYNC``;
* :class:`TransferFramer` splits what follows the handshake into events: keepalives, the
  RDB payload (``$<len>`` or ``$EOF:<mark>`` framing) and the command stream;
* :class:`CommandStream` parses the command stream into argv lists, each with the exact
  replication offset right after it (every byte counts: SELECT, PING, MULTI, REPLCONF...).
"""

from __future__ import annotations

from dataclasses import dataclass

import hiredis

from ..errors import Busy, Loading, MasterDown, NoMasterLink, TryAgain, reply_class
from ..resp.encode import encode

__all__ = [
    "PsyncReply",
    "parse_psync_reply",
    "TransferFramer",
    "CommandStream",
    "ReplProtocolError",
    "SnapshotSizeError",
    "MAX_SNAPSHOT_SIZE",
    "EOF_MARK_SIZE",
    "ack_command",
    "EndOffset",
    "parse_endoff",
]

EOF_MARK_SIZE = 40


class ReplProtocolError(Exception):
    """The master sent something the replication protocol does not allow."""


class SnapshotSizeError(ReplProtocolError):
    """The snapshot header announces a size no snapshot can have (negative, absurd): asking
    again would get the same answer."""


# The largest snapshot a header may announce (16 TiB): beyond it the header is garbage.
MAX_SNAPSHOT_SIZE = 1 << 44


@dataclass
class PsyncReply:
    """``kind``: ``full`` (+FULLRESYNC), ``continue`` (+CONTINUE), ``dual`` (Valkey's
    +DUALCHANNELSYNC: the snapshot comes on a second connection), ``retry`` (-LOADING,
    -NOMASTERLINK, -BUSY...: try again later), ``unsupported`` (PSYNC unknown: use SYNC),
    ``error`` (anything else)."""

    kind: str
    replid: str = ""
    offset: int = -1
    message: str = ""


# the refusals of PSYNC that a later attempt may not get
_RETRY = (Loading, NoMasterLink, Busy, MasterDown, TryAgain)


def parse_psync_reply(line: bytes) -> PsyncReply:
    text = line.decode("utf-8", "replace").strip()
    if text.startswith("+FULLRESYNC"):
        parts = text.split()
        if len(parts) < 3:
            raise ReplProtocolError(f"bad FULLRESYNC reply {text!r}")
        try:
            off = int(parts[2])
        except ValueError:
            raise ReplProtocolError(f"bad FULLRESYNC offset in {text!r}") from None
        return PsyncReply("full", parts[1], off, text)
    if text == "+DUALCHANNELSYNC":
        return PsyncReply("dual", message=text)
    if text.startswith("+CONTINUE"):
        parts = text.split()
        return PsyncReply("continue", parts[1] if len(parts) > 1 else "", -1, text)
    if text.startswith("-"):
        msg = text[1:]
        if reply_class(msg.split(" ", 1)[0].upper()) in _RETRY:
            return PsyncReply("retry", message=msg)
        low = msg.lower()
        if "unknown command" in low and "psync" in low:
            return PsyncReply("unsupported", message=msg)
        return PsyncReply("error", message=msg)
    return PsyncReply("error", message=f"unexpected reply to PSYNC: {text!r}")


@dataclass
class EndOffset:
    """``$ENDOFF:<offset> <replid> <db> <client-id>``: what a Valkey primary sends on the rdb
    channel of a dual-channel sync right before it forks. ``offset`` is the replication
    offset the snapshot stands for (the main channel's PSYNC asks for offset + 1), ``db`` the
    db the stream is positioned in (-1: a SELECT comes before the first command) and
    ``client_id`` the primary's id of the rdb channel (REPLCONF set-rdb-client-id)."""

    offset: int
    replid: str
    db: int
    client_id: str


def parse_endoff(line: bytes) -> EndOffset:
    text = line.decode("utf-8", "replace").strip()
    parts = text[len("$ENDOFF:") :].split() if text.startswith("$ENDOFF:") else []
    if len(parts) < 4 or len(parts[1]) != 40:
        raise ReplProtocolError(f"bad $ENDOFF line from the rdb channel: {text[:120]!r}")
    try:
        off, db = int(parts[0]), int(parts[2])
    except ValueError:
        raise ReplProtocolError(f"bad $ENDOFF line from the rdb channel: {text[:120]!r}") from None
    if off < 0:
        raise ReplProtocolError(f"bad $ENDOFF offset in {text[:120]!r}")
    return EndOffset(off, parts[1], db, parts[3])


# Events produced by TransferFramer.feed
EV_KEEPALIVE = "keepalive"  # a bare "\n" from the master (waiting for / during BGSAVE)
EV_REPLY = "reply"  # the PSYNC reply line (bytes, without CRLF)
EV_RDB_BEGIN = "rdb_begin"  # value: payload size, or -1 for the EOF-marked (diskless) format
EV_RDB_DATA = "rdb_data"  # value: payload bytes
EV_RDB_END = "rdb_end"
EV_STREAM = "stream"  # value: command stream bytes
EV_ERROR = "error"  # value: an error line from the master instead of the payload
EV_ENDOFF = "endoff"  # value: EndOffset (rdb channel of a dual-channel sync)

_S_REPLY, _S_HEADER, _S_RDB_LEN, _S_RDB_EOF, _S_STREAM, _S_ENDOFF = range(6)


class TransferFramer:
    """Splits the bytes received after ``PSYNC`` (or ``SYNC``) into events.

    ``expect_reply``: a PSYNC reply line comes first (False after ``SYNC``). After a
    ``+CONTINUE`` reply call :meth:`continue_stream`; after ``+FULLRESYNC`` (or SYNC) the
    framer expects the ``$`` header of the RDB payload. The diskless end mark is found with a
    40-byte tail kept across reads, so a mark split between two reads is recognised.
    """

    def __init__(self, expect_reply: bool = True, rdb_channel: bool = False) -> None:
        # rdb_channel: the rdb connection of a dual-channel sync (after SYNC on it): the
        # $ENDOFF line comes first, then the EOF-marked payload
        self.state = _S_ENDOFF if rdb_channel else _S_REPLY if expect_reply else _S_HEADER
        self._buf = b""
        self._remaining = 0
        self._mark = b""
        self._tail = b""  # last bytes of the EOF-format payload not yet passed on (<= 40)

    @property
    def in_stream(self) -> bool:
        return self.state == _S_STREAM

    def push_back_payload(self, line: bytes) -> None:
        """The master answered the PSYNC with the payload header directly (it handled the
        command as the pre-PSYNC ``SYNC``, e.g. a renamed PSYNC): parse ``line`` as that."""
        self._buf = line + b"\r\n" + self._buf
        self.state = _S_HEADER

    def continue_stream(self) -> None:
        """The reply was +CONTINUE: everything that follows is the command stream."""
        self.state = _S_STREAM

    def expect_reply(self) -> None:
        """Another reply line follows (the main channel of a dual-channel sync answers
        REPLCONF set-rdb-client-id and a second PSYNC)."""
        self.state = _S_REPLY

    def expect_payload(self) -> None:
        """The reply was +FULLRESYNC: the RDB payload header follows."""
        self.state = _S_HEADER

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        if self.state == _S_STREAM and not self._buf:
            if data:
                out.append((EV_STREAM, data))
            return out
        buf = self._buf + data
        self._buf = b""
        while buf:
            st = self.state
            if st in (_S_REPLY, _S_HEADER, _S_ENDOFF):
                if buf[0:1] == b"\n":
                    out.append((EV_KEEPALIVE, None))
                    buf = buf[1:]
                    continue
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > 4096:
                        raise ReplProtocolError(f"line too long from master: {buf[:80]!r}")
                    self._buf = buf
                    return out
                line = buf[:nl].rstrip(b"\r")
                buf = buf[nl + 1 :]
                if st == _S_REPLY:
                    out.append((EV_REPLY, line))
                    # the caller decides the next state; keep the rest for the next feed
                    self._buf = buf
                    return out
                if line.startswith(b"-"):
                    out.append((EV_ERROR, line[1:].decode("utf-8", "replace")))
                    self._buf = buf
                    return out
                if st == _S_ENDOFF:
                    if line.startswith(b"+"):  # a late +OK of the channel's REPLCONF
                        continue
                    out.append((EV_ENDOFF, parse_endoff(line)))
                    self.state = _S_HEADER
                    continue
                if not line.startswith(b"$"):
                    raise ReplProtocolError(f"expected the RDB payload header, got {line[:80]!r}")
                if line.startswith(b"$EOF:"):
                    mark = line[5:]
                    if len(mark) != EOF_MARK_SIZE:
                        raise ReplProtocolError(f"bad EOF mark {line!r}")
                    self._mark = mark
                    self._tail = b""
                    self.state = _S_RDB_EOF
                    out.append((EV_RDB_BEGIN, -1))
                else:
                    try:
                        n = int(line[1:])
                    except ValueError:
                        raise SnapshotSizeError(f"bad snapshot header {line[:80]!r}") from None
                    if n < 0 or n > MAX_SNAPSHOT_SIZE:
                        raise SnapshotSizeError(
                            f"the source announced a snapshot of {n} bytes ({line[:80]!r}): not a "
                            "valid replication payload"
                        )
                    self._remaining = n
                    self.state = _S_RDB_LEN
                    out.append((EV_RDB_BEGIN, n))
                    if n == 0:
                        self.state = _S_STREAM
                        out.append((EV_RDB_END, None))
            elif st == _S_RDB_LEN:
                take = min(self._remaining, len(buf))
                out.append((EV_RDB_DATA, buf[:take]))
                self._remaining -= take
                buf = buf[take:]
                if self._remaining == 0:
                    self.state = _S_STREAM
                    out.append((EV_RDB_END, None))
            elif st == _S_RDB_EOF:
                data2 = self._tail + buf
                i = data2.find(self._mark)
                if i >= 0:
                    if i:
                        out.append((EV_RDB_DATA, data2[:i]))
                    self._tail = b""
                    self.state = _S_STREAM
                    out.append((EV_RDB_END, None))
                    buf = data2[i + EOF_MARK_SIZE :]
                    continue
                keep = min(len(data2), EOF_MARK_SIZE - 1)
                if len(data2) > keep:
                    out.append((EV_RDB_DATA, data2[: len(data2) - keep]))
                self._tail = data2[len(data2) - keep :]
                buf = b""
            else:  # stream
                out.append((EV_STREAM, buf))
                buf = b""
        return out


class CommandStream:
    """Parses the replication command stream and tracks the exact offset.

    ``offset`` is the replication offset of the last byte of the last command returned by
    :meth:`next` (the value to ACK / persist once that command is applied). The master's
    stream is canonical RESP (``*<n>\\r\\n`` then ``$<len>\\r\\n<bytes>\\r\\n`` per argument),
    so a command's size is the size of its canonical encoding; :meth:`next` returns that
    encoding too (to be sent as is). Every ``CHECK_EVERY``-th command (and the first) is
    compared with the bytes actually received at its position, so a non-canonical stream
    is detected instead of silently corrupting offsets.
    """

    CHECK_EVERY = 256

    def __init__(self, offset: int) -> None:
        self._reader = hiredis.Reader(protocolError=ReplProtocolError)
        self.offset = offset
        self._fed = offset  # offset of the last byte fed
        self._chunk = b""
        self._chunk_start = offset  # offset of the byte before the chunk's first byte
        self._n = 0

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)
        self._chunk = data
        self._chunk_start = self._fed
        self._fed += len(data)

    @property
    def fed_offset(self) -> int:
        return self._fed

    @property
    def gets(self):
        """hiredis' ``gets`` for callers that inline :meth:`next` (see :meth:`advance`)."""
        return self._reader.gets

    def advance(self, start: int, end: int, raw: bytes) -> None:
        """For callers using :attr:`gets` directly: the command ``raw`` (canonical encoding
        of what ``gets`` returned) spans (start, end]; records the new offset and checks
        the command against the bytes received (callers do that at least once per chunk)."""
        self.offset = end
        if start >= self._chunk_start and end <= self._fed:
            i = start - self._chunk_start
            if self._chunk[i : i + len(raw)] != raw:
                raise ReplProtocolError(
                    f"replication stream offset mismatch near offset {start} (non-canonical RESP "
                    "in the stream?)"
                )
        if end > self._fed:
            raise ReplProtocolError(f"replication stream offset mismatch: {end} > {self._fed}")

    def next(self) -> tuple[list[bytes], bytes] | None:
        """The next complete command as (argv, raw bytes), or None when more input is needed."""
        r = self._reader.gets()
        if r is False:
            return None
        if r.__class__ is not list or not r:
            raise ReplProtocolError(f"unexpected item in the replication stream: {r!r}"[:200])
        raw = encode(r)
        start = self.offset
        end = start + len(raw)
        n = self._n
        self._n = n + 1
        # compare with the received bytes every CHECK_EVERY-th command (b"": bounds only)
        self.advance(start, end, b"" if n % self.CHECK_EVERY else raw)
        return r, raw


def ack_command(offset: int) -> bytes:
    return encode([b"REPLCONF", b"ACK", b"%d" % offset])
