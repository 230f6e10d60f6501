"""``[scan_reader]``: copy with SCAN + DUMP/PTTL, optionally followed by keyspace events (ksn).

One :class:`~.scan_node.NodeScanner` thread per source node (one for a standalone source, one
per master - or per chosen replica with ``prefer_replica`` - for a cluster). Each DUMP payload
is checked (CRC64) and handed to the same converter as the RDB path, so every key is written
the cheapest way the target can load (RESTORE as is, re-stamped, re-encoded, or commands).

What is guaranteed, and what is not:

* without ``ksn`` the copy is a SCAN: keys that exist for the whole scan are copied; keys
  written, changed or deleted during the scan may be missed or copied in an older state;
* with ``ksn`` the subscription is made *before* the scan, every change event re-reads the key
  (a key gone on the source is deleted on the target: del/expired/evicted/rename/move), and
  FLUSHDB/FLUSHALL/SWAPDB - which emit no event - are detected from INFO commandstats and
  applied to the target followed by a new scan. Events are never dropped silently: a lost
  subscription is logged as an error and followed by a full re-scan;
* DUMP and PTTL are two commands: a TTL changed between them can be off by that change; the
  TTL is written as an absolute time (now + PTTL) so the time spent in queues does not count.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections import Counter
from collections.abc import Iterator

from ..entry import KEYLESS_ALL_MASTERS, Entry
from ..errors import SourceError
from ..resp.conn import Connection, ConnError, ReplyError, parse_address
from ..resp.server import ServerInfo, best_replica, cluster_shards, keyspace_counts, read_info
from .base import Capabilities, Reader
from .rdb_entries import RdbToEntries
from .scan_node import NodeScanner, ScanError

log = logging.getLogger("redshake")

__all__ = ["ScanReader", "ScanSourceError", "ScanError", "build", "needed_notify_flags"]

MAX_PENDING = 1_000_000  # keys waiting for a DUMP, per node; events wait in the source beyond
OUT_QUEUE = 64  # batches between the node threads and the pipeline


def _check_target_dbs(dbs: list[int], counts: dict[int, int], limit: int, address: str) -> None:
    """Refuse, before anything is written, a source db holding keys that the target lacks
    (``limit``: the target's number of databases; 0 = unknown, or a filter may drop dbs)."""
    over = [db for db in dbs if counts.get(db, 0) and limit and db >= limit]
    if not over:
        return
    where = (
        "a cluster target serves db 0 only (Valkey 9+ serves more with cluster-databases)"
        if limit == 1
        else f"the target has {limit} databases (cluster-databases / databases)"
    )
    raise ScanSourceError(
        f"the source {address} has keys in db {over[0]}, which cannot be written: {where}; "
        "use [filter] allow_db / a Lua function to remap"
    )


class ScanSourceError(SourceError):
    """The source cannot be used as configured (checked before anything is written; exit 2)."""


_ALL_CLASSES = "g$lshzxetd"  # what 'A' stands for (t: 5.0+, d: modules)


def needed_notify_flags(version: tuple[int, int, int]) -> str:
    """Keyevent notifications for generic commands and every type, expired and evicted."""
    return "Eg$lshzxe" + ("t" if version >= (5, 0, 0) else "")


def missing_notify_flags(value: str, version: tuple[int, int, int]) -> str:
    have = set(value)
    if "A" in have:
        have |= set(_ALL_CLASSES)
    return "".join(c for c in needed_notify_flags(version) if c not in have)


def merged_notify_flags(value: str) -> str:
    """The user's flags plus what ksn needs ('A' + 'E'), keeping K, m, n."""
    return "AE" + "".join(c for c in dict.fromkeys(value) if c in "Kmn")


class ScanReader(Reader):
    caps = Capabilities(progress=True, counters=True)
    """The ``[scan_reader]`` (see the module doc)."""

    def __init__(self, rc, ctx) -> None:
        self.rc = rc
        self.ctx = ctx
        self.name = "scan_reader"
        self.nodes: list[NodeScanner] = []
        self.out: queue.Queue = queue.Queue(maxsize=OUT_QUEUE)
        self.abort = threading.Event()
        self.stopping = threading.Event()
        self._conv: dict[tuple[int, bool], RdbToEntries] = {}
        self._replace_ctx = dataclasses.replace(ctx, behavior="rewrite")
        self._complete = False
        self._line_idx = 0
        self._restore_notify: list[tuple[str, str]] = []  # (address, old value)
        self.skip_types = frozenset(t.encode() for t in rc.skip_unknown_type)
        self.functions: list[bytes] = []  # library code, copied before the first key

    # -- connections ------------------------------------------------------------------------

    def _connect(self, address: str, readonly: bool = False) -> Connection:
        rc = self.rc
        host, port = parse_address(address)
        conn = Connection(host, port, io_timeout=None, **rc.connect_options())
        if readonly:
            conn.call("READONLY")
        return conn

    def _source_address(self) -> str:
        rc = self.rc
        s = rc.sentinel
        if s.enabled:
            from ..resp.server import resolve_from_config

            return resolve_from_config(s, "source master")
        if not rc.address:
            raise ScanSourceError("scan_reader.address is empty")
        return rc.address

    def _cluster_nodes(self, seed: Connection) -> list[tuple[str, str]]:
        """[(master address, address to read from)] for every master holding slots."""
        out = []
        for sh in sorted(cluster_shards(seed, self.rc.tls), key=lambda sh: sh.master.address):
            m = sh.master.address
            read = sh.read_address(self.rc.prefer_replica)
            if self.rc.prefer_replica and read == m:
                log.warning("prefer_replica: master %s has no healthy replica, reading from it", m)
            out.append((m, read))
        return out

    # -- prepare ----------------------------------------------------------------------------

    def prepare(self) -> None:
        rc = self.rc
        if not rc.scan and not rc.ksn:
            raise ScanSourceError("scan_reader: scan = false and ksn = false leaves nothing to do")
        try:
            self._prepare()
        except ConnError as e:
            self.close()
            raise ScanSourceError(f"cannot use the source: {e}") from None
        except ReplyError as e:
            self.close()
            raise ScanSourceError(f"the source refused a command: {e}") from None
        except ScanSourceError:
            self.close()
            raise

    def _prepare(self) -> None:
        from .sync_reader import reach_source

        rc = self.rc
        where = [rc.address]

        def attempt() -> Connection:  # a source never reached is tried again, as sync_reader
            where[0] = self._source_address()
            return self._connect(where[0])

        seed = reach_source(attempt, rc.address or "(sentinel)", float(rc.connect_timeout),
                            self.ctx.stop, self.name, setting="scan_reader.connect_timeout")  # fmt: skip
        address = where[0]
        targets: list[tuple[str, str]]
        if rc.cluster:
            targets = self._cluster_nodes(seed)
            if not targets:
                seed.close()
                raise ScanSourceError(f"{address}: the cluster has no master holding slots")
        else:
            if ServerInfo.from_fields(read_info(seed, "cluster", tolerate=True)).cluster:
                seed.close()
                raise ScanSourceError(
                    f"the source {address} is a node of a cluster: alone it holds only its own "
                    "slots. Set cluster = true in [scan_reader] to copy every shard"
                )
            read = address
            if rc.prefer_replica:
                rep = best_replica(read_info(seed, "replication"))
                if rep:
                    read = rep
                    log.info("prefer_replica: reading from replica %s of %s", rep, address)
                else:
                    log.warning("prefer_replica: %s has no online replica, reading from it", address)
            targets = [(address, read)]
        seed.close()
        explicit = list(dict.fromkeys(rc.dbs))
        for i, (master, read) in enumerate(targets):
            replica = read != master
            conn = self._connect(read, readonly=replica and rc.cluster)
            server = ServerInfo.from_fields(read_info(conn, "server"))
            version, valkey = server.version, server.is_valkey
            counts = keyspace_counts(read_info(conn, "keyspace"))
            dbs = explicit or sorted(counts)
            _check_target_dbs(dbs, counts, self.ctx.options.get("target_databases", 0), read)
            if rc.ksn:
                self._check_notify(conn, read, version)
            if i == 0 and rc.scan and (version >= (7, 0, 0) or valkey):
                self._read_functions(conn, read)
            node = NodeScanner(
                self,
                i,
                read,
                conn,
                (lambda a=read, ro=replica and rc.cluster: self._connect(a, ro)),
                dbs=dbs,
                all_dbs=not explicit,
                scan=rc.scan,
                ksn=rc.ksn,
                count=rc.count,
                skip_types=self.skip_types,
                max_pending=MAX_PENDING,
                key_counts=counts,
                cluster_source=rc.cluster,
            )
            self.nodes.append(node)
            log.info(
                "scan source %s: %s %s, dbs %s (%d keys)%s",
                read,
                "valkey" if valkey else "redis",
                ".".join(map(str, version)),
                ",".join(map(str, dbs)) or "none yet",
                sum(counts.get(db, 0) for db in dbs),
                f" (replica of {master})" if replica else "",
            )
        if rc.ksn:
            log.info(
                "ksn: following keyspace events after the scan until stopped (SIGTERM/SIGINT); "
                "FLUSHDB/FLUSHALL/SWAPDB are detected every %.1fs from INFO commandstats",
                0.5,
            )
        else:
            log.warning(
                "ksn = false: this is a one-pass SCAN. Keys written, changed or deleted on the "
                "source while it runs may be missed or copied in an older state; stop writes "
                "during the copy or set ksn = true for a consistent copy"
            )

    def _read_functions(self, conn: Connection, address: str) -> None:
        """Function libraries (FUNCTION LIST WITHCODE): loaded on the target with
        FUNCTION LOAD REPLACE, which every engine with functions accepts."""
        try:
            libs = conn.call("FUNCTION", "LIST", "WITHCODE")
        except ReplyError as e:
            log.warning("%s: FUNCTION LIST failed (%s): function libraries are not copied", address, e)
            return
        for lib in libs or []:
            d = lib if isinstance(lib, dict) else {lib[j]: lib[j + 1] for j in range(0, len(lib) - 1, 2)}
            code = d.get(b"library_code")
            if code:
                self.functions.append(code)
        caps = self.ctx.caps
        if self.functions and caps.version < (7, 0, 0) and not caps.is_valkey:
            raise ScanSourceError(
                f"the source holds {len(self.functions)} function librar"
                f"{'y' if len(self.functions) == 1 else 'ies'} but the target (version "
                f"{'.'.join(map(str, caps.version))}) has no FUNCTION command"
            )
        if self.functions:
            log.info("%s: %d function libraries will be copied", address, len(self.functions))

    def _check_notify(self, conn: Connection, address: str, version) -> None:
        try:
            r = conn.call("CONFIG", "GET", "notify-keyspace-events")
        except ReplyError as e:
            log.warning(
                "%s: cannot read notify-keyspace-events (%s); make sure it includes 'AE' or no "
                "change will be seen after the scan",
                address, e,
            )  # fmt: skip
            return
        value = ""
        if isinstance(r, list) and len(r) >= 2:
            value = r[1].decode() if isinstance(r[1], bytes) else str(r[1])
        elif isinstance(r, dict):
            v = next(iter(r.values()), b"")
            value = v.decode() if isinstance(v, bytes) else str(v)
        missing = missing_notify_flags(value, version)
        if not missing:
            return
        merged = merged_notify_flags(value)
        if self.rc.ksn_auto_enable:
            conn.call("CONFIG", "SET", "notify-keyspace-events", merged)
            self._restore_notify.append((address, value))
            log.warning(
                "%s: notify-keyspace-events was '%s'; set to '%s' (ksn_auto_enable), restored at exit",
                address, value, merged,
            )  # fmt: skip
            return
        raise ScanSourceError(
            f"ksn needs keyspace notifications on the source, but {address} has "
            f"notify-keyspace-events = '{value}' (missing '{missing}'). Run on the source: "
            f"CONFIG SET notify-keyspace-events {merged}   (or set scan_reader.ksn_auto_enable = true)"
        )

    # -- used by the node threads -----------------------------------------------------------

    def converter(self, version: int, replace: bool) -> RdbToEntries:
        """Called by the pipeline's thread only (converters may probe the target)."""
        key = (version, replace)
        conv = self._conv.get(key)
        if conv is None:
            ctx = self._replace_ctx if replace else self.ctx
            conv = self._conv[key] = ctx.rdb_converter(version, version >= 80)
        return conv

    def out_put(self, item) -> None:
        while not self.abort.is_set():
            try:
                self.out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def flushed(self, node: NodeScanner, dbs: list[int], what: str) -> None:
        """A node saw a flush and queued it for the target: scan again. For a cluster source
        the target flush also removed the other shards' keys, so every node scans again."""
        for n in self.nodes if self.rc.cluster else [node]:
            n.request_rescan(n._known_dbs() if self.rc.cluster else dbs, f"{what} on the source")

    # -- Reader protocol --------------------------------------------------------------------

    def batches(self) -> Iterator[list[Entry]]:
        if self.functions:
            yield [Entry(0, [b"FUNCTION", b"LOAD", b"REPLACE", code], KEYLESS_ALL_MASTERS) for code in self.functions]
        for n in self.nodes:
            n.start()
        alive = len(self.nodes)
        stop = self.ctx.stop
        out = self.out
        while alive:
            if not self.stopping.is_set() and stop():
                self.stopping.set()
            try:
                item = out.get(timeout=0.1)
            except queue.Empty:
                yield []
                continue
            if type(item) is list:
                batch = []
                for x in item:
                    if type(x) is Entry:
                        batch.append(x)
                    else:
                        rec, version, replace = x
                        # (the end of a streamed stream brings all its commands: in chunks)
                        for chunk in self.converter(version, replace).convert_chunks(rec):
                            batch.extend(chunk)
                            if len(batch) >= 4096:
                                yield batch
                                batch = []
                if batch:
                    yield batch
                continue
            kind, err, _node = item
            if kind == "error":
                self.abort.set()
                raise err
            alive -= 1
        self._complete = all(n.complete for n in self.nodes)

    def acked(self, offset: int) -> None:
        pass

    @property
    def complete(self) -> bool:
        return self._complete

    progress_unit = "keys"

    def progress(self) -> tuple[int, int]:
        done = sum(n.pass_done for n in self.nodes)
        total = sum(n.pass_total for n in self.nodes)
        return done, max(total, done)

    def status(self) -> dict | list[dict]:
        sts = [n.status() for n in self.nodes]
        if self.rc.cluster:
            return sts
        return sts[0] if sts else {"name": self.name}

    def status_line(self) -> str:
        if not self.nodes:
            return "preparing"
        if len(self.nodes) == 1:
            return self.nodes[0].status_line()
        i = self._line_idx % len(self.nodes)
        self._line_idx += 1
        return f"src-{i}, {self.nodes[i].status_line()}"

    def consistent(self) -> bool:
        return bool(self.nodes) and all(n.consistent() for n in self.nodes) and self.out.empty()

    def counters(self) -> tuple[int, Counter, Counter]:
        methods: Counter = Counter()
        skipped: Counter = Counter()
        for conv in list(self._conv.values()):
            methods.update(conv.methods)
            skipped.update(conv.skipped)
        for n in self.nodes:
            skipped.update(n.skipped)
        return sum(n.keys_dumped for n in self.nodes), methods, skipped

    def summary(self) -> list[str]:
        lines = []
        for n in self.nodes:
            lines.append(
                f"[{n.name}] keys scanned={n.keys_scanned}, dumped={n.keys_dumped}, "
                f"deleted on target={n.deleted}, events={n.events}, rescans={n.rescans}, "
                f"flushes applied={n.flushes}, subscription lost={n.lost_subscriptions}"
            )
            if n.flush_unattributed:
                lines.append(f"[{n.name}] {n.flush_unattributed} FLUSHDB could not be attributed to a db")
        return lines

    def close(self) -> None:
        self.abort.set()
        for n in self.nodes:
            if n.thread is not None and n.thread.is_alive():
                n.thread.join(timeout=5)
        for n in self.nodes:
            for c in (n.conn, n.sub):
                if c is not None:
                    try:
                        c.close()
                    except OSError:
                        pass
        for address, old in self._restore_notify:
            try:
                with self._connect(address) as c:
                    c.call("CONFIG", "SET", "notify-keyspace-events", old)
                log.info("%s: notify-keyspace-events restored to '%s'", address, old)
            except (ConnError, ReplyError) as e:
                log.warning("%s: could not restore notify-keyspace-events to '%s': %s", address, old, e)
        self._restore_notify.clear()


def build(cfg, ctx) -> ScanReader:
    return ScanReader(cfg.reader, ctx)
