"""The Lua ``function`` (RedisShake v4 semantics) on Lua 5.1 through lupa.

The script is compiled once. For each entry it runs with the globals

    DB           source db (number)
    CMD          upper-cased command name, containers as "XGROUP-CREATE"
    GROUP        command group ("STRING", ..., "unknown")
    KEYS         keys of the command (table)
    KEY_INDEXES  1-based positions of the keys in ARGV
    SLOTS        cluster slot of each key
    ARGV         the whole argv, ARGV[1] = command name

and two functions: ``shake.call(db, argv)`` emits one command (0..N times; never called =
the entry is dropped) and ``shake.log(msg)`` logs ``lua log: <msg>``.

Sandbox: the function runs in its own environment holding only those, ``string`` (without
``dump``), ``table``, ``math``, ``os.time`` / ``os.clock``, ``pairs ipairs next tostring
tonumber type select unpack error pcall assert _VERSION``, ``print`` (logs like
``shake.log``) and ``_G`` (the environment itself). Files, the OS, loading code, ``debug``,
raw access, metatables, coroutines and lupa's ``python`` fail with "<name> is not available
in the [filter] function"; bytecode is refused; Lua cannot read Python attributes.

Speed: ``shake.call`` is written in Lua and only appends to a flat buffer; one call into
Lua per entry returns all emitted commands as one tuple. The script's text decides what
must be computed per entry: a script that never names KEYS / KEY_INDEXES / SLOTS / CMD /
GROUP (nor reaches globals dynamically through _G, getfenv, load...) skips the command
table lookup, and SLOTS (CRC16 per key) is only computed when the script names it.
"""

from __future__ import annotations

import logging
import re

import lupa.lua51 as lua

from .. import errors
from ..commands.lookup import CommandInfo, command_info
from ..commands.slots import key_slot
from ..entry import Entry

__all__ = ["LuaFunction", "LuaSyntaxError"]

log = logging.getLogger("redshake")

# Lua's C stack allows ~8000 values per call; above this many values go through staging.
_MAX_VALUES = 4000

