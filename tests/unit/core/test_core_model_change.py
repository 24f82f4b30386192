"""A state computed under one model, used under another: migrated, never applied as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from engagement_index.core.decay import index_of
from engagement_index.core.events import EventFields
from engagement_index.core.lifecycle import advance, apply_fields, evaluate
from engagement_index.core.model import ScoringModel, load_model, parse_model
from engagement_index.core.state import ContactState, decode_state, encode_state
from engagement_index.core.timestamps import ms_to_rfc3339

ROOT = Path(__file__).resolve().parents[3]
T0 = 1_793_527_200_000
HOUR = 3_600_000
HOT = ["email.click", "web.form_submit", "social.share"] * 6


def _variant(**halves: float) -> ScoringModel:
    data = load_model(ROOT / "config" / "models" / "default.yaml").model_dump()
    data["halves"]["pre_purchase"].update(halves)
    return parse_model(data)


def _in_purchase(model: ScoringModel) -> ContactState:
    state = None
    for i, etype in enumerate(HOT):
        state, _ = apply_fields(state, EventFields(f"e{i}", "acme", "c", etype, T0 + i), model)
    assert state is not None
    assert state.upper
    assert state.due_ms is not None
    return state


def _stored(state: ContactState) -> ContactState:
    """Through the state codec, as a restarted worker reads it."""
    return decode_state(encode_state(state), state.key)


def test_a_lowered_leave_level_is_not_fired_at_the_old_due_time() -> None:
    old = load_model(ROOT / "config" / "models" / "default.yaml")
    new = _variant(leave_upper_below=30)
    state = _stored(_in_purchase(old))
    assert state.due_ms is not None
    old_due = state.due_ms
    # the wake-up scheduled under the old model: the crossing no longer holds
    after, transitions = advance(state, old_due, new)
    assert transitions == []
    assert after.layout is new.compiled.layout
    assert after.due_ms is not None
    assert after.due_ms > old_due
    # at the new crossing: a decay below the new level
    final, transitions = advance(after, after.due_ms, new)
    assert [t.reason for t in transitions] == ["decay"]
    assert transitions[0].index < 30 <= transitions[0].previous_index
    assert not final.upper


def test_a_changed_half_life_re_solves_the_due_time() -> None:
    old = load_model(ROOT / "config" / "models" / "default.yaml")
    data = old.model_dump()
    data["components"]["web"]["half_life"] = 30 * 86_400.0
    new = parse_model(data)
    state = _stored(_in_purchase(old))
    assert state.due_ms is not None
    after, transitions = advance(state, state.due_ms, new)
    assert transitions == [], "the old crossing no longer holds with the slower decay"
    assert after.due_ms is not None
    assert after.due_ms > state.due_ms
    _, transitions = advance(after, after.due_ms, new)
    assert transitions[0].index < 45


def test_a_raised_leave_level_moves_the_contact_down_at_its_next_event() -> None:
    old = load_model(ROOT / "config" / "models" / "default.yaml")
    new = _variant(enter_upper_at=90, leave_upper_below=85)
    state = _stored(_in_purchase(old))
    at = state.clock_ms + HOUR
    after, transitions = apply_fields(
        state, EventFields("next", "acme", "c", "email.open", at), new
    )
    assert [(t.reason, t.from_stage, t.to_stage) for t in transitions] == [
        ("model_change", "purchase", "nurture")
    ]
    change = transitions[0]
    assert change.cause_event_id is None
    assert change.occurred_at == ms_to_rfc3339(state.clock_ms), "at the clock of the old state"
    assert change.index == change.previous_index < 85
    assert change.model_version == new.version
    assert not after.upper
    assert after.events_counted == state.events_counted + 1


def test_an_added_component_starts_at_zero_and_the_others_keep_their_sums() -> None:
    old = load_model(ROOT / "config" / "models" / "default.yaml")
    data = old.model_dump()
    data["components"]["support"] = {"half_life": 86_400.0, "saturation": 3.0}
    data["events"]["support.ticket"] = {"component": "support", "points": 1.0}
    new = parse_model(data)
    state = _stored(_in_purchase(old))
    after, _ = apply_fields(
        state, EventFields("t", "acme", "c", "support.ticket", state.clock_ms), new
    )
    by_name = dict(zip(new.compiled.names, after.values, strict=True))
    assert by_name["support"] == 1.0
    for name, value in zip(old.compiled.names, state.values, strict=True):
        assert by_name[name] == value
    # and a removed component is dropped
    data = old.model_dump()
    del data["components"]["social"]
    data["events"] = {t: r for t, r in data["events"].items() if r["component"] != "social"}
    for half in data["halves"].values():
        weight = half["weights"].pop("social", 0.0)
        half["weights"]["email"] += weight
    fewer = parse_model(data)
    snapshot = evaluate(state, state.clock_ms, fewer)
    assert set(snapshot.components) == set(fewer.compiled.names)


def test_the_fingerprint_ignores_the_version_but_nothing_that_scores() -> None:
    old = load_model(ROOT / "config" / "models" / "default.yaml")
    data = old.model_dump()
    data["version"] = "renamed"
    assert parse_model(data).compiled.layout is old.compiled.layout
    assert _variant(leave_upper_below=44.5).compiled.layout is not old.compiled.layout
    state = _in_purchase(old)
    same, transitions = advance(state, state.clock_ms, parse_model(data))
    assert (same, transitions) == (state, [])


@pytest.mark.parametrize("model_file", ["default.yaml", "demo.yaml"])
def test_the_same_model_changes_nothing(model_file: str) -> None:
    model = load_model(ROOT / "config" / "models" / model_file)
    state = _stored(_in_purchase(model))
    half = model.compiled.halves[state.post_purchase]
    assert index_of(state.values, half, model.compiled) >= half.leave_upper_below
    assert advance(state, state.clock_ms, model) == (state, [])
