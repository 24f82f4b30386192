"""The console's model description, per-minute counts and feed fan-out (stream/console.py).

The expected thresholds and weights are read off the model files and docs/models.md (the
default model's four quarters: 60 / 45 before a purchase, 35 / 25 after), not from the code.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from engagement_index.core.model import load_model
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.metrics import Metrics
from engagement_index.stream.console import MINUTE_MS, WINDOW_MINUTES, MinuteCounts, StageFeed
from engagement_index.stream.console import describe_model as describe

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "config" / "models"


def test_the_default_model_has_its_four_quarters_and_thresholds() -> None:
    body = describe(load_model(MODELS / "default.yaml"))
    assert body["model_version"] == "default-1"
    assert body["band_lifecycle"] is None
    assert body["trend_lifecycle"] is None
    (first,) = body["lifecycles"]
    assert first["kind"] == "first"
    assert first["stages"] == [
        {"name": "nurture", "index": "pre_purchase"},
        {"name": "purchase", "index": "pre_purchase"},
        {"name": "retention", "index": "post_purchase"},
        {"name": "exit", "index": "post_purchase"},
    ]
    edges = {(e["id"], e["from"], e["to"]): e["thresholds"] for e in first["edges"]}
    assert edges[("engaged", "nurture", "purchase")] == [
        {"index": "pre_purchase", "at_least": True, "level": 60.0}
    ]
    assert edges[("cooled", "purchase", "nurture")] == [
        {"index": "pre_purchase", "at_least": False, "level": 45.0}
    ]
    assert edges[("returned", "exit", "retention")] == [
        {"index": "post_purchase", "at_least": True, "level": 35.0}
    ]
    assert edges[("lapsed", "retention", "exit")] == [
        {"index": "post_purchase", "at_least": False, "level": 25.0}
    ]
    # the purchase is a marker, no threshold; from both stages before it
    assert edges[("purchased", "nurture", "retention")] == []
    assert edges[("purchased", "purchase", "retention")] == []
    assert body["indices"]["pre_purchase"] == {
        "email": 0.35,
        "web": 0.40,
        "social": 0.15,
        "commerce": 0.10,
    }
    assert body["indices"]["post_purchase"]["commerce"] == 0.45


def test_a_format_1_model_reads_as_the_same_quarters() -> None:
    body = describe(load_model(MODELS / "demo.yaml"))
    first = body["lifecycles"][0]
    assert {s["name"]: s["index"] for s in first["stages"]} == {
        "nurture": "pre_purchase",
        "purchase": "pre_purchase",
        "retention": "post_purchase",
        "exit": "post_purchase",
    }
    levels = sorted(t["level"] for e in first["edges"] for t in e["thresholds"])
    assert levels == [25.0, 35.0, 45.0, 60.0]


def test_the_journey_model_names_its_band_and_trend_lifecycles() -> None:
    body = describe(load_model(MODELS / "journey.yaml"))
    kinds = {lc["name"]: lc["kind"] for lc in body["lifecycles"]}
    assert kinds == {"journey": "first", "band": "band", "trend": "trend"}
    assert body["band_lifecycle"] == "band"
    assert body["trend_lifecycle"] == "trend"
    band = next(lc for lc in body["lifecycles"] if lc["name"] == "band")
    assert [s["name"] for s in band["stages"]] == ["hot", "warm", "cold"]
    # bands measure the contact's own index (null): up at the file's levels (80, 40), down
    # below them less the hysteresis of 5 (docs/models.md)
    levels = {
        (t["index"], t["at_least"], t["level"]) for e in band["edges"] for t in e["thresholds"]
    }
    assert levels == {
        (None, True, 80.0),
        (None, True, 40.0),
        (None, False, 75.0),
        (None, False, 35.0),
    }
    json.dumps(body)  # plain JSON


def test_minute_counts_keep_the_last_hour_per_tenant() -> None:
    counts = MinuteCounts()
    now = 1_000 * MINUTE_MS + 30_000
    counts.add("acme", now - 5_000, "stage", now)
    counts.add("acme", now - 10_000, "band", now)
    counts.add("acme", now - 3 * MINUTE_MS, "stage", now)
    counts.add("acme", now - WINDOW_MINUTES * MINUTE_MS, "stage", now)  # before the window
    counts.add("globex", now, "stage", now)
    window = counts.window("acme", now)
    assert len(window) == WINDOW_MINUTES
    assert window[-1] == {
        "at": ms_to_rfc3339(1_000 * MINUTE_MS),
        "count": 2,
        "by_lifecycle": {"band": 1, "stage": 1},
    }
    assert window[-4]["count"] == 1
    assert sum(m["count"] for m in window) == 3
    assert sum(m["count"] for m in counts.window("globex", now)) == 1
    # an hour later everything has left the window
    assert sum(m["count"] for m in counts.window("acme", now + WINDOW_MINUTES * MINUTE_MS)) == 0


def feed(now: int) -> StageFeed:
    worker: Any = SimpleNamespace(
        metrics=Metrics(),
        topology=SimpleNamespace(
            outbound=SimpleNamespace(stage_changes=SimpleNamespace(name="stage-changes"))
        ),
    )
    return StageFeed(worker, lambda: now)


def record(tenant: str, contact: str, at: int) -> bytes:
    return json.dumps(
        {
            "tenant": tenant,
            "contact_id": contact,
            "lifecycle": "stage",
            "from_stage": "nurture",
            "to_stage": "purchase",
            "occurred_at": ms_to_rfc3339(at),
        }
    ).encode()


def test_the_feed_pushes_a_change_to_its_tenants_streams_only() -> None:
    async def run() -> None:
        now = 500 * MINUTE_MS
        f = feed(now)
        everyone = f.subscribe("acme", None)
        one = f.subscribe("acme", "c-1")
        other = f.subscribe("globex", None)
        f.handle(record("acme", "c-2", now), live=True)
        f.handle(record("acme", "c-1", now), live=True)
        f.handle(record("acme", "c-3", now), live=False)  # read while catching up: counted only
        assert everyone.qsize() == 2
        assert one.qsize() == 1
        assert other.qsize() == 0
        message = one.get_nowait()
        assert message.startswith(b"event: transition\ndata: {")
        assert message.endswith(b"\n\n")
        assert json.loads(message.split(b"data: ", 1)[1])["contact_id"] == "c-1"
        assert f.counts.window("acme", now)[-1]["count"] == 3
        f.unsubscribe("acme", everyone)
        f.handle(record("acme", "c-1", now), live=True)
        assert everyone.qsize() == 2
        assert one.qsize() == 1
        # an unreadable record is counted as an error, not pushed
        f.handle(b"not json", live=True)
        registry = f.worker.metrics.registry
        assert (
            registry.get_sample_value("engagement_worker_errors_total", {"where": "console"}) == 1
        )
        assert one.qsize() == 1
        # stopping ends every open stream with an empty message
        one.get_nowait()
        await f.stop()
        assert one.get_nowait() == b""

    asyncio.run(run())
