"""A target that refuses redshake's login after a reconnect (its password was changed while
the live sync ran) cannot heal by waiting: the run ends with the reason and says it is
incomplete, instead of reconnecting forever."""

from __future__ import annotations

import time


def test_target_password_changed_mid_run(servers, tmp_path, shakes):
    from harness import Shake

    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0", password="first")
    with src.client() as c:
        c.set("a", 1)
    shake = Shake(tmp_path, src, dst, writer={"password": "first"}).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    with dst.client() as c:
        c.config_set("requirepass", "second")
        c.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    t0 = time.monotonic()
    with src.client() as c:
        while shake.proc.poll() is None and time.monotonic() - t0 < 60:
            c.incr("a")  # something to write: the writer finds its connection gone
            time.sleep(0.2)
    assert shake.wait(10) == 1
    log = shake.log()
    assert "Traceback" not in log, log[-3000:]
    assert "AUTH with password failed" in log and "the copy is incomplete" in log, log[-3000:]
