"""Server chores: what redshake asks a Redis / Valkey server about itself, parsed once.

* :func:`parse_info` / :class:`ServerInfo`: ``INFO`` text, the engine and its version;
  :func:`keyspace_counts`, :func:`replicas_of` for the keyspace and replication sections;
* :func:`cluster_shards`: the topology of a cluster (``CLUSTER SHARDS``, else ``CLUSTER
  NODES``, else ``CLUSTER SLOTS``) as :class:`ClusterShard` values, with the replica to read
  from for ``prefer_replica`` (:meth:`ClusterShard.read_address`);
* :func:`parse_node_lines`: every line of ``CLUSTER NODES`` as a :class:`NodeLine` (flags,
  master id, slots, migration markers), for following a cluster while it changes;
* :func:`best_replica`: the same choice for a standalone master (``INFO replication``);
* :func:`resolve_sentinel_master`: a sentinel-managed master's address.

Nothing here keeps state: every function takes a :class:`~.conn.Connection` (or the text a
server answered) and returns plain values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .conn import Connection, ConnError, ReplyError, format_address, parse_address

__all__ = [
    "parse_info",
    "read_info",
    "version_tuple",
    "ServerInfo",
    "keyspace_counts",
    "command_calls",
    "ReplicaLink",
    "replicas_of",
    "best_replica",
    "ClusterNode",
    "ClusterShard",
    "cluster_shards",
    "parse_cluster_shards",
    "parse_cluster_nodes",
    "NodeLine",
    "parse_node_lines",
    "parse_cluster_slots",
    "SentinelError",
    "resolve_sentinel_master",
    "resolve_from_config",
]

log = logging.getLogger("redshake")


# -- INFO ----------------------------------------------------------------------------------


def parse_info(text: bytes | str) -> dict[str, str]:
    """``INFO`` text -> {field: value} (section headers and blank lines left out)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


def read_info(conn: Connection, *sections: str, tolerate: bool = False) -> dict[str, str]:
    """The fields of ``INFO section`` for each section, merged. ``tolerate``: a section the
    server refuses (an ACL without INFO) tells nothing instead of raising ReplyError."""
    out: dict[str, str] = {}
    for section in sections:
        try:
            out.update(parse_info(conn.call("INFO", section)))
        except ReplyError:
            if not tolerate:
                raise
    return out


def version_tuple(text: str) -> tuple[int, int, int]:
    """``"7.0.15"`` -> (7, 0, 15); a part is read up to its first non-digit
    (``"8.1.0-rc1"`` -> (8, 1, 0)), missing parts are 0."""
    parts = []
    for p in text.split(".")[:3]:
        n = 0
        while n < len(p) and p[n].isdigit():
            n += 1
        parts.append(int(p[:n]) if n else 0)
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """The engine of a server from its ``INFO server`` (+ ``cluster``) fields.

    A Valkey server says ``server_name:valkey`` (8.0+) and ``valkey_version``; its
    ``redis_version`` is the Redis version it is compatible with (7.2.4), so the Valkey
    version is the one that counts. ``cluster`` is ``cluster_enabled:1`` (INFO cluster) or
    ``redis_mode:cluster`` (INFO server)."""

    version: tuple[int, int, int] = (0, 0, 0)
    is_valkey: bool = False
    cluster: bool = False
    version_text: str = "0.0.0"
    name: str = "redis"

    @classmethod
    def from_fields(cls, info: dict[str, str]) -> ServerInfo:
        is_valkey = "valkey_version" in info or info.get("server_name") == "valkey"
        text = (info.get("valkey_version") if is_valkey else None) or info.get("redis_version") or "0.0.0"
        return cls(
            version=version_tuple(text),
            is_valkey=is_valkey,
            cluster=info.get("cluster_enabled") == "1" or info.get("redis_mode") == "cluster",
            version_text=text,
            name=info.get("server_name", "redis"),
        )

    @classmethod
    def probe(cls, conn: Connection) -> ServerInfo:
        """``INFO server`` and ``INFO cluster`` of ``conn`` (a refused section tells nothing)."""
        return cls.from_fields(read_info(conn, "server", "cluster", tolerate=True))

    def describe(self) -> str:
        """``"valkey 9.1.2"``: the name the server gives itself and its version."""
        return f"{self.name} {self.version_text}"


