"""Wiring: reader -> (filter) -> writer, with status, logs, progress and clean shutdown."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config.schema import Config
from .entry import Entry, RestoreSet, Run
from .errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    BadInput,
    BusyKey,
    FatalError,
    Redirect,
    classify,
)
from .readers.rdb_entries import TargetCaps
from .transform.field_ttl import NAMES as FIELD_TTL_NAMES
from .writers.base import not_cluster_writer

if TYPE_CHECKING:
    from .transform import TransformChain

__all__ = ["run", "build", "drive", "report", "Plan", "Outcome", "ErrorPolicy"]

log = logging.getLogger("redshake")

class _Stop:
    """SIGINT/SIGTERM: the first asks the pipeline to stop cleanly, a second SIGINT exits now."""

    def __init__(self) -> None:
        self.flag = False
        self.signame = ""
        self._old: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.flag

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, _frame) -> None:
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag = True
        self.signame = signal.Signals(signum).name
        log.warning(
            "got signal %s, stopping: flushing what is in flight (send SIGINT again to exit at once)",
            self.signame,
        )


def _error_key(entry: Entry) -> bytes:
    """The key an error reply is about (b"" for a keyless command such as FUNCTION LOAD)."""
    if entry.key.__class__ is bytes:
        return entry.key  # type: ignore[return-value]
    from .commands.lookup import command_keys

    keys = command_keys(entry.argv)
    if keys is None:  # unknown to the command table: the first argument, as before
        return entry.argv[1] if len(entry.argv) > 1 else b""
    return keys[0] if keys else b""


class ErrorPolicy:
    """Decides what an error reply from the target means. Every error is counted and logged
    with the key; BUSYKEY follows ``rdb_restore_command_behavior``; anything else stops."""

    def __init__(self, behavior: str, stats) -> None:
        self.behavior = behavior
        self.stats = stats
        self.busy_skipped = 0
        self.busy_restore = 0
        self.failed = 0
        # the address of a target written without cluster = true (a MOVED names the fix)
        self.standalone_target = ""

    def __call__(self, entry: Entry, message: str) -> None:
        cmd = entry.argv[0].decode("ascii", "replace").upper() if entry.argv else "?"
        key = _error_key(entry)
        err = classify(message, cmd, key, entry.db)  # (the one place a reply gets its type)
        if err.__class__ is BusyKey and (cmd == "RESTORE" or entry.__class__ is RestoreSet):
            self.existing_key(entry.db, key, cmd)
            self.busy_restore += 1  # a RESTORE that was sent but did not write
            return
        self.failed += 1
        self.stats.fail(cmd=cmd)  # visible in the status JSON (failed_count) right away
        if key:
            log.error("target replied error to %s on key %r (db %d): %s", cmd, key, entry.db,
                      message)  # fmt: skip
        else:  # (a keyless command: named with its subcommand, e.g. FUNCTION LOAD)
            sub = entry.argv[1] if len(entry.argv) > 1 and len(entry.argv[1]) <= 24 else b""
            log.error("target replied error to %s (db %d): %s",
                      f"{cmd} {bytes(sub).decode('ascii', 'replace').upper()}".strip(),
                      entry.db, message)  # fmt: skip
        if cmd in FIELD_TTL_NAMES and "unknown command" in message.lower():
            err.message += (
                " (the target has no hash field expiration: see [advanced] unsupported_field_ttl)"
            )
        if self.standalone_target and isinstance(err, Redirect):
            raise FatalError(f"{not_cluster_writer(self.standalone_target)} ({cmd} got {message})")
        raise err

    def existing_key(self, db: int, key: bytes, cmd: str = "RESTORE") -> None:
        if self.behavior == "skip":
            self.busy_skipped += 1
            self.stats.skip("busykey")
            if self.busy_skipped <= 10:
                log.warning(
                    "key %r (db %d) already exists on the target: skipped (rdb_restore_command_behavior = skip)",
                    key,
                    db,
                )
            return
        self.failed += 1
        self.stats.fail(cmd=cmd)
        raise FatalError(
            f"key {key!r} (db {db}) already exists on the target (BUSYKEY). Set "
            'advanced.rdb_restore_command_behavior = "rewrite" to replace existing keys, '
            '"skip" to keep them, or empty_db_before_sync = true'
        )


def _fmt_version(v) -> str:
    return ".".join(map(str, v))


def run(cfg: Config, shard: dict | None = None) -> int:
    """Run a loaded config. Returns the process exit code. ``shard``: this process runs one
    shard of a cluster source (see shards.py: its address, slots, status queue...)."""
    from .status.logging import format_progress, setup_logging
    from .status.stats import Stats
    from .workdir import WorkDir, WorkDirLocked

    adv = cfg.advanced
    # Entries are short-lived and acyclic; with the default gen-0 threshold (700) the cycle
    # collector runs every few hundred commands and costs ~1/3 of creating them. Collect
    # less often; everything allocated until now is frozen out of the collector's scans.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        workdir = WorkDir(adv.dir)
    except WorkDirLocked:
        raise
    except OSError as e:
        sys.stderr.write(f"config error: advanced.dir: {e.strerror or e}. Nothing was written.\n")
        return EXIT_BAD_INPUT
    with workdir as wd:
        log_path = Path(adv.log_file)
        if not log_path.is_absolute():
            log_path = Path(wd.path) / log_path
        setup_logging(
            adv.log_level,
            log_path,
            rotation=adv.log_rotation,
            max_size_mb=adv.log_max_size,
            max_age_days=adv.log_max_age,
            max_backups=adv.log_max_backups,
            compress=adv.log_compress,
        )
        if cfg.path is None:
            log.info("config from the environment (env-only mode: SYNC / SCAN and SHAKE_* variables)")
        else:
            log.info("load config from file: %s", cfg.path)
        log.info("log_level: [%s], log_file: [%s]", adv.log_level, log_path)
        log.info("work dir: [%s]", wd.path)
        unsupported = _unsupported(cfg)
        if unsupported:
            log.error("%s. Nothing was written.", unsupported)
            return _final(EXIT_BAD_INPUT)
        if cfg.writer_type == "redis" and cfg.writer.off_reply:
            log.warning(
                "redis_writer.off_reply is ignored: redshake always reads the target's replies "
                "so that no failed write goes unnoticed (pipelining keeps it fast)"
            )
        if adv.pprof_port:
            log.warning("advanced.pprof_port has no effect in redshake (use py-spy to profile)")
        stats = Stats()
        stop = _Stop()
        stop.install()
        try:
            if shard is None:
                cfg = _v3_cluster_source(cfg)
                from .guard import ReverseSyncRefused, check_reverse

                try:
                    check_reverse(cfg)
                except ReverseSyncRefused as e:
                    log.error("%s. Nothing was written.", e)
                    return _final(EXIT_BAD_INPUT)
            if cfg.reader_type == "sync" and cfg.reader.cluster:
                from .shards import run_sharded

                return _final(run_sharded(cfg, stop, run))
            try:
                plan = build(cfg, stats, stop, shard)
            except _Refused as e:
                return _final(e.exit_code)
            return _final(_run_plan(cfg, plan, stop, format_progress))
        finally:
            stop.restore()


def _v3_cluster_source(cfg: Config) -> Config:
    """A v3 sync.toml has no way to say that the source is a cluster: when its address is a
    node of one, follow every shard (reading that node alone would copy its slots only)."""
    if cfg.source_format != "v3" or cfg.reader_type not in ("sync", "scan"):
        return cfg
    if cfg.reader.cluster:
        return cfg
    from .shards import is_cluster_node

    if not is_cluster_node(cfg.reader):
        return cfg
    log.info(
        "the source %s is a node of a cluster: copying every shard of the cluster", cfg.reader.address
    )
    return replace(cfg, reader=replace(cfg.reader, cluster=True))


def _final(code: int) -> int:
    """The last log line of every run: "all done" only when everything was copied."""
    if code == EXIT_OK:
        log.info("all done")
    else:
        log.error("the copy is incomplete (exit code %d): see the errors above", code)
    return code


def _unsupported(cfg: Config) -> str:
    """Features the config can name but this version cannot run yet: refuse them up front
    rather than ignore them (a silently ignored filter would copy data the user excluded)."""
    from . import transform, writers
    from .readers import available

    if not available(cfg.reader_type):
        return f"the [{cfg.reader_type}_reader] is not implemented yet in this version of redshake"
    if not writers.available(cfg.writer_type):
        return f"the [{cfg.writer_type}_writer] is not implemented yet in this version of redshake"
    missing = transform.unsupported(cfg)
    if missing:
        return f"[filter] {missing}: not implemented yet in this version of redshake"
    return ""


class _Ticker(threading.Thread):
    """Refreshes ops every second and prints the progress line every log_interval s."""

    def __init__(self, stats, interval: int, line) -> None:
        super().__init__(name="redshake-ticker", daemon=True)
        self.stats = stats
        self.interval = interval
        self.line = line
        self.halt = threading.Event()

    publish = None  # shard processes report their status to the parent every second

    def run(self) -> None:
        n = 0
        while not self.halt.wait(1.0):
            self.stats.tick()
            if self.publish is not None:
                try:
                    self.publish()
                except Exception:
                    log.debug("status publish failed", exc_info=True)
            n += 1
            if self.interval > 0 and n % self.interval == 0:
                try:
                    log.info(self.line())
                except Exception:  # never let status kill the run
                    log.debug("progress line failed", exc_info=True)


class _Refused(BadInput):
    """build() refused the run (already logged, nothing written); ``exit_code`` says how."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.exit_code = code


