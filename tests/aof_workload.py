"""A random, realistic write workload for a real server (AOF replay tests).

Several databases, every core type with small and big values, INCR/APPEND, TTLs (long ones,
ones due within the hour, and ones of a few milliseconds that are made persistent, renamed or
moved before they run out - what a replay must not lose), DEL/RENAME/MOVE, pops that empty a
key, MULTI/EXEC blocks that SELECT another db, streams with groups, pending entries, XDEL and
trimming. Expiries are either at most 50 ms or at least 100 s away, so no key runs out while
a test compares source and target.
"""

from __future__ import annotations

import random
import time

import redis

DBS = (0, 1, 3, 9)
_KINDS = "slhtzx"  # string, list, hash, set (t), zset, stream
# replies of random operations on random keys that are part of the game
_EXPECTED_ERRORS = ("WRONGTYPE", "no such key", "objects are the same", "not an integer")


class Workload:
    """``run(n)`` performs ``n`` random operations against ``server`` (seeded)."""

    def __init__(self, server, seed: int) -> None:
        self.server = server
        self.rnd = random.Random(seed)
        self.v = server.version
        self.c = {db: server.client(db) for db in DBS}

    def close(self) -> None:
        for c in self.c.values():
            c.close()

    # -- helpers -------------------------------------------------------------------------

    def key(self, kind: str) -> str:
        return f"{kind}:{self.rnd.randint(0, 11)}"

    def value(self) -> bytes:
        r = self.rnd.random()
        n = 20_000 + self.rnd.randint(0, 80_000) if r < 0.03 else self.rnd.choice((1, 8, 60, 300))
        return self.rnd.randbytes(n)

    def ttl_ms(self) -> int:
        """A few ms (gone long before any comparison), within the hour, or later."""
        return self.rnd.choice((self.rnd.randint(1, 50), self.rnd.randint(100_000, 3_000_000),
                                self.rnd.randint(4_000_000, 90_000_000)))  # fmt: skip

    # -- operations ----------------------------------------------------------------------

    def run(self, n: int) -> None:
        ops = [getattr(self, name) for name in sorted(dir(self)) if name.startswith("op_")]
        for _ in range(n):
            c = self.c[self.rnd.choice(DBS)]
            try:
                self.rnd.choice(ops)(c)
            except redis.ResponseError as e:
                if not any(m in str(e) for m in _EXPECTED_ERRORS):
                    raise

    def op_set(self, c) -> None:
        k = self.key("s")
        if self.rnd.random() < 0.4:
            c.set(k, self.value(), px=self.ttl_ms())
        else:
            c.set(k, self.value())

    def op_incr_append(self, c) -> None:
        if self.rnd.random() < 0.5:
            c.incrby(self.key("n"), self.rnd.randint(-9, 90))
        else:
            c.append(self.key("s"), self.value())

    def op_list(self, c) -> None:
        k = self.key("l")
        r = self.rnd.random()
        if r < 0.6:
            c.rpush(k, *[self.value() for _ in range(self.rnd.randint(1, 6))])
        elif r < 0.8:
            c.lpop(k)
        elif r < 0.9:  # pop until empty: the key disappears
            while c.lpop(k) is not None:
                pass
        else:
            c.ltrim(k, 0, self.rnd.randint(0, 4))

    def op_hash(self, c) -> None:
        k = self.key("h")
        if self.rnd.random() < 0.7:
            c.hset(k, mapping={f"f{self.rnd.randint(0, 9)}": self.value() for _ in range(3)})
            c.hincrby(k, "count", 1)
        else:  # may remove the last field
            c.hdel(k, *[f"f{i}" for i in range(self.rnd.randint(1, 10))], "count")

    def op_set_type(self, c) -> None:
        k = self.key("t")
        if self.rnd.random() < 0.7:
            c.sadd(k, *[self.rnd.choice((self.rnd.randint(0, 40), self.value())) for _ in range(4)])
        else:
            c.srem(k, *range(0, 41, 2))
            c.spop(k)

    def op_zset(self, c) -> None:
        k = self.key("z")
        r = self.rnd.random()
        if r < 0.6:
            c.zadd(k, {f"m{self.rnd.randint(0, 30)}": self.rnd.uniform(-1e3, 1e3) for _ in range(4)})
        elif r < 0.8:
            c.zincrby(k, 1.5, f"m{self.rnd.randint(0, 30)}")
        else:
            for _ in range(self.rnd.randint(1, 8)):
                c.zpopmin(k)

    def op_stream(self, c) -> None:
        k = self.key("x")
        r = self.rnd.random()
        if r < 0.5:
            c.xadd(k, {"a": self.rnd.randint(0, 99), "b": self.value()},
                   maxlen=self.rnd.choice((None, None, 15)), approximate=False)  # fmt: skip
        elif r < 0.65:
            ids = [e[0] for e in c.xrange(k, count=8)]
            if ids:
                c.xdel(k, *self.rnd.sample(ids, min(2, len(ids))))
        elif r < 0.72:
            c.xtrim(k, maxlen=self.rnd.randint(3, 10), approximate=False)
        elif c.exists(k):
            try:
                c.xgroup_create(k, "g", id="0")
            except redis.ResponseError:
                pass  # the group exists
            c.xreadgroup("g", f"c{self.rnd.randint(0, 2)}", {k: ">"}, count=2)
            pend = c.xpending_range(k, "g", "-", "+", 4)
            if pend and self.rnd.random() < 0.5:
                c.xack(k, "g", pend[0]["message_id"])

    def op_keyspace(self, c) -> None:
        r = self.rnd.random()
        kind = self.rnd.choice(_KINDS)
        if r < 0.3:
            c.delete(self.key(kind))
        elif r < 0.55:
            c.rename(self.key(kind), self.key(kind))  # "no such key" is fine
        elif r < 0.8:
            c.pexpire(self.key(kind), self.ttl_ms())
        elif r < 0.9:
            c.persist(self.key(kind))
        else:
            c.move(self.key(kind), self.rnd.choice(DBS))

    def op_short_ttl_saved(self, c) -> None:
        """An expiry of a few ms, cleared, extended, or carried away before it runs out: the
        key lives on at the source, and must on the target."""
        kind = self.rnd.choice("slhz")
        k = self.key(kind)
        p = c.pipeline(transaction=False)  # back to back, well within the expiry
        if kind == "s":
            p.set(k, self.value(), px=30)
        elif kind == "l":
            p.rpush(k, self.value())
        elif kind == "h":
            p.hset(k, "f", self.value())
        else:
            p.zadd(k, {"m": 1})
        if kind != "s":
            p.pexpire(k, 30)
        r = self.rnd.random()
        if r < 0.4:
            p.persist(k)
        elif r < 0.6:
            p.pexpire(k, self.rnd.randint(100_000, 3_000_000))
        elif r < 0.8:
            k2 = self.key(kind)
            p.rename(k, k2)
            p.persist(k2)
        else:
            p.append(self.key("s"), b"!")  # and let it run out
        p.execute()

    def op_transaction(self, c) -> None:
        """MULTI/EXEC on a private connection: a SELECT inside changes its database."""
        db = self.rnd.choice(DBS)
        with self.server.client(db) as t:
            p = t.pipeline(transaction=True)
            p.incr(self.key("n"))
            p.rpush(self.key("l"), self.value())
            p.execute_command("SELECT", self.rnd.choice(DBS))
            p.hset(self.key("h"), "tx", self.value())
            p.set(self.key("s"), self.value(), px=self.ttl_ms())
            p.execute()

    def op_expiry_carriers(self, c) -> None:
        """Commands that carry, keep or conditionally change an expiry (where supported)."""
        v = self.v
        kind = self.rnd.choice("slhz")
        k, k2 = self.key(kind), self.key(kind)
        r = self.rnd.random()
        if r < 0.2 and v >= (6, 2, 0):
            c.copy(k, k2, destination_db=self.rnd.choice(DBS), replace=True)
        elif r < 0.3 and v >= (4, 0, 0) and self.rnd.random() < 0.3:
            c.swapdb(*self.rnd.sample(DBS, 2))
        elif r < 0.5 and v >= (7, 0, 0):
            opt = self.rnd.choice(("gt", "lt", "nx", "xx"))
            c.pexpire(k, self.ttl_ms(), **{opt: True})
        elif r < 0.65 and v >= (6, 2, 0):
            c.set(k, self.value(), px=30)
            c.getex(k, pxat=int(c.time()[0]) * 1000 + self.rnd.randint(100_000, 3_000_000))
        elif r < 0.8 and v >= (6, 0, 0):
            c.set(self.key("s"), self.value(), keepttl=True)
        else:  # RESTORE ... ABSTTL, made persistent before it runs out or not
            dump = c.dump(k)
            if dump is not None:
                p = c.pipeline(transaction=False)
                p.restore(k2, int(time.time() * 1000) + 30, dump, replace=True, absttl=True)
                if self.rnd.random() < 0.7:
                    p.persist(k2)
                p.execute()
