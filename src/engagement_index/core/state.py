"""Per-contact state and its compact binary encoding.

Invariants of :class:`ContactState`:

* ``values`` are the decayed sums of the components of ``layout`` (in its order), all referred
  to the one shared time ``clock_ms``; so are ``trend`` (the fast and slow sums of positive
  points, when the model has a trend) and the window sums of ``caps``. ``clock_ms`` is the
  largest event timestamp seen, or the time of the last time-driven change if that is later.
* ``layout`` names the model the state was computed under (see :class:`StateLayout`). A state
  whose layout is not the model's is migrated before it is used
  (``engagement_index.core.lifecycle.migrate``).
* ``first_seen_ms <= last_event_ms <= clock_ms``; ``last_event_ms`` is the largest event
  timestamp, ``first_seen_ms`` the smallest.
* ``stages``: the stage id (``engagement_index.core.compiled.stage_id``) of the contact's
  current stage in each lifecycle, in the model's order; ``entered_ms``: when it entered them
  (``<= clock_ms``). A state written before format 2 holds one legacy stage id (0-3).
* ``markers``: bit ``i`` set when marker ``i`` is set; ``marker_ms[i]``: the timestamp of the
  event that last set or cleared it (None: never).
* ``caps``: per capped rule, its two latest windows ``(window, count, sum)`` (count 0: empty).
* ``due_ms`` is the time of the next time-driven change, always ``> clock_ms``; None when
  there is none. It belongs to the model of ``layout``.
* ``active_days``: bit ``i`` is set when an event with positive points happened on UTC day
  ``last_event_ms // MS_PER_DAY - i`` (``i < ACTIVITY_DAYS``).

Duplicate event ids are not part of the state: see :mod:`engagement_index.core.dedupe`.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass

from engagement_index.core.compiled import StateLayout
from engagement_index.core.events import ContactKey
from engagement_index.core.timestamps import MAX_MS, MIN_MS, MS_PER_DAY
from engagement_index.errors import StateDecodeError

#: Days covered by the activity bitmap (at least the 90 of ``active_days_90d``).
ACTIVITY_DAYS = 96
ACTIVITY_MASK = (1 << ACTIVITY_DAYS) - 1

STATE_VERSION = 3
# Version 3: version, flags (0), clock, events counted; the layout: fingerprint (u32), numbers
# of components, markers, capped rules and lifecycles (u8 each), trend flag (u8), then one u32
# id per component, marker and capped rule; then 3 x 7-byte unsigned deltas (clock - first
# seen, clock - last event, due - clock or 0), 12 bytes of activity bitmap, 8 bytes per
# component; per lifecycle a u32 stage id and a 7-byte delta (clock - entered); the marker
# bits (u16) and touched bits (u16) and a 7-byte delta per marker (clock - last change, 0 if
# never); the trend sums (2 x f64) if any; per capped rule two windows (i64 window, u32 count,
# f64 sum).
_HEAD = struct.Struct("<BBqI")
_LAYOUT_HEAD = struct.Struct("<IBBBBB")
_DELTA = 7
_BITMAP = ACTIVITY_DAYS // 8
_MAX_COUNT = 0xFFFF_FFFF
_STAGE = struct.Struct("<I")
_MARKER_BITS = struct.Struct("<HH")
_TREND = struct.Struct("<dd")
_WINDOW = struct.Struct("<qId")
# Versions 1 and 2 (two halves: flags bit0 post-purchase, bit1 upper stage). Version 2 layout:
# fingerprint (u32), number of components (u8), one u32 id each; version 1: no layout, then up
# to 16 x 7-byte event id digests.
_V2_LAYOUT_HEAD = struct.Struct("<IB")
_V1_FIXED = _HEAD.size + 3 * _DELTA + _BITMAP
_V1_ID_BYTES = 7

#: The layout of version 1 states: computed under an unknown model, components in the order of
#: the model that reads them (the only order version 1 knew).
LEGACY_LAYOUT = StateLayout(fingerprint=0, component_ids=None)

#: A cap window: (window number, events in it, decayed sum of their unit contributions).
Window = tuple[int, int, float]
EMPTY_WINDOW: Window = (0, 0, 0.0)


@functools.cache
def _values_struct(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}d")


@functools.cache
def _layout_of(raw: bytes) -> StateLayout:
    """The (interned) layout encoded in ``raw``: equal layouts are the same object."""
    fingerprint, n_comp, n_markers, n_caps, n_lifecycles, trend = _LAYOUT_HEAD.unpack_from(raw)
    ids = struct.unpack_from(f"<{n_comp + n_markers + n_caps}I", raw, _LAYOUT_HEAD.size)
    return StateLayout(
        fingerprint=fingerprint,
        component_ids=ids[:n_comp],
        marker_ids=ids[n_comp : n_comp + n_markers],
        cap_ids=ids[n_comp + n_markers :],
        lifecycles=n_lifecycles,
        trend=bool(trend),
    )


@functools.cache
def _v2_layout_of(raw: bytes) -> StateLayout:
    fingerprint, count = _V2_LAYOUT_HEAD.unpack_from(raw)
    ids = struct.unpack_from(f"<{count}I", raw, _V2_LAYOUT_HEAD.size)
    return StateLayout(fingerprint=fingerprint, component_ids=ids)


def layout_bytes(layout: StateLayout) -> bytes:
    """The encoded form of a (non-legacy) layout."""
    ids = layout.component_ids
    if ids is None:
        raise ValueError("the legacy layout is never encoded")
    every = (*ids, *layout.marker_ids, *layout.cap_ids)
    head = _LAYOUT_HEAD.pack(
        layout.fingerprint,
        len(ids),
        len(layout.marker_ids),
        len(layout.cap_ids),
        layout.lifecycles,
        int(layout.trend),
    )
    return head + struct.pack(f"<{len(every)}I", *every)


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
    clock_ms: int
    values: tuple[float, ...]
    first_seen_ms: int
    last_event_ms: int
    events_counted: int
    active_days: int
    due_ms: int | None
    layout: StateLayout
    stages: tuple[int, ...]
    entered_ms: tuple[int, ...]
    markers: int = 0
    marker_ms: tuple[int | None, ...] = ()
    trend: tuple[float, ...] = ()
    caps: tuple[tuple[Window, Window], ...] = ()

    @property
    def key(self) -> ContactKey:
        """The contact's key."""
        return ContactKey(self.tenant, self.contact_id)


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


