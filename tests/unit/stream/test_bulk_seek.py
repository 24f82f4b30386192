"""stream.bulk.BulkConsumer.perform_seek: the partitions without a committed offset are moved
to their first record after a fetch was dropped unread, and only then."""

from __future__ import annotations

import asyncio

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from engagement_index.stream.bulk import BulkConsumer


def test_the_uncommitted_partitions_are_moved_back_only_after_a_dropped_fetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    async def seek_to_committed(self: object) -> None:
        calls.append("committed")

    async def to_beginning(self: BulkConsumer) -> None:
        calls.append("uncommitted")

    monkeypatch.setattr(faust_aiokafka.Consumer, "perform_seek", seek_to_committed)
    monkeypatch.setattr(BulkConsumer, "_seek_uncommitted_to_beginning", to_beginning)
    consumer = BulkConsumer.__new__(BulkConsumer)  # no app: only the seek's bookkeeping runs

    def seek() -> list[str]:
        calls.clear()
        asyncio.run(consumer.perform_seek())
        return list(calls)

    assert seek() == ["committed"]  # nothing dropped: positions are the ends of what was read
    consumer.dropped_unread = True
    assert not consumer.positions_are_reads()
    assert seek() == ["committed", "uncommitted"]
    assert consumer.positions_are_reads()
    assert seek() == ["committed"]
    # a drop, then a seek that clears the flag before the drop's own seek comes: that one
    # still moves the uncommitted partitions (the drop moved their positions)
    consumer.dropped_unread = True
    consumer.dropped_unread = False
    assert seek() == ["committed", "uncommitted"]
