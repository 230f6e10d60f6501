"""Writer to a Redis Cluster: one pipelined ``RedisWriter`` per master, routed by slot.

Routing of an entry:

* ``entry.key`` is bytes -> the master owning ``key_slot(key)``;
* ``entry.key is KEYLESS_ALL_MASTERS`` -> every master;
* ``entry.key is None`` -> keys come from ``key_finder(argv)`` (default: the command table's
  ``commands.command_keys``; ``basic_command_keys`` is a small built-in fallback). No keys ->
  every master; keys in one slot -> that master; keys in several slots -> DEL / UNLINK /
  EXISTS / TOUCH / MSET are split per slot, anything else is reported to ``on_error``.

Redirections are handled in the caller's thread: ``MOVED`` -> wait for the replies still
in flight (so the redirected entries keep their order), refresh the topology, resend;
``ASK`` -> ``ASKING`` + the command to the named node, once; ``TRYAGAIN`` /
``CLUSTERDOWN`` -> resend after a bounded backoff, then ``on_error``.

Transactions: the entries from ``MULTI`` to ``EXEC`` are buffered. When every keyed command
of the block maps to one slot (keyless commands go along), the block is sent to that slot's
master as one atomic ``MULTI`` ... ``EXEC``; a block of keyless commands only goes to every
master. Keys in several slots -> the commands are sent one by one without ``MULTI``/``EXEC``
(counted as ``transactions_split``, with a warning). A block the server discarded because
of a redirection (``MOVED`` / ``ASK`` / ``TRYAGAIN`` while queuing or at ``EXEC``) was not
applied at all and is resent whole: after ``ASK`` as ``ASKING`` + the block to the importing
node (``ASKING`` before ``MULTI`` holds for the whole transaction); a block with several keys
of a slot being migrated gets ``TRYAGAIN`` there and is retried until the migration is over.

Units (exactly-once live sync, :meth:`begin_unit` ... :meth:`end_unit`): a cluster runs a
MULTI/EXEC only when all its keys share one slot, so a unit is one block per slot: the
unit's commands of that slot, then ``SET`` of the position marker hash-tagged into that
slot, applied atomically on the slot's master. Each slot's marker says up to where the
stream was applied to that slot; after a restart :meth:`set_skip` drops, per slot, what the
markers show as applied. Keyless commands (FLUSHALL, FUNCTION LOAD...) cannot be in a slot's
block: the blocks so far are sent (marked up to where they go), then the command to every
master, at least once.

``acked_offset`` is exact: the largest source offset O such that every entry written with an
offset <= O was answered by its master(s). Each written entry (or block) leaves a record
(offset, [writer, that writer's entry count once the part is answered] per part) in a
queue released from the left; a redirected part holds its record until answered again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from redshake.commands.lookup import command_keys
from redshake.commands.slots import SLOTS, key_slot
from redshake.entry import KEYLESS_ALL_MASTERS, Entry, UnitEntry
from redshake.resp.conn import (
    Connection,
    ReplyError,
    connection_options,
    format_address,
    parse_address,
)
from redshake.writers.base import Capabilities, TargetInfo, Writer, WriterError
from redshake.writers.redis import UNLIMITED_QPS, OnError, RedisWriter

__all__ = ["ClusterWriter", "basic_command_keys", "fetch_topology", "KeyFinder", "marker_key"]

log = logging.getLogger("redshake")

# argv -> list of keys ([] = keyless: send to every master), or None = unknown command.
KeyFinder = Callable[[Sequence[bytes]], "list[bytes] | None"]

MAX_REDIRECTS = 16
MAX_RETRIES = 20
# An entry is given up only after this many redirections/retries AND this many seconds
# since its first one: while a slot migrates, a multi-key command or a transaction can
# bounce between ASK and TRYAGAIN for as long as the migration takes.
REDIRECT_PATIENCE = 30.0

_FIRST_KEY = frozenset(
    c.encode()
    for c in """
    SET GET SETEX PSETEX SETNX APPEND INCR INCRBY INCRBYFLOAT DECR DECRBY GETSET GETDEL GETEX
    SETRANGE GETRANGE SETBIT GETBIT BITCOUNT BITPOS BITFIELD STRLEN LCS
    EXPIRE PEXPIRE EXPIREAT PEXPIREAT PERSIST TTL PTTL EXPIRETIME PEXPIRETIME TYPE DUMP
    RESTORE RESTORE-ASKING OBJECT SORT
    HSET HSETNX HMSET HDEL HINCRBY HINCRBYFLOAT HGET HMGET HGETALL HLEN HEXISTS
    HEXPIRE HPEXPIRE HEXPIREAT HPEXPIREAT HPERSIST HGETDEL HGETEX HSETEX
    LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LSET LREM LTRIM LINSERT LINDEX LLEN LRANGE
    SADD SREM SPOP SCARD SISMEMBER SMEMBERS
    ZADD ZREM ZINCRBY ZREMRANGEBYSCORE ZREMRANGEBYRANK ZREMRANGEBYLEX ZPOPMIN ZPOPMAX ZCARD
    ZSCORE ZRANGE ZRANK
    XADD XDEL XTRIM XSETID XACK XCLAIM XAUTOCLAIM XLEN XRANGE
    PFADD GEOADD
    """.split()
)
_ALL_KEYS = frozenset(
    c.encode()
    for c in "DEL UNLINK EXISTS TOUCH MGET WATCH PFCOUNT PFMERGE SINTERSTORE "
    "SUNIONSTORE SDIFFSTORE SINTER SUNION SDIFF".split()
)
_TWO_KEYS = frozenset(
    c.encode() for c in "RENAME RENAMENX SMOVE RPOPLPUSH LMOVE COPY GEOSEARCHSTORE".split()
)
_NUMKEYS_AT_2 = frozenset(
    c.encode() for c in "EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL FCALL_RO".split()
)
_DEST_NUMKEYS = frozenset(c.encode() for c in "ZUNIONSTORE ZINTERSTORE ZDIFFSTORE".split())
_KEYLESS = frozenset(c.encode() for c in "PING FLUSHALL FLUSHDB SCRIPT FUNCTION".split())
# Multi-key commands that may be split per slot with the same effect.
_SPLIT_ALL = frozenset([b"DEL", b"UNLINK", b"EXISTS", b"TOUCH"])


_TAGS: list[bytes] = []


def marker_key(key: bytes, slot: int) -> bytes:
    """``key`` hash-tagged into ``slot``: ``key:{tag}``, the shortest tag of that slot."""
    if not _TAGS:
        tags: list[bytes | None] = [None] * SLOTS
        left, i = SLOTS, 0
        while left:
            t = b"%x" % i
            s = key_slot(t)
            if tags[s] is None:
                tags[s] = t
                left -= 1
            i += 1
        _TAGS.extend(tags)  # type: ignore[arg-type]
    return b"%s:{%s}" % (key, _TAGS[slot])


def basic_command_keys(argv: Sequence[bytes]) -> list[bytes] | None:
    """Keys of common commands; ``[]`` for keyless ones, ``None`` when unknown."""
    if not argv:
        return None
    name = bytes(argv[0]).upper()
    n = len(argv)
    if name in _FIRST_KEY:
        return [argv[1]] if n > 1 else None
    if name in _ALL_KEYS:
        return list(argv[1:])
    if name in (b"MSET", b"MSETNX"):
        return list(argv[1::2])
    if name in _TWO_KEYS:
        return list(argv[1:3])
    if name in _NUMKEYS_AT_2:
        try:
            nk = int(argv[2])
        except (IndexError, ValueError):
            return None
        return list(argv[3 : 3 + nk])
    if name in _DEST_NUMKEYS:
        try:
            nk = int(argv[2])
        except (IndexError, ValueError):
            return None
        return [argv[1], *argv[3 : 3 + nk]]
    if name == b"XGROUP":
        return [argv[2]] if n > 2 else []
    if name in _KEYLESS:
        return []
    return None


def _kv(items: list[Any]) -> dict[bytes, Any]:
    """RESP2 flat [k, v, k, v, ...] -> dict (RESP3 maps are already dicts)."""
    if isinstance(items, dict):
        return items
    return {items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))


def fetch_topology(conn: Connection, tls: bool = False) -> list[tuple[int, int, str]]:
    """[(first_slot, last_slot, "host:port" of the master)] from SHARDS, SLOTS or NODES."""
    seed_host = conn.host
    ranges: list[tuple[int, int, str]] = []
    try:
        shards = conn.call("CLUSTER", "SHARDS")
        for shard in shards:
            sh = _kv(shard)
            slots = sh.get(b"slots") or []
            master = None
            for node in sh.get(b"nodes") or []:
                nd = _kv(node)
                if _s(nd.get(b"role")) == "master" and _s(nd.get(b"health")) != "fail":
                    master = nd
            if master is None or not slots:
                continue
            port = master.get(b"tls-port") if tls else None
            port = port or master.get(b"port") or master.get(b"tls-port")
            host = _s(master.get(b"endpoint"))
            if host in ("", "?"):
                host = _s(master.get(b"ip")) or seed_host
            addr = format_address(host, int(port))
            for i in range(0, len(slots) - 1, 2):
                ranges.append((int(slots[i]), int(slots[i + 1]), addr))
        if ranges:
            return ranges
    except ReplyError:
        pass
    try:
        for row in conn.call("CLUSTER", "SLOTS"):
            node = row[2]
            host = _s(node[0]) if node[0] is not None else ""
            if host in ("", "?"):
                host = seed_host
            ranges.append((int(row[0]), int(row[1]), format_address(host, int(node[1]))))
        if ranges:
            return ranges
    except ReplyError:
        pass
    text = _s(conn.call("CLUSTER", "NODES"))
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        flags = parts[2].split(",")
        if "master" not in flags or "fail" in flags or "noaddr" in flags:
            continue
        addr_part = parts[1].split(",")[0].split("@")[0]
        host, port = addr_part.rsplit(":", 1)
        host = host.strip("[]") or seed_host
        addr = format_address(host, int(port))
        for tok in parts[8:]:
            if tok.startswith("["):
                continue
            a, _, b = tok.partition("-")
            ranges.append((int(a), int(b or a), addr))
    return ranges


class _Retried(Entry):
    """A resent copy of an entry: counts its redirections, remembers the original."""

    __slots__ = ("attempts", "orig", "since")

    def __init__(self, orig: Entry, attempts: int, since: float) -> None:
        super().__init__(orig.db, orig.argv, orig.key, orig.offset, orig.resp)
        self.orig = orig
        self.attempts = attempts
        self.since = since  # time of the first redirection

    @property
    def ends_key(self) -> bool:  # type: ignore[override]
        return self.orig.ends_key


def _original(entry: Entry) -> Entry:
    return entry.orig if entry.__class__ is _Retried else entry  # type: ignore[attr-defined]


class _TxnHolder:
    """A transaction sent as one unit: MULTI, the commands, EXEC (to one master)."""

    __slots__ = ("entries", "slot", "attempts", "since")

    def __init__(self, entries: list[Entry], slot: int) -> None:
        self.entries = entries
        self.slot = slot  # -1: keyless commands only (the block goes to every master)
        self.attempts = 0
        self.since = 0.0  # time of the first redirection


_MULTI = b"MULTI"
_EXEC = b"EXEC"
_MULTI_RESP = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC_RESP = b"*1\r\n$4\r\nEXEC\r\n"
_REDIRECT_CODES = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")
_ABORT_BECAUSE = "EXECABORT Transaction discarded because of: "
_SPLIT_WARNINGS = 10

# A record of the offset tracking: [offset, entry or _TxnHolder, held, w1, seq1, w2, seq2...]:
# done when held == 0 (no part waiting for a resend) and every wi.answered >= seqi.
_OFF, _OBJ, _HELD, _PARTS = 0, 1, 2, 3


class ClusterWriter(Writer):
    caps = Capabilities(units=True, slot_markers=True, drain=True, reconnect=True)

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
        key_finder: KeyFinder | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.name = name or "cluster_writer"
        self.on_error = on_error
        self.key_finder: KeyFinder = key_finder or command_keys
        self._opts: dict[str, Any] = dict(
            username=username,
            password=password,
            tls=tls,
            tls_verify=tls_verify,
            tls_config=tls_config,
            pipeline_count_limit=pipeline_count_limit,
            querybuf_limit=querybuf_limit,
            max_qps=max_qps,
            connect_timeout=connect_timeout,
        )
        self._conn_opts: dict[str, Any] = connection_options(
            username=username,
            password=password,
            tls=tls,
            tls_verify=tls_verify,
            tls_config=tls_config,
            timeout=connect_timeout,
        )
        self._writers: dict[str, RedisWriter] = {}
        self._slots: list[RedisWriter | None] = [None] * SLOTS
        self.masters: list[RedisWriter] = []
        # (entry or _TxnHolder, kind, info, offset record, writer that answered)
        self._retry: deque[tuple[Any, str, str, list, RedisWriter | None]] = deque()
        self._track: deque[list] = deque()  # offset records, oldest first
        self._cur: list = [-1, None, 0]  # the record parts of the entry being routed go to
        self._acked = -1
        self._txn: list[Entry] | None = None  # MULTI ... so far (EXEC not seen yet)
        self.transactions = 0
        self.transactions_split = 0
        self._need_refresh = False
        self._in_retry = False
        self._exc: BaseException | None = None
        self.written = 0
        self.errors = 0
        self._acked_before = self._keys_acked_before = 0  # by writers gone in a reconnect
        self._acked_names_before: Counter[bytes] = Counter()
        self.redirects = 0
        self.moved = 0
        self.asked = 0
        self._unit: dict[int, list[Entry]] | None = None  # slot -> commands (unit open)
        self._unit_pending: list[Entry] = []  # commands of a source transaction in the unit
        self._skip: dict[int, int] = {}  # slot -> offset up to which the marker says applied
        self._skip_upto = -1
        # the marker key and its value for a (tagged) offset, set by the driver: for the
        # blocks sent before a keyless command in the middle of a unit
        self.marker_prefix: bytes | None = None
        self.marker_value: Callable[[int], bytes] | None = None
        try:
            self.refresh_topology(require_full=True)
        except BaseException:
            self.close()
            raise
        self.info: TargetInfo = self.masters[0].info
        # numbered databases the cluster serves (Valkey 9+ ``cluster-databases``; 1 elsewhere)
        self.databases = max(1, self.info.databases)

    # -- topology ----------------------------------------------------------------------

    def _writer(self, addr: str) -> RedisWriter:
        w = self._writers.get(addr)
        if w is None:
            host, port = parse_address(addr)
            w = RedisWriter(
                addr,
                on_error=self._make_handler(host, addr),
                on_abort=self._make_abort(host, addr),
                name=f"writer_{host}_{port}",
                **self._opts,
            )
            self._writers[addr] = w
        return w

    def refresh_topology(self, require_full: bool = False) -> None:
        candidates = [self.address, *self._writers]
        last: Exception | None = None
        ranges: list[tuple[int, int, str]] = []
        for addr in candidates:
            try:
                host, port = parse_address(addr)
                with Connection(host, port, **self._conn_opts) as conn:
                    ranges = fetch_topology(conn, bool(self._opts["tls"]))
                if ranges:
                    break
            except (OSError, ReplyError) as e:
                last = e
        if not ranges:
            raise WriterError(f"cannot read the cluster topology from {candidates}: {last}")
        slots: list[RedisWriter | None] = [None] * SLOTS
        masters: dict[str, RedisWriter] = {}
        for lo, hi, addr in ranges:
            w = self._writer(addr)
            masters[addr] = w
            for s in range(lo, hi + 1):
                slots[s] = w
        missing = sum(1 for w in slots if w is None)
        if missing and require_full:
            raise WriterError(f"cluster at {self.address}: {missing} of 16384 slots are not served")
        self._slots = slots
        self.masters = list(masters.values())

    # -- public API --------------------------------------------------------------------

    def write(self, entry: Entry) -> None:
        if self._exc is not None:
            raise self._exc
        if self._unit is not None:
            self._unit_add(entry)
            return
        try:
            if self._retry and not self._in_retry:
                self._drain_retry()
            self.written += 1
            a0 = entry.argv[0]
            if self._txn is not None or (len(a0) == 5 and a0.upper() == _MULTI):
                self._txn_add(entry)
                return
            track = self._track
            key = entry.key
            if key.__class__ is bytes and entry.db == 0:  # the common case, inline
                w = self._slots[key_slot(key)]
                if w is not None:
                    # recorded before writing: its reply may be read during write(); without
                    # the entry (a redirected one is resent from the node writer's error
                    # handler), so answered pieces of a huge value are not kept behind a
                    # slower master's head of line
                    track.append([entry.offset, None, 0, w, w.written + 1])
                    w.write(entry)
                    if len(track) > 4096:
                        self._release()
                    return
            rec = [entry.offset, entry, 0]
            track.append(rec)
            self._cur = rec
            self._route(entry)
            if len(track) > 4096:
                self._release()
        except BaseException as e:
            self._exc = e
            raise

    def poll(self) -> None:
        if self._exc is not None:
            raise self._exc
        try:
            for w in self.masters:
                w.poll()
            if self._retry:
                self._drain_retry()
        except BaseException as e:
            self._exc = e
            raise

    def flush(self) -> None:
        if self._exc is not None:
            raise self._exc
        try:
            while True:
                for w in list(self._writers.values()):
                    w.flush()
                if not self._retry:
                    break
                self._drain_retry()
        except BaseException as e:
            self._exc = e
            raise

    def drain(self, timeout: float = 10.0) -> int:
        """After a failure: count what every master acknowledged (see RedisWriter.drain)."""
        return sum(w.drain(timeout) for w in list(self._writers.values()))

    @property
    def conn_lost(self) -> bool:
        """The last failure was a lost connection to a master (see :meth:`reconnect`)."""
        return any(w.conn_lost for w in self._writers.values())

    def reconnect(self) -> None:
        """After a lost connection: read the topology again, connect to every master anew
        and forget everything unanswered (the caller re-sends from ``acked_offset``, which
        keeps what was acknowledged before the failure). Raises while the cluster is down."""
        self._release()
        self._acked_before += self.acked
        self._keys_acked_before += self.keys_acked
        self._acked_names_before = self.acked_names
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        self._slots = [None] * SLOTS
        self.masters = []
        self._retry.clear()
        self._track.clear()
        self._cur = [-1, None, 0]
        self._txn = None
        self._unit = None
        self._unit_pending = []
        self._need_refresh = False
        self._in_retry = False
        self._exc = None
        self.refresh_topology(require_full=True)

    @property
    def acked_offset(self) -> int:
        """The largest source offset O such that every entry written with an offset <= O
        has been answered by its master(s) (all parts of split / broadcast entries; a
        transaction when its EXEC was answered). -1 until there is one."""
        self._release()
        return self._acked

    def _release(self) -> None:
        q = self._track
        while q:
            rec = q[0]
            if rec[_HELD]:
                return
            n = len(rec)
            i = _PARTS
            while i < n:
                if rec[i].answered < rec[i + 1]:
                    return
                i += 2
            q.popleft()
            if rec[_OFF] >= 0:
                self._acked = rec[_OFF]

    def _find(self, w: RedisWriter, seq: int) -> list | None:
        """The offset record holding the part ``seq`` written to ``w``."""
        for rec in self._track:
            n = len(rec)
            for i in range(_PARTS, n, 2):
                if rec[i] is w and rec[i + 1] == seq:
                    return rec
        return None

    def exists(self, db: int, key: bytes) -> bool:
        """Synchronously ask the owner of ``key``'s slot whether it exists."""
        self.flush()
        w = self._slots[key_slot(key)]
        if w is None:
            self.refresh_topology()
            w = self._slots[key_slot(key)]
            if w is None:
                raise WriterError(f"{self.name}: slot {key_slot(key)} is not served")
        return w.exists(db, key)

    def flushall(self) -> None:
        self.flush()
        for w in self.masters:
            w.flushall()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()

    def status(self) -> list[dict]:
        out = [w.status() for w in self.masters]
        out.append(
            {
                "name": self.name,
                "transactions": self.transactions,
                "transactions_split": self.transactions_split,
                "redirects": self.redirects,
            }
        )
        return out

    @property
    def answered(self) -> int:
        return sum(w.answered for w in self._writers.values())

    # What the masters acknowledged (see RedisWriter.acked): an entry split per slot or sent
    # to every master counts once per part. Read from the status thread too: copy first.
    @property
    def acked(self) -> int:
        return self._acked_before + sum(w.acked for w in list(self._writers.values()))

    @property
    def keys_acked(self) -> int:
        return self._keys_acked_before + sum(w.keys_acked for w in list(self._writers.values()))

    @property
    def acked_names(self) -> Counter[bytes]:
        """``acked`` per raw command name (see RedisWriter.acked_names)."""
        out = Counter(self._acked_names_before)
        for w in list(self._writers.values()):
            out.update(w.acked_names.copy())
        return out

    # -- routing -----------------------------------------------------------------------

    def _fail(self, entry: Entry, message: str) -> None:
        self.errors += 1
        if self.on_error is None:
            raise WriterError(f"{self.name}: {message}: {entry!r}")
        self.on_error(entry, message)

    def _db_refusal(self, db: int) -> str:
        """Why ``db`` cannot be written to this cluster ("" when it can)."""
        if 0 <= db < self.databases:
            return ""
        if self.databases == 1:
            return (f"db {db} cannot be written to a cluster target that serves db 0 only (Valkey"
                    " 9+ serves more with cluster-databases); use [filter] allow_db / a Lua"
                    " function to remap")  # fmt: skip
        return (f"db {db} cannot be written to a cluster target with cluster-databases"
                f" {self.databases}; use [filter] allow_db / a Lua function to remap")  # fmt: skip

    def _route(self, entry: Entry) -> None:
        if entry.db != 0:
            refusal = self._db_refusal(entry.db)
            if refusal:
                self._fail(entry, refusal)
                return
        key = entry.key
        cur = self._cur
        if key.__class__ is bytes:
            w = self._slots[key_slot(key)]
            if w is None:
                self._not_served(entry)
                return
            # the part is recorded before writing: its reply may be read during write()
            cur.append(w)
            cur.append(w.written + 1)
            w.write(entry)
            return
        if key is KEYLESS_ALL_MASTERS:
            self._broadcast(entry)
            return
        keys = self.key_finder(entry.argv)
        if keys is None:
            self._fail(entry, f"cannot find the keys of {entry.cmd} to route it in a cluster")
            return
        if not keys:
            self._broadcast(entry)
            return
        s0 = key_slot(keys[0])
        if all(key_slot(k) == s0 for k in keys[1:]):
            w = self._slots[s0]
            if w is None:
                self._not_served(entry)
                return
            cur.append(w)
            cur.append(w.written + 1)
            w.write(entry)
            return
        for part in self._split(entry):
            self._route(part)

    def _broadcast(self, entry: Entry) -> None:
        cur = self._cur
        for w in self.masters:
            cur.append(w)
            cur.append(w.written + 1)
            w.write(entry)

    def _not_served(self, obj: Any) -> None:
        self._cur[_HELD] += 1
        self._retry.append((obj, "RETRY", "CLUSTERDOWN slot not served", self._cur, None))
        self._need_refresh = True

    def _entry_keys(self, entry: Entry) -> list[bytes] | None:
        """The keys of ``entry`` ([] when keyless); None once reported as unknown."""
        key = entry.key
        if key.__class__ is bytes:
            return [key]
        if key is KEYLESS_ALL_MASTERS:
            return []
        keys = self.key_finder(entry.argv)
        if keys is None:
            self._fail(entry, f"cannot find the keys of {entry.cmd} to route it in a cluster")
        return keys

    def _is_keyless(self, entry: Entry) -> bool:
        key = entry.key
        if key is KEYLESS_ALL_MASTERS:
            return True
        return key is None and self.key_finder(entry.argv) == []

    # -- transactions ------------------------------------------------------------------

    def _txn_add(self, entry: Entry) -> None:
        blk = self._txn
        if blk is None:
            self._txn = [entry]
            return
        blk.append(entry)
        a0 = entry.argv[0]
        if len(a0) == 4 and a0.upper() == _EXEC:
            self._txn = None
            self._write_block(blk)

    def _write_block(self, blk: list[Entry], unit: bool = False) -> None:
        if not unit:
            self.transactions += 1
        off = max(e.offset for e in blk) if not unit else -1  # a unit acks at its end
        multi, cmds, exe = blk[0], blk[1:-1], blk[-1]
        good: list[Entry] = []
        slots: set[int] = set()
        first_keys: list[bytes] = []
        for e in cmds:
            refusal = self._db_refusal(e.db) if e.db != 0 else ""
            if refusal:
                self._fail(e, f"{refusal} (in a MULTI block)")
                continue
            keys = self._entry_keys(e)
            if keys is None:
                continue
            for k in keys:
                slots.add(key_slot(k))
            if keys and len(first_keys) < 3:
                first_keys.append(keys[0])
            good.append(e)
        if not good:
            self._track.append([off, None, 0])
            return
        if len(slots) > 1:
            self.transactions_split += 1
            n = self.transactions_split
            if n <= _SPLIT_WARNINGS or n % 1000 == 0:
                log.warning(
                    "[%s] a MULTI/EXEC block with keys in %d slots (first keys %s) is written"
                    " command by command, not atomically (%d such blocks so far)",
                    self.name, len(slots), ", ".join(repr(k) for k in first_keys), n,
                )  # fmt: skip
            last = len(good) - 1
            for i, e in enumerate(good):
                rec = [off if i == last else e.offset, e, 0]
                self._track.append(rec)
                self._cur = rec
                self._route(e)
            return
        if multi.db != 0 and self._db_refusal(multi.db):
            multi = Entry(0, multi.argv, None, multi.offset, multi.resp)
        if exe.db != 0 and self._db_refusal(exe.db):
            exe = Entry(0, exe.argv, None, exe.offset, exe.resp)
        holder = _TxnHolder([multi, *good, exe], slots.pop() if slots else -1)
        rec = [off, holder, 0]
        self._track.append(rec)
        self._cur = rec
        self._send_block(holder, None, False)

    def _send_block(self, holder: _TxnHolder, w: RedisWriter | None, asking: bool) -> None:
        cur = self._cur
        entries = holder.entries
        if w is None:
            if holder.slot < 0:
                targets = list(self.masters)
            else:
                w = self._slots[holder.slot]
                if w is None:
                    self._not_served(holder)
                    return
                targets = [w]
        else:
            targets = [w]
        for w in targets:
            cur.append(w)
            cur.append(w.written + len(entries))
            if asking:
                w.write_asking(entries[0])
            else:
                w.write(entries[0])
            for e in entries[1:]:
                w.write(e)

    def _split(self, entry: Entry) -> list[Entry]:
        argv = entry.argv
        name = bytes(argv[0]).upper()
        groups: dict[int, list[bytes]] = {}
        if name in _SPLIT_ALL:
            for k in argv[1:]:
                groups.setdefault(key_slot(k), []).append(k)
        elif name == b"MSET" and len(argv) % 2 == 1:
            for i in range(1, len(argv) - 1, 2):
                groups.setdefault(key_slot(argv[i]), []).extend((argv[i], argv[i + 1]))
        else:
            self._fail(
                entry,
                f"CROSSSLOT {entry.cmd} has keys in several slots and cannot be split for a"
                " cluster target (filter it, or split it with a Lua function)",
            )
            return []
        db = entry.db
        return [Entry(db, [argv[0], *part], part[0], entry.offset) for part in groups.values()]

    # -- exactly-once units ------------------------------------------------------------

    def begin_unit(self) -> None:
        if self._unit is None:
            self._unit = {}
            self._unit_pending = []

    def unit_offset(self, offset: int) -> None:
        """The EXEC of a source transaction inside the unit: its commands get its offset."""
        for e in self._unit_pending:
            e.offset = offset
        self._unit_pending = []

    def end_unit(self, db: int, key: bytes, value: bytes, offset: int) -> None:
        """Send one block per slot of the unit, each setting that slot's marker (``key``
        hash-tagged into the slot) to ``value``; ``offset`` is acknowledged when every block
        of the unit and everything before was answered."""
        self._unit_flush(key, value, offset)

    def set_skip(self, skip: dict[int, int]) -> None:
        """Per slot, the offset up to which the target's marker says the stream was applied:
        commands of that slot up to there are not sent again."""
        self._skip = dict(skip)
        self._skip_upto = max(skip.values(), default=-1)

    def try_marker(self, db: int, key: bytes) -> str:
        """Can every master hold its marker? "" or the refusal (see RedisWriter.try_marker)."""
        if b"{" in key or b"}" in key:
            return f"the marker key {key!r} must not contain braces: its slot is given by a hash tag"
        self.flush()
        for w in self.masters:
            slot = next(s for s in range(SLOTS) if self._slots[s] is w)
            refusal = w.try_marker(db, marker_key(key, slot))
            if refusal:
                return f"{w.address}: {refusal}"
        return ""

    def read_markers(self, key: bytes) -> dict[int, bytes]:
        """slot -> value of that slot's marker, for every slot that has one."""
        self.flush()
        out: dict[int, bytes] = {}
        by_master: dict[RedisWriter, list[int]] = {}
        for s in range(SLOTS):
            w = self._slots[s]
            if w is not None:
                by_master.setdefault(w, []).append(s)
        for w, slots in by_master.items():
            w.select(0)  # the markers are in db 0
            for i in range(0, len(slots), 1024):
                part = slots[i : i + 1024]
                try:
                    replies = w.conn.pipeline([(b"GET", marker_key(key, s)) for s in part])
                except OSError as e:
                    raise WriterError(f"{w.name}: {e}") from None
                for s, r in zip(part, replies, strict=True):
                    if isinstance(r, ReplyError):
                        raise WriterError(f"{w.name}: reading the marker of slot {s}: {r.message}")
                    if isinstance(r, bytes):
                        out[s] = r
        return out

    def _unit_add(self, entry: Entry) -> None:
        self.written += 1
        if entry.db != 0 and self._db_refusal(entry.db):
            self._route(entry)  # reports the db
            return
        keys = self._entry_keys(entry)
        if keys is None:
            return
        s0 = key_slot(keys[0]) if keys else -1
        if keys and all(key_slot(k) == s0 for k in keys[1:]):
            if entry.key is None:  # the block needs no second look-up: name the slot's key
                entry = Entry(entry.db, entry.argv, keys[0], entry.offset, entry.resp)
            parts = [(s0, entry)]
        elif keys:
            parts = [(key_slot(p.key), p) for p in self._split(entry)]  # type: ignore[arg-type]
        else:
            # keyless: after the unit's blocks so far, to every master (at least once)
            self._unit_flush(None, b"", -1)
            self.written -= 1
            try:
                self.write(entry)
            finally:
                self._unit = {}
            return
        unit = self._unit
        assert unit is not None
        for slot, e in parts:
            if e.offset < 0:  # inside a source transaction: the offset comes with its EXEC
                e = Entry(e.db, e.argv, e.key, -1, e.resp)
                self._unit_pending.append(e)
            group = unit.get(slot)
            if group is None:
                unit[slot] = [e]
            else:
                group.append(e)

    def _unit_flush(self, key: bytes | None, value: bytes, offset: int) -> None:
        """One MULTI ... SET marker ... EXEC per slot of the unit so far. ``key`` None: sent
        before a keyless command, each block marked up to its last command."""
        unit = self._unit
        self._unit = None
        if not unit:
            return
        if self._exc is not None:
            raise self._exc
        try:
            if self._retry and not self._in_retry:
                self._drain_retry()
            self._unit_blocks(unit, key, value, offset)
            # (once per unit, not per command: answered blocks - which may hold 1 MiB pieces
            # of a huge command - are not kept until 4096 of them have piled up)
            self._release()
        except BaseException as e:
            self._exc = e
            raise

    def _unit_blocks(self, unit: dict[int, list[Entry]], key: bytes | None, value: bytes,
                     offset: int) -> None:  # fmt: skip
        """The blocks of a unit. Only the end of the unit (``offset``, after its last block)
        is acknowledged: a block's own offset would count as acknowledged when it is
        answered, although a block sent before it to another master may not be yet."""
        skip = self._skip
        last = max(offset, max((e.offset for g in unit.values() for e in g), default=-1))
        for slot, group in unit.items():
            if skip and slot in skip:
                upto = skip[slot]
                group = [e for e in group if e.offset > upto]
                if not group:
                    continue
            if key is not None:
                mk, mv = marker_key(key, slot), value
            else:
                off = max(e.offset for e in group)
                if self.marker_value is None or self.marker_prefix is None or off < 0:
                    # no position known for it (a keyless command inside a source
                    # transaction): at least once
                    for e in group:
                        self.write(Entry(e.db, e.argv, e.key, -1, e.resp))
                    continue
                mk, mv = marker_key(self.marker_prefix, slot), self.marker_value(off)
            multi = UnitEntry(0, [_MULTI], None, -1, _MULTI_RESP)
            exe = UnitEntry(0, [_EXEC], None, -1, _EXEC_RESP)
            self._write_block([multi, *group, UnitEntry(0, [b"SET", mk, mv], mk), exe], True)
        if offset >= 0:
            self._track.append([offset, None, 0])  # released once every block before is answered
        if skip and last > self._skip_upto:
            self._skip = {}

    # -- redirections ------------------------------------------------------------------

    def _redirect(self, message: str, node_host: str) -> tuple[str, str] | None:
        """(kind, info) for a redirection / retry-later error, else None."""
        code = message.split(" ", 1)[0]
        if code == "MOVED" or code == "ASK":
            parts = message.split()
            addr = parts[2] if len(parts) > 2 else ""
            if addr.startswith(":"):
                addr = format_address(node_host, int(addr[1:]))
            self.redirects += 1
            if code == "MOVED":
                self.moved += 1
                self._need_refresh = True
                return code, f"{parts[1] if len(parts) > 1 else ''} {addr}"
            self.asked += 1
            return code, addr
        if code in ("TRYAGAIN", "CLUSTERDOWN"):
            return "RETRY", message
        return None

    def _hold(self, w: RedisWriter | None) -> list:
        """The record of the part ``w`` just answered (its count is ``w.answered``), held
        until the part is resent and answered."""
        rec = self._find(w, w.answered) if w is not None else None
        if rec is None:  # not expected; keep the offset from passing anything
            rec = [-1, None, 0]
            self._track.appendleft(rec)
        rec[_HELD] += 1
        return rec

    def _make_handler(self, node_host: str, addr: str) -> OnError:
        def handler(entry: Entry, message: str) -> None:
            r = self._redirect(message, node_host)
            if r is None:
                self._fail(_original(entry), message)
                return
            w = self._writers.get(addr)
            self._retry.append((entry, r[0], r[1], self._hold(w), w))

        return handler

    def _make_abort(self, node_host: str, addr: str):
        def on_abort(entries: list[Entry], errors: list[tuple[Entry, str]], message: str) -> None:
            # a discarded transaction: nothing of it was applied
            r = None
            for m in [*(m for _e, m in errors), message]:
                if m.startswith(_ABORT_BECAUSE):
                    m = m[len(_ABORT_BECAUSE) :]
                if m.split(" ", 1)[0] in _REDIRECT_CODES:
                    r = self._redirect(m, node_host)
                    break
            w = self._writers.get(addr)
            rec = self._find(w, w.answered) if w is not None else None
            if r is None or rec is None or rec[_OBJ].__class__ is not _TxnHolder:
                if not errors:
                    errors = [(entries[-1], message)]
                else:
                    errors = [(e, f"{m} (the transaction was discarded: {message})") for e, m in errors]
                for e, m in errors:
                    self._fail(e, m)
                return
            rec[_HELD] += 1
            self._retry.append((rec[_OBJ], r[0], r[1], rec, w))

        return on_abort

    def _drain_retry(self) -> None:
        self._in_retry = True
        try:
            while self._retry:
                if self._need_refresh:
                    # Collect every reply still in flight first, so all entries redirected
                    # from the old route are queued, in order, before anything is resent.
                    for w in list(self._writers.values()):
                        w.flush()
                    self._need_refresh = False
                    self.refresh_topology()
                items = list(self._retry)
                self._retry.clear()
                worst = 0
                for e, kind, *_rest in items:
                    if kind == "RETRY":
                        worst = max(worst, getattr(e, "attempts", 0) + 1)
                if worst:
                    time.sleep(min(0.005 * (2 ** min(worst, 7)), 0.5))
                for obj, kind, info, rec, wfail in items:
                    self._cur = rec
                    try:
                        self._resend(obj, kind, info, wfail)
                    finally:
                        rec[_HELD] -= 1
                if self._retry:
                    for w in list(self._writers.values()):
                        w.flush()
        finally:
            self._in_retry = False

    def _resend(self, obj: Any, kind: str, info: str, wfail: RedisWriter | None) -> None:
        limit = MAX_RETRIES if kind == "RETRY" else MAX_REDIRECTS
        if kind == "MOVED":
            slot_s, _, addr = info.partition(" ")
            if slot_s.isdigit() and addr:
                # the redirect is authoritative even if the map read just now lags
                self._slots[int(slot_s)] = self._writer(addr)
        now = time.monotonic()
        if obj.__class__ is _TxnHolder:
            obj.attempts += 1
            if obj.attempts == 1:
                obj.since = now
            if obj.attempts > limit and now - obj.since > REDIRECT_PATIENCE:
                self._fail(
                    obj.entries[-1],
                    f"gave up on a MULTI/EXEC block after {obj.attempts - 1}"
                    f" redirections/retries: {kind} {info}",
                )
                return
            if kind == "ASK":
                self._send_block(obj, self._writer(info), True)
            elif kind == "RETRY" and obj.slot < 0 and wfail is not None:
                self._send_block(obj, wfail, False)
            else:
                self._send_block(obj, None, False)
            return
        retried = obj.__class__ is _Retried
        n = obj.attempts + 1 if retried else 1
        since = obj.since if retried else now
        orig = _original(obj)
        if n > limit and now - since > REDIRECT_PATIENCE:
            self._fail(
                orig,
                f"gave up after {n - 1} redirections/retries in {now - since:.0f}s: {kind} {info}",
            )
            return
        again = _Retried(orig, n, since)
        if kind == "ASK":
            w = self._writer(info)
            self._cur.append(w)
            self._cur.append(w.written + 1)
            w.write_asking(again)
        elif kind == "RETRY" and wfail is not None and self._is_keyless(orig):
            # a keyless entry another master may have applied already: only where it failed
            self._cur.append(wfail)
            self._cur.append(wfail.written + 1)
            wfail.write(again)
        else:
            self._route(again)

    def __enter__(self) -> ClusterWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
