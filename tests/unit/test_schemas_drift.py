"""schemas/ must be exactly what the pydantic models generate."""

from __future__ import annotations

import json
from pathlib import Path

from engagement_index.collector import schemas as collector_schemas
from engagement_index.commands.schemas import check, generate, write
from engagement_index.core.erasure import Erasure, ErasureRequest
from engagement_index.core.events import CanonicalEvent
from engagement_index.core.model import parse_model
from engagement_index.core.records import ContactSnapshot, Transition

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_schemas_match_the_models() -> None:
    problems = check(SCHEMAS)
    assert problems == [], "run 'engagement-index schemas write': " + "; ".join(problems)


def test_examples_validate_against_the_models() -> None:
    examples = SCHEMAS / "examples"
    CanonicalEvent.model_validate(json.loads((examples / "canonical-event.json").read_text()))
    Transition.model_validate(json.loads((examples / "transition.json").read_text()))
    ContactSnapshot.model_validate(json.loads((examples / "contact-state.json").read_text()))
    parse_model(json.loads((examples / "scoring-model.json").read_text()))
    ErasureRequest.model_validate_json((examples / "erasure-request.json").read_text())
    Erasure.model_validate_json((examples / "erasure.json").read_text())


def test_check_detects_drift(tmp_path: Path) -> None:
    write(tmp_path)
    assert check(tmp_path) == []
    target = tmp_path / "transition.json"
    target.write_text(target.read_text().replace('"index"', '"score"'))
    (tmp_path / "stale.json").write_text("{}")
    (tmp_path / "examples" / "canonical-event.json").unlink()
    problems = check(tmp_path)
    assert len(problems) == 3
    assert set(generate()) == {f"collector/{stem}.json" for stem in collector_schemas.SCHEMAS} | {
        "canonical-event.json",
        "transition.json",
        "contact-state.json",
        "scoring-model.json",
        "erasure-request.json",
        "erasure.json",
        "merge.json",
        "examples/erasure-request.json",
        "examples/erasure.json",
        "examples/canonical-event.json",
        "examples/transition.json",
        "examples/contact-state.json",
        "examples/scoring-model.json",
    }
