"""The binary state codec, and the states of earlier versions (1 and 2) it still reads."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from engagement_index.core.compiled import CompiledModel, name_id
from engagement_index.core.decay import index_of
from engagement_index.core.events import ContactKey, EventFields
from engagement_index.core.lifecycle import evaluate, migrate, stage_names, step
from engagement_index.core.model import ScoringModel, load_model, parse_model
from engagement_index.core.state import (
    LEGACY_LAYOUT,
    STATE_VERSION,
    ContactState,
    decode_state,
    encode_state,
    layout_bytes,
    peek_state,
)
from engagement_index.core.timestamps import MAX_MS, MIN_MS, ms_to_rfc3339
from engagement_index.errors import StateDecodeError

T0 = 1_793_527_200_000
ROOT = Path(__file__).resolve().parents[3]
DATA = Path(__file__).resolve().parent / "data"
FORMAT1 = DATA / "default-format1.yaml"
JOURNEY = ROOT / "config" / "models" / "journey.yaml"
#: legacy stage id (half * 2 + upper) -> the default model's stage (its `legacy` key)
LEGACY_STAGES = {0: "nurture", 1: "purchase", 2: "exit", 3: "retention"}


def _run(model: ScoringModel, types: list[str], contact: str = "c-42") -> ContactState:
    state = None
    for i, event_type in enumerate(types):
        fields = EventFields(f"event-{i}", "acme", contact, event_type, T0 + i * 3_600_000)
        state, _ = step(state, fields, model.compiled)
    assert state is not None
    return state


def _busy_state() -> ContactState:
    """A default-model contact with many events and a pending decay."""
    types = ["email.click", "web.form_submit", "social.share", "commerce.cart_add"] * 10
    return _run(load_model(), types)


def _journey_state() -> ContactState:
    """A journey-model contact with markers, capped rules, three lifecycles and a trend."""
    types = ["web.page_view"] * 30 + ["commerce.purchase", "product.login", "email.open"]
    types += ["support.ticket_opened", "product.core_action"] * 3
    return _run(load_model(JOURNEY), types)


def _stage_id(cm: CompiledModel, lifecycle: int, name: str) -> int:
    [stage] = [s for s in cm.lifecycles[lifecycle].stages if s.name == name]
    return stage.stage_id


def test_round_trip_and_size_bound() -> None:
    state = _busy_state()
    cm = load_model().compiled
    assert stage_names(state, cm) == {"stage": "purchase"}
    assert state.due_ms is not None
    data = encode_state(state)
    assert data[0] == STATE_VERSION == 3
    assert len(data) <= 256
    # 14 head + 33 layout (9 + 4-byte ids of 5 components and 1 marker) + 21 deltas
    # + 12 bitmap + 5 x 8 values + 1 lifecycle x (4 + 7) + 1 marker (2 + 2 + 7)
    assert len(data) == 14 + 33 + 21 + 12 + 40 + 11 + 11 == 142
    decoded = decode_state(data, state.key)
    assert decoded == state
    assert decoded.layout is cm.layout, "layouts are interned"
    assert b"c-42" not in data
    assert b"acme" not in data


def test_round_trip_of_a_state_with_every_part() -> None:
    state = _journey_state()
    cm = load_model(JOURNEY).compiled
    assert set(stage_names(state, cm)) == {"journey", "band", "trend"}
    assert state.markers == 0b11, "customer and ticket_open"
    assert len(state.caps) == 3
    assert any(w[1] for windows in state.caps for w in windows), "a capped rule counted"
    assert state.trend[1] > 0.0
    data = encode_state(state)
    # 14 head + (9 + 4 x (6 components + 2 markers + 3 caps)) layout + 21 + 12 + 6 x 8 values
    # + 3 lifecycles x 11 + (4 + 2 x 7) markers + 16 trend + 3 caps x 2 windows x 20
    assert len(data) == 14 + 53 + 21 + 12 + 48 + 33 + 18 + 16 + 120 == 335
    decoded = decode_state(data, state.key)
    assert decoded == state
    assert decoded.layout is cm.layout


def test_round_trip_extremes() -> None:
    cm = load_model().compiled
    clock = MAX_MS
    state = ContactState(
        tenant="t",
        contact_id="c",
        clock_ms=clock,
        values=(-1e308, 0.0, 5e-324, 1e308, -0.0),
        first_seen_ms=MIN_MS,
        last_event_ms=0,
        events_counted=2**32 - 1,
        active_days=(1 << 96) - 1,
        due_ms=None,
        layout=cm.layout,
        stages=(_stage_id(cm, 0, "exit"),),
        entered_ms=(MIN_MS,),
        markers=1,
        marker_ms=(MIN_MS,),
    )
    assert decode_state(encode_state(state), ContactKey("t", "c")) == state
    # a marker never touched, and one cleared
    for markers, marker_ms in ((0, (None,)), (0, (clock,))):
        other = dataclasses.replace(state, markers=markers, marker_ms=marker_ms)
        assert decode_state(encode_state(other), ContactKey("t", "c")) == other
    journey = load_model(JOURNEY).compiled
    full = dataclasses.replace(
        state,
        values=(1e308, -1e308, 5e-324, -0.0, 0.0, 2.5),
        layout=journey.layout,
        stages=tuple(lc.stages[-1].stage_id for lc in journey.lifecycles),
        entered_ms=(MIN_MS, clock, 0),
        markers=0b10,
        marker_ms=(None, clock - 1),
        trend=(-0.0, 1e308),
        caps=(
            ((-(2**63), 2**32 - 1, 5e-324), (2**63 - 1, 1, -1e308)),
            ((0, 0, 0.0), (0, 0, 0.0)),
            ((7, 3, 2.5), (0, 0, 0.0)),
        ),
    )
    assert decode_state(encode_state(full), ContactKey("t", "c")) == full


def test_encode_refuses_a_state_that_does_not_fit_its_layout() -> None:
    state = _busy_state()
    for bad in (
        dataclasses.replace(state, values=state.values[:-1]),
        dataclasses.replace(state, stages=(*state.stages, 7), entered_ms=(T0, T0)),
        dataclasses.replace(state, marker_ms=()),
        dataclasses.replace(state, trend=(1.0, 1.0)),
        dataclasses.replace(state, layout=LEGACY_LAYOUT),
    ):
        with pytest.raises(ValueError, match="layout"):
            encode_state(bad)


def _bad_variants(good: bytes) -> list[bytes]:
    return [b"", b"\x01", b"\x00" + good[1:], b"\x04" + good[1:], good[:-1], good + b"\x00" * 3]


def test_decode_rejects_garbage() -> None:
    state = _busy_state()
    good = encode_state(state)
    key = ContactKey("acme", "c-42")
    for bad in _bad_variants(good):
        with pytest.raises(StateDecodeError):
            decode_state(bad, key)
    layout_size = len(layout_bytes(state.layout))
    assert layout_size == 33
    # first seen after the clock (its delta is the first after the head and the layout)
    data = bytearray(good)
    at = 14 + layout_size
    data[at : at + 7] = (2**56 - 1).to_bytes(7, "little")
    with pytest.raises(StateDecodeError, match="out of order"):
        decode_state(bytes(data), key)
    # a stage entered before the smallest timestamp (the delta after the stage id)
    data = bytearray(good)
    at = 14 + layout_size + 21 + 12 + 40 + 4
    assert int.from_bytes(data[at : at + 7], "little") == state.clock_ms - state.entered_ms[0]
    data[at : at + 7] = (2**56 - 1).to_bytes(7, "little")
    with pytest.raises(StateDecodeError, match="out of order"):
        decode_state(bytes(data), key)
    # the layout head: no components, a trend flag of 2, more than 16 markers, flags set
    for offset, value in ((4, 0), (8, 2), (5, 17)):
        data = bytearray(good)
        data[14 + offset] = value
        with pytest.raises(StateDecodeError):
            decode_state(bytes(data), key)
    with pytest.raises(StateDecodeError):
        decode_state(good[:1] + b"\x01" + good[2:], key)


def test_peek_agrees_with_decode() -> None:
    busy = _busy_state()
    cm = load_model().compiled
    calm = dataclasses.replace(busy, stages=(_stage_id(cm, 0, "exit"),), due_ms=None)
    for state in (busy, calm, _journey_state()):
        data = encode_state(state)
        decoded = decode_state(data, state.key)
        assert peek_state(data) == (decoded.due_ms, decoded.layout, decoded.stages)
        assert peek_state(data) == (state.due_ms, state.layout, state.stages)
    good = encode_state(busy)
    for bad in _bad_variants(good):
        with pytest.raises(StateDecodeError):
            peek_state(bad)


# ------------------------------------------------------------------------ versions 1 and 2


def _v2_cases() -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = json.loads((DATA / "states-v2.json").read_text())["states"]
    return cases


V2_CASES = _v2_cases()
#: The default model in both formats: both read earlier states the same way.
MODELS = {"format1": FORMAT1, "format2": ROOT / "config" / "models" / "default.yaml"}


def _legacy_id(stage: str) -> int:
    return {name: i for i, name in LEGACY_STAGES.items()}[stage]


def _v1_bytes(state: ContactState, legacy_stage: int) -> bytes:
    """``state`` as the release before the model fingerprint wrote it (2 id digests)."""
    flags = (legacy_stage >> 1) | ((legacy_stage & 1) << 1) | (2 << 3)
    return b"".join(
        [
            struct.pack("<BBqI", 1, flags, state.clock_ms, state.events_counted),
            (state.clock_ms - state.first_seen_ms).to_bytes(7, "little"),
            (state.clock_ms - state.last_event_ms).to_bytes(7, "little"),
            (state.due_ms - state.clock_ms if state.due_ms else 0).to_bytes(7, "little"),
            state.active_days.to_bytes(12, "little"),
            struct.pack(f"<{len(state.values)}d", *state.values),
            b"\x01" * 7,
            b"\x02" * 7,
        ]
    )


@pytest.mark.parametrize("name", sorted(V2_CASES))
def test_a_version_2_state_decodes_with_its_legacy_stage(name: str) -> None:
    case = V2_CASES[name]
    data = bytes.fromhex(case["state"])
    assert data[0] == 2
    key = ContactKey("acme", name)
    state = decode_state(data, key)
    legacy = _legacy_id(case["stage"])
    assert state.stages == (legacy,)
    assert all(stage.stage_id > 3 for stage in load_model().compiled.lifecycles[0].stages)
    assert state.entered_ms == (state.clock_ms,)
    assert (state.markers, state.marker_ms, state.trend, state.caps) == (0, (), (), ())
    assert state.due_ms == case["due_ms"]
    cm = load_model().compiled
    assert state.layout.component_ids == tuple(name_id(c) for c in cm.names)
    assert state.layout != cm.layout
    assert peek_state(data) == (case["due_ms"], state.layout, (legacy,))


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("name", sorted(V2_CASES))
def test_a_version_2_state_migrates_to_its_stage_and_goes_on_as_before(
    name: str, model_name: str
) -> None:
    """Same thresholds: the legacy stage, no model_change, the old due time, the old outputs."""
    case = V2_CASES[name]
    model = load_model(MODELS[model_name])
    cm = model.compiled
    state = decode_state(bytes.fromhex(case["state"]), ContactKey("acme", name))
    migrated, transitions = migrate(state, cm)
    assert transitions == []
    assert migrated.layout is cm.layout
    assert stage_names(migrated, cm) == {"stage": case["stage"]}
    assert migrated.entered_ms == (state.clock_ms,)
    post = case["stage"] in ("exit", "retention")
    assert migrated.markers == int(post), "the customer marker, for a post-purchase state"
    assert migrated.marker_ms == ((state.clock_ms,) if post else (None,))
    assert migrated.values == state.values
    assert migrated.due_ms == case["due_ms"], "the same crossing as the old release solved"
    # the events after it: what the old release gave, field for field (new fields at the end)
    new: list[dict[str, Any]] = []
    current = state
    for fields in case["next_events"]:
        current, out = step(current, EventFields(*fields), cm)
        new.extend(json.loads(t.to_json_bytes()) for t in out)
    assert [t["reason"] for t in new] == [t["reason"] for t in case["transitions"]]
    for old, now in zip(case["transitions"], new, strict=True):
        assert [k for k in now if k in old] == list(old)
        assert {k: now[k] for k in old} == old
        assert now["lifecycle"] == "stage"
    snapshot = json.loads(evaluate(current, case["snapshot_at_ms"], cm).to_json_bytes())
    old = case["snapshot"]
    assert [k for k in snapshot if k in old] == list(old)
    assert {k: snapshot[k] for k in old} == old


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("legacy", sorted(LEGACY_STAGES))
def test_a_version_1_state_decodes_with_the_legacy_layout_and_migrates(
    legacy: int, model_name: str
) -> None:
    # written by the release before the layout: 47 fixed bytes, 5 values, 2 id digests
    case = V2_CASES[LEGACY_STAGES[legacy]]
    v2 = decode_state(bytes.fromhex(case["state"]), ContactKey("acme", "c"))
    v1 = _v1_bytes(v2, legacy)
    decoded = decode_state(v1, v2.key)
    assert decoded.layout is LEGACY_LAYOUT
    assert dataclasses.replace(decoded, layout=v2.layout) == v2
    assert peek_state(v1) == (v2.due_ms, LEGACY_LAYOUT, (legacy,))
    cm = load_model(MODELS[model_name]).compiled
    migrated, transitions = migrate(decoded, cm)
    assert transitions == []
    assert stage_names(migrated, cm) == {"stage": LEGACY_STAGES[legacy]}
    assert migrated.values == v2.values, "by position"
    assert migrated.due_ms == v2.due_ms
    assert migrated.markers == int(legacy >= 2)


def test_an_earlier_state_under_a_model_without_legacy_enters_the_initial_stage() -> None:
    data = load_model().model_dump()
    del data["legacy"]
    cm = parse_model(data).compiled
    assert cm.legacy is None
    case = V2_CASES["retention"]
    state = decode_state(bytes.fromhex(case["state"]), ContactKey("acme", "retention"))
    migrated, transitions = migrate(state, cm)
    # where a contact with these sums starts: purchase at a pre-purchase index of 60
    start = "purchase" if index_of(state.values, cm.weights[0], cm) >= 60 else "nurture"
    assert [(t.reason, t.from_stage, t.to_stage, t.rule_id) for t in transitions] == [
        ("model_change", None, start, None)
    ]
    assert transitions[0].occurred_at == ms_to_rfc3339(state.clock_ms)
    assert transitions[0].cause_event_id is None
    assert stage_names(migrated, cm) == {"stage": start}
    assert migrated.markers == 0
