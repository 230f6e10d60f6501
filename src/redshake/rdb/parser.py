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
quicklists -- node blobs are decoded one at a time, huge ones piecewise --, and the hashes
with field TTLs: Redis 22/24, Valkey 22) switch to streaming: ``BigKeyStart``, ``BigKeyPart``
(at most ``part_items`` items each), ``BigKeyEnd``; their bytes are released as they are
consumed.

Streams (15, 19, 21, 26, 27) stream the same way, as kind ``"stream"`` (``count`` -1): their nodes
are decoded one at a time into live entries ``(id, [field, value, ...])`` (deleted ones are
left out), then come one :class:`~redshake.rdb.values.StreamValue` item with the metadata
(length, last id, first id, max deleted id, entries added; no entries, no groups), then
per consumer group a :class:`~redshake.rdb.values.StreamGroupHead` (name, last id, entries
read, PEL size) and :class:`~redshake.rdb.values.StreamConsumerPart` items: each consumer's
pending entries ``(id, delivery time, delivery count)``, at most ``STREAM_CLAIMS_CHUNK`` per
item (one empty item for a consumer without any), one item per ``BigKeyPart``. The group's
global PEL comes before its consumers in the file: it is read in chunks into a compact store
(raw ids, times and counts in a bytearray and two arrays, 32 bytes an entry, no Python
object per entry), kept until the group's last consumer is read, and each consumer's ids are
looked up in it (PEL entries no consumer owns are left out). A stream also goes big when its
nodes are small but its group tail is not. Types 26 and 27 (Redis 8.6 / 8.8) stream the
same way; a group's NACK zone (27) and the stream's IDMP section (26, 27) are read in
bounded steps and come out as :class:`~redshake.rdb.values.StreamDropped` counts only.

A string value of type 0 whose stored bytes exceed the threshold is streamed as kind
``"string"`` with parts of 1 MiB pieces (``count`` = its length): a raw one as it is read,
an LZF-compressed one (encoding 0xC3) decompressed 64 KiB of input at a time
(:class:`~redshake.rdb.primitives.LzfStream`), so neither its compressed nor its
decompressed bytes are ever held whole.

Inside a streamed value of type 1 to 5 or a hash with field TTLs (Redis 22/24, Valkey 22),
a single string whose stored bytes (raw, or LZF-compressed) exceed the threshold -- a huge
list element, set or zset member, hash field or value -- is streamed the same way:
``BigElementStart(role, length)``, ``BigElementPart`` (1 MiB pieces), ``BigElementEnd``,
between the ``BigKeyPart`` records of its key, after the items before it; its item comes in a
later part with ``BIG_ELEMENT`` in its place (see :mod:`~redshake.rdb.records`); a hash item
with field TTLs is ``(field, value, expire ms or -1)``. An aggregate whose next element ends
more than the threshold past its start goes big at once, without buffering that element.

Lists in quicklists (types 14 and 18): a node whose blob's stored bytes exceed the threshold
is not read whole either. A PLAIN node (type 18, container 1: one element) is streamed as an
element; a ziplist / listpack node is parsed as its bytes come (``_LZF_SLICE`` stored bytes at
a time, LZF-decompressed piecewise when compressed; see ``_Node``): its small entries become
items, and an entry string over the threshold (Redis puts an element bigger than the node
size limit in a node of its own) is streamed as an element.