def keyspace_counts(info: dict[str, str]) -> dict[int, int]:
    """{db: keys} from the fields of INFO keyspace (``db0:keys=1,expires=0,...``)."""
    out: dict[int, int] = {}
    for k, v in info.items():
        if k.startswith("db") and k[2:].isdigit():
            fields = _fields(v)
            try:
                out[int(k[2:])] = int(fields.get("keys", "0"))
            except ValueError:
                continue
    return out


def command_calls(info: dict[str, str], names) -> dict[str, int]:
    """{command: calls} for ``names`` (lower case) from the fields of INFO commandstats
    (``cmdstat_set:calls=3,usec=...``); 0 for a command never called."""
    out: dict[str, int] = {}
    for name in names:
        v = info.get("cmdstat_" + name)
        try:
            out[name] = int(_fields(v).get("calls", "0")) if v else 0
        except ValueError:
            out[name] = 0
    return out


def _fields(v: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in v.split(",") if "=" in p)


@dataclass(frozen=True, slots=True)
class ReplicaLink:
    """One ``slaveN:ip=...,port=...,state=online,offset=...,lag=0`` line of INFO replication."""

    address: str
    state: str
    offset: int


def replicas_of(info: dict[str, str]) -> list[ReplicaLink]:
    """The replicas a master lists in INFO replication, in its order. A replica announcing
    port 0 (a redshake link, which no one may promote) is left out."""
    out = []
    for k, v in info.items():
        if not (k.startswith("slave") and k[5:].isdigit()):
            continue
        f = _fields(v)
        try:
            port = int(f["port"])
            offset = int(f.get("offset", "-1"))
        except (KeyError, ValueError):
            continue
        if port > 0:
            out.append(ReplicaLink(format_address(f.get("ip", ""), port), f.get("state", ""), offset))
    return out


def best_replica(info: dict[str, str]) -> str | None:
    """``prefer_replica`` on a standalone master: the online replica with the highest
    replication offset (the first listed among equals), None when there is none."""
    best: ReplicaLink | None = None
    for r in replicas_of(info):
        if r.state == "online" and (best is None or r.offset > best.offset):
            best = r
    return best.address if best else None


# -- cluster topology ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node of a shard. ``address`` is the one clients should use (see
    :func:`cluster_shards`); ``healthy``: a master not failed, a replica online."""

    id: str
    address: str
    master: bool
    healthy: bool = True


@dataclass(slots=True)
class ClusterShard:
    """A master owning slots, its slot ranges (inclusive) and its replicas."""

    master: ClusterNode
    ranges: list[tuple[int, int]] = field(default_factory=list)
    replicas: list[ClusterNode] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        """Node ids of the master and its replicas (empty ids - Redis 3 - left out)."""
        return {n.id for n in (self.master, *self.replicas) if n.id}

    def read_address(self, prefer_replica: bool = False) -> str:
        """Where to read the shard from: the master, or with ``prefer_replica`` its healthy
        replica with the lowest address (a choice every process makes alike), else the
        master."""
        if prefer_replica:
            ok = sorted(r.address for r in self.replicas if r.healthy)
            if ok:
                return ok[0]
        return self.master.address


def _kv(items: Any) -> dict[str, Any]:
    """RESP2 flat [k, v, ...] or a RESP3 map -> {str key: value}."""
    if isinstance(items, dict):
        pairs = items.items()
    else:
        it = iter(items)
        pairs = zip(it, it, strict=False)
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in pairs}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))


def _host(preferred: str, ip: str, seed_host: str) -> str:
    """The host to connect to: the server's preferred endpoint; its IP when the endpoint is
    unknown ("?", cluster-preferred-endpoint-type unknown-endpoint) or empty; the host we
    reached the cluster through when that is empty too (a node not yet knowing its IP)."""
    if preferred in ("", "?"):
        preferred = ip
    return (preferred.strip("[]") if preferred else "") or seed_host


def parse_cluster_shards(reply: Any, seed_host: str, tls: bool = False) -> list[ClusterShard]:
    """A ``CLUSTER SHARDS`` reply (Redis / Valkey 7.0+). Shards without slots or without a
    master that has not failed are left out; with ``tls`` a node's ``tls-port`` is used."""
    out = []
    for raw in reply or []:
        sh = _kv(raw)
        slots = [int(x) for x in sh.get("slots") or []]
        master: ClusterNode | None = None
        replicas = []
        for node in sh.get("nodes") or []:
            nd = _kv(node)
            port = (nd.get("tls-port") if tls else None) or nd.get("port") or nd.get("tls-port")
            if not port:
                continue
            host = _host(_s(nd.get("endpoint")), _s(nd.get("ip")), seed_host)
            health = _s(nd.get("health"))
            role = _s(nd.get("role"))
            n = ClusterNode(_s(nd.get("id")), format_address(host, int(port)), role == "master",
                            health == "online" if role != "master" else health != "fail")  # fmt: skip
            if n.master:
                if n.healthy:
                    master = n
            else:
                replicas.append(n)
        if master is not None and slots:
            out.append(ClusterShard(master, list(zip(slots[0::2], slots[1::2], strict=True)), replicas))
    return out


