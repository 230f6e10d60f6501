"""One source node of the ``[scan_reader]``: SCAN + DUMP/PTTL, keyspace events, flush detection.

A :class:`NodeScanner` runs in its own thread. It owns two connections to its node: the
*data* connection (SCAN, DUMP, PTTL, TYPE, INFO) and, with ``ksn``, the *events* connection
(PSUBSCRIBE). Keys to copy wait in a de-duplicating ``pending`` dict ``(db, key) -> action``:

* ``SCAN``: found by the scan; copied with the configured ``rdb_restore_command_behavior``
  and skipped when it vanished before the DUMP;
* ``DUMP``: changed on the source (event or re-scan); copied with ``REPLACE``, and deleted on
  the target when the DUMP finds it gone;
* ``DEL``: deleted on the source (``del``, ``expired``, ``evicted``, ``rename_from``,
  ``move_from``); deleted on the target without asking the source.

A later event for a pending key replaces its action (the newest event describes the key best)
and keeps its place. ``pending`` is bounded: when full, the events connection is simply not
read (backpressure); if the source then kills it (``client-output-buffer-limit pubsub``) this
is logged as an error, the subscription is re-established and every db is scanned again.
"""

from __future__ import annotations

import logging
import queue
import select
import threading
import time
from collections import Counter
from itertools import islice

from ..entry import KEYLESS_ALL_MASTERS, Entry
from ..rdb import records as R
from ..rdb.parser import read_key_meta
from ..rdb.primitives import RdbError, crc64
from ..rdb.walk import SHORT
from ..resp.conn import Connection, ConnError, ReplyError
from ..resp.server import command_calls, keyspace_counts, parse_info

log = logging.getLogger("redshake")

__all__ = ["NodeScanner", "ScanError", "SCAN", "DUMP", "DEL"]

SCAN, DUMP, DEL = 0, 1, 2

# keyevent names that mean "the key is gone from this db"
_GONE = frozenset((b"del", b"expired", b"evicted", b"rename_from", b"move_from"))
# events that say nothing about the value
_IGNORED = frozenset((b"new", b"keymiss"))

DUMP_BATCH = 128  # keys per DUMP pipeline
RECONNECT_S = 60.0  # how long a lost source connection is retried before giving up
FLUSH_POLL_S = 0.5  # how often INFO commandstats is read to detect FLUSHDB/FLUSHALL/SWAPDB
_STAT_CMDS = ("flushdb", "flushall", "swapdb")


class SeenFilter:
    """A Bloom filter of (db, key): the keys this run already wrote during the first scan.

    SCAN may return a key twice (the table was resized between calls), and an event may write
    a key before the scan reaches it. Such keys are written again with REPLACE, so that
    ``rdb_restore_command_behavior = panic/skip`` only concerns keys the target had before the
    run. About 16 bits per key and 6 probes: ~0.1% false positives, each of which means a key
    that already existed on the target is replaced instead of failing/being skipped.
    """

    __slots__ = ("bits", "mask")

    def __init__(self, expected: int) -> None:
        nbits = 1 << 23
        while nbits < expected * 16:
            nbits <<= 1
        self.mask = nbits - 1
        self.bits = bytearray(nbits >> 3)

    def check_add(self, db: int, key: bytes) -> bool:
        """Add the key; True when it was (probably) there already."""
        h = hash((db, key)) & 0xFFFFFFFFFFFFFFFF
        a, b = h & 0xFFFFFFFF, (h >> 32) | 1
        bits, mask = self.bits, self.mask
        present = True
        for i in range(6):
            p = (a + i * b * 0x9E3779B1) & mask
            byte, bit = p >> 3, 1 << (p & 7)
            if not bits[byte] & bit:
                present = False
                bits[byte] |= bit
        return present


class ScanError(Exception):
    """A condition that stops the scan reader (logged by the pipeline, exit code 1)."""


