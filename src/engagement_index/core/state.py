"""Per-contact state and its compact binary encoding.

Invariants of :class:`ContactState`:

* ``values`` are the decayed sums of the model's components (model order), all referred to
  the one shared time ``clock_ms``. ``clock_ms`` is the largest event timestamp seen, or the
  time ``tau`` of the last decay transition if that is later.
* ``first_seen_ms <= last_event_ms <= clock_ms``; ``last_event_ms`` is the largest event
  timestamp, ``first_seen_ms`` the smallest.
* ``due_ms`` is the time of the pending decay transition (only in an upper stage), always
  ``> clock_ms``; None when there is none.
* ``recent_ids`` holds the 7-byte digests of the ``ID_WINDOW`` most recently applied event ids,
  oldest first.
* ``active_days``: bit ``i`` is set when an event with positive points happened on UTC day
  ``last_event_ms // MS_PER_DAY - i`` (``i < ACTIVITY_DAYS``).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass

from engagement_index.core.events import ContactKey
from engagement_index.core.model import CompiledModel, ScoringModel
from engagement_index.core.timestamps import MAX_MS, MIN_MS, MS_PER_DAY
from engagement_index.errors import StateDecodeError

#: How many recent event ids a contact remembers for duplicate detection.
ID_WINDOW = 16
#: Bytes of the blake2b digest kept per event id.
ID_DIGEST_BYTES = 7
#: Days covered by the activity bitmap (at least the 90 of ``active_days_90d``).
ACTIVITY_DAYS = 96
ACTIVITY_MASK = (1 << ACTIVITY_DAYS) - 1

STATE_VERSION = 1
# version, flags (bit0 post-purchase half, bit1 upper stage, bits 3-7 number of ids), clock,
# events counted; then 3 x 7-byte unsigned deltas (clock - first seen, clock - last event,
# due - clock or 0), 12 bytes of activity bitmap, 8 bytes per component, 7 bytes per id.
_HEAD = struct.Struct("<BBqI")
_DELTA = 7
_BITMAP = ACTIVITY_DAYS // 8
_FIXED = _HEAD.size + 3 * _DELTA + _BITMAP
_MAX_COUNT = 0xFFFF_FFFF


_IDS = tuple(struct.Struct(f"{ID_DIGEST_BYTES}s" * n) for n in range(ID_WINDOW + 1))


@functools.cache
def _values_struct(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}d")


def id_digest(event_id: str) -> bytes:
    """The digest of an event id kept in the duplicate window."""
    return hashlib.blake2b(
        event_id.encode("utf-8", "surrogatepass"), digest_size=ID_DIGEST_BYTES
    ).digest()


@dataclass(frozen=True, slots=True)
class ContactState:
    """Everything the core knows about one contact (see the module invariants)."""

    tenant: str
    contact_id: str
    post_purchase: bool
    upper: bool
    clock_ms: int
    values: tuple[float, ...]
    first_seen_ms: int
    last_event_ms: int
    events_counted: int
    recent_ids: tuple[bytes, ...]
    active_days: int
    due_ms: int | None

    @property
    def key(self) -> ContactKey:
        """The contact's key."""
        return ContactKey(self.tenant, self.contact_id)

    @property
    def customer(self) -> bool:
        """True once a customer-marking event was seen (the post-purchase half)."""
        return self.post_purchase

    def half_name(self, model: ScoringModel | CompiledModel) -> str:
        """Name of the current half."""
        return "post_purchase" if self.post_purchase else "pre_purchase"

    def stage_name(self, model: ScoringModel | CompiledModel) -> str:
        """Name of the current stage in ``model``."""
        compiled = model.compiled if isinstance(model, ScoringModel) else model
        half = compiled.halves[self.post_purchase]
        return half.upper_stage if self.upper else half.lower_stage


def active_days_between(state: ContactState, at_ms: int, days: int) -> int:
    """Active days among the ``days`` UTC days ending with the day of ``at_ms``."""
    anchor = state.last_event_ms // MS_PER_DAY
    offset = anchor - at_ms // MS_PER_DAY  # bit index of the day of at_ms (<= 0 if later)
    start = max(offset, 0)
    stop = min(offset + days, ACTIVITY_DAYS)
    if stop <= start:
        return 0
    window = ((1 << (stop - start)) - 1) << start
    return (state.active_days & window).bit_count()


