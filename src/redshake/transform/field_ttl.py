"""Hash field TTL commands of a live stream / AOF replay for a target without hash field
expiration (Redis < 7.4, Valkey < 9), per ``[advanced] unsupported_field_ttl``.

Applied in the writer-facing step, after any filter / Lua function (those see the source's
commands, as in RedisShake). Semantics match the conversion of RDB values:

* ``drop``: field-TTL-only commands (HEXPIRE, HPEXPIRE, HEXPIREAT, HPEXPIREAT, HPERSIST,
  HGETEX) are dropped; HSETEX becomes HSET of the same fields (a propagated HSETEX succeeded
  on the source, so its FNX/FXX/NX/XX conditions held there);
* ``key_ttl``: a field TTL at absolute time T also becomes ``PEXPIREAT key T LT`` (a small
  EVAL doing the same on targets < 7.0, which lack LT, and in AOF replays, which hold
  expiries due soon shifted until the end): the key expires at the earliest of
  its field TTLs and its own TTL. A key TTL is only ever lowered: HPERSIST, a later field
  TTL or the deletion of a field never raise it (they are dropped);
* both: a field TTL already in the past deletes the fields (HDEL), as the source does;
  HGETDEL (Valkey 9 / Redis 8) becomes HDEL of its fields.

``panic`` (default) stops at the first such command with a message naming the setting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..entry import Entry
from ..errors import FatalError

__all__ = ["FieldTtlCommands", "FieldTtlError", "COMMANDS", "NAMES"]

log = logging.getLogger("redshake")

_EXPIRE = {b"hexpire": 1000, b"hpexpire": 1, b"hexpireat": -1000, b"hpexpireat": -1}
COMMANDS = frozenset((*_EXPIRE, b"hpersist", b"hsetex", b"hgetex", b"hgetdel"))
NAMES = frozenset(c.decode().upper() for c in COMMANDS)
_TIME_OPTS = {b"ex": 1000, b"px": 1, b"exat": -1000, b"pxat": -1}

# PEXPIREAT key T LT for targets without LT (< 7.0) and for AOF replays: lower the TTL only
# (no TTL = infinite). ARGV[2] > 0: an AOF replay, where expiries due soon are held shifted
# by that much until the end (see readers/aof_reader.py): compare and set shifted, so that
# the true expiry put back at the end is the earlier one.
_LT_SCRIPT = b"""pcall(redis.replicate_commands)
local p = redis.call('PTTL', KEYS[1])
if p == -2 then return 0 end
local t = tonumber(ARGV[1])
if p ~= -1 then
  local s = tonumber(ARGV[2])
  local c = redis.call('TIME')
  local cur = tonumber(c[1]) * 1000 + math.floor(tonumber(c[2]) / 1000) + p
  if s > 0 and cur > s then t = t + s end
  if cur <= t then return 0 end
end
return redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', t))"""


class FieldTtlError(FatalError):
    """A field TTL command the target cannot run and the setting does not convert."""


