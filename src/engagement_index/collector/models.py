"""Pydantic models of every payload the collector accepts (and of the identity record).

They validate the shape and the JSON types; the semantic checks that need more than one field
(``userId`` or ``anonymousId``, a ``track`` needs ``event`` ...) are in the mappers, which name
the offending field the same way. The JSON Schemas in ``schemas/collector/`` are generated from
these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from engagement_index.core.events import TENANT_PATTERN, AwareTimestamp

SegmentCall = Literal["track", "page", "screen", "identify", "group", "alias"]


def _segment_id(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a string or an integer")
    return str(value)


#: an id as Segment accepts it: a string or an integer (kept as its decimal string)
SegmentId = Annotated[
    str,
    BeforeValidator(_segment_id),
    StringConstraints(min_length=1, max_length=256),
    WithJsonSchema({"type": ["string", "integer"], "minLength": 1, "maxLength": 256}),
]
IsoTimestamp = Annotated[
    str, Field(description="ISO 8601 / RFC 3339 date-time with an offset or 'Z'")
]


class SegmentMessage(BaseModel):
    """One Segment call (the body of ``/v1/<call>``, or an item of ``/v1/batch``)."""

    model_config = ConfigDict(extra="allow", strict=True, title="SegmentMessage")

    type: SegmentCall | None = Field(
        default=None, description="required in a batch; implied by the path otherwise"
    )
    messageId: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None,
        description="-> event_id; when absent a deterministic id is derived from the message",
    )
    userId: SegmentId | None = Field(default=None, description="-> contact_id")
    anonymousId: SegmentId | None = Field(
        default=None, description="-> contact_id when there is no userId"
    )
    event: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = Field(
        default=None, description="track: the event name (mapped through the event map)"
    )
    name: str | None = Field(default=None, description="page/screen: the page name")
    category: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = Field(
        default=None, description="context.groupId -> account_id"
    )
    integrations: dict[str, Any] | None = None
    groupId: SegmentId | None = Field(default=None, description="group: -> account_id")
    previousId: SegmentId | None = Field(default=None, description="alias: the previous id")
    timestamp: IsoTimestamp | None = Field(
        default=None, description="when it happened; used as is when given"
    )
    originalTimestamp: IsoTimestamp | None = Field(
        default=None, description="device time; corrected with sentAt when no timestamp"
    )
    sentAt: IsoTimestamp | None = None
    writeKey: str | None = None


class SegmentBatch(BaseModel):
    """The body of ``POST /v1/batch``."""

    model_config = ConfigDict(extra="allow", strict=True, title="SegmentBatch")

    batch: list[SegmentMessage] = Field(min_length=1)
    sentAt: IsoTimestamp | None = None
    context: dict[str, Any] | None = None
    writeKey: str | None = None


class SendGridEvent(BaseModel):
    """One event of a SendGrid Event Webhook POST (the body is a JSON array of these)."""

    model_config = ConfigDict(extra="allow", strict=True, title="SendGridEvent")

    event: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    timestamp: int = Field(description="Unix seconds")
    email: str | None = None
    sg_event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None, description="-> event_id (derived from the event when absent)"
    )
    sg_message_id: str | None = None


class MailgunSignature(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, title="MailgunSignature")

    timestamp: str
    token: str
    signature: str


class MailgunEventData(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, title="MailgunEventData")

    event: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)] = Field(
        description="-> event_id"
    )
    timestamp: float = Field(description="Unix seconds")
    recipient: str | None = None
    severity: str | None = None
    user_variables: dict[str, Any] | None = Field(default=None, alias="user-variables")
    tags: list[str] | None = None


class MailgunWebhook(BaseModel):
    """The body of a Mailgun HTTP webhook (JSON)."""

    model_config = ConfigDict(extra="allow", strict=True, title="MailgunWebhook")

    signature: MailgunSignature
    event_data: MailgunEventData = Field(alias="event-data")


class PixelQuery(BaseModel):
    """The query string of ``GET /p.gif`` (every parameter but ``sig`` is signed)."""

    model_config = ConfigDict(extra="forbid", strict=True, title="PixelQuery")

    t: Annotated[str, StringConstraints(pattern=TENANT_PATTERN)] = Field(description="tenant")
    c: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="contact id"
    )
    e: str = Field(default="email.open", description="canonical event type")
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None, description="event id (one event per id); a fresh id per request if absent"
    )
    a: str | None = Field(default=None, description="account id")
    x: str | None = Field(default=None, description="expiry, Unix seconds")
    s: str | None = Field(
        default=None, description="when the message was sent, Unix seconds (machine opens)"
    )
    sig: str = Field(description="base64url HMAC-SHA256 of the other parameters")


class IdentityRecord(BaseModel):
    """An identify/alias/group call, on the identities topic (keyed by the contact key).

    ``identify`` with both ids and ``alias`` link two ids of one person: the later
    identity-merge feature reads these. ``group`` links a contact to an account.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, title="IdentityRecord")

    kind: Literal["identify", "alias", "group"]
    event_id: str = Field(min_length=1, max_length=128)
    tenant: Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
    contact_id: str = Field(min_length=1, max_length=256, description="userId, else anonymousId")
    anonymous_id: str | None = Field(default=None, description="identify: the anonymous id")
    previous_id: str | None = Field(default=None, description="alias: the previous id")
    account_id: str | None = Field(default=None, description="group: the group id")
    timestamp: AwareTimestamp
    traits: dict[str, Any] | None = None

    @property
    def links(self) -> bool:
        """True when the record ties two ids of one person together."""
        return self.anonymous_id is not None or self.previous_id is not None


__all__ = [
    "IdentityRecord",
    "MailgunWebhook",
    "PixelQuery",
    "SegmentBatch",
    "SegmentMessage",
    "SendGridEvent",
]
