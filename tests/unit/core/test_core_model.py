"""Loading and validating scoring models."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from engagement_index.core.compiled import LEVEL, MARKER
from engagement_index.core.model import (
    DEFAULT_MODEL_PATH,
    PACKAGED_MODEL_PATH,
    load_model,
    parse_half_life,
    parse_model,
)
from engagement_index.errors import ModelError

REPO = Path(__file__).resolve().parents[3]
#: The default model as a format 1 file (``halves:``), as it was before format 2.
FORMAT1 = Path(__file__).resolve().parent / "data" / "default-format1.yaml"


def _default() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "config/models/default.yaml").read_text())
    return data


def _format1() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(FORMAT1.read_text())
    return data


def test_default_model_loads() -> None:
    model = load_model()
    assert DEFAULT_MODEL_PATH == REPO / "config/models/default.yaml"
    assert model.format == 2
    assert model.version == "default-1"
    assert list(model.components) == ["email", "web", "social", "commerce", "product"]
    assert model.components["email"].half_life == 14 * 86400
    assert model.events["email.unsubscribe"].points == -10
    assert model.markers == ("customer",)
    assert model.events["commerce.purchase"].sets == ("customer",)
    assert not model.events["commerce.purchase"].marks_customer
    assert model.lifecycles is not None
    assert list(model.lifecycles) == ["stage"]
    stage = model.lifecycles["stage"]
    assert stage.stages is not None
    assert list(stage.stages) == ["nurture", "purchase", "retention", "exit"]
    assert [e.id for e in stage.edges] == ["purchased", "engaged", "cooled", "returned", "lapsed"]
    cm = model.compiled
    assert cm.index_names[:2] == ("pre_purchase", "post_purchase")
    assert cm.weights[0] == (0.35, 0.40, 0.15, 0.10, 0.0)
    assert cm.weights[1] == (0.15, 0.10, 0.05, 0.45, 0.25)
    assert cm.weights[2:] == tuple(
        tuple(1.0 if i == c else 0.0 for i in range(5)) for c in range(5)
    ), "then one weighting per component"
    assert cm.half_life_ms[1] == 7 * 86_400_000
    assert cm.markers == ("customer",)
    assert cm.trend is None
    assert cm.caps == ()
    assert cm.legacy == ((0, 1, 3, 2), 1)
    assert cm.rules["commerce.purchase"].sets == 1


def test_the_format_1_file_compiles_to_the_default_lifecycle() -> None:
    """docs/models.md#the-default-model: a format 1 file becomes exactly default.yaml."""
    old = load_model(FORMAT1)
    new = load_model()
    assert (old.format, new.format) == (1, 2)
    assert old.halves is not None
    assert old.events["commerce.purchase"].marks_customer
    assert old.halves.post_purchase.upper_stage == "retention"
    a, b = old.compiled, new.compiled
    for part in (
        "version", "names", "half_life_ms", "saturation", "rules", "weights", "index_names",
        "markers", "caps", "trend", "lifecycles", "stage_by_id", "legacy",
    ):  # fmt: skip
        assert getattr(a, part) == getattr(b, part), part
    # only the fingerprint (of the file, not of what it means) differs
    assert a.layout != b.layout
    assert a.layout.fingerprint != b.layout.fingerprint
    assert (a.layout.component_ids, a.layout.marker_ids) == (
        b.layout.component_ids,
        b.layout.marker_ids,
    )
    [lifecycle] = a.lifecycles
    levels = {
        (stage.name, edge.rule_id): (edge.cond.at_least, edge.cond.level)
        for stage in lifecycle.stages
        for edge in stage.edges
        if edge.cond.kind == LEVEL
    }
    assert levels == {
        ("nurture", "engaged"): (True, 60.0),
        ("purchase", "cooled"): (False, 45.0),
        ("exit", "returned"): (True, 35.0),
        ("retention", "lapsed"): (False, 25.0),
    }
    purchased = [e for s in lifecycle.stages for e in s.edges if e.cond.kind == MARKER]
    assert [e.rule_id for e in purchased] == ["purchased", "purchased"]


