"""pipeline.drive() in-process, with list readers and writers (no server): acknowledged
offsets, exactly-once units, Runs and the ways a run stops."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

from redshake.entry import Entry, Run
from redshake.errors import EXIT_FAILURE, EXIT_OK, FatalError
from redshake.pipeline import ErrorPolicy, Plan, drive
from redshake.readers.base import Capabilities as ReaderCaps
from redshake.readers.base import Reader
from redshake.status.stats import Stats
from redshake.writers.base import Capabilities as WriterCaps
from redshake.writers.base import TargetInfo, Writer


class ListReader(Reader):
    """Hands over the given batches; ``fail`` is raised after them, ``complete`` is false
    when ``stopped``."""

    caps = ReaderCaps(exactly_once=True, runs=True)
    name = "list_reader"

    def __init__(self, batches: list[Sequence[Entry | Run]], *, stream: bool = False,
                 stopped: bool = False, fail: BaseException | None = None) -> None:  # fmt: skip
        self._batches = batches
        self.stream = stream
        self.stopped = stopped
        self.fail = fail
        self.acks: list[int] = []
        self.closed = False
        self.marker_key = b"marker"
        self.last = -1

    def prepare(self) -> None:
        pass

    def batches(self) -> Iterator[Sequence[Entry | Run]]:
        for b in self._batches:
            for e in b:
                self.last = max(self.last, e.offset)
            yield b
        if self.fail is not None:
            raise self.fail

    def acked(self, offset: int) -> None:
        self.acks.append(offset)

    def status(self) -> dict:
        return {}

    def status_line(self) -> str:
        return ""

    def consistent(self) -> bool:
        return True

    @property
    def complete(self) -> bool:
        return not self.stopped

    def close(self) -> None:
        self.closed = True

    def in_stream(self) -> bool:
        return self.stream

    def unit_marker(self) -> tuple[bytes, bytes, int]:
        return self.marker_key, b"at %d" % self.last, self.last


class ListWriter(Writer):
    """Records every call; everything written is acknowledged at once."""

    caps = WriterCaps(runs=True, units=True)

    def __init__(self) -> None:
        self.info = TargetInfo()
        self.calls: list[tuple] = []
        self.acked_names = Counter()

    def _ack(self, offset: int, name: bytes, n: int = 1) -> None:
        self.acked += n
        self.acked_names[name] += n
        if offset >= 0:
            self.acked_offset = offset

    def write(self, entry: Entry) -> None:
        self.calls.append(("write", entry.argv[0]))
        self._ack(entry.offset, entry.argv[0])

    def write_run(self, run: Run) -> None:
        self.calls.append(("run", len(run.argvs)))
        self.acked += len(run.argvs)
        self.acked_offset = run.offset

    def begin_unit(self) -> None:
        self.calls.append(("begin",))

    def end_unit(self, db: int, key: bytes, value: bytes, offset: int) -> None:
        self.calls.append(("end", db, key, value, offset))
        self.acked_offset = offset

    def poll(self) -> None:
        self.calls.append(("poll",))

    def flush(self) -> None:
        self.calls.append(("flush",))

    def exists(self, db: int, key: bytes) -> bool:
        return False

    def flushall(self) -> None:
        pass

    def status(self) -> dict:
        return {}

    def close(self) -> None:
        self.calls.append(("close",))


def _plan(reader: ListReader, writer: ListWriter, **kw) -> Plan:
    stats = Stats()
    plan = Plan(reader, writer, None, ErrorPolicy("panic", stats), stats=stats)
    plan.write_run = writer.write_run
    for k, v in kw.items():
        setattr(plan, k, v)
    return plan


def _set(i: int) -> Entry:
    return Entry(0, [b"SET", b"k%d" % i, b"v"], offset=100 + i)


def test_acks_reach_the_reader_and_reads_are_counted() -> None:
    reader = ListReader([[_set(0), _set(1)], [], [_set(2)]])
    writer = ListWriter()
    plan = _plan(reader, writer)
    out = drive(plan)
    assert out.code == EXIT_OK and not out.interrupted
    assert reader.acks[0] == 101  # the idle heartbeat reports what is applied so far
    assert reader.acks[-1] == 102  # ... and the end everything
    assert ("poll",) in writer.calls and writer.calls[-1] == ("flush",)
    assert plan.stats.read_by_cmd == {"SET": 3}
    assert writer.acked == 3


def test_stream_batches_are_units_without_the_source_multi_exec() -> None:
    batch = [Entry(0, [b"MULTI"], offset=10), _set(1), Entry(0, [b"EXEC"], offset=12)]
    reader = ListReader([batch], stream=True)
    writer = ListWriter()
    out = drive(_plan(reader, writer, units=True, marker_db=3))
    assert out.code == EXIT_OK
    assert writer.calls[:3] == [("begin",), ("write", b"SET"), ("end", 3, b"marker", b"at 101", 101)]
    assert reader.acks[-1] == 101


def test_snapshot_batches_are_not_units() -> None:
    reader = ListReader([[_set(0)]], stream=False)
    writer = ListWriter()
    assert drive(_plan(reader, writer, units=True)).code == EXIT_OK
    assert ("begin",) not in writer.calls


def test_runs_go_whole_or_stop_the_run() -> None:
    run = Run(0, [[b"SET", b"a", b"1"], [b"SET", b"b", b"2"]], b"", 500)
    reader = ListReader([[run]])
    writer = ListWriter()
    plan = _plan(reader, writer)
    assert drive(plan).code == EXIT_OK
    assert ("run", 2) in writer.calls and plan.stats.read_by_cmd == {"SET": 2}
    assert reader.acks[-1] == 500
    # a writer that cannot take Runs: the run fails instead of losing them
    plan = _plan(ListReader([[run]]), ListWriter(), write_run=None)
    assert drive(plan).code == EXIT_FAILURE


def test_shutdown_before_the_end_is_incomplete() -> None:
    reader = ListReader([[_set(0)]], stopped=True)
    writer = ListWriter()
    out = drive(_plan(reader, writer))
    assert out.code == EXIT_FAILURE and not out.interrupted
    assert writer.calls[-1] == ("flush",)  # what was read is still flushed
    assert reader.acks[-1] == 100


def test_failures_end_with_exit_code_1() -> None:
    for exc, interrupted in ((FatalError("target gone"), False), (KeyboardInterrupt(), True),
                             (OSError("reset"), False)):  # fmt: skip
        out = drive(_plan(ListReader([[_set(0)]], fail=exc), ListWriter()))
        assert out.code == EXIT_FAILURE
        assert out.interrupted is interrupted
