"""The worker's query API needs a bearer token scoped to tenants; /metrics names no contact."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer

from engagement_index.core.events import ContactKey
from engagement_index.stream.auth import token_digest
from tests.integration.test_worker_faults import wait_until
from tests.integration.test_worker_oracle import DEFAULT_MODEL, iso

pytestmark = pytest.mark.integration

ACME_TOKEN = "acme-reader-token-0123456789"
GLOBEX_TOKEN = "globex-reader-token-0123456789"
# contact ids that must never show up in /metrics, /healthz or /readyz
CONTACTS = {
    "acme": ["alice.sensitive@example.com", "c-secret-4711"],
    "globex": ["bob.sensitive@example.org"],
}


def raw_get(url: str, headers: dict[str, str]) -> tuple[int, Any, bytes]:
    """(status, headers, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def event(tenant: str, cid: str, n: int, ts_ms: int) -> bytes:
    return json.dumps(
        {
            "event_id": f"{cid}-{n}",
            "tenant": tenant,
            "contact_id": cid,
            "type": "email.click",
            "timestamp": iso(ts_ms),
            "properties": {"email": cid},
        }
    ).encode()


def test_query_api_tokens_are_scoped_and_metrics_name_no_contact(
    stream_env: Callable[..., Any],
) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=2)
    tokens = {token_digest(ACME_TOKEN): ["acme"], token_digest(GLOBEX_TOKEN): ["globex"]}
    worker = env.worker("w1", {"ENGAGEMENT_INDEX_API_TOKENS": json.dumps(tokens)})
    worker.start()
    now = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all")
    for tenant, cids in CONTACTS.items():
        for n, cid in enumerate(cids):
            key = ContactKey(tenant, cid).encode()
            producer.send(env.topic("email"), key=key, value=event(tenant, cid, n, now - 500))
    producer.flush()
    producer.close()
    alice = "/v1/contacts/acme/alice.sensitive@example.com"
    wait_until(lambda: worker.get(alice, ACME_TOKEN)[0] == 200, 60, "alice to be scored")

    # the right token reads its own tenant's contacts
    for cid in CONTACTS["acme"]:
        status, body = worker.get(f"/v1/contacts/acme/{cid}", ACME_TOKEN)
        assert status == 200, body
        assert body["contact_id"] == cid
    status, body = worker.get("/v1/contacts/globex/bob.sensitive@example.org", GLOBEX_TOKEN)
    assert status == 200, body

    # no token, a wrong token, a wrong scheme: 401 with a JSON error and a Bearer challenge
    for header in (None, "Bearer not-a-token", f"Basic {ACME_TOKEN}", f"Bearer {ACME_TOKEN}x"):
        headers = {"Authorization": header} if header else {}
        status, answer_headers, raw = raw_get(worker.url + alice, headers)
        assert status == 401, header
        assert answer_headers["WWW-Authenticate"].startswith("Bearer")
        body = json.loads(raw)
        assert body["error"] == "unauthorized", body
        assert body["message"]
        assert "alice" not in json.dumps(body)

    # another tenant's token: the same 404 as a contact that does not exist
    cross = worker.get(alice, GLOBEX_TOKEN)
    unknown = worker.get("/v1/contacts/acme/nobody@example.com", ACME_TOKEN)
    assert cross[0] == unknown[0] == 404
    assert {**cross[1], "contact_id": "x"} == {**unknown[1], "contact_id": "x"}
    assert worker.get("/v1/contacts/globex/bob.sensitive@example.org", ACME_TOKEN)[0] == 404

    # health, readiness and metrics stay open and name no contact
    pages = {}
    for page in ("/healthz", "/readyz", "/metrics"):
        status, body = worker.get(page, token=None)
        assert status == 200, (page, body)
        pages[page] = body if isinstance(body, str) else json.dumps(body)
    assert "engagement_events_consumed_total" in pages["/metrics"]
    assert "engagement_api_auth_failures_total 4.0" in pages["/metrics"]
    for text in pages.values():
        for cids in CONTACTS.values():
            for cid in cids:
                assert cid not in text
                assert cid.split("@")[0] not in text
        assert "example.com" not in text
        assert "example.org" not in text


def test_demo_setup_can_turn_query_api_auth_off(stream_env: Callable[..., Any]) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=1)
    worker = env.worker("w1", {"ENGAGEMENT_INDEX_API_AUTH": "false"})
    worker.start()
    status, body = worker.get("/v1/contacts/acme/nobody", token=None)
    assert status == 404, body
    assert body["error"] == "contact not found"
