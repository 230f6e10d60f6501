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
from .resp.conn import Connection, ReplyError, connection_options, parse_address
from .writers.base import parse_info

__all__ = ["source_shards", "run_sharded"]

log = logging.getLogger("redshake")

STATUS_EVERY = 1.0


def _kv(items) -> dict:
    if isinstance(items, dict):
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in items.items()}
    it = iter(items)
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in zip(it, it, strict=False)}


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def source_shards(
    address: str, *, prefer_replica: bool = False, **conn_kw
) -> list[tuple[str, list[tuple[int, int]]]]:
    """(address to read from, slot ranges) for each master owning slots; the address is the
    master's, or one healthy replica's with ``prefer_replica``."""
    host, port = parse_address(address)
    with Connection(host, port, **conn_kw) as c:
        try:
            shards = c.call("CLUSTER", "SHARDS")
            out = []
            for sh in shards:
                sh = _kv(sh)
                if not sh.get("slots"):
                    continue
                nodes = [_kv(n) for n in sh.get("nodes", [])]
                masters = [n for n in nodes if _s(n.get("role")) == "master"]
                replicas = [n for n in nodes if _s(n.get("role")) == "replica" and _s(n.get("health")) == "online"]
                pick = (replicas or masters)[0] if prefer_replica else (masters or [None])[0]
                if pick is None:
                    continue
                ip = _s(pick.get("ip") or pick.get("endpoint") or host)
                p = int(pick.get("port") or pick.get("tls-port"))
                sl = [int(x) for x in sh["slots"]]
                out.append((f"{ip}:{p}", list(zip(sl[0::2], sl[1::2], strict=True))))
            if out:
                return out
        except ReplyError:
            pass  # before 7.0: CLUSTER NODES
        text = _s(c.call("CLUSTER", "NODES"))
    masters: dict[str, str] = {}
    slots: dict[str, list[tuple[int, int]]] = {}
    replicas: dict[str, list[str]] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        node_id, addr, flags, master_id = f[0], f[1].split("@")[0].split(",")[0], f[2], f[3]
        if "fail" in flags or "noaddr" in flags or "handshake" in flags:
            continue
        if "master" in flags and len(f) > 8:
            masters[node_id] = addr
            ranges = []
            for tok in f[8:]:
                if tok.startswith("["):
                    break  # migration markers
                lo, _, hi = tok.partition("-")
                ranges.append((int(lo), int(hi or lo)))
            slots[node_id] = ranges
        elif "slave" in flags:
            replicas.setdefault(master_id, []).append(addr)
    if prefer_replica:
        return [(replicas.get(mid, [addr])[0], slots[mid]) for mid, addr in masters.items()]
    return [(addr, slots[mid]) for mid, addr in masters.items()]


def select_shards(shards: list[tuple[str, list[tuple[int, int]]]], index: int, count: int):
    """``sync_reader.shards = "index/count"``: the shards at positions index, index + count, ...
    once ordered by their first slot (the same split for every process, whatever the
    addresses or the order the cluster lists its nodes in)."""
    ordered = sorted(shards, key=lambda s: min(lo for lo, _ in s[1]))
    return ordered[index::count]


def flush_slots(writer, ranges: list[tuple[int, int]], dbs: Iterable[int] = (0,)) -> int:
    """Delete, on the target, every key of ``dbs`` whose slot lies in ``ranges``: what a full
    resync of one source shard must remove when the target is shared with the other shards
    (a FLUSHALL would erase their data). Returns the number of keys deleted."""
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
        with Connection(host, port, **_conn_opts(rc)) as c:
            try:
                r = c.call("CONFIG", "GET", "cluster-databases")
                if isinstance(r, dict):
                    r = [x for kv in r.items() for x in kv]
                if isinstance(r, list) and len(r) >= 2 and _s(r[1]).isdigit():
                    n = max(1, int(_s(r[1])))
            except ReplyError:  # (CONFIG forbidden: the dbs holding keys now)
                info = parse_info(c.call("INFO", "keyspace"))
                n = 1 + max((int(k[2:]) for k in info if k[2:].isdigit()), default=0)
    except (OSError, ReplyError) as e:
        log.warning("%s: cannot read its databases (%s): the resync clears db 0 only", address, e)
    target = getattr(writer, "databases", 0) or getattr(getattr(writer, "info", None), "databases", 1)
    return range(min(n, max(1, target)))


