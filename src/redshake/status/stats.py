"""Entry counters, cheap enough for the per-entry hot path.

One :class:`Stats` object is updated by **one thread** (a pipeline worker): the counting
methods are plain int/dict updates with no lock. Other threads only read it: :meth:`tick`
(every second, recomputes the per-second rates like RedisShake does) and :meth:`snapshot`
(for the status endpoint, the progress line and metrics). Reading ints and copying dicts is
safe in CPython; a lock only serialises ``tick`` against ``snapshot``.

Several workers (threads or processes) each keep their own ``Stats``; :func:`combine` sums
their snapshots.

Definitions (as RedisShake): a *read* is counted after parsing, before the filter; a *write*
after the Lua function (entries a function emits count as writes). When ``acked`` is set (the
pipeline sets it to the writer's count of entries the target answered without an error) the
total ``write_count`` and ``write_ops`` are that acknowledged count; when ``acked_by_cmd`` is
set (the writer's acknowledged entries per raw command name, counted as their replies are
read) the per-command ``write_count`` and ``write_ops`` are those, else ``write_by_cmd``
(entries handed to the writer). ``skip`` counts entries dropped on purpose, by reason
(``filter``, ``function``, ``busykey`` ...); ``fail`` counts entries that could not be
applied, also per command name when it is known (``failed_by_cmd``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Stats", "combine", "entry_count"]


def entry_count(read: int, read_ops: float, write: int, write_ops: float) -> dict[str, Any]:
    """One RedisShake ``EntryCount`` object."""
    return {
        "read_count": read,
        "read_ops": round(read_ops, 2),
        "write_count": write,
        "write_ops": round(write_ops, 2),
    }


class Stats:
    """Counters for one pipeline worker. See the module docstring for the threading rules."""

    __slots__ = (
        "read_by_cmd",
        "write_by_cmd",
        "skipped",
        "failed",
        "read_ops",
        "write_ops",
        "read_ops_by_cmd",
        "write_ops_by_cmd",
        "start_time",
        "_last_time",
        "_last_read",
        "_last_write",
        "_last_read_by_cmd",
        "_last_write_by_cmd",
        "_lock",
        "_ticker",
        "_stop",
        "acked",
        "acked_by_cmd",
        "failed_by_cmd",
        "_names",
    )

    def __init__(self) -> None:
        self.read_by_cmd: dict[str, int] = {}
        self.write_by_cmd: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.failed = 0
        self.read_ops = 0.0
        self.write_ops = 0.0
        self.read_ops_by_cmd: dict[str, float] = {}
        self.write_ops_by_cmd: dict[str, float] = {}
        self.start_time = time.time()
        self._last_time = time.monotonic()
        self._last_read = 0
        self._last_write = 0
        self._last_read_by_cmd: dict[str, int] = {}
        self._last_write_by_cmd: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self.acked: Callable[[], int] | None = None
        self.acked_by_cmd: Callable[[], Mapping[bytes, int]] | None = None
        self.failed_by_cmd: dict[str, int] = {}
        self._names: dict[bytes, str] = {}  # raw command name -> upper-case name

    # ---------------------------------------------------------------- hot path (one thread)

    def count_read(self, cmd: str, n: int = 1) -> None:
        """``n`` entries named ``cmd`` (upper case, e.g. ``SET``, ``XGROUP-CREATE``) were read."""
        d = self.read_by_cmd
        d[cmd] = d.get(cmd, 0) + n

    def count_write(self, cmd: str, n: int = 1) -> None:
        """``n`` entries named ``cmd`` were handed to the writer."""
        d = self.write_by_cmd
        d[cmd] = d.get(cmd, 0) + n

    def skip(self, reason: str, n: int = 1) -> None:
        """``n`` entries were dropped on purpose for ``reason``."""
        d = self.skipped
        d[reason] = d.get(reason, 0) + n

    def fail(self, n: int = 1, cmd: str | None = None) -> None:
        """``n`` entries (named ``cmd``, when known) could not be applied."""
        self.failed += n
        if cmd is not None:
            d = self.failed_by_cmd
            d[cmd] = d.get(cmd, 0) + n

    # ---------------------------------------------------------------- readers (any thread)

    @property
    def read_count(self) -> int:
        """Total entries read (the per-command counts are the only state on the hot path)."""
        return sum(self.read_by_cmd.copy().values())

    @property
    def write_count(self) -> int:
        if self.acked is not None:
            return self.acked()
        return sum(self.write_by_cmd.copy().values())

    def _writes_by_cmd(self) -> dict[str, int]:
        """Per-command write counts: acknowledged ones when known (see the module docstring)."""
        if self.acked_by_cmd is None:
            return self.write_by_cmd.copy()
        out: dict[str, int] = {}
        names = self._names
        for raw, n in dict(self.acked_by_cmd()).items():
            name = names.get(raw)
            if name is None:
                name = names[raw] = raw.decode("ascii", "replace").upper()
            if n:
                out[name] = out.get(name, 0) + n
        return out

    def tick(self, now: float | None = None) -> None:
        """Recompute the per-second rates from the counts since the previous tick."""
        t = time.monotonic() if now is None else now
        with self._lock:
            dt = t - self._last_time
            rb, wb = self.read_by_cmd.copy(), self._writes_by_cmd()
            read, write = sum(rb.values()), self.write_count
            if dt <= 0:  # clock went backwards (or a new time base): restart the window
                self._last_time = t
                self._last_read, self._last_write = read, write
                self._last_read_by_cmd, self._last_write_by_cmd = rb, wb
                return
            self.read_ops = (read - self._last_read) / dt
            self.write_ops = (write - self._last_write) / dt
            lr, lw = self._last_read_by_cmd, self._last_write_by_cmd
            self.read_ops_by_cmd = {c: (v - lr.get(c, 0)) / dt for c, v in rb.items()}
            self.write_ops_by_cmd = {c: (v - lw.get(c, 0)) / dt for c, v in wb.items()}
            self._last_time = t
            self._last_read, self._last_write = read, write
            self._last_read_by_cmd, self._last_write_by_cmd = rb, wb

    def snapshot(self) -> dict[str, Any]:
        """A plain (picklable, JSON-able) dict of everything.

        Keys: ``total_entries_count``, ``per_cmd_entries_count`` (both in RedisShake's
        format), ``skipped`` ({reason: n}), ``skipped_count``, ``failed_count``.
        """
        with self._lock:
            rb, wb = self.read_by_cmd.copy(), self._writes_by_cmd()
            rops, wops = self.read_ops_by_cmd, self.write_ops_by_cmd
            per_cmd = {
                c: entry_count(rb.get(c, 0), rops.get(c, 0.0), wb.get(c, 0), wops.get(c, 0.0))
                for c in sorted(rb.keys() | wb.keys())
            }
            skipped = self.skipped.copy()
            return {
                "total_entries_count": entry_count(
                    sum(rb.values()), self.read_ops, self.write_count, self.write_ops
                ),
                "per_cmd_entries_count": per_cmd,
                "skipped": skipped,
                "skipped_count": sum(skipped.values()),
                "failed_count": self.failed,
                "failed_by_cmd": dict(sorted(self.failed_by_cmd.copy().items())),
            }

    # ---------------------------------------------------------------- 1 s ticker

    def start_ticker(self, interval: float = 1.0) -> None:
        """Call :meth:`tick` every ``interval`` seconds from a daemon thread."""
        if self._ticker is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval):
                self.tick()

        self._ticker = threading.Thread(target=run, name="redshake-stats-tick", daemon=True)
        self._ticker.start()

    def stop_ticker(self) -> None:
        self._stop.set()
        t, self._ticker = self._ticker, None
        if t is not None:
            t.join(timeout=2)


def combine(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum several :meth:`Stats.snapshot` dicts (one per worker) into one."""
    total = {"read_count": 0, "read_ops": 0.0, "write_count": 0, "write_ops": 0.0}
    per_cmd: dict[str, dict[str, Any]] = {}
    skipped: dict[str, int] = {}
    failed = 0
    failed_by_cmd: dict[str, int] = {}
    for snap in snapshots:
        for k, v in snap["total_entries_count"].items():
            total[k] += v
        for cmd, counts in snap["per_cmd_entries_count"].items():
            acc = per_cmd.setdefault(
                cmd, {"read_count": 0, "read_ops": 0.0, "write_count": 0, "write_ops": 0.0}
            )
            for k, v in counts.items():
                acc[k] += v
        for reason, n in snap.get("skipped", {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
        failed += snap.get("failed_count", 0)
        for cmd, n in snap.get("failed_by_cmd", {}).items():
            failed_by_cmd[cmd] = failed_by_cmd.get(cmd, 0) + n
    total["read_ops"] = round(total["read_ops"], 2)
    total["write_ops"] = round(total["write_ops"], 2)
    for acc in per_cmd.values():
        acc["read_ops"] = round(acc["read_ops"], 2)
        acc["write_ops"] = round(acc["write_ops"], 2)
    return {
        "total_entries_count": total,
        "per_cmd_entries_count": dict(sorted(per_cmd.items())),
        "skipped": skipped,
        "skipped_count": sum(skipped.values()),
        "failed_count": failed,
        "failed_by_cmd": dict(sorted(failed_by_cmd.items())),
    }
