"""Module values (RDB type 7, protocols.md §1.10).

A module value is a 64-bit module type id (9-character name + 10-bit encoding version)
followed by an annotated stream of ``(opcode, payload)`` items terminated by opcode 0.
Because every item is annotated, any module value can be walked (and copied verbatim in a
DUMP payload) without the module. Decoders for a few well-known modules turn the walked
items into commands, the way RedisShake does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .primitives import RdbError, Truncated, read_length, read_string
from .values import ModuleValue

__all__ = [
    "MODULE_CHARSET",
    "module_id_to_name",
    "module_name_to_id",
    "walk_module_items",
    "decode_module_value",
    "decode_module_value_at",
    "module_to_commands",
    "bloom_chain",
    "bloom_header",
    "MODULE_OPCODE_EOF",
    "MODULE_OPCODE_SINT",
    "MODULE_OPCODE_UINT",
    "MODULE_OPCODE_FLOAT",
    "MODULE_OPCODE_DOUBLE",
    "MODULE_OPCODE_STRING",
]

MODULE_CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

MODULE_OPCODE_EOF = 0
MODULE_OPCODE_SINT = 1
MODULE_OPCODE_UINT = 2
MODULE_OPCODE_FLOAT = 3
MODULE_OPCODE_DOUBLE = 4
MODULE_OPCODE_STRING = 5

_F32 = struct.Struct("<f").unpack_from
_F64 = struct.Struct("<d").unpack_from


def module_id_to_name(module_id: int) -> tuple[str, int]:
    """Split a module type id into (9-character name, encoding version)."""
    encver = module_id & 1023
    name = "".join(MODULE_CHARSET[(module_id >> (64 - 6 * (i + 1))) & 63] for i in range(9))
    return name, encver


def module_name_to_id(name: str, encver: int) -> int:
    """Inverse of :func:`module_id_to_name` (used for fixtures and payload building)."""
    if len(name) != 9:
        raise ValueError("module type names have exactly 9 characters")
    if not 0 <= encver < 1024:
        raise ValueError("encver must fit in 10 bits")
    v = 0
    for ch in name:
        idx = MODULE_CHARSET.find(ch)
        if idx < 0:
            raise ValueError(f"invalid module name character {ch!r}")
        v = (v << 6) | idx
    return (v << 10) | encver


def walk_module_items(raw: bytes, pos: int = 0) -> tuple[list[tuple[int, object]], int]:
    """Walk an annotated module value stream starting at ``pos`` up to and including the
    EOF opcode. Returns ([(opcode, value)], position after EOF). SINT values are signed
    ints, UINT unsigned ints, FLOAT/DOUBLE floats, STRING bytes."""
    items: list[tuple[int, object]] = []
    try:
        while True:
            op, pos = read_length(raw, pos)
            if op == MODULE_OPCODE_EOF:
                return items, pos
            if op == MODULE_OPCODE_SINT or op == MODULE_OPCODE_UINT:
                v, pos = read_length(raw, pos)
                if op == MODULE_OPCODE_SINT and v >= 1 << 63:
                    v -= 1 << 64
                items.append((op, v))
            elif op == MODULE_OPCODE_FLOAT:
                if pos + 4 > len(raw):
                    raise Truncated
                items.append((op, _F32(raw, pos)[0]))
                pos += 4
            elif op == MODULE_OPCODE_DOUBLE:
                if pos + 8 > len(raw):
                    raise Truncated
                items.append((op, _F64(raw, pos)[0]))
                pos += 8
            elif op == MODULE_OPCODE_STRING:
                s, pos = read_string(raw, pos)
                items.append((op, s))
            else:
                raise RdbError(f"unknown module value opcode {op}")
    except Truncated:
        raise RdbError("module value is truncated (no EOF opcode)") from None


def decode_module_value_at(buf: bytes, start: int = 0) -> tuple[ModuleValue, int]:
    """Decode a type-7 value starting at ``buf[start]``: module id, then the annotated
    items up to the EOF opcode. Returns (value, end). ``raw`` of the result holds the
    value bytes (module id included); ``decoded`` the walked item list."""
    module_id, pos = read_length(buf, start)
    name, encver = module_id_to_name(module_id)
    items, pos = walk_module_items(buf, pos)
    return ModuleValue(name, encver, bytes(buf[start:pos]), items), pos


def decode_module_value(raw: bytes) -> ModuleValue:
    """Decode a complete type-7 value (``raw`` must end exactly after the EOF opcode)."""
    try:
        value, pos = decode_module_value_at(raw, 0)
    except Truncated:
        raise RdbError("module value is truncated") from None
    if pos != len(raw):
        raise RdbError(f"{len(raw) - pos} unexpected bytes after module value")
    return value


def _expect(items: list[tuple[int, object]], i: int, op: int, name: str) -> object:
    if i >= len(items):
        raise RdbError(f"{name} module value ends early")
    got_op, v = items[i]
    if got_op != op:
        raise RdbError(f"{name} module value: item {i} has opcode {got_op}, expected {op}")
    return v


def _uint(items: list[tuple[int, object]], i: int, name: str) -> int:
    v = _expect(items, i, MODULE_OPCODE_UINT, name)
    assert isinstance(v, int)
    return v


def _str(items: list[tuple[int, object]], i: int, name: str) -> bytes:
    v = _expect(items, i, MODULE_OPCODE_STRING, name)
    assert isinstance(v, bytes)
    return v


def _dbl(items: list[tuple[int, object]], i: int, name: str) -> float:
    v = _expect(items, i, MODULE_OPCODE_DOUBLE, name)
    assert isinstance(v, float)
    return v


def _items(value: ModuleValue) -> list[tuple[int, object]]:
    items = value.decoded
    if not isinstance(items, list):
        items = decode_module_value(value.raw).decoded
    assert isinstance(items, list)
    return items


def _done(items: list, i: int, name: str) -> None:
    if i != len(items):
        raise RdbError(f"{name} module value has {len(items) - i} unexpected trailing items")


def _tairstring(key: bytes, value: ModuleValue, **_: object) -> list[list[bytes]]:
    """TairString ('exstrtype'): UINT version, UINT flags, STRING value."""
    it = _items(value)
    ver = _uint(it, 0, "TairString")
    flags = _uint(it, 1, "TairString")
    data = _str(it, 2, "TairString")
    _done(it, 3, "TairString")
    return [[b"EXSET", key, data, b"ABS", b"%d" % ver, b"FLAGS", b"%d" % flags]]


def _tairhash(key: bytes, value: ModuleValue, **_: object) -> list[list[bytes]]:
    """TairHash ('tairhash-'): UINT field count, STRING key name, then per field STRING
    field, UINT version, UINT absolute expire ms (0 = none), STRING value. The key of the
    record is used (the embedded name can be stale after a RENAME)."""
    it = _items(value)
    n = _uint(it, 0, "TairHash")
    _str(it, 1, "TairHash")
    out = []
    i = 2
    for _ in range(n):
        field = _str(it, i, "TairHash")
        ver = _uint(it, i + 1, "TairHash")
        exp = _uint(it, i + 2, "TairHash")
        val = _str(it, i + 3, "TairHash")
        i += 4
        if exp:
            out.append([b"EXHSET", key, field, val, b"ABS", b"%d" % ver, b"PXAT", b"%d" % exp])
        else:
            out.append([b"EXHSET", key, field, val])
    _done(it, i, "TairHash")
    return out


def _tairzset(key: bytes, value: ModuleValue, **_: object) -> list[list[bytes]]:
    """TairZset ('tairzset_'): UINT length, UINT scores per member, then per member
    STRING member and that many DOUBLE scores → EXZADD key s1#s2#... member."""
    from .values import format_score

    it = _items(value)
    n = _uint(it, 0, "TairZset")
    k = _uint(it, 1, "TairZset")
    out = []
    i = 2
    for _ in range(n):
        member = _str(it, i, "TairZset")
        scores = [format_score(_dbl(it, i + 1 + j, "TairZset")) for j in range(k)]
        i += 1 + k
        out.append([b"EXZADD", key, b"#".join(scores), member])
    _done(it, i, "TairZset")
    return out