@dataclass
class Plan:
    """What build() put together for drive(): the reader, the writer, the transform and the
    error policy, and how entries go from one to the other."""

    reader: Any
    writer: Any
    transform: TransformChain | None  # (called per entry: Entry -> entries)
    policy: ErrorPolicy
    shard: dict | None = None  # one shard of a cluster source (see shards.py)
    stats: Any = None
    # the transform, then the field TTL conversion (None: entries go as read)
    convert: Callable[[Entry], Iterable[Entry]] | None = None
    convert_names: frozenset[str] = frozenset()  # converted even without a transform
    write: Callable[[Entry], None] | None = None  # (default writer.write)
    write_run: Callable[[Run], None] | None = None  # None: Runs are refused
    units: bool = False  # exactly-once: every stream batch is one unit with its marker
    unit_offset: Callable[[int], None] | None = None
    marker_db: int = 0
    fttl: Any = None  # FieldTtlCommands, for the summary
    progress: Callable[[], None] = lambda: None  # refresh the progress bar
    options: dict[str, Any] = field(default_factory=dict)  # the ReaderContext's
    t0: float = 0.0


@dataclass
class Outcome:
    code: int
    interrupted: bool = False  # a second SIGINT: exit at once (no drain)


def build(cfg: Config, stats, stop: Callable[[], bool], shard: dict | None = None) -> Plan:
    """Build the writer, the transform and the reader, and validate the input before
    anything is written (raises _Refused with the exit code, after logging why)."""
    from .rdb.rewrite import supports_field_ttl
    from .readers import build_reader
    from .readers.base import ReaderContext
    from .transform import TransformError, build_transform
    from .transform.field_ttl import COMMANDS as FIELD_TTL_COMMANDS
    from .transform.field_ttl import FieldTtlCommands
    from .writers import build_writer

    adv = cfg.advanced
    try:  # compile filter regexes and the Lua function first (RedisShake: before reader/writer)
        transform = build_transform(cfg)
    except TransformError as e:
        log.error("config error: %s. Nothing was written.", e)
        raise _Refused(EXIT_BAD_INPUT) from None
    policy = ErrorPolicy(adv.rdb_restore_command_behavior, stats)
    if cfg.writer_type == "redis" and not cfg.writer.cluster:
        policy.standalone_target = cfg.writer.address or "(from sentinel)"
    eonce = _exactly_once_possible(cfg)
    t0 = time.monotonic()
    # 1. Build the reader and validate its input before touching the target.
    try:
        writer = build_writer(cfg, policy)
    except Exception as e:
        log.error("cannot use the target: %s: %s", type(e).__name__, e)
        raise _Refused(EXIT_FAILURE) from None
    info = writer.info
    if cfg.writer_type == "redis" and info.cluster and not cfg.writer.cluster:
        log.error("config error: %s. Nothing was written.", not_cluster_writer(cfg.writer.address))
        writer.close()
        raise _Refused(EXIT_BAD_INPUT)
    if cfg.writer_type == "file":
        log.info("target: file %s (type %s)", cfg.writer.filepath, cfg.writer.type)
    else:
        log.info(
            "target %s: %s %s (RDB %d)%s",
            cfg.writer.address or "(from sentinel)",
            "valkey" if info.is_valkey else "redis",
            _fmt_version(info.version),
            info.rdb_version,
            " cluster" if cfg.writer.cluster else "",
        )
    caps = TargetCaps.from_target_info(info, adv.target_redis_proto_max_bulk_len)
    # the live stream's / AOF's field TTL commands for a target without field expiration
    fttl = None
    if not supports_field_ttl(caps.version, caps.is_valkey):
        shift = 0
        if cfg.reader_type == "aof":  # (expiries due soon are replayed shifted)
            from .readers.aof_reader import SHIFT_MS as shift
        fttl = FieldTtlCommands(adv.unsupported_field_ttl, caps.version, stats.skip, shift=shift)
    if transform is not None:
        # filters and Lua functions written for RedisShake expect every RDB key as RESTORE
        caps.set_strings = False
        caps.temp_keys = False  # nor temporary keys for huge elements
    ctx = ReaderContext(
        caps=caps,
        behavior=adv.rdb_restore_command_behavior,
        workdir=Path(adv.dir),
        stop=stop,
        probe_exists=writer.exists,
        on_existing=policy.existing_key,
        # a live reader that must re-seed the target (full resync) empties it through this
        options={
            "flush_target": writer.flushall,
            "target_max_bulk": info.proto_max_bulk_len,
            "unsupported_field_ttl": adv.unsupported_field_ttl,
        },
    )
    if transform is None:  # (a filter may drop the dbs the target lacks)
        ctx.options["target_databases"] = info.databases
    if eonce and cfg.writer.cluster:  # one marker per slot
        ctx.options["read_slot_markers"] = writer.read_markers
        ctx.options["slot_marks"] = writer.marks
        ctx.options["skip_applied"] = writer.set_skip
    elif eonce:
        ctx.options["read_marker"] = lambda key: writer.get(adv.exactly_once_db, key)
    if shard is not None:  # one shard of a cluster source: only this shard's slots
        from .guard import LIVE_PREFIX
        from .shards import current_ranges, flush_slots, shard_dbs

        # (the shard's slots of the moment: slots move between shards while we run; the
        # target's own writer, not the one wrap_writer() gives: flush_slots uses its connection)
        target = writer
        own = (LIVE_PREFIX.encode(),) + ((adv.exactly_once_key.encode() + b":",)
                                         if adv.exactly_once_key else ())  # fmt: skip
        ctx.options["flush_target"] = lambda: flush_slots(
            target, current_ranges(shard), shard_dbs(cfg.reader, shard["address"], target), own
        )
        ctx.options["shard"] = True
        ctx.options["shard_resolve"] = shard.get("resolver")
        ctx.options["shard_identity"] = shard.get("identity")
        ctx.options["shard_late"] = bool(shard.get("late"))
    try:
        reader = build_reader(cfg, ctx)
        if reader.caps.exactly_once:
            eonce = eonce and _marker_writable(cfg, writer, reader.marker_key)
            if not eonce:
                reader.marker_key = b""  # at-least-once: no marker is read or written
                ctx.options.pop("skip_applied", None)
            elif writer.caps.slot_markers:  # cluster: blocks sent early mark themselves
                writer.marker_prefix = reader.marker_key
                writer.marker_value = reader.marker_value
        reader.prepare()
    except (BadInput, FileNotFoundError) as e:
        log.error("invalid input: %s. Nothing was written to the target.", e)
        writer.close()
        raise _Refused(EXIT_BAD_INPUT) from None
    except FatalError as e:
        log.error("%s. Nothing was written to the target.", e)
        writer.close()
        raise _Refused(EXIT_FAILURE) from None
    except KeyboardInterrupt:
        log.warning("interrupted before anything was written")
        writer.close()
        raise _Refused(EXIT_FAILURE) from None
    log.info("%s ready in %.2fs", reader.name, time.monotonic() - t0)
    log.info("mode: %s", _describe_mode(cfg))
    writer = reader.wrap_writer(writer)  # live readers survive target reconnects
    plan = Plan(reader, writer, transform, policy, shard, stats, options=ctx.options, t0=t0)
    plan.fttl = fttl
    plan.marker_db = adv.exactly_once_db
    # Runs of plain commands go to the writer whole when nothing needs single entries.
    plan.write_run = writer.write_run if writer.caps.runs and transform is None else None
    # Exactly-once mode: every stream batch is one MULTI/EXEC unit with its position marker
    # (runs of plain commands still go whole, inside the unit).
    plan.units = eonce and reader.caps.exactly_once
    # (a cluster writer gives the commands of a source transaction the offset of its EXEC)
    plan.unit_offset = writer.unit_offset if writer.caps.slot_markers else None
    if plan.write_run is not None and reader.caps.runs:
        reader.runs = True
        if fttl is not None:  # runs go as received: these commands must come one by one
            reader.entry_only = FIELD_TTL_COMMANDS
    # after the filter / Lua function: those see the source's commands (as in RedisShake)
    plan.convert = transform if fttl is None else fttl.after(transform)
    plan.convert_names = FIELD_TTL_NAMES if fttl is not None else frozenset()
    guard = shard.get("guard") if shard is not None else None
    if guard is not None:  # (checked one by one: see shards.py)
        reader.entry_only = reader.entry_only | {b"del", b"unlink", b"restore-asking"}
        reader.keep_slot_sync = True
    return plan


