"""[aof_reader]: the AOF stream parser, manifests, and replays of real AOFs into real servers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from datagen import populate
from harness import failed_rewrite, nkeys, run_aof, wait_rewrite
from helpers import TESTDATA, assert_same_data
from redshake.aof import Annotation, AofError, AofParser, ManifestError, parse_manifest, split_args
from redshake.readers.aof_reader import SHIFT_MS, AofFileReader
from redshake.readers.base import ReaderContext
from redshake.readers.rdb_entries import TargetCaps
from redshake.writers.base import TargetInfo

AOF = TESTDATA / "aof"


def resp(*argv: bytes | str) -> bytes:
    out = b"*%d\r\n" % len(argv)
    for a in argv:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def parse_all(data: bytes, step: int | None = None) -> list:
    p = AofParser()
    out = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        p.feed(data[i : i + step])
        out.extend(p.items())
    p.finish()
    return out


# -- parser ----------------------------------------------------------------------------------


def test_parser_binary_annotations_offsets_any_split():
    weird = b"a\r\nb\n*3\r\n$1\r\nx\r\n\x00\xff"
    data = (
        b"#TS:1700000000\r\n"
        + resp("SET", weird, "v")
        + b"#some other annotation\r\n"
        + resp("RPUSH", "l", *[str(i) for i in range(300)])
        + resp("SET", "", "")
    )
    ref = parse_all(data)
    kinds = [type(i).__name__ for i, _ in ref]
    assert kinds == ["Annotation", "list", "Annotation", "list", "list"]
    assert ref[0][0].ts == 1700000000 and ref[0][0].start == 0
    assert ref[1][0] == [b"SET", weird, b"v"]
    assert ref[2][0].ts is None
    assert len(ref[3][0]) == 302
    assert ref[4][0] == [b"SET", b"", b""]
    assert ref[-1][1] == len(data)
    # exact end offsets
    assert ref[0][1] == len(b"#TS:1700000000\r\n")
    assert ref[1][1] == ref[0][1] + len(resp("SET", weird, "v"))
    for step in (1, 2, 3, 7, 64):
        got = parse_all(data, step)
        assert [(x.text if isinstance(x, Annotation) else x, e) for x, e in got] == [
            (x.text if isinstance(x, Annotation) else x, e) for x, e in ref
        ]


@pytest.mark.parametrize(
    "data, offset, words",
    [
        (b"*2\n$6\nSELECT\n$1\n0\n", 0, "LF instead of CRLF"),
        (resp("SET", "a", "1") + b"*0\r\n", 27, "at least one argument"),
        (resp("SET", "a", "1") + b"\r\n", 27, "expected '*'"),
        (b"*2\r\n$3\r\nGET\r\nx1\r\n", 13, "expected '$'"),
        (b"*2\r\n$3\r\nGETX\r\n$1\r\na\r\n", 11, "not followed by CRLF"),
        (b"*2\r\n$-1\r\n", 4, "bad bulk string length"),
    ],
)
def test_parser_errors(data, offset, words):
    with pytest.raises(AofError) as ei:
        parse_all(data)
    assert ei.value.offset == offset and not ei.value.truncated
    assert words in str(ei.value)


def test_parser_truncated():
    data = resp("SET", "a", "1") + resp("SET", "b", "222")[:-3]
    p = AofParser()
    p.feed(data)
    assert [x for x, _ in p.items()] == [[b"SET", b"a", b"1"]]
    with pytest.raises(AofError) as ei:
        p.finish()
    assert ei.value.truncated and ei.value.offset == 27
    assert "after argument 2 of 3" in str(ei.value)


# -- manifest --------------------------------------------------------------------------------


def test_manifest():
    m = parse_manifest(
        b"# comment\n"
        b"file appendonly.aof.2.base.rdb seq 2 type b\n"
        b"file appendonly.aof.1.incr.aof seq 1 type h\n"
        b'file "my file\\x41.aof" seq 3 type i newkey newvalue\r\n'
        b"file 'it\\'s' seq 4 type i\n"
        b"file appendonly.aof.5.incr.aof seq 5 type i\n"
    )
    assert [e.name for e in m.load_order()] == [
        "appendonly.aof.2.base.rdb",
        "my fileA.aof",
        "it's",
        "appendonly.aof.5.incr.aof",
    ]
    assert [e.name for e in m.history] == ["appendonly.aof.1.incr.aof"]
    assert split_args(r"""a "b c\n" 'd\'e' """) == ["a", "b c\n", "d'e"]
    for bad in (
        b"file x seq 1\n",
        b"file x seq 1 type z\n",
        b"file x seq 1 type b\nfile y seq 2 type b\n",
        b'file "x seq 1 type b\n',
        b"file 'a''b' seq 1 type b\n",
        b"file ../x seq 1 type b\n",
        b"file x seq 3 type i\nfile y seq 2 type i\n",
        b"# nothing\n",
    ):
        with pytest.raises(ManifestError):
            parse_manifest(bad)


# -- helpers for real runs -----------------------------------------------------------------


def transactions(server, tag: str) -> None:
    c = server.client()  # a private connection: SELECT inside MULTI changes its db
    p = c.pipeline(transaction=True)
    p.set(f"tx:{tag}:a", "1")
    p.execute_command("SELECT", 5)
    p.set(f"tx:{tag}:b", "2")
    p.incr(f"tx:{tag}:n")
    p.execute()
    c.close()


# -- real servers: multi-part AOF -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, preamble",
    [("redis-7.0", "yes"), ("redis-7.0", "no"), ("valkey-8.1", "yes"), ("valkey-9.1", "yes")],
)
def test_multipart_aof_replay(name, preamble, servers, tmp_path):
    args = [
        "--appendonly",
        "yes",
        "--aof-timestamp-enabled",
        "yes",
        "--aof-use-rdb-preamble",
        preamble,
    ]
    src = servers.start(name, args=args)
    c = src.client()
    populate(c, src.version, src.is_valkey, big=False, hfe=False)
    wait_rewrite(c)
    c.bgrewriteaof()  # the base now holds everything so far (RDB preamble)
    wait_rewrite(c)
    c2 = src.client(2)
    for i in range(200):
        c2.set(f"k{i}", f"v{i}", ex=3600 if i % 3 == 0 else None)
    c2.hset("h", mapping={f"f{i}": i for i in range(50)})
    c2.pexpireat("h", int(time.time() * 1000) + 7_200_000)
    transactions(src, "one")
    failed_rewrite(src)  # second INCR file
    c2.delete("k1", "k2")
    c.incrby("counter", 5)
    transactions(src, "two")
    c2.execute_command("RPUSH", "bin", b"a\r\nb", b"\x00\xff\n", b"*3\r\n$3")
    manifest = (src.dir / "appendonlydir").glob("*.manifest")
    text = next(manifest).read_text()
    assert text.count("type i") >= 2, text
    assert (".base.rdb" if preamble == "yes" else ".base.aof") in text
    dst = servers.start(name)
    r = run_aof(tmp_path, src.dir / "appendonlydir", dst)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "MULTI/EXEC blocks" in r.stdout
    assert_same_data(src, dst)
    assert dst.client(5).get("tx:two:b") == b"2"


def test_point_in_time(servers, tmp_path):
    src = servers.start("redis-7.0", args=["--appendonly", "yes", "--aof-timestamp-enabled", "yes"])
    c = src.client()
    for i in range(100):
        c.set(f"a{i}", i)
    transactions(src, "A")
    t_a = int(c.time()[0])
    digest_a = c.execute_command("DEBUG", "DIGEST")
    while int(c.time()[0]) <= t_a:
        time.sleep(0.05)
    for i in range(50):
        c.set(f"a{i}", "changed")
    c.delete("a99")
    transactions(src, "B")
    c.set("b", "new")
    digest_b = c.execute_command("DEBUG", "DIGEST")
    assert digest_a != digest_b
    aofdir = src.dir / "appendonlydir"

    dst = servers.start("redis-7.0")
    r = run_aof(tmp_path, aofdir, dst, timestamp=t_a)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "stopped before #TS:" in r.stdout
    assert dst.client().execute_command("DEBUG", "DIGEST") == digest_a

    dst.client().flushall()
    r = run_aof(tmp_path, aofdir / "appendonly.aof.manifest", dst, timestamp=t_a + 3600)
    assert r.returncode == 0, r.stdout[-3000:]
    assert dst.client().execute_command("DEBUG", "DIGEST") == digest_b


def test_point_in_time_drops_split_transaction(servers, tmp_path):
    data = (
        b"#TS:100\r\n" + resp("SET", "a", "1")
        + resp("MULTI") + resp("SET", "t", "1")
        + b"#TS:200\r\n" + resp("SET", "u", "1") + resp("EXEC")
        + resp("SET", "b", "2")
    )  # fmt: skip
    f = tmp_path / "pit.aof"
    f.write_bytes(data)
    dst = servers.start("redis-7.0")
    r = run_aof(tmp_path, f, dst, timestamp=150)
    assert r.returncode == 0, r.stdout[-3000:]
    assert sorted(dst.client().keys()) == [b"a"]
    r = run_aof(tmp_path, f, dst, timestamp=200)
    assert r.returncode == 0, r.stdout[-3000:]
    assert sorted(dst.client().keys()) == [b"a", b"b", b"t", b"u"]


# -- corpus ----------------------------------------------------------------------------------


def test_corpus_files(servers, tmp_path):
    dst = servers.start("redis-7.0")
    expected = {
        "redis/rdb-preamble.aof": 3,
        "redis-replicator/appendonly1.aof": 2,
        "redis-replicator/appendonly5.aof": 26,
        "redis-replicator/appendonly7.aof": 3,
        "redis-replicator/appendonly2.aof": 8009,
    }
    for rel, n in expected.items():
        dst.client().flushall()
        r = run_aof(tmp_path, AOF / rel, dst)
        assert r.returncode == 0, rel + "\n" + r.stdout[-3000:]
        assert nkeys(dst) == n, rel


def test_redisshake_dir_lf_damaged_then_fixed(servers, tmp_path):
    dst = servers.start("valkey-8.1")
    r = run_aof(tmp_path, AOF / "redisshake" / "appendonlydir", dst)
    assert r.returncode == 2, r.stdout[-3000:]
    assert "appendonly.aof.2.incr.aof" in r.stdout and "LF instead of CRLF" in r.stdout
    assert "byte offset 0" in r.stdout
    assert nkeys(dst) == 0  # validated before anything was written

    fixed = tmp_path / "appendonlydir"
    fixed.mkdir()
    for f in (AOF / "redisshake" / "appendonlydir").iterdir():
        data = f.read_bytes()
        if f.name.endswith(".incr.aof"):
            data = data.replace(b"\n", b"\r\n")
        (fixed / f.name).write_bytes(data)
    r = run_aof(tmp_path, fixed / "appendonly.aof.manifest", dst)
    assert r.returncode == 0, r.stdout[-3000:]
    assert nkeys(dst) == 10_017
    assert dst.client().llen("mylist") == 9990


def test_with_ts_corpus_point_in_time_reader():
    """The 54 #TS annotations of a real Redis 7 AOF: every cut-off stops right before the first
    annotation greater than it."""
    f = AOF / "redis-replicator" / "appendonly-with-ts.aof"
    data = f.read_bytes()
    anns = [(a, e) for a, e in parse_all(data) if isinstance(a, Annotation)]
    assert len(anns) == 54
    caps = TargetCaps.from_target_info(TargetInfo(), 1 << 29)
    shifted_somewhere = False
    for a, _ in anns[::7]:
        ctx = ReaderContext(caps=caps, behavior="panic", workdir=Path("."), stop=lambda: False)
        rd = AofFileReader(str(f), ctx, timestamp=a.ts)
        rd.prepare()
        got = [e for b in rd.batches() for e in b]
        later = [x for x, _ in anns if x.ts > a.ts]
        limit = later[0].start if later else len(data)
        want = [
            x
            for x, e in parse_all(data[:limit])
            if isinstance(x, list) and x[0].upper() != b"SELECT"
        ]
        # past expiries (2022) go shifted, and are put back at the end (not those of 3021)
        cmds = [e.argv for e in got if e.argv[0] != b"EVAL"]
        assert len(cmds) == len(want)
        keys = set()
        for g, w in zip(cmds, want, strict=True):
            assert len(g) == len(w)
            for x, y in zip(g, w, strict=True):
                if x != y:
                    assert int(x) - int(y) == SHIFT_MS and int(y) < time.time() * 1000, (g, w)
                    keys.add(w[1])
        # checked at the end: keys that may still carry a shifted expiry (not deleted since)
        evals = [e.argv[3] for e in got if e.argv[0] == b"EVAL"]
        assert set(evals) <= keys
        shifted_somewhere |= bool(evals)
        assert rd.complete and rd.progress() == (limit, limit)
        st = rd.status()
        assert st["aof_percent"] == "100.00%" and st["aof_file_sent_bytes"] == limit
        assert st["aof_time_stamp"] == a.ts
    assert shifted_somewhere


# -- corrupt / truncated input ---------------------------------------------------------------


def test_truncated_and_corrupt(servers, tmp_path):
    dst = servers.start("redis-7.0")
    good = (
        resp("SELECT", "1")
        + resp("SET", "a", "1")
        + resp("MULTI")
        + resp("SET", "t", "x")
        + resp("EXEC")
    )
    cases = {
        "trunc.aof": good + resp("SET", "b", "222")[:-4],
        "multi.aof": good + resp("MULTI") + resp("SET", "c", "3"),
    }
    for name, data in cases.items():
        f = tmp_path / name
        f.write_bytes(data)
        r = run_aof(tmp_path, f, dst)
        assert r.returncode == 2, r.stdout[-3000:]
        assert str(f) in r.stdout and "ignore_truncated" in r.stdout
        assert nkeys(dst) == 0
        r = run_aof(tmp_path, f, dst, ignore_truncated=True)
        assert r.returncode == 0, r.stdout[-3000:]
        assert sorted(dst.client(1).keys()) == [b"a", b"t"]
        dst.client().flushall()
    bad = bytearray(good + resp("SET", "b", "2"))
    at = len(good) + 4
    bad[at] = ord("x")
    f = tmp_path / "corrupt.aof"
    f.write_bytes(bad)
    for opts in ({}, {"ignore_truncated": True}):
        r = run_aof(tmp_path, f, dst, **opts)
        assert r.returncode == 2, r.stdout[-3000:]
        assert "expected '$' (bulk string 1 of 3)" in r.stdout and f"byte offset {at}" in r.stdout
        assert nkeys(dst) == 0
    # a truncated INCR file that is not the last one is an error even with ignore_truncated
    d = tmp_path / "dir"
    d.mkdir()
    (d / "appendonly.aof.manifest").write_text(
        "file appendonly.aof.1.incr.aof seq 1 type i\nfile appendonly.aof.2.incr.aof seq 2 type i\n"
    )
    (d / "appendonly.aof.1.incr.aof").write_bytes(cases["trunc.aof"])
    (d / "appendonly.aof.2.incr.aof").write_bytes(resp("SET", "z", "1"))
    r = run_aof(tmp_path, d, dst, ignore_truncated=True)
    assert r.returncode == 2 and "only the last file may be truncated" in r.stdout, r.stdout[-3000:]
    assert nkeys(dst) == 0


def test_file_growing_while_read_and_status(tmp_path):
    """A live server may append to the last INCR file: both passes read the size seen at start."""
    f = tmp_path / "live.aof"
    f.write_bytes(resp("SELECT", "3") + resp("SET", "a", "1") + resp("SET", "b", "2"))
    caps = TargetCaps.from_target_info(TargetInfo(), 1 << 29)
    ctx = ReaderContext(caps=caps, behavior="panic", workdir=tmp_path, stop=lambda: False)
    rd = AofFileReader(str(f), ctx)
    with open(f, "ab") as out:
        out.write(resp("SET", "c", "3") + b"*3\r\n$3\r\nSET")
    rd.prepare()
    assert rd.status()["aof_percent"] == "0.00%"
    got = [e for b in rd.batches() for e in b]
    assert [(e.db, e.argv) for e in got] == [(3, [b"SET", b"a", b"1"]), (3, [b"SET", b"b", b"2"])]
    assert got[-1].offset == rd.size and rd.complete
    st = rd.status()
    assert st["aof_file_sent_bytes"] == st["aof_file_size_bytes"] == rd.size
    assert "synced: 100.00%" in rd.status_line()
