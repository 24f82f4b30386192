"""The event parser never crashes, and its fast path agrees with pydantic."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engagement_index.core.events import (
    CanonicalEvent,
    FailureType,
    _fast_fields,
    event_fields,
    parse_event,
    parse_event_fields,
)
from engagement_index.core.timestamps import (
    ms_to_rfc3339,
    parse_timestamp_ms,
    parse_timestamp_ms_reference,
)
from engagement_index.errors import EventRejected


@settings(max_examples=500, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_parse_event_only_raises_event_rejected(data: bytes | str) -> None:
    for parse in (parse_event, parse_event_fields):
        failure: str | None = None
        try:
            parse(data, max_bytes=200)
        except EventRejected as exc:
            failure = exc.failure
        assert failure is None or failure in set(FailureType) - {FailureType.INTERNAL_ERROR}


timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.integers(-62_135_596_800_000, 253_402_300_799_999).map(ms_to_rfc3339),
    st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,7})?"
        r"(Z|[+-][0-9]{2}:[0-9]{2})?\Z"
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.one_of(st.text(max_size=130), scalars),
    "tenant": st.one_of(st.from_regex(r"\A[A-Za-z0-9_. -]{0,66}\Z"), scalars),
    "contact_id": st.one_of(st.text(min_size=0, max_size=3), scalars),
    "type": st.one_of(st.sampled_from(["email.click", "a.b", "ab", "a.b.c", "A-1._"]), scalars),
    "timestamp": st.one_of(timestamps, scalars),
    "account_id": scalars,
    "properties": st.one_of(st.dictionaries(st.text(max_size=3), scalars, max_size=3), scalars),
    "extra": scalars,
}
event_dicts = st.fixed_dictionaries(
    {},
    optional=field_values,
)


@settings(max_examples=400, deadline=None)
@given(obj=event_dicts)
def test_fast_path_agrees_with_pydantic(obj: dict[str, Any]) -> None:
    fast = _fast_fields(obj)
    try:
        event = CanonicalEvent.model_validate(obj)
    except ValidationError:
        assert fast is None
        event = None
    if fast is not None:
        assert event is not None
        assert event_fields(event) == fast
    raw = json.dumps(obj).encode()
    parsed: CanonicalEvent | None = None
    failure: str | None = None
    try:
        parsed = parse_event(raw)
    except EventRejected as exc:
        failure = exc.failure
    if event is None:
        assert failure == FailureType.SCHEMA_VIOLATION
    else:
        assert parsed == event
        assert event_fields(event) == parse_event_fields(raw)


@settings(max_examples=400, deadline=None)
@given(text=timestamps)
def test_timestamp_fast_path_agrees_with_reference(text: str) -> None:
    try:
        expected: int | None = parse_timestamp_ms_reference(text)
    except ValueError:
        expected = None
    try:
        got: int | None = parse_timestamp_ms(text)
    except ValueError:
        got = None
    assert got == expected