def _run_plan(cfg: Config, plan: Plan, stop: _Stop, format_progress) -> int:
    """Start the status server, the ticker and the progress bar, empty the target when
    asked, drive, then clean up and report."""
    from .status.progress import Progress

    adv = cfg.advanced
    reader, writer, stats, shard = plan.reader, plan.writer, plan.stats, plan.shard
    try:
        status_server = _start_status(cfg, stats, reader, writer)
    except OSError as e:
        log.error("config error: %s. Nothing was written.", e)
        _close_quietly(reader, writer)
        return EXIT_BAD_INPUT
    if adv.empty_db_before_sync:
        refused = _empty_target(reader, plan.options["flush_target"])
        if refused:
            log.error("%s. Nothing was written.", refused)
            _close_quietly(reader, writer, status_server)
            return EXIT_BAD_INPUT

    def line() -> str:
        return format_progress(
            stats.read_count, stats.read_ops, stats.write_count, stats.write_ops, reader.status_line()
        )

    # entries count as written once the target acknowledged them (see RedisWriter.acked)
    stats.acked = lambda: writer.acked
    if writer.acked_names is not None:  # ... and per command name, as their replies come
        stats.acked_by_cmd = lambda: writer.acked_names
    ticker = _Ticker(stats, adv.log_interval, line)
    if shard is not None:
        ticker.publish = lambda: shard["queue"].put(
            (
                shard["address"],
                {
                    "stats": stats.snapshot(),
                    "reader": reader.status(),
                    "writer": writer.status(),
                    "consistent": bool(reader.consistent() and _writer_consistent(writer)),
                },
            )
        )
    ticker.start()
    live = None
    if cfg.reader_type == "sync" and cfg.writer_type == "redis" and adv.reverse_guard:
        from .guard import LiveMarker

        live = LiveMarker(cfg, reader.address, reader.source_replid)
        live.start()
    progress_of = reader.progress if reader.caps.progress else None
    progress = Progress(progress_of()[1] if progress_of else None, reader.name, unit=reader.progress_unit)
    if progress_of is not None:
        plan.progress = lambda: progress.update(progress_of()[0], stats.read_count)
    t1 = time.monotonic()
    log.info("start syncing...")
    guard = shard.get("guard") if shard is not None else None
    if guard is not None:  # a cluster source's shard: deletions of keys moved away
        from .shards import guarded, guarded_runs

        plan.write = guarded(writer.write, guard, reader, stats, shard.get("handover"))
        if plan.write_run is not None:
            plan.write_run = guarded_runs(plan.write_run, plan.write, guard)
    outcome = Outcome(EXIT_FAILURE, interrupted=True)  # (a second SIGINT inside drive)
    try:
        outcome = drive(plan, stop)
    finally:
        ticker.halt.set()
        if live is not None:
            live.stop()
        progress.close()
        if outcome.code != EXIT_OK and writer.caps.drain and not outcome.interrupted:
            # count what the target applied of what was in flight when the run failed
            try:
                n = writer.drain()
                if n:
                    plan.policy.failed += n
                    stats.fail(n)
            except Exception:
                log.debug("drain failed", exc_info=True)
        for closer in (reader.close, writer.close):
            try:
                closer()
            except Exception:
                log.debug("close failed", exc_info=True)
        if status_server is not None:
            status_server.close()
    report(plan, outcome, time.monotonic() - t1)
    return outcome.code


