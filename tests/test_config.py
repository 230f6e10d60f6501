"""Configuration loading: v4 shake.toml, v3 sync.toml, strict errors, env and paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from redshake.config import ConfigError, load_config
from redshake.config.schema import (
    AofReaderConfig,
    FileWriterConfig,
    RdbReaderConfig,
    RedisWriterConfig,
    ScanReaderConfig,
    SyncReaderConfig,
)

# The appendix of a published RedisShake v3 deployment guide, verbatim (its whitespace-only
# lines are written as \x20).
SEED_V3_SYNC = """\
type = "sync"
\x20
[source]
version = 6.0 # redis version, such as 2.8, 4.0, 5.0, 6.0, 6.2, 7.0, ...
address = "10.233.109.145:6379"
username = "" # keep empty if not using ACL
password = "3wPxzWffdn" # keep empty if no authentication is required
tls = false
elasticache_psync = "" # using when source is ElastiCache. ref: https://github.com/alibaba/RedisShake/issues/373
\x20
[target]
type = "cluster" # "standalone" or "cluster"
version = 6.0 # redis version, such as 2.8, 4.0, 5.0, 6.0, 6.2, 7.0, ...
# When the target is a cluster, write the address of one of the nodes.
# redis-shake will obtain other nodes through the __cluster nodes__ command.
address = "10.233.103.2:6379"
username = "" # keep empty if not using ACL
password = "Aa123456" # keep empty if no authentication is required
tls = false
\x20
[advanced]
dir = "data"

# runtime.GOMAXPROCS, 0 means use runtime.NumCPU() cpu cores
ncpu = 4
\x20
# pprof port, 0 means disable
pprof_port = 0
\x20
# metric port, 0 means disable
metrics_port = 0
\x20
# log
log_file = "redis-shake.log"
log_level = "info" # debug, info or warn
log_interval = 5 # in seconds
\x20
# redis-shake gets key and value from rdb file, and uses RESTORE command to
# create the key in target redis. Redis RESTORE will return a "Target key name
# is busy" error when key already exists. You can use this configmap
# to change the default behavior of restore:
# panic:   redis-shake will stop when meet "Target key name is busy" error.
# rewrite: redis-shake will replace the key with new value.
# ignore:  redis-shake will skip restore the key when meet "Target key name is busy" error.
rdb_restore_command_behavior = "rewrite" # panic, rewrite or skip
\x20
# pipeline
pipeline_count_limit = 1024
\x20
# Client query buffers accumulate new commands. They are limited to a fixed
# amount by default. This amount is normally 1gb.
target_redis_client_max_querybuf_len = 1024_000_000
\x20
# In the Redis protocol, bulk requests, that are, elements representing single
# strings, are normally limited to 512 mb.
target_redis_proto_max_bulk_len = 512_000_000
"""

FULL_V4 = """\
function = ""

[sync_reader]
cluster = true
address = "127.0.0.1:6379"
username = "src-user"
password = "src-pass"
tls = true
sync_rdb = false
sync_aof = false
prefer_replica = true
try_diskless = true

[sync_reader.tls_config]
ca_cert = "certs/ca.crt"
cert = "/etc/shake/client.crt"
key = "certs/client.key"

[sync_reader.sentinel]
master_name = ""
address = ""
username = ""
password = ""
tls = false

[redis_writer]
cluster = false
address = "127.0.0.1:6380"
username = "dst-user"
password = "dst-pass"
tls = false
off_reply = false

[redis_writer.sentinel]
master_name = "mymaster"
address = "127.0.0.1:26379"
username = "s-user"
password = "s-pass"
tls = true

[redis_writer.sentinel.tls_config]
ca_cert = "s/ca.crt"
cert = "s/c.crt"
key = "s/c.key"

