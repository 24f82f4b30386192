"""Fixtures of the core unit tests: a small model with round numbers, and an event factory.

The small model is written twice, as a format 1 file (``halves``) and as the format 2
lifecycle the loader turns it into (docs/models.md#the-default-model); ``tmodel`` runs each
test on both.
"""

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

# The same model in format 2.
TEST_MODEL_2: dict[str, Any] = {
    "format": 2,
    "version": "test-1",
    "components": TEST_MODEL["components"],
    "markers": ["customer"],
    "events": {
        event_type: (
            {"component": rule["component"], "points": rule["points"], "sets": ["customer"]}
            if rule.get("marks_customer")
            else rule
        )
        for event_type, rule in TEST_MODEL["events"].items()
    },
    "indices": {"pre_purchase": {"a": 1.0}, "post_purchase": {"a": 0.5, "b": 0.5}},
    "lifecycles": {
        "stage": {
            "stages": {
                "nurture": {"index": "pre_purchase"},
                "purchase": {"index": "pre_purchase"},
                "retention": {"index": "post_purchase"},
                "exit": {"index": "post_purchase"},
            },
            "initial": [
                {"stage": "purchase", "when": {"index": "pre_purchase", "at_least": 50}},
                {"stage": "nurture"},
            ],
            "edges": [
                {
                    "id": "purchased",
                    "from": ["nurture", "purchase"],
                    "to": "retention",
                    "when": {"marker": "customer"},
                },
                {
                    "id": "engaged",
                    "from": "nurture",
                    "to": "purchase",
                    "when": {"index": "pre_purchase", "at_least": 50},
                },
                {
                    "id": "cooled",
                    "from": "purchase",
                    "to": "nurture",
                    "when": {"index": "pre_purchase", "below": 40},
                },
                {
                    "id": "returned",
                    "from": "exit",
                    "to": "retention",
                    "when": {"index": "post_purchase", "at_least": 30},
                },
                {
                    "id": "lapsed",
                    "from": "retention",
                    "to": "exit",
                    "when": {"index": "post_purchase", "below": 20},
                },
            ],
        }
    },
    "legacy": {"stages": ["nurture", "purchase", "exit", "retention"], "marker": "customer"},
}

EventFactory = Callable[..., CanonicalEvent]


@pytest.fixture(params=[1, 2], ids=["format1", "format2"])
def tmodel(request: pytest.FixtureRequest) -> ScoringModel:
    """The small test model, in format 1 and in format 2."""
    model = parse_model(TEST_MODEL if request.param == 1 else TEST_MODEL_2)
    assert model.format == request.param
    return model


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
