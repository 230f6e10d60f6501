"""Commands with arguments too long to hold in memory (live stream and AOF replay).

The AOF parser (``AofParser(big_arg=PIECE)``) yields such a command as events: a
:class:`~redshake.aof.parser.BigArg` when a long argument starts, its bytes in pieces, and
finally the argv with ``None`` in place of each long argument. :class:`BigCommand` turns
those events into entries:

* with temporary keys (a server target, no transform): each long argument is built in a
  temporary key ``{tag}redshake:tmp:<token>:<n>`` of the cluster slot of the command's first
  key, with ``SET`` then ``APPEND``\\ s of its pieces; then one ``EVAL`` of :data:`SCRIPT` runs
  the original command with those arguments read by ``GET`` (the same semantics as the
  command: ``SET ... NX``, ``RESTORE ... REPLACE`` and so on hold) and deletes the temporary
  keys. The names depend only on the command's position in the source, so a command redone
  after a restart or a lost target connection overwrites the same keys;
* otherwise (file targets, filters and Lua functions, which must see the real command, and
  commands a script cannot run) the command is reassembled in memory, up to ``max_bulk``
  bytes in total.

Either way an argument longer than the target's ``proto-max-bulk-len`` is refused with
:class:`BigCommandError` naming the command, the key and the limit: the target would refuse
it (and close the connection) anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from ..aof.parser import MAX_BULK, PIECE, AofError, AofParser, BigArg
from ..commands.lookup import command_info
from ..commands.slots import key_slot
from ..entry import Entry
from ..readers.rdb_entries import ConversionError, temp_key_tag

__all__ = ["BigCommand", "BigCommandError", "PIECE", "PIECE_DONE", "SCRIPT", "live_command",
           "limits"]  # fmt: skip

log = logging.getLogger("redshake")

# Runs a command some of whose arguments were built in temporary keys. ARGV[1]: one letter
# per argument of the command: "k" the next of KEYS (the command's keys, in order), "t" the
# value of the next temporary key (KEYS after the command's keys) whose expected length is
# the next of ARGV[2..], "a" the next of ARGV[2..] itself. The temporary keys are deleted
# whatever the command answers; its reply (or error) is the script's.
SCRIPT = b"""\
local pat = ARGV[1]
local nk = select(2, string.gsub(pat, 'k', ''))
local args, k, t, j = {}, 1, nk + 1, 2
for i = 1, #pat do
  local c = string.byte(pat, i)
  if c == 107 then
    args[i] = KEYS[k]
    k = k + 1
  elseif c == 116 then
    local v = redis.call('GET', KEYS[t])
    if not v or #v ~= tonumber(ARGV[j]) then
      redis.call('DEL', unpack(KEYS, nk + 1))
      return redis.error_reply('redshake: temporary key ' .. KEYS[t] .. ' is missing or incomplete')
    end
    args[i] = v
    t = t + 1
    j = j + 1
  else
    args[i] = ARGV[j]
    j = j + 1
  end
