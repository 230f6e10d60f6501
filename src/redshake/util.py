"""Small helpers shared across the package."""

from __future__ import annotations

__all__ = ["human_bytes"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | float) -> str:
    """IEC sizes as RedisShake prints them: '538 KiB', '1.0 GiB'."""
    n = float(n)
    i = 0
    while n >= 1024 and i < len(_UNITS) - 1:
        n /= 1024
        i += 1
    if i == 0:
        return f"{int(n)} B"
    return f"{n:.0f} {_UNITS[i]}" if n >= 10 else f"{n:.1f} {_UNITS[i]}"
