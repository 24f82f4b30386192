"""Loading and validating scoring models."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from engagement_index.core.model import (
    DEFAULT_MODEL_PATH,
    PACKAGED_MODEL_PATH,
    load_model,
    parse_half_life,
    parse_model,
)
from engagement_index.errors import ModelError

REPO = Path(__file__).resolve().parents[3]


def _default() -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.safe_load((REPO / "config/models/default.yaml").read_text())
    return data


def test_default_model_loads() -> None:
    model = load_model()
    assert DEFAULT_MODEL_PATH == REPO / "config/models/default.yaml"
    assert model.version == "default-1"
    assert list(model.components) == ["email", "web", "social", "commerce", "product"]
    assert model.components["email"].half_life == 14 * 86400
    assert model.events["email.unsubscribe"].points == -10
    assert model.events["commerce.purchase"].marks_customer
    assert model.halves.post_purchase.upper_stage == "retention"
    cm = model.compiled
    assert cm.halves[0].weights == (0.35, 0.40, 0.15, 0.10, 0.0)
    assert cm.half_life_ms[1] == 7 * 86_400_000


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


def _mutated(path: list[str], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(_default())
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["colour"], "red", "colour"),
        (["components", "email", "decay"], 1, "components.email.decay"),
        (["halves", "pre_purchase", "weights", "email"], 0.30, "halves.pre_purchase.weights"),
        (["halves", "post_purchase", "weights", "phone"], 0.0, "weights.phone"),
        (["events", "web.page_view", "component"], "phone", "events.web.page_view.component"),
        (["halves", "pre_purchase", "leave_upper_below"], 61, "leave_upper_below"),
        (["components", "web", "half_life"], 0, "components.web.half_life"),
        (["components", "web", "half_life"], "-3d", "components.web.half_life"),
        (["components", "web", "saturation"], 0, "components.web.saturation"),
        (["components", "web", "saturation"], -1, "components.web.saturation"),
        (["halves", "pre_purchase", "enter_upper_at"], 101, "enter_upper_at"),
        (["events", "web.page_view", "points"], "1", "events.web.page_view.points"),
        (["events", "webpageview"], {"component": "web", "points": 1}, "webpageview"),
        (["halves", "third"], {}, "halves.third"),
        (["halves", "post_purchase"], ..., "halves.post_purchase"),
        (["version"], ..., "version"),
        (["halves", "post_purchase", "upper_stage"], "exit", "upper_stage"),
    ],
)
def test_invalid_models_name_the_field(path: list[str], value: Any, field: str) -> None:
    with pytest.raises(ModelError) as info:
        parse_model(_mutated(path, value))
    assert field in str(info.value)


def test_weights_within_tolerance() -> None:
    data = _mutated(["halves", "pre_purchase", "weights", "email"], 0.35 + 5e-10)
    parse_model(data)


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
