"""The status HTTP server (``advanced.status_port``).

Every path and every method returns RedisShake v4's status JSON
(``Content-Type: application/json``)::

    {"start_time": "2025-01-02 15:04:05", "consistent": false,
     "total_entries_count": {"read_count": 0, "read_ops": 0, "write_count": 0, "write_ops": 0},
     "per_cmd_entries_count": {"SET": {...same four...}},
     "reader": {...} | [{...}, ...], "writer": {...} | [{...}, ...],
     "redshake": {"skipped": {...}, "skipped_count": 0, "failed_count": 0, "lag": {...}}}

``redshake`` is an addition (skip reasons, failures, lag); RedisShake clients ignore it.

redshake addition: ``GET /metrics`` returns the same numbers in the Prometheus text format
(read at scrape time, nothing extra on the hot path):

- ``redshake_entries_read_total``, ``redshake_entries_written_total`` (counters);
- ``redshake_cmd_entries_read_total{cmd=...}``, ``redshake_cmd_entries_written_total{cmd=...}``;
- ``redshake_read_ops``, ``redshake_write_ops`` (gauges, entries per second);
- ``redshake_entries_skipped_total{reason=...}``, ``redshake_entries_failed_total``;
- ``redshake_consistent`` (0/1), ``redshake_start_time_seconds``;
- ``redshake_lag_<name>`` gauges for every entry of ``redshake.lag`` (e.g. ``bytes``,
  ``seconds``) when the pipeline provides them; otherwise, for live readers,
  ``redshake_lag_bytes`` (sum over shards) and ``redshake_lag_seconds`` (the largest);
- per source shard (label ``shard`` = the reader's address), for live readers:
  ``redshake_shard_lag_bytes``, ``redshake_shard_lag_seconds``, ``redshake_shard_connected``,
  ``redshake_shard_applied_offset`` (gauges) and ``redshake_shard_reconnects_total``,
  ``redshake_shard_partial_resyncs_total``, ``redshake_shard_full_syncs_total``,
  ``redshake_shard_target_reconnects_total`` (counters);
- ``redshake_verify_equal`` (1/0), ``redshake_verify_differences`` and
  ``redshake_verify_timestamp_seconds`` once ``redshake verify`` / ``wait --converged`` ran
  on this sync's config (the result is kept in ``<advanced.dir>/verify_last.json``).

Other paths: ``GET /ready`` answers 200 when ``consistent`` is true and 503 otherwise (a
Kubernetes readiness probe); ``GET /ui`` is a self-contained web page showing the status live.

Unlike RedisShake, the interface to listen on is configurable (``advanced.status_bind``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from redshake.status.stats import Stats

__all__ = [
    "StatusServer", "StatusBoard", "StatusBindError", "METRICS_CONTENT_TYPE", "save_verify_result",
    "VERIFY_FILE",
]

log = logging.getLogger("redshake")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_EMPTY_COUNT = {"read_count": 0, "read_ops": 0, "write_count": 0, "write_ops": 0}


class StatusBoard:
    """Builds the status document from the pieces of a running pipeline.

    ``stats`` is a :class:`Stats` or a callable returning a ``Stats.snapshot()``-shaped dict
    (e.g. :func:`redshake.status.stats.combine` over several workers). ``reader`` and
    ``writer`` return the reader/writer status objects (a dict, or a list of dicts for
    cluster readers/writers); ``consistent`` returns RedisShake's ``consistent`` flag
    (reader consistent AND writer consistent); ``lag`` returns ``{name: number}``.
    Calling the board returns the whole document.
    """

    def __init__(
        self,
        stats: Stats | Callable[[], Mapping[str, Any]] | None = None,
        *,
        reader: Callable[[], Any] | None = None,
        writer: Callable[[], Any] | None = None,
        consistent: Callable[[], bool] | None = None,
        lag: Callable[[], Mapping[str, float]] | None = None,
        start_time: float | None = None,
    ) -> None:
        self.stats = stats
        self.reader = reader
        self.writer = writer
        self.consistent = consistent
        self.lag = lag
        if start_time is None:
            start_time = stats.start_time if isinstance(stats, Stats) else time.time()
        self.start_time = start_time

    def __call__(self) -> dict[str, Any]:
        if isinstance(self.stats, Stats):
            snap: Mapping[str, Any] = self.stats.snapshot()
        elif self.stats is not None:
            snap = self.stats()
        else:
            snap = {}
        extra: dict[str, Any] = {
            "skipped": snap.get("skipped", {}),
            "skipped_count": snap.get("skipped_count", 0),
            "failed_count": snap.get("failed_count", 0),
            "failed_by_cmd": snap.get("failed_by_cmd", {}),
        }
        if self.lag is not None:
            extra["lag"] = dict(self.lag())
        return {
            "start_time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.start_time)),
            "consistent": bool(self.consistent()) if self.consistent else False,
            "total_entries_count": snap.get("total_entries_count", dict(_EMPTY_COUNT)),
            "per_cmd_entries_count": snap.get("per_cmd_entries_count", {}),
            "reader": self.reader() if self.reader else None,
            "writer": self.writer() if self.writer else None,
            "redshake": extra,
        }


_METRIC_SAFE = re.compile(r"[^a-zA-Z0-9_]")
VERIFY_FILE = "verify_last.json"


def save_verify_result(workdir: str | Path, report: Mapping[str, Any]) -> None:
    """Keep the summary of a verify run next to the sync's work files (atomically), where
    the sync's status server picks it up. A work dir that cannot be written is skipped."""
    keep = ("result", "mode", "source", "target", "total_differences", "differences", "keys_checked",
            "keys_equal", "sample", "seconds", "recheck_rounds")  # fmt: skip
    doc = {k: report[k] for k in keep if k in report}
    doc["finished"] = time.time()
    doc["keys"] = list(report.get("keys") or [])[:20]
    d = Path(workdir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (VERIFY_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, default=str))
        os.replace(tmp, d / VERIFY_FILE)
    except OSError as e:
        log.debug("verify result not saved in %s: %s", d, e)


