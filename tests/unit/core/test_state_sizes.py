"""Bytes per contact state for each shipped model (the table of docs/scoring.md#state-encoding)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engagement_index.core.events import EventFields
from engagement_index.core.lifecycle import step
from engagement_index.core.model import load_model
from engagement_index.core.state import decode_state, encode_state

MODELS = Path(__file__).resolve().parents[3] / "config" / "models"

# (model, bytes, the target). Worked out from the format (docs/scoring.md): 56 fixed
# (14 head, 9 layout head, 3 x 7 deltas, 12 bitmap); per component 4 (id) + 8 (sum); per
# lifecycle 4 (stage id) + 7 (entered); markers 4 (bits) + per marker 4 (id) + 7 (time); trend
# 16; per capped rule 4 (id) + 2 x 20 (windows)
SIZES = [
    ("default", 56 + 12 * 5 + 11 * 1 + (4 + 11 * 1), 256),
    ("journey", 56 + 12 * 6 + 11 * 3 + (4 + 11 * 2) + 16 + 44 * 3, 400),
    ("b2b-qualification", 56 + 12 * 5 + 11 * 2 + (4 + 11 * 2) + 44 * 2, None),
]


@pytest.mark.parametrize(("name", "size", "target"), SIZES)
def test_state_bytes_per_contact(name: str, size: int, target: int | None) -> None:
    cm = load_model(MODELS / f"{name}.yaml").compiled
    state = None
    for n, event_type in enumerate(sorted(cm.rules)):
        fields = EventFields(f"e{n}", "acme", "c-1", event_type, 1_790_000_000_000 + n * 60_000)
        state, _ = step(state, fields, cm)
        raw = encode_state(state)
        assert len(raw) == size, (name, event_type, len(raw))
        assert decode_state(raw, state.key) == state
    if target is not None:
        assert size <= target
