"""Corrupt RDB files are refused before anything is written (exit 2, target empty) or restored
whole: mutated corpus files (tests/rdbfuzz.py; bench/fuzz_rdb.py runs many more, each through
the CLI). Most inputs go through the pre-write check in-process; a sample runs the real CLI
against a real server. Both ``[rdb_reader] verify`` modes are covered: "checksum" trusts the
values under a valid CRC64, "full" (and "auto" for small files) decodes and checks them."""

from __future__ import annotations

import struct

from helpers import TESTDATA, assert_same_data, manifest, restore_file
from rdbfuzz import cases, judge, record_offsets, restore
from redshake.rdb import records as R
from redshake.rdb.parser import RdbParser
from redshake.rdb.primitives import RdbError, crc64
from redshake.readers import rdb_reader
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
            check_rdb_file(f, verify="checksum")
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


def _passes(path, verify: str) -> bool:
    try:
        check_rdb_file(path, verify=verify)
    except RdbError:
        return False
    return True


def test_fuzz_full_verify_in_process(tmp_path):
    """400 mutated files checked with verify = "full": nothing but RdbError is raised; every
    file the default check refuses is refused, and under a recomputed (valid) CRC64 the
    verdict is the one a file without a checksum gets (the same file with its CRC zeroed),
    which refuses one-byte changes the checksum mode lets through."""
    f, z = tmp_path / "x.rdb", tmp_path / "z.rdb"
    gap = fixed = 0
    for case in cases(400, seed=23):
        f.write_bytes(case.data)
        by_checksum, by_full = _passes(f, "checksum"), _passes(f, "full")
        assert by_checksum or not by_full, f"full accepted what checksum refuses: {case.name}"
        if case.crc == "fixed":
            fixed += 1
            z.write_bytes(case.data[:-8] + bytes(8))
            assert _passes(z, "checksum") == by_full, case.name
            gap += by_checksum and not by_full
    assert fixed > 50 and gap > 0


def test_verify_auto_threshold(tmp_path, monkeypatch):
    """verify = "auto" (the default) checks a file of at most FULL_CHECK_MAX_BYTES fully
    even under a valid CRC64, a larger one by its checksum; the explicit modes ignore size."""
    path = TESTDATA / "rdb/redis-rdb-tools/redis_50_with_streams.rdb"
    assert path.stat().st_size <= rdb_reader.FULL_CHECK_MAX_BYTES
    assert check_rdb_file(path, verify="auto") == "full parse"
    assert check_rdb_file(path, verify="checksum") == "checksum"
    monkeypatch.setattr(rdb_reader, "FULL_CHECK_MAX_BYTES", path.stat().st_size - 1)
    assert check_rdb_file(path, verify="auto") == "checksum"
    assert check_rdb_file(path, verify="full") == "full parse"


def test_verify_setting_v4_and_v3(tmp_path):
    """[rdb_reader] verify (v4) and [source] rdb_verify (v3 restore): default "auto", a bad
    value is refused with the allowed ones."""
    import pytest

    from redshake.config.loader import ConfigError, load_config

    v4 = '[rdb_reader]\nfilepath = "d.rdb"\n%s[redis_writer]\naddress = "127.0.0.1:6379"\n'
    v3 = 'type = "restore"\n[source]\nrdb_file_path = "d.rdb"\n%s[target]\naddress = "127.0.0.1:6379"\n'
    cfg = tmp_path / "c.toml"
    for text, line in ((v4, 'verify = "%s"\n'), (v3, 'rdb_verify = "%s"\n')):
        cfg.write_text(text % "")
        assert load_config(cfg).reader.verify == "auto"
        for mode in ("checksum", "FULL", "auto"):
            cfg.write_text(text % (line % mode))
            assert load_config(cfg).reader.verify == mode.lower()
        cfg.write_text(text % (line % "crc"))
        with pytest.raises(ConfigError, match="allowed: auto, checksum, full"):
            load_config(cfg)


