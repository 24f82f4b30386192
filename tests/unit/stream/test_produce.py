"""``send_batched`` puts keyed records where the producer's own partitioner would."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from engagement_index.stream.produce import Record, send_batched


class FakeBatch:
    def __init__(self) -> None:
        self.keys: list[bytes | None] = []

    def append(self, **record: Any) -> object:
        self.keys.append(record["key"])
        return object()

    def close(self) -> None:
        pass


class FakeCluster:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.counts[topic]))


class FakeClient:
    def __init__(self, counts: dict[str, int]) -> None:
        self.cluster = FakeCluster(counts)

    async def _wait_on_metadata(self, topic: str) -> None:
        assert topic in self.cluster.counts


class FakeProducer:
    """The parts of ``AIOKafkaProducer`` that ``send_batched`` uses; ``_partition`` asks the
    partitioner as aiokafka's does (all partitions sorted by id)."""

    def __init__(self, counts: dict[str, int], partitioner: Any) -> None:
        self.client = FakeClient(counts)
        self._partitioner = partitioner
        self.placed: dict[tuple[str, bytes | None], set[int]] = {}

    def _partition(self, topic: str, partition: Any, key: Any, *_: Any) -> int:
        partitions = sorted(self.client.cluster.partitions_for_topic(topic))
        return int(self._partitioner(key, partitions, partitions))

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        for key in batch.keys:
            self.placed.setdefault((topic, key), set()).add(partition)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        return future


def _records() -> list[Record]:
    keys = [f"tenant-{n % 3}\x1fcontact-{n}".encode() for n in range(2_000)]
    keys += [b"", b"\xff" * 7, "é".encode(), b"a" * 301]
    return [
        (topic, key, b"{}", None, None, None) for topic in ("six", "five", "one") for key in keys
    ]


def test_keyed_records_land_where_the_default_partitioner_puts_them() -> None:
    counts = {"six": 6, "five": 5, "one": 1}
    producer = FakeProducer(counts, DefaultPartitioner())
    asyncio.run(send_batched(producer, _records()))
    partitioner = DefaultPartitioner()
    assert len(producer.placed) == 3 * 2_004
    for (topic, key), placed in producer.placed.items():
        partitions = list(range(counts[topic]))
        assert placed == {partitioner(key, partitions, partitions)}, (topic, key)
    assert {p for (t, _), ps in producer.placed.items() if t == "six" for p in ps} == set(range(6))


def test_another_partitioner_is_asked() -> None:
    def last(key: bytes | None, partitions: list[int], available: list[int]) -> int:
        return partitions[-1]

    producer = FakeProducer({"six": 6, "five": 5, "one": 1}, last)
    asyncio.run(send_batched(producer, _records()))
    for (topic, _key), placed in producer.placed.items():
        assert placed == {producer.client.cluster.counts[topic] - 1}
