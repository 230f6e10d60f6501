"""Mutated RDB files for the corrupt-input tests and ``bench/fuzz_rdb.py``: corpus files with
one changed byte (anywhere, or a record's type byte set to one no server knows), their CRC64
recomputed, zeroed or left stale; and the judge of one restore of such a file.

The rule being checked: a file is either restored whole (exit 0, the target equal to a server
that loaded the same file natively) or refused before anything is written (exit 2, the target
empty). Exit 1 (a failure after writing started) must never happen for a file input."""

from __future__ import annotations

import random
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis

from helpers import TESTDATA, manifest, run_redshake, write_config
from redshake.rdb import records as R
from redshake.rdb.parser import RdbParser
from redshake.rdb.primitives import RdbError, crc64, read_length

# Type bytes no Redis or Valkey version uses for a value or an opcode.
UNKNOWN_TYPES = bytes(range(26, 0xF0))


def corpus(server: str = "redis-7.0") -> list[Path]:
    """Corpus RDB files, not corrupt on purpose, that ``server`` loads natively."""
    out = []
    for f in manifest():
        if f.get("kind") != "rdb" or f.get("intentionally_corrupt", "no") != "no":
            continue
        seen = f.get("load_observed", {})
        if not any(k.startswith(server) and v.get("loaded") for k, v in seen.items()):
            continue
        if f["size"] > 200_000:
            continue
        out.append(TESTDATA / f["path"])
    return sorted(out)


def _version(data: bytes) -> int:
    return int(data[6:9]) if data.startswith(b"VALKEY") else int(data[5:9])


def record_offsets(data: bytes) -> list[int]:
    """Offsets of the type byte of each key record (after any EXPIRE/IDLE/FREQ opcodes)."""
    p = RdbParser()
    p.feed(data)
    out = []
    try:
        for rec in p.records():
            if type(rec) is R.KeyValue:
                q = rec.offset
                while data[q] in (0xFC, 0xFD, 0xF8, 0xF9):  # expire ms / s, idle, freq
                    if data[q] == 0xF8:
                        q = read_length(data, q + 1)[1]
                    else:
                        q += {0xFC: 9, 0xFD: 5, 0xF9: 2}[data[q]]
                out.append(q)
    except RdbError:  # a value the parser cannot walk (e.g. a pre-GA module): the ones before
        pass
    return out


@dataclass
class Case:
    name: str
    data: bytes
    what: str  # "byte" or "type"
    crc: str  # "fixed", "zero", "stale" or "none" (no trailer: RDB < 5)


def mutate(src: Path, rnd: random.Random) -> Case:
    data = bytearray(src.read_bytes())
    version = _version(bytes(data))
    has_crc = version >= 5 and len(data) >= 18 and data[-9] == 0xFF
    body_end = len(data) - (8 if has_crc else 0)
    head = 9
    offsets = record_offsets(bytes(data)) if rnd.random() < 0.3 else []
    if offsets:
        at = rnd.choice(offsets)
        data[at] = rnd.choice(UNKNOWN_TYPES)
        what = "type"
    else:
        at = rnd.randrange(head, max(head + 1, body_end - 1))
        data[at] = (data[at] + rnd.randrange(1, 256)) & 0xFF
        what = "byte"
    if not has_crc:
        crc = "none"
    else:
        crc = rnd.choice(("fixed", "fixed", "zero", "stale"))
        if crc == "fixed":
            data[-8:] = struct.pack("<Q", crc64(bytes(data[:-8])))
        elif crc == "zero":
            data[-8:] = b"\0" * 8
    return Case(f"{src.name}@{at}:{what}:{crc}", bytes(data), what, crc)


def cases(n: int, seed: int, server: str = "redis-7.0") -> list[Case]:
    rnd = random.Random(seed)
    files = corpus(server)
    return [mutate(rnd.choice(files), rnd) for _ in range(n)]


def native_load(data: bytes, server: str, start_server):
    """A server started on the file, or None when it refuses to load it."""
    d = Path(tempfile.mkdtemp(prefix="redshake-fuzz-native-"))
    (d / "dump.rdb").write_bytes(data)
    try:
        return start_server(server, dir=d, timeout=20)
    except Exception:
        shutil.rmtree(d, ignore_errors=True)
        return None


def restore(rdb: Path, target, tmp: Path, verify: str):
    """The real CLI restoring ``rdb`` into ``target`` with ``[rdb_reader] verify``."""
    cfg = write_config(tmp / "shake.toml", {
        "rdb_reader": {"filepath": str(rdb), "verify": verify},
        "redis_writer": {"address": target.address},
        "advanced": {"dir": str(tmp / "work"), "log_interval": 0},
    })  # fmt: skip
    return run_redshake(cfg)


def _empty(target) -> None:
    """No keys and no function libraries (FLUSHALL keeps them): a library left by an earlier
    input would make loading the next one fail ("Function ... already exists")."""
    c = target.client()
    c.flushall()
    if target.version >= (7, 0, 0):
        c.function_flush()


def _libraries(target) -> list:
    return target.client().function_list() if target.version >= (7, 0, 0) else []


def judge(
    case: Case, target, tmp: Path, server: str, start_server, same_data, verify: str = "auto"
) -> str:
    """Restore ``case`` into the (empty) ``target`` with the real CLI and classify it:
    'ok-restored' / 'ok-refused' or a failure: 'traceback', 'partial' (exit 2 but keys
    written), 'exit1', 'exit0-differs', 'exit0-native-refuses', 'exit0-target-crashed' /
    'exit0-native-crashed' (reading a value back crashed that server), 'hang', 'exit<n>'."""
    import subprocess

    f = tmp / "fuzz.rdb"
    f.write_bytes(case.data)
    _empty(target)
    try:
        r = restore(f, target, tmp, verify)
    except subprocess.TimeoutExpired:
        return "hang"
    out = r.stdout + r.stderr
    if "Traceback" in out:
        return "traceback"
    nkeys = sum(target.client().info("keyspace").get(f"db{i}", {}).get("keys", 0) for i in range(16))
    nkeys += len(_libraries(target))  # a function library written before a refusal counts
    if r.returncode == 2:
        return "ok-refused" if nkeys == 0 else "partial"
    if r.returncode != 0:
        return f"exit{r.returncode}"
    native = native_load(case.data, server, start_server)
    if native is None:
        return "exit0-native-refuses"
    try:
        try:
            same_data(native, target)
        except AssertionError:
            return "exit0-differs"
        except redis.ConnectionError:  # reading a value crashed a server
            return "exit0-target-crashed" if not target.alive() else "exit0-native-crashed"
        return "ok-restored"
    finally:
        native.cleanup()
