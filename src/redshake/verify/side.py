"""One side of a comparison: a standalone server or every master of a cluster.

Keys are routed per slot on a cluster; on a standalone server the db is selected per
pipeline. Endpoints come from a ``redis://`` / ``rediss://`` URL or from a config section.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..commands.slots import SLOTS, key_slot
from ..resp.conn import Connection, ReplyError, connection_options, parse_address
from ..resp.encode import encode_many
from ..resp.server import ServerInfo, cluster_shards, keyspace_counts, read_info

__all__ = ["Endpoint", "Side", "VerifyError", "parse_url"]

_TRUE = ("1", "true", "yes", "on")


class VerifyError(Exception):
    """Bad arguments or an unusable server: exit 2 with this message."""


@dataclass
class Endpoint:
    """Where one side lives and how to log in."""

    address: str
    cluster: bool = False
    username: str = ""
    password: str = ""
    tls: bool = False
    tls_verify: bool = True
    tls_config: dict[str, str] | None = None
    db: int | None = None  # only this db (from the URL path)
    dbs: list[int] = field(default_factory=list)  # only these dbs (scan_reader.dbs)

    def connect_options(self, timeout: float = 10.0) -> dict[str, Any]:
        """Keyword arguments for :class:`Connection` (and ``connect``)."""
        return connection_options(username=self.username, password=self.password, tls=self.tls,
                                  tls_verify=self.tls_verify, tls_config=self.tls_config, timeout=timeout)  # fmt: skip

    def describe(self) -> str:
        kind = "cluster" if self.cluster else "standalone"
        return f"{self.address} ({kind}{', tls' if self.tls else ''})"


def parse_url(url: str, cluster: bool = False) -> Endpoint:
    """``redis://[user:pass@]host:port[/db][?cluster=true&tls_skip_verify=true]``;
    ``rediss://`` for TLS; a bare ``host:port`` is accepted too."""
    if "://" not in url:
        url = "redis://" + url
    u = urlsplit(url)
    if u.scheme not in ("redis", "rediss"):
        raise VerifyError(f"bad URL {url!r}: the scheme must be redis:// or rediss://")
    netloc = u.netloc.rpartition("@")[2]
    try:
        host, port = parse_address(netloc or "127.0.0.1")
    except ValueError as e:
        raise VerifyError(f"bad URL {url!r}: {e}") from None
    q = {k.lower(): v[-1] for k, v in parse_qs(u.query).items()}
    unknown = set(q) - {"cluster", "tls_skip_verify"}
    if unknown:
        raise VerifyError(f"bad URL {url!r}: unknown option(s) {', '.join(sorted(unknown))}")
    db: int | None = None
    path = u.path.strip("/")
    if path:
        if not path.isdigit():
            raise VerifyError(f"bad URL {url!r}: the path must be a db number")
        db = int(path)
    host_s = f"[{host}]" if ":" in host else host
    return Endpoint(
        address=f"{host_s}:{port}",
        cluster=cluster or q.get("cluster", "").lower() in _TRUE,
        username=unquote(u.username or ""),
        password=unquote(u.password or ""),
        tls=u.scheme == "rediss",
        tls_verify=q.get("tls_skip_verify", "").lower() not in _TRUE,
        db=db,
    )


