"""The command table: names, groups and key positions, checked against real servers'
``COMMAND GETKEYS``; the committed table matches what the generator produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import servers as _servers
from redshake.commands import GROUPS, command_info, command_keys
from redshake.resp.conn import ReplyError, connect
from redshake.writers.cluster import ClusterWriter

ROOT = Path(__file__).resolve().parent.parent

SAMPLE = """
SET k v
SET k v EX 10 GET
GET k
MSET a 1 b 2 c 3
MGET a b c
DEL a b c
UNLINK a
EXISTS a b
RENAME a b
COPY a b DB 1 REPLACE
LMOVE a b LEFT RIGHT
BLMOVE a b LEFT RIGHT 0
RPOPLPUSH a b
LMPOP 2 a b LEFT COUNT 3
BLMPOP 0 2 a b LEFT
ZMPOP 1 z MIN
SINTERCARD 2 a b LIMIT 1
ZUNIONSTORE d 2 a b WEIGHTS 1 2
ZINTERSTORE d 3 a b c AGGREGATE MAX
ZDIFFSTORE d 2 a b
ZUNION 2 a b WITHSCORES
ZRANGESTORE d src 0 -1
SINTERSTORE d a b c
SMOVE a b m
PFMERGE d a b
PFCOUNT a b
BITOP AND d a b c
GEOADD g 1 2 m
GEORADIUS g 1 2 3 km
GEORADIUS g 1 2 3 km STORE d
GEORADIUS g 1 2 3 km STOREDIST d
GEORADIUSBYMEMBER g m 3 km STORE d
GEOSEARCHSTORE d g FROMMEMBER m BYRADIUS 3 km
EVAL return 2 a b c
EVAL return 0 c
EVALSHA 0000000000000000000000000000000000000000 1 a b
EVAL_RO return 1 a
FCALL tfn 2 a b x
FCALL_RO tfn 1 a
XADD s * f v
XREAD COUNT 2 STREAMS a b 0 0
XREAD BLOCK 0 STREAMS a $
XREADGROUP GROUP g c COUNT 1 STREAMS a b > >
XGROUP CREATE s g $ MKSTREAM
XGROUP SETID s g 0
XGROUP DESTROY s g
XGROUP CREATECONSUMER s g c
XGROUP DELCONSUMER s g c
XCLAIM s g c 0 0-1
XAUTOCLAIM s g c 0 0
XINFO STREAM s
OBJECT ENCODING k
OBJECT FREQ k
MEMORY USAGE k
SORT k
SORT k BY w_* LIMIT 0 5 GET # GET o_* DESC ALPHA STORE d
SORT k STORE d1 STORE d2
SORT_RO k BY w_*
MIGRATE h 6379 k 0 5000
MIGRATE h 6379 "" 0 5000 COPY REPLACE KEYS a b c
MIGRATE h 6379 "" 0 5000 AUTH pw KEYS a b
MIGRATE h 6379 "" 0 5000 AUTH2 u pw KEYS a
HSET h f v
HGETALL h
RESTORE k 0 payload REPLACE
EXPIRE k 10
PEXPIREAT k 10
BLPOP a b 0
BZPOPMIN a b 0
WATCH a b
TOUCH a b
LCS a b
SUNIONSTORE d a b
DEBUG OBJECT k
""".strip().splitlines()

KEYLESS = """
PING
FLUSHALL
FLUSHDB ASYNC
CLIENT SETNAME x
CLIENT LIST
SCRIPT LOAD return
FUNCTION LOAD code
FUNCTION FLUSH
CONFIG SET maxmemory 0
PUBLISH ch msg
MULTI
EXEC
SELECT 1
SWAPDB 1 2
INFO
EVAL return 0
""".strip().splitlines()


def _argv(line: str) -> list[bytes]:
    return [b"" if w == '""' else w.encode() for w in line.split()]


@pytest.fixture(scope="module", params=["valkey-9.1", "redis-7.0"])
def conn(request):
    srv = _servers.start_server(request.param)
    try:
        with connect(srv.address) as c:
            yield c
    finally:
        srv.cleanup()


def _server_keys(c, argv: list[bytes]) -> list[bytes]:
    try:
        return list(c.call("COMMAND", "GETKEYS", *argv))
    except ReplyError as e:  # keyless commands and unknown ones
        assert any(s in str(e) for s in ("no key arguments", "wrong number of arguments")), e
        return []


def test_keys_match_command_getkeys(conn):
    mismatches = []
    compared = 0
    for line in SAMPLE + KEYLESS:
        argv = _argv(line)
        want = _server_keys(conn, argv)
        compared += bool(want)
        if argv[0] in (b"EVAL", b"FCALL") and argv[2] == b"0":
            want = []
        got = command_info(argv).keys
        if got != want:
            mismatches.append((line, got, want))
    assert not mismatches
    assert compared >= 70
    for line in KEYLESS:
        assert command_info(_argv(line)).keys == [], line


def test_container_names_groups_and_positions():
    ci = command_info([b"xgroup", b"create", b"s", b"g", b"$"])
    assert (ci.name, ci.group, ci.key_indexes, ci.keys) == ("XGROUP-CREATE", "STREAM", [2], [b"s"])
    ci = command_info([b"client", b"setname", b"x"])
    assert (ci.name, ci.group, ci.keys) == ("CLIENT-SETNAME", "CONNECTION", [])
    assert command_info([b"OBJECT", b"ENCODING", b"k"]).key_indexes == [2]
    assert command_info([b"FUNCTION", b"LOAD", b"x"]).name == "FUNCTION-LOAD"
    assert command_info([b"ZADD", b"z", b"1", b"m"]).group == "SORTED_SET"
    assert command_info([b"SET", b"k", b"v"]).key_indexes == [1]
    assert command_info([b"EVAL", b"s", b"2", b"a", b"b", b"c"]).key_indexes == [3, 4]
    ci = command_info([b"GEORADIUS", b"g", b"1", b"2", b"3", b"km"])  # optional STORE absent
    assert ci.keys == [b"g"]
    ci = command_info([b"NOSUCH", b"x"])
    assert (ci.name, ci.group, ci.keys) == ("NOSUCH", "unknown", [])
    assert command_info([b"CONFIG", b"NOSUCH"]).group == "unknown"
    assert command_info([]).name == ""
    # malformed argv never raises
    for argv in ([b"EVAL", b"s", b"x"], [b"EVAL", b"s", b"5", b"a"], [b"XREAD", b"STREAMS"], [b"SET"],
                 [b"MIGRATE"], [b"SORT"], [b"ZUNIONSTORE", b"d", b"-1"]):  # fmt: skip
        command_info(argv)


def test_groups_are_redisshake_names():
    want = {
        "SERVER", "STRING", "CLUSTER", "CONNECTION", "BITMAP", "LIST", "SORTED_SET", "GENERIC",
        "TRANSACTIONS", "SCRIPTING", "GEO", "HASH", "HYPERLOGLOG", "PUBSUB", "SET", "SENTINEL",
        "STREAM", "TAIRHASH", "TAIRSTRING", "TAIRZSET", "BLOOM FILTER", "unknown",
    }  # fmt: skip
    assert want <= GROUPS
    assert command_info([b"SENTINEL", b"MASTERS"]).group == "SENTINEL"
    assert command_info([b"EXZADD", b"k", b"1", b"m"]).group == "TAIRZSET"
    assert command_info([b"EXSET", b"k", b"v"]).keys == [b"k"]


def test_cluster_routing_hook():
    assert command_keys([b"SET", b"k", b"v"]) == [b"k"]
    assert command_keys([b"FLUSHALL"]) == []
    assert command_keys([b"SCRIPT", b"LOAD", b"x"]) == []
    assert command_keys([b"NOSUCH", b"k"]) is None
    assert command_keys([b"EVAL", b"s", b"2", b"a", b"b"]) == [b"a", b"b"]
    import inspect

    src = inspect.getsource(ClusterWriter.__init__)
    assert "command_keys" in src


def test_committed_table_is_up_to_date():
    for name in ("valkey-9.1", "redis-7.0"):
        try:
            _servers.binary_for(name)
        except _servers.ServerBinaryMissing:
            pytest.fail(f"{name} not installed (run scripts/install-servers.sh; `make test` does)")
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_command_table.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
