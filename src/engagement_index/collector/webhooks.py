"""Email provider webhooks -> canonical email events: SendGrid Event Webhook and Mailgun.

SendGrid: ``processed``/``delivered`` -> ``email.sent``, ``open`` -> ``email.open`` (or
``email.machine_open``, see ``engagement_index.collector.machine``), ``click``
-> ``email.click``, ``bounce``/``dropped`` -> ``email.bounce``, ``unsubscribe``/
``group_unsubscribe``/``spamreport`` -> ``email.unsubscribe``; other events (``deferred``,
``group_resubscribe``, account events) are acknowledged and not published.

Mailgun: ``delivered`` -> ``email.sent``, ``opened`` -> ``email.open``, ``clicked`` ->
``email.click``, ``failed`` with ``severity: permanent`` -> ``email.bounce``, ``unsubscribed``/
``complained`` -> ``email.unsubscribe``; the rest is acknowledged and not published.

The contact is the custom argument / user variable named by the settings (``contact_id``),
else the recipient address, lower-cased. The address itself never goes into properties.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_der_public_key,
    load_pem_public_key,
)
from pydantic import ValidationError

from engagement_index.collector.errors import RequestRejected, invalid, message_of, unauthorized
from engagement_index.collector.machine import MACHINE_OPEN, OPEN, machine_open_signal
from engagement_index.collector.models import MailgunWebhook, SendGridEvent
from engagement_index.collector.segment import Outgoing, derived_id, encode_event
from engagement_index.core.events import CanonicalEvent, ContactKey

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

SENDGRID_TYPES = {
    "processed": "email.sent",
    "delivered": "email.sent",
    "open": "email.open",
    "click": "email.click",
    "bounce": "email.bounce",
    "dropped": "email.bounce",
    "unsubscribe": "email.unsubscribe",
    "group_unsubscribe": "email.unsubscribe",
    "spamreport": "email.unsubscribe",
}
_SENDGRID_PROPERTIES = (
    "sg_message_id",
    "category",
    "url",
    "reason",
    "status",
    "type",
    "bounce_classification",
    "asm_group_id",
    "marketing_campaign_id",
    "marketing_campaign_name",
    "sg_machine_open",
)

MAILGUN_TYPES = {
    "delivered": "email.sent",
    "opened": "email.open",
    "clicked": "email.click",
    "unsubscribed": "email.unsubscribe",
    "complained": "email.unsubscribe",
}


def load_ecdsa_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """A SendGrid verification key: PEM, or the base64 DER shown in SendGrid's settings."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode())
        else:
            key = load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"not an ECDSA public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an ECDSA public key")
    return key


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey, body: bytes, signature_b64: str | None, timestamp: str | None
) -> None:
    """SendGrid's Signed Event Webhook: ECDSA-SHA256 over ``timestamp + raw body``."""
    if not signature_b64 or not timestamp:
        raise unauthorized(
            f"missing {SENDGRID_SIGNATURE_HEADER} / {SENDGRID_TIMESTAMP_HEADER}", "bad_signature"
        )
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key.verify(signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        raise unauthorized("the SendGrid signature does not verify", "bad_signature") from None


def _contact(custom: Any, address: Any, field: str, where: str) -> str:
    if isinstance(custom, str | int) and not isinstance(custom, bool) and str(custom):
        return str(custom)
    if isinstance(address, str) and address.strip():
        return address.strip().lower()
    raise invalid(where, f"needs a recipient address or a {field!r} custom argument")


def _account(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def _error(exc: ValidationError, prefix: str) -> RequestRejected:
    err = exc.errors(include_url=False)[0]
    path = prefix
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return invalid(path.lstrip("."), message_of(err))


def _delivered_at(payload: list[Any]) -> dict[str, int]:
    """``sg_message_id`` -> the earliest ``delivered`` time in the same POST."""
    out: dict[str, int] = {}
    for item in payload:
        if not isinstance(item, dict) or item.get("event") != "delivered":
            continue
        message_id, ts = item.get("sg_message_id"), item.get("timestamp")
        if isinstance(message_id, str) and isinstance(ts, int) and not isinstance(ts, bool):
            out[message_id] = min(ts, out.get(message_id, ts))
    return out


def map_sendgrid(
    payload: Any,
    *,
    tenant: str,
    contact_field: str,
    machine_open_window_s: float = 10.0,
    machine_opens: list[str] | None = None,
) -> tuple[list[Outgoing], int]:
    """A SendGrid webhook body -> (records to publish, number of ignored events).

    An ``open`` that looks machine-made (``sg_machine_open``, a proxy user agent, or within
    ``machine_open_window_s`` of a ``delivered`` event of the same message in this POST) is
    an ``email.machine_open``; its signal is appended to ``machine_opens`` when given.
    """
    if not isinstance(payload, list):
        raise invalid(None, "the SendGrid Event Webhook body must be a JSON array")
    out: list[Outgoing] = []
    ignored = 0
    delivered = _delivered_at(payload)
    for i, item in enumerate(payload):
        where = f"[{i}]"
        if not isinstance(item, dict):
            raise invalid(where, "must be an object")
        try:
            event = SendGridEvent.model_validate(item)
        except ValidationError as exc:
            raise _error(exc, where) from None
        event_type = SENDGRID_TYPES.get(event.event)
        if event_type is None:
            ignored += 1
            continue
        extra = item
        contact = _contact(extra.get(contact_field), event.email, contact_field, f"{where}.email")
        properties: dict[str, Any] = {"provider": "sendgrid", "provider_event": event.event}
        for key in _SENDGRID_PROPERTIES:
            if extra.get(key) is not None:
                properties[key] = extra[key]
        if event_type == OPEN:
            signal = machine_open_signal(
                user_agent=extra.get("useragent"),
                opened_at=event.timestamp,
                delivered_at=delivered.get(event.sg_message_id or ""),
                window_s=machine_open_window_s,
                provider_flag=extra.get("sg_machine_open") is True,
            )
            if signal is not None:
                event_type = MACHINE_OPEN
                properties["machine_open"] = signal
                if machine_opens is not None:
                    machine_opens.append(signal)
        try:
            canonical = CanonicalEvent(
                event_id=event.sg_event_id or derived_id("sg", tenant, item),
                tenant=tenant,
                contact_id=contact,
                type=event_type,
                timestamp=_unix(event.timestamp, f"{where}.timestamp"),
                account_id=_account(extra.get("account_id")),
                properties=properties,
            )
        except ValidationError as exc:
            raise _error(exc, where) from None
        out.append(Outgoing("email", ContactKey(tenant, contact).encode(), encode_event(canonical)))
    return out, ignored


def verify_mailgun(signing_key: str, webhook: MailgunWebhook) -> None:
    """Mailgun: hex HMAC-SHA256 of ``timestamp + token`` under the webhook signing key."""
    sig = webhook.signature
    expected = hmac.new(
        signing_key.encode(), (sig.timestamp + sig.token).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected.encode(), sig.signature.encode()):
        raise unauthorized("the Mailgun signature does not verify", "bad_signature")


def parse_mailgun(payload: Any) -> MailgunWebhook:
    """Validate a Mailgun webhook body (400 naming the field)."""
    if not isinstance(payload, dict):
        raise invalid(None, "the Mailgun webhook body must be a JSON object")
    try:
        return MailgunWebhook.model_validate(payload)
    except ValidationError as exc:
        raise _error(exc, "") from None


def map_mailgun(
    webhook: MailgunWebhook,
    *,
    tenant: str,
    contact_field: str,
    machine_opens: list[str] | None = None,
) -> list[Outgoing]:
    """A verified Mailgun webhook -> zero or one record (an ``opened`` event whose
    ``client-info.user-agent`` is a known image proxy is an ``email.machine_open``)."""
    data = webhook.event_data
    event_type = MAILGUN_TYPES.get(data.event)
    if data.event == "failed" and data.severity == "permanent":
        event_type = "email.bounce"
    if event_type is None:
        return []
    signal = None
    if event_type == OPEN:
        client_info = (data.model_extra or {}).get("client-info")
        if isinstance(client_info, dict):
            signal = machine_open_signal(user_agent=client_info.get("user-agent"))
        if signal is not None:
            event_type = MACHINE_OPEN
            if machine_opens is not None:
                machine_opens.append(signal)
    variables = data.user_variables or {}
    contact = _contact(
        variables.get(contact_field), data.recipient, contact_field, "event-data.recipient"
    )
    properties: dict[str, Any] = {"provider": "mailgun", "provider_event": data.event}
    extra = data.model_extra or {}
    message = extra.get("message")
    if isinstance(message, dict) and isinstance(message.get("headers"), dict):
        message_id = message["headers"].get("message-id")
        if isinstance(message_id, str):
            properties["message_id"] = message_id
    if isinstance(extra.get("url"), str):
        properties["url"] = extra["url"]
    if data.tags:
        properties["tags"] = data.tags
    if data.severity:
        properties["severity"] = data.severity
    if signal is not None:
        properties["machine_open"] = signal
    try:
        canonical = CanonicalEvent(
            event_id=data.id,
            tenant=tenant,
            contact_id=contact,
            type=event_type,
            timestamp=_unix(data.timestamp, "event-data.timestamp"),
            account_id=_account(variables.get("account_id")),
            properties=properties,
        )
    except ValidationError as exc:
        raise _error(exc, "event-data") from None
    return [Outgoing("email", ContactKey(tenant, contact).encode(), encode_event(canonical))]


def _unix(seconds: float, field: str) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise invalid(field, "is not a Unix time in range") from None