def _delta(clock: int, at: int | None) -> bytes:
    return (0 if at is None else clock - at).to_bytes(_DELTA, "little")


def encode_state(state: ContactState) -> bytes:
    """Compact binary form (version byte first); the key is not included."""
    layout = state.layout
    ids = layout.component_ids
    if (
        ids is None
        or len(ids) != len(state.values)
        or layout.lifecycles != len(state.stages)
        or len(layout.marker_ids) != len(state.marker_ms)
        or len(layout.cap_ids) != len(state.caps)
        or layout.trend != bool(state.trend)
    ):
        raise ValueError("a state is encoded with the layout of the model it was computed under")
    clock = state.clock_ms
    due = 0 if state.due_ms is None else state.due_ms - clock
    touched = 0
    for i, at in enumerate(state.marker_ms):
        if at is not None:
            touched |= 1 << i
    parts = [
        _HEAD.pack(STATE_VERSION, 0, clock, min(state.events_counted, _MAX_COUNT)),
        layout_bytes(layout),
        _delta(clock, state.first_seen_ms),
        _delta(clock, state.last_event_ms),
        due.to_bytes(_DELTA, "little"),
        state.active_days.to_bytes(_BITMAP, "little"),
        _values_struct(len(state.values)).pack(*state.values),
    ]
    for stage, entered in zip(state.stages, state.entered_ms, strict=True):
        parts.append(_STAGE.pack(stage))
        parts.append(_delta(clock, entered))
    if state.marker_ms:
        parts.append(_MARKER_BITS.pack(state.markers, touched))
        parts.extend(_delta(clock, at) for at in state.marker_ms)
    if state.trend:
        parts.append(_TREND.pack(*state.trend))
    for windows in state.caps:
        for window in windows:
            parts.append(_WINDOW.pack(*window))
    return b"".join(parts)


