"""``[rdb_reader]``: restore an RDB file.

Before anything is written the file is checked, so a corrupt file writes nothing:
* every record is walked (type and opcode bytes, lengths, the end of file), so an unknown
  type byte or a truncation stops the run even under a valid checksum;
* a file with a CRC64 trailer (RDB >= 5, checksum not disabled) has its checksum verified;
  with ``verify = "checksum"`` the values themselves are then trusted (they are the bytes the
  server wrote) and only the headers of their uncompressed blobs are checked;
* a file without one (old versions, ``rdbchecksum no``), and any file with ``verify =
  "full"`` (or ``"auto"``, the default, for a file of at most :data:`FULL_CHECK_MAX_BYTES`),
  has every value decoded and its ziplists / listpacks / intsets / zipmaps checked as
  strictly as a server does and its keys checked for duplicates (memory: the key names),
  once without writing;
* function libraries and saved scripts (``lua`` aux fields) are compiled in any case (they
  are few and small).
"""

from __future__ import annotations

import os
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from ..rdb import records as R
from ..rdb.parser import RdbParser
from ..rdb.primitives import Crc64, RdbError, read_length
from ..rdb.walk import module_name
from ..util import human_bytes
from .base import Capabilities, FileReaderBase
from .rdb_entries import field_ttl_summary, module_refusal
from .snapshot import SnapshotFeed, check_value

__all__ = ["RdbFileReader", "check_rdb_file"]

READ_SIZE = 256 * 1024
# verify = "auto": files up to this size get the full check even under a valid checksum
FULL_CHECK_MAX_BYTES = 1 << 20
VERIFY_MODES = ("auto", "checksum", "full")
_BLOB_TYPES = frozenset({10, 11, 12, 13, 14, 16, 17, 18, 20})


def _header(path: Path) -> tuple[bytes, int]:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:5] == b"REDIS" and head[5:9].isdigit():
        return b"REDIS", int(head[5:9])
    if head[:6] == b"VALKEY" and head[6:9].isdigit():
        return b"VALKEY", int(head[6:9])
    raise RdbError(f"not an RDB file: bad magic {head!r}", 0)


def _check_function(
    code: bytes, offset: int, functions: dict[bytes, bytes] | None = None
) -> None:
    """A function library must have a valid first line and compile (Lua 5.1, as on the
    servers), or the target would refuse it after keys were written. With ``functions``
    (the full check: function name -> library, of the libraries seen so far) its top-level
    code is run as FUNCTION LOAD runs it (see rdb.library_check): it must register at least
    one function, with valid calls, and none that another library of the file has."""
    first, nl, body = bytes(code).partition(b"\n")
    engine, *meta = first.split() or [b""]
    names = [m[5:] for m in meta if m[:5].lower() == b"name="]
    if (
        engine.lower() != b"#!lua"
        or len(names) != 1
        or len(meta) != 1
        or not re.fullmatch(rb"[A-Za-z0-9_]+", names[0])
    ):
        raise RdbError(f"function library has an invalid first line {first[:80]!r}", offset)
    _compile(nl + body, "function library", offset)
    if functions is None:
        return
    from ..rdb.library_check import LibraryError, library_functions

    lib = names[0]
    try:
        registered = library_functions(nl + body)
    except LibraryError as e:
        raise RdbError(f"function library {lib!r} would not load on a server: {e}", offset) from None
    for name in registered:
        other = functions.get(name)
        if other is not None and other != lib:
            raise RdbError(
                f"function library {lib!r} registers function {name!r}, which library "
                f"{other!r} registers too: a server refuses the second one", offset,
            )  # fmt: skip
        functions[name] = lib


def _compile(code: bytes, what: str, offset: int) -> None:
    import lupa.lua51 as lua

    rt = lua.LuaRuntime(encoding=None)
    err = rt.eval("function(s) local f, e = loadstring(s, '=library'); return e end")(code)
    if err is not None:
        raise RdbError(f"{what} does not compile: {err.decode(errors='replace')}", offset)


def _check_script(body: bytes, offset: int) -> None:
    """A script saved in the file (``lua`` aux field, Redis < 7) is sent with SCRIPT LOAD,
    which compiles it as a chunk (Redis >= 7) or as the body of a function (older): it must
    compile both ways, or the target would refuse it after keys were written."""
    what = "Lua script (aux field lua)"
    _compile(bytes(body), what, offset)
    _compile(b"function f() " + bytes(body) + b"\nend", what, offset)


