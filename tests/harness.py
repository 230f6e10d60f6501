"""The one harness for tests that run redshake: the ``Shake`` process wrapper and the
``shakes`` fixture, waits (on the status JSON, on replication offsets), load generators,
cluster and AOF helpers, and comparisons. Test modules import from here (and from helpers,
servers, datagen, rdbgen), never from one another.

Waits on a state of redshake read the status JSON that every ``Shake`` serves (a status
port is always configured); the log is read only to assert on the log itself."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import servers as srv
from helpers import (
    OWN_PREFIXES,
    _same_zset,
    digest_map,
    expire_map,
    keys_of,
    run_redshake,
    wait_with_peak_rss,
    write_config,
)  # fmt: skip
from redshake.commands.slots import key_slot
from redshake.entry import Entry
from servers import free_port

# -- the redshake process -------------------------------------------------------------

MIXED_WRITERS = 3


class Shake:
    """redshake running as a subprocess on a sync_reader config. ``src`` and ``dst`` are
    servers or addresses; ``sentinel`` / ``writer_sentinel`` find the source / the target
    through Sentinel; ``reader`` / ``writer`` add to [sync_reader] / [redis_writer] (e.g.
    ``cluster = true``)."""

    def __init__(
        self, tmp: Path, src, dst, *, reader: dict | None = None, sentinel: dict | None = None,
        name: str = "shake", status_port: int = 0, advanced: dict | None = None,
        writer: dict | None = None, writer_sentinel: dict | None = None,
    ) -> None:  # fmt: skip
        self.tmp = tmp
        self.status_port = status_port or free_port()
        self.work = tmp / "work"
        self.out = tmp / f"{name}.out"
        rd = {"address": src if isinstance(src, str) else src.address}
        rd.update(reader or {})
        sections = {"sync_reader": rd}
        if sentinel:
            sections["sync_reader.sentinel"] = sentinel
        sections["redis_writer"] = {"address": dst if isinstance(dst, str) else dst.address, **(writer or {})}
        if writer_sentinel:
            sections["redis_writer.sentinel"] = writer_sentinel
        sections["advanced"] = {"dir": str(self.work), "log_interval": 1}
        sections["advanced"].update(status_port=self.status_port, status_bind="127.0.0.1")
        sections["advanced"].update(advanced or {})
        self.work = Path(sections["advanced"]["dir"])
        self.cfg = write_config(tmp / f"{name}.toml", sections)
        self.proc: subprocess.Popen | None = None

    @classmethod
    def on_config(cls, cfg: Path, out: Path | None = None) -> Shake:
        """A Shake on a config written elsewhere (any reader and writer). The config must set
        ``advanced.status_port`` (the waits read the status JSON); the output goes to ``out``
        (default: redshake.out beside the config)."""
        adv = tomllib.loads(cfg.read_text()).get("advanced", {})
        assert adv.get("status_port"), f"{cfg} sets no advanced.status_port"
        self = cls.__new__(cls)
        self.tmp = cfg.parent
        self.work = Path(adv.get("dir", cfg.parent / "work"))
        self.out = out or cfg.parent / "redshake.out"
        self.status_port = int(adv["status_port"])
        self.cfg = cfg
        self.proc = None
        return self

    def start(self) -> Shake:
        self._fh = open(self.out, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "redshake.cli", str(self.cfg)],
            cwd=str(self.tmp),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )
        return self

    def log(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("redshake did not exit:\n" + self.log()[-3000:]) from None

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def checkpoint(self) -> dict:
        (d,) = [p for p in self.work.iterdir() if p.name.startswith("reader_")]
        return json.loads((d / "checkpoint.json").read_text())

    def status(self) -> dict:
        """The status JSON ({} while the status page does not answer yet)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/", timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return {}

    def reader(self) -> dict:
        """The reader part of the status JSON of a one-source run ({} until the page answers)."""
        r = self.status().get("reader")
        return r if isinstance(r, dict) else {}

    def readers(self) -> list[dict]:
        """The reader part of the status JSON, as a list (one entry per source shard)."""
        r = self.status().get("reader") or []
        return r if isinstance(r, list) else [r]

    def wait_status(self, cond: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """Until ``cond(status JSON)`` holds; fails at once if redshake exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"redshake exited while waiting for {what}:\n" + self.log()[-3000:])
            doc = self.status()
            if doc and cond(doc):
                return doc
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n" + self.log()[-3000:])

    def wait_readers(self, cond: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """Until ``cond`` holds for every reader of the status JSON (every source shard)."""

        def every(doc: dict) -> bool:
            rd = doc.get("reader") or []
            rd = rd if isinstance(rd, list) else [rd]
            return bool(rd) and all(cond(r) for r in rd)

        return self.wait_status(every, timeout, what)

    def wait_consistent(self, timeout: float = 120) -> dict:
        """Until the status JSON says ``consistent`` (what /ready answers 200 for)."""
        return self.wait_status(lambda doc: bool(doc.get("consistent")), timeout, "a consistent status")

    def wait_streaming(self, timeout: float = 60, what: str = "the snapshot", shards: int = 0) -> dict:
        """Until every reader has sent its snapshot and follows the command stream
        (status "syncing aof", the state that starts with "... now following the stream");
        with ``shards``, until the status also lists that many readers (a cluster source)."""

        def streaming(doc: dict) -> bool:
            rd = doc.get("reader") or []
            rd = rd if isinstance(rd, list) else [rd]
            return (bool(rd) and (not shards or len(rd) == shards)
                    and all(isinstance(r, dict) and r.get("status") == "syncing aof" for r in rd))  # fmt: skip

        return self.wait_status(streaming, timeout, what)


@pytest.fixture
def shakes() -> Iterator[list]:
    """redshake processes a test started (append them); killed at teardown."""
    started: list = []
    try:
        yield started
    finally:
        for s in started:
            s.kill()


def streaming_sync(servers, tmp_path: Path, shakes: list, **shake_kw) -> tuple:
    """A populated Redis 7.0 source (64 MB backlog), an empty Redis 7.0 target and a
    redshake between them that has applied the snapshot: (src, dst, shake)."""
    from datagen import populate

    src = servers.start("redis-7.0", args=["--repl-backlog-size", "64mb"])
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False)
    shake = Shake(tmp_path, src, dst, **shake_kw).start()
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    return src, dst, shake


def replica_offset(src) -> tuple[int, int, int]:
    """(master_repl_offset, offset ACKed by the first replica (-1: none), replicas)."""
    info = src.info("replication")
    master = int(info.get("master_repl_offset", 0))
    n = int(info.get("connected_slaves", 0))
    off = -1
    for k, v in info.items():
        if k.startswith("slave") and isinstance(v, dict):
            off = max(off, int(v.get("offset", -1)))
    return master, off, n


def wait_converged(src, shake: Shake, timeout: float = 60) -> None:
    """Until the replica (redshake) has ACKed the master's offset: everything is applied."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if shake.proc is not None and shake.proc.poll() is not None:
            raise AssertionError("redshake exited:\n" + shake.log()[-3000:])
        master, off, _n = last = replica_offset(src)
        if master > 0 and off == master:
            time.sleep(0.2)
            if replica_offset(src)[:2] == (master, master):
                return
        time.sleep(0.1)
    raise AssertionError(f"not converged (master/acked/replicas {last}):\n" + shake.log()[-3000:])


def wait_for(cond, timeout: float, what: str, shake: Shake | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + ("\n" + shake.log()[-3000:] if shake else ""))


def stat(src, field: str) -> int:
    return int(src.info("stats")[field])


def mixed_load(src, stop: threading.Event, seed: int, idempotent: bool = False,
               dbs: tuple[int, ...] = (0, 0, 1)) -> None:  # fmt: skip
    """Mixed writes over several dbs, types, TTLs and transactions until ``stop``."""
    rnd = random.Random(seed)
    clients = {db: src.client(db) for db in set(dbs)}
    while not stop.is_set():
        db = rnd.choice(dbs)
        c = clients[db]
        p = c.pipeline(transaction=rnd.random() < 0.2)
        for _ in range(20):
            k = f"k:{rnd.randrange(300)}"
            r = rnd.random()
            if r < 0.25:
                p.set(k, rnd.randbytes(rnd.randrange(1, 200)))
            elif r < 0.35:
                p.delete(k)
            elif r < 0.45:
                p.hset(f"h:{rnd.randrange(50)}", f"f{rnd.randrange(30)}", rnd.randrange(1000))
            elif r < 0.55:
                p.sadd(f"s:{rnd.randrange(50)}", rnd.randrange(100))
            elif r < 0.65:
                p.zadd(f"z:{rnd.randrange(50)}", {f"m{rnd.randrange(40)}": rnd.random()})
            elif r < 0.7:
                p.pexpireat(k, int(time.time() * 1000) + 600_000)
            elif r < 0.75:
                p.srem(f"s:{rnd.randrange(50)}", rnd.randrange(100))
            elif idempotent:
                p.set(f"n:{rnd.randrange(50)}", rnd.randrange(10**6))
            elif r < 0.85:
                p.incr(f"n:{rnd.randrange(50)}")
            elif r < 0.95:
                p.rpush(f"l:{rnd.randrange(20)}", rnd.randbytes(8))
            else:
                p.append(k + ":a", b"xy")
        try:
            p.execute()
        except redis.ResponseError:
            pass  # e.g. APPEND on a key of another type
        except redis.ConnectionError:
            return
        time.sleep(0.002)


def start_load(src, n: int = MIXED_WRITERS, idempotent: bool = False, dbs: tuple[int, ...] = (0, 0, 1)):
    stop = threading.Event()
    threads = [
        threading.Thread(target=mixed_load, args=(src, stop, 100 + i, idempotent, dbs), daemon=True)
        for i in range(n)
    ]
    for t in threads:
        t.start()

    def halt() -> None:
        stop.set()
        for t in threads:
            t.join(30)

    return halt


def kill_replica_links(src) -> int:
    with src.client() as c:
        kind = "replica" if src.version >= (5, 0, 0) else "slave"
        return int(c.execute_command("CLIENT", "KILL", "TYPE", kind))



# -- cluster sources ---------------------------------------------------------------------


def fill_cluster(cluster, n: int, prefix: str) -> None:
    """n keys of several types spread over every slot, written through the owning masters."""
    owners = slot_owners(cluster)
    pipes = {}
    for i in range(n):
        k = f"{prefix}:{i}".encode()
        node = owners[key_slot(k)]
        p = pipes.setdefault(node.port, node.client().pipeline(transaction=False))
        kind = i % 4
        if kind == 0:
            p.set(k, b"v%d" % i)
        elif kind == 1:
            p.rpush(k, b"a", b"b", b"%d" % i)
        elif kind == 2:
            p.hset(k, mapping={b"f": b"%d" % i})
        else:
            p.zadd(k, {b"m": i})
    for p in pipes.values():
        p.execute()


def slot_owners(cluster) -> list:
    """slot -> Server, from one CLUSTER SLOTS call."""
    owners = [None] * 16384
    by_port = {s.port: s for s in cluster.servers}
    for row in cluster.masters[0].client().execute_command("CLUSTER SLOTS"):
        for slot in range(row[0], row[1] + 1):
            owners[slot] = by_port[int(row[2][1])]
    return owners


def digests(server_list) -> dict[bytes, bytes]:
    out = {}
    for s in server_list:
        c = s.client()
        # (leaving out the live sync's exactly-once position and live markers: the target's own keys)
        keys = [k for k in c.scan_iter(count=1000) if not k.startswith(OWN_PREFIXES)]
        p = c.pipeline(transaction=False)
        for k in keys:
            p.execute_command("DEBUG", "DIGEST-VALUE", k)
        out.update(zip(keys, p.execute(), strict=True))
    return out


def wait_cluster_converged(cluster, shake: Shake, timeout: float = 90) -> None:
    """Every source master's replication offset is ACKed by its redshake shard process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert shake.proc.poll() is None, shake.log()[-3000:]
        states = [replica_offset(m) for m in cluster.masters]
        if all(master > 0 and off == master for master, off, _n in states):
            time.sleep(0.3)
            if all(replica_offset(m)[:2] == s[:2] for m, s in zip(cluster.masters, states, strict=True)):
                return
        time.sleep(0.2)
    raise AssertionError(f"not converged: {states}\n" + shake.log()[-3000:])



# -- comparisons ---------------------------------------------------------------------------


def diff_data(src_clients, dst, dbs: list[int], tol_ms: int = 2000, valkey_mix: bool = False) -> str:
    """'' when every key of these dbs is the same on both sides (digest + expiry within
    tol_ms: the scan reader writes now + PTTL), else a description of the first difference.
    ``src_clients(db)`` returns the source clients holding that db (several for a cluster)."""
    for db in dbs:
        srcs = src_clients(db)
        b = dst.client(db)
        owner = {}
        for c in srcs:
            for k in keys_of(c):
                owner[k] = c
        kb = keys_of(b)
        missing, extra = set(owner) - kb, kb - set(owner)
        if missing or extra:
            return f"db {db}: missing on target {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
        keys = sorted(owner)
        db_digest = digest_map(b, keys)
        db_exp = expire_map(b, keys, False)
        for c in srcs:
            mine = [k for k in keys if owner[k] is c]
            da = digest_map(c, mine)
            ea = expire_map(c, mine, False)
            for k in mine:
                if da[k] != db_digest[k] and not (valkey_mix and _same_zset(c, b, k)):
                    return f"db {db}: key {k!r} differs"
                x, y = ea[k], db_exp[k]
                if (x < 0 or y < 0) and x != y or abs(x - y) > tol_ms:
                    return f"db {db}: key {k!r} ttl {x} vs {y}"
    return ""



# -- RDB restores ---------------------------------------------------------------------------


def run_rdb_restore(src, dst, tmp_path) -> tuple[int, str, int, float]:
    """redshake restoring ``src``'s dump.rdb into ``dst``: (exit code, output, peak RSS, seconds)."""
    cfg = write_config(
        tmp_path / "shake.toml",
        {
            "rdb_reader": {"filepath": str(src.dir / "dump.rdb")},
            "redis_writer": {"address": dst.address},
            "advanced": {"dir": str(tmp_path / "w"), "log_interval": 0},
        },
    )
    out_path = tmp_path / "out.txt"
    t0 = time.perf_counter()
    with open(out_path, "w") as out_f:
        p = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(cfg)], stdout=out_f,
                             stderr=subprocess.STDOUT)  # fmt: skip
        code, peak = wait_with_peak_rss(p)
    return code, out_path.read_text(), peak, time.perf_counter() - t0