_WRAPPER = r"""
local chunk, pylog, MAXV = ...
python = nil
local OUT, n = {}, 0
local STAGE, ns = {}, 0
local type, tostring, tonumber, error, select, unpack = type, tostring, tonumber, error, select, unpack
local floor, fmt = math.floor, string.format

-- The function's sandbox: its only globals are E's (see the README). Anything else that
-- Lua 5.1 has (io, os.execute, load*, require, debug, ...) fails with a clear error.
local E = {}
local SANDBOX = " is not available in the [filter] function (it runs sandboxed: no files, " ..
  "no OS, no loading of code)"
local BLOCKED = {}
for w in ("io os load loadstring loadfile dofile require module package debug getfenv " ..
          "setfenv collectgarbage gcinfo rawset rawget rawequal newproxy getmetatable " ..
          "setmetatable coroutine python"):gmatch("%S+") do BLOCKED[w] = true end
local function only(t, names, prefix)
  local c = {}
  for name in names:gmatch("%S+") do c[name] = t[name] end
  return setmetatable(c, {__index = function(_, k)
    error(prefix .. tostring(k) .. SANDBOX, 2)
  end})
end
for _, name in ipairs({"pairs", "ipairs", "next", "tostring", "tonumber", "type", "select",
                       "unpack", "error", "pcall", "assert", "_VERSION"}) do
  E[name] = _G[name]
end
string.dump = nil  -- also reachable as a method of every string
local function names(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  return table.concat(out, " ")
end
E.string = only(string, names(string), "string.")
E.table = only(table, names(table), "table.")
E.math = only(math, names(math), "math.")
E.os = only(os, "time clock", "os.")
E._G = E
setmetatable(E, {__index = function(_, k)
  if BLOCKED[k] then error(tostring(k) .. SANDBOX, 2) end
end})
setfenv(chunk, E)

local function tostr(v, i)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then
    if v == floor(v) and v > -9007199254740992 and v < 9007199254740992 then
      return fmt("%.0f", v)
    end
    return fmt("%.17g", v)
  end
  error("shake.call: argv[" .. i .. "] is a " .. t .. ", expected a string or a number", 3)
end

local shake = {}
E.shake = shake
function shake.call(db, argv)
  if type(argv) ~= "table" then
    error("shake.call(db, argv): argv must be a table, got a " .. type(argv), 2)
  end
  local m = #argv
  if m == 0 then error("shake.call(db, argv): argv is empty", 2) end
  local d = tonumber(db)
  if d == nil or d < 0 or d ~= floor(d) then
    error("shake.call(db, argv): db must be a non-negative integer, got " .. tostring(db), 2)
  end
  OUT[n + 1] = d
  OUT[n + 2] = m
  for i = 1, m do
    local v = argv[i]
    if type(v) == "string" then OUT[n + 2 + i] = v else OUT[n + 2 + i] = tostr(v, i) end
  end
  n = n + 2 + m
end
function shake.log(msg) pylog(tostring(msg)) end
E.print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  pylog(table.concat(parts, " "))
end

local function finish()
  if n <= MAXV then return unpack(OUT, 1, n) end
  return false, n
end

local function plain(db, ...)
  n = 0
  DB = db
  ARGV = {...}
  chunk()
  return finish()
end

local function setfull(db, cmd, group, nk, t, na)
  local K, KI, SL = {}, {}, {}
  for j = 1, nk do
    local ix = t[na + j]
    KI[j] = ix
    K[j] = t[ix]
    SL[j] = t[na + nk + j]
  end
  for i = na + 1, na + 2 * nk do t[i] = nil end
  DB, CMD, GROUP, KEYS, KEY_INDEXES, SLOTS, ARGV = db, cmd, group, K, KI, SL, t
end

local function full(db, cmd, group, nk, ...)
  n = 0
  setfull(db, cmd, group, nk, {...}, select("#", ...) - 2 * nk)
  chunk()
  return finish()
end

-- the common cases without the generic loops: no key, one key
local function full0(db, cmd, group, ...)
  n = 0
  DB, CMD, GROUP, KEYS, KEY_INDEXES, SLOTS, ARGV = db, cmd, group, {}, {}, {}, {...}
  chunk()
  return finish()
end

local function full1(db, cmd, group, ix, slot, ...)
  n = 0
  local t = {...}
  DB, CMD, GROUP, KEYS, KEY_INDEXES, SLOTS, ARGV = db, cmd, group, {t[ix]}, {ix}, {slot}, t
  chunk()
  return finish()
end

-- big argv: stage(...) in pieces, then staged(...) runs on the staged values
local function stage(...)
  local k = select("#", ...)
  local args = {...}
  for i = 1, k do STAGE[ns + i] = args[i] end
  ns = ns + k
end

local function staged(db, cmd, group, nk)
  n = 0
  local t = STAGE
  STAGE, ns = {}, 0
  if cmd == nil then
    DB, ARGV = db, t
  else
    setfull(db, cmd, group, nk, t, #t - 2 * nk)
  end
  chunk()
  return finish()
end

local function fetch(i, j) return unpack(OUT, i, j) end

-- the globals these set (DB, ARGV, KEYS...) are the function's: set them in its sandbox
for _, f in ipairs({plain, setfull, full, full0, full1, staged}) do setfenv(f, E) end

return plain, full, full0, full1, stage, staged, fetch
"""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DYNAMIC = {"_G", "getfenv", "setfenv", "loadstring", "load", "dofile", "require", "rawget", "debug", "loadfile"}
_INFO_GLOBALS = {"KEYS", "KEY_INDEXES", "SLOTS", "CMD", "GROUP"}


def _no_python_attributes(_obj: object, name: object, _is_setting: bool) -> object:
    """lupa's attribute filter: Lua never reaches into a Python object."""
    raise AttributeError(f"the [filter] function cannot access Python attributes ({name!r})")


class LuaSyntaxError(ValueError):
    """The function does not compile."""


def _fatal(message: str) -> Exception:
    """The function raised an error on an entry (the run must stop)."""
    return errors.LuaError(message)


