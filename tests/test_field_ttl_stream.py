"""Hash field TTL commands of the live stream and of AOF replays into targets without hash
field expiration (Valkey 9.1 -> Valkey 8.1 / Redis 7.0 / Redis 6.2, standalone and cluster),
per ``[advanced] unsupported_field_ttl``: ``panic`` (default) stops naming the setting,
``drop`` writes the hashes without field TTLs, ``key_ttl`` also lowers the key's TTL to each
field TTL (the key expires at the earliest field TTL it was given and its own TTL)."""

from __future__ import annotations

import json
import random
import re
import time
import urllib.request

import pytest

from harness import Shake, wait_converged, wait_for
from helpers import OWN_PREFIXES, run_redshake, write_config
from redshake.entry import Entry
from redshake.transform.field_ttl import FieldTtlCommands
from servers import free_port

TARGETS = ("valkey-8.1", "redis-7.0", "redis-6.2")


def now_ms() -> int:
    return int(time.time() * 1000)


def workload(src, dbs: tuple[int, ...], seed: int) -> dict:
    """Random field TTL traffic on Valkey 9.1 (HSET, HSETEX, HEXPIRE, HPEXPIREAT, HPERSIST,
    HGETEX, HDEL, HGETDEL, key PEXPIREATs, field TTLs in the past, MULTI). Field TTLs are
    1-2 h ahead (nothing expires during the test) unless meant to be in the past.
    Returns {(db, key): expire ms the key must have with key_ttl, or -1}: its own TTL,
    lowered by every field TTL given since (as the conversion only ever lowers it)."""
    rnd = random.Random(seed)
    model: dict[tuple[int, bytes], int] = {}

    def lower(db: int, key: bytes, t: int) -> None:
        cur = model.get((db, key), -1)
        model[(db, key)] = t if cur == -1 else min(cur, t)

    for db in dbs:
        c = src.client(db)
        keys = [b"fh:%d" % i for i in range(8)]
        for key in keys:
            c.hset(key, mapping={b"f%d" % j: rnd.randbytes(rnd.choice((3, 40))) for j in range(6)})
        for _ in range(120):
            key = rnd.choice(keys)
            fields = c.hkeys(key)
            if not fields:
                c.hset(key, b"f0", b"new")
                model.pop((db, key), None)
                continue
            some = rnd.sample(fields, rnd.randint(1, len(fields)))
            op = rnd.randrange(11)
            t = now_ms() + rnd.randint(3_600_000, 7_200_000)
            if op == 0:
                c.execute_command("HPEXPIREAT", key, t, "FIELDS", len(some), *some)
                lower(db, key, t)
            elif op == 1:
                secs = rnd.randint(3600, 7200)
                t = now_ms() + secs * 1000
                c.execute_command("HEXPIRE", key, secs, "FIELDS", len(some), *some)
                lower(db, key, t)
            elif op == 2:
                c.execute_command("HSETEX", key, "PXAT", t, "FIELDS", 1, b"n%d" % rnd.randrange(9), b"v")
                lower(db, key, t)
            elif op == 3:
                f = b"x%d" % rnd.randrange(1000)
                if c.execute_command("HSETEX", key, "FNX", "EX", 5000, "FIELDS", 1, f, b"w"):
                    lower(db, key, now_ms() + 5_000_000)  # (not written: not propagated)
            elif op == 4:
                c.execute_command("HSETEX", key, "KEEPTTL", "FIELDS", 1, some[0], b"kept")
            elif op == 5:
                c.execute_command("HPERSIST", key, "FIELDS", len(some), *some)
            elif op == 6:
                c.execute_command("HGETEX", key, "PXAT", t, "FIELDS", 1, some[0])
                lower(db, key, t)
            elif op == 7:
                c.execute_command("HGETEX", key, "PERSIST", "FIELDS", 1, some[0])
            elif op == 8:  # deleted fields: HDEL, HGETDEL, a field TTL in the past
                how = rnd.randrange(4)
                if how == 0:
                    c.hdel(key, *some[:2])
                elif how == 1:
                    c.execute_command("HGETDEL", key, "FIELDS", 1, some[0])
                elif how == 2:
                    c.execute_command("HEXPIRE", key, 0, "FIELDS", 1, some[0])
                else:
                    c.execute_command("HPEXPIREAT", key, now_ms() - 5000, "FIELDS", 1, some[0])
            elif op == 9:
                kt = now_ms() + rnd.randint(1_800_000, 9_000_000)
                c.pexpireat(key, kt)
                model[(db, key)] = kt
            else:  # a transaction
                p = c.pipeline(transaction=True)
                p.execute_command("HSETEX", key, "PX", 4_000_000, "FIELDS", 2, b"m1", b"1", b"m2", b"2")
                p.execute_command("HPEXPIREAT", key, t, "FIELDS", 1, b"m1")
                p.execute()
                lower(db, key, min(t, now_ms() + 4_000_000))
            if not c.exists(key):  # its last field went: the key is gone on both sides
                model.pop((db, key), None)
        c.set(b"plain", b"v")
    return model