def _readers(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    r = doc.get("reader")
    items = r if isinstance(r, list) else [r]
    return [x for x in items if isinstance(x, Mapping)]


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        doc = self._snapshot()
        total = doc.get("total_entries_count") or _EMPTY_COUNT
        per_cmd: Mapping[str, Mapping[str, Any]] = doc.get("per_cmd_entries_count") or {}
        extra: Mapping[str, Any] = doc.get("redshake") or {}

        c = CounterMetricFamily("redshake_entries_read", "Entries read (before the filter)")
        c.add_metric([], total.get("read_count", 0))
        yield c
        c = CounterMetricFamily("redshake_entries_written", "Entries written (after Lua)")
        c.add_metric([], total.get("write_count", 0))
        yield c
        g = GaugeMetricFamily("redshake_read_ops", "Entries read per second")
        g.add_metric([], total.get("read_ops", 0))
        yield g
        g = GaugeMetricFamily("redshake_write_ops", "Entries written per second")
        g.add_metric([], total.get("write_ops", 0))
        yield g

        cr = CounterMetricFamily(
            "redshake_cmd_entries_read", "Entries read per command", labels=["cmd"]
        )
        cw = CounterMetricFamily(
            "redshake_cmd_entries_written", "Entries written per command", labels=["cmd"]
        )
        for cmd, counts in per_cmd.items():
            cr.add_metric([cmd], counts.get("read_count", 0))
            cw.add_metric([cmd], counts.get("write_count", 0))
        yield cr
        yield cw

        sk = CounterMetricFamily(
            "redshake_entries_skipped", "Entries dropped on purpose", labels=["reason"]
        )
        for reason, n in (extra.get("skipped") or {}).items():
            sk.add_metric([reason], n)
        yield sk
        f = CounterMetricFamily("redshake_entries_failed", "Entries that could not be applied")
        f.add_metric([], extra.get("failed_count", 0))
        yield f

        g = GaugeMetricFamily("redshake_consistent", "1 when source and target are in sync")
        g.add_metric([], 1 if doc.get("consistent") else 0)
        yield g
        start = doc.get("start_time")
        if isinstance(start, str):
            try:
                ts = time.mktime(time.strptime(start, "%Y-%m-%d %H:%M:%S"))
                g = GaugeMetricFamily("redshake_start_time_seconds", "Process start (unix time)")
                g.add_metric([], ts)
                yield g
            except ValueError:
                pass
        lag = dict(extra.get("lag") or {})
        live = [r for r in _readers(doc) if "lag_bytes" in r]
        if live and not lag:
            lag = {"bytes": sum(int(r.get("lag_bytes") or 0) for r in live),
                   "seconds": max(float(r.get("lag_seconds") or 0) for r in live)}  # fmt: skip
        for name, value in lag.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                safe = _METRIC_SAFE.sub("_", str(name))
                g = GaugeMetricFamily(f"redshake_lag_{safe}", f"Replication lag ({name})")
                g.add_metric([], value)
                yield g
        yield from _shard_metrics(live)
        v = extra.get("verify")
        if isinstance(v, Mapping) and "result" in v:
            g = GaugeMetricFamily("redshake_verify_equal", "1 when the last verify found no difference")
            g.add_metric([], 1 if v.get("result") == "equal" else 0)
            yield g
            g = GaugeMetricFamily("redshake_verify_differences", "Differences the last verify found")
            g.add_metric([], float(v.get("total_differences") or 0))
            yield g
            g = GaugeMetricFamily("redshake_verify_timestamp_seconds", "When the last verify ended (unix time)")
            g.add_metric([], float(v.get("finished") or 0))
            yield g


# (metric, help, reader status field, counter?)
_SHARD_METRICS = (
    ("redshake_shard_lag_bytes", "Bytes received from the source shard, not yet applied", "lag_bytes", False),
    ("redshake_shard_lag_seconds", "Age of the oldest received byte not yet applied", "lag_seconds", False),
    ("redshake_shard_connected", "1 while the source link is up", "connected", False),
    ("redshake_shard_applied_offset", "Source replication offset applied on the target", "aof_applied_offset", False),
    ("redshake_shard_reconnects", "Source link reconnects", "reconnects", True),
    ("redshake_shard_partial_resyncs", "Partial resynchronisations (PSYNC +CONTINUE)", "partial_resyncs", True),
    ("redshake_shard_full_syncs", "Full synchronisations (snapshots)", "full_syncs", True),
    ("redshake_shard_target_reconnects", "Target connection reconnects", "target_reconnects", True),
)


def _shard_metrics(readers: list[Mapping[str, Any]]) -> Iterator[Metric]:
    for name, doc, fld, counter in _SHARD_METRICS:
        fam = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=["shard"])
        for r in readers:
            value = r.get(fld)
            if isinstance(value, int | float):
                fam.add_metric([str(r.get("address", "?"))], float(value))
        yield fam