# -- AOF runs -----------------------------------------------------------------------------


def run_aof(
    tmp: Path, filepath, target, *, cfg_name="shake.toml", **reader
) -> subprocess.CompletedProcess:
    cfg = write_config(
        tmp / cfg_name,
        {
            "aof_reader": {"filepath": str(filepath), **reader},
            "redis_writer": {"address": target.address},
            "advanced": {"dir": str(tmp / "work"), "log_interval": 0},
        },
    )
    return run_redshake(cfg)


def nkeys(server) -> int:
    return sum(v["keys"] for v in server.client().info("keyspace").values())


def wait_rewrite(c) -> None:
    while True:
        info = c.info("persistence")
        if not int(info["aof_rewrite_in_progress"]) and not int(
            info.get("aof_rewrite_scheduled", 0)
        ):
            return
        time.sleep(0.05)


def failed_rewrite(server) -> None:
    """Start a rewrite and kill its child: the server keeps the new INCR file in the manifest,
    so the manifest ends up listing several INCR files (as after a real failed rewrite)."""
    c = server.client()
    c.config_set("rdb-key-save-delay", 1000000)
    c.bgrewriteaof()
    deadline = time.monotonic() + 10
    kids: list[str] = []
    while not kids and time.monotonic() < deadline:
        kids = subprocess.run(
            ["pgrep", "-P", str(server.pid)], capture_output=True, text=True
        ).stdout.split()
        time.sleep(0.02)
    c.set(b"written during the rewrite", b"1")
    for k in kids:
        os.kill(int(k), 9)
    wait_rewrite(c)
    c.config_set("rdb-key-save-delay", 0)


