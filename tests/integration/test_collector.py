"""The collector against real clients and a real broker.

One collector process serves the module, on a private topology (unique topic names). Each test
uses its own tenant, so its records can be told apart on the shared topics. Clients: the real
``segment-analytics-python`` and ``rudder-sdk-python`` SDKs, SendGrid's documented sample
payload signed with an ECDSA key as SendGrid signs it, Mailgun's HMAC signature, and pixel URLs
fetched with urllib.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kafka import KafkaConsumer, TopicPartition
from rudderstack.analytics.client import Client as RudderClient  # type: ignore[import-untyped]
from segment.analytics.client import Client  # type: ignore[import-untyped]

from engagement_index.collector.pixel import GIF, sign_pixel_url
from engagement_index.kafka_admin import ensure_topics
from engagement_index.settings import Settings
from engagement_index.topology import Topology, load_topology

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINE = [sys.executable, "-m", "engagement_index.cli"]

# SendGrid's documented Event Webhook example (Event Webhook Reference, "an event response
# that includes an example of each type of event"), as published.
SENDGRID_SAMPLE = [
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "processed",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "deferred",
        "ip": "168.1.1.1",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
        "response": "400 try again later",
        "attempt": "5",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "delivered",
        "ip": "168.1.1.1",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
        "response": "250 OK",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "open",
        "sg_machine_open": False,
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
        "useragent": "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; "
        ".NET CLR 2.0.50727)",
        "ip": "255.255.255.255",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "click",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
        "useragent": "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; "
        ".NET CLR 2.0.50727)",
        "ip": "255.255.255.255",
        "url": "http://www.sendgrid.com/",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "bounce",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
        "reason": "500 unknown recipient",
        "status": "5.0.0",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "dropped",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
        "reason": "Bounced Address",
        "status": "5.0.0",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "spamreport",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "unsubscribe",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "group_unsubscribe",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
        "useragent": "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; "
        ".NET CLR 2.0.50727)",
        "ip": "255.255.255.255",
        "url": "http://www.sendgrid.com/",
        "asm_group_id": 10,
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "group_resubscribe",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
        "useragent": "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; "
        ".NET CLR 2.0.50727)",
        "ip": "255.255.255.255",
        "url": "http://www.sendgrid.com/",
        "asm_group_id": 10,
    },
]
SENDGRID_EXPECTED = [
    "email.sent",  # processed
    "email.sent",  # delivered
    # the sample's open has the same time as its message's delivery: no person opens a
    # message in the second it arrives (sg_machine_open is false: SendGrid flags only Apple's
    # proxy, the delivery-time rule catches scanners and prefetchers too)
    "email.machine_open",
    "email.click",
    "email.bounce",  # bounce
    "email.bounce",  # dropped
    "email.unsubscribe",  # spamreport
    "email.unsubscribe",  # unsubscribe
    "email.unsubscribe",  # group_unsubscribe
]

PIXEL_SECRET = "pixel-secret-for-tests"
MAILGUN_KEY = "mailgun-signing-key-for-tests"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _private_topology(tmp: Path, prefix: str) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "streams" / "topology.yaml").read_text())
    raw["app_id"] = f"{prefix}-app"
    raw["scoring_partitions"] = 2
    for group in ("inbound", "outbound", "internal"):
        for spec in raw[group].values():
            spec["name"] = f"{prefix}.{spec['name']}"
            if "partitions" in spec:
                spec["partitions"] = 2
    path = tmp / "topology.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class CollectorProcess:
    """``engagement-index collector`` as a subprocess."""

    def __init__(self, bootstrap: str, topology: Path, keys: Path, log: Path, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ENGAGEMENT_INDEX_TOPOLOGY_FILE": str(topology),
            "ENGAGEMENT_INDEX_COLLECTOR_PORT": str(self.port),
            "ENGAGEMENT_INDEX_COLLECTOR_KEYS_FILE": str(keys),
            "ENGAGEMENT_INDEX_COLLECTOR_PUBLISH_TIMEOUT_SECONDS": "3",
            **env,
        }
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*ENGINE, "collector"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait(self, path: str, status: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"collector exited:\n{self.log.read_text()}"
            try:
                if request(self.url + path)[0] == status:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{path} never answered {status}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def request(
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request, error statuses included."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def basic(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


class Env:
    def __init__(self, bootstrap: str, topology: Topology, collector: CollectorProcess) -> None:
        self.bootstrap = bootstrap
        self.topology = topology
        self.collector = collector
        self.url = collector.url
        self.sendgrid_private = SENDGRID_PRIVATE

    @property
    def topics(self) -> dict[str, str]:
        out: dict[str, str] = {ch: spec.name for ch, spec in self.topology.inbound.items()}
        out["identity"] = self.topology.outbound.identities.name
        return out

    def records(self, tenant: str, idle_s: float = 1.5) -> dict[str, list[dict[str, Any]]]:
        """Every record of ``tenant`` on the collector's topics, by channel (with its key)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            consumer_timeout_ms=int(idle_s * 1000),
        )
        by_topic = {name: channel for channel, name in self.topics.items()}
        partitions = [
            TopicPartition(name, p)
            for name in by_topic
            for p in consumer.partitions_for_topic(name) or set()
        ]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        out: dict[str, list[dict[str, Any]]] = {}
        prefix = tenant.encode() + b"\x1f"
        for record in consumer:
            if record.key is not None and record.key.startswith(prefix):
                value = json.loads(record.value)
                value["_key"] = record.key
                out.setdefault(by_topic[record.topic], []).append(value)
        consumer.close()
        return out

    def dead_letters(self, tenant: str, idle_s: float = 1.5) -> list[tuple[Any, dict[str, str]]]:
        """(value, headers) of every dead letter the collector wrote for ``tenant``."""
        topic = self.topology.outbound.dead_letters.name
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            consumer_timeout_ms=int(idle_s * 1000),
        )
        consumer.assign(
            [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        )
        consumer.seek_to_beginning()
        out = []
        for record in consumer:
            headers = {k: v.decode() for k, v in record.headers}
            if headers.get("dlq.source.tenant") == tenant:
                out.append((json.loads(record.value), headers))
        consumer.close()
        return out


SENDGRID_PRIVATE = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def env(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("collector")
    topology_file = _private_topology(tmp, f"c{os.getpid()}-{time.monotonic_ns() % 10**8}")
    topology = load_topology(topology_file)
    ensure_topics(Settings(bootstrap_servers=bootstrap_servers), topology)
    public_der = SENDGRID_PRIVATE.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keys = tmp / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "write_keys": {
                    "wk-seg": "seg",
                    "wk-bad": "bad",
                    "wk-rs": "rs",
                    "wk-pb": "pb",
                    "wk-enc": "enc",
                },
                "pixel_secrets": {"px": PIXEL_SECRET, "bad": "other-secret", "mo": PIXEL_SECRET},
                "sendgrid_public_keys": {"sg": base64.b64encode(public_der).decode()},
                "mailgun_signing_keys": {"mg": MAILGUN_KEY},
            }
        )
    )
    collector = CollectorProcess(
        bootstrap_servers,
        topology_file,
        keys,
        tmp / "collector.log",
        ENGAGEMENT_INDEX_COLLECTOR_SENDGRID_VERIFY="true",
    )
    try:
        collector.wait("/readyz", 200)
        yield Env(bootstrap_servers, topology, collector)
    finally:
        collector.stop()


