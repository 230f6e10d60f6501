"""Every RDB file of the shared corpus, restored by redshake into a real server and compared
key by key (DEBUG DIGEST-VALUE, expiry) with what a real server loads natively from the same
file. Corrupt files must fail cleanly with nothing written."""

from __future__ import annotations

import shutil

import pytest
import redis

from helpers import TESTDATA, assert_same_data, manifest, restore_file

FILES = [f for f in manifest() if f["kind"] == "rdb"]

# manifest server name -> (test server name, extra args)
ORACLES = [
    ("redis-7.0.15", "redis-7.0", []),
    ("valkey-8.1.8", "valkey-8.1", []),
    ("valkey-9.1.2", "valkey-9.1", []),
    ("valkey-9.1.2-relaxed", "valkey-9.1", ["--rdb-version-check", "relaxed"]),
]


def oracle_for(f: dict):
    lo = f.get("load_observed") or {}
    for mname, sname, args in ORACLES:
        if lo.get(mname, {}).get("loaded"):
            return sname, args
    return None


def is_corrupt(f: dict) -> bool:
    flag = f.get("intentionally_corrupt", "no")
    return flag.startswith("YES") and "benign" not in flag and "hand-edited" not in flag


LOADABLE = [f for f in FILES if oracle_for(f) and not is_corrupt(f)]
CORRUPT = [f for f in FILES if is_corrupt(f)]


@pytest.mark.parametrize("f", LOADABLE, ids=[f["path"] for f in LOADABLE])
def test_restore_matches_native_load(f, servers, tmp_path):
    sname, args = oracle_for(f)
    src = TESTDATA / f["path"]
    odir = tmp_path / "oracle"
    odir.mkdir()
    shutil.copy(src, odir / "dump.rdb")
    oracle = servers.start(sname, dir=odir, dbfilename="dump.rdb", args=args)
    target = servers.start(sname, args=args)
    r = restore_file(src, target, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_same_data(oracle, target)
    assert function_libraries(target) == function_libraries(oracle)


def function_libraries(server) -> list[tuple[bytes, bytes]]:
    """(library name, code) of every function library, as FUNCTION LIST WITHCODE shows them;
    empty on servers without functions (< 7.0)."""
    try:
        libs = server.client().execute_command("FUNCTION", "LIST", "WITHCODE")
    except redis.ResponseError:
        return []
    out = []
    for lib in libs:
        d = dict(zip(lib[::2], lib[1::2], strict=True)) if isinstance(lib, list) else lib
        d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
        out.append((d["library_name"], d["library_code"]))
    return sorted(out)


@pytest.mark.parametrize("f", CORRUPT, ids=[f["path"] for f in CORRUPT])
def test_corrupt_file_fails_cleanly_and_writes_nothing(f, servers, tmp_path):
    target = servers.start("valkey-9.1")
    r = restore_file(TESTDATA / f["path"], target, tmp_path)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "offset" in out or "checksum" in out.lower() or "version" in out.lower(), out[-2000:]
    assert target.client().dbsize() == 0
    assert sum(int(v.get("keys", 0)) for v in target.info("keyspace").values()) == 0
