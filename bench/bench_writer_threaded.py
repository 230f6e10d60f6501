"""Comparison for the writer design: replies read by a reader thread (instead of the
non-blocking reads interleaved with sends that RedisWriter uses). Prints entries/s."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from redshake.entry import Entry  # noqa: E402
from redshake.resp.conn import connect  # noqa: E402
from redshake.resp.encode import encode  # noqa: E402
from servers import start_server  # noqa: E402


def run(address: str, entries: list[Entry], limit: int = 1024) -> float:
    conn = connect(address)
    inflight: deque = deque()
    progress = threading.Event()
    answered = [0]

    def reader() -> None:
        gets = conn.reader.gets
        while True:
            conn.fill()
            n = 0
            while (r := gets()) is not False:
                inflight.popleft()
                n += 1
                if r.__class__ is not bytes and r.__class__ is not int:
                    raise RuntimeError(r)
            answered[0] += n
            progress.set()
            if answered[0] >= len(entries):
                return

    t = threading.Thread(target=reader, daemon=True)
    t0 = time.perf_counter()
    t.start()
    buf: list[bytes] = []
    size = 0
    for e in entries:
        data = encode(e.argv)
        buf.append(data)
        size += len(data)
        inflight.append((e, len(data)))
        if size >= 32768 or len(buf) >= limit // 2:
            conn.send(b"".join(buf))
            buf.clear()
            size = 0
            while len(inflight) > limit:
                progress.clear()
                if len(inflight) > limit:
                    progress.wait(1)
    if buf:
        conn.send(b"".join(buf))
    t.join()
    dt = time.perf_counter() - t0
    conn.close()
    return dt


def main(n: int = 1_000_000) -> None:
    srv = start_server("redis-7.0")
    try:
        entries = [Entry(0, [b"SET", b"key:%d" % i, b"value"], b"key:%d" % i) for i in range(n)]
        dt = run(srv.address, entries)
        print(f"reader-thread variant: {n} SETs in {dt:.2f}s = {n / dt:,.0f} entries/s")
    finally:
        srv.cleanup()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
