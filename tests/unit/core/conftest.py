"""Fixtures of the core unit tests: a small model with round numbers, and an event factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from engagement_index.core.events import CanonicalEvent
from engagement_index.core.model import ScoringModel, parse_model
from engagement_index.core.timestamps import ms_to_rfc3339

DAY = 86_400_000
T0 = 1_793_527_200_000  # 2026-11-01T10:00:00.000Z

# Component a: half-life 1 day, k = 10; component b: half-life 2 days, k = 10.
# Pre-purchase index = s_a; post-purchase index = (s_a + s_b) / 2.
TEST_MODEL: dict[str, Any] = {
    "version": "test-1",
    "components": {
        "a": {"half_life": "1d", "saturation": 10},
        "b": {"half_life": 172800, "saturation": 10},
    },
    "events": {
        "a.hit": {"component": "a", "points": 10},
        "a.small": {"component": "a", "points": 5},
        "a.plus": {"component": "a", "points": 2},
        "a.dip": {"component": "a", "points": -2},
        "a.neg": {"component": "a", "points": -20},
        "a.zero": {"component": "a", "points": 0},
        "b.hit": {"component": "b", "points": 10},
        "b.buy": {"component": "b", "points": 10, "marks_customer": True},
        "b.tiny_buy": {"component": "b", "points": 2, "marks_customer": True},
    },
    "halves": {
        "pre_purchase": {
            "weights": {"a": 1.0},
            "lower_stage": "nurture",
            "upper_stage": "purchase",
            "enter_upper_at": 50,
            "leave_upper_below": 40,
        },
        "post_purchase": {
            "weights": {"a": 0.5, "b": 0.5},
            "lower_stage": "exit",
            "upper_stage": "retention",
            "enter_upper_at": 30,
            "leave_upper_below": 20,
        },
    },
}

EventFactory = Callable[..., CanonicalEvent]


@pytest.fixture
def tmodel() -> ScoringModel:
    """The small test model."""
    return parse_model(TEST_MODEL)


@pytest.fixture
def ev() -> EventFactory:
    """Build events: ``ev("a.hit", at_ms, id=..., contact=..., tenant=...)``."""
    counter = iter(range(1_000_000))

    def make(
        type_: str,
        at_ms: int,
        *,
        id: str | None = None,
        contact: str = "c1",
        tenant: str = "t1",
    ) -> CanonicalEvent:
        return CanonicalEvent.model_validate(
            {
                "event_id": id if id is not None else f"e{next(counter)}",
                "tenant": tenant,
                "contact_id": contact,
                "type": type_,
                "timestamp": ms_to_rfc3339(at_ms),
            }
        )

    return make
