"""``[aof_reader]``: replay an AOF: a single file (plain, or with an RDB preamble), a Redis 7+
``appendonly.aof.manifest``, or the ``appendonlydir`` directory itself.

Load order is the server's: the BASE file (RDB or RESP) in full, then **every** INCR file of
the manifest in order (HISTORY files never). ``SELECT`` is tracked and not forwarded: every
entry carries its database. ``MULTI`` ... ``EXEC`` blocks are forwarded as entries of one
batch so the target applies them atomically.

``timestamp`` (point in time): replay stops right before the first ``#TS:<unix>`` annotation
greater than it (in INCR files or a single-file AOF; a BASE file is replayed in full). A
``MULTI`` block the cut-off falls into is dropped whole.

All files are parsed once in :meth:`prepare` before anything is written (cheap: no values
are decoded when the RDB part has a checksum), so corrupt or truncated input stops the run
with the file, the byte offset and what was expected, and nothing is written. With
``ignore_truncated = true`` a truncated last command of the last file is dropped instead
(and an unterminated ``MULTI`` there too), like the server's ``aof-load-truncated``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ..aof.manifest import ManifestError, read_manifest
from ..aof.parser import Annotation, AofError, AofParser, BigArg
from ..entry import Entry
from ..rdb import records as R
from ..rdb.parser import RdbParser
from ..rdb.primitives import RdbError
from ..repl.bigbulk import MAX_BULK, PIECE, PIECE_DONE, BigCommand, limits
from ..util import human_bytes
from .base import FileReaderBase

__all__ = ["AofFileReader", "build", "plan_files"]

log = logging.getLogger("redshake")

READ_SIZE = 256 * 1024
BATCH = 1024

_SELECT, _MULTI, _EXEC = b"SELECT", b"MULTI", b"EXEC"


def _what(item) -> str:
    """cmd: argv; big: a long argument starts (BigArg); piece: its bytes; ann: Annotation."""
    t = item.__class__
    return "cmd" if t is list else "piece" if t is bytes else "big" if t is BigArg else "ann"


class _Part:
    __slots__ = ("path", "role", "size", "start")

    def __init__(self, path: Path, role: str, start: int) -> None:
        self.path = path
        self.role = role  # "base", "incr" or "single"
        self.size = path.stat().st_size
        self.start = start  # global offset of this file's first byte


def _looks_like_manifest(path: Path) -> bool:
    if path.name.endswith(".manifest"):
        return True
    with open(path, "rb") as f:
        head = f.read(4096)
    for line in head.split(b"\n"):
        s = line.strip()
        if not s or s.startswith(b"#"):
            continue
        return s.startswith(b"file ")
    return False


def plan_files(filepath: str | Path) -> tuple[list[tuple[Path, str]], Path | None]:
    """The files to load in order as (path, role), and the manifest used (if any)."""
    p = Path(filepath)
    if not str(filepath):
        raise FileNotFoundError("aof_reader.filepath is empty")
    if p.is_dir():
        found = sorted(p.glob("*.manifest"))
        if not found:
            raise FileNotFoundError(f"aof_reader.filepath: no *.manifest file in directory {p}")
        if len(found) > 1:
            raise FileNotFoundError(
                f"aof_reader.filepath: several manifests in {p} ({', '.join(f.name for f in found)}); "
                "name the one to load"
            )
        p = found[0]
    elif not p.is_file():
        raise FileNotFoundError(f"aof_reader.filepath: file not found: {p}")
    if not _looks_like_manifest(p):
        return [(p, "single")], None
    try:
        m = read_manifest(p)
    except ManifestError as e:
        raise AofError(f"invalid AOF manifest: {e}", file=str(p)) from None
    out: list[tuple[Path, str]] = []
    for ent in m.load_order():
        f = p.parent / ent.name
        if not f.is_file():
            raise FileNotFoundError(f"aof_reader: {ent.name!r} listed in {p} is missing ({f})")
        out.append((f, "base" if ent.type == "b" else "incr"))
    return out, p


class _Cut(Exception):
    """Point-in-time cut-off reached."""


class AofFileReader(FileReaderBase):
    name = "aof_reader"

    def __init__(
        self, filepath: str, ctx, *, timestamp: int = 0, ignore_truncated: bool = False
    ) -> None:
        self.ctx = ctx
        self.filepath = str(filepath)
        self.timestamp = timestamp
        self.ignore_truncated = ignore_truncated
        # arguments longer than PIECE go to the target in pieces (see repl.bigbulk)
        self._limit, self._temp_keys = limits(ctx)
        self._max_bulk = max(self._limit, MAX_BULK)
        files, self.manifest = plan_files(filepath)
        self.parts: list[_Part] = []
        start = 0
        for path, role in files:
            part = _Part(path, role, start)
            start += part.size
            self.parts.append(part)
        self.size = start
        self.total = start  # bytes that will be replayed (smaller with a point-in-time cut)
        self.sent = 0
        self.current = -1  # index of the file being read
        self.state = "init"
        self.done = False
        self.conv = None
        # results of the validation pass
        self.cut: tuple[int, int, int] | None = None  # (part index, file offset, ts) of the cut-off
        self.dropped_tail: list[str] = []
        # counters of the replay
        self.commands = 0
        self.rdb_keys = 0
        self.transactions = 0
        self.skipped: Counter[str] = Counter()
        self.last_ts = 0

    # -- reading ---------------------------------------------------------------------------

    def _items(self, part: _Part) -> Iterator[tuple[str, object, int]]:
        """("rdb", record, file offset) / ("cmd", argv, end) / ("ann", Annotation, end)
        for one file; errors carry the file name. A truncated tail raises AofError(truncated)."""
        fname = str(part.path)
        rdb: RdbParser | None = None
        aof: AofParser | None = None
        stop = self.ctx.stop
        try:
            with open(part.path, "rb") as f:
                # Read exactly the bytes seen when the reader was built: a live server may
                # still be appending to its last INCR file, and both passes must agree.
                remaining = part.size
                head = f.read(min(READ_SIZE, remaining))
                remaining -= len(head)
                if head[:5] == b"REDIS" or head[:6] == b"VALKEY":
                    rdb = RdbParser()
                else:
                    aof = AofParser(0, PIECE, self._max_bulk)
                chunk = head
                while chunk:
                    if stop():
                        raise KeyboardInterrupt
                    if rdb is not None:
                        rdb.feed(chunk)
                        for rec in rdb.records():
                            yield "rdb", rec, rdb.offset
                        if rdb.done:
                            aof = AofParser(rdb.offset, PIECE, self._max_bulk)
                            rest = rdb.trailing
                            rdb = None
                            aof.feed(rest)
                            for item, end in aof.items():
                                yield _what(item), item, end
                    else:
                        aof.feed(chunk)  # type: ignore[union-attr]
                        for item, end in aof.items():  # type: ignore[union-attr]
                            yield _what(item), item, end
                    chunk = f.read(min(READ_SIZE, remaining)) if remaining > 0 else b""
                    remaining -= len(chunk)
            if rdb is not None:
                rdb.finish()  # raises: the RDB part is incomplete
            if aof is not None:
                aof.finish()
        except AofError as e:
            e.file = fname
            raise
        except RdbError as e:
            what = "RDB preamble" if part.role != "base" else "base RDB"
            raise AofError(f"{what}: {e}", file=fname) from None

    def _walk(self, *, dry: bool) -> Iterator[list[Entry]]:
        """The replay state machine shared by validation (dry) and the real pass."""
        T = self.timestamp
        nparts = len(self.parts)
        batch: list[Entry] = []
        for idx, part in enumerate(self.parts):
            self.current = idx
            self.state = f"loading {part.role} file {part.path.name}"
            last = idx == nparts - 1
            timed = T > 0 and part.role != "base"
            fname = str(part.path)
            base = part.start
            db = 0
            block: list[Entry] | None = None
            block_at = 0
            conv = None
            big: BigCommand | None = None  # a command whose long arguments come in pieces
            try:
                for kind, item, end in self._items(part):
                    if len(batch) >= BATCH:
                        yield batch
                        batch = []
                    if kind == "cmd":
                        argv: list[bytes] = item  # type: ignore[assignment]
                        name = argv[0]
                        if len(name) <= 6:
                            up = name.upper()
                            if up == _SELECT:
                                if len(argv) != 2 or not argv[1].isdigit():
                                    raise AofError(f"bad SELECT command {argv!r}", end, file=fname)
                                db = int(argv[1])
                                continue
                            if up == _MULTI:
                                if block is not None:
                                    self.skipped["nested_multi"] += 1
                                    continue
                                block = [Entry(db, argv, None, base + end)]
                                block_at = end
                                continue
                            if up == _EXEC:
                                if block is None:
                                    self.skipped["exec_without_multi"] += 1
                                    continue
                                block.append(Entry(db, argv, None, base + end))
                                self.transactions += 1
                                self.commands += len(block) - 2
                                if not dry:
                                    batch.extend(block)
                                    self.sent = base + end
                                block = None
                                continue
                        if big is None:
                            e = Entry(db, argv, None, base + end)
                        else:  # its long arguments went ahead in pieces (or were kept)
                            e = big.finish(argv, base + end)
                            big = None
                        if block is not None:
                            block.append(e)
                        else:
                            self.commands += 1
                            if not dry:
                                batch.append(e)
                                self.sent = base + end
                    elif kind == "piece":
                        if not dry:
                            pe = big.piece(item)  # type: ignore[union-attr, arg-type]
                            if pe is not None:  # handed over now, ahead of a MULTI block
                                batch.append(pe)
                                self.sent = base + end
                                yield batch
                                yield PIECE_DONE
                                batch = []
                    elif kind == "big":
                        if big is None:
                            big = BigCommand(db, b"a%d" % (base + end), limit=self._limit,
                                             temp_keys=self._temp_keys, max_bulk=self._max_bulk,
                                             where=f"{fname} at byte offset {end}")  # fmt: skip
                        big.arg(item)  # type: ignore[arg-type]
                    elif kind == "ann":
                        ann: Annotation = item  # type: ignore[assignment]
                        if ann.ts is not None:
                            self.last_ts = ann.ts
                            if timed and ann.ts > T:
                                self.cut = (idx, ann.start, ann.ts)
                                if block is not None:
                                    self.skipped["multi_block_at_cutoff"] += 1
                                    block = None
                                raise _Cut
                        elif ann.malformed_ts and timed:
                            raise AofError(
                                f"malformed timestamp annotation {ann.text!r}",
                                ann.start,
                                file=fname,
                            )
                    else:  # an RDB record (base file or preamble)
                        t = type(item)
                        if t is R.KeyValue or t is R.BigKeyStart:
                            self.rdb_keys += 1
                        elif t is R.Eof:
                            if dry and not item.verified:  # type: ignore[attr-defined]
                                self._decode_pass(part)
                            continue
                        if dry:
                            continue
                        if conv is None:
                            conv = self._converter(part)
                        out = conv.convert(item)
                        if out:
                            batch.extend(out)
                            self.sent = base + end
            except _Cut:
                if batch:
                    yield batch
                return
            except AofError as e:
                if not e.truncated:
                    raise
                if not (last and self.ignore_truncated):
                    if last:
                        e.message += " (set aof_reader.ignore_truncated = true to drop it)"
                    else:
                        e.message += " (only the last file may be truncated)"
                    raise AofError(e.message, e.offset, file=fname, truncated=True) from None
                if dry:
                    self.dropped_tail.append(
                        f"{part.path.name}: {e.message} at byte offset {e.offset}"
                    )
                    log.warning(
                        "%s: %s at byte offset %s: dropped (ignore_truncated)",
                        fname,
                        e.message,
                        e.offset,
                    )
            if block is not None:  # a MULTI without EXEC at the end of the file
                if not (last and self.ignore_truncated):
                    hint = (
                        "set aof_reader.ignore_truncated = true to drop it"
                        if last
                        else "only the last file may end inside a transaction"
                    )
                    raise AofError(
                        f"file ends inside a MULTI block (MULTI ends at byte offset {block_at}, "
                        f"{len(block) - 1} commands, no EXEC); {hint}",
                        part.size,
                        file=fname,
                    )
                self.skipped["unterminated_multi"] += 1
                if dry:
                    self.dropped_tail.append(
                        f"{part.path.name}: MULTI at byte offset {block_at} without EXEC "
                        f"({len(block) - 1} commands)"
                    )
                    log.warning(
                        "%s: the MULTI ending at byte offset %d has no EXEC: its %d commands are "
                        "dropped (ignore_truncated)",
                        fname, block_at, len(block) - 1,
                    )  # fmt: skip
            if not dry:
                self.sent = base + part.size
        if batch:
            yield batch

    def _converter(self, part: _Part):
        if self.conv is None:
            with open(part.path, "rb") as f:
                head = f.read(9)
            valkey = head.startswith(b"VALKEY")
            self.conv = self.ctx.rdb_converter(int(head[6:9] if valkey else head[5:9]), valkey)
        return self.conv

    def _decode_pass(self, part: _Part) -> None:
        """An RDB part without checksum: decode every value once so corruption shows now."""
        from ..rdb.values import decode_value

        p = RdbParser()
        with open(part.path, "rb") as f:
            while not p.done:
                chunk = f.read(READ_SIZE)
                if not chunk:
                    break
                p.feed(chunk)
                for rec in p.records():
                    if type(rec) is R.KeyValue and not rec.empty:
                        try:
                            decode_value(rec.type, rec.raw, valkey=p.is_valkey)
                        except RdbError as e:
                            raise AofError(
                                f"RDB value of key {rec.key!r}: {e.message}",
                                rec.offset,
                                file=str(part.path),
                            ) from None

    # -- Reader protocol ---------------------------------------------------------------------

    def prepare(self) -> None:
        t0 = time.monotonic()
        self.state = "checking"
        for _ in self._walk(dry=True):
            pass
        # the real pass counts again
        self.commands = self.rdb_keys = self.transactions = 0
        self.skipped.clear()
        self.current = -1
        if self.cut is not None:
            idx, off, ts = self.cut
            part = self.parts[idx]
            self.total = part.start + off
            log.info(
                "aof_reader: point in time %d: replay stops before #TS:%d in %s at byte offset %d "
                "(%s of %s)",
                self.timestamp, ts, part.path.name, off, human_bytes(self.total), human_bytes(self.size),
            )  # fmt: skip
        elif self.timestamp:
            log.info(
                "aof_reader: point in time %d: no later #TS annotation (last seen: %d), everything is replayed",
                self.timestamp, self.last_ts,
            )  # fmt: skip
        log.info(
            "aof_reader: %d file(s) checked in %.2fs: %s",
            len(self.parts), time.monotonic() - t0,
            ", ".join(f"{p.path.name} ({p.role}, {human_bytes(p.size)})" for p in self.parts),
        )  # fmt: skip
        self.state = "ready"

    def batches(self) -> Iterator[list[Entry]]:
        try:
            for batch in self._walk(dry=False):
                yield batch
                if self.ctx.stop():
                    self.state = "stopped"
                    return
        except KeyboardInterrupt:
            if not self.ctx.stop():
                raise
            self.state = "stopped"  # a clean stop requested while reading
            return
        self.sent = self.total
        self.done = True
        self.state = "done"

    def status_line(self) -> str:
        if self.done:
            return f"[aof_reader] done, {self.commands} commands, synced: 100.00%"
        n = len(self.parts)
        where = f" ({self.current + 1}/{n})" if 0 <= self.current < n else ""
        return f"[aof_reader] {self.state}{where}, synced: {self.percent:.2f}%"

    def status(self) -> dict:
        return {
            "aof_name": self.name,
            "aof_status": self.status_line(),
            "aof_file_path": self.filepath,
            "aof_file_size_bytes": self.total,
            "aof_file_size_human": human_bytes(self.total),
            "aof_file_sent_bytes": self.sent,
            "aof_file_sent_human": human_bytes(self.sent),
            "aof_percent": f"{self.percent:.2f}%",
            "aof_time_stamp": self.timestamp,
            "aof_current_file": str(self.parts[self.current].path)
            if 0 <= self.current < len(self.parts)
            else "",
            "aof_files": [str(p.path) for p in self.parts],
            "commands": self.commands,
            "transactions": self.transactions,
            "rdb_keys": self.rdb_keys,
        }

    def summary(self) -> list[str]:
        lines = [
            f"aof_reader: {len(self.parts)} file(s), {self.rdb_keys} keys from RDB parts, "
            f"{self.commands} commands ({self.transactions} MULTI/EXEC blocks)"
        ]
        if self.conv is not None:
            how = ", ".join(f"{k}={v}" for k, v in sorted(self.conv.methods.items())) or "none"
            sk = (
                ", ".join(f"{k}={v}" for k, v in sorted(Counter(self.conv.skipped).items()))
                or "none"
            )
            lines.append(f"aof_reader: RDB keys written as: {how}; skipped: {sk}")
        if self.skipped:
            lines.append(
                "aof_reader: skipped "
                + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
            )
        if self.cut is not None:
            idx, off, ts = self.cut
            lines.append(
                f"aof_reader: point in time {self.timestamp}: stopped before #TS:{ts} "
                f"({self.parts[idx].path.name} byte offset {off})"
            )
        for d in self.dropped_tail:
            lines.append(f"aof_reader: dropped truncated tail: {d}")
        return lines


def build(cfg, ctx) -> AofFileReader:
    rc = cfg.reader
    return AofFileReader(
        rc.filepath,
        ctx,
        timestamp=rc.timestamp,
        ignore_truncated=getattr(rc, "ignore_truncated", False),
    )
