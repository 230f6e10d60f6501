"""A writer that survives a lost target connection, for live readers."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from redshake.entry import Entry, Run
from redshake.resp.conn import AuthError, TLSVerifyError
from redshake.writers.base import NotServing, Writer

__all__ = ["ReconnectingWriter"]

log = logging.getLogger("redshake")


class ReconnectingWriter(Writer):
    """Wraps the target writer for a live reader: when the connection to the target is lost,
    reconnect (with back-off, until ``stop()``) and make the reader produce again everything
    after the last acknowledged offset (``acked(offset)`` then ``rewind()``). Entries the
    driver still writes from the batch that was being written when the connection broke are
    discarded (the reader re-sends them)."""

    def __init__(self, inner: Writer, name: str, acked: Callable[[int], None],
                 rewind: Callable[[], None], stop: Callable[[], bool]) -> None:  # fmt: skip
        self.inner = inner
        self.caps = inner.caps
        self.info = inner.info
        self.name = name
        self._acked = acked
        self._rewind = rewind
        self._stop = stop
        self.discard = False
        self.reconnects = 0

    # -- what the inner writer knows -------------------------------------------------------

    @property
    def acked_offset(self) -> int:  # type: ignore[override]
        return self.inner.acked_offset

    @property
    def acked(self) -> int:  # type: ignore[override]
        return self.inner.acked

    @property
    def keys_acked(self) -> int:  # type: ignore[override]
        return self.inner.keys_acked

    @property
    def acked_names(self) -> Counter[bytes] | None:  # type: ignore[override]
        return self.inner.acked_names

    @property
    def conn_lost(self) -> bool:  # type: ignore[override]
        return self.inner.conn_lost

    @property
    def idle(self) -> bool:
        return bool(getattr(self.inner, "idle", False))

    def status(self) -> dict | list[dict]:
        return self.inner.status()

    def exists(self, db: int, key: bytes) -> bool:
        return self.inner.exists(db, key)

    def flushall(self) -> None:
        self.inner.flushall()

    def close(self) -> None:
        self.inner.close()

    def drain(self, timeout: float = 10.0) -> int:
        return self.inner.drain(timeout)

    def unit_offset(self, offset: int) -> None:
        self.inner.unit_offset(offset)

    def try_marker(self, db: int, key: bytes) -> str:
        return self.inner.try_marker(db, key)

    def get(self, db: int, key: bytes) -> bytes | None:
        return self.inner.get(db, key)

    def read_markers(self, key: bytes) -> dict[int, bytes]:
        return self.inner.read_markers(key)

    def set_skip(self, skip: dict[int, int]) -> None:
        self.inner.set_skip(skip)

    def marks(self) -> dict[int, list[bytes]]:
        return self.inner.marks()

    # -- writes: a lost connection is recovered ------------------------------------------

    def write(self, entry: Entry) -> None:
        if self.discard:
            return
        try:
            self.inner.write(entry)
        except Exception as e:
            self._recover(e)

    def write_run(self, run: Run) -> None:
        if self.discard:
            return
        try:
            self.inner.write_run(run)
        except Exception as e:
            self._recover(e)

    def begin_unit(self) -> None:
        if self.discard:
            return
        try:
            self.inner.begin_unit()
        except Exception as e:
            self._recover(e)

    def end_unit(self, db: int, key: bytes, value: bytes, offset: int) -> None:
        if self.discard:
            return
        try:
            self.inner.end_unit(db, key, value, offset)
        except Exception as e:
            self._recover(e)

    def poll(self) -> None:
        if self.discard:
            return
        try:
            self.inner.poll()
        except Exception as e:
            self._recover(e)

    def flush(self) -> None:
        try:
            self.inner.flush()
        except Exception as e:
            self._recover(e)

    def _recover(self, e: BaseException) -> None:
        inner = self.inner
        if not inner.caps.reconnect or not inner.conn_lost:
            raise e
        # what was acknowledged before the failure still counts
        self._acked(inner.acked_offset)
        delay = 0.1
        while True:
            self.reconnects += 1
            log.warning(
                "[%s] %s (%s); reconnecting in %.1fs (reconnect #%d)", self.name,
                "the target does not serve yet" if isinstance(e, NotServing)
                else "lost the target connection", e, delay, self.reconnects,
            )  # fmt: skip
            time.sleep(delay)
            try:
                inner.reconnect()
                break
            except (AuthError, TLSVerifyError):
                raise  # (cannot heal by waiting: the login or the certificate is refused)
            except OSError as e2:
                e = e2
                if self._stop():
                    raise
                delay = min(delay * 2, 5.0)
        log.info("[%s] target reconnected: re-sending from the last acknowledged position", self.name)
        self.discard = True
        self._rewind()
