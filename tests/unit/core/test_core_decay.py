"""The crossing-time solver agrees with a plain integer bisection."""

from __future__ import annotations

import random

import pytest

from engagement_index.core.compiled import LEVEL, CompiledModel
from engagement_index.core.decay import crossing_delay_ms, index_after, index_of, rebase
from engagement_index.core.model import load_model
from engagement_index.core.timestamps import MAX_MS


def _leave_levels(cm: CompiledModel) -> tuple[float, float]:
    """The leave levels of the default model's upper stages: (purchase, retention)."""
    stages = {s.name: s for s in cm.lifecycles[0].stages}
    levels = []
    for upper, lower in (("purchase", "nurture"), ("retention", "exit")):
        [edge] = [e for e in stages[upper].edges if e.cond.kind == LEVEL]
        assert cm.lifecycles[0].stages[edge.to].name == lower
        assert not edge.cond.at_least
        levels.append(edge.cond.level)
    return levels[0], levels[1]


def test_the_default_leave_levels() -> None:
    cm = load_model().compiled
    assert cm.index_names[:2] == ("pre_purchase", "post_purchase")
    assert _leave_levels(cm) == (45.0, 25.0)


def _reference(values: list[float], weighting: int, threshold: float, limit: int) -> int | None:
    cm = load_model().compiled
    weights = cm.weights[weighting]
    if index_after(values, limit, weights, cm) >= threshold:
        return None
    lo, hi = 0, limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if index_after(values, mid, weights, cm) < threshold:
            hi = mid
        else:
            lo = mid
    return hi


def test_solver_matches_bisection() -> None:
    cm = load_model().compiled
    leave = _leave_levels(cm)
    rnd = random.Random(7)
    checked = 0
    for _ in range(300):
        values = [rnd.choice([0.0, rnd.uniform(-5, 3), rnd.uniform(0, 200)]) for _ in range(5)]
        post = int(rnd.random() < 0.5)
        weights = cm.weights[post]
        threshold = leave[post]
        if index_of(values, weights, cm) < threshold:
            continue
        limit = 10**13
        got = crossing_delay_ms(values, weights, cm, threshold, limit)
        assert got == _reference(values, post, threshold, limit)
        assert got is not None
        assert (
            index_after(values, got, weights, cm)
            < threshold
            <= index_after(values, got - 1, weights, cm)
        )
        checked += 1
    assert checked > 50


def test_solver_edge_cases() -> None:
    cm = load_model().compiled
    weights = cm.weights[0]
    assert crossing_delay_ms([0.0] * 5, weights, cm, 45.0, 10**12) == 0
    strong = [1e6, 1e6, 1e6, 1e6, 0.0]
    # the index stays above 45 for longer than the limit
    assert crossing_delay_ms(strong, weights, cm, 45.0, 1000) is None
    assert crossing_delay_ms(strong, weights, cm, 0.0, 10**12) is None
    far = crossing_delay_ms(strong, weights, cm, 45.0, MAX_MS)
    assert far is not None
    assert far > 10**10


def test_index_after_is_rebase_then_index() -> None:
    cm = load_model().compiled
    rnd = random.Random(3)
    for _ in range(2000):
        values = [rnd.choice([0.0, rnd.uniform(-5, 300)]) for _ in range(5)]
        delta = rnd.choice([0, 1, rnd.randint(0, 10**11)])
        for weights in cm.weights:  # the two indices, then one per component
            assert index_after(values, delta, weights, cm) == index_of(
                rebase(values, delta, cm), weights, cm
            )


@pytest.mark.parametrize("delta", [0, 1, 604_800_000])
def test_rebase_halves_per_half_life(delta: int) -> None:
    cm = load_model().compiled
    values = rebase([8.0, 8.0, 8.0, 8.0, 8.0], delta, cm)
    assert values[1] == pytest.approx(8.0 * 2 ** (-delta / 604_800_000), rel=1e-15)
