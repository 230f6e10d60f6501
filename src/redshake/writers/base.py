"""What every writer provides to the driver (the :class:`Writer` contract and its
:class:`Capabilities`), target facts (TargetInfo), error types."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from redshake.entry import Entry, Run
from redshake.errors import AuthRefused, Busy, Loading, reply_class
from redshake.resp.conn import AuthError, Connection, ConnError, ReplyError
from redshake.resp.server import ServerInfo, read_info

__all__ = [
    "Capabilities",
    "TargetInfo",
    "ReplyError",
    "WriterError",
    "Writer",
    "rdb_version_for",
    "probe_target",
    "check_serving",
    "NotServing",
    "DEFAULT_PROTO_MAX_BULK_LEN",
    "not_cluster_writer",
]

DEFAULT_PROTO_MAX_BULK_LEN = 512 * 1024 * 1024


class WriterError(Exception):
    """The writer cannot continue (unhandled error reply, lost connection, ...)."""


@dataclass(frozen=True)
class Capabilities:
    """What a writer can do beyond the methods every writer has. The driver asks these,
    never ``hasattr``; a method whose ability is ``False`` raises NotImplementedError."""

    runs: bool = False  # write_run(): a Run of plain commands goes whole
    units: bool = False  # begin_unit() / end_unit() / try_marker(): exactly-once units
    marker_get: bool = False  # get(): the position marker is one key (a standalone target)
    slot_markers: bool = False  # one marker per slot: read_markers(), set_skip(), unit_offset()
    drain: bool = False  # drain(): what was in flight is counted after a failure
    reconnect: bool = False  # reconnect() after conn_lost


class Writer(ABC):
    """A target of entries.

    The driver calls :meth:`write` (and :meth:`write_run` when ``caps.runs``) in source
    order, :meth:`poll` when the reader is idle, :meth:`flush` at the end, then
    :meth:`close`. Progress is read from ``acked`` (entries the target acknowledged),
    ``keys_acked`` (of those, entries ending a snapshot key), ``acked_names`` (per raw
    command name, None when not counted) and ``acked_offset`` (every entry with an offset
    up to it is applied). Error replies go to the ``on_error`` handler given at build time.
    """

    caps: Capabilities = Capabilities()
    info: TargetInfo
    acked: int = 0
    keys_acked: int = 0
    acked_names: Counter[bytes] | None = None
    acked_offset: int = -1
    conn_lost: bool = False  # the last failure was a lost connection (caps.reconnect)
    # slot markers (caps.slot_markers): blocks sent early set their slot's marker themselves
    marker_prefix: bytes | None = None
    marker_value: Callable[[int], bytes] | None = None

    @abstractmethod
    def write(self, entry: Entry) -> None: ...

    def write_run(self, run: Run) -> None:
        """Write a Run of plain commands whole (``caps.runs``)."""
        raise NotImplementedError

    @abstractmethod
    def poll(self) -> None:
        """Send what is buffered, take the replies that arrived; never waits."""

    @abstractmethod
    def flush(self) -> None:
        """Send everything and wait for every reply."""

    @abstractmethod
    def exists(self, db: int, key: bytes) -> bool:
        """Synchronously: does ``key`` exist in ``db`` (after everything written)?"""

    @abstractmethod
    def flushall(self) -> None:
        """Empty the target."""

    @abstractmethod
    def status(self) -> dict | list[dict]: ...

    @abstractmethod
    def close(self) -> None: ...

    def drain(self, timeout: float = 10.0) -> int:
        """After a failure (``caps.drain``): wait for the replies to what was sent; returns
        how many were errors."""
        return 0

    def reconnect(self) -> None:
        """Connect again after ``conn_lost`` (``caps.reconnect``)."""
        raise NotImplementedError

    def begin_unit(self) -> None:
        """Open an atomic unit (``caps.units``)."""
        raise NotImplementedError

    def end_unit(self, db: int, key: bytes, value: bytes, offset: int) -> None:
        """Close the unit, setting the position marker ``key`` in ``db`` (``caps.units``)."""
        raise NotImplementedError

    def unit_offset(self, offset: int) -> None:
        """The offset of a source transaction's EXEC inside a unit (``caps.slot_markers``)."""
        raise NotImplementedError

    def try_marker(self, db: int, key: bytes) -> str:
        """Can a unit set the marker ``key`` in ``db``? "" or the refusal (``caps.units``)."""
        return "this target cannot hold a position marker"

    def get(self, db: int, key: bytes) -> bytes | None:
        """Synchronously read a string key (``caps.marker_get``)."""
        raise NotImplementedError

    def read_markers(self, key: bytes) -> dict[int, bytes]:
        """Every slot's marker value (``caps.slot_markers``)."""
        raise NotImplementedError

    def set_skip(self, skip: dict[int, int]) -> None:
        """Per slot, the offset up to which the target already applied the stream
        (``caps.slot_markers``)."""
        raise NotImplementedError

    def marks(self) -> dict[int, list[bytes]]:
        """Marker slot -> the last marker values set there, oldest first
        (``caps.slot_markers``)."""
        raise NotImplementedError


