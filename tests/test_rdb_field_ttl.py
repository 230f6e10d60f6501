"""Hash field TTLs into targets without hash field expiration (Valkey 9.1 -> Valkey 8.1 /
Redis 7.0 / Redis 6.2, and the Redis 7.4/8 HFE files of the corpus into Redis 7.0), for each
``[advanced] unsupported_field_ttl``: ``panic`` (default) stops and names the setting,
``drop`` copies the hashes without their field TTLs, ``key_ttl`` expires each such key at the
earliest of its field TTLs and its own TTL."""

from __future__ import annotations

import random
import re
import time

import pytest

from helpers import TESTDATA, restore_file
from redshake.rdb import records as R
from redshake.rdb.parser import RdbParser
from redshake.rdb.values import decode_value

MODES = ("panic", "drop", "key_ttl")


def write_hashes(c, seed: int) -> None:
    """Random hashes, small (listpack) and big (hashtable), some with a key TTL, some fields
    with TTLs; plus plain keys and hashes without field TTLs."""
    rnd = random.Random(seed)
    now = int(time.time() * 1000)
    for db in (0, 1):
        c.execute_command("SELECT", db)
        for i in range(12):
            key = f"h:{i}"
            n = rnd.choice((3, 10, 300))
            c.hset(key, mapping={f"f{j}": rnd.randbytes(rnd.choice((2, 30))) for j in range(n)})
            if i % 3:
                fields = rnd.sample(range(n), rnd.randint(1, n))
                for j in fields:
                    c.execute_command("HPEXPIREAT", key, now + rnd.randint(600_000, 7_200_000),
                                      "FIELDS", 1, f"f{j}")  # fmt: skip
            if i % 4 == 0:
                c.pexpireat(key, now + rnd.randint(300_000, 9_000_000))
        c.set("plain", "v")
        c.hset("nofieldttl", mapping={"a": "1"})
    c.execute_command("SELECT", 0)


def snapshot(c) -> dict:
    """db -> key -> (type, content, key expire ms, {field: field expire ms})."""
    out = {}
    for db in (0, 1):
        c.execute_command("SELECT", db)
        now = int(time.time() * 1000)
        keys = {}
        for k in c.scan_iter():
            t = c.type(k)
            pttl = c.pttl(k)
            exp = now + pttl if pttl > 0 else -1
            if t == b"hash":
                content = c.hgetall(k)
                fexp = {}
                try:
                    ts = c.execute_command("HPEXPIRETIME", k, "FIELDS", len(content), *content)
                    fexp = {f: v for f, v in zip(content, ts, strict=True) if v > 0}
                except Exception:  # a target without field expiration
                    pass
                keys[k] = (t, content, exp, fexp)
            else:
                keys[k] = (t, c.get(k), exp, {})
        out[db] = keys
    c.execute_command("SELECT", 0)
    return out


def assert_mode(src_snap: dict, dst_snap: dict, mode: str, tol: int = 5_000) -> int:
    """The target against the source per mode; returns the number of field TTLs affected."""
    n = 0
    for db, keys in src_snap.items():
        dst = dst_snap[db]
        assert set(keys) == set(dst), f"db {db}: key sets differ"
        for k, (t, content, exp, fexp) in keys.items():
            t2, content2, exp2, fexp2 = dst[k]
            assert (t, content) == (t2, content2), f"db {db} {k!r}: content differs"
            assert not fexp2, f"{k!r}: the target has field TTLs"
            n += len(fexp)
            want = exp
            if mode == "key_ttl" and fexp:
                want = min(fexp.values()) if exp == -1 else min(exp, min(fexp.values()))
            if want == -1:
                assert exp2 == -1, f"db {db} {k!r}: expiry {exp2}, expected none"
            else:
                assert abs(exp2 - want) <= tol, f"db {db} {k!r}: expiry {exp2} vs {want}"
    return n


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dst_name", ["valkey-8.1", "redis-7.0", "redis-6.2"])
def test_field_ttls_into_old_target(dst_name, mode, servers, tmp_path):
    src = servers.start("valkey-9.1")
    dst = servers.start(dst_name)
    write_hashes(src.client(), seed=len(dst_name) + len(mode))
    src.client().save()
    before = snapshot(src.client())
    adv = {} if mode == "panic" else {"unsupported_field_ttl": mode}
    r = restore_file(src.dir / "dump.rdb", dst, tmp_path, **adv)
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    if mode == "panic":
        assert r.returncode != 0
        assert "unsupported_field_ttl" in out, out[-3000:]
        return
    assert r.returncode == 0, out[-4000:]
    n = assert_mode(before, snapshot(dst.client()), mode)
    assert n > 0
    m = re.search(r"hash field TTLs [^:]*: (\d+) fields of (\d+) keys", out)
    assert m and int(m.group(1)) == n, out[-3000:]


