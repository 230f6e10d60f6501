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
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from redshake.commands.lookup import command_keys
from redshake.commands.slots import SLOTS, key_slot
from redshake.entry import KEYLESS_ALL_MASTERS, Entry
from redshake.resp.conn import Connection, ReplyError, format_address, parse_address
from redshake.writers.base import TargetInfo, WriterError
from redshake.writers.redis import UNLIMITED_QPS, OnError, RedisWriter

__all__ = ["ClusterWriter", "basic_command_keys", "fetch_topology", "KeyFinder"]

# argv -> list of keys ([] = keyless: send to every master), or None = unknown command.
KeyFinder = Callable[[Sequence[bytes]], "list[bytes] | None"]

MAX_REDIRECTS = 16
MAX_RETRIES = 20

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

    __slots__ = ("attempts", "orig")

    def __init__(self, orig: Entry, attempts: int) -> None:
        super().__init__(orig.db, orig.argv, orig.key, orig.offset, orig.resp)
        self.orig = orig
        self.attempts = attempts


def _original(entry: Entry) -> Entry:
    return entry.orig if entry.__class__ is _Retried else entry  # type: ignore[attr-defined]


class ClusterWriter:
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
        self._conn_opts: dict[str, Any] = dict(
            username=username or None,
            password=password or None,
            tls=tls,
            tls_verify=tls_verify,
            ca_cert=(tls_config or {}).get("ca_cert") or None,
            cert=(tls_config or {}).get("cert") or None,
            key=(tls_config or {}).get("key") or None,
            timeout=connect_timeout,
        )
        self._writers: dict[str, RedisWriter] = {}
        self._slots: list[RedisWriter | None] = [None] * SLOTS
        self.masters: list[RedisWriter] = []
        self._retry: deque[tuple[Entry, str, str]] = deque()
        self._need_refresh = False
        self._in_retry = False
        self._exc: BaseException | None = None
        self.written = 0
        self.errors = 0
        self.redirects = 0
        self.moved = 0
        self.asked = 0
        try:
            self.refresh_topology(require_full=True)
        except BaseException:
            self.close()
            raise
        self.info: TargetInfo = self.masters[0].info

    # -- topology ----------------------------------------------------------------------

    def _writer(self, addr: str) -> RedisWriter:
        w = self._writers.get(addr)
        if w is None:
            host, port = parse_address(addr)
            w = RedisWriter(
                addr,
                on_error=self._make_handler(host),
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
        try:
            if self._retry and not self._in_retry:
                self._drain_retry()
            self.written += 1
            self._route(entry)
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

    @property
    def acked_offset(self) -> int:
        """Source offset up to which every entry is applied on every master: the offset of
        the last entry written when nothing is pending, else unknown (-1). Exact tracking of
        interleaved per-master acknowledgements is added with the live-sync reader."""
        if self._retry or any(w.pending for w in self._writers.values()):
            return -1
        return max((w.acked_offset for w in self._writers.values()), default=-1)

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
        return [w.status() for w in self.masters]

    @property
    def answered(self) -> int:
        return sum(w.answered for w in self._writers.values())

    # -- routing -----------------------------------------------------------------------

    def _fail(self, entry: Entry, message: str) -> None:
        self.errors += 1
        if self.on_error is None:
            raise WriterError(f"{self.name}: {message}: {entry!r}")
        self.on_error(entry, message)

    def _route(self, entry: Entry) -> None:
        if entry.db != 0:
            self._fail(
                entry,
                f"db {entry.db} cannot be written to a cluster target; use [filter] allow_db"
                " / a Lua function to remap",
            )
            return
        key = entry.key
        if key.__class__ is bytes:
            w = self._slots[key_slot(key)]
            if w is None:
                self._retry.append((entry, "RETRY", "CLUSTERDOWN slot not served"))
                self._need_refresh = True
                return
            w.write(entry)
            return
        if key is KEYLESS_ALL_MASTERS:
            for w in self.masters:
                w.write(entry)
            return
        keys = self.key_finder(entry.argv)
        if keys is None:
            self._fail(entry, f"cannot find the keys of {entry.cmd} to route it in a cluster")
            return
        if not keys:
            for w in self.masters:
                w.write(entry)
            return
        s0 = key_slot(keys[0])
        if all(key_slot(k) == s0 for k in keys[1:]):
            w = self._slots[s0]
            if w is None:
                self._retry.append((entry, "RETRY", "CLUSTERDOWN slot not served"))
                self._need_refresh = True
                return
            w.write(entry)
            return
        for part in self._split(entry):
            self._route(part)

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
        return [Entry(0, [argv[0], *part], part[0], entry.offset) for part in groups.values()]

    # -- redirections ------------------------------------------------------------------

    def _make_handler(self, node_host: str) -> OnError:
        def handler(entry: Entry, message: str) -> None:
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
                    self._retry.append(
                        (entry, code, f"{parts[1] if len(parts) > 1 else ''} {addr}")
                    )
                else:
                    self.asked += 1
                    self._retry.append((entry, code, addr))
            elif code in ("TRYAGAIN", "CLUSTERDOWN"):
                self._retry.append((entry, "RETRY", message))
            else:
                self._fail(_original(entry), message)

        return handler

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
                for e, kind, _info in items:
                    if kind == "RETRY":
                        worst = max(worst, getattr(e, "attempts", 0) + 1)
                if worst:
                    time.sleep(min(0.005 * (2 ** min(worst, 7)), 0.5))
                for entry, kind, info in items:
                    n = entry.attempts + 1 if entry.__class__ is _Retried else 1  # type: ignore[attr-defined]
                    orig = _original(entry)
                    limit = MAX_RETRIES if kind == "RETRY" else MAX_REDIRECTS
                    if n > limit:
                        self._fail(
                            orig, f"gave up after {n - 1} redirections/retries: {kind} {info}"
                        )
                        continue
                    again = _Retried(orig, n)
                    if kind == "ASK":
                        self._writer(info).write_asking(again)
                    elif kind == "MOVED":
                        slot_s, _, addr = info.partition(" ")
                        if slot_s.isdigit() and addr:
                            # the redirect is authoritative even if the map read just now lags
                            self._slots[int(slot_s)] = self._writer(addr)
                        self._route(again)
                    else:
                        self._route(again)
                if self._retry:
                    for w in list(self._writers.values()):
                        w.flush()
        finally:
            self._in_retry = False

    def __enter__(self) -> ClusterWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
