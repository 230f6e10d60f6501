"""Value digests computed page by page, so a big key is never held whole.

Strings (GETRANGE pages), lists (LRANGE pages) and sorted sets (ZRANGE by index pages) feed
an ordered hash; hashes (HSCAN) and sets (SSCAN) add one hash per element into an
order-insensitive sum. Streams: the entries (XRANGE pages), the last generated id and, per
consumer group, its last delivered id and pending summary. Each reader is a small state
machine (``next_command`` / ``feed``) so many keys advance together in one pipeline.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

__all__ = ["PageReader", "reader_for", "ELEMENT_PAGE", "STRING_PAGE"]

ELEMENT_PAGE = 500
STRING_PAGE = 64 * 1024
_MASK = (1 << 128) - 1


def _lp(h: Any, b: bytes) -> None:
    h.update(len(b).to_bytes(8, "little"))
    h.update(b)


def _score(raw: bytes) -> bytes:
    """Servers print scores differently (Redis 7 '0.10000000000000001', Valkey '0.1'): the
    double they stand for is what counts."""
    return repr(float(raw)).encode()


class PageReader:
    """Reads one key page by page; ``digest()`` once ``next_command()`` returns None."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.h = blake2b(digest_size=16)
        self.total = 0  # order-insensitive part
        self.count = 0
        self.done = False

    def next_command(self) -> tuple | None:
        raise NotImplementedError

    def feed(self, reply: Any) -> None:
        raise NotImplementedError

    def _add_unordered(self, *parts: bytes) -> None:
        h = blake2b(digest_size=16)
        for p in parts:
            _lp(h, p)
        self.total = (self.total + int.from_bytes(h.digest(), "little")) & _MASK
        self.count += 1

    def digest(self) -> bytes:
        return self.h.digest() + self.total.to_bytes(16, "little") + self.count.to_bytes(8, "little")


class _String(PageReader):
    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self.off = 0

    def next_command(self) -> tuple | None:
        if self.done:
            return None
        return ("GETRANGE", self.key, self.off, self.off + STRING_PAGE - 1)

    def feed(self, reply: Any) -> None:
        self.h.update(reply)
        self.off += len(reply)
        self.count = self.off
        if len(reply) < STRING_PAGE:
            self.done = True


class _Ranged(PageReader):
    """Lists and sorted sets: pages by index until a short page."""

    def __init__(self, key: bytes, zset: bool) -> None:
        super().__init__(key)
        self.zset = zset
        self.pos = 0

    def next_command(self) -> tuple | None:
        if self.done:
            return None
        end = self.pos + ELEMENT_PAGE - 1
        if self.zset:
            return ("ZRANGE", self.key, self.pos, end, "WITHSCORES")
        return ("LRANGE", self.key, self.pos, end)

    def feed(self, reply: Any) -> None:
        if self.zset:
            for i in range(0, len(reply) - 1, 2):
                _lp(self.h, reply[i])
                _lp(self.h, _score(reply[i + 1]))
            n = len(reply) // 2
        else:
            for e in reply:
                _lp(self.h, e)
            n = len(reply)
        self.pos += n
        self.count = self.pos
        if n < ELEMENT_PAGE:
            self.done = True


class _Scanned(PageReader):
    """Hashes (field, value) and sets (member): HSCAN / SSCAN, order-insensitive."""

    def __init__(self, key: bytes, pairs: bool) -> None:
        super().__init__(key)
        self.pairs = pairs
        self.cursor = b"0"
        self.started = False

    def next_command(self) -> tuple | None:
        if self.done:
            return None
        return ("HSCAN" if self.pairs else "SSCAN", self.key, self.cursor, "COUNT", ELEMENT_PAGE)

    def feed(self, reply: Any) -> None:
        self.cursor, items = reply[0], reply[1]
        if self.pairs:
            for i in range(0, len(items) - 1, 2):
                self._add_unordered(items[i], items[i + 1])
        else:
            for m in items:
                self._add_unordered(m)
        if self.cursor == b"0":
            self.done = True


def _next_id(sid: bytes) -> bytes:
    ms, _, seq = sid.partition(b"-")
    return b"%d-%d" % (int(ms), int(seq or b"0") + 1)


def _flat(v: Any) -> list[bytes]:
    if isinstance(v, list):
        out: list[bytes] = []
        for x in v:
            out.extend(_flat(x))
        return out
    if v is None:
        return [b"(nil)"]
    return [v if isinstance(v, bytes) else str(v).encode()]


class _Stream(PageReader):
    """Entries, then XINFO STREAM's last id, then each group's id and pending summary."""

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self.start = b"-"
        self.stage = "entries"
        self.groups: list[bytes] = []

    def next_command(self) -> tuple | None:
        if self.done:
            return None
        if self.stage == "entries":
            return ("XRANGE", self.key, self.start, "+", "COUNT", ELEMENT_PAGE)
        if self.stage == "info":
            return ("XINFO", "STREAM", self.key)
        if self.stage == "groups":
            return ("XINFO", "GROUPS", self.key)
        return ("XPENDING", self.key, self.groups[0])

    def feed(self, reply: Any) -> None:
        if self.stage == "entries":
            for sid, fields in reply:
                _lp(self.h, sid)
                for f in _flat(fields):
                    _lp(self.h, f)
            self.count += len(reply)
            if len(reply) < ELEMENT_PAGE:
                self.stage = "info"
            else:
                self.start = _next_id(reply[-1][0])
        elif self.stage == "info":
            info = dict(zip(reply[::2], reply[1::2], strict=False))
            _lp(self.h, b"last " + _flat(info.get(b"last-generated-id"))[0])
            self.stage = "groups"
        elif self.stage == "groups":
            for g in reply:
                gi = dict(zip(g[::2], g[1::2], strict=False))
                name = _flat(gi.get(b"name"))[0]
                self.groups.append(name)
                for f in (b"name", b"last-delivered-id", b"pending", b"consumers"):
                    _lp(self.h, _flat(gi.get(f))[0])
            self.groups.sort()
            self.stage = "pending"
            self.done = not self.groups
        else:
            for part in _flat(reply):
                _lp(self.h, part)
            self.groups.pop(0)
            self.done = not self.groups


def reader_for(typ: bytes, key: bytes) -> PageReader | None:
    """A page reader for a key of type ``typ`` (TYPE's reply); None: no way to read it."""
    if typ == b"string":
        return _String(key)
    if typ == b"list":
        return _Ranged(key, zset=False)
    if typ == b"zset":
        return _Ranged(key, zset=True)
    if typ == b"hash":
        return _Scanned(key, pairs=True)
    if typ == b"set":
        return _Scanned(key, pairs=False)
    if typ == b"stream":
        return _Stream(key)
    return None
