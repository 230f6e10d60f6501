"""Sans-I/O streaming RDB parser: feed bytes, iterate records.

One parser serves files, sockets and tests::

    p = RdbParser()
    for chunk in chunks:
        p.feed(chunk)
        for rec in p.records():
            ...
    p.finish()          # raises RdbError if the input stopped before EOF + checksum

Values are not decoded: a :class:`~redshake.rdb.records.KeyValue` carries the value bytes
exactly as stored (what RESTORE needs), found with length arithmetic only (no LZF
decompression, no blob decoding).

Big values: when a record is still incomplete while more than ``big_value_threshold`` bytes
of it are buffered, element-wise types (1 LIST, 2 SET, 3 ZSET, 4 HASH, 5 ZSET_2, 14/18
quicklists -- node blobs are decoded one at a time --, and the hashes with field TTLs:
Redis 22/24, Valkey 22) switch to streaming: ``BigKeyStart``, ``BigKeyPart`` (at most
``part_items`` items each), ``BigKeyEnd``; their bytes are released as they are consumed.

Streams (15, 19, 21) stream the same way, as kind ``"stream"`` (``count`` -1): their nodes
are decoded one at a time into live entries ``(id, [field, value, ...])`` (deleted ones are
left out), then come one :class:`~redshake.rdb.values.StreamValue` item with the metadata
(length, last id, first id, max deleted id, entries added; no entries, no groups) and one
:class:`~redshake.rdb.values.StreamGroup` item per consumer group (its PEL and consumers).
A stream also goes big when its nodes are small but its group tail is not.

A string value of type 0 whose stored bytes exceed the threshold is streamed as kind
``"string"`` with parts of 1 MiB pieces (``count`` = its length): a raw one as it is read,
an LZF-compressed one (encoding 0xC3) decompressed 64 KiB of input at a time
(:class:`~redshake.rdb.primitives.LzfStream`), so neither its compressed nor its
decompressed bytes are ever held whole.

Still buffered whole: single ziplist/listpack/intset/zipmap blobs (a huge blob is one
rdb-string), one stream node or one consumer group (a node holds a few KiB of entries, or
one bigger entry, unless stream-node-max-bytes was raised; a group holds its whole PEL),
single elements of aggregates (a huge list element or hash value, raw or LZF), and module
values.

Incomplete aggregates resume where they stopped when more data arrives (no re-scan from
the start of the record), and an incomplete string waits until its known end is buffered,
so feeding small chunks costs no more than feeding the whole file.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from . import walk
from .primitives import Crc64, LzfStream, RdbError, Truncated
from .records import (
    Aux,
    BigKeyEnd,
    BigKeyPart,
    BigKeyStart,
    Eof,
    Function,
    KeyValue,
    ModuleAux,
    Record,
    ResizeDb,
    SelectDb,
    SlotInfo,
)
from .values import decode_stream_meta
from .walk import (
    BLOB_INTSET,
    BLOB_LISTPACK,
    BLOB_ZIPLIST,
    BLOB_ZIPMAP,
    SHORT,
    read_len,
    read_str,
    skip_str,
)

__all__ = ["RdbParser"]

_I32LE = struct.Struct("<i").unpack_from
_I64LE = struct.Struct("<q").unpack_from
_U64LE = struct.Struct("<Q").unpack_from

_HEADER, _BODY, _DONE = 0, 1, 2

# value-table entry kinds
_K_STR = 0  # one rdb-string (type 0 and blob types)
_K_AGG = 1  # len-enc count + count elements (+ optional tail)
_K_MOD = 2  # module type 7
_K_ERR = 3  # known type we cannot walk: fail with the message
_K_BLOB8 = 4  # 8-byte prefix + blob (Redis HASH_LISTPACK_EX)

# aggregate tails
_T_NONE, _T_STREAM, _T_QUICKLIST = 0, 1, 2

_KIND = {1: "list", 2: "set", 3: "zset", 4: "hash", 5: "zset", 14: "list", 18: "list"}

# vendor opcode: Redis Enterprise RAM_LRU, len-enc payload, applies to the next key
_OP_ENT_RAM_LRU = 107


class _Vt:
    """How to walk one value type under one (magic, version)."""

    __slots__ = ("kind", "elem", "tail", "blob", "pre8", "reader", "big_kind", "msg")

    def __init__(self, kind: int, elem=None, tail: int = _T_NONE, blob: int = 0, pre8: bool = False,
                 reader=None, big_kind: str | None = None, msg: str = "") -> None:  # fmt: skip
        self.kind = kind
        self.elem = elem
        self.tail = tail
        self.blob = blob
        self.pre8 = pre8
        self.reader = reader
        self.big_kind = big_kind
        self.msg = msg


def _value_table(valkey: bool, version: int) -> list[_Vt | None]:
    tab: list[_Vt | None] = [None] * 256
    tab[0] = _Vt(_K_STR)
    tab[1] = _Vt(_K_AGG, walk.el_str, reader=walk.rd_str, big_kind="list")
    tab[2] = _Vt(_K_AGG, walk.el_str, reader=walk.rd_str, big_kind="set")
    tab[3] = _Vt(_K_AGG, walk.el_zset_str, reader=walk.rd_zset_str, big_kind="zset")
    tab[4] = _Vt(_K_AGG, walk.el_pair, reader=walk.rd_pair, big_kind="hash")
    tab[5] = _Vt(_K_AGG, walk.el_zset_bin, reader=walk.rd_zset_bin, big_kind="zset")
    tab[6] = _Vt(_K_ERR, msg="module value of pre-GA type 6 cannot be parsed without the module")
    tab[7] = _Vt(_K_MOD)
    tab[9] = _Vt(_K_STR, blob=BLOB_ZIPMAP)
    tab[10] = _Vt(_K_STR, blob=BLOB_ZIPLIST)
    tab[11] = _Vt(_K_STR, blob=BLOB_INTSET)
    tab[12] = _Vt(_K_STR, blob=BLOB_ZIPLIST)
    tab[13] = _Vt(_K_STR, blob=BLOB_ZIPLIST)
    tab[14] = _Vt(_K_AGG, walk.el_str, _T_QUICKLIST, reader=walk.rd_ql1, big_kind="list")
    tab[15] = _Vt(_K_AGG, walk.el_pair, _T_STREAM, reader=walk.rd_stream_node, big_kind="stream")
    tab[16] = _Vt(_K_STR, blob=BLOB_LISTPACK)
    tab[17] = _Vt(_K_STR, blob=BLOB_LISTPACK)
    tab[18] = _Vt(_K_AGG, walk.el_ql2, _T_QUICKLIST, reader=walk.rd_ql2, big_kind="list")
    tab[19] = _Vt(_K_AGG, walk.el_pair, _T_STREAM, reader=walk.rd_stream_node, big_kind="stream")
    tab[20] = _Vt(_K_STR, blob=BLOB_LISTPACK)
    tab[21] = _Vt(_K_AGG, walk.el_pair, _T_STREAM, reader=walk.rd_stream_node, big_kind="stream")
    if valkey:
        tab[22] = _Vt(_K_AGG, walk.el_hash_ttl_last, reader=walk.rd_hash2, big_kind="hash")
        if version >= 81:
            tab[23] = _Vt(_K_ERR, msg="Valkey PATH_HASH (type 23) is not supported")
    elif version >= 12:
        tab[22] = _Vt(
            _K_AGG, walk.el_hash_ttl_first, reader=walk.rd_hash_meta_pre_ga, big_kind="hash"
        )
        tab[23] = _Vt(_K_STR, blob=BLOB_LISTPACK)
        tab[24] = _Vt(
            _K_AGG, walk.el_hash_ttl_first, pre8=True, reader=walk.rd_hash_meta, big_kind="hash"
        )
        tab[25] = _Vt(_K_BLOB8, blob=BLOB_LISTPACK)
        if version >= 13:
            for t, name in ((26, "STREAM_LISTPACKS_4"), (27, "STREAM_LISTPACKS_5"), (28, "ARRAY")):
                tab[t] = _Vt(_K_ERR, msg=f"value type {t} ({name}) is not supported")
    return tab


class _Big:
    """State of a value being streamed element by element: ``rem`` more calls of
    ``reader(buf, pos, items, extra) -> end``; then, if set, ``then(buf, pos, big) -> end``
    reads what follows and sets up the next reader (or clears ``then``)."""

    __slots__ = ("reader", "rem", "items", "extra", "key", "part", "then")

    def __init__(self, reader, rem: int, extra, key: bytes, part: int = 0, then=None) -> None:
        self.reader = reader
        self.rem = rem
        self.items: list = []
        self.extra = extra
        self.key = key
        self.part = part  # items per BigKeyPart (0: the parser's part_items)
        self.then = then


# A raw string longer than the big-value threshold is streamed in pieces of this size,
# _STR_PART pieces per BigKeyPart (SET + APPENDs on the target).
_STR_PIECE = 1 << 20
_STR_PART = 4


def _str_piece(buf, p: int, items: list, left: list) -> int:
    """Reader of one piece of a streamed string; ``left[0]`` = bytes still to read."""
    n = _STR_PIECE if left[0] > _STR_PIECE else left[0]
    e = p + n
    if e > len(buf):
        raise Truncated(e)
    items.append(bytes(buf[p:e]))
    left[0] -= n
    return e


# An LZF-compressed string whose compressed length exceeds the threshold is decompressed
# _LZF_SLICE compressed bytes at a time (python-lzf with a history prefix, see
# primitives.LzfStream) and streamed like a raw one, in _STR_PIECE pieces of its output.
_LZF_SLICE = 64 << 10


class _LzfPieces:
    __slots__ = ("lzf", "left", "out")

    def __init__(self, clen: int, ulen: int) -> None:
        self.lzf = LzfStream(ulen)
        self.left = clen  # compressed bytes still to read
        self.out = bytearray()  # output not yet cut into pieces (< _STR_PIECE between calls)


def _lzf_piece(buf, p: int, items: list, st: _LzfPieces) -> int:
    """Reader of one compressed slice of a streamed LZF string (``st.left`` bytes to go)."""
    n = _LZF_SLICE if st.left > _LZF_SLICE else st.left
    e = p + n
    if e > len(buf):
        raise Truncated(e)
    out = st.out
    out += st.lzf.decompress(buf[p:e], n == st.left)
    st.left -= n
    i = 0
    while len(out) - i >= _STR_PIECE:
        items.append(bytes(out[i : i + _STR_PIECE]))
        i += _STR_PIECE
    if i:
        del out[:i]
    if not st.left and out:
        items.append(bytes(out))
        out.clear()
    return e


def _stream_tail(buf, p: int, big: _Big) -> int:
    """After the nodes of a streamed stream: its metadata (a StreamValue without entries nor
    groups, as one item), then one reader call per consumer group (a StreamGroup item)."""
    st = big.extra
    meta, ngroups, q = decode_stream_meta(st.type, buf, p, st.first or b"0-0")
    big.items.append(meta)
    big.reader, big.rem, big.extra, big.then = walk.rd_stream_group, ngroups, st.type, None
    return q


_EL_STR = walk.el_str
_EL_PAIR = walk.el_pair


class RdbParser:
    """Streaming RDB parser (see the module docstring)."""

    def __init__(
        self, *, big_value_threshold: int = 16 << 20, part_items: int = 1024, start_offset: int = 0
    ) -> None:
        self._buf = bytearray()
        self._pos = 0  # index in _buf of the next unconsumed byte
        self._base = start_offset  # absolute offset of _buf[0]
        self._start = start_offset
        self._crc = Crc64()
        self._crc_upto = 0  # _buf[:_crc_upto] is already in the CRC
        self._state = _HEADER
        self._need = 0  # absolute offset that must be buffered before retrying
        self._carry: tuple[int, int, int, int] | None = None  # expire, idle, freq, abs offset
        self._pend: list | None = None  # incomplete aggregate (absolute offsets)
        self._big: _Big | None = None
        self._vtab: list[_Vt | None] = []
        self._threshold = big_value_threshold
        self._part = max(1, part_items)
        self.magic = b""
        self.version = 0
        self.is_valkey = False
        self.done = False
        self.db = 0
        self.aux: dict[bytes, bytes] = {}
        self._name = ""

    # ---- public API -------------------------------------------------------------------

    def feed(self, data) -> None:
        """Append input bytes."""
        self._buf += data

    @property
    def offset(self) -> int:
        """Absolute number of input bytes consumed (parsed into records)."""
        return self._base + self._pos

    @property
    def trailing(self) -> bytes:
        """Bytes fed after the checksum (empty until EOF was reached)."""
        if not self.done:
            return b""
        return bytes(self._buf[self._pos :])

    def finish(self) -> None:
        """End of input: raise if EOF and its checksum were not reached."""
        if self.done:
            return
        if self._state == _HEADER:
            what = "inside the header"
        elif self._big is not None:
            what = f"inside big value {self._big.key!r}"
        elif self._pend is not None:
            what = f"inside the value of key {self._pend[1]!r}"
        elif self._pos < len(self._buf):
            what = "inside a record"
        else:
            what = "before the EOF opcode"
        raise RdbError(
            f"truncated RDB: input ended {what} ({len(self._buf) - self._pos} unparsed bytes)",
            self.offset,
        )

    def records(self) -> Iterator[Record]:
        """Yield every record that is complete in the buffer; stop when more input is needed."""
        if self._state == _DONE:
            return
        if self._state == _HEADER:
            if len(self._buf) - self._pos < 9:
                return
            self._parse_header()
        if self._big is not None:
            yield from self._big_run()
            if self._big is not None:
                self._compact()
                return
        yield from self._run()
        if self._state != _DONE:
            self._compact()

    # ---- internals --------------------------------------------------------------------

    def _parse_header(self) -> None:
        buf, p = self._buf, self._pos
        head = bytes(buf[p : p + 9])
        if head[:5] == b"REDIS" and head[5:9].isdigit():
            magic, version, valkey = b"REDIS", int(head[5:9]), False
            ok = 1 <= version <= 15
        elif head[:6] == b"VALKEY" and head[6:9].isdigit():
            magic, version, valkey = b"VALKEY", int(head[6:9]), True
            ok = version in (80, 81)
        else:
            raise RdbError(f"not an RDB file: wrong signature {head!r}", self._base + p)
        if not ok:
            raise RdbError(
                f"unsupported RDB format version {version} ({head.decode('ascii', 'replace')})",
                self._base + p,
            )
        self.magic, self.version, self.is_valkey = magic, version, valkey
        self._name = head.decode("ascii")
        self._vtab = _value_table(valkey, version)
        self._pos = p + 9
        self._state = _BODY

    def _compact(self) -> None:
        p = self._pos
        if p == 0:
            return
        buf = self._buf
        if self._state != _DONE:
            if p > self._crc_upto:
                self._crc.update(buf[self._crc_upto : p])
            self._crc_upto = 0
        del buf[:p]
        self._base += p
        self._pos = 0

    def _wrap(self, e: RdbError, base: int, at: int, key: bytes | None) -> RdbError:
        off = base + (e.offset if e.offset is not None else at)
        return RdbError(e.message, off, key if key is not None else e.key)

    def _run(self) -> Iterator[Record]:
        buf = self._buf
        base = self._base
        p = self._pos
        vtab = self._vtab
        valkey = self.is_valkey
        KV = KeyValue
        _read_str, _skip_str, _read_len = read_str, skip_str, read_len
        I64, I32 = _I64LE, _I32LE
        db = self.db
        key: bytes | None = None
        while True:
            n = len(buf)
            if p >= n or base + n < self._need:
                break
            key = None
            try:
                pend = self._pend
                if pend is not None:
                    # resume an incomplete aggregate: [t, key, exp, idle, freq, off, vs, cnt,
                    # q, rem, first] (offsets absolute)
                    t, key, expire, idle, freq, off, vs, cnt, q, rem, first = pend
                    vt = vtab[t]
                    vs -= base
                    q -= base
                    first -= base
                else:
                    rs = p
                    c = self._carry
                    if c is None:
                        expire = idle = freq = -1
                        off = base + p
                    else:
                        expire, idle, freq, off = c
                    t = buf[p]
                    while t >= 0xF8 or t == _OP_ENT_RAM_LRU:
                        if t == 0xFC:
                            expire = I64(buf, p + 1)[0]
                            p += 9
                        elif t == 0xFD:
                            expire = I32(buf, p + 1)[0] * 1000
                            p += 5
                        elif t == 0xF8:
                            idle, p = _read_len(buf, p + 1)
                        elif t == 0xF9:
                            freq = buf[p + 1]
                            p += 2
                        elif t == _OP_ENT_RAM_LRU and not valkey:
                            _, p = _read_len(buf, p + 1)
                        else:
                            break
                        t = buf[p]
                    vt = vtab[t]
                    if vt is None:
                        if p != rs:
                            # expiry/LRU state before a non-key opcode: keep it for the next key
                            self._carry = (expire, idle, freq, off)
                            self._pos = p
                        rec = self._opcode(buf, p, t)
                        p = self._pos
                        rt = type(rec)
                        if rt is SelectDb:
                            db = rec.db
                        elif rt is Eof:
                            yield rec
                            return
                        yield rec
                        continue
                    b = buf[p + 1]
                    if b < 0x40:  # short raw key: inline
                        vs = p + 2 + b
                        if vs > n:
                            raise Truncated(vs)
                        key = bytes(buf[p + 2 : vs])
                    else:
                        key, vs = _read_str(buf, p + 1)
                    kind = vt.kind
                    if kind == _K_STR:
                        b = buf[vs]
                        if b < 0x40:  # short raw value: inline
                            ve = vs + 1 + b
                            if ve > n:
                                raise Truncated(ve)
                        else:
                            if t == 0 and (b < 0xC0 or b == 0xC3):  # raw or LZF, not int
                                # LZF: compressed length, uncompressed length, data
                                slen, ds = _read_len(buf, vs if b < 0xC0 else vs + 1)
                                if slen > self._threshold:
                                    ulen = -1
                                    if b == 0xC3:
                                        ulen, ds = _read_len(buf, ds)
                                    yield from self._go_big_string(
                                        key, expire, idle, freq, off, ds, slen, db, ulen
                                    )
                                    if self._big is not None:
                                        return
                                    p = self._pos
                                    continue
                            ve = _skip_str(buf, vs)
                        empty = vt.blob != 0 and walk.blob_empty(buf, vs, vt.blob)
                        self._pos = p = ve
                        if c is not None:
                            self._carry = None
                        yield KV(db, key, t, bytes(buf[vs:ve]), expire, idle, freq, off, empty)
                        continue
                    if kind != _K_AGG:
                        if kind == _K_MOD:
                            _, q = _read_len(buf, vs)
                            ve = walk.skip_module_values(buf, q)
                        elif kind == _K_BLOB8:
                            ve = _skip_str(buf, vs + 8)
                        else:
                            raise RdbError(f"{vt.msg} in {self._name}", p)
                        empty = kind == _K_BLOB8 and walk.blob_empty(buf, vs + 8, vt.blob)
                        self._pos = p = ve
                        if c is not None:
                            self._carry = None
                        yield KV(db, key, t, bytes(buf[vs:ve]), expire, idle, freq, off, empty)
                        continue
                    q = vs + 8 if vt.pre8 else vs
                    cnt, q = _read_len(buf, q)
                    first = q
                    rem = cnt
                # element loop (resumable)
                elem = vt.elem
                try:
                    # Hot paths (plain lists, sets, hashes): skip rdb-strings inline, short
                    # (6-bit length) ones without a call. q only advances past complete
                    # elements; overruns surface as IndexError or Truncated (in SHORT).
                    if elem is _EL_STR:
                        while rem:
                            b = buf[q]
                            if b < 0x40:
                                r = q + 1 + b
                                if r > n:
                                    raise Truncated(r)
                                q = r
                            else:
                                q = _skip_str(buf, q)
                            rem -= 1
                    elif elem is _EL_PAIR:
                        while rem:
                            b = buf[q]
                            r = q + 1 + b if b < 0x40 else _skip_str(buf, q)
                            b = buf[r]
                            r = r + 1 + b if b < 0x40 else _skip_str(buf, r)
                            if r > n:
                                raise Truncated(r)
                            q = r
                            rem -= 1
                    else:
                        while rem:
                            q = elem(buf, q)
                            rem -= 1
                    tail = vt.tail
                    if tail == _T_STREAM:  # a big consumer-group tail can go big too
                        ve = walk.skip_stream_tail(buf, q, t)
                except SHORT:
                    self._pend = [t, key, expire, idle, freq, off, base + vs, cnt, base + q,
                                  rem, base + first]  # fmt: skip
                    if vt.reader is not None and n - self._pos > self._threshold:
                        yield from self._go_big(vt, t, key, expire, idle, freq, off, vs, cnt,
                                                first, db)  # fmt: skip
                        if self._big is not None:
                            return
                        p = self._pos
                        continue
                    raise
                if tail == _T_STREAM:
                    empty = False
                elif tail == _T_QUICKLIST:
                    ve = q
                    empty = walk.quicklist_empty(buf, first, cnt, t)
                else:
                    ve = q
                    empty = cnt == 0
                self._pend = None
                self._carry = None
                self._pos = p = ve
                yield KV(db, key, t, bytes(buf[vs:ve]), expire, idle, freq, off, empty)
            except SHORT as e:
                need = e.args[0] if e.args and isinstance(e.args[0], int) else len(buf) + 1
                self._need = base + max(need, len(buf) + 1)
                p = self._pos
                break
            except RdbError as e:
                raise self._wrap(e, base, p, key) from None

    def _opcode(self, buf, p: int, t: int) -> Record | None:
        """Parse the non-key opcode at ``p``; sets ``_pos`` after it."""
        if t == 0xFE:
            db, q = read_len(buf, p + 1)
            self.db = db
            self._pos = q
            return SelectDb(db)
        if t == 0xFB:
            a, q = read_len(buf, p + 1)
            b, q = read_len(buf, q)
            self._pos = q
            return ResizeDb(a, b)
        if t == 0xFA:
            k, q = read_str(buf, p + 1)
            v, q = read_str(buf, q)
            self.aux[k] = v
            self._pos = q
            return Aux(k, v)
        if t == 0xFF:
            return self._eof(buf, p)
        if t == 0xF7:
            mid, q = read_len(buf, p + 1)
            wop, q = read_len(buf, q)
            if wop != 2:
                raise RdbError(f"MODULE_AUX: bad when-opcode {wop} (expected 2)", p)
            when, q = read_len(buf, q)
            end = walk.skip_module_values(buf, q)
            name, encver = walk.module_name(mid)
            self._pos = end
            return ModuleAux(mid, name, encver, when, bytes(buf[q:end]))
        if t == 0xF5:
            code, q = read_str(buf, p + 1)
            self._pos = q
            return Function(code)
        if t == 0xF6:
            # Redis 7.0 release-candidate format: name, engine, has-description flag,
            # [description], code (the code has no shebang line).
            name, q = read_str(buf, p + 1)
            engine, q = read_str(buf, q)
            has_desc, q = read_len(buf, q)
            if has_desc:
                q = skip_str(buf, q)
            code, q = read_str(buf, q)
            if not code.startswith(b"#!"):
                code = b"#!" + engine.lower() + b" name=" + name + b"\n" + code
            self._pos = q
            return Function(code)
        if t == 0xF4 and not self.is_valkey and self.version >= 12:
            slot, q = read_len(buf, p + 1)
            size, q = read_len(buf, q)
            exp, q = read_len(buf, q)
            self._pos = q
            return SlotInfo(slot, size, exp)
        if t == 0xF3 and self.is_valkey:
            raise RdbError(
                f"Valkey SLOT_IMPORT opcode 243 in {self._name} is not supported "
                "(its layout is not implemented)",
                p,
            )
        if t == 0xF3 and self.version >= 13:
            raise RdbError(
                f"Redis KEY_META opcode 243 in {self._name} is not supported "
                "(key metadata layout not implemented)",
                p,
            )
        what = "opcode" if t >= 0xF0 else "value type"
        raise RdbError(f"unknown {what} {t} in {self._name}", p)

    def _eof(self, buf, p: int) -> Eof:
        q = p + 1
        stored, verified = 0, False
        if self.version >= 5:
            if q + 8 > len(buf):
                raise walk.Truncated(q + 8)
            stored = _U64LE(buf, q)[0]
            self._crc.update(buf[self._crc_upto : q])
            self._crc_upto = q
            computed = self._crc.value
            if stored:
                if stored != computed:
                    raise RdbError(
                        f"RDB checksum mismatch: stored {stored:016x}, computed {computed:016x}", q
                    )
                verified = True
            q += 8
        self._pos = q
        self._state = _DONE
        self.done = True
        return Eof(stored, verified)

    def _go_big(self, vt: _Vt, t, key, expire, idle, freq, off, vs, cnt, first, db):
        """Switch the pending aggregate to streaming mode at its first element."""
        extra = 0
        then = None
        if vt.pre8:
            extra = _I64LE(self._buf, vs)[0]
        elif vt.tail == _T_STREAM:
            extra = walk.StreamWalk(t)
            then = _stream_tail
        self._pend = None
        self._carry = None
        self._big = _Big(vt.reader, cnt, extra, key, 0, then)
        self._pos = first
        count = cnt if vt.tail == _T_NONE else -1
        yield BigKeyStart(db, key, t, expire, idle, freq, off, vt.big_kind or _KIND[t], count)
        yield from self._big_run()

    def _go_big_string(self, key, expire, idle, freq, off, ds, slen, db, ulen=-1):
        """A string whose stored bytes (``slen`` from ``ds``) exceed the threshold: stream it
        in pieces (kind "string"); raw (``ulen`` -1) or LZF (``ulen`` = its output length)."""
        self._pend = None
        self._carry = None
        if ulen < 0:
            big = _Big(_str_piece, -(-slen // _STR_PIECE), [slen], key, _STR_PART)
        else:
            big = _Big(_lzf_piece, -(-slen // _LZF_SLICE), _LzfPieces(slen, ulen), key, _STR_PART)
        self._big = big
        self._pos = ds
        yield BigKeyStart(db, key, 0, expire, idle, freq, off, "string", slen if ulen < 0 else ulen)
        yield from self._big_run()

    def _big_run(self) -> Iterator[Record]:
        big = self._big
        assert big is not None
        buf = self._buf
        base = self._base
        if base + len(buf) < self._need:
            return
        p = self._pos
        items, part = big.items, big.part or self._part
        rem = 0
        try:
            while True:
                reader, extra, rem = big.reader, big.extra, big.rem
                while rem:
                    p = reader(buf, p, items, extra)
                    rem -= 1
                    if len(items) >= part:
                        big.rem = rem
                        self._pos = p
                        while len(items) >= part:
                            chunk = items[:part]
                            del items[:part]
                            yield BigKeyPart(chunk)
                big.rem = 0
                if big.then is None:
                    break
                p = big.then(buf, p, big)
        except SHORT as e:
            need = e.args[0] if e.args and isinstance(e.args[0], int) else len(buf) + 1
            self._need = base + max(need, len(buf) + 1)
            big.rem = rem
            self._pos = p
            return
        except RdbError as e:
            raise self._wrap(e, base, p, big.key) from None
        self._pos = p
        self._big = None
        if items:
            chunk = items[:]
            items.clear()
            yield BigKeyPart(chunk)
        yield BigKeyEnd()
