"""The Lua ``function``: globals, shake.call / shake.log, the documented examples (on
hand-made entries and end to end through the CLI into a real server), errors."""

from __future__ import annotations

import logging

import pytest

from redshake.commands.slots import key_slot
from redshake.entry import KEYLESS_ALL_MASTERS, Entry
from redshake.errors import FatalError
from redshake.transform.lua import LuaFunction, LuaSyntaxError
from transform_data import LAYOUT, functions, key_sets, restore, transform_env

DROP_DB0 = """
shake.log(DB)
if DB == 0 then
    return
end
shake.call(DB, ARGV)
"""

KEEP_PREFIX = """
local prefix = "user:"
if KEYS[1] == nil or string.sub(KEYS[1], 1, #prefix) ~= prefix then
    return
end
shake.call(DB, ARGV)
"""

SPLIT_MSET = """
if CMD == "MSET" then
    for i = 2, #ARGV, 2 do
        shake.call(DB, {"SET", ARGV[i], ARGV[i + 1]})
    end
else
    shake.call(DB, ARGV)
end
"""

RENAME_PREFIX = """
local prefix_old = "user:"
local prefix_new = "u:"
for _, index in ipairs(KEY_INDEXES) do
    local key = ARGV[index]
    if string.sub(key, 1, #prefix_old) == prefix_old then
        ARGV[index] = prefix_new .. string.sub(key, #prefix_old + 1)
    end
end
shake.call(DB, ARGV)
"""

SWAP_DB = """
if DB == 1 then
    DB = 2
elseif DB == 2 then
    DB = 1
end
shake.call(DB, ARGV)
"""

SHOW = """
shake.call(DB, {CMD, GROUP, table.concat(KEYS, ","), table.concat(KEY_INDEXES, ","),
                table.concat(SLOTS, ","), #ARGV, ARGV[1]})
"""


def _run(fn: LuaFunction, db: int, *argv: bytes) -> list[tuple[int, list[bytes]]]:
    return [(e.db, e.argv) for e in fn(Entry(db, list(argv)))]


# ------------------------------------------------------------------ hand-made entries


def test_globals():
    fn = LuaFunction(SHOW)
    key_a, key_b = b"{user}:a", b"b"
    [(db, out)] = _run(fn, 3, b"mset", key_a, b"1", key_b, b"2")
    slots = f"{key_slot(key_a)},{key_slot(key_b)}".encode()
    assert db == 3
    assert out == [b"MSET", b"STRING", key_a + b"," + key_b, b"2,4", slots, b"5", b"mset"]
    [(_, out)] = _run(fn, 0, b"XGROUP", b"CREATE", b"s", b"g", b"$")
    assert out[:4] == [b"XGROUP-CREATE", b"STREAM", b"s", b"3"]
    [(_, out)] = _run(fn, 0, b"PING")
    assert out[:5] == [b"PING", b"CONNECTION", b"", b"", b""]
    [(_, out)] = _run(fn, 0, b"NOSUCH", b"x")
    assert out[:3] == [b"NOSUCH", b"unknown", b""]


def test_split_mset():
    fn = LuaFunction(SPLIT_MSET)
    assert _run(fn, 2, b"MSET", b"a", b"1", b"b", b"2", b"c", b"3") == [
        (2, [b"SET", b"a", b"1"]),
        (2, [b"SET", b"b", b"2"]),
        (2, [b"SET", b"c", b"3"]),
    ]
    assert _run(fn, 0, b"SET", b"a", b"1") == [(0, [b"SET", b"a", b"1"])]


