"""A connection to a local port nothing listens on can connect to itself (TCP simultaneous
open, when the kernel happens to pick that port as the source port): what redshake sends
would come back as the "replies", and writes would look acknowledged by a target that does
not exist. The connection refuses such a socket like a refused connection."""

from __future__ import annotations

import socket

import pytest

from redshake.resp.conn import Connection, ConnError, refuse_self_connect
from servers import free_port


def test_a_socket_connected_to_itself_is_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.connect(("127.0.0.1", port))  # nothing listens there: it reaches itself
    s.sendall(b"PING\r\n")
    assert s.recv(100) == b"PING\r\n"  # (what a client would take for a reply)
    with pytest.raises(ConnError, match="reached itself"):
        refuse_self_connect(s, f"127.0.0.1:{port}")
    assert s.fileno() == -1  # closed


def test_an_ordinary_connection_passes(servers):
    srv = servers.start("redis-7.0")
    c = Connection(srv.host, srv.port)
    try:
        refuse_self_connect(c.sock, srv.address)  # no error
        assert c.call("PING") in (b"PONG", "PONG")
    finally:
        c.close()


def test_nothing_listening_is_a_refused_connection():
    port = free_port()
    with pytest.raises(ConnError, match="refused"):
        Connection("127.0.0.1", port, timeout=2)
