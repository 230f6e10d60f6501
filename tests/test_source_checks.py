"""Start-up checks and link failures, through the real CLI: every refusal ends with one clear
line and the right exit code (2: bad config / input, nothing written; 1: runtime failure),
never a traceback; a cluster node is never copied alone by accident; the live link gives
up on what cannot heal and keeps retrying (with back-off, reported) what can.

The snapshot-framing cases use a tiny fake master (a socket server speaking the replication
handshake): that is protocol fuzzing, not a stand-in for Redis data behaviour."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import hiredis
import pytest

from datagen import populate
from harness import Shake, digests, fill_cluster, start_load, wait_converged, wait_for
from helpers import assert_same_data, make_certs, run_redshake, write_config
from servers import free_port


def _run(tmp: Path, sections: dict, name: str = "shake") -> tuple[int, str]:
    sections.setdefault("advanced", {})
    sections["advanced"].setdefault("dir", str(tmp / "work"))
    sections["advanced"].setdefault("log_interval", 0)
    r = run_redshake(write_config(tmp / f"{name}.toml", sections), timeout=120)
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    return r.returncode, out


# -- item: start-up refusals (exit 2, nothing written) -----------------------------------------


@pytest.mark.parametrize("how", ["replica", "acl", "renamed"])
def test_empty_db_before_sync_refused_flushall(servers, tmp_path, how):
    src = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False)
    writer: dict = {}
    if how == "replica":
        up = servers.start("redis-7.0")
        dst = servers.start("redis-7.0", args=["--replicaof", up.host, str(up.port)])
    elif how == "renamed":
        dst = servers.start("redis-7.0", args=["--rename-command", "FLUSHALL", ""])
    else:
        dst = servers.start("redis-7.0")
        dst.client().execute_command("ACL", "SETUSER", "shake", "on", ">pw", "~*", "+@all", "-flushall")
        writer = {"username": "shake", "password": "pw"}
    dst.client().set(b"kept", b"1") if how != "replica" else None
    before = dst.client().dbsize()
    code, out = _run(tmp_path, {
        "sync_reader": {"address": src.address},
        "redis_writer": {"address": dst.address, **writer},
        "advanced": {"empty_db_before_sync": True},
    })  # fmt: skip
    assert code == 2, out
    assert "empty_db_before_sync: the target refused to be emptied" in out
    assert "Nothing was written" in out
    assert dst.client().dbsize() == before


def test_status_port_in_use(servers, tmp_path):
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    src.client().set(b"k", b"v")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        code, out = _run(tmp_path, {
            "sync_reader": {"address": src.address},
            "redis_writer": {"address": dst.address},
            "advanced": {"status_port": port, "status_bind": "127.0.0.1"},
        })  # fmt: skip
    finally:
        busy.close()
    assert code == 2, out
    assert f"cannot serve the status on 127.0.0.1:{port}" in out
    assert dst.client().dbsize() == 0


def test_workdir_not_creatable(servers, tmp_path):
    dst = servers.start("redis-7.0")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, out = _run(tmp_path, {
        "scan_reader": {"address": dst.address},
        "redis_writer": {"address": dst.address},
        "advanced": {"dir": str(blocker / "work")},
    })  # fmt: skip
    assert code == 2, out
    assert "advanced.dir" in out and "Not a directory" in out


def test_sync_source_credentials_and_certificate(servers, tmp_path):
    """A wrong password, a cluster = true source that is no cluster, a certificate that
    cannot be verified: exit 2 at once, nothing written."""
    src = servers.start("redis-7.0", password="right")
    dst = servers.start("redis-7.0")
    for cluster in (False, True):
        code, out = _run(tmp_path, {
            "sync_reader": {"address": src.address, "password": "wrong", "cluster": cluster},
            "redis_writer": {"address": dst.address},
        }, name=f"pw{cluster}")  # fmt: skip
        assert code == 2, out
        assert "WRONGPASS" in out or "invalid username-password" in out, out
    plain = servers.start("redis-7.0")
    plain.client().set(b"k", b"v")
    code, out = _run(tmp_path, {
        "sync_reader": {"address": plain.address, "cluster": True},
        "redis_writer": {"address": dst.address},
    }, name="notcluster")  # fmt: skip
    assert code == 2, out
    assert "is not a node of a cluster: set cluster = false" in out

    certs = make_certs(tmp_path)
    tls_port = free_port()
    servers.start("redis-7.0", args=[
        "--tls-port", str(tls_port), "--tls-cert-file", certs["server.crt"],
        "--tls-key-file", certs["server.key"], "--tls-ca-cert-file", certs["ca.crt"],
        "--tls-auth-clients", "no",
    ])  # fmt: skip
    t0 = time.monotonic()
    code, out = _run(tmp_path, {  # no ca_cert: the test CA is unknown to the system store
        "sync_reader": {"address": f"127.0.0.1:{tls_port}", "tls": True},
        "redis_writer": {"address": dst.address},
    }, name="tls")  # fmt: skip
    assert code == 2, out
    assert "could not be verified" in out and "tls_skip_verify = true" in out
    assert time.monotonic() - t0 < 60  # at once, not after connect_timeout
    assert dst.client().dbsize() == 0


def test_unreachable_source_gives_up_after_connect_timeout(servers, tmp_path):
    dst = servers.start("redis-7.0")
    port = free_port()  # nothing listens there
    for cluster in (False, True):
        code, out = _run(tmp_path, {
            "sync_reader": {"address": f"127.0.0.1:{port}", "cluster": cluster, "connect_timeout": 2},
            "redis_writer": {"address": dst.address},
        }, name=f"unreach{cluster}")  # fmt: skip
        assert code == 1, out
        assert "cannot reach" in out and "connect_timeout = 2" in out, out
        assert "trying again" in out


def test_unreachable_scan_source_gives_up_or_waits(servers, tmp_path):
    """The scan reader waits for a source never reached like the sync reader: the same
    back-off and message, bounded by scan_reader.connect_timeout (exit 1, nothing written);
    a source that comes up in time is copied."""
    dst = servers.start("redis-7.0")
    port = free_port()  # nothing listens there (yet)
    t0 = time.monotonic()
    code, out = _run(tmp_path, {
        "scan_reader": {"address": f"127.0.0.1:{port}", "connect_timeout": 2},
        "redis_writer": {"address": dst.address},
    }, name="unreach")  # fmt: skip
    assert code == 1, out
    assert "cannot reach the source" in out and "scan_reader.connect_timeout = 2" in out, out
    assert "trying again" in out and "Nothing was written" in out, out
    assert time.monotonic() - t0 < 60 and dst.client().dbsize() == 0
    # the source comes up (with its data, from an RDB) while redshake is waiting for it
    # (Redis 6.2: TTLs are compared within 2 s, the scan reader writes them as now + PTTL)
    seed = servers.start("redis-6.2")
    populate(seed.client(), seed.version, False, functions=False)
    seed.client().save()
    late_dir = tmp_path / "late"
    late_dir.mkdir()
    shutil.copy(seed.dir / "dump.rdb", late_dir / "dump.rdb")
    cfg = write_config(tmp_path / "late.toml", {
        "scan_reader": {"address": f"127.0.0.1:{port}", "connect_timeout": 120},
        "redis_writer": {"address": dst.address},
        "advanced": {"dir": str(tmp_path / "work2"), "log_interval": 0},
    })  # fmt: skip
    log_path = tmp_path / "late.out"
    with open(log_path, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(cfg)], cwd=str(tmp_path),
                             stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_for(lambda: "trying again" in log_path.read_text(), 60, "a retry")
            late = servers.start("redis-6.2", dir=late_dir, dbfilename="dump.rdb", port=port)
            assert p.wait(120) == 0, log_path.read_text()[-3000:]
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert late.client().dbsize() > 0
    assert_same_data(late, dst)


# -- item: a node of a cluster is never copied alone ---------------------------------------------


def test_cluster_node_without_cluster_flag(servers, tmp_path):
    src = servers.cluster("redis-7.0", masters=3)
    fill_cluster(src, 600, "k")
    dst = servers.start("redis-7.0")
    node = src.masters[1].address
    for section in ("sync_reader", "scan_reader"):
        code, out = _run(tmp_path, {
            section: {"address": node},
            "redis_writer": {"address": dst.address},
        }, name=section)  # fmt: skip
        assert code == 2, out
        assert f"the source {node} is a node of a cluster" in out
        assert f"Set cluster = true in [{section}]" in out
    assert dst.client().dbsize() == 0
    # a standalone writer pointed at a cluster
    other = servers.start("redis-7.0")
    other.client().set(b"x", b"1")
    code, out = _run(tmp_path, {
        "scan_reader": {"address": other.address},
        "redis_writer": {"address": src.masters[0].address},
    }, name="writer")  # fmt: skip
    assert code == 2, out
    assert "is a cluster: set cluster = true in [redis_writer]" in out
    assert '[target] type = "cluster"' in out


def test_v3_sync_from_one_cluster_node_copies_every_shard(servers, tmp_path, shakes):
    src = servers.cluster("redis-7.0", masters=3)
    fill_cluster(src, 900, "k")
    dst = servers.start("redis-7.0")
    port = free_port()
    cfg = tmp_path / "sync.toml"
    cfg.write_text(
        'type = "sync"\n[source]\n'
        f'address = "{src.masters[2].address}"\n'
        f'[target]\ntype = "standalone"\naddress = "{dst.address}"\n'
        f'[advanced]\ndir = "{tmp_path / "work"}"\nlog_interval = 1\n'
        f'status_port = {port}\nstatus_bind = "127.0.0.1"\n'
    )
    shake = Shake(tmp_path, src.masters[2], dst)
    shake.cfg = cfg
    shakes.append(shake.start())

    def converged() -> bool:
        try:
            doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read())
        except OSError:
            return False
        return bool(doc.get("consistent")) and sum(not k.startswith(b"redshake:") for k in dst.client().keys("*")) == 900

    wait_for(converged, 90, "every shard copied", shake)
    assert digests(src.masters) == digests([dst])
    assert "is a node of a cluster: copying every shard" in shake.log()
    assert shake.terminate() == 0, shake.log()[-3000:]
    # the same for a v3 scan
    dst2 = servers.start("redis-7.0")
    scan = tmp_path / "scan.toml"
    scan.write_text(
        f'type = "scan"\n[source]\naddress = "{src.masters[0].address}"\n'
        f'[target]\naddress = "{dst2.address}"\n[advanced]\ndir = "{tmp_path / "work2"}"\n'
    )
    r = run_redshake(scan, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert digests(src.masters) == digests([dst2])


# -- item: the live link: what cannot heal stops, what can is retried ---------------------------


class FakeMaster:
    """Answers the replica handshake, then sends ``payloads[n]`` after the n-th PSYNC (the
    last one for every later PSYNC) and closes, or with ``keep_open`` keeps the connection
    that got the last payload open."""

    def __init__(self, *payloads: bytes, keep_open: bool = False) -> None:
        self.payloads = payloads
        self.keep_open = keep_open
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.psyncs: list[float] = []
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.halt.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        reader = hiredis.Reader()
        info = b"# Server\r\nredis_version:7.0.0\r\n"
        conn.settimeout(10)
        try:
            while not self.halt.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                reader.feed(data)
                while (cmd := reader.gets()) is not False:
                    name = cmd[0].lower()
                    if name == b"info":
                        conn.sendall(b"$%d\r\n%s\r\n" % (len(info), info))
                    elif name in (b"psync", b"sync"):
                        n = len(self.psyncs)
                        self.psyncs.append(time.monotonic())
                        conn.sendall(self.payloads[min(n, len(self.payloads) - 1)])
                        if not (self.keep_open and n >= len(self.payloads) - 1):
                            return
                    elif name == b"replconf" and len(cmd) > 1 and cmd[1].lower() == b"ack":
                        continue
                    elif name == b"ping":
                        conn.sendall(b"+PONG\r\n")
                    else:
                        conn.sendall(b"+OK\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.halt.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def fake_masters():
    started: list[FakeMaster] = []
    yield lambda *payloads, **kw: started.append(FakeMaster(*payloads, **kw)) or started[-1]
    for m in started:
        m.close()


REPLID = b"a" * 40


@pytest.mark.parametrize("header", [b"$-1", b"$999999999999999999999", b"$12x"])
def test_absurd_snapshot_header_is_rejected(servers, tmp_path, fake_masters, header):
    master = fake_masters(b"+FULLRESYNC " + REPLID + b" 0\r\n" + header + b"\r\n")
    dst = servers.start("redis-7.0")
    code, out = _run(tmp_path, {
        "sync_reader": {"address": master.address},
        "redis_writer": {"address": dst.address},
    })  # fmt: skip
    assert code == 1, out
    assert "snapshot" in out and header.decode() in out, out
    assert len(master.psyncs) == 1  # not asked again: the same answer would come back


def test_truncated_snapshot_backs_off(servers, tmp_path, fake_masters, shakes):
    """Each transfer breaks after 1000 of 100000 bytes: the next full sync is asked for after
    a growing pause (each one empties the target again), failures are logged and counted."""
    body = b"REDIS0009" + b"\xfa\x03abc\x03def" * 200  # a valid start, then cut
    master = fake_masters(b"+FULLRESYNC " + REPLID + b" 0\r\n$100000\r\n" + body[:1000])
    dst = servers.start("redis-7.0")
    port = free_port()
    shake = Shake(tmp_path, master, dst, status_port=port).start()
    shakes.append(shake)
    wait_for(lambda: len(master.psyncs) >= 3, 60, "three attempts", shake)
    time.sleep(1.0)
    doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read())
    reader = doc["reader"][0] if isinstance(doc["reader"], list) else doc["reader"]
    assert reader["failed_snapshots"] >= 2
    assert "connection closed" in reader["last_link_error"]
    gaps = [b - a for a, b in zip(master.psyncs, master.psyncs[1:], strict=False)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.8, gaps  # 1s, 2s, 4s ... not a tight loop
    assert shake.terminate() in (0, 1)
    log = shake.log()
    assert "the snapshot transfer broke after 1000 of 100000 bytes (failed snapshot #2)" in log
    assert "Traceback" not in log
    flushes = int(dst.info("commandstats").get("cmdstat_flushall", {}).get("calls", 0))
    assert flushes <= len(master.psyncs)


def test_loading_source_is_retried(servers, tmp_path, fake_masters, shakes):
    """-LOADING answers to PSYNC are retried (logged, counted) until the source serves the
    snapshot (a real server's RDB file)."""
    real = servers.start("redis-7.0")
    real.client().set(b"from-the-snapshot", b"yes")
    real.client().execute_command("SAVE")
    rdb = (real.dir / "dump.rdb").read_bytes()
    loading = b"-LOADING Redis is loading the dataset in memory\r\n"
    full = b"+FULLRESYNC " + REPLID + b" 0\r\n$%d\r\n" % len(rdb) + rdb
    master = fake_masters(loading, loading, full, keep_open=True)
    dst = servers.start("redis-7.0")
    port = free_port()
    shake = Shake(tmp_path, master, dst, status_port=port).start()
    shakes.append(shake)
    wait_for(lambda: dst.client().get(b"from-the-snapshot") == b"yes", 60, "the snapshot", shake)
    doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read())
    assert doc["reader"]["reconnects"] >= 2
    assert "LOADING" in doc["reader"]["last_link_error"]
    assert doc["reader"]["failed_snapshots"] == 0
    assert "source not ready: LOADING" in shake.log()
    assert shake.terminate() == 0


