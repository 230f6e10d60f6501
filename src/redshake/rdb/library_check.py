"""Check that a function library would register on a server, without a server.

``FUNCTION LOAD`` compiles the library (Lua 5.1) and runs its top-level code once, in an
environment that holds nothing but ``redis`` (Valkey: also ``server``) with
``register_function``, ``log``, the ``LOG_*`` levels and the version fields; every other
global, a missing field and any assignment to these tables is an error, and so are a bad
``register_function`` call, a function name used twice, a library that registers nothing
and a load that does not finish (the server stops it after 500 ms). Behaviour measured on
Redis 7.0 and Valkey 8.1 / 9.1.

:func:`library_functions` runs the code the same way in a private Lua runtime (memory and
instruction count bounded; the callbacks are never called) and returns the names of the
functions the library registers, or raises :class:`LibraryError` with the reason the server
would give.
"""

from __future__ import annotations

__all__ = ["LibraryError", "library_functions"]

# Lua instructions the top-level code may run (the server allows 500 ms of it)
MAX_INSTRUCTIONS = 50_000_000
MAX_MEMORY = 64 << 20

_LOADER = r"""
local code, max_count = ...
local f, cerr = loadstring(code, "=user_function")
if not f then
  return nil, "Error compiling function: " .. cerr
end
local OWN = {}  -- errors raised by the emulation itself: {OWN, message}
local function fail(msg)
  error({OWN, msg}, 0)
end
local function readonly(fields)
  return setmetatable({}, {
    __index = function(_, k)
      local v = fields[k]
      if v == nil then
        fail("Script attempted to access nonexistent global variable '" .. tostring(k) .. "'")
      end
      return v
    end,
    __newindex = function()
      fail("Attempt to modify a readonly table")
    end,
    __metatable = false,
  })
end
local FLAGS = {["no-writes"] = true, ["allow-oom"] = true, ["allow-stale"] = true,
               ["no-cluster"] = true, ["allow-cross-slot-keys"] = true}
local names, seen = {}, {}
local function stringish(v)
  return type(v) == "string" or type(v) == "number"
end
local function add(name)
  name = tostring(name)
  if not string.find(name, "^[%w_]+$") then
    fail("Library names can only contain letters, numbers, or underscores(_) and must be "
         .. "at least one character long")
  end
  if seen[name] then
    fail("Function already exists in the library")
  end
  seen[name] = true
  names[#names + 1] = name
end
local function register(...)
  local n = select("#", ...)
  local a, b = ...
  if n == 1 then
    if type(a) ~= "table" then
      fail("calling redis.register_function with a single argument is only applicable to "
           .. "Lua table (representing named arguments).")
    end
    local name, cb
    for k, v in pairs(a) do
      if k == "function_name" then
        if not stringish(v) then fail("function_name argument must be a string") end
        name = v
      elseif k == "callback" then
        if type(v) ~= "function" then fail("callback argument must be a function") end
        cb = v
      elseif k == "description" then
        if not stringish(v) then fail("description argument must be a string") end
      elseif k == "flags" then
        if type(v) ~= "table" then
          fail("flags argument to redis.register_function must be a table representing "
               .. "function flags")
        end
        for _, flag in pairs(v) do
          if not FLAGS[flag] then fail("unknown flag given") end
        end
      else
        fail("unknown argument given to redis.register_function")
      end
    end
    if name == nil then fail("redis.register_function must get a function name argument") end
    if cb == nil then fail("redis.register_function must get a callback argument") end
    add(name)
  elseif n == 2 then
    if not stringish(a) then
      fail("first argument to redis.register_function must be a string")
    end
    if type(b) ~= "function" then
      fail("second argument to redis.register_function must be a function")
    end
    add(a)
  else
    fail("wrong number of arguments to redis.register_function")
  end
end
local api = readonly({
  register_function = register,
  log = function() end,
  LOG_DEBUG = 0, LOG_VERBOSE = 1, LOG_NOTICE = 2, LOG_WARNING = 3,
  REDIS_VERSION = "7.0.0", REDIS_VERSION_NUM = 458752,
})
setfenv(f, readonly({redis = api, server = api}))
debug.sethook(function() fail("FUNCTION LOAD timeout") end, "", max_count)
local ok, err = pcall(f)
debug.sethook()
if not ok then
  if type(err) == "table" and err[1] == OWN then
    return nil, err[2]
  end
  return nil, tostring(err)
end
if #names == 0 then
  return nil, "No functions registered"
end
return names, false
"""


class LibraryError(Exception):
    """The library would not register on a server; the message says why."""


def library_functions(body: bytes) -> list[bytes]:
    """Names of the functions the library code ``body`` (without its ``#!`` line) registers."""
    import lupa.lua51 as lua

    rt = lua.LuaRuntime(encoding=None, max_memory=MAX_MEMORY)
    try:
        names, err = rt.execute(_LOADER, body, MAX_INSTRUCTIONS)
    except lua.LuaMemoryError:
        raise LibraryError("its top-level code needs too much memory") from None
    except lua.LuaError as e:  # an error the emulation did not catch (e.g. in a hook)
        raise LibraryError(str(e)) from None
    if names is None:
        msg = err.decode(errors="replace") if isinstance(err, bytes) else str(err)
        raise LibraryError(msg)
    return [names[i] for i in range(1, len(names) + 1)]
