"""``[sync_reader]``: live sync from a standalone (or sentinel-managed) source over PSYNC.

The reader registers with the source as a replica. A link thread (:mod:`redshake.repl.link`)
receives everything into an on-disk spool at socket speed; this reader parses the spool in
the pipeline's thread: the snapshot while it arrives, then the command stream with the exact
replication offset of every command. With a Valkey 8+ source that grants a dual-channel sync
the snapshot and the stream arrive at the same time on two connections; the stream waits in
the spool until the snapshot is applied, then continues from the snapshot's offset.

Positions: every entry of the stream carries ``tag(epoch, offset)`` where ``offset`` is the
replication offset right after the command; an *epoch* is one full sync (or one resume from
a checkpoint) so that acknowledgements from before a full resync are never mistaken for new
ones. What the target has acknowledged is the *applied* offset: it is what we ACK to the
source, what the checkpoint stores, and where a restart resumes (PSYNC replid applied+1).

One reader serves one source address, which may be given explicitly (``address=``) so a
cluster source can run one reader per shard.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ..entry import Entry, Run
from ..errors import AuthRefused, FatalError, LinkError, SourceError, reply_class
from ..rdb.primitives import RdbError
from ..repl.bigbulk import PIECE, live_command
from ..repl.checkpoint import PHASE_AOF, PHASE_RDB, Checkpoint, load_checkpoint, save_checkpoint
from ..repl.link import DEFAULT_LISTENING_PORT, LinkOptions, SourceLink
from ..repl.protocol import CommandStream, ReplProtocolError
from ..repl.spool import Spool
from ..resp.conn import parse_address
from ..resp.encode import ARRAY_SIZES, BULK_SIZES, encode, encoded_len
from ..resp.server import ServerInfo
from ..util import human_bytes
from ..writers.reconnecting import ReconnectingWriter
from .base import Capabilities, Reader
from .cmdstream import Framer
from .snapshot import SnapshotFeed

__all__ = ["SyncReader", "build", "EPOCH_SPAN", "tag"]

log = logging.getLogger("redshake")
_T = TypeVar("_T")

EPOCH_SPAN = 1 << 64  # entry.offset = epoch * EPOCH_SPAN + replication offset
READ_CHUNK = 1 << 20
# The command stream is read in smaller pieces: hiredis moves its unparsed remainder down
# after every ~1 KiB consumed, so parsing costs grow with the size of what was fed at once
# (measured: ~460 ns per SET fed 1 MiB at a time, ~150 ns fed 64 KiB at a time).
STREAM_READ_CHUNK = 64 << 10
# A command still incomplete after this many bytes is read in pieces (repl.bigbulk): any
# argument longer than PIECE is then seen there (at most one chunk arrives between checks).
BIG_AT = PIECE - 2 * STREAM_READ_CHUNK
BATCH_MAX = 1024
HEARTBEAT = 0.1  # yield an empty batch at least this often, so acks flow while busy
CHECKPOINT_EVERY = 0.1  # rename (survives kill -9); fsync'd at most once per second
CHECKPOINT_FSYNC_EVERY = 1.0
# the reader waits for the new full sync it asked for (the target lost acknowledged writes)
PHASE_RESYNC = "resync"
# _marker_behind: the target lost writes it had acknowledged that cannot be re-sent
_LOST = (-1, -1)

_DROP = {b"ping", b"select", b"replconf", b"multi", b"exec"}  # handled specially


def tag(epoch: int, offset: int) -> int:
    return epoch * EPOCH_SPAN + offset


class SyncReader(Reader):
    caps = Capabilities(counters=True, runs=True, exactly_once=True, live=True)
    def __init__(
        self,
        ctx,
        address: str,
        *,
        username: str = "",
        password: str = "",
        tls: bool = False,
        tls_verify: bool = True,
        tls_config: dict[str, str] | None = None,
        sync_rdb: bool = True,
        sync_aof: bool = True,
        psync_command: str = "PSYNC",
        listening_port: int = DEFAULT_LISTENING_PORT,
        flush_on_resync: bool = True,
        resolve: Callable[[], str] | None = None,
        identity: str | None = None,
        diskless: bool = False,
        dual_channel: bool = True,
        connect_timeout: float = 180.0,
        cluster_node_ok: bool = False,
    ) -> None:
        self.ctx = ctx
        self.address = address
        self.name = reader_dirname(address)
        # prepare(): how long to keep trying a source never reached (0: forever); whether a
        # node of a cluster may be read alone (one shard of a cluster source)
        self.connect_timeout = connect_timeout
        self.cluster_node_ok = cluster_node_ok
        # prepare() found a checkpoint to resume from with PSYNC (nothing is re-copied)
        self.will_resume = False
        # advanced.empty_db_before_sync while resuming: empty the target should the source
        # answer with a full resynchronisation instead
        self.empty_on_full_sync = False
        # what the checkpoint belongs to: the address, or the Sentinel master name (whose
        # address changes on failover while the replication history continues)
        self.source_id = identity or address
        dirname = self.name if identity is None else "reader_" + "".join(
            ch if ch.isalnum() or ch in "-_." else "_" for ch in identity
        )
        self.dir = (Path(ctx.workdir) / dirname).absolute()
        self.sync_rdb = sync_rdb
        self.sync_aof = sync_aof
        self.flush_on_resync = flush_on_resync
        self.spool = Spool(self.dir)
        self.cp_path = self.dir / "checkpoint.json"
        self.opts = LinkOptions(
            address=address,
            username=username,
            password=password,
            tls=tls,
            tls_verify=tls_verify,
            tls_config=dict(tls_config or {}),
            psync_command=psync_command,
            listening_port=listening_port,
            rdb_only=not sync_aof,
            keep_rdb=sync_rdb,
            resolve=resolve,
            diskless=diskless,
            dual_channel=dual_channel,
        )
        self.link: SourceLink | None = None
        self.checkpoint: Checkpoint | None = None
        self._dirty_target = False  # an earlier epoch wrote to the target
        self._ep = None  # current Epoch object (from the link)
        self._ep_num = 0
        self.phase = "init"
        self.conv = None
        self.keys_read = 0  # of the snapshot being read
        # what earlier snapshots of this run read (a new full sync, a snapshot applied
        # again): the summary adds them up, as the writer's acknowledged count does
        self._keys_before = 0
        self._methods_before: Counter[str] = Counter()
        self._skipped_before: Counter[str] = Counter()
        self.rdb_sent = 0
        self.db = 0
        self._db_changes: deque[tuple[int, int]] = deque()  # (offset, db from then on)
        self.sent_offset = -1  # parse position (everything before is handed over or dropped)
        self._yielded_upto = -1
        self._last_entry_off: int | None = None
        self.applied = -1
        self._rx_samples: deque[tuple[int, float]] = deque()
        self._last_cp = 0.0
        self._last_fsync = 0.0
        self._cp_saved_off = -1
        self._stopped = False
        self._done = False
        self._rewind = False
        self._writer: ReconnectingWriter | None = None
        self.entries = 0
        self.dropped = 0
        self.getacks = 0
        # set by the driver when the writer takes whole runs of plain commands (write_run)
        # and no transform needs single entries
        self.runs = False
        # lower-case names of commands never put in a run (converted one by one by the driver)
        self.entry_only: frozenset[bytes] = frozenset()
        # a cluster source's shard: CLUSTER SYNCSLOTS / FLUSHSLOT are handed over (not
        # dropped) so that the shard's writer sees where an atomic slot import begins and ends
        self.keep_slot_sync = False
        # exactly-once mode: the target key holding "<replid> <offset> <db>" (see unit_marker)
        self.marker_key = b""
        # cluster target: (replid, {slot: offset}) of slot markers ahead of the resume point
        self._slots_ahead: tuple[str, dict[int, int]] | None = None
        self._lost_why = ""
        # exactly-once into one server: the replication id of the last marker the target
        # acknowledged (a target then without a marker of that id has lost writes); the
        # offset of the last unit marker handed over and not yet acknowledged; whether the
        # current epoch has handed over a marker at all (see marker_due)
        self._marker_replid = ""
        self._unit_off: int | None = None
        self._ep_marked = False
        self.target_losses = 0  # times the target lost acknowledged writes (full sync again)

    # -- Reader protocol ----------------------------------------------------------------

    def prepare(self) -> None:
        self._preflight()
        self.checkpoint = cp = load_checkpoint(self.cp_path)
        self.spool.clear()
        resume = None
        if cp is None and self.ctx.options.get("shard_late"):
            # a master that joined a cluster source while it was followed: the target holds
            # keys of its slots (copied from their former shard): its snapshot starts afresh
            self._dirty_target = True
        if cp is not None:
            if cp.source != self.source_id:
                log.warning(
                    "[%s] checkpoint %s belongs to source %s, not %s: ignored (full sync)",
                    self.name, self.cp_path, cp.source, self.source_id,
                )  # fmt: skip
                self._dirty_target = True
            elif cp.phase == PHASE_AOF and cp.replid and self.sync_aof:
                resume = (cp.replid, cp.offset)
                self._dirty_target = True  # should the source answer FULLRESYNC instead
                self.db = cp.db
                log.info(
                    "[%s] checkpoint: replid %s offset %d db %d: resuming with PSYNC",
                    self.name, cp.replid, cp.offset, cp.db,
                )  # fmt: skip
                pos = self._resume_from_marker(cp)
                if pos is _LOST:
                    resume = None
                    self.target_losses += 1
                else:
                    resume = pos or resume
                    self.will_resume = True
            else:
                log.info(
                    "[%s] checkpoint says an earlier snapshot was not completely applied: "
                    "full sync", self.name,
                )  # fmt: skip
                self._dirty_target = True
        self.link = SourceLink(self.opts, self.spool, resume, self.name)

    def target_emptied(self) -> None:
        """The driver emptied the target before the first snapshot (empty_db_before_sync)."""
        self._dirty_target = False

    def _preflight(self) -> None:
        """Reach the source once before anything is written: a wrong password, a rejected
        certificate or a node of a cluster read alone is refused at once (exit 2); a source
        that cannot be reached is tried again until ``connect_timeout`` (then exit 1)."""
        from ..resp.conn import AuthError, Connection, TLSVerifyError

        o = self.opts
        where = [self.address]

        def attempt() -> dict[str, str]:
            where[0] = o.resolve() if o.resolve is not None else self.address
            host, port = parse_address(where[0])
            with Connection(host, port, io_timeout=30.0, **o.connect_options()) as conn:
                return _source_info(conn)

        try:
            info = reach_source(attempt, self.address, self.connect_timeout, self.ctx.stop, self.name)
        except AuthError as e:
            raise SourceError(f"the source {where[0]} refused the credentials: {e}") from None
        except TLSVerifyError as e:
            raise SourceError(str(e)) from None
        address = where[0]
        if info.get("refused"):
            raise SourceError(f"the source {address} refused PING: {info['refused']}")
        if ServerInfo.from_fields(info).cluster and not self.cluster_node_ok:
            raise SourceError(
                f"the source {address} is a node of a cluster: alone it holds only its own "
                "slots. Set cluster = true in [sync_reader] to copy every shard"
            )
        # a db the target lacks (a cluster without cluster-databases): refused before the
        # snapshot writes the keys of the dbs before it
        from ..resp.server import keyspace_counts
        from .scan_reader import _check_target_dbs

        counts = keyspace_counts(info)
        _check_target_dbs(sorted(counts), counts, self.ctx.options.get("target_databases", 0), address)

    def _marker_position(self, replid: str, offset: int) -> tuple[int, int] | None:
        """Exactly-once mode: (offset, db) from the target's marker when it is ahead of
        ``offset`` for the same replication id: the target applied exactly that much."""
        read = self.ctx.options.get("read_marker")
        if not self.marker_key or read is None:
            return None
        raw = read(self.marker_key)
        try:
            m_replid, m_off, m_db = raw.decode().split() if raw else ("", "-1", "0")
            m_offset, db = int(m_off), int(m_db)
        except (UnicodeDecodeError, ValueError):
            log.warning("[%s] marker %r holds %r: ignored", self.name, self.marker_key, raw)
            return None
        if m_replid != replid:
            if m_replid:
                log.warning(
                    "[%s] the target's marker %r belongs to replication id %s, not %s: not used "
                    "(commands after offset %d may be applied twice)",
                    self.name, self.marker_key.decode("utf-8", "replace"), m_replid, replid, offset,
                )  # fmt: skip
            return None
        if m_offset <= offset:
            return None
        log.info(
            "[%s] the target's marker %r is ahead of offset %d: the target has applied the "
            "stream up to offset %d (db %d); continuing there, nothing is applied twice",
            self.name, self.marker_key.decode("utf-8", "replace"), offset, m_offset, db,
        )  # fmt: skip
        return m_offset, db

    def _slot_positions(self, replid: str, offset: int) -> int | None:
        """Exactly-once into a cluster target: one marker per slot. Remember the slots whose
        marker is ahead of ``offset``; the stream restarting at ``offset`` skips, per slot,
        what its marker shows as applied (see ``_start_stream``). Returns how many slots
        have a marker of ``replid`` (None: not a cluster target)."""
        read = self.ctx.options.get("read_slot_markers")
        if not self.marker_key or read is None:
            return None
        ahead: dict[int, int] = {}
        other = mine = 0
        for slot, raw in read(self.marker_key).items():
            mark = _parse_marker(raw)
            if mark is None:
                log.warning("[%s] marker of slot %d holds %r: ignored", self.name, slot, raw)
                continue
            m_replid, m_offset, _db = mark
            if m_replid != replid:
                other += 1
                continue
            mine += 1
            if m_offset > offset:
                ahead[slot] = m_offset
        if other:
            log.warning(
                "[%s] %d slot markers on the target belong to another replication id than %s: "
                "not used", self.name, other, replid,
            )  # fmt: skip
        if ahead:
            log.info(
                "[%s] the target's markers of %d slots are ahead of offset %d (up to %d): "
                "continuing there, nothing is applied twice",
                self.name, len(ahead), offset, max(ahead.values()),
            )  # fmt: skip
        self._slots_ahead = (replid, ahead)
        return mine

    def _marker_behind(self, replid: str, offset: int) -> tuple[int, int] | None:
        """After the target lost its connection (a restart, a Sentinel failover): the target
        may lack the last writes it acknowledged (replication to the replica that took over
        is asynchronous; a restart loses what was not saved). Its marker shows where it
        stands: (offset, db) to re-send from when the spool still holds the stream from
        there; ``_LOST`` when it cannot be re-sent, or when the target no longer holds a
        marker of this replication id although it acknowledged one."""
        read = self.ctx.options.get("read_marker")
        ep = self._ep
        if not self.marker_key or read is None or ep is None:
            return None
        mark = _parse_marker(read(self.marker_key))
        if mark is None or mark[0] != replid:
            if self._marker_replid != replid:
                return None  # no marker of this id acknowledged yet: nothing to compare
            self._lost_why = (
                "the target holds no position marker" if mark is None
                else f"the target's marker belongs to replication id {mark[0]}"
            )
            return _LOST
        m_offset, db = mark[1], mark[2]
        if m_offset >= offset:
            return None
        return self._resend_from(ep, m_offset, db, offset, "the target")

    def _resend_from(self, ep, m_offset: int, db: int, offset: int, who: str) -> tuple[int, int]:
        """The target shows the stream applied only up to ``m_offset`` although it had
        acknowledged ``offset``: re-send from there when the spool still holds it, else
        ``_LOST``."""
        if m_offset >= ep.start and self.spool.read_stream(ep.num, m_offset, 1):
            log.warning(
                "[%s] %s applied the stream only up to offset %d, not %d as it had "
                "acknowledged (a failover or restart lost the last writes): re-sending "
                "from there", self.name, who, m_offset, offset,
            )  # fmt: skip
            return m_offset, db
        self._lost_why = (
            f"the target applied the stream only up to offset {m_offset}, not {offset} as it "
            "had acknowledged, and that part is no longer held here"
        )
        return _LOST

    def _slots_behind(self, replid: str, offset: int) -> tuple[int, int] | None:
        """``_marker_behind`` for a cluster target: every marker the writer set and the
        target acknowledged (its offset at or before ``offset``) must still be there, or a
        later one. A master that restarted without its data holds none (``_LOST``); one that
        failed over to a lagging replica may hold an older one: the stream is re-sent from
        the oldest such position when the spool still holds it (each slot skipping what its
        own marker shows as applied), else ``_LOST``."""
        read = self.ctx.options.get("read_slot_markers")
        marks = self.ctx.options.get("slot_marks")
        ep = self._ep
        if not self.marker_key or read is None or marks is None or ep is None:
            return None
        acked: dict[int, int] = {}
        for slot, values in marks().items():
            for raw in reversed(values):
                mark = _parse_marker(raw)
                if mark is not None and mark[0] == replid and mark[1] <= offset:
                    acked[slot] = mark[1]
                    break
        if not acked:
            return None
        now = read(self.marker_key)
        lost: list[int] = []
        behind: list[tuple[int, int]] = []
        for slot, off in acked.items():
            mark = _parse_marker(now.get(slot))
            if mark is None or mark[0] != replid:
                lost.append(slot)
            elif mark[1] < off:
                behind.append((mark[1], mark[2]))
        if lost:
            self._lost_why = (
                f"the target's master(s) serving slot(s) {', '.join(map(str, sorted(lost)[:5]))} "
                f"hold no position marker of replication id {replid} any more"
            )
            return _LOST
        if not behind:
            return None
        m_offset, db = min(behind)
        return self._resend_from(
            ep, m_offset, db, offset, f"the target's markers of {len(behind)} slot(s) show it"
        )

    def _resync_target(self, ep) -> None:
        """The target lost acknowledged writes that cannot be re-sent: ask the source for a
        new full sync (the snapshot is applied again, after emptying the target when
        ``flush_on_resync``). Until it starts, a restart does a full sync as well."""
        self.target_losses += 1
        log.error(
            "[%s] %s: the target lost writes it had acknowledged (a restart without its data, "
            "a failover to a replica that lagged, or a flush). Asking the source for a new "
            "full sync to copy everything again (loss #%d)",
            self.name, self._lost_why, self.target_losses,
        )  # fmt: skip
        self._dirty_target = True
        self.phase = PHASE_RESYNC
        self.applied = -1
        if self.sync_aof:
            self._save_cp(Checkpoint(self.source_id, ep.replid, ep.start, 0, PHASE_RDB))
        assert self.link is not None
        self.link.request_full_sync()

    def marker_value(self, offset: int) -> bytes:
        """The marker value for a (tagged) stream offset of the current epoch."""
        ep = self._ep
        assert ep is not None
        off = offset % EPOCH_SPAN
        return b"%s %d %d" % (ep.replid.encode(), off, self._db_at_offset(off))

    def _resume_from_marker(self, cp: Checkpoint) -> tuple[str, int] | tuple[int, int] | None:
        """Where the target stands, from its marker (exactly-once into one server): after a
        crash the marker is ahead of the checkpoint (saved ten times a second); behind it
        when the checkpoint counted an idle stream (pings) or the target lost its last
        writes: the stream is resumed from the marker either way. ``_LOST`` when the target
        no longer holds a marker that it had acknowledged: a full sync copies everything."""
        replid, offset = cp.replid, cp.offset
        mine = self._slot_positions(replid, offset)
        read = self.ctx.options.get("read_marker")
        if mine == 0 and cp.marker:  # a cluster target without any marker of this id
            log.error(
                "[%s] the target cluster holds no position marker of replication id %s, "
                "although it acknowledged some before the stop: it lost writes (masters "
                "restarted without their data, or a FLUSHALL). Copying everything again "
                "with a full sync", self.name, replid,
            )  # fmt: skip
            self._dirty_target = True
            return _LOST
        if not self.marker_key or read is None:
            return None
        pos = self._marker_position(replid, offset)
        if pos is not None:
            self._marker_replid = replid
            self.db = pos[1]
            return replid, pos[0]
        mark = _parse_marker(read(self.marker_key))
        if mark is not None and mark[0] == replid:
            self._marker_replid = replid
            if mark[1] < offset:
                log.info(
                    "[%s] the target's marker shows offset %d, before the checkpoint's %d: "
                    "resuming from the target's own position", self.name, mark[1], offset,
                )  # fmt: skip
                self.db = mark[2]
                return replid, mark[1]
            return None
        if not cp.marker:
            return None
        log.error(
            "[%s] the target %s, although it acknowledged the marker of replication id %s "
            "before the stop: it lost writes (a restart without its data, a failover to a "
            "replica that lagged, or a flush). Copying everything again with a full sync",
            self.name, f"holds no position marker {self.marker_key.decode('utf-8', 'replace')!r}"
            if mark is None else f"holds a marker of replication id {mark[0]}", replid,
        )  # fmt: skip
        self._dirty_target = True
        return _LOST

    def unit_marker(self) -> tuple[bytes, bytes, int]:
        """(key, value, tagged offset) of the exactly-once marker for everything handed
        over so far: ``<replid> <offset> <db at that offset>``."""
        off = self._yielded_upto
        ep = self._ep
        assert ep is not None
        self._unit_off = off
        self._ep_marked = True
        value = b"%s %d %d" % (ep.replid.encode(), off, self._db_at_offset(off))
        return self.marker_key, value, ep.num * EPOCH_SPAN + off

    def marker_due(self) -> bool:
        return (
            not self._ep_marked
            and self.phase == PHASE_AOF
            and bool(self.marker_key)
            and self.ctx.options.get("read_marker") is not None
        )

    def received_by(self, offset: int) -> float:
        """A monotonic time by which the stream byte at (tagged) ``offset`` had been received
        from the source (-1, a command inside a transaction: now)."""
        if offset < 0:
            return time.monotonic()
        off = offset % EPOCH_SPAN
        found = None
        for got, when in reversed(self._rx_samples):  # (only this thread appends)
            if got < off:
                break
            found = when
        return found if found is not None else time.monotonic()

    def _db_at_offset(self, off: int) -> int:
        for change_off, change_db in reversed(self._db_changes):
            if change_off <= off:
                return change_db
        return self.db

    def batches(self) -> Iterator[list[Entry]]:
        link = self.link
        assert link is not None, "prepare() first"
        log.info("[%s] syncing from %s (work files in %s)", self.name, self.address, self.dir)
        link.start()
        cond = self.spool.cond
        stop = self.ctx.stop
        while True:
            if stop():
                self._stopped = True
                break
            with cond:
                if link.fatal is not None:
                    raise _fatal(link.fatal)
                ep = link.epoch
                if ep is None:
                    cond.wait(0.1)
            if ep is None:
                yield []
                continue
            if ep is not self._ep:
                self._rewind = False
                if self._writer is not None:
                    self._writer.discard = False
                yield from self._begin_epoch(ep)
            elif self._rewind:
                yield from self._do_rewind()
            if self.phase == PHASE_RDB:
                yield from self._rdb_phase(ep)
            elif self.phase == PHASE_AOF:
                yield from self._aof_phase(ep)
            elif self.phase == PHASE_RESYNC:  # the new full sync asked for: not begun yet
                with cond:
                    if link.epoch is ep and link.fatal is None:
                        cond.wait(0.1)
                yield []
            elif self.phase == "done":
                self._done = True
                break
        self._save_checkpoint(force=True)

    def acked(self, offset: int) -> None:
        ep = self._ep
        if ep is None or self.phase not in (PHASE_AOF, "done") or self._rewind:
            return
        w = self._writer
        if w is not None and w.discard:
            return
        if self._last_entry_off is None or (w is not None and w.idle):
            # nothing in flight: everything handed over is applied (this also covers
            # entries a transform dropped, whose offsets never come back from the writer)
            applied = self._yielded_upto
        else:
            if offset < 0:
                return
            e, off = divmod(offset, EPOCH_SPAN)
            if e != self._ep_num:
                return
            applied = self._yielded_upto if off >= self._last_entry_off else off
        if applied > self.applied:
            if self.applied < 0 and self.sync_rdb and ep.kind == "full":
                self.spool.drop_rdb(ep.num)  # the snapshot is applied: no rewind needs it
            self.applied = applied
            assert self.link is not None
            self.link.set_applied(self._ep_num, applied)
            uo = self._unit_off
            if uo is not None and applied >= uo:  # the target holds a marker of this id
                self._unit_off = None
                self._marker_replid = ep.replid
        self._save_checkpoint()

    @property
    def complete(self) -> bool:
        if self._done:
            return True
        # a clean stop in the stream phase leaves the target at a checkpointed position
        return self._stopped and self.phase == PHASE_AOF

    def consistent(self) -> bool:
        ep = self._ep
        return (
            ep is not None
            and self.phase == PHASE_AOF
            and self.applied >= 0
            and self.applied == ep.received
        )

    def close(self) -> None:
        link = self.link
        if link is not None:
            link.stop()
            link.join(timeout=5)
        try:
            self._save_checkpoint(force=True)
        finally:
            self.spool.close()
            self.spool.clear()

    def wrap_writer(self, writer):
        """The pipeline's writer, made to survive a lost target connection."""
        self._writer = ReconnectingWriter(writer, self.name, self.acked, self.request_rewind, self.ctx.stop)
        return self._writer

    def in_stream(self) -> bool:
        return self.phase == PHASE_AOF

    def source_replid(self) -> str:
        return getattr(self._ep, "replid", "")

    def request_rewind(self) -> None:
        self._rewind = True

    def _do_rewind(self) -> Iterator[list[Entry]]:
        """Produce again everything after the acknowledged position (the target lost its
        connection; unanswered writes may or may not have been applied)."""
        self._rewind = False
        if self._writer is not None:
            self._writer.discard = False
        ep = self._ep
        if ep is None:
            return
        if self.phase == PHASE_AOF and self.applied >= 0:
            off = self.applied
            while len(self._db_changes) > 1 and self._db_changes[-1][0] > off:
                self._db_changes.pop()
            db = self._db_at(off)
            # a batch whose EXEC reply was lost with the connection may still have been applied
            pos = (
                self._marker_position(ep.replid, off)
                or self._marker_behind(ep.replid, off)
                or self._slots_behind(ep.replid, off)
            )
            if pos is _LOST:
                self._resync_target(ep)
                return
            if pos is not None:
                off, db = pos
            self._slot_positions(ep.replid, off)
            log.info("[%s] re-sending the stream from offset %d (db %d)", self.name, off, db)
            self._start_stream(off, db)
            self._last_entry_off = None
            self.applied = off
            return
        if self.phase in (PHASE_RDB, PHASE_AOF) and self.sync_rdb and ep.kind == "full":
            log.warning("[%s] the snapshot was not completely applied: applying it again", self.name)
            flush = self.ctx.options.get("flush_target")
            if self.flush_on_resync and flush is not None:
                flush()
            self.phase = PHASE_RDB
            self._bank()
            self.rdb_sent = 0
        yield from ()

    # -- epochs -------------------------------------------------------------------------

    def _begin_epoch(self, ep) -> Iterator[list[Entry]]:
        old = self._ep
        if old is not None:
            self.spool.drop_epoch(old.num)
        prev_applied = self.applied
        self._ep = ep
        self._ep_num = ep.num
        self.applied = -1
        self._rx_samples.clear()
        self._last_entry_off = None
        self._unit_off = None
        self._ep_marked = False
        if ep.kind == "resume":
            self.phase = PHASE_AOF
            self._start_stream(ep.start, self.db)
            return
        # a full sync
        self._bank()
        self.rdb_sent = 0
        empty_first, self.empty_on_full_sync = self.empty_on_full_sync, False
        if (self._dirty_target or empty_first) and self.sync_rdb:
            flush = self.ctx.options.get("flush_target")
            if (self.flush_on_resync or empty_first) and flush is not None:
                log.warning(
                    "[%s] new full sync of a target that holds an earlier copy: emptying %s "
                    "so that keys deleted on the source meanwhile do not survive (%s)",
                    self.name,
                    "this shard's slots on the target first" if self.ctx.options.get("shard")
                    else "the target first (FLUSHALL)",
                    "advanced.empty_db_before_sync" if empty_first
                    else "sync_reader.flush_on_resync = false to keep them",
                )  # fmt: skip
                flush()
            else:
                log.warning(
                    "[%s] new full sync over an earlier copy without emptying the target: keys "
                    "deleted on the source since then stay on the target", self.name,
                )  # fmt: skip
        elif self._dirty_target:
            log.warning(
                "[%s] full resynchronisation with sync_rdb = false: the new snapshot is "
                "discarded, so every write the source made since offset %d that is not in the "
                "backlog is lost on the target", self.name, prev_applied,
            )  # fmt: skip
        self._dirty_target = True
        if self.sync_aof:
            self._save_cp(Checkpoint(self.source_id, ep.replid, ep.start, 0, PHASE_RDB))
        self.phase = PHASE_RDB
        yield from ()

    def _start_stream(self, offset: int, db: int) -> None:
        skip = self.ctx.options.get("skip_applied")
        if skip is not None:  # cluster target: per slot, what its marker shows as applied
            ahead = self._slots_ahead
            ep = self._ep
            keep = ahead is not None and ep is not None and ep.replid == ahead[0]
            skip({s: tag(self._ep_num, o) for s, o in ahead[1].items()} if keep else {})  # type: ignore[index]
            self._slots_ahead = None
        self.db = db
        self._db_changes.clear()
        self._db_changes.append((offset, db))
        self.sent_offset = offset
        self._yielded_upto = offset
        self._cp_saved_off = -1

    # -- snapshot -----------------------------------------------------------------------

    def _rdb_phase(self, ep) -> Iterator[list[Entry]]:
        link = self.link
        assert link is not None
        cond = self.spool.cond
        stop = self.ctx.stop
        if not self.sync_rdb:
            log.warning(
                "[%s] sync_rdb = false: the snapshot is received and discarded; keys that are "
                "not modified after offset %d are not copied", self.name, ep.start,
            )  # fmt: skip
            while not ep.rdb_done:
                if stop() or link.epoch is not ep:
                    return
                with cond:
                    cond.wait(0.1)
                yield []
                if self._rewind:
                    return
            self._rdb_finished(ep, self._stream_db(ep, None))
            return
        feed = SnapshotFeed(self.ctx)
        self._bank()
        pos = 0
        out: list[Entry] = []
        last_beat = time.monotonic()
        while True:
            if stop() or link.epoch is not ep:
                return
            with cond:
                avail = ep.rdb_received
                done = ep.rdb_done
            chunk = self.spool.read_rdb(ep.num, pos, avail, READ_CHUNK)
            if not chunk:
                if done:
                    try:
                        feed.finish()
                    except RdbError as e:
                        raise RdbError(f"snapshot from {self.address}: {e.message}", e.offset) from None
                if len(out) > 1:
                    yield out[:-1]
                    if self._rewind:
                        return
                    out = out[-1:]
                    last_beat = time.monotonic()
                with cond:
                    if ep.rdb_received == avail and not ep.rdb_done and link.epoch is ep:
                        cond.wait(0.05)
                if time.monotonic() - last_beat > HEARTBEAT:
                    last_beat = time.monotonic()
                    yield []
                    if self._rewind:
                        return
                continue
            pos += len(chunk)
            for batch in feed.entries(chunk):
                out.extend(batch)
                if len(out) > BATCH_MAX:
                    self.conv, self.keys_read = feed.conv, feed.keys
                    yield out[:-1]
                    if self._rewind:
                        return
                    out = out[-1:]
            self.conv, self.keys_read = feed.conv, feed.keys
            self.rdb_sent = feed.offset
            if feed.done:
                if out:
                    # the last entry of the snapshot carries the snapshot's offset: once the
                    # target acknowledges it, the whole snapshot is applied
                    last = out[-1]
                    last.offset = tag(ep.num, ep.start)
                    yield out
                    if self._rewind:
                        return
                    self._rdb_finished(ep, self._stream_db(ep, feed.conv), last_entry=True)
                else:
                    self._rdb_finished(ep, self._stream_db(ep, feed.conv))
                return
            if time.monotonic() - last_beat > HEARTBEAT:
                last_beat = time.monotonic()
                if len(out) > 1:
                    yield out[:-1]
                    if self._rewind:
                        return
                    out = out[-1:]
                else:
                    yield []
                    if self._rewind:
                        return

    @staticmethod
    def _stream_db(ep, conv) -> int | None:
        """The db the stream continues in: a dual-channel sync was told by $ENDOFF, otherwise
        the snapshot's repl-stream-db."""
        if ep.stream_db is not None:
            return ep.stream_db
        return conv.repl_stream_db if conv else None

    def _rdb_finished(self, ep, stream_db: int | None, last_entry: bool = False) -> None:
        # the snapshot file is kept until the target acknowledged all of it (see acked())
        log.info(
            "[%s] snapshot sent up to offset %d (%d keys), now following the stream",
            self.name, ep.start, self.keys_read,
        )  # fmt: skip
        self._start_stream(ep.start, stream_db or 0)
        if last_entry:
            self._last_entry_off = ep.start
        self.phase = PHASE_AOF if self.sync_aof else "done"

    # -- command stream -----------------------------------------------------------------

    def _aof_phase(self, ep) -> Iterator[list]:
        link = self.link
        runs = self.runs
        assert link is not None
        cond = self.spool.cond
        stop = self.ctx.stop
        spool = self.spool
        num = ep.num
        span_base = num * EPOCH_SPAN
        parser = CommandStream(self.sent_offset)
        fr = Framer(self.db)
        db = fr.db
        txn: list[Entry] | None = None  # fr.txn (read by the hot loop)
        batch: list[Entry] = fr.batch
        safe = self.sent_offset  # offset up to which every command is in `batch` or handled
        last_entry = self._last_entry_off
        last_beat = time.monotonic()
        samples = self._rx_samples
        kinds: dict[bytes, int] = {}
        while True:
            if stop() or link.epoch is not ep:
                break
            chunk = spool.read_stream(num, parser.fed_offset, STREAM_READ_CHUNK)
            now = time.monotonic()
            if not samples or samples[-1][0] != ep.received:
                samples.append((ep.received, now))
                if len(samples) > 4096:
                    samples.popleft()
            if not chunk:
                if batch:
                    self._last_entry_off = last_entry
                    self._yielded_upto = safe
                    yield fr.take()
                    batch = fr.batch
                    if self._rewind:
                        return
                    last_beat = now
                    continue
                self._yielded_upto = safe
                with cond:
                    if ep.received == parser.fed_offset and link.epoch is ep and not stop():
                        cond.wait(0.05)
                last_beat = time.monotonic()
                yield []
                if self._rewind:
                    return
                continue
            parser.feed(chunk)
            gets = parser.gets
            end = parser.offset
            cs = parser.fed_offset - len(chunk)  # offset of the byte before the chunk's first
            entries = 0
            run: list | None = None  # plain commands being gathered into one Run
            run_start = 0
            raw = b""
            while True:  # until the chunk is parsed, handing over full batches
                while True:
                    argv = gets()
                    if argv is False:
                        break
                    if argv.__class__ is not list or not argv:
                        raise ReplProtocolError(f"unexpected item in the replication stream: {argv!r}"[:200])
                    start = end
                    a0 = argv[0]
                    kind = kinds.get(a0)
                    if kind is None:
                        kind = _kind(a0, kinds, self.entry_only)
                    if not kind and txn is None and runs:
                        # fast path: only the length is needed, the bytes are sliced off the
                        # chunk when the run is closed
                        try:
                            ln = ARRAY_SIZES[len(argv)]
                            for x in argv:
                                ln += BULK_SIZES[len(x)]
                        except IndexError:  # 4096 arguments or an argument of 4096 bytes
                            ln = encoded_len(argv)
                        end += ln
                        entries += 1
                        if run is None:
                            run = [argv]
                            run_start = start
                        else:
                            run.append(argv)
                        if len(run) >= BATCH_MAX:
                            break  # hand the batch over, then go on with the chunk
                        continue
                    if run is not None:
                        batch.append(_make_run(db, run, chunk, cs, run_start, start, span_base))
                        run = None
                        last_entry = safe = start
                    raw = encode(argv)
                    end += len(raw)
                    if not kind or kind == _K_ENTRY:
                        entries += 1
                        if txn is None:
                            batch.append(Entry(db, argv, None, span_base + end, raw))
                            last_entry = safe = end
                            if len(batch) >= BATCH_MAX:
                                break  # hand the batch over, then go on with the chunk
                        else:
                            txn.append(Entry(db, argv, None, -1, raw))
                        continue
                    parser.advance(start, end, raw)
                    got = self._control(fr, argv, kind, raw, end, span_base)
                    if got == _FORWARDED:
                        entries += 1
                        last_entry = safe = end
                    elif got == _GATHERED:
                        entries += 1
                    elif got == _DROPPED and txn is None:
                        safe = end
                    txn = fr.txn
                    db = fr.db
                if run is not None:
                    batch.append(_make_run(db, run, chunk, cs, run_start, end, span_base))
                    last_entry = safe = end
                    raw = encode(run[-1])  # check the run's end against the bytes received
                    start = end - len(raw)
                    run = None
                if end != parser.offset:
                    parser.advance(start, end, raw)
                self.entries += entries
                self.sent_offset = end
                self.db = db
                if batch:
                    self._last_entry_off = last_entry
                    self._yielded_upto = safe
                    yield fr.take()
                    batch = fr.batch
                    if self._rewind:
                        return
                if argv is False:
                    break  # the chunk is parsed
                entries = 0  # a full batch was handed over mid-chunk: go on parsing the chunk
            if parser.fed_offset - end > BIG_AT:  # a command too long to buffer: in pieces
                big = yield from live_command(self, ep, end, db)
                if big is None:
                    if self._rewind:
                        return
                    break
                e, end = big
                parser = CommandStream(end)
                self.entries += 1
                self.sent_offset = end
                if txn is None:
                    e.offset = span_base + end
                    batch.append(e)
                    last_entry = safe = end
                else:
                    e.offset = -1
                    txn.append(e)
            if time.monotonic() - last_beat > HEARTBEAT:
                last_beat = time.monotonic()
                yield []
                if self._rewind:
                    return
        # leaving: stop or new epoch; a partial transaction is simply not applied
        self.sent_offset = safe
        self.db = fr.db

    def _control(self, fr: Framer, argv: list[bytes], kind: int, raw: bytes, end: int,
                 span_base: int) -> int:  # fmt: skip
        """A command of the stream that is not plain data (PING, SELECT, REPLCONF, MULTI,
        EXEC, or one that may be replication-internal), ending at offset ``end``: handled
        through the framer. Returns _FORWARDED (in the batch with the offset ``end``),
        _GATHERED (into the open MULTI block), _DROPPED (not forwarded) or _HELD (MULTI, or
        an EXEC without MULTI: nothing to account)."""
        name = argv[0].lower()
        if kind == _K_INTERNAL:
            if not _internal(name, argv) or (self.keep_slot_sync and name == b"cluster"):
                in_batch = fr.txn is None
                fr.add(Entry(fr.db, argv, None, span_base + end if in_batch else -1, raw))
                return _FORWARDED if in_batch else _GATHERED
        elif name == b"select":
            if not fr.select(argv):
                log.warning("[%s] bad SELECT in the stream: %r", self.name, argv)
            self._db_changes.append((end, fr.db))
        elif name == b"multi":
            fr.multi(Entry(fr.db, argv, None, -1, raw), restart=True)
            return _HELD
        elif name == b"exec":
            if fr.exec(Entry(fr.db, argv, None, span_base + end, raw)) is None:
                log.warning("[%s] EXEC without MULTI in the stream (dropped)", self.name)
                return _HELD
            return _FORWARDED
        elif name == b"replconf":
            if len(argv) > 1 and argv[1].lower() == b"getack":
                self.getacks += 1
                self.link.send_ack()  # type: ignore[union-attr]
        self.dropped += 1
        return _DROPPED

    # -- checkpoint ---------------------------------------------------------------------

    def _db_at(self, offset: int) -> int:
        ch = self._db_changes
        while len(ch) > 1 and ch[1][0] <= offset:
            ch.popleft()
        return ch[0][1] if ch else self.db

    def _save_checkpoint(self, force: bool = False) -> None:
        ep = self._ep
        if ep is None or self.applied < 0 or not self.sync_aof and self.phase != "done":
            return
        now = time.monotonic()
        if not force and now - self._last_cp < CHECKPOINT_EVERY:
            return
        if self.applied == self._cp_saved_off and not force:
            self._last_cp = now
            return
        self._last_cp = now
        durable = force or now - self._last_fsync >= CHECKPOINT_FSYNC_EVERY
        if durable:
            self._last_fsync = now
        cp = Checkpoint(
            self.source_id, ep.replid, self.applied, self._db_at(self.applied),
            marker=self._marker_replid == ep.replid,
        )  # fmt: skip
        self._save_cp(cp, durable)
        self._cp_saved_off = self.applied
        self.spool.release(ep.num, self.applied)

    def _save_cp(self, cp: Checkpoint, durable: bool = True) -> None:
        try:
            save_checkpoint(self.cp_path, cp, durable)
        except OSError as e:
            log.warning("[%s] cannot save the checkpoint %s: %s", self.name, self.cp_path, e)

    # -- status -------------------------------------------------------------------------

    def lag_seconds(self) -> float:
        ep = self._ep
        if ep is None or self.phase != PHASE_AOF or self.applied >= ep.received:
            return 0.0
        # the status thread calls this while the reader appends: iterate a copy (list() of a
        # deque copies it in one step under the GIL; a for loop over it would not)
        for off, t in list(self._rx_samples):
            if off > self.applied:
                return max(0.0, time.monotonic() - t)
        return 0.0

    def _state(self) -> str:
        link = self.link
        if link is None or self._ep is None:
            return link.status if link is not None else "hand shaking"
        if self.phase == PHASE_RDB:
            ep = self._ep
            if ep.rdb_size is None:
                return "waiting bgsave"
            return "syncing rdb" if ep.rdb_done else "receiving rdb"
        if self.phase == PHASE_AOF:
            return "syncing aof"
        return "syncing rdb"

    def status_line(self) -> str:
        st = self._state()
        ep = self._ep
        link = self.link
        extra = ""
        if link is not None and link.reconnects:
            extra = f", reconnects=[{link.reconnects}]"
        if ep is None:
            return st + extra
        if st == "receiving rdb":
            if ep.rdb_size == -1:
                return (
                    f"receiving rdb diskless, size=[{human_bytes(ep.rdb_received)}], "
                    f"applied=[{human_bytes(self.rdb_sent)}]{extra}"
                )
            return (
                f"receiving rdb, size=[{human_bytes(ep.rdb_received)}/{human_bytes(ep.rdb_size or 0)}], "
                f"applied=[{human_bytes(self.rdb_sent)}]{extra}"
            )
        if st == "syncing rdb":
            return f"syncing rdb, size=[{human_bytes(self.rdb_sent)}/{human_bytes(ep.rdb_received)}]{extra}"
        if st == "syncing aof":
            diff = ep.received - max(self.applied, ep.start)
            return f"syncing aof, diff=[{diff}], lag=[{self.lag_seconds():.1f}s]{extra}"
        return st + extra

    def status(self) -> dict:
        ep = self._ep
        link = self.link
        rdb_size = ep.rdb_size if ep is not None and ep.rdb_size is not None else 0
        if rdb_size < 0:
            rdb_size = 0
        rdb_recv = ep.rdb_received if ep is not None else 0
        received = ep.received if ep is not None else 0
        start = ep.start if ep is not None else 0
        applied = self.applied if self.applied >= 0 else start
        return {
            "name": self.name,
            "address": link.address if link is not None else self.address,
            "dir": str(self.dir),
            "status": self._state(),
            "rdb_file_size_bytes": rdb_size,
            "rdb_file_size_human": human_bytes(rdb_size),
            "rdb_received_bytes": rdb_recv,
            "rdb_received_human": human_bytes(rdb_recv),
            "rdb_sent_bytes": self.rdb_sent,
            "rdb_sent_human": human_bytes(self.rdb_sent),
            "aof_received_offset": received,
            "aof_sent_offset": max(self.sent_offset, 0),
            "aof_applied_offset": applied,
            "aof_received_bytes": received - start,
            "aof_received_human": human_bytes(received - start),
            "lag_bytes": max(0, received - applied),
            "lag_seconds": round(self.lag_seconds(), 3),
            "replid": ep.replid if ep is not None else "",
            "epoch": self._ep_num,
            "connected": bool(link and link.connected),
            "reconnects": link.reconnects if link else 0,
            "partial_resyncs": link.partial_resyncs if link else 0,
            "full_syncs": link.full_syncs if link else 0,
            "dual_channel_syncs": link.dual_channel_syncs if link else 0,
            "failed_snapshots": link.failed_snapshots if link else 0,
            "last_link_error": link.last_error if link else "",
            "target_reconnects": self._writer.reconnects if self._writer is not None else 0,
            "target_losses": self.target_losses,
            "spool_bytes": self.spool.bytes_on_disk,
            "entries": self.entries,
            "dropped": self.dropped,
        }

    def summary(self) -> list[str]:
        link = self.link
        ep = self._ep
        if link is None:
            return []
        return [
            f"{self.name}: source {link.address}, replid {ep.replid if ep else '-'}, applied "
            f"offset {self.applied}, full syncs {link.full_syncs}, partial resyncs "
            f"{link.partial_resyncs}, reconnects {link.reconnects}, stream commands "
            f"{self.entries} forwarded / {self.dropped} dropped"
        ]

    def _bank(self) -> None:
        """A snapshot is about to be read (again): keep what the last one counted."""
        if self.conv is not None:
            self._methods_before.update(self.conv.methods)
            self._skipped_before.update(self.conv.skipped)
            self.conv = None
        self._keys_before += self.keys_read
        self.keys_read = 0

    def counters(self):
        """Keys read, write methods and skips of every snapshot this run read."""
        methods = Counter(self._methods_before)
        skipped = Counter(self._skipped_before)
        if self.conv is not None:
            methods.update(self.conv.methods)
            skipped.update(self.conv.skipped)
        return self._keys_before + self.keys_read, methods, skipped