def test_full_verify_cli_recomputed_crc(servers, tmp_path):
    """One-byte changes under a recomputed CRC64 that the default check lets through, through
    the CLI into Redis 7.0. With verify = "checksum" the target refuses a value half way (exit
    1, keys written); with "full" each is refused with nothing written or restored equal to a
    native load, and "auto" (these files are small) does the same."""
    target = servers.start("redis-7.0")
    f = tmp_path / "x.rdb"
    refused, accepted = [], []
    for case in cases(600, seed=5):
        if case.crc != "fixed" or case.what != "byte":
            continue
        f.write_bytes(case.data)
        if not _passes(f, "checksum"):
            continue
        (accepted if _passes(f, "full") else refused).append(case)
    assert len(refused) >= 4 and len(accepted) >= 4

    def run(case, verify: str) -> str:
        return judge(case, target, tmp_path, "redis-7.0", start_server, assert_same_data, verify)

    results = {c.name: run(c, "full") for c in refused[:6] + accepted[:6]}
    results.update({f"{c.name} auto": run(c, "auto") for c in refused[:2]})
    bad = {k: v for k, v in results.items() if v not in OK}
    assert not bad, bad
    assert {results[c.name] for c in refused[:6]} == {"ok-refused"}
    by_checksum = [run(c, "checksum") for c in refused[:6]]
    assert "exit1" in by_checksum, by_checksum  # the gap "full" closes


def test_full_verify_stream_lp_count(servers, tmp_path):
    """A stream entry whose lp-count (what a server walks a node backwards with) is off by one,
    CRC64 recomputed: Redis's own deep check (sanitize-dump-payload yes) refuses to load the
    file; verify = "full" refuses it with nothing written; "checksum" trusts and writes it."""
    import pytest

    from redshake.rdb.primitives import read_string

    src = servers.start("redis-7.0")
    c = src.client()
    c.config_set("rdbcompression", "no")
    for i in range(30):
        c.set(f"k{i}", "v" * i)
    ids = [c.xadd("s", {"a": i, "b": "x" * (i % 5)}) for i in range(12)]
    c.xadd("s", {"other": 1})  # an entry with its own fields
    c.xdel("s", ids[3], ids[7])
    c.xgroup_create("s", "g", id="0")
    c.xreadgroup("g", "alice", {"s": ">"}, count=4)
    c.save()
    data = bytearray((src.dir / "dump.rdb").read_bytes())
    p = RdbParser()
    p.feed(bytes(data))
    (raw,) = [bytes(r.raw) for r in p.records() if type(r) is R.KeyValue and r.key == b"s"]
    assert raw[0] == 1  # one node: its key (16 bytes), then its listpack
    blob, end = read_string(raw, 18)
    assert blob[-3] < 0x80 and blob[-2] == 1  # the last entry's lp-count: a 7-bit int
    at = data.index(raw) + end - 3
    data[at] += 1
    data[-8:] = struct.pack("<Q", crc64(bytes(data[:-8])))
    bad = tmp_path / "bad.rdb"
    bad.write_bytes(data)
    native = tmp_path / "native"
    native.mkdir()
    (native / "dump.rdb").write_bytes(data)
    with pytest.raises(Exception):  # noqa: B017 (the server exits: whatever the harness raises)
        start_server("redis-7.0", dir=native, args=["--sanitize-dump-payload", "yes"], timeout=20)
    loaded = start_server("redis-7.0", dir=native, args=["--sanitize-dump-payload", "no"])
    try:  # the default server loads it (and would trust the bad lp-count)
        assert loaded.client().xlen("s") == 11
    finally:
        loaded.cleanup()
    with pytest.raises(RdbError, match="lp-count"):
        check_rdb_file(bad, verify="full")
    assert check_rdb_file(bad, verify="checksum") == "checksum"
    target = servers.start("redis-7.0")
    r = restore(bad, target, tmp_path, "full")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr and "lp-count" in r.stdout + r.stderr
    assert target.client().dbsize() == 0
    r = restore(bad, target, tmp_path, "checksum")
    assert r.returncode == 0 and target.client().dbsize() == 31


def test_saved_script_that_does_not_compile_writes_nothing(servers, tmp_path):
    """A script saved in the file (aux field lua, as Redis < 7 writes them) is sent with
    SCRIPT LOAD; one that does not compile is refused before the keys are written (the target
    used to refuse it, exit 1, and the keys were written anyway)."""
    import hashlib

    src = servers.start("redis-7.0")
    c = src.client()
    for i in range(25):
        c.set(f"k{i}", "v" * i)
    c.save()
    dump = (src.dir / "dump.rdb").read_bytes()
    target = servers.start("redis-7.0")
    for body, code in ((b"return redis.call('set', 'foo', 'bar')", 0), (b"return redis.call(", 2)):
        aux = b"\xfa\x03lua" + bytes([len(body)]) + body
        data = dump[:9] + aux + dump[9:-8]
        f = tmp_path / "script.rdb"
        f.write_bytes(data + struct.pack("<Q", crc64(data)))
        target.client().flushall()
        r = restore(f, target, tmp_path, "checksum")
        out = r.stdout + r.stderr
        assert r.returncode == code and "Traceback" not in out, out[-2000:]
        t = target.client()
        assert t.dbsize() == (25 if code == 0 else 0)
        assert t.script_exists(hashlib.sha1(body).hexdigest()) == [code == 0]
    assert "does not compile" in out