def drive(plan: Plan, stop: _Stop | None = None) -> Outcome:
    """Move entries from the reader through the transform to the writer until the reader
    is done or a stop is requested; every failure is logged and ends with exit code 1."""
    reader, writer = plan.reader, plan.writer
    try:
        _pump(plan)
        writer.flush()
        reader.acked(writer.acked_offset)
        plan.progress()
        if not reader.complete:
            signame = stop.signame if stop is not None else ""
            log.warning(
                "stopped by %s before the source was fully read: the copy is incomplete",
                signame or "request",
            )
            return Outcome(EXIT_FAILURE)
        return Outcome(EXIT_OK)
    except FatalError as e:
        log.error("%s", e)
    except BadInput as e:
        log.error("cannot continue: %s", e)
    except KeyboardInterrupt:
        log.error("interrupted")
        return Outcome(EXIT_FAILURE, interrupted=True)
    except Exception as e:  # connection loss and the like
        log.error("failed: %s: %s", type(e).__name__, e)
        log.debug("traceback", exc_info=True)
    return Outcome(EXIT_FAILURE)


def _pump(plan: Plan) -> None:
    """The hot loop: every batch of the reader to the writer. Counters are updated inline
    (this loop is their only writer): a method call per entry would cost as much as the
    rest of the bookkeeping. Writes are counted by the writer as the target acknowledges
    them (stats.acked_by_cmd)."""
    reader, writer = plan.reader, plan.writer
    write = plan.write or writer.write
    write_run, convert, fnames = plan.write_run, plan.convert, plan.convert_names
    transform, units, unit_offset, progress = plan.transform, plan.units, plan.unit_offset, plan.progress
    read_by_cmd = plan.stats.read_by_cmd
    names: dict[bytes, str] = {}
    last_progress = 0.0
    n = 0
    batches = reader.batches()
    handover = plan.shard.get("handover") if plan.shard is not None else None
    if handover is not None:  # slots moved between shards: their order across shards
        batches = handover.batches(batches, reader, writer)
    for batch in batches:
        if not batch:  # the reader is idle: push out what is buffered, report progress
            if units and reader.marker_due():  # the position marker, before any command
                writer.begin_unit()
                mkey, mvalue, moff = reader.unit_marker()
                writer.end_unit(plan.marker_db, mkey, mvalue, moff)
            writer.poll()
            reader.acked(writer.acked_offset)
            continue
        unit = units and reader.in_stream()
        if unit:
            writer.begin_unit()
        for e in batch:
            if e.__class__ is Run:
                if write_run is None:
                    raise AssertionError("a reader produced a Run the writer cannot take")
                write_run(e)
                for raw_name, c in e.names().items():
                    name = names.get(raw_name)
                    if name is None:
                        name = names[raw_name] = raw_name.decode("ascii", "replace").upper()
                    read_by_cmd[name] = read_by_cmd.get(name, 0) + c
                continue
            raw_name = e.argv[0]
            name = names.get(raw_name)
            if name is None:
                name = names[raw_name] = raw_name.decode("ascii", "replace").upper()
            read_by_cmd[name] = read_by_cmd.get(name, 0) + 1
            if unit and (name == "MULTI" or name == "EXEC"):
                if name == "EXEC" and unit_offset is not None:
                    unit_offset(e.offset)
                continue  # the unit around the batch is the transaction
            if convert is None or (transform is None and name not in fnames):
                write(e)
            else:
                for e2 in convert(e):
                    if unit:
                        wn = e2.argv[0].upper()
                        if wn == b"MULTI" or wn == b"EXEC":
                            if wn == b"EXEC" and unit_offset is not None:
                                unit_offset(e.offset)
                            continue
                    write(e2)
        if unit:
            mkey, mvalue, moff = reader.unit_marker()
            writer.end_unit(plan.marker_db, mkey, mvalue, moff)
        n += 1
        if not n & 1023:
            now = time.monotonic()
            if now - last_progress > 0.2:
                last_progress = now
                progress()
                reader.acked(writer.acked_offset)