def test_segment_sdk_identify_track_page(env: Env) -> None:
    errors: list[Any] = []
    client = Client(
        "wk-seg",
        host=env.url,
        gzip=True,
        on_error=lambda exc, batch: errors.append(exc),
        upload_interval=0.05,
    )
    client.identify("user-1", {"plan": "pro"}, anonymous_id="anon-1")
    client.track("user-1", "Order Completed", {"revenue": 42}, context={"groupId": "acct-9"})
    client.track("user-1", "Signed Up", {"source": "ad"})
    client.track(anonymous_id="anon-2", event="Email Link Clicked")
    client.page("user-1", "Docs", "Pricing", {"url": "https://example.test/pricing"})
    client.alias("anon-1", "user-1")
    client.group("user-1", "acct-9", {"licences": 10})
    client.flush()
    client.join()
    assert errors == []

    found = env.records("seg")
    commerce = found["commerce"]
    assert [(e["type"], e["contact_id"], e.get("account_id")) for e in commerce] == [
        ("commerce.purchase", "user-1", "acct-9")
    ]
    assert commerce[0]["properties"]["revenue"] == 42
    assert commerce[0]["_key"] == b"seg\x1fuser-1"
    web = sorted((e["type"], e["contact_id"]) for e in found["web"])
    assert web == [
        ("account.group", "user-1"),
        ("custom.signed_up", "user-1"),
        ("web.page_view", "user-1"),
    ]
    # a group call is the account.group event: the contact joins the account (its licences)
    group = next(e for e in found["web"] if e["type"] == "account.group")
    assert (group["account_id"], group["properties"]) == ("acct-9", {"licences": 10})
    assert [(e["type"], e["contact_id"]) for e in found["email"]] == [("email.click", "anon-2")]
    identities = sorted((r["kind"], r["contact_id"]) for r in found["identity"])
    assert identities == [("alias", "user-1"), ("identify", "user-1")]
    identify = next(r for r in found["identity"] if r["kind"] == "identify")
    assert identify["anonymous_id"] == "anon-1"
    alias = next(r for r in found["identity"] if r["kind"] == "alias")
    assert alias["previous_id"] == "anon-1"
    # every event id is the SDK's messageId (a UUID), every timestamp the call's time
    for events in found.values():
        for event in events:
            assert len(event["event_id"]) == 36
            assert abs(time.time() - _epoch(event["timestamp"])) < 120


def _epoch(text: str) -> float:
    from engagement_index.core.timestamps import parse_timestamp_ms

    return parse_timestamp_ms(text) / 1000


def _sendgrid_post(env: Env, body: bytes, *, sign_with: Any) -> tuple[int, bytes]:
    timestamp = str(int(time.time()))
    signature = sign_with.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    status, _, answer = request(
        f"{env.url}/webhooks/sendgrid/sg",
        body,
        {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        },
    )
    return status, answer


def test_sendgrid_documented_sample_signed_and_forged(env: Env) -> None:
    body = json.dumps(SENDGRID_SAMPLE).encode()
    forger = ec.generate_private_key(ec.SECP256R1())
    status, answer = _sendgrid_post(env, body, sign_with=forger)
    assert status == 401, answer
    status, _, answer = request(f"{env.url}/webhooks/sendgrid/sg", body)  # unsigned
    assert status == 401, answer
    assert env.records("sg", idle_s=1.0) == {}

    status, answer = _sendgrid_post(env, body, sign_with=env.sendgrid_private)
    assert status == 200, answer
    assert json.loads(answer) == {"success": True, "published": 9, "ignored": 2}
    found = env.records("sg")
    assert list(found) == ["email"]
    assert [e["type"] for e in found["email"]] == SENDGRID_EXPECTED
    first = found["email"][0]
    assert first["event_id"] == "sg_event_id"
    assert first["contact_id"] == "example@test.com"
    assert first["timestamp"] == "2017-12-15T00:59:29Z"
    assert first["properties"]["sg_message_id"] == "sg_message_id"
    assert "example@test.com" not in json.dumps(first["properties"])
    assert found["email"][2]["properties"]["machine_open"] == "soon_after_delivery"

    # a body changed after signing does not verify
    tampered = body.replace(b"cat facts", b"dog facts")
    ts = str(int(time.time()))
    sig = env.sendgrid_private.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    status, _, answer = request(
        f"{env.url}/webhooks/sendgrid/sg",
        tampered,
        {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        },
    )
    assert status == 401, answer
    assert len(env.records("sg")["email"]) == len(SENDGRID_EXPECTED)


