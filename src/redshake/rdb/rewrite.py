"""Rewrite decoded values into plain commands that rebuild a key on any target.

Used when RESTORE is impossible (the target's RDB version is older than the source's, the
payload is larger than the target's ``proto-max-bulk-len``, or the user asked for
commands). Every aggregate is written with many elements per command (bounded by
``max_items`` and ``max_bytes``), so neither a huge value nor a huge command is ever
needed. The caller is responsible for deleting an existing key first.

Target capabilities are derived from ``target_version`` (the server's own version number)
and ``target_valkey``: Valkey 7.2+ implements everything up to Redis 7.2, but not the
Redis 7.4 hash-field expiration commands (those arrive with Valkey 9.0).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from .values import (
    HashValue,
    ListValue,
    ModuleValue,
    SetValue,
    StreamConsumerPart,
    StreamDropped,
    StreamGroup,
    StreamGroupHead,
    StreamValue,
    StringValue,
    Value,
    ZSetValue,
    stream_group_parts,
)

__all__ = [
    "RewriteError",
    "value_to_commands",
    "items_to_commands",
    "stream_to_commands",
    "stream_part_commands",
    "supports_field_ttl",
]

Version = tuple[int, int, int]


class RewriteError(Exception):
    """The value cannot be rebuilt faithfully on the target with commands."""

    def __init__(self, message: str, key: bytes | None = None) -> None:
        self.key = key
        super().__init__(f"{message} (key {key!r})" if key is not None else message)


def supports_field_ttl(version: Version, valkey: bool) -> bool:
    """HPEXPIREAT exists on Redis >= 7.4 and Valkey >= 9.0."""
    return version >= (9, 0, 0) if valkey else version >= (7, 4, 0)


def _ms(v: int) -> bytes:
    return b"%d" % v


def _chunks(
    cmd: list[bytes], elems: Iterable, width: int, max_items: int, max_bytes: int
) -> Iterator[list[bytes]]:
    """Yield ``cmd + flattened elements`` with at most max_items elements / max_bytes bytes.
    ``width`` is the number of argv items per element (1 for bytes, 2 for tuples)."""
    max_items = max(1, max_items)
    argv = list(cmd)
    n = 0
    size = 0
    if width == 1:
        for e in elems:
            ln = len(e)
            if n and (n >= max_items or size + ln > max_bytes):
                yield argv
                argv = list(cmd)
                n = size = 0
            argv.append(e)
            n += 1
            size += ln
    else:
        for a, b in elems:
            ln = len(a) + len(b)
            if n and (n >= max_items or size + ln > max_bytes):
                yield argv
                argv = list(cmd)
                n = size = 0
            argv.append(a)
            argv.append(b)
            n += 1
            size += ln
    if n:
        yield argv


def _field_ttl_commands(
    key: bytes, fexp: Iterable[tuple[bytes, int]], max_items: int
) -> Iterator[list[bytes]]:
    """HPEXPIREAT key ms FIELDS n f... grouping fields that share the same expire time."""
    by_ms: dict[int, list[bytes]] = {}
    for f, ms in fexp:
        by_ms.setdefault(ms, []).append(f)
    step = max(1, max_items)
    for ms, fields in by_ms.items():
        for i in range(0, len(fields), step):
            part = fields[i : i + step]
            yield [b"HPEXPIREAT", key, _ms(ms), b"FIELDS", b"%d" % len(part), *part]


def require_field_ttl(key: bytes, version: Version, valkey: bool) -> None:
    if not supports_field_ttl(version, valkey):
        name = "Valkey" if valkey else "Redis"
        raise RewriteError(
            "hash has fields with a TTL but the target "
            f"({name} {'.'.join(map(str, version))}) has no HPEXPIREAT "
            "(needs Redis >= 7.4 or Valkey >= 9.0); refusing to drop the field TTLs: set "
            '[advanced] unsupported_field_ttl = "drop" (copy the hash without them) or '
            '"key_ttl" (expire the whole key at its earliest field TTL)',
            key,
        )


def items_to_commands(
    key: bytes,
    kind: str,
    items: list,
    *,
    max_items: int = 512,
    max_bytes: int = 1 << 20,
    target_version: Version = (7, 0, 0),
    target_valkey: bool = False,
) -> Iterator[list[bytes]]:
    """Commands that add ``items`` (one part of a value) to ``key``.

    kind 'list' / 'set': items are bytes; 'zset': (member, score); 'hash': (field, value)
    or (field, value, expire_ms or -1). Field TTL commands are emitted after each HSET of
    this part.
    """
    if kind == "list":
        yield from _chunks([b"RPUSH", key], items, 1, max_items, max_bytes)
    elif kind == "set":
        yield from _chunks([b"SADD", key], items, 1, max_items, max_bytes)
    elif kind == "zset":
        yield from _chunks([b"ZADD", key], ((s, m) for m, s in items), 2, max_items, max_bytes)
    elif kind == "hash":
        cmd = b"HSET" if target_version >= (4, 0, 0) else b"HMSET"
        if items and len(items[0]) == 3:
            fexp = [(it[0], it[2]) for it in items if it[2] is not None and it[2] >= 0]
            if fexp:
                require_field_ttl(key, target_version, target_valkey)
            yield from _chunks(
                [cmd, key], ((it[0], it[1]) for it in items), 2, max_items, max_bytes
            )
            if fexp:
                yield from _field_ttl_commands(key, fexp, max_items)
        else:
            yield from _chunks([cmd, key], items, 2, max_items, max_bytes)
    else:
        raise ValueError(f"unknown item kind {kind!r}")


def _stream_meta_commands(
    key: bytes, meta: StreamValue, created: bool, ver: Version
) -> Iterator[list[bytes]]:
    """XSETID (last id, entries added, max deleted id) of a stream whose live entries were
    added already; ``created``: at least one was (else the key is created empty first)."""
    if not created:
        # create the key: add then trim one entry; XSETID below restores the real ids
        yield [b"XADD", key, b"MAXLEN", b"0", b"0-1", b"x", b"y"]
    if ver >= (7, 0, 0):
        yield [
            b"XSETID", key, meta.last_id,
            b"ENTRIESADDED", b"%d" % meta.entries_added,
            b"MAXDELETEDID", meta.max_deleted_id,
        ]  # fmt: skip
    else:
        yield [b"XSETID", key, meta.last_id]


def _stream_group_item_commands(
    key: bytes, it: StreamGroupHead | StreamConsumerPart, ver: Version, max_items: int
) -> Iterator[list[bytes]]:
    """Commands for one item of a group (see values.stream_group_parts): XGROUP CREATE for
    its head; for a consumer part, its pending entries (XCLAIM, ids that share delivery time
    and count batched together), or the consumer itself when it has no pending entry."""
    if type(it) is StreamGroupHead:
        create = [b"XGROUP", b"CREATE", key, it.name, it.last_id]
        if ver >= (7, 0, 0) and it.entries_read >= 0:
            create += [b"ENTRIESREAD", b"%d" % it.entries_read]
        yield create
        return
    if not it.pending:
        if ver >= (6, 2, 0):
            yield [b"XGROUP", b"CREATECONSUMER", key, it.group, it.name]
        else:
            # reading the (empty) history of a new consumer creates it, nothing else
            yield [
                b"XREADGROUP", b"GROUP", it.group, it.name, b"COUNT", b"1",
                b"STREAMS", key, b"0",
            ]  # fmt: skip
        return
    step = max(1, max_items)
    batches: dict[tuple[int, int], list[bytes]] = {}
    for pid, t, cnt in it.pending:
        batches.setdefault((t, cnt), []).append(pid)
    for (t, cnt), ids in batches.items():
        for i in range(0, len(ids), step):
            yield [
                b"XCLAIM", key, it.group, it.name, b"0", *ids[i : i + step],
                b"TIME", b"%d" % t, b"RETRYCOUNT", b"%d" % cnt, b"FORCE", b"JUSTID",
            ]  # fmt: skip


def _stream_group_commands(
    key: bytes, g: StreamGroup, ver: Version, max_items: int
) -> Iterator[list[bytes]]:
    """XGROUP CREATE, then the group's pending entries (XCLAIM) and its consumers: the
    commands of the items the group arrives as when its stream is streamed."""
    for it in stream_group_parts(g):
        yield from _stream_group_item_commands(key, it, ver, max_items)


def _require_streams(key: bytes, version: Version) -> None:
    if version < (5, 0, 0):
        raise RewriteError("streams need a Redis >= 5.0 target", key)


def stream_to_commands(
    key: bytes,
    value: StreamValue,
    *,
    target_version: Version = (7, 0, 0),
    target_valkey: bool = False,
    max_items: int = 512,
) -> Iterator[list[bytes]]:
    """Commands that rebuild a stream with its metadata and consumer groups.

    A pending entry whose message was deleted from the stream cannot be claimed (XCLAIM
    skips ids the stream lacks), so such a message is added in its place as a stand-in, the
    groups claim it, then the stand-ins are deleted and the metadata set again.

    What cannot be carried by commands: consumer seen-time / active-time (set to the time
    of the rebuild)."""
    live = {eid for eid, _ in value.entries}
    ghosts = sorted(
        {pid for g in value.groups for pid, _t, _c in g.pel if pid not in live}, key=_id_key
    )
    if ghosts:
        entries = sorted(
            itertools.chain(value.entries, ((pid, _GHOST_FIELDS) for pid in ghosts)),
            key=lambda e: _id_key(e[0]),
        )
    else:
        entries = value.entries
    for eid, fv in entries:
        yield [b"XADD", key, eid, *fv]
    if not ghosts:
        yield from _stream_meta_commands(key, value, bool(entries), target_version)
    else:  # entries-added must cover the stand-ins until they are gone
        yield [b"XSETID", key, value.last_id]
    for g in value.groups:
        yield from _stream_group_commands(key, g, target_version, max_items)
    if ghosts:
        step = max(1, max_items)
        for i in range(0, len(ghosts), step):
            yield [b"XDEL", key, *ghosts[i : i + step]]
        yield from _stream_meta_commands(key, value, True, target_version)


# The fields of a stand-in for a deleted message that is still pending (see stream_to_commands).
_GHOST_FIELDS = [b"redshake", b"deleted"]


def _id_key(sid: bytes) -> tuple[int, int]:
    ms, _, seq = sid.partition(b"-")
    return int(ms), int(seq or 0)


def stream_part_commands(
    key: bytes,
    items: list,
    *,
    created: bool,
    target_version: Version = (7, 0, 0),
    target_valkey: bool = False,
    max_items: int = 512,
) -> Iterator[list[bytes]]:
    """Commands for one part of a stream that arrives in parts (parser kind 'stream'):
    entries ``(id, [field, value, ...])`` (XADD), then, once, the metadata (a StreamValue
    without entries), then the consumer groups (each a StreamGroupHead and its
    StreamConsumerParts, or a whole StreamGroup), in that order: the same commands as
    :func:`stream_to_commands`. ``created``: an earlier part added an entry."""
    _require_streams(key, target_version)
    for it in items:
        if type(it) is tuple:
            yield [b"XADD", key, it[0], *it[1]]
            created = True
        elif isinstance(it, StreamValue):
            yield from _stream_meta_commands(key, it, created, target_version)
        elif isinstance(it, StreamGroup):
            yield from _stream_group_commands(key, it, target_version, max_items)
        elif isinstance(it, StreamDropped):
            continue  # NACK zone / IDMP section: no command holds them (the writer counts)
        else:
            yield from _stream_group_item_commands(key, it, target_version, max_items)


def value_to_commands(
    key: bytes,
    value: Value,
    *,
    expire_ms: int = -1,
    target_version: Version = (7, 0, 0),
    target_valkey: bool = False,
    max_items: int = 512,
    max_bytes: int = 1 << 20,
    mbbloom_version: int = 0,
) -> Iterator[list[bytes]]:
    """Yield argv lists that create ``key`` with ``value`` on a target that does not have
    the key. ``expire_ms`` is the absolute unix-ms key expiry (-1 = none).
    ``mbbloom_version`` only matters for RedisBloom values (see modules.module_to_commands)."""
    ver = target_version
    if isinstance(value, StringValue):
        data = value.data
        if len(data) <= max_bytes:
            if expire_ms >= 0 and ver >= (6, 2, 0):
                yield [b"SET", key, data, b"PXAT", _ms(expire_ms)]
                return
            yield [b"SET", key, data]
        else:
            step = max(1, max_bytes)
            yield [b"SET", key, data[:step]]
            for i in range(step, len(data), step):
                yield [b"APPEND", key, data[i : i + step]]
    elif isinstance(value, ListValue):
        yield from _chunks([b"RPUSH", key], value.items, 1, max_items, max_bytes)
    elif isinstance(value, SetValue):
        yield from _chunks([b"SADD", key], value.members, 1, max_items, max_bytes)
    elif isinstance(value, ZSetValue):
        yield from _chunks(
            [b"ZADD", key], ((s, m) for m, s in value.items), 2, max_items, max_bytes
        )
    elif isinstance(value, HashValue):
        if value.field_expire:
            require_field_ttl(key, target_version, target_valkey)
        cmd = b"HSET" if ver >= (4, 0, 0) else b"HMSET"
        yield from _chunks([cmd, key], value.pairs, 2, max_items, max_bytes)
        if value.field_expire:
            yield from _field_ttl_commands(key, value.field_expire.items(), max_items)
    elif isinstance(value, StreamValue):
        _require_streams(key, ver)
        yield from stream_to_commands(
            key, value, target_version=target_version, target_valkey=target_valkey,
            max_items=max_items,
        )  # fmt: skip
    elif isinstance(value, ModuleValue):
        from .modules import module_to_commands
        from .primitives import RdbError

        try:
            cmds = module_to_commands(key, value, mbbloom_version=mbbloom_version)
        except RdbError as e:  # unknown module or malformed payload
            raise RewriteError(e.message, key) from None
        yield from cmds
    else:
        raise RewriteError(f"cannot rewrite a value of type {type(value).__name__}", key)
    if expire_ms >= 0:
        yield [b"PEXPIREAT", key, _ms(expire_ms)]
