"""Properties of the scoring core (hypothesis)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engagement_index.core.dedupe import DEFAULT_WINDOW_MS, EMPTY, SeenIds, admit
from engagement_index.core.events import EventFields
from engagement_index.core.lifecycle import advance, evaluate, stage_names, step
from engagement_index.core.model import ScoringModel, load_model, parse_model
from engagement_index.core.records import ContactSnapshot, Transition
from engagement_index.core.state import ContactState, decode_state, encode_state, peek_state
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.replay import Replayer, replay

ROOT = Path(__file__).resolve().parents[2]
MODEL: ScoringModel = load_model()
#: The same model as a format 1 file: its halves say which stage changes are possible.
FORMAT1: ScoringModel = load_model(
    ROOT / "tests" / "unit" / "core" / "data" / "default-format1.yaml"
)
SHIPPED = sorted((ROOT / "config" / "models").glob("*.yaml"))
TYPES = sorted(MODEL.events)
T0 = 1_793_527_200_000
DAY = 86_400_000
SPAN = 120 * DAY

# (type, offset from T0 in ms); ids are the position in the generated list, so unique.
event_specs = st.lists(
    st.tuples(st.sampled_from(TYPES), st.integers(min_value=0, max_value=SPAN)),
    min_size=1,
    max_size=40,
)


def _fields(specs: list[tuple[str, int]], contact: str = "c") -> list[EventFields]:
    return [EventFields(f"id-{i}", "t", contact, ty, T0 + off) for i, (ty, off) in enumerate(specs)]


def _run(events: list[EventFields]) -> tuple[ContactState, list[Transition]]:
    state: ContactState | None = None
    out: list[Transition] = []
    for fields in events:
        state, transitions = step(state, fields, MODEL.compiled)
        out.extend(transitions)
    assert state is not None
    return state, out


@settings(max_examples=100, deadline=None)
@given(specs=event_specs, data=st.data())
def test_final_index_does_not_depend_on_arrival_order(
    specs: list[tuple[str, int]], data: st.DataObject
) -> None:
    events = _fields(specs)
    shuffled = data.draw(st.permutations(events))
    first, _ = _run(events)
    second, _ = _run(shuffled)
    at = T0 + SPAN + DAY
    a = evaluate(first, at, MODEL.compiled)
    b = evaluate(second, at, MODEL.compiled)
    assert a.index == pytest.approx(b.index, rel=1e-9, abs=1e-9)
    assert a.components == pytest.approx(b.components, rel=1e-9, abs=1e-9)
    assert (a.customer, a.half, a.events_counted) == (b.customer, b.half, b.events_counted)
    assert a.markers == b.markers
    assert (a.first_seen_at, a.last_event_at) == (b.first_seen_at, b.last_event_at)
    assert (a.active_days_7d, a.active_days_30d, a.active_days_90d) == (
        b.active_days_7d,
        b.active_days_30d,
        b.active_days_90d,
    )


@settings(max_examples=100, deadline=None)
@given(specs=event_specs, probes=st.lists(st.integers(0, 400 * DAY), min_size=2, max_size=6))
def test_index_stays_in_bounds_and_never_rises_without_events(
    specs: list[tuple[str, int]], probes: list[int]
) -> None:
    state, transitions = _run(_fields(specs))
    for t in transitions:
        assert Transition.model_validate(t.model_dump()) == t  # trusted builds are valid
        assert 0.0 <= t.index <= 100.0
        assert 0.0 <= t.previous_index <= 100.0
        assert all(0.0 <= s < 100.0 for s in t.components.values())
    previous = None
    for at in sorted(T0 + p for p in probes):
        snapshot = evaluate(state, at, MODEL.compiled)
        assert ContactSnapshot.model_validate(snapshot.model_dump()) == snapshot
        assert 0.0 <= snapshot.index <= 100.0
        if previous is not None:
            assert snapshot.index <= previous + 1e-12
        previous = snapshot.index


@settings(max_examples=100, deadline=None)
@given(specs=event_specs, data=st.data())
def test_replaying_a_duplicate_changes_nothing(
    specs: list[tuple[str, int]], data: st.DataObject
) -> None:
    events = _fields(specs)
    # duplicates right after their original, through the whole replay: same output
    lines = [_line(e) for e in events]
    doubled = [line for line in lines for _ in (0, 1)]
    plain = replay(lines, MODEL)
    dup = replay(doubled, MODEL)
    assert dup.transitions == plain.transitions
    assert dup.states == plain.states
    # and a copy of any event, however many events later, arriving within the window of its
    # original (all records here arrive within an hour): same output
    replayer = Replayer(MODEL)
    for i, line in enumerate([*lines, data.draw(st.sampled_from(lines))]):
        replayer.feed(line, arrival_ms=T0 + i)
    replayer.finish()
    assert replayer.states == plain.states
    assert replayer.stats.duplicates == 1


#: the edge ids of the default lifecycle, by (half, to the upper stage)
EDGE_IDS = {
    ("pre_purchase", True): "engaged",
    ("pre_purchase", False): "cooled",
    ("post_purchase", True): "returned",
    ("post_purchase", False): "lapsed",
}


@settings(max_examples=100, deadline=None)
@given(specs=event_specs)
def test_transitions_stay_within_the_half(specs: list[tuple[str, int]]) -> None:
    """The default lifecycle moves as the two halves of its format 1 file say."""
    state, transitions = _run(_fields(specs))
    state, decay = advance(state, T0 + 10 * SPAN, MODEL.compiled)
    assert FORMAT1.halves is not None
    halves = {
        "pre_purchase": FORMAT1.halves.pre_purchase,
        "post_purchase": FORMAT1.halves.post_purchase,
    }
    for t in [*transitions, *decay]:
        assert t.lifecycle == "stage"
        half = halves[t.half]
        stages = {half.lower_stage, half.upper_stage}
        if t.reason == "first_seen":
            assert t.from_stage is None
            assert t.half == "pre_purchase"
            assert t.to_stage in stages
            assert t.rule_id == f"initial_{t.to_stage}"
        elif t.reason == "customer_event":
            assert t.half == "post_purchase"
            assert t.to_stage == half.upper_stage
            pre = FORMAT1.halves.pre_purchase
            assert t.from_stage in {pre.lower_stage, pre.upper_stage}
            assert t.rule_id == "purchased"
        else:
            assert t.reason in ("threshold", "decay")
            assert t.from_stage in stages
            assert t.to_stage in stages
            assert t.from_stage != t.to_stage
            assert t.rule_id == EDGE_IDS[(t.half, t.to_stage == half.upper_stage)]
            if t.reason == "decay":
                assert t.from_stage == half.upper_stage
                assert t.cause_event_id is None
                assert t.index < half.leave_upper_below <= t.previous_index
    assert sum(t.reason == "customer_event" for t in transitions) <= 1
    assert state.due_ms is None, "after the last decay nothing is due without events"


@settings(max_examples=120, deadline=None)
@given(specs=event_specs)
def test_state_encoding_round_trips(specs: list[tuple[str, int]]) -> None:
    state, _ = _run(_fields(specs))
    data = encode_state(state)
    assert len(data) <= 200
    assert decode_state(data, state.key) == state
    decayed, _ = advance(state, T0 + 10 * SPAN, MODEL.compiled)
    assert decode_state(encode_state(decayed), state.key) == decayed


def _shipped_streams(path: Path) -> st.SearchStrategy[list[tuple[str, str, int]]]:
    """(contact, type, offset from T0) for a model: offsets over 40 of its longest half-lives."""
    model = load_model(path)
    span = int(max(model.compiled.half_life_ms) * 40)
    return st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(sorted(model.events)),
            st.one_of(st.integers(0, span), st.integers(0, span // 1000)),
        ),
        min_size=1,
        max_size=60,
    )


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_state_encoding_round_trips_for_every_shipped_model(path: Path) -> None:
    """States of each config/models file, built by replaying random events, round-trip."""
    model = load_model(path)
    cm = model.compiled

    @settings(max_examples=60, deadline=None)
    @given(items=_shipped_streams(path), later=st.integers(0, 10**11))
    def check(items: list[tuple[str, str, int]], later: int) -> None:
        lines = [
            _line(EventFields(f"id-{i}", "t", contact, type_, T0 + offset))
            for i, (contact, type_, offset) in enumerate(items)
        ]
        result = replay(lines, model)
        assert result.rejects == []
        for state in result.states.values():
            for each in (state, advance(state, state.clock_ms + later, cm)[0]):
                assert each.layout is cm.layout
                data = encode_state(each)
                assert data[0] == 3
                decoded = decode_state(data, each.key)
                assert decoded == each
                assert decoded.layout is each.layout
                assert peek_state(data) == (each.due_ms, each.layout, each.stages)
                assert set(stage_names(decoded, cm)) == {lc.name for lc in cm.lifecycles}

    check()


def _line(fields: EventFields) -> str:
    return json.dumps(
        {
            "event_id": fields.event_id,
            "tenant": fields.tenant,
            "contact_id": fields.contact_id,
            "type": fields.type,
            "timestamp": ms_to_rfc3339(fields.timestamp_ms),
        }
    )


# A model with half-lives of hours, so that contacts cross thresholds and decay often.
FAST_MODEL = parse_model(
    {
        "version": "fast-1",
        "components": {
            "a": {"half_life": "6h", "saturation": 5},
            "b": {"half_life": "2h", "saturation": 5},
        },
        "events": {
            "a.x": {"component": "a", "points": 3},
            "a.y": {"component": "a", "points": 1},
            "a.neg": {"component": "a", "points": -2},
            "b.x": {"component": "b", "points": 2},
            "b.buy": {"component": "b", "points": 4, "marks_customer": True},
        },
        "halves": {
            "pre_purchase": {
                "weights": {"a": 0.6, "b": 0.4},
                "lower_stage": "nurture",
                "upper_stage": "purchase",
                "enter_upper_at": 50,
                "leave_upper_below": 40,
            },
            "post_purchase": {
                "weights": {"a": 0.5, "b": 0.5},
                "lower_stage": "exit",
                "upper_stage": "retention",
                "enter_upper_at": 35,
                "leave_upper_below": 25,
            },
        },
    }
)
FAST_TYPES = ["a.x", "a.x", "a.x", "a.x", "a.y", "a.neg", "b.x", "b.x", "b.buy"]
HOUR = 3_600_000
# The journey with half-lives of seconds and minutes: three lifecycles (edges on events,
# markers, time in stage and time since a marker; bands; the trend), caps.
JOURNEY_MODEL = load_model(ROOT / "config" / "models" / "demo-journey.yaml")
#: every type, the ones with many points four times more often (so the bands move too)
JOURNEY_TYPES = sorted(JOURNEY_MODEL.events) + 4 * [
    "web.form_submit", "email.click", "social.share", "product.core_action", "social.comment",
]  # fmt: skip
SECONDS_10 = 10_000
#: model, its event types, and the time unit of its streams (gaps, lateness)
STREAM_MODELS = {
    "fast": (FAST_MODEL, FAST_TYPES, HOUR),
    "demo-journey": (JOURNEY_MODEL, JOURNEY_TYPES, SECONDS_10),
}
TIME_DRIVEN = ("decay", "time_in_stage", "trend")


def stream_items(types: list[str], unit: int) -> st.SearchStrategy[list[StreamItem]]:
    """(contact, type, gap after the previous event, lateness, event id); repeated ids are
    duplicates. Mostly in time order, some events late by up to 6 units."""
    return st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from(types),
            st.one_of(st.just(0), st.integers(0, unit), st.integers(0, 12 * unit)),
            st.one_of(st.just(0), st.just(0), st.integers(0, 6 * unit)),
            st.integers(min_value=0, max_value=60),
        ),
        min_size=1,
        max_size=40,
    )


StreamItem = tuple[str, str, int, int, int]


def _stream(items: list[StreamItem]) -> list[EventFields]:
    events = []
    clock = T0
    for contact, type_, gap, late, n in items:
        clock += gap
        events.append(EventFields(f"id-{n}", "t", contact, type_, clock - late))
    return events


def _advance_due_by_due(
    state: ContactState, until: int, model: ScoringModel
) -> tuple[ContactState, list[Transition]]:
    """``advance`` to each due time in turn up to ``until`` (as wake-ups and ``finish`` do)."""
    out: list[Transition] = []
    while state.due_ms is not None and state.due_ms <= until:
        state, transitions = advance(state, state.due_ms, model.compiled)
        out.extend(transitions)
    return state, out


def _check_replayer(
    events: list[EventFields], until: int, model: ScoringModel = FAST_MODEL
) -> list[Transition]:
    """Replayer output == step-by-step output with eager due times; returns it."""
    cm = model.compiled
    states: dict[tuple[str, str], ContactState] = {}
    expected: list[Transition] = []
    seen: dict[tuple[str, str], SeenIds] = {}
    clock = None  # the replay's default arrival: the largest event timestamp read so far
    for fields in events:
        key = (fields.tenant, fields.contact_id)
        clock = fields.timestamp_ms if clock is None else max(clock, fields.timestamp_ms)
        window = admit(seen.get(key, EMPTY), fields.event_id, clock, DEFAULT_WINDOW_MS)
        if window is None:
            continue
        seen[key] = window
        new, transitions = step(states.get(key), fields, cm)
        states[key] = new
        expected.extend(transitions)
    tail: list[Transition] = []
    for key in list(states):
        state = states[key]
        states[key], due = _advance_due_by_due(state, until, model)
        tail.extend(due)
        if len(cm.lifecycles) == 1:  # one call or one per due time: the same
            assert advance(state, until, cm) == (states[key], due)
    # by time, then contact (stable: one contact's changes at one instant keep their order)
    expected.extend(sorted(tail, key=lambda t: (t.occurred_at, t.tenant, t.contact_id)))
    result = replay([_line(f) for f in events], model, until_ms=until)
    assert result.transitions == expected
    assert result.states == states
    assert result.rejects == []
    return result.transitions


@pytest.mark.parametrize("name", sorted(STREAM_MODELS))
def test_replayer_equals_step_by_step(name: str) -> None:
    """The replayer's lazy due solving gives exactly what step() + advance() give."""
    model, types, unit = STREAM_MODELS[name]

    @settings(max_examples=120, deadline=None)
    @given(items=stream_items(types, unit), horizon=st.integers(0, 48 * unit))
    def check(items: list[StreamItem], horizon: int) -> None:
        events = _stream(items)
        _check_replayer(events, max(e.timestamp_ms for e in events) + horizon, model)

    check()


@pytest.mark.parametrize(
    ("name", "least"),
    [("fast", {"decay": 40}), ("demo-journey", {"time_in_stage": 10, "trend": 100})],
)
def test_replayer_equals_step_by_step_on_streams_with_catch_ups(
    name: str, least: dict[str, int]
) -> None:
    """Seeded streams of the same shape, checked to contain time-driven changes caught up by
    events (applied at their own time before a later event)."""
    model, types, unit = STREAM_MODELS[name]
    rnd = random.Random(5)
    caught_up: Counter[str] = Counter()
    for _ in range(40):
        items = [
            (rnd.choice("ab"), rnd.choice(types),
             rnd.choice([0, rnd.randint(0, unit), rnd.randint(0, 12 * unit)]),
             rnd.choice([0, 0, rnd.randint(0, 6 * unit)]), rnd.randint(0, 60))
            for _ in range(40)
        ]  # fmt: skip
        events = _stream(items)
        last = max(e.timestamp_ms for e in events)
        transitions = _check_replayer(events, last, model)
        caught_up.update(
            t.reason
            for t in transitions
            if t.reason in TIME_DRIVEN and t.occurred_at < ms_to_rfc3339(last)
        )
    for reason, count in least.items():
        assert caught_up[reason] > count, caught_up
