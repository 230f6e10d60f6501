"""``[aof_reader]``: replay an AOF: a single file (plain, or with an RDB preamble), a Redis 7+
``appendonly.aof.manifest``, or the ``appendonlydir`` directory itself.

Load order is the server's: the BASE file (RDB or RESP) in full, then **every** INCR file of
the manifest in order (HISTORY files never). ``SELECT`` is tracked and not forwarded: every
entry carries its database. ``MULTI`` ... ``EXEC`` blocks are forwarded as entries of one
batch so the target applies them atomically.

``timestamp`` (point in time): replay stops right before the first ``#TS:<unix>`` annotation
greater than it (in INCR files or a single-file AOF; a BASE file is replayed in full, and a
``timestamp`` older than the BASE file is refused). A ``MULTI`` block the cut-off falls into is
dropped whole.

Expiry times that are already past: the server loads an AOF with the clock stopped (no key
expires while loading; ``SET ... PXAT <past>``, ``PEXPIREAT <past>`` and expired keys of the
RDB part are all kept, so a later ``PERSIST``, ``RENAME`` or ``APPEND`` still finds them) and
expires what is due once loading is over. A live target would drop such keys at once, so
every absolute expiry that is past, or due within :data:`DEFER_MS`, is replayed shifted by
:data:`SHIFT_MS` (far in the future, same order among the shifted ones), the key is noted,
and when the replay is complete one EVAL per noted key (and the keys RENAME, MOVE, COPY or
SWAPDB carried it to) puts back the true expiry of a key that still has a shifted one: the
key then expires exactly as on the server.

All files are parsed once in :meth:`prepare` before anything is written (cheap: no values
are decoded when the RDB part has a checksum), so corrupt or truncated input stops the run
with the file, the byte offset and what was expected, and nothing is written. With
``ignore_truncated = true`` a truncated last command of the last file is dropped instead
(and an unterminated ``MULTI`` there too), like the server's ``aof-load-truncated``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ..aof.manifest import ManifestError, read_manifest
from ..aof.parser import Annotation, AofError, AofParser, BigArg
from ..entry import Entry
from ..rdb import records as R
from ..rdb.primitives import RdbError
from ..repl.bigbulk import MAX_BULK, PIECE, PIECE_DONE, BigCommand, limits
from ..util import human_bytes
from .base import FileReaderBase
from .cmdstream import Framer
from .snapshot import SnapshotFeed, check_value

__all__ = ["AofFileReader", "build", "plan_files"]

log = logging.getLogger("redshake")

READ_SIZE = 256 * 1024
BATCH = 1024

_SELECT, _MULTI, _EXEC = b"SELECT", b"MULTI", b"EXEC"

# Expiries past or due within DEFER_MS of being sent are sent SHIFT_MS later (see the module
# docstring). 2**50 ms is some 35,000 years: no real expiry is that far, and a shifted one
# plus today's time still fits a Lua number (a double) exactly.
SHIFT_MS = 1 << 50
DEFER_MS = 3_600_000

# Commands whose absolute expiry may need shifting, and those that carry a key's expiry to
# another key or database (their targets must be checked at the end too).
_EXPIRY_CMDS = frozenset({b"SET", b"PEXPIREAT", b"EXPIREAT", b"GETEX", b"RESTORE"})
_CARRY_CMDS = frozenset({b"RENAME", b"RENAMENX", b"MOVE", b"COPY", b"SWAPDB"})
# ... and those after which a key has no expiry (or no longer exists): it is forgotten, so
# the set of noted keys stays small when the source deleted its expired keys.
_CLEAR_CMDS = frozenset({b"DEL", b"UNLINK", b"PERSIST", b"FLUSHDB", b"FLUSHALL"})
_AT_OPTS = {b"PXAT": 1, b"EXAT": 1000}

# Puts back the true expiry of a key whose expiry is still a shifted one. ARGV[2] = "1":
# the target has PEXPIRETIME; otherwise PTTL + TIME (to the millisecond of the clock read).
RESTORE_EXPIRY_LUA = b"""pcall(redis.replicate_commands)
local s = tonumber(ARGV[1])
local t
if ARGV[2] == '1' then
  t = redis.call('PEXPIRETIME', KEYS[1])
