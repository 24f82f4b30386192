"""The canonical event envelope, its fuzz-safe parser, and the contact key.

:func:`parse_event` never raises anything but :class:`EventRejected` (with one of the fixed
:class:`FailureType` values), whatever bytes it is given. It validates with a hand-written
fast path that accepts only inputs pydantic accepts with the same values; anything the fast
path is unsure about goes through pydantic, which also words the error messages.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from pydantic_core import from_json as _from_json

from engagement_index.core.model import EVENT_TYPE_PATTERN, ScoringModel
from engagement_index.core.timestamps import (
    check_aware,
    ms_to_rfc3339,
    parse_rfc3339,
    parse_timestamp_ms,
    to_ms,
)
from engagement_index.errors import EventRejected, StateDecodeError

TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
DEFAULT_TENANT = "default"
KEY_SEPARATOR = b"\x1f"


class FailureType(StrEnum):
    """Why an inbound record was rejected (replay rejects and the dead-letter topic)."""

    INVALID_ENCODING = "invalid_encoding"
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    UNKNOWN_TYPE = "unknown_type"
    OVERSIZED = "oversized"
    TIME_OUT_OF_RANGE = "time_out_of_range"
    INTERNAL_ERROR = "internal_error"
    IDENTITY_REFUSED = "identity_refused"


class ContactKey(NamedTuple):
    """A contact's identity; ``encode()`` is its Kafka record key.

    The key bytes are ``tenant`` (ASCII, from ``[A-Za-z0-9_.-]``), one ``0x1f`` byte, then the
    UTF-8 ``contact_id``. The tenant alphabet excludes ``0x1f``, so the first one splits.
    """

    tenant: str
    contact_id: str

    def encode(self) -> bytes:
        """Canonical key bytes: ``tenant 0x1f contact_id`` (UTF-8)."""
        return self.tenant.encode("ascii") + KEY_SEPARATOR + self.contact_id.encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> ContactKey:
        """Inverse of :meth:`encode`; ``StateDecodeError`` if malformed."""
        tenant, sep, contact = bytes(data).partition(KEY_SEPARATOR)
        try:
            tenant_s = tenant.decode("ascii")
            contact_s = contact.decode("utf-8")
        except UnicodeDecodeError:
            raise StateDecodeError("contact key is not valid ASCII/UTF-8") from None
        if not sep or not _TENANT_RE.fullmatch(tenant_s) or not 1 <= len(contact_s) <= 256:
            raise StateDecodeError("malformed contact key")
        return cls(tenant_s, contact_s)


def _timestamp(value: object) -> datetime:
    if isinstance(value, str):
        return parse_rfc3339(value)
    if isinstance(value, datetime):
        return check_aware(value)
    raise ValueError("must be an RFC 3339 date-time string with a UTC offset or 'Z'")


AwareTimestamp = Annotated[datetime, BeforeValidator(_timestamp)]


class CanonicalEvent(BaseModel):
    """One tracked interaction of a contact, in the canonical envelope."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    event_id: str = Field(min_length=1, max_length=128, description="idempotency key")
    tenant: Annotated[str, StringConstraints(pattern=TENANT_PATTERN)] = DEFAULT_TENANT
    contact_id: str = Field(min_length=1, max_length=256)
    type: Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)] = Field(
        description="channel.action, e.g. email.click"
    )
    timestamp: AwareTimestamp = Field(description="RFC 3339 with an offset or 'Z'")
    account_id: str | None = None
    properties: dict[str, Any] | None = None

    @property
    def timestamp_ms(self) -> int:
        """Epoch milliseconds (UTC) of ``timestamp``, floored."""
        return to_ms(self.timestamp)

    @property
    def key(self) -> ContactKey:
        """The contact this event belongs to."""
        return ContactKey(self.tenant, self.contact_id)


class EventFields(NamedTuple):
    """The fields the scoring core needs from a validated event."""

    event_id: str
    tenant: str
    contact_id: str
    type: str
    timestamp_ms: int


_TENANT_RE = re.compile(TENANT_PATTERN)
_TYPE_RE = re.compile(EVENT_TYPE_PATTERN)
_ALLOWED_KEYS = frozenset(CanonicalEvent.model_fields)
# strings already known to match the tenant / type patterns (bounded caches)
_CACHE_LIMIT = 4096
_GOOD_TENANTS: set[str] = {DEFAULT_TENANT}
_GOOD_TYPES: set[str] = set()


