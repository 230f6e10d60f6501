"""``[filter]`` rules with RedisShake v4.6.2 semantics.

Evaluation order for one entry (a command for one db):

1. keys: a key is blocked when it matches any block rule (exact, regex, prefix, suffix);
   otherwise, when any allow list is set, it must match one allow rule. A multi-key
   command is never split: all its keys must pass. When only some pass the entry is
   dropped too, with an "Inconsistent filter results" warning. Keyless commands pass.
2. ``allow_db`` / ``block_db``;
3. ``allow_command`` / ``block_command`` on the upper-cased parsed name (``XGROUP-CREATE``);
4. ``allow_command_group`` / ``block_command_group`` on the table's group (``unknown`` for
   commands the table does not know).

Every dropped entry is counted in :attr:`KeyFilter.dropped` by reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

from ..commands.lookup import GROUPS, CommandInfo
from ..config.schema import FilterConfig
from ..entry import Entry

__all__ = ["EntryFilter", "FilterError", "build_filter", "compile_regexes"]

log = logging.getLogger("redshake")

_MATCH_ALL = {"*", ".*", "^.*$"}
_BACKREF = re.compile(r"\\[1-9]|\(\?P=")
_MAX_INCONSISTENT_LOGS = 100


class FilterError(ValueError):
    """A [filter] rule cannot be used (bad regex)."""


def compile_regexes(patterns: Sequence[str], what: str) -> Callable[[str], bool] | None:
    """One search function for a list of unanchored patterns (None if the list is empty)."""
    if not patterns:
        return None
    if any(p in _MATCH_ALL for p in patterns):
        return lambda _s: True
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise FilterError(f"[filter] {what}: invalid regular expression {p!r}: {e}") from None
    if len(compiled) == 1:
        search1 = compiled[0].search
        return lambda s: search1(s) is not None
    if any(_BACKREF.search(p) for p in patterns):  # group numbers would shift when combined
        return lambda s: any(c.search(s) for c in compiled)
    try:  # one alternation is faster than a loop; fall back when a pattern cannot be embedded
        combined = re.compile("|".join(f"(?:{p})" for p in patterns))
        search = combined.search
        return lambda s: search(s) is not None
    except re.error:
        return lambda s: any(c.search(s) for c in compiled)


def _enc(items: Sequence[str]) -> list[bytes]:
    return [s.encode("utf-8", "surrogateescape") for s in items]


class EntryFilter:
    """Callable: ``entry, info -> bool`` (keep). ``dropped`` counts drops per reason."""

    def __init__(self, f: FilterConfig) -> None:
        self.block_keys = frozenset(_enc(f.block_keys))
        self.allow_keys = frozenset(_enc(f.allow_keys))
        self.block_prefix = tuple(_enc(f.block_key_prefix))
        self.allow_prefix = tuple(_enc(f.allow_key_prefix))
        self.block_suffix = tuple(_enc(f.block_key_suffix))
        self.allow_suffix = tuple(_enc(f.allow_key_suffix))
        self.block_regex = compile_regexes(f.block_key_regex, "block_key_regex")
        self.allow_regex = compile_regexes(f.allow_key_regex, "allow_key_regex")
        self.has_allow = bool(self.allow_keys or self.allow_prefix or self.allow_suffix or self.allow_regex)
        self.has_block = bool(self.block_keys or self.block_prefix or self.block_suffix or self.block_regex)
        self.key_rules = self.has_allow or self.has_block
        self.allow_db = frozenset(f.allow_db)
        self.block_db = frozenset(f.block_db)
        self.allow_command = frozenset(f.allow_command)
        self.block_command = frozenset(f.block_command)
        self.allow_group = frozenset(f.allow_command_group)
        self.block_group = frozenset(f.block_command_group)
        self.name_rules = bool(self.allow_command or self.block_command or self.allow_group or self.block_group)
        self.active = self.key_rules or bool(self.allow_db or self.block_db) or self.name_rules
        self.dropped: dict[str, int] = {}
        self.inconsistent = 0
        for g in (*f.allow_command_group, *f.block_command_group):
            if g not in GROUPS:
                log.warning(
                    "[filter] command group %r is not a group of the command table (known: %s); "
                    "group names are case-sensitive",
                    g, ", ".join(sorted(GROUPS)),
                )  # fmt: skip
        for c in (*f.allow_command, *f.block_command):
            if c != c.upper():
                log.warning("[filter] command %r is not upper case: it never matches (names are upper-cased)", c)

    def key_ok(self, key: bytes) -> bool:
        if self.has_block:
            if key in self.block_keys:
                return False
            if self.block_prefix and key.startswith(self.block_prefix):
                return False
            if self.block_suffix and key.endswith(self.block_suffix):
                return False
            if self.block_regex is not None and self.block_regex(key.decode("utf-8", "surrogateescape")):
                return False
        if not self.has_allow:
            return True
        if key in self.allow_keys:
            return True
        if self.allow_prefix and key.startswith(self.allow_prefix):
            return True
        if self.allow_suffix and key.endswith(self.allow_suffix):
            return True
        return self.allow_regex is not None and self.allow_regex(key.decode("utf-8", "surrogateescape"))

    def _drop(self, reason: str) -> bool:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return False

    def __call__(self, entry: Entry, info: CommandInfo) -> bool:
        if self.key_rules and info.keys:
            key_ok = self.key_ok
            keys = info.keys
            if len(keys) == 1:
                if not key_ok(keys[0]):
                    return self._drop("filter_key")
            else:
                passed = sum(1 for k in keys if key_ok(k))
                if passed != len(keys):
                    if passed:
                        self.inconsistent += 1
                        if self.inconsistent <= _MAX_INCONSISTENT_LOGS:
                            log.warning(
                                "Inconsistent filter results for entry %r: %d of %d keys pass; "
                                "the whole command is dropped%s",
                                entry, passed, len(keys),
                                "" if self.inconsistent < _MAX_INCONSISTENT_LOGS else " (no more such warnings)",
                            )  # fmt: skip
                        return self._drop("filter_inconsistent")
                    return self._drop("filter_key")
        db = entry.db
        if self.allow_db and db not in self.allow_db:
            return self._drop("filter_db")
        if db in self.block_db:
            return self._drop("filter_db")
        if self.name_rules:
            name = info.name
            if name in self.block_command or (self.allow_command and name not in self.allow_command):
                return self._drop("filter_command")
            group = info.group
            if group in self.block_group or (self.allow_group and group not in self.allow_group):
                return self._drop("filter_group")
        return True


def build_filter(f: FilterConfig) -> EntryFilter | None:
    flt = EntryFilter(f)
    return flt if flt.active else None

