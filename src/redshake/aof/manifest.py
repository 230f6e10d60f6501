"""Redis 7+ / Valkey multi-part AOF manifest (``appendonly.aof.manifest``).

One file per line: ``file <name> seq <n> type <b|h|i>`` plus possibly more key/value pairs
(ignored, for forward compatibility). Tokens are split like command arguments
(``sdssplitargs``): names with spaces or special characters are quoted. Lines starting
with ``#`` are comments. Load order: the BASE file (type ``b``, at most one), then every
INCR file (type ``i``) in manifest order; HISTORY files (type ``h``) are never loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "parse_manifest",
    "read_manifest",
    "split_args",
]

MAX_LINE = 1024


class ManifestError(ValueError):
    pass


@dataclass
class ManifestEntry:
    name: str
    seq: int
    type: str  # "b", "i" or "h"


@dataclass
class Manifest:
    base: ManifestEntry | None = None
    incrs: list[ManifestEntry] = field(default_factory=list)
    history: list[ManifestEntry] = field(default_factory=list)

    def load_order(self) -> list[ManifestEntry]:
        return ([self.base] if self.base else []) + list(self.incrs)


_ESC = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a"}
_HEX = "0123456789abcdefABCDEF"


def split_args(line: str) -> list[str]:
    """Split a line into arguments the way the server's ``sdssplitargs`` does.

    Unquoted tokens end at whitespace; "double quotes" understand \\xHH, \\n, \\r, \\t, \\b,
    \\a and \\<any>; 'single quotes' understand \\'. A closing quote must be followed by
    whitespace or the end of the line. Raises ManifestError on unbalanced quotes."""
    out: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in " \n\r\t\v\f":
            i += 1
        if i >= n:
            return out
        cur: list[str] = []
        inq = insq = False
        while True:
            if inq:
                if i >= n:
                    raise ManifestError("unbalanced double quotes")
                c = line[i]
                if (
                    c == "\\"
                    and i + 3 < n
                    and line[i + 1] == "x"
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    cur.append(chr(int(line[i + 2 : i + 4], 16)))
                    i += 3
                elif c == "\\" and i + 1 < n:
                    i += 1
                    cur.append(_ESC.get(line[i], line[i]))
                elif c == '"':
                    if i + 1 < n and line[i + 1] not in " \n\r\t\v\f":
                        raise ManifestError("closing quote must be followed by a space")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif insq:
                if i >= n:
                    raise ManifestError("unbalanced single quotes")
                c = line[i]
                if c == "\\" and i + 1 < n and line[i + 1] == "'":
                    i += 1
                    cur.append("'")
                elif c == "'":
                    if i + 1 < n and line[i + 1] not in " \n\r\t\v\f":
                        raise ManifestError("closing quote must be followed by a space")
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in " \n\r\t\v\f":
                    break
                if c == '"':
                    inq = True
                elif c == "'":
                    insq = True
                else:
                    cur.append(c)
            i += 1
        out.append("".join(cur))


def parse_manifest(text: str | bytes, source: str = "manifest") -> Manifest:
    """Parse manifest text. Raises ManifestError with the line number on bad input."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    m = Manifest()
    last_incr = -1
    for no, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {no}"
        if len(raw) > MAX_LINE:
            raise ManifestError(f"{where}: line longer than {MAX_LINE} bytes")
        try:
            tokens = split_args(line)
        except ManifestError as e:
            raise ManifestError(f"{where}: {e}") from None
        if len(tokens) < 6 or len(tokens) % 2:
            raise ManifestError(
                f"{where}: expected 'file <name> seq <n> type <b|h|i>' (an even number of at "
                f"least 6 fields), got {len(tokens)} fields: {line!r}"
            )
        kv: dict[str, str] = {}
        for k, v in zip(tokens[::2], tokens[1::2], strict=True):
            kv.setdefault(k, v)  # unknown keys are ignored
        name, seq, typ = kv.get("file"), kv.get("seq"), kv.get("type")
        if name is None or seq is None or typ is None:
            raise ManifestError(f"{where}: 'file', 'seq' and 'type' are required: {line!r}")
        if not name or "/" in name or name in (".", ".."):
            raise ManifestError(
                f"{where}: invalid file name {name!r} (must be a plain name in the AOF directory)"
            )
        if not seq.isdigit():
            raise ManifestError(f"{where}: seq must be a number, got {seq!r}")
        entry = ManifestEntry(name, int(seq), typ)
        if typ == "b":
            if m.base is not None:
                raise ManifestError(
                    f"{where}: a second BASE file ({name!r}; first: {m.base.name!r})"
                )
            m.base = entry
        elif typ == "i":
            if entry.seq <= last_incr:
                raise ManifestError(
                    f"{where}: INCR file {name!r} has a non-increasing seq {entry.seq}"
                )
            last_incr = entry.seq
            m.incrs.append(entry)
        elif typ == "h":
            m.history.append(entry)
        else:
            raise ManifestError(f"{where}: unknown AOF file type {typ!r} (expected b, h or i)")
    if m.base is None and not m.incrs:
        raise ManifestError(f"{source}: no BASE or INCR file listed")
    return m


def read_manifest(path: Path) -> Manifest:
    return parse_manifest(path.read_bytes(), str(path))
