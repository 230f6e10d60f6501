"""Key -> cluster hash slot (CRC16/XMODEM with hash tags), table-driven."""

from __future__ import annotations

__all__ = ["key_slot", "crc16", "SLOTS"]

SLOTS = 16384


def _make_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0, no reflection)."""
    crc = 0
    t = _TABLE
    for b in data:
        crc = ((crc << 8) & 0xFF00) ^ t[(crc >> 8) ^ b]
    return crc


def key_slot(key: bytes) -> int:
    """Cluster slot of ``key``; only the first ``{`` counts, and an empty tag is ignored."""
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1 : e]
    crc = 0
    t = _TABLE
    for b in key:
        crc = ((crc << 8) & 0xFF00) ^ t[(crc >> 8) ^ b]
    return crc & 0x3FFF
