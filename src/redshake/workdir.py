"""The working directory (``advanced.dir``), locked so that two instances never share it."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["WorkDir", "WorkDirLocked", "LOCK_NAME", "make_private_dir", "open_private"]

LOCK_NAME = "pid.lockfile"

# Work files (logs, spool, checkpoints, the lock) hold the user's data: owner only,
# whatever the umask.
FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: str | Path, *, own: bool = False) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (chmod'ed, so the umask does not
    matter). A directory that already exists keeps its mode (it may be the user's own, such
    as ``.``), unless ``own``: a directory only redshake uses is made 0700 either way."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)
    path.mkdir(parents=True, exist_ok=True)  # raises the usual error when it cannot be one
    if own:
        os.chmod(path, DIR_MODE)
    return path


def open_private(path: str | Path, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)`` with mode 0600; an existing file is made 0600 too."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


class WorkDirLocked(RuntimeError):
    """Another process holds the lock on the working directory."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"working directory {path} is in use by {holder} "
            f"(lock file {path / LOCK_NAME}); stop it or set a different [advanced] dir"
        )
        self.path = path
        self.pid = pid


class WorkDir:
    """Create ``path`` and hold an exclusive, non-blocking ``flock`` on ``<path>/pid.lockfile``.

    The directory is created and locked by the constructor (raising :class:`WorkDirLocked`
    when another process holds it). The lock file contains the PID of the holder. The lock is released by :meth:`close`, on
    context-manager exit, or by the kernel when the process dies (no stale locks).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self._fd: int | None = None
        self.open()

    def open(self) -> WorkDir:
        if self._fd is not None:
            return self
        try:
            make_private_dir(self.path)
        except OSError as e:
            raise OSError(
                e.errno, f"cannot create working directory {self.path}: {e.strerror}"
            ) from e
        lock = self.path / LOCK_NAME
        fd = open_private(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkDirLocked(self.path, _read_pid(lock)) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def sub(self, name: str) -> Path:
        """``<dir>/<name>`` (created)."""
        return make_private_dir(self.path / name, own=True)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> WorkDir:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - safety net
        try:
            self.close()
        except Exception:
            pass


def _read_pid(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
