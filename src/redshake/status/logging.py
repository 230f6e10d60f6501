"""Logging in RedisShake's two formats, plus the periodic progress line.

- console (stdout): ``2006-01-02 15:04:05 INF message`` with levels DBG/INF/WRN/ERR;
- file (``<dir>/<log_file>``): JSON lines ``{"level":"info","time":"<RFC 3339>","message":"..."}``,
  rotated by size like lumberjack: the full file is renamed to
  ``<name>-<UTC yyyy-mm-ddThh-mm-ss.mmm><ext>``, gzip-compressed in the background when
  ``compress`` is set, and old backups are pruned by count (``max_backups``, 0 = keep all)
  and by age (``max_age_days``, 0 = keep forever).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from redshake.workdir import make_private_dir, open_private

if TYPE_CHECKING:
    from redshake.config.schema import AdvancedConfig

__all__ = [
    "LOGGER_NAME",
    "setup_logging",
    "setup_logging_from_config",
    "format_progress",
    "format_bytes",
    "ConsoleFormatter",
    "JsonFormatter",
    "SizeRotatingFileHandler",
]

LOGGER_NAME = "redshake"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_SHORT = {
    logging.DEBUG: "DBG",
    logging.INFO: "INF",
    logging.WARNING: "WRN",
    logging.ERROR: "ERR",
    logging.CRITICAL: "ERR",
}
_LONG = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


def _message(record: logging.LogRecord) -> str:
    msg = record.getMessage()
    if record.exc_info:
        msg = msg + "\n" + logging.Formatter().formatException(record.exc_info)
    if record.stack_info:
        msg = msg + "\n" + record.stack_info
    return msg


class ConsoleFormatter(logging.Formatter):
    """``YYYY-MM-DD HH:MM:SS INF message`` (local time)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        lvl = _SHORT.get(record.levelno) or ("DBG" if record.levelno < logging.INFO else "ERR")
        return f"{ts} {lvl} {_message(record)}"


class JsonFormatter(logging.Formatter):
    """``{"level":"info","time":"2025-01-02T15:04:05+08:00","message":"..."}``."""

    def format(self, record: logging.LogRecord) -> str:
        t = _dt.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="seconds")
        if t.endswith("+00:00"):
            t = t[:-6] + "Z"
        lvl = _LONG.get(record.levelno) or ("debug" if record.levelno < logging.INFO else "error")
        return json.dumps(
            {"level": lvl, "time": t, "message": _message(record)},
            ensure_ascii=False,
            separators=(",", ":"),
        )


