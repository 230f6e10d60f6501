"""A target that loses writes it had acknowledged: restarted without its data while the
live sync runs, while the source is idle, or while redshake is stopped. In exactly-once
mode (the default) the target's position marker tells: when it is gone, or behind what
this run still holds, redshake asks the source for a new full sync and copies everything
again instead of going on from its own acknowledged offset (which would silently leave
every earlier key missing). At-least-once cannot tell, and says so."""

from __future__ import annotations

import time

import pytest

from datagen import populate
from harness import Shake, start_load, stat, wait_converged, wait_for
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