# -- cluster targets: errors, slot owners, moving a slot ---------------------------------


class Errors(list):
    def __call__(self, entry: Entry, message: str) -> None:
        self.append((entry, message))


def tag_on(cl: srv.Cluster, master: srv.Server, prefix: str = "t") -> str:
    return next(
        f"{prefix}{i}" for i in range(10000)
        if cl.owner_of(key_slot(f"{prefix}{i}".encode())) is master
    )  # fmt: skip


def cmdstat(server: srv.Server, cmd: str) -> int:
    with server.client() as c:
        st = c.info("commandstats").get(f"cmdstat_{cmd}")
    return int(st["calls"]) if st else 0


def move_slot(cl: srv.Cluster, slot: int, src: srv.Server, dst: srv.Server, finish: bool = True) -> None:
    sid, did = cl.node_id(src), cl.node_id(dst)
    with src.client() as sc, dst.client() as dc:
        dc.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
        sc.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", did)
        while keys := sc.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            sc.execute_command("MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", *keys)
    if finish:
        finish_move(cl, slot, dst)


def finish_move(cl: srv.Cluster, slot: int, dst: srv.Server) -> None:
    did = cl.node_id(dst)
    for node in (dst, *[m for m in cl.masters if m is not dst]):
        with node.client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", did)