def encode_state(state: ContactState) -> bytes:
    """Compact binary form (version byte first); the key is not included."""
    ids = state.recent_ids
    if len(ids) > ID_WINDOW:
        raise ValueError("too many recent ids")
    flags = int(state.post_purchase) | (int(state.upper) << 1) | (len(ids) << 3)
    due = 0 if state.due_ms is None else state.due_ms - state.clock_ms
    parts = [
        _HEAD.pack(STATE_VERSION, flags, state.clock_ms, min(state.events_counted, _MAX_COUNT)),
        (state.clock_ms - state.first_seen_ms).to_bytes(_DELTA, "little"),
        (state.clock_ms - state.last_event_ms).to_bytes(_DELTA, "little"),
        due.to_bytes(_DELTA, "little"),
        state.active_days.to_bytes(_BITMAP, "little"),
        _values_struct(len(state.values)).pack(*state.values),
        *ids,
    ]
    return b"".join(parts)


def peek_state(data: bytes) -> tuple[bool, bool, int | None]:
    """``(post_purchase, upper, due_ms)`` of an encoded state, without decoding the rest.

    Checks the version and the length like :func:`decode_state` (``StateDecodeError``).
    """
    if len(data) < _FIXED or data[0] != STATE_VERSION:
        raise StateDecodeError(f"not a version {STATE_VERSION} contact state ({len(data)} bytes)")
    _version, flags, clock, _counted = _HEAD.unpack_from(data)
    n_ids = flags >> 3
    rest = len(data) - _FIXED - n_ids * ID_DIGEST_BYTES
    if flags & 0b100 or n_ids > ID_WINDOW or rest <= 0 or rest % 8:
        raise StateDecodeError("corrupt contact state")
    pos = _HEAD.size + 2 * _DELTA
    due_delta = int.from_bytes(data[pos : pos + _DELTA], "little")
    return bool(flags & 1), bool(flags & 2), clock + due_delta if due_delta else None


def decode_state(data: bytes, key: ContactKey) -> ContactState:
    """Inverse of :func:`encode_state`; ``StateDecodeError`` if the bytes are not a state."""
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) < _FIXED or data[0] != STATE_VERSION:
        raise StateDecodeError(f"not a version {STATE_VERSION} contact state ({len(data)} bytes)")
    _version, flags, clock, counted = _HEAD.unpack_from(data)
    n_ids = flags >> 3
    rest = len(data) - _FIXED - n_ids * ID_DIGEST_BYTES
    if flags & 0b100 or n_ids > ID_WINDOW or rest <= 0 or rest % 8:
        raise StateDecodeError("corrupt contact state")
    pos = _HEAD.size
    first_delta = int.from_bytes(data[pos : pos + _DELTA], "little")
    last_delta = int.from_bytes(data[pos + _DELTA : pos + 2 * _DELTA], "little")
    due_delta = int.from_bytes(data[pos + 2 * _DELTA : pos + 3 * _DELTA], "little")
    pos += 3 * _DELTA
    bitmap = int.from_bytes(data[pos : pos + _BITMAP], "little")
    pos += _BITMAP
    values = _values_struct(rest // 8).unpack_from(data, pos)
    ids: tuple[bytes, ...] = _IDS[n_ids].unpack_from(data, pos + rest)
    first = clock - first_delta
    last = clock - last_delta
    if not MIN_MS <= first <= last <= clock <= MAX_MS:
        raise StateDecodeError("corrupt contact state: times out of order")
    return ContactState(
        tenant=key.tenant,
        contact_id=key.contact_id,
        post_purchase=bool(flags & 1),
        upper=bool(flags & 2),
        clock_ms=clock,
        values=values,
        first_seen_ms=first,
        last_event_ms=last,
        events_counted=counted,
        recent_ids=ids,
        active_days=bitmap,
        due_ms=clock + due_delta if due_delta else None,
    )