_K_SPECIAL, _K_INTERNAL, _K_ENTRY = 1, 2, 3
# what SyncReader._control did with a command
_FORWARDED, _GATHERED, _DROPPED, _HELD = 0, 1, 2, 3


def _parse_marker(raw: bytes | None) -> tuple[str, int, int] | None:
    """(replid, offset, db) of a position marker value ``<replid> <offset> <db>``."""
    try:
        replid, off, db = raw.decode().split()  # type: ignore[union-attr]
        return replid, int(off), int(db)
    except (AttributeError, UnicodeDecodeError, ValueError):
        return None


def _make_run(db: int, argvs: list, chunk: bytes, cs: int, start: int, end: int,
              span_base: int) -> Run:  # fmt: skip
    """The Run of ``argvs`` spanning stream offsets (start, end]; the chunk starts after
    offset ``cs``. Only the first command can have started in an earlier chunk."""
    if start >= cs:
        resp = chunk[start - cs : end - cs]
    else:
        first = encode(argvs[0])
        resp = first + chunk[start + len(first) - cs : end - cs]
    return Run(db, argvs, resp, span_base + end)


def _kind(name: bytes, cache: dict[bytes, int], entry_only: frozenset[bytes] = frozenset()) -> int:
    """0: forward; _K_SPECIAL: PING/SELECT/REPLCONF/MULTI/EXEC; _K_INTERNAL: maybe internal;
    _K_ENTRY: forward as an entry of its own, never in a run."""
    low = name.lower()
    if low in entry_only:
        k = _K_ENTRY
    elif low in _DROP:
        k = _K_SPECIAL
    elif low in (b"publish", b"cluster", b"trimslots", b"opinfo"):
        k = _K_INTERNAL
    else:
        k = 0
    if len(cache) < 4096:
        cache[name] = k
    return k