def _body_size(layout: StateLayout) -> int:
    assert layout.component_ids is not None
    markers = len(layout.marker_ids)
    return (
        3 * _DELTA
        + _BITMAP
        + 8 * len(layout.component_ids)
        + layout.lifecycles * (_STAGE.size + _DELTA)
        + (_MARKER_BITS.size + markers * _DELTA if markers else 0)
        + (_TREND.size if layout.trend else 0)
        + 2 * _WINDOW.size * len(layout.cap_ids)
    )


def _parse(data: bytes) -> tuple[int, int, int, int, StateLayout, int]:
    """``(version, flags, clock, counted, layout, position of the deltas)``."""
    if len(data) < _V1_FIXED + 8 or data[0] not in (1, 2, STATE_VERSION):
        raise StateDecodeError(f"not a contact state of version 1 to 3 ({len(data)} bytes)")
    version, flags, clock, counted = _HEAD.unpack_from(data)
    pos = _HEAD.size
    if version == 1:
        n_ids = flags >> 3
        rest = len(data) - _V1_FIXED - n_ids * _V1_ID_BYTES
        if flags & 0b100 or n_ids > 16 or rest <= 0 or rest % 8:
            raise StateDecodeError("corrupt contact state")
        return version, flags & 0b11, clock, counted, LEGACY_LAYOUT, pos
    if version == 2:
        if flags & ~0b11:
            raise StateDecodeError("corrupt contact state")
        count = data[pos + 4]
        end = pos + _V2_LAYOUT_HEAD.size + 4 * count
        if count == 0 or len(data) != end + 3 * _DELTA + _BITMAP + 8 * count:
            raise StateDecodeError("corrupt contact state")
        return version, flags, clock, counted, _v2_layout_of(data[pos:end]), end
    if flags or len(data) < pos + _LAYOUT_HEAD.size:
        raise StateDecodeError("corrupt contact state")
    _, n_comp, n_markers, n_caps, _, trend = _LAYOUT_HEAD.unpack_from(data, pos)
    end = pos + _LAYOUT_HEAD.size + 4 * (n_comp + n_markers + n_caps)
    if n_comp == 0 or trend > 1 or n_markers > 16 or len(data) < end:
        raise StateDecodeError("corrupt contact state")
    layout = _layout_of(data[pos:end])
    if len(data) != end + _body_size(layout):
        raise StateDecodeError("corrupt contact state")
    return version, flags, clock, counted, layout, end


def _int(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + _DELTA], "little")


def peek_state(data: bytes) -> tuple[int | None, StateLayout, tuple[int, ...]]:
    """``(due_ms, layout, stage ids)`` of an encoded state, not decoding the rest.

    Checks the version and the length like :func:`decode_state` (``StateDecodeError``).
    Version 1 and 2 states give one legacy stage id (0-3: half * 2 + upper).
    """
    version, flags, clock, _counted, layout, pos = _parse(data)
    due_delta = _int(data, pos + 2 * _DELTA)
    due = clock + due_delta if due_delta else None
    if version < STATE_VERSION:
        return due, layout, ((flags & 1) * 2 + (flags >> 1 & 1),)
    assert layout.component_ids is not None
    pos += 3 * _DELTA + _BITMAP + 8 * len(layout.component_ids)
    stages = tuple(
        _STAGE.unpack_from(data, pos + i * (_STAGE.size + _DELTA))[0]
        for i in range(layout.lifecycles)
    )
    return due, layout, stages


