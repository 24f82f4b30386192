"""Identity merge on a real broker: Segment calls through the collector, the worker merges.

Anonymous page views, then an ``identify`` (userId + anonymousId) posted to the collector: the
known contact's API answer must equal the offline replay in which every event carried the
known id (index to 1e-6, stages, events counted), and also the replay of the same records with
the identify record in the input. A merge delivered twice (the identify, the merge request and
the transfer, each re-published) changes nothing; the erasure of the known contact erases its
aliases. A second test SIGKILLs the worker while many merges are under way.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import evaluate
from engagement_index.core.timestamps import ms_to_rfc3339, parse_timestamp_ms
from engagement_index.replay import Replayer
from tests.integration.test_collector import CollectorProcess, basic, request
from tests.integration.test_erasure import erase
from tests.integration.test_worker_faults import good_event, wait_until
from tests.integration.test_worker_oracle import DEFAULT_MODEL
from tests.kafka_harness import FAST_FAILOVER_ENV

pytestmark = pytest.mark.integration

WRITE_KEY = "wk-acme"


@pytest.fixture
def collector_for(tmp_path: Path) -> Iterator[Callable[[Any], CollectorProcess]]:
    started: list[CollectorProcess] = []

    def start(env: Any) -> CollectorProcess:
        keys = tmp_path / "keys.yaml"
        keys.write_text(yaml.safe_dump({"write_keys": {WRITE_KEY: "acme"}}))
        collector = CollectorProcess(
            env.bootstrap, env.topology_file, keys, tmp_path / "collector.log"
        )
        started.append(collector)
        collector.wait("/readyz", 200)
        return collector

    yield start
    for collector in started:
        collector.stop()


def post(collector: CollectorProcess, call: str, body: dict[str, Any]) -> None:
    status, _, raw = request(
        f"{collector.url}/v1/{call}",
        json.dumps(body).encode(),
        {"Authorization": basic(WRITE_KEY), "Content-Type": "application/json"},
    )
    assert status == 200, raw


def inbound_records(env: Any) -> list[Any]:
    """Every record of the inbound topics, in timestamp order (the collector's publish)."""
    records = []
    for spec in env.topology.inbound.values():
        records.extend(env.consume_all(spec.name, idle_s=1.0))
    return sorted(records, key=lambda r: (r.timestamp, r.topic, r.partition, r.offset))


def replay_as(records: list[Any], env: Any, rename: dict[str, str]) -> Replayer:
    """The replay of ``records`` with the ids of ``rename`` replaced (arrivals: the records'
    timestamps, as the worker's dedupe sees them)."""
    replayer = Replayer(env.model)
    for record in records:
        event = json.loads(record.value)
        event["contact_id"] = rename.get(event["contact_id"], event["contact_id"])
        replayer.feed(json.dumps(event), arrival_ms=record.timestamp)
    return replayer


def assert_equal_to_replay(worker: Any, env: Any, replayer: Replayer, contact: str) -> None:
    status, body = worker.get(f"/v1/contacts/acme/{contact}")
    assert status == 200, body
    replayer._solve_all()
    state = replayer.states[("acme", contact)]
    expected = evaluate(state, parse_timestamp_ms(body["evaluated_at"]), env.model.compiled)
    assert body["events_counted"] == expected.events_counted
    assert body["index"] == pytest.approx(expected.index, abs=1e-6)
    assert body["lifecycles"].keys() == expected.lifecycles.keys()
    for name, stage in expected.lifecycles.items():
        assert body["lifecycles"][name]["stage"] == stage["stage"], name
    assert body["first_seen_at"] == expected.first_seen_at
    assert body["markers"] == expected.markers


def test_page_views_then_an_identify_through_the_collector_equal_the_replay_with_the_known_id(
    stream_env: Callable[..., Any], collector_for: Callable[[Any], CollectorProcess]
) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=3)
    collector = collector_for(env)
    worker = env.worker("w1")
    worker.start()
    now = int(time.time() * 1000)
    user, anon = "user-42", "anon-7f3a"
    assert ContactKey("acme", user).encode() != ContactKey("acme", anon).encode()
    for n in range(8):
        post(
            collector,
            "page",
            {
                "anonymousId": anon,
                "name": f"page {n}",
                "messageId": f"pv-{n}",
                "timestamp": ms_to_rfc3339(now - 600_000 + n * 30_000),
            },
        )
    post(
        collector,
        "track",
        {
            "anonymousId": anon,
            "event": "Form Submitted",
            "messageId": "fs-1",
            "timestamp": ms_to_rfc3339(now - 300_000),
        },
    )
    post(
        collector,
        "track",
        {
            "userId": user,
            "event": "Email Link Clicked",
            "messageId": "ec-1",
            "timestamp": ms_to_rfc3339(now - 200_000),
        },
    )
    wait_until(
        lambda: worker.get(f"/v1/contacts/acme/{anon}")[1].get("events_counted") == 9,
        60,
        "the anonymous page views",
    )
    identify = {
        "userId": user,
        "anonymousId": anon,
        "traits": {"plan": "pro"},
        "messageId": "id-1",
        "timestamp": ms_to_rfc3339(now - 100_000),
    }
    post(collector, "identify", identify)

    def merged() -> bool:
        status, body = worker.get(f"/v1/contacts/acme/{anon}")
        return status == 200 and "merged_into" in body

    wait_until(merged, 60, "the merge")
    _status, pointer = worker.get(f"/v1/contacts/acme/{anon}")
    assert pointer["merged_into"]["contact_id"] == user
    # later events of the anonymous id count on the known contact
    post(
        collector,
        "page",
        {"anonymousId": anon, "name": "after", "messageId": "pv-after",
         "timestamp": ms_to_rfc3339(now - 50_000)},
    )  # fmt: skip
    wait_until(
        lambda: worker.get(f"/v1/contacts/acme/{user}")[1].get("events_counted") == 11,
        60,
        "the event after the merge on the known contact",
    )
    records = inbound_records(env)
    assert len(records) == 11
    assert_equal_to_replay(worker, env, replay_as(records, env, {anon: user}), user)
    assert worker.get(f"/v1/contacts/acme/{user}")[1]["aliases"] == [anon]

    # the replay of the same records with the identify record in the input agrees
    identities = env.consume_all(env.topology.outbound.identities.name, idle_s=1.0)
    assert len(identities) == 1
    offline = Replayer(env.model)
    lines = [(r.timestamp, r.value) for r in records] + [
        (identities[0].timestamp, identities[0].value)
    ]
    for arrival, value in sorted(lines, key=lambda item: item[0]):
        offline.feed(value, arrival_ms=arrival)
    assert offline.stats.merges == 1
    assert_equal_to_replay(worker, env, offline, user)

    merges_topic = env.topology.outbound.merges.name
    merges = [json.loads(r.value) for r in env.consume_all(merges_topic, idle_s=1.0)]
    assert [(m["survivor_id"], m["absorbed_id"], m["kind"]) for m in merges] == [
        (user, anon, "identify")
    ]
    assert merges[0]["absorbed_events"] == 9
    assert merges[0]["survivor_events"] == 1
    metrics = worker.get("/metrics")[1]
    assert 'engagement_identity_links_total{outcome="merged",step="merge"} 1.0' in metrics

    # delivered twice: the identify again through the collector, the merge request and the
    # transfer re-published as they were
    post(collector, "identify", identify)
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all")
    for topic in (env.topology.internal.merge_requests.name,
                  env.topology.internal.merge_transfers.name):  # fmt: skip
        for record in env.consume_all(topic, idle_s=1.0):
            producer.send(topic, key=record.key, value=record.value, partition=record.partition)
    producer.flush()
    producer.close()
    wait_until(
        lambda: (
            'engagement_identity_links_total{outcome="duplicate",step="merge"} 1.0'
            in worker.get("/metrics")[1]
        ),
        60,
        "the re-published transfer",
    )
    assert_equal_to_replay(worker, env, replay_as(records, env, {anon: user}), user)
    assert len(env.consume_all(merges_topic, idle_s=1.0)) == 1
    assert env.consume_all(env.topology.outbound.dead_letters.name, idle_s=1.0) == []

    # erasing the known contact erases its merged history and its alias
    done = erase(env, user)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(lambda: worker.get(f"/v1/contacts/acme/{anon}")[0] == 404, 60, "the alias erased")
    assert worker.get(f"/v1/contacts/acme/{user}")[0] == 404
    erasures = [json.loads(r.value) for r in env.consume_all(env.topic("erasures"), idle_s=1.0)]
    assert sorted((e["contact_id"], e["found"]) for e in erasures) == [(anon, True), (user, True)]
    assert worker.stop() == 0, worker.log_tail()