def _internal(name: bytes, argv: list[bytes]) -> bool:
    """Replication-internal commands that carry no data for the target."""
    if name == b"publish":
        return len(argv) > 1 and argv[1] == b"__sentinel__:hello"
    if name == b"cluster" and len(argv) > 1:
        return argv[1].lower() in (b"syncslots", b"flushslot")
    return name in (b"trimslots", b"opinfo")


def reader_dirname(address: str) -> str:
    """The name (and work sub-directory) of the reader of ``address``."""
    host, port = parse_address(address)
    return f"reader_{host.replace(':', '_')}_{port}"


def planned_resume(workdir: Path, address: str, sync_aof: bool = True) -> bool:
    """Would a reader of ``address`` working in ``workdir`` resume from its checkpoint
    (PSYNC, nothing re-copied) rather than start with a full sync?"""
    cp = load_checkpoint(Path(workdir).absolute() / reader_dirname(address) / "checkpoint.json")
    return bool(cp and cp.source == address and cp.phase == PHASE_AOF and cp.replid and sync_aof)


def reach_source(
    attempt: Callable[[], _T],
    address: str,
    limit: float,
    stop,
    label: str,
    setting: str = "sync_reader.connect_timeout",
) -> _T:
    """``attempt()`` until it does not fail to connect: a source never reached is tried again
    with back-off for ``limit`` seconds (0: forever), then FatalError naming ``setting``; a
    refused password or certificate is raised at once (retrying cannot fix it); a stop
    request raises KeyboardInterrupt. Used by the sync and scan readers."""
    from ..resp.conn import AuthError, ConnError, TLSVerifyError

    t0 = time.monotonic()
    delay = 0.5
    attempts = 0
    while True:
        try:
            return attempt()
        except (AuthError, TLSVerifyError):
            raise
        except (ConnError, OSError) as e:
            attempts += 1
            waited = time.monotonic() - t0
            if limit > 0 and waited + delay > limit:
                raise LinkError(
                    f"cannot reach the source {address} ({e}); gave up after {waited:.0f}s and "
                    f"{attempts} attempts ({setting} = {limit:g}; 0 waits forever)"
                ) from None
            log.warning(
                "[%s] cannot reach the source %s (%s); trying again in %.1fs (attempt #%d%s)",
                label, address, e, delay, attempts, f", giving up after {limit:g}s" if limit > 0 else "",
            )  # fmt: skip
            end = time.monotonic() + delay
            while time.monotonic() < end:
                if stop():
                    raise KeyboardInterrupt from None
                time.sleep(0.1)
            delay = min(delay * 2, 10.0)


