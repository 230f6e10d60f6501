"""On-disk buffer between the source socket (one thread writes) and the target (the main
thread reads).

Every byte received after the handshake is appended here as it arrives, so the source link
is drained at socket speed whatever the target's speed: the master never sees our output
buffer grow. Memory stays bounded (a read chunk); disk grows while the target lags.

Layout, per *epoch* (one full sync, or one resume from a checkpoint, and every partial
resync that continues it): ``rdb-<epoch>.rdb`` (the snapshot payload, without framing) and
``aof-<epoch>-<start>.spool`` segments of the command stream, where ``start`` is the
replication offset just before the first byte of the segment.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..workdir import make_private_dir, open_private

__all__ = ["Spool", "SEGMENT_BYTES"]

SEGMENT_BYTES = 256 << 20


class _Segment:
    __slots__ = ("start", "path", "size")

    def __init__(self, start: int, path: Path) -> None:
        self.start = start
        self.path = path
        self.size = 0


class Spool:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = directory
        make_private_dir(self.dir, own=True)
        self.segment_bytes = segment_bytes
        self.cond = threading.Condition()
        self._segs: dict[int, list[_Segment]] = {}
        self._wfd: int | None = None  # open stream segment (writer side)
        self._rdb_fd: int | None = None
        self._rfds: dict[Path, int] = {}  # reader side
        self.bytes_on_disk = 0

    def clear(self) -> None:
        """Remove spool files left by an earlier run (the checkpoint is kept)."""
        for p in self.dir.iterdir():
            if p.suffix in (".rdb", ".spool"):
                p.unlink(missing_ok=True)

    # -- writer side (link thread) ------------------------------------------------------

    def rdb_path(self, epoch: int) -> Path:
        return self.dir / f"rdb-{epoch}.rdb"

    def open_rdb(self, epoch: int, keep_stream: bool = False) -> None:
        """``keep_stream``: the stream segment being written stays open (a dual-channel sync
        receives the snapshot and the stream at the same time)."""
        self._close_w(stream=not keep_stream)
        self._rdb_fd = open_private(self.rdb_path(epoch), os.O_WRONLY | os.O_TRUNC)

    def write_rdb(self, data: bytes) -> None:
        assert self._rdb_fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._rdb_fd, view)
            view = view[n:]
        self.bytes_on_disk += len(data)

    def end_rdb(self, durable: bool = True) -> None:
        if self._rdb_fd is not None:
            if durable:
                os.fsync(self._rdb_fd)
            os.close(self._rdb_fd)
            self._rdb_fd = None

    def start_stream(
        self, epoch: int, start: int, rotate: bool = False, keep_rdb: bool = False
    ) -> None:
        """The command stream of ``epoch`` continues (or begins) after offset ``start``
        (``keep_rdb``: a snapshot being written meanwhile stays open)."""
        self._close_w(rdb=not keep_rdb)
        segs = self._segs.setdefault(epoch, [])
        if segs and segs[-1].start + segs[-1].size == start and not rotate:
            seg = segs[-1]
        else:
            seg = _Segment(start, self.dir / f"aof-{epoch}-{start}.spool")
            with self.cond:
                segs.append(seg)
        self._wfd = open_private(seg.path, os.O_WRONLY | os.O_APPEND)

    def write_stream(self, epoch: int, data: bytes) -> None:
        seg = self._segs[epoch][-1]
        if seg.size >= self.segment_bytes:
            self.start_stream(epoch, seg.start + seg.size, rotate=True, keep_rdb=True)
            seg = self._segs[epoch][-1]
        assert self._wfd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._wfd, view)
                view = view[n:]
        except OSError:
            # e.g. disk full: drop the partial write so the segment stays exact (the link
            # reconnects and asks for these bytes again)
            os.ftruncate(self._wfd, seg.size)
            raise
        with self.cond:
            seg.size += len(data)
            self.bytes_on_disk += len(data)

    def _close_w(self, stream: bool = True, rdb: bool = True) -> None:
        if stream and self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        if rdb and self._rdb_fd is not None:
            os.close(self._rdb_fd)
            self._rdb_fd = None

    # -- reader side (main thread) ------------------------------------------------------

    def _rfd(self, path: Path) -> int:
        fd = self._rfds.get(path)
        if fd is None:
            fd = self._rfds[path] = os.open(path, os.O_RDONLY)
        return fd

    def read_rdb(self, epoch: int, pos: int, upto: int, n: int) -> bytes:
        """Snapshot bytes [pos, min(upto, pos+n)) (``upto`` = bytes known to be written)."""
        if upto <= pos:
            return b""
        return os.pread(self._rfd(self.rdb_path(epoch)), min(n, upto - pos), pos)

    def drop_rdb(self, epoch: int) -> None:
        p = self.rdb_path(epoch)
        fd = self._rfds.pop(p, None)
        if fd is not None:
            os.close(fd)
        try:
            self.bytes_on_disk -= p.stat().st_size
        except OSError:
            pass
        p.unlink(missing_ok=True)

    def read_stream(self, epoch: int, offset: int, n: int) -> bytes:
        """Stream bytes following replication offset ``offset`` (at most ``n``)."""
        with self.cond:
            segs = list(self._segs.get(epoch, ()))
            sizes = [s.size for s in segs]
        for seg, size in zip(segs, sizes, strict=True):
            if seg.start <= offset < seg.start + size:
                k = min(n, seg.start + size - offset)
                return os.pread(self._rfd(seg.path), k, offset - seg.start)
        return b""

    def release(self, epoch: int, upto: int) -> None:
        """Delete the stream segments of ``epoch`` that lie entirely at or before ``upto``."""
        with self.cond:
            segs = self._segs.get(epoch, [])
            done = [s for s in segs[:-1] if s.start + s.size <= upto]
            for s in done:
                segs.remove(s)
                self.bytes_on_disk -= s.size
        for s in done:
            fd = self._rfds.pop(s.path, None)
            if fd is not None:
                os.close(fd)
            s.path.unlink(missing_ok=True)

    def drop_epoch(self, epoch: int) -> None:
        with self.cond:
            segs = self._segs.pop(epoch, [])
            for s in segs:
                self.bytes_on_disk -= s.size
        for s in segs:
            fd = self._rfds.pop(s.path, None)
            if fd is not None:
                os.close(fd)
            s.path.unlink(missing_ok=True)
        self.drop_rdb(epoch)

    def close(self) -> None:
        self._close_w()
        for fd in self._rfds.values():
            os.close(fd)
        self._rfds.clear()
