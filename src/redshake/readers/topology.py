"""Following the topology of a cluster source while it changes.

* :func:`cluster_view` asks any reachable node for ``CLUSTER NODES``: who is master of
  which slots, who replicates whom, which slots the answering node is migrating.
* :class:`ShardResolver` is the address a shard's reader connects to, asked again before
  every reconnect: after a failover it is the promoted replica (the reader continues with
  PSYNC and the old replication id, which PSYNC2 keeps as ``replid2``).
* :class:`MigrationGuard` decides, in the process of one source shard, whether a ``DEL`` /
  ``UNLINK`` from that shard's stream must reach the target: a key moved to another shard
  (``MIGRATE``, or Valkey 9's atomic slot migration) is deleted on the old owner *after*
  the new owner stored it, and the two streams are applied by different processes — the
  late DEL would delete the copy the new owner's stream just wrote.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from ..commands.lookup import command_keys
from ..commands.slots import key_slot
from ..entry import Entry, Run
from ..resp.conn import Connection, ConnError, ReplyError, parse_address
from ..resp.server import NodeLine, parse_node_lines, read_info
from .sync_reader import EPOCH_SPAN

__all__ = ["cluster_view", "ShardResolver", "MigrationGuard", "Handover"]

log = logging.getLogger("redshake")
_T = TypeVar("_T")

PATIENCE = 60.0  # seconds a deletion check waits for an unreachable source (failover)


def cluster_view(addresses: list[str], conn_kw: dict, timeout: float = 5.0) -> tuple[str, list[NodeLine]]:
    """(address that answered, its ``CLUSTER NODES``) from the first node of ``addresses``
    that answers; ConnError when none does. (Parsed by
    :func:`redshake.resp.server.parse_node_lines`: addresses are IPs, as the one
    ``CLUSTER NODES`` gives.)"""
    errors = []
    for addr in addresses:
        host, port = parse_address(addr)
        try:
            with Connection(host, port, io_timeout=timeout, **conn_kw) as c:
                raw = c.call("CLUSTER", "NODES")
        except (ConnError, OSError, ReplyError) as e:
            errors.append(f"{addr}: {e}")
            continue
        return addr, parse_node_lines(raw, host)
    raise ConnError("no node of the source cluster answered: " + "; ".join(errors or ["no address"]))


class ShardResolver:
    """The current master of one source shard. A shard is its master at start plus that
    master's replicas (learnt again at every call): after a failover, the member that is
    now a master is the one to read from. ``ranges`` follows the shard's slots."""

    def __init__(self, address: str, members: set[str], seeds: list[str], conn_kw: dict,
                 label: str = "") -> None:  # fmt: skip
        self.address = address
        self.members = set(members)
        self.seeds = list(dict.fromkeys([address, *seeds]))
        self.conn_kw = conn_kw
        self.label = label or address
        self.ranges: list[tuple[int, int]] = []

    def __call__(self) -> str:
        _, nodes = cluster_view([self.address, *self.seeds], self.conn_kw)
        self.seeds = list(dict.fromkeys([*(n.address for n in nodes if n.usable), *self.seeds]))
        by_id = {n.id: n for n in nodes}
        masters = [by_id[m] for m in self.members if m in by_id and by_id[m].is_master]
        live = [n for n in masters if n.usable]
        if not live:
            if not any(m in by_id for m in self.members):
                raise ConnError(f"the shard of {self.label} has left the source cluster")
            raise ConnError(f"the shard of {self.label} has no master right now (failover?)")
        # two members both masters: the one owning slots (the other awaits a reconfiguration)
        master = max(live, key=lambda n: sum(hi - lo + 1 for lo, hi in n.ranges))
        self.members |= {n.id for n in nodes if n.master_id == master.id}
        self.ranges = list(master.ranges)
        if master.address != self.address:
            log.info("[%s] the shard's master is now %s (was %s)", self.label, master.address, self.address)
            self.address = master.address
        return master.address


