"""Status HTTP server, metrics, counters, logging formats, rotation, work-dir lock, progress."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Shake, start_load
from redshake.status.logging import (
    ConsoleFormatter,
    JsonFormatter,
    SizeRotatingFileHandler,
    format_bytes,
    format_progress,
    setup_logging,
    setup_logging_from_config,
)
from redshake.status.progress import Progress
from redshake.status.server import StatusBoard, StatusServer
from redshake.status.stats import Stats, combine
from redshake.workdir import LOCK_NAME, WorkDir, WorkDirLocked

TIMEOUT = 10  # generous: never a timing assertion, only a bound on a hung test


def fetch(url: str, method: str = "GET", data: bytes | None = None):
    req = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        return resp.status, resp.headers.get("Content-Type"), resp.read()


@pytest.fixture
def board() -> tuple[Stats, StatusBoard]:
    st = Stats()
    for _ in range(7):
        st.count_read("SET")
    st.count_read("HSET", 3)
    for _ in range(5):
        st.count_write("SET")
    st.skip("filter", 2)
    st.fail()
    b = StatusBoard(
        st,
        reader=lambda: {"name": "rdb_reader", "status": "[rdb_reader] rdb file synced: 45.00%"},
        writer=lambda: [{"name": "writer_127.0.0.1_6380", "unanswered_bytes": 0}],
        consistent=lambda: False,
        lag=lambda: {"bytes": 1234, "seconds": 0.5},
    )
    return st, b


def test_status_server_schema(board) -> None:
    st, b = board
    srv = StatusServer(0, "127.0.0.1", b).start(announce=False)
    try:
        status, ctype, body = fetch(f"http://127.0.0.1:{srv.port}/")
        assert status == 200 and ctype == "application/json"
        doc = json.loads(body)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", doc["start_time"])
        assert doc["consistent"] is False
        assert doc["total_entries_count"] == {
            "read_count": 10,
            "read_ops": 0,
            "write_count": 5,
            "write_ops": 0,
        }
        assert doc["per_cmd_entries_count"]["SET"] == {
            "read_count": 7,
            "read_ops": 0,
            "write_count": 5,
            "write_ops": 0,
        }
        assert doc["per_cmd_entries_count"]["HSET"]["read_count"] == 3
        assert doc["reader"]["name"] == "rdb_reader"
        assert doc["writer"][0]["name"] == "writer_127.0.0.1_6380"
        assert doc["redshake"]["skipped"] == {"filter": 2}
        assert doc["redshake"]["failed_count"] == 1
        assert doc["redshake"]["lag"] == {"bytes": 1234, "seconds": 0.5}
        # every path and every method gives the same document
        for method, path, data in [
            ("GET", "/anything/else?x=1", None),
            ("POST", "/", b"ignored body"),
            ("PUT", "/x", b""),
            ("DELETE", "/", None),
            ("PATCH", "/", b"{}"),
        ]:
            s, c, body = fetch(f"http://127.0.0.1:{srv.port}{path}", method, data)
            assert (s, c) == (200, "application/json")
            assert json.loads(body)["total_entries_count"]["read_count"] == 10
        st.count_read("SET")
        assert json.loads(fetch(srv.url)[2])["total_entries_count"]["read_count"] == 11
    finally:
        srv.close()


def test_status_server_answers_right_after_start_and_announces(board, caplog) -> None:
    _, b = board
    logger = logging.getLogger("redshake")
    old = logger.propagate
    logger.propagate = True
    try:
        with caplog.at_level(logging.INFO, logger="redshake"):
            with StatusServer(0, "127.0.0.1", b) as srv:
                doc = json.loads(fetch(srv.url)[2])
                assert set(doc) >= {
                    "start_time",
                    "consistent",
                    "total_entries_count",
                    "per_cmd_entries_count",
                    "reader",
                    "writer",
                }
    finally:
        logger.propagate = old
    msgs = [r.getMessage() for r in caplog.records]
    assert f"status information: http://localhost:{srv.port}" in msgs
    assert (
        f"status information: watch -n 0.3 'curl -s http://localhost:{srv.port} | python -m json.tool'"
        in msgs
    )


def test_metrics_endpoint(board) -> None:
    _, b = board
    with StatusServer(0, "127.0.0.1", b) as srv:
        status, ctype, body = fetch(srv.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    samples = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("redshake_entries_read_total", ())] == 10
    assert samples[("redshake_entries_written_total", ())] == 5
    assert samples[("redshake_cmd_entries_read_total", (("cmd", "SET"),))] == 7
    assert samples[("redshake_cmd_entries_written_total", (("cmd", "SET"),))] == 5
    assert samples[("redshake_entries_skipped_total", (("reason", "filter"),))] == 2
    assert samples[("redshake_entries_failed_total", ())] == 1
    assert samples[("redshake_consistent", ())] == 0
    assert samples[("redshake_lag_bytes", ())] == 1234
    assert samples[("redshake_lag_seconds", ())] == 0.5
    assert ("redshake_read_ops", ()) in samples


def test_status_server_broken_callable_and_busy_port() -> None:
    def boom() -> dict:
        raise RuntimeError("reader exploded")

    with StatusServer(0, "127.0.0.1", boom) as srv:
        with pytest.raises(urllib.error.HTTPError) as ei:
            fetch(srv.url)
        assert ei.value.code == 500
        assert "reader exploded" in json.loads(ei.value.read())["error"]
        with pytest.raises(OSError):
            StatusServer(srv.port, "127.0.0.1", dict)


def test_board_without_parts() -> None:
    doc = StatusBoard()()
    assert doc["reader"] is None and doc["writer"] is None
    assert doc["total_entries_count"]["read_count"] == 0


def test_stats_ops_and_combine() -> None:
    st = Stats()
    st.tick(now=100.0)
    for _ in range(50):
        st.count_read("SET")
    st.count_write("SET", 20)
    st.tick(now=102.0)
    snap = st.snapshot()
    assert snap["total_entries_count"] == {
        "read_count": 50,
        "read_ops": 25.0,
        "write_count": 20,
        "write_ops": 10.0,
    }
    assert snap["per_cmd_entries_count"]["SET"]["read_ops"] == 25.0
    st.tick(now=103.0)
    assert st.snapshot()["total_entries_count"]["read_ops"] == 0.0
    other = Stats()
    other.count_read("DEL", 4)
    other.skip("filter")
    other.fail(2)
    both = combine([st.snapshot(), other.snapshot()])
    assert both["total_entries_count"]["read_count"] == 54
    assert both["per_cmd_entries_count"]["DEL"]["read_count"] == 4
    assert both["skipped"] == {"filter": 1} and both["failed_count"] == 2
    # snapshots are plain data (crossing process boundaries)
    assert json.loads(json.dumps(both)) == both


def test_stats_ticker_thread() -> None:
    st = Stats()
    st.start_ticker(0.05)
    try:
        st.count_read("SET", 10)
        deadline = time.monotonic() + TIMEOUT
        while st.read_ops == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert st.read_ops > 0
    finally:
        st.stop_ticker()


def _record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("redshake", level, __file__, 1, msg, None, None)


def test_console_format() -> None:
    fmt = ConsoleFormatter()
    for level, short in [
        (logging.DEBUG, "DBG"),
        (logging.INFO, "INF"),
        (logging.WARNING, "WRN"),
        (logging.ERROR, "ERR"),
    ]:
        line = fmt.format(_record("start syncing...", level))
        assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d {short} start syncing\.\.\.", line)


def test_json_format() -> None:
    line = JsonFormatter().format(_record('quote " and ünïcode', logging.WARNING))
    assert "\n" not in line
    doc = json.loads(line)
    assert list(doc) == ["level", "time", "message"]
    assert doc["level"] == "warn" and doc["message"] == 'quote " and ünïcode'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", doc["time"])


def test_setup_logging_two_sinks(tmp_path: Path) -> None:
    out = io.StringIO()
    logfile = tmp_path / "data" / "shake.log"
    log = setup_logging("info", logfile, stream=out)
    try:
        log.debug("hidden")
        log.info("all done")
        log.warning("careful %d", 3)
    finally:
        setup_logging("info", None, console=False)  # detach and close the file handler
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INF all done", lines[0])
    assert lines[1].endswith(" WRN careful 3")
    recs = [json.loads(x) for x in logfile.read_text().splitlines()]
    assert [(r["level"], r["message"]) for r in recs] == [
        ("info", "all done"),
        ("warn", "careful 3"),
    ]
    with pytest.raises(ValueError):
        setup_logging("loud")


def test_rotation_compress_and_prune(tmp_path: Path) -> None:
    path = tmp_path / "shake.log"
    h = SizeRotatingFileHandler(path, max_bytes=400, max_backups=2, max_age_days=7, compress=True)
    h.setFormatter(JsonFormatter())
    try:
        for i in range(40):
            h.handle(_record(f"line {i:03d} " + "x" * 40))
        h.wait_idle()
    finally:
        h.close()
    gz = sorted(tmp_path.glob("shake-*.log.gz"))
    assert len(gz) == 2, list(tmp_path.iterdir())
    assert not list(tmp_path.glob("shake-*.log"))  # all rotated files were compressed
    for g in gz:
        for line in gzip.decompress(g.read_bytes()).decode().splitlines():
            assert json.loads(line)["level"] == "info"
    assert path.stat().st_size <= 400
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["message"].startswith("line 039")


def test_rotation_age_pruning_and_no_compress(tmp_path: Path) -> None:
    path = tmp_path / "shake.log"
    old = tmp_path / "shake-2000-01-01T00-00-00.000.log.gz"
    old.write_bytes(gzip.compress(b"{}\n"))
    os.utime(old, (946684800, 946684800))
    h = SizeRotatingFileHandler(path, max_bytes=100, max_backups=0, max_age_days=1, compress=False)
    h.setFormatter(JsonFormatter())
    try:
        for i in range(6):
            h.handle(_record(f"entry {i} " + "y" * 60))
        h.wait_idle()
    finally:
        h.close()
    assert not old.exists()
    plain = list(tmp_path.glob("shake-*.log"))
    assert len(plain) == 5 and not list(tmp_path.glob("*.gz"))


def test_setup_logging_rotation_end_to_end(tmp_path: Path) -> None:
    logfile = tmp_path / "shake.log"
    log = setup_logging("info", logfile, console=False, max_size_mb=1, max_backups=3)
    try:
        msg = "z" * 1000
        for _ in range(1200):  # > 1 MiB of JSON lines
            log.info(msg)
    finally:
        setup_logging("info", None, console=False)
    assert len(list(tmp_path.glob("shake-*.log.gz"))) == 1


def test_setup_logging_from_config(tmp_path: Path) -> None:
    from redshake.config.schema import AdvancedConfig

    adv = AdvancedConfig(dir=str(tmp_path / "d"), log_file="x.log", log_level="warn")
    log = setup_logging_from_config(adv, console=False)
    try:
        log.info("not logged")
        log.error("boom")
    finally:
        setup_logging("info", None, console=False)
    recs = [json.loads(x) for x in (tmp_path / "d" / "x.log").read_text().splitlines()]
    assert [(r["level"], r["message"]) for r in recs] == [("error", "boom")]


def test_format_progress_and_bytes() -> None:
    assert (
        format_progress(1234, 56.789, 1200, 0, "syncing aof, diff=[0]")
        == "read_count=[1234], read_ops=[56.79], write_count=[1200], write_ops=[0.00], syncing aof, diff=[0]"
    )
    assert format_bytes(0) == "0 B"
    assert format_bytes(538) == "538 B"
    assert format_bytes(538 * 1024) == "538 KiB"
    assert format_bytes(12 * 1024 * 1024) == "12 MiB"
    assert format_bytes(1024**3) == "1.0 GiB"
    assert format_bytes(int(1.5 * 1024**3)) == "1.5 GiB"


HOLDER = textwrap.dedent(
    """
    import sys
    from redshake.workdir import WorkDir
    wd = WorkDir(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()
    wd.close()
    """
)


def test_workdir_lock_between_processes(tmp_path: Path) -> None:
    d = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(d)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(WorkDirLocked) as ei:
            WorkDir(d)
        msg = str(ei.value)
        assert str(d) in msg and f"process {proc.pid}" in msg
        assert ei.value.pid == proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=TIMEOUT)
    with WorkDir(d) as wd:
        assert wd.locked
        assert (d / LOCK_NAME).read_text().strip() == str(os.getpid())
        assert wd.sub("reader_127.0.0.1_6379").is_dir()
    assert not wd.locked
    # released: a new instance can lock again
    WorkDir(d).close()


def test_workdir_creates_nested_dir(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    wd = WorkDir(d)
    try:
        assert d.is_dir() and (d / LOCK_NAME).exists()
    finally:
        wd.close()


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_noop_without_tty() -> None:
    out = io.StringIO()
    p = Progress(1000, "rdb", file=out)
    assert not p.enabled
    p.update(500, keys=10)
    p.close()
    assert out.getvalue() == "" and p.done_bytes == 500 and p.keys == 10


def test_progress_bar_on_tty() -> None:
    out = _FakeTTY()
    with Progress(1000, "syncing rdb", file=out) as p:
        assert p.enabled
        p.update(500, keys=3)
    text = out.getvalue()
    assert "syncing rdb" in text and "50%" in text and "3 keys" in text
    out = _FakeTTY()
    with Progress(None, "scan", file=out) as p:
        p.update(2048, keys=1)
    assert "scan" in out.getvalue()


def test_status_endpoint_under_live_sync_load(servers, tmp_path: Path) -> None:
    """The status thread snapshots counters, lag samples and per-command dicts while the
    pipeline thread changes them: every answer, JSON and /metrics, is a 200 with a valid
    body (no "deque mutated during iteration")."""
    import threading

    from servers import free_port

    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    port = free_port()
    # a throttled target keeps the reader behind the source: the lag samples are read
    # while the reader appends to them
    shake = Shake(
        tmp_path, src, dst, status_port=port, advanced={"target_redis_max_qps": 3000}
    ).start()
    failures: list[str] = []
    answers = {"json": 0, "metrics": 0}
    try:
        shake.wait_streaming(60, "the stream")
        halt = start_load(src, n=4)
        stop = threading.Event()

        def poll(path: str, kind: str) -> None:
            while not stop.is_set() and answers[kind] < 500:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
                        body = r.read()
                        assert r.status == 200
                    if kind == "json":
                        doc = json.loads(body)
                        assert "total_entries_count" in doc and "error" not in doc
                    else:
                        names = {f.name for f in text_string_to_metric_families(body.decode())}
                        assert "redshake_entries_written" in names
                    answers[kind] += 1
                except Exception as e:  # noqa: BLE001 - collected and reported below
                    failures.append(f"{path}: {type(e).__name__}: {e}")
                    return

        pollers = [
            threading.Thread(target=poll, args=("/", "json")),
            threading.Thread(target=poll, args=("/metrics", "metrics")),
        ]
        for t in pollers:
            t.start()
        for t in pollers:
            t.join(120)
        stop.set()
        halt()
    finally:
        shake.kill()
    assert not failures, failures[:5]
    assert answers == {"json": 500, "metrics": 500}
    assert "status snapshot failed" not in shake.log()
