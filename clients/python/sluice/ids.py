"""Event ids: random (version 4) UUIDs, made faster than uuid.uuid4() on the hot paths."""

from __future__ import annotations

import os


def random_uuid() -> tuple[bytes, str]:
    """A version 4 UUID as 16 bytes and as canonical text."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return bytes(raw), f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
