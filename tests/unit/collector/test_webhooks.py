"""SendGrid and Mailgun payloads, signatures and mappings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engagement_index.collector.errors import RequestRejected
from engagement_index.collector.webhooks import (
    load_ecdsa_public_key,
    map_mailgun,
    map_sendgrid,
    parse_mailgun,
    verify_mailgun,
    verify_sendgrid,
)
from engagement_index.core.events import parse_event

KEY = ec.generate_private_key(ec.SECP256R1())


def _public(fmt: str) -> str:
    public = KEY.public_key()
    if fmt == "pem":
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.mark.parametrize("fmt", ["der", "pem"])
def test_sendgrid_signature_verifies_and_forgeries_do_not(fmt: str) -> None:
    key = load_ecdsa_public_key(_public(fmt))
    body, ts = b'[{"event":"open"}]', "1700000000"
    sig = base64.b64encode(KEY.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    verify_sendgrid(key, body, sig, ts)
    for bad_body, bad_sig, bad_ts in [
        (body + b" ", sig, ts),
        (body, sig, "1700000001"),
        (body, "bm90IGEgc2ln", ts),
        (body, "%%%", ts),
        (body, None, ts),
        (body, sig, None),
    ]:
        with pytest.raises(RequestRejected) as caught:
            verify_sendgrid(key, bad_body, bad_sig, bad_ts)
        assert caught.value.status == 401


def test_bad_public_key_is_refused() -> None:
    with pytest.raises(ValueError, match="ECDSA"):
        load_ecdsa_public_key("bm90IGEga2V5")


def sg(event: str, **extra: Any) -> dict[str, Any]:
    return {"email": "A@Example.com", "timestamp": 1513299569, "event": event, **extra}


def test_sendgrid_mapping() -> None:
    payload = [
        sg("processed", sg_event_id="e1"),
        sg("deferred", sg_event_id="e2"),
        sg("click", sg_event_id="e3", url="https://x", contact_id="c-9", account_id="acct"),
        sg("group_unsubscribe", sg_event_id="e4", asm_group_id=10),
        sg("bounce"),
    ]
    records, ignored = map_sendgrid(payload, tenant="acme", contact_field="contact_id")
    assert ignored == 1
    events = [parse_event(r.value) for r in records]
    assert [e.type for e in events] == [
        "email.sent",
        "email.click",
        "email.unsubscribe",
        "email.bounce",
    ]
    assert events[0].contact_id == "a@example.com"
    assert (events[1].contact_id, events[1].account_id) == ("c-9", "acct")
    assert events[1].properties == {
        "provider": "sendgrid",
        "provider_event": "click",
        "url": "https://x",
    }
    assert events[3].event_id.startswith("sg-")
    assert all(r.channel == "email" for r in records)
    assert records[1].key == b"acme\x1fc-9"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"event": "open"}, None),
        ([sg("open", timestamp="yesterday")], "[0].timestamp"),
        ([{"timestamp": 1}], "[0].event"),
        ([sg("open"), 5], "[1]"),
        ([{"event": "open", "timestamp": 1}], "[0].email"),
    ],
)
def test_sendgrid_bad_payloads_name_the_field(payload: Any, field: str | None) -> None:
    with pytest.raises(RequestRejected) as caught:
        map_sendgrid(payload, tenant="acme", contact_field="contact_id")
    assert caught.value.status == 400
    assert caught.value.field == field


def mailgun(key: str, event: str, **data: Any) -> dict[str, Any]:
    ts, token = "1521472262", "abc"
    sig = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": ts, "token": token, "signature": sig},
        "event-data": {"event": event, "id": "mg-1", "timestamp": 1521472262.9, **data},
    }


def test_mailgun_signature_and_mapping() -> None:
    webhook = parse_mailgun(json.loads(json.dumps(mailgun("k", "clicked", recipient="B@x.org"))))
    verify_mailgun("k", webhook)
    with pytest.raises(RequestRejected):
        verify_mailgun("other", webhook)
    (record,) = map_mailgun(webhook, tenant="t", contact_field="contact_id")
    event = parse_event(record.value)
    assert (event.type, event.contact_id, event.event_id) == ("email.click", "b@x.org", "mg-1")
    temporary = parse_mailgun(mailgun("k", "failed", severity="temporary", recipient="b@x"))
    assert map_mailgun(temporary, tenant="t", contact_field="contact_id") == []
    permanent = parse_mailgun(mailgun("k", "failed", severity="permanent", recipient="b@x"))
    (bounce,) = map_mailgun(permanent, tenant="t", contact_field="contact_id")
    assert parse_event(bounce.value).type == "email.bounce"
    with pytest.raises(RequestRejected) as caught:
        parse_mailgun({"signature": {}, "event-data": {}})
    assert caught.value.field == "signature.timestamp"
