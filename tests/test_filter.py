"""[filter] rules end to end (RDB restored through the CLI into a real server) and on
hand-made entries (multi-key commands, container names, counters)."""

from __future__ import annotations

import logging

import pytest

from redshake.commands import command_info
from redshake.config.schema import FilterConfig
from redshake.entry import Entry
from redshake.transform.filter import EntryFilter, FilterError, build_filter
from transform_data import (
    LAYOUT,
    LIB,
    functions,
    key_sets,
    restore,
    same_values,
    transform_env,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from transform_env(tmp_path_factory, "filter")


def _expect(pred) -> dict[int, set[bytes]]:
    out = {}
    for db, keys in LAYOUT.items():
        kept = {k for k in keys if pred(db, k)}
        if kept:
            out[db] = kept
    return out


def _run(env, filt, **adv):
    src, dst, rdb, tmp = env
    r = restore(rdb, dst, tmp, filt, **adv)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


CASES = [
    ({"allow_keys": ["user:1", "other"]}, lambda db, k: k in (b"user:1", b"other")),
    ({"block_keys": ["user:1", "other"]}, lambda db, k: k not in (b"user:1", b"other")),
    ({"allow_key_prefix": ["user:"]}, lambda db, k: k.startswith(b"user:")),
    ({"block_key_prefix": ["user:", "order:"]}, lambda db, k: not k.startswith((b"user:", b"order:"))),
    ({"allow_key_suffix": [":cache"]}, lambda db, k: k.endswith(b":cache")),
    ({"block_key_suffix": [":cache"]}, lambda db, k: not k.endswith(b":cache")),
    ({"allow_key_regex": [r"^user:\d+$"]}, lambda db, k: k in (b"user:1", b"user:2", b"user:100", b"user:200")),
    ({"block_key_regex": [r"\d:cache"]}, lambda db, k: not k.endswith(b":cache")),
    ({"allow_key_regex": ["bin"]}, lambda db, k: b"bin" in k),  # unanchored, binary key
    ({"allow_key_regex": [".*"]}, lambda db, k: True),
    # block wins over allow
    ({"allow_key_prefix": ["user:"], "block_key_suffix": [":cache"]},
     lambda db, k: k.startswith(b"user:") and not k.endswith(b":cache")),
    # allow lists are a union
    ({"allow_key_prefix": ["order:"], "allow_keys": ["other"]}, lambda db, k: k.startswith(b"order:") or k == b"other"),
    ({"allow_db": [1]}, lambda db, k: db == 1),
    ({"block_db": [0, 2]}, lambda db, k: db == 1),
    ({"allow_db": [0, 2], "block_key_prefix": ["order:"]}, lambda db, k: db != 1 and not k.startswith(b"order:")),
]  # fmt: skip


@pytest.mark.parametrize("filt,pred", CASES, ids=[str(c[0]) for c in CASES])
def test_key_and_db_rules(env, filt, pred):
    src, dst, _rdb, _tmp = env
    r = _run(env, filt)
    want = _expect(pred)
    assert key_sets(dst) == want
    for db, keys in want.items():
        same_values(src, dst, db, keys)
    # keyless FUNCTION LOAD passes key rules; db rules see the db it is read in (0)
    keyless_ok = not filt.get("allow_db") or 0 in filt["allow_db"]
    keyless_ok = keyless_ok and 0 not in filt.get("block_db", [])
    assert (functions(dst) == [b"tlib"]) == keyless_ok
    if want != _expect(lambda db, k: True):
        assert "transform: entries dropped=" in r.stdout + r.stderr + _log(env)


def _log(env) -> str:
    p = env[3] / "work" / "shake.log"
    return p.read_text(errors="replace") if p.exists() else ""


def test_command_and_group_rules_on_plain_commands(env):
    """With plain commands (no RESTORE) command and group rules see SET/HSET/RPUSH..."""
    src, dst, _rdb, _tmp = env
    _run(env, {"allow_command_group": ["STRING"]}, target_redis_proto_max_bulk_len=0)
    assert key_sets(dst) == _expect(lambda db, k: LAYOUT[db][k] == "string")
    assert functions(dst) == []  # FUNCTION LOAD is SCRIPTING
    _run(env, {"block_command": ["HSET"], "block_command_group": ["STREAM"]}, target_redis_proto_max_bulk_len=0)
    want = _expect(lambda db, k: LAYOUT[db][k] not in ("hash", "stream"))
    assert key_sets(dst) == want
    for db, keys in want.items():
        same_values(src, dst, db, keys)
    assert functions(dst) == [b"tlib"]


def test_command_rules_on_restore(env):
    """The RDB path writes RESTORE (group GENERIC) and FUNCTION-LOAD (SCRIPTING)."""
    src, dst, _rdb, _tmp = env
    _run(env, {"block_command_group": ["SCRIPTING"]})
    assert key_sets(dst) == _expect(lambda db, k: True)
    assert functions(dst) == []
    _run(env, {"allow_command": ["FUNCTION-LOAD"]})
    assert key_sets(dst) == {}
    assert functions(dst) == [b"tlib"]
    r = _run(env, {"block_command": ["RESTORE"], "allow_key_prefix": ["user:"]})
    assert key_sets(dst) == {}
    text = r.stdout + r.stderr + _log(env)
    assert "filter_command=" in text and "filter_key=" in text


def test_bad_regex_exits_2_and_writes_nothing(env):
    src, dst, rdb, tmp = env
    dst.client().set(b"marker", b"1")
    r = restore(rdb, dst, tmp, {"allow_key_regex": ["user:(unclosed"]})
    assert r.returncode == 2
    assert "allow_key_regex" in r.stdout + r.stderr + _log(env)
    assert key_sets(dst) == {}  # restore() flushed, nothing written afterwards


# ------------------------------------------------------------------ hand-made entries


def _f(**kw) -> EntryFilter:
    flt = build_filter(FilterConfig(**kw))
    assert flt is not None
    return flt


def _keep(flt: EntryFilter, db: int, *argv: bytes) -> bool:
    e = Entry(db, list(argv))
    return flt(e, command_info(e.argv))


def test_multi_key_commands_are_never_split(caplog):
    flt = _f(allow_key_prefix=["a:"])
    assert _keep(flt, 0, b"MSET", b"a:1", b"1", b"a:2", b"2")
    with caplog.at_level(logging.WARNING, logger="redshake"):
        assert not _keep(flt, 0, b"MSET", b"a:1", b"1", b"b:2", b"2")
    assert "Inconsistent filter results" in caplog.text
    assert not _keep(flt, 0, b"DEL", b"b:1", b"b:2")
    assert flt.dropped == {"filter_inconsistent": 1, "filter_key": 1}
    # keys found through key specs: EVAL numkeys, XREAD STREAMS, SORT STORE, ZUNIONSTORE
    assert _keep(flt, 0, b"EVAL", b"return 1", b"2", b"a:1", b"a:2", b"b:argv")
    assert not _keep(flt, 0, b"EVAL", b"return 1", b"2", b"a:1", b"b:2")
    assert _keep(flt, 0, b"EVAL", b"return 1", b"0", b"b:argv")  # no keys: passes
    assert not _keep(flt, 0, b"SORT", b"a:1", b"BY", b"w_*", b"STORE", b"b:dst")
    assert _keep(flt, 0, b"ZUNIONSTORE", b"a:d", b"2", b"a:1", b"a:2", b"WEIGHTS", b"1", b"2")
    assert not _keep(flt, 0, b"ZUNIONSTORE", b"a:d", b"2", b"a:1", b"b:2")


def test_keyless_commands_pass_key_rules():
    flt = _f(allow_keys=["nothing"])
    for argv in ([b"PING"], [b"FLUSHALL"], [b"SCRIPT", b"LOAD", b"return 1"], [b"FUNCTION", b"LOAD", LIB.encode()],
                 [b"PUBLISH", b"ch", b"msg"], [b"MULTI"], [b"EXEC"]):  # fmt: skip
        assert _keep(flt, 0, *argv), argv


def test_command_names_and_groups():
    flt = _f(block_command=["XGROUP-CREATE", "CLIENT-SETNAME"])
    assert not _keep(flt, 0, b"xgroup", b"create", b"s", b"g", b"$")
    assert _keep(flt, 0, b"XGROUP", b"SETID", b"s", b"g", b"$")
    assert not _keep(flt, 0, b"client", b"setname", b"x")
    flt = _f(allow_command_group=["TAIRHASH", "BLOOM FILTER", "unknown"])
    assert _keep(flt, 0, b"EXHSET", b"k", b"f", b"v")
    assert _keep(flt, 0, b"bf.add", b"k", b"x")
    assert _keep(flt, 0, b"NOSUCHCOMMAND", b"x")
    assert not _keep(flt, 0, b"SET", b"k", b"v")
    flt = _f(block_command_group=["SORTED_SET"], allow_db=[3])
    assert not _keep(flt, 3, b"ZADD", b"z", b"1", b"m")
    assert not _keep(flt, 2, b"SET", b"k", b"v")
    assert _keep(flt, 3, b"SET", b"k", b"v")
    assert flt.dropped == {"filter_group": 1, "filter_db": 1}


def test_nothing_configured_and_bad_regex():
    assert build_filter(FilterConfig()) is None
    with pytest.raises(FilterError):
        build_filter(FilterConfig(block_key_regex=["(?P<x"]))
    assert build_filter(FilterConfig(allow_key_regex=["*"])).key_ok(b"anything")
