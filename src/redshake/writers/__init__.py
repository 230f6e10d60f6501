"""Writers apply entries to a target. ``build_writer`` picks the one the config names."""

from __future__ import annotations

import importlib.util
import logging

from ..config.schema import Config

__all__ = ["build_writer", "available"]

log = logging.getLogger("redshake")

_FILE_WRITER = "redshake.writers.file_writer"


def available(writer_type: str) -> bool:
    if writer_type == "redis":
        return True
    return writer_type == "file" and importlib.util.find_spec(_FILE_WRITER) is not None


def build_writer(cfg: Config, on_error):
    """The writer for ``cfg``: a file writer, or a standalone / cluster / sentinel-resolved
    Redis writer. ``on_error(entry, message)`` receives every error reply."""
    wc = cfg.writer
    adv = cfg.advanced
    if cfg.writer_type == "file":
        module = importlib.import_module(_FILE_WRITER)
        return module.build(cfg, on_error)
    address = wc.address
    sentinel = getattr(wc, "sentinel", None)
    resolve = None
    if sentinel is not None and getattr(sentinel, "address", ""):
        from redshake.resp.server import resolve_from_config

        def resolve() -> str:  # asked again on every reconnect: follows a failover
            return resolve_from_config(sentinel, "target master")

        address = resolve()
    kw = dict(
        username=wc.username,
        password=wc.password,
        tls=wc.tls,
        tls_verify=not wc.tls_skip_verify,
        tls_config=wc.tls_config.as_dict(),
        pipeline_count_limit=adv.pipeline_count_limit,
        querybuf_limit=adv.target_redis_client_max_querybuf_len,
        max_qps=adv.target_redis_max_qps,
        on_error=on_error,
    )
    if wc.cluster:
        from .cluster import ClusterWriter

        return ClusterWriter(address, **kw)
    from .redis import RedisWriter

    return RedisWriter(address, resolve=resolve, **kw)
