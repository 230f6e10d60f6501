"""[file_writer]: cmd / aof / json output from the rdb and aof readers, replayed into real
servers (redis-cli --pipe, redis-cli line mode, or loaded by the server as an AOF)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import redshake.commands
from datagen import populate
from helpers import TESTDATA, assert_same_data, run_redshake, write_config
from redshake.commands.slots import key_slot
from redshake.resp.encode import encode

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def export(
    tmp: Path, reader: str, filepath: Path, out_type: str, **advanced
) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp / f"out.{out_type}"
    cfg = write_config(
        tmp / f"export-{out_type}.toml",
        {
            f"{reader}_reader": {"filepath": str(filepath)},
            "file_writer": {"filepath": str(out), "type": out_type},
            "advanced": {"dir": str(tmp / "work"), "log_interval": 0, **advanced},
        },
    )
    return out, run_redshake(cfg)


def pipe(server, data: bytes) -> str:
    r = subprocess.run(
        [REDIS_CLI, "-h", server.host, "-p", str(server.port), "--pipe"],
        input=data,
        capture_output=True,
        timeout=120,
    )
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0 and "errors: 0" in out, out + r.stderr.decode(errors="replace")
    return out


def lines_mode(server, data: bytes) -> None:
    r = subprocess.run(
        [REDIS_CLI, "-h", server.host, "-p", str(server.port)],
        input=data,
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert b"ERR" not in r.stdout, r.stdout[-2000:]


def saved_source(servers, name: str, **kw):
    src = servers.start(name)
    populate(src.client(), src.version, src.is_valkey, big=False, **kw)
    src.client().save()
    return src


@pytest.mark.parametrize("name", ["redis-7.0", "valkey-9.1"])
def test_aof_output_replayed_with_pipe(name, servers, tmp_path):
    src = saved_source(servers, name, hfe=src_hfe(name))
    out, r = export(tmp_path, "rdb", src.dir / "dump.rdb", "aof")
    assert r.returncode == 0, r.stdout[-3000:]
    data = out.read_bytes()
    assert data.startswith(encode([b"SELECT", b"0"]))
    assert encode([b"SELECT", b"3"]) in data  # datagen fills db 0 and db 3
    assert b"RESTORE" in data
    dst = servers.start(name)
    pipe(dst, data)
    assert_same_data(src, dst)


def src_hfe(name: str) -> bool:
    return name.startswith("valkey-9")


def test_aof_output_loaded_as_aof_by_server(servers, tmp_path):
    src = saved_source(servers, "redis-7.0")
    out, r = export(tmp_path, "rdb", src.dir / "dump.rdb", "aof")
    assert r.returncode == 0, r.stdout[-3000:]
    d = tmp_path / "aofdir"
    d.mkdir()
    shutil.copy(out, d / "appendonly.aof")
    dst = servers.start("valkey-8.1", dir=d, args=["--appendonly", "yes"])
    assert_same_data(src, dst)


def test_cmd_output_one_line_per_entry_and_replays(servers, tmp_path):
    src = servers.start("redis-7.0")
    populate(src.client(), src.version, src.is_valkey, big=False, functions=False)
    c1 = src.client(1)
    c1.set(b"multi\nline key", b"a\r\nb\n\x00\xff\"' \\")
    c1.rpush(b"l", b"", b"\n", b"x y")
    src.client().save()
    out, r = export(tmp_path, "rdb", src.dir / "dump.rdb", "cmd")
    assert r.returncode == 0, r.stdout[-3000:]
    data = out.read_bytes()
    lines = data.split(b"\n")
    assert lines[-1] == b""
    selects = [ln for ln in lines if ln.startswith(b"SELECT ")]
    assert selects == [b"SELECT 0", b"SELECT 1", b"SELECT 3"]
    n_entries = int(r.stdout.split("file_writer: ")[1].split(" entries")[0])
    assert len(lines) - 1 == n_entries + len(selects)
    assert b'SET "multi\\nline key" "a\\r\\nb\\n\\x00\\xff\\"\' \\\\"' in lines
    assert b"RESTORE" not in data  # plain, readable commands
    assert all(b"\r" not in ln for ln in lines)
    dst = servers.start("redis-7.0")
    lines_mode(dst, data)
    assert_same_data(src, dst)


def test_json_fields(servers, tmp_path):
    src = servers.start("redis-7.0")
    c = src.client(2)
    c.set(b"s", b"text")
    c.set(b"bin", b"\xff\x00")
    c.hset(b"h", mapping={b"f": b"v"})
    src.client().save()
    out, r = export(tmp_path, "rdb", src.dir / "dump.rdb", "json")
    assert r.returncode == 0, r.stdout[-3000:]
    objs = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    fields = {"DbId", "Argv", "CmdName", "Group", "Keys", "KeyIndexes", "Slots", "SerializedSize"}
    assert all(fields <= set(o) for o in objs)
    by_key = {o["Argv"][1]: o for o in objs}
    s = by_key["s"]
    assert s["DbId"] == 2 and s["Argv"] == ["SET", "s", "text"] and s["CmdName"] == "SET"
    assert s["Keys"] == ["s"] and s["Slots"] == [key_slot(b"s")]
    assert s["SerializedSize"] == len(encode([b"SET", b"s", b"text"]))
    assert s["KeyIndexes"] == [1]  # 0-based positions in Argv
    if hasattr(redshake.commands, "command_info"):  # the command table
        assert s["Group"] == "STRING" and h_group(objs) == "HASH"
    h = by_key["h"]
    assert h["Argv"][0] == "HSET" and h["Keys"] == ["h"]
    b = by_key["bin"]
    assert "ArgvBase64" in b and base64.b64decode(b["ArgvBase64"][2]) == b"\xff\x00"
    assert "ArgvBase64" not in s


def test_aof_reader_to_file_keeps_dbs(servers, tmp_path):
    """aof_reader -> aof file -> redis-cli --pipe equals aof_reader -> server directly."""
    f = TESTDATA / "aof" / "redis-replicator" / "appendonly5.aof"
    out, r = export(tmp_path, "aof", f, "aof")
    assert r.returncode == 0, r.stdout[-3000:]
    piped = servers.start("redis-7.0")
    pipe(piped, out.read_bytes())
    direct = servers.start("redis-7.0")
    cfg = write_config(
        tmp_path / "direct.toml",
        {
            "aof_reader": {"filepath": str(f)},
            "redis_writer": {"address": direct.address},
            "advanced": {"dir": str(tmp_path / "work2"), "log_interval": 0},
        },
    )
    r = run_redshake(cfg)
    assert r.returncode == 0, r.stdout[-3000:]
    assert len(piped.client().info("keyspace")) >= 2  # several databases
    assert_same_data(direct, piped)


def test_empty_db_before_sync_refused(tmp_path):
    rdb = TESTDATA / "aof" / "redisshake" / "appendonlydir" / "appendonly.aof.2.base.rdb"
    out, r = export(tmp_path, "rdb", rdb, "cmd", empty_db_before_sync=True)
    assert r.returncode != 0
    assert "empty_db_before_sync" in r.stdout + r.stderr


def h_group(objs: list[dict]) -> str:
    return next(o["Group"] for o in objs if o["Argv"][:2] == ["HSET", "h"])
