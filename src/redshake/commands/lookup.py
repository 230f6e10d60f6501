"""argv -> command name, group and keys, from the generated command table.

``command_info(argv)`` follows the servers' key-spec algorithm (index / keyword begin
search, range / keynum find-keys) and the few commands whose specs are incomplete (SORT
... STORE, MIGRATE ... KEYS). Results per command name are compiled once and cached by the
raw first argument, so the hot path for a first-argument-key command is one dict lookup
and a tuple build.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

from .modules import MODULE_COMMANDS
from .newer import NEWER_COMMANDS
from .table import COMMANDS, CONTAINERS

__all__ = ["CommandInfo", "command_info", "command_keys", "lookup_name", "UNKNOWN_GROUP", "GROUPS"]

log = logging.getLogger("redshake")

UNKNOWN_GROUP = "unknown"

_ALL: dict[str, tuple[str, int, tuple[tuple, ...]]] = {**NEWER_COMMANDS, **COMMANDS, **MODULE_COMMANDS}
GROUPS: frozenset[str] = frozenset(v[0] for v in _ALL.values()) | {UNKNOWN_GROUP}


class CommandInfo(NamedTuple):
    name: str  # upper case; container commands as "XGROUP-CREATE"
    group: str  # RedisShake group name, "unknown" when not in the table
    key_indexes: list[int]  # 0-based positions in argv
    keys: list[bytes]


# positions finder: argv -> list of 0-based indexes
_Finder = Callable[[Sequence[bytes]], list[int]]


def _no_keys(argv: Sequence[bytes]) -> list[int]:
    return []


def _at(i: int) -> _Finder:
    def find(argv: Sequence[bytes]) -> list[int]:
        return [i] if len(argv) > i else []

    return find


def _spec_positions(specs: tuple[tuple, ...], argv: Sequence[bytes]) -> list[int]:
    """The servers' getKeysUsingKeySpecs, 0-based, tolerant of malformed argv."""
    argc = len(argv)
    out: list[int] = []
    for bt, ba, bb, ft, f1, f2, f3, _incomplete in specs:
        if bt == "index":
            first = ba
        elif bt == "keyword":
            kw = ba
            first = 0
            if bb > 0:
                rng = range(bb, argc - 1)
            else:
                rng = range(argc + bb, 0, -1)
            for i in rng:
                if 0 <= i < argc and bytes(argv[i]).upper() == kw:
                    first = i + 1
                    break
            if not first:
                continue
        else:
            continue
        if ft == "range":
            lastkey, step, limit = f1, f2, f3
            if lastkey >= 0:
                last = first + lastkey
            elif not limit:
                last = argc + lastkey
            else:
                last = first + ((argc - first) // limit + lastkey)
        elif ft == "keynum":
            idx = first + f1
            if idx >= argc:
                continue
            try:
                num = int(argv[idx])
            except ValueError:
                continue
            if num < 0:
                continue
            first += f2
            step = f3
            # (keystep > 1: MSETEX numkeys key value [key value ...], as the servers count it)
            last = first + (num - 1) * (step or 1)
        else:
            continue
        if last >= argc or last < first or first >= argc:
            continue
        out.extend(range(first, last + 1, step or 1))
    return out


def _generic(specs: tuple[tuple, ...]) -> _Finder:
    specs = tuple((s[0], s[1].encode(), *s[2:]) if s[0] == "keyword" else s for s in specs)

    def find(argv: Sequence[bytes]) -> list[int]:
        return _spec_positions(specs, argv)

    return find


def _sort_positions(argv: Sequence[bytes]) -> list[int]:
    """SORT key [BY p] [LIMIT o c] [GET p ...] [ASC|DESC] [ALPHA] [STORE dest]: the last
    STORE wins, as in the server."""
    argc = len(argv)
    if argc < 2:
        return []
    out = [1]
    store = -1
    i = 2
    while i < argc:
        a = bytes(argv[i]).upper()
        if a == b"LIMIT":
            i += 2
        elif a in (b"GET", b"BY"):
            i += 1
        elif a == b"STORE" and i + 1 < argc:
            store = i + 1
        i += 1
    if store > 0:
        out.append(store)
    return out


def _migrate_positions(argv: Sequence[bytes]) -> list[int]:
    """MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw | AUTH2 u pw] [KEYS k ...]"""
    argc = len(argv)
    if argc < 4:
        return []
    i = 6
    while i < argc:
        a = bytes(argv[i]).upper()
        if a == b"KEYS":
            if len(argv[3]):
                return [3]
            return list(range(i + 1, argc))
        if a == b"AUTH":
            i += 1
        elif a == b"AUTH2":
            i += 2
        i += 1
    return [3]


_SPECIAL: dict[str, _Finder] = {"SORT": _sort_positions, "MIGRATE": _migrate_positions}


class _Cmd:
    __slots__ = ("name", "group", "find", "subs", "raw_subs")

    def __init__(self, name: str, group: str, find: _Finder | None, subs: bool) -> None:
        self.name = name
        self.group = group
        self.find = find  # None -> keyless
        self.subs = subs  # container command: resolve argv[1]
        self.raw_subs: dict[bytes, _Cmd] = {}


def _compile(name: str) -> _Cmd:
    row = _ALL.get(name)
    if row is None:
        return _Cmd(name, UNKNOWN_GROUP, None, False)
    group, _arity, specs = row
    if name in _SPECIAL:
        find: _Finder | None = _SPECIAL[name]
    elif not specs:
        find = None
    elif len(specs) == 1 and specs[0][0] == "index" and specs[0][3:7] == ("range", 0, 1, 0):
        find = _at(specs[0][1])
    else:
        find = _generic(specs)
    return _Cmd(name, group, find, name in CONTAINERS)


_BY_RAW: dict[bytes, _Cmd] = {}
_WARNED: set[str] = set()


def _resolve(argv: Sequence[bytes]) -> _Cmd:
    raw = bytes(argv[0])
    cmd = _BY_RAW.get(raw)
    if cmd is None:
        name = raw.decode("utf-8", "replace").upper()
        cmd = _compile(name)
        if len(_BY_RAW) < 4096:  # garbage command names must not grow the cache forever
            _BY_RAW[raw] = cmd
    if cmd.subs and len(argv) > 1:
        raw_sub = bytes(argv[1])
        sub = cmd.raw_subs.get(raw_sub)
        if sub is None:
            sub = _compile(f"{cmd.name}-{raw_sub.decode('utf-8', 'replace').upper()}")
            if len(cmd.raw_subs) < 256:
                cmd.raw_subs[raw_sub] = sub
        cmd = sub
    if cmd.group is UNKNOWN_GROUP and cmd.name not in _WARNED and len(_WARNED) < 1000:
        _WARNED.add(cmd.name)
        log.warning("unknown command %s: group 'unknown', no keys (warned once per name)", cmd.name)
    return cmd


def lookup_name(argv: Sequence[bytes]) -> tuple[str, str]:
    """(name, group) only."""
    if not argv:
        return "", UNKNOWN_GROUP
    cmd = _resolve(argv)
    return cmd.name, cmd.group


def command_info(argv: Sequence[bytes]) -> CommandInfo:
    """Name, group and keys of ``argv`` (a command with its arguments, as bytes)."""
    if not argv:
        return CommandInfo("", UNKNOWN_GROUP, [], [])
    cmd = _resolve(argv)
    find = cmd.find
    if find is None:
        return CommandInfo(cmd.name, cmd.group, [], [])
    idx = find(argv)
    return CommandInfo(cmd.name, cmd.group, idx, [argv[i] for i in idx])


def command_keys(argv: Sequence[bytes]) -> list[bytes] | None:
    """Keys for cluster routing: ``[]`` for keyless commands, ``None`` for unknown ones."""
    if not argv:
        return None
    cmd = _resolve(argv)
    if cmd.group is UNKNOWN_GROUP:
        return None
    find = cmd.find
    if find is None:
        return []
    return [argv[i] for i in find(argv)]
