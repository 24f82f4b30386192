"""The hand-computed lifecycle scenarios of ``tests/lifecycle_scenarios.py`` through the worker.

One worker per group of ``GROUPS`` (the six constructs whose models merge into one model, and
the trend on its own), on a real broker. The events are historical (t0 is a whole hour two to
three hours ago, well inside the worker's time window of ``max_age_days``), published before
the worker starts: it reads them as a backlog (its decay wake-ups wait until the sources are
read to their end, so every due change before a contact's next event is applied at that
event, as in the replay), then its decay timer emits the changes due after the last events,
all in the past by the wall clock. The stage-change topic must hold exactly the expected
transitions per contact, in order, at the same milliseconds, with the same rule ids and the
index to 1e-9: the same literals the replay tier checks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer

from engagement_index.core.events import ContactKey
from tests.lifecycle_scenarios import GROUPS, HOUR, by_contact, merged, mismatches, records

pytestmark = pytest.mark.integration


def _wait_for(env: Any, expected: dict[str, list[Any]], timeout: float) -> dict[str, list[Any]]:
    """Poll the stage-change topic until every contact has its expected count (or time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        records_ = env.consume_all(env.topic("stage_changes"), idle_s=1.0)
        got = by_contact(json.loads(r.value) for r in records_)
        if all(len(got.get(cid, [])) >= len(ts) for cid, ts in expected.items()):
            # one more read: a transition too many would be emitted right behind
            time.sleep(1.0)
            records_ = env.consume_all(env.topic("stage_changes"), idle_s=1.0)
            return by_contact(json.loads(r.value) for r in records_)
        if time.monotonic() > deadline:
            return got
        time.sleep(1.0)


@pytest.mark.parametrize("group", list(GROUPS), ids=list(GROUPS))
def test_the_worker_gives_the_hand_computed_transitions(
    stream_env: Callable[..., Any], group: str
) -> None:
    scenarios = GROUPS[group]
    model_yaml, expected = merged(scenarios)
    env = stream_env(model_yaml, partitions=2)
    t0 = (int(time.time() * 1000) - 2 * HOUR) // HOUR * HOUR
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)
    for cid, value in records(scenarios, t0):
        producer.send(env.topic("web"), key=ContactKey("acme", cid).encode(), value=value)
    producer.flush()
    producer.close()

    worker = env.worker()
    worker.start()
    got = _wait_for(env, expected, timeout=90)
    problems = mismatches(got, expected, t0)
    assert not problems, "\n".join(problems)
    assert env.consume_all(env.topic("dead_letters"), idle_s=0.5) == []
    for scenario in scenarios:  # every event was scored once (capped ones too)
        for cid, events in scenario.events.items():
            status, body = worker.get(f"/v1/contacts/acme/{cid}")
            assert status == 200, body
            assert body["events_counted"] == len(events), cid