def content(clients_by_db: dict[int, list]) -> dict:
    """{(db, key): (type, value, expire ms or -1, field expire times)} over all nodes."""
    out = {}
    for db, clients in clients_by_db.items():
        for c in clients:
            now = now_ms()
            for k in c.scan_iter(count=1000):
                if k.startswith(OWN_PREFIXES):  # the exactly-once position and live markers
                    continue
                pttl = c.pttl(k)
                exp = now + pttl if pttl > 0 else -1
                if c.type(k) == b"hash":
                    h = c.hgetall(k)
                    try:
                        ts = c.execute_command("HPEXPIRETIME", k, "FIELDS", len(h), *h)
                        fexp = sorted(v for v in ts if v > 0)
                    except Exception:  # no field expiration on this server
                        fexp = []
                    out[(db, k)] = ("hash", h, exp, fexp)
                else:
                    out[(db, k)] = ("string", c.get(k), exp, [])
    return out


def assert_converted(src: dict, dst: dict, model: dict, mode: str, tol: int = 2_000) -> int:
    """Same keys and values both ways, no field TTLs on the target; key expire times: the
    source's own (drop) or the model's (key_ttl). Returns the source's field TTL count."""
    assert set(src) == set(dst), f"missing {set(src) - set(dst)}, extra {set(dst) - set(src)}"
    n = 0
    for k, (t, v, exp, fexp) in src.items():
        t2, v2, exp2, fexp2 = dst[k]
        assert (t, v) == (t2, v2), f"{k!r}: differs"
        assert not fexp2, f"{k!r}: field TTLs on the target"
        n += len(fexp)
        want = model.get(k, -1) if mode == "key_ttl" else exp
        if want == -1:
            assert exp2 == -1, f"{k!r}: expires at {exp2}, expected no TTL"
        else:
            assert abs(exp2 - want) <= tol, f"{k!r}: expires at {exp2}, expected {want}"
    return n


def _counts(log: str) -> tuple[int, int]:
    m = re.search(r"field TTL commands of the stream [^:]*: (\d+) converted, (\d+) dropped", log)
    assert m, log[-3000:]
    return int(m.group(1)), int(m.group(2))


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("mode", ["drop", "key_ttl"])
@pytest.mark.parametrize("dst_name", TARGETS)
def test_live_field_ttl_commands(dst_name, mode, servers, tmp_path, shakes):
    src = servers.start("valkey-9.1")
    dst = servers.start(dst_name)
    src.client().set(b"before", b"1")
    port = free_port()
    shake = Shake(tmp_path, src, dst, status_port=port, advanced={"unsupported_field_ttl": mode})
    shakes.append(shake.start())
    shake.wait_streaming(120, "the snapshot")
    dbs = (0, 1, 3)
    model = workload(src, dbs, seed=len(dst_name) * 7 + len(mode))
    wait_converged(src, shake, timeout=120)
    n = assert_converted(
        content({db: [src.client(db)] for db in dbs}),
        content({db: [dst.client(db)] for db in dbs}), model, mode,
    )  # fmt: skip
    assert n > 0
    dropped = _status(port)["redshake"]["skipped"].get("field_ttl", 0)
    assert shake.terminate() == 0, shake.log()[-3000:]
    log = shake.log()
    assert "Traceback" not in log
    converted, dropped_logged = _counts(log)
    assert dropped_logged == dropped > 0 and converted > 0


@pytest.mark.parametrize("mode", ["drop", "key_ttl"])
def test_live_field_ttl_commands_into_cluster(mode, servers, tmp_path, shakes):
    """Into a Redis 7.0 cluster: the converted commands reach each key's master."""
    src = servers.start("valkey-9.1")
    dst = servers.cluster("redis-7.0", masters=3)

    class _Addr:
        address = dst.seed

    shake = Shake(tmp_path, src, _Addr(), advanced={"unsupported_field_ttl": mode})
    shake.cfg.write_text(shake.cfg.read_text().replace("[redis_writer]\n", "[redis_writer]\ncluster = true\n"))
    shakes.append(shake.start())
    shake.wait_streaming(120, "the snapshot")
    model = workload(src, (0,), seed=11 + len(mode))
    wait_converged(src, shake, timeout=120)
    dst_content = content({0: [m.client() for m in dst.masters]})
    assert assert_converted(content({0: [src.client()]}), dst_content, model, mode) > 0
    assert shake.terminate() == 0, shake.log()[-3000:]


def test_live_field_ttl_panic(servers, tmp_path, shakes):
    """Default: the first field TTL command of the stream stops the run, naming the setting
    (an HGETDEL before it, which the target lacks too, becomes HDEL)."""
    src = servers.start("valkey-9.1")
    dst = servers.start("valkey-8.1")
    src.client().hset(b"h", mapping={b"a": b"1", b"b": b"2"})
    shake = Shake(tmp_path, src, dst)
    shakes.append(shake.start())
    shake.wait_streaming(120, "the snapshot")
    src.client().execute_command("HGETDEL", b"h", "FIELDS", 1, b"b")
    wait_for(lambda: dst.client().hgetall(b"h") == {b"a": b"1"}, 120, "the HDEL", shake)
    src.client().execute_command("HPEXPIRE", b"h", 100_000, "FIELDS", 1, b"a")
    assert shake.wait(120) == 1
    log = shake.log()
    assert "Traceback" not in log and "unsupported_field_ttl" in log and "HPEXPIREAT" in log, log[-3000:]