def _hfe_files() -> list:
    return ["hdt3213-rdb/hash_with_hfe.rdb", "hdt3213-rdb/hash_as_listpack_with_hfe.rdb",
            "redis-replicator/dump-ttlhash.rdb", "librdb/hash_with_expire_v12.rdb"]  # fmt: skip


def _decoded(path) -> dict:
    p = RdbParser()
    p.feed(path.read_bytes())
    out = {}
    for rec in p.records():
        if type(rec) is R.KeyValue:
            out[rec.key] = (rec.expire_ms, decode_value(rec.type, rec.raw, valkey=p.is_valkey))
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", _hfe_files())
def test_redis_hfe_files_into_redis70(name, mode, servers, tmp_path):
    path = TESTDATA / "rdb" / name
    dst = servers.start("redis-7.0")
    adv = {} if mode == "panic" else {"unsupported_field_ttl": mode}
    r = restore_file(path, dst, tmp_path, **adv)
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    if mode == "panic":
        assert r.returncode != 0 and "unsupported_field_ttl" in out, out[-3000:]
        return
    assert r.returncode == 0, out[-4000:]
    c = dst.client()
    now = int(time.time() * 1000)
    for key, (exp, v) in _decoded(path).items():
        fexp = v.field_expire or {}
        live = [(f, x) for f, x in v.pairs if fexp.get(f, now + 1) > now]
        lives = [fexp[f] for f, _ in live if f in fexp]
        want = exp
        if mode == "key_ttl" and lives:
            want = min(lives) if exp == -1 else min(exp, min(lives))
        if not live or (want != -1 and want <= now):
            assert not c.exists(key), key
            continue
        assert c.hgetall(key) == dict(live), key
        got = c.pttl(key)
        if want == -1:
            assert got == -1, key
        else:
            assert abs(now + got - want) <= 5_000, key


def test_sync_field_ttls_into_old_target(servers, tmp_path):
    """Live sync Valkey 9.1 -> Redis 7.0 with unsupported_field_ttl = key_ttl: the snapshot's
    field TTLs become key TTLs, and so does a field TTL command of the live stream (more:
    tests/test_field_ttl_stream.py)."""
    import subprocess
    import sys

    from helpers import write_config

    src = servers.start("valkey-9.1")
    dst = servers.start("redis-7.0")
    c = src.client()
    now = int(time.time() * 1000)
    c.hset("h", mapping={"a": "1", "b": "2"})
    c.execute_command("HPEXPIREAT", "h", now + 3_600_000, "FIELDS", 1, "a")
    cfg = write_config(tmp_path / "shake.toml", {
        "sync_reader": {"address": src.address},
        "redis_writer": {"address": dst.address},
        "advanced": {"dir": str(tmp_path / "work"), "log_interval": 0,
                     "unsupported_field_ttl": "key_ttl"},
    })  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(cfg)], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not dst.client().exists("h") and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.05)
        assert dst.client().hgetall("h") == {b"a": b"1", b"b": b"2"}
        assert abs(dst.client().pttl("h") - 3_600_000) < 60_000
        c.execute_command("HPEXPIRE", "h", 100_000, "FIELDS", 1, "b")
        while not 0 < dst.client().pttl("h") <= 100_000 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.05)
        assert 90_000 < dst.client().pttl("h") <= 100_000
        proc.terminate()
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out


@pytest.mark.parametrize("mode", ["drop", "key_ttl"])
def test_scan_field_ttls_into_old_target(mode, servers, tmp_path):
    """[scan_reader] (DUMP payloads go through the same conversion) Valkey 9.1 -> Redis 7.0."""
    from helpers import run_redshake, write_config

    src = servers.start("valkey-9.1")
    dst = servers.start("redis-7.0")
    write_hashes(src.client(), seed=3)
    before = snapshot(src.client())
    cfg = write_config(tmp_path / "shake.toml", {
        "scan_reader": {"address": src.address},
        "redis_writer": {"address": dst.address},
        "advanced": {"dir": str(tmp_path / "work"), "log_interval": 0,
                     "unsupported_field_ttl": mode},
    })  # fmt: skip
    r = run_redshake(cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert assert_mode(before, snapshot(dst.client()), mode) > 0
