"""Segment spec calls -> canonical events (track/page/screen; group: `account.group`) or identity
records (identify, alias).

The mapping of ``track`` event names to canonical types is data: ``config/collector/
segment-events.yaml``, validated by :class:`EventMap`. Names are matched case-insensitively
with runs of white space collapsed; an unmapped name becomes ``custom.<slug>`` (see
:func:`slugify`: ``"Signed Up"`` -> ``custom.signed_up``, ``"Café Visité"`` ->
``custom.cafe_visite-<hash>``) and travels on the ``custom_channel`` inbound topic, where the
worker scores it if the tenant's model knows the type and dead-letters it (``unknown_type``) if
not.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_core import to_json

from engagement_index.collector.errors import invalid, message_of
from engagement_index.collector.models import IdentityRecord, SegmentMessage
from engagement_index.core.accounts import GROUP_TYPE
from engagement_index.core.events import CanonicalEvent, ContactKey
from engagement_index.core.model import EVENT_TYPE_PATTERN
from engagement_index.core.timestamps import parse_rfc3339
from engagement_index.errors import ConfigError
from engagement_index.topology import CHANNELS

Channel = Literal["web", "email", "social", "commerce", "product"]
EventType = Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)]
IDENTITY = "identity"
DEAD_LETTER = "dead_letter"
_SPACES = re.compile(r"\s+")
_PLAIN = re.compile(r"[a-z0-9]+(?: [a-z0-9]+)*")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
SLUG_MAX = 64
SLUG_HASH_CHARS = 12
#: letters NFKD does not decompose into an ASCII letter and a mark
_TRANSLITERATE = str.maketrans(
    {
        "æ": "ae",
        "ø": "o",
        "đ": "d",
        "ð": "d",
        "ħ": "h",
        "\u0131": "i",
        "ł": "l",
        "œ": "oe",
        "þ": "th",
    }
)


def normalize_name(name: str) -> str:
    """The lookup form of a track event name: NFKC, case-folded, white space collapsed."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return _SPACES.sub(" ", folded).strip()