@dataclass(slots=True)
class NodeLine:
    """One line of ``CLUSTER NODES``: ``id ip:port@cport[,hostname] flags master-id ping pong
    epoch link slots...``. ``address`` is built as :func:`parse_cluster_nodes` builds it (the
    IP, bracketed when IPv6; the seed host when the node does not know its IP yet);
    ``hostname`` is the announced one ("" when none). ``migrating`` / ``importing``: slot ->
    the other node's id, from the ``[slot->-id]`` / ``[slot-<-id]`` markers, which only the
    answering node's own line (``myself``) carries."""

    id: str
    address: str
    flags: frozenset[str]
    master_id: str  # "-" for a master
    link: str = "connected"
    ranges: list[tuple[int, int]] = field(default_factory=list)
    migrating: dict[int, str] = field(default_factory=dict)
    importing: dict[int, str] = field(default_factory=dict)
    hostname: str = ""

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def is_replica(self) -> bool:
        return "slave" in self.flags or "replica" in self.flags

    @property
    def usable(self) -> bool:
        """Neither failing (``fail`` / ``fail?``) nor without address nor in handshake."""
        return not (self.flags & _UNUSABLE)


_UNUSABLE = frozenset({"fail", "fail?", "noaddr", "handshake"})
_GONE = frozenset({"fail", "noaddr", "handshake"})  # (``fail?`` is one node's suspicion)


def parse_node_lines(text: bytes | str, seed_host: str) -> list[NodeLine]:
    """Every node of a ``CLUSTER NODES`` reply, whatever its flags, except those without an
    address yet (port 0)."""
    out = []
    for line in _s(text).splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        where, _, hostname = f[1].partition(",")
        host, _, port = where.split("@")[0].rpartition(":")
        if not port or port == "0":
            continue  # a node without an address yet
        node = NodeLine(f[0], format_address(_host(host, "", seed_host), int(port)),
                        frozenset(f[2].split(",")), f[3], f[7], hostname=hostname.split(",")[0])  # fmt: skip
        for tok in f[8:]:
            if tok.startswith("["):
                slot, arrow, other = tok.strip("[]").partition("-")
                if arrow and other.startswith(">-"):
                    node.migrating[int(slot)] = other[2:]
                elif arrow and other.startswith("<-"):
                    node.importing[int(slot)] = other[2:]
                continue
            lo, _, hi = tok.partition("-")
            node.ranges.append((int(lo), int(hi or lo)))
        out.append(node)
    return out


def parse_cluster_nodes(text: bytes | str, seed_host: str) -> list[ClusterShard]:
    """A ``CLUSTER NODES`` reply: masters owning slots (not failed, with an address), with
    their replicas; a replica is healthy when neither failing (``fail``/``fail?``) nor
    without address or in handshake, and its bus link is ``connected``. Migration markers
    (``[slot->-id]``) are not ranges."""
    shards: dict[str, ClusterShard] = {}
    replicas: list[tuple[str, ClusterNode]] = []
    for n in parse_node_lines(text, seed_host):
        if n.flags & _GONE:
            continue
        if n.is_master:
            if n.ranges:
                shards[n.id] = ClusterShard(ClusterNode(n.id, n.address, True), list(n.ranges))
        elif n.is_replica:
            replicas.append((n.master_id, ClusterNode(n.id, n.address, False, n.usable and n.link == "connected")))
    for master_id, node in replicas:
        if master_id in shards:
            shards[master_id].replicas.append(node)
    return list(shards.values())


