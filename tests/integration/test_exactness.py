"""Exactness under real conditions, on a real broker (see docs/streaming.md).

* a backlog of historical events gives exactly the replay's transitions (decay wake-ups wait
  until a partition's event sources are read to their end);
* a changelog write the broker refuses fails the batch: nothing is committed past it, and a
  worker that restores from the changelog loses nothing;
* records that arrive on another partition than their contact's canonical one (a producer
  with another partitioner) are forwarded to it, so the state is never split;
* a re-sent event id is ignored within the dedupe window however many events came between;
* a model change is migrated, never applied with a due time of the old model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from engagement_index.core.events import ContactKey
from engagement_index.core.partitioning import canonical_partition
from engagement_index.replay import Replayer, replay
from tests.integration.test_worker_faults import good_event as event
from tests.integration.test_worker_oracle import (
    DEFAULT_MODEL,
    FAST_MODEL,
    assert_same_transitions,
    by_contact,
    wait_for_oracle,
)
from tests.kafka_harness import FAST_FAILOVER_ENV
from tests.reliability.harness import consumer_lag, wait_until

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of the exposition ``text`` (0 if absent)."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_caught_up(env: Any, timeout: float = 120) -> None:
    topics = list(env.topology.scoring_sources)
    wait_until(
        lambda: consumer_lag(env.bootstrap, env.topology.app_id, topics) == 0,
        timeout,
        "the worker's committed offsets to reach the end of its sources",
    )


def test_a_backlog_of_history_gives_exactly_the_replay_transitions(
    stream_env: Callable[..., Any],
) -> None:
    """Each contact's events are spread over many fetches; decays must not fire between."""
    env = stream_env(DEFAULT_MODEL, partitions=2)
    now = int(time.time() * 1000)
    contacts, per_contact = 300, 20
    start = now - 30 * DAY_MS
    hot = ("email.click", "web.form_submit", "social.share")
    # round-robin over contacts, so a contact's next event is a whole lap of the log later
    values = [
        event(f"b-{i:04d}", n, start + i * 60_000 + n * HOUR_MS // 2, hot[(i + n) % len(hot)])
        for n in range(per_contact)
        for i in range(contacts)
    ]
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)
    for value in values:
        body = json.loads(value)
        key = ContactKey(body["tenant"], body["contact_id"]).encode()
        # one topic per contact: Kafka keeps the order of a contact's records in its partition
        channel = "email" if int(body["contact_id"][2:]) % 2 else "web"
        producer.send(env.topic(channel), key=key, value=value)
    producer.flush()
    producer.close()

    result = replay(values, env.model, until_ms=now)
    oracle = by_contact([t.model_dump(mode="json") for t in result.transitions])
    # the scenario: contacts reach purchase early and their crossing lies past their next
    # event, so a decay applied between two fetches of the backlog would be wrong
    assert sum(1 for ts in oracle.values() for t in ts if t["to_stage"] == "purchase") >= contacts
    assert sum(1 for ts in oracle.values() for t in ts if t["reason"] == "decay") >= contacts

    # small fetches, as with any backlog larger than a fetch response (1 MiB per partition by
    # default): every partition's backlog takes dozens of fetches and batches
    worker = env.worker(
        extra_env={"ENGAGEMENT_INDEX_BATCH_SIZE": "40", "CONSUMER_MAX_FETCH_SIZE": "16384"}
    )
    worker.start()
    streamed = wait_for_oracle(env, oracle, timeout=120)
    assert_same_transitions(streamed, oracle)
    status, text = worker.get("/metrics")
    assert status == 200
    assert "engagement_decay_held_partitions" in text


def _topic_overrides(admin: Any, topic: str) -> dict[str, str]:
    """The topic's own (non-default) configs."""
    response = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    overrides: dict[str, str] = {}
    for resource in response[0].resources:
        for entry in resource[4]:
            name, value, _read_only, source = entry[0], entry[1], entry[2], entry[3]
            if source == 1 and value is not None:  # DYNAMIC_TOPIC_CONFIG
                overrides[name] = value
    return overrides


