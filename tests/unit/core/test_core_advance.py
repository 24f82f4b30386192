"""Time-driven changes: one call, or one call per due time, give the same transitions.

The worker applies them on wake-ups (one due time at a time, ``advance`` to each), the replay
in ``step`` before a later event (all in one call) or in ``finish`` (one at a time): the
transitions must not depend on which.
"""

from __future__ import annotations

from pathlib import Path

from engagement_index.core.compiled import CompiledModel
from engagement_index.core.events import EventFields
from engagement_index.core.lifecycle import advance, step
from engagement_index.core.model import load_model
from engagement_index.core.records import Transition
from engagement_index.core.state import ContactState

ROOT = Path(__file__).resolve().parents[3]
T = 1_793_527_370_391  # 2026-11-01T10:02:50.391Z


def _state(cm: CompiledModel, events: list[tuple[str, int]]) -> ContactState:
    state = None
    for i, (event_type, offset) in enumerate(events):
        state, _ = step(state, EventFields(f"e{i}", "t", "b", event_type, T + offset), cm)
    assert state is not None
    return state


def _due_by_due(
    state: ContactState, until: int, cm: CompiledModel
) -> tuple[ContactState, list[Transition]]:
    out: list[Transition] = []
    while state.due_ms is not None and state.due_ms <= until:
        state, transitions = advance(state, state.due_ms, cm)
        out.extend(transitions)
    return state, out


def _check(cm: CompiledModel, state: ContactState, until: int, min_changes: int) -> None:
    one_call = advance(state, until, cm)
    assert len(one_call[1]) >= min_changes
    assert _due_by_due(state, until, cm) == one_call
    # an event at ``until``: after wake-ups at every due time, or catching them up itself
    event = EventFields("last", "t", "b", "email.open", until)
    woken, _ = _due_by_due(state, until - 1, cm)
    after_wake_ups = _due_by_due(state, until - 1, cm)[1] + step(woken, event, cm)[1]
    assert step(state, event, cm)[1] == after_wake_ups


def test_the_default_model() -> None:
    cm = load_model().compiled
    hot = ["email.click", "web.form_submit", "social.share", "commerce.purchase"]
    state = _state(cm, [(t, i) for i, t in enumerate(hot * 3)])
    assert state.due_ms is not None
    _check(cm, state, T + 400 * 86_400_000, 1)


def _journey_case() -> tuple[CompiledModel, ContactState, int]:
    """A demo-journey contact whose journey stage changes between two trend changes."""
    cm = load_model(ROOT / "config" / "models" / "demo-journey.yaml").compiled
    events = [
        ("commerce.purchase", 0),
        ("commerce.purchase", 155_529),
        ("product.login", 320_467),
        ("email.click", 360_521),
    ]
    return cm, _state(cm, events), T + 592_668


def test_the_journey_case_changes_three_times() -> None:
    cm, state, until = _journey_case()
    changes = [(t.lifecycle, t.to_stage, t.rule_id) for t in advance(state, until, cm)[1]]
    assert changes == [
        ("trend", "steady", "rising_to_steady"),
        ("journey", "purchase", "onboarding_stalled"),
        ("trend", "falling", "steady_to_falling"),
    ]
    # the same changes, at the same times, either way; all but one field agree
    one_call = advance(state, until, cm)[1]
    due_by_due = _due_by_due(state, until, cm)[1]
    for a, b in zip(one_call, due_by_due, strict=True):
        assert a.model_dump(exclude={"previous_index"}) == b.model_dump(exclude={"previous_index"})


def test_a_lifecycle_on_the_contact_index_after_a_change_of_the_first() -> None:
    cm, state, until = _journey_case()
    _check(cm, state, until, 3)