class MigrationGuard:
    """Keeps a shard's DEL / UNLINK of keys that moved to another shard from reaching the
    target after the new owner's copy.

    A deletion is suspect when, at the time it is checked, its slot is no longer stably
    owned by this shard's master (it migrates out, or another master owns it). The state is
    read from the shard's master (``CLUSTER NODES``) no earlier than the moment the command
    was received: ownership only moves forward, so that reading is at least as late as the
    deletion itself. A suspect key is deleted only if the slot's new owner does not hold it:
    if it does, the key was moved (or re-created there) and that shard's stream brings it.
    """

    def __init__(self, resolver: ShardResolver, conn_kw: dict, on_skip: Callable[[int], None]) -> None:
        self.resolver = resolver
        self.conn_kw = conn_kw
        self.on_skip = on_skip
        self._read_at = -1.0
        self._mine: bytearray = bytearray(16384)  # 1: stably owned by this shard's master
        self._owner: dict[int, str] = {}  # slot -> address of the node it moves to / lives on
        self._conns: dict[str, Connection] = {}
        self._importing: set[int] = set()
        self._migrating_out: set[int] = set()
        self.imports: dict[bytes, list[tuple[int, int]]] = {}  # atomic import job -> slots
        # (stream offset, slot, keys) of a deletion in a slot that moved away (see Handover)
        self.on_moved_out: Callable[[int, int, int, str], None] = lambda offset, slot, n, where: None
        self._importing_now = bytearray(16384)
        self.kept = 0
        self.dropped = 0

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    def _patiently(self, fn: Callable[[], _T]) -> _T:
        """``fn()``, tried again for up to PATIENCE seconds while the source cannot be
        reached (a failover in progress); then its error."""
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                return fn()
            except (ConnError, OSError) as e:
                if time.monotonic() > deadline:
                    raise ConnError(f"{self.resolver.label}: cannot check a deletion: {e}") from None
                log.warning("[%s] cannot check a deletion (%s): trying again", self.resolver.label, e)
                time.sleep(0.5)

    def _refresh(self) -> None:
        self._patiently(self._read_state)

    def _read_state(self) -> None:
        now = time.monotonic()
        try:
            addr, nodes = cluster_view([self.resolver.address], self.conn_kw)
        except ConnError:
            self.resolver()  # (the master may have changed)
            raise
        me = next((n for n in nodes if "myself" in n.flags), None)
        if me is None or not me.is_master:
            self.resolver()
            raise ConnError(f"{addr} is not the shard's master any more")
        by_id = {n.id: n for n in nodes}
        mine = bytearray(16384)
        owner: dict[int, str] = {}
        for n in nodes:
            if not n.is_master:
                continue
            for lo, hi in n.ranges:
                if n is me:
                    mine[lo : hi + 1] = b"\x01" * (hi - lo + 1)
                else:
                    for s in range(lo, hi + 1):
                        owner[s] = n.address
        for s, target in me.migrating.items():
            mine[s] = 0
            if target in by_id:
                owner[s] = by_id[target].address
        self._mine, self._owner, self._read_at = mine, owner, now
        self._importing = set(me.importing)
        self._migrating_out = set(me.migrating)

    # -- Valkey 9 atomic slot migration, on the importing side -------------------------

    def slot_sync(self, argv: list[bytes]) -> None:
        """A ``CLUSTER SYNCSLOTS`` (or FLUSHSLOT) command of this shard's stream. Between
        ``ESTABLISH ... SLOTSRANGE`` and ``FINISH`` of an import job, this shard's stream
        carries a copy of the slots' keys and of the writes the old owner goes on
        receiving — all of which reach the target through the old owner's own stream."""
        if len(argv) < 3 or argv[1].lower() != b"syncslots":
            return
        op = argv[2].lower()
        name = _arg_after(argv, b"name")
        if op == b"establish":
            ranges = _slot_ranges(argv)
            self.imports[name] = ranges
            log.info(
                "[%s] atomic slot import %s of slots %s begins: its copy of the slots is not "
                "applied (the old owner's stream brings the same writes)",
                self.resolver.label, name.decode("ascii", "replace"),
                ",".join(f"{lo}-{hi}" for lo, hi in ranges),
            )  # fmt: skip
        elif op == b"finish" and name in self.imports:
            ranges = self.imports.pop(name)
            log.info(
                "[%s] atomic slot import %s ends (%s)", self.resolver.label,
                name.decode("ascii", "replace"),
                (_arg_after(argv, b"state") or b"?").decode("ascii", "replace"),
            )  # fmt: skip
        self._importing_now = bytearray(16384)
        for ranges in self.imports.values():
            for lo, hi in ranges:
                self._importing_now[lo : hi + 1] = b"\x01" * (hi - lo + 1)

    def imported_copy(self, argv: list[bytes]) -> bool:
        """``argv`` writes a key of a slot being imported atomically (see slot_sync)."""
        keys = command_keys(argv)
        return bool(keys) and bool(self._importing_now[key_slot(keys[0])])

    def _exists(self, where: str, keys: list[bytes]) -> list:
        conn = self._conns.get(where)
        if conn is None:
            host, port = parse_address(where)
            conn = self._conns[where] = Connection(host, port, io_timeout=10.0, **self.conn_kw)
        try:
            # ASKING: a node still importing the slot answers for it (one EXISTS per key)
            cmds: list[tuple] = []
            for k in keys:
                cmds += [("ASKING",), ("EXISTS", k)]
            return conn.pipeline(cmds)[1::2]
        except (ConnError, OSError):
            self._conns.pop(where, None)
            conn.close()
            raise

    def filter(self, entry: Entry, received_by: float) -> Entry | None:
        """``entry`` (a DEL or UNLINK received no later than ``received_by``, a monotonic
        time), possibly without the keys the new owner holds; None: nothing left to apply."""
        keys = entry.argv[1:]
        if not keys:
            return entry
        slot = key_slot(keys[0])
        if self._read_at < received_by:
            self._refresh()
        if self._mine[slot] or slot in self._importing:  # (an importing node's own writes)
            return entry
        where = self._owner.get(slot)
        if where is None:  # nobody owns the slot: nothing can hold a newer copy
            return entry
        self.on_moved_out(entry.offset, slot, len(keys), where)
        replies = self._patiently(lambda: self._exists(where, keys))
        keep = [k for k, r in zip(keys, replies, strict=True) if r != 1]  # (errors: -ASK ...)
        moved = len(keys) - len(keep)
        if moved:
            self.dropped += moved
            self.on_skip(moved)
            if self.dropped <= 10 or self.dropped % 10000 == 0:
                log.info(
                    "[%s] %s of %d key(s) in slot %d not applied: the slot moved to %s, which "
                    "holds the key (%d such deletions so far)",
                    self.resolver.label, entry.argv[0].decode("ascii", "replace").upper(),
                    moved, slot, where, self.dropped,
                )  # fmt: skip
        if not keep:
            return None
        self.kept += 1
        if moved:
            return Entry(entry.db, [entry.argv[0], *keep], None, entry.offset)
        return entry


