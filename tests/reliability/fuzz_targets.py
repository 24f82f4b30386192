"""Fuzz targets and their input strategies, shared by hypothesis and atheris.

Each target takes one generated input, drives real project code and checks it: only the
project's own error types may come out (``EventRejected``, which the worker turns into a
dead letter; ``RequestRejected`` with a 4xx status and ``PixelInvalid``, which the collector
turns into a 4xx or a silently ignored pixel), never ``internal_error``, and whatever is
accepted is valid by the canonical event's rules. Any other exception, or a failed check,
propagates: hypothesis shrinks it, atheris reports it as a crash.

``COUNTS`` counts the inputs each target ran (the fuzz figures).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from pydantic_core import from_json

from engagement_index.collector.errors import RequestRejected
from engagement_index.collector.models import IdentityRecord, SegmentBatch, SegmentMessage
from engagement_index.collector.pixel import PixelInvalid, signature, verify_pixel
from engagement_index.collector.segment import (
    IDENTITY,
    Outgoing,
    channel_of,
    load_event_map,
    map_message,
)
from engagement_index.collector.webhooks import map_mailgun, map_sendgrid, parse_mailgun
from engagement_index.core.erasure import ErasureRequest
from engagement_index.core.events import (
    CanonicalEvent,
    ContactKey,
    FailureType,
    check_event_type,
    check_time_window,
    event_fields,
    parse_event,
    parse_event_fields,
)
from engagement_index.core.model import load_model
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.errors import EventRejected
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.scoring import BatchScorer, InboundRecord
from engagement_index.topology import load_topology

REPO = Path(__file__).resolve().parents[2]
MODEL = load_model(REPO / "config" / "models" / "default.yaml")
TOPOLOGY = load_topology(REPO / "streams" / "topology.yaml")
EVENT_MAP = load_event_map(REPO / "config" / "collector" / "segment-events.yaml")
SETTINGS = Settings()
MAX_BYTES = 2048  # small, so generated inputs cross it
NOW_MS = 1_795_176_000_000  # 2026-11-20T12:00:00Z, a fixed clock
RECEIVED = datetime.fromtimestamp(NOW_MS / 1000, tz=UTC)
TENANT = "acme"
PIXEL_SECRET = "pixel-secret"
MAX_EVENT_BYTES = 32 * 1024  # the collector's default per-event limit
COLLECTOR_CHANNELS = {*TOPOLOGY.inbound, IDENTITY}
DLQ_HEADERS = (
    "dlq.source.topic",
    "dlq.source.partition",
    "dlq.source.offset",
    "dlq.failure.type",
    "dlq.error.message",
    "dlq.worker.version",
    "dlq.failure.time",
)

PIXEL_REASONS = {
    "missing",
    "malformed",
    "unknown_tenant",
    "bad_signature",
    "expired",
    "invalid_event",
}

COUNTS: Counter[str] = Counter()


# ------------------------------------------------------------------------------- strategies
# characters including lone surrogates, controls and NUL (st.text() leaves surrogates out)
any_char = st.characters(codec=None, exclude_categories=())
nasty_text = st.one_of(
    st.text(max_size=12),
    st.text(any_char, max_size=12),
    st.sampled_from(["", " ", "\x00", "\x1f", "\ud800", "\udfff", "é", "😀", "a" * 300]),
    st.integers(0, 3).map(lambda n: "x" * (10_000 if n == 3 else 129 + n * 64)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    nasty_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(nasty_text, inner, max_size=3)
    ),
    max_leaves=6,
)
event_types = st.one_of(
    st.sampled_from(sorted(MODEL.compiled.rules)),
    st.sampled_from(["email.teleport", "custom.signed_up", "ab", "a.b.c", "email.", ".open"]),
    nasty_text,
)
timestamps = st.one_of(
    st.integers(NOW_MS - 500 * 86_400_000, NOW_MS + 600_000).map(ms_to_rfc3339),
    st.integers(-62_135_596_800_000, 253_402_300_799_999).map(ms_to_rfc3339),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,12})?"
        r"([Zz]|[+-][0-9]{2}:[0-9]{2})?\Z"
    ),
)
event_dicts = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.text(min_size=1, max_size=20), scalars),
        "tenant": st.one_of(st.sampled_from(["default", "acme", "a" * 64, "a" * 65]), scalars),
        "contact_id": st.one_of(st.text(min_size=1, max_size=20), scalars),
        "type": event_types,
        "timestamp": st.one_of(timestamps, scalars),
        "account_id": scalars,
        "properties": st.one_of(st.dictionaries(nasty_text, json_values, max_size=4), scalars),
        "extra": scalars,
    },
)
# mostly-valid events: every required field present, one or two fields replaced
valid_events = st.builds(
    lambda eid, cid, etype, ts, props: {
        "event_id": eid,
        "tenant": TENANT,
        "contact_id": cid,
        "type": etype,
        "timestamp": ts,
        "properties": props,
    },
    st.text(min_size=1, max_size=20),
    st.text(min_size=1, max_size=20),
    st.sampled_from(sorted(MODEL.compiled.rules)),
    st.integers(NOW_MS - 400 * 86_400_000, NOW_MS + 300_000).map(ms_to_rfc3339),
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
)
objects = st.one_of(
    valid_events,
    st.tuples(valid_events, event_dicts).map(lambda pair: {**pair[0], **pair[1]}),
    event_dicts,
    json_values,
)


@st.composite
def serialized(draw: st.DrawFn, values: st.SearchStrategy[Any] = objects) -> bytes:
    """A value as JSON bytes, written several ways, sometimes damaged."""
    value = draw(values)
    style = draw(st.sampled_from(["ascii", "utf8", "surrogatepass"]))
    try:
        text = json.dumps(value, ensure_ascii=style == "ascii", allow_nan=draw(st.booleans()))
    except ValueError:  # NaN/Infinity with allow_nan=False
        text = json.dumps(value, ensure_ascii=True)
    data = text.encode("utf-8", "surrogatepass" if style == "surrogatepass" else "replace")
    if draw(st.integers(0, 4)) == 0 and data:  # damage: replace, insert or cut
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "insert", "cut"]))
        byte = bytes([draw(st.integers(0, 255))])
        if action == "replace":
            data = data[:at] + byte + data[at + 1 :]
        elif action == "insert":
            data = data[:at] + byte + data[at:]
        else:
            data = data[:at]
    return data


def draw_pad(data: bytes) -> int:
    """Padding that takes some records just over the size limit."""
    return max(0, MAX_BYTES + 1 - len(data)) if len(data) % 3 == 0 else 0


raw_records = st.one_of(
    serialized(),
    st.binary(max_size=200),
    st.text(any_char, max_size=200),
    serialized().map(lambda b: b + b" " * draw_pad(b)),
)


# --------------------------------------------------------------------- target: event parser
def _decision(parse: Any, data: bytes | str) -> tuple[str, Any]:
    rejected: EventRejected | None = None
    try:
        result = parse(data, max_bytes=MAX_BYTES)
    except EventRejected as exc:
        rejected = exc
    if rejected is not None:
        assert rejected.failure in set(FailureType), rejected.failure
        assert rejected.failure != FailureType.INTERNAL_ERROR, rejected.__cause__
        assert rejected.message, "a rejection says why"
        return "rejected", rejected.failure
    fields = event_fields(result) if isinstance(result, CanonicalEvent) else result
    return "ok", tuple(fields)


def check_event_parser(data: bytes | str) -> None:
    """``parse_event`` and ``parse_event_fields`` decide alike and raise only EventRejected."""
    COUNTS["events"] += 1
    full = _decision(parse_event, data)
    fast = _decision(parse_event_fields, data)
    assert full == fast, (full, fast)
    if full[0] == "ok":  # an accepted event re-serialises to an accepted, equal event
        event = parse_event(data, max_bytes=None)
        again = parse_event(event.model_dump_json(exclude_none=True).encode())
        assert event_fields(again) == event_fields(event)


# --------------------------------------------------------------- target: worker record path
record_keys = st.one_of(
    st.none(),
    st.binary(max_size=12),
    st.just(ContactKey(TENANT, "c-1").encode()),
)
# a record value off the wire is bytes (the text ones as UTF-8, lone surrogates and all)
record_values = raw_records.map(
    lambda raw: raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
)
inbound_records = st.lists(
    st.tuples(
        st.integers(0, len(TOPOLOGY.scoring_sources) - 1),  # the source topic (ticks, erasures)
        record_keys,
        st.one_of(st.none(), record_values),
    ),
    min_size=1,
    max_size=6,
)


def _expected_failure(value: bytes | None) -> str | None:
    """The reference decision for one inbound record (the pydantic parser, then the checks)."""
    if value is None:
        return FailureType.SCHEMA_VIOLATION.value
    try:
        event = parse_event(value, max_bytes=MAX_BYTES)
        check_event_type(event, MODEL)
        check_time_window(
            event.timestamp_ms,
            NOW_MS,
            max_future_ms=int(SETTINGS.max_future_seconds * 1000),
            max_age_ms=int(SETTINGS.max_age_days * 86_400_000),
        )
    except EventRejected as exc:
        return str(exc.failure)
    return None


def _valid_erasure_request(value: bytes | None) -> bool:
    """The reference decision for a record on the erasure command topic."""
    try:
        ErasureRequest.model_validate_json(value or b"")
    except ValueError:
        return False
    return value is not None


def check_worker_batch(items: list[tuple[int, bytes | None, bytes | None]]) -> None:
    """The worker's batch path (no Kafka): every bad record is dead-lettered exactly as it
    came, with its headers; every good one is scored or re-keyed; nothing raises."""
    COUNTS["worker"] += 1
    metrics = Metrics(CollectorRegistry())
    settings = SETTINGS.model_copy(update={"max_record_bytes": MAX_BYTES})
    scorer = BatchScorer(
        model=MODEL, topology=TOPOLOGY, settings=settings, metrics=metrics, clock_ms=lambda: NOW_MS
    )
    sources = TOPOLOGY.scoring_sources
    records = [
        InboundRecord(sources[t], 0, offset, key, value, NOW_MS)
        for offset, (t, key, value) in enumerate(items)
    ]
    table: dict[bytes, bytes] = {}
    outcome = scorer.process(records, lambda k, i: table.get(k), lambda k, i: None)
    errors = sum(s.value for m in metrics.errors.collect() for s in m.samples if "total" in s.name)
    assert errors == 0, "a record raised inside the scorer"
    dlq = [s for s in outcome.sends if s.topic == TOPOLOGY.outbound.dead_letters.name]
    rekeyed = [s for s in outcome.sends if s.topic == TOPOLOGY.internal.rekey.name]
    expected_dlq = []
    expected_rekey = []
    unmodelled: set[bytes] = set()
    for record in records:
        if record.topic == TOPOLOGY.internal.ticks.name:
            continue
        if record.topic == TOPOLOGY.internal.erasure_requests.name:
            if not _valid_erasure_request(record.value):
                expected_dlq.append((record, FailureType.SCHEMA_VIOLATION.value))
            continue
        if record.topic in TOPOLOGY.identity_sources:
            value = record.value or b""
            if isinstance(value, str) or b"kind" in value or b"survivor" in value:
                unmodelled.add(str(record.offset).encode())  # could be a valid link: not judged
                continue
            oversized = record.value is not None and len(record.value) > MAX_BYTES
            kind = FailureType.OVERSIZED if oversized else FailureType.SCHEMA_VIOLATION
            expected_dlq.append((record, kind.value))
            continue
        failure = _expected_failure(record.value)
        if failure is not None:
            expected_dlq.append((record, failure))
            continue
        assert record.value is not None
        fields = parse_event_fields(record.value)
        key = ContactKey(fields.tenant, fields.contact_id).encode()
        if record.key != key:
            expected_rekey.append((key, record.value))
    dlq = [s for s in dlq if dict(s.headers)["dlq.source.offset"] not in unmodelled]
    assert len(dlq) == len(expected_dlq), (dlq, expected_dlq)
    for sent, (record, failure) in zip(dlq, expected_dlq, strict=True):
        assert sent.key == record.key
        assert sent.value == record.value
        headers = dict(sent.headers)
        assert tuple(name for name, _ in sent.headers) == DLQ_HEADERS
        assert headers["dlq.failure.type"] == failure.encode()
        assert headers["dlq.source.topic"] == record.topic.encode()
        assert headers["dlq.source.offset"] == str(record.offset).encode()
        assert headers["dlq.error.message"]
    assert [(s.key, s.value) for s in rekeyed] == expected_rekey


# ----------------------------------------------------------------- target: collector mappers
def _check_outgoing(out: Outgoing, tenant: str) -> None:
    """What the collector publishes is valid by the rules the worker applies."""
    assert out.channel in COLLECTOR_CHANNELS, out.channel
    if out.channel == IDENTITY:
        record = IdentityRecord.model_validate_json(out.value)
        assert out.key == ContactKey(record.tenant, record.contact_id).encode()
        return
    event = parse_event(out.value)  # raises EventRejected -> the worker would dead-letter it
    assert event.tenant == tenant
    assert out.key == event.key.encode()


def _body(value: Any) -> Any:
    """``value`` as a collector route sees it: sent as JSON bytes, parsed like
    ``Collector._json`` (invalid JSON, e.g. a lone surrogate, is a 400 there)."""
    data = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    try:
        return from_json(data, allow_inf_nan=False)
    except ValueError as exc:
        raise RequestRejected(400, "invalid_json", str(exc)) from None


def _rejected(exc: RequestRejected) -> None:
    assert 400 <= exc.status < 500, (exc.status, exc.message)
    assert exc.message


segment_ids = st.one_of(st.text(min_size=1, max_size=12), st.integers(), scalars)
segment_messages = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(
            st.sampled_from(["track", "page", "screen", "identify", "group", "alias"]), scalars
        ),
        "messageId": st.one_of(st.text(min_size=1, max_size=12), scalars),
        "userId": segment_ids,
        "anonymousId": segment_ids,
        "event": st.one_of(
            st.sampled_from(["Order Completed", "Signed Up", "!!!", "Email Opened"]), nasty_text
        ),
        "name": st.one_of(nasty_text, scalars),
        "category": scalars,
        "properties": st.one_of(st.dictionaries(nasty_text, json_values, max_size=3), scalars),
        "traits": st.one_of(st.dictionaries(nasty_text, json_values, max_size=3), scalars),
        "context": st.one_of(
            st.fixed_dictionaries({}, optional={"groupId": segment_ids, "ip": scalars}), scalars
        ),
        "groupId": segment_ids,
        "previousId": segment_ids,
        "timestamp": st.one_of(timestamps, scalars),
        "originalTimestamp": st.one_of(timestamps, scalars),
        "sentAt": st.one_of(timestamps, scalars),
        "extra": json_values,
    },
)
segment_payloads = st.one_of(
    st.tuples(
        st.sampled_from(["track", "page", "screen", "identify", "group", "alias"]),
        st.one_of(segment_messages, json_values),
    ),
    st.tuples(
        st.just("batch"),
        st.fixed_dictionaries(
            {"batch": st.one_of(st.lists(segment_messages, max_size=4), scalars)},
            optional={"sentAt": st.one_of(timestamps, scalars), "context": json_values},
        ),
    ),
)


def segment_request(call: str, payload: Any) -> list[Outgoing]:
    """The collector's Segment route after the body is parsed (``Collector._segment``'s order
    of calls: model validation -> 400, then the mapper)."""
    if not isinstance(payload, dict):
        raise RequestRejected(400, "invalid_request", "the body must be a JSON object")
    if call != "batch":
        try:
            message = SegmentMessage.model_validate(payload)
        except ValidationError as exc:
            raise RequestRejected(400, "invalid_request", str(exc)) from None
        message = message.model_copy(update={"type": call})
        return [
            map_message(message, payload, tenant=TENANT, event_map=EVENT_MAP, received=RECEIVED)
        ]
    try:
        batch = SegmentBatch.model_validate(payload)
    except ValidationError as exc:
        raise RequestRejected(400, "invalid_request", str(exc)) from None
    return [
        map_message(
            message,
            payload["batch"][i],
            tenant=TENANT,
            event_map=EVENT_MAP,
            received=RECEIVED,
            batch_sent_at=batch.sentAt,
            batch_context=batch.context,
            where=f"batch[{i}].",
        )
        for i, message in enumerate(batch.batch)
    ]


def check_segment(request: tuple[str, Any]) -> None:
    """Segment calls: a 4xx or records the worker accepts."""
    COUNTS["segment"] += 1
    call, payload = request
    try:
        records = segment_request(call, _body(payload))
    except RequestRejected as exc:
        _rejected(exc)
        return
    for out in records:
        _check_outgoing(out, TENANT)


sendgrid_events = st.fixed_dictionaries(
    {},
    optional={
        "event": st.one_of(
            st.sampled_from(["processed", "delivered", "open", "click", "bounce", "deferred"]),
            scalars,
        ),
        "timestamp": st.one_of(st.integers(0, 2**35), st.integers(), scalars),
        "email": st.one_of(st.emails(), scalars),
        "sg_event_id": st.one_of(st.text(min_size=1, max_size=12), scalars),
        "sg_message_id": scalars,
        "contact_id": segment_ids,
        "account_id": scalars,
        "url": scalars,
        "category": json_values,
    },
)
sendgrid_payloads = st.one_of(st.lists(sendgrid_events, max_size=4), json_values)


def check_sendgrid(payload: Any) -> None:
    """SendGrid webhook bodies: a 4xx or records the worker accepts."""
    COUNTS["sendgrid"] += 1
    try:
        records, ignored = map_sendgrid(_body(payload), tenant=TENANT, contact_field="contact_id")
    except RequestRejected as exc:
        _rejected(exc)
        return
    assert ignored >= 0
    for out in records:
        _check_outgoing(out, TENANT)


mailgun_payloads = st.one_of(
    st.fixed_dictionaries(
        {
            "signature": st.one_of(
                st.fixed_dictionaries(
                    {"timestamp": st.text(max_size=5), "token": st.text(max_size=5)},
                    optional={"signature": st.text(max_size=5)},
                ),
                json_values,
            ),
            "event-data": st.one_of(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "event": st.one_of(
                            st.sampled_from(
                                ["delivered", "opened", "clicked", "failed", "complained"]
                            ),
                            scalars,
                        ),
                        "id": st.one_of(st.text(min_size=1, max_size=12), scalars),
                        "timestamp": st.one_of(st.floats(), st.integers(), scalars),
                        "recipient": st.one_of(st.emails(), scalars),
                        "severity": st.one_of(st.just("permanent"), scalars),
                        "user-variables": st.one_of(
                            st.dictionaries(st.sampled_from(["contact_id", "account_id"]), scalars),
                            scalars,
                        ),
                        "tags": st.one_of(st.lists(nasty_text, max_size=3), scalars),
                        "message": json_values,
                        "url": scalars,
                    },
                ),
                json_values,
            ),
        }
    ),
    json_values,
)


def check_mailgun(payload: Any) -> None:
    """Mailgun webhook bodies: a 4xx or records the worker accepts."""
    COUNTS["mailgun"] += 1
    try:
        webhook = parse_mailgun(_body(payload))
        records = map_mailgun(webhook, tenant=TENANT, contact_field="contact_id")
    except RequestRejected as exc:
        _rejected(exc)
        return
    for out in records:
        _check_outgoing(out, TENANT)


pixel_params = st.tuples(
    st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from(["t", "c", "e", "id", "a", "x", "p.campaign", "p.", "zz"]),
                nasty_text,
            ),
            nasty_text,
        ),
        max_size=8,
    ),
    st.sampled_from(["sign", "sign", "bad", "none"]),
)


def check_pixel(request: tuple[list[tuple[str, str]], str]) -> None:
    """Pixel query strings: ``PixelInvalid`` (a GIF, nothing published) or an event the worker
    accepts. Mirrors ``Collector._pixel``: verification, then the event."""
    COUNTS["pixel"] += 1
    params, how = request
    params = [(k, v) for k, v in params if k != "sig"]
    if how == "sign" or (how == "bad" and params):
        try:
            sig = signature(PIXEL_SECRET, params)
        except UnicodeEncodeError:  # a lone surrogate cannot reach the server in a URL
            return
        params.append(("sig", sig if how == "sign" else sig[::-1] + "x"))
    try:
        hit = verify_pixel(params, {TENANT: PIXEL_SECRET, "globex": "other"}, NOW_MS / 1000)
        try:
            channel = channel_of(hit.event_type)
            event = CanonicalEvent(
                event_id=hit.event_id or "generated",
                tenant=hit.tenant,
                contact_id=hit.contact_id,
                type=hit.event_type,
                timestamp=RECEIVED,
                account_id=hit.account_id,
                properties={"source": "pixel", **hit.properties},
            )
        except (ValueError, ValidationError) as exc:
            raise PixelInvalid("invalid_event", str(exc)) from None
    except PixelInvalid as exc:
        if exc.reason not in PIXEL_REASONS:
            raise AssertionError(f"unexpected pixel reason {exc.reason!r}") from exc
        return
    assert how == "sign"
    assert hit.tenant == TENANT
    if channel == "custom":
        channel = EVENT_MAP.custom_channel
    value = event.model_dump_json(exclude_none=True).encode()
    _check_outgoing(
        Outgoing(channel, ContactKey(hit.tenant, hit.contact_id).encode(), value), TENANT
    )


# ----------------------------------------------------------------------- bytes -> inputs
def from_bytes_json(data: bytes) -> Any:
    """A raw fuzzer input as the collector sees a body: JSON, or None if it is not JSON."""
    try:
        return from_json(data, allow_inf_nan=False)
    except ValueError:
        return None


def seed_events(n: int = 8) -> list[bytes]:
    """Valid canonical events (seeds for the byte-level fuzzer)."""
    rng = random.Random(8)
    types = sorted(MODEL.compiled.rules)
    return [
        json.dumps(
            {
                "event_id": f"e-{i}",
                "tenant": TENANT,
                "contact_id": f"c-{i}",
                "type": rng.choice(types),
                "timestamp": ms_to_rfc3339(NOW_MS - rng.randint(0, 10**9)),
                "properties": {"n": i, "url": "https://example.test/"},
            }
        ).encode()
        for i in range(n)
    ]


#: name -> (input strategy, check); the order is the report's
TARGETS: dict[str, tuple[st.SearchStrategy[Any], Any]] = {
    "events": (raw_records, check_event_parser),
    "worker": (inbound_records, check_worker_batch),
    "segment": (segment_payloads, check_segment),
    "pixel": (pixel_params, check_pixel),
    "sendgrid": (sendgrid_payloads, check_sendgrid),
    "mailgun": (mailgun_payloads, check_mailgun),
}
