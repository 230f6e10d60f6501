"""``[sync_reader] try_diskless`` as in RedisShake: ``capa eof`` is announced only when it is
true. A disk-based full sync starts its BGSAVE at once, so a write made right after the
handshake reaches redshake as a command (a Lua function written for commands sees it); a
diskless one waits ``repl-diskless-sync-delay`` and such a write arrives inside the snapshot."""

from __future__ import annotations

import pytest

from harness import Shake, replica_offset, wait_converged, wait_for
from helpers import write_config

# Splits MSET into SETs one db higher; everything else passes unchanged.
SPLIT_MSET = """
if string.upper(ARGV[1]) == "MSET" then
  for i = 2, #ARGV, 2 do shake.call(DB + 1, {"SET", ARGV[i], ARGV[i + 1]}) end
else
  shake.call(DB, ARGV)
end
"""


@pytest.mark.parametrize("try_diskless", [False, True], ids=["disk", "diskless"])
def test_try_diskless_decides_whether_early_writes_arrive_as_commands(
    servers, tmp_path, shakes, try_diskless
):
    # Redis 7.0's own defaults: diskless sync with a 5 s delay
    src = servers.start("redis-7.0", args=["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "5"])
    dst = servers.start("redis-7.0")
    c = src.client()
    c.set("before", "1")
    shake = Shake(tmp_path, src, dst, reader={"try_diskless": try_diskless})
    write_config(
        shake.cfg,
        {
            "sync_reader": {"address": src.address, "try_diskless": try_diskless},
            "redis_writer": {"address": dst.address},
            "filter": {"function": SPLIT_MSET},
            "advanced": {"dir": str(shake.work), "log_interval": 1},
        },
    )
    shakes.append(shake.start())
    # the master lists the replica once PSYNC was handled (a disk-based BGSAVE is forked then)
    wait_for(lambda: replica_offset(src)[2] >= 1, 30, "redshake to register as a replica", shake)
    c.mset({"a": "1", "b": "2"})
    wait_converged(src, shake, timeout=60)
    t0, t1 = dst.client(0), dst.client(1)
    assert t0.get("before") == b"1"
    if try_diskless:
        # inside the delayed snapshot: restored as keys of db 0, the function never saw MSET
        assert (t0.mget("a", "b"), t1.dbsize()) == ([b"1", b"2"], 0)
    else:
        # a command of the stream: split by the function into db 1
        assert (t1.mget("a", "b"), t0.exists("a", "b")) == ([b"1", b"2"], 0)
    assert shake.terminate() == 0
