"""What the ``contacts`` table stores per contact: the core state plus delivery bookkeeping.

Layout (all integers little-endian / unsigned LEB128 varints)::

    version:u8=1  published_index:f32  n:u8  n x (source:u8, offset:varint)  core-state bytes

``source`` is the index of the topic in ``Topology.scoring_sources``; ``offset`` is the last
record offset of that topic applied to this contact. Because every source is co-partitioned,
one contact reads exactly one partition of each source, so a redelivered record (offset at or
below the stored one) is recognised exactly, however many events arrived since the last commit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from engagement_index.errors import EngagementIndexError

_HEAD = struct.Struct("<Bf B")
VERSION = 1


class StoredStateError(EngagementIndexError):
    """A stored value cannot be decoded."""


def _put_varint(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _get_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise StoredStateError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


@dataclass(slots=True)
class StoredContact:
    """Decoded table value: last applied offsets per source, last published index, core bytes."""

    state_bytes: bytes
    offsets: dict[int, int] = field(default_factory=dict)
    published_index: float = float("nan")

    def encode(self) -> bytes:
        """Serialise for the table."""
        out = bytearray(_HEAD.pack(VERSION, self.published_index, len(self.offsets)))
        for source, offset in sorted(self.offsets.items()):
            out.append(source)
            _put_varint(out, offset)
        out += self.state_bytes
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> StoredContact:
        """Parse a table value written by :meth:`encode`."""
        if len(data) < _HEAD.size:
            raise StoredStateError("stored value too short")
        version, published, count = _HEAD.unpack_from(data, 0)
        if version != VERSION:
            raise StoredStateError(f"unknown stored value version {version}")
        pos = _HEAD.size
        offsets: dict[int, int] = {}
        for _ in range(count):
            if pos >= len(data):
                raise StoredStateError("truncated offsets")
            source = data[pos]
            offset, pos = _get_varint(data, pos + 1)
            offsets[source] = offset
        return cls(state_bytes=data[pos:], offsets=offsets, published_index=published)
