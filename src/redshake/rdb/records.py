"""Records produced by the streaming RDB parser (:mod:`redshake.rdb.parser`).

Plain ``__slots__`` classes: cheap to build in the hot loop, easy to compare in tests.
"""

from __future__ import annotations

__all__ = [
    "Aux",
    "SelectDb",
    "ResizeDb",
    "SlotInfo",
    "SlotImport",
    "Function",
    "ModuleAux",
    "KeyValue",
    "BigKeyStart",
    "BigKeyPart",
    "BigKeyEnd",
    "BigElementStart",
    "BigElementPart",
    "BigElementEnd",
    "BIG_ELEMENT",
    "Eof",
    "Record",
]


class _Rec:
    __slots__ = ()

    def _fields(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._fields()))

    def __repr__(self) -> str:
        parts = []
        for name in self.__slots__:
            v = getattr(self, name)
            if isinstance(v, bytes | bytearray) and len(v) > 40:
                v = bytes(v[:37]) + b"..."
            elif isinstance(v, list) and len(v) > 4:
                v = f"[{len(v)} items]"
            parts.append(f"{name}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class Aux(_Rec):
    """AUX field (opcode 250)."""

    __slots__ = ("key", "value")

    def __init__(self, key: bytes, value: bytes) -> None:
        self.key = key
        self.value = value


class SelectDb(_Rec):
    """SELECTDB (opcode 254): the following keys belong to ``db``."""

    __slots__ = ("db",)

    def __init__(self, db: int) -> None:
        self.db = db


class ResizeDb(_Rec):
    """RESIZEDB (opcode 251): sizing hint for the current db."""

    __slots__ = ("db_size", "expires_size")

    def __init__(self, db_size: int, expires_size: int) -> None:
        self.db_size = db_size
        self.expires_size = expires_size


class SlotInfo(_Rec):
    """SLOT_INFO (opcode 244, Redis 7.4+ cluster RDB): sizing hint for one slot."""

    __slots__ = ("slot", "size", "expires_size")

    def __init__(self, slot: int, size: int, expires_size: int) -> None:
        self.slot = slot
        self.size = size
        self.expires_size = expires_size


class SlotImport(_Rec):
    """SLOT_IMPORT (opcode 243 under VALKEY magic, Valkey 9+ cluster RDB): an atomic slot
    migration importing ``ranges`` ([(first, last)] slots) into this node was in progress
    when the snapshot was taken; keys of those slots are in the file but the node does not
    own them yet (Valkey deletes them if the import fails)."""

    __slots__ = ("job", "ranges")

    def __init__(self, job: bytes, ranges: list[tuple[int, int]]) -> None:
        self.job = job
        self.ranges = ranges


class Function(_Rec):
    """A function library: source code including its ``#!<engine> name=<lib>`` shebang,
    ready for ``FUNCTION LOAD``. From FUNCTION2 (245) or, with a synthesized shebang, from
    the Redis 7.0 release-candidate FUNCTION opcode (246)."""

    __slots__ = ("code",)

    def __init__(self, code: bytes) -> None:
        self.code = code


class ModuleAux(_Rec):
    """MODULE_AUX (opcode 247). ``raw`` holds the annotated module value stream that follows
    the ``when`` field, up to and including its terminating EOF opcode (0)."""

    __slots__ = ("module_id", "module_name", "encver", "when", "raw")

    def __init__(
        self, module_id: int, module_name: str, encver: int, when: int, raw: bytes
    ) -> None:
        self.module_id = module_id
        self.module_name = module_name
        self.encver = encver
        self.when = when
        self.raw = raw


class KeyValue(_Rec):
    """One key with its value bytes exactly as stored in the file.

    ``raw`` runs from right after the key to the end of the value (no type byte, no key).
    ``expire_ms``/``idle``/``freq`` are -1 when absent. ``offset`` is the absolute file
    offset of the record's first byte (its first EXPIRE/IDLE/FREQ opcode or its type byte).
    ``empty`` marks empty aggregates that the caller must skip (as Redis does).
    """

    __slots__ = ("db", "key", "type", "raw", "expire_ms", "idle", "freq", "offset", "empty")

    def __init__(
        self,
        db: int,
        key: bytes,
        type: int,
        raw: bytes,
        expire_ms: int = -1,
        idle: int = -1,
        freq: int = -1,
        offset: int = 0,
        empty: bool = False,
    ) -> None:
        self.db = db
        self.key = key
        self.type = type
        self.raw = raw
        self.expire_ms = expire_ms
        self.idle = idle
        self.freq = freq
        self.offset = offset
        self.empty = empty


class BigKeyStart(_Rec):
    """Start of a value too big to buffer; its elements follow in :class:`BigKeyPart` records.

    ``kind`` is ``'list'``, ``'set'``, ``'zset'``, ``'hash'``, ``'stream'`` or ``'string'`` (a
    long raw or LZF string: parts hold consecutive byte pieces of its content); ``count`` the
    declared number of elements (for a string: its length), or -1 when the format does not
    say (quicklists, streams).
    """

    __slots__ = ("db", "key", "type", "expire_ms", "idle", "freq", "offset", "kind", "count")

    def __init__(
        self,
        db: int,
        key: bytes,
        type: int,
        expire_ms: int,
        idle: int,
        freq: int,
        offset: int,
        kind: str,
        count: int,
    ) -> None:
        self.db = db
        self.key = key
        self.type = type
        self.expire_ms = expire_ms
        self.idle = idle
        self.freq = freq
        self.offset = offset
        self.kind = kind
        self.count = count


class BigKeyPart(_Rec):
    """Up to ``part_items`` elements of a big value.

    list/set: ``[bytes]``; zset: ``[(member, score_text)]``; hash: ``[(field, value)]`` or, for
    hashes with field TTLs, ``[(field, value, expire_ms_or_-1)]``; string: ``[bytes]`` pieces;
    stream: entries ``(id, [field, value, ...])``, then once a ``StreamValue`` with the
    metadata (no entries, no groups), then per consumer group a ``StreamGroupHead`` and its
    consumers' ``StreamConsumerPart`` items (pending entries in chunks; see
    :func:`~redshake.rdb.values.stream_group_parts`), one item per part.

    In a list, set, zset or hash of the element-wise types (1 to 5), a string that was itself
    streamed (see :class:`BigElementStart`) is the placeholder :data:`BIG_ELEMENT` in its item.
    """

    __slots__ = ("items",)

    def __init__(self, items: list) -> None:
        self.items = items


class BigKeyEnd(_Rec):
    """End of a big value."""

    __slots__ = ()


class BigElementStart(_Rec):
    """Start of one string of a big value's element that is itself too big to buffer (a
    300 MB hash value, set member, ...): its bytes follow in :class:`BigElementPart` records
    (pieces of at most 1 MiB), then :class:`BigElementEnd`. It comes between the
    :class:`BigKeyPart` records of its key, after those holding the items before it; the item
    it belongs to comes in a later part with :data:`BIG_ELEMENT` in its place (a hash
    item may hold two). ``role`` is ``'element'`` (list), ``'member'`` (set, zset),
    ``'field'`` or ``'value'`` (hash); ``length`` its (uncompressed) length."""

    __slots__ = ("role", "length")

    def __init__(self, role: str, length: int) -> None:
        self.role = role
        self.length = length


class BigElementPart(_Rec):
    """Consecutive byte pieces of the string a :class:`BigElementStart` announced."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: list) -> None:
        self.pieces = pieces


class BigElementEnd(_Rec):
    """End of a streamed element string."""

    __slots__ = ()


class _BigElement:
    __slots__ = ()

    def __repr__(self) -> str:
        return "BIG_ELEMENT"

    def __reduce__(self) -> str:
        return "BIG_ELEMENT"


BIG_ELEMENT = _BigElement()
"""Placeholder, in a :class:`BigKeyPart` item, for a string that was streamed as
:class:`BigElementStart` / :class:`BigElementPart` / :class:`BigElementEnd` before it."""


class Eof(_Rec):
    """EOF opcode (255) and the stored checksum. ``verified`` is False when the file has no
    checksum (version < 5) or stores 0 (checksum disabled)."""

    __slots__ = ("checksum", "verified")

    def __init__(self, checksum: int, verified: bool) -> None:
        self.checksum = checksum
        self.verified = verified


Record = (
    Aux
    | SelectDb
    | ResizeDb
    | SlotInfo
    | SlotImport
    | Function
    | ModuleAux
    | KeyValue
    | BigKeyStart
    | BigKeyPart
    | BigKeyEnd
    | BigElementStart
    | BigElementPart
    | BigElementEnd
    | Eof
)