[filter]
allow_keys = ["a", "b"]
block_keys = ["c"]
allow_key_prefix = ["user:", "product:"]
block_key_prefix = ["temp:"]
allow_key_suffix = [":active"]
block_key_suffix = [":tmp"]
allow_key_regex = [":\\\\d{11}:"]
block_key_regex = [":test:\\\\d{11}:"]
allow_db = [0, 1, 2]
block_db = [3]
allow_command = ["SET", "GET"]
block_command = ["FLUSHDB"]
allow_command_group = ["STRING", "HASH"]
block_command_group = ["SCRIPTING"]
function = "shake.call(DB, ARGV)"

[advanced]
dir = "work"
ncpu = 2
pprof_port = 6060
status_port = 8080
log_file = "my.log"
log_level = "debug"
log_interval = 10
log_rotation = false
log_max_size = 64
log_max_age = 3
log_max_backups = 5
log_compress = false
rdb_restore_command_behavior = "rewrite"
pipeline_count_limit = 2048
target_redis_max_qps = 1000
target_redis_client_max_querybuf_len = 1073741824  # 1GB in bytes
target_redis_proto_max_bulk_len = 0
aws_psync = "10.0.0.1:6379@nmfu2sl5osync,10.0.0.2:6379@xhma21xfkssync"
empty_db_before_sync = true
status_bind = "127.0.0.1"
metrics_port = 9121

