"""Transforms decide per entry: keep, drop, or rewrite into other entries ([filter] rules,
then the Lua ``function``). ``build_transform`` returns None when nothing is configured, so
the pipeline's hot loop pays nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..config.schema import Config
from ..entry import Entry

__all__ = ["build_transform", "Transform"]

Transform = Callable[[Entry], Iterable[Entry]]


def build_transform(cfg: Config) -> Transform | None:
    return None