def payload_record(db: int, key: bytes, payload: bytes, expire_ms: int) -> tuple[R.KeyValue, int]:
    """A DUMP payload (``type | value | version u16 LE | CRC64 u64 LE``) as a parser record,
    with the payload's RDB version. The checksum is verified."""
    if len(payload) < 11:
        raise RdbError(f"DUMP payload of {len(payload)} bytes is too short", key=key)
    body = payload[:-8]
    stored = int.from_bytes(payload[-8:], "little")
    if stored and crc64(body) != stored:
        raise RdbError("DUMP payload checksum mismatch", key=key)
    version = int.from_bytes(payload[-10:-8], "little")
    t, start = payload[0], 1
    if t == 0xF3 and 13 <= version < 80:  # Redis 8.6+ key metadata before the type byte
        try:
            _, start = read_key_meta(body, 0, f"the DUMP payload (RDB {version})")
        except RdbError as e:
            raise RdbError(e.message, key=key) from None
        except SHORT:
            raise RdbError("DUMP payload: truncated key metadata", key=key) from None
        if start >= len(body) - 2:
            raise RdbError("DUMP payload ends after its key metadata", key=key)
        t, start = body[start], start + 1
    return R.KeyValue(db, key, t, payload[start:-10], expire_ms), version


class NodeScanner:
    """Scans one node and follows its keyspace events. Thread-safe views for status only."""

    def __init__(
        self,
        owner,
        index: int,
        address: str,
        conn: Connection,
        connect,
        *,
        dbs: list[int],
        all_dbs: bool,
        scan: bool,
        ksn: bool,
        count: int,
        skip_types: frozenset[bytes],
        max_pending: int,
        key_counts: dict[int, int],
        cluster_source: bool,
    ) -> None:
        self.owner = owner  # the ScanReader: converters, output queue, shared stop flags
        self.index = index
        self.address = address
        self.name = "reader_" + address.replace("[", "").replace("]", "").replace(":", "_")
        self.conn = conn
        self.connect = connect  # () -> new Connection to this node
        self.dbs = dbs
        self.all_dbs = all_dbs
        self.db_set = frozenset(dbs)
        self.do_scan = scan
        self.ksn = ksn
        self.count = count
        self.skip_types = skip_types
        self.max_pending = max_pending
        self.cluster_source = cluster_source
        self.sub: Connection | None = None
        self.cur_db = -1
        self.pending: dict[tuple[int, bytes], int] = {}
        # scan state: queue of (db, action), current db/cursor
        self.scan_queue: list[tuple[int, int]] = [(db, SCAN) for db in dbs] if scan else []
        self.scan_db = -1
        self.scan_action = SCAN
        self.cursor = 0
        self.initial_scan = bool(self.scan_queue)
        self.pass_total = sum(key_counts.get(db, 0) for db in dbs)
        # keys written during the first scan (only needed when existing keys are not replaced)
        self.seen: SeenFilter | None = (
            SeenFilter(self.pass_total) if self.initial_scan and owner.ctx.behavior != "rewrite" else None
        )
        self.seen_drain = 0
        self.pass_done = 0
        self.key_counts = key_counts
        self.calls: dict[str, int] | None = None
        self.gone: Counter[int] = Counter()  # keys-gone events per db since the last poll
        self.last_poll = 0.0
        self.rescan_requests: queue.SimpleQueue[tuple[list[int], str]] = queue.SimpleQueue()
        # counters
        self.keys_scanned = 0
        self.keys_dumped = 0
        self.deleted = 0
        self.events = 0
        self.events_ignored = 0
        self.backpressure = 0
        self.lost_subscriptions = 0
        self.subscriptions = 0
        self.reconnects = 0
        self.rescans = 0
        self.flushes = 0
        self.flush_unattributed = 0
        self.skipped: Counter[str] = Counter()
        self.complete = False
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    # -- status (read from other threads; plain attribute reads) -----------------------------

    @property
    def scan_finished(self) -> bool:
        return self.scan_db < 0 and not self.scan_queue

    def percent(self) -> float:
        if self.scan_finished:
            return 100.0
        if self.pass_total <= 0:
            return 0.0
        return min(99.99, 100.0 * self.pass_done / self.pass_total)

    def status(self) -> dict:
        return {
            "name": self.name,
            "address": self.address,
            "scan_finished": self.scan_finished,
            "scan_dbId": max(self.scan_db, 0),
            "scan_cursor": self.cursor,
            "scan_percent": f"{self.percent():.2f}%",
            "need_update_count": len(self.pending),
            "keys_scanned": self.keys_scanned,
            "keys_dumped": self.keys_dumped,
            "keys_deleted": self.deleted,
            "events_received": self.events,
            "events_dropped": 0,
            "subscription_lost": self.lost_subscriptions,
            "subscriptions": self.subscriptions,
            "reconnects": self.reconnects,
            "rescans": self.rescans,
            "flushes_applied": self.flushes,
        }

    def status_line(self) -> str:
        if self.scan_finished:
            return f"need_update_count=[{len(self.pending)}]"
        return (
            f"scan_dbid=[{max(self.scan_db, 0)}], scan_percent=[{self.percent():.2f}%], "
            f"need_update_count=[{len(self.pending)}]"
        )

    def consistent(self) -> bool:
        return self.scan_finished and not self.pending

    # -- thread body ------------------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"scan-{self.address}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # handed to the main thread, which stops the run
            self.error = e
            self.owner.out_put(("error", e, self))
            return
        self.owner.out_put(("done", None, self))

    def _loop(self) -> None:
        owner = self.owner
        if self.ksn:
            self._subscribe()
            self._poll_flush()  # baseline counters before the scan
        if self.do_scan and not self.scan_queue:
            log.info("[%s] scan finished: no db holds keys", self.name)
        while True:
            if owner.abort.is_set():
                return
            stopping = owner.stopping.is_set()
            try:
                self._take_rescan_requests()
                if self.ksn and not stopping:
                    self._read_events(0.0)
                    if time.monotonic() - self.last_poll >= FLUSH_POLL_S:
                        self._poll_flush()
                if not stopping and not self.scan_finished and len(self.pending) < DUMP_BATCH:
                    self._scan_step()
                    continue
                if self.pending and (self.ksn or not stopping):
                    self._dump_batch()
                    continue
            except ConnError as e:
                self._reconnect(e)
                continue
            if stopping or not self.ksn:
                # without ksn: done when the scan and the queue are; with ksn: stopped, queue drained
                self.complete = self.scan_finished and not self.pending
                return
            self._read_events(0.1)

    def _reconnect(self, err: ConnError) -> None:
        """The data connection broke: connect again (the SCAN cursor stays valid) for up to
        RECONNECT_S seconds. A lost event connection is handled by the event reader."""
        log.error("[%s] lost the connection to the source (%s): reconnecting", self.name, err)
        try:
            self.conn.close()
        except OSError:
            pass
        self.cur_db = -1
        deadline = time.monotonic() + RECONNECT_S
        delay = 0.2
        while True:
            if self.owner.abort.is_set():
                return
            try:
                self.conn = self.connect()
                log.info("[%s] reconnected to the source", self.name)
                self.reconnects += 1
                return
            except ConnError as e:
                if time.monotonic() > deadline:
                    raise ScanError(f"cannot reconnect to {self.address} for {RECONNECT_S:.0f}s: {e}") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- scanning ---------------------------------------------------------------------------

    def _select(self, db: int) -> None:
        if db != self.cur_db:
            self.conn.call("SELECT", db)
            self.cur_db = db

    def _scan_step(self) -> None:
        if self.scan_db < 0:
            db, action = self.scan_queue[0]
            self.scan_db, self.scan_action, self.cursor = db, action, 0
            self.scan_queue.pop(0)  # after scan_db is set: status never sees a finished scan
            log.info("[%s] scanning db %d%s", self.name, db, "" if action == SCAN else " again")
        db = self.scan_db
        self._select(db)
        try:
            cursor, keys = self.conn.call("SCAN", self.cursor, "COUNT", self.count)
        except ReplyError as e:
            raise ScanError(f"SCAN on {self.address} db {db} failed: {e}") from None
        self.cursor = int(cursor)
        pending = self.pending
        action = self.scan_action
        for k in keys:
            pending.setdefault((db, k), action)
        self.keys_scanned += len(keys)
        self.pass_done += len(keys)
        if self.cursor == 0:
            self.scan_db = -1
            if not self.scan_queue:
                if self.initial_scan:
                    log.info("[%s] scan finished: %d keys", self.name, self.keys_scanned)
                self.initial_scan = False
                # the keys the scan queued are at the front of ``pending``: keep the filter
                # until they have been written
                self.seen_drain = len(self.pending)

    def request_rescan(self, dbs: list[int], why: str) -> None:
        """Scan these dbs again (thread-safe: applied by the node's own thread)."""
        self.rescan_requests.put((dbs, why))

    def _take_rescan_requests(self) -> None:
        dbs: set[int] = set()
        whys: dict[str, None] = {}
        while True:
            try:
                d, why = self.rescan_requests.get_nowait()
            except queue.Empty:
                break
            dbs.update(d)
            whys[why] = None
        if dbs:  # requests that arrived together make one new pass
            self._rescan(sorted(dbs), ", ".join(whys))

    def _rescan(self, dbs: list[int], why: str) -> None:
        if not self.do_scan and not self.ksn:
            return
        self.rescans += 1
        log.warning("[%s] scanning db %s again: %s", self.name, ",".join(map(str, dbs)), why)
        if self.scan_finished:
            self.pass_total = 0
            self.pass_done = 0
        for db in dbs:
            self.pass_total += self.key_counts.get(db, 0)
            if db == self.scan_db:
                self.cursor = 0  # restart the db being scanned, now replacing keys
                self.scan_action = DUMP
                continue
            self.scan_queue = [(d, a) for d, a in self.scan_queue if d != db]
            self.scan_queue.append((db, DUMP))

    # -- DUMP -------------------------------------------------------------------------------

    def _dump_batch(self) -> None:
        pending = self.pending
        owner = self.owner
        todo = [(k, pending.pop(k)) for k in list(islice(pending, DUMP_BATCH))]
        cmds: list[tuple] = []
        asked: list[tuple[int, bytes, int]] = []
        out: list = []  # entries, and (record, payload version, replace) to convert
        cur_db = self.cur_db
        with_type = bool(self.skip_types)
        seen = self.seen
        if seen is not None and not self.initial_scan:
            self.seen_drain -= len(todo)
            if self.seen_drain < 0:
                self.seen = None
        for (db, key), action in todo:
            if seen is not None and seen.check_add(db, key) and action == SCAN:
                action = DUMP  # written before by this run: replace it
            if action == DEL:
                out.append(Entry(db, [b"DEL", key], key))
                self.deleted += 1
                continue
            if db != cur_db:
                cmds.append((b"SELECT", db))
                cur_db = db
            cmds.append((b"DUMP", key))
            cmds.append((b"PTTL", key))
            if with_type:
                cmds.append((b"TYPE", key))
            asked.append((db, key, action))
        if cmds:
            now_ms = int(time.time() * 1000)
            try:
                replies = self.conn.pipeline(cmds)
            except ConnError:
                for k, a in todo:  # newer events for these keys win
                    pending.setdefault(k, a)
                self.deleted -= sum(1 for _k, a in todo if a == DEL)
                raise
            self.cur_db = cur_db
            i = 0
            for db, key, action in asked:
                if cmds[i][0] == b"SELECT":
                    if isinstance(replies[i], ReplyError):
                        raise ScanError(f"SELECT {db} failed on {self.address}: {replies[i]}")
                    i += 1
                payload, pttl = replies[i], replies[i + 1]
                typ = replies[i + 2] if with_type else None
                i += 3 if with_type else 2
                if typ is not None and not isinstance(typ, ReplyError) and typ in self.skip_types:
                    self.skipped["skip_unknown_type"] += 1
                    continue
                if isinstance(payload, ReplyError):
                    raise ScanError(
                        f"DUMP of key {key!r} (db {db}) failed on {self.address}: {payload.message}"
                        + (f" (type {typ.decode('utf-8', 'replace')}; list it in skip_unknown_type "
                           "to skip such keys)" if isinstance(typ, bytes) else "")
                    )  # fmt: skip
                if isinstance(pttl, ReplyError):
                    raise ScanError(f"PTTL of key {key!r} (db {db}) failed on {self.address}: {pttl}")
                if payload is None or pttl == -2:
                    if action == SCAN:
                        self.skipped["vanished"] += 1
                    else:
                        out.append(Entry(db, [b"DEL", key], key))
                        self.deleted += 1
                    continue
                expire = -1 if pttl == -1 else now_ms + max(int(pttl), 1)
                rec, version = payload_record(db, key, payload, expire)
                # converted by the pipeline's thread (it may ask the target synchronously)
                out.append((rec, version, action != SCAN))
                self.keys_dumped += 1
        if out:
            owner.out_put(out)

    # -- keyspace events --------------------------------------------------------------------

    def _subscribe(self) -> None:
        sub = self.connect()
        if self.all_dbs:
            patterns = [b"__keyevent@*__:*"]
        else:
            patterns = [b"__keyevent@%d__:*" % db for db in self.dbs]
        sub.send(b"".join(_encode_cmd([b"PSUBSCRIBE", p]) for p in patterns))
        for _ in patterns:
            r = sub.read_reply()
            if isinstance(r, ReplyError):
                sub.close()
                raise ScanError(f"PSUBSCRIBE on {self.address} failed: {r.message}")
        self.sub = sub
        log.info("[%s] subscribed to keyspace events: %s", self.name,
                 ", ".join(p.decode() for p in patterns))  # fmt: skip
        self.subscriptions += 1

    def _read_events(self, timeout: float) -> None:
        sub = self.sub
        if sub is None:
            return
        reader = sub.reader
        pending = self.pending
        waited = timeout <= 0
        try:
            while len(pending) < self.max_pending:
                msg = reader.gets()
                if msg is False:
                    if not sub.readable():
                        if waited:
                            return
                        waited = True
                        select.select([sub.sock], [], [], timeout)
                        continue
                    sub.fill()
                    continue
                self._on_message(msg)
            self.backpressure += 1
            if self.backpressure == 1 or self.backpressure % 1000 == 0:
                log.warning(
                    "[%s] %d keys waiting to be copied: not reading keyspace events until the "
                    "queue shrinks (the source buffers them meanwhile)",
                    self.name, len(pending),
                )  # fmt: skip
        except ConnError as e:
            self._subscription_lost(str(e))

    def _on_message(self, msg) -> None:
        if not isinstance(msg, list) or len(msg) < 4 or msg[0] != b"pmessage":
            return
        channel, key = msg[2], msg[3]
        # __keyevent@<db>__:<event>
        end = channel.find(b"__:", 11)
        if end < 0:
            return
        try:
            db = int(channel[11:end])
        except ValueError:
            return
        self.events += 1
        event = channel[end + 3 :]
        if not self.all_dbs and db not in self.db_set:
            if event in _GONE:
                self.gone[db] += 1
            return
        if event in _IGNORED:
            self.events_ignored += 1
            return
        if event in _GONE:
            self.gone[db] += 1
            self.pending[(db, key)] = DEL
        else:
            self.pending[(db, key)] = DUMP

    def _subscription_lost(self, why: str) -> None:
        self.lost_subscriptions += 1
        log.error(
            "[%s] the keyspace-event connection was closed (%s) - usually the source's "
            "client-output-buffer-limit for pubsub clients was exceeded. Events were LOST: "
            "re-subscribing and scanning every db again; keys deleted on the source meanwhile "
            "may remain on the target",
            self.name, why,
        )  # fmt: skip
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        delay = 0.2
        deadline = time.monotonic() + RECONNECT_S
        while not self.owner.abort.is_set() and not self.owner.stopping.is_set():
            try:
                self._subscribe()
                break
            except ConnError as e:
                if time.monotonic() > deadline:
                    raise ScanError(f"cannot subscribe again on {self.address} for {RECONNECT_S:.0f}s: {e}") from None
                log.error("[%s] cannot re-subscribe: %s; retrying", self.name, e)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._rescan(self._known_dbs(), "keyspace events were lost")

    def _known_dbs(self) -> list[int]:
        if self.all_dbs:
            return sorted(set(self.dbs) | set(self.key_counts))
        return list(self.dbs)

    # -- FLUSHDB / FLUSHALL / SWAPDB --------------------------------------------------------

    def _poll_flush(self) -> None:
        """FLUSHDB, FLUSHALL and SWAPDB emit no keyspace event. Their call counters in INFO
        commandstats are watched instead; INFO keyspace tells which dbs lost their keys."""
        self.last_poll = time.monotonic()
        stats, ks = self.conn.pipeline([(b"INFO", b"commandstats"), (b"INFO", b"keyspace")])
        if isinstance(stats, ReplyError) or isinstance(ks, ReplyError):
            raise ScanError(f"INFO on {self.address} failed: {stats if isinstance(stats, ReplyError) else ks}")
        calls = command_calls(parse_info(stats), _STAT_CMDS)
        counts = keyspace_counts(parse_info(ks))
        # events published before INFO ran are (almost always) readable by now: count them in
        self._read_events(0.0)
        gone, self.gone = self.gone, Counter()
        before, self.calls = self.calls, calls
        old_counts, self.key_counts = self.key_counts, counts
        if before is None:
            return
        delta = {n: calls[n] - before[n] if calls[n] >= before[n] else calls[n] for n in calls}
        if not any(delta.values()):
            return
        if delta["flushall"] or delta["swapdb"]:
            dbs = self._known_dbs() if not self.all_dbs else sorted(set(old_counts) | set(counts) | set(self.dbs))
            what = "FLUSHALL" if delta["flushall"] else "SWAPDB"
            self._apply_flush(dbs, flushall=bool(delta["flushall"]) and self.all_dbs, what=what)
            return
        # FLUSHDB: which db? one that lost more keys since the last poll than the del /
        # expired / evicted / rename / move events say (new keys only make the count higher).
        dropped = [db for db, n in old_counts.items() if n - counts.get(db, 0) > gone[db]]
        wanted = [db for db in dropped if self.all_dbs or db in self.db_set]
        if len(dropped) < delta["flushdb"]:
            self.flush_unattributed += 1
            log.warning(
                "[%s] %d FLUSHDB on the source but only %d db(s) lost keys since the last check "
                "(%.1fs): a flushed db that was already empty, or refilled at once, cannot be told "
                "apart; if keys remain on the target that the source no longer has, run the copy "
                "again with empty_db_before_sync",
                self.name, delta["flushdb"], len(dropped), FLUSH_POLL_S,
            )  # fmt: skip
        if wanted:
            self._apply_flush(wanted, flushall=False, what="FLUSHDB")

    def _apply_flush(self, dbs: list[int], *, flushall: bool, what: str) -> None:
        self.flushes += 1
        if flushall:
            entries = [Entry(0, [b"FLUSHALL"], KEYLESS_ALL_MASTERS)]
            log.warning("[%s] %s on the source: FLUSHALL on the target, then scanning again", self.name, what)
        else:
            entries = [Entry(db, [b"FLUSHDB"], KEYLESS_ALL_MASTERS) for db in dbs]
            log.warning("[%s] %s on the source: FLUSHDB of db %s on the target, then scanning again",
                        self.name, what, ",".join(map(str, dbs)))  # fmt: skip
        # Keys already queued for these dbs are re-read by the scan anyway.
        self.owner.out_put(entries)
        self.owner.flushed(self, dbs, what)


def _encode_cmd(argv: list[bytes]) -> bytes:
    from ..resp.encode import encode

    return encode(argv)
