"""Corpus files that no local server loads natively: Redis 7.4+/8 hash field expiration
(types 22-25), module data, vendor opcodes. Checked against the expected output shipped with
the file, on a target that can hold the data (Valkey 9.1 has hash field expiration)."""

from __future__ import annotations

import json
import time

import pytest

from helpers import TESTDATA, manifest, restore_file

# file -> (expected data json, expected field expiries {key: {field: abs ms}} or None)
HFE_FILES = {
    "rdb/hdt3213-rdb/hash_with_hfe.rdb": "rdb/hdt3213-rdb/hash_with_hfe.json",
    "rdb/hdt3213-rdb/hash_as_listpack_with_hfe.rdb": "rdb/hdt3213-rdb/hash_as_listpack_with_hfe.json",
    "rdb/librdb/hash_with_expire_v12.rdb": "rdb/librdb/hash_ex_v12_data.json",
    "rdb/librdb/hash_lp_with_hexpire_v12.rdb": "rdb/librdb/hash_lp_ex_v12_data.json",
}


# librdb's expected JSON carries no field TTLs; these are the absolute expiries stored in the
# files (Redis 7.4-RC layouts: type 22 stores (ttl, field, value), type 23 a listpack of
# (field, value, ttl); 0 = none).
LIBRDB_TTLS = {
    "rdb/librdb/hash_with_expire_v12.rdb": {b"field1": 70368744170663, b"field2": 70368744170063},
    "rdb/librdb/hash_lp_with_hexpire_v12.rdb": {b"field1": 70368744177663, b"field2": 70368744107663},
}


def _expected(path: str) -> dict[bytes, tuple[dict[bytes, bytes], dict[bytes, int]]]:
    text = (TESTDATA / path).read_text()
    out: dict[bytes, tuple[dict[bytes, bytes], dict[bytes, int]]] = {}
    if text.lstrip().startswith("["):  # one object per key, with "expire" per field
        for obj in json.loads(text):
            h = {k.encode(): v.encode() for k, v in obj["hash"].items()}
            ex = {k.encode(): v for k, v in (obj.get("expire") or {}).items() if v}
            out[obj["key"].encode()] = (h, ex)
    else:  # '"key": {...}' pairs without the surrounding braces
        obj = json.loads("{" + text + "}")
        for k, v in obj.items():
            if k != "__aux__":
                out[k.encode()] = ({f.encode(): x.encode() for f, x in v.items()}, {})
    return out


