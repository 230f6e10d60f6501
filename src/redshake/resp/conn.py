"""A plain blocking Redis connection: TCP or TLS, AUTH, hiredis-parsed replies, pipelining."""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterable, Sequence
from typing import Any

import hiredis

from redshake.resp.encode import encode, encode_many

__all__ = [
    "Connection",
    "ConnError",
    "AuthError",
    "TLSVerifyError",
    "ReplyError",
    "ProtocolError",
    "parse_address",
    "connect",
    "refuse_self_connect",
]

READ_SIZE = 65536


class ReplyError(Exception):
    """An error reply (``-ERR ...``) from the server. ``message`` is the text without ``-``."""

    def __init__(self, message: str | bytes = "") -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        super().__init__(message)
        self.message: str = message

    @property
    def code(self) -> str:
        """First word of the message (``MOVED``, ``ASK``, ``ERR``, ``WRONGPASS``...)."""
        return self.message.split(" ", 1)[0] if self.message else ""


class ProtocolError(Exception):
    """The server sent bytes that are not valid RESP."""


class ConnError(ConnectionError):
    """Cannot connect / connection lost. The message names the address."""


class AuthError(ConnError):
    """AUTH was rejected."""


class TLSVerifyError(ConnError):
    """The server's TLS certificate could not be verified."""


def parse_address(address: str, default_port: int = 6379) -> tuple[str, int]:
    """``host:port``, ``[v6addr]:port``, ``host`` -> (host, port)."""
    a = address.strip()
    if a.startswith("["):
        end = a.find("]")
        if end < 0:
            raise ValueError(f"bad address {address!r}: missing ']'")
        host = a[1:end]
        rest = a[end + 1 :]
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"bad address {address!r}")
        port_s = rest[1:]
    elif a.count(":") == 1:
        host, port_s = a.split(":")
    elif ":" in a:
        raise ValueError(f"bad address {address!r}: put IPv6 addresses in brackets, [::1]:6379")
    else:
        return a, default_port
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"bad port in address {address!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in address {address!r}")
    return host or "127.0.0.1", port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _make_reader() -> hiredis.Reader:
    return hiredis.Reader(protocolError=ProtocolError, replyError=ReplyError)


