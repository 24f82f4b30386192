"""Bad input goes to the dead-letter topic; a killed worker that lost its disk loses nothing."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer

from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import evaluate
from engagement_index.core.timestamps import parse_timestamp_ms
from engagement_index.replay import replay
from tests.integration.test_worker_oracle import DEFAULT_MODEL, by_contact, iso
from tests.kafka_harness import FAST_FAILOVER_ENV

pytestmark = pytest.mark.integration


def good_event(cid: str, n: int, ts_ms: int, etype: str = "web.page_view") -> bytes:
    return json.dumps(
        {
            "event_id": f"{cid}-{n}",
            "tenant": "acme",
            "contact_id": cid,
            "type": etype,
            "timestamp": iso(ts_ms),
        }
    ).encode()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_bad_records_go_to_the_dead_letter_topic_with_headers(
    stream_env: Callable[..., Any],
) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=1)
    worker = env.worker()
    worker.start()
    now = int(time.time() * 1000)
    base = {
        "event_id": "b",
        "tenant": "acme",
        "contact_id": "bad",
        "type": "web.page_view",
        "timestamp": iso(now),
    }

    def variant(**changes: Any) -> bytes:
        event = {**base, **changes}
        return json.dumps({k: v for k, v in event.items() if v is not None}).encode()

    bad: dict[bytes, tuple[bytes | None, str]] = {
        b"k-json": (b'{"event_id": "x", nope', "invalid_json"),
        b"k-utf8": (b'\xff\xfe{"event_id": "x"}', "invalid_encoding"),
        b"k-nul": (b'{"event_id": "\x00"', "invalid_json"),
        # an escaped lone surrogate is not Unicode text: rejected as invalid JSON
        b"k-surrogate": (variant(event_id="\\ud800").replace(b"\\\\", b"\\"), "invalid_json"),
        b"k-missing-id": (variant(event_id=None), "schema_violation"),
        b"k-wrong-type": (variant(contact_id=42), "schema_violation"),
        b"k-naive-time": (variant(timestamp="2026-01-01T00:00:00"), "schema_violation"),
        b"k-long": (variant(contact_id="x" * 10_000), "schema_violation"),
        b"k-unknown": (variant(type="fax.sent"), "unknown_type"),
        b"k-oversized": (variant(properties={"pad": "y" * 70_000}), "oversized"),
        b"k-future": (variant(timestamp=iso(now + 86_400_000)), "time_out_of_range"),
        b"k-past": (variant(timestamp=iso(now - 500 * 86_400_000)), "time_out_of_range"),
        b"k-null": (None, "schema_violation"),
    }
    producer = KafkaProducer(
        bootstrap_servers=env.bootstrap, acks="all", max_request_size=2_000_000
    )
    topic = env.topic("web")
    key = ContactKey("acme", "good").encode()
    producer.send(topic, key=key, value=good_event("good", 0, now - 1000))
    for record_key, (value, _) in bad.items():
        producer.send(topic, key=record_key, value=value)
    producer.send(topic, key=key, value=good_event("good", 1, now - 500))
    producer.flush()
    producer.close()

    def dead_letters() -> list[Any]:
        records: list[Any] = env.consume_all(env.topic("dead_letters"), idle_s=1.0)
        return records

    wait_until(lambda: len(dead_letters()) >= len(bad), 60, "the dead letters")
    records = dead_letters()
    assert len(records) == len(bad), [r.key for r in records]
    for record in records:
        value, failure = bad[record.key]
        headers = {k: v.decode() for k, v in record.headers}
        assert record.value == value, record.key
        assert headers["dlq.failure.type"] == failure, (record.key, headers)
        assert headers["dlq.source.topic"] == topic
        assert headers["dlq.source.partition"] == "0"
        assert int(headers["dlq.source.offset"]) >= 1
        assert headers["dlq.error.message"]
        assert headers["dlq.worker.version"]
        assert abs(parse_timestamp_ms(headers["dlq.failure.time"]) - time.time() * 1000) < 120_000

    # the worker kept scoring the good records around the bad ones
    status, body = worker.get("/v1/contacts/acme/good")
    assert status == 200, body
    assert body["events_counted"] == 2
    status, text = worker.get("/metrics")
    for failure in {f for _, f in bad.values()}:
        expected = sum(1 for _, f in bad.values() if f == failure)
        line = f'engagement_dead_letters_total{{failure_type="{failure}"}} {float(expected)}'
        assert line in text, line


def test_killed_worker_with_deleted_state_recovers_and_matches_replay(
    stream_env: Callable[..., Any],
) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=3)
    rng = random.Random(7)
    now = int(time.time() * 1000)
    contacts = [f"k-{i:03d}" for i in range(150)]
    channel_of = {cid: rng.choice(["web", "email", "social"]) for cid in contacts}
    types = {
        "web": ["web.page_view", "web.form_submit"],
        "email": ["email.open", "email.click"],
        "social": ["social.like", "social.share"],
    }
    traffic: list[tuple[str, bytes]] = []
    counters = dict.fromkeys(contacts, 0)
    for _ in range(4000):
        cid = rng.choice(contacts)
        counters[cid] += 1
        ts = now - 3_600_000 + counters[cid] * 60_000 + rng.randint(0, 59_000)
        etype = rng.choice(types[channel_of[cid]])
        if counters[cid] == 25:
            etype = "commerce.purchase"
        traffic.append((cid, good_event(cid, counters[cid], ts, etype)))
    # upstream duplicates
    for _ in range(40):
        traffic.insert(rng.randrange(len(traffic) // 2, len(traffic)), rng.choice(traffic))

    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)

    def send(part: list[tuple[str, bytes]]) -> None:
        for cid, value in part:
            producer.send(
                env.topic(channel_of[cid]), key=ContactKey("acme", cid).encode(), value=value
            )
        producer.flush()

    half = len(traffic) // 2
    send(traffic[:half])
    worker = env.worker(extra_env=FAST_FAILOVER_ENV)
    worker.start()
    wait_until(
        lambda: len(env.consume_all(env.topic("stage_changes"), idle_s=0.3)) > 50,
        60,
        "the first transitions",
    )
    worker.kill()
    shutil.rmtree(worker.data_dir)
    send(traffic[half:])
    producer.close()
    restarted = env.worker("w2")
    restarted.start(timeout=120)

    result = replay([value for _, value in traffic], env.model)
    expected_counts = {cid: state.events_counted for (_, cid), state in result.states.items()}

    def all_counted() -> bool:
        # every contact, not a sample: partitions catch up at their own pace
        for cid in contacts:
            status, body = restarted.get(f"/v1/contacts/acme/{cid}")
            if status != 200 or body["events_counted"] != expected_counts[cid]:
                return False
        return True

    wait_until(all_counted, 120, "the restarted worker to catch up")
    streamed = env.consume_all(env.topic("stage_changes"), idle_s=1.5)
    streamed_ids = {json.loads(r.value)["transition_id"] for r in streamed}
    oracle_ids = {t.transition_id for t in result.transitions}
    assert oracle_ids - streamed_ids == set(), "no transition lost"
    assert streamed_ids - oracle_ids == set(), "no transition invented"
    assert len(by_contact([json.loads(r.value) for r in streamed])) == len(contacts)
    for (tenant, cid), state in result.states.items():
        status, body = restarted.get(f"/v1/contacts/{tenant}/{cid}")
        assert status == 200
        assert body["events_counted"] == state.events_counted, cid
        expected = evaluate(state, parse_timestamp_ms(body["evaluated_at"]), env.model.compiled)
        assert body["index"] == pytest.approx(expected.index, abs=1e-6), cid
        assert body["stage"] == expected.stage, cid
    assert restarted.stop() == 0, restarted.log_tail()
