"""Pipelined writer to one Redis / Valkey server.

Everything runs in the caller's thread: ``write()`` buffers the encoded command, sends a
batch once it reaches ``SEND_BYTES`` (or half the pipeline window), then reads whatever
replies have already arrived without waiting. It blocks only for backpressure, when more
than ``pipeline_count_limit`` commands or ``querybuf_limit`` bytes are unanswered.
``flush()`` sends the rest and waits for every reply. ``poll()`` is the non-blocking variant
for idle moments (it also advances ``acked_offset``).

Error replies go to ``on_error(entry, message)``; if that raises, or no handler was given,
the writer stops and the exception is raised from this and every later call.

Transactions: the entries ``MULTI``, commands, ``EXEC`` are written one after the other and
tracked as one block. Nothing of a block counts as answered, and ``acked_offset`` does not
move past it, until the ``EXEC`` reply arrived. Then every failed command is reported with
its own entry: an error element of the ``EXEC`` reply, or, when the server discarded the
transaction (``EXECABORT``, a rejected ``EXEC``), each command that failed to queue (or the
``EXEC`` entry when none did). ``on_abort(entries, errors, message)``, when given, receives a
discarded block instead (the cluster writer resends redirected blocks).

Units (exactly-once mode, :meth:`begin_unit` / :meth:`end_unit`): a block the writer opens
itself. Runs written inside it keep the fast path: their bytes go out as received and their
``+QUEUED`` replies are checked as one stretch; a command refused at queue time is reported
with its own entry (the server then discards the block: ``EXECABORT``), and so is every
error element of the ``EXEC`` reply.

A :class:`ScriptCall` (the cluster writer's exactly-once script, one per master and batch)
is one entry on the wire whose reply is an array with one reply per command it carries:
those are counted and reported per command, like the elements of an ``EXEC`` reply.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from operator import attrgetter, itemgetter

from redshake.entry import Entry, RestoreSet, Run, UnitEntry
from redshake.errors import BusyKey, ReadOnly, reply_class
from redshake.resp.conn import Connection, ConnError, ReplyError, connection_options, parse_address
from redshake.resp.encode import encode
from redshake.resp.server import read_info
from redshake.writers.base import (
    Capabilities,
    NotServing,
    TargetInfo,
    Writer,
    WriterError,
    check_serving,
    probe_target,
)

_first = itemgetter(0)  # a command's name
_argv = attrgetter("argv")
log = logging.getLogger("redshake")

__all__ = ["RedisWriter", "SEND_BYTES", "ScriptCall", "UNLIMITED_QPS"]

SEND_BYTES = 32 * 1024
UNLIMITED_QPS = 300000
# Unanswered bytes held at most (besides querybuf_limit): every unanswered entry stays in
# memory until its reply, and the kernel buffers of a local target take tens of MB, so
# without this the pieces of a huge value would pile up (small commands never get here:
# pipeline_count_limit bounds them first).
INFLIGHT_BYTES = 16 << 20
# how long a target that is loading its dataset (LOADING) is waited for when redshake starts
SERVING_PATIENCE = 600.0

OnError = Callable[[Entry, str], None]
# (entries of the block from MULTI to EXEC, [(entry, error message)], EXEC's error message)
OnAbort = Callable[[list[Entry], list[tuple[Entry, str]], str], None]

_MULTI = b"MULTI"
_EXEC = b"EXEC"


_BUSYKEY = ReplyError(f"{BusyKey.code} Target key name already exists.")
_OKS = b"+OK\r\n" * 4096  # a run never has more commands than that (sync reader: 1024)
_QUEUEDS = b"+QUEUED\r\n" * 4096  # what the commands of a run inside a MULTI answer


def _is_restore_set(entry: object) -> bool:
    """A RestoreSet, or a resent copy of one (cluster redirections keep it in ``orig``)."""
    return entry.__class__ is RestoreSet or getattr(entry, "orig", None).__class__ is RestoreSet


class _Block:
    """A MULTI ... EXEC block in flight: its entries and what its replies said so far."""

    __slots__ = ("entries", "queued", "errors", "select_inside", "run_cmds", "added")

    def __init__(self, multi: Entry) -> None:
        self.entries: list[Entry] = [multi]
        # what the EXEC reply array answers, in order: the commands the server queued
        # (None for a SELECT this writer added; (run, first, count) for commands of a run)
        self.queued: list[Entry | tuple[Run, int, int] | None] = []
        self.errors: list[tuple[Entry | None, str]] = []  # replies refusing to queue
        self.select_inside = False
        self.run_cmds = 0  # commands written inside the block as runs
        # entries this writer's caller added around the source's commands (unit MULTI,
        # marker SET, EXEC: Entry.plumbing), not counted as acknowledged source entries
        self.added = 1 if multi.plumbing else 0


class ScriptCall(UnitEntry):
    """An ``EVAL`` / ``EVALSHA`` that runs ``entries`` in one atomic step and answers with an
    array of their replies (the order of ``entries``); an error reply to the call itself
    means none of them ran and goes to ``on_error`` with this entry."""

    __slots__ = ("entries", "extra")

    def __init__(self, argv: list[bytes], key: bytes, resp: bytes, entries: list[Entry],
                 extra: object = None) -> None:  # fmt: skip
        super().__init__(0, argv, key, -1, resp)
        self.entries = entries
        self.extra = extra  # whatever the caller needs to resend it


class _QueuedRun:
    """A run written inside a MULTI block: one ``+QUEUED`` (or a refusal) per command."""

    __slots__ = ("run", "block", "ok_from")

    def __init__(self, run: Run, block: _Block) -> None:
        self.run = run
        self.block = block
        self.ok_from = 0  # first command of the run not yet entered in block.queued


def _queued_entries(queued: list[Entry | tuple[Run, int, int] | None]):
    """The commands answered by the elements of an EXEC reply, in order."""
    for q in queued:
        if q.__class__ is tuple:
            run, i, n = q  # type: ignore[misc]
            for argv in run.argvs[i : i + n]:
                yield Entry(run.db, argv)
        else:
            yield q


class _Internal:
    """Something in flight that is not a plain entry: a command the writer sends on its own
    (SELECT, ASKING; not counted as an entry), or a part of a transaction block."""

    __slots__ = ("desc", "offset", "entry", "block")

    def __init__(self, desc: str, entry: Entry | None = None, block: _Block | None = None) -> None:
        self.desc = desc
        self.offset = -1
        self.entry = entry
        self.block = block


_ASKING = encode([b"ASKING"])


def _ignore_error(_entry: Entry, _message: str) -> None:
    """on_error while draining: the error is counted (``errors``), nothing else."""


class RedisWriter(Writer):
    caps = Capabilities(runs=True, units=True, marker_get=True, drain=True, reconnect=True)

    def __init__(
        self,
        address: str,
        *,
        username: str = "",
        password: str = "",
        tls: bool = False,
        tls_verify: bool = True,
        tls_config: dict[str, str] | None = None,
        pipeline_count_limit: int = 1024,
        querybuf_limit: int = 1024_000_000,
        max_qps: int = UNLIMITED_QPS,
        on_error: OnError | None = None,
        name: str | None = None,
        connect_timeout: float = 10.0,
        on_abort: OnAbort | None = None,
        resolve: Callable[[], str] | None = None,
    ) -> None:
        host, port = parse_address(address)
        # a sentinel-managed target: where its master is now (asked again on every reconnect)
        self.resolve = resolve
        self.host = host
        self.port = port
        self.address = address
        self._conn_kw = connection_options(
            username=username,
            password=password,
            tls=tls,
            tls_verify=tls_verify,
            tls_config=tls_config,
            timeout=connect_timeout,
        )
        self.conn_lost = False  # the last failure was a lost connection (see reconnect())
        # a target that is loading its dataset (it just restarted) is waited for
        deadline = time.monotonic() + SERVING_PATIENCE
        delay = 0.5
        while True:
            self.conn = Connection(host, port, **self._conn_kw)  # type: ignore[arg-type]
            try:
                self.info: TargetInfo = probe_target(self.conn)
                break
            except NotServing as e:
                self.conn.close()
                if time.monotonic() + delay > deadline:
                    raise ConnError(f"{e} (for {SERVING_PATIENCE:.0f}s)") from None
                log.warning("target %s; asking again in %.1fs", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except BaseException:
                self.conn.close()
                raise
        self.name = name or f"writer_{host}_{port}"
        self.on_error = on_error if resolve is None or on_error is None else self._failover_check(on_error)
        self.on_abort = on_abort
        self.written = 0
        self.answered = 0
        self.errors = 0
        self._units = False  # exactly-once units were written (a marker tracks the position)
        self.server_changes = 0  # reconnects that found another server process (run_id)
        # what the target acknowledged: entries answered without an error, and of those
        # the ones ending a snapshot key (Entry.ends_key); the run's summary reports these
        self.acked = 0
        self.keys_acked = 0
        # acknowledged entries per raw command name (argv[0] as sent): the status JSON's
        # per-command write_count; read from other threads (copy it)
        self.acked_names: Counter[bytes] = Counter()
        self.acked_offset = -1
        self._db = 0
        self._block: _Block | None = None  # the transaction being written (MULTI seen)
        self.transactions = 0
        self._buf: list[bytes] = []
        self._buf_bytes = 0
        self._inflight: deque[tuple[Entry | Run | _Internal | _QueuedRun, int]] = deque()
        self._run_done = 0  # replies already read for the Run at the head of _inflight
        self._run_extra = 0  # commands in flight in runs beyond one per run
        self._unanswered_bytes = 0
        self._limit = max(1, int(pipeline_count_limit))
        self._batch = max(1, self._limit // 2)
        self._querybuf_limit = max(1, min(int(querybuf_limit), INFLIGHT_BYTES))
        self._exc: BaseException | None = None
        self._closed = False
        self._qps = int(max_qps) if 0 < max_qps < UNLIMITED_QPS else 0
        self._tokens = float(self._qps)
        self._tok_time = time.monotonic()

    # -- public API --------------------------------------------------------------------

    def write(self, entry: Entry) -> None:
        if self._exc is not None:
            raise self._exc
        a0 = entry.argv[0]
        if self._block is not None or (len(a0) == 5 and a0.upper() == _MULTI):
            self._write_txn(entry)
            return
        if entry.db != self._db:
            self._select(entry.db)
        data = entry.resp or encode(entry.argv)
        n = len(data)
        self._buf.append(data)
        self._buf_bytes += n
        self._unanswered_bytes += n
        self._inflight.append((entry, n))
        self.written += 1
        if self._buf_bytes >= SEND_BYTES or len(self._buf) >= self._batch:
            self._send()
        if self._qps:
            self._throttle()

    def write_run(self, run: Run) -> None:
        """Write a run of plain commands (see :class:`~redshake.entry.Run`) as one unit: its
        received bytes are sent as they are and its replies are checked one by one."""
        if self._exc is not None:
            raise self._exc
        blk = self._block
        if self._qps:
            for e in run.entries():
                self.write(e)
            return
        if run.db != self._db:
            self._select(run.db)
            if blk is not None:
                blk.select_inside = True  # queued too (see _write_txn)
        data = run.resp
        n = len(data)
        self._buf.append(data)
        self._buf_bytes += n
        self._unanswered_bytes += n
        if blk is None:
            self._inflight.append((run, n))
        else:  # inside a unit: the commands answer +QUEUED, their results come with EXEC
            self._inflight.append((_QueuedRun(run, blk), n))  # type: ignore[arg-type]
            blk.run_cmds += len(run.argvs)
        self.written += len(run.argvs)
        self._run_extra += len(run.argvs) - 1
        if self._buf_bytes >= SEND_BYTES or len(self._buf) >= self._batch:
            self._send()

    def _write_txn(self, entry: Entry) -> None:
        blk = self._block
        a0 = entry.argv[0]
        if blk is None:  # MULTI
            if entry.db != self._db:
                self._select(entry.db)
            blk = self._block = _Block(entry)
            item = _Internal("MULTI", entry, blk)
        else:
            blk.entries.append(entry)
            if entry.plumbing:
                blk.added += 1
            if len(a0) == 4 and a0.upper() == _EXEC:
                self._block = None
                self.transactions += 1
                item = _Internal("EXEC", entry, blk)
            else:
                if entry.db != self._db:
                    # queued too: it runs inside the transaction, in order
                    self._select(entry.db)
                    blk.select_inside = True
                item = _Internal("queued", entry, blk)
        data = entry.resp or encode(entry.argv)
        n = len(data)
        self._buf.append(data)
        self._buf_bytes += n
        self._unanswered_bytes += n
        self._inflight.append((item, n))
        self.written += 1
        if item.desc == "EXEC" and blk.select_inside:
            # if the transaction is discarded its SELECTs did not run: say the db again
            self._select(self._db, force=True)
        if self._buf_bytes >= SEND_BYTES or len(self._buf) >= self._batch:
            self._send()
        if self._qps:
            self._throttle()

    def begin_unit(self) -> None:
        """Open an atomic unit (exactly-once mode): everything written until :meth:`end_unit`
        goes out as one MULTI ... EXEC, so the target applies all of it or none of it (a
        transaction whose EXEC never arrived is discarded when the connection closes).
        MULTI/EXEC entries must not be written inside a unit."""
        self._units = True
        if self._block is None:
            self._write_txn(UnitEntry(self._db, [_MULTI]))

    def end_unit(self, db: int, key: bytes, value: bytes, offset: int) -> None:
        """Close the unit with ``SET key value`` in ``db`` (the position marker) and EXEC;
        ``offset`` becomes the acknowledged offset when the EXEC reply arrives."""
        self._write_txn(UnitEntry(db, [b"SET", key, value]))
        self._write_txn(UnitEntry(self._db, [_EXEC], None, offset))

    def get(self, db: int, key: bytes) -> bytes | None:
        """Synchronously read a string key (after everything written so far is applied)."""
        self._no_open_block("GET")
        self.flush()
        out: list[object] = []
        self._guard(lambda: out.append(self.conn.call("SELECT", db)))
        self._guard(lambda: out.append(self.conn.call("GET", key)))
        self._guard(lambda: self.conn.call("SELECT", self._db))
        v = out[1]
        return v if isinstance(v, bytes) else None

    def try_marker(self, db: int, key: bytes) -> str:
        """Check that a unit can set the position marker ``key`` in ``db`` (SELECT, GET,
        MULTI, SET, EXEC allowed: no NOPERM, READONLY, db out of range...) by writing its
        current value back (or creating and deleting it). Returns "" or the refusal."""
        self._no_open_block("a marker check")
        self.flush()
        conn = self.conn
        replies: list[object] = []
        try:
            replies += conn.pipeline([(b"SELECT", db), (b"GET", key)])
            if not any(isinstance(r, ReplyError) for r in replies):
                old = replies[-1]
                body: list[tuple[bytes, ...]] = [(b"SET", key, old if isinstance(old, bytes) else b"")]
                if not isinstance(old, bytes):
                    body.append((b"DEL", key))
                replies += conn.pipeline([(b"MULTI",), *body, (b"EXEC",)])
            replies += conn.pipeline([(b"SELECT", self._db)])
        except OSError as e:
            self._exc = WriterError(f"{self.name}: {e}")
            self.conn_lost = True
            raise self._exc from None
        for r in replies:
            if isinstance(r, ReplyError):
                return r.message
            if isinstance(r, list):
                for x in r:
                    if isinstance(x, ReplyError):
                        return x.message
        return "" if replies[-2] is not None else "EXEC returned nil"

    @property
    def in_transaction(self) -> bool:
        """A MULTI was written and its EXEC not yet."""
        return self._block is not None

    def write_asking(self, entry: Entry) -> None:
        """Send ``ASKING`` followed by the entry (cluster ASK redirection)."""
        if self._exc is not None:
            raise self._exc
        if entry.db != self._db and self._block is None:
            self._select(entry.db)  # before ASKING: the next command consumes the flag
        self._buf.append(_ASKING)
        self._buf_bytes += len(_ASKING)
        self._unanswered_bytes += len(_ASKING)
        self._inflight.append((_Internal("ASKING"), len(_ASKING)))
        self.write(entry)

    def poll(self) -> None:
        """Send buffered commands and handle replies that already arrived; never waits."""
        if self._exc is not None:
            raise self._exc
        if self._buf:
            self._send()
        elif self._inflight:
            self._guard(self._read_available)

    def flush(self) -> None:
        """Send everything and block until every written entry has a reply."""
        if self._exc is not None:
            raise self._exc
        if self._buf:
            self._send()
        while self._inflight:
            self._guard(self._read_blocking)

    def drain(self, timeout: float = 10.0) -> int:
        """After a failure: wait (at most ``timeout`` seconds) for the replies to what was
        already sent, so that ``acked`` / ``keys_acked`` count everything the target applied.
        Nothing more is sent; error replies are counted, not reported. Returns how many
        error replies arrived meanwhile."""
        if self._closed or self.conn_lost:
            return 0
        for _ in range(len(self._buf)):  # written but never sent
            item = self._inflight.pop()[0]
            if item.__class__ is Run:
                self._run_extra -= len(item.argvs) - 1  # type: ignore[union-attr]
        self._buf.clear()
        self._buf_bytes = 0
        self._block = None
        errors = self.errors
        handlers = self.on_error, self.on_abort
        self.on_error, self.on_abort = _ignore_error, None
        deadline = time.monotonic() + timeout
        try:
            self.conn.sock.settimeout(timeout)
            self._process()  # replies already read
            while self._inflight and time.monotonic() < deadline:
                self._absorb(self.conn.recv())
        except Exception:  # noqa: BLE001 - best effort: what was counted stays counted
            pass
        finally:
            self.on_error, self.on_abort = handlers
        return self.errors - errors

    def select(self, db: int) -> None:
        """Synchronously make ``db`` the connection's current db (after everything written so
        far has been applied), for direct calls on ``conn``."""
        self._no_open_block("SELECT")
        self.flush()
        if db != self._db:
            self._guard(lambda: self.conn.call("SELECT", db))
            self._db = db

    def exists(self, db: int, key: bytes) -> bool:
        """Synchronously ask whether ``key`` exists in ``db`` (after everything written so far
        has been applied). Used before rebuilding a key with commands, so an existing key is
        never merged into when existing keys must be kept or reported."""
        self._no_open_block("EXISTS")
        self.select(db)
        out: list[object] = []
        self._guard(lambda: out.append(self.conn.call("EXISTS", key)))
        return out[0] == 1

    def flushall(self) -> None:
        self._no_open_block("FLUSHALL")
        self.flush()
        self._guard(lambda: self.conn.call("FLUSHALL"))

    def _failover_check(self, on_error: OnError) -> OnError:
        """on_error for a sentinel-managed target: READONLY means the master we write to was
        demoted (a failover): treated like a lost connection, so the writer reconnects to
        the new master and what was not acknowledged is sent again."""

        def check(entry: Entry, message: str) -> None:
            # (READONLY, or a transaction discarded because a command got READONLY)
            if reply_class(message) is ReadOnly or "-READONLY" in message or "READONLY You" in message:
                if self._exc is None:
                    self._exc = WriterError(f"{self.name}: {self.address} is no longer the master: {message}")
                    self.conn_lost = True
                raise self._exc
            on_error(entry, message)

        return check

    def reconnect(self) -> None:
        """After a lost connection: connect again and forget everything unanswered (the
        caller re-sends from ``acked_offset``). Raises ConnError while the target is down.
        A sentinel-managed target is looked up again: after a failover, its new master."""
        self.conn.close()
        if self.resolve is not None:
            address = self.resolve()
            host, port = parse_address(address)
            conn = Connection(host, port, **self._conn_kw)  # type: ignore[arg-type]
            try:
                role = conn.call("ROLE")
            except BaseException:
                conn.close()
                raise
            if not role or role[0] not in (b"master", "master"):
                conn.close()
                raise ConnError(f"{address} (from sentinel) is not a master yet")
            if address != self.address:
                log.info("%s: the target master is now %s (was %s)", self.name, address, self.address)
            self.host, self.port, self.address = host, port, address
            self.conn = conn
        else:
            self.conn = Connection(self.host, self.port, **self._conn_kw)  # type: ignore[arg-type]
        check_serving(self.conn)  # (NotServing, a ConnError, while it loads its dataset)
        self._check_same_server()
        self._db = 0
        self._block = None
        self._buf.clear()
        self._buf_bytes = 0
        self._inflight.clear()
        self._run_done = 0
        self._run_extra = 0
        self._unanswered_bytes = 0
        self.answered = self.written
        self._exc = None
        self.conn_lost = False

    def _check_same_server(self) -> None:
        """After a reconnect: a different server process (a restart, a failover) may have
        lost writes it acknowledged. Exactly-once mode finds out from its position marker;
        without the marker (at-least-once), say that it cannot be checked."""
        try:
            run_id = read_info(self.conn, "server", tolerate=True).get("run_id", "")
        except ReplyError:
            return
        old, self.info.run_id = self.info.run_id, run_id
        if not old or not run_id or run_id == old:
            return
        self.server_changes += 1
        if not self._units:
            log.warning(
                "%s: the target is another server process now (run_id %s, was %s: restarted "
                "or failed over). Writes it acknowledged but had not saved or replicated are "
                "lost, and without the exactly-once marker (advanced.exactly_once) they cannot "
                "be found and re-sent: check the target's keys (redshake verify), or start a "
                "full sync", self.name, run_id[:12], old[:12],
            )  # fmt: skip

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.conn.close()

    def status(self) -> dict:
        return {
            "name": self.name,
            "unanswered_bytes": self._unanswered_bytes,
            "unanswered_entries": self.written - self.answered,
        }

    @property
    def idle(self) -> bool:
        return not self._inflight and not self._buf

    @property
    def pending(self) -> int:
        return len(self._inflight) + self._run_extra

    # -- internals ---------------------------------------------------------------------

    def _no_open_block(self, what: str) -> None:
        if self._block is not None:
            raise WriterError(f"{self.name}: {what} while a MULTI block is open (no EXEC yet)")

    def _select(self, db: int, force: bool = False) -> None:
        if db < 0:
            raise WriterError(f"{self.name}: invalid db {db}")
        data = encode([b"SELECT", b"%d" % db])
        self._buf.append(data)
        self._buf_bytes += len(data)
        self._unanswered_bytes += len(data)
        self._inflight.append((_Internal(f"SELECT {db}", None, self._block), len(data)))
        self._db = db

    def _guard(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as e:
            if self._exc is None:
                self._exc = e if not isinstance(e, OSError) else WriterError(str(e))
                self.conn_lost = isinstance(e, OSError)
            raise

    def _send(self) -> None:
        data = b"".join(self._buf) if len(self._buf) > 1 else self._buf[0]
        self._buf.clear()
        self._buf_bytes = 0
        try:
            self.conn.send(data)
            self._read_available()
            inflight = self._inflight
            while inflight and (
                len(inflight) + self._run_extra > self._limit
                or self._unanswered_bytes > self._querybuf_limit
            ):
                self._read_blocking()
        except BaseException as e:
            if self._exc is None:
                self._exc = e if not isinstance(e, OSError) else WriterError(f"{self.name}: {e}")
                self.conn_lost = isinstance(e, OSError)
            raise

    def _read_available(self) -> None:
        data = self.conn.recv_available()
        if data:
            self._absorb(data)

    def _read_blocking(self) -> None:
        self._absorb(self.conn.recv())

    def _absorb(self, data: bytes) -> None:
        """Replies just received. Fast path: while a Run heads the queue and the reply parser
        holds nothing, a stretch of plain ``+OK`` replies (what SET and most writes answer) is
        recognised by one bytes comparison instead of being parsed one by one."""
        inflight = self._inflight
        pos = 0
        if inflight and inflight[0][0].__class__ is not Run and not self.conn.reader.has_data():
            pos = self._absorb_unit(data)
            if pos == len(data):
                return
        if inflight and inflight[0][0].__class__ is Run and not self.conn.reader.has_data():
            end = len(data)
            while inflight:
                run, n = inflight[0]
                if run.__class__ is not Run:
                    break
                total = len(run.argvs)
                m = min(total - self._run_done, (end - pos) // 5)
                if not m or data[pos : pos + 5 * m] != _OKS[: 5 * m]:
                    break  # something else (or not all OK): the parser takes it from here
                pos += 5 * m
                self._run_done += m
                self.acked += m
                if self._run_done < total:
                    break  # the rest of this run's replies have not arrived yet
                self._run_done = 0
                self._run_extra -= total - 1
                inflight.popleft()
                self._unanswered_bytes -= n
                self.answered += total
                self.acked_offset = run.offset
            if pos == end:
                return
        self.conn.reader.feed(data[pos:] if pos else data)
        self._process()

    def _absorb_unit(self, data: bytes) -> int:
        """Fast path for units (exactly-once mode): ``+OK`` to MULTI, stretches of ``+QUEUED``
        to the commands (runs included) and an ``EXEC`` array of ``+OK`` only are recognised
        by bytes comparisons instead of being parsed. Stops at anything else (the parser
        takes it from there). Returns how much of ``data`` was consumed."""
        inflight = self._inflight
        pos = 0
        end = len(data)
        while inflight and pos < end:
            item, n = inflight[0]
            cls = item.__class__
            if cls is _QueuedRun:
                total = len(item.run.argvs)  # type: ignore[union-attr]
                m = min(total - self._run_done, (end - pos) // 9)
                if not m or data[pos : pos + 9 * m] != _QUEUEDS[: 9 * m]:
                    break
                pos += 9 * m
                self._run_done += m
                if self._run_done < total:
                    break
                self._queued_run_done(item)  # type: ignore[arg-type]
            elif cls is _Internal and item.block is not None:  # type: ignore[union-attr]
                blk = item.block  # type: ignore[union-attr]
                desc = item.desc  # type: ignore[union-attr]
                if desc == "EXEC":
                    cnt = sum(q[2] if q.__class__ is tuple else 1 for q in blk.queued)  # type: ignore[index]
                    head = b"*%d\r\n" % cnt
                    ln = len(head) + 5 * cnt
                    if (cnt > 4096 or blk.errors or not data.startswith(head, pos)
                            or data[pos + len(head) : pos + ln] != _OKS[: 5 * cnt]):  # fmt: skip
                        break
                    pos += ln
                    inflight.popleft()
                    self._unanswered_bytes -= n
                    self._special(item, [b"OK"] * cnt)  # type: ignore[arg-type]
                    continue
                expect = b"+OK\r\n" if desc == "MULTI" else b"+QUEUED\r\n"
                if not data.startswith(expect, pos):
                    break
                pos += len(expect)
                if desc != "MULTI":
                    blk.queued.append(item.entry)  # type: ignore[union-attr]
            else:
                break
            inflight.popleft()
            self._unanswered_bytes -= n
        return pos

    def _refused(self, item: _QueuedRun, i: int, message: str) -> None:
        """Command ``i`` of a run inside a unit was refused at queue time (EXECABORT follows)."""
        run, blk = item.run, item.block
        if i > item.ok_from:
            blk.queued.append((run, item.ok_from, i - item.ok_from))
        item.ok_from = i + 1
        blk.errors.append((Entry(run.db, run.argvs[i]), message))

    def _queued_run_done(self, item: _QueuedRun) -> None:
        """Every command of a run inside a unit answered at queue time."""
        total = len(item.run.argvs)
        if item.ok_from < total:
            item.block.queued.append((item.run, item.ok_from, total - item.ok_from))
        self._run_done = 0
        self._run_extra -= total - 1

    def _process(self) -> None:
        gets = self.conn.reader.gets
        names = self.acked_names
        inflight = self._inflight
        popleft = inflight.popleft
        freed = 0
        cnt = 0
        keys = 0
        last = None
        while inflight:
            entry, n = inflight[0]
            cls = entry.__class__
            if cls is Run or cls is _QueuedRun:  # one reply per command of the run
                # (inside a unit: +QUEUED, or a refusal to queue)
                run = entry if cls is Run else entry.run  # type: ignore[union-attr]
                argvs = run.argvs
                total = len(argvs)
                done = ok = self._run_done
                while done < total:
                    r = gets()
                    if r is False:
                        break
                    done += 1
                    if r.__class__ is ReplyError:
                        if cls is Run:  # (inside a unit nothing is applied before EXEC)
                            self.acked += done - 1 - ok
                            self.acked_names.update(map(_first, argvs[ok : done - 1]))
                        ok = done
                        self._run_done = done
                        if cls is Run:
                            self._on_reply_error(Entry(run.db, argvs[done - 1]), r)  # type: ignore[arg-type]
                        else:
                            self._refused(entry, done - 1, r.message)  # type: ignore[arg-type,union-attr]
                if cls is Run and done > ok:
                    self.acked += done - ok
                    self.acked_names.update(
                        run.names() if not ok and done == total else map(_first, argvs[ok:done])
                    )
                if done < total:
                    self._run_done = done
                    break
                popleft()
                freed += n
                if cls is _QueuedRun:
                    self._queued_run_done(entry)  # type: ignore[arg-type]
                    continue
                self._run_done = 0
                self._run_extra -= total - 1
                self.answered += total
                last = entry
                continue
            r = gets()
            if r is False:
                break
            if r is None and _is_restore_set(entry):
                r = _BUSYKEY  # SET ... NX standing in for a RESTORE: the key existed
            popleft()
            freed += n
            if r.__class__ is ReplyError or cls is _Internal or cls is ScriptCall:
                # account before calling out, so status stays right if the handler raises
                self._unanswered_bytes -= freed
                freed = 0
                self.answered += cnt
                self.acked += cnt
                self.keys_acked += keys
                cnt = keys = 0
                if last is not None and last.offset >= 0:
                    self.acked_offset = last.offset
                last = None
                if cls is _Internal:
                    self._special(entry, r)  # type: ignore[arg-type]
                elif cls is ScriptCall and r.__class__ is list:
                    self._script_done(entry, r)  # type: ignore[arg-type]
                else:
                    self.answered += 1
                    if entry.offset >= 0:
                        self.acked_offset = entry.offset
                    self._on_reply_error(entry, r)  # type: ignore[arg-type]
                continue
            cnt += 1
            names[entry.argv[0]] += 1  # type: ignore[union-attr]
            if entry.ends_key:
                keys += 1
            last = entry
        self._unanswered_bytes -= freed
        self.answered += cnt
        self.acked += cnt
        self.keys_acked += keys
        if last is not None and last.offset >= 0:
            self.acked_offset = last.offset

    def _special(self, item: _Internal, r: object) -> None:
        blk = item.block
        err = r.message if r.__class__ is ReplyError else None  # type: ignore[attr-defined]
        if blk is None:  # SELECT / ASKING outside a transaction
            if err is not None:
                raise WriterError(f"{self.name}: {item.desc} failed on {self.conn.address}: {err}")
            return
        if item.desc != "EXEC":
            if err is not None:
                if item.desc == "MULTI":
                    # MULTI refused (already inside one?): nothing of this block is safe
                    raise WriterError(f"{self.name}: MULTI failed on {self.conn.address}: {err}")
                blk.errors.append((item.entry, err))
            elif item.desc != "MULTI":
                blk.queued.append(item.entry)
            return
        # EXEC: the block is settled
        entries = blk.entries
        self.answered += len(entries) + blk.run_cmds
        off = max(e.offset for e in entries)
        if off >= 0:
            self.acked_offset = off
        if r.__class__ is list:
            # all OK (what SET and most writes answer) is one count in C
            if r.count(b"OK") == len(r) or ReplyError not in map(type, r):  # type: ignore[attr-defined,arg-type]
                self.acked += len(entries) + blk.run_cmds - blk.added
                self._count_block(blk, ())
                return
            errs = [
                (e, res)
                for e, res in zip(_queued_entries(blk.queued), r, strict=False)  # type: ignore[call-overload]
                if res.__class__ is ReplyError
            ]
            self.acked += len(entries) + blk.run_cmds - blk.added - len(errs)  # before calling out
            self._count_block(blk, errs)
            for e, res in errs:
                if e is not None:
                    self._on_reply_error(e, res)  # type: ignore[arg-type]
            return
        message = err if err is not None else "EXEC returned nil: transaction aborted"
        errors = [(e if e is not None else entries[0], m) for e, m in blk.errors]
        if self.on_abort is not None:
            self.on_abort(entries, errors, message)
            return
        if not errors:
            errors = [(item.entry, message)]  # type: ignore[list-item]
        else:
            errors = [(e, f"{m} (the transaction was discarded: {message})") for e, m in errors]
        for e, m in errors:
            self.errors += 1
            if self.on_error is None:
                raise WriterError(f"{self.name}: error reply for {e!r} in a transaction: {m}")
            self.on_error(e, m)

    def _script_done(self, call: ScriptCall, replies: list) -> None:
        """The reply array of a script call: one reply per command it carried."""
        entries = call.entries
        self.answered += 1
        if call.offset >= 0:
            self.acked_offset = call.offset
        names = self.acked_names
        if ReplyError not in map(type, replies):
            self.acked += len(entries)
            names.update(map(_first, map(_argv, entries)))
            return
        errs = [(e, r) for e, r in zip(entries, replies, strict=False) if r.__class__ is ReplyError]
        self.acked += len(entries) - len(errs)  # before calling out
        names.update(map(_first, map(_argv, entries)))
        for e, _r in errs:
            names[e.argv[0]] -= 1
        for e, r in errs:
            self._on_reply_error(e, r)

    def _count_block(self, blk: _Block, errs) -> None:
        """Per command name, the entries of a transaction whose EXEC reply arrived (the
        writer's own plumbing left out), but for those with an error reply ``errs``."""
        names = self.acked_names
        names.update(e.argv[0] for e in blk.entries if not e.plumbing)
        for q in blk.queued:
            if q.__class__ is tuple:
                run, i, n = q  # type: ignore[misc]
                names.update(map(_first, run.argvs[i : i + n]))
        for e, _res in errs:
            if e is not None and not e.plumbing:
                names[e.argv[0]] -= 1

    def _on_reply_error(self, entry: Entry, err: ReplyError) -> None:
        self.errors += 1
        if self.on_error is None:
            raise WriterError(f"{self.name}: error reply for {entry!r}: {err.message}")
        self.on_error(entry, err.message)

    def _throttle(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self._qps), self._tokens + (now - self._tok_time) * self._qps)
        self._tok_time = now
        self._tokens -= 1.0
        if self._tokens < 0:
            if self._buf:
                self._send()
            time.sleep(-self._tokens / self._qps)

    def __enter__(self) -> RedisWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisWriter {self.name}>"
