"""Corrupt RDB files are refused before anything is written (exit 2, target empty) or restored
whole: mutated corpus files (tests/rdbfuzz.py; bench/fuzz_rdb.py runs many more, each through
the CLI). Most inputs go through the pre-write check in-process; a sample runs the real CLI
against a real server."""

from __future__ import annotations

import struct

from helpers import TESTDATA, assert_same_data, manifest, restore_file
from rdbfuzz import cases, judge, record_offsets
from redshake.rdb import records as R
from redshake.rdb.parser import RdbParser
from redshake.rdb.primitives import RdbError, crc64
from redshake.readers.rdb_reader import check_rdb_file
from servers import start_server

OK = ("ok-restored", "ok-refused")


def test_fuzz_prewrite_check_in_process(tmp_path):
    """300 mutated files: the check raises nothing but RdbError; a stale checksum and an
    unknown type byte are always refused, whatever the checksum says."""
    f = tmp_path / "x.rdb"
    refused = passed = 0
    for case in cases(300, seed=11):
        f.write_bytes(case.data)
        try:
            check_rdb_file(f)
        except RdbError:
            refused += 1
            continue
        passed += 1
        assert case.what != "type", f"unknown type byte accepted: {case.name}"
        assert case.crc != "stale", f"stale checksum accepted: {case.name}"
    assert refused and passed


def test_fuzz_cli_sample(servers, tmp_path):
    """Files without a checksum to vouch for them (RDB < 5 or a zeroed CRC) and unknown type
    bytes under a valid CRC, through the CLI: restored equal to a native load, or refused
    with nothing written."""
    target = servers.start("redis-7.0")
    sample = [c for c in cases(400, seed=5) if c.crc in ("none", "zero") or c.what == "type"][:16]
    results = {c.name: judge(c, target, tmp_path, "redis-7.0", start_server, assert_same_data)
               for c in sample}  # fmt: skip
    bad = {k: v for k, v in results.items() if v not in OK}
    assert not bad, bad
    assert set(results.values()) == set(OK)  # both outcomes were exercised


def test_old_rdb_corrupt_ziplist_writes_nothing(servers, tmp_path):
    """RDB 2 (no checksum), 43 keys, the tail offset of the last ziplist changed: exit 2 and
    nothing written (the lenient decoder accepted it, the target refused it: 42 keys, exit 1)."""
    data = bytearray((TESTDATA / "rdb/redis-rdb-tools/parser_filters.rdb").read_bytes())
    p = RdbParser()
    p.feed(bytes(data))
    last = None
    for rec in p.records():
        if type(rec) is R.KeyValue and rec.type in (10, 12, 13) and rec.raw[0] < 0x40:
            at = rec.offset + 2 + len(rec.key)  # type byte, key length, key
            assert data[at : at + len(rec.raw)] == rec.raw
            last = at + 1 + 4  # the blob's zltail
    assert last is not None
    data[last : last + 4] = struct.pack("<I", 0xFFFF)
    bad = tmp_path / "bad.rdb"
    bad.write_bytes(data)
    target = servers.start("redis-7.0")
    r = restore_file(bad, target, tmp_path)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
    assert target.client().dbsize() == 0


def test_unknown_type_byte_under_valid_crc_writes_nothing(servers, tmp_path):
    """A type byte no server knows in the last record of a file whose CRC64 is valid."""
    src = servers.start("redis-7.0")
    c = src.client()
    for i in range(40):
        c.set(f"k{i}", "v" * i)
    c.rpush("zl", *range(10))
    c.save()
    data = bytearray((src.dir / "dump.rdb").read_bytes())
    data[record_offsets(bytes(data))[-1]] = 0x42
    data[-8:] = struct.pack("<Q", crc64(bytes(data[:-8])))
    bad = tmp_path / "bad.rdb"
    bad.write_bytes(data)
    target = servers.start("redis-7.0")
    r = restore_file(bad, target, tmp_path)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "unknown" in (r.stdout + r.stderr).lower()
    assert target.client().dbsize() == 0


