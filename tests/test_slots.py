"""Key -> slot vectors (CRC16/XMODEM + hash tags) and cross-check against a real cluster node."""

from __future__ import annotations

import random

import pytest

from redshake.commands.slots import crc16, key_slot

VECTORS = [
    (b"foo", 12182),
    (b"bar", 5061),
    (b"somekey", 11058),
    (b"user1000", 3443),
    (b"{user1000}.following", 3443),
    (b"", 0),
    (b"{}", 15257),
]


def test_crc16_check_value() -> None:
    assert crc16(b"123456789") == 0x31C3
    assert crc16(b"") == 0


@pytest.mark.parametrize(("key", "slot"), VECTORS)
def test_vectors(key: bytes, slot: int) -> None:
    assert key_slot(key) == slot


def test_hash_tags() -> None:
    assert key_slot(b"a{b}{c}") == key_slot(b"b")
    assert key_slot(b"{}{x}") == crc16(b"{}{x}") & 0x3FFF
    assert key_slot(b"a{b") == crc16(b"a{b") & 0x3FFF
    assert key_slot(b"x}{y}") == key_slot(b"y")
    assert key_slot(b"{user1000}.followers") == key_slot(b"{user1000}.following")
    assert key_slot(b"\xff{\x00\x01}") == key_slot(b"\x00\x01")


def test_against_server(servers) -> None:
    srv = servers.start("redis-7.0", cluster=True)
    rnd = random.Random(7)
    keys = [b"", b"{}", b"{}{x}", b"a{b", b"a{b}{c}", b"}{", b"{{a}}"]
    keys += [bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 20))) for _ in range(300)]
    keys += [b"k{%d}" % rnd.randrange(100) + b"{z}" for _ in range(50)]
    with srv.client() as c:
        for k in keys:
            assert key_slot(k) == c.execute_command("CLUSTER", "KEYSLOT", k), k
