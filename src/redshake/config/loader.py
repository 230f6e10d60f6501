"""Load a RedisShake configuration file (v4 ``shake.toml`` or v3 ``sync.toml``) into a :class:`Config`.

Differences from RedisShake, all deliberate:

- unknown keys are errors (naming the key, its section and the closest known key) instead of
  being ignored silently;
- two reader (or two writer) sections are an error instead of a silent precedence rule;
- ``${NAME}`` in a string value must name a set environment variable (RedisShake leaves the
  text unchanged, which silently produces a wrong address);
- relative paths are resolved against the directory redshake was started in, not against
  ``advanced.dir`` (``log_file`` stays relative to ``dir``).

Like RedisShake (viper), keys are case-insensitive and values are weakly typed: ``"8080"`` is
accepted for an integer and ``"true"`` for a boolean, which matters after env substitution.
The v3 Lua filter file (second command-line argument of RedisShake v3) is not handled here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from redshake.config.schema import (
    READER_SECTIONS,
    WRITER_SECTIONS,
    AdvancedConfig,
    Config,
    FileWriterConfig,
    FilterConfig,
    ModuleConfig,
    RdbReaderConfig,
    RedisWriterConfig,
    ScanReaderConfig,
    SentinelConfig,
    SyncReaderConfig,
)
from redshake.errors import BadInput

__all__ = ["ConfigError", "load_config", "load_config_text"]


class ConfigError(BadInput):
    """A configuration problem; the message is meant for the user as is."""


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_V4_TOP = (*READER_SECTIONS, *WRITER_SECTIONS, "filter", "advanced", "module", "function")
_V3_TOP = ("type", "source", "target", "advanced")
_V3_SOURCE = (
    "version",
    "address",
    "username",
    "password",
    "tls",
    "elasticache_psync",
    "rdb_file_path",
    "rdb_verify",  # redshake: [rdb_reader] verify
)
_V3_TARGET = ("type", "version", "address", "username", "password", "tls")
_V3_ADVANCED_DEFAULTS = {"log_file": "redis-shake.log", "rdb_restore_command_behavior": "rewrite"}


# --------------------------------------------------------------------------- entry points


def load_config(
    path: str | Path, *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read, validate and normalise the configuration file at ``path``.

    ``cwd`` is the directory relative paths are resolved against (default: the current
    directory); ``env`` supplies ``${NAME}`` values (default: ``os.environ``).
    Raises :class:`ConfigError` with a user-facing message on any problem.
    """
    p = Path(path)
    base = Path(cwd) if cwd is not None else Path(os.getcwd())
    if not p.is_absolute():
        p = base / p
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file is a directory: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {p}: {e}") from None
    return load_config_text(text, cwd=base, env=env, path=p)