def test_source_restart_is_retried_past_connect_timeout(servers, tmp_path, shakes):
    """A source that was reached and then goes away (restart) is retried however long it
    takes: connect_timeout only bounds the wait for a source never reached."""
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False)
    port = free_port()
    shake = Shake(
        tmp_path, src, dst, reader={"connect_timeout": 1}, status_port=port
    ).start()  # fmt: skip
    shakes.append(shake)
    shake.wait_streaming(60, "the snapshot")
    src.stop()
    time.sleep(3)  # longer than connect_timeout
    assert shake.proc.poll() is None, shake.log()[-3000:]
    src2 = servers.start("redis-7.0", port=src.port)  # restarted without its data
    populate(src2.client(), src2.version, False, big=False, seed=11)
    halt = start_load(src2, 2)
    time.sleep(1)
    halt()
    wait_converged(src2, shake)
    assert assert_same_data(src2, dst) > 0
    doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read())
    assert doc["reader"]["reconnects"] >= 1
    assert shake.terminate() == 0


def test_moved_reply_names_the_fix():
    """A MOVED met after start (the upfront check passed) names cluster = true too."""
    from redshake.entry import Entry
    from redshake.errors import FatalError
    from redshake.pipeline import ErrorPolicy
    from redshake.status.stats import Stats

    policy = ErrorPolicy("panic", Stats())
    policy.standalone_target = "127.0.0.1:7000"
    with pytest.raises(FatalError, match=r"is a cluster: set cluster = true in \[redis_writer\]"):
        policy(Entry(0, [b"SET", b"k", b"v"]), "MOVED 3999 127.0.0.1:7001")
    policy.standalone_target = ""  # a cluster writer: the plain target error
    with pytest.raises(FatalError, match="target error for SET"):
        policy(Entry(0, [b"SET", b"k", b"v"]), "MOVED 3999 127.0.0.1:7001")
