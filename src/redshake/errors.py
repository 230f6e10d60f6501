"""The errors that stop a run, in one tree, and the typed error replies of a target.

This module is at the bottom of the import graph: it imports nothing of redshake, so every
layer (readers, writers, transforms, the driver, the command line) can raise and catch
these without import cycles.

Every error that stops a run derives from :class:`RedshakeError` and carries the exit code
it means: ``2`` for input that cannot be used (:class:`BadInput`: config, RDB, AOF, an
unusable source; nothing is written) and ``1`` for a failure at run time
(:class:`FatalError`: an error reply of the target, the source link, a Lua function). Once
the copy has started, every failure ends the run with ``1`` (the copy is incomplete), which
is what the driver reports.

A target's error reply is classified once, by its first word, into a :class:`TargetError`
subclass (:func:`classify`, :func:`reply_class`): callers test the type, never the text.
"""

from __future__ import annotations

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_BAD_INPUT",
    "RedshakeError",
    "BadInput",
    "SourceError",
    "FatalError",
    "LinkError",
    "LuaError",
    "TargetError",
    "BusyKey",
    "Redirect",
    "Moved",
    "Ask",
    "Retryable",
    "TryAgain",
    "ClusterDown",
    "Loading",
    "MasterDown",
    "Busy",
    "NoMasterLink",
    "OutOfMemory",
    "ReadOnly",
    "AuthRefused",
    "NoAuth",
    "WrongPass",
    "NoPerm",
    "ExecAbort",
    "NoScript",
    "TopologyChanged",
    "reply_class",
    "classify",
    "exit_code",
]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class RedshakeError(Exception):
    """The root of every error that stops a run; ``exit_code`` is what the process returns."""

    exit_code = EXIT_FAILURE


class BadInput(RedshakeError):
    """Input that cannot be used (config, RDB, AOF, source): refused before anything is
    written to the target."""

    exit_code = EXIT_BAD_INPUT


class SourceError(BadInput):
    """The source cannot be used: refused credentials or certificate, a node of a cluster
    read alone, a db the target lacks..."""


class FatalError(RedshakeError):
    """Stops the run with exit code 1 after in-flight work is flushed where possible."""


class LinkError(FatalError):
    """The link to the source failed (gave up reconnecting, protocol error...)."""


class LuaError(FatalError):
    """The [filter] Lua function raised an error on an entry."""


class TargetError(FatalError):
    """An error reply of the target. ``code`` is the reply's first word (``ERR``,
    ``BUSYKEY``...); ``cmd``, ``key`` and ``db`` name the command it answered, when known.
    The subclasses below are the codes the house acts on."""

    code = ""

    def __init__(self, message: str, cmd: str = "", key: bytes = b"", db: int = -1) -> None:
        super().__init__(message)
        self.message = message
        self.cmd = cmd
        self.key = key
        self.db = db

    def __str__(self) -> str:
        if not self.cmd:
            return self.message
        if not self.key:
            return f"target error for {self.cmd} in db {self.db}: {self.message}"
        return f"target error for {self.cmd} key {self.key!r} in db {self.db}: {self.message}"


class BusyKey(TargetError):
    code = "BUSYKEY"


class Redirect(TargetError):
    """A cluster node does not serve the key's slot (MOVED, ASK)."""


class Moved(Redirect):
    code = "MOVED"


class Ask(Redirect):
    code = "ASK"


class Retryable(TargetError):
    """The server cannot answer now; the same command may succeed later."""


class TryAgain(Retryable):
    code = "TRYAGAIN"


class ClusterDown(Retryable):
    code = "CLUSTERDOWN"


class Loading(Retryable):
    code = "LOADING"


class MasterDown(Retryable):
    code = "MASTERDOWN"


class Busy(Retryable):
    code = "BUSY"


class NoMasterLink(Retryable):
    code = "NOMASTERLINK"


class OutOfMemory(TargetError):
    code = "OOM"


class ReadOnly(TargetError):
    code = "READONLY"


class AuthRefused(TargetError):
    """The credentials or the ACL rights are refused."""


class NoAuth(AuthRefused):
    code = "NOAUTH"


class WrongPass(AuthRefused):
    code = "WRONGPASS"


class NoPerm(AuthRefused):
    code = "NOPERM"


class ExecAbort(TargetError):
    code = "EXECABORT"


class NoScript(TargetError):
    """EVALSHA of a script the server does not hold (restarted, SCRIPT FLUSH)."""

    code = "NOSCRIPT"


class TopologyChanged(TargetError):
    """The error of redshake's own exactly-once unit script: the node does not serve the
    slots the writer sent it (the cluster was resharded meanwhile)."""

    code = "TOPOLOGY"


_BY_CODE: dict[str, type[TargetError]] = {
    c.code: c
    for c in (BusyKey, Moved, Ask, TryAgain, ClusterDown, Loading, MasterDown, Busy,
              NoMasterLink, OutOfMemory, ReadOnly, NoAuth, WrongPass, NoPerm, ExecAbort, NoScript,
              TopologyChanged)
}  # fmt: skip


def reply_class(message: str) -> type[TargetError]:
    """The type of an error reply (its text without ``-``, or only its first word)."""
    return _BY_CODE.get(message.split(" ", 1)[0], TargetError)


def classify(message: str, cmd: str = "", key: bytes = b"", db: int = -1) -> TargetError:
    """The typed error for an error reply to ``cmd`` on ``key`` in ``db``."""
    return reply_class(message)(message, cmd, key, db)


def exit_code(e: BaseException) -> int:
    """The exit code an exception ends the process with: its own for the house's errors,
    1 (a runtime failure) for anything else."""
    if isinstance(e, RedshakeError):
        return e.exit_code
    return EXIT_FAILURE
