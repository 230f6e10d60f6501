"""Turn RDB records into entries for a given target.

Every key is written the cheapest way the target can load faithfully:

1. ``RESTORE`` with the raw value bytes, stamped with the source RDB version, when the target
   accepts that version (no decoding at all);
2. ``RESTORE`` re-stamped with the target's own version when the value's type byte already
   exists there (types 0..21 keep their layout across versions) - this is how a Valkey 9 or
   Redis 7.2 snapshot goes into Redis 7.0 without decoding;
3. ``RESTORE`` of the value re-encoded with the plain encodings every target reads (list,
   set, zset, hash of rdb-strings) - downgrades of compact encodings (listpack sets into
   Redis 7.0, listpacks into Redis 6, ...);
4. plain commands, many elements per command (RPUSH/SADD/ZADD/HSET/XADD/...), for values
   larger than ``proto_max_bulk_len``, values that arrive in parts (big keys), streams a target
   cannot load, field TTLs, or when forced with ``target_redis_proto_max_bulk_len = 0``.

A single element string too big to buffer (``BigElementStart`` ... ``BigElementEnd``: a 300 MB
hash value, set member, ...) is built in a temporary key of the same cluster slot with SET +
APPENDs of its pieces, then one EVAL moves it into the aggregate (RPUSH / SADD / ZADD / HSET,
plus HPEXPIREAT for a hash field with a TTL) and deletes the temporary key.

Key TTLs are always absolute: ``RESTORE ... ABSTTL`` / ``PEXPIREAT``. Keys already expired are
skipped and counted, so are empty aggregates (an old Redis bug left some in RDB files).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from ..commands.slots import key_slot
from ..entry import KEYLESS_ALL_MASTERS, Entry, KeyEnd, RestoreSet
from ..errors import BadInput
from ..rdb import records as R
from ..rdb.dump import (
    make_payload,
    plain_encode,
    restore_version,
    stream_downgrade,
    stream_type_for,
)
from ..rdb.primitives import RdbError, read_length
from ..rdb.rewrite import supports_field_ttl
from ..rdb.stream_spill import StreamSpill
from ..rdb.types import STREAM_TYPES, value_types
from ..rdb.values import StreamDropped
from ..rdb.walk import module_name

__all__ = ["TargetCaps", "RdbToEntries", "ConversionError", "temp_key_tag", "field_ttl_summary",
           "module_refusal"]  # fmt: skip

log = logging.getLogger("redshake")

# Logical kinds of the value types that can be re-encoded with the plain encodings: the
# types every engine shares (0..21) but streams and modules.
_PLAIN_KIND = {
    s.code: s.family
    for s in value_types(False, 11)
    if s is not None and s.family in ("string", "list", "set", "zset", "hash")
}

# Zipmaps (pre-2.6 hashes) are always decoded and re-encoded: the format allows a zipmap
# whose count byte says "unknown, walk to the end", which current servers' payload checks
# refuse, and files that old are small.
_ALWAYS_REENCODE = frozenset({9})

# A small string without TTL, LRU or LFU data goes as SET (NX unless existing keys are to be
# replaced), which both ends do faster than RESTORE: no payload, no CRC64.
_SET_NX = b"*4\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nNX\r\n"
_SET = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
_RESTORE = b"*4\r\n$7\r\nRESTORE\r\n$%d\r\n%s\r\n$1\r\n0\r\n$%d\r\n%s\r\n"
_RESTORE_REPLACE = b"*5\r\n$7\r\nRESTORE\r\n$%d\r\n%s\r\n$1\r\n0\r\n$%d\r\n%s\r\n$7\r\nREPLACE\r\n"


# Moves streamed element strings from their temporary keys into the aggregate. KEYS[1]: the
# key; KEYS[2..]: the temporary keys, in the order of their arguments. ARGV[1]: the command
# (RPUSH, SADD, ZADD, HSET, HMSET); ARGV[2]: one letter per argument after the key, "t" for
# the value of the next temporary key, "a" for the next of ARGV[3..]; a last letter "e" (hash
# field with a TTL): the next of ARGV[3..] is the field's absolute expire time in ms, set with
# HPEXPIREAT on the first argument (the field) once the command has run.
_ELEM_SCRIPT = b"""\
local args, n, k, j, pat, ttl = {}, 0, 2, 3, ARGV[2], nil
for i = 1, #pat do
  local c = string.byte(pat, i)
  if c == 116 then
    local v = redis.call('GET', KEYS[k])
    if not v then
      return redis.error_reply('redshake: temporary key ' .. KEYS[k] .. ' is missing')
    end
    n = n + 1
    args[n] = v
    k = k + 1
  elseif c == 101 then
    ttl = ARGV[j]
    j = j + 1
  else
    n = n + 1
    args[n] = ARGV[j]
    j = j + 1
  end