def peek_activity(data: bytes) -> tuple[StateLayout, tuple[int, ...], int, tuple[float, ...]]:
    """``(layout, stage ids, last event ms, values)`` of an encoded state, not decoding the rest.

    What the segment index keys a contact by (``stream/segments.py``), at a fraction of the
    cost of :func:`decode_state`; the same checks as :func:`peek_state`. Version 1 and 2
    states give one legacy stage id, as :func:`peek_state` does.
    """
    version, flags, clock, _counted, layout, pos = _parse(data)
    last = clock - _int(data, pos + _DELTA)
    pos += 3 * _DELTA + _BITMAP
    if version == 1:
        count = (len(data) - _V1_FIXED - (data[1] >> 3) * _V1_ID_BYTES) // 8
    else:
        assert layout.component_ids is not None
        count = len(layout.component_ids)
    values = _values_struct(count).unpack_from(data, pos)
    if version < STATE_VERSION:
        return layout, ((flags & 1) * 2 + (flags >> 1 & 1),), last, values
    pos += 8 * count
    stages = tuple(
        _STAGE.unpack_from(data, pos + i * (_STAGE.size + _DELTA))[0]
        for i in range(layout.lifecycles)
    )
    return layout, stages, last, values


def decode_state(data: bytes, key: ContactKey) -> ContactState:
    """Inverse of :func:`encode_state`; ``StateDecodeError`` if the bytes are not a state.

    Version 1 and 2 states (two halves) decode with one legacy stage id (0-3: half * 2 +
    upper) entered at the clock; version 1 states with :data:`LEGACY_LAYOUT` and their
    duplicate window dropped. The model migrates them (``core.lifecycle.migrate``).
    """
    if type(data) is not bytes:
        data = bytes(data)
    version, flags, clock, counted, layout, pos = _parse(data)
    first = clock - _int(data, pos)
    last = clock - _int(data, pos + _DELTA)
    due_delta = _int(data, pos + 2 * _DELTA)
    pos += 3 * _DELTA
    bitmap = int.from_bytes(data[pos : pos + _BITMAP], "little")
    pos += _BITMAP
    if version == 1:
        count = (len(data) - _V1_FIXED - (data[1] >> 3) * _V1_ID_BYTES) // 8
    else:
        assert layout.component_ids is not None
        count = len(layout.component_ids)
    values = _values_struct(count).unpack_from(data, pos)
    pos += 8 * count
    if not MIN_MS <= first <= last <= clock <= MAX_MS:
        raise StateDecodeError("corrupt contact state: times out of order")
    due = clock + due_delta if due_delta else None
    if version < STATE_VERSION:
        legacy_stage = (flags & 1) * 2 + (flags >> 1 & 1)
        return ContactState(
            key.tenant, key.contact_id, clock, values, first, last, counted, bitmap, due,
            layout, (legacy_stage,), (clock,),
        )  # fmt: skip
    stages = []
    entered = []
    for _ in range(layout.lifecycles):
        stages.append(_STAGE.unpack_from(data, pos)[0])
        entered.append(clock - _int(data, pos + _STAGE.size))
        pos += _STAGE.size + _DELTA
    markers = 0
    marker_ms: list[int | None] = []
    if layout.marker_ids:
        markers, touched = _MARKER_BITS.unpack_from(data, pos)
        pos += _MARKER_BITS.size
        for i in range(len(layout.marker_ids)):
            marker_ms.append(clock - _int(data, pos) if touched >> i & 1 else None)
            pos += _DELTA
    trend: tuple[float, ...] = ()
    if layout.trend:
        trend = _TREND.unpack_from(data, pos)
        pos += _TREND.size
    caps = []
    for _ in layout.cap_ids:
        first_window = _WINDOW.unpack_from(data, pos)
        second_window = _WINDOW.unpack_from(data, pos + _WINDOW.size)
        caps.append((first_window, second_window))
        pos += 2 * _WINDOW.size
    if any(not MIN_MS <= e <= clock for e in entered):
        raise StateDecodeError("corrupt contact state: stage times out of order")
    return ContactState(
        key.tenant, key.contact_id, clock, values, first, last, counted, bitmap, due, layout,
        tuple(stages), tuple(entered), markers, tuple(marker_ms), trend, tuple(caps),
    )  # fmt: skip
