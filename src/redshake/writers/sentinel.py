"""Find a sentinel-managed master. The sync reader and the standalone writer ask again before
every reconnect, so both follow a failover (of the source, of the target)."""

from __future__ import annotations

import logging

from redshake.resp.conn import (
    Connection,
    ConnError,
    ReplyError,
    connection_options,
    format_address,
    parse_address,
)

__all__ = ["resolve_master", "resolve_from_config", "SentinelError"]

log = logging.getLogger("redshake")


class SentinelError(ConnError):
    """The sentinel does not know the master, or cannot be asked."""


def resolve_master(
    sentinel_address: str,
    master_name: str,
    *,
    username: str = "",
    password: str = "",
    tls: bool = False,
    tls_config: dict[str, str] | None = None,
    tls_verify: bool = True,
    timeout: float = 10.0,
) -> str:
    """``SENTINEL GET-MASTER-ADDR-BY-NAME master_name`` -> ``"host:port"``.

    ``sentinel_address`` may list several sentinels separated by commas; the first one that
    answers is used.
    """
    errors: list[str] = []
    for addr in [a.strip() for a in sentinel_address.split(",") if a.strip()]:
        host, port = parse_address(addr, default_port=26379)
        try:
            opts = connection_options(
                username=username,
                password=password,
                tls=tls,
                tls_verify=tls_verify,
                tls_config=tls_config,
                timeout=timeout,
            )
            with Connection(host, port, io_timeout=timeout, **opts) as conn:
                reply = conn.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name)
        except (ConnError, ReplyError) as e:
            errors.append(f"{addr}: {e}")
            continue
        if not reply:
            raise SentinelError(f"sentinel {addr} does not know a master named {master_name!r}")
        mhost = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        mport = int(reply[1])
        return format_address(mhost, mport)
    raise SentinelError(
        f"no sentinel could resolve master {master_name!r}: " + "; ".join(errors or ["no address"])
    )


def resolve_from_config(sentinel, role: str = "master") -> str:
    """The master's address for a ``[*.sentinel]`` config table (a SentinelConfig); logged."""
    address = resolve_master(
        sentinel.address,
        sentinel.master_name,
        username=sentinel.username,
        password=sentinel.password,
        tls=sentinel.tls,
        tls_config=sentinel.tls_config.as_dict(),
        tls_verify=not sentinel.tls_skip_verify,
    )
    log.info("sentinel %s: %s %r is at %s", sentinel.address, role, sentinel.master_name, address)
    return address
