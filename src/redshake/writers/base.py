"""What writers share: target facts (TargetInfo), error types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from redshake.entry import Entry
from redshake.resp.conn import AuthError, Connection, ReplyError
from redshake.resp.server import ServerInfo, read_info

__all__ = [
    "TargetInfo",
    "ReplyError",
    "WriterError",
    "Writer",
    "rdb_version_for",
    "probe_target",
    "DEFAULT_PROTO_MAX_BULK_LEN",
]

DEFAULT_PROTO_MAX_BULK_LEN = 512 * 1024 * 1024


class WriterError(Exception):
    """The writer cannot continue (unhandled error reply, lost connection, ...)."""


class Writer(Protocol):
    def write(self, entry: Entry) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def status(self) -> dict | list[dict]: ...


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


def probe_target(conn: Connection) -> TargetInfo:
    """Read INFO server (+ cluster) and a few CONFIG values, tolerating a forbidden CONFIG."""
    try:
        conn.call("PING")
    except ReplyError as e:
        if e.code in ("NOAUTH", "WRONGPASS", "NOPERM"):
            raise AuthError(f"{conn.address} refused PING: {e.message}") from None
        raise
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
