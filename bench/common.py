"""Shared benchmark helpers: servers, data sets (cached under bench/out/), timing, RSS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT / "tests"))

from helpers import wait_with_peak_rss  # noqa: E402
from servers import kill_all, start_server  # noqa: E402,F401

# Creates `n` keys named <prefix>:<i> of `kind`, each with `m` elements, inside the server.
_LUA_FILL = """
local kind, prefix, first, n, m = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local cmd = ({hash = 'HSET', zset = 'ZADD', set = 'SADD', list = 'RPUSH'})[kind]
for i = first, first + n - 1 do
  local k = prefix .. ':' .. i
  local j = 1
  while j <= m do
    local args = {}
    local last = math.min(m, j + 499)
    for x = j, last do
      if kind == 'hash' then args[#args+1] = 'f' .. x; args[#args+1] = 'value-' .. x
      elseif kind == 'zset' then args[#args+1] = x * 1.5; args[#args+1] = 'member-' .. x
      else args[#args+1] = 'element-' .. x end
    end
    redis.call(cmd, k, unpack(args))
    j = last + 1
  end
end
return n
"""


def fill(c, kind: str, prefix: str, n: int, m: int, batch: int = 500) -> None:
    sha = c.script_load(_LUA_FILL)
    for first in range(0, n, batch):
        c.evalsha(sha, 0, kind, prefix, first, min(batch, n - first), m)


def dataset(name: str, build, server: str = "redis-7.0") -> Path:
    """Return bench/out/<name>.rdb, building it with build(client) on a fresh `server` once."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.rdb"
    if path.exists():
        return path
    print(f"building data set {name} ...", flush=True)
    s = start_server(server)
    try:
        c = s.client()
        c.config_set("save", "")
        build(c)
        c.save()
        shutil.copy(s.dir / "dump.rdb", path)
    finally:
        s.cleanup()
    return path


def standard_2m(scale: float = 1.0):
    """The issue's 2,000,000-key set: 1.5M 16-byte strings + 125k each of hashes, lists,
    sets and zsets of 100 elements (scaled by `scale`)."""

    def build(c) -> None:
        c.execute_command("DEBUG", "POPULATE", int(1_500_000 * scale), "key", 16)
        for kind in ("hash", "list", "set", "zset"):
            fill(c, kind, kind, int(125_000 * scale), 100)

    return build


def native_load_seconds(rdb: Path, name: str = "redis-7.0") -> float:
    """Wall time from starting redis-server on the file until it answers PING after loading."""
    d = OUT / "native-load"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    os.link(rdb, d / "dump.rdb") if rdb.stat().st_dev == d.stat().st_dev else shutil.copy(rdb, d / "dump.rdb")
    t = time.monotonic()
    s = start_server(name, dir=d, dbfilename="dump.rdb", timeout=600)
    elapsed = time.monotonic() - t
    s.cleanup()
    shutil.rmtree(d, ignore_errors=True)
    return elapsed


def run_measured(argv: list[str], cwd: Path | None = None) -> tuple[float, int, int]:
    """Run a command; returns (seconds, exit code, peak RSS in bytes).

    The peak is VmHWM read from /proc while the command runs: it restarts at exec, unlike
    ru_maxrss of a forked child, which also counts the parent's pages from before the exec."""
    t = time.monotonic()
    p = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(p.stdout.read() if p.stdout else b""))
    reader.start()
    code, peak = wait_with_peak_rss(p, poll=0.02)
    elapsed = time.monotonic() - t
    reader.join()
    if code != 0:
        sys.stderr.write(b"".join(out).decode(errors="replace")[-3000:])
    return elapsed, code, peak
