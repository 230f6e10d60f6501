"""One command stream framed for the pipeline, shared by the AOF replay
(:mod:`redshake.readers.aof_reader`) and the stream phase of a live sync
(:mod:`redshake.readers.sync_reader`).

A :class:`Framer` holds what lies between the parser and the pipeline: the database the
commands apply to (``SELECT`` is tracked, never forwarded: every entry carries its db), the
``MULTI`` block being gathered (handed over whole, in one batch, when its ``EXEC`` arrives,
so that the target applies it atomically) and the batch being filled. The readers keep their
own offsets (a file position, a replication offset) and their own parsing loops: the hot path
of plain commands appends to :attr:`Framer.batch` directly.
"""

from __future__ import annotations

from ..entry import Entry

__all__ = ["Framer", "select_db"]


def select_db(argv: list[bytes]) -> int | None:
    """The database of ``SELECT <db>``; None when the command is malformed."""
    if len(argv) != 2 or not argv[1].isdigit():
        return None
    return int(argv[1])


class Framer:
    """SELECT tracking, MULTI/EXEC grouping and batch hand-over of one command stream.

    ``db`` is the database of the next command; ``txn`` the MULTI block being gathered (None
    outside one) and ``txn_at`` where its MULTI ended; ``batch`` what :meth:`take` hands over.
    """

    __slots__ = ("batch", "db", "txn", "txn_at")

    def __init__(self, db: int = 0) -> None:
        self.db = db
        self.txn: list | None = None
        self.txn_at = 0
        self.batch: list = []

    def restart(self, db: int = 0) -> None:
        """A new stream (the next file): db ``db``, no block open; the batch is kept."""
        self.db = db
        self.txn = None

    def select(self, argv: list[bytes]) -> bool:
        """``SELECT <db>``: the commands after it apply to that db (False: malformed, the db
        is unchanged)."""
        db = select_db(argv)
        if db is None:
            return False
        self.db = db
        return True

    def multi(self, entry: Entry, at: int = 0, *, restart: bool = False) -> bool:
        """``MULTI``: a block starts with ``entry``. A MULTI inside a block is ignored
        (False), or with ``restart`` drops the block gathered so far and starts again."""
        if self.txn is not None and not restart:
            return False
        self.txn = [entry]
        self.txn_at = at
        return True

    def exec(self, entry: Entry, keep: bool = True) -> list | None:
        """``EXEC``: the block is complete; with ``keep`` it goes into the batch. Returns the
        block (MULTI ... EXEC), or None for an EXEC without MULTI."""
        txn = self.txn
        if txn is None:
            return None
        txn.append(entry)
        self.txn = None
        if keep:
            self.batch.extend(txn)
        return txn

    def drop_txn(self) -> int:
        """Drop the block being gathered (cut-off, end of input); the number of commands it
        held (MULTI and EXEC not counted), -1 when none was open."""
        txn = self.txn
        if txn is None:
            return -1
        self.txn = None
        return len(txn) - 1

    def add(self, entry: Entry) -> bool:
        """A command: gathered into the open block (False) or put in the batch (True)."""
        txn = self.txn
        if txn is None:
            self.batch.append(entry)
            return True
        txn.append(entry)
        return False

    def take(self) -> list:
        """The batch, handed over; a new one is started."""
        batch = self.batch
        self.batch = []
        return batch
