"""A target that is loading its dataset (it just restarted; it answers LOADING to every
write) is waited for - when redshake starts and in the middle of a live sync - instead of
ending the run. ``key-load-delay`` (a Redis 7 debugging setting) makes the load last a few
seconds; ``loading-process-events-interval-bytes`` makes the server answer meanwhile."""

from __future__ import annotations

import os
import socket
import threading
import time

from datagen import populate
from harness import Shake, start_load, streaming_sync, wait_converged, wait_for
from helpers import assert_same_data
from servers import free_port


def _slow_load_args(keys: int, seconds: float = 4.0) -> list[str]:
    per_key_us = max(1, int(seconds * 1e6 / max(1, keys)))
    return ["--key-load-delay", str(per_key_us), "--loading-process-events-interval-bytes", "1024"]


def _start_loading(servers, port: int, dir, args: list[str]):
    """Start a server on ``port`` that loads ``dir``/dump.rdb; return once it answers
    LOADING (the server itself is in ``box`` once loaded)."""
    box: list = []
    t = threading.Thread(target=lambda: box.append(
        servers.start("redis-7.0", port=port, dir=dir, args=args)), daemon=True)  # fmt: skip
    t.start()

    def loading() -> bool:
        # (a raw PING: redis-py would retry a LOADING reply for seconds)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(100)
        except OSError:
            return False
        return reply.startswith(b"-LOADING") or bool(box)  # (box: loaded, see below)

    wait_for(loading, 30, "the target to be loading")
    assert not box, "the target finished loading before redshake met it"
    return t, box


def test_target_loading_when_redshake_starts(servers, tmp_path, shakes):
    src = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False)
    # the target's dataset: 40 keys of its own, loaded slowly
    first = servers.start("redis-7.0")
    with first.client() as c:
        for i in range(40):
            c.set(f"old:{i}", os.urandom(1500))  # (not compressible: the server answers every 1 KiB)
        c.save()
    dir = first.dir
    first.stop()
    port = free_port()
    t, box = _start_loading(servers, port, dir, _slow_load_args(40))
    shake = Shake(tmp_path, src, f"127.0.0.1:{port}").start()
    shakes.append(shake)
    t.join(60)
    dst = box[0]
    wait_converged(src, shake)
    log = shake.log()
    assert "LOADING" in log and "asking again" in log, log[-3000:]
    compared = 0
    for db in range(16):
        with src.client(db) as cs, dst.client(db) as cd:
            skeys = list(cs.scan_iter(count=1000))
            for k in skeys:
                assert cd.execute_command("DEBUG", "DIGEST-VALUE", k) == cs.execute_command(
                    "DEBUG", "DIGEST-VALUE", k), (db, k)  # fmt: skip
            # the target's own keys stay (no empty_db_before_sync); besides them only
            # redshake's own markers
            extra = [k for k in cd.scan_iter(count=1000) if not k.startswith(b"redshake:")]
            assert len(extra) == len(skeys) + (40 if db == 0 else 0), db
            compared += len(skeys)
    assert compared > 20
    assert shake.terminate() == 0


def test_target_restarts_and_loads_under_load(servers, tmp_path, shakes):
    """The target saves, is killed and comes back loading that snapshot for seconds while a
    non-idempotent load runs: redshake waits for it, finds from its position marker what
    the restart lost and ends equal to the source."""
    src, dst, shake = streaming_sync(servers, tmp_path, shakes)
    halt = start_load(src)
    try:
        time.sleep(1.0)
        with dst.client() as c:
            c.save()
            keys = sum(v["keys"] for v in c.info("keyspace").values())
        port, dir = dst.port, dst.dir
        time.sleep(0.5)  # writes acknowledged after the save: lost by the restart
        dst.stop()
        t, box = _start_loading(servers, port, dir, _slow_load_args(keys))
        time.sleep(1.0)
    finally:
        halt()
    t.join(60)
    dst = box[0]
    wait_converged(src, shake)
    assert assert_same_data(src, dst, dbs=list(range(16))) > 0
    log = shake.log()
    assert "LOADING" in log, log[-3000:]
    assert shake.terminate() == 0
