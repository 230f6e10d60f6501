"""What every reader provides to the pipeline, and what the pipeline gives every reader."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..entry import Entry

__all__ = ["Capabilities", "Reader", "ReaderContext", "FileReaderBase"]


@dataclass
class ReaderContext:
    """Everything a reader may need from the rest of the house.

    ``caps`` describes the target (readers that turn RDB values into entries need it);
    ``probe_exists(db, key)`` asks the target synchronously whether a key exists;
    ``on_existing(db, key)`` applies ``rdb_restore_command_behavior`` to an existing key
    (raises to stop the run); ``workdir`` is the locked ``advanced.dir`` (readers keep spool
    files and checkpoints under it); ``stop()`` is true once a clean stop was requested.
    """

    caps: Any
    behavior: str
    workdir: Path
    stop: Callable[[], bool]
    probe_exists: Callable[[int, bytes], bool] | None = None
    on_existing: Callable[[int, bytes], None] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def rdb_converter(self, src_version: int, src_valkey: bool):
        """An RdbToEntries for a snapshot of this version, writing to this target."""
        from .rdb_entries import RdbToEntries

        return RdbToEntries(
            self.caps,
            src_version=src_version,
            src_valkey=src_valkey,
            behavior=self.behavior,
            probe_exists=self.probe_exists,
            on_existing=self.on_existing,
            field_ttl=self.options.get("unsupported_field_ttl", "panic"),
            spill_dir=Path(self.workdir),
        )


@dataclass(frozen=True)
class Capabilities:
    """What a reader can do beyond the methods every reader has. The driver asks these,
    never ``hasattr``; a method whose ability is ``False`` raises NotImplementedError."""

    progress: bool = False  # progress() -> (done, total) in ``progress_unit``
    counters: bool = False  # counters() -> (keys read, write methods, skipped): per-key summary
    runs: bool = False  # hands over Runs of plain commands when ``runs`` is set
    exactly_once: bool = False  # marker_key / marker_value() / unit_marker(): stream units
    live: bool = False  # follows a live source: wrap_writer(), source_replid(), resumes


class Reader(ABC):
    """A source of entries.

    The driver calls :meth:`prepare` before anything is written to the target (validate
    input: a reader that raises there exits with code 2 and writes nothing), then iterates
    :meth:`batches`: each item is a sequence of entries in source order; an *empty* batch is
    a heartbeat saying "nothing to read right now", on which the driver flushes the writer
    and reports the acknowledged offset back through :meth:`acked`. Iteration ends when the
    source is exhausted (rdb/aof files, scan without ksn) or ``ctx.stop()`` became true.

    The attributes below the methods are set by the driver before :meth:`prepare` /
    :meth:`batches`; a reader without the matching ability ignores them.
    """

    caps: Capabilities = Capabilities()
    name: str = "reader"
    address: str = ""
    # What progress() counts: "bytes" (default: files, RDB transfers) or "keys" (scan).
    progress_unit: str = "bytes"
    # caps.runs: the writer takes whole Runs; the lower-case names in entry_only come one by one
    runs: bool = False
    entry_only: frozenset[bytes] = frozenset()
    # a cluster source's shard: slot-sync commands are handed over (see shards.py)
    keep_slot_sync: bool = False
    # caps.exactly_once: the target key of the position marker (b"": at-least-once)
    marker_key: bytes = b""
    # caps.live: prepare() found a checkpoint to resume from; empty the target should the
    # source answer with a full resynchronisation instead
    will_resume: bool = False
    empty_on_full_sync: bool = False

    @abstractmethod
    def prepare(self) -> None: ...

    @abstractmethod
    def batches(self) -> Iterator[Sequence[Entry]]: ...

    @abstractmethod
    def acked(self, offset: int) -> None:
        """Every entry with ``offset`` <= this has been applied by the target."""

    @abstractmethod
    def status(self) -> dict | list[dict]: ...

    @abstractmethod
    def status_line(self) -> str: ...

    @abstractmethod
    def consistent(self) -> bool: ...

    @property
    @abstractmethod
    def complete(self) -> bool:
        """True when the reader ended because its source was fully read (not stopped)."""

    @abstractmethod
    def close(self) -> None: ...

    def summary(self) -> list[str]:
        """Lines logged at the end of the run."""
        return []

    def progress(self) -> tuple[int, int]:
        """(done, total) in ``progress_unit`` (``caps.progress``)."""
        raise NotImplementedError

    def counters(self) -> tuple[int, Counter, Counter]:
        """(keys read, write methods, skipped by reason) (``caps.counters``)."""
        raise NotImplementedError

    def in_stream(self) -> bool:
        """True while the batches are the source's command stream (not a snapshot): in
        exactly-once mode each such batch is one unit."""
        return False

    def marker_value(self, offset: int) -> bytes:
        """The marker value for a stream offset (``caps.exactly_once``)."""
        raise NotImplementedError

    def unit_marker(self) -> tuple[bytes, bytes, int]:
        """(key, value, offset) of the marker closing the current unit (``caps.exactly_once``)."""
        raise NotImplementedError

    def marker_due(self) -> bool:
        """An idle moment in the stream: should the driver write a unit holding only the
        marker? (Once per epoch, so that the target's marker shows the snapshot applied
        even when no command follows it.)"""
        return False

    def wrap_writer(self, writer: Any) -> Any:
        """The writer the driver uses: a live reader makes it survive target reconnects."""
        return writer

    def target_emptied(self) -> None:
        """The driver emptied the target before the first snapshot (empty_db_before_sync)."""
        return None

    def source_replid(self) -> str:
        """The replication id of the source being followed ("" when none)."""
        return ""


class FileReaderBase(Reader):
    """Progress bookkeeping shared by readers of files (rdb, aof): ``sent`` of ``total``
    bytes handed on, ``done`` once the whole input was read. Files have no offsets to
    acknowledge."""

    sent: int = 0
    total: int = 0
    done: bool = False
    caps = Capabilities(progress=True)
    progress_unit = "bytes"

    def acked(self, offset: int) -> None:
        pass

    @property
    def complete(self) -> bool:
        return self.done

    def progress(self) -> tuple[int, int]:
        return self.sent, self.total

    @property
    def percent(self) -> float:
        return 100.0 * self.sent / self.total if self.total else 100.0

    def consistent(self) -> bool:
        return self.done

    def close(self) -> None:
        pass
