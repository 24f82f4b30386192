"""schemas/collector/ must be exactly what the collector's pydantic models generate."""

from __future__ import annotations

from pathlib import Path

from engagement_index.collector.schemas import SCHEMAS_DIR, check, generate, write


def test_collector_schemas_match_the_models() -> None:
    problems = check(SCHEMAS_DIR)
    assert problems == [], "run 'engagement-index collector schemas write': " + "; ".join(problems)


def test_check_detects_drift(tmp_path: Path) -> None:
    write(tmp_path)
    assert check(tmp_path) == []
    target = tmp_path / "collector" / "segment-batch.json"
    target.write_text(target.read_text().replace('"batch"', '"items"'))
    (tmp_path / "collector" / "stale.json").write_text("{}")
    (tmp_path / "collector" / "pixel-query.json").unlink()
    assert len(check(tmp_path)) == 3
    assert all(path.startswith("collector/") for path in generate())
