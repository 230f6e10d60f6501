"""Redis 8.6 / 8.8 streams: STREAM_LISTPACKS_4 (type 26, RDB 13: an IDMP section after the
consumer groups) and STREAM_LISTPACKS_5 (type 27, RDB 14: also a NACK zone after each group's
consumers), into servers that predate them.

No Redis 8.6+ binary exists here, so the values are built by hand: real streams of a Redis
7.0 server (DUMP payloads, type 19), their tail re-encoded by the builder below in the newer
layout, with IDMP producers and NACKed ids added. The NACKed ids are taken out of a
consumer's pending list (an unowned PEL entry is what XNACK leaves); an older server cannot
hold one, so redshake leaves them out of the group's PEL: the expected stream is the source
after XACK of those ids.
"""

from __future__ import annotations

import random
import struct

from helpers import assert_same_data, restore_file
from redshake.rdb.dump import encode_length as L
from redshake.rdb.dump import encode_string as S
from redshake.rdb.parser import RdbParser
from redshake.rdb.primitives import crc64, read_length, read_string
from redshake.rdb.records import BigKeyPart, BigKeyStart, KeyValue
from redshake.rdb.stream_spill import StreamSpill
from redshake.rdb.values import StreamDropped, decode_value

_Q = struct.Struct("<q").pack


def _id(s: bytes) -> tuple[int, int]:
    ms, seq = s.split(b"-")
    return int(ms), int(seq)


def _raw16(s: bytes) -> bytes:
    return struct.pack(">QQ", *_id(s))


def _lid(s: bytes) -> bytes:
    ms, seq = _id(s)
    return L(ms) + L(seq)


def _build(raw19: bytes, t: int, nack: dict[bytes, set[bytes]], idmp) -> bytes:
    """A type-19 value re-laid as type ``t`` (26 or 27): nodes copied, the tail re-encoded
    from the decoded value, consumers with an active time (seen + 1), the ids of ``nack``
    (group -> ids) moved from their consumer to the group's NACK zone (27), then the IDMP
    section ``idmp`` = (duration, max, [(pid, [(iid, id)])], added, duplicates)."""
    v = decode_value(19, raw19, valkey=False)
    n, p = read_length(raw19, 0)
    for _ in range(2 * n):
        _, p = read_string(raw19, p)
    out = [raw19[:p], L(v.length), _lid(v.last_id), _lid(v.first_id), _lid(v.max_deleted_id),
           L(v.entries_added), L(len(v.groups))]  # fmt: skip
    for g in v.groups:
        gone = nack.get(g.name, set())
        out += [S(g.name), _lid(g.last_id), L(g.entries_read), L(len(g.pel))]
        for pid, dt, dc in g.pel:
            out += [_raw16(pid), _Q(dt), L(dc)]
        out.append(L(len(g.consumers)))
        for c in g.consumers:
            ids = [i for i in c.pel_ids if i not in gone]
            out += [S(c.name), _Q(c.seen_time), _Q(c.seen_time + 1), L(len(ids))]
            out += [_raw16(i) for i in ids]
        if t >= 27:
            out.append(L(len(gone)) + b"".join(_raw16(i) for i in sorted(gone, key=_id)))
    dur, mx, producers, added, dups = idmp
    out += [L(dur), L(mx), L(len(producers))]
    for pid, ents in producers:
        out += [S(pid), L(len(ents))]
        for iid, sid in ents:
            out += [S(iid), _lid(sid)]
    out += [L(added), L(dups)]
    return b"".join(out)


def _rdb(version: int, keys: list[tuple[bytes, int, bytes]]) -> bytes:
    body = b"".join(bytes((t,)) + S(k) + raw for k, t, raw in keys)
    data = b"REDIS%04d" % version + b"\xfe\x00" + body + b"\xff"
    return data + struct.pack("<Q", crc64(data))


def _streams(c, rng: random.Random) -> list[bytes]:
    """A few streams with groups, consumers, pending entries, deleted messages (none of
    them pending: the streamed command rebuild cannot claim those) and big fields (several
    nodes); one without groups."""
    keys = []
    for k in range(4):
        key = b"st:%d" % k
        for i in range(rng.randint(130, 300)):
            fv = {b"f%d" % j: rng.randbytes(rng.choice((3, 40, 900))) for j in range(rng.randint(1, 4))}
            c.xadd(key, fv, id=f"{1000 + i}-{i % 3}")
        if k:
            for g in range(k):
                c.xgroup_create(key, b"g%d" % g, id="0")
                for cn in range(1 + g):
                    c.xreadgroup(b"g%d" % g, b"c%d" % cn, {key: ">"}, count=rng.randint(5, 40))
            c.xdel(key, *[e[0] for e in c.xrevrange(key, count=3)][1:])
        keys.append(key)
    return keys


def _full(c, key: bytes) -> list:
    return c.execute_command("XINFO", "STREAM", key, "FULL", "COUNT", 0)


_TIMES = frozenset({b"seen-time", b"active-time"})


def _strip(x, names: frozenset):
    """XINFO STREAM FULL without the fields ``names`` (at any depth)."""
    if isinstance(x, list):
        out, skip = [], False
        for i, y in enumerate(x):
            if skip:
                skip = False
                continue
            if i % 2 == 0 and type(y) is bytes and y in names:
                skip = True
                continue
            out.append(_strip(y, names))
        return out
    return x