def _source_info(conn) -> dict[str, str]:
    """INFO cluster and keyspace of a source (``refused``: PING was refused for lack of
    rights; LOADING and the like are fine: the server is there)."""
    from ..resp.conn import ReplyError
    from ..resp.server import read_info

    try:
        conn.call("PING")
    except ReplyError as e:
        if issubclass(reply_class(e.message), AuthRefused):
            return {"refused": e.message}
        return {}
    return read_info(conn, "cluster", "keyspace", tolerate=True)


def _fatal(e: BaseException) -> BaseException:
    if isinstance(e, FatalError):
        return e
    return LinkError(f"source link failed: {type(e).__name__}: {e}")


def _pick_replica(address: str, rc) -> str:
    """prefer_replica: the online replica of ``address`` with the highest offset, or
    ``address`` itself when it has none."""
    from ..resp.conn import connect
    from ..resp.server import best_replica, read_info

    with connect(address, **rc.connect_options()) as conn:
        return best_replica(read_info(conn, "replication")) or address


def build(cfg, ctx, address: str | None = None) -> SyncReader:
    """The reader for ``cfg``; ``address`` overrides the configured source (one shard)."""
    from ..resp.conn import ConnError

    try:
        return _build(cfg, ctx, address)
    except (ConnError, ValueError) as e:
        raise SourceError(f"sync_reader: {e}") from None