# RedisBloom scalable bloom filter ('MBbloom--'), as written by its rdb_save and read back
# by BF.LOADCHUNK (the SCANDUMP format).
BF_MIN_OPTIONS_ENC = 2
BF_MIN_GROWTH_ENC = 4
BF_MAX_CHUNK = 10 * 1024 * 1024


def bloom_chain(value: ModuleValue) -> dict:
    """Decode a 'MBbloom--' value into its chain header and filter links."""
    it = _items(value)
    name = "RedisBloom"
    enc = value.encver
    i = 0
    size = _uint(it, i, name)
    nfilters = _uint(it, i + 1, name)
    i += 2
    options = 0
    growth = 2
    if enc >= BF_MIN_OPTIONS_ENC:
        options = _uint(it, i, name)
        i += 1
    if enc >= BF_MIN_GROWTH_ENC:
        growth = _uint(it, i, name)
        i += 1
    links = []
    for _ in range(nfilters):
        entries = _uint(it, i, name)
        err = _dbl(it, i + 1, name)
        hashes = _uint(it, i + 2, name)
        bpe = _dbl(it, i + 3, name)
        i += 4
        if enc == 0:
            bits = int(entries * bpe)
            n2 = 0
        else:
            bits = _uint(it, i, name)
            n2 = _uint(it, i + 1, name)
            i += 2
        data = _str(it, i, name)
        lsize = _uint(it, i + 1, name)
        i += 2
        links.append(
            {"entries": entries, "err": err, "hashes": hashes, "bpe": bpe, "bits": bits,
             "n2": n2, "data": data, "size": lsize}
        )  # fmt: skip
    _done(it, i, name)
    return {
        "size": size,
        "nfilters": nfilters,
        "options": options,
        "growth": growth,
        "links": links,
    }


