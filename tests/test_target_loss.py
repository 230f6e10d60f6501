"""A target that loses writes it had acknowledged: restarted without its data while the
live sync runs, while the source is idle, or while redshake is stopped. In exactly-once
mode (the default) the target's position marker tells: when it is gone, or behind what
this run still holds, redshake asks the source for a new full sync and copies everything
again instead of going on from its own acknowledged offset (which would silently leave
every earlier key missing). At-least-once cannot tell, and says so."""

from __future__ import annotations

import re
import time

import pytest

from datagen import populate
from harness import Shake, digests, start_load, stat, wait_converged, wait_for
from helpers import assert_same_data


def _restart_empty(servers, dst):
    """kill -9 the target and start a new, empty server on its port (no persistence)."""
    port = dst.port
    dst.stop()
    time.sleep(0.2)
    return servers.start("redis-7.0", port=port)


def _marker(dst, src) -> bytes | None:
    with dst.client() as c:
        return c.get(f"redshake:pos:{src.address}")


@pytest.mark.parametrize("exactly_once", [True, False])
def test_target_restarted_empty_under_load(servers, tmp_path, shakes, exactly_once):
    """The target is killed and comes back empty while a non-idempotent load runs: with the
    marker, redshake notices the loss, syncs in full again and ends equal to the source;
    without it, it warns that the target is another server process."""
    src = servers.start("redis-7.0", args=["--repl-backlog-size", "64mb"])
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False)
    adv = {} if exactly_once else {"exactly_once": False}
    shake = Shake(tmp_path, src, dst, advanced=adv).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    full0 = stat(src, "sync_full")
    halt = start_load(src, idempotent=not exactly_once)
    try:
        time.sleep(1.0)
        dst = _restart_empty(servers, dst)
        time.sleep(1.5)
    finally:
        halt()
    if not exactly_once:
        wait_for(lambda: "is another server process now" in shake.log(), 30, "the warning", shake)
        assert "lost writes it had acknowledged" not in shake.log()
        assert shake.terminate() == 0
        return
    wait_for(lambda: stat(src, "sync_full") > full0, 60, "a new full sync", shake)
    wait_converged(src, shake)
    assert assert_same_data(src, dst, dbs=list(range(15))) > 0
    log = shake.log()
    assert "the target holds no position marker" in log and "lost writes it had acknowledged" in log, log[-3000:]
    assert "is another server process now" not in log  # the marker covers it: no vague warning
    assert shake.reader()["target_losses"] >= 1
    assert shake.terminate() == 0
    # the summary adds up both snapshots on both sides: every key sent was acknowledged
    m = re.search(r"summary: keys read=(\d+), written=(\d+) of (\d+) sent", shake.log())
    assert m, shake.log()[-2000:]
    read, written, sent = map(int, m.groups())
    assert written == sent == read >= 2 * 10, m.group(0)



