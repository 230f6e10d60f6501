"""Readers turn a source into entries. ``build_reader`` picks the one the config names.

Each reader lives in its own module and is imported only when configured; a reader whose
module is not there yet is reported by :func:`available` so the pipeline can refuse the
config up front instead of failing half-way.
"""

from __future__ import annotations

import importlib.util

from ..config.schema import Config
from .base import Reader, ReaderContext

__all__ = ["build_reader", "available", "Reader", "ReaderContext"]

# reader type -> (module, factory function name); factory(cfg, ctx) -> Reader
_READERS = {
    "rdb": ("redshake.readers.rdb_reader", "build"),
    "sync": ("redshake.readers.sync_reader", "build"),
    "scan": ("redshake.readers.scan_reader", "build"),
    "aof": ("redshake.readers.aof_reader", "build"),
}


def available(reader_type: str) -> bool:
    mod = _READERS.get(reader_type)
    return mod is not None and importlib.util.find_spec(mod[0]) is not None


def build_reader(cfg: Config, ctx: ReaderContext) -> Reader:
    if not available(cfg.reader_type):
        raise NotImplementedError(f"the [{cfg.reader_type}_reader] is not implemented yet")
    modname, fn = _READERS[cfg.reader_type]
    module = importlib.import_module(modname)
    return getattr(module, fn)(cfg, ctx)
