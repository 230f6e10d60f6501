"""The RDB value types (protocols.md §0, §1.6): one registry keyed by (magic, version, type
byte), read by the parser, the value decoder, the DUMP payload helpers and the entry
converter.

Redis and Valkey diverge after RDB 11: type 22 is Redis 7.4's hash with field TTLs under
``REDIS`` magic and Valkey's HASH_2 under ``VALKEY`` magic; 23 is a Redis hash listpack with
TTLs or Valkey's PATH_HASH. So a type byte means nothing without its magic, and a type exists
from the RDB version that introduced it on.

Each type has a ``layout``: how its value bytes are laid out (one per decoder / walker). Types
whose layout is known but that cannot be parsed have an ``error`` instead.
"""

from __future__ import annotations

from functools import cache

__all__ = [
    "TypeSpec",
    "NEWEST",
    "value_types",
    "type_spec",
    "STREAM_TYPES",
    "opcodes",
]

# layouts
STRING = "string"  # 0: one rdb-string
LIST = "list"  # 1: count, strings
SET = "set"  # 2: count, strings
ZSET = "zset"  # 3: count, (member, string-encoded double)
HASH = "hash"  # 4: count, (field, value)
ZSET_2 = "zset_2"  # 5: count, (member, binary double)
MODULE = "module"  # 7: module id, annotated module values
HASH_ZIPMAP = "hash_zipmap"  # 9..13, 16, 17, 20: one blob string
LIST_ZIPLIST = "list_ziplist"
SET_INTSET = "set_intset"
ZSET_ZIPLIST = "zset_ziplist"
HASH_ZIPLIST = "hash_ziplist"
HASH_LISTPACK = "hash_listpack"
ZSET_LISTPACK = "zset_listpack"
SET_LISTPACK = "set_listpack"
LIST_QUICKLIST = "list_quicklist"  # 14: count, ziplist blobs
LIST_QUICKLIST_2 = "list_quicklist_2"  # 18: count, (container, blob)
STREAM = "stream"  # 15, 19, 21, 26, 27: nodes, then a tail that grows with the type
HASH_TTL = "hash_ttl"  # Redis 22: count, (len-enc ttl, field, value)
HASH_TTL_MIN = "hash_ttl_min"  # Redis 24: 8-byte min expire, then as 22 (relative ttls)
HASH_LISTPACK_TTL = "hash_listpack_ttl"  # Redis 23: listpack of (field, value, ttl)
HASH_LISTPACK_TTL_MIN = "hash_listpack_ttl_min"  # Redis 25: 8-byte min expire, then as 23
HASH_2 = "hash_2"  # Valkey 22: count, (field, value, 8-byte LE absolute ms)
UNSUPPORTED = "unsupported"  # known, not parseable: see ``error``

# A version above every real one: "any version of this magic" (DUMP payloads of a known
# magic, decoders that are not told the file's version).
NEWEST = 1 << 16


class TypeSpec:
    """One value type of one magic: its number, name, logical family (string, list, set,
    zset, hash, stream, module), layout, the first RDB version holding it, whether its value
    bytes are the same in every version that knows it (so a payload may be re-stamped with a
    newer version: see dump.restore_version), and the error for a type that is not parsed."""

    __slots__ = ("code", "name", "family", "layout", "since", "portable", "error")

    def __init__(self, code: int, name: str, family: str, layout: str, since: int,
                 portable: bool = True, error: str = "") -> None:  # fmt: skip
        self.code = code
        self.name = name
        self.family = family
        self.layout = layout
        self.since = since
        self.portable = portable
        self.error = error

    def __repr__(self) -> str:
        return f"TypeSpec({self.code}, {self.name!r}, since RDB {self.since})"


_S = TypeSpec

# Types 0..21: the same under both magics (Redis up to RDB 11, which Valkey 7.2..8.1 write).
_COMMON = (
    _S(0, "STRING", "string", STRING, 1),
    _S(1, "LIST", "list", LIST, 1),
    _S(2, "SET", "set", SET, 1),
    _S(3, "ZSET", "zset", ZSET, 1),
    _S(4, "HASH", "hash", HASH, 1),
    _S(5, "ZSET_2", "zset", ZSET_2, 8),
    _S(6, "MODULE_PRE_GA", "module", UNSUPPORTED, 8, False,
       "module value of pre-GA type 6 cannot be parsed without the module"),  # fmt: skip
    _S(7, "MODULE_2", "module", MODULE, 8),
    _S(9, "HASH_ZIPMAP", "hash", HASH_ZIPMAP, 2),
    _S(10, "LIST_ZIPLIST", "list", LIST_ZIPLIST, 2),
    _S(11, "SET_INTSET", "set", SET_INTSET, 2),
    _S(12, "ZSET_ZIPLIST", "zset", ZSET_ZIPLIST, 2),
    _S(13, "HASH_ZIPLIST", "hash", HASH_ZIPLIST, 4),
    _S(14, "LIST_QUICKLIST", "list", LIST_QUICKLIST, 7),
    _S(15, "STREAM_LISTPACKS", "stream", STREAM, 9),
    _S(16, "HASH_LISTPACK", "hash", HASH_LISTPACK, 10),
    _S(17, "ZSET_LISTPACK", "zset", ZSET_LISTPACK, 10),
    _S(18, "LIST_QUICKLIST_2", "list", LIST_QUICKLIST_2, 10),
    _S(19, "STREAM_LISTPACKS_2", "stream", STREAM, 10),
    _S(20, "SET_LISTPACK", "set", SET_LISTPACK, 11),
    _S(21, "STREAM_LISTPACKS_3", "stream", STREAM, 11),
)

