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

Units (exactly-once live sync, :meth:`begin_unit` ... :meth:`end_unit`), on targets that
run scripts with flags (Redis >= 7.0, Valkey): one script call per master and unit
(``_UNIT_SCRIPT``, ``allow-cross-slot-keys``). Its one declared key is that master's
position marker (hash-tagged into the master's first slot); its arguments carry the
commands as received (a command's ``*N`` header becomes a bulk ``N``). The script first
compares the master's own slot list (``CLUSTER NODES``) with the one the writer routed by:
any difference (a slot moved, migrating or importing) aborts it before any write, and the
unit's commands of that master then go the per-slot way below, after a topology refresh.
Else it sets the marker (value: the position and that slot list), runs every command with
``redis.pcall`` and answers their replies (errors per command, like ``EXEC``). ``NOSCRIPT``
-> resent as ``EVAL``. A master's part of a unit goes the per-slot way when it holds a
command scripts refuse (``_NOT_IN_SCRIPT``), more arguments than Lua's ``unpack`` takes, a
database other than 0, or is too large for one call (``_SCRIPT_MAX_*``); so does every
unit for masters older than 7.0 or refusing the script.

Per-slot units (the fallback): a cluster runs a MULTI/EXEC only when all its keys share one
slot, so such a unit is one block per slot: the unit's commands of that slot, then ``SET``
of the position marker hash-tagged into that slot, applied atomically on the slot's master. Each slot's marker says up to where the
stream was applied to that slot; a master's marker says it for every slot of its slot list.
:meth:`read_markers` reads both kinds (per slot, the furthest position), so a resume after an
older version's per-slot markers works; after a restart :meth:`set_skip` drops, per slot,
what the markers show as applied. Keyless commands (FLUSHALL, FUNCTION LOAD...) cannot be in a slot's
block: the blocks so far are sent (marked up to where they go), then the command to every
master, at least once.

``acked_offset`` is exact: the largest source offset O such that every entry written with an
offset <= O was answered by its master(s). Each written entry (or block) leaves a record
(offset, [writer, that writer's entry count once the part is answered] per part) in a
queue released from the left; a redirected part holds its record until answered again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from redshake.commands.lookup import command_keys
from redshake.commands.slots import SLOTS, key_slot
from redshake.entry import KEYLESS_ALL_MASTERS, Entry, UnitEntry
from redshake.errors import (
    Ask,
    Busy,
    ClusterDown,
    Loading,
    MasterDown,
    Moved,
    NoScript,
    OutOfMemory,
    ReadOnly,
    TopologyChanged,
    TryAgain,
    reply_class,
)
from redshake.resp.conn import (
    Connection,
    ReplyError,
    connection_options,
    format_address,
    parse_address,
)
from redshake.resp.encode import encode
from redshake.resp.server import ClusterShard, cluster_shards
from redshake.writers.base import Capabilities, TargetInfo, Writer, WriterError
from redshake.writers.redis import UNLIMITED_QPS, OnError, RedisWriter, ScriptCall

__all__ = ["ClusterWriter", "basic_command_keys", "KeyFinder", "marker_key"]

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


# One atomic step per master and unit (see the module docstring). ARGV: [1] marker value,
# [2] the master's slot list as the writer sees it, then per command: its argument count
# followed by its arguments.
_UNIT_SCRIPT = b"""#!lua flags=allow-cross-slot-keys
local me = string.match(redis.call('CLUSTER', 'NODES'), '[^\\n]*myself[^\\n]*') or ''
local i, slots = 0, {}
for t in string.gmatch(me, '%S+') do
  i = i + 1
  if i > 8 then slots[#slots + 1] = t end
end
local mine = table.concat(slots, ',')
if mine ~= ARGV[2] then
  return redis.error_reply('TOPOLOGY this node serves ' .. mine .. ', not ' .. ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1])
local out, j, n, k = {}, 3, #ARGV, 0
while j <= n do
  local c = tonumber(ARGV[j])
  k = k + 1
  out[k] = redis.pcall(unpack(ARGV, j + 1, j + c))
  j = j + c + 1
end
return out
"""
_UNIT_SHA = hashlib.sha1(_UNIT_SCRIPT).hexdigest().encode()
# Commands a script cannot run: a master's part of a unit holding one goes the per-slot way.
_NOT_IN_SCRIPT = frozenset(
    c.encode()
    for c in """EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL FCALL_RO MULTI EXEC DISCARD WATCH
    UNWATCH SCRIPT FUNCTION SELECT SWAPDB MOVE MIGRATE CLIENT SUBSCRIBE PSUBSCRIBE SSUBSCRIBE
    WAIT WAITAOF SAVE BGSAVE BGREWRITEAOF SHUTDOWN""".split()
)
_IN_SCRIPT: dict[bytes, bool] = {}  # raw command name -> may a script run it
_BULK_LEN = [b"$%d\r\n" % i for i in range(12)]  # bulk header of an i-digit count
_SCRIPT_MAX_ARGS = 7000  # per command: Lua's unpack() stops near 8000 values
_SCRIPT_MAX_CMDS = 8192  # per call (a unit is at most ~1024 source commands)
# per call: its bytes are held twice (the entries, kept for a resend, and the call) until
# answered; a bigger batch (pieces of a huge command) goes as per-slot MULTI/EXEC blocks
_SCRIPT_MAX_BYTES = 8 << 20
# per command: the 1 MiB pieces of a huge command (and any command this big) go per slot
_SCRIPT_MAX_CMD_BYTES = 512 << 10
# Script-call errors that do not mean the target refuses the script (resent per slot).
_SCRIPT_TRANSIENT = (Moved, Ask, TryAgain, ClusterDown, TopologyChanged, OutOfMemory, Busy,
                     Loading, MasterDown, ReadOnly)  # fmt: skip

_TAGS: list[bytes] = []
_T = TypeVar("_T")


_MARKS_KEPT = 8  # marker values remembered per marker slot (units in flight)
# replies to reading the markers that a cluster gives while it heals: asked again
_MARKER_TRANSIENT = (ClusterDown, Loading, MasterDown, TryAgain, Moved, Ask)


class _Healing(Exception):
    """Reading the markers met a cluster that is healing (see ``read_markers``)."""


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


def _slot_list(text: bytes) -> list[int]:
    """b"0-99,200" -> [0, ..., 99, 200] (a master marker's slot list)."""
    out: list[int] = []
    for part in text.split(b","):
        a, _, b = part.partition(b"-")
        try:
            out.extend(range(int(a), int(b or a) + 1))
        except ValueError:
            return []
    return [s for s in out if 0 <= s < SLOTS]


def _further(value: bytes, prev: bytes) -> bool:
    """Marker ``value`` is further in the stream than ``prev`` ("<replid> <offset> <db>"):
    a larger offset of the same replication id, or another id (the newer master marker)."""
    a, b = value.split(), prev.split()
    if len(b) < 2 or a[0] != b[0]:
        return True
    try:
        return int(a[1]) > int(b[1])
    except ValueError:
        return True


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


def _script_head(total: int, loaded: bool) -> bytes:
    """The start of a unit script call of ``total`` arguments: EVALSHA, or EVAL with the
    script where the connection may not have it yet."""
    if loaded:
        return b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % (total, _UNIT_SHA)
    return b"*%d\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n" % (total, len(_UNIT_SCRIPT), _UNIT_SCRIPT)


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
# the errors that redirect a command or a transaction (resent): see _redirect
_REDIRECTS = (Moved, Ask, TryAgain, ClusterDown)
_ABORT_BECAUSE = "EXECABORT Transaction discarded because of: "
_SPLIT_WARNINGS = 10

# A record of the offset tracking: [offset, entry or _TxnHolder, held, w1, seq1, w2, seq2...]:
# done when held == 0 (no part waiting for a resend) and every wi.answered >= seqi.
# (A list, not a class with __slots__: write() builds one per command, and on Python 3.11 a
# list literal costs ~60 ns where creating an instance costs ~150 ns, which showed as ~2-3%
# more CPU per command in bench/incremental.py --cluster --at-least-once --catchup.)
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
        unit_scripts: bool = True,
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
        # one script call per master and unit (else one MULTI/EXEC per slot)
        self.unit_scripts = unit_scripts
        self._no_script: set[str] = set()  # masters that refused the script
        self._loaded: set[RedisWriter] = set()  # connections that ran the script by EVAL
        self._ranges: dict[RedisWriter, bytes] = {}  # master -> its slot list ("0-99,200")
        self._mslot: dict[RedisWriter, int] = {}  # master -> the slot of its marker
        self.script_calls = 0
        self.script_fallbacks = 0
        # marker slot -> the last marker values set there (oldest first): after a reconnect
        # the reader checks that the target still holds what it acknowledged (see marks)
        self._marks: dict[int, list[bytes]] = {}
        try:
            self.refresh_topology(require_full=True)
        except BaseException:
            self.close()
            raise
        self.info: TargetInfo = self.masters[0].info
        # numbered databases the cluster serves (Valkey 9+ ``cluster-databases``; 1 elsewhere)
        self.databases = max(1, self.info.databases)
        if self.info.version < (7, 0, 0):
            self.unit_scripts = False  # no script flags: per-slot MULTI/EXEC units

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
        shards: list[ClusterShard] = []
        for addr in candidates:
            try:
                host, port = parse_address(addr)
                with Connection(host, port, **self._conn_opts) as conn:
                    shards = cluster_shards(conn, bool(self._opts["tls"]))
                if shards:
                    break
            except (OSError, ReplyError) as e:
                last = e
        if not shards:
            raise WriterError(f"cannot read the cluster topology from {candidates}: {last}")
        slots: list[RedisWriter | None] = [None] * SLOTS
        masters: dict[str, RedisWriter] = {}
        for sh in shards:
            w = masters[sh.master.address] = self._writer(sh.master.address)
            for lo, hi in sh.ranges:
                for s in range(lo, hi + 1):
                    slots[s] = w
        missing = sum(1 for w in slots if w is None)
        if missing and require_full:
            raise WriterError(f"cluster at {self.address}: {missing} of 16384 slots are not served")
        self._slots = slots
        self.masters = list(masters.values())
        ranges: dict[RedisWriter, list[bytes]] = {}
        mslot: dict[RedisWriter, int] = {}
        s = 0
        while s < SLOTS:
            w = slots[s]
            e = s
            while e + 1 < SLOTS and slots[e + 1] is w:
                e += 1
            if w is not None:
                ranges.setdefault(w, []).append(b"%d" % s if s == e else b"%d-%d" % (s, e))
                mslot.setdefault(w, s)
            s = e + 1
        self._ranges = {w: b",".join(r) for w, r in ranges.items()}
        self._mslot = mslot

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
        self._loaded.clear()  # new connections: EVAL first
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

    def _track_after(self, rec: list, new: list) -> None:
        """Put the record ``new`` right after ``rec`` (held, so still queued)."""
        track = self._track
        for i, r in enumerate(track):
            if r is rec:
                track.insert(i + 1, new)
                return
        track.appendleft(new)  # not expected; keep the offset from passing it

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
                "unit_scripts": self.script_calls,
                "unit_script_fallbacks": self.script_fallbacks,
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

    def _write_block(self, blk: list[Entry], unit: bool = False, after: list | None = None) -> None:
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
            if after is None:
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
        if after is None:
            self._track.append(rec)
        else:  # in place of a script call that did not run: before what followed it
            self._track_after(after, rec)
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

    def marks(self) -> dict[int, list[bytes]]:
        """Marker slot -> the last values (at most ``_MARKS_KEPT``, oldest first) this writer
        set in the marker of that slot: one of those the target acknowledged must still be
        there, or a later one (see ``SyncReader._slots_behind``). Forgotten after a keyless
        command (a FLUSHALL removes the markers)."""
        return self._marks

    def _mark(self, slot: int, value: bytes) -> None:
        vals = self._marks.get(slot)
        if vals is None:
            self._marks[slot] = [value]
        else:
            vals.append(value)
            if len(vals) > _MARKS_KEPT:
                del vals[0]

    def set_skip(self, skip: dict[int, int]) -> None:
        """Per slot, the offset up to which the target's marker says the stream was applied:
        commands of that slot up to there are not sent again."""
        self._skip = dict(skip)
        self._skip_upto = max(skip.values(), default=-1)

    def try_marker(self, db: int, key: bytes) -> str:
        """Can every master hold its marker? "" or the refusal (see RedisWriter.try_marker).
        A cluster that is healing is asked again, as in ``read_markers``: a master that just
        restarted must not turn exactly-once off for the whole run."""
        if b"{" in key or b"}" in key:
            return f"the marker key {key!r} must not contain braces: its slot is given by a hash tag"
        return self._while_healing("checking the position markers",
                                   lambda: self._try_marker(db, key))  # fmt: skip

    def _try_marker(self, db: int, key: bytes) -> str:
        for w in self.masters:
            slot = next((s for s in range(SLOTS) if self._slots[s] is w), None)
            if slot is None:
                continue  # (a master left without slots by a reconnect)
            try:
                refusal = w.try_marker(db, marker_key(key, slot))
            except WriterError as e:
                raise _Healing(str(e)) from None
            if refusal:
                why = f"{w.address}: {refusal}"
                if reply_class(refusal) in _MARKER_TRANSIENT:
                    raise _Healing(why)
                return why
        return ""

    def read_markers(self, key: bytes) -> dict[int, bytes]:
        """slot -> value of that slot's marker, for every slot that has one. A cluster that
        is healing (a master just restarted or failed over: CLUSTERDOWN, LOADING, a moved
        slot, a refused connection) is asked again, for up to ``REDIRECT_PATIENCE``."""
        return self._while_healing("reading the position markers",
                                   lambda: self._read_markers(key))  # fmt: skip

    def _while_healing(self, what: str, step: Callable[[], _T]) -> _T:
        """``step()``, asked again with backoff while it meets a healing cluster (raises
        ``_Healing``), for up to ``REDIRECT_PATIENCE``; then a ``WriterError``."""
        self.flush()
        deadline = time.monotonic() + REDIRECT_PATIENCE
        delay = 0.1
        while True:
            try:
                return step()
            except _Healing as e:
                if time.monotonic() > deadline:
                    raise WriterError(f"{e} (for {REDIRECT_PATIENCE:.0f}s)") from None
                log.warning("[%s] %s: %s; asking again in %.1fs", self.name, what, e, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                self.reconnect()
            except (OSError, WriterError) as e:
                log.debug("%s: %s", what, e)

    def _read_markers(self, key: bytes) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        by_master: dict[RedisWriter, list[int]] = {}
        for s in range(SLOTS):
            w = self._slots[s]
            if w is not None:
                by_master.setdefault(w, []).append(s)
        masters: list[list[bytes]] = []
        for w, slots in by_master.items():
            w.select(0)  # the markers are in db 0
            for i in range(0, len(slots), 1024):
                part = slots[i : i + 1024]
                try:
                    replies = w.conn.pipeline([(b"GET", marker_key(key, s)) for s in part])
                except OSError as e:
                    raise _Healing(f"{w.name}: {e}") from None
                for s, r in zip(part, replies, strict=True):
                    if isinstance(r, ReplyError):
                        why = f"{w.name}: reading the marker of slot {s}: {r.message}"
                        if reply_class(r.message) in _MARKER_TRANSIENT:
                            raise _Healing(why)
                        raise WriterError(why)
                    if isinstance(r, bytes):
                        fields = r.split()
                        if len(fields) == 4:  # a master's marker: "<position> <slot list>"
                            masters.append(fields)
                        else:
                            out[s] = r
        # A master's marker holds for every slot of its list. Every marker of a slot was
        # written by the master serving it then, in stream order: the furthest one holds.
        for fields in masters:
            value = b" ".join(fields[:3])
            for slot in _slot_list(fields[3]):
                prev = out.get(slot)
                if prev is None or _further(value, prev):
                    out[slot] = value
        return out

    def _unit_add(self, entry: Entry) -> None:
        self.written += 1
        if entry.db != 0 and self._db_refusal(entry.db):
            self._route(entry)  # reports the db
            return
        key = entry.key
        if key.__class__ is not bytes:
            keys = self._entry_keys(entry)  # (the one look-up of the command's keys)
            if keys is None:
                return
            if len(keys) != 1:
                self._unit_add_many(entry, keys)
                return
            key = keys[0]
            if not self.unit_scripts:
                # the block needs no second look-up: name the slot's key
                entry = Entry(entry.db, entry.argv, key, entry.offset, entry.resp)
        self._unit_put(key_slot(key), entry)  # type: ignore[arg-type]

    def _unit_put(self, slot: int, e: Entry) -> None:
        if e.offset < 0:  # inside a source transaction: the offset comes with its EXEC
            e = Entry(e.db, e.argv, e.key, -1, e.resp)
            self._unit_pending.append(e)
        unit = self._unit
        assert unit is not None
        group = unit.get(slot)
        if group is None:
            unit[slot] = [e]
        else:
            group.append(e)

    def _unit_add_many(self, entry: Entry, keys: list[bytes]) -> None:
        """A command of several keys (one part per slot, or whole when they share one), or
        of none (sent to every master after the unit's blocks so far)."""
        if keys:
            s0 = key_slot(keys[0])
            if all(key_slot(k) == s0 for k in keys[1:]):
                self._unit_put(s0, entry)
            else:
                for p in self._split(entry):
                    self._unit_put(key_slot(p.key), p)  # type: ignore[arg-type]
            return
        # keyless: after the unit's blocks so far, to every master (at least once)
        self._unit_flush(None, b"", -1)
        self.written -= 1
        self._marks.clear()  # (a FLUSHALL removes the markers: nothing to check then)
        try:
            self.write(entry)
        finally:
            self._unit = {}

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
        scripts = self.unit_scripts
        slots = self._slots
        by_master: dict[RedisWriter | None, list[tuple[int, list[Entry]]]] = {}
        for item in unit.items():
            slot, group = item
            if skip and slot in skip:
                upto = skip[slot]
                group = [e for e in group if e.offset > upto]
                if not group:
                    continue
                item = (slot, group)
            if not scripts:
                self._slot_unit_block(slot, group, key, value)
                continue
            w = slots[slot]
            groups = by_master.get(w)
            if groups is None:
                by_master[w] = [item]
            else:
                groups.append(item)
        for w in [w for w in by_master if w is None or w.address in self._no_script]:
            for slot, group in by_master.pop(w):
                self._slot_unit_block(slot, group, key, value)
        for w, groups in by_master.items():
            assert w is not None
            if key is not None:
                prefix, mv = key, value
            else:
                off = max(e.offset for _s, g in groups for e in g)
                if self.marker_value is None or self.marker_prefix is None or off < 0:
                    for slot, group in groups:
                        self._slot_unit_block(slot, group, key, value)
                    continue
                prefix, mv = self.marker_prefix, self.marker_value(off)
            if not self._script_call(w, groups, prefix, mv):
                self.script_fallbacks += 1
                for slot, group in groups:
                    self._slot_unit_block(slot, group, prefix, mv)
        if offset >= 0:
            self._track.append([offset, None, 0])  # released once every block before is answered
        if skip and max(offset, max((e.offset for g in unit.values() for e in g),
                                    default=-1)) > self._skip_upto:  # fmt: skip
            self._skip = {}

    def _slot_unit_block(self, slot: int, group: list[Entry], key: bytes | None, value: bytes,
                         after: list | None = None) -> None:  # fmt: skip
        """One slot's part of a unit: MULTI, its commands, SET of the slot's marker, EXEC.
        ``key`` None: marked up to its last command (before a keyless command)."""
        if key is not None:
            mk, mv = marker_key(key, slot), value
        else:
            off = max(e.offset for e in group)
            if self.marker_value is None or self.marker_prefix is None or off < 0:
                # no position known for it (a keyless command inside a source
                # transaction): at least once
                for e in group:
                    self.write(Entry(e.db, e.argv, e.key, -1, e.resp))
                return
            mk, mv = marker_key(self.marker_prefix, slot), self.marker_value(off)
        multi = UnitEntry(0, [_MULTI], None, -1, _MULTI_RESP)
        exe = UnitEntry(0, [_EXEC], None, -1, _EXEC_RESP)
        self._mark(slot, mv)
        self._write_block([multi, *group, UnitEntry(0, [b"SET", mk, mv], mk), exe], True, after)

    def _script_call(self, w: RedisWriter, groups: list[tuple[int, list[Entry]]], prefix: bytes,
                     value: bytes) -> bool:  # fmt: skip
        """Send a master's part of a unit as one script call; False when it cannot be one."""
        if len(groups) == 1:
            entries = groups[0][1]
        else:
            entries = []
            for _s, g in groups:
                entries += g
        if len(entries) > _SCRIPT_MAX_CMDS:
            return False
        parts: list[bytes] = []
        append = parts.append
        size = nargs = 0
        allowed = _IN_SCRIPT
        for e in entries:
            argv = e.argv
            n = len(argv)
            ok = allowed.get(argv[0])
            if ok is None:
                ok = allowed[argv[0]] = bytes(argv[0]).upper() not in _NOT_IN_SCRIPT
            if e.db or n > _SCRIPT_MAX_ARGS or not ok:
                return False
            data = e.resp
            if not data or data[0] != 42:  # not "*...": encoded here
                if sum(map(len, argv)) > _SCRIPT_MAX_CMD_BYTES:
                    return False
                data = encode(argv)
            ln = len(data)
            if ln > _SCRIPT_MAX_CMD_BYTES:
                return False
            size += ln
            if size > _SCRIPT_MAX_BYTES:
                return False
            # "*N\r\n<args>" -> "$len(N)\r\nN\r\n<args>": the count is the first argument
            append(_BULK_LEN[data.index(b"\r\n", 1, 12) - 1])
            # (a big command is not copied here: the join below makes the one copy)
            append(data[1:] if ln < 2048 else memoryview(data)[1:])
            nargs += n + 1
        mslot = self._mslot[w]
        mk = marker_key(prefix, mslot)
        self._mark(mslot, value)
        ranges = self._ranges[w]
        args = encode([b"1", mk, value + b" " + ranges, ranges])
        total = 6 + nargs
        head = _script_head(total, w in self._loaded)
        self._loaded.add(w)
        resp = b"".join([head, args[4:], *parts])
        call = ScriptCall([b"EVALSHA"], mk, resp, entries, (groups, prefix, value, len(head), total))
        if not self.script_calls:
            log.info("[%s] exactly-once unit scripts: the commands of each stream batch go to"
                     " each master as one atomic script call that also sets the master's"
                     " position marker", self.name)  # fmt: skip
        self.script_calls += 1
        rec = [-1, call, 0, w, w.written + 1]
        self._track.append(rec)
        w.write(call)
        return True

    # -- redirections ------------------------------------------------------------------

    def _redirect(self, message: str, node_host: str) -> tuple[str, str] | None:
        """(kind, info) for a redirection / retry-later error, else None."""
        cls = reply_class(message)
        if cls is Moved or cls is Ask:
            parts = message.split()
            addr = parts[2] if len(parts) > 2 else ""
            if addr.startswith(":"):
                addr = format_address(node_host, int(addr[1:]))
            self.redirects += 1
            if cls is Moved:
                self.moved += 1
                self._need_refresh = True
                return "MOVED", f"{parts[1] if len(parts) > 1 else ''} {addr}"
            self.asked += 1
            return "ASK", addr
        if cls is TryAgain or cls is ClusterDown:
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
            if entry.__class__ is ScriptCall:  # none of its commands ran
                self._script_failed(entry, message, node_host, addr)  # type: ignore[arg-type]
                return
            r = self._redirect(message, node_host)
            if r is None:
                self._fail(_original(entry), message)
                return
            w = self._writers.get(addr)
            self._retry.append((entry, r[0], r[1], self._hold(w), w))

        return handler

    def _script_failed(self, call: ScriptCall, message: str, node_host: str, addr: str) -> None:
        w = self._writers.get(addr)
        rec = self._hold(w)
        cls = reply_class(message)
        if cls is NoScript:
            self._retry.append((call, "NOSCRIPT", message, rec, w))
            return
        if cls is Moved or cls is Ask:
            self._redirect(message, node_host)  # (counted)
        elif cls not in _SCRIPT_TRANSIENT and addr not in self._no_script:
            self._no_script.add(addr)
            log.warning("[%s] %s refuses the exactly-once script (%s): its units are written"
                        " as one MULTI/EXEC per slot", self.name, addr, message)  # fmt: skip
        self._need_refresh = True  # (the topology is read again before the resend)
        self._retry.append((call, "SCRIPT", message, rec, w))

    def _make_abort(self, node_host: str, addr: str):
        def on_abort(entries: list[Entry], errors: list[tuple[Entry, str]], message: str) -> None:
            # a discarded transaction: nothing of it was applied
            r = None
            for m in [*(m for _e, m in errors), message]:
                if m.startswith(_ABORT_BECAUSE):
                    m = m[len(_ABORT_BECAUSE) :]
                if reply_class(m) in _REDIRECTS:
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
        if obj.__class__ is ScriptCall:
            groups, prefix, value, head_len, total = obj.extra
            if kind == "NOSCRIPT" and wfail is not None and self._writers.get(wfail.address) is wfail:
                # the target lost its scripts (restart, SCRIPT FLUSH): the same call as EVAL
                resp = _script_head(total, False) + obj.resp[head_len:]
                again = ScriptCall(obj.argv, obj.key, resp, obj.entries, obj.extra)
                self._loaded.add(wfail)
                self._cur.append(wfail)
                self._cur.append(wfail.written + 1)
                wfail.write(again)
                return
            # not run at all: one MULTI/EXEC per slot, routed by the topology read just now
            self.script_fallbacks += 1
            vals = self._marks.get(key_slot(obj.key))  # (the master's marker was not set)
            if vals is not None and value in vals:
                vals.remove(value)
            after = self._cur
            for slot, group in reversed(groups):
                self._slot_unit_block(slot, group, prefix, value, after)
            return
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