def test_function_library_that_fails_to_register_writes_nothing(servers, tmp_path):
    """A library that compiles but fails when FUNCTION LOAD runs it (a misspelled API, a bad
    function name, a name registered twice, nothing registered, an unknown flag) is refused
    by the full check before anything is written; a checksum-mode restore writes the keys
    and fails on the library (exit 1). The valid library restores."""
    src = servers.start("redis-7.0", args=["--rdbcompression", "no"])  # the code stays raw
    c = src.client()
    lib = (b"#!lua name=lib1\nredis.register_function('fn_a', function(k, a) return 1 end)\n"
           b"redis.register_function{function_name='fn_b', callback=function(k, a) return 2 end,"
           b" flags={'no-writes'}}\n")  # fmt: skip
    c.execute_command("FUNCTION", "LOAD", lib)
    for i in range(20):
        c.set(f"k{i}", "v" * i)
    c.save()
    dump = (src.dir / "dump.rdb").read_bytes()
    assert dump.count(b"register_function('fn_a'") == 1
    target = servers.start("redis-7.0")
    broken = [  # same length, so the file stays well formed
        (b"redis.register_function('fn_a'", b"redis.register_functiom('fn_a'", "nonexistent"),
        (b"function('fn_a'", b"function('fn-a'", "can only contain"),
        (b"function_name='fn_b'", b"function_name='fn_a'", "already exists in the library"),
        (b"'no-writes'", b"'no-wrotes'", "unknown flag"),
        (b"return 1 end)", b"end) x=1 --  ", "readonly"),  # a global set at load
    ]
    for old, new, why in broken:
        data = dump[:-8].replace(old, new)
        assert data != dump[:-8]
        f = tmp_path / "lib.rdb"
        f.write_bytes(data + struct.pack("<Q", crc64(data)))
        try:
            check_rdb_file(f, verify="full")
            raise AssertionError(f"accepted {new!r}")
        except RdbError as e:
            assert "would not load on a server" in str(e) and why in str(e), (new, str(e))
        target.client().flushall()
        target.client().function_flush()
        r = restore(f, target, tmp_path, "full")
        out = r.stdout + r.stderr
        assert r.returncode == 2 and "Traceback" not in out, out[-2000:]
        assert target.client().dbsize() == 0 and target.client().function_list() == []
    r = restore(f, target, tmp_path, "checksum")  # trusted under its valid CRC64
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    target.client().flushall()
    target.client().function_flush()
    r = restore(src.dir / "dump.rdb", target, tmp_path, "full")
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert_same_data(src, target)
    def libs(cl) -> list:  # (a library's functions come in no fixed order)
        out = []
        for lib in cl.function_list(withcode=True):
            d = dict(zip(lib[::2], lib[1::2], strict=True))
            d[b"functions"] = sorted(d[b"functions"], key=lambda f: f[1])
            out.append(sorted(d.items()))
        return sorted(out)

    assert libs(target.client()) == libs(c)


def test_strict_check_accepts_every_real_file(tmp_path):
    """No false refusals: every corpus file a server loads passes the check, with verify =
    "full" too, and also with its CRC64 zeroed (which makes it decode and deep-check every
    value)."""
    z = tmp_path / "z.rdb"
    n = 0
    for f in manifest():
        if f.get("kind") != "rdb" or f.get("intentionally_corrupt", "no") != "no":
            continue
        path = TESTDATA / f["path"]
        # full is never stricter than checksum on a real file (e.g. streams whose length field
        # disagrees with their entries, as old servers wrote after XTRIM, are accepted)
        assert not _passes(path, "checksum") or _passes(path, "full"), f["path"]
        if not any(v.get("loaded") for v in f.get("load_observed", {}).values()):
            continue
        path = TESTDATA / f["path"]
        check_rdb_file(path)
        assert check_rdb_file(path, verify="full") == "full parse"
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
