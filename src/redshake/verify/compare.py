"""The comparison: key sets both ways, types, TTLs and values, in pipelined batches.

Source keys are mapped to the key the target should hold (the [filter] rules and the Lua
function applied as to the snapshot's ``RESTORE`` of the key), then compared in batches of
``BATCH`` keys: ``TYPE`` + ``PTTL`` on both sides (+ ``DEBUG DIGEST-VALUE`` in full mode
where the server allows it). A value is confirmed different by reading both copies page by
page (:mod:`.digest`); that is also the whole value check where DEBUG is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..commands.lookup import command_info
from ..entry import Entry
from ..resp.conn import ReplyError
from .digest import reader_for
from .side import Side, VerifyError

__all__ = ["Options", "Verifier", "Diff", "REASONS"]

BATCH = 500
PAGE_KEYS = 64  # keys read page by page together (bounds the memory of one round)
DUMP_MAX = 64 * 1024  # keys estimated bigger than this are not DUMPed (memory bounded)
DUMP_ROUND = 8 * 1024 * 1024
RECHECK_KEEP = 100_000  # differing keys kept for re-check rounds
REASONS = ("missing", "extra", "type", "value", "ttl")
_ZERO_DIGEST = b"0" * 40
_META = b"*2\r\n$4\r\nTYPE\r\n$%d\r\n%s\r\n*2\r\n$4\r\nPTTL\r\n$%d\r\n%s\r\n"
_META_MEMORY = _META + b"*3\r\n$6\r\nMEMORY\r\n$5\r\nUSAGE\r\n$%d\r\n%s\r\n"
_META_DIGEST = _META + b"*3\r\n$5\r\nDEBUG\r\n$12\r\nDIGEST-VALUE\r\n$%d\r\n%s\r\n"


@dataclass
class Options:
    mode: str = "quick"  # count | quick | full
    sample: int = 0  # 0 = every key
    ttl_tolerance_ms: int = 2000
    rate: float = 0.0  # keys per second, 0 = unlimited
    recheck: int = 0
    recheck_delay: float = 5.0
    max_keys: int = 100
    check_extra: bool = True


@dataclass
class Diff:
    reason: str
    db: int  # source db (target db for "extra")
    key: bytes
    detail: str = ""
    target_db: int = -1
    target_key: bytes | None = None

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "reason": self.reason,
            "db": self.db,
            "key": self.key.decode("utf-8", "backslashreplace"),
            "detail": self.detail,
        }
        if self.target_key is not None and (self.target_key != self.key or self.target_db != self.db):
            d["target_db"] = self.target_db
            d["target_key"] = self.target_key.decode("utf-8", "backslashreplace")
        return d


# A key mapper: (db, key) -> (target db, target key), None when the key is not copied, or a
# string saying why it cannot be mapped.
Mapper = Callable[[int, bytes], "tuple[int, bytes] | str | None"]


def transform_mapper(chain, db_map: dict[int, int]) -> Mapper:
    """Map a source key through the config's filter + Lua function (``chain``, may be None)
    and the db mapping of the URLs."""

    def mapper(db: int, key: bytes) -> tuple[int, bytes] | str | None:
        tdb = db_map.get(db, db)
        if chain is None:
            return tdb, key
        out = list(chain(Entry(db, [b"RESTORE", key, b"0", b""], key)))
        if not out:
            return None
        if len(out) != 1:
            return f"the function emits {len(out)} commands for this key"
        keys = command_info(out[0].argv).keys
        if len(keys) != 1:
            return "the function's command for this key does not name exactly one key"
        return out[0].db, keys[0]

    return mapper


@dataclass
class Stats:
    checked_source: int = 0
    checked_target: int = 0
    equal: int = 0
    differences: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str, n: int = 1) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + n


class Verifier:
    """Compares ``source`` with ``target``; :meth:`run` returns the report dict."""

    def __init__(
        self,
        source: Side,
        target: Side,
        opts: Options,
        mapper: Mapper,
        *,
        extra_filter: Callable[[int, bytes], bool] | None = None,
        inverse_db: dict[int, int] | None = None,
        progress=None,
    ) -> None:
        self.src = source
        self.dst = target
        self.opts = opts
        self.map = mapper
        self.extra_filter = extra_filter  # target key of ours? (None: every key is)
        self.inverse_db = inverse_db or {}
        self.progress = progress
        # same server build on both sides: equal DUMP payloads prove equal values, cheaply
        self.dump_first = opts.mode == "full" and source.server_id == target.server_id != ""
        self.stats = Stats()
        self.diffs: list[Diff] = []
        self.notes: list[str] = []
        self._t0 = time.monotonic()
        self._paced = 0

    # -- pacing / progress ----------------------------------------------------------------

    def _pace(self, n: int) -> None:
        self._paced += n
        if self.progress is not None:
            self.progress.update(self._paced, self._paced)
        if self.opts.rate > 0:
            ahead = self._paced / self.opts.rate - (time.monotonic() - self._t0)
            if ahead > 0:
                time.sleep(ahead)

    # -- the forward direction -------------------------------------------------------------

    def compare_keys(self, db: int, keys: list[bytes]) -> list[Diff]:
        """Compare source keys of ``db`` with their copies; returns the differences."""
        mapped: dict[int, list[tuple[bytes, bytes]]] = {}
        for k in keys:
            m = self.map(db, k)
            if m is None:
                self.stats.skip("filtered")
            elif isinstance(m, str):
                self.stats.skip("unmapped")
                if len(self.notes) < 20:
                    self.notes.append(f"db {db} key {k.decode('utf-8', 'backslashreplace')}: not compared: {m}")
            else:
                mapped.setdefault(m[0], []).append((k, m[1]))
        out: list[Diff] = []
        for tdb, pairs in mapped.items():
            out.extend(self._compare_mapped(db, tdb, pairs))
        return out

    def _meta(self, side: Side, db: int, keys: list[bytes]):
        """Send TYPE + PTTL (+ MEMORY USAGE before a DUMP comparison, or DEBUG DIGEST-VALUE)
        for every key; :meth:`Side.collect` reads the replies."""
        full = self.opts.mode == "full"
        dump = self.dump_first

        def build(k: bytes) -> tuple[bytes, int]:
            n = len(k)
            if full:
                if dump:
                    return _META_MEMORY % (n, k, n, k, n, k), 3
                if side.debug_for(k):
                    return _META_DIGEST % (n, k, n, k, n, k), 3
            return _META % (n, k, n, k), 2

        return side.send(db, keys, build)

    def _compare_mapped(self, db: int, tdb: int, pairs: list[tuple[bytes, bytes]]) -> list[Diff]:
        skeys = [p[0] for p in pairs]
        tkeys = [p[1] for p in pairs]
        sp = self._meta(self.src, db, skeys)
        tp = self._meta(self.dst, tdb, tkeys)
        sm = self.src.collect(sp)
        tm = self.dst.collect(tp)
        out: list[Diff] = []
        values: list[int] = []  # keys whose values are compared
        for i, (s, t) in enumerate(zip(sm, tm, strict=True)):
            for r in (*s[:2], *t[:2]):
                if isinstance(r, ReplyError):
                    raise VerifyError(f"reply error while comparing: {r.message}")
            sk, tk = skeys[i], tkeys[i]
            stype, ttype = s[0], t[0]
            if stype == b"none" or s[1] == -2:
                self.stats.skip("vanished_on_source")  # deleted or expired since the scan
                continue
            self.stats.checked_source += 1
            d = None
            if ttype == b"none" or t[1] == -2:
                d = Diff("missing", db, sk, "not on the target", tdb, tk)
            elif stype != ttype:
                d = Diff("type", db, sk, f"{stype.decode()} on the source, {ttype.decode()} on the target", tdb, tk)
            else:
                d = self._ttl_diff(db, sk, tdb, tk, int(s[1]), int(t[1]))
                if self.opts.mode == "full":
                    values.append(i)
                    if d is not None:
                        out.append(d)  # TTL already off: the value is checked anyway
                    continue
            if d is None:
                self.stats.equal += 1
            else:
                out.append(d)
        if not values:
            return out
        ttl_off = {d.key for d in out if d.reason == "ttl"}
        confirm: list[int] = []
        if self.dump_first:
            small = [i for i in values if _small(sm[i][2]) and _small(tm[i][2])]
            mem = {i: max(sm[i][2], tm[i][2]) for i in small}
            same = set(self._same_dumps(db, tdb, pairs, small, mem))
            rest = [i for i in values if i not in same]
            for i in same:
                self.stats.equal += skeys[i] not in ttl_off
            if rest and self.src.debug_everywhere and self.dst.debug_everywhere:
                sp = self.src.send(db, [skeys[i] for i in rest], _digest_cmd)
                tp = self.dst.send(tdb, [tkeys[i] for i in rest], _digest_cmd)
                for i, a, b in zip(rest, self.src.collect(sp), self.dst.collect(tp), strict=True):
                    sm[i] = [sm[i][0], sm[i][1], a[0]]
                    tm[i] = [tm[i][0], tm[i][1], b[0]]
            else:
                confirm = rest
        if not confirm:
            for i in values if not self.dump_first else rest:
                sd, td = _digest(sm[i]), _digest(tm[i])
                if sd is None or td is None or sd != td or sd == _ZERO_DIGEST:
                    confirm.append(i)
                else:
                    self.stats.equal += skeys[i] not in ttl_off
        if confirm:
            out.extend(self._confirm_values(db, tdb, [pairs[i] for i in confirm], [sm[i][0] for i in confirm], out))
        return out

    def _same_dumps(
        self, db: int, tdb: int, pairs: list[tuple[bytes, bytes]], idx: list[int], mem: dict[int, int]
    ) -> list[int]:
        """The keys of ``idx`` whose DUMP payloads are byte for byte the same on both sides
        (same value for sure); DUMPs go in rounds of at most DUMP_ROUND bytes (estimated)."""
        same: list[int] = []
        pos = 0
        while pos < len(idx):
            chunk: list[int] = []
            budget = 0
            while pos < len(idx) and len(chunk) < BATCH and budget < DUMP_ROUND:
                chunk.append(idx[pos])
                budget += mem[idx[pos]]
                pos += 1
            sp = self.src.send(db, [pairs[i][0] for i in chunk], _dump_cmd)
            tp = self.dst.send(tdb, [pairs[i][1] for i in chunk], _dump_cmd)
            for i, a, b in zip(chunk, self.src.collect(sp), self.dst.collect(tp), strict=True):
                if isinstance(a[0], bytes) and a[0] == b[0]:
                    same.append(i)
        return same

    def _ttl_diff(self, db: int, sk: bytes, tdb: int, tk: bytes, sttl: int, tttl: int) -> Diff | None:
        if sttl == -1 and tttl == -1:
            return None
        if (sttl == -1) != (tttl == -1) or abs(sttl - tttl) > self.opts.ttl_tolerance_ms:
            def show(x: int) -> str:
                return "no TTL" if x == -1 else f"{x} ms"

            return Diff("ttl", db, sk, f"TTL {show(sttl)} on the source, {show(tttl)} on the target", tdb, tk)
        return None

    def _confirm_values(
        self, db: int, tdb: int, pairs: list[tuple[bytes, bytes]], types: list[bytes], found: list[Diff]
    ) -> list[Diff]:
        """Read both copies page by page; a different digest is a value difference."""
        ttl_off = {d.key for d in found if d.reason == "ttl"}
        out: list[Diff] = []
        for i in range(0, len(pairs), PAGE_KEYS):
            chunk = pairs[i : i + PAGE_KEYS]
            ctypes = types[i : i + PAGE_KEYS]
            sd, td = _page_digests([(self.src, db, [p[0] for p in chunk]), (self.dst, tdb, [p[1] for p in chunk])], ctypes)
            for (sk, tk), typ, a, b in zip(chunk, ctypes, sd, td, strict=True):
                if a is None or b is None:
                    self.stats.skip("uncomparable_type")
                    if len(self.notes) < 20:
                        self.notes.append(f"db {db} key {sk!r}: type {typ.decode()} has no page-wise reader and DEBUG is refused")
                    continue
                if a != b:
                    if sk in ttl_off:  # one difference per key: value wins over TTL
                        found[:] = [d for d in found if d.key != sk or d.reason != "ttl"]
                    out.append(Diff("value", db, sk, f"{typ.decode()} values differ", tdb, tk))
                elif sk not in ttl_off:
                    self.stats.equal += 1
        return out

    # -- the reverse direction -------------------------------------------------------------

    def extra_keys(self, tdb: int, keys: list[bytes]) -> list[Diff]:
        """Target keys of ``tdb`` that have no source key."""
        sdb = self.inverse_db.get(tdb, tdb)
        ours = keys
        if self.extra_filter is not None:
            ours = [k for k in keys if self.extra_filter(sdb, k)]
            if len(ours) != len(keys):
                self.stats.skip("target_keys_not_copied_by_the_filter", len(keys) - len(ours))
        if not ours:
            return []
        self.stats.checked_target += len(ours)
        sp = self.src.send(sdb, ours, lambda k: (b"*2\r\n$6\r\nEXISTS\r\n$%d\r\n%s\r\n" % (len(k), k), 1))
        tp = self.dst.send(tdb, ours, lambda k: (b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%s\r\n" % (len(k), k), 1))
        st = self.src.collect(sp)
        tt = self.dst.collect(tp)
        out: list[Diff] = []
        for k, s, t in zip(ours, st, tt, strict=True):
            if s[0] == 0 and t[0] != -2:
                out.append(Diff("extra", tdb, k, "on the target only", tdb, k))
        return out

    # -- driving ---------------------------------------------------------------------------

    def _batches(self, side: Side, dbs: Iterable[int]) -> Iterator[tuple[int, list[bytes]]]:
        n = self.opts.sample
        if n:
            per_db = {db: side.dbsize(db) for db in dbs}
            total = sum(per_db.values()) or 1
            for db, size in per_db.items():
                want = max(1, round(n * size / total)) if size else 0
                keys = side.random_keys(db, want)
                for i in range(0, len(keys), BATCH):
                    yield db, keys[i : i + BATCH]
            return
        for db in dbs:
            buf: list[bytes] = []
            for keys in side.scan(db):
                buf.extend(keys)
                if len(buf) >= BATCH:
                    yield db, list(dict.fromkeys(buf))  # SCAN may return a key twice
                    buf = []
            if buf:
                yield db, list(dict.fromkeys(buf))

    def _record(self, diffs: list[Diff], keep: list[Diff]) -> None:
        for d in diffs:
            if len(keep) < RECHECK_KEEP:
                keep.append(d)
            else:
                self.stats.differences[d.reason] += 1  # not kept for re-check: final

    def run(self, src_dbs: list[int], dst_dbs: list[int]) -> list[Diff]:
        """All differing keys still different after the re-check rounds (kept ones)."""
        pending: list[Diff] = []
        for db, keys in self._batches(self.src, src_dbs):
            found = self.compare_keys(db, keys)
            self._record(found, pending)
            self._pace(len(keys))
        if self.opts.check_extra:
            for tdb, keys in self._batches(self.dst, dst_dbs):
                found = self.extra_keys(tdb, keys)
                self._record(found, pending)
                self._pace(len(keys))
        rounds = 0
        while pending and rounds < self.opts.recheck:
            rounds += 1
            time.sleep(self.opts.recheck_delay)
            pending = self.recheck(pending)
        self.rechecks = rounds
        for d in pending:
            self.stats.differences[d.reason] += 1
        return pending

    def recheck(self, diffs: list[Diff]) -> list[Diff]:
        """Compare the keys of ``diffs`` again; returns those still different."""
        saved = self.stats
        self.stats = Stats()  # a re-check does not count keys twice
        still: list[Diff] = []
        try:
            fwd: dict[int, list[bytes]] = {}
            back: dict[int, list[bytes]] = {}
            for d in diffs:
                (back if d.reason == "extra" else fwd).setdefault(d.db, []).append(d.key)
            for db, keys in fwd.items():
                for i in range(0, len(keys), BATCH):
                    still.extend(self.compare_keys(db, keys[i : i + BATCH]))
            for tdb, keys in back.items():
                for i in range(0, len(keys), BATCH):
                    still.extend(self.extra_keys(tdb, keys[i : i + BATCH]))
        finally:
            saved.equal += self.stats.equal
            self.stats = saved
        return still


def _dump_cmd(k: bytes) -> tuple[bytes, int]:
    return b"*2\r\n$4\r\nDUMP\r\n$%d\r\n%s\r\n" % (len(k), k), 1


def _digest_cmd(k: bytes) -> tuple[bytes, int]:
    return b"*3\r\n$5\r\nDEBUG\r\n$12\r\nDIGEST-VALUE\r\n$%d\r\n%s\r\n" % (len(k), k), 1


def _small(mem: Any) -> bool:
    return isinstance(mem, int) and 0 < mem <= DUMP_MAX


def _digest(replies: list[Any]) -> bytes | None:
    if len(replies) < 3 or isinstance(replies[2], ReplyError):
        return None
    r = replies[2]
    return r[0] if isinstance(r, list) else r


def _page_digests(jobs: list[tuple[Side, int, list[bytes]]], types: list[bytes]) -> list[list[bytes | None]]:
    """Digest of each key's value for each (side, db, keys) job, all keys of all jobs
    advancing one page per pipeline round (the sides work at the same time)."""
    readers = [[reader_for(t, k) for t, k in zip(types, keys, strict=True)] for _, _, keys in jobs]
    active = [[r for r in rs if r is not None] for rs in readers]
    while any(active):
        pending = [
            side.send(db, [r.key for r in act], [[r.next_command()] for r in act]) if act else None
            for (side, db, _), act in zip(jobs, active, strict=True)
        ]
        for n, ((side, _, _), act, p) in enumerate(zip(jobs, active, pending, strict=True)):
            if p is None:
                continue
            nxt = []
            for r, rep in zip(act, side.collect(p), strict=True):
                if isinstance(rep[0], ReplyError):  # WRONGTYPE: the key changed type meanwhile
                    r.done = True
                    r.count = -1
                    continue
                r.feed(rep[0])
                if not r.done:
                    nxt.append(r)
            active[n] = nxt
    return [[r.digest() if r is not None else None for r in rs] for rs in readers]
