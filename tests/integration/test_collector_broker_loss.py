"""The collector answers 503 while its broker is gone, and recovers by itself when it returns.

Uses a broker of its own (stopped and restarted mid-test), not the session broker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from kafka import KafkaConsumer, TopicPartition

from engagement_index.kafka_admin import ensure_topics
from engagement_index.settings import Settings
from engagement_index.topology import load_topology
from tests.integration.test_collector import CollectorProcess, _private_topology, basic, request
from tests.kafka_harness import LocalBroker


def _track(collector: CollectorProcess, message_id: str) -> tuple[int, bytes]:
    body = {"userId": "u-1", "event": "Order Completed", "messageId": message_id}
    status, _, answer = request(
        collector.url + "/v1/track", json.dumps(body).encode(), {"Authorization": basic("wk")}
    )
    return status, answer


def _event_ids(bootstrap: str, topic: str) -> set[str]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    ids = {json.loads(record.value)["event_id"] for record in consumer}
    consumer.close()
    return ids


def test_broker_loss_answers_503_then_recovers(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "kafka")
    started = broker.run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    collector: CollectorProcess | None = None
    try:
        topology_file = _private_topology(tmp_path, "loss")
        topology = load_topology(topology_file)
        ensure_topics(Settings(bootstrap_servers=broker.bootstrap_servers), topology)
        keys = tmp_path / "keys.yaml"
        keys.write_text(yaml.safe_dump({"write_keys": {"wk": "t"}}))
        collector = CollectorProcess(
            broker.bootstrap_servers, topology_file, keys, tmp_path / "collector.log"
        )
        collector.wait("/readyz", 200)
        status, answer = _track(collector, "before")
        assert status == 200, answer

        stopped = broker.run("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        began = time.monotonic()
        status, answer = _track(collector, "during")
        waited = time.monotonic() - began
        assert status == 503, answer
        assert json.loads(answer)["code"] == "unavailable"
        # the publish timeout is 3 s in these tests: the sender learns quickly, never hangs
        assert waited < 10, waited
        assert collector.proc.poll() is None, "the collector keeps running without its broker"

        restarted = broker.run("start")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline:
            status, answer = _track(collector, "after")
            if status == 200:
                break
            assert status == 503, answer
            time.sleep(0.5)
        assert status == 200, "the collector reconnects by itself once the broker is back"
        ids = _event_ids(broker.bootstrap_servers, topology.inbound["commerce"].name)
        assert {"before", "after"} <= ids
        metrics = request(collector.url + "/metrics")[2].decode()
        assert 'engagement_collector_rejected_total{reason="kafka",source="segment"}' in metrics
    finally:
        if collector is not None:
            collector.stop()
        broker.run("stop")
