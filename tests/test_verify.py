"""``redshake verify`` and ``redshake wait --converged`` against real servers.

The copies are made with DUMP/RESTORE (same server version on both sides, PTTL kept), then
changed on purpose on the target; every run is the real CLI in a subprocess and its JSON
report is checked key by key.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time

from datagen import populate
from harness import Shake, mixed_load, wait_converged
from helpers import restore_file, wait_with_peak_rss, write_config
from redshake.commands.slots import key_slot
from servers import free_port

NO_DEBUG_7 = ["--enable-debug-command", "no"]
NO_DEBUG_6 = ["--rename-command", "DEBUG", ""]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "redshake.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def verify_json(src: str, dst: str, *args: str) -> tuple[int, dict]:
    r = cli("verify", "--source", src, "--target", dst, "--format", "json", "--no-progress", *args)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.returncode, json.loads(r.stdout)


def url(server, extra: str = "") -> str:
    return f"redis://{server.address}{extra}"


def workload(c, seed: int, n: int = 400, dbs: tuple[int, ...] = (0, 1, 5)) -> None:
    """Random keys of every type, some with TTLs, a MULTI block, in several dbs."""
    rnd = random.Random(seed)
    for db in dbs:
        c.execute_command("SELECT", db)
        p = c.pipeline(transaction=False)
        for i in range(n):
            k = f"w{db}:{i}:{rnd.randrange(10**6)}"
            kind = rnd.randrange(6)
            size = rnd.choice((1, 3, 20, 300))
            if kind == 0:
                p.set(k, rnd.randbytes(rnd.choice((5, 100, 5000))))
            elif kind == 1:
                p.rpush(k, *[rnd.randbytes(8) for _ in range(size)])
            elif kind == 2:
                p.hset(k, mapping={f"f{j}": rnd.randbytes(10) for j in range(size)})
            elif kind == 3:
                p.sadd(k, *[rnd.randrange(10**9) for _ in range(size)])
            elif kind == 4:
                p.zadd(k, {f"m{j}": rnd.random() * 1000 for j in range(size)})
            else:
                for j in range(min(size, 30)):
                    p.xadd(k, {"f": str(j)})
            if rnd.random() < 0.2:
                p.pexpire(k, rnd.randrange(60_000, 3_600_000))
        p.execute()
        m = c.pipeline(transaction=True)
        m.set(f"tx{db}:a", "1")
        m.incr(f"tx{db}:b")
        m.execute()
    c.execute_command("SELECT", 0)


def copy_all(src, dst, dbs=None) -> int:
    """DUMP/RESTORE every key of ``src`` into ``dst`` (a Server or a Cluster), keeping TTLs."""
    n = 0
    owner = None
    if hasattr(dst, "masters"):
        owner = {}
        with dst.masters[0].client() as c:
            for row in c.execute_command("CLUSTER SLOTS"):
                srv = next(s for s in dst.servers if s.port == int(row[2][1]))
                for slot in range(row[0], row[1] + 1):
                    owner[slot] = srv
    sources = src.masters if hasattr(src, "masters") else [src]
    for s in sources:
        for db in dbs if dbs is not None else sorted(int(k[2:]) for k in s.info("keyspace")):
            a = s.client(db)
            for k in a.scan_iter(count=1000):
                target = owner[key_slot(k)] if owner else dst
                b = target.client(db)
                b.restore(k, max(a.pttl(k), 0), a.dump(k), replace=True)
                n += 1
    return n


def mutate(dst) -> dict[tuple[int, str], str]:
    """One difference of each kind on the target; returns {(db, key): reason}."""
    c0, c1 = dst.client(0), dst.client(1)
    c0.set("only-on-target", "x")
    c0.delete("tx0:a")
    h = next(k for k in c1.scan_iter(match="w1:*") if c1.type(k) == b"hash")
    c1.hset(h, c1.hkeys(h)[0], b"changed")
    t = next(k for k in c1.scan_iter(match="w1:*") if c1.type(k) == b"string" and c1.pttl(k) == -1)
    c1.pexpire(t, 900_000)
    ty = next(k for k in c0.scan_iter(match="w0:*") if c0.type(k) == b"set")
    c0.delete(ty)
    c0.rpush(ty, "x")
    lst = next(k for k in c0.scan_iter(match="w0:*") if c0.type(k) == b"list" and c0.llen(k) >= 3)
    first, second = c0.lindex(lst, 0), c0.lindex(lst, 1)
    c0.lset(lst, 0, second)
    c0.lset(lst, 1, first)
    z = next(k for k in c1.scan_iter(match="w1:*") if c1.type(k) == b"zset")
    m = c1.zrange(z, 0, 0)[0]
    c1.zincrby(z, 0.5, m)
    d = lambda k: k.decode()  # noqa: E731
    return {
        (0, "only-on-target"): "extra", (0, "tx0:a"): "missing", (1, d(h)): "value", (1, d(t)): "ttl",
        (0, d(ty)): "type", (0, d(lst)): "value", (1, d(z)): "value",
    }  # fmt: skip


def found(report: dict) -> dict[tuple[int, str], str]:
    return {(d["db"], d["key"]): d["reason"] for d in report["keys"]}


def test_equal_copies_every_mode(servers, tmp_path):
    src, dst = servers.start("redis-7.0"), servers.start("redis-7.0")
    workload(src.client(), 1)
    populate(src.client(), src.version, False, functions=False)
    copy_all(src, dst)
    for mode in ("count", "quick", "full"):
        out = tmp_path / f"{mode}.json"
        r = cli("verify", "--source", url(src), "--target", url(dst), "--mode", mode, "--json", str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "result: EQUAL" in r.stdout
        rep = json.loads(out.read_text())
        assert rep["result"] == "equal" and rep["total_differences"] == 0
        if mode == "count":
            assert {row["db"] for row in rep["per_db"]} == {0, 1, 3, 5}
        else:
            n = src.client().dbsize() + sum(src.client(d).dbsize() for d in (1, 3, 5))
            assert rep["keys_checked"] == {"source": n, "target": n}
            assert rep["keys_equal"] == n
            assert rep["value_check"] == ("dump, digest" if mode == "full" else "none")


def test_every_kind_of_difference(servers):
    src, dst = servers.start("valkey-8.1"), servers.start("valkey-8.1")
    workload(src.client(), 2)
    copy_all(src, dst)
    expected = mutate(dst)
    code, rep = verify_json(url(src), url(dst), "--mode", "full")
    assert code == 1
    assert found(rep) == expected
    assert rep["differences"] == {"missing": 1, "extra": 1, "type": 1, "value": 3, "ttl": 1}
    # quick: no values read
    code, rep = verify_json(url(src), url(dst), "--mode", "quick", "--max-keys", "2")
    assert code == 1
    assert rep["differences"] == {"missing": 1, "extra": 1, "type": 1, "value": 0, "ttl": 1}
    assert len(rep["keys"]) == 2
    # count: db 0 lost one key and got one: same count; nothing else changed the counts
    code, rep = verify_json(url(src), url(dst), "--mode", "count")
    assert code == 0


def test_values_page_by_page_when_debug_is_refused(servers):
    # Redis 6.2 source with DEBUG renamed away, Redis 7.0 target with DEBUG disabled
    src = servers.start("redis-6.2", args=NO_DEBUG_6)
    dst = servers.start("redis-7.0", args=NO_DEBUG_7)
    workload(src.client(), 3)
    populate(src.client(), src.version, False, functions=False)
    copy_all(src, dst)
    code, rep = verify_json(url(src), url(dst), "--mode", "full")
    assert code == 0, rep
    assert rep["value_check"] == "pages"  # different builds: no DUMP comparison either
    assert any("DEBUG DIGEST-VALUE refused on the source and the target" in n for n in rep["notes"])
    expected = mutate(dst)
    code, rep = verify_json(url(src), url(dst), "--mode", "full")
    assert code == 1
    assert found(rep) == expected


def test_big_hash_compared_page_by_page_in_bounded_memory(servers, tmp_path):
    src = servers.start("redis-7.0", args=NO_DEBUG_7)
    dst = servers.start("redis-7.0", args=NO_DEBUG_7)
    for s in (src, dst):
        c = s.client()
        c.set("small", "x")
    argv = [sys.executable, "-m", "redshake.cli", "verify", "--source", url(src), "--target", url(dst),
            "--mode", "full", "--no-progress", "--format", "json"]  # fmt: skip
    code, base_rss = wait_with_peak_rss(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
    assert code == 0
    value = b"v" * 200
    for s in (src, dst):
        c = s.client()
        for i in range(0, 200_000, 5000):
            c.hset("big", mapping={b"field:%d" % j: value for j in range(i, i + 5000)})
    key_bytes = 200_000 * (len(value) + 12)
    code, rss = wait_with_peak_rss(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
    assert code == 0
    assert rss - base_rss < key_bytes / 8, (rss, base_rss, key_bytes)
    dst.client().hset("big", "field:123456", "other")
    code, rep = verify_json(url(src), url(dst), "--mode", "full")
    assert code == 1 and found(rep) == {(0, "big"): "value"}


def test_cluster_on_either_side(servers):
    single = servers.start("redis-7.0")
    cl = servers.cluster("redis-7.0", 3)
    workload(single.client(), 4, n=300, dbs=(0,))
    copy_all(single, cl, dbs=[0])
    seed = cl.masters[1].address
    code, rep = verify_json(url(single), f"redis://{seed}", "--target-cluster", "--mode", "full")
    assert code == 0, rep
    code, rep = verify_json(f"redis://{seed}?cluster=true", url(single), "--mode", "full")
    assert code == 0, rep
    assert rep["keys_checked"]["source"] == single.client().dbsize()
    code, rep = verify_json(f"redis://{seed}?cluster=true", url(single), "--mode", "count")
    assert code == 0 and len(rep["per_node"]["source"]) == 3
    # a key lost on one master, a key only on the cluster
    victim = next(iter(cl.masters[2].client().scan_iter(count=100)))
    cl.masters[2].client().delete(victim)
    owner = cl.owner_of(key_slot(b"cluster-only"))
    owner.client().set("cluster-only", "1")
    code, rep = verify_json(url(single), f"redis://{seed}", "--target-cluster", "--mode", "quick")
    assert code == 1
    assert found(rep) == {(0, victim.decode()): "missing", (0, "cluster-only"): "extra"}


def test_config_with_filter_and_function(servers, tmp_path):
    src, dst = servers.start("redis-7.0"), servers.start("redis-7.0")
    workload(src.client(), 5, n=200, dbs=(0,))
    c = src.client()
    c.set("skip:me", "1")
    c.hset("skip:hash", "a", "b")
    copy_all(src, dst)
    dst.client().delete("skip:me", "skip:hash")
    dst.client().set("skip:target-own", "1")  # not ours: the filter never copies skip:*
    cfg = write_config(tmp_path / "shake.toml", {
        "sync_reader": {"address": src.address},
        "redis_writer": {"address": dst.address},
        "filter": {"block_key_prefix": ["skip:"]},
        "advanced": {"dir": str(tmp_path / "work")},
    })  # fmt: skip
    r = cli("verify", str(cfg), "--mode", "full", "--format", "json", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["skipped"]["filtered"] == 2
    assert rep["skipped"]["target_keys_not_copied_by_the_filter"] == 1
    dst.client().delete(next(k for k in dst.client().scan_iter(match="w0:*")))
    r = cli("verify", str(cfg), "--format", "json", "--no-progress")
    assert r.returncode == 1 and json.loads(r.stdout)["differences"]["missing"] == 1
    # a function that renames keys (and moves them to db 2): a pure per-key mapping
    dst2 = servers.start("redis-7.0")
    for k in src.client().scan_iter():
        if not k.startswith(b"skip:"):
            dst2.client(2).restore(b"new:" + k, max(c.pttl(k), 0), c.dump(k))
    fn = 'local a = ARGV; a[2] = "new:" .. a[2]; shake.call(2, a)'
    cfg2 = write_config(tmp_path / "fn.toml", {
        "sync_reader": {"address": src.address},
        "redis_writer": {"address": dst2.address},
        "filter": {"block_key_prefix": ["skip:"], "function": fn},
        "advanced": {"dir": str(tmp_path / "work2")},
    })  # fmt: skip
    r = cli("verify", str(cfg2), "--mode", "full", "--format", "json", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["keys_equal"] == src.client().dbsize() - 2 and rep["extra_checked"] is False
    dst2.client(2).hset(b"new:" + next(k for k in c.scan_iter(match="w0:*") if c.type(k) == b"hash"), "f0", "zz")
    r = cli("verify", str(cfg2), "--mode", "full", "--format", "json", "--no-progress")
    rep = json.loads(r.stdout)
    assert r.returncode == 1 and rep["differences"]["value"] == 1
    assert rep["keys"][0]["target_db"] == 2 and rep["keys"][0]["target_key"].startswith("new:")


def test_sample(servers):
    src, dst = servers.start("redis-7.0"), servers.start("redis-7.0")
    workload(src.client(), 6, n=700, dbs=(0, 2))
    copy_all(src, dst)
    code, rep = verify_json(url(src), url(dst), "--sample", "100", "--mode", "full")
    assert code == 0
    assert 60 <= rep["keys_checked"]["source"] <= 100 and 60 <= rep["keys_checked"]["target"] <= 100
    assert rep["sample"] == 100
    c = dst.client(2)
    keys = list(c.scan_iter(count=1000))
    c.delete(*keys[: len(keys) // 2])
    code, rep = verify_json(url(src), url(dst), "--sample", "100")
    assert code == 1 and rep["differences"]["missing"] > 0


def _commandstat(server, name: str) -> int:
    info = server.info("commandstats")
    return int(info.get(f"cmdstat_{name}", {}).get("calls", 0))


def test_recheck_heals_a_key_fixed_between_rounds(servers, tmp_path):
    src, dst = servers.start("redis-7.0"), servers.start("redis-7.0")
    workload(src.client(), 7, n=100, dbs=(0,))
    copy_all(src, dst)
    dst.client().delete("tx0:b")
    code, rep = verify_json(url(src), url(dst), "--recheck", "1", "--recheck-delay", "0.1")
    assert code == 1 and found(rep) == {(0, "tx0:b"): "missing"} and rep["recheck_rounds"] == 1
    out = tmp_path / "r.json"
    before = _commandstat(src, "exists")
    p = subprocess.Popen(
        [sys.executable, "-m", "redshake.cli", "verify", "--source", url(src), "--target", url(dst),
         "--recheck", "3", "--recheck-delay", "3", "--json", str(out), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while _commandstat(src, "exists") == before:  # the first pass reached the extra-key check
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    dst.client().set("tx0:b", src.client().get("tx0:b"))
    assert p.wait(60) == 0, p.stderr.read() if p.stderr else ""
    rep = json.loads(out.read_text())
    assert rep["recheck_rounds"] == 1 and rep["keys"] == [] and rep["result"] == "equal"


def test_bad_input_exits_2(servers, tmp_path):
    s = servers.start("redis-7.0")
    cfg = write_config(tmp_path / "rdb.toml", {
        "rdb_reader": {"filepath": str(tmp_path / "x.rdb")},
        "redis_writer": {"address": s.address},
    })  # fmt: skip
    r = cli("verify", str(cfg))
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    cfg = write_config(tmp_path / "aof.toml", {
        "aof_reader": {"filepath": str(tmp_path / "x.aof")},
        "redis_writer": {"address": s.address},
    })  # fmt: skip
    r = cli("verify", str(cfg))
    assert r.returncode == 2 and "live source server or an RDB file" in r.stderr and "Traceback" not in r.stderr
    r = cli("verify", "--source", url(s), "--target", f"redis://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "refused" in r.stderr and "Traceback" not in r.stderr
    r = cli("verify", "--source", "http://x:1", "--target", url(s))
    assert r.returncode == 2 and "scheme" in r.stderr
    r = cli("verify", "--source", url(s))
    assert r.returncode == 2


def test_wait_converged_against_a_live_sync(servers, tmp_path):
    src, dst = servers.start("redis-7.0"), servers.start("redis-7.0")
    workload(src.client(), 8, n=300, dbs=(0, 1))
    port = free_port()
    shake = Shake(tmp_path, src, dst, status_port=port).start()
    try:
        stop = threading.Event()
        t = threading.Thread(target=mixed_load, args=(src, stop, 9), daemon=True)
        t.start()
        r = subprocess.Popen(
            [sys.executable, "-m", "redshake.cli", "wait", "--converged", str(shake.cfg), "--timeout", "90",
             "--sample", "300", "--mode", "full", "--format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.0)  # the load runs while wait polls; then the source goes idle
        stop.set()
        t.join()
        out, err = r.communicate(timeout=120)
        assert r.returncode == 0, out + err + shake.log()[-2000:]
        assert "converged" in err and json.loads(out)["result"] == "equal"
        wait_converged(src, shake)
        # the same through the checkpoint (a config without status_port, same work dir)
        nostatus = write_config(tmp_path / "nostatus.toml", {
            "sync_reader": {"address": src.address}, "redis_writer": {"address": dst.address},
            "advanced": {"dir": str(shake.work)},
        })  # fmt: skip
        r2 = cli("wait", "--converged", str(nostatus), "--timeout", "60", "--sample", "100")
        assert r2.returncode == 0, r2.stdout + r2.stderr
        # redshake stopped, the source moves on: never converges
        shake.kill()
        src.client().set("after-stop", "1")
        r3 = cli("wait", "--converged", str(shake.cfg), "--timeout", "3")
        assert r3.returncode == 1 and "not converged after 3 s" in r3.stderr and "status port" in r3.stderr
        r4 = cli("wait", "--converged", str(nostatus), "--timeout", "3")
        assert r4.returncode == 1 and "bytes behind" in r4.stderr, r4.stderr
    finally:
        shake.kill()


def test_redis_to_valkey_full_and_rate_limit(servers):
    # different builds: no DUMP shortcut; Redis and Valkey digest zset scores differently,
    # the page-wise check settles those keys as equal
    src, dst = servers.start("redis-7.0"), servers.start("valkey-9.1")
    populate(src.client(), src.version, False, functions=False)
    workload(src.client(), 10, n=150, dbs=(0,))
    copy_all(src, dst)
    code, rep = verify_json(url(src), url(dst), "--mode", "full", "--rate", "2000")
    assert code == 0, rep
    assert rep["value_check"] == "digest" and rep["keys_equal"] == rep["keys_checked"]["source"]
    n = rep["keys_checked"]["source"] + rep["keys_checked"]["target"]
    assert rep["seconds"] >= n / 2000 * 0.9  # paced: never faster than the rate allows


def test_exactly_once_marker_is_not_an_extra_key(servers, tmp_path):
    src, dst = servers.start("redis-7.0"), servers.start("redis-7.0")
    workload(src.client(), 11, n=50, dbs=(0,))
    copy_all(src, dst)
    dst.client(9).set("shake-marker", "replid:123")
    sections = {
        "sync_reader": {"address": src.address},
        "redis_writer": {"address": dst.address},
        "advanced": {"dir": str(tmp_path / "work"), "exactly_once_key": "shake-marker", "exactly_once_db": 9},
    }
    r = cli("verify", str(write_config(tmp_path / "s.toml", sections)), "--format", "json", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    dst.client(9).set("other", "1")
    r = cli("verify", str(write_config(tmp_path / "s.toml", sections)), "--format", "json", "--no-progress")
    assert r.returncode == 1 and found(json.loads(r.stdout)) == {(9, "other"): "extra"}


def test_a_server_lost_mid_run_is_reported_incomplete(servers):
    src, dst = servers.start("redis-7.0"), servers.start("redis-7.0")
    workload(src.client(), 12, n=300, dbs=(0,))
    copy_all(src, dst)
    p = subprocess.Popen(
        [sys.executable, "-m", "redshake.cli", "verify", "--source", url(src), "--target", url(dst),
         "--rate", "150", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while _commandstat(dst, "type") == 0:  # the comparison has started
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    dst.stop()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, out + err
    assert "incomplete" in err and "Traceback" not in err and "result:" not in out


def test_rdb_file_source_quick(servers, tmp_path):
    src, dst = servers.start("redis-7.0"), servers.start("redis-7.0")
    populate(src.client(), src.version, False, functions=False)
    workload(src.client(), 13, n=200, dbs=(0, 2))
    src.client().save()
    rdb = src.dir / "dump.rdb"
    r = restore_file(rdb, dst, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = tmp_path / "shake.toml"  # restore_file's config: [rdb_reader] -> [redis_writer]
    r = cli("verify", str(cfg), "--format", "json", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["keys_checked"]["source"] == sum(src.client(d).dbsize() for d in (0, 2, 3))
    c = dst.client(2)
    gone = next(c.scan_iter(match="w2:*"))
    c.delete(gone)
    c.set("not-in-file", "1")
    c.set("not-in-file-2", "1")
    ttl = next(k for k in dst.client().scan_iter(match="w0:*") if dst.client().pttl(k) == -1)
    dst.client().expire(ttl, 10_000)
    r = cli("verify", str(cfg), "--format", "json", "--no-progress")
    rep = json.loads(r.stdout)
    assert r.returncode == 1
    assert rep["differences"] == {"missing": 1, "extra": 2, "type": 0, "value": 0, "ttl": 1}
    assert {(d["db"], d["key"], d["reason"]) for d in rep["keys"]} == {
        (2, gone.decode(), "missing"), (0, ttl.decode(), "ttl"), (2, "", "extra")}
    r = cli("verify", str(cfg), "--mode", "full")
    assert r.returncode == 2 and "only --mode quick" in r.stderr