# REDIS magic after RDB 11. Types 22..25 hold field TTLs: their bytes depend on the engine.
_REDIS = (
    _S(22, "HASH_METADATA_PRE_GA", "hash", HASH_TTL, 12, False),
    _S(23, "HASH_LISTPACK_EX_PRE_GA", "hash", HASH_LISTPACK_TTL, 12, False),
    _S(24, "HASH_METADATA", "hash", HASH_TTL_MIN, 12, False),
    _S(25, "HASH_LISTPACK_EX", "hash", HASH_LISTPACK_TTL_MIN, 12, False),
    _S(26, "STREAM_LISTPACKS_4", "stream", STREAM, 13),  # + IDMP section (Redis 8.6)
    _S(27, "STREAM_LISTPACKS_5", "stream", STREAM, 14),  # + groups' NACK zones (Redis 8.8)
) + tuple(
    # newer Redis types whose layouts are not implemented: a clear stop at the key
    _S(t, name, family, UNSUPPORTED, since, False,
       f"value type {t} ({what}, RDB {since}+) is not supported")  # fmt: skip
    for t, name, family, since, what in (
        (28, "ARRAY", "array", 14, "Redis array"),
        (29, "HASH_TMPL_LP", "hash", 15, "Redis hash template HASH_TMPL_LP"),
        (30, "HASH_TMPL_LP_REF", "hash", 15, "Redis hash template HASH_TMPL_LP_REF"),
        (31, "HASH_TMPL_ARRAY", "hash", 15, "Redis hash template HASH_TMPL_ARRAY"),
        (32, "HASH_TMPL_ARRAY_REF", "hash", 15, "Redis hash template HASH_TMPL_ARRAY_REF"),
    )
)

# VALKEY magic (RDB 80 on).
_VALKEY = (
    _S(22, "HASH_2", "hash", HASH_2, 80, False),
    _S(23, "PATH_HASH", "hash", UNSUPPORTED, 81, False,
       "value type 23 (Valkey 9.2 PATH_HASH, RDB 81) is not supported"),  # fmt: skip
)

# every stream type byte of either magic
STREAM_TYPES = frozenset(s.code for s in _COMMON + _REDIS + _VALKEY if s.family == "stream")


@cache
def value_types(valkey: bool, version: int = NEWEST) -> tuple[TypeSpec | None, ...]:
    """The value types of a file or payload of the given magic (``valkey``: VALKEY magic)
    and RDB version, indexed by type byte (256 entries; None: no value type)."""
    tab: list[TypeSpec | None] = [None] * 256
    for s in _COMMON + (_VALKEY if valkey else _REDIS):
        if s.code > 21 and s.since > version:
            continue  # (types 0..21 are accepted at any version, as the servers do)
        tab[s.code] = s
    return tuple(tab)


def type_spec(valkey: bool, version: int, t: int) -> TypeSpec | None:
    """The value type ``t`` of (magic, version), or None."""
    return value_types(valkey, version)[t]


# Opcodes (type bytes >= 242 that are not keys; protocols.md §1.4): (byte, name, magic
# (None: both), first RDB version). 243 is Redis KEY_META or Valkey SLOT_IMPORT.
_OPCODES = (
    (0xFF, "EOF", None, 1),
    (0xFE, "SELECTDB", None, 1),
    (0xFD, "EXPIRETIME", None, 1),
    (0xFC, "EXPIRETIME_MS", None, 3),
    (0xFB, "RESIZEDB", None, 7),
    (0xFA, "AUX", None, 7),
    (0xF9, "FREQ", None, 9),
    (0xF8, "IDLE", None, 9),
    (0xF7, "MODULE_AUX", None, 9),
    (0xF6, "FUNCTION_PRE_GA", None, 10),
    (0xF5, "FUNCTION2", None, 10),
    (0xF4, "SLOT_INFO", "REDIS", 12),
    (0xF4, "SLOT_INFO", "VALKEY", 80),
    (0xF3, "KEY_META", "REDIS", 13),
    (0xF3, "SLOT_IMPORT", "VALKEY", 80),
    (0xF2, "UPDATE", "VALKEY", 81),  # not parsed: an unknown opcode to the parser
)


@cache
def opcodes(valkey: bool, version: int = NEWEST) -> tuple[str | None, ...]:
    """Opcode names of (magic, version), indexed by byte (256 entries; None: no opcode).
    Opcodes common to both magics are accepted at any version, as the parser always did."""
    magic = "VALKEY" if valkey else "REDIS"
    tab: list[str | None] = [None] * 256
    for b, name, m, since in _OPCODES:
        if m is None or (m == magic and since <= version):
            tab[b] = name
    return tuple(tab)