end
redis.call(ARGV[1], KEYS[1], unpack(args))
if ttl then
  redis.call('HPEXPIREAT', KEYS[1], ttl, 'FIELDS', 1, args[1])
end
redis.call('DEL', unpack(KEYS, 2))
return 1
"""

_TAG_CHARS = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_tags: dict[int, bytes] = {}


def temp_key_tag(slot: int) -> bytes:
    """The first (shortest) alphanumeric hash tag whose cluster slot is ``slot`` (cached): a
    temporary key ``{tag}...`` lives on the same node as the key it is built for."""
    tag = _tags.get(slot)
    if tag is None:
        for n in range(1, 5):
            for t in itertools.product(_TAG_CHARS, repeat=n):
                b = bytes(t)
                s = key_slot(b)
                if s not in _tags:
                    _tags[s] = b
                if s == slot:
                    return b
        raise AssertionError(f"no hash tag found for slot {slot}")  # pragma: no cover
    return tag


class ConversionError(BadInput):
    """A value that cannot be written to this target at all (e.g. field TTLs on an old target)."""


def module_refusal(module_name: str, version: tuple[int, int, int], is_valkey: bool) -> str:
    """Why a module value of ``module_name`` cannot be written to the target ("" = try it).

    Redis 8's vector sets are a module built into Redis 8.0+ (type "vectorset"): no other
    server can load them, and their value (an HNSW graph) has no command form but VADD,
    which those servers lack too. Other modules are tried (RESTORE, or commands for the
    few modules converted); the target reports a missing module itself."""
    if module_name == "vectorset" and (is_valkey or version < (8, 0, 0)):
        name = "valkey" if is_valkey else "redis"
        return (
            f"a Redis 8 vector set (module type 'vectorset') cannot be written to {name} "
            f"{'.'.join(map(str, version))}: only Redis 8.0+ has vector sets and there is "
            "no other form to convert them to (copy them to a Redis 8.0+ target)"
        )
    return ""


class TargetCaps:
    """What the converter needs to know about the target."""

    __slots__ = (
        "version",
        "is_valkey",
        "rdb_version",
        "plain_max",
        "proto_max_bulk_len",
        "accepts",
        "set_strings",
        "temp_keys",
        "file_output",
    )

    def __init__(
        self,
        version: tuple[int, int, int],
        is_valkey: bool,
        rdb_version: int,
        proto_max_bulk_len: int,
        accepts: Callable[[int, bool], bool],
        set_strings: bool = True,
        temp_keys: bool = True,
        file_output: bool = False,
    ) -> None:
        self.version = version
        self.is_valkey = is_valkey
        self.rdb_version = rdb_version
        self.plain_max = min(rdb_version, 11) if is_valkey else rdb_version
        self.proto_max_bulk_len = proto_max_bulk_len
        self.accepts = accepts
        # small plain strings as SET (NX) instead of RESTORE (a server target, not a file)
        self.set_strings = set_strings
        # huge single elements built in temporary keys (else reassembled in memory: for
        # files, and for filters / Lua functions, which must see the real commands)
        self.temp_keys = temp_keys
        # a file, not a server: no server version limits what it may hold
        self.file_output = file_output

    @classmethod
    def from_target_info(cls, info, proto_max_bulk_len_setting: int) -> TargetCaps:
        limit = (
            min(proto_max_bulk_len_setting, info.proto_max_bulk_len)
            if proto_max_bulk_len_setting
            else 0
        )
        return cls(info.version, info.is_valkey, info.rdb_version, limit, info.accepts_rdb,
                   set_strings=not getattr(info, "file_output", False),
                   temp_keys=not getattr(info, "file_output", False),
                   file_output=getattr(info, "file_output", False))  # fmt: skip


class RdbToEntries:
    """Stateful converter: call :meth:`convert` for each parser record, in order.

    ``behavior`` is ``rdb_restore_command_behavior``: ``rewrite`` adds REPLACE (and DEL before
    a command rebuild); ``panic``/``skip`` leave existing keys to the writer's BUSYKEY policy.
    For command rebuilds (no RESTORE possible) ``probe_exists(db, key)`` is asked first so an
    existing key is never merged into; without a probe the key is deleted first.
    """

    def __init__(
        self,
        caps: TargetCaps,
        *,
        src_version: int,
        src_valkey: bool,
        behavior: str = "panic",
        probe_exists: Callable[[int, bytes], bool] | None = None,
        on_existing: Callable[[int, bytes], None] | None = None,
        now_ms: Callable[[], int] | None = None,
        max_items: int = 512,
        max_bytes: int = 1 << 20,
        field_ttl: str = "panic",
        spill_dir: Path | None = None,
    ) -> None:
        self.caps = caps
        self.src_version = src_version
        self.src_valkey = src_valkey
        self.behavior = behavior
        self.probe_exists = probe_exists
        self.on_existing = on_existing
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.max_items = max_items
        self.max_bytes = max_bytes
        # hash field TTLs on a target without them: "panic", "drop" or "key_ttl"
        self.field_ttl = field_ttl
        self._fttl_ok = supports_field_ttl(caps.version, caps.is_valkey)
        self.field_ttls_dropped = 0  # fields whose TTL was dropped / folded into the key TTL
        self.field_ttl_keys = 0  # ... and the keys they belong to
        # what an older target cannot hold of Redis 8.6+ streams (types 26, 27): NACKed
        # entries, IDMP producers, IDMP iids; and the stream keys concerned
        self.stream_dropped = [0, 0, 0]
        self.stream_dropped_keys = 0
        self._big_fexp = -1  # key_ttl: earliest field TTL of the big key being streamed
        self._big_fttl_seen = False
        self.skipped: Counter[str] = Counter()
        self._methods: Counter[str] = Counter()
        self.n_restore = 0  # hot-path counters, folded into ``methods``
        self.n_set = 0
        self._versions: dict[int, int] = {}  # type byte -> payload version (-1: none)
        self._aux_warned: set[str] = set()
        self.repl_stream_db: int | None = None
        tv = caps.version
        self._abs_ttl = tv >= (5, 0, 0)
        self._replace = behavior == "rewrite"
        self._set_strings = caps.set_strings
        # current big key being streamed: (db, key, kind, expire_ms, skipping)
        self._big: tuple[int, bytes, str, int, bool] | None = None
        self._big_started = False  # a streamed string got its SET, a stream its first XADD
        self._big_held: Entry | None = None  # the last command of the part before (see convert)
        # a streamed stream: its parts, kept on disk until its end (see StreamSpill)
        self.spill_dir = spill_dir
        self._spill: StreamSpill | None = None
        self.spilled_bytes = 0  # largest stream spill file so far
        # streamed element strings (BigElementStart ...): temporary keys, completed ones in
        # the order their BIG_ELEMENT placeholders will come; the one being written
        self._elem_keys: list[bytes] = []
        self._elem_key: bytes | None = None
        self._elem_started = False
        self._elem_token = os.urandom(4).hex().encode()
        self._elem_count = 0
        self._elem_buf: bytearray | None = None  # without temporary keys: the one being read
        self._elem_values: list[bytes] = []  # ... and the completed ones, in order

    @property
    def methods(self) -> Counter[str]:
        """How keys were written: restore, restore_reencoded, commands, commands_streamed."""
        m = Counter(self._methods)
        if self.n_restore:
            m["restore"] += self.n_restore
        if self.n_set:
            m["set"] += self.n_set
        return m

    # -- records -------------------------------------------------------------------------

    def convert(self, rec) -> list[Entry] | tuple[()]:
        """Entries for one parser record (a list; empty when the record writes nothing)."""
        t = type(rec)
        if t is R.KeyValue:
            return self._key(rec)
        if t is R.BigKeyPart:
            # the last command of a part is held back until the next part or the end of the
            # key, so that the key's very last command can be marked (order is unchanged)
            out = list(self._big_part(rec))
            if out:
                held, self._big_held = self._big_held, out.pop()
                if held is not None:
                    out.insert(0, held)
            return out
        if t is R.BigKeyStart:
            return list(self._big_start(rec))
        if t is R.BigKeyEnd:
            if self._spill is not None:  # a streamed stream: all its commands, in one list
                return [e for chunk in self._spilled_stream() for e in chunk]
            held, self._big_held = self._big_held, None
            out = list(self._big_end())
            if held is not None:
                out.insert(0, held)
            return _ends_key(out)
        if t is R.BigElementPart:
            return list(self._elem_part(rec))
        if t is R.BigElementStart:
            return self._elem_start()
        if t is R.BigElementEnd:
            return self._elem_end()
        if t is R.Function:
            return list(self._function(rec))
        if t is R.Aux:
            return list(self._aux(rec))
        if t is R.SlotImport:
            log.warning(
                "the snapshot holds an unfinished Valkey atomic slot migration importing slots %s"
                " (job %s): keys of those slots are copied as they are in the snapshot, though "
                "the node did not own them yet",
                ",".join(f"{a}-{b}" for a, b in rec.ranges), rec.job.decode("ascii", "replace"),
            )  # fmt: skip
            return ()
        if t is R.ModuleAux:
            self.skipped["module_aux"] += 1
            if rec.module_name not in self._aux_warned:
                self._aux_warned.add(rec.module_name)
                log.warning(
                    "module AUX data of module %r (when=%d) cannot be copied with commands: "
                    "skipped (the module rebuilds it on the target, if it needs it)",
                    rec.module_name, rec.when,
                )  # fmt: skip
        return ()

    def convert_chunks(self, rec, size: int = 1024) -> Iterator[list[Entry]]:
        """The entries of :meth:`convert` in lists of about ``size``: the end of a streamed
        stream brings all of its commands, made from its spill file as they are taken."""
        if type(rec) is R.BigKeyEnd and self._spill is not None:
            yield from self._spilled_stream(size)
            return
        out = self.convert(rec)
        if out:
            yield out

    def _spilled_stream(self, size: int = 1024) -> Iterator[list[Entry]]:
        """The commands of the streamed stream that just ended, replayed from its spill."""
        spill, self._spill = self._spill, None
        assert spill is not None and self._big is not None
        db, key = self._big[0], self._big[1]
        held, self._big_held = self._big_held, None
        buf: list[Entry] = [held] if held is not None else []
        assert spill.key == key
        self.spilled_bytes = max(self.spilled_bytes, spill.bytes)
        from ..rdb.rewrite import RewriteError

        try:
            for argv in spill.commands():
                buf.append(Entry(db, argv, key))
                if len(buf) > size:  # the last one is kept back: it may end the key
                    yield buf[:-1]
                    buf = buf[-1:]
        except RewriteError as e:
            raise ConversionError(str(e)) from None
        finally:
            spill.close()
        buf.extend(self._big_end())
        yield _ends_key(buf)

    def _aux(self, rec) -> Iterator[Entry]:
        if rec.key == b"repl-stream-db":
            try:
                self.repl_stream_db = int(rec.value)
            except ValueError:
                pass
        elif rec.key == b"lua":
            yield Entry(0, [b"SCRIPT", b"LOAD", rec.value], KEYLESS_ALL_MASTERS)

    def _function(self, rec) -> Iterator[Entry]:
        if self.caps.version < (7, 0, 0) and not self.caps.is_valkey:
            raise ConversionError(
                f"the RDB holds a function library but the target (version "
                f"{'.'.join(map(str, self.caps.version))}) has no FUNCTION command"
            )
        yield Entry(0, [b"FUNCTION", b"LOAD", b"REPLACE", rec.code], KEYLESS_ALL_MASTERS)

    # -- keys ----------------------------------------------------------------------------

    def _restore_argv(self, key: bytes, payload: bytes, rec, exp: int | None = None) -> list[bytes]:
        if exp is None:
            exp = rec.expire_ms
        if exp == -1:
            argv = [b"RESTORE", key, b"0", payload]
        elif self._abs_ttl:
            argv = [b"RESTORE", key, str(exp).encode(), payload, b"ABSTTL"]
        else:
            ttl = max(1, exp - self.now_ms())
            argv = [b"RESTORE", key, str(ttl).encode(), payload]
        if self._replace:
            argv.append(b"REPLACE")
        if self._abs_ttl:
            if rec.idle != -1:
                argv += (b"IDLETIME", str(rec.idle).encode())
            elif rec.freq != -1:
                argv += (b"FREQ", str(rec.freq).encode())
        return argv

    def _key(self, rec) -> list[Entry] | tuple[()]:
        exp = rec.expire_ms
        if rec.empty or (exp != -1 and exp <= self.now_ms()):
            self.skipped["empty" if rec.empty else "expired"] += 1
            return ()
        caps = self.caps
        limit = caps.proto_max_bulk_len
        key = rec.key
        db = rec.db
        t = rec.type
        if t == 7 and not caps.file_output:
            name = module_name(read_length(rec.raw, 0)[0])[0]
            refusal = module_refusal(name, caps.version, caps.is_valkey)
            if refusal:
                raise ConversionError(f"key {key!r} (db {db}): {refusal}")
        if limit:
            ver = self._versions.get(t)
            if ver is None:
                v = restore_version(
                    t, self.src_version, self.src_valkey, caps.accepts, caps.plain_max
                )
                if t in _ALWAYS_REENCODE:
                    v = None
                ver = self._versions[t] = -1 if v is None else v
            raw = rec.raw
            if t == 0 and raw[0] < 0x40 and exp == -1 and self._set_strings:
                if rec.idle == -1 and rec.freq == -1:
                    self.n_set += 1
                    v = raw[1:]
                    if self._replace:
                        return [KeyEnd(db, [b"SET", key, v], key, -1,
                                       _SET % (len(key), key, len(v), v))]  # fmt: skip
                    return [RestoreSet(db, [b"SET", key, v, b"NX"], key, -1,
                                       _SET_NX % (len(key), key, len(v), v))]  # fmt: skip
            if ver >= 0 and len(raw) + 11 <= limit:
                self.n_restore += 1
                payload = make_payload(t, raw, ver)
                if exp == -1 and rec.idle == -1 and rec.freq == -1:
                    # the common shape, encoded straight to RESP
                    if self._replace:
                        return [KeyEnd(db, [b"RESTORE", key, b"0", payload, b"REPLACE"], key, -1,
                                       _RESTORE_REPLACE % (len(key), key, len(payload), payload))]  # fmt: skip
                    return [KeyEnd(db, [b"RESTORE", key, b"0", payload], key, -1,
                                   _RESTORE % (len(key), key, len(payload), payload))]  # fmt: skip
                return [KeyEnd(db, self._restore_argv(key, payload, rec), key)]
        return _ends_key(list(self._key_slow(rec, key, db, limit)))

    def _key_slow(self, rec, key: bytes, db: int, limit: int) -> Iterator[Entry]:
        caps = self.caps
        if limit and rec.type in STREAM_TYPES:
            # A stream type the target does not know: the same bytes in its older layout
            # keep every pending entry (commands cannot claim one whose message is deleted).
            to = stream_type_for(caps.plain_max)
            if to is not None and to < rec.type:
                dropped = [0, 0, 0]
                try:
                    raw = stream_downgrade(rec.type, rec.raw, to, dropped)
                except RdbError as e:
                    raise RdbError(e.message, rec.offset, key) from None
                if len(raw) + 11 <= limit:
                    self._stream_dropped(key, *dropped)
                    self._methods["restore_reencoded"] += 1
                    payload = make_payload(to, raw, caps.plain_max)
                    yield Entry(db, self._restore_argv(key, payload, rec), key)
                    return
        value = self._decode(rec)
        if rec.type >= 26 and value.kind == "stream":  # commands hold neither
            idmp = value.idmp
            self._stream_dropped(
                key,
                sum(len(g.nacked) for g in value.groups),
                len(idmp.producers) if idmp else 0,
                idmp.iids() if idmp else 0,
            )
        exp = rec.expire_ms
        fexp = getattr(value, "field_expire", None)
        if fexp and not self._fttl_ok:
            exp = self._fold_field_ttls(key, fexp.values(), exp)
            now = self.now_ms()
            if any(t <= now for t in fexp.values()):  # fields already expired: gone
                value.pairs = [p for p in value.pairs if fexp.get(p[0], now + 1) > now]
            value.field_expire = None
            self.field_ttl_keys += 1
            if not value.pairs or (exp != -1 and exp <= now):
                self.skipped["expired"] += 1
                return
        if limit:
            kind = _PLAIN_KIND.get(rec.type)
            if kind is not None:
                items = _plain_items(kind, value)
                if items is not None:
                    t, raw = plain_encode(kind, items, caps.plain_max)
                    if len(raw) + 11 <= limit:
                        self._methods["restore_reencoded"] += 1
                        payload = make_payload(t, raw, caps.plain_max)
                        yield Entry(db, self._restore_argv(key, payload, rec, exp), key)
                        return
        # Rebuild with commands.
        if not self._prepare_rebuild(db, key):
            return
        if self._replace or self.probe_exists is None:
            yield Entry(db, [b"DEL", key], key)
        self._methods["commands"] += 1
        from ..rdb.rewrite import RewriteError, value_to_commands

        try:
            for argv in value_to_commands(
                key,
                value,
                expire_ms=exp,
                target_version=caps.version,
                target_valkey=caps.is_valkey,
                max_items=self.max_items,
                max_bytes=self.max_bytes,
            ):
                yield Entry(db, argv, key)
        except RewriteError as e:
            raise ConversionError(str(e)) from None

    def _fold_field_ttls(self, key: bytes, ttls, exp: int) -> int:
        """Field TTLs the target cannot hold, per ``unsupported_field_ttl``: stop the run
        (panic), or count and drop them, with key_ttl expiring the whole key at the earliest
        of them and its own TTL. Returns the key's expire time (-1: none)."""
        ttls = [t for t in ttls if t is not None and t >= 0]
        if not ttls:
            return exp
        now = self.now_ms()
        if self.field_ttl not in ("drop", "key_ttl"):
            from ..rdb.rewrite import RewriteError, require_field_ttl

            try:
                require_field_ttl(key, self.caps.version, self.caps.is_valkey)
            except RewriteError as e:
                raise ConversionError(str(e)) from None
        if not self.field_ttls_dropped:
            log.warning(
                "the target has no hash field expiration: field TTLs %s (unsupported_field_ttl "
                "= %s), first on key %r; counted in the summary",
                "dropped" if self.field_ttl == "drop" else "folded into the key TTL",
                self.field_ttl, key,
            )  # fmt: skip
        self.field_ttls_dropped += len(ttls)
        if self.field_ttl == "drop":
            return exp
        live = [t for t in ttls if t > now]  # expired fields are left out, not kept
        if not live:
            return exp
        m = min(live)
        return m if exp == -1 else min(exp, m)

    def _stream_dropped(self, key: bytes, nacked: int, producers: int, iids: int) -> None:
        """Count what a Redis 8.6+ stream loses on this target (see README, Compatibility):
        NACKed entries (unowned pending entries, left out of the group's PEL) and the IDMP
        producers / iids (the idempotent-producer table). Warns once."""
        if not (nacked or producers or iids):
            return
        if not self.stream_dropped_keys:
            log.warning(
                "the target cannot hold Redis 8.6+ stream state: NACKed pending entries and "
                "IDMP (idempotent producer) ids are left out, first on key %r; counted in "
                "the summary", key,
            )  # fmt: skip
        d = self.stream_dropped
        d[0] += nacked
        d[1] += producers
        d[2] += iids
        self.stream_dropped_keys += 1

    def _decode(self, rec):
        from ..rdb.values import decode_value

        try:
            return decode_value(rec.type, rec.raw, valkey=self.src_valkey)
        except Exception as e:
            if hasattr(e, "offset") and getattr(e, "offset", None) is None:
                e.offset = rec.offset
            if hasattr(e, "key") and getattr(e, "key", None) is None:
                e.key = rec.key
            raise

    def _prepare_rebuild(self, db: int, key: bytes) -> bool:
        """For panic/skip: ask the target whether the key exists before rebuilding it with
        commands (commands would merge into an existing key). Returns False to skip it."""
        if self._replace or self.probe_exists is None:
            return True
        if self.probe_exists(db, key):
            if self.on_existing is not None:
                self.on_existing(db, key)  # raises for panic, counts the skip otherwise
            else:
                self.skipped["busykey"] += 1
            return False
        return True

    # -- big keys (values that arrive in parts) -------------------------------------------

    def _big_start(self, rec) -> Iterator[Entry]:
        reason = None
        if rec.expire_ms != -1 and rec.expire_ms <= self.now_ms():
            reason = "expired"
        if reason or not self._prepare_rebuild(rec.db, rec.key):
            if reason:
                self.skipped[reason] += 1
            self._big = (rec.db, rec.key, rec.kind, rec.expire_ms, True)
            return
        self._big = (rec.db, rec.key, rec.kind, rec.expire_ms, False)
        self._big_started = False
        self._big_fexp = -1
        self._big_fttl_seen = False
        self._methods["commands_streamed"] += 1
        if self._spill is not None:  # left by a stream cut short
            self._spill.close()
            self._spill = None
        if rec.kind == "stream":
            self._spill = StreamSpill(self.spill_dir, rec.key, target_version=self.caps.version,
                                      max_items=self.max_items)  # fmt: skip
        if self._replace or self.probe_exists is None:
            yield Entry(rec.db, [b"DEL", rec.key], rec.key)

    def _big_part(self, rec) -> Iterator[Entry]:
        if self._big is None:
            raise ConversionError("value part outside of a big key")
        db, key, kind, _exp, skipping = self._big
        if skipping:
            return
        if kind == "string":  # consecutive pieces of one long string: SET, then APPENDs
            for piece in rec.items:
                op = b"APPEND" if self._big_started else b"SET"
                self._big_started = True
                yield Entry(db, [op, key, piece], key)
            return
        from ..rdb.rewrite import RewriteError, items_to_commands

        if kind == "hash" and not self._fttl_ok:
            rec = R.BigKeyPart(self._strip_field_ttls(key, rec.items))
        if self._elem_keys:  # items with streamed strings among them
            yield from self._part_with_elements(db, key, kind, rec.items)
            return
        if self._elem_values:  # streamed strings reassembled in memory: put them in place
            rec = R.BigKeyPart([self._fill_elements(it) for it in rec.items])
        try:
            if kind == "stream":  # entries, metadata, groups: written at the key's end
                assert self._spill is not None
                kept = []
                for it in rec.items:
                    if type(it) is StreamDropped:  # NACK zone / IDMP: no command holds them
                        self._stream_dropped(key, it.nacked, it.producers, it.iids)
                    else:
                        kept.append(it)
                self._spill.add(kept)
                return
            for argv in items_to_commands(
                key,
                kind,
                rec.items,
                max_items=self.max_items,
                max_bytes=self.max_bytes,
                target_version=self.caps.version,
                target_valkey=self.caps.is_valkey,
            ):
                yield Entry(db, argv, key)
        except RewriteError as e:
            raise ConversionError(str(e)) from None

    def _big_end(self) -> Iterator[Entry]:
        big, self._big = self._big, None
        self._elem_keys.clear()
        self._elem_key = None
        self._elem_values.clear()
        self._elem_buf = None
        if big is None:
            return
        db, key, _kind, exp, skipping = big
        if self._big_fexp != -1:  # key_ttl: the earliest field TTL
            exp = self._big_fexp if exp == -1 else min(exp, self._big_fexp)
            self._big_fexp = -1
        if not skipping and exp != -1:
            yield Entry(db, [b"PEXPIREAT", key, str(exp).encode()], key)


    def _strip_field_ttls(self, key: bytes, items: list) -> list:
        """The hash items of a part without their field TTLs (per unsupported_field_ttl)."""
        ttls = [it[2] for it in items if len(it) == 3 and it[2] is not None and it[2] >= 0]
        if not ttls:
            return items
        exp = self._fold_field_ttls(key, ttls, self._big_fexp)
        if self.field_ttl == "key_ttl":
            self._big_fexp = exp
        if not self._big_fttl_seen:
            self._big_fttl_seen = True
            self.field_ttl_keys += 1
        now = self.now_ms()
        return [
            (it[0], it[1], -1) if len(it) == 3 else it
            for it in items
            if len(it) != 3 or it[2] is None or it[2] < 0 or it[2] > now
        ]

    # -- single element strings too big to buffer, built in temporary keys ---------------

    def _elem_start(self) -> tuple[()]:
        if self._big is None:
            raise ConversionError("element part outside of a big key")
        if self._big[4]:  # the key is skipped
            return ()
        if not self.caps.temp_keys:  # reassembled in memory, written as a plain item
            self._elem_buf = bytearray()
            return ()
        self._elem_count += 1
        tag = temp_key_tag(key_slot(self._big[1]))
        self._elem_key = b"{%s}redshake:tmp:%s:%d" % (tag, self._elem_token, self._elem_count)
        self._elem_started = False
        return ()

    def _elem_part(self, rec) -> Iterator[Entry]:
        if self._elem_buf is not None:
            for piece in rec.pieces:
                self._elem_buf += piece
            return
        tmp = self._elem_key
        if tmp is None:
            return
        db = self._big[0]  # type: ignore[index]
        for piece in rec.pieces:
            op = b"APPEND" if self._elem_started else b"SET"
            self._elem_started = True
            yield Entry(db, [op, tmp, piece], tmp)

    def _elem_end(self) -> tuple[()]:
        if self._elem_buf is not None:
            self._elem_values.append(bytes(self._elem_buf))
            self._elem_buf = None
        if self._elem_key is not None:
            self._elem_keys.append(self._elem_key)
            self._elem_key = None
        return ()

    def _fill_elements(self, item):
        big = R.BIG_ELEMENT
        if item is big:
            return self._elem_values.pop(0)
        if type(item) is tuple and big in item:
            return tuple(self._elem_values.pop(0) if a is big else a for a in item)
        return item

    def _part_with_elements(self, db: int, key: bytes, kind: str, items: list) -> Iterator[Entry]:
        """Commands for a part whose items hold BIG_ELEMENT placeholders: the plain items
        as usual, each item with a placeholder as one EVAL of _ELEM_SCRIPT."""
        from ..rdb.rewrite import RewriteError, items_to_commands, require_field_ttl

        big = R.BIG_ELEMENT
        run: list = []
        for it in items:
            if it is not big and not (type(it) is tuple and big in it):
                run.append(it)
                continue
            try:
                if run:
                    for argv in items_to_commands(
                        key, kind, run, max_items=self.max_items, max_bytes=self.max_bytes,
                        target_version=self.caps.version, target_valkey=self.caps.is_valkey,
                    ):  # fmt: skip
                        yield Entry(db, argv, key)
                    run = []
            except RewriteError as e:
                raise ConversionError(str(e)) from None
            ttl = None
            if kind == "list":
                cmd, args = b"RPUSH", [it]
            elif kind == "set":
                cmd, args = b"SADD", [it]
            elif kind == "zset":
                cmd, args = b"ZADD", [it[1], it[0]]
            elif kind == "hash":
                cmd = b"HSET" if self.caps.version >= (4, 0, 0) else b"HMSET"
                args = [it[0], it[1]]
                if len(it) == 3 and it[2] is not None and it[2] >= 0:  # a field TTL
                    try:
                        require_field_ttl(key, self.caps.version, self.caps.is_valkey)
                    except RewriteError as e:
                        raise ConversionError(str(e)) from None
                    ttl = it[2]
            else:
                raise ConversionError(f"streamed element in a value of kind {kind!r}")
            tmps = []
            plain = []
            pat = bytearray()
            for a in args:
                if a is big:
                    if not self._elem_keys:
                        raise ConversionError("streamed element missing before its item")
                    tmps.append(self._elem_keys.pop(0))
                    pat += b"t"
                else:
                    plain.append(a)
                    pat += b"a"
            if ttl is not None:
                plain.append(b"%d" % ttl)
                pat += b"e"
            argv = [b"EVAL", _ELEM_SCRIPT, b"%d" % (1 + len(tmps)), key, *tmps, cmd, bytes(pat),
                    *plain]  # fmt: skip
            yield Entry(db, argv, key)
        if run:
            try:
                for argv in items_to_commands(
                    key, kind, run, max_items=self.max_items, max_bytes=self.max_bytes,
                    target_version=self.caps.version, target_valkey=self.caps.is_valkey,
                ):  # fmt: skip
                    yield Entry(db, argv, key)
            except RewriteError as e:
                raise ConversionError(str(e)) from None