class LuaFunction:
    """Callable ``entry -> list[Entry]``. ``dropped`` counts entries the function dropped
    (never called ``shake.call``); ``emitted`` the entries it produced."""

    def __init__(self, source: str) -> None:
        self.source = source
        if source.lstrip().startswith("\x1b"):  # precompiled bytecode can break out of any sandbox
            raise LuaSyntaxError("[filter] function: Lua bytecode is not accepted, give the source")
        rt = lua.LuaRuntime(
            encoding=None,
            unpack_returned_tuples=False,
            register_eval=False,
            register_builtins=False,
            attribute_filter=_no_python_attributes,
        )
        loader = rt.eval("function(s) return loadstring(s, '=function') end")
        res = loader(source.encode("utf-8"))
        chunk, err = (res, None) if not isinstance(res, tuple) else (res[0], res[1] if len(res) > 1 else None)
        if chunk is None:
            msg = err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err)
            raise LuaSyntaxError(f"[filter] function: Lua syntax error: {msg}")
        wrapper = rt.execute(_WRAPPER.encode(), chunk, self._log, _MAX_VALUES)
        self._plain, self._full, self._full0, self._full1, self._stage, self._staged, self._fetch = wrapper
        names = set(_IDENT.findall(source))
        dynamic = bool(names & _DYNAMIC)
        self.needs_info = dynamic or bool(names & _INFO_GLOBALS)
        self.needs_slots = dynamic or "SLOTS" in names
        self.dropped = 0
        self.emitted = 0
        self._names: dict[str, bytes] = {}

    @staticmethod
    def _log(msg: bytes) -> None:
        log.info("lua log: %s", msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg)

    def _run(self, entry: Entry, info: CommandInfo | None) -> tuple:
        argv = entry.argv
        if not self.needs_info:
            if len(argv) < _MAX_VALUES:
                return self._plain(entry.db, *argv)
            self._stage_values(argv)
            return self._staged(entry.db, None, None, 0)
        if info is None:
            info = command_info(argv)
        names = self._names
        name = names.get(info.name)
        if name is None:
            name = names[info.name] = info.name.encode()
        group = names.get(info.group)
        if group is None:
            group = names[info.group] = info.group.encode()
        idx = info.key_indexes
        nk = len(idx)
        if len(argv) < _MAX_VALUES:
            if nk == 0:
                return self._full0(entry.db, name, group, *argv)
            if nk == 1:
                slot = key_slot(info.keys[0]) if self.needs_slots else 0
                return self._full1(entry.db, name, group, idx[0] + 1, slot, *argv)
        if nk:
            extra = [i + 1 for i in idx]
            if self.needs_slots:
                extra += [key_slot(k) for k in info.keys]
            else:
                extra += [0] * nk
        else:
            extra = []
        if len(argv) + 2 * nk < _MAX_VALUES:
            return self._full(entry.db, name, group, nk, *argv, *extra)
        self._stage_values(argv)
        self._stage_values(extra)
        return self._staged(entry.db, name, group, nk)

    def _stage_values(self, values) -> None:
        for i in range(0, len(values), _MAX_VALUES):
            self._stage(*values[i : i + _MAX_VALUES])

    def __call__(self, entry: Entry, info: CommandInfo | None = None) -> list[Entry]:
        """Entries the function emits for ``entry`` (``info``: its command_info, if known)."""
        try:
            r = self._run(entry, info)
            if r and r[0] is False:  # too many values for one return: fetch in pieces
                total = r[1]
                parts: list = []
                for i in range(1, total + 1, _MAX_VALUES):
                    parts.extend(self._fetch(i, min(total, i + _MAX_VALUES - 1)))
                r = tuple(parts)
        except lua.LuaError as e:
            msg = e.args[0] if e.args else e
            if isinstance(msg, bytes):
                msg = msg.decode("utf-8", "replace")
            msg = str(msg).split("\nstack traceback:", 1)[0]
            raise _fatal(f"lua function failed on {entry!r} (db {entry.db}): {msg}") from None
        if not r:
            self.dropped += 1
            return []
        out: list[Entry] = []
        n = len(r)
        i = 0
        argv = entry.argv
        while i < n:
            db = int(r[i])
            m = int(r[i + 1])
            new = list(r[i + 2 : i + 2 + m])
            i += 2 + m
            if new == argv:  # unchanged command: keep the routing hint and encoding
                out.append(Entry(db, argv, entry.key, -1, entry.resp))
            else:
                out.append(Entry(db, new))
        out[-1].offset = entry.offset
        self.emitted += len(out)
        return out
