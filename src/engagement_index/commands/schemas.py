"""``engagement-index schemas write|check``: the JSON Schemas of the public records.

The schemas are generated from the pydantic models; the examples are produced by running
the real core on a few events, so they are always valid instances of the schemas.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engagement_index.collector import schemas as collector_schemas
from engagement_index.core.erasure import Erasure, ErasureRequest
from engagement_index.core.events import CanonicalEvent
from engagement_index.core.merge import MergeRecord
from engagement_index.core.model import PACKAGED_MODEL_PATH, ScoringModel, load_model
from engagement_index.core.records import ContactSnapshot, Transition
from engagement_index.replay import replay

HELP = "write or check the JSON Schemas (and examples) in schemas/ against the models"

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "schemas"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"

#: file stem -> (pydantic model, title, description)
SCHEMAS: dict[str, tuple[type[BaseModel], str]] = {
    "canonical-event": (
        CanonicalEvent,
        "A tracked interaction of a contact (the input topic's record value).",
    ),
    "transition": (
        Transition,
        "A lifecycle stage transition of a contact (the stage-change topic's record value).",
    ),
    "contact-state": (
        ContactSnapshot,
        "A contact's engagement state (snapshots topic, query API, replay --states-out).",
    ),
    "scoring-model": (
        ScoringModel,
        "A scoring and lifecycle model (config/models/*.yaml).",
    ),
    "erasure-request": (
        ErasureRequest,
        "Erase a contact's state (the erasure command topic's record value, keyed by contact).",
    ),
    "erasure": (
        Erasure,
        "A contact's state was erased (the erasures topic's record value, keyed by contact).",
    ),
    "merge": (
        MergeRecord,
        "An identity merge (the merges topic's record value, keyed by the survivor).",
    ),
}

_EXAMPLE_ERASURE_REQUEST = ErasureRequest(
    erasure_id="0b6f3a52-6d1e-4d0c-9a57-2f3c1e9d8a10",
    tenant="acme",
    contact_id="c-42",
    requested_at="2026-11-20T09:00:00.000Z",
    requested_by="privacy-desk",
)

_EXAMPLE_EVENTS = [
    {
        "event_id": "5b1f0c3e-0001",
        "tenant": "acme",
        "contact_id": "c-42",
        "type": "email.click",
        "timestamp": "2026-11-01T10:00:00Z",
        "account_id": "acct-7",
        "properties": {"campaign_id": "x"},
    },
    {
        "event_id": "5b1f0c3e-0002",
        "tenant": "acme",
        "contact_id": "c-42",
        "type": "commerce.purchase",
        "timestamp": "2026-11-02T09:30:00.250+01:00",
        "properties": {"order_id": "o-9", "amount": 120.5},
    },
]


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """Relative path -> file content of everything under ``schemas/``."""
    files: dict[str, str] = {}
    for stem, (model_cls, description) in SCHEMAS.items():
        schema = model_cls.model_json_schema(mode="validation")
        schema = {
            "$schema": _DRAFT,
            "$id": f"https://engagement-index.example/schemas/{stem}.json",
            **schema,
            "description": description,
        }
        files[f"{stem}.json"] = _dump(schema)
    model = load_model(PACKAGED_MODEL_PATH)
    lines = [json.dumps(e) for e in _EXAMPLE_EVENTS]
    result = replay(lines, model)
    files["examples/canonical-event.json"] = _dump(_EXAMPLE_EVENTS[0])
    files["examples/transition.json"] = _dump(result.transitions[-1].model_dump(mode="json"))
    files["examples/contact-state.json"] = _dump(result.snapshots[0].model_dump(mode="json"))
    files["examples/scoring-model.json"] = _dump(
        model.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    )
    request = _EXAMPLE_ERASURE_REQUEST
    files["examples/erasure-request.json"] = _dump(request.model_dump(mode="json"))
    erasure = Erasure(**request.model_dump(), found=True, erased_at="2026-11-20T09:00:00.250Z")
    files["examples/erasure.json"] = _dump(erasure.model_dump(mode="json"))
    files.update(collector_schemas.generate())
    return files


def check(directory: Path) -> list[str]:
    """Paths under ``directory`` that are missing or differ from :func:`generate`."""
    problems = []
    expected = generate()
    for rel, content in expected.items():
        path = directory / rel
        try:
            actual = path.read_text(encoding="utf-8")
        except OSError:
            problems.append(f"{path}: missing")
            continue
        if actual != content:
            problems.append(f"{path}: differs from the models")
    for path in sorted(directory.rglob("*.json")):
        rel = path.relative_to(directory).as_posix()
        if rel not in expected:
            problems.append(f"{path}: not generated by any model (stale?)")
    return problems


def write(directory: Path) -> list[Path]:
    """Write every generated file; returns the paths written."""
    written = []
    for rel, content in generate().items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the sub-command's arguments."""
    parser.add_argument("action", choices=["write", "check"], help="write or check the files")
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help="the schemas directory (default: schemas/ of the source tree)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the schemas, or check them (exit 1 on drift)."""
    if args.action == "write":
        for path in write(args.dir):
            print(path)
        return 0
    problems = check(args.dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("run 'engagement-index schemas write' and commit the result", file=sys.stderr)
        return 1
    return 0
