"""The typed configuration schema shared by the v4 (``shake.toml``) and v3 (``sync.toml``) formats.

Every section of a RedisShake configuration maps onto one dataclass below; the loader
(:mod:`redshake.config.loader`) fills them, validates every value and resolves relative paths,
so the rest of redshake only ever sees a :class:`Config`.

Field defaults are RedisShake v4.6.2's defaults (from its code, not its sample TOML).
``metadata`` on a field carries validation hints used by the loader:

- ``choices``: allowed string values (compared lower-cased);
- ``port``: integer 0..65535;
- ``address``: ``host:port`` (empty allowed);
- ``min``: smallest allowed integer;
- ``path``: a filesystem path, resolved against the start directory when relative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from redshake.resp.conn import connection_options

__all__ = [
    "TlsConfig",
    "SentinelConfig",
    "SyncReaderConfig",
    "ScanReaderConfig",
    "RdbReaderConfig",
    "AofReaderConfig",
    "RedisWriterConfig",
    "FileWriterConfig",
    "FilterConfig",
    "AdvancedConfig",
    "ModuleConfig",
    "Config",
    "ReaderConfig",
    "WriterConfig",
    "READER_SECTIONS",
    "WRITER_SECTIONS",
]

_PATH = {"path": True}
_PORT = {"port": True}
_ADDR = {"address": True}


@dataclass
class TlsConfig:
    """mTLS client material (``tls_config`` subtable, RedisShake >= 4.4.0)."""

    ca_cert: str = field(default="", metadata=_PATH)
    cert: str = field(default="", metadata=_PATH)
    key: str = field(default="", metadata=_PATH)

    @property
    def complete(self) -> bool:
        """True when all three files are set (RedisShake only uses the config then)."""
        return bool(self.ca_cert and self.cert and self.key)

    def as_dict(self) -> dict[str, str] | None:
        """``{"ca_cert", "cert", "key"}`` for the connection layer, or None when unset."""
        d = {"ca_cert": self.ca_cert, "cert": self.cert, "key": self.key}
        return d if any(d.values()) else None


class _Login:
    """What a section with ``username``, ``password``, ``tls``, ``tls_config`` and
    ``tls_skip_verify`` gives the connection layer."""

    username: str
    password: str
    tls: bool
    tls_config: TlsConfig
    tls_skip_verify: bool

    def connect_options(self, timeout: float = 10.0) -> dict[str, Any]:
        """Keyword arguments for :class:`redshake.resp.conn.Connection` (and ``connect``)."""
        return connection_options(
            username=self.username,
            password=self.password,
            tls=self.tls,
            tls_verify=not self.tls_skip_verify,
            tls_config=self.tls_config.as_dict(),
            timeout=timeout,
        )


@dataclass
class SentinelConfig(_Login):
    """``[*.sentinel]``: discover the master address through Sentinel."""

    master_name: str = ""
    address: str = field(default="", metadata=_ADDR)
    username: str = ""
    password: str = ""
    tls: bool = False
    tls_config: TlsConfig = field(default_factory=TlsConfig)
    # redshake: the server certificate is verified unless this is set (RedisShake never verified)
    tls_skip_verify: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)


@dataclass
class EndpointConfig(_Login):
    """The connection keys every server section shares (sync/scan readers, redis writer)."""

    cluster: bool = False
    address: str = field(default="", metadata=_ADDR)
    username: str = ""
    password: str = ""
    tls: bool = False
    tls_config: TlsConfig = field(default_factory=TlsConfig)
    # redshake: the server certificate is verified unless this is set (RedisShake never verified)
    tls_skip_verify: bool = False
    sentinel: SentinelConfig = field(default_factory=SentinelConfig)


@dataclass
class SyncReaderConfig(EndpointConfig):
    """``[sync_reader]``: PSYNC replication reader."""

    sync_rdb: bool = True
    sync_aof: bool = True
    prefer_replica: bool = False
    try_diskless: bool = False
    # redshake: announce "capa dual-channel": a Valkey 8+ source with
    # dual-channel-replication-enabled yes sends the snapshot on a second connection while the
    # stream flows on the first (buffered on our disk, not in the source's output buffer);
    # every other source, or one that refuses, does the ordinary single-channel sync
    dual_channel: bool = True
    # redshake: on a full resync after an earlier copy, FLUSHALL the target before the new
    # snapshot so keys deleted on the source meanwhile do not survive (false when several
    # sources feed the same target)
    flush_on_resync: bool = True
    # redshake: seconds to keep trying a source that was never reached in this run (wrong
    # address, server down) before giving up with exit 1; 0 = wait forever. A source lost
    # after it was reached is always retried.
    connect_timeout: int = field(default=180, metadata={"min": 0})
    # redshake: with cluster = true, read only a slice of the source's shards: "I/N" takes the
    # masters at positions I, I+N, I+2N, ... when they are ordered by their first slot (N
    # processes, e.g. the pods of a StatefulSet, split one cluster source); "" = every shard
    shards: str = ""

    def shard_slice(self) -> tuple[int, int] | None:
        """(I, N) of ``shards``, or None for every shard (validated by the loader)."""
        if not self.shards:
            return None
        i, _, n = self.shards.partition("/")
        return int(i), int(n)


@dataclass
class ScanReaderConfig(EndpointConfig):
    """``[scan_reader]``: SCAN + DUMP/RESTORE reader, optionally followed by keyspace events."""

    dbs: list[int] = field(default_factory=list)
    scan: bool = True
    ksn: bool = False
    count: int = field(default=1, metadata={"min": 1})
    prefer_replica: bool = False
    skip_unknown_type: list[str] = field(default_factory=list)
    # redshake: with ksn, CONFIG SET notify-keyspace-events on the source when it lacks the
    # needed flags (restored at exit); off by default = refuse to start and say what to run
    ksn_auto_enable: bool = False
    # redshake: as sync_reader.connect_timeout: seconds to keep trying a source never
    # reached before giving up with exit 1; 0 = wait forever
    connect_timeout: int = field(default=180, metadata={"min": 0})


@dataclass
class RdbReaderConfig:
    """``[rdb_reader]``: replay an RDB file."""

    filepath: str = field(default="", metadata=_PATH)
    # redshake: how much of the file is checked before the first write. "checksum": CRC64,
    # every record walked, blob headers; "full": every value decoded and strictly checked
    # even under a valid CRC64; "auto": "full" for files up to 1 MiB, else "checksum"
    verify: str = field(default="auto", metadata={"choices": ("auto", "checksum", "full")})


@dataclass
class AofReaderConfig:
    """``[aof_reader]``: replay an AOF file or a Redis 7 ``appendonly.aof.manifest``."""

    filepath: str = field(default="", metadata=_PATH)
    timestamp: int = field(default=0, metadata={"min": 0})
    # redshake: drop a truncated last command (and an unterminated MULTI) at the end of the
    # last file, like the server's aof-load-truncated; default: refuse the input
    ignore_truncated: bool = False


@dataclass
class RedisWriterConfig(EndpointConfig):
    """``[redis_writer]``: write to a standalone Redis, a cluster or a sentinel-managed master.

    The RedisShake <= 4.2 form ``sentinel = true`` + ``master = "name"`` is accepted and mapped
    onto :attr:`sentinel` (``address`` is then the sentinel's address).
    """

    off_reply: bool = False


@dataclass
class FileWriterConfig:
    """``[file_writer]``: write entries to a file (``cmd``, ``aof`` or ``json`` lines)."""

    filepath: str = field(default="", metadata=_PATH)
    type: str = field(default="cmd", metadata={"choices": ("cmd", "aof", "json")})


@dataclass
class FilterConfig:
    """``[filter]``: key / db / command rules, then the Lua ``function``."""

    allow_keys: list[str] = field(default_factory=list)
    block_keys: list[str] = field(default_factory=list)
    allow_key_prefix: list[str] = field(default_factory=list)
    block_key_prefix: list[str] = field(default_factory=list)
    allow_key_suffix: list[str] = field(default_factory=list)
    block_key_suffix: list[str] = field(default_factory=list)
    allow_key_regex: list[str] = field(default_factory=list)
    block_key_regex: list[str] = field(default_factory=list)
    allow_db: list[int] = field(default_factory=list)
    block_db: list[int] = field(default_factory=list)
    allow_command: list[str] = field(default_factory=list)
    block_command: list[str] = field(default_factory=list)
    allow_command_group: list[str] = field(default_factory=list)
    block_command_group: list[str] = field(default_factory=list)
    function: str = ""


@dataclass
class AdvancedConfig:
    """``[advanced]``.

    redshake additions (not in RedisShake): ``status_bind`` (interface the status server
    listens on), ``metrics_port`` (a separate Prometheus port; 0 = serve ``/metrics`` on
    the status port only; also the v3 key of the same name).
    """

    dir: str = field(default="data", metadata=_PATH)
    ncpu: int = field(default=0, metadata={"min": 0})
    pprof_port: int = field(default=0, metadata=_PORT)
    status_port: int = field(default=0, metadata=_PORT)
    log_file: str = "shake.log"
    log_level: str = field(default="info", metadata={"choices": ("debug", "info", "warn", "error")})
    log_interval: int = 5
    log_rotation: bool = True
    log_max_size: int = field(default=512, metadata={"min": 1})
    log_max_age: int = field(default=7, metadata={"min": 0})
    log_max_backups: int = field(default=3, metadata={"min": 0})
    log_compress: bool = True
    rdb_restore_command_behavior: str = field(
        default="panic", metadata={"choices": ("panic", "rewrite", "skip")}
    )
    pipeline_count_limit: int = field(default=1024, metadata={"min": 1})
    target_redis_max_qps: int = field(default=300000, metadata={"min": 0})
    target_redis_client_max_querybuf_len: int = field(default=1024000000, metadata={"min": 0})
    target_redis_proto_max_bulk_len: int = field(default=512000000, metadata={"min": 0})
    aws_psync: str = ""
    empty_db_before_sync: bool = False
    # redshake additions
    status_bind: str = "0.0.0.0"
    metrics_port: int = field(default=0, metadata=_PORT)
    # live sync applied exactly once across crashes and lost target connections (default
    # on where the target allows it): every stream batch is one MULTI/EXEC that also sets
    # "<exactly_once_key>:<source>" in exactly_once_db to the source position. Off with
    # exactly_once = false (or, as before, exactly_once_key = "").
    exactly_once: bool = True
    exactly_once_key: str = "redshake:pos"
    exactly_once_db: int = field(default=0, metadata={"min": 0})
    # a live sync keeps "redshake:live:<source replid>" (TTL 15 s) on its target and refuses
    # to start while its own target is the source of a live sync writing into its source
    # (a reverse sync during a disaster-recovery switch); see redshake.guard
    reverse_guard: bool = True
    # hash field TTLs for a target without hash field expiration (Redis < 7.4, Valkey < 9):
    # stop the run, drop the field TTLs (counted), or expire the whole key at the earliest
    unsupported_field_ttl: str = field(
        default="panic", metadata={"choices": ("panic", "drop", "key_ttl")}
    )

    @property
    def log_path(self) -> Path:
        """Absolute path of the log file (``log_file`` is relative to ``dir``)."""
        return Path(self.dir) / self.log_file

    def aws_psync_map(self) -> dict[str, str]:
        """``"ip:port@cmd,ip:port@cmd"`` -> ``{"ip:port": "cmd"}``."""
        out: dict[str, str] = {}
        for item in self.aws_psync.split(","):
            item = item.strip()
            if not item:
                continue
            addr, _, cmd = item.partition("@")
            out[addr.strip()] = cmd.strip()
        return out


@dataclass
class ModuleConfig:
    """``[module]``."""

    target_mbbloom_version: int = field(default=0, metadata={"min": 0})


ReaderConfig = SyncReaderConfig | ScanReaderConfig | RdbReaderConfig | AofReaderConfig
WriterConfig = RedisWriterConfig | FileWriterConfig

# section name -> (short type name, dataclass)
READER_SECTIONS: dict[str, tuple[str, type]] = {
    "sync_reader": ("sync", SyncReaderConfig),
    "scan_reader": ("scan", ScanReaderConfig),
    "rdb_reader": ("rdb", RdbReaderConfig),
    "aof_reader": ("aof", AofReaderConfig),
}
WRITER_SECTIONS: dict[str, tuple[str, type]] = {
    "redis_writer": ("redis", RedisWriterConfig),
    "file_writer": ("file", FileWriterConfig),
}


@dataclass
class Config:
    """A whole, validated configuration.

    ``function`` is the v4.0-4.1 top-level Lua function; the loader copies it into
    ``filter.function`` (setting both is an error), so consumers only read
    ``filter.function``. ``source_format`` says
    which file format was read; ``path`` is the absolute path of the file.
    ``v3_source_version`` / ``v3_target_version`` keep the declared versions of a v3 file.
    """

    reader_type: Literal["sync", "scan", "rdb", "aof"]
    reader: ReaderConfig
    writer_type: Literal["redis", "file"]
    writer: WriterConfig
    filter: FilterConfig = field(default_factory=FilterConfig)
    advanced: AdvancedConfig = field(default_factory=AdvancedConfig)
    module: ModuleConfig = field(default_factory=ModuleConfig)
    function: str = ""
    source_format: Literal["v4", "v3"] = "v4"
    path: Path | None = None
    v3_source_version: float | None = None
    v3_target_version: float | None = None