def test_mailgun_signed_and_forged(env: Env) -> None:
    def webhook(key: str, event: str, event_id: str, **extra: Any) -> bytes:
        timestamp, token = str(int(time.time())), os.urandom(25).hex()
        signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256)
        return json.dumps(
            {
                "signature": {
                    "timestamp": timestamp,
                    "token": token,
                    "signature": signature.hexdigest(),
                },
                "event-data": {
                    "event": event,
                    "id": event_id,
                    "timestamp": 1521472262.908181,
                    "recipient": "Alice@Example.com",
                    "user-variables": {"contact_id": "c-77"},
                    **extra,
                },
            }
        ).encode()

    url = f"{env.url}/webhooks/mailgun/mg"
    assert request(url, webhook("wrong-key", "opened", "mg-0"))[0] == 401
    assert request(url, webhook(MAILGUN_KEY, "opened", "mg-1"))[0] == 200
    assert request(url, webhook(MAILGUN_KEY, "failed", "mg-2", severity="permanent"))[0] == 200
    assert request(url, webhook(MAILGUN_KEY, "accepted", "mg-3"))[0] == 200  # not mapped
    assert request(f"{env.url}/webhooks/mailgun/nobody", webhook(MAILGUN_KEY, "opened", "x"))[
        0
    ] in (401, 404)
    found = env.records("mg")
    assert [(e["event_id"], e["type"], e["contact_id"]) for e in found["email"]] == [
        ("mg-1", "email.open", "c-77"),
        ("mg-2", "email.bounce", "c-77"),
    ]


def test_pixel_signed_publishes_one_tampered_none(env: Env) -> None:
    signed = sign_pixel_url(
        env.url,
        PIXEL_SECRET,
        tenant="px",
        contact_id="c-1",
        event_type="email.open",
        event_id="open-1",
        properties={"campaign": "spring"},
    )
    tampered = signed.replace("c=c-1", "c=c-2")
    wrong_tenant = signed.replace("t=px", "t=bad")
    for url in (signed, tampered, wrong_tenant, f"{env.url}/p.gif"):
        status, headers, body = request(url)
        assert status == 200
        assert body == GIF
        assert headers["Content-Type"] == "image/gif"
        assert "no-store" in headers["Cache-Control"]
    found = env.records("px")
    assert [(e["event_id"], e["contact_id"], e["type"]) for e in found["email"]] == [
        ("open-1", "c-1", "email.open")
    ]
    assert found["email"][0]["properties"] == {"source": "pixel", "campaign": "spring"}
    assert env.records("bad", idle_s=0.5) == {}
    metrics = request(f"{env.url}/metrics")[2].decode()
    assert 'engagement_collector_pixel_invalid_signatures_total{reason="bad_signature"} 2.0' in (
        metrics
    )


GOOD = {"userId": "u", "event": "Order Completed", "messageId": "m-1"}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "field"),
    [
        ("/v1/track", b"{not json", {}, 400, None),
        ("/v1/track", b"[1, 2]", {}, 400, None),
        ("/v1/track", json.dumps({"event": "x"}).encode(), {}, 400, "userId"),
        ("/v1/track", json.dumps({"userId": "u"}).encode(), {}, 400, "event"),
        ("/v1/track", json.dumps({**GOOD, "userId": ["u"]}).encode(), {}, 400, "userId"),
        ("/v1/track", json.dumps({**GOOD, "properties": "x"}).encode(), {}, 400, "properties"),
        (
            "/v1/track",
            json.dumps({**GOOD, "timestamp": "yesterday"}).encode(),
            {},
            400,
            "timestamp",
        ),
        ("/v1/alias", json.dumps({"userId": "u"}).encode(), {}, 400, "previousId"),
        ("/v1/group", json.dumps({"userId": "u"}).encode(), {}, 400, "groupId"),
        ("/v1/batch", json.dumps({"batch": []}).encode(), {}, 400, "batch"),
        (
            "/v1/track",
            json.dumps({**GOOD, "properties": {"x": "y" * 40_000}}).encode(),
            {},
            413,
            None,
        ),
        (
            "/v1/batch",
            json.dumps({"batch": [{**GOOD, "type": "track"}] * 8000}).encode(),
            {},
            413,
            None,
        ),
        (
            "/v1/batch",
            gzip.compress(b'{"batch": [' + b" " * 2_000_000 + b"]}"),
            {"Content-Encoding": "gzip"},
            413,
            None,
        ),
        ("/v1/track", json.dumps(GOOD).encode(), {"Content-Encoding": "compress"}, 415, None),
        ("/v1/track", json.dumps(GOOD).encode(), {"Content-Encoding": "br"}, 415, None),
        ("/v1/batch", json.dumps(GOOD).encode(), {"Content-Encoding": "zstd"}, 415, None),
        ("/v1/track", json.dumps(GOOD).encode(), {"Content-Encoding": "gzip, br"}, 415, None),
        ("/v1/batch", json.dumps({"batch": {"a": 1}}).encode(), {}, 400, "batch"),
        (
            "/v1/batch",
            json.dumps({"batch": [GOOD], "sentAt": "yesterday"}).encode(),
            {},
            400,
            "sentAt",
        ),
        ("/v1/track", json.dumps(GOOD).encode(), {"Authorization": basic("wk-nope")}, 401, None),
        ("/v1/track", json.dumps(GOOD).encode(), {"Authorization": "Bearer x"}, 401, None),
        (
            "/v1/track",
            json.dumps({**GOOD, "writeKey": "wk-nope"}).encode(),
            {"Authorization": ""},
            401,
            None,
        ),
    ],
)
def test_bad_input_gets_its_status_and_publishes_nothing(
    env: Env, path: str, body: bytes, headers: dict[str, str], status: int, field: str | None
) -> None:
    all_headers = {"Authorization": basic("wk-bad"), "Content-Type": "application/json"}
    all_headers.update(headers)
    if all_headers["Authorization"] == "":
        del all_headers["Authorization"]
    got, _, answer = request(env.url + path, body, all_headers)
    assert got == status, answer
    error = json.loads(answer)
    assert error["success"] is False
    assert error.get("field") == field
    assert error["code"]
    assert env.records("bad", idle_s=0.3) == {}


