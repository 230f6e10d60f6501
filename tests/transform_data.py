"""A small source data set for the [filter] / Lua tests: known keys in dbs 0-2, every type,
a function library; saved to an RDB that the tests restore through the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import redis

import servers as _servers
from helpers import run_redshake, write_config

LIB = "#!lua name=tlib\nredis.register_function('tfn', function(keys, args) return 1 end)"

# db -> key -> type
LAYOUT: dict[int, dict[bytes, str]] = {
    0: {
        b"user:1": "string",
        b"user:2": "hash",
        b"user:10:cache": "string",
        b"order:1": "list",
        b"order:2:cache": "zset",
        b"session:abc": "set",
        b"stream:1": "stream",
        b"\xffbin:1": "string",
    },
    1: {b"user:100": "string", b"order:100": "hash"},
    2: {b"user:200": "list", b"other": "string"},
}


def fill(c0: redis.Redis, address_client) -> None:
    """Write LAYOUT (``address_client(db)`` gives a client for a db) and the library."""
    c0.flushall()
    for db, keys in LAYOUT.items():
        c = address_client(db)
        for k, t in keys.items():
            if t == "string":
                c.set(k, b"v-" + k)
            elif t == "hash":
                c.hset(k, mapping={b"f1": b"1", b"f2": k})
            elif t == "list":
                c.rpush(k, b"a", b"b", k)
            elif t == "zset":
                c.zadd(k, {b"m1": 1.5, b"m2": 2})
            elif t == "set":
                c.sadd(k, b"x", b"y")
            elif t == "stream":
                c.xadd(k, {b"f": b"v"})
                c.xgroup_create(k, b"g1", id=b"0")
    c0.function_load(LIB)


def make_rdb(server) -> Path:
    fill(server.client(), server.client)
    server.client().save()
    return server.dir / "dump.rdb"


def restore(rdb: Path, target, tmp: Path, filt: dict, top: dict | None = None, **advanced):
    """Restore ``rdb`` into ``target`` (flushed first) through the CLI with a [filter]."""
    target.client().flushall()
    target.client().execute_command("FUNCTION", "FLUSH")  # FLUSHALL keeps functions
    adv = {"dir": str(tmp / "work"), "log_interval": 0}
    adv.update(advanced)
    sections: dict[str, dict] = {
        "rdb_reader": {"filepath": str(rdb)},
        "redis_writer": {"address": target.address},
        "advanced": adv,
    }
    if filt:
        sections["filter"] = filt
    cfg = write_config(tmp / "shake.toml", sections)
    if top:  # top-level keys (v4.0-4.1 "function") must come before the first section
        body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in top.items())
        cfg.write_text(body + cfg.read_text())
    return run_redshake(cfg)


def key_sets(server) -> dict[int, set[bytes]]:
    out = {}
    for db in (0, 1, 2):
        keys = set(server.client(db).scan_iter(count=1000))
        if keys:
            out[db] = keys
    return out


def functions(server) -> list[bytes]:
    libs = server.client().execute_command("FUNCTION", "LIST")
    names = []
    for lib in libs:
        m = dict(zip(lib[::2], lib[1::2], strict=False))
        names.append(m[b"library_name"])
    return names


def same_values(src, dst, db: int, keys) -> None:
    a, b = src.client(db), dst.client(db)
    for k in keys:
        assert a.execute_command("DEBUG", "DIGEST-VALUE", k) == b.execute_command("DEBUG", "DIGEST-VALUE", k), k


def transform_env(tmp_path_factory, name: str) -> Iterator[tuple]:
    """(source, target, the source's RDB, a work dir) for a module-scoped ``env`` fixture:
    two redis-7.0 servers, the source filled and saved; both killed afterwards."""
    src = _servers.start_server("redis-7.0")
    dst = _servers.start_server("redis-7.0")
    try:
        rdb = make_rdb(src)
        yield src, dst, rdb, tmp_path_factory.mktemp(name)
    finally:
        src.cleanup()
        dst.cleanup()
