"""A live progress bar (percent, rate, ETA) on an interactive terminal; a no-op otherwise.

The bar is drawn on stdout only when stdout is a TTY, so redirected output and log files never
contain escape codes. While it is shown, console log lines are printed through the bar's own
console (above the bar) instead of being written into the middle of it.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

__all__ = ["Progress"]


class Progress:
    """``Progress(total_bytes, description)``; call :meth:`update` with absolute values.

    ``total_bytes=None`` shows an indeterminate bar (bytes done and rate, no ETA).
    ``enabled`` forces the bar on or off (default: on only when ``file`` is a TTY).
    """

    def __init__(
        self,
        total_bytes: int | None,
        description: str = "",
        *,
        file: IO[str] | None = None,
        enabled: bool | None = None,
        unit: str = "bytes",
    ) -> None:
        out = file if file is not None else sys.stdout
        if enabled is None:
            isatty = getattr(out, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.total_bytes = total_bytes
        self.done_bytes = 0
        self.keys = 0
        self._bar = None
        self._task = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as _RichProgress

        console = Console(file=out)
        self._bar = _RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            *(
                (DownloadColumn(binary_units=True), TransferSpeedColumn(), TextColumn("{task.fields[keys]} keys"))
                if unit == "bytes"
                else (MofNCompleteColumn(), TextColumn("keys"))
            ),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total_bytes, keys=0)
        # Route console log handlers that write to the same stream through the live display.
        self._swapped: list[tuple[logging.StreamHandler, IO[str]]] = []
        proxy = _LineToConsole(console)
        for h in logging.getLogger("redshake").handlers:
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is out:
                self._swapped.append((h, h.setStream(proxy)))  # type: ignore[arg-type]

    def update(self, done_bytes: int, keys: int = 0) -> None:
        """Set the absolute progress: ``done_bytes`` processed, ``keys`` keys so far."""
        self.done_bytes = done_bytes
        self.keys = keys
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done_bytes, keys=keys)

    def set_total(self, total_bytes: int | None) -> None:
        self.total_bytes = total_bytes
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=total_bytes)

    def close(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.stop()
            for handler, stream in self._swapped:
                handler.setStream(stream)
            self._swapped.clear()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LineToConsole:
    """A text stream that prints complete lines with a rich console (above a live bar)."""

    def __init__(self, console) -> None:
        self.console = console
        self._partial = ""

    def write(self, text: str) -> int:
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        for line in lines:
            self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass
