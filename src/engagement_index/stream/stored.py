"""What the ``contacts`` table stores per contact: the core state plus delivery bookkeeping.

Layout (all integers little-endian / unsigned LEB128 varints)::

    version:u8=2  published_index:f32  n:u8  n x (source:u16, offset:varint)
    duplicate window (engagement_index.core.dedupe.encode_seen)  core-state bytes

``source`` is the 16-bit id of the topic (:func:`source_id`, a hash of its name, so the
order of ``scoring_sources`` in the topology may change); ``offset`` is the last record offset
of that topic applied to this contact. Because every source is co-partitioned, one contact
reads exactly one partition of each source, so a redelivered record (offset at or below the
stored one) is recognised exactly, however many events arrived since the last commit.

Version 1 values (sources by their position in ``scoring_sources``, no duplicate window) are
still read: :meth:`StoredContact.decode` maps positions through ``legacy_sources``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from engagement_index.core.dedupe import DIGEST_BYTES, EMPTY, SeenIds, decode_seen, encode_seen
from engagement_index.errors import EngagementIndexError, StateDecodeError

_HEAD = struct.Struct("<Bf B")
_SOURCE = struct.Struct("<H")
_SEEN_COUNT = struct.Struct("<I")
VERSION = 2


class StoredStateError(EngagementIndexError):
    """A stored value cannot be decoded."""


def source_id(topic: str) -> int:
    """The 16-bit id of a scoring source in stored values."""
    return int.from_bytes(hashlib.blake2b(topic.encode(), digest_size=2).digest(), "little")


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


def state_bytes_of(data: bytes, legacy_sources: Sequence[str] = ()) -> bytes:
    """The core-state bytes of a table value: :meth:`StoredContact.decode`'s ``state_bytes``,
    skipping the offsets and the duplicate window instead of decoding them."""
    if len(data) < _HEAD.size or data[0] != VERSION:
        return StoredContact.decode(data, legacy_sources).state_bytes
    pos = _HEAD.size
    for _ in range(data[_HEAD.size - 1]):
        pos += _SOURCE.size
        while data[pos] & 0x80:
            pos += 1
        pos += 1
    (n,) = _SEEN_COUNT.unpack_from(data, pos)
    end = pos + _SEEN_COUNT.size + n * (DIGEST_BYTES + 8)
    if end > len(data):
        raise StoredStateError("truncated duplicate window")
    return data[end:]


@dataclass(slots=True)
class StoredContact:
    """Decoded table value: last applied offsets per source id, last published index, the
    duplicate window and the core state bytes."""

    state_bytes: bytes
    offsets: dict[int, int] = field(default_factory=dict)
    published_index: float = float("nan")
    seen: SeenIds = EMPTY

    def encode(self) -> bytes:
        """Serialise for the table."""
        out = bytearray(_HEAD.pack(VERSION, self.published_index, len(self.offsets)))
        for source, offset in sorted(self.offsets.items()):
            out += _SOURCE.pack(source)
            _put_varint(out, offset)
        out += encode_seen(self.seen)
        out += self.state_bytes
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes, legacy_sources: Sequence[str] = ()) -> StoredContact:
        """Parse a table value written by :meth:`encode` (or by version 1)."""
        if len(data) < _HEAD.size:
            raise StoredStateError("stored value too short")
        version, published, count = _HEAD.unpack_from(data, 0)
        if version not in (1, VERSION):
            raise StoredStateError(f"unknown stored value version {version}")
        pos = _HEAD.size
        offsets: dict[int, int] = {}
        for _ in range(count):
            if version == 1:
                if pos >= len(data):
                    raise StoredStateError("truncated offsets")
                position = data[pos]
                if position >= len(legacy_sources):
                    raise StoredStateError(f"version 1 value names source #{position}")
                source, pos = source_id(legacy_sources[position]), pos + 1
            else:
                if pos + _SOURCE.size > len(data):
                    raise StoredStateError("truncated offsets")
                (source,) = _SOURCE.unpack_from(data, pos)
                pos += _SOURCE.size
            offset, pos = _get_varint(data, pos)
            offsets[source] = offset
        seen = EMPTY
        if version == VERSION:
            try:
                seen, pos = decode_seen(data, pos)
            except StateDecodeError as exc:
                raise StoredStateError(str(exc)) from None
        return cls(state_bytes=data[pos:], offsets=offsets, published_index=published, seen=seen)