def report(plan: Plan, outcome: Outcome, elapsed: float) -> None:
    """The end of the run in the log: the transform's drops, the summary line."""
    transform, stats, fttl = plan.transform, plan.stats, plan.fttl
    if transform is not None:
        for reason, count in transform.dropped().items():
            stats.skipped[reason] = stats.skipped.get(reason, 0) + count
        for extra in transform.summary():
            log.info("%s", extra)
    _summary(plan.reader, plan.writer, plan.policy, stats, elapsed, outcome.code, transform is not None)
    if fttl is not None and (fttl.dropped or fttl.converted):
        log.info("%s", fttl.summary())


def _empty_target(reader, flush) -> str:
    """advanced.empty_db_before_sync: empty the target before a snapshot is applied, never
    before a resume from a checkpoint (that would keep only what was written since the stop).
    Returns why the target refused, or "" when done / not needed now."""
    if reader.will_resume:
        log.info(
            "empty_db_before_sync: resuming from the checkpoint, the target is kept (it is "
            "emptied should the source answer with a full resynchronisation instead)"
        )
        reader.empty_on_full_sync = True
        return ""
    log.info("empty_db_before_sync: emptying the target (FLUSHALL) before the copy")
    try:
        flush()
    except Exception as e:  # READONLY replica, ACL, renamed FLUSHALL, lost connection
        return f"empty_db_before_sync: the target refused to be emptied: {e}"
    reader.target_emptied()
    return ""


