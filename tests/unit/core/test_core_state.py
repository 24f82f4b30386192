"""The binary state codec."""

from __future__ import annotations

import dataclasses

import pytest

from engagement_index.core.events import ContactKey, EventFields
from engagement_index.core.lifecycle import apply_fields
from engagement_index.core.model import load_model
from engagement_index.core.state import (
    LEGACY_LAYOUT,
    STATE_VERSION,
    ContactState,
    decode_state,
    encode_state,
    peek_state,
)
from engagement_index.errors import StateDecodeError

T0 = 1_793_527_200_000


def _busy_state() -> ContactState:
    """A default-model contact with many events and a pending decay."""
    model = load_model()
    state = None
    types = ["email.click", "web.form_submit", "social.share", "commerce.cart_add"] * 10
    for i, event_type in enumerate(types):
        fields = EventFields(f"event-{i}", "acme", "c-42", event_type, T0 + i * 3_600_000)
        state, _ = apply_fields(state, fields, model)
    assert state is not None
    return state


def test_round_trip_and_size_bound() -> None:
    state = _busy_state()
    assert state.upper
    assert state.due_ms is not None
    data = encode_state(state)
    assert data[0] == STATE_VERSION
    assert len(data) <= 256
    assert len(data) == 112  # 52 fixed + 5 x (4-byte component id + 8-byte value)
    decoded = decode_state(data, state.key)
    assert decoded == state
    assert decoded.layout is load_model().compiled.layout, "layouts are interned"
    assert b"c-42" not in data
    assert b"acme" not in data


def test_round_trip_extremes() -> None:
    state = ContactState(
        tenant="t",
        contact_id="c",
        post_purchase=True,
        upper=False,
        clock_ms=253_402_300_799_999,
        values=(-1e308, 0.0, 5e-324, 1e308, -0.0),
        first_seen_ms=-62_135_596_800_000,
        last_event_ms=0,
        events_counted=2**32 - 1,
        active_days=(1 << 96) - 1,
        due_ms=None,
        layout=load_model().compiled.layout,
    )
    assert decode_state(encode_state(state), ContactKey("t", "c")) == state


def test_decode_rejects_garbage() -> None:
    good = encode_state(_busy_state())
    key = ContactKey("acme", "c-42")
    for bad in (b"", b"\x01", b"\x03" + good[1:], good[:-1], good + b"\x00" * 3):
        with pytest.raises(StateDecodeError):
            decode_state(bad, key)
    # first seen after the clock
    broken = dataclasses.replace(_busy_state(), first_seen_ms=0)
    data = bytearray(encode_state(broken))
    data[14 + 25 : 21 + 25] = (2**56 - 1).to_bytes(7, "little")  # after the 25-byte layout
    with pytest.raises(StateDecodeError):
        decode_state(bytes(data), key)


def test_peek_agrees_with_decode() -> None:
    busy = _busy_state()
    calm = dataclasses.replace(busy, upper=False, post_purchase=True, due_ms=None)
    for state in (busy, calm):
        assert peek_state(encode_state(state)) == (
            state.post_purchase,
            state.upper,
            state.due_ms,
            state.layout,
        )
    good = encode_state(busy)
    for bad in (b"", b"\x01", b"\x03" + good[1:], good[:-1], good + b"\x00" * 3):
        with pytest.raises(StateDecodeError):
            peek_state(bad)


def test_a_version_1_state_still_decodes_with_the_legacy_layout() -> None:
    # written by the previous release: 47 fixed bytes, 5 values, 2 id digests
    state = _busy_state()
    import struct

    flags = int(state.post_purchase) | (int(state.upper) << 1) | (2 << 3)
    v1 = b"".join(
        [
            struct.pack("<BBqI", 1, flags, state.clock_ms, state.events_counted),
            (state.clock_ms - state.first_seen_ms).to_bytes(7, "little"),
            (state.clock_ms - state.last_event_ms).to_bytes(7, "little"),
            (state.due_ms - state.clock_ms if state.due_ms else 0).to_bytes(7, "little"),
            state.active_days.to_bytes(12, "little"),
            struct.pack("<5d", *state.values),
            b"\x01" * 7,
            b"\x02" * 7,
        ]
    )
    decoded = decode_state(v1, state.key)
    assert decoded.layout is LEGACY_LAYOUT
    assert dataclasses.replace(decoded, layout=state.layout) == state
    assert peek_state(v1) == (state.post_purchase, state.upper, state.due_ms, LEGACY_LAYOUT)
