"""Shared fixtures: ``servers`` (start real servers / clusters, always killed), ``shakes``
(redshake processes, always killed; it lives in harness.py) and ``tmp_dir``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers as _servers  # noqa: E402
from harness import shakes  # noqa: E402, F401  (the fixture, defined with the harness)


class ServerFactory:
    """Starts servers for one test; everything it started is killed by PID at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[_servers.Server] = []
        self.clusters: list[_servers.Cluster] = []

    def start(self, name: str = "redis-7.0", **kw) -> _servers.Server:
        try:
            s = _servers.start_server(name, **kw)
        except _servers.ServerBinaryMissing as e:
            pytest.fail(str(e) + " (run scripts/install-servers.sh; `make test` does)")
        self.started.append(s)
        return s

    def cluster(self, name: str = "redis-7.0", masters: int = 3, **kw) -> _servers.Cluster:
        try:
            c = _servers.start_cluster(name, masters, **kw)
        except _servers.ServerBinaryMissing as e:
            pytest.fail(str(e) + " (run scripts/install-servers.sh; `make test` does)")
        self.clusters.append(c)
        return c

    def sentinel(self, master: _servers.Server, master_name: str = "mymaster", **kw):
        try:
            s = _servers.start_sentinel(master, master_name, **kw)
        except _servers.ServerBinaryMissing as e:
            pytest.fail(str(e) + " (run scripts/install-servers.sh; `make test` does)")
        self.started.append(s)
        return s

    def close(self) -> None:
        for c in self.clusters:
            c.close()
        for s in self.started:
            s.cleanup()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(autouse=True)
def _restore_redshake_logger() -> Iterator[None]:
    """setup_logging() reconfigures the shared "redshake" logger (handlers, level,
    propagation): put it back after every test, so caplog-based tests see its records."""
    logger = logging.getLogger("redshake")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for h in list(logger.handlers):
        if h not in saved[0]:
            logger.removeHandler(h)
            h.close()
    logger.level, logger.propagate = saved[1], saved[2]


@pytest.fixture(scope="session", autouse=True)
def _kill_leftover_servers() -> Iterator[None]:
    try:
        yield
    finally:
        _servers.kill_all()
