"""The hand-computed lifecycle scenarios of ``tests/lifecycle_scenarios.py`` through the replay.

Each scenario's own model, then the merged models the broker tier runs
(``tests/integration/test_lifecycle_scenarios.py``), against the same literal expectations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from engagement_index.core.model import parse_model
from engagement_index.replay import replay
from tests.lifecycle_scenarios import (
    DAY,
    GROUPS,
    SCENARIOS,
    T0,
    TREND,
    TREND_CROSSINGS,
    TREND_FAST_MS,
    TREND_SLOW_MS,
    Scenario,
    by_contact,
    merged,
    mismatches,
    records,
)

# far past the last expected change: nothing more may happen
HORIZON = T0 + 30 * DAY


def _run(model_yaml: str, scenarios: tuple[Scenario, ...]) -> dict[str, list[Mapping[str, Any]]]:
    model = parse_model(yaml.safe_load(model_yaml))
    result = replay([value for _, value in records(scenarios, T0)], model, until_ms=HORIZON)
    assert result.rejects == []
    return by_contact(t.model_dump(mode="json") for t in result.transitions)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_replay_gives_the_hand_computed_transitions(scenario: Scenario) -> None:
    got = _run(scenario.model_yaml, (scenario,))
    problems = mismatches(got, scenario.expected, T0)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("group", list(GROUPS), ids=list(GROUPS))
def test_replay_of_the_merged_model_gives_the_same_transitions(group: str) -> None:
    """The broker tier's models and expectations, checked on the core first."""
    scenarios = GROUPS[group]
    model_yaml, expected = merged(scenarios)
    got = _run(model_yaml, scenarios)
    problems = mismatches(got, expected, T0)
    assert not problems, "\n".join(problems)


def test_the_groups_hold_every_scenario_once() -> None:
    grouped = [s.name for scenarios in GROUPS.values() for s in scenarios]
    assert sorted(grouped) == sorted(s.name for s in SCENARIOS)
    assert T0 % 3_600_000 == 0, "the 60 s cap windows start at t0"


def _first_ms_below(start: int, rho0: float, level: float) -> int:
    """The first whole ms at which ``rho0·2^(-(t-start)(1/h_fast - 1/h_slow)) < level``.

    Plain float arithmetic from docs/models.md#trend: the closed form, then the float
    predicate on the neighbouring whole milliseconds.
    """
    rate = 1.0 / TREND_FAST_MS - 1.0 / TREND_SLOW_MS

    def below(t: int) -> bool:
        return float(rho0 * 2.0 ** (-(t - start) * rate)) < level

    t = start + math.ceil(math.log2(rho0 / level) / rate)
    while below(t - 1):
        t -= 1
    while not below(t):
        t += 1
    return t


def test_the_trend_crossings_are_the_doc_formula_s() -> None:
    """The literal flip times of the trend scenario, recomputed from the formula."""
    for start, rho0, level, at in TREND_CROSSINGS:
        assert _first_ms_below(start, rho0, level) == at, (start, level)
        exact = start + math.log2(rho0 / level) / (1 / TREND_FAST_MS - 1 / TREND_SLOW_MS)
        assert 0.1 < at - exact < 0.9, "far enough from a whole ms for float rounding"
    # the ratios after the events, from F and S (docs/models.md#trend)
    f, s = 10 * 2**-6 + 10, 10 * 2**-1.5 + 10
    assert 4 * f / s == pytest.approx(TREND_CROSSINGS[2][1], abs=1e-12)
    f, s = 10 * 2**-10 + 10 * 2**-4 + 2, 10 * 2**-2.5 + 10 * 2**-1 + 2
    assert 4 * f / s == pytest.approx(TREND_CROSSINGS[4][1], abs=1e-12)
    # and they are the times of the trend scenario's time-driven flips
    flips = [t.at for t in TREND.expected["trend-1"] if t.cause is None]
    assert flips == [at for *_, at in TREND_CROSSINGS]