def test_strict_check_accepts_every_real_file(tmp_path):
    """No false refusals: every corpus file a server loads passes the check, also with its
    CRC64 zeroed (which makes it decode and deep-check every value)."""
    z = tmp_path / "z.rdb"
    n = 0
    for f in manifest():
        if f.get("kind") != "rdb" or f.get("intentionally_corrupt", "no") != "no":
            continue
        if not any(v.get("loaded") for v in f.get("load_observed", {}).values()):
            continue
        path = TESTDATA / f["path"]
        check_rdb_file(path)
        data = bytearray(path.read_bytes())
        if f["rdb"]["version"] >= 5 and len(data) >= 18 and data[-9] == 0xFF:
            data[-8:] = bytes(8)
            z.write_bytes(data)
            assert check_rdb_file(z) == "full parse"
            n += 1
    assert n > 20


def _fake_master(rdb: bytes):
    """A TCP server that acts as a Redis 7.0 master sending ``rdb`` as its snapshot (then
    nothing): answers PING / INFO / REPLCONF / PSYNC; returns (port, stop)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    halt = threading.Event()

    def serve(c: socket.socket) -> None:
        buf = b""
        c.settimeout(0.2)
        while not halt.is_set():
            try:
                data = c.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            while buf.startswith(b"*") and b"\r\n" in buf:
                parts, p = [], buf.index(b"\r\n") + 2
                n = int(buf[1 : p - 2])
                try:
                    for _ in range(n):
                        e = buf.index(b"\r\n", p)
                        ln = int(buf[p + 1 : e])
                        parts.append(buf[e + 2 : e + 2 + ln])
                        if len(buf) < e + 4 + ln:
                            raise ValueError
                        p = e + 4 + ln
                except ValueError:
                    break
                buf = buf[p:]
                cmd = parts[0].upper()
                if cmd == b"PING":
                    c.sendall(b"+PONG\r\n")
                elif cmd == b"INFO":
                    body = b"# Server\r\nredis_version:7.0.15\r\n"
                    c.sendall(b"$%d\r\n%s\r\n" % (len(body), body))
                elif cmd == b"PSYNC":
                    c.sendall(b"+FULLRESYNC " + b"a" * 40 + b" 0\r\n$%d\r\n" % len(rdb) + rdb)
                else:
                    c.sendall(b"+OK\r\n")

    def accept() -> None:
        while not halt.is_set():
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(c,), daemon=True).start()
        srv.close()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1], halt.set


def test_corrupt_sync_snapshot_reports_clearly(servers, tmp_path):
    """A snapshot with an unknown type byte, from the wire: the sync reader parses while it
    receives, so the keys before it are written; the run stops with exit 1 and a message with
    what and where (byte offset), no traceback."""
    import subprocess
    import sys

    from helpers import write_config

    src = servers.start("redis-7.0")
    c = src.client()
    for i in range(20):
        c.set(f"k{i}", "v")
    c.save()
    data = bytearray((src.dir / "dump.rdb").read_bytes())
    data[record_offsets(bytes(data))[-1]] = 0x42
    data[-8:] = struct.pack("<Q", crc64(bytes(data[:-8])))
    port, stop = _fake_master(bytes(data))
    dst = servers.start("redis-7.0")
    cfg = write_config(tmp_path / "shake.toml", {
        "sync_reader": {"address": f"127.0.0.1:{port}"},
        "redis_writer": {"address": dst.address},
        "advanced": {"dir": str(tmp_path / "work"), "log_interval": 0},
    })  # fmt: skip
    try:
        r = subprocess.run([sys.executable, "-m", "redshake.cli", str(cfg)], cwd=str(tmp_path),
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        stop()
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "Traceback" not in out
    assert "cannot continue: unknown value type 66" in out and "byte offset" in out, out[-3000:]
