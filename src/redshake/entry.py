"""The one thing that flows through redshake: an entry = one command for one database."""

from __future__ import annotations

__all__ = ["Entry", "KEYLESS_ALL_MASTERS"]

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
