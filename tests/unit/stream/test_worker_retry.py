"""The agent loop retries a failed batch instead of letting the exception escape."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from engagement_index.core.model import load_model
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream import app as worker_module
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]


def test_failed_batches_are_retried_until_they_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_module.Worker(
        Settings(data_dir=tmp_path),
        load_topology(ROOT / "streams" / "topology.yaml"),
        load_model(ROOT / "config" / "models" / "default.yaml"),
        Metrics(CollectorRegistry()),
    )
    calls: list[int] = []

    async def flaky(events: Any) -> None:
        calls.append(len(events))
        if len(calls) < 3:
            raise RuntimeError("broker hiccup")

    sleeps: list[float] = []

    async def no_sleep(delay: float) -> None:
        sleeps.append(delay)

    monkeypatch.setattr(worker, "process_batch", flaky)
    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    asyncio.run(worker._process_until_done(["e1", "e2"]))
    assert calls == [2, 2, 2]
    assert sleeps == [0.5, 1.0]
    assert (
        worker.metrics.registry.get_sample_value(
            "engagement_worker_errors_total", {"where": "batch"}
        )
        == 2
    )