def connection_options(
    *,
    username: str | None = "",
    password: str | None = "",
    tls: bool = False,
    tls_verify: bool = True,
    tls_config: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Keyword arguments for :class:`Connection` from the settings every config section has
    (empty strings mean "not set"; ``tls_config`` holds ca_cert / cert / key paths)."""
    tc = tls_config or {}
    return dict(
        username=username or None,
        password=password or None,
        tls=tls,
        tls_verify=tls_verify,
        ca_cert=tc.get("ca_cert") or None,
        cert=tc.get("cert") or None,
        key=tc.get("key") or None,
        timeout=timeout,
    )


class Connection:
    """One connection to a Redis/Valkey server.

    ``call()`` sends one command and returns its reply (raising ``ReplyError``);
    ``pipeline()`` sends many and returns all replies (errors as ``ReplyError`` objects);
    ``send()`` / ``read_reply()`` / ``try_read_replies()`` are the low-level pieces used by
    the writers.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        tls_verify: bool = True,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        server_hostname: str | None = None,
        timeout: float | None = 10.0,
        io_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.address = format_address(host, port)
        self.tls = tls
        self.reader = _make_reader()
        self.sock: socket.socket = self._open(
            timeout, tls, tls_verify, ca_cert, cert, key, server_hostname
        )
        self.sock.settimeout(io_timeout)
        if password:
            self._auth(username, password)

    @classmethod
    def connect(cls, host: str, port: int, **kw: Any) -> Connection:
        return cls(host, port, **kw)

    # -- setup -------------------------------------------------------------------------

    def _open(
        self,
        timeout: float | None,
        tls: bool,
        tls_verify: bool,
        ca_cert: str | None,
        cert: str | None,
        key: str | None,
        server_hostname: str | None,
    ) -> socket.socket:
        try:
            raw = socket.create_connection((self.host, self.port), timeout=timeout)
        except ConnectionRefusedError:
            raise ConnError(f"connection refused by {self.address}") from None
        except TimeoutError:
            raise ConnError(f"timed out connecting to {self.address}") from None
        except OSError as e:
            raise ConnError(f"cannot connect to {self.address}: {e}") from None
        refuse_self_connect(raw, self.address)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if not tls:
            return raw
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if tls_verify:
            ctx.check_hostname = True
            ctx.verify_mode = ssl.CERT_REQUIRED
            if ca_cert:
                ctx.load_verify_locations(cafile=ca_cert)
            else:
                ctx.load_default_certs()
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert or key:
            if not (cert and key):
                raw.close()
                raise ConnError(f"{self.address}: TLS client certificate needs both cert and key")
            ctx.load_cert_chain(certfile=cert, keyfile=key)
        try:
            return ctx.wrap_socket(raw, server_hostname=server_hostname or self.host)
        except ssl.SSLCertVerificationError as e:
            raw.close()
            raise TLSVerifyError(
                f"TLS certificate of {self.address} could not be verified: {e.verify_message}"
                " (set tls_config.ca_cert, or tls_skip_verify = true to skip the check)"
            ) from None
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise ConnError(f"TLS handshake with {self.address} failed: {e}") from None

    def _auth(self, username: str | None, password: str) -> None:
        args: list[bytes | str] = ["AUTH"]
        if username:
            args.append(username)
        args.append(password)
        try:
            self.call(*args)
        except ReplyError as e:
            who = f"user {username!r}" if username else "password"
            raise AuthError(f"AUTH with {who} failed on {self.address}: {e.message}") from None

    # -- I/O ------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise ConnError(f"write to {self.address} failed: {e}") from None

    def recv(self) -> bytes:
        """Blocking read of up to 64 KiB (not fed to the reply parser)."""
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError:
            raise ConnError(f"timed out reading from {self.address}") from None
        except OSError as e:
            raise ConnError(f"read from {self.address} failed: {e}") from None
        if not data:
            raise ConnError(f"connection closed by {self.address}")
        return data

    def fill(self) -> int:
        """Blocking read of up to 64 KiB into the reply parser; returns the byte count."""
        data = self.recv()
        self.reader.feed(data)
        return len(data)

    def recv_available(self) -> bytes:
        """Whatever can be read without waiting (b"" when nothing), not fed to the parser."""
        if not self.readable():
            return b""
        data = self.recv()
        if self.tls:  # drain what the TLS layer already decrypted
            parts = [data]
            while self.readable():
                parts.append(self.recv())
            data = b"".join(parts)
        return data

    def readable(self) -> bool:
        """True when a read would not block (data in the socket or in the TLS buffer)."""
        if self.tls and self.sock.pending():  # type: ignore[attr-defined]
            return True
        r, _, _ = select.select([self.sock], [], [], 0)
        return bool(r)

    def fill_available(self) -> bool:
        """Read whatever is available without waiting; False when nothing was read."""
        got = False
        while self.readable():
            self.fill()
            got = True
            if not self.tls:
                break
        return got

    def read_reply(self) -> Any:
        """Next reply (blocking). Error replies are returned as ``ReplyError`` objects."""
        reader = self.reader
        r = reader.gets()
        while r is False:
            self.fill()
            r = reader.gets()
        return r

    def call(self, *args: bytes | str | int | float) -> Any:
        """Send one command and return its reply; raise ``ReplyError`` on an error reply."""
        self.send(encode(args))
        r = self.read_reply()
        if isinstance(r, ReplyError):
            raise r
        return r

    def pipeline(self, commands: Iterable[Sequence[bytes | str | int | float]]) -> list[Any]:
        """Send all commands at once, then read all replies (errors returned, not raised)."""
        cmds = list(commands)
        self.send(encode_many(cmds))
        return [self.read_reply() for _ in cmds]

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refuse_self_connect(sock: socket.socket, address: str) -> None:
    """A connection to a local port nothing listens on can, rarely, connect to itself (TCP
    simultaneous open when the kernel picks that same port as the source): everything sent
    would come back as if it were the replies, and writes would look acknowledged. Closed
    and refused like a refused connection."""
    try:
        same = sock.getsockname() == sock.getpeername()
    except OSError:
        return
    if same:
        sock.close()
        raise ConnError(f"connection refused by {address} (the connection reached itself: "
                        "nothing listens there)")  # fmt: skip


def connect(address: str, **kw: Any) -> Connection:
    """Connect to ``host:port`` / ``[v6]:port``; keyword arguments as for ``Connection``."""
    host, port = parse_address(address)
    return Connection(host, port, **kw)
