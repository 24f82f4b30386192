"""Time inside the core: an ``int`` of epoch milliseconds, UTC.

Timestamps with a finer precision than a millisecond are floored to the millisecond
(towards the past), both by :func:`to_ms` and by the RFC 3339 parsers, so the two always agree.
The representable range is the one of :class:`datetime.datetime` in UTC:
``0001-01-01T00:00:00.000Z`` to ``9999-12-31T23:59:59.999Z``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

MS_PER_DAY = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Smallest and largest epoch milliseconds the core accepts (the datetime range, in UTC).
MIN_MS = -62_135_596_800_000
MAX_MS = 253_402_300_799_999

# RFC 3339 date-time (section 5.6), with "T", "t" or a space between date and time, 1 to 9
# fraction digits and a mandatory offset. ASCII digits only.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_RANGE_MESSAGE = "instant out of range (0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z)"
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _is_leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def _fields(text: str) -> tuple[int, int, int, int, int, int, str, int]:
    """Validated fields of an RFC 3339 string: y, m, d, H, M, S, fraction digits, offset min."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError("not an RFC 3339 date-time with a UTC offset or 'Z'")
    y, mo, d, hh, mi, ss = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    if not 1 <= mo <= 12:
        raise ValueError("month out of range")
    dim = 29 if mo == 2 and _is_leap(y) else _DAYS_IN_MONTH[mo]
    if not 1 <= d <= dim or y == 0:
        raise ValueError("day out of range")
    if hh > 23 or mi > 59 or ss > 59:
        raise ValueError("time of day out of range")
    offset = 0
    if match.group(8) is None:
        oh, om = int(match.group(10)), int(match.group(11))
        if oh > 23 or om > 59:
            raise ValueError("UTC offset out of range")
        offset = oh * 60 + om
        if match.group(9) == "-":
            offset = -offset
    return y, mo, d, hh, mi, ss, match.group(7) or "", offset


# The common shapes, which ``datetime.fromisoformat`` (C code) parses exactly like _fields.
# Field ranges are in the pattern too: fromisoformat alone would accept an offset like "-00:60".
_COMMON = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{3}|\.[0-9]{6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_fromisoformat = datetime.fromisoformat


def parse_timestamp_ms(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 string (floored); ``ValueError`` if invalid."""
    if _COMMON.fullmatch(text) is not None:
        try:
            delta = _fromisoformat(text) - EPOCH
        except ValueError:
            pass  # the reference parser words the error
        else:
            ms = delta.days * MS_PER_DAY + delta.seconds * 1000 + delta.microseconds // 1000
            if MIN_MS <= ms <= MAX_MS:
                return ms
    return parse_timestamp_ms_reference(text)


def parse_timestamp_ms_reference(text: str) -> int:
    """The reference (slower, all-shapes) form of :func:`parse_timestamp_ms`."""
    y, mo, d, hh, mi, ss, frac, offset = _fields(text)
    ms = (
        _days_from_civil(y, mo, d) * MS_PER_DAY
        + ((hh * 60 + mi - offset) * 60 + ss) * 1000
        + (int(frac[:3].ljust(3, "0")) if frac else 0)
    )
    if not MIN_MS <= ms <= MAX_MS:
        raise ValueError(_RANGE_MESSAGE)
    return ms


def parse_rfc3339(text: str) -> datetime:
    """An aware datetime from an RFC 3339 string (microsecond precision, floored)."""
    ms = parse_timestamp_ms(text)  # validates, including the UTC range
    y, mo, d, hh, mi, ss, frac, offset = _fields(text)
    tz = UTC if offset == 0 else timezone(timedelta(minutes=offset))
    micro = int(frac[:6].ljust(6, "0")) if frac else 0
    result = datetime(y, mo, d, hh, mi, ss, micro, tzinfo=tz)
    assert to_ms(result) == ms
    return result


def check_aware(value: datetime) -> datetime:
    """Return ``value`` if it is timezone-aware and within range, else raise ``ValueError``."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime: a UTC offset or 'Z' is required")
    to_ms(value)
    return value


def to_ms(value: datetime) -> int:
    """Epoch milliseconds (UTC) of an aware datetime, floored to the millisecond."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime: a UTC offset or 'Z' is required")
    delta = value - EPOCH
    ms = delta.days * MS_PER_DAY + delta.seconds * 1000 + delta.microseconds // 1000
    if not MIN_MS <= ms <= MAX_MS:
        raise ValueError(_RANGE_MESSAGE)
    return ms


_DATE_CACHE: dict[int, str] = {}
_LAST_TEXT: list[Any] = [None, ""]  # the last conversion: [ms, text]


def ms_to_rfc3339(ms: int) -> str:
    """RFC 3339 in UTC with exactly three fraction digits, e.g. ``2026-11-01T10:00:00.000Z``."""
    last = _LAST_TEXT
    if last[0] == ms:
        return str(last[1])
    text = _ms_to_rfc3339(ms)
    last[0] = ms
    last[1] = text
    return text


def _ms_to_rfc3339(ms: int) -> str:
    day, rest = divmod(ms, MS_PER_DAY)
    date = _DATE_CACHE.get(day)
    if date is None:
        d = EPOCH + timedelta(days=day)
        date = f"{d.year:04d}-{d.month:02d}-{d.day:02d}"
        if len(_DATE_CACHE) >= 100_000:
            _DATE_CACHE.clear()
        _DATE_CACHE[day] = date
    seconds, millis = divmod(rest, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{date}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"