def not_cluster_writer(address: str) -> str:
    """What to tell a user whose standalone writer meets a cluster target."""
    return (
        f"the target {address} is a cluster: set cluster = true in [redis_writer] "
        '(v3 sync.toml: [target] type = "cluster")'
    )


def rdb_version_for(version: tuple[int, int, int], is_valkey: bool) -> int:
    """Newest RDB version a server of this version writes and loads."""
    major, minor = version[0], version[1]
    if is_valkey:
        return 80 if major >= 9 else 11
    if major >= 8 or (major, minor) >= (7, 4):
        return 12
    if (major, minor) >= (7, 2):
        return 11
    if major >= 7:
        return 10
    if major >= 5:
        return 9
    if major >= 4:
        return 8
    if (major, minor) >= (3, 2):
        return 7
    if (major, minor) >= (2, 6):
        return 6
    if (major, minor) >= (2, 4):
        return 2
    return 1


@dataclass
class TargetInfo:
    """Facts about a target server, read once at connection time."""

    version: tuple[int, int, int] = (7, 0, 0)
    is_valkey: bool = False
    rdb_version: int = 10
    proto_max_bulk_len: int = DEFAULT_PROTO_MAX_BULK_LEN
    cluster: bool = False
    databases: int = 16
    file_output: bool = False  # a file writer: keep RESTORE for every value (no SET stand-ins)
    run_id: str = ""  # INFO server run_id: changes when the server restarts

    def accepts_rdb(self, version: int, valkey_magic: bool = False) -> bool:
        """Would RESTORE / loading accept a payload of this RDB version?

        Valkey 9 accepts 1..11 and 80 (``VALKEY`` magic); Valkey < 9 accepts 1..11; Redis
        accepts 1..its own version. The foreign range (Redis 12+ on Valkey, Valkey 80+ on
        Redis) is never accepted.
        """
        if version < 1:
            return False
        if valkey_magic or version >= 80:
            return self.is_valkey and 80 <= version <= self.rdb_version
        if self.is_valkey:
            return version <= 11
        return version <= self.rdb_version

    @classmethod
    def from_info(cls, info: dict[str, str]) -> TargetInfo:
        si = ServerInfo.from_fields(info)
        return cls(
            version=si.version,
            is_valkey=si.is_valkey,
            rdb_version=rdb_version_for(si.version, si.is_valkey),
            cluster=si.cluster,
            run_id=info.get("run_id", ""),
        )


def _config_get(conn: Connection, name: str) -> str | None:
    try:
        r = conn.call("CONFIG", "GET", name)
    except ReplyError:
        return None  # renamed / forbidden by ACL
    if isinstance(r, list) and len(r) >= 2:
        v = r[1]
        return v.decode() if isinstance(v, bytes) else str(v)
    return None


class NotServing(ConnError):
    """The target is there but cannot serve yet: it is loading its dataset (a restart) or
    busy in a long script. It will serve again: callers wait and connect again."""


def check_serving(conn: Connection) -> None:
    """PING the target: ``NotServing`` while it answers LOADING or BUSY, ``AuthError`` when
    the login is refused, ``ReplyError`` for any other refusal."""
    try:
        conn.call("PING")
    except ReplyError as e:
        cls = reply_class(e.message)
        if issubclass(cls, AuthRefused):
            raise AuthError(f"{conn.address} refused PING: {e.message}") from None
        if cls is Loading or cls is Busy:
            raise NotServing(f"{conn.address}: {e.message}") from None
        raise


def probe_target(conn: Connection) -> TargetInfo:
    """Read INFO server (+ cluster) and a few CONFIG values, tolerating a forbidden CONFIG."""
    check_serving(conn)
    ti = TargetInfo.from_info(read_info(conn, "server", "cluster", tolerate=True))
    v = _config_get(conn, "proto-max-bulk-len")
    if v and v.isdigit():
        ti.proto_max_bulk_len = int(v)
    v = _config_get(conn, "databases")
    if v and v.isdigit():
        ti.databases = int(v)
    if ti.cluster:
        # Valkey 9+ serves numbered databases in cluster mode (cluster-databases, default 1)
        v = _config_get(conn, "cluster-databases")
        if v is None and ti.is_valkey and ti.version >= (9, 0, 0):
            ti.databases = _selectable_dbs(conn)  # (CONFIG renamed or forbidden)
        else:
            ti.databases = int(v) if v and v.isdigit() and int(v) > 0 else 1
    return ti


def _selectable_dbs(conn: Connection) -> int:
    """How many dbs ``SELECT`` accepts (a bisection; the connection is left in db 0)."""
    lo, hi = 1, 1 << 16  # lo: accepted count; hi: a count known not to be reached
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            conn.call("SELECT", mid - 1)
            lo = mid
        except ReplyError:
            hi = mid
    conn.call("SELECT", 0)
    return lo
