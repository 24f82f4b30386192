"""``engagement-index erase TENANT CONTACT``: erase a contact's state (GDPR right to erasure).

Publishes an erasure request to the erasure command topic, keyed like the contact's events so
it reaches the worker that owns the contact. That worker deletes the contact's state and
history (tombstones in the changelogs), tombstones its score snapshot, and confirms on the
erasures topic. ``--wait`` waits for that confirmation.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from engagement_index.core.erasure import ErasureRequest
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.errors import BrokerError, ConfigError
from engagement_index.kafka_security import check_access, kafka_python_options
from engagement_index.settings import Settings
from engagement_index.topology import load_topology

HELP = "erase a contact's state and history (publishes an erasure request to the workers)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the sub-command's arguments."""
    parser.add_argument("tenant")
    parser.add_argument("contact_id")
    parser.add_argument("--requested-by", help="who asks (recorded in the erasure record)")
    parser.add_argument("--erasure-id", help="id of the request (default: a new UUID)")
    parser.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait this long for the worker's confirmation on the erasures topic",
    )
    parser.add_argument("--bootstrap-servers", help="default: $KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--topology", type=Path, help="topology YAML")


def run(args: argparse.Namespace) -> int:
    """Publish the request; with ``--wait``, exit 0 only once the erasure is confirmed."""
    overrides = {"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {}
    settings = Settings(**overrides)
    topology = load_topology(args.topology or settings.topology_file)
    try:
        request = ErasureRequest(
            erasure_id=args.erasure_id or str(uuid.uuid4()),
            tenant=args.tenant,
            contact_id=args.contact_id,
            requested_at=ms_to_rfc3339(time.time_ns() // 1_000_000),
            requested_by=args.requested_by,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid erasure request: {exc}") from exc
    check_access(settings)
    options = kafka_python_options(settings)
    timeout_ms = int(settings.admin_timeout_seconds * 1000)
    consumer = None
    try:
        if args.wait is not None:
            consumer = _confirmation_consumer(options, topology.outbound.erasures.name)
        producer = KafkaProducer(acks="all", max_block_ms=timeout_ms, **options)
        try:
            producer.send(
                topology.internal.erasure_requests.name,
                key=request.key.encode(),
                value=request.to_json_bytes(),
            ).get(timeout=settings.admin_timeout_seconds)
        finally:
            producer.close()
        print(f"erasure {request.erasure_id} requested for {request.tenant}/{request.contact_id}")
        if consumer is None:
            return 0
        confirmation = _wait_for(consumer, request.erasure_id, args.wait)
    except KafkaError as exc:
        raise BrokerError(f"Kafka refused the erasure request: {exc!r}") from exc
    finally:
        if consumer is not None:
            consumer.close()
    if confirmation is None:
        print(f"no confirmation within {args.wait:g}s (the worker applies it when it runs)")
        return 1
    state = "erased" if confirmation["found"] else "no state held (nothing to erase)"
    print(f"confirmed at {confirmation['erased_at']}: {state}")
    return 0


def _confirmation_consumer(options: dict[str, object], topic: str) -> KafkaConsumer:
    consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, **options)
    partitions = consumer.partitions_for_topic(topic) or set()
    if not partitions:
        consumer.close()
        raise ConfigError(f"topic {topic} does not exist (run 'engagement-index topics create')")
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    consumer.seek_to_end()
    for tp in consumer.assignment():
        consumer.position(tp)  # fix the start before the request is sent
    return consumer


def _wait_for(consumer: KafkaConsumer, erasure_id: str, wait_s: float) -> dict[str, object] | None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=500)
        for records in batches.values():
            for record in records:
                try:
                    value = json.loads(record.value)
                except (TypeError, ValueError):
                    continue
                if isinstance(value, dict) and value.get("erasure_id") == erasure_id:
                    return value
    return None