def _close_quietly(*parts) -> None:
    for part in parts:
        if part is None:
            continue
        try:
            part.close()
        except Exception:
            log.debug("close failed", exc_info=True)


def _exactly_once_possible(cfg: Config) -> bool:
    """Whether this run applies the live stream exactly once (``advanced.exactly_once``,
    default on). A live sync into a target that cannot hold the marker falls back to
    at-least-once with a warning; other readers have no live stream to apply once."""
    adv = cfg.advanced
    if cfg.reader_type != "sync":
        return False
    if not adv.exactly_once or not adv.exactly_once_key:
        log.info(
            "exactly-once is off (advanced.exactly_once = false or an empty exactly_once_key): "
            "after a crash or a lost target "
            "connection, commands since the last checkpoint may be applied twice"
        )
        return False
    if cfg.writer_type != "redis":
        log.warning(
            "exactly-once is not possible (the target is a file, which cannot hold a position "
            "marker): live sync is at-least-once, so after a crash, commands since the last "
            "checkpoint may be written twice. Set advanced.exactly_once = false to silence "
            "this warning"
        )
        return False
    return True


def _marker_writable(cfg: Config, writer, key: bytes) -> bool:
    """Exactly-once mode: can the target hold the position marker? Else at-least-once,
    with a warning saying why."""
    adv = cfg.advanced
    refusal = writer.try_marker(adv.exactly_once_db, key)
    if not refusal:
        if cfg.writer.cluster:
            log.info(
                "exactly-once: the commands of every stream batch go to each master as one "
                "script call (Redis >= 7.0, Valkey; else one MULTI/EXEC per slot) that also sets "
                "the position marker %r:{<tag of a slot>} of that master (or slot) "
                "(advanced.exactly_once = false: no markers)", key.decode("utf-8", "replace"),
            )  # fmt: skip
            return True
        log.info(
            "exactly-once: every stream batch is one MULTI/EXEC that also sets the position "
            "marker %r in db %d of the target (advanced.exactly_once = false: no marker)",
            key.decode("utf-8", "replace"), adv.exactly_once_db,
        )  # fmt: skip
        return True
    log.warning(
        "exactly-once is not possible: the target refused the position marker %r in db %d "
        "(%s). Live sync is at-least-once: after a crash or a lost target connection, commands "
        "since the last checkpoint may be applied twice. Allow the marker (or set "
        "advanced.exactly_once_key / exactly_once_db), or set advanced.exactly_once = false",
        key.decode("utf-8", "replace"), adv.exactly_once_db, refusal,
    )  # fmt: skip
    return False


