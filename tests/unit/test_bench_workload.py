"""The benchmark's workload generator: deterministic, skewed, the model's mix, in range."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from bench import workload

from engagement_index.core.events import parse_event_fields
from engagement_index.core.model import load_model
from engagement_index.core.timestamps import parse_timestamp_ms

END_MS = 1_790_000_000_000
SPEC = workload.WorkloadSpec(events=20_000, contacts=2_000, seed=3, end_ms=END_MS)


@pytest.fixture(scope="module")
def events() -> list[dict[str, object]]:
    return list(workload.generate(SPEC))


def test_same_seed_same_events(events: list[dict[str, object]]) -> None:
    assert list(workload.generate(SPEC)) == events
    other = workload.WorkloadSpec(SPEC.events, SPEC.contacts, SPEC.seed + 1, END_MS)
    assert list(workload.generate(other)) != events


def test_written_file_is_deterministic(tmp_path: Path) -> None:
    small = workload.WorkloadSpec(events=500, contacts=50, seed=1, end_ms=END_MS)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert workload.write(small, a) == workload.write(small, b)
    assert a.read_bytes() == b.read_bytes()
    assert len(a.read_bytes().splitlines()) == 500


def test_contact_activity_is_zipf_skewed(events: list[dict[str, object]]) -> None:
    counts = Counter(str(e["contact_id"]) for e in events)
    # the busiest 1% of contacts are far above their 1% share; most contacts appear
    assert workload.share_of_top(list(counts.values()), 0.01) > 0.08
    assert len(counts) > 0.8 * SPEC.contacts
    ranked = sorted(counts.values(), reverse=True)
    assert ranked[0] > 20 * (SPEC.events / SPEC.contacts)


def test_type_mix_follows_the_default_model(events: list[dict[str, object]]) -> None:
    model = load_model(Path(__file__).resolve().parents[2] / "config" / "models" / "default.yaml")
    assert set(workload.TYPE_MIX) <= set(model.compiled.rules)
    assert sum(workload.TYPE_MIX.values()) == pytest.approx(1.0)
    types = Counter(str(e["type"]) for e in events)
    n = len(events)
    assert (types["web.page_view"] + types["email.open"]) / n > 0.6
    assert 0.005 < types["commerce.purchase"] / n < 0.02
    assert 0.02 < (types["email.click"]) / n < 0.07
    channels = {workload.channel_of(t) for t in types}
    assert channels == {"web", "email", "social", "commerce", "product"}


def test_timestamps_in_range_and_ordered(events: list[dict[str, object]]) -> None:
    stamps = [parse_timestamp_ms(str(e["timestamp"])) for e in events]
    assert stamps == sorted(stamps)
    assert SPEC.start_ms <= stamps[0]
    assert stamps[-1] <= SPEC.end_ms
    assert stamps[-1] - stamps[0] > 0.9 * workload.SPAN_DAYS * workload.MS_PER_DAY


def test_events_are_valid_canonical_events(events: list[dict[str, object]]) -> None:
    for event in events[:500]:
        fields = parse_event_fields(json.dumps(event).encode())
        assert fields.contact_id == event["contact_id"]
    assert len({e["event_id"] for e in events}) == len(events)


def test_live_source_uses_the_same_contacts() -> None:
    source = workload.LiveSource(SPEC.contacts, SPEC.seed)
    event = source.event(END_MS)
    assert parse_timestamp_ms(str(event["timestamp"])) == END_MS
    assert parse_event_fields(json.dumps(event).encode()).type in workload.TYPE_MIX


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert workload.percentile(values, 0.5) == 50.0
    assert workload.percentile(values, 0.99) == 99.0
    assert workload.percentile(values, 0.999) == 100.0
