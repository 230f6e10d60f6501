"""Transforms decide per entry: keep, drop, or rewrite into other entries ([filter] rules,
then the Lua ``function``). ``build_transform`` returns None when nothing is configured, so
the pipeline's hot loop pays nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..commands.lookup import command_info
from ..config.schema import Config
from ..entry import Entry
from .filter import EntryFilter, FilterError, build_filter
from .lua import LuaFunction, LuaSyntaxError

__all__ = ["build_transform", "unsupported", "Transform", "TransformChain", "TransformError"]

Transform = Callable[[Entry], Iterable[Entry]]


class TransformError(ValueError):
    """The [filter] section cannot be used (bad regex, Lua syntax error): exit 2, nothing written."""


_FILTER_KEYS = (
    "allow_keys", "block_keys", "allow_key_prefix", "block_key_prefix",
    "allow_key_suffix", "block_key_suffix", "allow_key_regex", "block_key_regex",
    "allow_db", "block_db", "allow_command", "block_command",
    "allow_command_group", "block_command_group",
)  # fmt: skip


def configured(cfg: Config) -> list[str]:
    """The [filter] options this config sets (for the startup 'mode' line)."""
    f = cfg.filter
    out = [k for k in _FILTER_KEYS if getattr(f, k)]
    if f.function or cfg.function:
        out.append("function")
    return out


def unsupported(cfg: Config) -> str:
    """Names of configured transform options this build cannot apply ('' if none)."""
    return ""


class TransformChain:
    """``entry -> entries``: the filter rules, then the Lua function. Entries a function
    emits are not filtered again (as RedisShake)."""

    def __init__(self, flt: EntryFilter | None, fn: LuaFunction | None) -> None:
        self.filter = flt
        self.function = fn

    def __call__(self, entry: Entry) -> Iterable[Entry]:
        flt = self.filter
        info = None
        if flt is not None:
            info = command_info(entry.argv)
            if not flt(entry, info):
                return ()
        fn = self.function
        if fn is None:
            return (entry,)
        return fn(entry, info)

    def dropped(self) -> dict[str, int]:
        """Entries dropped on purpose, per reason (filter_key, filter_db, filter_command,
        filter_group, filter_inconsistent, function)."""
        out: dict[str, int] = {}
        if self.filter is not None:
            out.update(self.filter.dropped)
        if self.function is not None and self.function.dropped:
            out["function"] = self.function.dropped
        return out

    def summary(self) -> list[str]:
        d = self.dropped()
        parts = ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "none"
        line = f"transform: entries dropped={sum(d.values())} ({parts})"
        if self.function is not None:
            line += f", emitted by the function={self.function.emitted}"
        return [line]


def build_transform(cfg: Config) -> TransformChain | None:
    """Compile the filter rules and the Lua function; raises TransformError on bad input."""
    f = cfg.filter
    source = f.function or cfg.function
    if f.function.strip() and cfg.function.strip() and f.function != cfg.function:
        raise TransformError('both a top-level "function" and "function" in [filter] are set; keep one')
    try:
        flt = build_filter(f)
        fn = LuaFunction(source) if source.strip() else None
    except (FilterError, LuaSyntaxError) as e:
        raise TransformError(str(e)) from None
    if flt is None and fn is None:
        return None
    return TransformChain(flt, fn)
