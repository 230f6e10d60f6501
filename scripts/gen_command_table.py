#!/usr/bin/env python3
"""Generate src/redshake/commands/table.py from real servers.

Starts Valkey 9.1 and Redis 7.0 (and a sentinel, for the SENTINEL group) with the test
helpers, reads ``COMMAND DOCS`` (groups) and ``COMMAND INFO`` (arity, key specs, the
subcommands of container commands) and writes the union as Python data. Where both
servers know a command, the newer server's (Valkey 9.1) definition wins.

    python3 scripts/gen_command_table.py            # writes the table
    python3 scripts/gen_command_table.py --check    # exits 1 if the committed table differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import servers  # noqa: E402
from redshake.resp.conn import connect  # noqa: E402

OUT = ROOT / "src" / "redshake" / "commands" / "table.py"
SOURCES = ("valkey-9.1", "redis-7.0")  # first = preferred definition


def _map(flat: list[Any]) -> dict[str, Any]:
    return {
        (k.decode() if isinstance(k, bytes) else k): v for k, v in zip(flat[::2], flat[1::2], strict=False)
    }


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def group_name(server_group: str) -> str:
    """Server group ('sorted-set') -> RedisShake's group name ('SORTED_SET')."""
    return server_group.upper().replace("-", "_")


def _spec(raw: list[Any]) -> tuple:
    m = _map(raw)
    bs = _map(m["begin_search"])
    fk = _map(m["find_keys"])
    bss = _map(bs["spec"]) if bs.get("spec") else {}
    fks = _map(fk["spec"]) if fk.get("spec") else {}
    flags = tuple(sorted(_s(f) for f in m.get("flags", [])))
    bt, ft = _s(bs["type"]), _s(fk["type"])
    if bt == "index":
        b = ("index", int(bss["index"]), 0)
    elif bt == "keyword":
        b = ("keyword", _s(bss["keyword"]).upper(), int(bss["startfrom"]))
    else:
        b = ("unknown", 0, 0)
    if ft == "range":
        f = ("range", int(fks["lastkey"]), int(fks["keystep"]), int(fks["limit"]))
    elif ft == "keynum":
        f = ("keynum", int(fks["keynumidx"]), int(fks["firstkey"]), int(fks["keystep"]))
    else:
        f = ("unknown", 0, 0, 0)
    return (*b, *f, "INCOMPLETE" in flags)


def _collect(conn, groups: dict[str, str], out: dict[str, tuple], only_group: str | None) -> set[str]:
    docs = conn.call("COMMAND", "DOCS")
    containers: set[str] = set()

    def walk_docs(name: str, doc: dict[str, Any]) -> None:
        groups[name] = group_name(_s(doc.get("group", "unknown")))
        subs = doc.get("subcommands")
        if subs:
            sm = _map(subs)
            for sub, sdoc in sm.items():
                walk_docs(sub.replace("|", "-").upper(), _map(sdoc))

    for name, doc in _map(docs).items():
        walk_docs(name.upper(), _map(doc))

    def walk_info(info: list[Any]) -> None:
        name = _s(info[0]).replace("|", "-").upper()
        arity = int(info[1])
        specs = tuple(_spec(s) for s in info[8]) if len(info) > 8 else ()
        subs = info[9] if len(info) > 9 else []
        group = groups.get(name, "unknown")
        if only_group is None or group == only_group:
            if subs:
                containers.add(name)
            out[name] = (group, arity, specs)
        for sub in subs:
            walk_info(sub)

    for info in conn.call("COMMAND"):
        walk_info(info)
    return containers


def collect() -> tuple[dict[str, tuple], set[str], list[str]]:
    table: dict[str, tuple] = {}
    containers: set[str] = set()
    versions = []
    for name in SOURCES:
        srv = servers.start_server(name)
        try:
            versions.append(f"{name.split('-')[0]} {'.'.join(map(str, srv.version))}")
            found: dict[str, tuple] = {}
            with connect(srv.address) as c:
                containers |= _collect(c, {}, found, None)
            for k, v in found.items():
                table.setdefault(k, v)
            if name == SOURCES[0]:
                sen = servers.start_sentinel(srv, name=name)
                try:
                    found = {}
                    with connect(sen.address) as c:
                        containers |= _collect(c, {}, found, "SENTINEL")
                    for k, v in found.items():
                        table.setdefault(k, v)
                finally:
                    sen.cleanup()
        finally:
            srv.cleanup()
    return table, containers, versions


def render(table: dict[str, tuple], containers: set[str], versions: list[str]) -> str:
    lines = [
        '"""Command table: name -> (group, arity, key specs). GENERATED, do not edit by hand.',
        "",
        f"Source: COMMAND DOCS / COMMAND INFO of {', '.join(versions)} (and a sentinel),",
        "union, the first server's definition winning. Regenerate with",
        "",
        "    python3 scripts/gen_command_table.py",
        "",
        "Key spec tuple: (begin_type, begin_a, begin_b, find_type, f1, f2, f3, incomplete)",
        '  begin: ("index", position, 0) | ("keyword", KEYWORD, startfrom) | ("unknown", 0, 0)',
        '  find:  ("range", lastkey, keystep, limit) | ("keynum", keynumidx, firstkey, keystep)',
        '         | ("unknown", 0, 0, 0)',
        'Container commands (with subcommands) are listed in CONTAINERS; their subcommands are',
        'keyed "CONTAINER-SUB" (e.g. "XGROUP-CREATE").',
        '"""',
        "",
        "# fmt: off",
        "COMMANDS: dict[str, tuple[str, int, tuple[tuple, ...]]] = {",
    ]
    for name in sorted(table):
        group, arity, specs = table[name]
        lines.append(f"    {name!r}: ({group!r}, {arity}, {specs!r}),")
    lines.append("}")
    lines.append("")
    lines.append("CONTAINERS: frozenset[str] = frozenset({")
    for name in sorted(containers):
        lines.append(f"    {name!r},")
    lines.append("})")
    lines.append("# fmt: on")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed table")
    args = ap.parse_args()
    table, containers, versions = collect()
    text = render(table, containers, versions)
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print("table is up to date" if same else "table differs: regenerate it")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(table)} commands, {len(containers)} containers)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        servers.kill_all()
