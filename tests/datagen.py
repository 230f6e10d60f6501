"""Populate a real server with data of every type and encoding it supports."""

from __future__ import annotations

import random
import time

import redis


def populate(
    c: redis.Redis,
    version: tuple[int, int, int],
    valkey: bool,
    *,
    seed: int = 7,
    big: bool = True,
    functions: bool = True,
    hfe: bool = True,
    consumers_without_pel: bool = True,
) -> None:
    """Small (compact encodings) and large (hashtable/quicklist/skiplist) values of every type,
    integers, binary data, expiries, several dbs, streams with groups, functions where supported."""
    rnd = random.Random(seed)
    now_ms = int(time.time() * 1000)
    n_big = 600 if big else 0
    for db in (0, 3):
        c.execute_command("SELECT", db)
        p = c.pipeline(transaction=False)
        pre = f"d{db}:".encode()
        p.set(pre + b"str", b"hello")
        p.set(pre + b"int", b"12345")
        p.set(pre + b"neg", b"-42")
        p.set(pre + b"bigint", b"123456789012345")
        p.set(pre + b"bin", bytes(range(256)) * 3)
        p.set(pre + b"long", b"x" * 20000)
        p.set(pre + b"ttl", b"v", px=3_600_000)
        p.execute_command("PEXPIREAT", pre + b"long", now_ms + 7_200_000)
        p.rpush(pre + b"list:small", b"a", b"1", b"-7", b"x" * 70, b"300000", b"5000000000")
        if n_big:
            p.rpush(pre + b"list:big", *[f"elem-{i}-{rnd.random()}".encode() for i in range(n_big)])
        p.sadd(pre + b"set:int", 1, 2, 3, 70000, -5, 5000000000)
        p.sadd(pre + b"set:str", b"a", b"b", b"c")
        if n_big:
            p.sadd(pre + b"set:big", *[f"m{i}".encode() for i in range(n_big)])
        p.zadd(pre + b"zset:small", {b"one": 1, b"two": 2.5, b"neg": -3.25, b"inf": float("inf"), b"ninf": float("-inf"), b"frac": 0.1})
        if n_big:
            p.zadd(pre + b"zset:big", {f"z{i}".encode(): rnd.random() * 1e6 for i in range(n_big)})
        p.hset(pre + b"hash:small", mapping={b"f1": b"v1", b"f2": b"2", b"f3": b"-3"})
        if n_big:
            p.hset(pre + b"hash:big", mapping={f"f{i}".encode(): f"v{i}".encode() * 3 for i in range(n_big)})
        p.expire(pre + b"hash:small", 5000)
        p.execute()
        if version >= (5, 0, 0):
            s = pre + b"stream"
            for i in range(30):
                c.xadd(s, {b"a": str(i).encode(), b"b": b"x"}, id=f"{1000 + i}-{i % 3}")
            c.xadd(s, {b"other": b"fields"}, id="2000-0")
            c.xdel(s, "1005-2")
            c.xgroup_create(s, b"g1", id="0")
            c.xgroup_create(s, b"g2", id="$")
            c.xreadgroup(b"g1", b"alice", {s: ">"}, count=3)
            c.xreadgroup(b"g1", b"bob", {s: ">"}, count=2)
            c.xack(s, b"g1", "1000-0")
            if version >= (6, 2, 0) and consumers_without_pel:
                c.execute_command("XGROUP", "CREATECONSUMER", s, "g2", "carol")
            c.xadd(pre + b"stream:empty", {b"k": b"v"}, id="1-1")
            c.xdel(pre + b"stream:empty", "1-1")
    c.execute_command("SELECT", 0)
    if functions and (version >= (7, 0, 0) or valkey):
        c.execute_command(
            "FUNCTION", "LOAD", "REPLACE",
            "#!lua name=testlib\nredis.register_function('tf', function(keys, args) return 1 end)",
        )
    if hfe and valkey and version >= (9, 0, 0):
        c.hset(b"hfe", mapping={b"a": b"1", b"b": b"2", b"c": b"3"})
        c.execute_command("HPEXPIREAT", b"hfe", now_ms + 3_600_000, "FIELDS", 2, b"a", b"b")
