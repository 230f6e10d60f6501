"""A streamed stream, replayed from disk once its consumer groups are known.

A stream too big to hold arrives in parts: its entries, then its metadata, then its
consumer groups (see :mod:`~redshake.rdb.parser`). Rebuilt with commands, a pending entry
whose message was deleted (XDEL, trimming) can only be claimed through a stand-in message
with its id, added in id order among the live entries (XADD ids only grow), claimed, then
deleted (see :func:`~redshake.rdb.rewrite.stream_to_commands`). Which ids need a stand-in is
known only after the last group, so the parts are written to an unnamed temporary file
(created 0600 in the work directory, gone when closed, also after a crash) as they come,
and the commands are made from that file at the end of the key:

* ``items``: every item of every part, in order (marshal, one list a part): the entries,
  the metadata, and the commands of the groups (made as they come, whatever the stand-ins);
* ``claims``: the ids the consumers claim, 16 bytes each, in sorted runs (a consumer's
  pending entries are sorted in the file); merged with the entries while they are replayed,
  the claimed ids that are no entry become stand-ins;
* ``ghosts``: the stand-ins added, read back for their XDELs.

Memory stays bounded: one part's items, one buffer per run of claims, one chunk of ids.
"""

from __future__ import annotations

import heapq
import marshal
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .rewrite import (
    GHOST_FIELDS,
    Version,
    id_key,
    require_streams,
    stream_group_item_commands,
    stream_meta_commands,
)
from .values import (
    StreamConsumerPart,
    StreamGroup,
    StreamGroupHead,
    StreamValue,
    stream_group_parts,
)

__all__ = ["StreamSpill"]

_ID = struct.Struct(">QQ")
_RUN_READ = 256  # ids read at a time from one run of claims

# item tags in the items file (an entry is a plain (id, fields) tuple)
_META, _COMMANDS = 0, 1


def _tmp(directory: Path | None):
    # TemporaryFile: O_EXCL, mode 0600, unlinked at once (nothing left behind)
    return tempfile.TemporaryFile(dir=directory, prefix="redshake-stream-")