def _describe_mode(cfg: Config) -> str:
    """One line saying what this run does: reader -> transforms -> writer."""
    r = cfg.reader
    source = {
        "rdb": lambda: f"rdb file {r.filepath}",
        "aof": lambda: f"aof {r.filepath}" + (f" up to #TS:{r.timestamp}" if r.timestamp else ""),
        "scan": lambda: f"scan {'cluster ' if r.cluster else ''}{r.address or 'via sentinel'}"
        + (" + keyspace notifications" if r.ksn else " (no ksn: changes made during the scan may be missed)"),
        "sync": lambda: f"sync (PSYNC) {'cluster ' if r.cluster else ''}{r.address or 'via sentinel'}",
    }.get(cfg.reader_type, lambda: cfg.reader_type)()
    from .transform import configured

    steps = configured(cfg)
    transform = f"filter: {', '.join(steps)}" if steps else "no filter"
    w = cfg.writer
    if cfg.writer_type == "file":
        target = f"file {w.filepath} ({w.type})"
    else:
        kind = "cluster" if w.cluster else ("sentinel master" if w.sentinel.address else "standalone")
        target = f"redis {kind} {w.address or w.sentinel.address}"
    return f"{cfg.reader_type}_reader [{source}] -> {transform} -> {target}"


def _summary(reader, writer, policy, stats, elapsed, code, transformed: bool = False) -> None:
    """The summary line. Only what the target acknowledged counts as written: a key when the
    reply to its (last) command arrived and was not an error, an entry when its reply did."""
    counters = reader.counters if reader.caps.counters else None
    head = "summary" if code == EXIT_OK else "summary (the copy is incomplete)"
    if counters is not None and transformed:
        # With filters / a Lua function the per-key write methods no longer say what reached
        # the target: report entries (the transform line above gives the drops).
        keys_read, _methods, skipped = counters()
        log.info(
            "%s: keys read=%d, entries read=%d, entries written=%d, skipped keys=%d, "
            "failed=%d; %.2fs",
            head, keys_read, stats.read_count, stats.write_count, sum(skipped.values()),
            policy.failed, elapsed,
        )  # fmt: skip
    elif counters is not None:
        keys_read, methods, skipped = counters()
        if policy.busy_skipped:
            skipped["busykey"] += policy.busy_skipped
        written = writer.keys_acked
        rate = keys_read / elapsed if elapsed > 0 else 0.0
        by_bytes = reader.caps.progress and reader.progress_unit == "bytes"
        mbs = ""
        if by_bytes and elapsed > 0:
            mbs = f", {reader.progress()[0] / elapsed / 1e6:.1f} MB/s"
        sk = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "none"
        how = ", ".join(f"{k}={v}" for k, v in sorted(methods.items())) or "none"
        log.info(
            "%s: keys read=%d, written=%d of %d sent (%s), skipped=%d (%s), failed=%d, "
            "entries written=%d; %.2fs, %.0f keys/s%s",
            head, keys_read, written, sum(methods.values()), how, sum(skipped.values()), sk,
            policy.failed, stats.write_count, elapsed, rate, mbs,
        )  # fmt: skip
    else:
        log.info(
            "%s: entries read=%d, written=%d, skipped=%d, failed=%d; %.2fs",
            head, stats.read_count, stats.write_count, sum(stats.skipped.values()), policy.failed,
            elapsed,
        )  # fmt: skip
    for extra in reader.summary():
        log.info("%s", extra)


def _start_status(cfg: Config, stats, reader, writer):
    port = cfg.advanced.status_port
    if not port:
        return None
    from .status.server import StatusBoard, StatusServer

    board = StatusBoard(
        stats,
        reader=reader.status,
        writer=writer.status,
        consistent=lambda: bool(reader.consistent() and _writer_consistent(writer)),
    )
    return StatusServer(port, cfg.advanced.status_bind, board, workdir=cfg.advanced.dir).start()


def _writer_consistent(writer) -> bool:
    st = writer.status()
    items = st if isinstance(st, list) else [st]
    return all(not s.get("unanswered_entries") for s in items)