# a RESTORE-ASKING waits at most this long for its old owner's deletion; a wait for the
# other shards' streams (by offset) is not cut short: it is reported at this interval
HANDOVER_WAIT = 10.0
STATE_EVERY = 0.25  # seconds between two looks at the shard's slots (while following)
NEVER = float("inf")
SLOTS = 16384
LANES = 16  # copies are counted per importing shard, in this many lanes (shard index % LANES)


def _addr_key(address: str) -> int:
    return zlib.crc32(address.encode()) + 1


class Handover:
    """Cross-shard order for slots that move into a shard while it is followed.

    Two records are shared between the shard processes (see shards.py):

    * ``counts``: per slot, how many keys the old owners' ``MIGRATE`` deletions removed (a
      shard adds them once everything before the deletion in its stream is applied to the
      target), and how many ``RESTORE-ASKING`` the new owners applied. The n-th
      ``RESTORE-ASKING`` of a slot waits until n keys of it were deleted that way: the key's
      last writes on its old owner precede its deletion there, so they are on the target
      before the copy.
    * ``offsets``: the source offset up to which each shard applied its stream. A command
      on a slot this shard did not own from the start (it imports it, or owns it since
      recently) waits for a *fence*: every other shard's master's replication offset, read
      after the command was received here, applied by that shard. Whatever another master
      wrote to the key before the command ran here lies at or before that offset of its
      stream — whatever the delays of the two streams. A slot counts as settled — no more
      waiting — once a fence read after it was first seen owned here is applied (an
      atomic import's slots: once its ``FINISH`` waited for the old owner's stream). While no slot
      moves, nothing is checked.
    * ``marks``: each shard's watermark (a monotonic time: NEVER once the shard ended), and
      the time its held command was received: of shards waiting for one another, the one
      whose command was received first goes.
    """

    def __init__(self, guard: MigrationGuard, marks, counts, addrs, index: int,
                 ranges: list[tuple[int, int]], offsets=None) -> None:  # fmt: skip
        self.guard = guard
        # per shard: [source offset applied (-1: none)] + [1 + index of the shard it waits for]
        self.offsets = offsets if offsets is not None else [-1] * len(addrs) + [0] * len(addrs)
        self.addrs = addrs  # per shard: a hash of the address of its master (0: none)
        self.lane = index % LANES
        # [watermark of each shard (NEVER: unused / ended)] + [the moment it waits for (0: not)]
        self.marks = marks
        # per lane (importing shard): [keys moved out of each slot] + [copies applied]
        self.counts = counts
        self.index = index
        self.settled = bytearray(SLOTS)
        for lo, hi in ranges:
            self.settled[lo : hi + 1] = b"\x01" * (hi - lo + 1)
        self.since: dict[int, float] = {}  # slot owned here, not settled -> first seen owned
        self.importing: set[int] = set()
        self.migrated: set[int] = set()  # slots whose keys came by RESTORE-ASKING (MIGRATE)
        # Valkey atomic imports seen in this stream: job name -> (source node id, slot ranges)
        self.atomic: dict[bytes, tuple[str, list[tuple[int, int]]]] = {}
        self.atomic_now = bytearray(SLOTS)  # slots of those imports (their copy: never held)
        self.barriers = 0
        self.fence: tuple[float, list[tuple[int, int]]] | None = None  # (read at, need)
        self.active = False
        self.waits = 0
        self.waited = 0.0
        self._next_state = 0.0
        # moved-out deletions handed to the writer: (stream offset, slot, keys), published
        # in ``counts`` once applied
        self.moved_out: deque[tuple[int, int, int]] = deque()
        guard.on_moved_out = self._moved_out
        self._reader = None

    # -- publishing (publisher thread) -------------------------------------------------

    def publish(self, reader) -> None:
        mark = watermark(reader)
        if mark is not None:
            self.marks[self.index] = mark
        self.addrs[self.index] = _addr_key(self.guard.resolver.address)
        pending = self.moved_out
        applied = reader.applied
        self.offsets[self.index] = applied if reader.phase == "aof" else -1
        while pending and pending[0][0] <= applied:
            _off, at, n = pending.popleft()
            self.counts[at] += n

    def _moved_out(self, offset: int, slot: int, n: int, where: str) -> None:
        """A deletion of ``n`` keys of ``slot``, which now belongs to ``where``: counted for
        the shard following ``where`` (none yet: its snapshot will hold the keys)."""
        reader = self._reader
        key = _addr_key(where)
        addrs = self.addrs
        lane = next((j % LANES for j in range(len(addrs)) if addrs[j] == key), None)
        if reader is None or lane is None:
            return
        off = offset % EPOCH_SPAN if offset >= 0 else reader._yielded_upto
        self.moved_out.append((off, lane * 2 * SLOTS + slot, n))

    def _met(self, need: list[tuple[int, int]]) -> bool:
        """Every shard of ``need`` applied its stream up to its offset there (or ended)."""
        offsets, marks = self.offsets, self.marks
        return all(offsets[j] >= off or marks[j] == NEVER for j, off in need)

    def _new_fence(self, patient: bool = True) -> tuple[float, list[tuple[int, int]]] | None:
        """A fence read now: every other shard's master's replication offset (None: the
        cluster did not answer, and not ``patient``)."""
        at = time.monotonic()
        need = self._barrier("", patient)
        if need is None:
            return None
        self.fence = fence = (at, need)
        return fence

    # -- slot state --------------------------------------------------------------------

    def look(self) -> bool:
        """Read the shard's slots (at most every STATE_EVERY seconds): which slots it
        imports, which it owns that it did not own at the start. True: read now."""
        now = time.monotonic()
        if now < self._next_state:
            return False
        self._next_state = now + STATE_EVERY
        g = self.guard
        try:
            g._read_state()
        except (ConnError, OSError) as e:
            log.debug("slot state: %s", e)
            return False
        self.importing = set(g._importing)
        seen = time.monotonic()  # (the slots below were ours before this moment)
        for s in range(SLOTS):
            if g._mine[s] and not self.settled[s] and s not in self.since:
                self.since[s] = seen
        if self.since:
            fence = self.fence
            if fence is None or fence[0] < max(self.since.values()):
                fence = self._new_fence(patient=False)
            if fence is not None and self._met(fence[1]):
                for s, t in list(self.since.items()):
                    if t <= fence[0] and s not in self.importing:
                        self.settled[s] = 1
                        del self.since[s]
        self.active = bool(self.since or self.importing)
        return True

    # -- the gate (pipeline thread) ----------------------------------------------------

    def batches(self, batches, reader, writer):
        """``batches`` (of the sync reader), held back where needed: a batch is cut before
        a command that must wait; the part before goes first (as a batch of its own, with
        its own position), then the rest waits."""
        self._reader = reader
        it = iter(batches)
        while True:
            before = reader._yielded_upto, reader._last_entry_off  # all handed over so far
            try:
                batch = next(it)
            except StopIteration:
                return
            if not batch or reader.phase != "aof":
                yield batch
                continue
            after = reader._yielded_upto, reader._last_entry_off
            while batch:
                cut, wait = self._first_held(batch, reader)
                if wait is None:
                    break
                if cut > 0:  # the part before goes first, as if the reader had stopped there
                    end = batch[cut - 1].offset % EPOCH_SPAN
                    reader._yielded_upto = reader._last_entry_off = end
                    yield [e.entry if e.__class__ is _Passed else e for e in batch[:cut]]
                    reader._yielded_upto, reader._last_entry_off = after
                    if reader._rewind:  # the target connection broke: the reader sends again
                        batch = []
                        break
                    batch = batch[cut:]
                    before = end, end
                # what precedes is applied: our own watermark (and counts) can advance
                reader._yielded_upto, reader._last_entry_off = before
                try:
                    writer.flush()
                    reader.acked(writer.acked_offset)
                finally:
                    reader._yielded_upto, reader._last_entry_off = after
                self._hold(wait)
                batch[0] = _Passed(batch[0])  # (its wait is over)
            if batch:
                yield [e.entry if e.__class__ is _Passed else e for e in batch]

    def _first_held(self, batch, reader):
        """(where the batch can be cut before its first command that must wait — only after
        a command that ends at a known offset —, what to wait for); (0, None): nothing."""
        self.look()
        if not self.active and not _movers(batch):
            return 0, None
        self.active = True
        settled = self.settled
        counts = self.counts
        base = self.lane * 2 * SLOTS
        cut = 0
        for i, e in enumerate(batch):
            passed = e.__class__ is _Passed
            if passed:
                e = e.entry
            argvs = e.argvs if e.__class__ is Run else (e.argv,)
            for argv in argvs:
                keys = command_keys(argv)
                if not keys:
                    if len(argv) > 2 and len(argv[0]) == 7 and argv[0].lower() == b"cluster":
                        job = self._slot_sync(argv, passed)
                        if job is not None:  # the end of an atomic import: see _barrier
                            return cut, ("finish", job, reader.received_by(e.offset))
                    continue
                slot = key_slot(keys[0])
                if self.atomic_now[slot]:
                    continue  # (the import's copy: never applied, see MigrationGuard.slot_sync)
                restore = _restore_asking(e)
                if restore:
                    self.migrated.add(slot)
                if not passed:
                    if restore and counts[base + slot] <= counts[base + SLOTS + slot]:
                        return cut, ("count", slot, reader.received_by(e.offset))
                    # (a slot moved key by key is ordered by the counts alone)
                    if not settled[slot] and slot not in self.migrated:
                        received = reader.received_by(e.offset)
                        fence = self.fence
                        if fence is None or fence[0] < received or not self._met(fence[1]):
                            return cut, ("fence", received, received)
                if restore:  # (counted once: when it goes)
                    counts[base + SLOTS + slot] += 1
                # (every command of a run is looked at: the run waits whole)
            if e.offset >= 0:
                cut = i + 1
        return 0, None

    def _slot_sync(self, argv: list[bytes], passed: bool) -> bytes | None:
        """A ``CLUSTER SYNCSLOTS`` of this shard's stream, seen by the gate: the job name of
        a successful ``FINISH`` that has not waited yet (it must: see _barrier), else None."""
        if argv[1].lower() != b"syncslots":
            return None
        op = argv[2].lower()
        name = _arg_after(argv, b"name")
        if op == b"establish":
            self.atomic[name] = (_arg_after(argv, b"source").decode("ascii", "replace"), _slot_ranges(argv))
        elif op == b"finish":
            success = _arg_after(argv, b"state").lower() in (b"success", b"")
            if not passed and success:
                return name
            _src, ranges = self.atomic.pop(name, ("", []))
            if success:  # everything the old owner wrote to the slots is on the target
                for lo, hi in ranges:
                    self.settled[lo : hi + 1] = b"\x01" * (hi - lo + 1)
                    for s in range(lo, hi + 1):
                        self.since.pop(s, None)
        else:
            return None
        self.atomic_now = bytearray(SLOTS)
        for _src, ranges in self.atomic.values():
            for lo, hi in ranges:
                self.atomic_now[lo : hi + 1] = b"\x01" * (hi - lo + 1)
        return None

    def _barrier(self, source: str, patient: bool = True) -> list[tuple[int, int]] | None:
        """(shard index, source offset) for the old owner ``source`` (a node id; every other
        master when unknown): its master's replication offset, read now. An atomic import
        ends (``FINISH`` in this stream) after its new owner took the slots over, and the
        old owner writes nothing to them once it knows — it pauses writes until then — so
        everything it wrote to the slots lies at or before that offset of its stream.
        Not ``patient``: None at once when the cluster does not answer."""
        g = self.guard
        r = g.resolver
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                _, nodes = cluster_view([r.address, *r.seeds], g.conn_kw)
                break
            except ConnError as e:
                if not patient:
                    log.debug("fence: %s", e)
                    return None
                if time.monotonic() > deadline:
                    log.warning("[%s] the source cluster cannot be asked (%s): a command of a moved "
                                "slot does not wait for the other shards", r.label, e)  # fmt: skip
                    return []
                time.sleep(0.5)
        masters = [n for n in nodes if n.is_master and n.usable]
        picked = [n for n in masters if n.id == source] or masters
        addrs = self.addrs
        out = []
        for n in picked:
            key = _addr_key(n.address)
            j = next((j for j in range(len(addrs)) if addrs[j] == key), None)
            if j is None or j == self.index:
                continue  # (a master no shard process of ours follows)
            host, port = parse_address(n.address)
            try:
                with Connection(host, port, io_timeout=10.0, **g.conn_kw) as c:
                    offset = read_info(c, "replication").get("master_repl_offset")
            except (ConnError, OSError, ReplyError) as e:
                log.warning("[%s] cannot read the replication offset of %s (%s): its writes to "
                            "a moved slot are not waited for", r.label, n.address, e)  # fmt: skip
                continue
            if offset is not None:
                out.append((j, int(offset)))
        return out

    def _first_in_ring(self, j: int) -> bool:
        """Shards waiting for one another in a ring (this one waits for ``j``, ``j`` for ...,
        back to this one): True when this one goes first — the one whose held command was
        received first."""
        offsets = self.offsets
        n = len(offsets) // 2
        ring = [self.index]
        k = j
        for _ in range(n):
            if k == self.index:
                break
            ring.append(k)
            k = offsets[n + k] - 1
            if k < 0:
                return False
        else:
            return False
        marks = self.marks
        m = len(marks) // 2
        me = (marks[m + self.index], self.index)
        return all(me <= (marks[m + k] or NEVER, k) for k in ring)

    def _wait_for(self, need: list[tuple[int, int]], received: float, what: str) -> float:
        """Hold this shard's stream until every shard of ``need`` applied its own stream up
        to its offset there (or ended); ``received``: when the held command arrived. Of
        shards waiting for one another, the one whose command arrived first goes. Returns
        the seconds waited."""
        t0 = warned = time.monotonic()
        offsets, marks = self.offsets, self.marks
        n, m = len(offsets) // 2, len(marks) // 2
        marks[m + self.index] = received
        try:
            while True:
                late = [(j, off) for j, off in need if offsets[j] < off and marks[j] != NEVER]
                if not late:
                    break
                j, off = late[0]
                offsets[n + self.index] = j + 1
                if self._first_in_ring(j):
                    break
                if time.monotonic() - warned > HANDOVER_WAIT:
                    warned = time.monotonic()
                    log.warning(
                        "[%s] %s: still waiting (%.0fs) for shard %d to apply its stream up to "
                        "offset %d (it is at %d)", self.guard.resolver.label, what, warned - t0,
                        j, off, offsets[j],
                    )  # fmt: skip
                time.sleep(0.002)
        finally:
            offsets[n + self.index] = 0
            marks[m + self.index] = 0.0
        waited = time.monotonic() - t0
        self.waits += 1
        self.waited += waited
        return waited

    def _hold(self, wait) -> None:
        kind, value, received = wait
        if kind == "finish":  # the end of an atomic import: the old owner's writes first
            job = value.decode("ascii", "replace")
            t0 = time.monotonic()
            need = self._barrier(self.atomic.get(value, ("", []))[0]) or []
            self._wait_for(need, received, f"atomic slot import {job} ended")
            self.barriers += 1
            log.info(
                "[%s] atomic slot import %s: its new owner's writes follow the old owner's "
                "(%s) after %.3fs", self.guard.resolver.label, job,
                ", ".join(f"shard {j} applied its stream up to offset {off}" for j, off in need)
                or "no other shard followed", time.monotonic() - t0,
            )  # fmt: skip
            return
        if kind == "fence":  # a slot new to this shard: the other shards' writes first
            fence = self.fence
            if fence is None or fence[0] < received:
                fence = self._new_fence()
            assert fence is not None
            self._wait_for(fence[1], received, "a command of a slot new to this shard")
            return
        # "count": the n-th RESTORE-ASKING of a slot waits for the n-th MIGRATE deletion
        t0 = time.monotonic()
        base = self.lane * 2 * SLOTS
        n = len(self.marks) // 2
        self.marks[n + self.index] = received
        try:
            while self.counts[base + value] <= self.counts[base + SLOTS + value]:
                if time.monotonic() - t0 > HANDOVER_WAIT:
                    log.warning(
                        "[%s] a RESTORE-ASKING of moved slot %s waited %.0fs for its old owner's "
                        "deletion (%d keys deleted, %d copies applied): applied now, its order is "
                        "not guaranteed", self.guard.resolver.label, value, HANDOVER_WAIT,
                        self.counts[base + value], self.counts[base + SLOTS + value],
                    )  # fmt: skip
                    break
                time.sleep(0.002)
        finally:
            self.marks[n + self.index] = 0.0
        self.waits += 1
        self.waited += time.monotonic() - t0