@pytest.mark.parametrize("mode", ["panic", "drop", "key_ttl"])
def test_aof_replay_field_ttl_commands(mode, servers, tmp_path):
    """A Valkey 9.1 AOF holding the field TTL commands replayed into Valkey 8.1."""
    src = servers.start("valkey-9.1", args=["--appendonly", "yes", "--appendfsync", "always"])
    dbs = (0, 2)
    model = workload(src, dbs, seed=len(mode))
    dst = servers.start("valkey-8.1")
    adv = {"dir": str(tmp_path / "work"), "log_interval": 0}
    if mode != "panic":
        adv["unsupported_field_ttl"] = mode
    cfg = write_config(tmp_path / "shake.toml", {
        "aof_reader": {"filepath": str(src.dir / "appendonlydir")},
        "redis_writer": {"address": dst.address},
        "advanced": adv,
    })  # fmt: skip
    r = run_redshake(cfg)
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    if mode == "panic":
        assert r.returncode == 1 and "unsupported_field_ttl" in out, out[-3000:]
        return
    assert r.returncode == 0, out[-3000:]
    n = assert_converted(
        content({db: [src.client(db)] for db in dbs}),
        content({db: [dst.client(db)] for db in dbs}), model, mode,
    )  # fmt: skip
    assert n > 0
    converted, dropped = _counts(out)
    assert converted > 0 and dropped > 0


@pytest.mark.parametrize("has_lt", [True, False])
def test_conversion_of_times_in_the_past(has_lt):
    """A field TTL already passed when replayed (an old AOF) deletes the fields, as the source
    did, in both modes; one still ahead becomes PEXPIREAT ... LT (an EVAL without LT)."""
    now = 1_700_000_000_000
    for mode in ("drop", "key_ttl"):
        conv = FieldTtlCommands(mode, (7, 0, 0) if has_lt else (6, 2, 0), now_ms=lambda: now)
        past = [b"HPEXPIREAT", b"h", b"%d" % (now - 1), b"FIELDS", b"2", b"a", b"b"]
        assert [e.argv for e in conv(Entry(0, past))] == [[b"HDEL", b"h", b"a", b"b"]]
        setex = [b"HSETEX", b"h", b"EXAT", b"%d" % (now // 1000 - 1), b"FIELDS", b"1", b"c", b"v"]
        assert [e.argv for e in conv(Entry(0, setex))] == [[b"HDEL", b"h", b"c"]]
        ahead = [b"HSETEX", b"h", b"FXX", b"PX", b"5000", b"FIELDS", b"1", b"c", b"v"]
        got = [e.argv for e in conv(Entry(0, ahead, offset=42))]
        assert got[0] == [b"HSET", b"h", b"c", b"v"]
        if mode == "drop":
            assert len(got) == 1
        elif has_lt:
            assert got[1] == [b"PEXPIREAT", b"h", b"%d" % (now + 5000), b"LT"]
        else:
            assert got[1][0] == b"EVAL" and got[1][2:] == [b"1", b"h", b"%d" % (now + 5000), b"0"]
        assert (conv.converted, conv.dropped) == (3, 0)


LUA_SEES_SOURCE = """
if CMD == "HPEXPIREAT" or CMD == "HSETEX" then
    shake.log("lua saw " .. CMD)
end
for _, index in ipairs(KEY_INDEXES) do
    ARGV[index] = "lua:" .. ARGV[index]
end
shake.call(DB, ARGV)
"""


def test_live_field_ttl_commands_after_lua(servers, tmp_path, shakes):
    """A Lua function sees the source's field TTL commands (as in RedisShake); what it
    writes is converted afterwards (drop, into Redis 7.0)."""
    from helpers import toml_value

    src = servers.start("valkey-9.1")
    dst = servers.start("redis-7.0")
    shake = Shake(tmp_path, src, dst, advanced={"unsupported_field_ttl": "drop"})
    text = shake.cfg.read_text() + f"\n[filter]\nfunction = {toml_value(LUA_SEES_SOURCE)}\n"
    shake.cfg.write_text(text)
    shakes.append(shake.start())
    shake.wait_streaming(120, "the snapshot")
    model = workload(src, (0,), seed=5)
    wait_converged(src, shake, timeout=120)
    want = {(db, b"lua:" + k): v for (db, k), v in content({0: [src.client()]}).items()}
    assert assert_converted(want, content({0: [dst.client()]}), model, "drop") > 0
    assert shake.terminate() == 0, shake.log()[-3000:]
    log = shake.log()
    assert "lua saw HPEXPIREAT" in log and "lua saw HSETEX" in log, log[-3000:]
