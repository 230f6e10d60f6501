"""Throughput of RedisWriter: N `SET key:i value` entries to a local server (prints entries/s)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from redshake.entry import Entry  # noqa: E402
from redshake.writers.redis import RedisWriter  # noqa: E402
from servers import start_server  # noqa: E402


def main(n: int = 1_000_000, name: str = "redis-7.0") -> None:
    srv = start_server(name)
    try:
        entries = [Entry(0, [b"SET", b"key:%d" % i, b"value"], b"key:%d" % i) for i in range(n)]
        w = RedisWriter(srv.address)
        t0 = time.perf_counter()
        for e in entries:
            w.write(e)
        w.flush()
        dt = time.perf_counter() - t0
        assert w.answered == n, (w.answered, n)
        with srv.client() as c:
            assert c.dbsize() == n
        print(f"{name}: {n} SETs in {dt:.2f}s = {n / dt:,.0f} entries/s")
        w.close()
    finally:
        srv.cleanup()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