def _synced(servers, tmp_path, shakes):
    """A populated Redis 7.0 source, an empty target, redshake streaming between them."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False)
    shake = Shake(tmp_path, src, dst).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    return src, dst, shake

def test_target_restarted_empty_while_source_idle(servers, tmp_path, shakes):
    """No command after the snapshot: the marker written right after it (an empty unit)
    still shows the target held the snapshot. The target comes back empty; the next write
    on the source finds the connection gone, and the loss is found from the missing marker."""
    src, dst, shake = _synced(servers, tmp_path, shakes)
    wait_for(lambda: _marker(dst, src) is not None, 30, "the marker after the snapshot", shake)
    full0 = stat(src, "sync_full")
    dst = _restart_empty(servers, dst)
    with src.client() as c:
        c.set("after:restart", b"1")
    wait_for(lambda: stat(src, "sync_full") > full0, 60, "a new full sync", shake)
    wait_converged(src, shake)
    assert assert_same_data(src, dst, dbs=list(range(15))) > 0
    assert shake.reader()["target_losses"] == 1
    assert shake.terminate() == 0


def test_target_emptied_while_stopped(servers, tmp_path, shakes):
    """redshake stops cleanly; the target restarts empty; the next start does not resume
    from the checkpoint (that would leave every earlier key missing) but syncs in full."""
    src, dst, shake = _synced(servers, tmp_path, shakes)
    with src.client() as c:
        c.incr("counter")
    wait_converged(src, shake)
    assert shake.terminate() == 0
    assert Shake(tmp_path, src, dst).checkpoint()["marker"] is True
    dst = _restart_empty(servers, dst)
    full0 = stat(src, "sync_full")
    shake = Shake(tmp_path, src, dst).start()
    shakes.append(shake)
    wait_for(lambda: stat(src, "sync_full") > full0, 60, "a full sync", shake)
    wait_converged(src, shake)
    assert assert_same_data(src, dst, dbs=list(range(15))) > 0
    log = shake.log()
    assert "holds no position marker" in log and "Copying everything again" in log, log[-3000:]
    assert shake.terminate() == 0


# -- cluster targets: one marker per master (per slot on Redis < 7.0) ----------------------


def _restart_node_empty(servers, cluster, node):
    """kill -9 a master of ``cluster`` and start it again on its port from its nodes file
    (it keeps its id and slots) without its data."""
    node.stop()
    time.sleep(0.2)
    new = servers.start(node.name, port=node.port, dir=node.dir, cluster=True)
    for group in (cluster.servers, cluster.masters):
        group[group.index(node)] = new
    return new


def _cluster_ok(cluster) -> bool:
    with cluster.masters[0].client() as c:
        return b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")


@pytest.mark.parametrize("target", ["redis-7.0", "redis-6.2"])
def test_cluster_target_master_restarted_empty_under_load(servers, tmp_path, shakes, target):
    """One master of a cluster target comes back empty while a non-idempotent load runs:
    the markers the writer set there and saw acknowledged are gone, so redshake syncs in
    full again and ends equal to the source (Redis 7.0: one marker per master set by the
    unit script; Redis 6.2: one marker per slot)."""
    src = servers.start(target, args=["--repl-backlog-size", "64mb"])
    dst = servers.cluster(target, masters=3)
    shake = Shake(tmp_path, src, dst.seed, writer={"cluster": True}).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    full0 = stat(src, "sync_full")
    halt = start_load(src, dbs=(0,))
    try:
        time.sleep(1.5)
        _restart_node_empty(servers, dst, dst.masters[1])
        wait_for(lambda: _cluster_ok(dst), 30, "the target cluster to be whole again", shake)
        time.sleep(1.0)
    finally:
        halt()
    wait_for(lambda: stat(src, "sync_full") > full0, 60, "a new full sync", shake)
    wait_converged(src, shake, timeout=90)
    want = digests([src])
    assert len(want) > 100 and digests(dst.masters) == want
    log = shake.log()
    assert "hold no position marker of replication id" in log, log[-3000:]
    assert "lost writes it had acknowledged" in log, log[-3000:]
    assert shake.reader()["target_losses"] >= 1
    assert shake.terminate() == 0


def test_cluster_target_emptied_while_stopped(servers, tmp_path, shakes):
    """redshake stops; every master of the cluster target restarts empty; the next start
    finds no marker of the checkpoint's replication id anywhere and syncs in full."""
    src = servers.start("redis-7.0")
    dst = servers.cluster("redis-7.0", masters=3)
    with src.client() as c:
        p = c.pipeline(transaction=False)
        for i in range(500):
            p.set(f"k:{i}", b"v" * (i % 100))
            p.rpush(f"l:{i % 50}", i)
        p.execute()
    shake = Shake(tmp_path, src, dst.seed, writer={"cluster": True}).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    with src.client() as c:
        for i in range(300):
            c.incr(f"counter:{i}")
    wait_converged(src, shake)
    assert shake.terminate() == 0
    for m in list(dst.masters):
        _restart_node_empty(servers, dst, m)
    wait_for(lambda: _cluster_ok(dst), 30, "the target cluster to be whole again")
    full0 = stat(src, "sync_full")
    shake = Shake(tmp_path, src, dst.seed, writer={"cluster": True}).start()
    shakes.append(shake)
    wait_for(lambda: stat(src, "sync_full") > full0, 60, "a full sync", shake)
    wait_converged(src, shake)
    want = digests([src])
    assert len(want) > 300 and digests(dst.masters) == want
    log = shake.log()
    assert "the target cluster holds no position marker" in log, log[-3000:]
    assert shake.terminate() == 0
