"""[scan_reader] into a cluster target: keys routed by slot, TTLs kept."""

from __future__ import annotations

from datagen import populate
from helpers import _same_zset, run_redshake, write_config
from redshake.commands.slots import key_slot


def test_scan_standalone_into_cluster(servers, tmp_path):
    src = servers.start("valkey-8.1")
    c = src.client()
    populate(c, src.version, src.is_valkey, functions=False)
    c.execute_command("SELECT", 3)
    c.flushdb()  # a cluster target holds db 0 only
    c.execute_command("SELECT", 0)
    dst = servers.cluster("redis-7.0", masters=3)
    cfg = write_config(
        tmp_path / "shake.toml",
        {
            "scan_reader": {"address": src.address, "count": 100},
            "redis_writer": {"address": dst.seed, "cluster": True},
            "advanced": {"dir": str(tmp_path / "w"), "log_interval": 0},
        },
    )
    r = run_redshake(cfg)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    owners = [None] * 16384
    by_port = {s.port: s for s in dst.servers}
    for row in dst.masters[0].client().execute_command("CLUSTER SLOTS"):
        for slot in range(row[0], row[1] + 1):
            owners[slot] = by_port[int(row[2][1])]
    keys = list(src.client().scan_iter())
    assert sum(m.client().dbsize() for m in dst.masters) == len(keys)
    sc = src.client()
    for k in keys:
        oc = owners[key_slot(k)].client()
        same = sc.execute_command("DEBUG", "DIGEST-VALUE", k) == oc.execute_command("DEBUG", "DIGEST-VALUE", k)
        # Valkey and Redis format zset scores differently inside the digest
        assert same or _same_zset(sc, oc, k), k
        assert (sc.pttl(k) < 0) == (oc.pttl(k) < 0), k
