"""Time helpers: epoch milliseconds, RFC 3339 in and out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from engagement_index.core.timestamps import (
    MAX_MS,
    MIN_MS,
    ms_to_rfc3339,
    parse_rfc3339,
    parse_timestamp_ms,
    parse_timestamp_ms_reference,
    to_ms,
)


def test_to_ms_floors_sub_millisecond_precision() -> None:
    assert to_ms(datetime(2026, 11, 1, 10, 0, 0, 999, tzinfo=UTC)) == 1_793_527_200_000
    assert to_ms(datetime(2026, 11, 1, 10, 0, 0, 1999, tzinfo=UTC)) == 1_793_527_200_001
    # before the epoch, flooring goes towards the past
    assert to_ms(datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC)) == -1


def test_to_ms_rejects_naive() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_ms(datetime(2026, 1, 1))


def test_ms_to_rfc3339() -> None:
    assert ms_to_rfc3339(1_793_527_200_000) == "2026-11-01T10:00:00.000Z"
    assert ms_to_rfc3339(1_793_527_200_042) == "2026-11-01T10:00:00.042Z"
    assert ms_to_rfc3339(-1) == "1969-12-31T23:59:59.999Z"
    assert ms_to_rfc3339(MIN_MS) == "0001-01-01T00:00:00.000Z"
    assert ms_to_rfc3339(MAX_MS) == "9999-12-31T23:59:59.999Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01T10:00:00Z", 1_793_527_200_000),
        ("2026-11-01T10:00:00.5Z", 1_793_527_200_500),
        ("2026-11-01T10:00:00.123456789Z", 1_793_527_200_123),
        ("2026-11-01t10:00:00z", 1_793_527_200_000),
        ("2026-11-01 11:00:00+01:00", 1_793_527_200_000),
        ("2026-11-01T05:30:00.000-04:30", 1_793_527_200_000),
        ("2024-02-29T00:00:00Z", 1_709_164_800_000),
        ("0001-01-01T00:00:00Z", MIN_MS),
        ("9999-12-31T23:59:59.999999Z", MAX_MS),
    ],
)
def test_parse_valid(text: str, expected: int) -> None:
    assert parse_timestamp_ms(text) == expected
    assert parse_timestamp_ms_reference(text) == expected
    assert to_ms(parse_rfc3339(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-01T10:00:00",  # naive
        "2026-11-01",
        "2026-13-01T10:00:00Z",
        "2025-02-29T10:00:00Z",
        "2026-11-31T10:00:00Z",
        "2026-11-01T24:00:00Z",
        "2026-11-01T10:60:00Z",
        "2026-11-01T10:00:60Z",
        "2026-11-01T10:00:00+24:00",
        "2026-11-01T10:00:00-00:60",  # found by the property test: fromisoformat accepts it
        "2026-11-01T10:00:00.Z",
        "2026-11-01T10:00:00.1234567890Z",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+00:01",  # before year 1 in UTC
        "9999-12-31T23:59:59-00:01",  # after year 9999 in UTC
        "\uff12\uff10\uff12\uff16-11-01T10:00:00Z",  # non-ASCII (full-width) digits
        "2026-11-01T10:00:00Z\n",
        "",
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|range|naive"):
        parse_timestamp_ms(text)
    with pytest.raises(ValueError, match=r"RFC 3339|range|naive"):
        parse_rfc3339(text)


def test_parse_rfc3339_keeps_offset_and_microseconds() -> None:
    value = parse_rfc3339("2026-11-01T11:00:00.1234567+01:00")
    assert value.utcoffset() == timedelta(hours=1)
    assert value.microsecond == 123456
    assert value.tzinfo == timezone(timedelta(hours=1))
