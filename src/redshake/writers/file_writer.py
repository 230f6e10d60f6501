"""``[file_writer]``: write entries to a file instead of a server.

``type``:

* ``cmd``: one line per entry, the arguments separated by spaces. An argument made only of
  printable ASCII other than space, quotes and backslash is written as is; any other is
  written in double quotes with the escapes ``\\\\ \\" \\n \\r \\t \\a \\b`` and ``\\xHH`` for
  every other byte (the quoting of ``redis-cli``). A line therefore always holds exactly one
  entry, binary data survives, and the file can be replayed with ``redis-cli < file``.
* ``aof``: RESP arrays (what a server writes to an AOF): replay with ``redis-cli --pipe``
  or load it as a single-file AOF (``appendonly.aof``).
* ``json``: one JSON object per line with RedisShake's fields ``DbId``, ``Argv``,
  ``CmdName``, ``Group``, ``Keys``, ``KeyIndexes``, ``Slots``, ``SerializedSize``. Strings
  are UTF-8; when an argument is not valid UTF-8 its invalid bytes show as U+FFFD in
  ``Argv`` (as in RedisShake) and the line gets an extra ``ArgvBase64`` field with every
  argument in base64, so nothing is lost.

In ``cmd`` and ``aof`` output a ``SELECT <db>`` line is written first and whenever the
database changes, so exports of several databases replay into the right ones.

What the pipeline converts RDB values into (the writer's ``info``): for ``aof`` output,
``RESTORE ... ABSTTL`` payloads stamped RDB version 10 (accepted by Redis >= 7.0 and every
Valkey); values a 7.0 server could not load are re-encoded or rebuilt with commands. For
``cmd`` and ``json`` output, readable plain commands (SET/RPUSH/SADD/ZADD/HSET/XADD/...).
Set ``advanced.target_redis_proto_max_bulk_len = 0`` to get plain commands in ``aof``
output too (replayable into older servers).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections import Counter
from pathlib import Path

from ..entry import Entry
from ..resp.encode import encode
from .base import DEFAULT_PROTO_MAX_BULK_LEN, TargetInfo, Writer

__all__ = ["FileWriter", "build", "quote_arg", "format_cmd"]

log = logging.getLogger("redshake")

_SAFE = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&()*+,-./:;<=>?@[]^_`{|}~"
)
_ESCAPES = {
    0x5C: b"\\\\",
    0x22: b'\\"',
    0x0A: b"\\n",
    0x0D: b"\\r",
    0x09: b"\\t",
    0x07: b"\\a",
    0x08: b"\\b",
}
_QUOTE_BYTE = [
    _ESCAPES.get(i, bytes([i]) if 0x20 <= i < 0x7F else b"\\x%02x" % i) for i in range(256)
]


def quote_arg(a: bytes) -> bytes:
    """One argument for ``cmd`` output: as is when safe, else double-quoted with escapes."""
    if a and all(c in _SAFE for c in a):
        return a
    return b'"' + b"".join([_QUOTE_BYTE[c] for c in a]) + b'"'


def format_cmd(argv: list[bytes]) -> bytes:
    return b" ".join([quote_arg(a) for a in argv]) + b"\n"


def _key_slot(key: bytes) -> int:
    from ..commands.slots import key_slot

    return key_slot(key)


def _command_info(entry: Entry) -> tuple[str, str, list[int], list[bytes]]:
    """(name, group, key indexes, keys); uses the command table when it is there."""
    argv = entry.argv
    try:
        from ..commands import command_info  # type: ignore[attr-defined]
    except ImportError:
        command_info = None
    if command_info is not None:
        try:
            info = command_info(argv)
        except Exception:  # an unknown or malformed command: fall back below
            info = None
        if info is not None:
            keys = list(getattr(info, "keys", []) or [])
            return (
                str(getattr(info, "name", "") or argv[0].decode("utf-8", "replace").upper()),
                str(getattr(info, "group", "") or "unknown"),
                [int(i) for i in getattr(info, "key_indexes", []) or []],
                [k if isinstance(k, bytes) else str(k).encode() for k in keys],
            )
    name = argv[0].decode("utf-8", "replace").upper()
    key = entry.key
    if isinstance(key, bytes) and len(argv) > 1 and argv[1] == key:
        return name, "unknown", [1], [key]
    return name, "unknown", [], []


def _text(b: bytes) -> tuple[str, bool]:
    try:
        return b.decode("utf-8"), True
    except UnicodeDecodeError:
        return b.decode("utf-8", "replace"), False


class FileWriter(Writer):
    """Writes entries to ``filepath`` in ``cmd``, ``aof`` or ``json`` format."""

    name = "file_writer"

    def __init__(self, filepath: str, type: str = "cmd") -> None:
        if type not in ("cmd", "aof", "json"):
            raise ValueError(f"file_writer.type must be cmd, aof or json, not {type!r}")
        if not filepath:
            raise ValueError("file_writer.filepath is empty")
        self.path = Path(filepath)
        self.type = type
        self.entry_count = 0
        self.keys_acked = 0  # entries ending a snapshot key (Entry.ends_key) written
        self.acked_names: Counter[bytes] = Counter()  # entries written per raw command name
        self.bytes_written = 0
        self.acked_offset = -1
        self._db = -1
        # user data: a new file is 0600 (an existing one keeps its mode), closed in close()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._f = open(fd, "wb", buffering=1 << 20)  # noqa: SIM115
        if type == "aof":
            # RESTORE payloads of RDB 10 (Redis >= 7.0, Valkey); HFE keys as HSET+HPEXPIREAT.
            self.info = TargetInfo(
                version=(7, 4, 0), is_valkey=False, rdb_version=10,
                proto_max_bulk_len=DEFAULT_PROTO_MAX_BULK_LEN, databases=1 << 30,
                file_output=True,
            )  # fmt: skip
        else:
            # proto_max_bulk_len 0: no RESTORE, every value as readable commands
            self.info = TargetInfo(
                version=(7, 4, 0),
                is_valkey=False,
                rdb_version=10,
                proto_max_bulk_len=0,
                databases=1 << 30,
                file_output=True,
            )

    # -- writer API ------------------------------------------------------------------------

    def write(self, entry: Entry) -> None:
        out = self._f
        db = entry.db
        t = self.type
        if t == "json":
            data = self._json(entry)
        else:
            if db != self._db:
                sel = [b"SELECT", b"%d" % db]
                line = encode(sel) if t == "aof" else format_cmd(sel)
                out.write(line)
                self.bytes_written += len(line)
                self._db = db
            if t == "aof":
                data = entry.resp if entry.resp is not None else encode(entry.argv)
            else:
                data = format_cmd(entry.argv)
        out.write(data)
        self.bytes_written += len(data)
        self.entry_count += 1
        self.acked_names[entry.argv[0]] += 1
        if entry.ends_key:
            self.keys_acked += 1
        if entry.offset >= 0:
            self.acked_offset = entry.offset

    def _json(self, entry: Entry) -> bytes:
        name, group, idx, keys = _command_info(entry)
        argv_text = []
        lossless = True
        for a in entry.argv:
            s, ok = _text(a)
            argv_text.append(s)
            lossless = lossless and ok
        obj = {
            "DbId": entry.db,
            "Argv": argv_text,
            "CmdName": name,
            "Group": group,
            "Keys": [_text(k)[0] for k in keys],
            "KeyIndexes": idx,
            "Slots": [_key_slot(k) for k in keys],
            "SerializedSize": len(entry.resp)
            if entry.resp is not None
            else len(encode(entry.argv)),
        }
        if not lossless:
            obj["ArgvBase64"] = [base64.b64encode(a).decode("ascii") for a in entry.argv]
        return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"

    def poll(self) -> None:
        # the reader is idle (e.g. a sync reader waiting for commands): push the buffer out
        self.flush()

    def flush(self) -> None:
        if not self._f.closed:
            self._f.flush()

    def exists(self, db: int, key: bytes) -> bool:
        return False  # a file never holds a key before the run

    def flushall(self) -> None:
        raise ValueError(
            "advanced.empty_db_before_sync makes no sense with the file_writer (the output file "
            "is always created or truncated): remove it"
        )

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
            log.info(
                "file_writer: %d entries, %d bytes written to %s (%s)",
                self.entry_count, self.bytes_written, self.path, self.type,
            )  # fmt: skip

    @property
    def acked(self) -> int:
        return self.entry_count

    def status(self) -> dict:
        return {
            "name": self.name,
            "entry_count": self.entry_count,
            "filepath": str(self.path),
            "type": self.type,
            "bytes_written": self.bytes_written,
        }

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build(cfg, on_error) -> FileWriter:
    if cfg.advanced.empty_db_before_sync:
        raise ValueError(
            "advanced.empty_db_before_sync cannot be used with the file_writer (the output file "
            "is always created or truncated)"
        )
    wc = cfg.writer
    return FileWriter(wc.filepath, wc.type)
