"""The binary state codec."""

from __future__ import annotations

import dataclasses

import pytest

from engagement_index.core.events import ContactKey, EventFields
from engagement_index.core.lifecycle import apply_fields
from engagement_index.core.model import load_model
from engagement_index.core.state import (
    ID_WINDOW,
    STATE_VERSION,
    ContactState,
    decode_state,
    encode_state,
    peek_state,
)
from engagement_index.errors import StateDecodeError

T0 = 1_793_527_200_000


def _busy_state() -> ContactState:
    """A default-model contact with a full id window and a pending decay."""
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
    assert len(state.recent_ids) == ID_WINDOW
    assert state.upper
    assert state.due_ms is not None
    data = encode_state(state)
    assert data[0] == STATE_VERSION
    assert len(data) <= 200
    assert len(data) == 199  # 47 fixed + 5 x 8 + 16 x 7
    assert decode_state(data, state.key) == state
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
        recent_ids=(),
        active_days=(1 << 96) - 1,
        due_ms=None,
    )
    assert decode_state(encode_state(state), ContactKey("t", "c")) == state


def test_decode_rejects_garbage() -> None:
    good = encode_state(_busy_state())
    key = ContactKey("acme", "c-42")
    for bad in (b"", b"\x01", b"\x02" + good[1:], good[:-1], good + b"\x00" * 3):
        with pytest.raises(StateDecodeError):
            decode_state(bad, key)
    # first seen after the clock
    broken = dataclasses.replace(_busy_state(), first_seen_ms=0)
    data = bytearray(encode_state(broken))
    data[14:21] = (2**56 - 1).to_bytes(7, "little")
    with pytest.raises(StateDecodeError):
        decode_state(bytes(data), key)


def test_peek_agrees_with_decode() -> None:
    busy = _busy_state()
    calm = dataclasses.replace(busy, upper=False, post_purchase=True, due_ms=None)
    for state in (busy, calm):
        assert peek_state(encode_state(state)) == (state.post_purchase, state.upper, state.due_ms)
    good = encode_state(busy)
    for bad in (b"", b"\x01", b"\x02" + good[1:], good[:-1], good + b"\x00" * 3):
        with pytest.raises(StateDecodeError):
            peek_state(bad)
