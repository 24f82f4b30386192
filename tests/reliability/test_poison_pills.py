"""Poison pills: 1% bad records mixed into a live stream of good ones, on a real broker.

Which records are bad follows the canonical event's rules (``engagement_index.core.events``
and the worker's checks), not intuition:

* bad (dead-lettered with the failure type named in ``BAD_KINDS``): JSON that does not parse,
  including a raw NUL byte inside a string and a lone surrogate written as a ``\\ud800``
  escape (``invalid_json``); bytes that are not UTF-8, including a surrogate encoded as bytes
  (``invalid_encoding``); wrong JSON types, missing ``event_id``/``contact_id``, an unknown
  field, a 10,000-character ``event_id`` (limit 128), ``contact_id`` (256) or ``tenant``
  (``[A-Za-z0-9_.-]{1,64}``), a NUL in ``type`` (pattern), a record that is not an object, a
  tombstone (``schema_violation``); a record over ``max_record_bytes`` (``oversized``); a
  timestamp more than ``max_future_seconds`` ahead or ``max_age_days`` old
  (``time_out_of_range``); a type the model does not score (``unknown_type``).
* good, however odd (must score exactly as the oracle says): an escaped NUL (``\\u0000``) or
  emoji in ``contact_id`` (no character rule), a 10,000-character string in ``properties`` or
  ``account_id`` (no length rule; the record stays under the size limit), an offset other
  than ``Z`` with nanoseconds.

Checks: the DLQ holds exactly the bad records (same key and bytes, each once) with headers
naming their source topic/partition/offset and failure type; the metric of dead letters
equals the injected count per failure type; the good records' transitions and final states
equal the replay oracle's; the worker drains the stream and commits to the end (no stall).

``RELIABILITY_SIZE=full`` (``make reliability``) runs 50,000 good records; the default (``make
test``) 2,000. Figures go to ``var/reliability/poison_pills.json``.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import evaluate
from engagement_index.core.model import load_model
from engagement_index.core.timestamps import ms_to_rfc3339, parse_timestamp_ms
from engagement_index.replay import replay

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL_YAML = (REPO / "config" / "models" / "default.yaml").read_text()
FULL = os.environ.get("RELIABILITY_SIZE") == "full"
GOOD = 50_000 if FULL else 2_000
CONTACTS = 5_000 if FULL else 200
OUT = REPO / "var" / "reliability" / "poison_pills.json"
DAY = 86_400_000
DLQ_HEADERS = {
    "dlq.source.topic",
    "dlq.source.partition",
    "dlq.source.offset",
    "dlq.failure.type",
    "dlq.error.message",
    "dlq.worker.version",
    "dlq.failure.time",
}


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sub(field: str, raw: bytes) -> Callable[[dict[str, Any]], bytes]:
    """Write the event with ``field``'s JSON value replaced by ``raw`` bytes."""

    def make(event: dict[str, Any]) -> bytes:
        marker = "\x01MARK\x01"
        return _dump({**event, field: marker}).replace(json.dumps(marker).encode(), raw)

    return make


def _with(**changes: Any) -> Callable[[dict[str, Any]], bytes]:
    return lambda event: _dump({**event, **changes})


def _without(field: str) -> Callable[[dict[str, Any]], bytes]:
    return lambda event: _dump({k: v for k, v in event.items() if k != field})


