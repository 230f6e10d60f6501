"""advanced.empty_db_before_sync empties the target before a snapshot is applied, never before
a resume from a checkpoint (which would keep only the writes made since the stop); with a
cluster source the target is emptied once, not once per shard."""

from __future__ import annotations

import threading
import time

from datagen import populate
from harness import (
    Shake,
    digests,
    fill_cluster,
    slot_owners,
    start_load,
    stat,
    wait_cluster_converged,
    wait_converged,
)
from helpers import assert_same_data
from redshake.commands.slots import key_slot

EMPTY = {"empty_db_before_sync": True}


def test_empty_db_before_sync_only_before_a_snapshot(servers, tmp_path, shakes):
    """First start: the target's stale keys go; a restart that resumes with PSYNC keeps
    everything copied so far; a restart whose resume fails (backlog lost) empties again."""
    src = servers.start("redis-7.0", args=["--repl-backlog-size", "1mb"])
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, src.is_valkey, big=False)
    stale = dst.client(5)
    stale.set(b"stale", b"from an earlier life")
    shake = Shake(tmp_path, src, dst, advanced=EMPTY).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    halt = start_load(src, 2)
    time.sleep(1.5)
    halt()
    wait_converged(src, shake)
    assert stale.exists(b"stale") == 0
    assert assert_same_data(src, dst) > 0
    assert shake.terminate() == 0
    copied = dst.client().dbsize()

    # restart: resumes from the checkpoint, nothing is flushed
    halt = start_load(src, 2)
    time.sleep(0.5)
    full0, partial0 = stat(src, "sync_full"), stat(src, "sync_partial_ok")
    shake2 = Shake(tmp_path, src, dst, advanced=EMPTY, name="shake2").start()
    shakes.append(shake2)
    time.sleep(1.5)
    halt()
    wait_converged(src, shake2)
    assert stat(src, "sync_full") == full0, shake2.log()[-3000:]
    assert stat(src, "sync_partial_ok") == partial0 + 1
    log2 = shake2.log()
    assert "resuming from the checkpoint, the target is kept" in log2
    assert "emptying the target" not in log2
    assert dst.client().dbsize() >= copied // 2
    assert assert_same_data(src, dst) > 0
    assert shake2.terminate() == 0

    # the backlog no longer covers the checkpoint: a full sync, so the target is emptied
    c = src.client()
    for i in range(40):
        c.set(f"fill:{i}", b"x" * 50_000)  # 2 MB through a 1 MB backlog
    for i in range(40):
        c.delete(f"fill:{i}")
    c.delete(b"d0:str")
    stale.set(b"stale", b"again")
    shake3 = Shake(tmp_path, src, dst, advanced=EMPTY, name="shake3").start()
    shakes.append(shake3)
    shake3.wait_streaming(60, "the new snapshot")
    wait_converged(src, shake3)
    assert "advanced.empty_db_before_sync" in shake3.log()
    assert stale.exists(b"stale") == 0
    assert dst.client().exists(b"d0:str") == 0
    assert assert_same_data(src, dst) > 0
    assert shake3.terminate() == 0


class _Addr:
    def __init__(self, address: str) -> None:
        self.address = address


def test_empty_db_before_sync_cluster_source_once(servers, tmp_path, shakes):
    """Cluster source: the parent empties the target once before the shards start; a restart
    where every shard resumes keeps the target."""
    src = servers.cluster("redis-7.0", masters=3)
    dst = servers.start("redis-7.0")
    fill_cluster(src, 1500, "before")
    dst.client().set(b"stale", b"x")
    dst.client(2).set(b"stale2", b"x")
    reader = {"cluster": True}
    shake = Shake(tmp_path, _Addr(src.seed), dst, reader=reader, advanced=EMPTY).start()
    shakes.append(shake)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 10:
            fill_cluster(src, 100, f"during{i}")
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1.0)
    stop.set()
    t.join()
    wait_cluster_converged(src, shake)
    assert digests(src.masters) == digests([dst])
    assert dst.client(2).dbsize() == 0
    assert shake.terminate() == 0, shake.log()[-3000:]
    log = shake.log()
    assert log.count("emptying the target once") == 1
    assert "emptying the target (FLUSHALL) before the copy" not in log  # not per shard

    fill_cluster(src, 300, "between")
    shake2 = Shake(tmp_path, _Addr(src.seed), dst, reader=reader, advanced=EMPTY, name="shake2").start()
    shakes.append(shake2)
    fill_cluster(src, 300, "after")
    wait_cluster_converged(src, shake2)
    assert digests(src.masters) == digests([dst])
    log2 = shake2.log()
    assert "3 of 3 shards resume from their checkpoints: the target is kept" in log2
    assert "emptying the target" not in log2
    assert shake2.terminate() == 0, shake2.log()[-3000:]

    # one shard lost its checkpoint: it alone starts with a full sync and deletes only the
    # keys of its own slots; the two others resume and nothing of theirs is touched
    first = src.masters[0]
    (cp,) = (shake.work / f"shard_127.0.0.1_{first.port}").glob("reader_*/checkpoint.json")
    cp.unlink()
    owners = slot_owners(src)
    mine = next(f"stale:{i}" for i in range(1000) if owners[key_slot(f"stale:{i}".encode())] is first)
    theirs = next(f"stale:{i}" for i in range(1000) if owners[key_slot(f"stale:{i}".encode())] is not first)
    dst.client().mset({mine: b"1", theirs: b"1"})
    fill_cluster(src, 300, "third")
    shake3 = Shake(tmp_path, _Addr(src.seed), dst, reader=reader, advanced=EMPTY, name="shake3").start()
    shakes.append(shake3)
    wait_cluster_converged(src, shake3)
    log3 = shake3.log()
    assert "2 of 3 shards resume from their checkpoints: the target is kept" in log3
    assert dst.client().exists(mine) == 0
    assert dst.client().exists(theirs) == 1  # not a FLUSHALL
    dst.client().delete(theirs)
    assert digests(src.masters) == digests([dst])
    assert shake3.terminate() == 0, log3[-3000:]
