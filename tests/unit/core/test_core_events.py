"""Parsing the canonical event: every failure maps to one fixed failure type."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from engagement_index.core.events import (
    CanonicalEvent,
    ContactKey,
    FailureType,
    check_event_type,
    check_time_window,
    parse_event,
    parse_event_fields,
)
from engagement_index.core.model import load_model
from engagement_index.errors import EventRejected, StateDecodeError

GOOD: dict[str, Any] = {
    "event_id": "5b1f",
    "tenant": "acme",
    "contact_id": "c-42",
    "type": "email.click",
    "timestamp": "2026-11-01T10:00:00Z",
    "account_id": "acct-7",
    "properties": {"campaign_id": "x"},
}


def _with(**changes: Any) -> bytes:
    data = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data).encode()


def _failure(data: bytes | str, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(EventRejected) as info:
        parse_event(data, **kwargs)
    with pytest.raises(EventRejected) as info2:
        parse_event_fields(data, **kwargs)
    assert (info.value.failure, info.value.message) == (info2.value.failure, info2.value.message)
    return info.value.failure, info.value.message


def test_parse_good_event() -> None:
    event = parse_event(json.dumps(GOOD).encode())
    assert event.event_id == "5b1f"
    assert event.key == ContactKey("acme", "c-42")
    assert event.timestamp == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert event.timestamp_ms == 1_793_527_200_000
    assert event.properties == {"campaign_id": "x"}
    assert event == CanonicalEvent.model_validate(GOOD)
    fields = parse_event_fields(json.dumps(GOOD))
    assert fields == ("5b1f", "acme", "c-42", "email.click", 1_793_527_200_000)


def test_defaults_and_optional_fields() -> None:
    event = parse_event(_with(tenant=..., account_id=..., properties=...))
    assert event.tenant == "default"
    assert event.account_id is None
    assert event.properties is None
    assert event == CanonicalEvent.model_validate(
        {k: v for k, v in GOOD.items() if k not in {"tenant", "account_id", "properties"}}
    )


def test_event_is_frozen() -> None:
    event = parse_event(json.dumps(GOOD))
    with pytest.raises(ValidationError):
        event.event_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "failure", "field"),
    [
        (b"\xff\xfe{}", FailureType.INVALID_ENCODING, "UTF-8"),
        (b'{"event_id": "\xc3"}', FailureType.INVALID_ENCODING, "UTF-8"),
        ('{"event_id": "\ud800"}', FailureType.INVALID_ENCODING, "surrogate"),
        (b"{", FailureType.INVALID_JSON, "EOF"),
        (b"", FailureType.INVALID_JSON, ""),
        (b'{"a": NaN}', FailureType.INVALID_JSON, ""),
        (b'{"event_id": "\\ud800"}', FailureType.INVALID_JSON, ""),
        (b"[1, 2]", FailureType.SCHEMA_VIOLATION, "JSON object"),
        (b"null", FailureType.SCHEMA_VIOLATION, "JSON object"),
        (_with(event_id=...), FailureType.SCHEMA_VIOLATION, "event_id"),
        (_with(event_id=""), FailureType.SCHEMA_VIOLATION, "event_id"),
        (_with(event_id="x" * 129), FailureType.SCHEMA_VIOLATION, "event_id"),
        (_with(event_id=7), FailureType.SCHEMA_VIOLATION, "event_id"),
        (_with(contact_id=None), FailureType.SCHEMA_VIOLATION, "contact_id"),
        (_with(contact_id="c" * 257), FailureType.SCHEMA_VIOLATION, "contact_id"),
        (_with(tenant="no spaces"), FailureType.SCHEMA_VIOLATION, "tenant"),
        (_with(tenant="t" * 65), FailureType.SCHEMA_VIOLATION, "tenant"),
        (_with(tenant=None), FailureType.SCHEMA_VIOLATION, "tenant"),
        (_with(type="click"), FailureType.SCHEMA_VIOLATION, "type"),
        (_with(type="email.click\n"), FailureType.SCHEMA_VIOLATION, "type"),
        (_with(timestamp="2026-11-01T10:00:00"), FailureType.SCHEMA_VIOLATION, "timestamp"),
        (_with(timestamp=1_793_527_200), FailureType.SCHEMA_VIOLATION, "timestamp"),
        (_with(timestamp="yesterday"), FailureType.SCHEMA_VIOLATION, "timestamp"),
        (_with(account_id=5), FailureType.SCHEMA_VIOLATION, "account_id"),
        (_with(properties=[1]), FailureType.SCHEMA_VIOLATION, "properties"),
        (_with(extra_field=1), FailureType.SCHEMA_VIOLATION, "extra_field"),
    ],
)
def test_rejections(data: bytes | str, failure: FailureType, field: str) -> None:
    got, message = _failure(data)
    assert got == failure
    assert field in message


def test_oversized() -> None:
    data = json.dumps(GOOD).encode()
    assert parse_event(data, max_bytes=len(data)).event_id == "5b1f"
    failure, message = _failure(data, max_bytes=len(data) - 1)
    assert failure == FailureType.OVERSIZED
    assert str(len(data)) in message


def test_deep_nesting_and_huge_numbers_do_not_crash() -> None:
    deep = b'{"properties": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _failure(deep)[0] == FailureType.INVALID_JSON
    huge = _with(properties={"n": 1}).replace(b'"n": 1', b'"n": ' + b"9" * 10_000)
    assert _failure(huge)[0] == FailureType.INVALID_JSON


def test_nul_and_unicode_in_strings_are_kept() -> None:
    event = parse_event(_with(contact_id="ç\u0000😀"))
    assert event.contact_id == "ç\u0000😀"


def test_check_event_type() -> None:
    model = load_model()
    event = parse_event(json.dumps(GOOD))
    check_event_type(event, model)
    with pytest.raises(EventRejected) as info:
        check_event_type(parse_event(_with(type="support.ticket")), model)
    assert info.value.failure == FailureType.UNKNOWN_TYPE
    assert "support.ticket" in info.value.message


def test_check_time_window() -> None:
    now = 1_793_527_200_000
    check_time_window(now + 1000, now, max_future_ms=1000, max_age_ms=10)
    check_time_window(now - 10, now, max_future_ms=1000, max_age_ms=10)
    check_time_window(now + 10**9, now, max_future_ms=None, max_age_ms=None)
    for event_ms in (now + 1001, now - 11):
        with pytest.raises(EventRejected) as info:
            check_time_window(event_ms, now, max_future_ms=1000, max_age_ms=10)
        assert info.value.failure == FailureType.TIME_OUT_OF_RANGE
        assert "timestamp" in info.value.message


def test_failure_type_values() -> None:
    assert [f.value for f in FailureType] == [
        "invalid_encoding",
        "invalid_json",
        "schema_violation",
        "unknown_type",
        "oversized",
        "time_out_of_range",
        "internal_error",
        "identity_refused",
    ]


def test_contact_key_round_trip() -> None:
    key = ContactKey("acme", "c\x1f-ü")
    assert key.encode() == b"acme\x1fc\x1f-\xc3\xbc"
    assert ContactKey.decode(key.encode()) == key
    for bad in (b"no-separator", b"bad tenant\x1fc", b"acme\x1f", b"acme\x1f\xff"):
        with pytest.raises(StateDecodeError):
            ContactKey.decode(bad)