class SizeRotatingFileHandler(logging.Handler):
    """Append to ``path``; rotate when a write would push it past ``max_bytes``."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int,
        max_backups: int = 3,
        max_age_days: int = 7,
        compress: bool = True,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_backups = max_backups
        self.max_age_days = max_age_days
        self.compress = compress
        make_private_dir(self.path.parent)
        self._stream: IO[bytes] | None = _open_log(self.path)
        self._size = self._stream.tell()
        self._mill_lock = threading.Lock()
        self._mills: list[threading.Thread] = []
        self._mill()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "replace")
            if self._stream is None:
                return
            if self.max_bytes > 0 and self._size > 0 and self._size + len(data) > self.max_bytes:
                self._rotate()
            assert self._stream is not None
            self._stream.write(data)
            self._stream.flush()
            self._size += len(data)
        except Exception:
            self.handleError(record)

    def _backup_name(self) -> Path:
        now = _dt.datetime.now(_dt.UTC)
        stamp = now.strftime("%Y-%m-%dT%H-%M-%S.") + f"{now.microsecond // 1000:03d}"
        stem, ext = self.path.stem, self.path.suffix
        cand = self.path.with_name(f"{stem}-{stamp}{ext}")
        i = 1
        while cand.exists() or cand.with_name(cand.name + ".gz").exists():
            cand = self.path.with_name(f"{stem}-{stamp}-{i}{ext}")
            i += 1
        return cand

    def _rotate(self) -> None:
        assert self._stream is not None
        self._stream.close()
        os.replace(self.path, self._backup_name())  # keeps its 0600
        self._stream = _open_log(self.path)
        self._size = 0
        self._mill()

    def _mill(self) -> None:
        """Compress and prune backups in a background thread (like lumberjack's mill)."""
        t = threading.Thread(target=self._mill_run, name="redshake-log-mill", daemon=True)
        self._mills = [m for m in self._mills if m.is_alive()]
        self._mills.append(t)
        t.start()

    def backups(self) -> list[Path]:
        """Rotated files (compressed or not), newest first."""
        stem, ext = self.path.stem, self.path.suffix
        out = []
        for p in self.path.parent.glob(f"{stem}-*"):
            name = p.name[:-3] if p.name.endswith(".gz") else p.name
            if name.endswith(ext) and p != self.path:
                out.append(p)
        return sorted(out, key=lambda p: p.name, reverse=True)

    def _mill_run(self) -> None:
        with self._mill_lock:
            try:
                if self.compress:
                    for p in self.backups():
                        if p.name.endswith(".gz"):
                            continue
                        gz = p.with_name(p.name + ".gz")
                        tmp = p.with_name(p.name + ".gz.tmp")
                        fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
                        with (
                            open(p, "rb") as src,
                            open(fd, "wb") as raw,
                            gzip.GzipFile(p.name, "wb", fileobj=raw) as dst,
                        ):
                            shutil.copyfileobj(src, dst, 1 << 20)
                        os.replace(tmp, gz)
                        p.unlink()
                backups = self.backups()
                doomed: list[Path] = []
                if self.max_backups > 0:
                    doomed += backups[self.max_backups :]
                if self.max_age_days > 0:
                    cutoff = time.time() - self.max_age_days * 86400
                    doomed += [p for p in backups if p.stat().st_mtime < cutoff]
                for p in set(doomed):
                    p.unlink(missing_ok=True)
            except OSError as e:  # never let housekeeping kill logging
                print(f"log rotation housekeeping failed: {e}", file=sys.stderr)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait for background compression/pruning (used by tests and at shutdown)."""
        for t in list(self._mills):
            t.join(timeout)

    def close(self) -> None:
        self.acquire()
        try:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        finally:
            self.release()
        self.wait_idle()
        super().close()


class _PlainFileHandler(logging.FileHandler):
    def _open(self):  # type: ignore[no-untyped-def]
        fd = open_private(self.baseFilename, os.O_WRONLY | os.O_APPEND)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def _open_log(path: Path) -> IO[bytes]:
    """The log file for appending, 0600 (it holds keys and addresses)."""
    return open(open_private(path, os.O_WRONLY | os.O_APPEND), "ab")  # noqa: SIM115


def setup_logging(
    level: str = "info",
    log_file_path: str | Path | None = None,
    *,
    rotation: bool = True,
    max_size_mb: int = 512,
    max_backups: int = 3,
    max_age_days: int = 7,
    compress: bool = True,
    console: bool = True,
    stream: IO[str] | None = None,
) -> logging.Logger:
    """Configure and return the ``redshake`` logger.

    Call it first without ``log_file_path`` (console only, while the config loads) and again
    once ``advanced.dir`` is known; each call replaces the handlers of the previous one.
    ``level`` is ``debug``, ``info``, ``warn`` or ``error``.
    """
    lvl = _LEVELS.get(level.lower())
    if lvl is None:
        raise ValueError(f"unknown log level {level!r} (debug, info, warn, error)")
    logger = logging.getLogger(LOGGER_NAME)
    for h in list(logger.handlers):
        if getattr(h, "_redshake", False):
            logger.removeHandler(h)
            h.close()
    logger.setLevel(lvl)
    logger.propagate = False
    if console:
        ch = logging.StreamHandler(stream if stream is not None else sys.stdout)
        ch.setFormatter(ConsoleFormatter())
        ch._redshake = True  # type: ignore[attr-defined]
        logger.addHandler(ch)
    if log_file_path is not None:
        path = Path(log_file_path)
        make_private_dir(path.parent)
        fh: logging.Handler
        if rotation:
            fh = SizeRotatingFileHandler(
                path,
                max_bytes=max_size_mb * 1024 * 1024,
                max_backups=max_backups,
                max_age_days=max_age_days,
                compress=compress,
            )
        else:
            fh = _PlainFileHandler(path, mode="a", encoding="utf-8")
        fh.setFormatter(JsonFormatter())
        fh._redshake = True  # type: ignore[attr-defined]
        logger.addHandler(fh)
    return logger


def setup_logging_from_config(advanced: AdvancedConfig, **kw: Any) -> logging.Logger:
    """:func:`setup_logging` with the ``[advanced]`` log settings (log file under ``dir``)."""
    return setup_logging(
        advanced.log_level,
        advanced.log_path,
        rotation=advanced.log_rotation,
        max_size_mb=advanced.log_max_size,
        max_backups=advanced.log_max_backups,
        max_age_days=advanced.log_max_age,
        compress=advanced.log_compress,
        **kw,
    )


def format_progress(
    read_count: int, read_ops: float, write_count: int, write_ops: float, reader_status: str
) -> str:
    """RedisShake's periodic progress line."""
    return (
        f"read_count=[{read_count}], read_ops=[{read_ops:.2f}], "
        f"write_count=[{write_count}], write_ops=[{write_ops:.2f}], {reader_status}"
    )


_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n: float) -> str:
    """Human size in IEC units as RedisShake prints them: ``538 KiB``, ``1.0 GiB``, ``12 B``."""
    if n < 10:
        return f"{int(n)} B"
    e = 0
    val = float(n)
    while val >= 1024 and e < len(_IEC) - 1:
        val /= 1024
        e += 1
    val = int(val * 10 + 0.5) / 10
    if e == 0:
        return f"{int(n)} B"
    return f"{val:.1f} {_IEC[e]}" if val < 10 else f"{val:.0f} {_IEC[e]}"