def test_doc_examples_on_entries(caplog):
    with caplog.at_level(logging.INFO, logger="redshake"):
        fn = LuaFunction(DROP_DB0)
        assert _run(fn, 0, b"SET", b"a", b"1") == []
        assert _run(fn, 1, b"SET", b"a", b"1") == [(1, [b"SET", b"a", b"1"])]
    assert "lua log: 0" in caplog.text and "lua log: 1" in caplog.text
    assert fn.dropped == 1
    fn = LuaFunction(KEEP_PREFIX)
    assert _run(fn, 0, b"SET", b"user:1", b"v") == [(0, [b"SET", b"user:1", b"v"])]
    assert _run(fn, 0, b"SET", b"other", b"v") == []
    assert _run(fn, 0, b"FLUSHALL") == []  # keyless: KEYS[1] is nil
    fn = LuaFunction(RENAME_PREFIX)
    assert _run(fn, 0, b"RPOPLPUSH", b"user:a", b"user:b") == [(0, [b"RPOPLPUSH", b"u:a", b"u:b"])]
    fn = LuaFunction(SWAP_DB)
    assert _run(fn, 1, b"SET", b"k", b"v") == [(2, [b"SET", b"k", b"v"])]
    assert _run(fn, 2, b"SET", b"k", b"v") == [(1, [b"SET", b"k", b"v"])]
    assert _run(fn, 5, b"SET", b"k", b"v") == [(5, [b"SET", b"k", b"v"])]


def test_emitted_entries_routing_and_offsets():
    fn = LuaFunction("shake.call(DB, ARGV)")
    e = Entry(0, [b"FUNCTION", b"LOAD", b"x"], KEYLESS_ALL_MASTERS, offset=42, resp=b"cached")
    [out] = fn(e)
    assert out.key is KEYLESS_ALL_MASTERS and out.resp == b"cached" and out.offset == 42
    fn = LuaFunction(SPLIT_MSET)
    outs = fn(Entry(0, [b"MSET", b"a", b"1", b"b", b"2"], b"a", offset=7))
    assert [o.key for o in outs] == [None, None]  # changed argv: the writer looks keys up
    assert [o.offset for o in outs] == [-1, 7]  # acked only once the last one is written


def test_values_are_converted_to_strings_and_big_argv():
    fn = LuaFunction('shake.call(DB, {"SET", "k", 10, 1.5, -3})')
    assert _run(fn, 0, b"X") == [(0, [b"SET", b"k", b"10", b"1.5", b"-3"])]
    big = [b"RPUSH", b"list"] + [b"%d" % i for i in range(20000)]
    for src in ("shake.call(DB, ARGV)", "if KEYS[1] == 'list' then shake.call(DB, ARGV) end"):
        assert _run(LuaFunction(src), 0, *big) == [(0, big)]
    fn = LuaFunction("for i = 1, 3000 do shake.call(DB, {'SET', 'k' .. i, i}) end")
    out = _run(fn, 0, b"PING")
    assert len(out) == 3000 and out[-1] == (0, [b"SET", b"k3000", b"3000"])
    # globals reached dynamically still see every value
    fn = LuaFunction('shake.call(DB, {"ECHO", _G["SLOTS"][1]})')
    assert _run(fn, 0, b"GET", b"foo") == [(0, [b"ECHO", str(key_slot(b"foo")).encode()])]


def test_errors():
    with pytest.raises(LuaSyntaxError, match="syntax"):
        LuaFunction("if then end")
    fn = LuaFunction('if KEYS[1] == "bad" then error("boom") end shake.call(DB, ARGV)')
    with pytest.raises(FatalError, match=r"boom") as ei:
        fn(Entry(4, [b"SET", b"bad", b"v"]))
    assert "bad" in str(ei.value) and "db 4" in str(ei.value)
    assert _run(fn, 0, b"SET", b"good", b"v") == [(0, [b"SET", b"good", b"v"])]  # usable again
    for bad in ('shake.call(DB, {"SET", {}})', "shake.call(DB, {})", 'shake.call(-1, ARGV)', "shake.call(DB, 1)"):
        with pytest.raises(FatalError, match="shake.call"):
            LuaFunction(bad)(Entry(0, [b"SET", b"k", b"v"]))


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from transform_env(tmp_path_factory, "lua")