def test_packaged_copy_is_identical() -> None:
    assert PACKAGED_MODEL_PATH.read_bytes() == (REPO / "config/models/default.yaml").read_bytes()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("14d", 1_209_600), ("12h", 43_200), ("90m", 5_400), ("30s", 30), (60, 60), (0.5, 0.5)],
)
def test_half_life(value: object, seconds: float) -> None:
    assert parse_half_life(value) == seconds


@pytest.mark.parametrize("value", ["0d", "-1d", "14", "14w", "d", 0, -5, True, None, "1e3s"])
def test_half_life_invalid(value: object) -> None:
    with pytest.raises(ValueError, match="half_life"):
        parse_half_life(value)


def _mutated(path: Sequence[str | int], value: Any, base: dict[str, Any] | None = None) -> Any:
    data = copy.deepcopy(_default() if base is None else base)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


# mutations that name the same field in both formats
COMMON = [
    (["colour"], "red", "colour"),
    (["components", "email", "decay"], 1, "components.email.decay"),
    (["events", "web.page_view", "component"], "phone", "events.web.page_view.component"),
    (["components", "web", "half_life"], 0, "components.web.half_life"),
    (["components", "web", "half_life"], "-3d", "components.web.half_life"),
    (["components", "web", "saturation"], 0, "components.web.saturation"),
    (["components", "web", "saturation"], -1, "components.web.saturation"),
    (["events", "web.page_view", "points"], "1", "events.web.page_view.points"),
    (["events", "webpageview"], {"component": "web", "points": 1}, "webpageview"),
    (["version"], ..., "version"),
]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        *COMMON,
        (["halves", "pre_purchase", "weights", "email"], 0.30, "halves.pre_purchase.weights"),
        (["halves", "post_purchase", "weights", "phone"], 0.0, "weights.phone"),
        (["halves", "pre_purchase", "leave_upper_below"], 61, "leave_upper_below"),
        (["halves", "pre_purchase", "enter_upper_at"], 101, "enter_upper_at"),
        (["halves", "third"], {}, "halves.third"),
        (["halves", "post_purchase"], ..., "halves.post_purchase"),
        (["halves", "post_purchase", "upper_stage"], "exit", "upper_stage"),
        (["halves", "post_purchase", "upper_stage"], "purchase", "halves"),
        (["halves"], ..., "halves"),
        (["markers"], ["customer"], "markers"),
        (["indices"], {"x": {"email": 1.0}}, "indices"),
        (["events", "commerce.purchase", "sets"], ["customer"], "events.commerce.purchase.sets"),
    ],
)
def test_invalid_format_1_models_name_the_field(path: list[str], value: Any, field: str) -> None:
    with pytest.raises(ModelError) as info:
        parse_model(_mutated(path, value, _format1()))
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        *COMMON,
        (["indices", "pre_purchase", "email"], 0.30, "indices.pre_purchase.weights"),
        (["indices", "post_purchase", "phone"], 0.0, "indices.post_purchase.phone"),
        (["indices", "contact"], {"email": 1.0}, "indices.contact"),
        (["indices"], ..., "indices"),
        (["lifecycles"], ..., "lifecycles"),
        (["format"], 3, "format"),
        (["format"], ..., "indices"),
        (["halves"], {}, "halves"),
        (["markers"], ["customer", "customer"], "markers"),
        (["events", "commerce.purchase", "sets"], ["vip"], "events.commerce.purchase.sets"),
        (["events", "commerce.purchase", "marks_customer"], True, "marks_customer"),
        (["lifecycles", "stage", "edges", 1, "when", "at_least"], 101, "lifecycles.stage.edges"),
        (["lifecycles", "stage", "edges", 2, "id"], "engaged", "lifecycles.stage.edges[2].id"),
        (["lifecycles", "stage", "edges", 2, "to"], "purchase", "lifecycles.stage.edges[2]"),
        (["lifecycles", "stage", "edges", 0, "colour"], "red", "lifecycles.stage.edges"),
        (["legacy", "stages", 3], "vip", "legacy.stages"),
        (["legacy", "marker"], "vip", "legacy.marker"),
    ],
)
def test_invalid_format_2_models_name_the_field(
    path: list[str | int], value: Any, field: str
) -> None:
    with pytest.raises(ModelError) as info:
        parse_model(_mutated(path, value))
    assert field in str(info.value)