def check_rdb_file(
    path: Path,
    stop: Callable[[], bool] | None = None,
    seen_dbs: set[int] | None = None,
    verify: str = "checksum",
    seen_modules: set[str] | None = None,
) -> str:
    """Validate a file before writing. Returns how ('checksum' or 'full parse').

    Every record is walked in any case (an unknown type or opcode byte fails here, not after
    half the keys were written: a valid CRC64 only says the bytes are those the producer
    wrote). Values are decoded too when there is no usable checksum to vouch for them, or
    when ``verify`` asks for it ("full"; "auto": files up to FULL_CHECK_MAX_BYTES)."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, not {verify!r}")
    _magic, version = _header(path)
    size = path.stat().st_size
    full = verify == "full" or (verify == "auto" and size <= FULL_CHECK_MAX_BYTES)
    checked = False
    if version >= 5 and size >= 18:
        with open(path, "rb") as f:
            f.seek(size - 9)
            tail = f.read(9)
        stored = struct.unpack("<Q", tail[1:])[0]
        if tail[0] == 0xFF and stored != 0:
            crc = Crc64()
            with open(path, "rb") as f:
                remaining = size - 8
                while remaining:
                    chunk = f.read(min(4 << 20, remaining))
                    if not chunk:
                        break
                    crc.update(chunk)
                    remaining -= len(chunk)
            # A mismatch: parse to report where it breaks, else report the checksum itself.
            checked = crc.value == stored
    # the stored checksum is still verified at the end of the parse (a mismatch is refused)
    strict = full or not checked
    # Walk every record; without a valid checksum, decode every value without writing.
    from ..rdb.validate import check_blob_headers

    parser = RdbParser()
    valkey = None
    key_records = (R.KeyValue, R.BigKeyStart)
    keys: dict[int, set[bytes]] = {}  # without a checksum: the keys seen, per db
    functions: dict[bytes, bytes] | None = {} if strict else None  # function -> library
    with open(path, "rb") as f:
        while True:
            if stop is not None and stop():
                raise KeyboardInterrupt
            chunk = f.read(READ_SIZE)
            if not chunk:
                break
            parser.feed(chunk)
            for rec in parser.records():
                if seen_dbs is not None and type(rec) is R.SelectDb:
                    seen_dbs.add(rec.db)
                elif seen_modules is not None and type(rec) is R.KeyValue and rec.type == 7:
                    seen_modules.add(module_name(read_length(rec.raw, 0)[0])[0])
                if type(rec) is R.Function:  # few and small: checked in any case
                    _check_function(rec.code, parser.offset, functions)
                elif type(rec) is R.Aux and rec.key == b"lua":
                    _check_script(rec.value, parser.offset)
                if strict and type(rec) in key_records:
                    # a server refuses a file with a key twice in a db; so must we, up front
                    seen = keys.setdefault(rec.db, set())
                    if rec.key in seen:
                        raise RdbError(f"key appears twice in db {rec.db}", rec.offset, rec.key)
                    seen.add(rec.key)
                if not strict and type(rec) is R.KeyValue and rec.type in _BLOB_TYPES:
                    try:
                        check_blob_headers(rec.type, rec.raw)
                    except RdbError as e:
                        raise RdbError(e.message, rec.offset, rec.key) from None
                if strict and type(rec) is R.KeyValue and not rec.empty:
                    if valkey is None:
                        valkey = parser.is_valkey
                    check_value(rec, valkey, blobs=True)
    parser.finish()
    return "full parse" if strict else "checksum"


class RdbFileReader(FileReaderBase):
    caps = Capabilities(progress=True, counters=True)
    """``[rdb_reader]``: feeds a file through the parser and turns records into entries."""

    name = "rdb_reader"

    def __init__(self, filepath: str | os.PathLike, ctx, verify: str = "auto") -> None:
        self.path = Path(filepath)
        self.ctx = ctx
        self.verify = verify
        if not self.path.is_file():
            raise FileNotFoundError(f"rdb_reader.filepath: file not found: {self.path}")
        self.total = self.path.stat().st_size
        self.sent = 0  # bytes whose records have been handed on
        self.feed = SnapshotFeed(ctx)
        self.done = False
        self.checked_by = ""

    def prepare(self) -> None:
        dbs: set[int] = set()
        modules: set[str] = set()
        self.checked_by = check_rdb_file(self.path, self.ctx.stop, dbs, self.verify, modules)
        caps = self.ctx.caps
        for name in sorted(modules):  # (a module no target version can take: before writing)
            refusal = (caps is not None and not caps.file_output
                       and module_refusal(name, caps.version, caps.is_valkey))  # fmt: skip
            if refusal:
                raise RdbError(f"the file holds keys of module type {name!r}: {refusal}")
        # the target's number of databases (0: unknown, or a filter may drop dbs)
        limit = self.ctx.options.get("target_databases", 0)
        if limit and dbs and max(dbs) >= limit:
            where = (
                "a cluster target serves db 0 only (Valkey 9+ serves more with"
                " cluster-databases); use [filter] allow_db"
                if limit == 1
                else f"the target has {limit} databases"
            )
            raise RdbError(f"the file has keys in db {max(dbs)}, which cannot be written: {where}")

    def batches(self) -> Iterator[list]:
        feed = self.feed
        stop = self.ctx.stop
        with open(self.path, "rb") as f:
            while True:
                if stop():
                    return
                chunk = f.read(READ_SIZE)
                if not chunk:
                    break
                yield from feed.entries(chunk)
                self.sent = feed.offset
        feed.finish()
        self.sent = self.total
        self.done = True

    def status_line(self) -> str:
        return f"[rdb_reader] rdb file synced: {self.percent:.2f}%"

    def status(self) -> dict:
        return {
            "name": self.name,
            "status": self.status_line(),
            "filepath": str(self.path),
            "file_size_bytes": self.total,
            "file_size_human": human_bytes(self.total),
            "file_sent_bytes": self.sent,
            "file_sent_human": human_bytes(self.sent),
            "percent": f"{self.percent:.2f}%",
        }

    def summary(self) -> list[str]:
        return field_ttl_summary(self.feed.conv)

    def counters(self) -> tuple[int, Counter, Counter]:
        """(keys read, how keys were written, skipped keys by reason)."""
        return self.feed.counters()



def build(cfg, ctx) -> RdbFileReader:
    return RdbFileReader(cfg.reader.filepath, ctx, cfg.reader.verify)
