"""Protobuf wire-format pieces for code that assembles messages from bytes (store, gateway)."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """The base-128 varint encoding of a non-negative integer."""
    # Positions and revisions of a busy store take 3 or 4 bytes: spelled out, without the
    # loop (every stored event's head carries its position).
    if 0x4000 <= n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if 0x200000 <= n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """The varint at ``buf[i]`` and the index after it."""
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
