"""The one thing that flows through redshake: an entry = one command for one database."""

from __future__ import annotations

from collections import Counter
from operator import itemgetter

_first = itemgetter(0)

__all__ = ["Entry", "KEYLESS_ALL_MASTERS", "KeyEnd", "RestoreSet", "Run"]

# Marker for ``Entry.key``: the command has no key and must go to every master of a cluster
# target (FLUSHALL, FUNCTION LOAD, SCRIPT LOAD, ...).
KEYLESS_ALL_MASTERS = object()


class Entry:
    """One command (argv of bytes) for database ``db``.

    ``key`` is a routing hint: the bytes of the key that decides the cluster slot when the
    producer knows it (the RDB reader always does), ``KEYLESS_ALL_MASTERS`` for commands that
    must be sent to every master, or ``None`` to let the writer look the keys up in the
    command table. ``offset`` is the source position right after this entry (replication
    offset, file offset, ...) or -1. ``resp`` optionally caches the RESP
    encoding of ``argv`` (set by producers on hot paths); whoever changes ``argv`` of an
    entry must reset it to None.
    """

    __slots__ = ("db", "argv", "key", "offset", "resp")

    # True for the last command that writes one key of a snapshot (RDB / SCAN): a writer
    # counts a key as written when the target answered that command without an error.
    ends_key = False
    # True for what a writer adds around the source's commands (the MULTI, position marker
    # and EXEC of an exactly-once unit): not counted as entries the target acknowledged.
    plumbing = False

    def __init__(self, db: int, argv: list[bytes], key=None, offset: int = -1, resp=None) -> None:
        self.db = db
        self.argv = argv
        self.key = key
        self.offset = offset
        self.resp = resp

    @property
    def cmd(self) -> str:
        return self.argv[0].decode("ascii", "replace").upper() if self.argv else ""

    def __repr__(self) -> str:
        shown = [a if len(a) <= 40 else a[:37] + b"..." for a in self.argv[:6]]
        more = f" +{len(self.argv) - 6} args" if len(self.argv) > 6 else ""
        return f"Entry(db={self.db}, argv={shown}{more})"


class RestoreSet(Entry):
    """A ``SET key value [PXAT ms] NX`` standing in for the RESTORE of a small string (same
    result, cheaper on both ends): a nil reply means the key already existed, which writers
    report like RESTORE's ``BUSYKEY`` error."""

    __slots__ = ()
    ends_key = True


class UnitEntry(Entry):
    """MULTI / marker SET / EXEC of an exactly-once unit (see ``Entry.plumbing``)."""

    __slots__ = ()
    plumbing = True


class KeyEnd(Entry):
    """The last (often the only) command writing one key of a snapshot."""

    __slots__ = ()
    ends_key = True


class Run:
    """Consecutive plain commands of database ``db``, moved as one unit.

    The live stream's fast path: when no transform is configured and the writer can send a
    run whole (``write_run``), the sync reader hands over the commands between two special
    ones (SELECT, MULTI, ...) as a run instead of one :class:`Entry` each. ``resp`` is the
    commands' RESP encoding exactly as received and ``offset`` the source position after
    the last one.
    """

    __slots__ = ("db", "argvs", "resp", "offset", "_names")

    def __init__(self, db: int, argvs: list[list[bytes]], resp: bytes, offset: int) -> None:
        self.db = db
        self.argvs = argvs
        self.resp = resp
        self.offset = offset
        self._names: Counter[bytes] | None = None

    def names(self) -> Counter[bytes]:
        """How many commands of each (raw) name the run holds (counted once: read when the
        run is handed over, and again when the target acknowledged it)."""
        n = self._names
        if n is None:
            n = self._names = Counter(map(_first, self.argvs))
        return n

    def entries(self) -> list[Entry]:
        """The run as single entries (for writers and transforms that need them); only the
        last carries the offset."""
        db = self.db
        out = [Entry(db, argv) for argv in self.argvs]
        if out:
            out[-1].offset = self.offset
        return out

    def __repr__(self) -> str:
        return f"Run(db={self.db}, {len(self.argvs)} commands, offset={self.offset})"