def test_good_gzip_call_is_accepted(env: Env) -> None:
    body = gzip.compress(json.dumps({**GOOD, "userId": "gz", "messageId": "gz-1"}).encode())
    headers = {"Authorization": basic("wk-seg"), "Content-Encoding": "gzip"}
    status, _, answer = request(env.url + "/v1/track", body, headers)
    assert status == 200, answer
    assert json.loads(answer) == {"success": True}
    found = env.records("seg")
    assert any(e["event_id"] == "gz-1" for e in found["commerce"])


def test_dead_broker_answers_5xx_and_publishes_nothing(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{_free_port()}"
    topology_file = _private_topology(tmp_path, "dead")
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"write_keys": {"wk": "t"}, "pixel_secrets": {"t": "s"}}))
    collector = CollectorProcess(dead, topology_file, keys, tmp_path / "collector.log")
    try:
        collector.wait("/healthz", 200)
        assert request(collector.url + "/readyz")[0] == 503
        started = time.monotonic()
        status, _, answer = request(
            collector.url + "/v1/track",
            json.dumps(GOOD).encode(),
            {"Authorization": basic("wk")},
        )
        assert status == 503, answer
        assert json.loads(answer)["code"] == "unavailable"
        url = sign_pixel_url(collector.url, "s", tenant="t", contact_id="c")
        status, _, body = request(url)
        assert (status, body) == (503, GIF)
        assert time.monotonic() - started < 10
        metrics = request(collector.url + "/metrics")[2].decode()
        assert "engagement_collector_events_published_total{" not in metrics
        assert 'engagement_collector_rejected_total{reason="kafka",source="segment"} 1.0' in (
            metrics
        )
    finally:
        collector.stop()


def test_write_key_is_required_and_metrics_name_no_contact(env: Env) -> None:
    email = "carol.private@example.net"
    call = {
        "userId": email,
        "event": "Order Completed",
        "messageId": "m-pii-1",
        "properties": {"email": email},
    }
    body = json.dumps(call).encode()
    # no Authorization header and no writeKey in the body: refused, nothing published
    status, _, answer = request(env.url + "/v1/track", body, {"Content-Type": "application/json"})
    assert status == 401, answer
    assert json.loads(answer)["success"] is False
    assert email not in answer.decode()
    assert "carol" not in repr(env.records("seg", idle_s=0.5))
    status, _, answer = request(
        env.url + "/v1/track",
        body,
        {"Content-Type": "application/json", "Authorization": basic("wk-seg")},
    )
    assert status == 200, answer
    assert [e["contact_id"] for e in env.records("seg")["commerce"] if "carol" in e["contact_id"]]
    metrics = request(f"{env.url}/metrics")[2].decode()
    assert "engagement_collector_events_published_total" in metrics
    assert "carol" not in metrics
    assert "example.net" not in metrics
    assert "wk-seg" not in metrics


