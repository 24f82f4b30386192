"""The bulk path's changelog sends in the background (``Worker._process_pipelined``).

A batch's changelog records are sent only once the previous batch's were acknowledged (a
key's changelog records stay in order, a retried send included), the next batch is scored
meanwhile, and the consumer acknowledges a batch's records only when its send is done (not
when it was cancelled).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from engagement_index.stream.app import Worker
from engagement_index.stream.bulk import _ack_when_sent


class _Transaction:
    """Records when its send starts and ends; ends when ``release`` is set."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.release = asyncio.Event()

    async def send_changelog_until_acked(self, metrics: Any, where: str) -> None:
        self.log.append(f"{self.name} sent")
        await self.release.wait()
        self.log.append(f"{self.name} acked")


def _worker(log: list[str]) -> Any:
    worker = SimpleNamespace(metrics=None, _changelog_tail=None, log=log, staged={})

    async def score_batch(events: list[str]) -> _Transaction:
        log.append(f"{events[0]} scored")
        transaction = worker.staged[events[0]] = _Transaction(events[0], log)
        return transaction

    worker.score_batch = score_batch
    worker._send_changelog_after = lambda previous, transaction: Worker._send_changelog_after(
        worker,  # type: ignore[arg-type]
        previous,
        transaction,
    )
    return worker


def test_the_next_batch_is_scored_while_a_changelog_is_in_flight_and_sends_stay_in_order() -> None:
    async def run() -> list[str]:
        log: list[str] = []
        worker = _worker(log)
        acked: list[str] = []
        first = await Worker._process_pipelined(worker, ["b1"])
        first.add_done_callback(lambda f: acked.append("b1"))
        await asyncio.sleep(0)
        second = await Worker._process_pipelined(worker, ["b2"])
        second.add_done_callback(lambda f: acked.append("b2"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert log == ["b1 scored", "b1 sent", "b2 scored"], log  # b2 waits for b1's acks
        assert acked == []
        worker.staged["b2"].release.set()  # b2's broker answers first: still sent after b1
        worker.staged["b1"].release.set()
        await asyncio.gather(first, second)
        assert acked == ["b1", "b2"]
        return log

    log = asyncio.run(run())
    assert log == ["b1 scored", "b1 sent", "b2 scored", "b1 acked", "b2 sent", "b2 acked"]


def test_a_batch_is_acknowledged_when_its_send_is_done_and_not_when_it_was_cancelled() -> None:
    async def run() -> tuple[list[str], list[str]]:
        loop = asyncio.get_running_loop()
        done, cancelled = loop.create_future(), loop.create_future()
        acked: list[str] = []

        def ack(message: Any) -> bool:
            acked.append(message)
            return True

        first: list[Any] = ["m1", "m2"]
        second: list[Any] = ["m3"]
        done.add_done_callback(lambda f: _ack_when_sent(ack, first, f))
        cancelled.add_done_callback(lambda f: _ack_when_sent(ack, second, f))
        await asyncio.sleep(0)
        before = list(acked)
        done.set_result(None)
        cancelled.cancel()
        await asyncio.sleep(0)
        return before, acked

    before, acked = asyncio.run(run())
    assert before == []
    assert acked == ["m1", "m2"]