def _has_letter_or_digit(text: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def slugify(name: str) -> str:
    """The action part of ``custom.<slug>`` for an unmapped track name ('' if it has no
    letter or digit in any script). Names that are the same after :func:`normalize_name` get
    the same slug, different names different slugs:

    - a *plain* name (ASCII letters and digits in words separated by spaces, any case) is its
      words joined by ``_``: ``"Signed Up"`` -> ``signed_up``;
    - any other name is transliterated (NFKD, marks dropped, ``æ`` -> ``ae`` ...; other
      characters separate words), cut to fit, and gets ``-`` plus the first 12 hex digits of
      the SHA-256 of its normalized form: ``"Café Visité"`` -> ``cafe_visite-<hash>``,
      ``"登録完了"`` -> ``x-<hash>`` (``x`` when nothing transliterates).

    A plain slug never contains ``-`` and every other slug does, so the two kinds never meet.
    """
    norm = normalize_name(name)
    if not _has_letter_or_digit(norm):
        return ""
    if _PLAIN.fullmatch(norm) and len(norm) <= SLUG_MAX:
        return norm.replace(" ", "_")
    decomposed = unicodedata.normalize("NFKD", norm.translate(_TRANSLITERATE))
    ascii_only = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    base = _NOT_ALNUM.sub("_", ascii_only).strip("_")
    base = base[: SLUG_MAX - SLUG_HASH_CHARS - 1].strip("_") or "x"
    digest = hashlib.sha256(norm.encode("utf-8")).hexdigest()[:SLUG_HASH_CHARS]
    return f"{base}-{digest}"


class _FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CallMapping(_FrozenModel):
    page: EventType = "web.page_view"
    screen: EventType = "web.page_view"


class EventMap(_FrozenModel):
    """``config/collector/segment-events.yaml``: which canonical type each call becomes."""

    version: Literal[1]
    custom_channel: Channel = Field(
        default="web", description="inbound topic channel of custom.* events"
    )
    calls: CallMapping = CallMapping()
    track: dict[Annotated[str, StringConstraints(min_length=1, max_length=200)], EventType] = Field(
        default_factory=dict, description="track event name -> canonical type"
    )
    _lookup: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("track")
    @classmethod
    def _names_distinct(cls, value: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for name, event_type in value.items():
            norm = normalize_name(name)
            if norm in seen:
                raise ValueError(f"{name!r} and {seen[norm]!r} are the same name")
            seen[norm] = name
            channel_of(event_type, strict=True)
        return value

    def model_post_init(self, __context: Any) -> None:
        self._lookup.update({normalize_name(k): v for k, v in self.track.items()})

    def track_type(self, name: str) -> str | None:
        """The canonical type of a track event name; ``custom.<slug>`` if unmapped."""
        mapped = self._lookup.get(normalize_name(name))
        if mapped is not None:
            return mapped
        slug = slugify(name)
        return f"custom.{slug}" if slug else None


def channel_of(event_type: str, *, strict: bool = False) -> str:
    """The inbound channel of a type (``custom`` for custom.*); ``ValueError`` if unknown."""
    channel = event_type.partition(".")[0]
    if channel in CHANNELS or (channel == "custom" and not strict):
        return channel
    raise ValueError(
        f"type {event_type!r}: the channel must be one of {', '.join(CHANNELS)}"
        + ("" if strict else " or custom")
    )


def load_event_map(path: Path) -> EventMap:
    """Read and validate the event-name mapping; ``ConfigError`` naming the field."""
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read event map {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return EventMap.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record to publish: the channel picks the topic (``identity`` -> identities,
    ``dead_letter`` -> the dead-letter topic)."""

    channel: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def derived_id(prefix: str, tenant: str, raw: object) -> str:
    """A deterministic event id for input without one (the same input -> the same id)."""
    digest = hashlib.sha256(tenant.encode() + b"\x1f" + to_json(raw)).hexdigest()
    return f"{prefix}-{digest[:40]}"


def _time(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise invalid(field, f"{exc} (got {value[:40]!r})") from None


def event_time(
    msg: SegmentMessage, batch_sent_at: str | None, received: datetime, where: str
) -> datetime:
    """``timestamp`` as given; else ``originalTimestamp`` corrected for the device's clock
    skew (``receivedAt - (sentAt - originalTimestamp)``, as the Segment spec does); else the
    receive time."""
    explicit = _time(msg.timestamp, f"{where}timestamp")
    original = _time(msg.originalTimestamp, f"{where}originalTimestamp")
    sent = _time(msg.sentAt, f"{where}sentAt") or _time(batch_sent_at, "sentAt")
    if explicit is not None:
        return explicit
    if original is not None:
        if sent is None:
            return original
        try:
            return received - (sent - original)
        except OverflowError:  # a skew that takes the time out of the representable range
            raise invalid(
                f"{where}originalTimestamp", "corrected for sentAt, it is out of range"
            ) from None
    return received


def _account(msg: SegmentMessage, batch_context: dict[str, Any] | None, where: str) -> str | None:
    for context, prefix in ((msg.context, where), (batch_context, "")):
        if context is None or "groupId" not in context:
            continue
        value = context["groupId"]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise invalid(f"{prefix}context.groupId", "must be a non-empty string or an integer")
        return str(value)
    return msg.groupId


def map_message(
    msg: SegmentMessage,
    raw: dict[str, Any],
    *,
    tenant: str,
    event_map: EventMap,
    received: datetime,
    batch_sent_at: str | None = None,
    batch_context: dict[str, Any] | None = None,
    where: str = "",
) -> Outgoing:
    """One validated Segment message -> the record to publish (or a 400 naming the field)."""
    call = msg.type
    if call is None:
        raise invalid(f"{where}type", "is required in a batch")
    contact = msg.userId or msg.anonymousId
    if contact is None:
        if call == "alias":
            raise invalid(f"{where}userId", "alias needs userId and previousId")
        raise invalid(f"{where}userId", "either userId or anonymousId is required")
    event_id = msg.messageId or derived_id("seg", tenant, raw)
    timestamp = event_time(msg, batch_sent_at, received, where)
    origin = (event_id, timestamp, where)
    try:
        if call == "group":
            return _group(msg, tenant, contact, origin, event_map.custom_channel)
        if call in ("identify", "alias"):
            return _identity(call, msg, tenant, contact, origin)
        if call == "track":
            if msg.event is None:
                raise invalid(f"{where}event", "track needs an event name")
            event_type = event_map.track_type(msg.event)
            if event_type is None:
                raise invalid(f"{where}event", "has no letter or digit to name a custom type")
            properties = dict(msg.properties or {})
            properties.setdefault("event_name", msg.event)
        else:
            event_type = event_map.calls.page if call == "page" else event_map.calls.screen
            properties = dict(msg.properties or {})
            for key in ("name", "category"):
                value = getattr(msg, key)
                if value is not None:
                    properties.setdefault(key, value)
        channel = channel_of(event_type)
        event = CanonicalEvent(
            event_id=event_id,
            tenant=tenant,
            contact_id=contact,
            type=event_type,
            timestamp=timestamp,
            account_id=_account(msg, batch_context, where),
            properties=properties or None,
        )
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise invalid(f"{where}{'.'.join(str(p) for p in err['loc'])}", message_of(err)) from None
    if channel == "custom":
        channel = event_map.custom_channel
    return Outgoing(channel, ContactKey(tenant, contact).encode(), encode_event(event))


def _group(
    msg: SegmentMessage,
    tenant: str,
    contact: str,
    origin: tuple[str, datetime, str],
    channel: str,
) -> Outgoing:
    """A group call: the canonical event ``account.group`` (the contact joins the account
    ``groupId``; its traits, e.g. ``licences``, are the event's properties), on the custom
    channel's topic (docs/collector.md#group-account-membership)."""
    event_id, timestamp, where = origin
    if msg.groupId is None:
        raise invalid(f"{where}groupId", "group needs a groupId")
    event = CanonicalEvent(
        event_id=event_id,
        tenant=tenant,
        contact_id=contact,
        type=GROUP_TYPE,
        timestamp=timestamp,
        account_id=msg.groupId,
        properties=msg.traits or None,
    )
    return Outgoing(channel, ContactKey(tenant, contact).encode(), encode_event(event))


def _identity(
    call: Literal["identify", "alias"],
    msg: SegmentMessage,
    tenant: str,
    contact: str,
    origin: tuple[str, datetime, str],
) -> Outgoing:
    """An identify or alias call as an identity record (``origin``: event id, time and the
    location for error messages, as for :func:`_group`)."""
    event_id, timestamp, where = origin
    if call == "alias":
        if msg.userId is None:
            raise invalid(f"{where}userId", "alias needs userId and previousId")
        if msg.previousId is None:
            raise invalid(f"{where}previousId", "alias needs userId and previousId")
    record = IdentityRecord(
        kind=call,
        event_id=event_id,
        tenant=tenant,
        contact_id=contact,
        anonymous_id=msg.anonymousId if call == "identify" and msg.userId else None,
        previous_id=msg.previousId if call == "alias" else None,
        timestamp=timestamp,
        traits=_traits(call, msg),
    )
    return Outgoing(IDENTITY, ContactKey(tenant, contact).encode(), encode_record(record))


def _traits(call: str, msg: SegmentMessage) -> dict[str, Any] | None:
    """``traits``; for ``identify`` also ``context.traits`` (the RudderStack SDKs send the
    traits only there; the spec allows both), the top-level value winning a conflict. A
    group's traits are the group's, so ``context.traits`` (the user's) are not read for it."""
    if call != "identify":
        return msg.traits
    context_traits = (msg.context or {}).get("traits")
    if not isinstance(context_traits, dict) or not context_traits:
        return msg.traits
    return {**context_traits, **(msg.traits or {})}


def encode_event(event: CanonicalEvent) -> bytes:
    """Compact JSON of a canonical event (no nulls)."""
    return event.model_dump_json(exclude_none=True).encode()


def encode_record(record: IdentityRecord) -> bytes:
    """Compact JSON of an identity record (no nulls)."""
    return record.model_dump_json(exclude_none=True).encode()
