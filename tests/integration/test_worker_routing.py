"""Two workers share the partitions; either one answers for any contact."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer

from engagement_index.core.events import ContactKey
from engagement_index.stream.auth import token_digest
from tests.integration.test_worker_faults import good_event, wait_until
from tests.integration.test_worker_oracle import DEFAULT_MODEL

pytestmark = pytest.mark.integration

ACME = "routing-acme-token"
GLOBEX = "routing-globex-token"


def test_query_api_routes_to_the_owning_worker(stream_env: Callable[..., Any]) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=4)
    # auth on: the token goes along when a worker forwards a request to the owner
    tokens = json.dumps({token_digest(ACME): ["acme"], token_digest(GLOBEX): ["globex"]})
    auth_env = {"ENGAGEMENT_INDEX_API_TOKENS": tokens}
    first, second = env.worker("w1", auth_env), env.worker("w2", auth_env)
    first.start()
    second.start()
    wait_until(lambda: first.ready() and second.ready(), 60, "both workers ready after rebalance")
    now = int(time.time() * 1000)
    contacts = [f"r-{i}" for i in range(24)]
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all")
    for n, cid in enumerate(contacts):
        producer.send(
            env.topic("web"),
            key=ContactKey("acme", cid).encode(),
            value=good_event(cid, n, now - 1000),
        )
    producer.flush()
    producer.close()

    def all_visible() -> bool:
        return all(first.get(f"/v1/contacts/acme/{cid}", ACME)[0] == 200 for cid in contacts)

    wait_until(all_visible, 60, "every contact to be queryable")
    for cid in contacts:
        status_a, body_a = first.get(f"/v1/contacts/acme/{cid}", ACME)
        status_b, body_b = second.get(f"/v1/contacts/acme/{cid}", ACME)
        assert (status_a, status_b) == (200, 200), (cid, body_a, body_b)
        assert body_a["contact_id"] == body_b["contact_id"] == cid
        assert body_a["events_counted"] == body_b["events_counted"] == 1
        # wrong tenant's token: 404 from either worker; no token: 401 from either
        for worker in (first, second):
            assert worker.get(f"/v1/contacts/acme/{cid}", GLOBEX)[0] == 404
            assert worker.get(f"/v1/contacts/acme/{cid}", None)[0] == 401
    # Faust's own data pages are off: no table dumps or routing tables over HTTP
    for page in ("/router/", "/table/contacts/", "/graph/", "/stats/"):
        assert first.get(page)[0] == 404, page
    # each worker owns some of the partitions, so both really served data
    _, metrics_a = first.get("/metrics")
    _, metrics_b = second.get("/metrics")
    for text in (metrics_a, metrics_b):
        scored = [
            line
            for line in text.splitlines()
            if line.startswith("engagement_events_consumed_total") and "scored" in line
        ]
        assert scored, "both workers scored part of the traffic"