Still buffered whole: the ziplist/listpack/intset/zipmap blobs of compact values (a huge blob
is one rdb-string: compact hashes, sets and zsets only hold huge elements when their
``*-max-*-value`` settings were raised; Redis's HASH_LISTPACK_EX 23/25 likewise), one
stream node (a node holds a few KiB of entries, or one bigger entry, unless
stream-node-max-bytes was raised), and module values. Held compactly rather than streamed:
the PEL of the consumer group being read (32 bytes a pending entry, released after the
group).

Incomplete aggregates resume where they stopped when more data arrives (no re-scan from
the start of the record), and an incomplete string waits until its known end is buffered,
so feeding small chunks costs no more than feeding the whole file.
"""

from __future__ import annotations

import logging
import struct
from array import array
from collections.abc import Iterator

from . import types as T
from . import walk
from .encodings import _backlen_size, listpack_entries, ziplist_entries
from .primitives import (
    Crc64,
    LzfStream,
    RdbError,
    Truncated,
    read_double_str,
    read_length,
    read_string,
    skip_string,
)
from .records import (
    BIG_ELEMENT,
    Aux,
    BigElementEnd,
    BigElementPart,
    BigElementStart,
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
    SlotImport,
    SlotInfo,
)
from .types import TypeSpec, opcodes, value_types
from .values import (
    STREAM_CLAIMS_CHUNK,
    StreamConsumerPart,
    StreamDropped,
    StreamGroupHead,
    decode_stream_consumer_head,
    decode_stream_group_head,
    decode_stream_meta,
)
from .walk import (
    BLOB_INTSET,
    BLOB_LISTPACK,
    BLOB_ZIPLIST,
    BLOB_ZIPMAP,
    SHORT,
)

__all__ = ["RdbParser", "key_meta_class", "read_key_meta"]

_I32LE = struct.Struct("<i").unpack_from
_I64LE = struct.Struct("<q").unpack_from
_U64LE = struct.Struct("<Q").unpack_from
_U32BE = struct.Struct(">I").unpack_from
_U64BE = struct.Struct(">Q").unpack_from
_U16LE = struct.Struct("<H").unpack_from
_U32LE = struct.Struct("<I").unpack_from
_F64LE = struct.Struct("<d").unpack_from

_HEADER, _BODY, _DONE = 0, 1, 2

# value-table entry kinds
_K_STR = 0  # one rdb-string (type 0 and blob types)
_K_AGG = 1  # len-enc count + count elements (+ optional tail)
_K_MOD = 2  # module type 7
_K_ERR = 3  # known type we cannot walk: fail with the message
_K_BLOB8 = 4  # 8-byte prefix + blob (Redis HASH_LISTPACK_EX)

# aggregate tails
_T_NONE, _T_STREAM, _T_QUICKLIST = 0, 1, 2

# vendor opcode: Redis Enterprise RAM_LRU, len-enc payload, applies to the next key
_OP_ENT_RAM_LRU = 107

# Redis 8.6 (REDIS magic, RDB >= 13) KEY_META, before a key's type byte: len-enc number of
# classes, then per class a 4-byte LE class spec (4-character name, 6 bits a character; 5-bit
# version; 3 flag bits, bit 0 = ALLOW_IGNORE) and the class's value as an annotated module
# value stream ending with the module EOF opcode (Redis keymeta.c rdbSaveKeyMetadata). The
# same byte is Valkey's SLOT_IMPORT under VALKEY magic.
_OP_KEY_META = 0xF3
_KM_CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_KM_ALLOW_IGNORE = 1

log = logging.getLogger("redshake")


def key_meta_class(spec: int) -> tuple[str, int, int]:
    """A KEY_META class spec -> (4-character class name, version, flags)."""
    v = spec >> 8
    name = "".join(_KM_CHARSET[(v >> (6 * (3 - i))) & 63] for i in range(4))
    return name, (spec >> 3) & 31, spec & 7


def read_key_meta(buf, p: int, where: str) -> tuple[list[tuple[str, int, int]], int]:
    """The KEY_META block whose opcode is at ``p`` (see _OP_KEY_META): its classes (name,
    version, flags) and the position after it. A class not marked ALLOW_IGNORE is an error
    (``where`` names the file or payload): it needs the module that defines it, as it does on
    a server, and key metadata cannot be copied to another server."""
    n, q = read_length(buf, p + 1)
    classes = []
    for _ in range(n):
        e = q + 4
        if e > len(buf):
            raise Truncated(e)
        classes.append(key_meta_class(_U32LE(buf, q)[0]))
        q = walk.skip_module_values(buf, e)
    for name, ver, flags in classes:
        if not flags & _KM_ALLOW_IGNORE:
            raise RdbError(
                f"Redis key metadata (KEY_META opcode 243) of class {name!r} version {ver}"
                f" in {where} is not marked ALLOW_IGNORE: it needs the module that defines "
                "the class, and key metadata cannot be copied to another server",
                p,
            )
    return classes, q


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


def _walker(spec: TypeSpec) -> _Vt:
    """How the parser walks (and streams, when big) a value of type ``spec``."""
    lay = spec.layout
    if lay in _BLOB_OF:
        return _Vt(_K_STR, blob=_BLOB_OF[lay])
    if lay == T.STRING:
        return _Vt(_K_STR)
    if lay == T.MODULE:
        return _Vt(_K_MOD)
    if lay == T.HASH_LISTPACK_TTL_MIN:
        return _Vt(_K_BLOB8, blob=BLOB_LISTPACK)
    if lay == T.UNSUPPORTED:
        return _Vt(_K_ERR, msg=spec.error)
    if lay == T.STREAM:
        return _Vt(_K_AGG, walk.el_pair, _T_STREAM, reader=walk.rd_stream_node, big_kind="stream")
    # (types 1 to 5 and the hashes with field TTLs: the element readers below, which also
    # stream a single huge string)
    elem, tail, reader = _AGG_OF[lay]
    return _Vt(_K_AGG, elem, tail, pre8=lay == T.HASH_TTL_MIN, reader=reader, big_kind=spec.family)


def _value_table(valkey: bool, version: int) -> list[_Vt | None]:
    return [None if s is None else _walker(s) for s in value_types(valkey, version)]


class _Pend:
    """An aggregate whose elements are not all buffered yet, resumed when more data comes:
    its type, key, expiry/LRU/LFU state, record offset, and the absolute offsets of its value
    (``vs``), of the next element to walk (``q``) and of its first element, with ``rem`` of
    its ``cnt`` elements still to walk."""

    __slots__ = ("t", "key", "expire", "idle", "freq", "off", "vs", "cnt", "q", "rem", "first")

    def __init__(self, t: int, key: bytes, expire: int, idle: int, freq: int, off: int, vs: int,
                 cnt: int, q: int, rem: int, first: int) -> None:  # fmt: skip
        self.t = t
        self.key = key
        self.expire = expire
        self.idle = idle
        self.freq = freq
        self.off = off
        self.vs = vs
        self.cnt = cnt
        self.q = q
        self.rem = rem
        self.first = first


class _Big:
    """State of a value being streamed element by element: ``rem`` more calls of
    ``reader(buf, pos, items, extra) -> end``; then, if set, ``then(buf, pos, big) -> end``
    reads what follows and sets up the next reader (or clears ``then``). A reader may also
    end its run by raising _SubEnd at the start of a call (before consuming anything)."""

    __slots__ = ("reader", "rem", "items", "extra", "key", "part", "then", "sub", "node")

    def __init__(self, reader, rem: int, extra, key: bytes, part: int = 0, then=None) -> None:
        self.reader = reader
        self.rem = rem
        self.items: list = []
        self.extra = extra
        self.key = key
        self.part = part  # items per BigKeyPart (0: the parser's part_items)
        self.then = then
        # while one huge string of an element is streamed (BigElementPart pieces): the
        # aggregate's (reader, rem, extra, then, part), restored at its end
        self.sub: tuple | None = None
        # while one huge quicklist node is parsed piecewise (_Node): the same for the
        # aggregate's node reader
        self.node: tuple | None = None


# A raw string longer than the big-value threshold is streamed in pieces of this size,
# _STR_PART pieces per BigKeyPart (SET + APPENDs on the target).
_STR_PIECE = 1 << 20
_STR_PART = 4


class _RawPieces:
    __slots__ = ("left",)

    def __init__(self, slen: int) -> None:
        self.left = slen  # bytes still to read


def _str_piece(buf, p: int, items: list, st: _RawPieces) -> int:
    """Reader of one piece of a streamed string (``st.left`` bytes to go)."""
    n = _STR_PIECE if st.left > _STR_PIECE else st.left
    e = p + n
    if e > len(buf):
        raise Truncated(e)
    items.append(bytes(buf[p:e]))
    st.left -= n
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


# ---- element readers of streamed lists, sets, zsets and hashes of types 1 to 5 -------------
#
# Like walk.rd_str / rd_pair / rd_zset_*, except that an rdb-string whose stored length
# (raw, or LZF-compressed) exceeds the threshold is not read: _GoElem is raised at it, and
# _RdbParser._big_run streams it in BigElementPart pieces (_str_piece / _lzf_piece), then
# calls the reader again, which goes on from the string after it (``stage``) and puts
# BIG_ELEMENT in the item in its place.


class _GoElem(Exception):
    __slots__ = ("head", "role", "stage", "held")

    def __init__(self, head: tuple[int, int, int] | None, role: str, stage: int, held) -> None:
        # (data start, stored length, uncompressed length or -1); None: an entry string of a
        # huge quicklist node (_Node)
        self.head = head
        self.role = role
        self.stage = stage  # the reader's stage once the string is streamed
        self.held = held  # what it keeps of the element meanwhile (a hash field)


class _Elems:
    """State of the element reader of a streamed value of type 1 to 5."""

    __slots__ = ("limit", "short", "role", "bin", "stage", "held", "base")

    def __init__(self, limit: int, role: str, binary: bool) -> None:
        self.limit = limit
        # header bytes below this one announce strings that cannot exceed the limit
        self.short = 0x80 if limit >= 0x3FFF else 0x40 if limit >= 0x3F else 0
        self.role = role  # of a list or set element
        self.bin = binary  # zset scores: 8-byte doubles (type 5), else strings (type 3)
        self.stage = 0  # strings of the current element already read (a hash field) or streamed
        self.held = None  # the hash field (and field TTL) read before a streamed value
        # Redis hashes with field TTLs: added to a stored TTL to make it absolute (type 24:
        # the hash's min-expire minus 1; pre-GA type 22 stores absolute TTLs: 0)
        self.base = 0


def _big_head(buf, p: int, limit: int) -> tuple[int, int, int] | None:
    """(data start, stored length, uncompressed length or -1) of the raw or LZF rdb-string at
    ``p`` when its stored length exceeds ``limit``; else None."""
    b = buf[p]
    if b < 0x40:
        n, q = b, p + 1
    elif b < 0x80:
        n, q = ((b & 0x3F) << 8) | buf[p + 1], p + 2
    elif b == 0x80:
        n, q = _U32BE(buf, p + 1)[0], p + 5
    elif b == 0x81:
        n, q = _U64BE(buf, p + 1)[0], p + 9
    elif b == 0xC3:
        n, q = read_length(buf, p + 1)
        if n <= limit:
            return None
        u, q = read_length(buf, q)
        return q, n, u
    else:
        return None  # an integer (or an error read_string reports)
    return (q, n, -1) if n > limit else None


def _rd_elem(buf, p: int, items: list, ctx: _Elems) -> int:
    """List (type 1) or set (type 2) element."""
    if ctx.stage:
        ctx.stage = 0
        items.append(BIG_ELEMENT)
        return p
    if buf[p] >= ctx.short:
        h = _big_head(buf, p, ctx.limit)
        if h is not None:
            raise _GoElem(h, ctx.role, 1, None)
    s, p = read_string(buf, p)
    items.append(s)
    return p


def _field_value(buf, p: int, ctx: _Elems) -> tuple[bytes, bytes, int]:
    """A hash field and its value (type 4, Valkey 22); either may be a streamed string."""
    if ctx.stage == 2:
        return ctx.held, BIG_ELEMENT, p
    short = ctx.short
    if ctx.stage == 0:
        if buf[p] >= short:
            h = _big_head(buf, p, ctx.limit)
            if h is not None:
                raise _GoElem(h, "field", 1, BIG_ELEMENT)
        f, p = read_string(buf, p)
    else:
        f = ctx.held
    if buf[p] >= short:
        h = _big_head(buf, p, ctx.limit)
        if h is not None:
            raise _GoElem(h, "value", 2, f)
    v, p = read_string(buf, p)
    return f, v, p


def _rd_pair_elem(buf, p: int, items: list, ctx: _Elems) -> int:
    """Hash (type 4) field and value."""
    f, v, p = _field_value(buf, p, ctx)
    ctx.stage = 0
    ctx.held = None
    items.append((f, v))
    return p


def _rd_zset_elem(buf, p: int, items: list, ctx: _Elems) -> int:
    """Sorted set member and score: an 8-byte double (type 5) or a string (type 3)."""
    if ctx.stage:
        m = BIG_ELEMENT
    else:
        if buf[p] >= ctx.short:
            h = _big_head(buf, p, ctx.limit)
            if h is not None:
                raise _GoElem(h, "member", 1, None)
        m, p = read_string(buf, p)
    if ctx.bin:
        s = repr(_F64LE(buf, p)[0]).encode()
        p += 8
    else:
        s, p = read_double_str(buf, p)
    ctx.stage = 0
    items.append((m, s))
    return p


def _rd_hash_ttl_first(buf, p: int, items: list, ctx: _Elems) -> int:
    """Redis hash with field TTLs (pre-GA type 22, type 24 HASH_METADATA): len-enc TTL (0:
    none), field, value -> item (field, value, absolute expire ms or -1)."""
    stage = ctx.stage
    if stage == 2:
        f, ttl = ctx.held
        v = BIG_ELEMENT
    else:
        short = ctx.short
        if stage == 0:
            ttl, p = read_length(buf, p)
            if buf[p] >= short:
                h = _big_head(buf, p, ctx.limit)
                if h is not None:
                    raise _GoElem(h, "field", 1, ttl)
            f, p = read_string(buf, p)
        else:
            f, ttl = BIG_ELEMENT, ctx.held
        if buf[p] >= short:
            h = _big_head(buf, p, ctx.limit)
            if h is not None:
                raise _GoElem(h, "value", 2, (f, ttl))
        v, p = read_string(buf, p)
    ctx.stage = 0
    ctx.held = None
    items.append((f, v, ttl + ctx.base if ttl else -1))
    return p


def _rd_hash_ttl_last(buf, p: int, items: list, ctx: _Elems) -> int:
    """Valkey hash with field TTLs (type 22 HASH_2): field, value, 8-byte LE absolute expire
    ms (negative: none) -> item (field, value, expire ms or -1)."""
    f, v, p = _field_value(buf, p, ctx)
    exp = _I64LE(buf, p)[0]
    ctx.stage = 0
    ctx.held = None
    items.append((f, v, exp if exp >= 0 else -1))
    return p + 8


# ---- quicklist nodes (types 14 and 18) -----------------------------------------------------
#
# A node whose blob (an rdb-string, raw or LZF) is at most the threshold is decoded whole. A
# PLAIN node (type 18, container 1) over it is one element: streamed like the strings above.
# A ziplist / listpack node over it is parsed piecewise (_Node): _GoNode is raised at it, and
# _RdbParser._big_run reads it with _node_read, _LZF_SLICE stored bytes at a time (decompressed
# when LZF), its small entries as items; an entry string over the threshold is streamed in
# BigElementPart pieces (_node_piece) with BIG_ELEMENT in its item.


class _SubEnd(Exception):
    """Raised by a reader at the start of a call: its run (a node, an element) is over."""


class _GoNode(Exception):
    def __init__(self, node: _Node) -> None:
        self.node = node


def _ql_node(buf, p: int, q: int, items: list, ctx: _Elems, c: int) -> int:
    """The node blob at ``q`` (its node starts at ``p``): ``c`` 1 PLAIN, 2 PACKED (listpack),
    0 ziplist (type 14)."""
    if ctx.stage:  # a PLAIN node streamed as an element
        ctx.stage = 0
        items.append(BIG_ELEMENT)
        return q
    if buf[q] >= ctx.short:
        h = _big_head(buf, q, ctx.limit)
        if h is not None:
            if c == 1:
                raise _GoElem(h, "element", 1, None)
            raise _GoNode(_Node(h, c == 2, ctx.limit))
    blob, e = read_string(buf, q)
    if c == 1:
        items.append(blob)
        return e
    try:
        items.extend(listpack_entries(blob) if c == 2 else ziplist_entries(blob))
    except RdbError as err:
        raise RdbError(f"quicklist node: {err.message}", p) from None
    return e


def _rd_ql1_node(buf, p: int, items: list, ctx: _Elems) -> int:
    """Quicklist (type 14) node: a ziplist rdb-string."""
    return _ql_node(buf, p, p, items, ctx, 0)


def _rd_ql2_node(buf, p: int, items: list, ctx: _Elems) -> int:
    """Quicklist (type 18) node: container (1 PLAIN, 2 PACKED), then an rdb-string."""
    if ctx.stage:
        return _ql_node(buf, p, p, items, ctx, 1)
    c, q = read_length(buf, p)
    if c != 1 and c != 2:
        raise RdbError(f"invalid quicklist container {c} (expected 1 PLAIN or 2 PACKED)", p)
    return _ql_node(buf, p, q, items, ctx, c)


_ZL_SMALL = [str(i).encode() for i in range(13)]


class _Node:
    """A ziplist or listpack node blob over the threshold, parsed as its stored bytes come."""

    __slots__ = ("lzf", "left", "size", "work", "lp", "limit", "phase", "count", "seen",
                 "dleft", "skip", "go", "after", "start")  # fmt: skip

    def __init__(self, head: tuple[int, int, int], listpack: bool, limit: int) -> None:
        self.start, slen, ulen = head  # (data start, stored length, uncompressed or -1)
        self.lzf = LzfStream(ulen) if ulen >= 0 else None
        self.left = slen  # stored bytes still to read
        self.size = slen if ulen < 0 else ulen  # the blob's length
        self.work = bytearray()  # blob bytes read, not yet parsed
        self.lp = listpack
        self.limit = limit
        self.phase = 0  # 0: header, 1: entries, 2: after the end byte
        self.count = 0  # entries the header declares
        self.seen = 0  # entries found
        self.dleft = 0  # bytes of the streamed entry string still to go out
        self.skip = 0  # bytes to drop after it (a listpack backlen)
        self.go = False  # an entry string is to be streamed: the next call starts it
        self.after = False  # one was: its BIG_ELEMENT item comes next

    def pull(self, buf, p: int) -> int:
        """Read the next stored slice at ``p`` into ``work``; the position after it."""
        n = _LZF_SLICE if self.left > _LZF_SLICE else self.left
        if not n:
            raise RdbError("quicklist node: entry runs past the end of the node")
        e = p + n
        if e > len(buf):
            raise Truncated(e)
        if self.lzf is None:
            self.work += buf[p:e]
        else:
            try:
                self.work += self.lzf.decompress(buf[p:e], n == self.left)
            except RdbError as err:
                raise RdbError(f"quicklist node: {err.message}", p) from None
        self.left -= n
        return e

    def parse(self, items: list) -> bool:
        """Parse what ``work`` holds: complete entries as items, up to an entry string over
        the limit (``go``) or the end byte. False when nothing could be done."""
        w = self.work
        progress = False
        if self.after:  # the item of the entry string just streamed
            items.append(BIG_ELEMENT)
            self.after = False
            self.seen += 1
            progress = True
        if self.skip:  # (its listpack backlen)
            k = min(self.skip, len(w))
            if k:
                del w[:k]
                self.skip -= k
                progress = True
            if self.skip:
                return progress
        n = len(w)
        i = 0
        bad = "quicklist node: "
        if self.phase == 0:
            hl = 6 if self.lp else 10
            if n < hl:
                return progress
            total = _U32LE(w, 0)[0]
            if total != self.size:
                raise RdbError(f"{bad}{'listpack' if self.lp else 'ziplist'} header says "
                               f"{total} bytes but the blob has {self.size}")  # fmt: skip
            self.count = _U16LE(w, hl - 2)[0]
            self.phase = 1
            i = hl
        if self.phase == 1:
            if self.lp:
                i, seen = self._lp_entries(w, i, n, items, self.limit, self.seen)
            else:
                i, seen = self._zl_entries(w, i, n, items, self.limit, self.seen)
            self.seen = seen
            if self.phase == 2:
                if self.left or i != n:
                    raise RdbError(f"{bad}end byte before the end of the blob")
                if self.count != 65535 and self.count != seen:
                    raise RdbError(f"{bad}header says {self.count} elements but {seen} were "
                                   "found")  # fmt: skip
        if i:
            del w[:i]
            progress = True
        return progress

    def _zl_entries(self, w, i: int, n: int, items: list, limit: int, seen: int):
        while i < n:
            b = w[i]
            if b == 0xFF:
                self.phase = 2
                return i + 1, seen
            q = i + (5 if b == 0xFE else 1)
            if q >= n:
                break
            c = w[q]
            t = c >> 6
            if t == 0:
                d, ln = q + 1, c & 0x3F
            elif t == 1:
                if q + 2 > n:
                    break
                d, ln = q + 2, ((c & 0x3F) << 8) | w[q + 1]
            elif t == 2:
                if c != 0x80:
                    raise RdbError(f"quicklist node: invalid ziplist string encoding byte "
                                   f"0x{c:02x}")  # fmt: skip
                if q + 5 > n:
                    break
                d, ln = q + 5, _U32BE(w, q + 1)[0]
            else:
                if 0xF1 <= c <= 0xFD:
                    items.append(_ZL_SMALL[c - 0xF1])
                    i = q + 1
                elif c == 0xC0 or c == 0xD0 or c == 0xE0 or c == 0xF0 or c == 0xFE:
                    k = {0xC0: 2, 0xD0: 4, 0xE0: 8, 0xF0: 3, 0xFE: 1}[c]
                    if q + 1 + k > n:
                        break
                    v = int.from_bytes(w[q + 1 : q + 1 + k], "little", signed=True)
                    items.append(str(v).encode())
                    i = q + 1 + k
                else:
                    raise RdbError(f"quicklist node: invalid ziplist entry encoding byte "
                                   f"0x{c:02x}")  # fmt: skip
                seen += 1
                continue
            if ln > limit:
                self.dleft, self.skip, self.go = ln, 0, True
                return d, seen
            if d + ln > n:
                break
            items.append(bytes(w[d : d + ln]))
            seen += 1
            i = d + ln
        return i, seen

    def _lp_entries(self, w, i: int, n: int, items: list, limit: int, seen: int):
        while i < n:
            c = w[i]
            if c == 0xFF:
                self.phase = 2
                return i + 1, seen
            if c < 0x80:
                if i + 2 > n:
                    break
                items.append(str(c).encode())
                i += 2
                seen += 1
                continue
            if c < 0xC0:
                d, ln, hl = i + 1, c & 0x3F, 1
            elif c < 0xE0:
                if i + 3 > n:
                    break
                v = ((c & 0x1F) << 8) | w[i + 1]
                items.append(str(v - 8192 if v >= 4096 else v).encode())
                i += 3
                seen += 1
                continue
            elif c < 0xF0:
                if i + 2 > n:
                    break
                d, ln, hl = i + 2, ((c & 0x0F) << 8) | w[i + 1], 2
            elif c == 0xF0:
                if i + 5 > n:
                    break
                d, ln, hl = i + 5, _U32LE(w, i + 1)[0], 5
            elif c <= 0xF4:
                k = (2, 3, 4, 8)[c - 0xF1]
                if i + 2 + k > n:  # + a 1-byte backlen
                    break
                v = int.from_bytes(w[i + 1 : i + 1 + k], "little", signed=True)
                items.append(str(v).encode())
                i += 2 + k
                seen += 1
                continue
            else:
                raise RdbError(f"quicklist node: invalid listpack entry encoding byte "
                               f"0x{c:02x}")  # fmt: skip
            bl = _backlen_size(hl + ln)
            if ln > limit:
                self.dleft, self.skip, self.go = ln, bl, True
                return d, seen
            if d + ln + bl > n:
                break
            items.append(bytes(w[d : d + ln]))
            seen += 1
            i = d + ln + bl
        return i, seen


def _node_read(buf, p: int, items: list, st: _Node) -> int:
    """Reader of a huge quicklist node: parse what is read, else read the next slice."""
    if st.go:
        raise _GoElem(None, "element", 0, None)
    if st.phase == 2:
        raise _SubEnd
    if st.parse(items):
        return p
    return st.pull(buf, p)


def _node_piece(buf, p: int, items: list, st: _Node) -> int:
    """Reader of the pieces of an entry string of a huge quicklist node."""
    left = st.dleft
    if not left:
        raise _SubEnd
    n = _STR_PIECE if left > _STR_PIECE else left
    w = st.work
    if len(w) >= n:
        items.append(bytes(w[:n]))
        del w[:n]
        st.dleft = left - n
        return p
    return st.pull(buf, p)


_ELEM_READERS = (_rd_elem, _rd_pair_elem, _rd_zset_elem, _rd_hash_ttl_first, _rd_hash_ttl_last,
                 _rd_ql1_node, _rd_ql2_node)  # fmt: skip
# role of a streamed element (BigElementStart) by value family
_ELEM_ROLE = {"list": "element", "set": "member", "zset": "member", "hash": "field"}


def _stream_tail(buf, p: int, big: _Big) -> int:
    """After the nodes of a streamed stream: its metadata (a StreamValue without entries nor
    groups, as one item), then its consumer groups (see _StreamGroups), one item per part."""
    st = big.extra
    meta, ngroups, q = decode_stream_meta(st.type, buf, p, st.first or b"0-0")
    big.items.append(meta)
    big.reader, big.rem, big.extra = None, 0, _StreamGroups(st.type, ngroups)
    big.then = _group_head if ngroups else _stream_idmp if st.type >= 26 else None
    big.part = 1  # a consumer part holds up to STREAM_CLAIMS_CHUNK pending entries
    return q


# Consumer groups of a streamed stream. A group's global PEL is read by a `then` hook, up to
# _PEL_CHUNK complete entries per call, into a compact store (16-byte raw ids in one
# bytearray, delivery times and counts in two arrays: 32 bytes an entry) that is kept until
# the group's consumers are read; then each consumer's pending ids, STREAM_CLAIMS_CHUNK per
# reader call, are looked up in it (both are in ascending id order: a forward search from
# the previous hit) and come out as StreamConsumerPart items. `then` hooks also read the
# group and consumer heads.
_PEL_CHUNK = 4096
_ID16 = struct.Struct(">QQ")


class _StreamGroups:
    __slots__ = ("type", "groups", "name", "consumers", "consumer", "left", "ptr",
                 "ids", "times", "counts", "last", "unsorted", "dropped", "iids")  # fmt: skip

    def __init__(self, t: int, ngroups: int) -> None:
        self.type = t
        self.groups = ngroups  # groups not finished yet (the current one included)
        self.name = b""  # current group
        self.consumers = 0  # consumers of the current group not read yet
        self.consumer: tuple[bytes, int, int] = (b"", 0, 0)  # name, seen time, active time
        self.left = 0  # PEL entries, then pending ids of the current consumer, to read
        self.ptr = 0  # the current consumer's next id is at or after this PEL entry
        self.dropped = 0  # NACK zone size / IDMP producers (StreamDropped)
        self.iids = 0  # IDMP iids (StreamDropped)
        self.new_store()

    def new_store(self) -> None:
        self.ids = bytearray()
        self.times = array("q")
        self.counts = array("Q")
        self.last = b""  # id of the last PEL entry read
        self.unsorted = False  # PEL not in id order (never written so by Redis)

    def find(self, rid: bytes, lo: int) -> int:
        """Index of PEL entry ``rid`` (16 raw bytes) at or after entry ``lo``, or -1."""
        ids = self.ids
        if self.unsorted:
            i = ids.find(rid)
            while i >= 0 and i & 15:
                i = ids.find(rid, i + 1)
            return i >> 4 if i >= 0 else -1
        n = len(ids) >> 4
        hi, step = n, 1  # gallop from lo, then bisect
        while lo + step - 1 < n:
            j = lo + step - 1
            if ids[j << 4 : (j << 4) + 16] >= rid:
                hi = j
                break
            lo = j + 1
            step <<= 1
        while lo < hi:
            j = (lo + hi) >> 1
            if ids[j << 4 : (j << 4) + 16] < rid:
                lo = j + 1
            else:
                hi = j
        return lo if lo < n and ids[lo << 4 : (lo << 4) + 16] == rid else -1


def _group_head(buf, p: int, big: _Big) -> int:
    """Start of a consumer group: a StreamGroupHead item; its PEL is read next."""
    st = big.extra
    name, last_id, entries_read, npel, p = decode_stream_group_head(st.type, buf, p)
    big.items.append(StreamGroupHead(name, last_id, entries_read, npel))
    st.name, st.left = name, npel
    big.then = _group_pel if npel else _group_consumers
    return p


def _group_pel(buf, p: int, big: _Big) -> int:
    """Up to _PEL_CHUNK entries of a group's PEL (16-byte id, 8-byte delivery time, len-enc
    delivery count each) into its compact store: every complete one that is buffered (this
    hook runs again while entries are left), so a PEL fed in small pieces is read once."""
    st = big.extra
    n = _PEL_CHUNK if st.left > _PEL_CHUNK else st.left
    ids = bytearray()
    times = array("q")
    counts = array("Q")
    last, unsorted = st.last, st.unsorted
    I64, rlen, tadd, cadd = _I64LE, read_length, times.append, counts.append
    end = len(buf)
    k = 0
    try:
        while k < n:
            if p + 25 > end:
                raise Truncated(p + 25)
            rid = buf[p : p + 16]
            t = I64(buf, p + 16)[0]
            b = buf[p + 24]
            if b < 0x40:
                c, q = b, p + 25
            else:
                c, q = rlen(buf, p + 24)
            tadd(t)
            cadd(c)
            if rid <= last:
                unsorted = True
            ids += rid
            last = rid
            p = q
            k += 1
    except SHORT:
        if not k:
            raise
    st.ids += ids
    st.times += times
    st.counts += counts
    st.last, st.unsorted = bytes(last), unsorted
    st.left -= k
    if not st.left:
        big.then = _group_consumers
    return p


def _group_consumers(buf, p: int, big: _Big) -> int:
    """After a group's PEL: the number of its consumers."""
    st = big.extra
    st.consumers, p = read_length(buf, p)
    big.reader, big.rem = None, 0
    big.then = _consumer_head if st.consumers else _group_end
    return p


