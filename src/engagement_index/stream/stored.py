"""What the ``contacts`` table stores per contact: the core state plus delivery bookkeeping.

Layout (all integers little-endian / unsigned LEB128 varints)::

    version:u8=2  published_index:f32  n:u8  n x (source:u16, offset:varint)
    duplicate window (engagement_index.core.dedupe.encode_seen)  core-state bytes

Version 3 (written only for a contact that belongs to an account) has, between the offsets
and the duplicate window, the contact's account: ``length:varint`` UTF-8 bytes of the account
id, then ``since:i64`` (the timestamp of the event or group call that made it a member;
docs/models.md#accounts). :func:`account_of` reads it without decoding the rest.

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
_SINCE = struct.Struct("<q")
VERSION = 2
#: the version of a value that holds an account membership
ACCOUNT_VERSION = 3


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
    return data[state_offset(data, legacy_sources) :]


def state_offset(data: bytes, legacy_sources: Sequence[str] = ()) -> int:
    """Where the core-state bytes of a table value start (:func:`state_bytes_of`)."""
    if len(data) < _HEAD.size or data[0] not in (VERSION, ACCOUNT_VERSION):
        return len(data) - len(StoredContact.decode(data, legacy_sources).state_bytes)
    try:
        pos = _skip_offsets(data)
        if data[0] == ACCOUNT_VERSION:
            size, pos = _get_varint(data, pos)
            pos += size + _SINCE.size
        n = int(_SEEN_COUNT.unpack_from(data, pos)[0])
    except (IndexError, struct.error):
        raise StoredStateError("truncated stored value") from None
    end = pos + _SEEN_COUNT.size + n * (DIGEST_BYTES + 8)
    if end > len(data):
        raise StoredStateError("truncated duplicate window")
    return end


def published_index_of(data: bytes) -> float:
    """The published index a table value holds (NaN: never published)."""
    if len(data) < _HEAD.size:
        raise StoredStateError("stored value too short")
    return float(_HEAD.unpack_from(data, 0)[1])


def _skip_offsets(data: bytes) -> int:
    pos = _HEAD.size
    for _ in range(data[_HEAD.size - 1]):
        pos += _SOURCE.size
        while data[pos] & 0x80:
            pos += 1
        pos += 1
    return pos


def account_of(data: bytes) -> str | None:
    """The account a contact's table value says it belongs to (None: none), read without
    decoding the rest of the value."""
    if len(data) < _HEAD.size or data[0] != ACCOUNT_VERSION:
        return None
    size, pos = _get_varint(data, _skip_offsets(data))
    return data[pos : pos + size].decode("utf-8", "surrogatepass")


@dataclass(slots=True)
class StoredContact:
    """Decoded table value: last applied offsets per source id, last published index, the
    duplicate window and the core state bytes."""

    state_bytes: bytes
    offsets: dict[int, int] = field(default_factory=dict)
    published_index: float = float("nan")
    seen: SeenIds = EMPTY
    #: the contact's account and since when (the event's timestamp), or None
    account: tuple[str, int] | None = None

    def encode(self) -> bytes:
        """Serialise for the table."""
        version = VERSION if self.account is None else ACCOUNT_VERSION
        out = bytearray(_HEAD.pack(version, self.published_index, len(self.offsets)))
        for source, offset in sorted(self.offsets.items()):
            out += _SOURCE.pack(source)
            _put_varint(out, offset)
        if self.account is not None:
            account = self.account[0].encode("utf-8", "surrogatepass")
            _put_varint(out, len(account))
            out += account
            out += _SINCE.pack(self.account[1])
        out += encode_seen(self.seen)
        out += self.state_bytes
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes, legacy_sources: Sequence[str] = ()) -> StoredContact:
        """Parse a table value written by :meth:`encode` (or by version 1)."""
        if len(data) < _HEAD.size:
            raise StoredStateError("stored value too short")
        version, published, count = _HEAD.unpack_from(data, 0)
        if version not in (1, VERSION, ACCOUNT_VERSION):
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
        account = None
        if version == ACCOUNT_VERSION:
            size, pos = _get_varint(data, pos)
            if pos + size + _SINCE.size > len(data):
                raise StoredStateError("truncated account")
            name = data[pos : pos + size].decode("utf-8", "surrogatepass")
            (since,) = _SINCE.unpack_from(data, pos + size)
            pos += size + _SINCE.size
            account = (name, since)
        seen = EMPTY
        if version in (VERSION, ACCOUNT_VERSION):
            try:
                seen, pos = decode_seen(data, pos)
            except StateDecodeError as exc:
                raise StoredStateError(str(exc)) from None
        return cls(
            state_bytes=data[pos:],
            offsets=offsets,
            published_index=published,
            seen=seen,
            account=account,
        )