def _build(cfg, ctx, address: str | None) -> SyncReader:
    rc = cfg.reader
    adv = cfg.advanced
    resolve = None
    addr = address or rc.address
    if address is None and rc.cluster:
        raise ValueError("cluster = true: cluster sources are not supported by this version yet")
    sentinel = getattr(rc, "sentinel", None)
    if ctx.options.get("shard_resolve") is not None:  # a cluster shard: follows its failovers
        resolve = ctx.options["shard_resolve"]
    elif address is None and sentinel is not None and sentinel.address:
        from ..resp.server import resolve_from_config

        def resolve() -> str:  # asked again before every reconnect (follows a failover)
            return resolve_from_config(sentinel, "source master")

        addr = resolve()
    if not addr:
        raise ValueError("sync_reader.address is empty")
    if rc.prefer_replica and resolve is None:
        picked = _pick_replica(addr, rc)
        if picked != addr:
            log.info("prefer_replica: reading from replica %s of %s", picked, addr)
            addr = picked
    psync = "PSYNC"
    if adv.aws_psync:
        table = adv.aws_psync_map()
        match = [cmd for a, cmd in table.items() if addr.startswith(a) or a.startswith(addr)]
        if not match:
            raise ValueError(f"advanced.aws_psync has no entry for the source {addr}")
        psync = match[0]
    tls_config = rc.tls_config.as_dict()
    reader = SyncReader(
        ctx,
        addr,
        username=rc.username,
        password=rc.password,
        tls=rc.tls,
        tls_verify=not rc.tls_skip_verify,
        tls_config=tls_config,
        sync_rdb=rc.sync_rdb,
        sync_aof=rc.sync_aof,
        psync_command=psync,
        listening_port=adv.status_port or DEFAULT_LISTENING_PORT,
        flush_on_resync=bool(ctx.options.get("flush_on_resync", rc.flush_on_resync)),
        resolve=resolve,
        identity=(
            f"sentinel_{sentinel.master_name}" if sentinel is not None and sentinel.address
            # a cluster shard: the address its work began with (kept across failovers)
            else ctx.options.get("shard_identity")
        ),
        diskless=rc.try_diskless,
        dual_channel=rc.dual_channel,
        connect_timeout=float(rc.connect_timeout),
        cluster_node_ok=bool(ctx.options.get("shard")),
    )
    if adv.exactly_once and adv.exactly_once_key:  # one marker per source (a cluster source has several)
        reader.marker_key = f"{adv.exactly_once_key}:{reader.source_id}".encode()
    return reader