def bloom_header(chain: dict, with_growth: bool, big_entries: bool) -> bytes:
    """The BF.LOADCHUNK iterator-1 header: packed little-endian chain header, then one
    packed record per link (entries as u64 + n2 byte when ``big_entries``, else u32 entries
    followed by the n2 byte)."""
    out = [struct.pack("<QII", chain["size"], chain["nfilters"], chain["options"])]
    if with_growth:
        out.append(struct.pack("<I", chain["growth"]))
    for ln in chain["links"]:
        out.append(
            struct.pack(
                "<QQQddI",
                len(ln["data"]),
                ln["bits"],
                ln["size"],
                ln["err"],
                ln["bpe"],
                ln["hashes"],
            )
        )
        if big_entries:
            out.append(struct.pack("<QB", ln["entries"], ln["n2"] & 0xFF))
        else:
            out.append(struct.pack("<IB", ln["entries"] & 0xFFFFFFFF, ln["n2"] & 0xFF))
    return b"".join(out)


def _bloom(
    key: bytes, value: ModuleValue, *, mbbloom_version: int = 0, **_: object
) -> list[list[bytes]]:
    chain = bloom_chain(value)
    if mbbloom_version > 20200:
        header = bloom_header(chain, True, True)
    elif mbbloom_version == 20200:
        header = bloom_header(chain, True, False)
    elif mbbloom_version >= 10000 or value.encver < BF_MIN_GROWTH_ENC:
        header = bloom_header(chain, False, False)
    else:
        header = bloom_header(chain, True, True)
    cmds = [[b"BF.LOADCHUNK", key, b"1", header]]
    pos = 1  # iterator = 1 + bytes of filter data already sent
    for ln in chain["links"]:
        data = ln["data"]
        for off in range(0, len(data), BF_MAX_CHUNK):
            part = data[off : off + BF_MAX_CHUNK]
            pos += len(part)
            cmds.append([b"BF.LOADCHUNK", key, b"%d" % pos, part])
    return cmds


_CONVERTERS: dict[str, Callable[..., list[list[bytes]]]] = {
    "exstrtype": _tairstring,
    "tairhash-": _tairhash,
    "tairzset_": _tairzset,
    "MBbloom--": _bloom,
}


def module_to_commands(
    key: bytes, value: ModuleValue, *, mbbloom_version: int = 0
) -> list[list[bytes]]:
    """Commands that recreate a module key on a target with the same module loaded
    (TairString, TairHash, TairZset, RedisBloom bloom filters). ``mbbloom_version`` is the
    target's RedisBloom version as major*10000+minor*100+patch (0 = follow the source
    encoding), which selects the BF.LOADCHUNK header layout. Raises RdbError for other
    modules (copy those with RESTORE)."""
    conv = _CONVERTERS.get(value.module_name)
    if conv is None:
        raise RdbError(
            f"module type {value.module_name!r} (encver {value.encver}) cannot be rewritten "
            "into commands; copy it with DUMP/RESTORE to a target that has the module",
            key=key,
        )
    return conv(key, value, mbbloom_version=mbbloom_version)
