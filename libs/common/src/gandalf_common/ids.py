"""Identifiers."""

from __future__ import annotations

import os
import time


def uuid7() -> str:
    """RFC 9562 UUIDv7: 48-bit ms timestamp, version, 74 random bits (sortable)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) << 64) | (0b10 << 62) | (rand & (2**62 - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