def _ends_key(entries: list[Entry]) -> list[Entry]:
    """Mark the last command of a key's commands (see ``Entry.ends_key``)."""
    if entries and entries[-1].__class__ is Entry:
        entries[-1].__class__ = KeyEnd
    return entries


def _plain_items(kind: str, value):
    """Items of a decoded value in the shape plain_encode wants, or None when the value has
    something the plain encodings cannot hold (field TTLs)."""
    if kind == "string":
        return value.data
    if kind == "list":
        return value.items
    if kind == "set":
        return value.members
    if kind == "zset":
        return value.items
    if kind == "hash":
        if value.field_expire:
            return None
        return value.pairs
    return None


def field_ttl_summary(conv: RdbToEntries | None) -> list[str]:
    """The summary lines about what the target could not hold, if anything: hash field TTLs,
    and the NACKed entries and IDMP ids of Redis 8.6+ streams."""
    if conv is None:
        return []
    out = []
    if conv.field_ttls_dropped:
        how = "dropped" if conv.field_ttl == "drop" else "folded into their key's TTL"
        out.append(
            f"hash field TTLs {how}: {conv.field_ttls_dropped} fields of {conv.field_ttl_keys} "
            f"keys (unsupported_field_ttl = {conv.field_ttl}; the target has no field expiration)"
        )
    if conv.stream_dropped_keys:
        nacked, producers, iids = conv.stream_dropped
        out.append(
            f"stream state left out (the target predates Redis 8.6 / 8.8): {nacked} NACKed "
            f"pending entries, {iids} IDMP ids of {producers} producers, in "
            f"{conv.stream_dropped_keys} streams"
        )
    return out
