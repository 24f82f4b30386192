"""Hand-computed scenarios of the issue's "Done when" list, on the small test model.

Component a decays with a half-life of one day and saturates at k = 10, so
``s_a = 100 * D / (D + 10)``: D = 10 -> 50, D = 5 -> 33.33..., D = 8 -> 44.44...
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from engagement_index.core.decay import index_after
from engagement_index.core.events import CanonicalEvent, event_fields
from engagement_index.core.lifecycle import advance, evaluate, stage_names, step
from engagement_index.core.model import ScoringModel
from engagement_index.core.records import Transition
from engagement_index.core.state import ContactState
from engagement_index.core.timestamps import ms_to_rfc3339, parse_timestamp_ms
from engagement_index.replay import replay

DAY = 86_400_000
T0 = 1_793_527_200_000  # 2026-11-01T10:00:00.000Z
EventFactory = Callable[..., CanonicalEvent]

# tau - t0 for a single D = 10 of component a to fall below index 40 (D < 20/3):
# 10 * 2^(-x/day) = 20/3  <=>  x = day * log2(1.5) = 50_540_760.06 ms -> first whole ms after.
CROSSING_MS = 50_540_761


def _run(
    model: ScoringModel, events: list[tuple[str, int]], ev: EventFactory
) -> tuple[ContactState, list[Transition]]:
    state: ContactState | None = None
    out: list[Transition] = []
    for type_, at in events:
        state, transitions = step(state, event_fields(ev(type_, at)), model.compiled)
        out.extend(transitions)
    assert state is not None
    return state, out


def test_t0_constant() -> None:
    assert parse_timestamp_ms("2026-11-01T10:00:00Z") == T0
    assert math.log2(1.5) * DAY == pytest.approx(50_540_760.0623, abs=1e-3)


def test_first_seen_upper_and_lower(tmodel: ScoringModel, ev: EventFactory) -> None:
    _, out = _run(tmodel, [("a.hit", T0)], ev)
    assert [(t.from_stage, t.to_stage, t.reason) for t in out] == [(None, "purchase", "first_seen")]
    assert out[0].index == 50.0
    assert out[0].previous_index == 0.0
    assert out[0].half == "pre_purchase"
    assert out[0].occurred_at == "2026-11-01T10:00:00.000Z"
    assert out[0].components == {"a": 50.0, "b": 0.0}
    assert out[0].model_version == "test-1"
    _, out = _run(tmodel, [("a.small", T0)], ev)
    assert out[0].to_stage == "nurture"
    assert out[0].index == pytest.approx(100 * 5 / 15)


def test_decay_by_exactly_one_half_life(tmodel: ScoringModel, ev: EventFactory) -> None:
    state, _ = _run(tmodel, [("a.small", T0)], ev)  # D = 5, nurture (no pending decay)
    later = evaluate(state, T0 + DAY, tmodel.compiled)
    assert later.components["a"] == pytest.approx(100 * 2.5 / 12.5, rel=1e-12)  # D = 2.5
    assert later.index == pytest.approx(20.0, rel=1e-12)
    assert later.evaluated_at == "2026-11-02T10:00:00.000Z"
    # the b component (half-life 2 days) halves in two days
    state, _ = _run(tmodel, [("b.hit", T0)], ev)
    assert evaluate(state, T0 + 2 * DAY, tmodel.compiled).components["b"] == pytest.approx(
        100 * 5 / 15, rel=1e-12
    )


def test_saturation(tmodel: ScoringModel, ev: EventFactory) -> None:
    expected = {1: 50.0, 3: 75.0, 9: 90.0, 99: 99.0}  # 100 n / (n + 1) for D = 10 n
    for n, score in expected.items():
        state, _ = _run(tmodel, [("a.hit", T0)] * n, ev)
        snap = evaluate(state, T0, tmodel.compiled)
        assert snap.components["a"] == pytest.approx(score, rel=1e-12)
        assert snap.index < 100.0


def test_negative_points_clamped(tmodel: ScoringModel, ev: EventFactory) -> None:
    state, out = _run(tmodel, [("a.hit", T0), ("a.neg", T0 + 1000)], ev)
    assert state.values[0] == pytest.approx(10 * 2 ** (-1000 / DAY) - 20)  # D < 0
    assert [(t.reason, t.from_stage, t.to_stage, t.index) for t in out[1:]] == [
        ("threshold", "purchase", "nurture", 0.0)
    ]
    assert out[1].previous_index == 50.0
    assert out[1].components["a"] == 0.0
    # a negative sum decays towards 0 from below: the score stays 0
    assert evaluate(state, T0 + 10 * DAY, tmodel.compiled).index == 0.0
    # it takes points to climb out of the hole: +10 -> about 0, +10 more -> about 10 -> 50
    state, out = _run(tmodel, [("a.hit", T0), ("a.neg", T0), ("a.hit", T0), ("a.hit", T0)], ev)
    assert state.values[0] == 10.0
    assert [t.reason for t in out] == ["first_seen", "threshold", "threshold"]
    assert out[-1].index == 50.0


def test_threshold_hysteresis_both_ways(tmodel: ScoringModel, ev: EventFactory) -> None:
    steps = ["a.hit", "a.dip", "a.dip", "a.plus", "a.plus"]  # D: 10, 8, 6, 8, 10
    state, out = _run(tmodel, [(s, T0) for s in steps], ev)
    summary = [(t.reason, t.from_stage, t.to_stage, t.index, t.previous_index) for t in out]
    assert summary == [
        ("first_seen", None, "purchase", 50.0, 0.0),
        # D = 8 -> 44.4 stays in purchase (>= 40); D = 6 -> 37.5 leaves
        ("threshold", "purchase", "nurture", 37.5, pytest.approx(800 / 18)),
        # D = 8 -> 44.4 stays in nurture (< 50); D = 10 -> 50 enters
        ("threshold", "nurture", "purchase", 50.0, pytest.approx(800 / 18)),
    ]
    assert stage_names(state, tmodel.compiled) == {"stage": "purchase"}


def test_customer_event(tmodel: ScoringModel, ev: EventFactory) -> None:
    state, out = _run(tmodel, [("a.hit", T0), ("b.buy", T0 + 0), ("b.buy", T0 + 1)], ev)
    assert [(t.reason, t.from_stage, t.to_stage, t.half) for t in out] == [
        ("first_seen", None, "purchase", "pre_purchase"),
        ("customer_event", "purchase", "retention", "post_purchase"),
    ]
    # post-purchase index = (s_a + s_b) / 2 = (50 + 50) / 2
    assert out[1].index == 50.0
    assert out[1].previous_index == 50.0
    assert out[1].cause_event_id == "e1"
    cm = tmodel.compiled
    assert cm.markers == ("customer",)
    assert state.markers == 1, "the customer marker is set"
    assert state.marker_ms == (T0 + 1,), "the time of the last event that set it"
    assert stage_names(state, cm) == {"stage": "retention"}
    snap = evaluate(state, T0 + 1, cm)
    assert snap.customer is True
    assert snap.half == "post_purchase"
    assert snap.stage == "retention"
    assert snap.markers == {"customer": "2026-11-01T10:00:00.001Z"}


def test_customer_event_then_threshold_same_instant(tmodel: ScoringModel, ev: EventFactory) -> None:
    _, out = _run(tmodel, [("b.tiny_buy", T0)], ev)
    s_b = 100 * 2 / 12
    assert [(t.reason, t.from_stage, t.to_stage) for t in out] == [
        ("first_seen", None, "nurture"),
        ("customer_event", "nurture", "retention"),
        ("threshold", "retention", "exit"),
    ]
    assert out[0].index == 0.0  # b weighs 0 before the purchase
    assert out[1].index == pytest.approx(s_b / 2)
    assert out[2].index == pytest.approx(s_b / 2)
    assert out[2].previous_index == out[1].index
    assert {t.occurred_at for t in out} == {"2026-11-01T10:00:00.000Z"}


def test_decay_crossing_time_to_one_ms(tmodel: ScoringModel, ev: EventFactory) -> None:
    state, _ = _run(tmodel, [("a.hit", T0)], ev)
    tau = state.due_ms
    assert tau == T0 + CROSSING_MS
    cm = tmodel.compiled
    assert cm.index_names[0] == "pre_purchase"
    assert index_after(state.values, CROSSING_MS, cm.weights[0], cm) < 40.0
    assert index_after(state.values, CROSSING_MS - 1, cm.weights[0], cm) >= 40.0
    # not due yet one ms before
    same, none = advance(state, tau - 1, tmodel.compiled)
    assert same is state
    assert none == []
    new, (decay,) = advance(state, tau + 5 * DAY, tmodel.compiled)
    assert decay.reason == "decay"
    assert (decay.from_stage, decay.to_stage) == ("purchase", "nurture")
    assert decay.occurred_at == ms_to_rfc3339(T0 + CROSSING_MS) == "2026-11-02T00:02:20.761Z"
    assert decay.cause_event_id is None
    assert decay.index == pytest.approx(40.0, abs=1e-5)
    assert decay.index < 40.0
    assert decay.previous_index == 50.0
    assert new.clock_ms == tau  # the state rebases to tau
    assert new.due_ms is None


def test_catch_up_before_a_later_event(tmodel: ScoringModel, ev: EventFactory) -> None:
    state, out = _run(tmodel, [("a.hit", T0), ("a.hit", T0 + 2 * DAY)], ev)
    assert [(t.reason, t.from_stage, t.to_stage, t.occurred_at) for t in out] == [
        ("first_seen", None, "purchase", "2026-11-01T10:00:00.000Z"),
        ("decay", "purchase", "nurture", "2026-11-02T00:02:20.761Z"),
        ("threshold", "nurture", "purchase", "2026-11-03T10:00:00.000Z"),
    ]
    # D = 10 / 4 + 10 = 12.5 -> 100 * 12.5 / 22.5
    assert out[2].index == pytest.approx(100 * 12.5 / 22.5, rel=1e-12)
    assert out[2].previous_index == out[1].index
    assert state.clock_ms == T0 + 2 * DAY


def test_event_exactly_at_tau_gets_the_decay_first(tmodel: ScoringModel, ev: EventFactory) -> None:
    _, out = _run(tmodel, [("a.hit", T0), ("a.zero", T0 + CROSSING_MS)], ev)
    assert [t.reason for t in out] == ["first_seen", "decay"]
    _, out = _run(tmodel, [("a.hit", T0), ("a.zero", T0 + CROSSING_MS - 1)], ev)
    assert [t.reason for t in out] == ["first_seen"]


def test_late_event(tmodel: ScoringModel, ev: EventFactory) -> None:
    state, out = _run(tmodel, [("a.small", T0 + DAY), ("a.hit", T0)], ev)
    # D at the clock (t0 + 1 day) = 5 + 10 / 2 = 10 -> 50: enters purchase at the clock
    assert state.values[0] == 10.0
    assert state.clock_ms == T0 + DAY
    assert [(t.reason, t.to_stage, t.index, t.occurred_at) for t in out] == [
        ("first_seen", "nurture", pytest.approx(100 * 5 / 15), "2026-11-02T10:00:00.000Z"),
        ("threshold", "purchase", 50.0, "2026-11-02T10:00:00.000Z"),
    ]
    snap = evaluate(state, T0, tmodel.compiled)  # earlier than the clock: evaluated at the clock
    assert snap.evaluated_at == "2026-11-02T10:00:00.000Z"
    assert snap.first_seen_at == "2026-11-01T10:00:00.000Z"
    assert snap.last_event_at == "2026-11-02T10:00:00.000Z"
    assert snap.active_days_7d == 2


def test_late_event_after_a_decay_is_evaluated_at_tau(
    tmodel: ScoringModel, ev: EventFactory
) -> None:
    state, _ = _run(tmodel, [("a.hit", T0)], ev)
    tau = T0 + CROSSING_MS
    state, _ = advance(state, tau, tmodel.compiled)
    state, out = step(state, event_fields(ev("a.small", T0 + 1000)), tmodel.compiled)
    assert state.clock_ms == tau
    expected = 10 * 2 ** (-CROSSING_MS / DAY) + 5 * 2 ** (-(CROSSING_MS - 1000) / DAY)
    assert state.values[0] == pytest.approx(expected, rel=1e-12)
    assert state.last_event_ms == T0 + 1000
    # D ~ 6.67 + 3.33 = 10.0 -> about 50: back in purchase, at tau
    assert [(t.reason, t.occurred_at) for t in out] == [("threshold", ms_to_rfc3339(tau))]


def test_two_tenants_with_the_same_contact_id(tmodel: ScoringModel, ev: EventFactory) -> None:
    lines = [
        ev("a.hit", T0, tenant="acme", contact="c-1", id="same").model_dump_json(),
        ev("a.small", T0, tenant="globex", contact="c-1", id="same").model_dump_json(),
    ]
    result = replay(lines, tmodel)
    assert sorted(result.states) == [("acme", "c-1"), ("globex", "c-1")]
    by_tenant = {s.tenant: s for s in result.snapshots}
    assert by_tenant["acme"].stage == "purchase"
    assert by_tenant["globex"].stage == "nurture"
    firsts = [t for t in result.transitions if t.reason == "first_seen"]
    assert len(firsts) == 2
    assert firsts[0].transition_id != firsts[1].transition_id
    assert result.rejects == []


def test_transition_ids_are_deterministic(tmodel: ScoringModel, ev: EventFactory) -> None:
    lines = [ev("a.hit", T0, id="a").model_dump_json(), ev("a.neg", T0, id="b").model_dump_json()]
    first = [t.transition_id for t in replay(lines, tmodel).transitions]
    second = [t.transition_id for t in replay(lines, tmodel).transitions]
    assert first == second
    assert len(set(first)) == len(first) == 2
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first)


def test_activity_days(tmodel: ScoringModel, ev: EventFactory) -> None:
    events = [("a.hit", T0 - d * DAY) for d in (0, 1, 1, 5, 20, 60, 89, 90, 200)]
    events.append(("a.dip", T0 - 2 * DAY))  # negative points: not activity
    state, _ = _run(tmodel, events, ev)
    snap = evaluate(state, T0, tmodel.compiled)
    assert (snap.active_days_7d, snap.active_days_30d, snap.active_days_90d) == (3, 4, 6)
    later = evaluate(state, T0 + 3 * DAY, tmodel.compiled)
    assert (later.active_days_7d, later.active_days_30d, later.active_days_90d) == (2, 4, 5)
    assert evaluate(state, T0 + 400 * DAY, tmodel.compiled).active_days_90d == 0


def test_step_rejects_unknown_type_and_foreign_contact(
    tmodel: ScoringModel, ev: EventFactory
) -> None:
    from engagement_index.errors import EventRejected

    with pytest.raises(EventRejected) as info:
        step(None, event_fields(ev("web.page_view", T0)), tmodel.compiled)
    assert info.value.failure == "unknown_type"
    state, _ = step(None, event_fields(ev("a.hit", T0)), tmodel.compiled)
    with pytest.raises(ValueError, match="another contact"):
        step(state, event_fields(ev("a.hit", T0, contact="other")), tmodel.compiled)
