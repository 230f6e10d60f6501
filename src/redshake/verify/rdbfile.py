"""An RDB file as the source: its keys (db, name, type, expiry) against the target.

The file is streamed through the RDB parser (values are not decoded; big values pass by in
parts), so memory does not grow with the file. Only ``quick`` checks are possible: values
would have to be decoded and re-encoded to be compared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from ..rdb.parser import RdbParser
from ..rdb.primitives import RdbError
from ..rdb.records import BigKeyStart, KeyValue
from ..rdb.values import TYPE_NAMES
from .compare import BATCH, Diff, Verifier
from .side import VerifyError

__all__ = ["file_keys", "compare_file"]


def file_keys(path: str | Path) -> Iterator[tuple[int, bytes, bytes, int]]:
    """(db, key, TYPE name, absolute expiry ms or -1) of every non-empty key of the file."""
    p = RdbParser()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                p.feed(chunk)
                for rec in p.records():
                    if isinstance(rec, KeyValue):
                        if not rec.empty:
                            yield rec.db, rec.key, TYPE_NAMES.get(rec.type, "module").encode(), rec.expire_ms
                    elif isinstance(rec, BigKeyStart):
                        yield rec.db, rec.key, TYPE_NAMES.get(rec.type, "module").encode(), rec.expire_ms
        p.finish()
    except OSError as e:
        raise VerifyError(f"cannot read {path}: {e}") from None
    except RdbError as e:
        raise VerifyError(f"{path} is not a readable RDB file: {e}") from None


_STANDARD = {b"string", b"list", b"set", b"zset", b"hash", b"stream"}


def _compare_batch(v: Verifier, db: int, items: list[tuple[bytes, bytes, int]], found: dict[int, int]) -> list[Diff]:
    out: list[Diff] = []
    by_tdb: dict[int, list[tuple[bytes, bytes, bytes, int]]] = {}
    now = int(time.time() * 1000)
    for key, typ, exp in items:
        if 0 <= exp <= now:
            v.stats.skip("expired_in_file")
            continue
        m = v.map(db, key)
        if m is None:
            v.stats.skip("filtered")
        elif isinstance(m, str):
            v.stats.skip("unmapped")
        else:
            by_tdb.setdefault(m[0], []).append((key, m[1], typ, exp))
    for tdb, rows in by_tdb.items():
        replies = v.dst.run(tdb, [r[1] for r in rows], lambda k: [("TYPE", k), ("PTTL", k)])
        now = int(time.time() * 1000)
        for (key, tkey, typ, exp), (ttype, pttl) in zip(rows, replies, strict=True):
            v.stats.checked_source += 1
            if ttype == b"none" or pttl == -2:
                out.append(Diff("missing", db, key, "not on the target", tdb, tkey))
                continue
            found[tdb] = found.get(tdb, 0) + 1
            d: Diff | None
            if ttype != typ and not (typ == b"module" and ttype not in _STANDARD):
                d = Diff("type", db, key, f"{typ.decode()} in the file, {ttype.decode()} on the target", tdb, tkey)
            else:
                d = v._ttl_diff(db, key, tdb, tkey, -1 if exp < 0 else exp - now, int(pttl))
            if d is None:
                v.stats.equal += 1
            else:
                out.append(d)
    return out


def compare_file(v: Verifier, path: str) -> tuple[list[Diff], dict[int, int]]:
    """Every key of the file against the target; returns the differences and, per target
    db, how many of the file's keys were found there."""
    diffs: list[Diff] = []
    found: dict[int, int] = {}
    batch: list[tuple[bytes, bytes, int]] = []
    cur = -1
    for db, key, typ, exp in file_keys(path):
        if db != cur and batch:
            diffs.extend(_compare_batch(v, cur, batch, found))
            v._pace(len(batch))
            batch = []
        cur = db
        batch.append((key, typ, exp))
        if len(batch) >= BATCH:
            diffs.extend(_compare_batch(v, cur, batch, found))
            v._pace(len(batch))
            batch = []
    if batch:
        diffs.extend(_compare_batch(v, cur, batch, found))
        v._pace(len(batch))
    return diffs, found