def test_rudderstack_sdk_identify_traits_unicode_names_and_a_refused_item(env: Env) -> None:
    errors: list[Any] = []
    client = RudderClient(
        "wk-rs",
        host=env.url,
        gzip=True,
        on_error=lambda exc, batch: errors.append(exc),
        upload_interval=0.05,
        max_retries=1,
    )
    client.identify("user-1", {"plan": "pro", "name": "Ada"}, anonymous_id="anon-1")
    client.track("user-1", "Order Completed", {"revenue": 42})
    client.track("user-1", "登録完了")
    client.track("user-1", "Café Visité")
    client.track("user-1", "Cafe Visite")
    client.track("user-1", "!!!")  # no letter or digit in any script: refused, alone
    client.page("user-1", "Docs", "Pricing", {"url": "https://example.test/pricing"})
    client.flush()
    client.join()
    assert errors == []

    found = env.records("rs")
    (identify,) = found["identity"]
    # the RudderStack SDK sends identify traits only as context.traits
    assert identify["traits"] == {"plan": "pro", "name": "Ada"}
    assert identify["anonymous_id"] == "anon-1"
    assert [e["type"] for e in found["commerce"]] == ["commerce.purchase"]
    web = sorted((e["type"], e["properties"].get("event_name")) for e in found["web"])
    assert web == [
        ("custom.cafe_visite", "Cafe Visite"),
        ("custom.cafe_visite-31bbba0f67b9", "Café Visité"),
        ("custom.x-69cccc070343", "登録完了"),
        ("web.page_view", None),
    ]
    ((value, headers),) = env.dead_letters("rs")
    assert value["event"] == "!!!"
    assert headers["dlq.failure.type"] == "schema_violation"
    assert "letter or digit" in headers["dlq.error.message"]
    assert headers["dlq.source.collector"].startswith("/v1/batch#")
    metrics = request(f"{env.url}/metrics")[2].decode()
    assert 'engagement_collector_dead_letters_total{failure_type="schema_violation",' in metrics


def test_a_batch_is_judged_item_by_item(env: Env) -> None:
    now = "2026-11-01T10:00:00Z"
    items: list[Any] = [
        {"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "pb-1"},
        {"userId": "u1", "event": "Order Completed", "messageId": "pb-2"},  # no type
        {"type": "track", "event": "Order Completed", "messageId": "pb-3"},  # no id
        {"type": "track", "userId": "u1", "event": "X", "properties": {"x": "y" * 40_000}},
        5,
        {"type": "page", "userId": "u1", "messageId": "pb-6", "timestamp": "yesterday"},
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "pb-7",
            "context": {"traits": {"plan": "pro"}},
            "timestamp": now,
        },
    ]
    status, _, answer = request(
        env.url + "/v1/batch",
        json.dumps({"batch": items, "sentAt": now}).encode(),
        {"Authorization": basic("wk-pb"), "Content-Type": "application/json"},
    )
    assert status == 200, answer
    body = json.loads(answer)
    assert (body["success"], body["accepted"], body["refused"]) == (True, 2, 5)
    assert [(e["index"], e["field"], e["code"]) for e in body["errors"]] == [
        (1, "batch[1].type", "invalid_request"),
        (2, "batch[2].userId", "invalid_request"),
        (3, "batch[3]", "payload_too_large"),
        (4, "batch[4]", "invalid_request"),
        (5, "batch[5].timestamp", "invalid_request"),
    ]
    found = env.records("pb")
    assert [e["event_id"] for e in found["commerce"]] == ["pb-1"]
    assert [(r["event_id"], r["traits"]) for r in found["identity"]] == [("pb-7", {"plan": "pro"})]
    # by item index (the test topology's dead-letter topic has 2 partitions)
    letters = sorted(
        env.dead_letters("pb"), key=lambda letter: int(letter[1]["dlq.source.collector"][10:])
    )
    assert [h["dlq.source.collector"] for _, h in letters] == [
        f"/v1/batch#{i}" for i in (1, 2, 3, 4, 5)
    ]
    assert [h["dlq.failure.type"] for _, h in letters] == [
        "schema_violation",
        "schema_violation",
        "oversized",
        "schema_violation",
        "schema_violation",
    ]
    assert letters[0][0] == items[1]  # the item as received
    assert letters[3][0] == 5
    assert all(h["dlq.error.message"] for _, h in letters)
    metrics = request(f"{env.url}/metrics")[2].decode()
    assert 'engagement_collector_dead_letters_total{failure_type="oversized",source="segment"}' in (
        metrics
    )


