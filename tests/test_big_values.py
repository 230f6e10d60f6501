"""Values bigger than the streaming threshold are never held whole: a long raw string is
written as SET + APPEND pieces, and redshake's memory stays far below the value's size."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import assert_same_data, wait_with_peak_rss, write_config
from redshake.rdb import records as R
from redshake.rdb.parser import RdbParser

SIZE = 64 << 20


def _source_with_big_string(servers):
    src = servers.start("redis-7.0")
    c = src.client()
    c.config_set("proto-max-bulk-len", str(1 << 30))
    big = os.urandom(SIZE)  # incompressible: stored raw, not LZF
    c.set(b"big", big, px=3_600_000)
    c.execute_command("SELECT", 3)
    c.set(b"big3", big[: 20 << 20])
    c.set(b"small", b"x")
    c.execute_command("SELECT", 0)
    c.save()
    return src, big


def test_parser_streams_long_strings(servers):
    src, big = _source_with_big_string(servers)
    p = RdbParser(big_value_threshold=1 << 20)
    pieces: dict[bytes, list[bytes]] = {}
    cur = None
    with open(src.dir / "dump.rdb", "rb") as f:
        while chunk := f.read(256 * 1024):
            p.feed(chunk)
            for rec in p.records():
                if type(rec) is R.BigKeyStart:
                    assert rec.kind == "string"
                    cur = rec.key
                    pieces[cur] = []
                    assert rec.count == (SIZE if cur == b"big" else 20 << 20)
                elif type(rec) is R.BigKeyPart:
                    pieces[cur].extend(rec.items)
                    assert all(len(x) <= 1 << 20 for x in rec.items)
                elif type(rec) is R.KeyValue:
                    assert rec.key == b"small"
            assert len(p._buf) < 8 << 20  # never the whole value
    p.finish()
    assert b"".join(pieces[b"big"]) == big
    assert b"".join(pieces[b"big3"]) == big[: 20 << 20]


def test_restore_long_string_with_bounded_memory(servers, tmp_path):
    src, _big = _source_with_big_string(servers)
    dst = servers.start("redis-7.0")
    dst.client().config_set("proto-max-bulk-len", str(1 << 30))
    cfg = write_config(
        tmp_path / "shake.toml",
        {
            "rdb_reader": {"filepath": str(src.dir / "dump.rdb")},
            "redis_writer": {"address": dst.address},
            "advanced": {"dir": str(tmp_path / "w"), "log_interval": 0},
        },
    )
    out_path = tmp_path / "out.txt"
    with open(out_path, "w") as out_f:
        p = subprocess.Popen([sys.executable, "-m", "redshake.cli", str(cfg)], stdout=out_f,
                             stderr=subprocess.STDOUT)  # fmt: skip
        code, peak = wait_with_peak_rss(p)
    out = out_path.read_text()
    assert code == 0, out[-3000:]
    assert "commands_streamed=2" in out, out[-2000:]
    assert_same_data(src, dst)
    assert 0 < peak < SIZE, f"peak RSS {peak / 1e6:.0f} MB for a {SIZE >> 20} MiB value"