class FieldTtlCommands:
    """Converts one entry at a time (``__call__`` returns the entries to write instead)."""

    def __init__(self, mode: str, target_version: tuple, skip: Callable[[str], None] | None = None,
                 now_ms: Callable[[], int] | None = None, shift: int = 0) -> None:  # fmt: skip
        self.mode = mode
        self.skip = skip  # counts a dropped command in the status JSON (skipped: field_ttl)
        self.has_lt = tuple(target_version) >= (7, 0, 0) and not shift
        self.shift = b"%d" % shift  # an AOF replay's shift of expiries due soon
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.dropped = 0  # commands dropped entirely
        self.converted = 0  # commands written in another form (HSET, PEXPIREAT LT, HDEL)
        self._warned = False

    def after(self, transform: Callable[[Entry], list[Entry]] | None) -> Callable[[Entry], list[Entry]]:
        """This conversion applied to what ``transform`` (filter / Lua) writes, if any."""
        if transform is None:
            return self
        return lambda e: [e3 for e2 in transform(e) for e3 in self(e2)]

    def __call__(self, e: Entry) -> list[Entry]:
        argv = e.argv
        name = argv[0].lower()
        if name not in COMMANDS or len(argv) < 2:
            return [e]
        try:
            expire, fields, values = self._parse(name, argv)
        except (ValueError, IndexError):
            raise FieldTtlError(f"cannot convert a malformed {argv[0]!r} command: {argv[:8]!r}") from None
        key = argv[1]
        if name == b"hgetdel":
            return self._out(e, [[b"HDEL", key, *fields]])
        if self.mode not in ("drop", "key_ttl"):
            raise FieldTtlError(
                f"{argv[0].decode('ascii', 'replace').upper()} on key {key!r} (db {e.db}): the "
                "target has no hash field expiration (needs Redis >= 7.4 or Valkey >= 9.0): set "
                '[advanced] unsupported_field_ttl = "drop" (copy the hashes without field TTLs) '
                'or "key_ttl" (expire the whole key at its earliest field TTL)'
            )
        if not self._warned:
            self._warned = True
            log.warning(
                "the target has no hash field expiration: field TTL commands of the stream are "
                "%s (unsupported_field_ttl = %s), first %s on key %r; counted in the summary",
                "dropped" if self.mode == "drop" else "folded into the key TTL", self.mode,
                argv[0].decode("ascii", "replace").upper(), key,
            )  # fmt: skip
        cmds: list[list[bytes]] = []
        if expire is not None and expire <= self.now_ms():
            # an expire time already passed deletes the fields (HSETEX: set, then deleted)
            return self._out(e, [[b"HDEL", key, *fields]])
        if values:
            cmds.append([b"HSET", key, *values])
        if expire is not None and self.mode == "key_ttl":
            t = b"%d" % expire
            if self.has_lt:
                cmds.append([b"PEXPIREAT", key, t, b"LT"])
            else:
                cmds.append([b"EVAL", _LT_SCRIPT, b"1", key, t, self.shift])
        return self._out(e, cmds)

    def _out(self, e: Entry, cmds: list[list[bytes]]) -> list[Entry]:
        if not cmds:
            self.dropped += 1
            if self.skip is not None:
                self.skip("field_ttl")
            return []
        self.converted += 1
        out = [Entry(e.db, argv, None, -1) for argv in cmds]
        out[-1].offset = e.offset  # the source position is reached with the last one
        return out

    def _parse(self, name: bytes, argv: list[bytes]) -> tuple[int | None, list[bytes], list[bytes]]:
        """(absolute expire ms or None, fields, field/value pairs of HSETEX)."""
        i = 2
        expire: int | None = None
        scale = _EXPIRE.get(name)
        if scale is not None:
            expire = self._abs(int(argv[2]), scale)
            i = 3
        while argv[i].lower() != b"fields":
            opt = argv[i].lower()
            scale = _TIME_OPTS.get(opt)
            if scale is not None and name != b"hpersist":
                expire = self._abs(int(argv[i + 1]), scale)
                i += 2
            else:  # NX XX GT LT FNX FXX KEEPTTL PERSIST: nothing to carry over
                i += 1
        n = int(argv[i + 1])
        rest = argv[i + 2 :]
        if name == b"hsetex":
            if len(rest) != 2 * n:
                raise ValueError
            return expire, rest[0::2], rest
        if len(rest) != n:
            raise ValueError
        return expire, rest, []

    def _abs(self, v: int, scale: int) -> int:
        return v * -scale if scale < 0 else self.now_ms() + v * scale

    def summary(self) -> str:
        how = "dropped" if self.mode == "drop" else "folded into key TTLs"
        return (
            f"hash field TTL commands of the stream (unsupported_field_ttl = {self.mode}; the "
            f"target has no field expiration): {self.converted} converted, {self.dropped} dropped "
            f"(field TTLs {how})"
        )