class Side:
    """Connections to every master of one deployment (one for a standalone server)."""

    def __init__(self, ep: Endpoint, name: str) -> None:
        self.ep = ep
        self.name = name
        self._opts: dict[str, Any] = ep.connect_options(10.0)
        self._opts["io_timeout"] = 120.0
        seed = self._connect(ep.address)
        self.nodes: list[Connection] = []
        self.slot_node: list[int] = []
        if ep.cluster:
            try:
                shards = cluster_shards(seed, tls=ep.tls)
            except ReplyError as e:
                seed.close()
                raise VerifyError(f"{name} {ep.address}: cannot read the cluster topology: {e.message}") from None
            seed.close()
            shards.sort(key=lambda sh: sh.master.address)
            self.nodes = [self._connect(sh.master.address) for sh in shards]
            self.slot_node = [-1] * SLOTS
            for i, sh in enumerate(shards):
                for lo, hi in sh.ranges:
                    for s in range(lo, hi + 1):
                        self.slot_node[s] = i
            if -1 in self.slot_node:
                raise VerifyError(f"{name} cluster {ep.address}: not every slot is served")
        else:
            self.nodes = [seed]
        self._selected = [0] * len(self.nodes)
        self.server_id = ServerInfo.from_fields(read_info(self.nodes[0], "server")).describe()
        self.debug = [self._probe_debug(c) for c in self.nodes]

    def _connect(self, address: str) -> Connection:
        from ..resp.conn import connect

        return connect(address, **self._opts)

    @staticmethod
    def _probe_debug(c: Connection) -> bool:
        try:
            c.call("DEBUG", "DIGEST-VALUE", "redshake-verify-probe")
            return True
        except ReplyError:
            return False

    @property
    def debug_everywhere(self) -> bool:
        return all(self.debug)

    def close(self) -> None:
        for c in self.nodes:
            c.close()

    # -- keyspace -----------------------------------------------------------------------

    def dbsizes(self) -> list[dict[int, int]]:
        """Per node: {db: keys} from INFO keyspace."""
        return [keyspace_counts(read_info(c, "keyspace")) for c in self.nodes]

    def dbs(self) -> list[int]:
        found: set[int] = set()
        for per in self.dbsizes():
            found.update(d for d, n in per.items() if n)
        if self.ep.db is not None:
            return [self.ep.db]
        if self.ep.dbs:
            return sorted(found & set(self.ep.dbs))
        return sorted(found)

    def dbsize(self, db: int) -> int:
        return sum(per.get(db, 0) for per in self.dbsizes())

    def scan(self, db: int, count: int = 1000) -> Iterator[list[bytes]]:
        """Batches of keys of ``db`` on every master (a key may come twice: SCAN's rule)."""
        for i, c in enumerate(self.nodes):
            self._select(i, db)
            cursor = b"0"
            while True:
                cursor, keys = c.call("SCAN", cursor, "COUNT", count)
                if keys:
                    yield keys
                if cursor == b"0":
                    break

    def random_keys(self, db: int, n: int) -> list[bytes]:
        """Up to ``n`` distinct random keys of ``db`` (RANDOMKEY, nodes weighted by size)."""
        sizes = [per.get(db, 0) for per in self.dbsizes()]
        total = sum(sizes)
        if total == 0 or n <= 0:
            return []
        n = min(n, total)
        picked: set[bytes] = set()
        rnd = random.Random()
        for _ in range(8):  # RANDOMKEY repeats itself: a few rounds to reach n distinct keys
            want = n - len(picked)
            if want <= 0:
                break
            per_node = [0] * len(self.nodes)
            for _ in range(want):
                per_node[rnd.choices(range(len(sizes)), weights=sizes)[0]] += 1
            for i, k in enumerate(per_node):
                if not k:
                    continue
                self._select(i, db)
                picked.update(r for r in self.nodes[i].pipeline([("RANDOMKEY",)] * k) if isinstance(r, bytes))
        return list(picked)[:n]

    # -- keyed pipelines ----------------------------------------------------------------

    def _select(self, i: int, db: int) -> None:
        if self._selected[i] != db:
            self.nodes[i].call("SELECT", db)
            self._selected[i] = db

    def node_of(self, key: bytes) -> int:
        return self.slot_node[key_slot(key)] if self.ep.cluster else 0

    def run(self, db: int, keys: Sequence[bytes], build) -> list[list[Any]]:
        """For every key, the replies of its commands (see :meth:`send`)."""
        return self.collect(self.send(db, keys, build))

    def send(self, db: int, keys: Sequence[bytes], build) -> tuple[int, list[tuple[int, list[int], list[int]]]]:
        """Send the commands of every key without reading the replies (so both sides work at
        once): ``build(key)`` or ``build[i]`` for the i-th key gives a list of commands, or
        ``(resp_bytes, count)`` already encoded. One pipeline per node."""
        by_node: dict[int, list[int]] = {}
        if self.ep.cluster:
            for j, k in enumerate(keys):
                by_node.setdefault(self.node_of(k), []).append(j)
        else:
            by_node[0] = list(range(len(keys)))
        built = [build(k) for k in keys] if callable(build) else build
        sent = []
        for i, idx in by_node.items():
            self._select(i, db)
            parts: list[bytes] = []
            counts: list[int] = []
            for j in idx:
                cs = built[j]
                if type(cs) is tuple:
                    parts.append(cs[0])
                    counts.append(cs[1])
                else:
                    parts.append(encode_many(cs))
                    counts.append(len(cs))
            self.nodes[i].send(b"".join(parts))
            sent.append((i, idx, counts))
        return len(keys), sent

    def collect(self, pending: tuple[int, list[tuple[int, list[int], list[int]]]]) -> list[list[Any]]:
        """The replies of :meth:`send`, per key in key order."""
        n, sent = pending
        out: list[list[Any]] = [[] for _ in range(n)]
        for i, idx, counts in sent:
            read = self.nodes[i].read_reply
            for j, c in zip(idx, counts, strict=True):
                out[j] = [read() for _ in range(c)]
        return out

    def call(self, db: int, key: bytes, *args: Any) -> Any:
        """One command for ``key`` (routed, db selected); raises ReplyError."""
        i = self.node_of(key)
        self._select(i, db)
        return self.nodes[i].call(*args)

    def debug_for(self, key: bytes) -> bool:
        return self.debug[self.node_of(key)]
