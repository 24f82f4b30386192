"""Producing a batch's records with one record batch per topic-partition.

``AIOKafkaProducer.send`` costs a metadata check, a partitioner call, an accumulator append
and a future per record. :func:`send_batched` groups the records of a whole scoring batch by
topic and partition, fills one ``BatchBuilder`` per group (appends are C code) and submits
each with ``send_batch``: one future per group. Records without a partition get the one the
producer's own partitioner picks, computed once per key and topic, so keyed records land
exactly where ``send`` would put them. With aiokafka's ``DefaultPartitioner`` (the worker sets
no other) that is murmur2 of the key modulo the topic's partition count, which
:func:`~engagement_index.core.partitioning.canonical_partition` computes too (the same hash
as Kafka's Java client, and cached per key): it is used instead of the producer's call, which
lists the topic's partitions and hashes the key in Python on every call. Order is kept within
each topic-partition.

Each batch is closed before it is submitted: an open one waits out the producer's
``linger_ms`` in the queue (the whole batch is there already, so lingering only adds
latency, and the next batch of the same partition waits for it), and ``send`` could still
append records to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from engagement_index.core.partitioning import canonical_partition

Headers = list[tuple[str, bytes]] | None
#: ``(topic, key, value, partition, headers, timestamp in ms or None: now)``
Record = tuple[str, bytes | None, bytes | None, int | None, Headers, int | None]


@dataclass(slots=True)
class SentGroup:
    """A record batch submitted for one topic-partition: its future and record count."""

    topic: str
    partition: int
    count: int
    future: asyncio.Future[Any]

    def last_offset(self) -> int:
        """Offset of the group's last record (once the future is done)."""
        return int(self.future.result().offset) + self.count - 1


async def send_batched(producer: Any, records: Iterable[Record]) -> list[SentGroup]:
    """Submit ``(topic, key, value, partition, headers, timestamp)`` records; one group each
    topic-partition (more if a batch fills up)."""
    groups: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, Headers, int | None]]] = {}
    partition_of: dict[tuple[str, bytes], int] = {}
    #: each topic's partition count, where keys are placed by murmur2 (module docstring)
    counts: dict[str, int] = {}
    by_murmur2 = isinstance(producer._partitioner, DefaultPartitioner)
    ready_topics: set[str] = set()
    for topic, key, value, partition, headers, timestamp in records:
        if topic not in ready_topics:
            await producer.client._wait_on_metadata(topic)
            ready_topics.add(topic)
            if by_murmur2:
                counts[topic] = len(producer.client.cluster.partitions_for_topic(topic))
        if partition is None:
            if key is None:
                partition = producer._partition(topic, None, None, value, None, value)
            elif by_murmur2:
                partition = canonical_partition(key, counts[topic])
            else:
                cached = partition_of.get((topic, key))
                if cached is None:
                    cached = partition_of[(topic, key)] = producer._partition(
                        topic, None, key, value, key, value
                    )
                partition = cached
        group = groups.get((topic, partition))
        if group is None:
            group = groups[(topic, partition)] = []
        group.append((key, value, headers, timestamp))
    sent: list[SentGroup] = []
    for (topic, partition), items in groups.items():
        batch = producer.create_batch()
        count = 0
        for key, value, headers, timestamp in items:
            if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is not None:
                count += 1
                continue
            if count:  # the batch is full: submit it and start another
                batch.close()
                future = await producer.send_batch(batch, topic, partition=partition)
                sent.append(SentGroup(topic, partition, count, future))
                batch = producer.create_batch()
                count = 0
                appended = batch.append(key=key, value=value, timestamp=timestamp, headers=headers)
                if appended is not None:
                    count = 1
                    continue
            # a record larger than a whole batch: let send() judge it
            future = await producer.send(
                topic, value, key=key, partition=partition, headers=headers, timestamp_ms=timestamp
            )
            sent.append(SentGroup(topic, partition, 1, future))
        if count:
            batch.close()
            future = await producer.send_batch(batch, topic, partition=partition)
            sent.append(SentGroup(topic, partition, count, future))
    return sent