def _shard_main(cfg: Config, address: str, ranges, workdir: str, status_q, code_q) -> None:
    """Child process: run the ordinary pipeline for one shard."""
    from . import pipeline

    adv = replace(cfg.advanced, dir=workdir, status_port=0, metrics_port=0)
    reader = replace(cfg.reader, cluster=False, address=address, prefer_replica=False)
    shard_cfg = replace(cfg, advanced=adv, reader=reader)
    pipeline.SHARD = {"address": address, "ranges": ranges, "queue": status_q}
    try:
        code = pipeline.run(shard_cfg)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        log.error("shard %s failed: %s: %s", address, type(e).__name__, e)
        code = pipeline.EXIT_FAILURE
    code_q.put((address, code))


def run_sharded(cfg: Config, stop, stats_totals_cb=None) -> int:
    """Parent: discover shards, start one process each, aggregate status, wait."""
    from .pipeline import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK
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
    if picked is not None:
        every = len(shards)
        shards = select_shards(shards, *picked)
        log.info(
            "sync_reader.shards = %s: this process reads %d of the %d shards", rc.shards, len(shards), every
        )
        if not shards:
            log.error("sync_reader.shards = %s: no shard left (the source has %d)", rc.shards, every)
            return EXIT_BAD_INPUT
    log.info("cluster source %s: %d shards: %s", rc.address, len(shards), ", ".join(a for a, _ in shards))
    latest: dict[str, dict] = {}
    server = None
    if cfg.advanced.status_port:
        from .status.server import StatusServer

        board = _ShardBoard(latest, [a for a, _ in shards])
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
    for addr, ranges in shards:
        wd = str(_shard_dir(base, addr))
        p = ctx.Process(
            target=_shard_main, args=(cfg, addr, ranges, wd, status_q, code_q), name=f"shard-{addr}"
        )
        p.start()
        procs[addr] = p
    if server is not None:
        server.start()
    codes: dict[str, int] = {}
    forwarded = False
    last_line = time.monotonic()
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
                if addr not in codes and not p.is_alive() and p.exitcode is not None:
                    p.join(0.5)
                    try:  # the code may still be in the queue
                        a2, c2 = code_q.get(timeout=0.5)
                        codes[a2] = c2
                    except queue.Empty:
                        codes.setdefault(addr, EXIT_FAILURE if p.exitcode else EXIT_OK)
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
    for addr, _ in shards:
        log.info("shard %s exited with %s", addr, codes.get(addr))
    return worst


class _StartError(Exception):
    """The cluster source cannot be started: ``code`` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _discover(cfg: Config, stop) -> list[tuple[str, list[tuple[int, int]]]]:
    """The shards of the source cluster; a source never reached is tried again until
    sync_reader.connect_timeout (then exit 1); refusals are bad configuration (exit 2)."""
    from .pipeline import EXIT_BAD_INPUT, EXIT_FAILURE, FatalError
    from .readers.sync_reader import reach_source
    from .resp.conn import AuthError, TLSVerifyError

    rc = cfg.reader
    opts = _conn_opts(rc)
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
    from .pipeline import EXIT_BAD_INPUT, not_cluster_writer
    from .readers.sync_reader import planned_resume
    from .writers import build_writer

    base = Path(cfg.advanced.dir)
    if cfg.reader.shards:
        log.info(
            "empty_db_before_sync with sync_reader.shards = %s: each shard empties only its own "
            "slots (the other processes' shards share the target)", cfg.reader.shards,
        )  # fmt: skip
        return cfg
    resuming = [a for a, _ in shards if planned_resume(_shard_dir(base, a), a, cfg.reader.sync_aof)]
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


def _conn_opts(rc) -> dict:
    """Connection keyword arguments for the source of reader config ``rc``."""
    return connection_options(
        username=rc.username,
        password=rc.password,
        tls=rc.tls,
        tls_verify=not rc.tls_skip_verify,
        tls_config=rc.tls_config.as_dict(),
    )


def _shard_dir(base: Path, address: str) -> Path:
    host, port = parse_address(address)
    return base / f"shard_{host.replace(':', '_')}_{port}"


def is_cluster_node(rc) -> bool:
    """Whether the source of reader config ``rc`` answers INFO with cluster_enabled:1 (False
    when it cannot be asked: the reader then reports the problem itself)."""
    from .resp.conn import ConnError

    host, port = parse_address(rc.address)
    try:
        with Connection(host, port, io_timeout=30.0, **_conn_opts(rc)) as c:
            raw = c.call("INFO", "cluster")
    except (ConnError, OSError, ReplyError):
        return False
    return parse_info(raw if isinstance(raw, bytes) else str(raw)).get("cluster_enabled") == "1"


class _ShardBoard:
    """Status document for a cluster source: per-shard reader and writer objects, totals."""

    def __init__(self, latest: dict[str, dict], shards: list[str]) -> None:
        self.latest = latest
        self.shards = shards
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
                "skipped": tot.get("skipped", {}),
                "failed_count": tot.get("failed_count", 0),
            },
        }
