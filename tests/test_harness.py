"""The shared test-server harness: every binary starts, clusters form."""

from __future__ import annotations

import pytest

import servers as srv


@pytest.mark.parametrize("name", list(srv.SERVER_BINARIES))
def test_start(servers, name: str) -> None:
    s = servers.start(name)
    with s.client() as c:
        c.set(b"a", b"1")
        assert c.get(b"a") == b"1"
    assert s.version[0] >= 5
    assert s.pid in srv.LIVE_PIDS


def test_stop_kills(servers) -> None:
    s = servers.start("redis-7.0", password="pw")
    with s.client() as c:
        assert c.ping()
    s.stop()
    assert not s.alive()
    assert s.pid not in srv.LIVE_PIDS


def test_cluster(servers) -> None:
    cl = servers.cluster("redis-7.0", 3)
    assert len(cl.masters) == 3
    assert cl.owner_of(0) is cl.masters[0]
    assert cl.owner_of(16383) is cl.masters[2]


def test_cluster_old_with_replicas(servers) -> None:
    cl = servers.cluster("redis-5.0", 3, replicas=1)
    assert len(cl.replicas) == 3
