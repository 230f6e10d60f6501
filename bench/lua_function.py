#!/usr/bin/env python3
"""Throughput of the transform stage alone (no server): entries/s through

* a trivial Lua function ``shake.call(DB, ARGV)``;
* a function that reads KEYS / CMD (forces the command table lookup per entry);
* a function that also reads SLOTS (CRC16 per key);
* filter rules only (prefix + command group).

    python3 bench/lua_function.py [N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from redshake.config.schema import FilterConfig  # noqa: E402
from redshake.entry import Entry  # noqa: E402
from redshake.transform import build_transform  # noqa: E402


def entries(n: int) -> list[Entry]:
    out = []
    for i in range(n):
        k = i % 4
        if k == 0:
            argv = [b"SET", b"user:%d" % i, b"value-%d" % i]
        elif k == 1:
            argv = [b"HSET", b"hash:%d" % i, b"field", b"value"]
        elif k == 2:
            argv = [b"RPUSH", b"list:%d" % i, b"a", b"b", b"c"]
        else:
            argv = [b"ZADD", b"zset:%d" % i, b"1.5", b"member"]
        out.append(Entry(i % 3, argv))
    return out


def bench(name: str, filt: FilterConfig, es: list[Entry]) -> float:
    cfg = SimpleNamespace(filter=filt, function="")  # build_transform reads only these
    t = build_transform(cfg)  # type: ignore[arg-type]
    assert t is not None
    best = 0.0
    for _ in range(3):
        written = 0
        t0 = time.perf_counter()
        for e in es:
            for _e2 in t(e):
                written += 1
        rate = len(es) / (time.perf_counter() - t0)
        best = max(best, rate)
    print(f"{name:<44} {best:>12,.0f} entries/s  (written {written:,} of {len(es):,})")
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    es = entries(n)
    bench("lua: shake.call(DB, ARGV)", FilterConfig(function="shake.call(DB, ARGV)"), es)
    bench(
        "lua: uses KEYS and CMD",
        FilterConfig(function='if KEYS[1] ~= nil and CMD ~= "FLUSHALL" then shake.call(DB, ARGV) end'),
        es,
    )
    bench("lua: uses SLOTS", FilterConfig(function="if SLOTS[1] then shake.call(DB, ARGV) end"), es)
    bench(
        "lua: rename prefix user: -> u:",
        FilterConfig(
            function=(
                "for _, i in ipairs(KEY_INDEXES) do\n"
                "  ARGV[i] = string.gsub(ARGV[i], '^user:', 'u:')\n"
                "end\nshake.call(DB, ARGV)"
            )
        ),
        es,
    )
    bench(
        "filter: block_key_prefix + allow_command_group",
        FilterConfig(block_key_prefix=["list:"], allow_command_group=["STRING", "HASH", "LIST"]),
        es,
    )


if __name__ == "__main__":
    main()