def test_weights_within_tolerance() -> None:
    parse_model(_mutated(["halves", "pre_purchase", "weights", "email"], 0.35 + 5e-10, _format1()))
    parse_model(_mutated(["indices", "pre_purchase", "email"], 0.35 + 5e-10))
    with pytest.raises(ModelError, match=r"indices\.pre_purchase"):
        parse_model(_mutated(["indices", "pre_purchase", "email"], 0.35 + 2e-9))


# ------------------------------------------------------------ format 2: lifecycle checks


def _lifecycle(stages: list[str], edges: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The default model with its lifecycle replaced (and no legacy key)."""
    data = _default()
    del data["legacy"]
    data["lifecycles"] = {
        "x": {
            "stages": {s: {} for s in stages},
            "initial": extra.pop("initial", [{"stage": stages[0]}]),
            "edges": edges,
        },
        **extra,
    }
    return data


def _edge(id_: str, from_: str | list[str], to: str, when: Any = None) -> dict[str, Any]:
    edge: dict[str, Any] = {"id": id_, "from": from_, "to": to}
    if when is not None:
        edge["when"] = when
    return edge


PRE_60 = {"index": "pre_purchase", "at_least": 60}
PRE_BELOW_45 = {"index": "pre_purchase", "below": 45}
CUSTOMER = {"marker": "customer"}
AB = _edge("ab", "a", "b", PRE_60)
TREND = {"trend": {"fast": "7d", "slow": "28d", "margin": 0.25}}


def _message(data: dict[str, Any]) -> str:
    with pytest.raises(ModelError) as info:
        parse_model(data)
    return str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            _lifecycle(["a", "b", "limbo"], [AB]),
            "lifecycles.x.stages.limbo: unreachable",
            id="unreachable-stage",
        ),
        pytest.param(
            _lifecycle(["a", "b"], [AB, _edge("bc", "b", "c", PRE_BELOW_45)]),
            "lifecycles.x.edges[1].to: unknown stage 'c'",
            id="edge-to-undeclared-stage",
        ),
        pytest.param(
            _lifecycle(["a", "b"], [AB, _edge("cb", ["a", "c"], "b", PRE_BELOW_45)]),
            "lifecycles.x.edges[1].from: unknown stage 'c'",
            id="edge-from-undeclared-stage",
        ),
        pytest.param(
            _lifecycle(["a", "b"], [AB], initial=[{"stage": "c"}]),
            "lifecycles.x.initial[0].stage: unknown stage 'c'",
            id="initial-undeclared-stage",
        ),
        pytest.param(
            _lifecycle(["a", "b"], [AB, _edge("ba", "b", "a", {"component": "phone", "below": 5})]),
            "lifecycles.x.edges[1].when.component: unknown component 'phone'",
            id="undeclared-component",
        ),
        pytest.param(
            _lifecycle(["a", "b"], [_edge("ab", "a", "b", {"marker": "vip"})]),
            "lifecycles.x.edges[0].when.marker: unknown marker 'vip'",
            id="undeclared-marker",
        ),
        pytest.param(
            _lifecycle(
                ["a", "b"], [_edge("ab", "a", "b", {"since_marker": "vip", "at_least": 60})]
            ),
            "lifecycles.x.edges[0].when.since_marker: unknown marker 'vip'",
            id="undeclared-since-marker",
        ),
        pytest.param(
            _lifecycle(
                ["a", "b"],
                [AB, _edge("ba", "b", "a", {"all": [CUSTOMER, {"index": "post", "below": 3}]})],
            ),
            "lifecycles.x.edges[1].when.all[1].index: unknown index 'post'",
            id="undeclared-index",
        ),
        pytest.param(
            _lifecycle(
                ["a", "b"], [_edge("ab", "a", "b", {"event": ["web.page_view", "fax.sent"]})]
            ),
            "lifecycles.x.edges[0].when.event: unknown event type 'fax.sent'",
            id="undeclared-event-type",
        ),
        pytest.param(
            _lifecycle(["a", "b"], [_edge("ab", "a", "b", {"index": "contact", "at_least": 60})]),
            "lifecycles.x.edges[0].when.index: 'contact' is the first lifecycle's own index",
            id="contact-in-the-first-lifecycle",
        ),
        pytest.param(
            {
                **_lifecycle(["a", "b"], [AB]),
                "lifecycles": {
                    "x": {"stages": {"a": {"index": "contact"}}, "initial": [{"stage": "a"}]}
                },
            },
            "lifecycles.x.stages.a.index: 'contact' is the first lifecycle's own index",
            id="contact-stage-index-in-the-first-lifecycle",
        ),
        pytest.param(
            _lifecycle(
                ["a", "b"],
                [AB],
                initial=[{"stage": "b", "when": PRE_60}, {"stage": "a", "when": CUSTOMER}],
            ),
            "lifecycles.x.initial[1].when: the last initial entry must have no condition",
            id="initial-last-entry-with-a-condition",
        ),
        pytest.param(
            _lifecycle(
                ["a", "b"], [_edge("ab", "a", "b", CUSTOMER), _edge("ba", "b", "a", CUSTOMER)]
            ),
            "lifecycles.x.edges: the edges ab, ba can fire at the same instant forever "
            "(a -> b -> a)",
            id="same-instant-cycle-on-a-marker",
        ),
        pytest.param(
            _lifecycle(
                ["a", "b"],
                [AB, _edge("ba", "b", "a", {"index": "pre_purchase", "below": 61})],
            ),
            "lifecycles.x.edges: the edges ab, ba can fire at the same instant forever",
            id="same-instant-cycle-on-overlapping-levels",
        ),
        pytest.param(
            _lifecycle(
                ["a", "b", "c"],
                [
                    _edge("ab", "a", "b", {"event": "web.page_view"}),
                    _edge("bc", "b", "c", {"any": [CUSTOMER, {"event": "web.page_view"}]}),
                    _edge("ca", "c", "a", {"event": ["email.open", "web.page_view"]}),
                ],
            ),
            "lifecycles.x.edges: the edges ab, bc, ca can fire at the same instant forever "
            "(a -> b -> c -> a)",
            id="same-instant-cycle-of-three-on-an-event",
        ),
        pytest.param(
            _lifecycle(["a", "b"], [AB], band={"bands": {"levels": {"hot": 80, "cool": 10}}}),
            "lifecycles.band.bands.levels: the lowest level must be 0",
            id="bands-without-a-0-level",
        ),
        pytest.param(
            _lifecycle(
                ["a", "b"], [AB], band={"bands": {"levels": {"hot": 80, "warm": 80, "cold": 0}}}
            ),
            "lifecycles.band.bands.levels: two bands have the same level",
            id="bands-with-the-same-level",
        ),
        pytest.param(
            _lifecycle(
                ["a", "b"], [AB], trend={"trend": {"fast": "7d", "slow": "7d", "margin": 0.25}}
            ),
            "lifecycles.trend.trend.slow: must be longer than fast",
            id="trend-slow-equal-to-fast",
        ),
        pytest.param(
            _lifecycle(
                ["a", "b"], [AB], trend={"trend": {"fast": "7d", "slow": "1d", "margin": 0.25}}
            ),
            "lifecycles.trend.trend.slow: must be longer than fast",
            id="trend-slow-shorter-than-fast",
        ),
        pytest.param(
            _lifecycle(["a", "b"], [AB], trend=TREND, again=TREND),
            "lifecycles.again: only one trend lifecycle",
            id="two-trends",
        ),
        pytest.param(
            _lifecycle(["a", "b"], [AB, _edge("ba", "b", "b", PRE_BELOW_45)]),
            "lifecycles.x.edges[1]: an edge from a stage to itself is not allowed",
            id="edge-to-itself",
        ),
    ],
)
def test_invalid_lifecycles_name_the_field(data: dict[str, Any], expected: str) -> None:
    message = _message(data)
    assert expected in message, message


@pytest.mark.parametrize(
    "edges",
    [
        # hysteresis: up at 60, down below 45 (and touching levels: up at 60, down below 60)
        pytest.param([AB, _edge("ba", "b", "a", PRE_BELOW_45)], id="hysteresis"),
        pytest.param(
            [AB, _edge("ba", "b", "a", {"index": "pre_purchase", "below": 60})], id="touching"
        ),
        # a marker and its negation, two different event types, time in stage on the way back
        pytest.param(
            [_edge("ab", "a", "b", CUSTOMER), _edge("ba", "b", "a", {**CUSTOMER, "set": False})],
            id="marker-and-not",
        ),
        pytest.param(
            [
                _edge("ab", "a", "b", {"event": "web.page_view"}),
                _edge("ba", "b", "a", {"event": "email.open"}),
            ],
            id="two-event-types",
        ),
        pytest.param(
            [
                _edge("ab", "a", "b", CUSTOMER),
                _edge("ba", "b", "a", {"all": [CUSTOMER, {"in_stage_for": "1d"}]}),
            ],
            id="in-stage-for",
        ),
    ],
)
def test_cycles_that_cannot_fire_at_one_instant_are_accepted(edges: list[dict[str, Any]]) -> None:
    model = parse_model(_lifecycle(["a", "b"], edges))
    [lifecycle] = model.compiled.lifecycles
    assert [s.name for s in lifecycle.stages] == ["a", "b"]
    assert [e.rule_id for s in lifecycle.stages for e in s.edges] == ["ab", "ba"]


def test_a_band_lifecycle_with_a_0_level_is_accepted() -> None:
    data = _lifecycle(["a", "b"], [AB], band={"bands": {"levels": {"hot": 80, "cold": 0}}})
    band = parse_model(data).compiled.lifecycles[1]
    assert [s.name for s in band.stages] == ["hot", "cold"]
    assert [e.rule_id for s in band.stages for e in s.edges] == ["down_to_cold", "up_to_hot"]


def test_pydantic_errors_inside_a_lifecycle_name_the_edge() -> None:
    message = _message(_mutated(["lifecycles", "stage", "edges", 1, "when", "at_least"], 101))
    assert re.search(r"lifecycles\.stage\.edges(\[1\]|\.1)\.when", message), message


def test_load_model_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ModelError, match=r"nope\.yaml"):
        load_model(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [unclosed\n")
    with pytest.raises(ModelError, match="invalid YAML"):
        load_model(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text((REPO / "config/models/default.yaml").read_text() + "version: again\n")
    with pytest.raises(ModelError, match="duplicate key 'version'"):
        load_model(dup)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ModelError, match="mapping"):
        load_model(scalar)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        (REPO / "config/models/default.yaml")
        .read_text()
        .replace("half_life: 14d", "half_life: 14x", 1)
    )
    with pytest.raises(ModelError, match=r"wrong.yaml: components.email.half_life"):
        load_model(wrong)
