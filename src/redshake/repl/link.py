"""The thread that owns the connection to the source: handshake, PSYNC, receive, ACK.

It never waits for the target: every byte received goes to the :class:`~.spool.Spool` at
once, so the master's output buffer for us stays empty however slow the target is. It
reconnects by itself (PSYNC <replid> <received + 1>, with back-off) and starts a new *epoch*
when the master answers with a full resynchronisation.

Dual-channel full sync (Valkey 8+, ``capa dual-channel``): when the primary answers the PSYNC
with ``+DUALCHANNELSYNC``, a second connection (the *rdb channel*) asks for the snapshot with
``SYNC``; the primary names the snapshot's offset in ``$ENDOFF`` and the main channel then
continues with ``PSYNC <replid> <offset + 1>``. Both sockets are read by this thread: the
snapshot goes to the spool's snapshot file and the stream to its segments at the same time,
so the stream the primary produces during the transfer is buffered on our disk instead of in
its output buffer for us.
"""

from __future__ import annotations

import logging
import select
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import Loading, MasterDown, NoAuth, NoPerm, reply_class
from ..resp.conn import (
    AuthError,
    Connection,
    ConnError,
    ReplyError,
    TLSVerifyError,
    connection_options,
    parse_address,
)
from ..resp.encode import encode
from ..resp.server import ServerInfo, read_info
from .protocol import (
    EV_ENDOFF,
    EV_ERROR,
    EV_KEEPALIVE,
    EV_RDB_BEGIN,
    EV_RDB_DATA,
    EV_RDB_END,
    EV_REPLY,
    EV_STREAM,
    EndOffset,
    ReplProtocolError,
    SnapshotSizeError,
    TransferFramer,
    ack_command,
    parse_psync_reply,
)
from .spool import Spool

__all__ = ["SourceLink", "LinkOptions", "Epoch", "LinkFatal", "DEFAULT_LISTENING_PORT"]

log = logging.getLogger("redshake")

# Announced with REPLCONF listening-port when advanced.status_port is 0. Nothing listens
# there, so Sentinel and operators' tools see this "replica" as unreachable and never
# promote it; in INFO replication it shows as port=0.
DEFAULT_LISTENING_PORT = 0
RECV_SIZE = 1 << 18
ACK_INTERVAL = 1.0
# After a snapshot transfer that broke, the next full sync is asked for after this many
# seconds, doubled at each failure in a row up to SNAPSHOT_RETRY_MAX: every new snapshot
# empties the target again, so a source that keeps failing must not make that a tight loop.
SNAPSHOT_RETRY_FIRST = 1.0
SNAPSHOT_RETRY_MAX = 60.0
# Dual-channel attempts that fail before the primary named the snapshot's offset ($ENDOFF)
# this many times in a row turn dual channel off for the rest of the run (single channel).
DUAL_GIVE_UP = 3


class LinkFatal(Exception):
    """The source refuses us in a way retrying cannot fix (bad password, PSYNC forbidden)."""