def _consumer_head(buf, p: int, big: _Big) -> int:
    """Start of a consumer: its pending ids are read next (a consumer without any is one
    empty StreamConsumerPart)."""
    st = big.extra
    name, seen, active, n, p = decode_stream_consumer_head(st.type, buf, p)
    if not n:
        big.items.append(StreamConsumerPart(st.name, name, seen, active, []))
    st.consumer, st.left, st.ptr = (name, seen, active), n, 0
    st.consumers -= 1
    big.reader, big.rem = _rd_consumer_ids, -(-n // STREAM_CLAIMS_CHUNK)
    big.then = _consumer_head if st.consumers else _group_end
    return p


def _rd_consumer_ids(buf, p: int, items: list, st: _StreamGroups) -> int:
    """Reader of up to STREAM_CLAIMS_CHUNK pending ids of a consumer (16 raw bytes each),
    looked up in the group's PEL store: one StreamConsumerPart item."""
    n = STREAM_CLAIMS_CHUNK if st.left > STREAM_CLAIMS_CHUNK else st.left
    e = p + 16 * n
    if e > len(buf):
        raise Truncated(e)
    raw = bytes(buf[p:e])
    ids, times, counts, ptr = st.ids, st.times, st.counts, st.ptr
    o = ptr << 4
    if not st.unsorted and ids[o : o + len(raw)] == raw:  # the next n entries of the PEL
        pending = [(b"%d-%d" % msq, times[i], counts[i])
                   for i, msq in enumerate(_ID16.iter_unpack(raw), ptr)]  # fmt: skip
        ptr += n
    else:
        pending = []
        append, find = pending.append, st.find
        for j in range(0, len(raw), 16):
            rid = raw[j : j + 16]
            sid = b"%d-%d" % _ID16.unpack_from(raw, j)
            o = ptr << 4
            i = ptr if ids[o : o + 16] == rid else find(rid, ptr)
            if i < 0:
                append((sid, 0, 0))  # not in the PEL (as the whole-value rebuild does)
            else:
                append((sid, times[i], counts[i]))
                ptr = i + 1
    name, seen, active = st.consumer
    items.append(StreamConsumerPart(st.name, name, seen, active, pending))
    st.left -= n
    st.ptr = ptr
    return e


def _group_end(buf, p: int, big: _Big) -> int:
    """After the last consumer of a group: release its PEL store; its NACK zone (type 27),
    then the next group or the end (the IDMP section for types 26 and 27)."""
    st = big.extra
    if st.type >= 27:
        n, p = read_length(buf, p)
        st.left, st.dropped, st.iids = n, n, 0
        big.reader, big.rem = None, 0
        big.then = _group_nacked if n else _group_nacked_end
        return p
    return _group_done(buf, p, big)


def _group_nacked(buf, p: int, big: _Big) -> int:
    """Up to _PEL_CHUNK ids (16 bytes each) of a group's NACK zone: counted, not kept (an
    older target has no room for them; see StreamDropped)."""
    st = big.extra
    n = _PEL_CHUNK if st.left > _PEL_CHUNK else st.left
    e = p + 16 * n
    if e > len(buf):
        raise Truncated(e)
    st.left -= n
    if not st.left:
        big.then = _group_nacked_end
    return e


def _group_nacked_end(buf, p: int, big: _Big) -> int:
    st = big.extra
    big.items.append(StreamDropped(st.name, nacked=st.dropped))
    return _group_done(buf, p, big)


def _group_done(buf, p: int, big: _Big) -> int:
    st = big.extra
    st.new_store()
    st.groups -= 1
    big.reader, big.rem = None, 0
    big.then = _group_head if st.groups else _stream_idmp if st.type >= 26 else None
    return p


def _stream_idmp(buf, p: int, big: _Big) -> int:
    """Start of the IDMP section of a streamed stream of type 26 / 27 (after its groups):
    duration, max entries, number of producers; the producers are read one per call."""
    st = big.extra
    for _ in range(2):
        _, p = read_length(buf, p)
    st.left, p = read_length(buf, p)
    st.dropped, st.iids = st.left, 0
    big.reader, big.rem = None, 0
    big.then = _idmp_producer if st.left else _idmp_end
    return p


def _idmp_producer(buf, p: int, big: _Big) -> int:
    """One IDMP producer (id, its iids with their stream ids): counted, not kept. A
    producer tracks at most the stream's IDMP max entries (10000 at most) iids."""
    st = big.extra
    p, n = walk.skip_idmp_producer(buf, p)
    st.iids += n
    st.left -= 1
    if not st.left:
        big.then = _idmp_end
    return p


def _idmp_end(buf, p: int, big: _Big) -> int:
    """The IDMP counters (iids added, duplicates); the end of the stream."""
    st = big.extra
    for _ in range(2):
        _, p = read_length(buf, p)
    big.items.append(StreamDropped(None, producers=st.dropped, iids=st.iids))
    big.then = None
    return p


_EL_STR = walk.el_str
_EL_PAIR = walk.el_pair


# Values whose record grows past this many buffered bytes are streamed (module docstring);
# read when a parser is made, so a test can lower it for a whole run.
BIG_VALUE_THRESHOLD = 16 << 20


# layouts stored as one blob string (compact encodings) -> their blob format
_BLOB_OF = {
    T.HASH_ZIPMAP: BLOB_ZIPMAP,
    T.LIST_ZIPLIST: BLOB_ZIPLIST,
    T.SET_INTSET: BLOB_INTSET,
    T.ZSET_ZIPLIST: BLOB_ZIPLIST,
    T.HASH_ZIPLIST: BLOB_ZIPLIST,
    T.HASH_LISTPACK: BLOB_LISTPACK,
    T.ZSET_LISTPACK: BLOB_LISTPACK,
    T.SET_LISTPACK: BLOB_LISTPACK,
    T.HASH_LISTPACK_TTL: BLOB_LISTPACK,
}
# aggregate layouts -> (element skipper, tail, reader of streamed elements)
_AGG_OF = {
    T.LIST: (walk.el_str, _T_NONE, _rd_elem),
    T.SET: (walk.el_str, _T_NONE, _rd_elem),
    T.ZSET: (walk.el_zset_str, _T_NONE, _rd_zset_elem),
    T.HASH: (walk.el_pair, _T_NONE, _rd_pair_elem),
    T.ZSET_2: (walk.el_zset_bin, _T_NONE, _rd_zset_elem),
    T.LIST_QUICKLIST: (walk.el_str, _T_QUICKLIST, _rd_ql1_node),
    T.LIST_QUICKLIST_2: (walk.el_ql2, _T_QUICKLIST, _rd_ql2_node),
    T.HASH_TTL: (walk.el_hash_ttl_first, _T_NONE, _rd_hash_ttl_first),
    T.HASH_TTL_MIN: (walk.el_hash_ttl_first, _T_NONE, _rd_hash_ttl_first),
    T.HASH_2: (walk.el_hash_ttl_last, _T_NONE, _rd_hash_ttl_last),
}


class RdbParser:
    """Streaming RDB parser (see the module docstring)."""

    def __init__(
        self,
        *,
        big_value_threshold: int | None = None,
        part_items: int = 1024,
        start_offset: int = 0,
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
        self._pend: _Pend | None = None  # incomplete aggregate (absolute offsets)
        self._big: _Big | None = None
        self._vtab: list[_Vt | None] = []
        self._ops: tuple[str | None, ...] = ()  # opcode names of the magic and version
        self._threshold = BIG_VALUE_THRESHOLD if big_value_threshold is None else big_value_threshold
        self._part = max(1, part_items)
        self.magic = b""
        self.version = 0
        self.is_valkey = False
        self.done = False
        self.db = 0
        self.aux: dict[bytes, bytes] = {}
        self._name = ""
        # Redis 8.6 key metadata (KEY_META) left out: keys that had some, per class name
        self.key_meta_dropped = 0
        self.key_meta_classes: dict[str, int] = {}
        self._km_upto = -1  # absolute offset of the last KEY_META counted

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
            what = f"inside the value of key {self._pend.key!r}"
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
        self._ops = opcodes(valkey, version)
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
        meta_op = _OP_KEY_META if self._ops[_OP_KEY_META] == "KEY_META" else -1
        KV = KeyValue
        _read_str, _skip_str, _read_len = read_string, skip_string, read_length
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
                    # resume an incomplete aggregate (offsets absolute)
                    t, key, expire, idle, freq, off = (pend.t, pend.key, pend.expire, pend.idle,
                                                       pend.freq, pend.off)  # fmt: skip
                    cnt, rem = pend.cnt, pend.rem
                    vt = vtab[t]
                    vs = pend.vs - base
                    q = pend.q - base
                    first = pend.first - base
                else:
                    rs = p
                    c = self._carry
                    if c is None:
                        expire = idle = freq = -1
                        off = base + p
                    else:
                        expire, idle, freq, off = c
                    t = buf[p]
                    while t >= 0xF8 or t == _OP_ENT_RAM_LRU or t == meta_op:
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
                        elif t == meta_op:
                            p = self._key_meta(buf, p, base)
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
                except SHORT as e:
                    self._pend = _Pend(t, key, expire, idle, freq, off, base + vs, cnt, base + q,
                                       rem, base + first)  # fmt: skip
                    reader = vt.reader
                    if reader is not None and (
                        n - self._pos > self._threshold
                        # an element that ends past the threshold: stream it, do not wait
                        # for all of it (elements of types 1 to 5 only)
                        or (reader in _ELEM_READERS and type(e) is Truncated and e.args
                            and e.args[0] - self._pos > self._threshold)
                    ):  # fmt: skip
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
                pend = self._pend
                if pend is not None and vtab[pend.t].reader is not None:
                    # retry no later than when it goes big (a stream's PEL end is far away)
                    need = min(need, self._pos + self._threshold + 1)
                self._need = base + max(need, len(buf) + 1)
                p = self._pos
                break
            except RdbError as e:
                raise self._wrap(e, base, p, key) from None

    def _opcode(self, buf, p: int, t: int) -> Record | None:
        """Parse the non-key opcode at ``p``; sets ``_pos`` after it."""
        if t == 0xFE:
            db, q = read_length(buf, p + 1)
            self.db = db
            self._pos = q
            return SelectDb(db)
        if t == 0xFB:
            a, q = read_length(buf, p + 1)
            b, q = read_length(buf, q)
            self._pos = q
            return ResizeDb(a, b)
        if t == 0xFA:
            k, q = read_string(buf, p + 1)
            v, q = read_string(buf, q)
            self.aux[k] = v
            self._pos = q
            return Aux(k, v)
        if t == 0xFF:
            return self._eof(buf, p)
        if t == 0xF7:
            mid, q = read_length(buf, p + 1)
            wop, q = read_length(buf, q)
            if wop != 2:
                raise RdbError(f"MODULE_AUX: bad when-opcode {wop} (expected 2)", p)
            when, q = read_length(buf, q)
            end = walk.skip_module_values(buf, q)
            name, encver = walk.module_name(mid)
            self._pos = end
            return ModuleAux(mid, name, encver, when, bytes(buf[q:end]))
        if t == 0xF5:
            code, q = read_string(buf, p + 1)
            self._pos = q
            return Function(code)
        if t == 0xF6:
            # Redis 7.0 release-candidate format: name, engine, has-description flag,
            # [description], code (the code has no shebang line). Redis 7.0 loads it as
            # "#!<engine as stored> name=<name>\n<code>" (FUNCTION LIST WITHCODE shows
            # e.g. "#!LUA name=lib1"); the description is dropped, as 7.0 GA has none.
            name, q = read_string(buf, p + 1)
            engine, q = read_string(buf, q)
            has_desc, q = read_length(buf, q)
            if has_desc:
                q = skip_string(buf, q)
            code, q = read_string(buf, q)
            if not code.startswith(b"#!"):
                code = b"#!" + engine + b" name=" + name + b"\n" + code
            self._pos = q
            return Function(code)
        # SLOT_INFO: Redis 7.4+ (RDB 12+); Valkey 9 loads it under VALKEY magic too
        op = self._ops[t]
        if op == "SLOT_INFO":
            slot, q = read_length(buf, p + 1)
            size, q = read_length(buf, q)
            exp, q = read_length(buf, q)
            self._pos = q
            return SlotInfo(slot, size, exp)
        if op == "SLOT_IMPORT":
            # Valkey 9 SLOT_IMPORT (cluster_migrateslots.c): job name (CLUSTER_NAMELEN = 40
            # bytes), len-enc number of slot ranges, then per range len-enc first and last slot
            job, q = read_string(buf, p + 1)
            if len(job) != 40:
                raise RdbError(f"Valkey SLOT_IMPORT opcode 243 in {self._name}: job name of "
                               f"{len(job)} bytes (expected 40)", p)  # fmt: skip
            n, q = read_length(buf, q)
            ranges = []
            for _ in range(n):
                lo, q = read_length(buf, q)
                hi, q = read_length(buf, q)
                if not lo <= hi < 16384:
                    raise RdbError(f"Valkey SLOT_IMPORT opcode 243 in {self._name}: bad slot "
                                   f"range {lo}-{hi}", p)  # fmt: skip
                ranges.append((lo, hi))
            self._pos = q
            return SlotImport(job, ranges)
        what = "opcode" if t >= 0xF0 else "value type"
        raise RdbError(f"unknown {what} {t} in {self._name}", p)

    def _key_meta(self, buf, p: int, base: int) -> int:
        """Skip the KEY_META block at ``p`` (see _OP_KEY_META); the position after it.

        Metadata belongs to a module (a class the module registered) and no target here can
        hold it, nor could RESTORE payloads rebuilt from the value carry it. A class marked
        ALLOW_IGNORE is left out, as a server without that module does when it loads the
        file (counted in ``key_meta_dropped``); any other class stops the parse, as it stops
        such a server."""
        classes, q = read_key_meta(buf, p, self._name)
        if base + p > self._km_upto:  # (once per block, however often the key is re-read)
            self._km_upto = base + p
            self.key_meta_dropped += 1
            for name, ver, _flags in classes:
                if name not in self.key_meta_classes:
                    log.warning(
                        "key metadata of class %r (version %d, ALLOW_IGNORE) left out, first "
                        "on the key after offset %d: no target can hold it", name, ver, base + p,
                    )  # fmt: skip
                self.key_meta_classes[name] = self.key_meta_classes.get(name, 0) + 1
        return q

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
        if vt.reader in _ELEM_READERS:
            extra = _Elems(self._threshold, _ELEM_ROLE[vt.big_kind], t == 5)
            if vt.pre8:  # type 24: TTLs relative to the hash's min-expire
                extra.base = _I64LE(self._buf, vs)[0] - 1
        elif vt.tail == _T_STREAM:
            extra = walk.StreamWalk(t)
            then = _stream_tail
        self._pend = None
        self._carry = None
        self._big = _Big(vt.reader, cnt, extra, key, 0, then)
        self._pos = first
        count = cnt if vt.tail == _T_NONE else -1
        yield BigKeyStart(db, key, t, expire, idle, freq, off, vt.big_kind, count)
        yield from self._big_run()

    def _go_big_string(self, key, expire, idle, freq, off, ds, slen, db, ulen=-1):
        """A string whose stored bytes (``slen`` from ``ds``) exceed the threshold: stream it
        in pieces (kind "string"); raw (``ulen`` -1) or LZF (``ulen`` = its output length)."""
        self._pend = None
        self._carry = None
        if ulen < 0:
            big = _Big(_str_piece, -(-slen // _STR_PIECE), _RawPieces(slen), key, _STR_PART)
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
        items = big.items
        rem = 0
        try:
            while True:
                reader, extra, rem = big.reader, big.extra, big.rem
                sub = big.sub
                part = big.part or self._part
                Part = BigKeyPart if sub is None else BigElementPart
                try:
                    while rem:
                        p = reader(buf, p, items, extra)
                        rem -= 1
                        if len(items) >= part:
                            big.rem = rem
                            self._pos = p
                            while len(items) >= part:
                                chunk = items[:part]
                                del items[:part]
                                yield Part(chunk)
                except _GoElem as g:
                    yield from self._elem_start(big, g, p, rem)
                    p = self._pos
                    continue
                except _GoNode as g:  # a huge quicklist node: parse it piecewise
                    big.node = (reader, rem, extra, big.then, big.part)
                    big.reader, big.rem, big.extra, big.then = _node_read, -1, g.node, None
                    p = g.node.start
                    continue
                except _SubEnd:
                    pass
                big.rem = 0
                if sub is None and big.node is not None:  # the end of a huge quicklist node
                    self._pos = p
                    reader, rem, extra, big.then, big.part = big.node
                    big.reader, big.rem, big.extra = reader, rem - 1, extra
                    big.node = None
                    continue
                if sub is not None:  # the end of a streamed element string
                    self._pos = p
                    if items:
                        chunk = items[:]
                        items.clear()
                        yield BigElementPart(chunk)
                    big.reader, big.rem, big.extra, big.then, big.part = sub
                    big.sub = None
                    yield BigElementEnd()
                    continue
                if big.then is None:
                    break
                p = big.then(buf, p, big)
                if len(items) >= (big.part or self._part):
                    # what a `then` hook added (it may also have lowered the part size: the
                    # items before it stay together, fewer than the previous part size)
                    self._pos = p
                    chunk = items[:]
                    items.clear()
                    yield BigKeyPart(chunk)
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

    def _elem_start(self, big: _Big, g: _GoElem, p: int, rem: int) -> Iterator[Record]:
        """An element reader met a string over the threshold at ``p``: the items before it go
        out, then it is streamed (``big.sub`` keeps the aggregate's reader meanwhile)."""
        items = big.items
        big.rem = rem
        if items:  # (state unchanged: the reader raises _GoElem again if resumed here)
            self._pos = p
            chunk = items[:]
            items.clear()
            yield BigKeyPart(chunk)
        ctx = big.extra
        big.sub = (big.reader, rem, ctx, big.then, big.part)
        if g.head is None:  # an entry string of a huge quicklist node (ctx: its _Node)
            ctx.go, ctx.after = False, True
            big.reader, big.rem, big.then, big.part = _node_piece, -1, None, _STR_PART
            self._pos = p
            yield BigElementStart(g.role, ctx.dleft)
            return
        ctx.stage, ctx.held = g.stage, g.held
        ds, slen, ulen = g.head
        if ulen < 0:
            big.reader, big.rem, big.extra = _str_piece, -(-slen // _STR_PIECE), _RawPieces(slen)
        else:
            big.reader, big.rem = _lzf_piece, -(-slen // _LZF_SLICE)
            big.extra = _LzfPieces(slen, ulen)
        big.then = None
        big.part = _STR_PART
        self._pos = ds
        yield BigElementStart(g.role, slen if ulen < 0 else ulen)