def _out(r) -> str:
    return r.stdout + r.stderr


def _digest(server, db: int, key: bytes):
    return server.client(db).execute_command("DEBUG", "DIGEST-VALUE", key)


def test_drop_db0_and_swap_dbs_end_to_end(env):
    src, dst, rdb, tmp = env
    r = restore(rdb, dst, tmp, {"function": DROP_DB0})
    assert r.returncode == 0, _out(r)[-3000:]
    assert key_sets(dst) == {1: set(LAYOUT[1]), 2: set(LAYOUT[2])}
    assert functions(dst) == []
    assert "lua log: 0" in _out(r) and "function=" in _out(r)
    r = restore(rdb, dst, tmp, {"function": SWAP_DB})
    assert r.returncode == 0, _out(r)[-3000:]
    assert key_sets(dst) == {0: set(LAYOUT[0]), 1: set(LAYOUT[2]), 2: set(LAYOUT[1])}
    for k in LAYOUT[1]:
        assert _digest(src, 1, k) == _digest(dst, 2, k)
    for k in LAYOUT[2]:
        assert _digest(src, 2, k) == _digest(dst, 1, k)


@pytest.mark.parametrize("plain", [False, True], ids=["restore", "commands"])
def test_rename_prefix_end_to_end(env, plain):
    src, dst, rdb, tmp = env
    adv = {"target_redis_proto_max_bulk_len": 0} if plain else {}
    r = restore(rdb, dst, tmp, {"function": RENAME_PREFIX}, **adv)
    assert r.returncode == 0, _out(r)[-3000:]
    for db, keys in LAYOUT.items():
        for k in keys:
            new = b"u:" + k[5:] if k.startswith(b"user:") else k
            assert _digest(src, db, k) == _digest(dst, db, new), (db, k)
    assert key_sets(dst) == {db: {b"u:" + k[5:] if k.startswith(b"user:") else k for k in ks}
                             for db, ks in LAYOUT.items()}  # fmt: skip


def test_top_level_function_keeps_prefix(env):
    src, dst, rdb, tmp = env
    r = restore(rdb, dst, tmp, {}, top={"function": KEEP_PREFIX})
    assert r.returncode == 0, _out(r)[-3000:]
    want = {db: {k for k in ks if k.startswith(b"user:")} for db, ks in LAYOUT.items()}
    assert key_sets(dst) == want


def test_filter_runs_before_function(env):
    src, dst, rdb, tmp = env
    # the filter keeps db 1 only, then the function moves it to db 0
    r = restore(rdb, dst, tmp, {"allow_db": [1], "function": "shake.call(0, ARGV)"})
    assert r.returncode == 0, _out(r)[-3000:]
    assert key_sets(dst) == {0: set(LAYOUT[1])}


def test_syntax_error_exits_2_and_writes_nothing(env):
    src, dst, rdb, tmp = env
    r = restore(rdb, dst, tmp, {"function": "shake.call(DB, ARGV"})
    assert r.returncode == 2
    assert "Lua syntax error" in _out(r) + (tmp / "work" / "shake.log").read_text()
    assert key_sets(dst) == {} and functions(dst) == []


def test_runtime_error_exits_1_naming_the_entry(env):
    src, dst, rdb, tmp = env
    fn = 'if KEYS[1] == "order:100" then error("no orders here") end shake.call(DB, ARGV)'
    r = restore(rdb, dst, tmp, {"function": fn})
    assert r.returncode == 1
    text = _out(r) + (tmp / "work" / "shake.log").read_text()
    assert "no orders here" in text and "order:100" in text and "db 1" in text


def test_both_function_places_is_an_error(env):
    src, dst, rdb, tmp = env
    r = restore(rdb, dst, tmp, {"function": "shake.call(DB, ARGV)"}, top={"function": "return"})
    assert r.returncode == 2
    assert key_sets(dst) == {}