def test_a_sigkill_while_merges_are_under_way_loses_and_doubles_nothing(
    stream_env: Callable[..., Any],
) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=3)
    now = int(time.time() * 1000)
    pairs = [(f"user-{i:02d}", f"anon-{i:02d}") for i in range(40)]
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)
    records: list[tuple[str, bytes]] = []
    for i, (user, anon) in enumerate(pairs):
        for n in range(4):
            records.append((anon, good_event(anon, n, now - 900_000 + i * 1000 + n * 60_000)))
        records.append((user, good_event(user, 9, now - 400_000 + i * 1000, "email.click")))
    for contact, value in records:
        key = ContactKey("acme", contact).encode()
        topic = env.topic("email" if b"email." in value else "web")
        producer.send(topic, key=key, value=value)
    producer.flush()
    worker = env.worker("w1", {**FAST_FAILOVER_ENV, "ENGAGEMENT_INDEX_BATCH_SIZE": "1"})
    worker.start()
    wait_until(
        lambda: all(worker.get(f"/v1/contacts/acme/{anon}")[0] == 200 for _, anon in pairs[-3:]),
        60,
        "the anonymous contacts",
    )
    identities = env.topology.outbound.identities.name
    for i, (user, anon) in enumerate(pairs):
        link = {"kind": "identify", "event_id": f"id-{i}", "tenant": "acme", "contact_id": user,
                "anonymous_id": anon, "timestamp": ms_to_rfc3339(now - 10_000)}  # fmt: skip
        producer.send(
            identities, key=ContactKey("acme", user).encode(), value=json.dumps(link).encode()
        )
    producer.flush()
    producer.close()
    merges_topic = env.topology.outbound.merges.name
    merged = re.compile(r'engagement_identity_links_total\{outcome="merged",step="merge"\} (\d+)')
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill at the first merge: the others are under way
        found = merged.search(worker.get("/metrics")[1])
        if found and int(found.group(1)) >= 1:
            break
        time.sleep(0.02)
    worker.kill()
    done = len({json.loads(r.value)["merge_id"] for r in env.consume_all(merges_topic, 0.5)})
    assert 0 < done < len(pairs), "the kill came before or after every merge: nothing tested"
    restarted = env.worker("w2", {**FAST_FAILOVER_ENV, "ENGAGEMENT_INDEX_BATCH_SIZE": "2"})
    restarted.data_dir = worker.data_dir  # the same disk: the re-delivery path
    restarted.env["ENGAGEMENT_INDEX_DATA_DIR"] = str(worker.data_dir)
    restarted.start(timeout=120)

    def all_merged() -> bool:
        for user, _ in pairs:
            status, body = restarted.get(f"/v1/contacts/acme/{user}")
            if status != 200 or body.get("events_counted") != 5:
                return False
        return True

    wait_until(all_merged, 120, "every merge after the restart")
    inbound = inbound_records(env)
    rename = {anon: user for user, anon in pairs}
    expected = replay_as(inbound, env, rename)
    for user, anon in pairs:
        assert_equal_to_replay(restarted, env, expected, user)
        _status, body = restarted.get(f"/v1/contacts/acme/{anon}")
        assert body["merged_into"]["contact_id"] == user
    merges = [json.loads(r.value) for r in env.consume_all(merges_topic, idle_s=1.0)]
    assert {m["merge_id"] for m in merges} == {
        m["merge_id"] for m in merges if m["absorbed_events"] == 4
    }
    assert len({m["merge_id"] for m in merges}) == len(pairs)

    # a worker that lost its disk restores the merged contacts and the aliases from the
    # changelogs
    restarted.kill()
    shutil.rmtree(worker.data_dir)
    restored = env.worker("w3")
    restored.start(timeout=120)
    for user, anon in pairs:
        assert_equal_to_replay(restored, env, expected, user)
        assert restored.get(f"/v1/contacts/acme/{user}")[1]["aliases"] == [anon]
        body = restored.get(f"/v1/contacts/acme/{anon}")[1]
        assert body["merged_into"]["contact_id"] == user
    assert restored.stop() == 0, restored.log_tail()
