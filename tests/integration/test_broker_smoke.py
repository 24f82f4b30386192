"""Real records through the real broker with both Kafka clients the service uses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer

pytestmark = pytest.mark.integration


def test_session_broker_is_the_local_one(kafka_broker: object, bootstrap_servers: str) -> None:
    """When no external broker is given, the session's broker was started by the project."""
    if kafka_broker is None:
        assert bootstrap_servers
        return
    log = kafka_broker.log_file  # type: ignore[attr-defined]
    assert "Kafka Server started" in log.read_text()
    assert bootstrap_servers.endswith(str(kafka_broker.port))  # type: ignore[attr-defined]


def test_kafka_python_round_trip(
    bootstrap_servers: str, new_topic: Callable[..., str], new_group: Callable[[], str]
) -> None:
    topic = new_topic("kp", partitions=3)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    sent = [(f"k{i % 7}".encode(), f"value-{i}".encode()) for i in range(50)]
    for key, value in sent:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=new_group(),
        auto_offset_reset="earliest",
        consumer_timeout_ms=15_000,
    )
    received = []
    for record in consumer:
        received.append((record.key, record.value))
        if len(received) == len(sent):
            break
    consumer.close()
    assert sorted(received) == sorted(sent)


def test_aiokafka_round_trip_and_cross_client(
    bootstrap_servers: str, new_topic: Callable[..., str], new_group: Callable[[], str]
) -> None:
    topic = new_topic("aio", partitions=2)

    async def scenario() -> list[tuple[bytes | None, bytes | None]]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
        await producer.start()
        try:
            for i in range(20):
                await producer.send(topic, key=b"aio", value=f"a{i}".encode())
            await producer.flush()
        finally:
            await producer.stop()
        # a record from the other client lands in the same topic
        sync_producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
        sync_producer.send(topic, key=b"kp", value=b"from-kafka-python").get(timeout=30)
        sync_producer.close()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap_servers,
            group_id=new_group(),
            auto_offset_reset="earliest",
        )
        await consumer.start()
        got: list[tuple[bytes | None, bytes | None]] = []
        try:
            async with asyncio.timeout(20):
                while len(got) < 21:
                    batch = await consumer.getmany(timeout_ms=1000)
                    for records in batch.values():
                        got.extend((r.key, r.value) for r in records)
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(scenario())
    aio_values = [v for k, v in got if k == b"aio"]
    assert aio_values == [f"a{i}".encode() for i in range(20)], "one key keeps its order"
    assert (b"kp", b"from-kafka-python") in got


def test_transactions_work(
    bootstrap_servers: str, new_topic: Callable[..., str], new_group: Callable[[], str]
) -> None:
    """Committed transactional records are visible to read_committed; aborted ones are not."""
    topic = new_topic("txn")

    async def scenario() -> list[bytes | None]:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers, transactional_id=f"{topic}-tx"
        )
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send(topic, value=b"committed")
            await producer.begin_transaction()
            await producer.send(topic, value=b"aborted")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send(topic, value=b"marker")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap_servers,
            group_id=new_group(),
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        values: list[bytes | None] = []
        try:
            async with asyncio.timeout(20):
                while b"marker" not in values:
                    batch = await consumer.getmany(timeout_ms=1000)
                    for records in batch.values():
                        values.extend(r.value for r in records)
        finally:
            await consumer.stop()
        return values

    assert asyncio.run(scenario()) == [b"committed", b"marker"]