class _Handler(BaseHTTPRequestHandler):
    server_version = "redshake"
    protocol_version = "HTTP/1.1"

    # Every method is served the same way.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        owner: StatusServer = self.server.owner  # type: ignore[attr-defined]
        # Drain a request body, if any, so keep-alive connections stay in sync.
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(min(length, 1 << 20))
        status = 200
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path == "/metrics":
                body = owner.metrics_text()
                ctype = METRICS_CONTENT_TYPE
            elif path == "/ui":
                from .page import PAGE

                body = PAGE.encode()
                ctype = "text/html; charset=utf-8"
            elif path == "/ready":
                ready = bool(owner.document().get("consistent"))
                status = 200 if ready else 503
                body = json.dumps({"ready": ready}).encode()
                ctype = "application/json"
            else:
                body = json.dumps(owner.document(), default=str).encode()
                ctype = "application/json"
        except Exception as e:  # a broken callable must not kill the server
            log.warning("status snapshot failed: %s", e)
            body = json.dumps({"error": str(e)}).encode()
            ctype = "application/json"
            status = 500
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("status http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _RecentErrors(logging.Handler):
    """The last warnings and errors logged, for the status document (``recent_errors``)."""

    def __init__(self, keep: int = 20) -> None:
        super().__init__(logging.WARNING)
        from collections import deque

        self.items: deque[dict[str, str]] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not break logging
            msg = str(record.msg)
        self.items.append({
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)),
            "level": record.levelname.lower(), "message": msg[:500],
        })  # fmt: skip