else
  t = redis.call('PTTL', KEYS[1])
  if t < 0 then return 0 end
  local now = redis.call('TIME')
  t = t + tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
if t < s then return 0 end
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', t - s))
return 1
"""


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
        self._feed: SnapshotFeed | None = None  # of the RDB part being read
        # results of the validation pass
        self.cut: tuple[int, int, int] | None = None  # (part index, file offset, ts) of the cut-off
        self.dropped_tail: list[str] = []
        # counters of the replay
        self.commands = 0
        self.rdb_keys = 0
        self.transactions = 0
        self.skipped: Counter[str] = Counter()
        self.last_ts = 0
        self.base_ts = 0  # when the base (or RDB preamble) was written: #TS or RDB ctime
        # keys that got a shifted expiry, or may have received one (RENAME & co.)
        self.deferred: set[tuple[int, bytes]] = set()
        self.expiries_shifted = 0
        self.expiry_checks = 0

    # -- reading ---------------------------------------------------------------------------

    def _items(self, part: _Part) -> Iterator[tuple[str, object, int]]:
        """("rdb", record, file offset) / ("cmd", argv, end) / ("ann", Annotation, end)
        for one file; errors carry the file name. A truncated tail raises AofError(truncated)."""
        fname = str(part.path)
        rdb: SnapshotFeed | None = None
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
                    # the RDB parts of the AOF share one converter (see _rdb_record)
                    rdb = self._feed = SnapshotFeed(self.ctx, self.conv)
                else:
                    aof = AofParser(0, PIECE, self._max_bulk)
                chunk = head
                while chunk:
                    if stop():
                        raise KeyboardInterrupt
                    if rdb is not None:
                        for rec in rdb.feed(chunk):
                            yield "rdb", rec, rdb.offset
                        if rdb.done:
                            aof = AofParser(rdb.offset, PIECE, self._max_bulk)
                            rest = rdb.parser.trailing
                            rdb = None
                            aof.feed(rest)
                            for item, end in aof.items():
                                yield "cmd" if item.__class__ is list else _what(item), item, end
                    else:
                        aof.feed(chunk)  # type: ignore[union-attr]
                        for item, end in aof.items():  # type: ignore[union-attr]
                            yield "cmd" if item.__class__ is list else _what(item), item, end
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
        nparts = len(self.parts)
        fr = Framer()  # (the batch runs on from one file into the next)
        for idx, part in enumerate(self.parts):
            self.current = idx
            self.state = f"loading {part.role} file {part.path.name}"
            last = idx == nparts - 1
            fr.restart()
            try:
                yield from self._replay(idx, part, fr, dry)
            except _Cut:
                if fr.batch:
                    yield fr.take()
                return
            except AofError as e:
                self._truncated(e, part, last, dry)
            if fr.txn is not None:  # a MULTI without EXEC at the end of the file
                self._unterminated(fr, part, last, dry)
            if not dry:
                self.sent = part.start + part.size
            elif part.role == "base":
                self._check_point_in_time(str(part.path))
        if fr.batch:
            yield fr.take()

    def _replay(self, idx: int, part: _Part, fr: Framer, dry: bool) -> Iterator[list[Entry]]:
        """One file through the framer: full batches are handed over as they fill."""
        T = self.timestamp
        timed = T > 0 and part.role != "base"
        fname = str(part.path)
        base = part.start
        big: BigCommand | None = None  # a command whose long arguments come in pieces
        batch = fr.batch  # (the hot loop's alias: renewed whenever the batch is taken)
        for kind, item, end in self._items(part):
            if len(batch) >= BATCH:
                yield fr.take()
                batch = fr.batch
            if kind == "cmd":
                argv: list[bytes] = item  # type: ignore[assignment]
                name = argv[0]
                # (the names looked up below are at most 9 bytes long)
                up = name.upper() if len(name) <= 9 else name
                if up == _SELECT:
                    if not fr.select(argv):
                        raise AofError(f"bad SELECT command {argv!r}", end, file=fname)
                    continue
                if up == _MULTI:
                    if not fr.multi(Entry(fr.db, argv, None, base + end), end):
                        self.skipped["nested_multi"] += 1
                    continue
                if up == _EXEC:
                    block = fr.exec(Entry(fr.db, argv, None, base + end), keep=not dry)
                    if block is None:
                        self.skipped["exec_without_multi"] += 1
                        continue
                    self.transactions += 1
                    self.commands += len(block) - 2
                    if not dry:
                        self.sent = base + end
                    continue
                db = fr.db
                txn = fr.txn
                if not dry:
                    if up in _EXPIRY_CMDS:
                        argv = self._expiry(db, argv, up, txn is None)
                    elif self.deferred and (up in _CARRY_CMDS or up in _CLEAR_CMDS):
                        self._carry(db, argv, up, txn is None)
                if big is None:
                    e = Entry(db, argv, None, base + end)
                else:  # its long arguments went ahead in pieces (or were kept)
                    e = big.finish(argv, base + end)
                    big = None
                if txn is not None:
                    txn.append(e)
                    continue
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
                        yield fr.take()
                        batch = fr.batch
                        yield PIECE_DONE
            elif kind == "big":
                if big is None:
                    big = BigCommand(fr.db, b"a%d" % (base + end), limit=self._limit,
                                     temp_keys=self._temp_keys, max_bulk=self._max_bulk,
                                     where=f"{fname} at byte offset {end}")  # fmt: skip
                big.arg(item)  # type: ignore[arg-type]
            elif kind == "ann":
                ann: Annotation = item  # type: ignore[assignment]
                if ann.ts is not None:
                    self.last_ts = ann.ts
                    if part.role == "base" and not self.base_ts:
                        self.base_ts = ann.ts
                    if timed and ann.ts > T:
                        self.cut = (idx, ann.start, ann.ts)
                        if fr.drop_txn() >= 0:
                            self.skipped["multi_block_at_cutoff"] += 1
                        raise _Cut
                elif ann.malformed_ts and timed:
                    raise AofError(
                        f"malformed timestamp annotation {ann.text!r}",
                        ann.start,
                        file=fname,
                    )
            else:  # an RDB record (base file or preamble)
                for out in self._rdb_record(part, item, dry):
                    if len(batch) >= BATCH:
                        yield fr.take()
                        batch = fr.batch
                    batch.extend(out)
                    self.sent = base + end

    def _rdb_record(self, part: _Part, rec, dry: bool) -> Iterator[list[Entry]]:
        """The entries of an RDB record of ``part`` (none in the dry pass, which checks)."""
        t = type(rec)
        if t is R.KeyValue or t is R.BigKeyStart:
            self.rdb_keys += 1
        elif t is R.Eof:
            if dry:
                if not rec.verified:
                    self._decode_pass(part)
                self._check_point_in_time(str(part.path))
            return
        elif t is R.Aux and rec.key == b"ctime":
            v = rec.value
            if isinstance(v, bytes) and v.isdigit():
                self.base_ts = int(v)
        if dry:
            return
        if (t is R.KeyValue or t is R.BigKeyStart) and rec.expire_ms != -1:
            shifted = self._shift(rec.expire_ms)
            if shifted:
                rec.expire_ms = shifted
                self._note(rec.db, rec.key)
        feed = self._feed
        assert feed is not None
        out = feed.convert(rec, BATCH)
        self.conv = feed.conv
        yield from out

    def _truncated(self, e: AofError, part: _Part, last: bool, dry: bool) -> None:
        """A truncated command: dropped at the end of the last file with ignore_truncated,
        else refused."""
        if not e.truncated:
            raise e
        fname = str(part.path)
        if not (last and self.ignore_truncated):
            if last:
                e.message += " (set aof_reader.ignore_truncated = true to drop it)"
            else:
                e.message += " (only the last file may be truncated)"
            raise AofError(e.message, e.offset, file=fname, truncated=True) from None
        if dry:
            self.dropped_tail.append(f"{part.path.name}: {e.message} at byte offset {e.offset}")
            log.warning(
                "%s: %s at byte offset %s: dropped (ignore_truncated)", fname, e.message, e.offset
            )

    def _unterminated(self, fr: Framer, part: _Part, last: bool, dry: bool) -> None:
        """A MULTI without EXEC at the end of a file: dropped at the end of the last file
        with ignore_truncated, else refused."""
        fname = str(part.path)
        block_at = fr.txn_at
        n = fr.drop_txn()
        if not (last and self.ignore_truncated):
            hint = (
                "set aof_reader.ignore_truncated = true to drop it"
                if last
                else "only the last file may end inside a transaction"
            )
            raise AofError(
                f"file ends inside a MULTI block (MULTI ends at byte offset {block_at}, "
                f"{n} commands, no EXEC); {hint}",
                part.size,
                file=fname,
            )
        self.skipped["unterminated_multi"] += 1
        if dry:
            self.dropped_tail.append(
                f"{part.path.name}: MULTI at byte offset {block_at} without EXEC ({n} commands)"
            )
            log.warning(
                "%s: the MULTI ending at byte offset %d has no EXEC: its %d commands are "
                "dropped (ignore_truncated)",
                fname, block_at, n,
            )  # fmt: skip

    def _check_point_in_time(self, fname: str) -> None:
        """A point in time older than the snapshot the AOF starts from cannot be replayed."""
        T = self.timestamp
        if T and self.base_ts and T < self.base_ts:
            raise AofError(
                f"point in time {T} is before the snapshot this AOF starts from was taken "
                f"({self.base_ts}): the AOF holds no older state (the commands before it were "
                "rewritten into the snapshot)",
                0,
                file=fname,
            )

    # -- expiries that are past while replaying ----------------------------------------------

    @staticmethod
    def _shift(when_ms: int) -> int:
        """The shifted expiry for an absolute time that is past or due soon, else 0."""
        if 0 < when_ms <= time.time() * 1000 + DEFER_MS:
            return when_ms + SHIFT_MS
        return 0

    def _note(self, db: int, key: bytes) -> None:
        self.deferred.add((db, key))
        self.expiries_shifted += 1

    def _expiry(self, db: int, argv: list[bytes], up: bytes, forget: bool) -> list[bytes]:
        """``argv`` with a past absolute expiry shifted (SET/GETEX PXAT/EXAT, PEXPIREAT,
        EXPIREAT, RESTORE ... ABSTTL); the key is noted. ``forget``: a plain SET may drop
        the key from the noted ones (not inside a MULTI block, which may yet be dropped)."""
        n = len(argv)
        if n < 3:
            return argv
        key = argv[1]
        try:
            if up == b"PEXPIREAT" or up == b"EXPIREAT":
                shifted = self._shift(int(argv[2]) * (1000 if up == b"EXPIREAT" else 1))
                if shifted:
                    self._note(db, key)
                    return [b"PEXPIREAT", key, b"%d" % shifted]
                if n > 3 and (db, key) in self.deferred:
                    # NX/XX/GT/LT would compare with a shifted expiry; the server logs the
                    # command only when its condition held, so it applies unconditionally.
                    return argv[:3]
                return argv
            if up == b"RESTORE":
                if n > 4 and any(a.upper() == b"ABSTTL" for a in argv[4:]):
                    shifted = self._shift(int(argv[2]))
                    if shifted:
                        self._note(db, key)
                        return [argv[0], key, b"%d" % shifted, *argv[3:]]
                return argv
            keep = up == b"GETEX"  # GETEX without option keeps the expiry, SET clears it
            for i in range(3 if up == b"SET" else 2, n):
                opt = argv[i].upper()
                mult = _AT_OPTS.get(opt)
                if mult and i + 1 < n:
                    shifted = self._shift(int(argv[i + 1]) * mult)
                    if shifted:
                        self._note(db, key)
                        return [*argv[:i], b"PXAT", b"%d" % shifted, *argv[i + 2 :]]
                    keep = True
                    break
                if opt == b"KEEPTTL" or opt == b"EX" or opt == b"PX":
                    keep = True
            if not keep and forget:
                self.deferred.discard((db, key))
        except ValueError:
            pass  # not a number: the target rejects it like the server would
        return argv

    def _carry(self, db: int, argv: list[bytes], up: bytes, forget: bool) -> None:
        """Note where RENAME, RENAMENX, MOVE, COPY and SWAPDB take a noted key's expiry;
        forget keys deleted or made persistent (``forget``: not inside a MULTI block)."""
        d = self.deferred
        n = len(argv)
        try:
            if up in _CLEAR_CMDS:
                if forget and up == b"FLUSHALL":
                    d.clear()
                elif forget and up == b"FLUSHDB":
                    d.difference_update([x for x in d if x[0] == db])
                elif forget:
                    d.difference_update([(db, k) for k in argv[1:]])
            elif up == b"SWAPDB":
                if n == 3:
                    a, b = int(argv[1]), int(argv[2])
                    d.update([(b if k_db == a else a, k) for k_db, k in d if k_db in (a, b)])
            elif n >= 3 and (db, argv[1]) in d:
                if up == b"MOVE":
                    d.add((int(argv[2]), argv[1]))
                elif up == b"COPY":
                    to = db
                    for i in range(3, n - 1):
                        if argv[i].upper() == b"DB":
                            to = int(argv[i + 1])
                    d.add((to, argv[2]))
                else:
                    d.add((db, argv[2]))
        except ValueError:
            pass

    def _expiry_pass(self) -> Iterator[list[Entry]]:
        """After a complete replay: put back the true expiry of every noted key that still
        has a shifted one (a past one makes the key expire, as after the server's load)."""
        caps = self.ctx.caps
        exact = b"1" if caps.version >= (7, 0, 0) or caps.is_valkey else b"0"
        shift = b"%d" % SHIFT_MS
        self.state = "restoring expiries"
        self.expiry_checks = len(self.deferred)
        batch: list[Entry] = []
        for db, key in sorted(self.deferred):
            argv = [b"EVAL", RESTORE_EXPIRY_LUA, b"1", key, shift, exact]
            batch.append(Entry(db, argv, key, self.total))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch
        self.deferred.clear()

    def _decode_pass(self, part: _Part) -> None:
        """An RDB part without checksum: decode every value once so corruption shows now."""
        feed = SnapshotFeed(self.ctx)
        with open(part.path, "rb") as f:
            while not feed.done:
                chunk = f.read(READ_SIZE)
                if not chunk:
                    break
                for rec in feed.feed(chunk):
                    if type(rec) is R.KeyValue and not rec.empty:
                        try:
                            check_value(rec, feed.parser.is_valkey)
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
            for batch in itertools.chain(self._walk(dry=False), self._expiry_pass()):
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
        if self.expiry_checks:
            lines.append(
                f"aof_reader: {self.expiries_shifted} expiries were already past or due within "
                f"{DEFER_MS // 60000} minutes: replayed shifted so no key expired while "
                f"loading (as on the server), then the true expiry was put back on "
                f"{self.expiry_checks} keys that could still carry one (one EVAL each)"
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
