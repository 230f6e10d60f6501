"""Valkey 9 numbered databases in cluster mode (``cluster-databases``): read them from a cluster
source (scan reader and sync reader), write them into a cluster target (SELECT per node), keep
the dbs of a standalone multi-db source, and refuse a cluster target that serves db 0 only
before anything is written."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time

from helpers import OWN_PREFIXES, restore_file, run_redshake, write_config
from redshake.commands.slots import key_slot

DBS = (0, 1, 7, 15)
CLUSTER_DBS = ["--cluster-databases", "16"]


def _owners(cluster) -> list:
    """slot -> master, as servers.start_cluster lays the slots out (even ranges in order)."""
    ms = cluster.masters
    per = 16384 // len(ms)
    return [ms[min(slot // per, len(ms) - 1)] for slot in range(16384)]


def _fill(nodes, n: int, prefix: str, seed: int) -> None:
    """``n`` keys per db of every type (some with TTLs, some big), in the dbs of DBS, each
    written on the node owning its slot (``nodes``: a Cluster, or one standalone Server)."""
    rnd = random.Random(seed)
    owners = _owners(nodes) if hasattr(nodes, "masters") else None
    now = int(time.time() * 1000)
    for db in DBS:
        pipes: dict = {}
        for i in range(n):
            k = f"{prefix}:{db}:{i}".encode()
            node = owners[key_slot(k)] if owners else nodes
            p = pipes.get(node.port)
            if p is None:
                p = pipes[node.port] = node.client(db).pipeline(transaction=False)
            kind = i % 7
            if kind == 0:
                p.set(k, rnd.randbytes(rnd.choice((3, 40, 3000))))
            elif kind == 1:
                p.rpush(k, *[b"%d" % rnd.randrange(10**6) for _ in range(rnd.choice((3, 200)))])
            elif kind == 2:
                p.hset(k, mapping={b"f%d" % j: rnd.randbytes(8) for j in range(rnd.choice((2, 150)))})
            elif kind == 3:
                p.zadd(k, {b"m%d" % j: rnd.random() * 100 for j in range(rnd.choice((4, 180)))})
            elif kind == 4:
                p.sadd(k, *[b"%d" % j for j in range(rnd.choice((5, 600)))])
            elif kind == 5:
                p.xadd(k, {b"a": b"%d" % i}, id=f"{1000 + i}-1")
                p.xgroup_create(k, b"g", id="0")
            else:
                p.set(k, b"v%d" % i, px=3_600_000 + i)
            if i % 11 == 0 and kind != 6:
                p.pexpireat(k, now + 7_200_000 + i)
        for p in pipes.values():
            p.execute()


def _nodes(x) -> list:
    return list(x.masters) if hasattr(x, "masters") else [x]


def _snapshot(x) -> dict[int, dict[bytes, tuple]]:
    """db -> key -> (DEBUG DIGEST-VALUE, PEXPIRETIME) over every master (markers left out)."""
    out: dict[int, dict[bytes, tuple]] = {}
    for db in range(16):
        keys: dict[bytes, tuple] = {}
        for node in _nodes(x):
            c = node.client(db)
            ks = [k for k in c.scan_iter(count=1000) if not k.startswith(OWN_PREFIXES)]
            p = c.pipeline(transaction=False)
            for k in ks:
                p.execute_command("DEBUG", "DIGEST-VALUE", k)
                p.execute_command("PEXPIRETIME", k)
            r = p.execute()
            for j, k in enumerate(ks):
                keys[k] = (r[2 * j], r[2 * j + 1])
        if keys:
            out[db] = keys
    return out


def _assert_same(src, dst) -> None:
    a, b = _snapshot(src), _snapshot(dst)
    assert sorted(a) == sorted(b) == list(DBS), (sorted(a), sorted(b))
    for db in a:
        missing, extra = a[db].keys() - b[db].keys(), b[db].keys() - a[db].keys()
        assert not missing and not extra, f"db {db}: missing {sorted(missing)[:5]} extra {sorted(extra)[:5]}"
        diff = [k for k in a[db] if a[db][k][0] != b[db][k][0]]
        assert not diff, f"db {db}: {len(diff)} values differ, e.g. {diff[:5]}"
        # (the scan reader reads a relative PTTL: its expiries may be off by the copy time)
        ttl = [k for k in a[db] if (a[db][k][1] < 0) != (b[db][k][1] < 0)
               or abs(a[db][k][1] - b[db][k][1]) > 2000]  # fmt: skip
        assert not ttl, f"db {db}: {len(ttl)} expiries differ, e.g. {ttl[:5]}"


def _flushall(x) -> None:
    for node in _nodes(x):
        node.client().flushall()


def _offsets(src) -> list[tuple[int, int]]:
    """(master_repl_offset, offset ACKed by its replica) of every source master."""
    out = []
    for node in _nodes(src):
        info = node.client().info("replication")
        acked = -1
        for k, v in info.items():
            if re.fullmatch(r"slave\d+", k):
                acked = int(v["offset"])
        out.append((int(info["master_repl_offset"]), acked))
    return out


def _converged(src, proc: subprocess.Popen, log, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log()[-3000:]
        st = _offsets(src)
        if all(m > 0 and a == m for m, a in st):
            time.sleep(0.3)
            if _offsets(src) == st:
                return
        time.sleep(0.2)
    raise AssertionError(f"not converged: {_offsets(src)}\n{log()[-3000:]}")


def _sync(tmp, src_addr: str, dst_addr: str, *, cluster_source: bool, work: str):
    cfg = write_config(
        tmp / f"{work}.toml",
        {
            "sync_reader": {"address": src_addr, "cluster": cluster_source},
            "redis_writer": {"address": dst_addr, "cluster": True},
            "advanced": {"dir": str(tmp / work), "log_interval": 1},
        },
    )
    out = tmp / f"{work}.out"
    fh = open(out, "a")
    proc = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(cfg)], cwd=str(tmp),
                            stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
    return proc, fh, lambda: out.read_text(errors="replace")


def _stop(proc: subprocess.Popen, fh, log) -> None:
    try:
        proc.terminate()
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        fh.close()
    assert rc == 0, log()[-3000:]


def _synced(tmp, src, dst, during) -> None:
    """A sync run from ``src`` (a Cluster or a Server) into the cluster ``dst``: ``during()``
    writes on the source, then the run converges, is compared per db and stopped."""
    cluster_source = hasattr(src, "masters")
    address = src.seed if cluster_source else src.address
    proc, fh, log = _sync(tmp, address, dst.seed, cluster_source=cluster_source, work="sync")
    try:
        during()
        _converged(src, proc, log)
        _assert_same(src, dst)
    finally:
        _stop(proc, fh, log)


def test_cluster_source_dbs_into_cluster_target(servers, tmp_path):
    src = servers.cluster("valkey-9.1", masters=2, args=CLUSTER_DBS)
    dst = servers.cluster("valkey-9.1", masters=2, args=CLUSTER_DBS)
    _fill(src, 120, "a", 1)

    # scan reader from the cluster source: every db of every shard
    cfg = write_config(
        tmp_path / "scan.toml",
        {
            "scan_reader": {"address": src.seed, "cluster": True, "count": 100},
            "redis_writer": {"address": dst.seed, "cluster": True},
            "advanced": {"dir": str(tmp_path / "scan"), "log_interval": 0},
        },
    )
    r = run_redshake(cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    _assert_same(src, dst)
    # redshake verify on the same config sees every db of both clusters
    v = subprocess.run([sys.executable, "-m", "redshake.cli", "verify", str(cfg), "--mode", "full",
                        "--format", "json", "--no-progress"], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert v.returncode == 0, (v.stdout + v.stderr)[-3000:]
    rep = json.loads(v.stdout)
    assert sorted(rep["dbs"]["source"]) == sorted(rep["dbs"]["target"]) == list(DBS), rep["dbs"]
    k = b"a:7:3"
    _owners(dst)[key_slot(k)].client(7).delete(k)
    v = subprocess.run([sys.executable, "-m", "redshake.cli", "verify", str(cfg), "--format", "json",
                        "--no-progress"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert v.returncode == 1 and json.loads(v.stdout)["differences"]["missing"] == 1, v.stdout[-3000:]

    # sync reader (PSYNC per shard): the snapshot, then the stream with SELECTs and a
    # transaction in a db > 0
    _flushall(dst)

    def writes() -> None:
        _fill(src, 60, "b", 2)
        owner = _owners(src)[key_slot(b"{t}x")]
        p = owner.client(7).pipeline(transaction=True)
        p.set(b"{t}x", b"1").incr(b"{t}n").rpush(b"{t}l", b"z").execute()
        for db in DBS:
            o = _owners(src)[key_slot(b"a:%d:0" % db)]
            o.client(db).delete(b"a:%d:0" % db)

    _synced(tmp_path, src, dst, writes)

    # one shard's full resync (its replication id changed while redshake was stopped) first
    # deletes that shard's slots on the target in every db: keys gone from the source meanwhile
    # and keys only the target had do not survive; the other shard resumes
    first, second = src.masters
    owners_dst = _owners(dst)
    gone = [b"a:%d:%d" % (db, i) for db in (0, 7) for i in range(1, 40)]
    gone = [k for k in gone if _owners(src)[key_slot(k)] is first]
    for k in gone:
        first.client(int(k.split(b":")[1])).delete(k)
    stale = [b"stale:%d" % i for i in range(200)]
    stale = [k for k in stale if _owners(src)[key_slot(k)] is first]
    for db in (0, 5, 15):
        for k in stale:
            owners_dst[key_slot(k)].client(db).set(k, b"x")
    first.client().execute_command("DEBUG", "CHANGE-REPL-ID")
    _synced(tmp_path, src, dst, lambda: _fill(src, 10, "c", 5))
    assert gone and stale


def test_standalone_dbs_into_cluster_dbs(servers, tmp_path):
    src = servers.start("valkey-9.1")
    _fill(src, 150, "s", 3)
    dst = servers.cluster("valkey-9.1", masters=2, args=CLUSTER_DBS)
    _synced(tmp_path, src, dst, lambda: _fill(src, 40, "live", 4))
    # the source's RDB file restored into the emptied cluster: the same dbs
    _flushall(dst)
    src.client().save()
    r = restore_file(src.dir / "dump.rdb", dst.seed, tmp_path, cluster=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    _assert_same(src, dst)


def test_db0_only_cluster_refused(servers, tmp_path):
    """A cluster without cluster-databases (db 0 only) and a source with keys in db 7: the
    scan and sync readers refuse before writing anything (exit 2), naming the db and the
    setting."""
    src = servers.start("valkey-9.1")
    src.client().mset({b"zero:%d" % i: b"0" for i in range(2000)})
    src.client(7).set(b"seven", b"7")
    dst = servers.cluster("valkey-9.1", masters=1)
    for reader in ("scan_reader", "sync_reader"):
        cfg = write_config(
            tmp_path / f"{reader}.toml",
            {
                reader: {"address": src.address},
                "redis_writer": {"address": dst.seed, "cluster": True},
                "advanced": {"dir": str(tmp_path / reader), "log_interval": 0},
            },
        )
        r = run_redshake(cfg, timeout=120)
        out = r.stdout + r.stderr
        assert r.returncode == 2, out[-3000:]
        assert "db 7" in out and "cluster-databases" in out, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        assert dst.masters[0].client().dbsize() == 0


def test_cluster_databases_without_config(servers):
    """CONFIG renamed away on a Valkey 9 cluster: the dbs it serves are found with SELECT."""
    from redshake.writers.cluster import ClusterWriter

    for n in (16, 1):
        cl = servers.cluster("valkey-9.1", masters=1,
                             args=["--cluster-databases", str(n), "--rename-command", "CONFIG", ""])  # fmt: skip
        w = ClusterWriter(cl.seed)
        try:
            assert w.databases == n
        finally:
            w.close()