end
local r = redis.pcall(unpack(args))
redis.call('DEL', unpack(KEYS, nk + 1))
return r
"""

# Yielded after each piece: an empty batch makes the pipeline poll the writer and ask for
# its acknowledged offset, on which writers drop the entries already answered (the cluster
# writer otherwise keeps up to 4096 of them, here 4 GiB of pieces).
PIECE_DONE: list[Entry] = []

# Commands a script cannot run, and commands that carry no data for the target.
_NOSCRIPT = frozenset(
    b"eval evalsha eval_ro evalsha_ro fcall fcall_ro script function multi exec discard "
    b"watch unwatch select swapdb subscribe psubscribe ssubscribe".split()
)
_REFUSED = frozenset((b"select", b"multi", b"exec", b"ping", b"replconf"))


class BigCommandError(ConversionError):
    """A command that cannot be written to this target (argument over its limit...)."""


def limits(ctx) -> tuple[int, bool]:
    """(target's proto-max-bulk-len, whether temporary keys may be used) for a reader's ctx."""
    limit = int(ctx.options.get("target_max_bulk") or MAX_BULK)
    return limit, bool(getattr(ctx.caps, "temp_keys", False))


def _show(b: bytes | None) -> str:
    if b is None:
        return "?"
    return repr(b[:60] + b"..." if len(b) > 60 else b)


class BigCommand:
    """Entries for one command with long arguments, from the parser's events (see the
    module docstring). ``token`` names the temporary keys: it must identify the command's
    position in the source; ``where`` says where the command is (for messages)."""

    def __init__(self, db: int, token: bytes, *, limit: int, temp_keys: bool, where: str,
                 max_bulk: int = MAX_BULK) -> None:  # fmt: skip
        self.db = db
        self.token = token
        self.limit = limit
        self.temp_keys = temp_keys
        self.where = where
        self.max_bulk = max_bulk
        self.key: bytes | None = None  # routing key (the command's first key)
        self.temps: list[tuple[bytes, int]] = []  # (temporary key, length) per long argument
        self._started = False  # the current temporary key got its SET
        self._mem: list[bytearray] | None = None  # reassembled in memory instead
        self._mem_bytes = 0

    def _name(self, argv: list) -> bytes:
        return (argv[0] or b"?").lower() if argv else b"?"

    def _fail(self, argv: list, what: str) -> BigCommandError:
        name = self._name(argv).decode("ascii", "replace").upper()
        key = argv[1] if len(argv) > 1 else None
        return BigCommandError(f"{self.where}: command {name} (key {_show(key)}): {what}")

    def arg(self, ev: BigArg) -> None:
        """A long argument starts (checked against the target's limit)."""
        argv = ev.argv
        if ev.length > self.limit:
            raise self._fail(
                argv,
                f"argument {ev.index + 1} is {ev.length} bytes, more than the target accepts "
                f"(proto-max-bulk-len {self.limit}); raise proto-max-bulk-len on the target "
                "or filter this key out"
                + ("; a length this large may also be damaged input" if ev.length > self.max_bulk
                   else ""),
            )
        if ev.index == 0:
            raise self._fail(argv, f"a command name of {ev.length} bytes (corrupt input?)")
        name = self._name(argv)
        if name in _REFUSED:
            raise self._fail(argv, f"an argument of {ev.length} bytes (corrupt input?)")
        if self._mem is None and (not self.temp_keys or name in _NOSCRIPT):
            self._mem = []
        if self._mem is not None:
            self._mem_bytes += ev.length
            if self._mem_bytes > self.max_bulk:
                how = ("a script cannot run it" if self.temp_keys else
                       "the target is a file or a transform needs the real command")  # fmt: skip
                raise self._fail(
                    argv,
                    f"{self._mem_bytes} bytes of long arguments do not fit in memory (at most "
                    f"{self.max_bulk} bytes are held; {how})",
                )
            self._mem.append(bytearray())
            return
        if self.key is None:
            # the command's first key decides the cluster slot of the temporary keys
            probe = list(argv) + [b""] * (ev.argc - len(argv))
            idx = command_info(probe).key_indexes
            if idx and idx[0] >= ev.index:
                raise self._fail(argv, f"its key is (or follows) an argument of {ev.length} bytes")
            self.key = argv[idx[0]] if idx else b""
        tag = temp_key_tag(key_slot(self.key))
        tmp = b"{%s}redshake:tmp:%s:%d" % (tag, self.token, len(self.temps))
        self.temps.append((tmp, ev.length))
        self._started = False

    def piece(self, data: bytes) -> Entry | None:
        """A piece of the current long argument: the entry writing it (None: kept)."""
        if self._mem is not None:
            self._mem[-1] += data
            return None
        tmp = self.temps[-1][0]
        op = b"APPEND" if self._started else b"SET"
        self._started = True
        return Entry(self.db, [op, tmp, data], tmp)

    def finish(self, argv: list, offset: int) -> Entry:
        """The command is complete (``argv`` with None for each long argument)."""
        for i, a in enumerate(argv):
            if a is not None and len(a) > self.limit:
                raise self._fail(
                    argv,
                    f"argument {i + 1} is {len(a)} bytes, more than the target accepts "
                    f"(proto-max-bulk-len {self.limit})",
                )
        if not self.temps and self._mem is None:  # long, but no argument over PIECE
            return Entry(self.db, argv, None, offset)
        if self._mem is not None:
            it = iter(self._mem)
            full = [bytes(next(it)) if a is None else a for a in argv]
            self._mem = None
            return Entry(self.db, full, None, offset)
        info = command_info([b"" if a is None else a for a in argv])
        keyset = set(info.key_indexes)
        keys: list[bytes] = []
        vals: list[bytes] = []
        pat = bytearray()
        temps = iter(self.temps)
        for i, a in enumerate(argv):
            if a is None:
                pat += b"t"
                vals.append(b"%d" % next(temps)[1])
            elif i in keyset:
                pat += b"k"
                keys.append(a)
            else:
                pat += b"a"
                vals.append(a)
        tmps = [t for t, _ in self.temps]
        ev = [b"EVAL", SCRIPT, b"%d" % (len(keys) + len(tmps)), *keys, *tmps, bytes(pat), *vals]
        return Entry(self.db, ev, self.key if self.key else None, offset)


def live_command(reader, ep, start: int, db: int) -> Iterator[list[Entry]]:
    """The live stream's command starting after offset ``start``, too long for the fast
    parser: read from the spool in pieces, each long argument's pieces handed over as they
    come. Returns (entry, offset after the command), or None when stopped, rewound or the
    epoch changed (the command is then redone from its start)."""
    spool = reader.spool
    cond = spool.cond
    link = reader.link
    stop = reader.ctx.stop
    limit, temp_keys = limits(reader.ctx)
    max_bulk = max(limit, MAX_BULK)
    parser = AofParser(start, big_arg=PIECE, max_bulk=max_bulk)
    cmd = BigCommand(db, b"r%d" % start, limit=limit, temp_keys=temp_keys, max_bulk=max_bulk,
                     where=f"[{reader.name}] replication stream at offset {start}")  # fmt: skip
    pos = start
    while True:
        if stop() or link.epoch is not ep:
            return None
        chunk = spool.read_stream(ep.num, pos, PIECE)
        if not chunk:
            with cond:
                if ep.received == pos and link.epoch is ep and not stop():
                    cond.wait(0.05)
            yield []
            if reader._rewind:
                return None
            continue
        pos += len(chunk)
        try:
            parser.feed(chunk)
            for item, end in parser.items():
                t = item.__class__
                if t is list:
                    return cmd.finish(item, end), end
                if t is BigArg:
                    cmd.arg(item)
                elif t is bytes:
                    e = cmd.piece(item)
                    if e is not None:
                        yield [e]
                        yield PIECE_DONE
                        if reader._rewind:
                            return None
                else:
                    raise BigCommandError(f"unexpected {item!r} in the replication stream at {end}")
        except AofError as e:  # e.g. a bulk length over any sane limit
            raise BigCommandError(f"[{reader.name}] replication stream: {e}") from None
