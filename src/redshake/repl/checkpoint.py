"""The persisted resume position of a sync reader: replication id, applied offset, db.

Written atomically (temporary file, fsync, rename, fsync of the directory), so a crash
leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..workdir import open_private

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint", "PHASE_RDB", "PHASE_AOF"]

PHASE_RDB = "rdb"  # a snapshot is being applied: the target is incomplete, a resume is impossible
PHASE_AOF = "aof"  # snapshot applied; ``offset`` is the last applied stream byte


@dataclass
class Checkpoint:
    source: str  # address of the source this position belongs to
    replid: str
    offset: int  # replication offset of the last byte applied on the target
    db: int  # db selected in the stream at that offset
    phase: str = PHASE_AOF
    time: float = 0.0
    # exactly-once: the target acknowledged a position marker of this replication id, so a
    # target without one (or with another id's) has lost what it had acknowledged
    marker: bool = False


def load_checkpoint(path: Path) -> Checkpoint | None:
    try:
        data = json.loads(path.read_text())
        return Checkpoint(
            source=str(data["source"]),
            replid=str(data["replid"]),
            offset=int(data["offset"]),
            db=int(data["db"]),
            phase=str(data.get("phase", PHASE_AOF)),
            time=float(data.get("time", 0.0)),
            marker=bool(data.get("marker", False)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable checkpoint {path}: {e}") from None


def save_checkpoint(path: Path, cp: Checkpoint, durable: bool = True) -> None:
    """Atomic replace. ``durable`` also fsyncs (survives a machine crash); without it the
    rename still survives the process being killed (the data is in the page cache)."""
    cp.time = time.time()
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(asdict(cp), sort_keys=True).encode()
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if not durable:
        return
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