@pytest.mark.parametrize("rdb", sorted(HFE_FILES))
def test_redis_hfe_file_into_valkey9(rdb, servers, tmp_path):
    target = servers.start("valkey-9.1")
    r = restore_file(TESTDATA / rdb, target, tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    c = target.client()
    now = int(time.time() * 1000)
    for key, (fields, expires) in _expected(HFE_FILES[rdb]).items():
        expires = expires or LIBRDB_TTLS.get(rdb, {})
        live = {f: v for f, v in fields.items() if expires.get(f, now + 1) > now}
        assert c.hgetall(key) == live
        for f in live:
            got = c.execute_command("HPEXPIRETIME", key, "FIELDS", 1, f)[0]
            assert got == expires.get(f, -1), (key, f, got)


def test_redis_hfe_file_into_old_target_fails_clearly(servers, tmp_path):
    """Field TTLs cannot be expressed on Redis 7.0: say so and stop, never drop them silently."""
    target = servers.start("redis-7.0")
    r = restore_file(TESTDATA / "rdb/hdt3213-rdb/hash_with_hfe.rdb", target, tmp_path)
    assert r.returncode == 1
    assert "hash-hfe" in r.stdout + r.stderr


def test_module_aux_only_file_restores_keys_and_reports_aux(servers, tmp_path):
    """misc_with_stream.rdb: MODULE_AUX records (no module keys) beside ordinary keys."""
    target = servers.start("redis-7.0")
    r = restore_file(TESTDATA / "rdb/librdb/misc_with_stream.rdb", target, tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "module_aux=2" in r.stdout + r.stderr
    assert target.client().dbsize() > 0


@pytest.mark.parametrize(
    "rdb", ["rdb/redis-rdb-tools/redis_40_with_module.rdb", "rdb/redis-replicator/dump-module-2.rdb"]
)
def test_module_value_without_module_on_target_fails_clearly(rdb, servers, tmp_path):
    target = servers.start("redis-7.0")
    r = restore_file(TESTDATA / rdb, target, tmp_path)
    assert r.returncode == 1
    assert "module" in (r.stdout + r.stderr).lower()


def test_hand_edited_zipmap_with_unknown_count_is_restored(servers, tmp_path):
    """zipmap_big_len.rdb: a zipmap whose count byte is 0xFF ("unknown, walk to the end").
    Servers refuse it in RESTORE/loading; redshake re-encodes zipmaps, so it restores, and the
    content matches the expected JSON shipped with the file."""
    target = servers.start("redis-7.0")
    r = restore_file(TESTDATA / "rdb/hdt3213-rdb/zipmap_big_len.rdb", target, tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    want = json.loads((TESTDATA / "rdb/hdt3213-rdb/zipmap_big_len.json").read_text())
    c = target.client()
    assert c.dbsize() == len(want)
    for obj in want:
        assert c.hgetall(obj["key"].encode()) == {k.encode(): v.encode() for k, v in obj["hash"].items()}


@pytest.mark.parametrize(
    "rdb",
    [
        "rdb/redis-rdb-tools/redis_60_with_module_aux.rdb",
        "rdb/librdb/module_aux.rdb",
        "rdb/librdb/module_aux_empty.rdb",
    ],
)
def test_module_aux_records_are_reported_not_fatal(rdb, servers, tmp_path):
    """Module AUX data cannot be transported by commands: counted and reported, keys restored."""
    target = servers.start("redis-7.0")
    r = restore_file(TESTDATA / rdb, target, tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "module_aux=" in r.stdout + r.stderr
    keys = sum(int(v["keys"]) for v in target.info("keyspace").values())
    assert keys == next(
        f["rdb"]["keys_in_file"] for f in manifest() if f["path"] == rdb
    )


@pytest.mark.parametrize("rdb", ["rdb/librdb/module.rdb", "rdb/librdb/module_aux_v12.rdb"])
def test_module_keys_need_the_module_on_the_target(rdb, servers, tmp_path):
    target = servers.start("valkey-9.1", args=["--rdb-version-check", "relaxed"])
    r = restore_file(TESTDATA / rdb, target, tmp_path)
    assert r.returncode == 1
    assert "module" in (r.stdout + r.stderr).lower()


def test_pre_ga_module_type_stops_with_offset(servers, tmp_path):
    """Module type 6 (Redis 4.0 release candidates) cannot be parsed without the module:
    the pre-write walk stops at that key with its offset, exit 2, nothing written."""
    target = servers.start("redis-7.0")
    r = restore_file(TESTDATA / "rdb/redis-replicator/module.rdb", target, tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert "offset 1257" in out and "pre-GA" in out
    assert target.client().dbsize() == 0


def test_enterprise_ram_lru_opcode_is_skipped(servers, tmp_path):
    """Redis Enterprise RDB with vendor opcode 107 before each key: keys restored."""
    target = servers.start("valkey-9.1")
    r = restore_file(TESTDATA / "rdb/librdb/redis_ent_opcode_ram_lru.rdb", target, tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert target.client().dbsize() == 3


def test_redis8_field_ttl_hashes_into_valkey9(servers, tmp_path):
    """dump-ttlhash.rdb (Redis 8.0.2, types 24 and 25): 3 hashes, 1,155 fields, 15 of them
    with TTLs that lie in the past (2025) - those fields must be gone on the target, the others
    present without TTL."""
    target = servers.start("valkey-9.1")
    r = restore_file(TESTDATA / "rdb/redis-replicator/dump-ttlhash.rdb", target, tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    c = target.client()
    assert c.dbsize() == 3
    assert sum(c.hlen(k) for k in c.scan_iter()) == 1155 - 15
    for key in c.scan_iter():
        fields = list(c.hkeys(key))
        assert set(c.execute_command("HPEXPIRETIME", key, "FIELDS", len(fields), *fields)) == {-1}