def test_stream_types_26_27_parse_and_restore_into_older_servers(servers, tmp_path):
    rng = random.Random(26)
    src = servers.start("redis-7.0")
    c = src.client()
    keys = _streams(c, rng)
    values, nacks = {}, {}
    for key in keys:
        payload = c.dump(key)
        assert payload[0] == 19
        raw19 = payload[1:-10]
        v = decode_value(19, raw19, valkey=False)
        nack = {}
        for g in v.groups:  # NACK every third pending id of the group's first consumer
            ids = set(g.consumers[0].pel_ids[::3]) if g.consumers else set()
            if ids:
                nack[g.name] = ids
        nacks[key] = nack
        ents = v.entries
        producers = [(b"p%d" % i, [(b"iid-%d-%d" % (i, j), ents[rng.randrange(len(ents))][0])
                                   for j in range(rng.randint(1, 5))]) for i in range(len(ents) % 3 + 1)]  # fmt: skip
        idmp = (100 + len(ents), 1000, producers, 50, 3)
        values[key] = (raw19, nack, idmp)
    n_nacked = sum(len(i) for n in nacks.values() for i in n.values())
    n_iids = sum(len(e) for _r, _n, (_d, _m, prods, _a, _u) in values.values() for _p, e in prods)
    assert n_nacked > 5 and n_iids > 4

    files = {}
    for t, ver in ((26, 13), (27, 14)):
        recs = [(k, t, _build(r, t, n if t == 27 else {}, i)) for k, (r, n, i) in values.items()]
        data = _rdb(ver, recs)
        files[t] = data
        # the whole-value path: every section decoded, the value ends where it should
        p = RdbParser()
        p.feed(data)
        got = [r for r in p.records() if type(r) is KeyValue]
        p.finish()
        assert [(r.key, r.type) for r in got] == [(k, t) for k in keys]
        for r in got:
            raw19, nack, idmp = values[r.key]
            v, old = decode_value(t, r.raw, valkey=False), decode_value(19, raw19, valkey=False)
            assert v.entries == old.entries and v.last_id == old.last_id
            assert (v.idmp.duration, v.idmp.max_entries, v.idmp.producers,
                    v.idmp.iids_added, v.idmp.iids_duplicates) == idmp  # fmt: skip
            for g, og in zip(v.groups, old.groups, strict=True):
                assert g.pel == og.pel
                want = nack.get(g.name, set()) if t == 27 else set()
                assert set(g.nacked) == want
                assert [x.active_time - x.seen_time for x in g.consumers] == [1] * len(g.consumers)
        # the streamed path (a tiny big-value threshold): NACK zones and IDMP sections are
        # read in steps and counted; the commands rebuild what an older server holds
        p = RdbParser(big_value_threshold=64, part_items=7)
        step = 0
        items: dict[bytes, list] = {}
        cur = None
        while step < len(data):
            p.feed(data[step : step + 97])
            step += 97
            for r in p.records():
                if type(r) is BigKeyStart:
                    cur = items.setdefault(r.key, [])
                elif type(r) is BigKeyPart:
                    cur.extend(r.items)
        p.finish()
        assert set(items) == set(keys)
        dropped = [it for its in items.values() for it in its if type(it) is StreamDropped]
        assert sum(d.nacked for d in dropped) == (n_nacked if t == 27 else 0)
        assert sum(d.iids for d in dropped) == n_iids
        if t == 27:
            dst = servers.start("redis-7.0")
            dc = dst.client()
            for key, its in items.items():
                spill = StreamSpill(tmp_path, key, target_version=dst.version, max_items=512)
                spill.add([it for it in its if type(it) is not StreamDropped])
                for argv in spill.commands():
                    dc.execute_command(*argv)
                spill.close()

    # the expected streams: as they are for type 26 (no NACK zone: the ids stay with their
    # consumer); for 27 the source without the NACKed entries in its groups' PELs
    before = [_full(c, k) for k in keys]
    for key, nack in nacks.items():
        for g, ids in nack.items():
            c.xack(key, g, *ids)
    layout = _TIMES | {b"radix-tree-keys", b"radix-tree-nodes"}  # XADDs pack nodes anew
    assert _strip([_full(dc, k) for k in keys], layout) == _strip([_full(c, k) for k in keys], layout)

    for name in ("redis-7.0", "valkey-9.1"):
        dst = servers.start(name)
        for t in (26, 27):
            path = tmp_path / f"s{t}.rdb"
            path.write_bytes(files[t])
            work = tmp_path / f"{name}-{t}"
            work.mkdir()
            r = restore_file(path, dst, work)
            out = r.stdout + r.stderr
            assert r.returncode == 0, out[-3000:]
            assert "IDMP" in out and "Traceback" not in out, out[-3000:]
            if t == 27:
                assert f"{n_nacked} NACKed pending entries" in out, out[-3000:]
            assert f"{n_iids} IDMP ids" in out, out[-3000:]
            assert assert_same_data(src, dst) == len(keys)  # (entries: the digest has no groups)
            # RESTORE of the re-laid bytes: everything but the NACKed entries, times included
            got = [_full(dst.client(), k) for k in keys]
            want = [_full(c, k) for k in keys] if t == 27 else before
            if name == "valkey-9.1":  # active time (seen + 1 in the file) vs the source's
                got, want = _strip(got, _TIMES), _strip(want, _TIMES)
            assert got == want
            dst.client().flushall()
