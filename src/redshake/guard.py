"""Reverse-sync guard: a live sync says on its target "a sync from source S writes here".

Disaster-recovery pairs run A->B, fail over to B, then B->A to bring A back. Starting B->A
while A->B still runs makes a loop: every write bounces between the two deployments (and each
snapshot wipes the other side). So every live sync (``[sync_reader]`` into ``[redis_writer]``)
keeps a *live marker* on its target::

    redshake:live:<replication id of the source>   (db advanced.exactly_once_db, PX ttl)
    value: {"source": "a:6379", "replid": "...", "target": "b:6379", "heartbeat": 1733..., ...}

refreshed every ``BEAT`` seconds with a TTL of ``TTL_MS``, and deleted on a clean stop, so a
stopped (or killed) sync stops blocking within ``TTL_MS``. The key is named by the source's
*replication id* (``master_replid``; a replica reports its master's), which both sides can
compute whatever addresses they use (NodePort vs ClusterIP, replica vs master).

Before anything is written, a live sync X->Y asks every master of Y for its replication id
and looks for ``redshake:live:<that id>`` on X: found means a sync from Y is writing into X
right now, and X->Y is refused (exit 2) with the other sync's source, target and heartbeat.

Why not the exactly-once marker ``redshake:pos:<source>``: it is only written in the stream
phase (not while the snapshot is applied), only with exactly-once on, only when commands
flow (an idle source never refreshes it), and it must outlive the sync (a restart resumes
from it), so it cannot say whether its writer is still alive.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .errors import BadInput, Redirect, reply_class
from .resp.conn import ConnError, ReplyError, connect
from .resp.server import read_info

__all__ = ["LIVE_PREFIX", "LiveMarker", "ReverseSyncRefused", "check_reverse", "live_key"]

log = logging.getLogger("redshake")

LIVE_PREFIX = "redshake:live:"
BEAT = 2.0  # seconds between heartbeats
TTL_MS = 15_000  # a marker not refreshed for this long has expired: its sync is gone


class ReverseSyncRefused(BadInput):
    """This sync would write into the source of a live sync that writes into our source."""


def live_key(replid: str) -> bytes:
    return (LIVE_PREFIX + replid).encode()


def _opts(ep, timeout: float = 5.0) -> dict[str, Any]:
    return ep.connect_options(timeout)


def _address(ep, role: str) -> str:
    sentinel = getattr(ep, "sentinel", None)
    if sentinel is not None and sentinel.address:
        from .resp.server import resolve_from_config

        return resolve_from_config(sentinel, role)
    return ep.address


def _info(conn, section: str) -> dict[str, str]:
    return read_info(conn, section)


def _routed(address: str, opts: dict[str, Any], db: int, *args: Any) -> Any:
    """Run one key command on a standalone server (in ``db``) or on the cluster node that
    owns the key (following MOVED / ASK redirections)."""
    for _ in range(5):
        with connect(address, **opts) as c:
            if db:
                c.call("SELECT", db)
            try:
                return c.call(*args)
            except ReplyError as e:
                word, _, rest = e.message.partition(" ")
                if not issubclass(reply_class(word), Redirect):
                    raise
                address = rest.split(" ", 1)[1] if " " in rest else rest
    raise ConnError(f"too many cluster redirections for {args[0]!r}")


def _masters(ep, address: str, opts: dict[str, Any]) -> list[str]:
    if not ep.cluster:
        return [address]
    from .shards import source_shards

    return [a for a, _ranges, _ids in source_shards(address, **opts)]


def check_reverse(cfg) -> None:
    """Raise :class:`ReverseSyncRefused` when the target of this (live) sync is the source of
    a live sync writing into our source. Unreachable servers are not our business here: the
    reader and writer report them."""
    if cfg.reader_type != "sync" or cfg.writer_type != "redis" or not cfg.advanced.reverse_guard:
        return
    db = cfg.advanced.exactly_once_db
    try:
        src_opts, dst_opts = _opts(cfg.reader), _opts(cfg.writer)
        src = _address(cfg.reader, "source master")
        dst = _address(cfg.writer, "target master")
        replids = []
        for m in _masters(cfg.writer, dst, dst_opts):
            with connect(m, **dst_opts) as c:
                info = _info(c, "replication")
            replids += [(m, info.get("master_replid", ""))]
        for m, replid in replids:
            if not replid:
                continue
            raw = _routed(src, src_opts, 0 if cfg.reader.cluster else db, "GET", live_key(replid))
            try:
                other = json.loads(raw) if isinstance(raw, bytes) else None
            except ValueError:
                other = None
            if not isinstance(other, dict) or other.get("replid") != replid:
                if raw is not None:  # not a marker of ours: a key of the same name is only data
                    log.debug("reverse-sync guard: %r holds %r: not a live marker", live_key(replid), raw)
                continue
            age = time.time() - float(other.get("heartbeat") or 0)
            raise ReverseSyncRefused(
                f"reverse sync refused: the target {m} is the source of a live sync writing into "
                f"this sync's source {src} (sync {other.get('source', '?')} -> {other.get('target', '?')}, "
                f"host {other.get('host', '?')} pid {other.get('pid', '?')}, last heartbeat "
                f"{age:.1f}s ago, key {live_key(replid).decode()!r}). Stop that sync first (its "
                f"marker expires {TTL_MS // 1000}s after it stops), or set "
                "advanced.reverse_guard = false"
            )
        _check_echo(cfg, src, src_opts, dst, {r for _, r in replids if r})
    except (ConnError, OSError, ValueError) as e:
        # (not silent: a DR source that is still down at the start is not checked)
        log.warning("reverse-sync guard: cannot check (%s): this sync starts unchecked", e)
    except ReplyError as e:  # ACL without GET / INFO: say so, do not block
        log.warning("reverse-sync guard: cannot check (%s)", e.message)


def _check_echo(cfg, src: str, src_opts: dict[str, Any], dst: str, dst_replids: set[str]) -> None:
    """A sync about to *resume* X->Y from its checkpoint: has a sync Y->X written into X
    since? Its exactly-once marker ``<exactly_once_key>:<Y>`` on X, holding Y's replication
    id and written after our checkpoint, says so; X's backlog then holds those writes and a
    partial resync would send them back to Y, applying them twice. (Standalone sources; the
    marker is found when both configs name Y with the same address.)"""
    from .readers.sync_reader import planned_resume, reader_dirname

    adv = cfg.advanced
    if cfg.reader.cluster or cfg.reader.sentinel.enabled or not adv.exactly_once_key or not dst_replids:
        return
    if not planned_resume(Path(adv.dir), src, cfg.reader.sync_aof):
        return
    cp = Path(adv.dir).absolute() / reader_dirname(src) / "checkpoint.json"
    key = f"{adv.exactly_once_key}:{cfg.writer.address or dst}"
    with connect(src, **src_opts) as c:
        if adv.exactly_once_db:
            c.call("SELECT", adv.exactly_once_db)
        idle = c.pipeline([("OBJECT", "IDLETIME", key), ("GET", key)])
    if isinstance(idle[1], ReplyError) or idle[1] is None:
        return
    replid = bytes(idle[1]).split(b" ", 1)[0].decode("ascii", "replace")
    if replid not in dst_replids:
        return
    age = time.time() - cp.stat().st_mtime
    if isinstance(idle[0], int) and idle[0] > age + 1:
        return  # written before our checkpoint: those writes are behind us
    raise ReverseSyncRefused(
        f"resume refused: the source {src} holds {key!r}, the position marker of a sync from this "
        f"sync's target {dst} that wrote into {src} after this sync's checkpoint ({cp}) was saved. "
        f"Resuming would send those writes back to {dst} and apply them twice. Start this sync "
        f"from a full copy: remove {cp.parent} (with advanced.empty_db_before_sync = true), or set "
        "advanced.reverse_guard = false"
    )


class LiveMarker(threading.Thread):
    """Keeps ``redshake:live:<source replid>`` alive on the target while the sync runs.

    ``replid`` returns the replication id the reader follows ("" before the first PSYNC
    answer, when nothing is written yet; a server that gets its first replica takes a new
    replication id then). Errors are logged once and retried every beat."""

    def __init__(self, cfg, source: str, replid) -> None:
        super().__init__(name="redshake-live-marker", daemon=True)
        self.cfg = cfg
        self.source = source
        self.replid = replid
        self.halt = threading.Event()
        self.key: bytes | None = None
        self._warned = False
        self._target = ""

    def beat(self) -> None:
        wc = self.cfg.writer
        if not self._target:
            self._target = _address(wc, "target master")
        rid = self.replid() or ""
        if not rid:  # (before the source's PSYNC answer: nothing is written yet)
            return
        key = live_key(rid)
        value = json.dumps({
            "source": self.source, "replid": rid, "target": self._target, "heartbeat": round(time.time(), 3),
            "host": socket.gethostname(), "pid": os.getpid(),
        })  # fmt: skip
        db = 0 if wc.cluster else self.cfg.advanced.exactly_once_db
        if self.key is not None and key != self.key:  # the source's history changed
            _routed(self._target, _opts(wc), db, "DEL", self.key)
        _routed(self._target, _opts(wc), db, "SET", key, value, "PX", TTL_MS)
        self.key = key

    def run(self) -> None:
        last = 0.0
        while not self.halt.is_set():
            # at once when the replication id appears or changes (a full resync), else every
            # BEAT (and every BEAT while the target does not answer)
            rid = self.replid()
            changed = bool(rid) and self.key != live_key(rid) and not self._warned
            if changed or time.monotonic() - last >= BEAT:
                try:
                    self.beat()
                    last = time.monotonic()
                    self._warned = False
                except (ConnError, ReplyError, OSError, ValueError) as e:
                    if not self._warned:
                        log.warning("live marker on the target not refreshed: %s (retrying)", e)
                        self._warned = True
                    last = time.monotonic()
                    if self.cfg.writer.sentinel.enabled:  # the master may have failed over: ask again
                        self._target = ""
            self.halt.wait(0.2)

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(timeout=10)
        if self.key is not None:
            try:
                db = 0 if self.cfg.writer.cluster else self.cfg.advanced.exactly_once_db
                target = self._target or _address(self.cfg.writer, "target master")
                _routed(target, _opts(self.cfg.writer), db, "DEL", self.key)
            except (ConnError, ReplyError, OSError, ValueError) as e:
                log.debug("live marker not removed (%s): it expires by itself", e)