class StatusBindError(OSError):
    """The status port cannot be bound (in use, not allowed, no such address)."""

    def __str__(self) -> str:
        return str(self.strerror)


class StatusServer:
    """Serve ``snapshot()`` as JSON (every path) and as Prometheus metrics (``/metrics``).

    The socket is bound by the constructor (``port=0`` picks a free port, see :attr:`port`),
    so a busy port fails at once with ``OSError``; :meth:`start` serves from a daemon thread.
    """

    def __init__(
        self, port: int, bind: str = "0.0.0.0", snapshot: Callable[[], Mapping[str, Any]] = dict,
        workdir: str | Path | None = None,
    ) -> None:
        self.snapshot = snapshot
        # where `redshake verify CONFIG` leaves its last result (advanced.dir)
        self.workdir = Path(workdir) if workdir is not None else None
        self._verify: tuple[float, dict[str, Any] | None] = (-1.0, None)
        self._errors = _RecentErrors()
        cls = _Server6 if ":" in bind else _Server
        try:
            self._httpd = cls((bind, port), _Handler)
        except OSError as e:
            raise StatusBindError(
                e.errno,
                f"cannot serve the status on {bind}:{port}: {e.strerror or e} (set another "
                "advanced.status_port, or 0 for none)",
            ) from None
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.bind = bind
        self.port: int = self._httpd.server_address[1]
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_SnapshotCollector(self.document))
        self._thread: threading.Thread | None = None

    def document(self) -> dict[str, Any]:
        """The status document plus the last verify result (``redshake.verify``)."""
        doc = dict(self.snapshot())
        extra = dict(doc.get("redshake") or {})
        v = self._last_verify()
        if v is not None:
            extra["verify"] = v
        extra["recent_errors"] = list(self._errors.items)
        doc["redshake"] = extra
        return doc

    def _last_verify(self) -> dict[str, Any] | None:
        if self.workdir is None:
            return None
        path = self.workdir / VERIFY_FILE
        try:
            mtime = path.stat().st_mtime
            if mtime != self._verify[0]:
                self._verify = (mtime, json.loads(path.read_text()))
        except (OSError, ValueError):
            return None
        return self._verify[1]

    def metrics_text(self) -> bytes:
        return generate_latest(self._registry)

    @property
    def url(self) -> str:
        host = "localhost" if self.bind in ("", "0.0.0.0", "::", "127.0.0.1") else self.bind
        return f"http://{host}:{self.port}"

    def start(self, *, announce: bool = True) -> StatusServer:
        if self._thread is None:
            log.addHandler(self._errors)
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="redshake-status-http",
                daemon=True,
            )
            self._thread.start()
            if announce:
                log.info("status information: %s", self.url)
                log.info(
                    "status information: watch -n 0.3 'curl -s %s | python -m json.tool'", self.url
                )
                log.info("status page: %s/ui (metrics: %s/metrics, readiness: %s/ready)", self.url, self.url, self.url)
        return self

    def close(self) -> None:
        log.removeHandler(self._errors)
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