LONG = "x" * 10_000
#: kind -> (expected failure type, how to spoil a good event)
BAD_KINDS: dict[str, tuple[str, Callable[[dict[str, Any]], bytes | None]]] = {
    "json_truncated": ("invalid_json", lambda e: _dump(e)[:-7]),
    "json_trailing_comma": ("invalid_json", lambda e: _dump(e)[:-1] + b",}"),
    "json_nul_byte": ("invalid_json", _sub("contact_id", b'"c\x00d"')),
    "lone_surrogate_escape": ("invalid_json", _sub("contact_id", b'"c\\ud800"')),
    "invalid_utf8": ("invalid_encoding", _sub("contact_id", b'"c\xff\xfed"')),
    "surrogate_bytes": ("invalid_encoding", _sub("contact_id", b'"c\xed\xa0\x80"')),
    "nul_in_type": ("schema_violation", _with(type="email.o\x00pen")),
    "wrong_type_contact": ("schema_violation", _with(contact_id=12345)),
    "wrong_type_timestamp": ("schema_violation", _with(timestamp=1_700_000_000)),
    "wrong_type_properties": ("schema_violation", _with(properties=["a", "b"])),
    "missing_event_id": ("schema_violation", _without("event_id")),
    "missing_contact_id": ("schema_violation", _without("contact_id")),
    "unknown_field": ("schema_violation", _with(colour="blue")),
    "long_event_id": ("schema_violation", _with(event_id=LONG)),
    "long_contact_id": ("schema_violation", _with(contact_id=LONG)),
    "long_tenant": ("schema_violation", _with(tenant=LONG)),
    "not_an_object": ("schema_violation", lambda e: _dump({"events": [e]})[10:-1]),
    "tombstone": ("schema_violation", lambda e: None),
    "oversized": ("oversized", _with(properties={"blob": "y" * 70_000})),
    "far_future": ("time_out_of_range", _with(timestamp="2999-01-01T00:00:00Z")),
    "far_past": ("time_out_of_range", _with(timestamp="2001-01-01T00:00:00Z")),
    "unknown_type": ("unknown_type", _with(type="email.teleport")),
}
CHANNELS = ("web", "email", "social", "commerce", "product")


def make_stream(
    rng: random.Random, now_ms: int
) -> tuple[list[dict[str, Any]], list[tuple[str, bytes | None, bytes]]]:
    """(records to publish in order, good (channel, key, value) in publish order).

    A record is ``{"channel", "key", "value", "bad": kind | None}``. Each contact keeps one
    channel and one key (canonical, or a legacy key that goes through the re-key topic), so
    the order of its events is the publish order, as the oracle sees it.
    """
    types = sorted(load_model(REPO / "config" / "models" / "default.yaml").compiled.rules)
    contacts = []
    for i in range(CONTACTS):
        cid = f"c-{i:05d}"
        if i % 50 == 1:
            cid = f"nul\x00{i}"  # escaped NUL in the JSON: a valid contact id
        elif i % 50 == 2:
            cid = f"émoji-😀-{i}"
        tenant = "acme" if i % 3 else "globex"
        legacy = rng.random() < 0.1
        key = f"legacy:{i}".encode() if legacy else ContactKey(tenant, cid).encode()
        contacts.append((tenant, cid, rng.choice(CHANNELS), key))
    good: list[dict[str, Any]] = []
    for n in range(GOOD):
        tenant, cid, channel, key = contacts[rng.randrange(CONTACTS)]
        ts = now_ms - rng.randint(60_000, 20 * DAY)
        event: dict[str, Any] = {
            "event_id": f"e-{n}",
            "tenant": tenant,
            "contact_id": cid,
            "type": rng.choice(types),
            "timestamp": ms_to_rfc3339(ts),
        }
        odd = rng.random()
        if odd < 0.005:
            event["properties"] = {"note": LONG}  # long strings are fine in properties
        elif odd < 0.01:
            event["account_id"] = LONG  # account_id has no length rule
        elif odd < 0.02:  # another offset, nanoseconds: same instant rules
            event["timestamp"] = ms_to_rfc3339(ts + 19_800_000)[:-1] + "123456+05:30"
        else:
            event["properties"] = {"n": n}
        good.append({"channel": channel, "key": key, "value": _dump(event), "bad": None})
    bad_count = max(len(BAD_KINDS), round(GOOD / 99))  # 1% of all records
    kinds = [list(BAD_KINDS)[i % len(BAD_KINDS)] for i in range(bad_count)]
    records = list(good)
    for kind in kinds:
        tenant, cid, channel, key = contacts[rng.randrange(CONTACTS)]
        template = json.loads(good[rng.randrange(len(good))]["value"])
        template.update(tenant=tenant, contact_id=cid, event_id=f"bad-{kind}-{rng.random()}")
        value = BAD_KINDS[kind][1](template)
        bad_key = rng.choice([key, None, b"\xff\xfe-not-a-key"])
        if value is None and bad_key is None:  # Kafka needs a key or a value
            bad_key = key
        where = rng.randrange(len(records) + 1)
        records.insert(
            where, {"channel": rng.choice(CHANNELS), "key": bad_key, "value": value, "bad": kind}
        )
    return records, [(r["channel"], r["key"], r["value"]) for r in good]


