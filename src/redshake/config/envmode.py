"""RedisShake's env-only mode (its container entrypoint): no config file, ``SYNC=true`` or
``SCAN=true`` and the addresses in ``SHAKE_SRC_ADDRESS`` / ``SHAKE_DST_ADDRESS``.

RedisShake runs a built-in ``shake_sync_env.toml`` / ``shake_scan_env.toml`` holding
``address = "${SHAKE_SRC_ADDRESS}"`` and ``address = "${SHAKE_DST_ADDRESS}"``; redshake builds
the same TOML, plus one line for each optional ``SHAKE_*`` variable that is set (see
:data:`OPTIONAL`), and loads it like a file (same validation, same messages).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["OPTIONAL", "env_mode", "env_config_text"]

# variable -> (section, key); sections "reader" / "writer" are the reader / writer sections
OPTIONAL: dict[str, tuple[str, str]] = {
    "SHAKE_SRC_USERNAME": ("reader", "username"),
    "SHAKE_SRC_PASSWORD": ("reader", "password"),
    "SHAKE_SRC_TLS": ("reader", "tls"),
    "SHAKE_SRC_CLUSTER": ("reader", "cluster"),
    "SHAKE_SRC_PREFER_REPLICA": ("reader", "prefer_replica"),
    "SHAKE_SRC_SHARDS": ("reader", "shards"),  # sync only: a slice of a cluster source's shards
    "SHAKE_DST_USERNAME": ("writer", "username"),
    "SHAKE_DST_PASSWORD": ("writer", "password"),
    "SHAKE_DST_TLS": ("writer", "tls"),
    "SHAKE_DST_CLUSTER": ("writer", "cluster"),
    "SHAKE_DIR": ("advanced", "dir"),
    "SHAKE_STATUS_PORT": ("advanced", "status_port"),
    "SHAKE_LOG_LEVEL": ("advanced", "log_level"),
    "SHAKE_EMPTY_DB_BEFORE_SYNC": ("advanced", "empty_db_before_sync"),
    "SHAKE_RDB_RESTORE_COMMAND_BEHAVIOR": ("advanced", "rdb_restore_command_behavior"),
}


def _true(v: str | None) -> bool:
    return (v or "").strip().lower() in ("true", "1", "yes")


def env_mode(env: Mapping[str, str]) -> str:
    """"sync", "scan" or "" (no env-only mode asked for)."""
    if _true(env.get("SYNC")):
        return "sync"
    if _true(env.get("SCAN")):
        return "scan"
    return ""


def env_config_text(mode: str, env: Mapping[str, str]) -> str:
    """The TOML of env-only mode ``mode``; ``${NAME}`` references are resolved by the loader
    (an unset required variable is reported by name)."""
    lines: dict[str, list[str]] = {"reader": [], "writer": [], "advanced": []}
    lines["reader"].append('address = "${SHAKE_SRC_ADDRESS}"')
    lines["writer"].append('address = "${SHAKE_DST_ADDRESS}"')
    for name, (section, key) in OPTIONAL.items():
        if key == "shards" and mode != "sync":
            continue
        if env.get(name, "") != "":
            lines[section].append(f'{key} = "${{{name}}}"')
    out = [f"[{mode}_reader]", *lines["reader"], "", "[redis_writer]", *lines["writer"], ""]
    if lines["advanced"]:
        out += ["[advanced]", *lines["advanced"], ""]
    return "\n".join(out)