def parse_cluster_slots(reply: Any, seed_host: str) -> list[ClusterShard]:
    """A ``CLUSTER SLOTS`` reply: one row per slot range, ``[lo, hi, master, *replicas]``
    with each node ``[endpoint, port, id?, ...]`` (the server leaves failed replicas out).
    Ranges of one master are gathered into one shard."""
    shards: dict[str, ClusterShard] = {}
    for row in reply or []:
        nodes = []
        for i, nd in enumerate(row[2:]):
            host = _host(_s(nd[0]) if nd[0] is not None else "", "", seed_host)
            nodes.append(ClusterNode(_s(nd[2]) if len(nd) > 2 else "", format_address(host, int(nd[1])), i == 0))
        if not nodes:
            continue
        sh = shards.get(nodes[0].address)
        if sh is None:
            sh = shards[nodes[0].address] = ClusterShard(nodes[0])
        sh.ranges.append((int(row[0]), int(row[1])))
        known = {r.address for r in sh.replicas}
        sh.replicas.extend(n for n in nodes[1:] if n.address not in known)
    return list(shards.values())


def cluster_shards(conn: Connection, tls: bool = False) -> list[ClusterShard]:
    """The shards of the cluster ``conn`` is a node of: ``CLUSTER SHARDS`` (7.0+), else
    ``CLUSTER NODES``, else ``CLUSTER SLOTS`` (an ACL may allow one and not another).

    Addresses: the node's *preferred endpoint* - what ``cluster-preferred-endpoint-type``
    tells clients to use (the IP by default, the announced hostname with ``hostname``) - as
    ``CLUSTER SLOTS`` and cluster clients do; its IP when the endpoint is unknown (``?``);
    the host ``conn`` reached when a node does not know its own IP yet. With ``tls``, the
    TLS port of a node that announces both. ``CLUSTER NODES`` (before 7.0) gives the IP.
    Raises ReplyError when no form is answered (not a cluster)."""
    seed = conn.host
    try:
        out = parse_cluster_shards(conn.call("CLUSTER", "SHARDS"), seed, tls)
        if out:
            return out
    except ReplyError:
        pass  # before 7.0
    try:
        out = parse_cluster_nodes(conn.call("CLUSTER", "NODES"), seed)
        if out:
            return out
    except ReplyError:
        pass
    return parse_cluster_slots(conn.call("CLUSTER", "SLOTS"), seed)


# -- sentinel ------------------------------------------------------------------------------


class SentinelError(ConnError):
    """The sentinel does not know the master, or cannot be asked."""


def resolve_sentinel_master(sentinel_address: str, master_name: str, **conn_kw: Any) -> str:
    """``SENTINEL GET-MASTER-ADDR-BY-NAME master_name`` -> ``"host:port"``.

    ``sentinel_address`` may list several sentinels separated by commas; the first one that
    answers is used. ``conn_kw``: :class:`Connection` keyword arguments (see
    ``EndpointConfig.connect_options``)."""
    errors: list[str] = []
    timeout = float(conn_kw.get("timeout") or 10.0)
    for addr in [a.strip() for a in sentinel_address.split(",") if a.strip()]:
        host, port = parse_address(addr, default_port=26379)
        try:
            with Connection(host, port, io_timeout=timeout, **conn_kw) as conn:
                reply = conn.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master_name)
        except (ConnError, ReplyError) as e:
            errors.append(f"{addr}: {e}")
            continue
        if not reply:
            raise SentinelError(f"sentinel {addr} does not know a master named {master_name!r}")
        return format_address(_s(reply[0]), int(reply[1]))
    raise SentinelError(
        f"no sentinel could resolve master {master_name!r}: " + "; ".join(errors or ["no address"])
    )


def resolve_from_config(sentinel: Any, role: str = "master") -> str:
    """The master's address for a ``[*.sentinel]`` config table (a SentinelConfig); logged."""
    address = resolve_sentinel_master(sentinel.address, sentinel.master_name, **sentinel.connect_options())
    log.info("sentinel %s: %s %r is at %s", sentinel.address, role, sentinel.master_name, address)
    return address
