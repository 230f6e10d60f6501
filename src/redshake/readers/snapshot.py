"""One snapshot feed, shared by the readers that take an RDB stream (a file, the preamble or
base of an AOF, the snapshot of a live sync): bytes are fed in, the parser cuts them into
records, and each record is converted into entries for the target. And one
validate-by-decode rule for the values of records checked before anything is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from ..entry import Entry
from ..rdb import records as R
from ..rdb.parser import RdbParser
from ..rdb.primitives import RdbError

__all__ = ["SnapshotFeed", "check_value"]


class SnapshotFeed:
    """feed -> records -> convert for one RDB stream.

    The converter is made for the stream's version and flavour on the first record converted
    (the header has been parsed by then), unless one is given: the RDB parts of an AOF share
    one. ``keys`` counts the key records converted."""

    __slots__ = ("conv", "ctx", "keys", "parser")

    def __init__(self, ctx, conv=None) -> None:
        self.ctx = ctx
        self.parser = RdbParser()
        self.conv = conv
        self.keys = 0

    def feed(self, chunk: bytes) -> Iterator:
        """The records completed by ``chunk``."""
        parser = self.parser
        parser.feed(chunk)
        return parser.records()

    def convert(self, rec, size: int = 1024) -> Iterator[list[Entry]]:
        """The entries of ``rec`` in lists of about ``size``."""
        conv = self.conv
        if conv is None:
            parser = self.parser
            conv = self.conv = self.ctx.rdb_converter(parser.version, parser.is_valkey)
        t = type(rec)
        if t is R.KeyValue or t is R.BigKeyStart:
            self.keys += 1
        return conv.convert_chunks(rec, size)

    def entries(self, chunk: bytes, size: int = 1024) -> Iterator[list[Entry]]:
        """The entries of every record completed by ``chunk``."""
        parser = self.parser
        parser.feed(chunk)
        conv = self.conv
        for rec in parser.records():  # (convert() inlined: this is the restore's hot loop)
            if conv is None:
                conv = self.conv = self.ctx.rdb_converter(parser.version, parser.is_valkey)
            t = type(rec)
            if t is R.KeyValue or t is R.BigKeyStart:
                self.keys += 1
            yield from conv.convert_chunks(rec, size)

    @property
    def offset(self) -> int:
        """Bytes of the stream parsed so far."""
        return self.parser.offset

    @property
    def done(self) -> bool:
        return self.parser.done

    def finish(self) -> None:
        """The stream has ended: RdbError when it is incomplete."""
        self.parser.finish()

    def counters(self) -> tuple[int, Counter, Counter]:
        """(keys read, how keys were written, skipped keys by reason)."""
        conv = self.conv
        if conv is None:
            return self.keys, Counter(), Counter()
        return self.keys, conv.methods, Counter(conv.skipped)


def check_value(rec, valkey: bool, blobs: bool = False) -> None:
    """Validate by decoding: the value of a KeyValue record is decoded (and with ``blobs``
    its ziplists, listpacks, intsets and zipmaps checked as strictly as a server does), so
    corruption shows before anything is written. RdbError carries the record's offset and
    key unless the decoder named more exact ones."""
    from ..rdb.validate import check_blobs
    from ..rdb.values import decode_value

    raw = bytes(rec.raw)
    try:
        value = decode_value(rec.type, raw, valkey=valkey)
        if blobs:
            check_blobs(rec.type, raw, value)
    except RdbError as e:
        offset = rec.offset if e.offset is None else e.offset
        key = rec.key if e.key is None else e.key
        raise RdbError(e.message, offset, key) from None
