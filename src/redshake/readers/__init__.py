"""Readers turn a source into entries. ``build_reader`` picks the one the config names."""

from __future__ import annotations

from ..config.schema import Config
from .base import Reader, ReaderContext

__all__ = ["build_reader", "Reader", "ReaderContext"]


def build_reader(cfg: Config, ctx: ReaderContext) -> Reader:
    if cfg.reader_type == "rdb":
        from .rdb_reader import RdbFileReader

        return RdbFileReader(cfg.reader.filepath, ctx)
    raise NotImplementedError(f"the [{cfg.reader_type}_reader] is not implemented yet")