class _Passed:
    """An entry that waited already (not checked again)."""

    __slots__ = ("entry", "offset")

    def __init__(self, entry) -> None:
        self.entry = entry
        self.offset = entry.offset


def _movers(batch) -> bool:
    """``batch`` has a ``RESTORE-ASKING`` or a ``CLUSTER`` command (SYNCSLOTS)."""
    for e in batch:
        if e.__class__ is Run or e.__class__ is _Passed:
            continue
        a0 = e.argv[0]
        n = len(a0)
        if (n == 14 and a0.lower() == b"restore-asking") or (n == 7 and a0.lower() == b"cluster"):
            return True
    return False


def _slot_ranges(argv: list[bytes]) -> list[tuple[int, int]]:
    """The ranges after ``SLOTSRANGE`` of a ``CLUSTER SYNCSLOTS ESTABLISH``."""
    ranges = []
    try:
        i = [a.lower() for a in argv].index(b"slotsrange") + 1
    except ValueError:
        return ranges
    while i + 1 < len(argv) and argv[i].isdigit() and argv[i + 1].isdigit():
        ranges.append((int(argv[i]), int(argv[i + 1])))
        i += 2
    return ranges


def _restore_asking(e) -> bool:
    return e.__class__ is not Run and e.__class__ is not _Passed and len(e.argv[0]) == 14 and (
        e.argv[0].lower() == b"restore-asking"
    )


def watermark(reader) -> float | None:
    """A monotonic time before which everything ``reader`` received has been applied (0:
    not streaming yet)."""
    now = time.monotonic()
    ep = reader._ep
    if ep is None or reader.phase != "aof":
        return 0.0
    applied = reader.applied
    if applied >= ep.received:
        return now
    try:
        for got, when in reversed(reader._rx_samples):
            if got <= applied:
                return when
    except RuntimeError:  # (appended meanwhile by the pipeline thread: next time)
        return None
    return 0.0


def _arg_after(argv: list[bytes], word: bytes) -> bytes:
    low = [a.lower() for a in argv]
    return argv[low.index(word) + 1] if word in low and low.index(word) + 1 < len(argv) else b""
