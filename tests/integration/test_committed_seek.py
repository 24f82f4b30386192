"""The recovery's seek to the committed offsets, one request for all partitions, against
aiokafka's own ``seek_to_committed`` (a request per partition) on a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from engagement_index.stream.bulk import _seek_to_committed

pytestmark = pytest.mark.integration

PARTITIONS = 6
RECORDS = 10
#: what the group commits: partitions 4 and 5 none, partition 0 offset 0
COMMITTED = {0: 0, 1: 3, 2: 7, 3: RECORDS}
STALE = 5


def test_one_request_seeks_as_aiokafka_seeks(
    bootstrap_servers: str, new_topic: Callable[..., str], new_group: Callable[[], str]
) -> None:
    topic = new_topic("seek", partitions=PARTITIONS)
    group = new_group()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    async def consumer() -> AIOKafkaConsumer:
        made = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
        )
        await made.start()
        made.assign(tps)
        return made

    async def scenario() -> tuple[dict[TopicPartition, int | None], ...]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
        await producer.start()
        try:
            for tp in tps:
                for i in range(RECORDS):
                    await producer.send(topic, b"v%d" % i, partition=tp.partition)
        finally:
            await producer.stop()
        committer = await consumer()
        try:
            await committer.commit(
                {tps[p]: OffsetAndMetadata(offset, "") for p, offset in COMMITTED.items()}
            )
        finally:
            await committer.stop()
        results = []
        for seek in (_seek_to_committed, lambda c: c.seek_to_committed()):
            reader = await consumer()
            try:
                for tp in tps:  # where a stale fetch left them
                    reader.seek(tp, STALE)
                found = await seek(reader)
                positions = {tp: await reader.position(tp) for tp in tps}
            finally:
                await reader.stop()
            results += [dict(found), positions]
        return tuple(results)

    ours, our_positions, theirs, their_positions = asyncio.run(scenario())
    expected = {tps[p]: COMMITTED.get(p) for p in range(PARTITIONS)}  # a commit of 0 is 0
    assert ours == theirs == expected
    # sought where the commit is above 0, left where they were elsewhere
    at = {tps[p]: COMMITTED[p] if COMMITTED.get(p) else STALE for p in range(PARTITIONS)}
    assert our_positions == their_positions == at
