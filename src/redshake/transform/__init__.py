"""Transforms decide per entry: keep, drop, or rewrite into other entries ([filter] rules,
then the Lua ``function``). ``build_transform`` returns None when nothing is configured, so
the pipeline's hot loop pays nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..config.schema import Config
from ..entry import Entry

__all__ = ["build_transform", "unsupported", "Transform"]

Transform = Callable[[Entry], Iterable[Entry]]

_FILTER_KEYS = (
    "allow_keys", "block_keys", "allow_key_prefix", "block_key_prefix",
    "allow_key_suffix", "block_key_suffix", "allow_key_regex", "block_key_regex",
    "allow_db", "block_db", "allow_command", "block_command",
    "allow_command_group", "block_command_group",
)  # fmt: skip


def _configured(cfg: Config) -> list[str]:
    f = cfg.filter
    out = [k for k in _FILTER_KEYS if getattr(f, k)]
    if f.function or cfg.function:
        out.append("function")
    return out


def unsupported(cfg: Config) -> str:
    """Names of configured transform options this build cannot apply ('' if none)."""
    return ", ".join(_configured(cfg))


def build_transform(cfg: Config) -> Transform | None:
    return None
