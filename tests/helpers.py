"""Test helpers: run redshake on a config, compare two servers key by key."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

# The corpus lives in shared/ beside the checkout (in development and in CI alike).
TESTDATA = Path(os.environ.get("REDSHAKE_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))


def manifest() -> list[dict]:
    return json.loads((TESTDATA / "manifest.json").read_text())["files"]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def write_config(path: Path, sections: dict[str, dict]) -> Path:
    lines = []
    for name, kv in sections.items():
        lines.append(f"[{name}]")
        for k, v in kv.items():
            lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def run_redshake(
    config: Path, *, cwd: Path | None = None, timeout: float = 600, big_value_threshold: int = 0
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (what a user runs); ``big_value_threshold``: stream
    RDB values from this size on instead of 16 MiB, with RDB files read in pieces of half
    that (a value is streamed only when it is not whole in the buffer): small data, the
    big-value paths."""
    cmd = [sys.executable, "-m", "redshake.cli", str(config)]
    if big_value_threshold:
        n = int(big_value_threshold)
        cmd[1:3] = ["-c", "import runpy, redshake.rdb.parser as p, redshake.readers.rdb_reader as r; "
                    f"p.BIG_VALUE_THRESHOLD = {n}; r.READ_SIZE = {max(1, n // 2)}; "
                    "runpy.run_module('redshake.cli', run_name='__main__', alter_sys=True)"]  # fmt: skip
    return subprocess.run(
        cmd,
        cwd=str(cwd or config.parent),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def restore_file(
    rdb: Path, target, tmp: Path, *, cluster: bool = False, big_value_threshold: int = 0, **advanced
) -> subprocess.CompletedProcess:
    adv = {"dir": str(tmp / "work"), "log_interval": 0}
    adv.update(advanced)
    cfg = write_config(
        tmp / "shake.toml",
        {
            "rdb_reader": {"filepath": str(rdb)},
            "redis_writer": {"address": target if isinstance(target, str) else target.address, "cluster": cluster},
            "advanced": adv,
        },
    )
    return run_redshake(cfg, big_value_threshold=big_value_threshold)


def keys_of(c: redis.Redis) -> set[bytes]:
    return set(c.scan_iter(count=1000))


def dbs_with_keys(c: redis.Redis) -> list[int]:
    info = c.info("keyspace")
    return sorted(int(k[2:]) for k in info)


def digest_map(c: redis.Redis, keys: list[bytes]) -> dict[bytes, bytes]:
    out = {}
    for i in range(0, len(keys), 500):
        batch = keys[i : i + 500]
        p = c.pipeline(transaction=False)
        for k in batch:
            p.execute_command("DEBUG", "DIGEST-VALUE", k)
        for k, d in zip(batch, p.execute(), strict=True):
            out[k] = d[0] if isinstance(d, list) else d
    return out


def expire_map(c: redis.Redis, keys: list[bytes], absolute: bool) -> dict[bytes, int]:
    out = {}
    for i in range(0, len(keys), 500):
        batch = keys[i : i + 500]
        p = c.pipeline(transaction=False)
        for k in batch:
            if absolute:
                p.execute_command("PEXPIRETIME", k)
            else:
                p.pttl(k)
        for k, v in zip(batch, p.execute(), strict=True):
            out[k] = v
    return out


def _same_zset(a: redis.Redis, b: redis.Redis, key: bytes) -> bool:
    if a.type(key) != b"zset" or b.type(key) != b"zset":
        return False
    return a.zrange(key, 0, -1, withscores=True) == b.zrange(key, 0, -1, withscores=True)


MARKER_PREFIX = b"redshake:pos:"  # advanced.exactly_once_key (default) + ":"
OWN_PREFIXES = (MARKER_PREFIX, b"redshake:live:")  # and the reverse-sync guard's live markers


def assert_same_data(src, dst, *, dbs: list[int] | None = None, ttl_tolerance_ms: int = 2000) -> int:
    """Every key of every db: same key set, same DEBUG DIGEST-VALUE, same expiry.
    ``src``/``dst`` are test Server objects. Returns the number of keys compared."""
    total = 0
    sc = src.client()
    dbs = dbs if dbs is not None else sorted(set(dbs_with_keys(sc)) | set(dbs_with_keys(dst.client())))
    absolute = src.version >= (7, 0, 0) and dst.version >= (7, 0, 0)
    for db in dbs:
        a, b = src.client(db), dst.client(db)
        # the live sync's exactly-once position and live markers are the target's own keys (on
        # the source too, after a sync in the other direction: not data)
        ka = {k for k in keys_of(a) if not k.startswith(OWN_PREFIXES)}
        kb = {k for k in keys_of(b) if not k.startswith(OWN_PREFIXES)}
        missing, extra = ka - kb, kb - ka
        assert not missing and not extra, (
            f"db {db}: {len(missing)} keys missing on target (e.g. {sorted(missing)[:5]}), "
            f"{len(extra)} unexpected (e.g. {sorted(extra)[:5]})"
        )
        keys = sorted(ka)
        da, dbb = digest_map(a, keys), digest_map(b, keys)
        diff = [k for k in keys if da[k] != dbb[k]]
        if diff and src.is_valkey != dst.is_valkey:
            # Redis and Valkey format zset scores differently inside DEBUG DIGEST-VALUE:
            # compare those zsets by their exact members and scores instead.
            diff = [k for k in diff if not _same_zset(a, b, k)]
        assert not diff, f"db {db}: {len(diff)} keys differ, e.g. {diff[:5]}"
        ea, eb = expire_map(a, keys, absolute), expire_map(b, keys, absolute)
        for k in keys:
            x, y = ea[k], eb[k]
            if x < 0 or y < 0:
                assert x == y, f"db {db} key {k!r}: expiry {x} vs {y}"
            else:
                assert abs(x - y) <= (0 if absolute else ttl_tolerance_ms), f"db {db} key {k!r}: expiry {x} vs {y}"
        total += len(keys)
    return total


def wait_with_peak_rss(proc: subprocess.Popen, poll: float = 0.01) -> tuple[int, int]:
    """Wait for ``proc``; returns (exit code, peak RSS in bytes). The peak is VmHWM read from
    /proc while it runs: it restarts at exec, unlike ru_maxrss of a child forked from a large
    parent, which also counts the parent's pages from before the exec. VmHWM only grows, so
    the last value read before exit is the peak."""
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, peak_rss(proc.pid))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(poll)
    return proc.wait(), peak


def peak_rss(pid: int) -> int:
    """The peak RSS (VmHWM, bytes) of a running process so far."""
    with open(f"/proc/{pid}/status") as st:
        for line in st:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def feed_in_chunks(parser, data: bytes, seed: int, max_chunk: int, out: list,
                   buf_limit: int | None = None) -> list:  # fmt: skip
    """Feed ``data`` to an RDB parser in random pieces of 1..max_chunk bytes (seeded),
    appending its records to ``out`` as they come (so they are there if it raises), then
    ``finish()``. With ``buf_limit``, assert the parser never buffers that much."""
    rnd = random.Random(seed)
    i = 0
    while i < len(data):
        k = rnd.randint(1, max_chunk)
        parser.feed(data[i : i + k])
        i += k
        out.extend(parser.records())
        if buf_limit is not None:
            assert len(parser._buf) < buf_limit  # a slice, never the whole value
    parser.finish()
    return out


def make_certs(d: Path) -> dict[str, str]:
    """A test CA, and server and client certificates for 127.0.0.1 signed by it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl not found on PATH: the TLS tests need it")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
            "-keyout", f"{who}.key", "-out", f"{who}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", f"{who}.crt")  # fmt: skip
    return {
        k: str(d / k) for k in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    }