class StreamSpill:
    """The parts of one streamed stream (:meth:`add`), then its commands (:meth:`commands`)."""

    def __init__(
        self, directory: Path | None, key: bytes, *, target_version: Version, max_items: int
    ) -> None:
        self._dir = directory
        self.key = key
        self._ver = target_version
        self._max_items = max_items
        self._items = _tmp(directory)
        self._claims = _tmp(directory)
        self._runs: list[tuple[int, int]] = []  # (byte offset, ids) of each sorted run
        self._run_start = 0
        self._run_last: tuple[int, int] | None = None
        self._claimed = 0  # ids written to _claims
        self.bytes = 0  # size of the items file

    def close(self) -> None:
        self._items.close()
        self._claims.close()

    # -- spilling ------------------------------------------------------------------------

    def add(self, items: list) -> None:
        """Keep one part's items (entries, metadata, group items, in the parser's order)."""
        out: list = []
        for it in items:
            t = type(it)
            if t is tuple:
                out.append(it)
            elif t is StreamConsumerPart or t is StreamGroupHead:
                if t is StreamConsumerPart:
                    self._claim(it)
                else:
                    self._end_run()
                cmds = list(stream_group_item_commands(self.key, it, self._ver, self._max_items))
                out.append((_COMMANDS, cmds))
            elif t is StreamValue:
                out.append((_META, it.length, it.last_id, it.first_id, it.max_deleted_id,
                            it.entries_added))  # fmt: skip
            elif t is StreamGroup:  # a whole group: as its parts
                self.add(list(stream_group_parts(it)))
            else:
                raise TypeError(f"unexpected stream item {t.__name__}")
        if out:
            data = marshal.dumps(out)
            self._items.write(data)
            self.bytes += len(data)

    def _claim(self, part: StreamConsumerPart) -> None:
        """The ids a consumer part claims, appended to the current sorted run (a new run
        starts at each id not above the one before: a new consumer, or unsorted input)."""
        buf = bytearray()
        last = self._run_last
        pack = _ID.pack
        for pid, t, c in part.pending:
            if not t and not c:  # an id the group's PEL does not hold: nothing to claim
                continue
            k = id_key(pid)
            if last is not None and k <= last:
                self._claims.write(buf)
                self._claimed += len(buf) // 16
                buf = bytearray()
                self._end_run()
            buf += pack(*k)
            last = k
        self._claims.write(buf)
        self._claimed += len(buf) // 16
        self._run_last = last

    def _end_run(self) -> None:
        n = self._claimed - self._run_start
        if n:
            self._runs.append((self._run_start * 16, n))
        self._run_start = self._claimed
        self._run_last = None

    # -- replay --------------------------------------------------------------------------

    def _stored_items(self) -> Iterator:
        f = self._items
        f.flush()
        f.seek(0)
        while True:
            try:
                part = marshal.load(f)
            except EOFError:
                return
            yield from part

    def _run(self, offset: int, n: int) -> Iterator[tuple[int, int]]:
        fd = self._claims.fileno()
        end = offset + 16 * n
        while offset < end:
            data = os.pread(fd, min(end - offset, 16 * _RUN_READ), offset)
            if not data:
                return
            offset += len(data)
            yield from _ID.iter_unpack(data)

    def _claimed_ids(self) -> Iterator[tuple[int, int]]:
        """Every claimed id once, in id order."""
        self._end_run()
        self._claims.flush()
        last = None
        for k in heapq.merge(*(self._run(o, n) for o, n in self._runs)):
            if k != last:
                last = k
                yield k

    def commands(self) -> Iterator[list[bytes]]:
        """The commands of the whole stream: the same as ``stream_to_commands`` of the value
        decoded whole (entries with stand-ins in id order, XSETID, the groups, XDEL of the
        stand-ins, the metadata)."""
        key = self.key
        ver = self._ver
        max_items = self._max_items
        require_streams(key, ver)
        claims = self._claimed_ids()
        nxt = next(claims, None)
        ghosts = _tmp(self._dir)
        n_ghosts = 0
        created = False
        meta: StreamValue | None = None
        try:
            for it in self._stored_items():
                tag = it[0]
                if type(tag) is bytes:  # an entry
                    if nxt is not None:
                        k = id_key(tag)
                        while nxt is not None and nxt < k:
                            ghosts.write(_ID.pack(*nxt))
                            n_ghosts += 1
                            yield [b"XADD", key, b"%d-%d" % nxt, *GHOST_FIELDS]
                            nxt = next(claims, None)
                        if nxt == k:
                            nxt = next(claims, None)
                    created = True
                    yield [b"XADD", key, tag, *it[1]]
                elif tag == _META:
                    while nxt is not None:  # claimed ids past the last entry
                        ghosts.write(_ID.pack(*nxt))
                        n_ghosts += 1
                        yield [b"XADD", key, b"%d-%d" % nxt, *GHOST_FIELDS]
                        nxt = next(claims, None)
                    meta = StreamValue([], *it[1:], [])
                    if n_ghosts:  # entries-added must cover the stand-ins until they are gone
                        yield [b"XSETID", key, meta.last_id]
                    else:
                        yield from stream_meta_commands(key, meta, created, ver)
                else:
                    yield from it[1]
            if n_ghosts and meta is not None:
                ghosts.flush()
                fd = ghosts.fileno()
                step = max(1, max_items)
                for off in range(0, 16 * n_ghosts, 16 * step):
                    ids = _ID.iter_unpack(os.pread(fd, 16 * step, off))
                    yield [b"XDEL", key, *(b"%d-%d" % k for k in ids)]
                yield from stream_meta_commands(key, meta, True, ver)
        finally:
            ghosts.close()
