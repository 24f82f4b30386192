"""Fuzz: hypothesis over the event parser, the worker's record path and the collector's
mappers (``tests/reliability/fuzz_targets.py``). ``make test`` runs a few hundred inputs per
target; ``make reliability`` runs ``tests/reliability/fuzz.py`` (100,000+ per target, and
atheris)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.reliability.fuzz_targets import COUNTS, TARGETS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_target(name: str) -> None:
    strategy, check = TARGETS[name]
    before = COUNTS[name]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value: Any) -> None:
        check(value)

    run()
    assert COUNTS[name] - before >= EXAMPLES, "every generated input reached the target"