def test_unsupported_encodings_are_415_json_and_log_nothing(env: Env) -> None:
    before = env.collector.log.read_text()
    for encoding in ("br", "zstd", "gzip, br", "compress", "x-snappy"):
        for path in ("/v1/batch", "/v1/track", "/webhooks/sendgrid/sg"):
            status, headers, answer = request(
                env.url + path,
                b"\x8b\x05\x80" + os.urandom(64),
                {"Authorization": basic("wk-enc"), "Content-Encoding": encoding},
            )
            assert status == 415, (encoding, path, answer)
            assert headers["Content-Type"].startswith("application/json")
            assert json.loads(answer)["code"] == "unsupported_encoding"
    logged = env.collector.log.read_text()[len(before) :]
    assert "Traceback" not in logged
    assert " ERROR " not in logged
    # gzip and deflate (zlib-wrapped and raw, as clients send it) are decoded
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    bodies = {
        "gzip": gzip.compress(json.dumps({**GOOD, "messageId": "enc-1"}).encode()),
        "deflate": zlib.compress(json.dumps({**GOOD, "messageId": "enc-2"}).encode()),
        "Deflate": raw.compress(json.dumps({**GOOD, "messageId": "enc-3"}).encode()) + raw.flush(),
    }
    for encoding, body in bodies.items():
        status, _, answer = request(
            env.url + "/v1/track",
            body,
            {"Authorization": basic("wk-enc"), "Content-Encoding": encoding},
        )
        assert status == 200, (encoding, answer)
    assert sorted(e["event_id"] for e in env.records("enc")["commerce"]) == [
        "enc-1",
        "enc-2",
        "enc-3",
    ]


GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
A_PERSON = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko)"


def test_pixel_head_publishes_nothing_and_machine_opens_are_their_own_type(env: Env) -> None:
    def url(event_id: str, sent_at: int | None = None) -> str:
        return sign_pixel_url(
            env.url, PIXEL_SECRET, tenant="mo", contact_id="c-1", event_id=event_id, sent_at=sent_at
        )

    status, headers, body = request(url("head-1"), method="HEAD")
    assert (status, body, headers["Content-Type"]) == (200, b"", "image/gif")
    now = int(time.time())
    fetches = [
        (url("apple-1"), "Mozilla/5.0"),
        (url("gmail-1"), GMAIL_PROXY),
        (url("scanner-1", sent_at=now), A_PERSON),  # fetched the second the message went out
        (url("person-1", sent_at=now - 3600), A_PERSON),
        (url("person-2"), A_PERSON),
    ]
    for fetch, agent in fetches:
        status, _, body = request(fetch, headers={"User-Agent": agent})
        assert (status, body) == (200, GIF)
    found = env.records("mo")
    opens = {
        e["event_id"]: (e["type"], e["properties"].get("machine_open")) for e in found["email"]
    }
    assert opens == {
        "apple-1": ("email.machine_open", "apple_mail_privacy_protection"),
        "gmail-1": ("email.machine_open", "google_image_proxy"),
        "scanner-1": ("email.machine_open", "soon_after_delivery"),
        "person-1": ("email.open", None),
        "person-2": ("email.open", None),
    }
    metrics = request(f"{env.url}/metrics")[2].decode()
    assert 'engagement_collector_machine_opens_total{signal="head",source="pixel"} 1.0' in metrics