def test_a_refused_changelog_write_fails_the_batch_and_nothing_is_lost(
    stream_env: Callable[..., Any], kafka_admin: Any
) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=1)
    worker = env.worker(extra_env=FAST_FAILOVER_ENV)
    worker.start()
    now = int(time.time() * 1000)
    key = ContactKey("acme", "cl-1").encode()
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all")

    def send(n: int) -> None:
        producer.send(
            env.topic("web"), key=key, value=event("cl-1", n, now - 60_000 + n, "web.page_view")
        )
        producer.flush()

    def counted() -> int:
        status, body = worker.get("/v1/contacts/acme/cl-1")
        return int(body["events_counted"]) if status == 200 else 0

    send(0)
    wait_until(lambda: counted() == 1, 60, "the first event to be scored")
    wait_caught_up(env)

    changelog = f"{env.topology.app_id}-contacts-changelog"
    original = _topic_overrides(kafka_admin, changelog)
    # the broker now refuses every record batch of the contacts changelog (too large)
    kafka_admin.alter_configs(
        [
            ConfigResource(
                ConfigResourceType.TOPIC, changelog, configs={**original, "max.message.bytes": "8"}
            )
        ]
    )
    try:
        send(1)
        # the outputs of the second event are published, so its state is written locally...
        wait_until(lambda: counted() == 2, 60, "the second event to reach the local state")
        time.sleep(4)  # ...and the commit interval (1 s) passes several times
        status, text = worker.get("/metrics")
        failures = metric(text, "engagement_batch_failures_total", 'step="changelog"')
    finally:
        kafka_admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, changelog, configs=original)]
        )
    wait_caught_up(env)  # the retried batch goes through once the topic takes records again
    producer.close()
    # the local state is lost: the new worker restores from the changelog alone
    worker.kill()
    shutil.rmtree(worker.data_dir, ignore_errors=True)
    restored = env.worker("w2", extra_env=FAST_FAILOVER_ENV)
    restored.start(timeout=120)
    status, body = restored.get("/v1/contacts/acme/cl-1")
    assert status == 200, body
    assert body["events_counted"] == 2, "the changelog must hold the second event's state"
    assert failures >= 1, "the refused changelog write is counted"


