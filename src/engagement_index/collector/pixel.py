"""The signed tracking pixel: URL signing (for senders) and verification (for the collector).

A pixel URL is ``<base>/p.gif?<params>&sig=<signature>``. ``sig`` is the unpadded base64url
HMAC-SHA256, under the tenant's pixel secret, of the other parameters sorted by name and
percent-encoded as ``k=v`` pairs joined by ``&``. Parameters: ``t`` tenant, ``c`` contact id,
``e`` event type (default ``email.open``), optional ``id`` event id, ``a`` account id, ``x``
expiry (Unix seconds), ``s`` the time the message was sent (Unix seconds: an open within
seconds of it is machine-made), and ``p.<name>`` properties (strings). Anything changed, added or
removed invalidates the signature, so nobody can forge events for another tenant or contact.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from engagement_index.errors import EngagementIndexError

#: a transparent 1x1 GIF (43 bytes)
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
NO_CACHE_HEADERS = {
    "Content-Type": "image/gif",
    "Cache-Control": "no-cache, no-store, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
_KNOWN = frozenset({"t", "c", "e", "id", "a", "x", "s"})
_PROPERTY = re.compile(r"^p\.[A-Za-z0-9_.-]{1,64}$")
MAX_QUERY_PARAMS = 40


def canonical_string(params: Iterable[tuple[str, str]]) -> bytes:
    """What is signed: the parameters but ``sig``, sorted, percent-encoded, ``&``-joined."""
    pairs = sorted((k, v) for k, v in params if k != "sig")
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs).encode()


def signature(secret: str, params: Iterable[tuple[str, str]]) -> str:
    """The ``sig`` value for ``params`` under ``secret``."""
    mac = hmac.new(secret.encode(), canonical_string(params), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def sign_pixel_url(
    base_url: str,
    secret: str,
    *,
    tenant: str,
    contact_id: str,
    event_type: str = "email.open",
    event_id: str | None = None,
    account_id: str | None = None,
    expires: int | None = None,
    sent_at: int | None = None,
    properties: Mapping[str, str] | None = None,
) -> str:
    """A signed pixel URL (``base_url`` is the collector's address, without ``/p.gif``)."""
    params = [("t", tenant), ("c", contact_id), ("e", event_type)]
    if event_id is not None:
        params.append(("id", event_id))
    if account_id is not None:
        params.append(("a", account_id))
    if expires is not None:
        params.append(("x", str(int(expires))))
    if sent_at is not None:
        params.append(("s", str(int(sent_at))))
    for name, value in (properties or {}).items():
        if not _PROPERTY.match(f"p.{name}"):
            raise ValueError(f"property name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
        params.append((f"p.{name}", str(value)))
    params.append(("sig", signature(secret, params)))
    return f"{base_url.rstrip('/')}/p.gif?{urlencode(params)}"


@dataclass(frozen=True)
class PixelHit:
    """A verified pixel request."""

    tenant: str
    contact_id: str
    event_type: str
    event_id: str | None
    account_id: str | None
    properties: dict[str, str]
    sent_at: int | None = None


class PixelInvalid(EngagementIndexError):
    """The pixel request is not to be published; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def verify_pixel(
    params: list[tuple[str, str]], secrets: Mapping[str, str], now_s: float
) -> PixelHit:
    """Check a pixel query string; ``PixelInvalid`` (reason ``missing``/``malformed``/
    ``unknown_tenant``/``bad_signature``/``expired``) if it must not be published."""
    if len(params) > MAX_QUERY_PARAMS:
        raise PixelInvalid("malformed", "too many parameters")
    values: dict[str, str] = {}
    for key, value in params:
        if key in values:
            raise PixelInvalid("malformed", f"parameter {key!r} given twice")
        if key != "sig" and key not in _KNOWN and not _PROPERTY.match(key):
            raise PixelInvalid("malformed", f"unknown parameter {key!r}")
        values[key] = value
    if "sig" not in values or "t" not in values or "c" not in values:
        raise PixelInvalid("missing", "t, c and sig are required")
    secret = secrets.get(values["t"])
    if secret is None:
        raise PixelInvalid("unknown_tenant", "no pixel secret for this tenant")
    expected = signature(secret, params)
    if not hmac.compare_digest(expected.encode(), values["sig"].encode()):
        raise PixelInvalid("bad_signature", "signature does not match")
    if "x" in values:
        try:
            expiry = int(values["x"])
        except ValueError:
            raise PixelInvalid("malformed", "x is not an integer") from None
        if now_s > expiry:
            raise PixelInvalid("expired", "the URL has expired")
    sent_at = None
    if "s" in values:
        try:
            sent_at = int(values["s"])
        except ValueError:
            raise PixelInvalid("malformed", "s is not an integer") from None
    return PixelHit(
        tenant=values["t"],
        contact_id=values["c"],
        event_type=values.get("e", "email.open"),
        event_id=values.get("id"),
        account_id=values.get("a"),
        properties={k[2:]: v for k, v in values.items() if k.startswith("p.")},
        sent_at=sent_at,
    )