def load_json_object(data: bytes | str, max_bytes: int | None = None) -> dict[str, Any]:
    """Decode bytes/str into a JSON object, raising :class:`EventRejected` on any failure.

    JSON is parsed by pydantic-core's parser (strict RFC 8259: no NaN/Infinity, no lone
    surrogate escapes, control characters must be escaped, at most 200 levels of nesting).
    """
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EventRejected(
                FailureType.INVALID_ENCODING, f"unpaired surrogate at character {exc.start}"
            ) from None
    else:
        raw = data if type(data) is bytes else bytes(data)
    if max_bytes is not None and len(raw) > max_bytes:
        raise EventRejected(
            FailureType.OVERSIZED, f"record is {len(raw)} bytes, the limit is {max_bytes}"
        )
    try:
        obj = _from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as dexc:
            raise EventRejected(
                FailureType.INVALID_ENCODING, f"not valid UTF-8 at byte {dexc.start}"
            ) from None
        raise EventRejected(FailureType.INVALID_JSON, str(exc) or "invalid JSON") from None
    if type(obj) is not dict:
        kind = {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(
            type(obj), "a number"
        )
        raise EventRejected(
            FailureType.SCHEMA_VIOLATION, f"an event must be a JSON object, got {kind}"
        )
    return obj


def _fast_fields(obj: dict[str, Any]) -> EventFields | None:
    """The event's fields if the input is plainly valid, else None (use pydantic)."""
    event_id = obj.get("event_id")
    contact_id = obj.get("contact_id")
    event_type = obj.get("type")
    timestamp = obj.get("timestamp")
    tenant = obj.get("tenant", DEFAULT_TENANT)
    if (
        type(event_id) is not str
        or type(contact_id) is not str
        or type(event_type) is not str
        or type(timestamp) is not str
        or type(tenant) is not str
        or not 0 < len(event_id) <= 128
        or not 0 < len(contact_id) <= 256
        or not obj.keys() <= _ALLOWED_KEYS
    ):
        return None
    account_id = obj.get("account_id")
    if account_id is not None and type(account_id) is not str:
        return None
    properties = obj.get("properties")
    if properties is not None and type(properties) is not dict:
        return None
    if tenant not in _GOOD_TENANTS:
        if _TENANT_RE.fullmatch(tenant) is None:
            return None
        if len(_GOOD_TENANTS) < _CACHE_LIMIT:
            _GOOD_TENANTS.add(tenant)
    if event_type not in _GOOD_TYPES:
        if _TYPE_RE.fullmatch(event_type) is None:
            return None
        if len(_GOOD_TYPES) < _CACHE_LIMIT:
            _GOOD_TYPES.add(event_type)
    try:
        ms = parse_timestamp_ms(timestamp)
    except ValueError:
        return None
    return EventFields(event_id, tenant, contact_id, event_type, ms)


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        parts.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _validate(obj: dict[str, Any]) -> CanonicalEvent:
    try:
        return CanonicalEvent.model_validate(obj)
    except ValidationError as exc:
        raise EventRejected(FailureType.SCHEMA_VIOLATION, _format_validation(exc)) from None


def parse_event(data: bytes | str, *, max_bytes: int | None = None) -> CanonicalEvent:
    """Parse one record into a :class:`CanonicalEvent`; only ever raises ``EventRejected``."""
    try:
        obj = load_json_object(data, max_bytes)
        fields = _fast_fields(obj)
        if fields is None:
            return _validate(obj)
        values = dict(obj)
        values["timestamp"] = parse_rfc3339(obj["timestamp"])
        return CanonicalEvent.model_construct(**values)
    except EventRejected:
        raise
    except Exception as exc:  # never let a malformed record escape as anything else
        raise EventRejected(
            FailureType.INTERNAL_ERROR, f"unexpected {type(exc).__name__} while parsing"
        ) from exc


def parse_event_fields(data: bytes | str, *, max_bytes: int | None = None) -> EventFields:
    """Like :func:`parse_event` but returns only the scoring fields (faster; same decisions)."""
    try:
        obj = load_json_object(data, max_bytes)
        fields = _fast_fields(obj)
        if fields is None:
            event = _validate(obj)
            return event_fields(event)
        return fields
    except EventRejected:
        raise
    except Exception as exc:
        raise EventRejected(
            FailureType.INTERNAL_ERROR, f"unexpected {type(exc).__name__} while parsing"
        ) from exc


def event_fields(event: CanonicalEvent) -> EventFields:
    """The scoring fields of an event."""
    return EventFields(
        event.event_id, event.tenant, event.contact_id, event.type, event.timestamp_ms
    )


def check_event_type(event: CanonicalEvent | EventFields, model: ScoringModel) -> None:
    """Raise ``EventRejected(unknown_type)`` unless the model scores this event type."""
    if event.type not in model.compiled.rules:
        raise EventRejected(
            FailureType.UNKNOWN_TYPE,
            f"type: {event.type!r} is not scored by model {model.version!r}",
        )


def check_time_window(
    event_ms: int, now_ms: int, *, max_future_ms: int | None, max_age_ms: int | None
) -> None:
    """Raise ``EventRejected(time_out_of_range)`` if the event is too far ahead or too old."""
    if max_future_ms is not None and event_ms > now_ms + max_future_ms:
        raise EventRejected(
            FailureType.TIME_OUT_OF_RANGE,
            f"timestamp: {ms_to_rfc3339(event_ms)} is more than {max_future_ms} ms "
            f"ahead of {ms_to_rfc3339(now_ms)}",
        )
    if max_age_ms is not None and event_ms < now_ms - max_age_ms:
        raise EventRejected(
            FailureType.TIME_OUT_OF_RANGE,
            f"timestamp: {ms_to_rfc3339(event_ms)} is more than {max_age_ms} ms "
            f"older than {ms_to_rfc3339(now_ms)}",
        )
