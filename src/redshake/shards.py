"""Cluster sources: one OS process per source shard.

A ``[sync_reader]`` with ``cluster = true`` reads every master of the source cluster (or one
healthy replica of each, with ``prefer_replica``). Each shard runs the ordinary pipeline —
reader -> transform -> writer — in its own process, so every core is used and a slow shard
never holds back another. Each shard process has its own work directory
``<dir>/shard_<host>_<port>`` (its log, spool and checkpoint), so a restart resumes every shard
from its own checkpoint.

The parent process holds the main work directory, serves the status port with one reader and
one writer object per shard (RedisShake's cluster layout) and totals across shards, prints the
progress line for every shard each interval (RedisShake prints one shard per tick), forwards
SIGINT/SIGTERM to the shards and exits with the worst shard's exit code.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from .config.schema import Config
from .errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, FatalError
from .readers.topology import LANES
from .resp.conn import Connection, ConnError, ReplyError, parse_address
from .resp.server import ServerInfo, cluster_shards, keyspace_counts, read_info

__all__ = ["source_shards", "run_sharded"]

log = logging.getLogger("redshake")

STATUS_EVERY = 1.0


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


Shard = tuple[str, list[tuple[int, int]], set[str]]


def source_shards(address: str, *, prefer_replica: bool = False, **conn_kw) -> list[Shard]:
    """(address to read from, slot ranges, node ids of the shard's master and replicas) for
    each master owning slots; the address is the master's, or one healthy replica's with
    ``prefer_replica`` (see :func:`redshake.resp.server.cluster_shards` for which address)."""
    host, port = parse_address(address)
    with Connection(host, port, **conn_kw) as c:
        shards = cluster_shards(c, bool(conn_kw.get("tls")))
    return [(sh.read_address(prefer_replica), sh.ranges, sh.ids) for sh in shards]


def select_shards(shards: list[tuple[str, list[tuple[int, int]]]], index: int, count: int):
    """``sync_reader.shards = "index/count"``: the shards at positions index, index + count, ...
    once ordered by their first slot (the same split for every process, whatever the
    addresses or the order the cluster lists its nodes in)."""
    ordered = sorted(shards, key=lambda s: min(lo for lo, _ in s[1]))
    return ordered[index::count]


def flush_slots(writer, ranges: list[tuple[int, int]], dbs: Iterable[int] = (0,),
                keep: tuple[bytes, ...] = ()) -> int:  # fmt: skip
    """Delete, on the target, every key of ``dbs`` whose slot lies in ``ranges``: what a full
    resync of one source shard must remove when the target is shared with the other shards
    (a FLUSHALL would erase their data). Keys starting with one of ``keep`` stay: redshake's
    own position markers and live markers, those of the other shards among them (deleting
    one would make that shard think the target lost its writes). Returns the number of keys
    deleted."""
    from .commands.slots import key_slot

    wanted = bytearray(16384)
    for lo, hi in ranges:
        for s in range(lo, hi + 1):
            wanted[s] = 1
    writer.flush()
    cluster = getattr(writer, "masters", None)
    nodes = list(cluster or [writer])
    deleted = 0
    for w in nodes:
        for db in dbs:
            w.select(db)  # (on the writer's connection, which then knows its db)
            cursor = b"0"
            while True:
                cursor, keys = w.conn.call("SCAN", cursor, "COUNT", 1000)
                by_slot: dict[int, list[bytes]] = {}
                for k in keys:
                    if keep and k.startswith(keep):
                        continue
                    slot = key_slot(k)
                    if wanted[slot]:
                        by_slot.setdefault(slot, []).append(k)
                if by_slot:  # one DEL per slot: a cluster node refuses cross-slot DELs
                    for reply in w.conn.pipeline([("DEL", *ks) for ks in by_slot.values()]):
                        if isinstance(reply, ReplyError):
                            raise reply
                    deleted += sum(len(ks) for ks in by_slot.values())
                if cursor in (b"0", 0, "0"):
                    break
    return deleted


def shard_dbs(rc, address: str, writer) -> range:
    """The dbs a source shard's full resync must clear on the target: those the source node
    serves (Valkey 9+ ``cluster-databases``; db 0 elsewhere, or when CONFIG is refused and
    INFO keyspace shows no other db), at most those the target has."""
    n = 1
    try:
        host, port = parse_address(address)
        with Connection(host, port, **rc.connect_options()) as c:
            try:
                r = c.call("CONFIG", "GET", "cluster-databases")
                if isinstance(r, dict):
                    r = [x for kv in r.items() for x in kv]
                if isinstance(r, list) and len(r) >= 2 and _s(r[1]).isdigit():
                    n = max(1, int(_s(r[1])))
            except ReplyError:  # (CONFIG forbidden: the dbs holding keys now)
                n = 1 + max(keyspace_counts(read_info(c, "keyspace")), default=0)
    except (OSError, ReplyError) as e:
        log.warning("%s: cannot read its databases (%s): the resync clears db 0 only", address, e)
    target = getattr(writer, "databases", 0) or getattr(getattr(writer, "info", None), "databases", 1)
    return range(min(n, max(1, target)))


def current_ranges(shard: dict) -> list[tuple[int, int]]:
    """The slots a shard process's source master owns now (those it had at start when the
    cluster cannot be asked): what a full resync of that shard must empty on the target."""
    resolver = shard.get("resolver")
    if resolver is not None:
        try:
            resolver()
            return resolver.ranges
        except (ConnError, OSError) as e:
            log.warning("cannot ask the source cluster for the shard's slots (%s): using %s", e, shard["ranges"])
    return shard["ranges"]


def guarded(write, guard, reader, stats, handover=None):
    """``write`` for a shard process: its DEL / UNLINK of keys that moved to another shard
    are checked first (see readers.topology.MigrationGuard). Starts publishing the shard's
    watermark for the other shards (readers.topology.Handover)."""
    import threading

    guard.on_skip = lambda n: stats.skip("moved_to_other_shard", n)
    if handover is not None:

        def publish() -> None:
            while True:
                try:
                    handover.publish(reader)
                except Exception:  # never let it die on a race with the pipeline thread
                    log.debug("watermark", exc_info=True)
                time.sleep(0.005)

        threading.Thread(target=publish, name="watermark", daemon=True).start()
    received_by = reader.received_by
    check = guard.filter

    def write_checked(entry) -> None:
        a0 = entry.argv[0]
        n = len(a0)
        if n == 7 and a0.lower() == b"cluster":  # (SYNCSLOTS: never written)
            guard.slot_sync(entry.argv)
            return
        if guard.imports and guard.imported_copy(entry.argv):
            stats.skip("atomic_slot_import_copy")
            return
        if (n == 3 or n == 6) and a0.lower() in (b"del", b"unlink"):
            entry = check(entry, received_by(entry.offset))
            if entry is None:
                return
        write(entry)

    return write_checked


def guarded_runs(write_run, write_checked, guard):
    """``write_run`` for a shard process: while an atomic slot import runs, runs go command
    by command through ``write_checked`` (the import's copy is not applied)."""

    def write_run_checked(run) -> None:
        if guard.imports:
            for e in run.entries():
                write_checked(e)
        else:
            write_run(run)

    return write_run_checked


def _shard_main(run_shard, cfg: Config, address: str, identity: str, ranges, members, seeds,
                workdir: str, status_q, code_q, marks, counts, addrs, offsets, index: int,
                late: bool) -> None:  # fmt: skip
    """Child process: run the ordinary pipeline for one shard (``run_shard(cfg, shard)``)."""
    from .readers.topology import Handover, MigrationGuard, ShardResolver

    adv = replace(cfg.advanced, dir=workdir, status_port=0, metrics_port=0)
    reader = replace(cfg.reader, cluster=False, address=address, prefer_replica=False)
    shard_cfg = replace(cfg, advanced=adv, reader=reader)
    shard = {"address": address, "ranges": ranges, "queue": status_q, "identity": identity,
             "late": late}  # fmt: skip
    opts = cfg.reader.connect_options()
    if not cfg.reader.prefer_replica:  # (a replica is read where it is)
        resolver = ShardResolver(address, members, seeds, opts, label=f"shard {address}")
        shard["resolver"] = resolver
        guard = shard["guard"] = MigrationGuard(resolver, opts, lambda n: None)
        if index >= 0:
            shard["handover"] = Handover(guard, marks, counts, addrs, index, ranges, offsets)
    try:
        code = run_shard(shard_cfg, shard)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        log.error("shard %s failed: %s: %s", address, type(e).__name__, e)
        code = EXIT_FAILURE
    code_q.put((address, code))


MAX_SHARDS = 256  # shards whose order is kept when slots move between them
NEVER = float("inf")
TOPOLOGY_EVERY = 2.0  # seconds between two looks at the source cluster's masters
RETIRE_WAIT = 30.0  # a removed shard's process gets this long to apply what it received


def run_sharded(cfg: Config, stop, run_shard, stats_totals_cb=None) -> int:
    """Parent: discover shards, start one process each, aggregate status, wait; start a
    process for every master that joins the source cluster later, and stop (after it applied
    what it received) the process of a shard that left it. Each process runs
    ``run_shard(cfg, shard)`` (the pipeline of one shard; ``shard`` describes it)."""
    from .status.stats import combine

    rc = cfg.reader
    try:
        shards = _discover(cfg, stop)
    except _StartError as e:
        log.error("%s. Nothing was written.", e)
        return e.code
    if not shards:
        log.error("cluster source %s: no master owns slots", rc.address)
        return EXIT_FAILURE
    picked = rc.shard_slice()
    others: set[str] = set()  # node ids of the shards another process reads (shards = I/N)
    if picked is not None:
        every = len(shards)
        everyone = shards
        shards = select_shards(shards, *picked)
        mine = {a for a, _, _ in shards}
        others = {i for a, _, ids in everyone if a not in mine for i in ids}
        log.info(
            "sync_reader.shards = %s: this process reads %d of the %d shards", rc.shards, len(shards), every
        )
        if not shards:
            log.error("sync_reader.shards = %s: no shard left (the source has %d)", rc.shards, every)
            return EXIT_BAD_INPUT
    log.info("cluster source %s: %d shards: %s", rc.address, len(shards), ", ".join(a for a, _, _ in shards))
    latest: dict[str, dict] = {}
    codes: dict[str, int] = {}  # exit code of every shard process that ended
    server = None
    names = [a for a, _, _ in shards]
    if cfg.advanced.status_port:
        from .status.server import StatusServer

        board = _ShardBoard(latest, names, codes)
        try:
            server = StatusServer(cfg.advanced.status_port, cfg.advanced.status_bind, board, workdir=cfg.advanced.dir)
        except OSError as e:
            log.error("config error: %s. Nothing was written.", e)
            return EXIT_BAD_INPUT
    if cfg.advanced.empty_db_before_sync:
        try:
            cfg = _empty_target_once(cfg, shards)
        except _StartError as e:
            if server is not None:
                server.close()
            log.error("%s. Nothing was written.", e)
            return e.code
    ctx = mp.get_context("fork")
    status_q = ctx.Queue()
    code_q = ctx.Queue()
    base = Path(cfg.advanced.dir)
    procs: dict[str, mp.process.BaseProcess] = {}
    members: dict[str, set[str]] = {}
    seeds = [rc.address, *names]

    # A master that joins later holds keys the target already has (copied from the shard
    # they came from), and may have deleted some before we follow it: its slots are emptied
    # on the target before its snapshot (never the whole target), which replaces keys.
    late_cfg = replace(cfg, advanced=replace(
        cfg.advanced, rdb_restore_command_behavior="rewrite", empty_db_before_sync=False
    ))  # fmt: skip

    # each shard's watermark (see readers.topology.Handover); NEVER: no such shard (any more)
    marks = ctx.Array("d", [NEVER] * MAX_SHARDS + [0.0] * MAX_SHARDS, lock=False)
    # per lane (importing shard) and slot: keys moved out, copies applied; shards' addresses
    counts = ctx.Array("q", LANES * 2 * 16384, lock=False)
    addrs = ctx.Array("q", MAX_SHARDS, lock=False)
    # per shard: the source offset up to which it applied its stream (-1: none yet), and
    # 1 + the index of the shard whose stream it waits for (0: none)
    offsets = ctx.Array("q", [-1] * MAX_SHARDS + [0] * MAX_SHARDS, lock=False)
    index: dict[str, int] = {}

    def launch(addr: str, ranges, ids: set[str], late: bool = False) -> None:
        home, identity = _shard_home(base, addr, ids)
        wd = str(home)
        i = index[addr] = len(index) if len(index) < MAX_SHARDS else -1
        if i >= 0:
            marks[i] = 0.0
        else:
            log.warning("more than %d shards: %s is not ordered with the others when slots move", MAX_SHARDS, addr)
        p = ctx.Process(
            target=_shard_main,
            args=(run_shard, late_cfg if late else cfg, addr, identity, ranges, ids, seeds, wd, status_q,
                  code_q, marks, counts, addrs, offsets, i, late),
            name=f"shard-{addr}",
        )  # fmt: skip
        p.start()
        procs[addr] = p
        members[addr] = set(ids)

    for addr, ranges, ids in shards:
        launch(addr, ranges, ids)
    if server is not None:
        server.start()
    forwarded = False
    last_line = time.monotonic()
    watch = _TopologyWatch(seeds, members, rc.connect_options(), others) if not rc.prefer_replica else None
    retiring: dict[str, float] = {}
    reported: set[str] = set()
    try:
        while len(codes) < len(procs):
            if stop() and not forwarded:
                for p in procs.values():
                    if p.is_alive() and p.pid:
                        os.kill(p.pid, signal.SIGTERM)
                forwarded = True
            try:
                addr, snap = status_q.get(timeout=0.2)
                latest[addr] = snap
            except queue.Empty:
                pass
            while True:
                try:
                    addr, code = code_q.get_nowait()
                except queue.Empty:
                    break
                codes[addr] = code
            for addr, p in procs.items():
                if index[addr] >= 0 and marks[index[addr]] != NEVER and not p.is_alive():
                    marks[index[addr]] = NEVER  # (nobody waits for a shard that ended)
                    addrs[index[addr]] = 0
                if addr not in codes and not p.is_alive() and p.exitcode is not None:
                    p.join(0.5)
                    try:  # the code may still be in the queue
                        a2, c2 = code_q.get(timeout=0.5)
                        codes[a2] = c2
                    except queue.Empty:
                        codes.setdefault(addr, EXIT_FAILURE if p.exitcode else EXIT_OK)
            if watch is not None and not forwarded and watch.due():
                joined, left = watch.look()
                for addr, ranges, ids in joined:
                    if addr in procs:
                        continue  # (an address that comes back: its process still runs)
                    if picked is not None:  # which of the N processes reads it is not ours to say
                        log.warning(
                            "cluster source: master %s joined (slots %s): not followed with "
                            "sync_reader.shards = %s (restart the processes to split anew)",
                            addr, _fmt_ranges(ranges), rc.shards,
                        )  # fmt: skip
                        watch.others |= ids
                        continue
                    log.info("cluster source: master %s joined (slots %s): following it", addr, _fmt_ranges(ranges))
                    names.append(addr)
                    launch(addr, ranges, ids, late=True)
                for addr in left:
                    if addr not in retiring and addr not in codes:
                        log.info("cluster source: the shard of %s left the cluster: stopping its "
                                 "process once it applied what it received", addr)  # fmt: skip
                        retiring[addr] = time.monotonic()
            for addr in codes.keys() - reported:
                reported.add(addr)
                if not forwarded:  # (a shard that ends while the others go on)
                    log.info("shard %s ended with exit code %s", addr, codes[addr])
            for addr, since in list(retiring.items()):
                p = procs[addr]
                if addr in codes or not p.is_alive():
                    retiring.pop(addr)
                elif _caught_up(latest.get(addr)) or time.monotonic() - since > RETIRE_WAIT:
                    if p.pid:
                        os.kill(p.pid, signal.SIGTERM)
                    retiring.pop(addr)
            iv = cfg.advanced.log_interval
            if iv > 0 and time.monotonic() - last_line >= iv and latest:
                last_line = time.monotonic()
                tot = combine([s["stats"] for s in latest.values()])["total_entries_count"]
                log.info(
                    "shards: %d/%d running, read_count=[%d], write_count=[%d]",
                    sum(p.is_alive() for p in procs.values()), len(procs),
                    tot["read_count"], tot["write_count"],
                )  # fmt: skip
    finally:
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        if server is not None:
            server.close()
    worst = max(codes.values()) if codes else EXIT_FAILURE
    for addr in procs:
        log.info("shard %s exited with %s", addr, codes.get(addr))
    return worst


def _fmt_ranges(ranges) -> str:
    return ",".join(f"{lo}-{hi}" if hi != lo else str(lo) for lo, hi in ranges) or "none"


def _caught_up(snap: dict | None) -> bool:
    """A shard's status says: not connected to its source, everything received applied."""
    if not snap:
        return False
    r = snap.get("reader") or {}
    return (
        not r.get("connected")
        and r.get("status") == "syncing aof"
        and r.get("aof_applied_offset", -1) >= r.get("aof_received_offset", 0)
    )


class _TopologyWatch:
    """The parent's periodic look at the source cluster: masters owning slots that no
    running shard knows (joined), shards none of whose nodes is in the cluster any more
    (left)."""

    def __init__(
        self, seeds: list[str], members: dict[str, set[str]], conn_kw: dict, others: set[str] = frozenset()
    ) -> None:
        self.seeds = seeds
        self.members = members
        # the nodes of shards other processes read (sync_reader.shards = "I/N"): never "joined"
        self.others = set(others)
        self.conn_kw = conn_kw
        self.next = time.monotonic() + TOPOLOGY_EVERY
        self.gone: set[str] = set()

    def due(self) -> bool:
        return time.monotonic() >= self.next

    def look(self) -> tuple[list[Shard], list[str]]:
        from .readers.topology import cluster_view

        self.next = time.monotonic() + TOPOLOGY_EVERY
        try:
            _, nodes = cluster_view(self.seeds, self.conn_kw)
        except (ConnError, OSError) as e:
            log.debug("topology look failed: %s", e)
            return [], []
        for n in nodes:
            if n.usable and n.address not in self.seeds:
                self.seeds.append(n.address)
        known = {n.id for n in nodes}
        for ids in self.members.values():  # a shard's new replicas are its members too
            ids |= {n.id for n in nodes if n.master_id in ids}
        others = self.others
        others |= {n.id for n in nodes if n.master_id in others}
        covered = set().union(others, *self.members.values())
        joined: list[Shard] = [
            (n.address, list(n.ranges), {n.id} | {r.id for r in nodes if r.master_id == n.id})
            for n in nodes
            if n.is_master and n.usable and n.ranges and n.id not in covered
        ]
        left = [a for a, ids in self.members.items() if not ids & known and a not in self.gone]
        self.gone.update(left)
        return joined, left


class _StartError(Exception):
    """The cluster source cannot be started: ``code`` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _discover(cfg: Config, stop) -> list[Shard]:
    """The shards of the source cluster; a source never reached is tried again until
    sync_reader.connect_timeout (then exit 1); refusals are bad configuration (exit 2)."""
    from .readers.sync_reader import reach_source
    from .resp.conn import AuthError, TLSVerifyError

    rc = cfg.reader
    opts = rc.connect_options()
    try:
        return reach_source(
            lambda: source_shards(rc.address, prefer_replica=rc.prefer_replica, **opts),
            rc.address, float(rc.connect_timeout), stop, "cluster source",
        )  # fmt: skip
    except (AuthError, TLSVerifyError) as e:
        raise _StartError(f"the cluster source {rc.address} refused us: {e}", EXIT_BAD_INPUT) from None
    except ReplyError as e:
        if "cluster support disabled" in e.message:
            raise _StartError(
                f"the source {rc.address} is not a node of a cluster: set cluster = false in "
                "[sync_reader]",
                EXIT_BAD_INPUT,
            ) from None
        raise _StartError(
            f"the source {rc.address} refused to describe its cluster: {e.message}", EXIT_BAD_INPUT
        ) from None
    except FatalError as e:
        raise _StartError(str(e), EXIT_FAILURE) from None
    except KeyboardInterrupt:
        raise _StartError("stopped before the source was reached", EXIT_FAILURE) from None


def _empty_target_once(cfg: Config, shards) -> Config:
    """advanced.empty_db_before_sync for a cluster source: the target is emptied once, here,
    when every shard starts with a full sync; when some shard resumes from its checkpoint the
    target is kept and each shard that needs a snapshot empties only its own slots (a
    FLUSHALL would erase what the resuming shards copied). Returns the shards' config."""
    from .readers.sync_reader import planned_resume
    from .writers import build_writer
    from .writers.base import not_cluster_writer

    base = Path(cfg.advanced.dir)
    if cfg.reader.shards:
        log.info(
            "empty_db_before_sync with sync_reader.shards = %s: each shard empties only its own "
            "slots (the other processes' shards share the target)", cfg.reader.shards,
        )  # fmt: skip
        return cfg
    resuming = []
    for a, _, ids in shards:
        home, identity = _shard_home(base, a, ids)
        if planned_resume(home, identity, cfg.reader.sync_aof):
            resuming.append(a)
    if resuming:
        log.info(
            "empty_db_before_sync: %d of %d shards resume from their checkpoints: the target is "
            "kept; a shard that needs a full sync empties only its own slots",
            len(resuming), len(shards),
        )  # fmt: skip
        return cfg
    log.info("empty_db_before_sync: emptying the target once (FLUSHALL) before the shards start")
    try:
        writer = build_writer(cfg, None)
    except Exception as e:
        raise _StartError(f"cannot use the target: {type(e).__name__}: {e}", 1) from None
    try:
        if cfg.writer_type == "redis" and writer.info.cluster and not cfg.writer.cluster:
            raise _StartError(f"config error: {not_cluster_writer(cfg.writer.address)}", EXIT_BAD_INPUT)
        writer.flushall()
    except _StartError:
        raise
    except Exception as e:
        raise _StartError(f"empty_db_before_sync: the target refused to be emptied: {e}", EXIT_BAD_INPUT) from None
    finally:
        try:
            writer.close()
        except Exception:
            log.debug("close failed", exc_info=True)
    return replace(cfg, advanced=replace(cfg.advanced, empty_db_before_sync=False))


def _shard_home(base: Path, address: str, members: set[str]) -> tuple[Path, str]:
    """(work directory, identity) of the shard whose master is ``address``. The identity is
    the master's address when the directory was made: the shard's checkpoint and position
    markers belong to it. A restart after a failover finds the directory of the shard by
    its nodes (``shard.json``) and resumes there, from the promoted replica."""
    home = _shard_dir(base, address)
    found: tuple[Path, str] | None = None
    if (home / SHARD_FILE).is_file() or home.is_dir():
        found = home, _shard_record(home).get("address", address)
    else:
        for d in sorted(base.glob("shard_*")) if base.is_dir() else ():
            rec = _shard_record(d)
            if members & set(rec.get("members", ())):
                log.info(
                    "cluster source: the shard of %s was followed from %s before (a failover "
                    "since): continuing in %s", address, rec.get("address"), d,
                )  # fmt: skip
                found = d, str(rec.get("address") or address)
                break
    home, identity = found or (home, address)
    try:
        home.mkdir(parents=True, exist_ok=True)
        rec = _shard_record(home)
        known = set(rec.get("members", ())) | members
        (home / SHARD_FILE).write_text(json.dumps({"address": identity, "members": sorted(known)}))
    except OSError as e:
        log.warning("cannot record the shard's nodes in %s: %s", home, e)
    return home, identity


SHARD_FILE = "shard.json"


def _shard_record(d: Path) -> dict:
    try:
        rec = json.loads((d / SHARD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _shard_dir(base: Path, address: str) -> Path:
    host, port = parse_address(address)
    return base / f"shard_{host.replace(':', '_')}_{port}"


def is_cluster_node(rc) -> bool:
    """Whether the source of reader config ``rc`` answers INFO with cluster_enabled:1 (False
    when it cannot be asked: the reader then reports the problem itself)."""
    from .resp.conn import ConnError

    host, port = parse_address(rc.address)
    try:
        with Connection(host, port, io_timeout=30.0, **rc.connect_options()) as c:
            info = read_info(c, "cluster")
    except (ConnError, OSError, ReplyError):
        return False
    return ServerInfo.from_fields(info).cluster


class _ShardBoard:
    """Status document for a cluster source: per-shard reader and writer objects, totals,
    and the exit code of every shard process that ended (``redshake.shards_ended``)."""

    def __init__(self, latest: dict[str, dict], shards: list[str], codes: dict[str, int]) -> None:
        self.latest = latest
        self.shards = shards
        self.codes = codes
        self.start_time = time.time()

    def __call__(self) -> dict:
        from .status.stats import combine

        snaps = [self.latest[a] for a in self.shards if a in self.latest]
        tot = combine([s["stats"] for s in snaps]) if snaps else {}
        writers = []
        for s in snaps:
            w = s.get("writer")
            writers.extend(w if isinstance(w, list) else [w])
        return {
            "start_time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.start_time)),
            "consistent": bool(snaps) and len(snaps) == len(self.shards) and all(s.get("consistent") for s in snaps),
            "total_entries_count": tot.get("total_entries_count", {}),
            "per_cmd_entries_count": tot.get("per_cmd_entries_count", {}),
            "reader": [s.get("reader") for s in snaps],
            "writer": writers,
            "redshake": {
                "shards": len(self.shards),
                "shards_reporting": len(snaps),
                "shards_ended": dict(self.codes),
                "skipped": tot.get("skipped", {}),
                "failed_count": tot.get("failed_count", 0),
            },
        }
