"""How consumer groups split streams into partitions: FNV-1a (32-bit) of the UTF-8 name."""

from __future__ import annotations

_OFFSET = 0x811C9DC5
_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    h = _OFFSET
    for b in data:
        h = ((h ^ b) * _PRIME) & 0xFFFFFFFF
    return h


def partition_of(stream: str, partitions: int) -> int:
    """The partition of a stream in a group with this many partitions."""
    return fnv1a_32(stream.encode()) % partitions