@dataclass
class LinkOptions:
    address: str
    username: str = ""
    password: str = ""
    tls: bool = False
    tls_verify: bool = True
    tls_config: dict[str, str] = field(default_factory=dict)
    psync_command: str = "PSYNC"
    listening_port: int = DEFAULT_LISTENING_PORT
    rdb_only: bool = False  # sync_aof = false
    keep_rdb: bool = True  # sync_rdb
    repl_timeout: float = 60.0
    resolve: Callable[[], str] | None = None  # sentinel lookup before every connection
    # try_diskless: announce "capa eof" so the master may stream the snapshot without a
    # file. Off by default, as in RedisShake: a disk-based sync starts its BGSAVE at once,
    # while a diskless one waits repl-diskless-sync-delay (5 s by default) and every write
    # made meanwhile arrives inside the snapshot instead of as a command.
    diskless: bool = False
    # dual_channel: announce "capa dual-channel" (Valkey 8+ primaries with
    # dual-channel-replication-enabled yes then send the snapshot on a second connection)
    dual_channel: bool = True

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for a :class:`Connection` to the source."""
        return connection_options(username=self.username, password=self.password, tls=self.tls,
                                  tls_verify=self.tls_verify, tls_config=self.tls_config)  # fmt: skip


@dataclass
class Epoch:
    """One full sync (kind ``full``) or one resume from a checkpoint (``resume``), plus the
    partial resyncs that continue it. Offsets are replication offsets."""

    num: int
    kind: str
    replid: str
    start: int  # the offset the stream continues from (FULLRESYNC offset / checkpoint)
    rdb_size: int | None = None  # -1: diskless (size unknown until the end)
    rdb_received: int = 0
    rdb_done: bool = False
    received: int = 0  # offset of the last stream byte spooled
    started: float = field(default_factory=time.time)
    dual: bool = False  # the snapshot came on a second connection (dual-channel sync)
    stream_db: int | None = None  # dual channel: the db the stream starts in ($ENDOFF)


class SourceLink(threading.Thread):
    def __init__(
        self, opts: LinkOptions, spool: Spool, resume: tuple[str, int] | None, name: str
    ) -> None:
        super().__init__(name=f"{name}-link", daemon=True)
        self.opts = opts
        self.spool = spool
        self.cond = spool.cond
        self.label = name
        self.address = opts.address
        self._resume = resume  # (replid, offset of the last byte we hold)
        self.epoch: Epoch | None = None
        self.epochs = 0
        self.status = "hand shaking"
        self.fatal: BaseException | None = None
        self.finished = False  # rdb-only transfer complete: the link is closed for good
        self.connected = False
        self.reconnects = 0
        self.partial_resyncs = 0
        self.full_syncs = 0
        self.source_version: tuple[int, int, int] = (0, 0, 0)
        self.source_valkey = False
        self.last_io = time.monotonic()
        self._applied: tuple[int, int] = (0, -1)  # (epoch, offset) applied on the target
        self._halt = threading.Event()
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._use_sync = False
        self._logged_bgsave = False
        self._established = False
        self.failed_snapshots = 0  # full syncs whose snapshot transfer broke
        self.last_error = ""
        self._snapshot_wait = 0.0
        self._session_full: Epoch | None = None  # the full sync this connection started
        # dual channel: the rdb channel while it is open, and where the exchange stands:
        # "" (not used), "endoff" (rdb channel asked, $ENDOFF awaited), "setid" / "psync"
        # (main channel's replies awaited), "streaming" (main channel continued)
        self._rdb: Connection | None = None
        self._rdb_framer: TransferFramer | None = None
        self._dual_state = ""
        self._dual_failures = 0
        self.dual_off = not opts.dual_channel  # off by setting or after repeated refusals
        self.dual_channel_syncs = 0
        self._announce = ""  # the version announced with REPLCONF version ("": none)
        self._rdb_io = 0.0  # monotonic time of the last bytes from the rdb channel
        # the reader asked for a new full sync (the target lost what it had acknowledged)
        self._want_full = False

    # -- called from the main thread ----------------------------------------------------

    def set_applied(self, epoch: int, offset: int) -> None:
        self._applied = (epoch, offset)

    def send_ack(self) -> None:
        """Send an ACK now (answer to REPLCONF GETACK)."""
        conn = self._conn
        if conn is None:
            return
        off = self._ack_offset()
        if off < 0:
            return
        try:
            with self._send_lock:
                conn.send(ack_command(off))
        except ConnError:
            pass

    def request_full_sync(self) -> None:
        """Drop the current session and ask the source for a new snapshot (``PSYNC ? -1``):
        the target lost writes it had acknowledged and the spool no longer holds them."""
        self._want_full = True

    def stop(self) -> None:
        self._halt.set()
        for conn in (self._conn, self._rdb):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass

    # -- thread -------------------------------------------------------------------------

    def run(self) -> None:
        delay = 0.1
        while not self._halt.is_set() and not self.finished:
            try:
                self._session()
                delay = 0.1
            except (AuthError, TLSVerifyError, SnapshotSizeError, LinkFatal) as e:
                # retrying cannot help: a refused password / certificate, a garbage header
                with self.cond:
                    self.fatal = e
                    self.cond.notify_all()
                return
            except (ConnError, OSError, ReplyError, ReplProtocolError, _Retry) as e:
                if self._halt.is_set():
                    break
                if self._established:  # the link worked: start backing off from scratch
                    delay = 0.1
                self.reconnects += 1
                self.last_error = str(e)
                wait = delay
                if self._dual_state == "endoff":
                    self._dual_failed(str(e))
                if isinstance(e, _Retry):
                    wait = max(wait, 1.0)
                broken = self._session_full
                if broken is not None and not broken.rdb_done:
                    self.failed_snapshots += 1
                    self._snapshot_wait = min(
                        max(self._snapshot_wait * 2, SNAPSHOT_RETRY_FIRST), SNAPSHOT_RETRY_MAX
                    )
                    wait = max(wait, self._snapshot_wait)
                    size = "?" if broken.rdb_size in (None, -1) else str(broken.rdb_size)
                    log.error(
                        "[%s] the snapshot transfer broke after %d of %s bytes (failed snapshot "
                        "#%d): %s; asking for a new snapshot in %.0fs",
                        self.label, broken.rdb_received, size, self.failed_snapshots, e, wait,
                    )  # fmt: skip
                log.warning(
                    "[%s] source link: %s; reconnecting in %.1fs (reconnect #%d)",
                    self.label, e, wait, self.reconnects,
                )  # fmt: skip
                self._halt.wait(wait)
                delay = min(delay * 2, 5.0)
            except BaseException as e:  # a bug: report it to the main thread, don't hang
                with self.cond:
                    self.fatal = e
                    self.cond.notify_all()
                return
            finally:
                self.connected = False
                self._close_rdb_channel()
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()
                with self.cond:
                    self.cond.notify_all()

    def _connect(self) -> Connection:
        o = self.opts
        if o.resolve is not None:
            addr = o.resolve()
            if addr != self.address:
                log.info("[%s] source master is at %s", self.label, addr)
                self.address = addr
        return self._open()

    def _open(self) -> Connection:
        host, port = parse_address(self.address)
        return Connection(host, port, io_timeout=30.0, **self.opts.connect_options())

    def _handshake(self, conn: Connection) -> None:
        o = self.opts
        try:
            conn.call("PING")
        except ReplyError as e:
            cls = reply_class(e.message)
            if cls is NoAuth or cls is NoPerm or "not permitted" in e.message:
                raise LinkFatal(f"source {conn.address} needs a password / permission: {e}") from None
            if cls is not Loading and cls is not MasterDown:
                raise
            raise _Retry(f"source not ready: {e.message}") from None
        server = ServerInfo.from_fields(read_info(conn, "server"))
        ver = server.version_text
        self.source_valkey = server.is_valkey
        self.source_version = server.version
        if self.source_version < (2, 8, 0) and self.source_version != (0, 0, 0):
            self._use_sync = True
        if not self._use_sync:
            self._replconf(conn, "listening-port", str(o.listening_port))
            capa = ["capa", "eof", "capa", "psync2"] if o.diskless else ["capa", "psync2"]
            if not self.dual_off and not o.rdb_only:
                # masters that do not know it ignore it; a Valkey 8+ primary grants it only
                # with dual-channel-replication-enabled and repl-diskless-sync both yes
                capa += ["capa", "dual-channel"]
            self._replconf(conn, *capa)
            self._announce = ""
            if self.source_valkey and self.source_version >= (8, 0, 0):
                self._announce = "9.0.0" if self.source_version >= (9, 0, 0) else ver
                self._replconf(conn, "version", self._announce)
            if o.rdb_only and not self._replconf(conn, "rdb-only", "1"):
                log.warning(
                    "[%s] the source does not support REPLCONF rdb-only (Redis/Valkey < 7.0): "
                    "the link is closed after the snapshot instead", self.label,
                )  # fmt: skip

    def _replconf(self, conn: Connection, *args: str) -> bool:
        try:
            conn.call("REPLCONF", *args)
            return True
        except ReplyError as e:
            log.debug("[%s] REPLCONF %s: %s", self.label, " ".join(args), e)
            return False

    def _wait_bgsave(self, conn: Connection) -> None:
        """A full sync is coming: while the source runs its own BGSAVE / AOF rewrite, say so
        (the master makes us wait until it can fork for us)."""
        while not self._halt.is_set():
            try:
                info = read_info(conn, "persistence")
            except ReplyError as e:  # e.g. an ACL user without INFO: just ask for the sync
                log.debug("[%s] INFO persistence: %s", self.label, e)
                return
            busy = [
                k for k in ("rdb_bgsave_in_progress", "aof_rewrite_in_progress") if info.get(k) == "1"
            ]
            if not busy:
                if self._logged_bgsave:
                    log.info("[%s] source finished its bgsave / aof rewrite, continuing", self.label)
                    self._logged_bgsave = False
                return
            self.status = "waiting bgsave"
            if not self._logged_bgsave:
                log.info("[%s] source is busy (%s): waiting", self.label, ", ".join(busy))
                self._logged_bgsave = True
            self._halt.wait(1.0)

    def _session(self) -> None:
        self._established = False
        self._session_full = None
        self._dual_state = ""
        self.status = "hand shaking"
        conn = self._conn = self._connect()
        self._handshake(conn)
        ep = self.epoch
        want: tuple[str, int] | None = None
        if ep is not None and (ep.kind == "resume" or ep.rdb_done) and ep.replid:
            want = (ep.replid, ep.received)
        elif ep is None and self._resume is not None:
            want = self._resume
        full = self._want_full
        if self._use_sync or full:
            want = None
        if full:  # read once: a request arriving after this is seen by the loop below
            self._want_full = False
        if want is None:
            self._wait_bgsave(conn)
        sock = conn.sock
        framer = TransferFramer(expect_reply=not self._use_sync)
        if self._use_sync:
            conn.send(encode([b"SYNC"]))
            self._new_epoch("full", "", 0)
            framer.expect_payload()
        else:
            cmd = self.opts.psync_command.encode()
            if want is None:
                conn.send(encode([cmd, b"?", b"-1"]))
            else:
                conn.send(encode([cmd, want[0].encode(), b"%d" % (want[1] + 1)]))
        self.connected = True
        sock.settimeout(0.5)
        last_ack = time.monotonic()
        self.last_io = time.monotonic()
        halt = self._halt
        while not halt.is_set():
            if self._want_full:
                raise ConnError("a new full sync was asked for")
            rdb = self._rdb
            if rdb is not None:  # dual-channel sync: the rdb channel is read as well
                if self._rdb_ready(sock, rdb.sock):
                    self._rdb_read(rdb, framer, conn)
                data = _recv(sock, conn, 0.0)
            else:
                data = _recv(sock, conn, None)
            now = time.monotonic()
            if data is not None:
                if not data:
                    if self.finished:
                        return
                    raise ConnError(f"connection closed by {conn.address}")
                self.last_io = now
                self._handle(framer, framer.feed(data), conn, want)
                if self.finished:
                    return
            elif now - self.last_io > self.opts.repl_timeout:
                raise ConnError(f"no data from {conn.address} for {self.opts.repl_timeout:.0f}s")
            rdb = self._rdb
            if rdb is not None and now - self._rdb_io > self.opts.repl_timeout:
                # the main channel's stream keeps last_io fresh: a stalled snapshot is
                # noticed here (keepalives and snapshot bytes refresh _rdb_io)
                ep = self.epoch
                if not (ep is not None and ep.dual and ep.rdb_done):
                    raise ConnError(
                        f"no data on the rdb channel from {rdb.address} for "
                        f"{self.opts.repl_timeout:.0f}s"
                    )
            if now - last_ack >= ACK_INTERVAL:
                last_ack = now
                if framer.in_stream and not self._use_sync:
                    self.send_ack()

    def _new_epoch(self, kind: str, replid: str, start: int) -> Epoch:
        with self.cond:
            self.epochs += 1
            ep = Epoch(self.epochs, kind, replid, start, received=start)
            self.epoch = ep
            self.cond.notify_all()
        if kind == "full":
            self._session_full = ep
        return ep

    def _handle(self, framer: TransferFramer, events, conn: Connection, want) -> None:
        spool = self.spool
        for ev, val in events:
            if ev == EV_STREAM:
                ep = self.epoch
                assert ep is not None
                spool.write_stream(ep.num, val)  # type: ignore[arg-type]
                with self.cond:
                    ep.received += len(val)  # type: ignore[arg-type]
                    self.cond.notify_all()
            elif ev == EV_KEEPALIVE:
                continue
            elif ev == EV_REPLY:
                self._on_reply(framer, val, want)  # type: ignore[arg-type]
                # the framer stopped after the reply line: feed the rest in the new state
                self._handle(framer, framer.feed(b""), conn, want)
                return
            elif ev == EV_ERROR:
                raise _Retry(f"the source aborted the transfer: {val}")
            else:
                self._snapshot_event(ev, val)
                if self.finished:
                    return

    def _snapshot_event(self, ev: str, val) -> None:
        """EV_RDB_BEGIN / EV_RDB_DATA / EV_RDB_END, from the main connection or from the rdb
        channel of a dual-channel sync."""
        spool = self.spool
        ep = self.epoch
        assert ep is not None
        if ev == EV_RDB_DATA:
            if self.opts.keep_rdb:
                spool.write_rdb(val)
            with self.cond:
                ep.rdb_received += len(val)
                self.cond.notify_all()
        elif ev == EV_RDB_BEGIN:
            ep.rdb_size = val
            self.status = "receiving rdb"
            if self.opts.keep_rdb:
                _check_room(spool.dir, val)
                spool.open_rdb(ep.num, keep_stream=ep.dual)
            log.info(
                "[%s] receiving the snapshot%s: %s", self.label,
                " on the rdb channel" if ep.dual else "",
                "diskless (EOF mark)" if val == -1 else f"{val} bytes",
            )  # fmt: skip
        elif ev == EV_RDB_END:
            if self.opts.keep_rdb:
                spool.end_rdb(durable=True)
            if ep.rdb_size == -1:
                ep.rdb_size = ep.rdb_received
            if not ep.dual:
                spool.start_stream(ep.num, ep.start)
            with self.cond:
                ep.rdb_done = True
                self.cond.notify_all()
            self._established = True
            self._snapshot_wait = 0.0
            log.info("[%s] snapshot received: %d bytes", self.label, ep.rdb_received)
            if self.opts.rdb_only:
                self.finished = True
                return
            if ep.dual:
                # the rdb channel stays open until the primary has accepted its id on the
                # main channel (it forgets the id of a closed rdb channel); the first ACK,
                # which puts the main channel online, waits for the main channel's +CONTINUE
                if self._dual_state != "setid":
                    self._close_rdb_channel()
                if self._dual_state != "streaming":
                    return
            self.status = "syncing aof"
            if not self._use_sync:
                # mandatory after a diskless transfer: the master starts the stream on it
                self.send_ack()
        else:
            raise ReplProtocolError(f"unexpected event {ev} from the replication framer")

    def _on_reply(self, framer: TransferFramer, line: bytes, want) -> None:
        if self._dual_state in ("setid", "psync"):
            self._dual_reply(framer, line)
            return
        if line.startswith(b"$"):
            # handled as SYNC (a renamed PSYNC on a server that only knows the name "psync"):
            # no replication id, so every reconnect is a full sync; ACKs are still needed
            # (a diskless transfer starts the stream on the first one)
            log.warning(
                "[%s] the source answered %s like the old SYNC: no partial resync is possible",
                self.label, self.opts.psync_command,
            )  # fmt: skip
            self.full_syncs += 1
            self._new_epoch("full", "", 0)
            framer.push_back_payload(line)
            return
        r = parse_psync_reply(line)
        if r.kind == "full" or r.kind == "dual":
            self.full_syncs += 1
            how = f"({r.message})" if r.kind == "full" else "over two connections"
            if want is not None:
                log.warning(
                    "[%s] the source cannot continue from offset %d (backlog too small or "
                    "history changed): full resynchronisation %s",
                    self.label, want[1], how,
                )  # fmt: skip
            elif r.kind == "full":
                log.info("[%s] full resynchronisation: %s", self.label, r.message)
            self.status = "waiting bgsave"
            if r.kind == "full":
                self._new_epoch("full", r.replid, r.offset)
                framer.expect_payload()
            else:
                self._open_rdb_channel()
                framer.expect_reply()
        elif r.kind == "continue":
            ep = self.epoch
            if ep is None:  # resuming from a checkpoint
                assert want is not None
                ep = self._new_epoch("resume", want[0], want[1])
            if r.replid and r.replid != ep.replid:
                log.info("[%s] source replication id changed to %s (failover)", self.label, r.replid)
                ep.replid = r.replid
            self.partial_resyncs += 1
            log.info(
                "[%s] partial resynchronisation accepted: continuing from offset %d",
                self.label, ep.received,
            )  # fmt: skip
            self.spool.start_stream(ep.num, ep.received)
            self._established = True
            framer.continue_stream()
            self.status = "syncing aof"
            self.send_ack()
        elif r.kind == "retry":
            raise _Retry(f"source not ready: {r.message}")
        elif r.kind == "unsupported":
            if self.opts.psync_command.upper() != "PSYNC":
                raise LinkFatal(f"the source rejected {self.opts.psync_command}: {r.message}")
            raise LinkFatal(
                f"the source does not accept PSYNC ({r.message}); if it is a managed service "
                "ask for a renamed PSYNC command (advanced.aws_psync) or use the scan_reader"
            )
        else:
            raise LinkFatal(f"the source refused {self.opts.psync_command}: {r.message}")

    # -- dual-channel sync --------------------------------------------------------------

    def _open_rdb_channel(self) -> None:
        """+DUALCHANNELSYNC: open the rdb channel and ask for the snapshot on it."""
        log.info(
            "[%s] dual-channel sync: opening the rdb channel to %s", self.label, self.address
        )
        self._dual_state = "endoff"
        rdb = self._rdb = self._open()
        self._rdb_io = time.monotonic()
        args = ["capa", "eof", "rdb-only", "1", "rdb-channel", "1"]
        args += ["listening-port", str(self.opts.listening_port)]
        if self._announce:  # Valkey 9.1+ picks the snapshot format from it on this channel too
            args += ["version", self._announce]
        try:
            rdb.call("REPLCONF", *args)
        except ReplyError as e:  # this primary cannot serve an rdb channel
            self._dual_failed(f"REPLCONF on the rdb channel: {e}", give_up=True)
            self._dual_state = ""  # counted
            raise _Retry(f"the source refused the rdb channel: {e}") from None
        rdb.send(encode([b"SYNC"]))
        self._rdb_framer = TransferFramer(rdb_channel=True)

    def _dual_failed(self, why: str, give_up: bool = False) -> None:
        self._dual_failures += 1
        if give_up or self._dual_failures >= DUAL_GIVE_UP:
            if not self.dual_off:
                log.warning(
                    "[%s] dual-channel sync failed%s (%s): single-channel sync from now on",
                    self.label, "" if give_up else f" {self._dual_failures} times in a row", why,
                )  # fmt: skip
            self.dual_off = True

    def _rdb_ready(self, main, rdb) -> bool:
        """Wait (up to 0.5 s) until one of the two sockets has data; True when the rdb
        channel has (the main socket is then read without waiting)."""
        for s in (rdb, main):
            pending = getattr(s, "pending", None)  # TLS: bytes already decrypted
            if pending is not None and pending():
                return s is rdb
        try:
            ready = select.select([main, rdb], [], [], 0.5)[0]
        except (OSError, ValueError) as e:
            raise ConnError(f"waiting for data from {self.address} failed: {e}") from None
        return rdb in ready

    def _rdb_read(self, rdb: Connection, framer: TransferFramer, conn: Connection) -> None:
        data = _recv(rdb.sock, rdb, 0.0)
        if data is None:
            return
        if not data:
            ep = self.epoch
            if ep is not None and ep.dual and ep.rdb_done:  # kept open until the id was taken
                self._close_rdb_channel()
                return
            raise ConnError(f"the rdb channel was closed by {rdb.address}")
        self.last_io = self._rdb_io = time.monotonic()
        rframer = self._rdb_framer
        assert rframer is not None
        ep = self.epoch
        if ep is not None and ep.dual and ep.rdb_done:
            raise ReplProtocolError("unexpected bytes after the snapshot on the rdb channel")
        for ev, val in rframer.feed(data):
            if ev == EV_KEEPALIVE:
                continue
            if ev == EV_ERROR:
                if self._dual_state == "endoff":
                    refused = parse_psync_reply(b"-" + str(val).encode()).kind != "retry"
                    if refused:  # e.g. -NOPERM for SYNC: asking again gets the same answer
                        self._dual_failed(f"SYNC on the rdb channel: {val}", give_up=True)
                        self._dual_state = ""  # counted
                raise _Retry(f"the source aborted the snapshot on the rdb channel: {val}")
            if ev == EV_ENDOFF:
                self._on_endoff(val, conn, framer)  # type: ignore[arg-type]
            elif ev == EV_STREAM:  # nothing may follow the end mark on this channel
                raise ReplProtocolError("unexpected bytes after the snapshot on the rdb channel")
            else:
                self._snapshot_event(ev, val)
                if ev == EV_RDB_END or self.finished:  # nothing may follow on this channel
                    return

    def _on_endoff(self, end: EndOffset, conn: Connection, framer: TransferFramer) -> None:
        """The primary is about to fork for us: the snapshot stands for ``end.offset``. The
        main channel continues from there while the snapshot arrives."""
        self._dual_failures = 0
        self.dual_channel_syncs += 1
        ep = self._new_epoch("full", end.replid, end.offset)
        ep.dual = True
        ep.stream_db = end.db if end.db >= 0 else None
        log.info(
            "[%s] dual-channel sync: snapshot at offset %d (replid %s, db %d); the main channel "
            "continues from offset %d", self.label, end.offset, end.replid, end.db, end.offset + 1,
        )  # fmt: skip
        self._dual_state = "setid"
        # not pipelined with the PSYNC: a PSYNC arriving while a reply is still pending is
        # refused ("SYNC and PSYNC are invalid with pending output")
        conn.send(encode([b"REPLCONF", b"set-rdb-client-id", end.client_id.encode()]))
        framer.expect_reply()

    def _dual_reply(self, framer: TransferFramer, line: bytes) -> None:
        """The main channel's answers to REPLCONF set-rdb-client-id and to its PSYNC."""
        text = line.decode("utf-8", "replace")
        if self._dual_state == "setid":
            if text.startswith("-"):
                raise _Retry(f"dual-channel sync: the source refused the rdb channel id: {text[1:]}")
            ep = self.epoch
            conn = self._conn
            assert ep is not None and conn is not None
            self._dual_state = "psync"
            if ep.rdb_done:  # the rdb channel was kept open for this: done with it
                self._close_rdb_channel()
            conn.send(
                encode([self.opts.psync_command.encode(), ep.replid.encode(), b"%d" % (ep.start + 1)])
            )
            framer.expect_reply()
            return
        r = parse_psync_reply(line)
        ep = self.epoch
        assert ep is not None
        if r.kind != "continue" or (r.replid and r.replid != ep.replid):
            raise _Retry(
                f"dual-channel sync: the main channel's PSYNC from offset {ep.start + 1} was "
                f"answered {text!r}"
            )
        self._dual_state = "streaming"
        self.spool.start_stream(ep.num, ep.start, keep_rdb=True)
        framer.continue_stream()
        log.info("[%s] dual-channel sync: the main channel is streaming", self.label)
        if ep.rdb_done:
            self.status = "syncing aof"
            self.send_ack()

    def _close_rdb_channel(self) -> None:
        rdb, self._rdb = self._rdb, None
        self._rdb_framer = None
        if rdb is not None:
            rdb.close()

    def _ack_offset(self) -> int:
        ep = self.epoch
        if ep is None:
            return -1
        if ep.kind == "full" and not ep.rdb_done:
            return -1
        e, off = self._applied
        if e != ep.num or off < ep.start:
            off = ep.start
        return min(off, ep.received)


class _Retry(Exception):
    pass


def _recv(sock, conn: Connection, timeout: float | None) -> bytes | None:
    """One read: the bytes, b"" when the peer closed, None when nothing came in time
    (``timeout`` 0: do not wait; None: the socket's own timeout)."""
    try:
        if timeout is not None:
            sock.settimeout(timeout)
        try:
            return sock.recv(RECV_SIZE)
        finally:
            if timeout is not None:
                sock.settimeout(0.5)
    except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
        return None
    except OSError as e:
        raise ConnError(f"read from {conn.address} failed: {e}") from None


def _check_room(directory, size: int) -> None:
    """A snapshot of ``size`` bytes is spooled to ``directory``: refuse at once when the
    disk cannot hold it (the transfer would fail at the end, again and again)."""
    import shutil

    if size <= 0:
        return
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if size > free:
        raise LinkFatal(
            f"the source announced a snapshot of {size} bytes but the work directory {directory} "
            f"has only {free} bytes free"
        )
