"""Hand-written supplement to the generated table: commands of servers newer than the ones
the table is generated from (Redis 8.x; its vector sets, a module built into Redis 8).

Key specs are taken from the commands' published definitions (Redis ``src/commands/*.json``
for XACKDEL, XDELEX, DELEX, MSETEX) or, for the vector set commands (registered through the
module API, key at argv[1]), from their documented syntax. Same tuple layout as
``table.COMMANDS``; the generated table wins for a name it has.
"""

from __future__ import annotations

_FIRST = (("index", 1, 0, "range", 0, 1, 0, False),)

NEWER_COMMANDS: dict[str, tuple[str, int, tuple[tuple, ...]]] = {
    # Redis 8.2: XDELEX key [KEEPREF|DELREF|ACKED] IDS n id...; XACKDEL key group ... IDS n id...
    "XDELEX": ("STREAM", -5, _FIRST),
    "XACKDEL": ("STREAM", -6, _FIRST),
    # Redis 8.4: DELEX key IFEQ|IFNE|IFDEQ|IFDNE v; DIGEST key;
    # MSETEX numkeys key value [key value ...] [NX|XX] [EX|PX|EXAT|PXAT|KEEPTTL]
    "DELEX": ("STRING", 4, _FIRST),
    "DIGEST": ("STRING", 2, _FIRST),
    "MSETEX": ("STRING", -4, (("index", 1, 0, "keynum", 0, 1, 2, False),)),
    # Redis 8.6: stream idempotent-producer settings
    "XCFGSET": ("STREAM", -2, _FIRST),
}
# Redis 8 vector sets: every command takes the key at argv[1]
for _name, _arity in (
    ("VADD", -5), ("VREM", 3), ("VSETATTR", 4), ("VCARD", 2), ("VDIM", 2), ("VEMB", -3),
    ("VGETATTR", 3), ("VINFO", 2), ("VLINKS", -3), ("VRANDMEMBER", -2), ("VSIM", -4),
    ("VISMEMBER", 3), ("VRANGE", -4),
):  # fmt: skip
    NEWER_COMMANDS[_name] = ("VECTOR_SET", _arity, _FIRST)
