"""Per-contact state and its compact binary encoding.

Invariants of :class:`ContactState`:

* ``values`` are the decayed sums of the components of ``layout`` (in its order), all referred
  to the one shared time ``clock_ms``. ``clock_ms`` is the largest event timestamp seen, or the
  time ``tau`` of the last decay transition if that is later.
* ``layout`` names the model the state was computed under: its fingerprint and the ids of its
  components (see :class:`StateLayout`). A state whose layout is not the model's is migrated
  before it is used (``engagement_index.core.lifecycle``).
* ``first_seen_ms <= last_event_ms <= clock_ms``; ``last_event_ms`` is the largest event
  timestamp, ``first_seen_ms`` the smallest.
* ``due_ms`` is the time of the pending decay transition (only in an upper stage), always
  ``> clock_ms``; None when there is none. It belongs to the model of ``layout``.
* ``active_days``: bit ``i`` is set when an event with positive points happened on UTC day
  ``last_event_ms // MS_PER_DAY - i`` (``i < ACTIVITY_DAYS``).

Duplicate event ids are not part of the state: see :mod:`engagement_index.core.dedupe`.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass

from engagement_index.core.events import ContactKey
from engagement_index.core.model import CompiledModel, ScoringModel, StateLayout
from engagement_index.core.timestamps import MAX_MS, MIN_MS, MS_PER_DAY
from engagement_index.errors import StateDecodeError

#: Days covered by the activity bitmap (at least the 90 of ``active_days_90d``).
ACTIVITY_DAYS = 96
ACTIVITY_MASK = (1 << ACTIVITY_DAYS) - 1

STATE_VERSION = 2
# version, flags (bit0 post-purchase half, bit1 upper stage), clock, events counted; model
# fingerprint (u32), number of components (u8), one u32 id per component; then 3 x 7-byte
# unsigned deltas (clock - first seen, clock - last event, due - clock or 0), 12 bytes of
# activity bitmap, 8 bytes per component.
_HEAD = struct.Struct("<BBqI")
_LAYOUT_HEAD = struct.Struct("<IB")
_DELTA = 7
_BITMAP = ACTIVITY_DAYS // 8
_MAX_COUNT = 0xFFFF_FFFF
# version 1 (before the model fingerprint): no layout, then up to 16 x 7-byte event id digests
_V1_FIXED = _HEAD.size + 3 * _DELTA + _BITMAP
_V1_ID_BYTES = 7

#: The layout of version 1 states: computed under an unknown model, components in the order of
#: the model that reads them (the only order version 1 knew).
LEGACY_LAYOUT = StateLayout(fingerprint=0, component_ids=None)


@functools.cache
def _values_struct(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}d")


@functools.cache
def _layout_of(raw: bytes) -> StateLayout:
    """The (interned) layout encoded in ``raw``: equal layouts are the same object."""
    fingerprint, count = _LAYOUT_HEAD.unpack_from(raw)
    ids = struct.unpack_from(f"<{count}I", raw, _LAYOUT_HEAD.size)
    return StateLayout(fingerprint=fingerprint, component_ids=ids)


def layout_bytes(layout: StateLayout) -> bytes:
    """The encoded form of a (non-legacy) layout."""
    ids = layout.component_ids
    if ids is None:
        raise ValueError("the legacy layout is never encoded")
    return _LAYOUT_HEAD.pack(layout.fingerprint, len(ids)) + struct.pack(f"<{len(ids)}I", *ids)


def interned_layout(layout: StateLayout) -> StateLayout:
    """The layout object that decoding a state of ``layout`` returns (identity comparisons)."""
    return _layout_of(layout_bytes(layout))


def event_id_digest(event_id: str) -> bytes:
    """The 7-byte blake2b digest of an event id (the duplicate window keeps these)."""
    return hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=7).digest()


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
    active_days: int
    due_ms: int | None
    layout: StateLayout

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
    flags = int(state.post_purchase) | (int(state.upper) << 1)
    due = 0 if state.due_ms is None else state.due_ms - state.clock_ms
    layout = state.layout
    if layout.component_ids is None or len(layout.component_ids) != len(state.values):
        raise ValueError("a state is encoded with the layout of the model it was computed under")
    parts = [
        _HEAD.pack(STATE_VERSION, flags, state.clock_ms, min(state.events_counted, _MAX_COUNT)),
        layout_bytes(layout),
        (state.clock_ms - state.first_seen_ms).to_bytes(_DELTA, "little"),
        (state.clock_ms - state.last_event_ms).to_bytes(_DELTA, "little"),
        due.to_bytes(_DELTA, "little"),
        state.active_days.to_bytes(_BITMAP, "little"),
        _values_struct(len(state.values)).pack(*state.values),
    ]
    return b"".join(parts)


def _parse(data: bytes) -> tuple[int, int, int, StateLayout, int, int]:
    """``(flags, clock, counted, layout, position of the deltas, number of values)``."""
    if len(data) < _V1_FIXED + 8 or data[0] not in (1, STATE_VERSION):
        raise StateDecodeError(
            f"not a version 1 or {STATE_VERSION} contact state ({len(data)} bytes)"
        )
    _version, flags, clock, counted = _HEAD.unpack_from(data)
    if data[0] == 1:
        n_ids = flags >> 3
        rest = len(data) - _V1_FIXED - n_ids * _V1_ID_BYTES
        if flags & 0b100 or n_ids > 16 or rest <= 0 or rest % 8:
            raise StateDecodeError("corrupt contact state")
        return flags & 0b11, clock, counted, LEGACY_LAYOUT, _HEAD.size, rest // 8
    if flags & ~0b11:
        raise StateDecodeError("corrupt contact state")
    pos = _HEAD.size
    count = data[pos + 4]
    end = pos + _LAYOUT_HEAD.size + 4 * count
    if count == 0 or len(data) != end + 3 * _DELTA + _BITMAP + 8 * count:
        raise StateDecodeError("corrupt contact state")
    return flags, clock, counted, _layout_of(data[pos:end]), end, count


def peek_state(data: bytes) -> tuple[bool, bool, int | None, StateLayout]:
    """``(post_purchase, upper, due_ms, layout)`` of an encoded state, not decoding the rest.

    Checks the version and the length like :func:`decode_state` (``StateDecodeError``).
    """
    flags, clock, _counted, layout, pos, _count = _parse(data)
    pos += 2 * _DELTA
    due_delta = int.from_bytes(data[pos : pos + _DELTA], "little")
    return bool(flags & 1), bool(flags & 2), clock + due_delta if due_delta else None, layout


def decode_state(data: bytes, key: ContactKey) -> ContactState:
    """Inverse of :func:`encode_state`; ``StateDecodeError`` if the bytes are not a state.

    Version 1 states (before the layout) decode with :data:`LEGACY_LAYOUT`; their duplicate
    window is dropped.
    """
    if type(data) is not bytes:
        data = bytes(data)
    flags, clock, counted, layout, pos, count = _parse(data)
    first_delta = int.from_bytes(data[pos : pos + _DELTA], "little")
    last_delta = int.from_bytes(data[pos + _DELTA : pos + 2 * _DELTA], "little")
    due_delta = int.from_bytes(data[pos + 2 * _DELTA : pos + 3 * _DELTA], "little")
    pos += 3 * _DELTA
    bitmap = int.from_bytes(data[pos : pos + _BITMAP], "little")
    pos += _BITMAP
    values = _values_struct(count).unpack_from(data, pos)
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
        active_days=bitmap,
        due_ms=clock + due_delta if due_delta else None,
        layout=layout,
    )
