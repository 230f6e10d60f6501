"""Hand-written supplement to the generated table: module commands RedisShake knows.

These modules are not loaded in the servers the table is generated from, so their entries
are written here. Every command below takes its key at argv[1] unless it has an explicit
key spec. Same tuple layout as ``table.COMMANDS``.
"""

from __future__ import annotations

_FIRST = (("index", 1, 0, "range", 0, 1, 0, False),)
# EXZUNIONSTORE dest numkeys key [key ...]
_DEST_NUMKEYS = (("index", 1, 0, "range", 0, 1, 0, False), ("index", 2, 0, "keynum", 0, 1, 1, False))
# EXZUNION numkeys key [key ...]
_NUMKEYS = (("index", 1, 0, "keynum", 0, 1, 1, False),)

_TAIRHASH = """
EXHSET EXHGET EXHMSET EXHMSETWITHOPTS EXHPEXPIREAT EXHPEXPIRE EXHEXPIREAT EXHEXPIRE EXHPTTL
EXHTTL EXHVER EXHSETVER EXHINCRBY EXHINCRBYFLOAT EXHGETWITHVER EXHMGET EXHMGETWITHVER EXHDEL
EXHDELWITHVER EXHLEN EXHEXISTS EXHSTRLEN EXHKEYS EXHVALS EXHGETALL EXHSCAN EXHPERSIST
EXHSETNX EXHSETEX EXHRANDFIELD
"""
_TAIRSTRING = """
EXSET EXGET EXSETVER EXINCRBY EXINCRBYFLOAT EXCAS EXCAD EXAPPEND EXPREPEND EXGAE
"""
_TAIRZSET = """
EXZADD EXZINCRBY EXZSCORE EXZMSCORE EXZRANGE EXZREVRANGE EXZRANGEBYSCORE EXZREVRANGEBYSCORE
EXZRANGEBYLEX EXZREVRANGEBYLEX EXZREM EXZREMRANGEBYSCORE EXZREMRANGEBYRANK EXZREMRANGEBYLEX
EXZCARD EXZRANK EXZREVRANK EXZCOUNT EXZLEXCOUNT EXZRANKBYSCORE EXZREVRANKBYSCORE EXZRANDMEMBER
EXZSCAN
"""
_BLOOM = """
BF.RESERVE BF.ADD BF.MADD BF.INSERT BF.EXISTS BF.MEXISTS BF.SCANDUMP BF.LOADCHUNK BF.INFO
BF.CARD
"""


def _build() -> dict[str, tuple[str, int, tuple[tuple, ...]]]:
    out: dict[str, tuple[str, int, tuple[tuple, ...]]] = {}
    for group, names in (
        ("TAIRHASH", _TAIRHASH),
        ("TAIRSTRING", _TAIRSTRING),
        ("TAIRZSET", _TAIRZSET),
        ("BLOOM FILTER", _BLOOM),
    ):
        for name in names.split():
            out[name] = (group, -2, _FIRST)
    for name in ("EXZUNIONSTORE", "EXZINTERSTORE", "EXZDIFFSTORE"):
        out[name] = ("TAIRZSET", -4, _DEST_NUMKEYS)
    for name in ("EXZUNION", "EXZINTER", "EXZDIFF"):
        out[name] = ("TAIRZSET", -3, _NUMKEYS)
    return out


MODULE_COMMANDS = _build()