def _kcat(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    """Publish ``key|value`` lines with kcat (librdkafka: CRC32 partitioner by default)."""
    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by dev/tools/install.sh (make setup)"
    done = subprocess.run(
        [kcat, "-b", bootstrap, "-t", topic, "-P", "-K", "|"],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_records_on_another_partition_are_forwarded_to_the_contacts_own(
    stream_env: Callable[..., Any],
) -> None:
    """A murmur2 producer (kafka-python) and a CRC32 producer (kcat) write the same contacts."""
    partitions = 4
    env = stream_env(DEFAULT_MODEL, partitions=partitions)
    worker = env.worker()
    worker.start()
    now = int(time.time() * 1000)
    cids = [f"p-{i:02d}" for i in range(20)]
    keys = {cid: ContactKey("acme", cid).encode() for cid in cids}
    moved = [
        cid
        for cid in cids
        if zlib.crc32(keys[cid]) % partitions != canonical_partition(keys[cid], partitions)
    ]
    assert len(moved) >= 5, "the scenario needs keys whose two partitions differ"
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all")
    for cid in cids:
        producer.send(
            env.topic("web"), key=keys[cid], value=event(cid, 0, now - 30_000, "web.page_view")
        )
    producer.flush()

    def counted(cid: str) -> int:
        status, body = worker.get(f"/v1/contacts/acme/{cid}")
        return int(body["events_counted"]) if status == 200 else 0

    wait_until(lambda: all(counted(c) == 1 for c in cids), 60, "the murmur2 records")
    _kcat(
        env.bootstrap,
        env.topic("email"),
        [keys[c] + b"|" + event(c, 1, now - 20_000, "email.click") for c in cids],
    )
    wait_until(lambda: all(counted(c) == 2 for c in cids), 60, "the kcat records, one state each")
    # and the next murmur2 event adds to the same state
    for cid in cids:
        producer.send(
            env.topic("web"), key=keys[cid], value=event(cid, 2, now - 10_000, "web.page_view")
        )
    producer.flush()
    producer.close()
    wait_until(lambda: all(counted(c) == 3 for c in cids), 60, "one state per contact")
    status, text = worker.get("/metrics")
    assert status == 200
    assert metric(text, "engagement_partition_forwards_total", 'channel="email"') == len(moved)


def test_a_model_change_is_migrated_never_applied_with_the_old_due_times(
    stream_env: Callable[..., Any],
) -> None:
    """Restarted on the same state with a lower leave level, then with one more component."""
    # half-lives of 20-60 s: the purchase crossing at 45 comes ~33 s after the burst, the one
    # at 30 ~64 s after it
    slow = (
        FAST_MODEL.replace("half_life: 30s", "half_life: 60s")
        .replace("half_life: 20s", "half_life: 40s")
        .replace("half_life: 10s", "half_life: 20s")
    )
    env = stream_env(slow, partitions=1)
    worker = env.worker()
    worker.start()
    now = int(time.time() * 1000)
    cids = [f"m-{i:02d}" for i in range(30)]
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all")
    for cid in cids:
        key = ContactKey("acme", cid).encode()
        for n, etype in enumerate(("email.click", "web.form_submit", "social.share") * 6):
            producer.send(env.topic("web"), key=key, value=event(cid, n, now + n, etype))
    producer.flush()

    def stage(w: Any, cid: str) -> str | None:
        status, body = w.get(f"/v1/contacts/acme/{cid}")
        return str(body["stage"]) if status == 200 else None

    wait_until(lambda: all(stage(worker, c) == "purchase" for c in cids), 60, "purchase")
    assert worker.stop() == 0
    before = len(env.consume_all(env.topic("stage_changes"), idle_s=1.0))

    # the same state, the leave level lowered: no decay may fire at the old due times
    env.model_file.write_text(
        slow.replace('"fast-test-1"', '"fast-test-2"').replace(
            "{index: pre_purchase, below: 45}", "{index: pre_purchase, below: 30}"
        )
    )
    lowered = env.worker("w2")
    lowered.start()
    wait_until(lambda: all(stage(lowered, c) == "nurture" for c in cids), 120, "the decays")
    changes = [json.loads(r.value) for r in env.consume_all(env.topic("stage_changes"))][before:]
    decays = [t for t in changes if t["reason"] == "decay"]
    assert len(decays) == len(cids), changes[:3]
    for t in decays:
        assert t["model_version"] == "fast-test-2"
        assert t["index"] < 30 <= t["previous_index"], t
    status, text = lowered.get("/metrics")
    assert status == 200
    assert metric(text, "engagement_model_migrations_total") == len(cids)
    assert lowered.stop() == 0

    # one more component: the events of existing contacts are scored, none is a dead letter
    env.model_file.write_text(
        slow.replace('"fast-test-1"', '"fast-test-3"')
        .replace("{index: pre_purchase, below: 45}", "{index: pre_purchase, below: 30}")
        .replace(
            "components:",
            "components:\n  support:  {half_life: 20s, saturation: 5}",
            1,
        )
        .replace("events:", "events:\n  support.ticket:     {component: support, points: 1}", 1)
    )
    grown = env.worker("w3")
    grown.start()
    later = int(time.time() * 1000)
    for cid in cids:
        key = ContactKey("acme", cid).encode()
        producer.send(env.topic("web"), key=key, value=event(cid, 100, later, "web.page_view"))
        producer.send(env.topic("web"), key=key, value=event(cid, 101, later + 1, "support.ticket"))
    producer.flush()
    producer.close()

    def counted(cid: str) -> int:
        status, body = grown.get(f"/v1/contacts/acme/{cid}")
        return int(body["events_counted"]) if status == 200 else 0

    wait_until(lambda: all(counted(c) == 20 for c in cids), 60, "the new events to be scored")
    status, body = grown.get(f"/v1/contacts/acme/{cids[0]}")
    assert body["components"]["support"] > 0
    assert body["model_version"] == "fast-test-3"
    assert env.consume_all(env.topic("dead_letters"), idle_s=1.0) == []


def test_a_re_sent_event_is_ignored_within_the_window_however_many_events_came_between(
    stream_env: Callable[..., Any],
) -> None:
    """Arrival = the record timestamp (CreateTime, set here by the producer)."""
    env = stream_env(DEFAULT_MODEL, partitions=1)
    worker = env.worker()
    worker.start()
    now = int(time.time() * 1000)
    key = ContactKey("acme", "d-1").encode()
    original = event("d-1", 0, now - 60_000, "web.form_submit")
    sent: list[tuple[bytes, int]] = [(original, now - 4 * DAY_MS)]
    sent += [
        (event("d-1", n, now - 50_000 + n, "email.open"), now - 4 * DAY_MS + n)
        for n in range(1, 21)
    ]
    sent.append((original, now - 2 * DAY_MS))  # 20 events later, 2 days on: a duplicate
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all")

    def publish(records: list[tuple[bytes, int]]) -> None:
        for value, arrival in records:
            producer.send(env.topic("web"), key=key, value=value, timestamp_ms=arrival)
        producer.flush()

    def counted() -> int:
        status, body = worker.get("/v1/contacts/acme/d-1")
        return int(body["events_counted"]) if status == 200 else 0

    publish(sent)
    wait_caught_up(env)
    assert counted() == 21, "the copy 20 events later is ignored"
    again = [(original, now)]  # 4 days after the first copy: past the 72 h window
    publish(again)
    producer.close()
    wait_until(lambda: counted() == 22, 60, "the copy after the window to count again")

    # the replay given the same arrivals agrees, state and transitions
    replayer = Replayer(env.model)
    expected = [
        t.model_dump(mode="json") for v, a in sent + again for t in replayer.feed(v, arrival_ms=a)
    ]
    assert replayer.stats.duplicates == 1
    streamed = [json.loads(r.value) for r in env.consume_all(env.topic("stage_changes"))]
    assert [t["transition_id"] for t in streamed] == [t["transition_id"] for t in expected]
