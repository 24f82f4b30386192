"""A state computed under one model, used under another: migrated, never applied as it was.

Each test runs on the default model in both formats: ``config/models/default.yaml`` (format 2,
its levels changed in its edges) and the same model as a format 1 file (its halves changed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engagement_index.core.decay import index_of
from engagement_index.core.events import EventFields
from engagement_index.core.lifecycle import advance, evaluate, migrate, stage_names, step
from engagement_index.core.model import ScoringModel, load_model, parse_model
from engagement_index.core.state import ContactState, decode_state, encode_state
from engagement_index.core.timestamps import ms_to_rfc3339

ROOT = Path(__file__).resolve().parents[3]
MODELS = {
    "format1": Path(__file__).resolve().parent / "data" / "default-format1.yaml",
    "format2": ROOT / "config" / "models" / "default.yaml",
}
T0 = 1_793_527_200_000
HOUR = 3_600_000
HOT = ["email.click", "web.form_submit", "social.share"] * 6


@pytest.fixture(params=sorted(MODELS))
def fmt(request: pytest.FixtureRequest) -> str:
    """The format of the default model the test runs on."""
    name: str = request.param
    return name


def _default(fmt: str) -> ScoringModel:
    return load_model(MODELS[fmt])


def _variant(
    fmt: str, *, enter_upper_at: float | None = None, leave_upper_below: float | None = None
) -> ScoringModel:
    """The default model with other pre-purchase levels (enter purchase at, leave it below)."""
    data = _default(fmt).model_dump()
    if fmt == "format1":
        half = data["halves"]["pre_purchase"]
        if enter_upper_at is not None:
            half["enter_upper_at"] = enter_upper_at
        if leave_upper_below is not None:
            half["leave_upper_below"] = leave_upper_below
    else:
        lifecycle = data["lifecycles"]["stage"]
        edges = {edge["id"]: edge for edge in lifecycle["edges"]}
        if enter_upper_at is not None:
            edges["engaged"]["when"]["at_least"] = enter_upper_at
            lifecycle["initial"][0]["when"]["at_least"] = enter_upper_at
        if leave_upper_below is not None:
            edges["cooled"]["when"]["below"] = leave_upper_below
    return parse_model(data)


def _without_component(model: ScoringModel, fmt: str, component: str) -> ScoringModel:
    """``model`` without ``component``: its events dropped, its weights moved to email."""
    data: dict[str, Any] = model.model_dump()
    del data["components"][component]
    data["events"] = {t: r for t, r in data["events"].items() if r["component"] != component}
    weightings = (
        [half["weights"] for half in data["halves"].values()]
        if fmt == "format1"
        else list(data["indices"].values())
    )
    for weights in weightings:
        weight = weights.pop(component, 0.0)
        weights["email"] += weight
    return parse_model(data)


def _stage(state: ContactState, model: ScoringModel) -> str:
    return stage_names(state, model.compiled)["stage"]


def _in_purchase(model: ScoringModel) -> ContactState:
    state = None
    for i, etype in enumerate(HOT):
        fields = EventFields(f"e{i}", "acme", "c", etype, T0 + i)
        state, _ = step(state, fields, model.compiled)
    assert state is not None
    assert _stage(state, model) == "purchase"
    assert state.due_ms is not None
    return state


def _stored(state: ContactState) -> ContactState:
    """Through the state codec, as a restarted worker reads it."""
    return decode_state(encode_state(state), state.key)


def test_a_lowered_leave_level_is_not_fired_at_the_old_due_time(fmt: str) -> None:
    old = _default(fmt)
    new = _variant(fmt, leave_upper_below=30)
    state = _stored(_in_purchase(old))
    assert state.due_ms is not None
    old_due = state.due_ms
    # the wake-up scheduled under the old model: the crossing no longer holds
    after, transitions = advance(state, old_due, new.compiled)
    assert transitions == []
    assert after.layout is new.compiled.layout
    assert after.due_ms is not None
    assert after.due_ms > old_due
    # at the new crossing: a decay below the new level
    final, transitions = advance(after, after.due_ms, new.compiled)
    assert [t.reason for t in transitions] == ["decay"]
    assert transitions[0].index < 30 <= transitions[0].previous_index
    assert transitions[0].rule_id == "cooled"
    assert _stage(final, new) == "nurture"


def test_a_changed_half_life_re_solves_the_due_time(fmt: str) -> None:
    old = _default(fmt)
    data = old.model_dump()
    data["components"]["web"]["half_life"] = 30 * 86_400.0
    new = parse_model(data)
    state = _stored(_in_purchase(old))
    assert state.due_ms is not None
    after, transitions = advance(state, state.due_ms, new.compiled)
    assert transitions == [], "the old crossing no longer holds with the slower decay"
    assert after.due_ms is not None
    assert after.due_ms > state.due_ms
    _, transitions = advance(after, after.due_ms, new.compiled)
    assert transitions[0].index < 45


def test_a_raised_leave_level_moves_the_contact_down_at_its_next_event(fmt: str) -> None:
    old = _default(fmt)
    new = _variant(fmt, enter_upper_at=90, leave_upper_below=85)
    state = _stored(_in_purchase(old))
    at = state.clock_ms + HOUR
    after, transitions = step(
        state, EventFields("next", "acme", "c", "email.open", at), new.compiled
    )
    assert [(t.reason, t.from_stage, t.to_stage) for t in transitions] == [
        ("model_change", "purchase", "nurture")
    ]
    change = transitions[0]
    assert change.cause_event_id is None
    assert change.lifecycle == "stage"
    assert change.occurred_at == ms_to_rfc3339(state.clock_ms), "at the clock of the old state"
    assert change.index == change.previous_index < 85
    assert change.model_version == new.version
    assert _stage(after, new) == "nurture"
    assert after.entered_ms == (state.clock_ms,), "entered nurture at the model change"
    assert after.events_counted == state.events_counted + 1


def test_a_model_change_names_no_rule(fmt: str) -> None:
    new = _variant(fmt, enter_upper_at=90, leave_upper_below=85)
    state = _stored(_in_purchase(_default(fmt)))
    _, transitions = migrate(state, new.compiled)
    assert [(t.reason, t.to_stage, t.rule_id) for t in transitions] == [
        ("model_change", "nurture", None)
    ]


def test_an_added_component_starts_at_zero_and_the_others_keep_their_sums(fmt: str) -> None:
    old = _default(fmt)
    data = old.model_dump()
    data["components"]["support"] = {"half_life": 86_400.0, "saturation": 3.0}
    data["events"]["support.ticket"] = {"component": "support", "points": 1.0}
    new = parse_model(data)
    state = _stored(_in_purchase(old))
    after, _ = step(
        state, EventFields("t", "acme", "c", "support.ticket", state.clock_ms), new.compiled
    )
    by_name = dict(zip(new.compiled.names, after.values, strict=True))
    assert by_name["support"] == 1.0
    for name, value in zip(old.compiled.names, state.values, strict=True):
        assert by_name[name] == value
    # and a removed component is dropped
    fewer = _without_component(old, fmt, "social")
    snapshot = evaluate(state, state.clock_ms, fewer.compiled)
    assert set(snapshot.components) == set(fewer.compiled.names) == set(old.components) - {"social"}


def test_the_fingerprint_ignores_the_version_but_nothing_that_scores(fmt: str) -> None:
    old = _default(fmt)
    data = old.model_dump()
    data["version"] = "renamed"
    assert parse_model(data).compiled.layout is old.compiled.layout
    assert _variant(fmt, leave_upper_below=44.5).compiled.layout is not old.compiled.layout
    state = _in_purchase(old)
    same, transitions = advance(state, state.clock_ms, parse_model(data).compiled)
    assert (same, transitions) == (state, [])


def test_a_marker_that_the_new_model_does_not_declare_is_dropped() -> None:
    old = _default("format2")
    state = None
    for i, etype in enumerate([*HOT, "commerce.purchase"]):
        state, _ = step(state, EventFields(f"e{i}", "acme", "c", etype, T0 + i), old.compiled)
    assert state is not None
    assert (state.markers, _stage(state, old)) == (1, "retention")
    data = old.model_dump()
    data["markers"] = ["vip"]
    data["events"]["commerce.purchase"]["sets"] = ["vip"]
    data["lifecycles"]["stage"]["edges"][0]["when"]["marker"] = "vip"
    data["legacy"]["marker"] = "vip"
    new = parse_model(data)
    migrated, transitions = migrate(state, new.compiled)
    assert (migrated.markers, migrated.marker_ms) == (0, (None,))
    assert transitions == [], "retention has no edge on the marker: the stage stays"
    assert _stage(migrated, new) == "retention"


@pytest.mark.parametrize("model_file", ["default.yaml", "demo.yaml"])
def test_the_same_model_changes_nothing(model_file: str) -> None:
    model = load_model(ROOT / "config" / "models" / model_file)
    cm = model.compiled
    state = _stored(_in_purchase(model))
    assert cm.index_names[0] == "pre_purchase"
    assert index_of(state.values, cm.weights[0], cm) >= 45
    assert advance(state, state.clock_ms, cm) == (state, [])
    assert migrate(state, cm) == (state, [])


def test_the_format_1_file_and_default_yaml_read_each_others_states() -> None:
    """Only the fingerprint differs: a state migrates to the same stages and due time."""
    one, two = _default("format1"), _default("format2")
    for source, target in ((one, two), (two, one)):
        state = _stored(_in_purchase(source))
        assert state.layout is not target.compiled.layout
        migrated, transitions = migrate(state, target.compiled)
        assert transitions == []
        assert migrated.layout is target.compiled.layout
        assert (migrated.stages, migrated.entered_ms, migrated.due_ms) == (
            state.stages,
            state.entered_ms,
            state.due_ms,
        )
        assert (migrated.values, migrated.markers, migrated.marker_ms) == (
            state.values,
            state.markers,
            state.marker_ms,
        )
