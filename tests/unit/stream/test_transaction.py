"""stream.transaction: a changelog the broker refuses is sent again until it is acknowledged,
and every refusal is counted where it happened."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from engagement_index.errors import BatchWriteError
from engagement_index.metrics import Metrics
from engagement_index.stream.transaction import TableTransaction, retry_delay, until_done


def test_retry_delays_double_from_half_a_second_to_thirty() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 7, 8, 20)] == [0.5, 1.0, 2.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize("where", ["batch", "accounts"])
def test_a_refused_changelog_is_sent_again_and_each_refusal_counted(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    attempts: list[int] = []
    slept: list[float] = []

    async def refused_twice(self: TableTransaction) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) <= 2:
            raise BatchWriteError("changelog", RuntimeError("refused"))

    async def no_wait(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(TableTransaction, "send_changelog", refused_twice)
    monkeypatch.setattr(asyncio, "sleep", no_wait)
    metrics = Metrics(CollectorRegistry())
    registry: Any = metrics.registry
    asyncio.run(TableTransaction(producer=None).send_changelog_until_acked(metrics, where))
    assert attempts == [1, 2, 3]
    assert slept == [0.5, 1.0]
    labels = {"step": "changelog"}
    assert registry.get_sample_value("engagement_batch_failures_total", labels) == 2
    assert registry.get_sample_value("engagement_worker_errors_total", {"where": where}) == 2


def test_a_failed_batch_is_run_again_and_each_failure_counted_by_its_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures = [BatchWriteError("outputs", RuntimeError("refused")), ValueError("a bug")]
    runs: list[int] = []
    slept: list[float] = []

    async def process() -> None:
        runs.append(len(runs) + 1)
        if failures:
            raise failures.pop(0)

    async def no_wait(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(asyncio, "sleep", no_wait)
    metrics = Metrics(CollectorRegistry())
    registry: Any = metrics.registry
    asyncio.run(until_done(process, metrics, "accounts", "a batch"))
    assert runs == [1, 2, 3]
    assert slept == [0.5, 1.0]
    failed = "engagement_batch_failures_total"
    assert registry.get_sample_value(failed, {"step": "outputs"}) == 1
    assert registry.get_sample_value(failed, {"step": "score"}) == 1
    assert registry.get_sample_value("engagement_worker_errors_total", {"where": "accounts"}) == 2