[module]
target_mbbloom_version = 20603
"""


def write(tmp_path: Path, text: str, name: str = "shake.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def load(tmp_path: Path, text: str, **kw):
    return load_config(write(tmp_path, text), cwd=tmp_path, env=kw.pop("env", {}), **kw)


def err(tmp_path: Path, text: str, **kw) -> str:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, text, **kw)
    return str(ei.value)


MIN_WRITER = '\n[redis_writer]\naddress = "127.0.0.1:6380"\n'


def test_seed_v3_sync_toml(tmp_path: Path) -> None:
    cfg = load(tmp_path, SEED_V3_SYNC)
    assert cfg.source_format == "v3"
    assert cfg.reader_type == "sync"
    assert isinstance(cfg.reader, SyncReaderConfig)
    assert cfg.reader.address == "10.233.109.145:6379"
    assert cfg.reader.password == "3wPxzWffdn"
    assert cfg.reader.username == ""
    assert cfg.reader.tls is False
    assert cfg.reader.sync_rdb and cfg.reader.sync_aof
    assert cfg.writer_type == "redis"
    assert isinstance(cfg.writer, RedisWriterConfig)
    assert cfg.writer.cluster is True
    assert cfg.writer.address == "10.233.103.2:6379"
    assert cfg.writer.password == "Aa123456"
    adv = cfg.advanced
    assert adv.dir == str(tmp_path / "data")
    assert adv.ncpu == 4
    assert adv.log_file == "redis-shake.log"
    assert adv.log_path == tmp_path / "data" / "redis-shake.log"
    assert adv.rdb_restore_command_behavior == "rewrite"
    assert adv.pipeline_count_limit == 1024
    assert adv.target_redis_client_max_querybuf_len == 1024_000_000
    assert adv.target_redis_proto_max_bulk_len == 512_000_000
    assert adv.status_port == 0
    assert adv.aws_psync == ""
    assert cfg.v3_source_version == 6.0 and cfg.v3_target_version == 6.0
    assert cfg.path == tmp_path / "shake.toml"


def test_v3_defaults_and_mappings(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        'type = "sync"\n[source]\naddress = "10.0.0.1:6379"\nelasticache_psync = "abcsync"\n'
        '[target]\naddress = "10.0.0.2:6379"\n[advanced]\nmetrics_port = 9100\n',
    )
    assert cfg.advanced.rdb_restore_command_behavior == "rewrite"
    assert cfg.advanced.log_file == "redis-shake.log"
    assert cfg.advanced.aws_psync == "10.0.0.1:6379@abcsync"
    assert cfg.advanced.aws_psync_map() == {"10.0.0.1:6379": "abcsync"}
    # v3 metrics were JSON on localhost: served by the status endpoint on localhost
    assert cfg.advanced.status_port == 9100
    assert cfg.advanced.status_bind == "127.0.0.1"
    assert cfg.writer.cluster is False


def test_v3_restore_and_scan(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        'type = "restore"\n[source]\nrdb_file_path = "dump.rdb"\n'
        '[target]\ntype = "standalone"\naddress = "127.0.0.1:6379"\n',
    )
    assert cfg.reader_type == "rdb"
    assert isinstance(cfg.reader, RdbReaderConfig)
    assert cfg.reader.filepath == str(tmp_path / "dump.rdb")
    cfg = load(
        tmp_path,
        'type = "scan"\n[source]\naddress = "127.0.0.1:6379"\npassword = "p"\n'
        '[target]\naddress = "127.0.0.1:6380"\n',
    )
    assert cfg.reader_type == "scan"
    assert isinstance(cfg.reader, ScanReaderConfig)
    assert cfg.reader.password == "p" and cfg.reader.scan and not cfg.reader.ksn


def test_v3_errors(tmp_path: Path) -> None:
    assert 'unknown key "adress" in [source]; did you mean "address"?' in err(
        tmp_path, 'type = "sync"\n[source]\nadress = "1.2.3.4:6379"\n[target]\naddress = "a:1"\n'
    )
    msg = err(tmp_path, 'type = "copy"\n[source]\naddress = "a:1"\n[target]\naddress = "b:1"\n')
    assert '"type"' in msg and "copy" in msg and "sync, restore, scan" in msg
    msg = err(
        tmp_path,
        'type = "sync"\n[source]\naddress = "a:1"\n[target]\ntype = "sharded"\naddress = "b:1"\n',
    )
    assert "sharded" in msg and "standalone, cluster" in msg
    msg = err(tmp_path, 'type = "sync"\n[source]\naddress = "a:1"\n' + MIN_WRITER)
    assert "mixes the v3 format" in msg and "[redis_writer]" in msg


def test_full_v4_every_key(tmp_path: Path) -> None:
    cfg = load(tmp_path, FULL_V4)
    assert cfg.source_format == "v4"
    r = cfg.reader
    assert cfg.reader_type == "sync" and isinstance(r, SyncReaderConfig)
    assert (r.cluster, r.address, r.username, r.password, r.tls) == (
        True,
        "127.0.0.1:6379",
        "src-user",
        "src-pass",
        True,
    )
    assert (r.sync_rdb, r.sync_aof, r.prefer_replica, r.try_diskless) == (False, False, True, True)
    assert r.tls_config.ca_cert == str(tmp_path / "certs/ca.crt")
    assert r.tls_config.cert == "/etc/shake/client.crt"
    assert r.tls_config.key == str(tmp_path / "certs/client.key")
    assert r.tls_config.complete
    assert not r.sentinel.enabled
    w = cfg.writer
    assert cfg.writer_type == "redis" and isinstance(w, RedisWriterConfig)
    assert (w.address, w.username, w.password, w.off_reply) == (
        "127.0.0.1:6380",
        "dst-user",
        "dst-pass",
        False,
    )
    assert w.sentinel.enabled
    assert (w.sentinel.master_name, w.sentinel.address) == ("mymaster", "127.0.0.1:26379")
    assert (w.sentinel.username, w.sentinel.password, w.sentinel.tls) == ("s-user", "s-pass", True)
    assert w.sentinel.tls_config.key == str(tmp_path / "s/c.key")
    f = cfg.filter
    assert f.allow_keys == ["a", "b"] and f.block_keys == ["c"]
    assert f.allow_key_prefix == ["user:", "product:"] and f.block_key_prefix == ["temp:"]
    assert f.allow_key_suffix == [":active"] and f.block_key_suffix == [":tmp"]
    assert f.allow_key_regex == [":\\d{11}:"] and f.block_key_regex == [":test:\\d{11}:"]
    assert f.allow_db == [0, 1, 2] and f.block_db == [3]
    assert f.allow_command == ["SET", "GET"] and f.block_command == ["FLUSHDB"]
    assert f.allow_command_group == ["STRING", "HASH"]
    assert f.block_command_group == ["SCRIPTING"]
    assert f.function == "shake.call(DB, ARGV)"
    a = cfg.advanced
    assert a.dir == str(tmp_path / "work")
    assert (a.ncpu, a.pprof_port, a.status_port, a.metrics_port) == (2, 6060, 8080, 9121)
    assert a.log_file == "my.log" and a.log_path == tmp_path / "work" / "my.log"
    assert (a.log_level, a.log_interval, a.log_rotation) == ("debug", 10, False)
    assert (a.log_max_size, a.log_max_age, a.log_max_backups, a.log_compress) == (64, 3, 5, False)
    assert a.rdb_restore_command_behavior == "rewrite"
    assert a.pipeline_count_limit == 2048
    assert a.target_redis_max_qps == 1000
    assert a.target_redis_client_max_querybuf_len == 1073741824
    assert a.target_redis_proto_max_bulk_len == 0
    assert a.aws_psync_map() == {
        "10.0.0.1:6379": "nmfu2sl5osync",
        "10.0.0.2:6379": "xhma21xfkssync",
    }
    assert a.empty_db_before_sync is True
    assert a.status_bind == "127.0.0.1"
    assert cfg.module.target_mbbloom_version == 20603


def test_v4_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[scan_reader]\naddress = "127.0.0.1:6379"\n' + MIN_WRITER)
    r = cfg.reader
    assert isinstance(r, ScanReaderConfig)
    assert (r.dbs, r.scan, r.ksn, r.count, r.skip_unknown_type) == ([], True, False, 1, [])
    a = cfg.advanced
    assert a.dir == str(tmp_path / "data")
    assert (a.ncpu, a.pprof_port, a.status_port) == (0, 0, 0)
    assert (a.log_file, a.log_level, a.log_interval) == ("shake.log", "info", 5)
    assert (a.log_rotation, a.log_max_size, a.log_max_age, a.log_max_backups, a.log_compress) == (
        True,
        512,
        7,
        3,
        True,
    )
    assert a.rdb_restore_command_behavior == "panic"
    assert a.pipeline_count_limit == 1024
    assert a.target_redis_max_qps == 300000
    assert a.target_redis_client_max_querybuf_len == 1024000000
    assert a.target_redis_proto_max_bulk_len == 512000000
    assert a.aws_psync == "" and a.empty_db_before_sync is False
    assert a.status_bind == "0.0.0.0"
    assert cfg.module.target_mbbloom_version == 0
    assert cfg.filter.function == ""


def test_rdb_aof_file_writer(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[aof_reader]\nfilepath = "aof/appendonly.aof.manifest"\ntimestamp = 1700000000\n'
        '[file_writer]\nfilepath = "out.json"\ntype = "JSON"\n',
    )
    assert isinstance(cfg.reader, AofReaderConfig)
    assert cfg.reader.filepath == str(tmp_path / "aof/appendonly.aof.manifest")
    assert cfg.reader.timestamp == 1700000000
    assert isinstance(cfg.writer, FileWriterConfig)
    assert cfg.writer_type == "file"
    assert cfg.writer.type == "json"
    assert cfg.writer.filepath == str(tmp_path / "out.json")
    cfg = load(
        tmp_path, '[rdb_reader]\nfilepath = "/abs/dump.rdb"\n[file_writer]\nfilepath = "o"\n'
    )
    assert cfg.reader.filepath == "/abs/dump.rdb" and cfg.writer.type == "cmd"


def test_relative_paths_against_cwd_not_dir(tmp_path: Path) -> None:
    start = tmp_path / "start"
    start.mkdir()
    p = write(
        tmp_path,
        '[rdb_reader]\nfilepath = "dump.rdb"\n[file_writer]\nfilepath = "../out.txt"\n'
        '[advanced]\ndir = "state"\nlog_file = "logs/x.log"\n',
    )
    cfg = load_config(p, cwd=start, env={})
    assert cfg.reader.filepath == str(start / "dump.rdb")
    assert cfg.writer.filepath == str(tmp_path / "out.txt")
    assert cfg.advanced.dir == str(start / "state")
    assert cfg.advanced.log_path == start / "state" / "logs" / "x.log"


def test_relative_config_path_and_default_cwd(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path, '[rdb_reader]\nfilepath = "d.rdb"\n' + MIN_WRITER)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("shake.toml", env={})
    assert cfg.reader.filepath == str(tmp_path / "d.rdb")
    assert cfg.path == tmp_path / "shake.toml"


def test_top_level_function_merged(tmp_path: Path) -> None:
    cfg = load(
        tmp_path, 'function = "shake.call(DB, ARGV)"\n[rdb_reader]\nfilepath = "x"\n' + MIN_WRITER
    )
    assert cfg.filter.function == "shake.call(DB, ARGV)"
    assert cfg.function == "shake.call(DB, ARGV)"
    msg = err(
        tmp_path,
        'function = "a()"\n[rdb_reader]\nfilepath = "x"\n[filter]\nfunction = "b()"\n' + MIN_WRITER,
    )
    assert "function" in msg and "[filter]" in msg


def test_legacy_writer_sentinel(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[rdb_reader]\nfilepath = "x"\n[redis_writer]\nsentinel = true\nmaster = "mymaster"\n'
        'address = "10.0.0.9:26379"\npassword = "pw"\n',
    )
    w = cfg.writer
    assert w.sentinel.enabled
    assert w.sentinel.address == "10.0.0.9:26379" and w.sentinel.master_name == "mymaster"
    assert w.password == "pw"
    # the v4.0 sample: sentinel = false, master = "" -> plain writer
    cfg = load(
        tmp_path,
        '[rdb_reader]\nfilepath = "x"\n[redis_writer]\nsentinel = false\nmaster = ""\n'
        'address = "127.0.0.1:6380"\n',
    )
    assert not cfg.writer.sentinel.enabled
    msg = err(
        tmp_path, '[rdb_reader]\nfilepath = "x"\n[redis_writer]\nsentinel = true\naddress = "a:1"\n'
    )
    assert "master" in msg
    msg = err(
        tmp_path, '[rdb_reader]\nfilepath = "x"\n[redis_writer]\nmaster = "m"\naddress = "a:1"\n'
    )
    assert "sentinel = true" in msg
    msg = err(
        tmp_path,
        '[rdb_reader]\nfilepath = "x"\n[redis_writer]\naddress = "a:1"\nmaster = "m"\n'
        '[redis_writer.sentinel]\naddress = "s:26379"\nmaster_name = "m"\n',
    )
    assert "master_name" in msg


def test_env_substitution(tmp_path: Path) -> None:
    text = (
        '[sync_reader]\naddress = "${SHAKE_SRC_ADDRESS}"\npassword = "pre-${PW}-post"\n'
        '[redis_writer]\naddress = "${SHAKE_DST_ADDRESS}"\n[advanced]\nstatus_port = "${PORT}"\n'
        'log_compress = "${COMPRESS}"\n[filter]\nallow_key_prefix = ["${PFX}"]\n'
    )
    env = {
        "SHAKE_SRC_ADDRESS": "10.1.1.1:6379",
        "SHAKE_DST_ADDRESS": "10.1.1.2:6379",
        "PW": "x$y",
        "PORT": "8080",
        "COMPRESS": "false",
        "PFX": "user:",
    }
    cfg = load(tmp_path, text, env=env)
    assert cfg.reader.address == "10.1.1.1:6379"
    assert cfg.reader.password == "pre-x$y-post"
    assert cfg.writer.address == "10.1.1.2:6379"
    assert cfg.advanced.status_port == 8080
    assert cfg.advanced.log_compress is False
    assert cfg.filter.allow_key_prefix == ["user:"]
    # only the ${NAME} form is substituted
    cfg = load(tmp_path, '[sync_reader]\naddress = "a:1"\npassword = "$PW"\n' + MIN_WRITER, env=env)
    assert cfg.reader.password == "$PW"
    # an unset variable is an error naming it
    env.pop("SHAKE_DST_ADDRESS")
    msg = err(tmp_path, text, env=env)
    assert "SHAKE_DST_ADDRESS" in msg and "not set" in msg and "redis_writer.address" in msg


def test_env_default_is_os_environ(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("REDSHAKE_TEST_SRC", "192.168.0.1:7000")
    p = write(tmp_path, '[sync_reader]\naddress = "${REDSHAKE_TEST_SRC}"\n' + MIN_WRITER)
    assert load_config(p, cwd=tmp_path).reader.address == "192.168.0.1:7000"


def test_unquoted_env_reference_hint(tmp_path: Path) -> None:
    msg = err(tmp_path, "[advanced]\nstatus_port = ${PORT}\n")
    assert "invalid TOML" in msg and "quoted" in msg


def test_unknown_keys(tmp_path: Path) -> None:
    msg = err(tmp_path, '[sync_reader]\nadress = "127.0.0.1:6379"\n' + MIN_WRITER)
    assert msg == 'unknown key "adress" in [sync_reader]; did you mean "address"?'
    msg = err(
        tmp_path,
        '[sync_reader]\naddress = "a:1"\n[sync_reader.tls_config]\nca = "x"\n' + MIN_WRITER,
    )
    assert 'unknown key "ca" in [sync_reader.tls_config]' in msg
    msg = err(
        tmp_path, '[sync_reader]\naddress = "a:1"\n' + MIN_WRITER + "[advanced]\nstatus_prot = 1\n"
    )
    assert 'unknown key "status_prot" in [advanced]; did you mean "status_port"?' == msg
    msg = err(tmp_path, '[sync_reder]\naddress = "a:1"\n' + MIN_WRITER)
    assert 'unknown key "sync_reder" at the top level; did you mean "sync_reader"?' == msg
    msg = err(tmp_path, '[sync_reader]\naddress = "a:1"\nzzzz = 1\n' + MIN_WRITER)
    assert 'unknown key "zzzz" in [sync_reader]; known keys:' in msg and "address" in msg


def test_reader_writer_count(tmp_path: Path) -> None:
    msg = err(
        tmp_path, '[sync_reader]\naddress = "a:1"\n[scan_reader]\naddress = "a:1"\n' + MIN_WRITER
    )
    assert "[sync_reader]" in msg and "[scan_reader]" in msg and "more than one reader" in msg
    msg = err(tmp_path, MIN_WRITER)
    assert "no reader section" in msg and "[rdb_reader]" in msg
    msg = err(tmp_path, '[rdb_reader]\nfilepath = "x"\n')
    assert "no writer section" in msg
    msg = err(
        tmp_path, '[rdb_reader]\nfilepath = "x"\n[file_writer]\nfilepath = "o"\n' + MIN_WRITER
    )
    assert "[redis_writer]" in msg and "[file_writer]" in msg and "more than one writer" in msg


def test_case_insensitive_keys(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[Sync_Reader]\nAddress = "127.0.0.1:6379"\nPASSWORD = "x"\n'
        '[REDIS_WRITER]\nAddress = "127.0.0.1:6380"\n[Advanced]\nStatus_Port = 1234\nLog_Level = "WARN"\n',
    )
    assert cfg.reader_type == "sync"
    assert cfg.reader.address == "127.0.0.1:6379" and cfg.reader.password == "x"
    assert cfg.advanced.status_port == 1234 and cfg.advanced.log_level == "warn"
    msg = err(tmp_path, '[sync_reader]\naddress = "a:1"\nAddress = "b:1"\n' + MIN_WRITER)
    assert "duplicate key" in msg and "address" in msg


@pytest.mark.parametrize(
    ("snippet", "needles"),
    [
        (
            '[advanced]\nlog_level = "verbose"',
            ['"log_level"', "[advanced]", '"verbose"', "debug, info, warn, error"],
        ),
        (
            '[advanced]\nrdb_restore_command_behavior = "ignore"',
            ['"rdb_restore_command_behavior"', '"ignore"', "panic, rewrite, skip"],
        ),
        ("[advanced]\nstatus_port = 70000", ['"status_port"', "70000", "0..65535"]),
        ("[advanced]\npprof_port = -1", ['"pprof_port"', "-1", "0..65535"]),
        ('[advanced]\nstatus_port = "http"', ['"status_port"', '"http"', "integer"]),
        ("[advanced]\nncpu = true", ['"ncpu"', "true", "integer"]),
        (
            '[advanced]\nempty_db_before_sync = "yes"',
            ['"empty_db_before_sync"', '"yes"', "true or false"],
        ),
        ("[advanced]\npipeline_count_limit = 0", ['"pipeline_count_limit"', ">= 1"]),
        ('[advanced]\naws_psync = "10.0.0.1:6379"', ['"aws_psync"', "ip:port@command"]),
        ('[filter]\nallow_db = ["zero"]', ['"allow_db"', "[filter]", "integer"]),
        ("[filter]\nallow_db = [-1]", ['"allow_db"', "non-negative"]),
        ("[filter]\nallow_key_prefix = [true]", ['"allow_key_prefix"', "string"]),
    ],
)
def test_bad_values(tmp_path: Path, snippet: str, needles: list[str]) -> None:
    msg = err(tmp_path, '[sync_reader]\naddress = "a:1"\n' + MIN_WRITER + snippet + "\n")
    for n in needles:
        assert n in msg, (n, msg)


def test_bad_addresses_and_required(tmp_path: Path) -> None:
    msg = err(tmp_path, '[sync_reader]\naddress = "localhost"\n' + MIN_WRITER)
    assert (
        '"address"' in msg
        and "[sync_reader]" in msg
        and '"localhost"' in msg
        and "host:port" in msg
    )
    msg = err(tmp_path, '[sync_reader]\naddress = "h:99999"\n' + MIN_WRITER)
    assert "host:port" in msg
    msg = err(tmp_path, "[sync_reader]\ncluster = true\n" + MIN_WRITER)
    assert "[sync_reader] address is required" in msg
    msg = err(tmp_path, "[rdb_reader]\n" + MIN_WRITER)
    assert "[rdb_reader] filepath is required" in msg
    msg = err(
        tmp_path, '[rdb_reader]\nfilepath = "x"\n[file_writer]\ntype = "csv"\nfilepath = "o"\n'
    )
    assert '"type"' in msg and "[file_writer]" in msg and "cmd, aof, json" in msg
    msg = err(
        tmp_path,
        '[rdb_reader]\nfilepath = "x"\n[redis_writer]\naddress = "a:1"\noff_reply = true\n',
    )
    assert "off_reply" in msg and "panic" in msg
    cfg = load(
        tmp_path,
        '[rdb_reader]\nfilepath = "x"\n[redis_writer]\naddress = "[::1]:6379"\noff_reply = true\n'
        '[advanced]\nrdb_restore_command_behavior = "skip"\n',
    )
    assert cfg.writer.off_reply and cfg.writer.address == "[::1]:6379"


def test_sentinel_checks(tmp_path: Path) -> None:
    msg = err(tmp_path, '[sync_reader]\n[sync_reader.sentinel]\naddress = "a:26379"\n' + MIN_WRITER)
    assert "master_name" in msg
    cfg = load(
        tmp_path,
        '[sync_reader]\n[sync_reader.sentinel]\naddress = "a:26379"\nmaster_name = "m"\n'
        + MIN_WRITER,
    )
    assert cfg.reader.sentinel.enabled and cfg.reader.address == ""
    msg = err(
        tmp_path,
        '[sync_reader]\ncluster = true\n[sync_reader.sentinel]\naddress = "a:26379"\nmaster_name = "m"\n'
        + MIN_WRITER,
    )
    assert "cluster" in msg


def test_weak_typing(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[scan_reader]\naddress = "a:1"\ndbs = 3\ncount = "100"\npassword = 123456\n'
        'skip_unknown_type = "ReJSON-RL"\n' + MIN_WRITER,
    )
    r = cfg.reader
    assert r.dbs == [3] and r.count == 100 and r.password == "123456"
    assert r.skip_unknown_type == ["ReJSON-RL"]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    msg = err(tmp_path, "[sync_reader\n")
    assert "invalid TOML" in msg