def load_config_text(
    text: str,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Config:
    """Like :func:`load_config` for TOML text already in memory."""
    where = str(path) if path is not None else "config"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        hint = ""
        if "${" in text:
            hint = (
                ' (note: ${NAME} references must be inside quoted strings, e.g. port = "${PORT}")'
            )
        raise ConfigError(f"{where}: invalid TOML: {e}{hint}") from None
    base = Path(cwd) if cwd is not None else Path(os.getcwd())
    data = _lower_keys(raw, "")
    data = _substitute(data, os.environ if env is None else env, "")
    is_v3 = "type" in data or "source" in data or "target" in data
    if is_v3:
        v4_sections = [k for k in data if k in (*READER_SECTIONS, *WRITER_SECTIONS, "filter")]
        if v4_sections:
            raise ConfigError(
                "config mixes the v3 format (type / [source] / [target]) with v4 sections "
                f"({', '.join('[' + s + ']' for s in v4_sections)}); use one format"
            )
        cfg = _load_v3(data)
    else:
        cfg = _load_v4(data)
    cfg.path = path
    _resolve_paths(cfg, base)
    _check(cfg)
    return cfg


# --------------------------------------------------------------------------- raw-data passes


def _lower_keys(obj: Any, where: str) -> Any:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            lk = k.lower()
            if lk in out:
                sect = f"[{where}]" if where else "the top level"
                raise ConfigError(f'duplicate key "{lk}" in {sect} (keys are case-insensitive)')
            out[lk] = _lower_keys(v, f"{where}.{lk}" if where else lk)
        return out
    if isinstance(obj, list):
        return [_lower_keys(v, where) for v in obj]
    return obj


def _substitute(obj: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(obj, str):
        if "${" not in obj:
            return obj

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            val = env.get(name)
            if val is None:
                raise ConfigError(
                    f"environment variable {name} is not set (referenced by "
                    f'"{where or "?"}" as ${{{name}}})'
                )
            return val

        return _ENV_RE.sub(repl, obj)
    if isinstance(obj, dict):
        return {k: _substitute(v, env, f"{where}.{k}" if where else k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, env, where) for v in obj]
    return obj


# --------------------------------------------------------------------------- generic builder


def _sect(section: str) -> str:
    return f"[{section}]" if section else "the top level"


def _unknown(key: str, section: str, known: typing.Iterable[str]) -> ConfigError:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    msg = f'unknown key "{key}" ' + (f"in [{section}]" if section else "at the top level")
    if close:
        msg += f'; did you mean "{close[0]}"?'
    elif known:
        msg += f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(msg)


def _bad(key: str, section: str, value: Any, expected: str) -> ConfigError:
    shown = f'"{value}"' if isinstance(value, str) else _toml_repr(value)
    return ConfigError(f'invalid value for "{key}" in {_sect(section)}: {shown} ({expected})')


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_repr(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _to_bool(value: Any, key: str, section: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise _bad(key, section, value, "expected true or false")


def _to_int(value: Any, key: str, section: str, meta: Mapping[str, Any]) -> int:
    if isinstance(value, bool):
        raise _bad(key, section, value, "expected an integer")
    if isinstance(value, int):
        out = value
    elif isinstance(value, float) and value.is_integer():
        out = int(value)
    elif isinstance(value, str):
        try:
            out = int(value.strip())
        except ValueError:
            raise _bad(key, section, value, "expected an integer") from None
    else:
        raise _bad(key, section, value, "expected an integer")
    if meta.get("port") and not 0 <= out <= 65535:
        raise _bad(key, section, value, "expected a port number 0..65535, 0 = off")
    if "min" in meta and out < meta["min"]:
        raise _bad(key, section, value, f"expected an integer >= {meta['min']}")
    return out


def _check_address(value: str, key: str, section: str) -> None:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ok = bool(sep and host and port.isdigit() and 0 < int(port) <= 65535)
    if not ok or any(c.isspace() for c in value):
        raise _bad(key, section, value, 'expected host:port, e.g. "127.0.0.1:6379"')


def _to_str(value: Any, key: str, section: str, meta: Mapping[str, Any]) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _bad(key, section, value, "expected a string")
    out = value if isinstance(value, str) else str(value)
    choices = meta.get("choices")
    if choices:
        low = out.strip().lower()
        if low not in choices:
            raise _bad(key, section, value, "allowed: " + ", ".join(choices))
        out = low
    if meta.get("address") and out:
        _check_address(out, key, section)
    return out


def _convert(tp: Any, value: Any, key: str, section: str, meta: Mapping[str, Any]) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(key, section, value, "expected a table")
        return _build(tp, value, f"{section}.{key}" if section else key)
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        items = value if isinstance(value, list) else [value]
        out = [_convert(item_tp, v, key, section, meta) for v in items]
        if item_tp is int and any(v < 0 for v in out):
            raise _bad(key, section, value, "expected non-negative integers")
        return out
    if tp is bool:
        return _to_bool(value, key, section)
    if tp is int:
        return _to_int(value, key, section, meta)
    if tp is str:
        return _to_str(value, key, section, meta)
    raise TypeError(f"unsupported schema type {tp!r}")  # pragma: no cover


def _build(cls: type, data: Mapping[str, Any], section: str, **extra: Any) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            raise _unknown(key, section, fields)
        kwargs[key] = _convert(hints[key], value, key, section, f.metadata)
    kwargs.update(extra)
    return cls(**kwargs)


def _table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f'"{name}" must be a table ([{name}]), got {_toml_repr(value)}')
    return value


# --------------------------------------------------------------------------- v4


def _load_v4(data: dict[str, Any]) -> Config:
    for key in data:
        if key not in _V4_TOP:
            raise _unknown(key, "", _V4_TOP)
    readers = [s for s in READER_SECTIONS if s in data]
    if len(readers) > 1:
        raise ConfigError(
            "more than one reader section: "
            + " and ".join(f"[{s}]" for s in readers)
            + "; keep exactly one"
        )
    if not readers:
        raise ConfigError(
            "no reader section: add one of " + ", ".join(f"[{s}]" for s in READER_SECTIONS)
        )
    writers = [s for s in WRITER_SECTIONS if s in data]
    if len(writers) > 1:
        raise ConfigError(
            "more than one writer section: "
            + " and ".join(f"[{s}]" for s in writers)
            + "; keep exactly one"
        )
    if not writers:
        raise ConfigError(
            "no writer section: add one of " + ", ".join(f"[{s}]" for s in WRITER_SECTIONS)
        )
    rsec, wsec = readers[0], writers[0]
    reader_type, reader_cls = READER_SECTIONS[rsec]
    writer_type, writer_cls = WRITER_SECTIONS[wsec]
    reader = _build(reader_cls, _table(data, rsec), rsec)
    if writer_cls is RedisWriterConfig:
        writer = _build_redis_writer(_table(data, wsec), wsec)
    else:
        writer = _build(writer_cls, _table(data, wsec), wsec)
    filt = _build(FilterConfig, _table(data, "filter"), "filter")
    advanced = _build(AdvancedConfig, _table(data, "advanced"), "advanced")
    module = _build(ModuleConfig, _table(data, "module"), "module")
    function = _to_str(data.get("function", ""), "function", "", {})
    if function.strip():
        if filt.function.strip():
            raise ConfigError(
                'both a top-level "function" and "function" in [filter] are set; '
                "keep only the one in [filter]"
            )
        filt.function = function
    return Config(
        reader_type=reader_type,
        reader=reader,
        writer_type=writer_type,
        writer=writer,
        filter=filt,
        advanced=advanced,
        module=module,
        function=function,
        source_format="v4",
    )


def _build_redis_writer(data: dict[str, Any], section: str) -> RedisWriterConfig:
    """[redis_writer], accepting the RedisShake <= 4.2 ``sentinel = true`` + ``master`` form."""
    data = dict(data)
    old_sentinel = data.get("sentinel")
    legacy = old_sentinel is not None and not isinstance(old_sentinel, dict)
    master = data.pop("master", None)
    s_user = data.pop("sentinel_username", None)
    s_pass = data.pop("sentinel_password", None)
    if not legacy:
        if isinstance(old_sentinel, dict) and (master or s_user or s_pass):
            name = "master" if master else "sentinel_username/sentinel_password"
            raise ConfigError(
                f'"{name}" in [{section}] belongs to the old "sentinel = true" form; with a '
                f"[{section}.sentinel] table use its master_name/username/password"
            )
        if master:
            raise ConfigError(
                f'master = "{master}" in [{section}] has no effect without sentinel = true '
                f"(or use a [{section}.sentinel] table with address and master_name)"
            )
        return _build(RedisWriterConfig, data, section)
    enabled = _to_bool(data.pop("sentinel"), "sentinel", section)
    writer = _build(RedisWriterConfig, data, section)
    if enabled:
        master_name = _to_str(master if master is not None else "", "master", section, {})
        if not master_name:
            raise ConfigError(
                f'[{section}] sentinel = true needs master = "<master name>" '
                "(the name the sentinels monitor)"
            )
        writer.sentinel = SentinelConfig(
            master_name=master_name,
            address=writer.address,
            username=_to_str(s_user or "", "sentinel_username", section, {}),
            password=_to_str(s_pass or "", "sentinel_password", section, {}),
            tls=writer.tls,
        )
    return writer


# --------------------------------------------------------------------------- v3


def _v3_keys(table: Mapping[str, Any], allowed: typing.Sequence[str], section: str) -> None:
    for key in table:
        if key not in allowed:
            raise _unknown(key, section, allowed)


def _load_v3(data: dict[str, Any]) -> Config:
    for key in data:
        if key not in _V3_TOP:
            raise _unknown(key, "", _V3_TOP)
    if "type" not in data:
        raise ConfigError(
            'v3 config ([source]/[target]) needs a top-level type = "sync" | "restore" | "scan"'
        )
    mode = _to_str(data["type"], "type", "", {"choices": ("sync", "restore", "scan")})
    source = _table(data, "source")
    target = _table(data, "target")
    _v3_keys(source, _V3_SOURCE, "source")
    _v3_keys(target, _V3_TARGET, "target")
    adv_raw = dict(_table(data, "advanced"))

    def s(
        table: Mapping[str, Any], key: str, section: str, meta: Mapping[str, Any] | None = None
    ) -> str:
        return _to_str(table.get(key, ""), key, section, meta or {})

    def b(table: Mapping[str, Any], key: str, section: str) -> bool:
        return _to_bool(table.get(key, False), key, section)

    def version(table: Mapping[str, Any], section: str) -> float | None:
        if "version" not in table:
            return None
        v = table["version"]
        try:
            if isinstance(v, bool):
                raise ValueError
            out = float(v)
        except (TypeError, ValueError):
            raise _bad(
                "version", section, v, "expected a Redis version number such as 6.0"
            ) from None
        if out < 2.8:
            raise _bad("version", section, v, "Redis 2.8 or newer is required")
        return out

    # [advanced]: v3 keys plus every v4 one; v3 defaults differ.
    v3_metrics_port = adv_raw.pop("metrics_port", None)
    for k, v in _V3_ADVANCED_DEFAULTS.items():
        adv_raw.setdefault(k, v)
    advanced = _build(AdvancedConfig, adv_raw, "advanced")
    if v3_metrics_port is not None:
        # v3 served its JSON metrics on localhost:<metrics_port>; the closest equivalent is the
        # status endpoint, bound to localhost like v3 did.
        port = _to_int(v3_metrics_port, "metrics_port", "advanced", {"port": True})
        if port and not advanced.status_port:
            advanced.status_port = port
            if "status_bind" not in adv_raw:
                advanced.status_bind = "127.0.0.1"

    src_addr = s(source, "address", "source", {"address": True})
    reader: Any
    if mode == "restore":
        reader_type = "rdb"
        reader = RdbReaderConfig(
            filepath=s(source, "rdb_file_path", "source"),
            verify=s(source, "rdb_verify", "source", {"choices": ("auto", "checksum", "full")})
            if "rdb_verify" in source
            else "auto",
        )
        if not reader.filepath:
            raise ConfigError('type = "restore" needs rdb_file_path in [source]')
    elif mode == "sync":
        reader_type = "sync"
        reader = SyncReaderConfig(
            address=src_addr,
            username=s(source, "username", "source"),
            password=s(source, "password", "source"),
            tls=b(source, "tls", "source"),
        )
        psync = s(source, "elasticache_psync", "source")
        if psync:
            if advanced.aws_psync:
                raise ConfigError(
                    "both elasticache_psync in [source] and aws_psync in [advanced] are set; keep one"
                )
            advanced.aws_psync = f"{src_addr}@{psync}"
    else:
        reader_type = "scan"
        reader = ScanReaderConfig(
            address=src_addr,
            username=s(source, "username", "source"),
            password=s(source, "password", "source"),
            tls=b(source, "tls", "source"),
        )
    ttype = _to_str(
        target.get("type", "standalone"), "type", "target", {"choices": ("standalone", "cluster")}
    )
    writer = RedisWriterConfig(
        cluster=ttype == "cluster",
        address=s(target, "address", "target", {"address": True}),
        username=s(target, "username", "target"),
        password=s(target, "password", "target"),
        tls=b(target, "tls", "target"),
    )
    return Config(
        reader_type=reader_type,
        reader=reader,
        writer_type="redis",
        writer=writer,
        advanced=advanced,
        source_format="v3",
        v3_source_version=version(source, "source"),
        v3_target_version=version(target, "target"),
    )


# --------------------------------------------------------------------------- post passes


def _resolve_paths(cfg: Config, base: Path) -> None:
    def walk(obj: Any) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value)
            elif f.metadata.get("path") and isinstance(value, str) and value:
                p = Path(value).expanduser()
                if not p.is_absolute():
                    p = base / p
                setattr(obj, f.name, os.path.normpath(p))

    for part in (cfg.reader, cfg.writer, cfg.advanced):
        walk(part)


def _check_sentinel(sentinel: SentinelConfig, cluster: bool, section: str) -> None:
    if not sentinel.enabled:
        if sentinel.master_name:
            raise ConfigError(f"[{section}.sentinel] master_name is set but address is empty")
        return
    if not sentinel.master_name:
        raise ConfigError(f"[{section}.sentinel] address is set but master_name is empty")
    if cluster:
        raise ConfigError(f"[{section}] sentinel discovery cannot be combined with cluster = true")


def _check(cfg: Config) -> None:
    r, w, adv = cfg.reader, cfg.writer, cfg.advanced
    rsec = f"{cfg.reader_type}_reader" if cfg.source_format == "v4" else "source"
    wsec = f"{cfg.writer_type}_writer" if cfg.source_format == "v4" else "target"
    if isinstance(r, SyncReaderConfig | ScanReaderConfig):
        _check_sentinel(r.sentinel, r.cluster, rsec)
        if not r.address and not r.sentinel.enabled:
            raise ConfigError(f'[{rsec}] address is required (host:port, e.g. "127.0.0.1:6379")')
    elif not r.filepath:
        raise ConfigError(f"[{rsec}] filepath is required")
    if isinstance(r, SyncReaderConfig) and r.shards:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", r.shards)
        if not m or not int(m[1]) < int(m[2]):
            raise _bad("shards", rsec, r.shards, '"I/N" with 0 <= I < N (e.g. "0/3"), or "" for every shard')
        if not r.cluster:
            raise ConfigError(f"[{rsec}] shards = {r.shards!r} needs cluster = true (it selects shards of a cluster source)")
        r.shards = f"{int(m[1])}/{int(m[2])}"
    if isinstance(w, RedisWriterConfig):
        _check_sentinel(w.sentinel, w.cluster, wsec)
        if not w.address and not w.sentinel.enabled:
            raise ConfigError(f'[{wsec}] address is required (host:port, e.g. "127.0.0.1:6380")')
        if w.off_reply and adv.rdb_restore_command_behavior == "panic":
            raise ConfigError(
                f'[{wsec}] off_reply = true cannot be used with rdb_restore_command_behavior = "panic" '
                "(replies are never read, so a BUSYKEY error could not stop the sync); "
                'use "rewrite" or "skip"'
            )
    elif isinstance(w, FileWriterConfig) and not w.filepath:
        raise ConfigError(f"[{wsec}] filepath is required")
    if adv.aws_psync:
        for item in adv.aws_psync.split(","):
            item = item.strip()
            if not item:
                continue
            addr, at, cmd = item.partition("@")
            if not at or not cmd:
                raise _bad(
                    "aws_psync",
                    "advanced",
                    adv.aws_psync,
                    'expected "ip:port@command[,ip:port@command...]"',
                )
            _check_address(addr, "aws_psync", "advanced")
    if not adv.log_file:
        raise ConfigError('[advanced] log_file must not be empty (e.g. "shake.log")')
