"""Erasure: `engagement-index erase` removes a contact for good, also across a state loss."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer

from engagement_index.core.events import ContactKey
from tests.integration.test_worker_faults import good_event, wait_until
from tests.integration.test_worker_oracle import DEFAULT_MODEL
from tests.kafka_harness import ENGINE

pytestmark = pytest.mark.integration

GONE = "gone.person@example.com"
STAYS = "stays"


def erase(env: Any, contact: str, wait: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *ENGINE,
            "erase",
            "acme",
            contact,
            "--requested-by",
            "privacy-desk",
            "--wait",
            str(wait),
            "--bootstrap-servers",
            env.bootstrap,
            "--topology",
            str(env.topology_file),
        ],
        capture_output=True,
        text=True,
        timeout=wait + 60,
        check=False,
    )


def last_value_per_key(records: list[Any]) -> dict[bytes, bytes | None]:
    out: dict[bytes, bytes | None] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        out[record.key] = record.value
    return out


def test_erase_removes_the_contact_for_good(stream_env: Callable[..., Any]) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=2)
    worker = env.worker("w1")
    worker.start()
    now = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all")
    for cid in (GONE, STAYS):
        for n in range(3):
            producer.send(
                env.topic("web"),
                key=ContactKey("acme", cid).encode(),
                value=good_event(cid, n, now - 5000 + n, "web.form_submit"),
            )
    producer.flush()
    wait_until(
        lambda: all(worker.get(f"/v1/contacts/acme/{c}")[0] == 200 for c in (GONE, STAYS)),
        60,
        "both contacts scored",
    )

    done = erase(env, GONE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "erased" in done.stdout
    status, body = worker.get(f"/v1/contacts/acme/{GONE}")
    assert status == 404, body
    assert worker.get(f"/v1/contacts/acme/{STAYS}")[0] == 200

    # downstream: one erasure record; the score snapshot and both table entries tombstoned
    key = ContactKey("acme", GONE).encode()
    erasures = [json.loads(r.value) for r in env.consume_all(env.topic("erasures"), idle_s=2)]
    assert [(e["contact_id"], e["found"], e["requested_by"]) for e in erasures] == [
        (GONE, True, "privacy-desk")
    ]
    assert last_value_per_key(env.consume_all(env.topic("scores"), idle_s=2))[key] is None
    for table in ("contacts", "history"):
        changelog = env.consume_all(env.topology.changelog_topic(table), idle_s=2)
        latest = last_value_per_key(changelog)
        assert latest[key] is None, f"{table}: no tombstone"
        assert latest[ContactKey("acme", STAYS).encode()] is not None
    metrics = worker.get("/metrics")[1]
    assert 'engagement_erasures_total{outcome="erased"} 1.0' in metrics
    assert GONE not in metrics

    # a worker that lost its disk recovers from the changelogs: the contact is still gone
    worker.stop()
    shutil.rmtree(worker.data_dir)
    restarted = env.worker("w2")
    restarted.start()
    assert restarted.get(f"/v1/contacts/acme/{GONE}")[0] == 404
    assert restarted.get(f"/v1/contacts/acme/{STAYS}")[0] == 200

    # erasing an unknown contact is confirmed with found=false
    unknown = erase(env, "never-seen")
    assert unknown.returncode == 0, unknown.stdout + unknown.stderr
    assert "no state held" in unknown.stdout

    # a new event after the erasure starts a new contact from nothing
    producer.send(
        env.topic("web"), key=key, value=good_event(GONE, 99, int(time.time() * 1000) - 10)
    )
    producer.flush()
    producer.close()
    wait_until(lambda: restarted.get(f"/v1/contacts/acme/{GONE}")[0] == 200, 60, "the new contact")
    body = restarted.get(f"/v1/contacts/acme/{GONE}")[1]
    assert body["events_counted"] == 1
    assert len(body["last_transitions"]) == 1
