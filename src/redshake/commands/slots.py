"""Key -> cluster hash slot: CRC-16/XMODEM with hash tags.

The checksum Redis Cluster hashes keys with (poly 0x1021, init 0, no reflection, no final
xor) is the one ``binascii.crc_hqx`` computes with a start value of 0; that C function is
several times faster per key than a table loop in Python or a general CRC library's call.
"""

from __future__ import annotations

from binascii import crc_hqx

__all__ = ["key_slot", "crc16", "SLOTS"]

SLOTS = 16384


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM of ``data``."""
    return crc_hqx(data, 0)


def key_slot(key: bytes) -> int:
    """Cluster slot of ``key``; only the first ``{`` counts, and an empty tag is ignored."""
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            return crc_hqx(key[s + 1 : e], 0) & 0x3FFF
    return crc_hqx(key, 0) & 0x3FFF