def metric_values(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric in a Prometheus text page."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name) :]] = float(value)
    return out


def group_lag(admin: KafkaAdminClient, bootstrap: str, group: str, topics: list[str]) -> int:
    """Records of ``topics`` not yet committed by ``group``."""
    from kafka import KafkaConsumer

    committed = admin.list_consumer_group_offsets(group)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        ends = consumer.end_offsets(tps)
    finally:
        consumer.close()
    return sum(end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items())


def test_poison_pills_are_dead_lettered_and_the_rest_scores_as_the_oracle(
    stream_env: Callable[..., Any], kafka_admin: KafkaAdminClient
) -> None:
    started = time.monotonic()
    env = stream_env(MODEL_YAML)
    rng = random.Random(20261123)
    now_ms = int(time.time() * 1000)
    records, good = make_stream(rng, now_ms)
    bad = [r for r in records if r["bad"]]
    worker = env.worker()
    worker.start()

    # a live stream: published in chunks while the worker runs
    producer = KafkaProducer(
        bootstrap_servers=env.bootstrap, acks="all", linger_ms=5, max_request_size=1_048_576
    )
    futures = []
    chunk = max(1, len(records) // 20)
    for i, record in enumerate(records):
        futures.append(
            producer.send(env.topic(record["channel"]), key=record["key"], value=record["value"])
        )
        if i % chunk == chunk - 1:
            producer.flush()
            time.sleep(0.2)
    producer.flush()
    for record, future in zip(records, futures, strict=True):
        meta = future.get(timeout=30)
        record["coords"] = (meta.topic, meta.partition, meta.offset)
    producer.close()
    published_at = time.monotonic()

    # no stall: every record is accounted for, then the group commits to the end
    distinct_good = len({json.loads(v)["event_id"] for _, _, v in good})
    deadline = published_at + (300 if FULL else 120)
    while True:
        status, text = worker.get("/metrics")
        assert status == 200
        consumed = metric_values(text, "engagement_events_consumed_total")
        scored = sum(v for k, v in consumed.items() if 'outcome="scored"' in k)
        dead = sum(v for k, v in consumed.items() if 'outcome="dead_lettered"' in k)
        if scored >= distinct_good and dead >= len(bad):
            break
        assert time.monotonic() < deadline, (
            f"stalled: scored {scored}/{distinct_good}, dead {dead}/{len(bad)}"
        )
        time.sleep(1)
    drained_s = time.monotonic() - published_at
    inbound = [env.topic(c) for c in CHANNELS] + [env.topic("rekey")]
    lag = -1
    for _ in range(60):
        lag = group_lag(kafka_admin, env.bootstrap, env.topology.app_id, inbound)
        if lag == 0:
            break
        time.sleep(0.5)
    assert lag == 0, f"the worker did not commit to the end: lag {lag}"

    # the DLQ holds exactly the bad records, with their headers
    dlq = env.consume_all(env.topic("dead_letters"), idle_s=2.0)
    by_coords = {r["coords"]: r for r in bad}
    seen: set[tuple[str, int, int]] = set()
    header_errors: list[tuple[Any, ...]] = []
    for item in dlq:
        headers = dict(item.headers)
        if set(headers) != DLQ_HEADERS:
            header_errors.append(("headers", sorted(headers)))
            continue
        coords = (
            headers["dlq.source.topic"].decode(),
            int(headers["dlq.source.partition"]),
            int(headers["dlq.source.offset"]),
        )
        source = by_coords.get(coords)
        if source is None or coords in seen:
            header_errors.append(("unexpected or repeated", coords))
            continue
        seen.add(coords)
        if (item.key, item.value) != (source["key"], source["value"]):
            header_errors.append(("bytes differ", source["bad"]))
        expected_failure = BAD_KINDS[source["bad"]][0]
        if headers["dlq.failure.type"].decode() != expected_failure:
            header_errors.append(("failure type", source["bad"], headers["dlq.failure.type"]))
        if not headers["dlq.error.message"]:
            header_errors.append(("empty message", source["bad"]))
        parse_timestamp_ms(headers["dlq.failure.time"].decode())
    missing = [r["bad"] for r in bad if r["coords"] not in seen]
    assert not header_errors, header_errors[:10]
    assert not missing, f"bad records not dead-lettered: {Counter(missing)}"
    assert len(dlq) == len(bad)

    # the metric equals the injected count per failure type
    _, text = worker.get("/metrics")
    dead_by_type = {
        k.split('"')[1]: int(v)
        for k, v in metric_values(text, "engagement_dead_letters_total").items()
    }
    injected_by_type = Counter(BAD_KINDS[r["bad"]][0] for r in bad)
    assert dead_by_type == dict(injected_by_type)

    # the good records score exactly as the oracle says (transitions up to the cutoff, states)
    stage_records = env.consume_all(env.topic("stage_changes"), idle_s=2.0)
    cutoff_ms = int(time.time() * 1000) - 2_000
    result = replay([v for _, _, v in good], env.model, until_ms=cutoff_ms)
    assert not result.rejects, result.rejects[:3]
    oracle_ids = {t.transition_id for t in result.transitions}
    streamed_ids = {
        t["transition_id"]
        for t in (json.loads(r.value) for r in stage_records)
        if parse_timestamp_ms(t["occurred_at"]) <= cutoff_ms
    }
    transition_mismatches = len(oracle_ids ^ streamed_ids)
    state_mismatches: list[tuple[Any, ...]] = []
    for (tenant, cid), state in result.states.items():
        status, body = worker.get(f"/v1/contacts/{tenant}/{urllib.parse.quote(cid, safe='')}")
        if status != 200:
            state_mismatches.append((tenant, cid, status))
            continue
        expected = evaluate(state, parse_timestamp_ms(body["evaluated_at"]), env.model.compiled)
        if (
            abs(body["index"] - expected.index) > 1e-6
            or body["stage"] != expected.stage
            or body["events_counted"] != expected.events_counted
        ):
            state_mismatches.append((tenant, cid, body["index"], expected.index))
    figures = {
        "suite": "poison_pills",
        "mode": "full" if FULL else "fast",
        "good_records": len(good),
        "bad_records_injected": len(bad),
        "bad_fraction": round(len(bad) / len(records), 4),
        "injected_by_kind": dict(Counter(r["bad"] for r in bad)),
        "injected_by_failure_type": dict(injected_by_type),
        "dlq_records": len(dlq),
        "dlq_metric_by_failure_type": dead_by_type,
        "contacts": len(result.states),
        "oracle_transitions": len(oracle_ids),
        "transition_mismatches": transition_mismatches,
        "state_mismatches": len(state_mismatches),
        "drain_seconds_after_last_publish": round(drained_s, 1),
        "final_lag": lag,
        "seconds": round(time.monotonic() - started, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    assert transition_mismatches == 0, sorted(oracle_ids ^ streamed_ids)[:5]
    assert not state_mismatches, state_mismatches[:5]
