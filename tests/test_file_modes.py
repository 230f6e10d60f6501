"""Work files are private: every file redshake creates (log, rotated and compressed logs,
spool, checkpoint and its temporary file, lock file, file_writer output) is 0600 and every
directory it creates 0700, whatever the umask (the tests run under umask 022)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from datagen import populate
from harness import Shake, start_load, wait_converged
from helpers import run_redshake, write_config
from redshake.repl.checkpoint import Checkpoint, save_checkpoint
from redshake.status.logging import SizeRotatingFileHandler, setup_logging


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def assert_private_tree(root: Path) -> list[Path]:
    """Every file under ``root`` 0600, every directory 0700 (``root`` included)."""
    bad = []
    seen = [root]
    assert mode(root) == 0o700, oct(mode(root))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath) / name
            seen.append(p)
            if mode(p) != 0o700:
                bad.append((p, oct(mode(p))))
        for name in filenames:
            p = Path(dirpath) / name
            seen.append(p)
            if mode(p) != 0o600:
                bad.append((p, oct(mode(p))))
    assert not bad, bad
    return seen


def test_sync_run_work_files_are_private(servers, tmp_path, shakes):
    src = servers.start("redis-7.0")
    dst = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False, functions=False)
    # a nested, not yet existing work dir: every level redshake creates is 0700
    shake = Shake(tmp_path, src, dst)
    work = tmp_path / "a" / "b" / "work"
    shake.work = work
    shake.cfg.write_text(shake.cfg.read_text().replace(str(tmp_path / "work"), str(work)))
    shake.start()
    shakes.append(shake)
    halt = start_load(src, n=1)
    try:
        shake.wait_streaming(60, "the stream")
    finally:
        halt()
    wait_converged(src, shake)
    seen = assert_private_tree(tmp_path / "a")  # while running: spool, checkpoint, lock
    names = {p.name for p in seen}
    assert {"pid.lockfile", "checkpoint.json", "shake.log"} <= names, names
    assert any(n.endswith(".spool") for n in names)  # (the snapshot file is gone once applied)
    assert shake.terminate() == 0
    assert_private_tree(tmp_path / "a")


def test_existing_work_dir_keeps_its_mode(servers, tmp_path):
    """A work dir that exists already (maybe the user's own) is not chmod'ed; what redshake
    creates in it is private."""
    src = servers.start("redis-7.0")
    populate(src.client(), src.version, False, big=False, functions=False)
    src.client().save()
    rdb = src.dir / "dump.rdb"
    work = tmp_path / "work"
    work.mkdir(mode=0o755)
    out_new = tmp_path / "new.aof"
    out_old = tmp_path / "old.aof"
    out_old.write_bytes(b"")
    os.chmod(out_old, 0o644)
    for out in (out_new, out_old):
        cfg = write_config(
            tmp_path / "shake.toml",
            {
                "rdb_reader": {"filepath": str(rdb)},
                "file_writer": {"filepath": str(out), "type": "aof"},
                "advanced": {"dir": str(work), "log_interval": 0},
            },
        )
        p = run_redshake(cfg)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert out.stat().st_size > 0
    assert mode(work) == 0o755
    for f in work.iterdir():
        assert mode(f) == 0o600, (f, oct(mode(f)))
    assert mode(out_new) == 0o600  # user data: private when redshake creates it
    assert mode(out_old) == 0o644  # an existing file keeps the mode its owner gave it


def test_rotated_and_compressed_logs_are_private(tmp_path):
    logs = tmp_path / "logs"
    h = SizeRotatingFileHandler(logs / "x.log", max_bytes=2000, max_backups=10, compress=True)
    rec = logging.LogRecord("redshake", logging.INFO, __file__, 1, "y" * 300, None, None)
    try:
        for _ in range(40):
            h.emit(rec)
        h.wait_idle()
    finally:
        h.close()
    names = [p.name for p in assert_private_tree(logs)]
    assert any(n.endswith(".log.gz") for n in names), names
    # a log file left 0644 by an older version is made private when opened again
    plain = tmp_path / "plain" / "p.log"
    plain.parent.mkdir()
    plain.write_text("old\n")
    os.chmod(plain, 0o644)
    logger = setup_logging("info", plain, rotation=False, console=False)
    logger.info("hello")
    assert mode(plain) == 0o600
    for hd in list(logger.handlers):
        logger.removeHandler(hd)
        hd.close()


def test_checkpoint_and_its_temp_file_are_private(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("left over")  # a temporary file left by a crash, with a loose mode
    os.chmod(tmp, 0o644)
    orig = os.replace
    modes = []

    def spy(a, b):  # the temporary file's mode at the moment it is renamed
        modes.append(mode(Path(a)))
        return orig(a, b)

    monkeypatch.setattr(os, "replace", spy)
    save_checkpoint(path, Checkpoint(source="127.0.0.1:1", replid="r" * 40, offset=123, db=0))
    monkeypatch.undo()
    assert modes == [0o600] and mode(path) == 0o600
