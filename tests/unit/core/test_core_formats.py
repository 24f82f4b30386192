"""A format 1 file and the format 2 lifecycle it stands for give byte-identical outputs.

``config/models/default.yaml`` is the format 2 form of the default model's format 1 file
(``data/default-format1.yaml``); ``config/models/demo.yaml`` is still a format 1 file, and its
format 2 form is written here from its halves, as docs/models.md#the-default-model says.
Both pairs replay the same streams to the same transitions and snapshots, byte for byte.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from engagement_index.core.model import ScoringModel, load_model, parse_model
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.replay import ReplayResult, replay
from tests.unit.core.test_default_model_golden import adversarial_lines

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "config" / "models"
FORMAT1 = Path(__file__).resolve().parent / "data" / "default-format1.yaml"
T0 = 1_793_527_200_000


def as_format_2(data: dict[str, Any]) -> dict[str, Any]:
    """The format 2 model of a format 1 file's data (docs/models.md#the-default-model)."""
    pre, post = data["halves"]["pre_purchase"], data["halves"]["post_purchase"]
    events = {}
    for event_type, rule in data["events"].items():
        rule = dict(rule)
        if rule.pop("marks_customer", False):
            rule["sets"] = ["customer"]
        events[event_type] = rule

    def level(index: str, **bound: float) -> dict[str, Any]:
        return {"index": index, **bound}

    return {
        "format": 2,
        "version": data["version"],
        "components": data["components"],
        "markers": ["customer"],
        "events": events,
        "indices": {"pre_purchase": pre["weights"], "post_purchase": post["weights"]},
        "lifecycles": {
            "stage": {
                "stages": {
                    pre["lower_stage"]: {"index": "pre_purchase"},
                    pre["upper_stage"]: {"index": "pre_purchase"},
                    post["upper_stage"]: {"index": "post_purchase"},
                    post["lower_stage"]: {"index": "post_purchase"},
                },
                "initial": [
                    {
                        "stage": pre["upper_stage"],
                        "when": level("pre_purchase", at_least=pre["enter_upper_at"]),
                    },
                    {"stage": pre["lower_stage"]},
                ],
                "edges": [
                    {
                        "id": "purchased",
                        "from": [pre["lower_stage"], pre["upper_stage"]],
                        "to": post["upper_stage"],
                        "when": {"marker": "customer"},
                    },
                    {
                        "id": "engaged",
                        "from": pre["lower_stage"],
                        "to": pre["upper_stage"],
                        "when": level("pre_purchase", at_least=pre["enter_upper_at"]),
                    },
                    {
                        "id": "cooled",
                        "from": pre["upper_stage"],
                        "to": pre["lower_stage"],
                        "when": level("pre_purchase", below=pre["leave_upper_below"]),
                    },
                    {
                        "id": "returned",
                        "from": post["lower_stage"],
                        "to": post["upper_stage"],
                        "when": level("post_purchase", at_least=post["enter_upper_at"]),
                    },
                    {
                        "id": "lapsed",
                        "from": post["upper_stage"],
                        "to": post["lower_stage"],
                        "when": level("post_purchase", below=post["leave_upper_below"]),
                    },
                ],
            }
        },
        "legacy": {
            "stages": [
                pre["lower_stage"],
                pre["upper_stage"],
                post["lower_stage"],
                post["upper_stage"],
            ],
            "marker": "customer",
        },
    }


def _yaml(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def random_lines(model: ScoringModel, seed: int, contacts: int, episodes: int) -> list[bytes]:
    """A stream on the model's time scale, in arrival order: bursts of events with many
    points, trickles of any events, pauses of a few half-lives, purchases (by half the
    contacts); some events late, some ids repeated."""
    rnd = random.Random(seed)
    half_life = int(min(c.half_life for c in model.components.values()) * 1000)
    types = sorted(t for t in model.events if t != "commerce.purchase")
    hot = ["email.click", "web.form_submit", "social.share", "product.core_action"]
    clock = T0
    out: list[bytes] = []

    def emit(contact: int, event_type: str) -> None:
        n = len(out)
        late = rnd.choice([0, 0, 0, rnd.randint(0, half_life // 4)])
        record = {
            "event_id": f"e{rnd.randint(0, n)}" if n and rnd.random() < 0.02 else f"e{n}",
            "tenant": "north" if contact % 3 else "south",
            "contact_id": f"c{contact}",
            "type": event_type,
            "timestamp": ms_to_rfc3339(clock - late),
        }
        out.append(orjson.dumps(record))

    for _ in range(episodes):
        contact = rnd.randrange(contacts)
        kind = rnd.random()
        if kind < 0.4:
            for _ in range(rnd.randint(8, 25)):
                clock += rnd.randint(0, half_life // 50)
                emit(contact, rnd.choice(hot))
        elif kind < 0.8:
            for _ in range(rnd.randint(1, 6)):
                clock += rnd.randint(0, half_life // 5)
                emit(contact, rnd.choice(types))
        elif kind < 0.83 and contact % 2:
            emit(contact, "commerce.purchase")
        else:
            clock += rnd.randint(half_life // 2, 4 * half_life)
    return out


def _outputs(result: ReplayResult) -> tuple[list[bytes], list[bytes]]:
    return (
        [t.to_json_bytes() for t in result.transitions],
        [s.to_json_bytes() for s in result.snapshots],
    )


def _assert_same(lines: list[bytes], one: ScoringModel, two: ScoringModel) -> ReplayResult:
    assert (one.format, two.format) == (1, 2)
    first = replay(lines, one)
    second = replay(lines, two)
    assert first.rejects == second.rejects == []
    transitions, snapshots = _outputs(first)
    assert _outputs(second) == (transitions, snapshots)
    assert {k: (s.stages, s.due_ms, s.values) for k, s in first.states.items()} == {
        k: (s.stages, s.due_ms, s.values) for k, s in second.states.items()
    }
    return first


def test_demo_yaml_is_still_format_1() -> None:
    assert load_model(MODELS / "demo.yaml").format == 1
    assert "halves" in _yaml(MODELS / "demo.yaml")


def test_the_converter_gives_default_yaml() -> None:
    """The format 2 form written here is default.yaml's (so it is the one the docs give)."""
    assert parse_model(as_format_2(_yaml(FORMAT1))) == load_model(MODELS / "default.yaml")


@pytest.mark.parametrize("stream", ["adversarial", "random"])
def test_the_default_model_in_both_formats(stream: str) -> None:
    one, two = load_model(FORMAT1), load_model(MODELS / "default.yaml")
    lines = adversarial_lines() if stream == "adversarial" else random_lines(one, 12, 10, 800)
    result = _assert_same(lines, one, two)
    moves = {(t.from_stage, t.to_stage, t.reason) for t in result.transitions}
    assert {
        ("nurture", "purchase", "threshold"),
        ("purchase", "nurture", "decay"),
        ("nurture", "retention", "customer_event"),
        ("retention", "exit", "decay"),
        ("exit", "retention", "threshold"),
    } <= moves


def test_the_demo_model_in_both_formats() -> None:
    one = load_model(MODELS / "demo.yaml")
    two = parse_model(as_format_2(_yaml(MODELS / "demo.yaml")))
    result = _assert_same(random_lines(one, 12, 10, 800), one, two)
    moves = {(t.from_stage, t.to_stage, t.reason) for t in result.transitions}
    assert {
        ("nurture", "purchase", "threshold"),
        ("purchase", "nurture", "decay"),
        ("nurture", "retention", "customer_event"),
        ("retention", "exit", "decay"),
        ("exit", "retention", "threshold"),
    } <= moves