# ------------------------------------------------------------------ sandbox

ESCAPES = [
    'os.execute("touch /tmp/pwned")',
    "os.exit(1)",
    'os.remove("x")',
    'os.getenv("HOME")',
    'io.open("/etc/passwd")',
    "io.write('x')",
    'load("return 1")',
    'loadstring("return 1")',
    'loadfile("/etc/passwd")',
    'dofile("/etc/passwd")',
    'require("os")',
    "module('m')",
    "package.loaded.os.execute('id')",
    "debug.getinfo(1)",
    "getfenv(1)",
    "setfenv(1, {})",
    'collectgarbage("count")',
    "gcinfo()",
    'rawset(shake, "call", nil)',
    'rawget(_G, "os")',
    "newproxy(true)",
    'getmetatable("").__index.rep = nil',
    "setmetatable({}, {})",
    "coroutine.create(print)",
    "string.dump(print)",
    "python.eval('1')",
    "python.builtins.open('/etc/passwd')",
    '_G.io.open("/etc/passwd")',
]


@pytest.mark.parametrize("src", ESCAPES)
def test_sandbox_refuses(src):
    """Each way out of the sandbox fails with an error naming what is not available; the
    function keeps working afterwards (the runtime is intact)."""
    fn = LuaFunction(src + "\nshake.call(DB, ARGV)")
    with pytest.raises(FatalError, match=r"is not available in the \[filter\] function") as ei:
        fn(Entry(0, [b"SET", b"k", b"v"]))
    assert "k" in str(ei.value)
    ok = LuaFunction("shake.call(DB, ARGV)")
    assert _run(ok, 0, b"SET", b"k", b"v") == [(0, [b"SET", b"k", b"v"])]


def test_sandbox_other_escapes():
    # string methods of the real string table: dump is gone there too
    with pytest.raises(FatalError, match="dump"):
        LuaFunction('("").dump(print)')(Entry(0, [b"SET", b"k", b"v"]))
    # precompiled bytecode is refused up front (it can break the VM's guarantees)
    with pytest.raises(LuaSyntaxError, match="bytecode"):
        LuaFunction("\x1bLuaQ\x00")
    # what the sandbox offers still works: string, table, math, os.time/clock, pcall, print
    fn = LuaFunction(
        'local ok, err = pcall(function() return io.open("x") end)\n'
        'print("caught", ok)\n'
        "local t = {} table.insert(t, string.upper(ARGV[1])) table.insert(t, math.max(1, 2))\n"
        "shake.call(DB, {t[1], tostring(t[2]), tostring(os.time() > 0), tostring(os.clock() >= 0),"
        " tostring(not ok), type(_G), tostring(_G.shake == shake)})"
    )
    assert _run(fn, 0, b"get") == [(0, [b"GET", b"2", b"true", b"true", b"true", b"table", b"true"])]
    # a script's own globals still work (nil until set), and persist between entries
    fn = LuaFunction('counter = (counter or 0) + 1 shake.call(DB, {"SET", "n", counter})')
    assert _run(fn, 0, b"PING") == [(0, [b"SET", b"n", b"1"])]
    assert _run(fn, 0, b"PING") == [(0, [b"SET", b"n", b"2"])]


def test_sandbox_escape_end_to_end(env, tmp_path):
    """A function that tries to run a shell command stops the run (exit 1) with a clear
    message, and the command never ran."""
    src, dst, rdb, tmp = env
    marker = tmp_path / "pwned"
    r = restore(rdb, dst, tmp, {"function": f'os.execute("touch {marker}") shake.call(DB, ARGV)'})
    assert r.returncode == 1
    text = _out(r) + (tmp / "work" / "shake.log").read_text()
    assert "os.execute is not available in the [filter] function" in text
    assert "incomplete" in text.splitlines()[-1]
    assert not marker.exists()
