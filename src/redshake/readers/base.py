"""What every reader provides to the pipeline, and what the pipeline gives every reader."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..entry import Entry

__all__ = ["Reader", "ReaderContext", "FileReaderBase"]


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


class Reader(Protocol):
    """A source of entries.

    The pipeline calls :meth:`prepare` before anything is written to the target (validate
    input: a reader that raises there exits with code 2 and writes nothing), then iterates
    :meth:`batches`: each item is a sequence of entries in source order; an *empty* batch is
    a heartbeat saying "nothing to read right now", on which the pipeline flushes the writer
    and reports the acknowledged offset back through :meth:`acked`. Iteration ends when the
    source is exhausted (rdb/aof files, scan without ksn) or ``ctx.stop()`` became true.
    """

    name: str

    def prepare(self) -> None: ...

    def batches(self) -> Iterator[Sequence[Entry]]: ...

    def acked(self, offset: int) -> None:
        """Every entry with ``offset`` <= this has been applied by the target."""

    def status(self) -> dict | list[dict]: ...

    def status_line(self) -> str: ...

    def consistent(self) -> bool: ...

    # What progress() counts: "bytes" (default: files, RDB transfers) or "keys" (scan).
    progress_unit: str

    def summary(self) -> list[str]:
        """Lines logged at the end of the run."""

    @property
    def complete(self) -> bool:
        """True when the reader ended because its source was fully read (not stopped)."""

    def close(self) -> None: ...


class FileReaderBase:
    """Progress bookkeeping shared by readers of files (rdb, aof): ``sent`` of ``total``
    bytes handed on, ``done`` once the whole input was read. Files have no offsets to
    acknowledge."""

    sent: int = 0
    total: int = 0
    done: bool = False
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
