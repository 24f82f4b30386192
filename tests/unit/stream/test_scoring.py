"""BatchScorer: the delivery rules of the worker, without a broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from engagement_index.core.dedupe import EMPTY as EMPTY_SEEN
from engagement_index.core.dedupe import admit
from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import stage_names
from engagement_index.core.model import load_model
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.state import decode_state
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.due_index import DueIndex
from engagement_index.stream.scoring import (
    BatchOutcome,
    BatchScorer,
    InboundRecord,
    decode_tick,
    encode_tick,
)
from engagement_index.stream.stored import StoredContact, StoredStateError, source_id
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]
NOW = 1_795_000_000_000  # a fixed "wall clock"
KEY = ContactKey("acme", "c-1").encode()


def event(n: int, ts: int, etype: str = "web.form_submit", contact: str = "c-1") -> bytes:
    return json.dumps(
        {
            "event_id": f"e{n}",
            "tenant": "acme",
            "contact_id": contact,
            "type": etype,
            "timestamp": f"2026-11-18T{ts // 3600:02d}:{ts // 60 % 60:02d}:{ts % 60:02d}Z",
        }
    ).encode()


class Tables:
    """In-memory stand-ins for the two Faust tables (plain dicts)."""

    def __init__(self) -> None:
        self.contacts: dict[bytes, bytes] = {}
        self.history: dict[bytes, bytes] = {}

    def load_contact(self, key: bytes, index: int) -> bytes | None:
        return self.contacts.get(key)

    def load_history(self, key: bytes, index: int) -> bytes | None:
        return self.history.get(key)


@pytest.fixture
def scorer() -> BatchScorer:
    return BatchScorer(
        model=load_model(ROOT / "config" / "models" / "default.yaml"),
        topology=load_topology(ROOT / "streams" / "topology.yaml"),
        settings=Settings(),
        metrics=Metrics(CollectorRegistry()),
        clock_ms=lambda: NOW,
    )


def run(scorer: BatchScorer, tables: Tables, records: list[InboundRecord]) -> object:
    out = scorer.process(records, tables.load_contact, tables.load_history)
    for key, (_, value) in out.contact_writes.items():
        if value is None:
            tables.contacts.pop(key, None)
        else:
            tables.contacts[key] = value
    for key, (_, value) in out.history_writes.items():
        if value is None:
            tables.history.pop(key, None)
        else:
            tables.history[key] = value
    return out


PARTITIONS = load_topology(ROOT / "streams" / "topology.yaml").scoring_partitions
WEB = source_id("events.web")


def rec(
    offset: int,
    value: bytes | None,
    key: bytes | None = KEY,
    topic: str = "events.web",
    partition: int | None = None,
) -> InboundRecord:
    """A record on ``partition``; by default the canonical partition of its key."""
    if partition is None:
        partition = canonical_partition(key, PARTITIONS) if key else 0
    return InboundRecord(topic, partition, offset, key, value, NOW)


def test_a_record_on_another_partition_than_its_contacts_is_forwarded_there(
    scorer: BatchScorer,
) -> None:
    tables = Tables()
    home = canonical_partition(KEY, PARTITIONS)
    wrong = (home + 1) % PARTITIONS
    arrived = rec(0, event(0, 36_000), partition=wrong)._replace(timestamp_ms=NOW - 5_000)
    out = run(scorer, tables, [arrived])
    assert isinstance(out, BatchOutcome)
    assert not out.contact_writes, "no state on the partition it arrived on"
    [forward] = out.sends
    assert forward.topic == "engagement-index.rekeyed"
    assert (forward.key, forward.value, forward.partition) == (KEY, arrived.value, home)
    assert forward.timestamp_ms == NOW - 5_000, "the record keeps its timestamp"
    text = scorer.metrics.render().decode()
    assert 'engagement_partition_forwards_total{channel="web"} 1.0' in text
    assert 'outcome="forwarded"' in text
    # scored where it belongs
    out = run(scorer, tables, [rec(0, arrived.value, topic="engagement-index.rekeyed")])
    assert list(tables.contacts) == [KEY]


def test_scores_and_emits_first_seen_then_threshold(scorer: BatchScorer) -> None:
    tables = Tables()
    out = scorer.process(
        [rec(i, event(i, 36_000 + i)) for i in range(12)],
        tables.load_contact,
        tables.load_history,
    )
    stage_changes = [s for s in out.sends if s.topic == "engagement.stage-changes"]
    reasons = [json.loads(s.value or b"")["reason"] for s in stage_changes]
    assert reasons[0] == "first_seen"
    assert all(s.key == KEY for s in stage_changes)
    assert list(out.contact_writes) == [KEY], "one coalesced write per contact per batch"
    assert out.contact_writes[KEY][0] == 11, "written in the context of its last record"
    written = out.contact_writes[KEY][1]
    assert written is not None
    stored = StoredContact.decode(written)
    assert stored.offsets == {WEB: 11}


def test_redelivered_records_are_skipped_by_offset(scorer: BatchScorer) -> None:
    tables = Tables()
    run(scorer, tables, [rec(i, event(i, 36_000 + i)) for i in range(5)])
    before = dict(tables.contacts)
    out = scorer.process(
        [rec(i, event(i, 36_000 + i)) for i in range(5)],
        tables.load_contact,
        tables.load_history,
    )
    assert out.sends == []
    # the unchanged value (and history) is written again: the changelog may have missed it
    assert out.contact_writes == {KEY: (4, before[KEY])}
    assert set(out.history_writes) == {KEY}
    run(scorer, tables, [rec(i, event(i, 36_000 + i)) for i in range(5)])
    assert tables.contacts == before
    assert json.loads(tables.history[KEY])[0]["reason"] == "first_seen"
    consumed = scorer.metrics.registry.get_sample_value(
        "engagement_events_consumed_total", {"channel": "web", "outcome": "duplicate"}
    )
    assert consumed == 10


def test_upstream_duplicate_ids_do_not_count_twice(scorer: BatchScorer) -> None:
    tables = Tables()
    run(scorer, tables, [rec(0, event(1, 36_000)), rec(1, event(1, 36_000))])
    stored = StoredContact.decode(tables.contacts[KEY])
    assert stored.offsets == {WEB: 1}, "the duplicate's offset is still recorded"
    counted = scorer.metrics.registry.get_sample_value(
        "engagement_events_consumed_total", {"channel": "web", "outcome": "scored"}
    )
    assert counted == 1


def test_non_canonical_keys_are_forwarded_to_the_rekey_topic(scorer: BatchScorer) -> None:
    tables = Tables()
    value = event(1, 36_000)
    out = scorer.process([rec(0, value, key=b"legacy")], tables.load_contact, tables.load_history)
    assert [(s.topic, s.key, s.value) for s in out.sends] == [
        ("engagement-index.rekeyed", KEY, value)
    ]
    assert out.contact_writes == {}


@pytest.mark.parametrize(
    ("value", "failure"),
    [
        (b"{oops", "invalid_json"),
        (b"\xff\xfe", "invalid_encoding"),
        (None, "schema_violation"),
        (event(1, 36_000, etype="fax.sent"), "unknown_type"),
        (b'{"event_id": "x"' + b" " * 70_000 + b"}", "oversized"),
        (
            json.dumps(
                {
                    "event_id": "f",
                    "contact_id": "c",
                    "type": "web.page_view",
                    "timestamp": "2030-01-01T00:00:00Z",
                }
            ).encode(),
            "time_out_of_range",
        ),
    ],
)
def test_bad_records_become_dead_letters_with_headers(
    scorer: BatchScorer, value: bytes | None, failure: str
) -> None:
    tables = Tables()
    out = scorer.process([rec(7, value, key=b"orig")], tables.load_contact, tables.load_history)
    assert len(out.sends) == 1
    dead = out.sends[0]
    headers = dict(dead.headers)
    assert (dead.topic, dead.key, dead.value) == ("engagement.dlq", b"orig", value)
    assert headers["dlq.failure.type"] == failure.encode()
    assert headers["dlq.source.offset"] == b"7"
    assert headers["dlq.source.topic"] == b"events.web"
    assert headers["dlq.error.message"]
    assert (
        scorer.metrics.registry.get_sample_value(
            "engagement_dead_letters_total", {"failure_type": failure}
        )
        == 1
    )


def test_a_tick_emits_the_decay_transition_at_its_due_time(scorer: BatchScorer) -> None:
    tables = Tables()
    hot = ("web.form_submit", "email.click", "social.share")
    out = run(scorer, tables, [rec(i, event(i, 36_000 + i, hot[i % 3])) for i in range(30)])
    due = out.due_updates[KEY][1]  # type: ignore[attr-defined]
    assert due is not None, "a sales-ready contact has a pending decay"
    early = scorer.process(
        [InboundRecord("engagement-index.ticks", 0, 0, KEY, encode_tick(due - 1), NOW)],
        tables.load_contact,
        tables.load_history,
    )
    assert early.sends == [], "nothing happens before the crossing"
    tick = scorer.process(
        [InboundRecord("engagement-index.ticks", 0, 1, KEY, encode_tick(due), NOW)],
        tables.load_contact,
        tables.load_history,
    )
    decays = [
        json.loads(s.value or b"") for s in tick.sends if s.topic == "engagement.stage-changes"
    ]
    assert [d["reason"] for d in decays] == ["decay"]
    assert decays[0]["from_stage"] == "purchase"
    assert (decays[0]["lifecycle"], decays[0]["rule_id"]) == ("stage", "cooled")
    assert tick.due_updates[KEY] == (0, None)
    assert decode_tick(encode_tick(due)) == due


def purchase_ready(scorer: BatchScorer, tables: Tables) -> int:
    """A contact in ``purchase`` with a pending decay; its due time."""
    hot = ("web.form_submit", "email.click", "social.share")
    out = run(scorer, tables, [rec(i, event(i, 36_000 + i, hot[i % 3])) for i in range(30)])
    due = out.due_updates[KEY][1]  # type: ignore[attr-defined]
    assert due is not None
    return int(due)


def stage_changes(out: BatchOutcome) -> list[dict[str, object]]:
    return [json.loads(s.value or b"") for s in out.sends if s.topic == "engagement.stage-changes"]


def test_a_tick_fetched_before_an_earlier_event_is_applied_after_it(scorer: BatchScorer) -> None:
    """A wake-up read in the same fetch as an event that precedes its due time (a fetch read
    again after a restart): the event is applied first, so the contact does not decay."""
    tables = Tables()
    due = purchase_ready(scorer, tables)
    tick = InboundRecord("engagement-index.ticks", 0, 0, KEY, encode_tick(due), NOW)
    later = rec(30, event(30, 38_000, "email.click"))  # 10:33, before the crossing
    out = run(scorer, tables, [tick, later])
    assert isinstance(out, BatchOutcome)
    assert stage_changes(out) == [], "the event moved the crossing past the wake-up"
    new_due = out.due_updates[KEY][1]
    assert new_due is not None
    assert new_due > due


def test_a_tick_of_a_partition_not_read_to_its_end_is_deferred(scorer: BatchScorer) -> None:
    tables = Tables()
    due = purchase_ready(scorer, tables)
    tick = InboundRecord("engagement-index.ticks", 3, 0, KEY, encode_tick(due), NOW)
    held = scorer.process([tick], tables.load_contact, tables.load_history, held=[3])
    assert held.sends == []
    assert held.contact_writes == {}
    assert held.due_updates == {}
    text = scorer.metrics.render().decode()
    assert "engagement_decay_ticks_deferred_total 1.0" in text
    applied = scorer.process([tick], tables.load_contact, tables.load_history, held=[2])
    assert [d["reason"] for d in stage_changes(applied)] == ["decay"]


def test_the_stored_state_names_the_stage(scorer: BatchScorer) -> None:
    tables = Tables()
    out = run(scorer, tables, [rec(0, event(0, 36_000, etype="commerce.purchase"))])
    assert isinstance(out, BatchOutcome)
    assert out.stage_moves == [("stage", None, "nurture"), ("stage", "nurture", "retention")]
    state = decode_state(
        StoredContact.decode(tables.contacts[KEY]).state_bytes, ContactKey("acme", "c-1")
    )
    assert stage_names(state, scorer.model.compiled) == {"stage": "retention"}


def test_stored_contact_round_trip_and_errors() -> None:
    seen = admit(EMPTY_SEEN, "e-1", NOW, 1000)
    assert seen is not None
    stored = StoredContact(b"core", {0: 5, 65535: 2**40}, 12.5, seen)
    again = StoredContact.decode(stored.encode())
    assert (again.state_bytes, again.offsets, again.published_index, again.seen) == (
        b"core",
        {0: 5, 65535: 2**40},
        12.5,
        seen,
    )
    with pytest.raises(StoredStateError):
        StoredContact.decode(b"\x03" + stored.encode()[1:])
    with pytest.raises(StoredStateError):
        StoredContact.decode(b"\x01")
    # version 1 (the previous release): sources by position in scoring_sources, no window
    v1 = b"\x01" + stored.encode()[1:5] + b"\x02\x00\x05\x01\x80\x01" + b"core"
    legacy = StoredContact.decode(v1, ["events.web", "events.email"])
    assert legacy.offsets == {WEB: 5, source_id("events.email"): 128}
    assert (legacy.state_bytes, legacy.seen) == (b"core", EMPTY_SEEN)


def test_due_index_pops_due_entries_only_and_retries() -> None:
    due = DueIndex()
    due.set(0, b"a", 100)
    due.set(0, b"b", 200)
    due.set(1, b"c", 50)
    due.set(0, b"a", 300)  # moved later: the old heap entry is stale
    assert sorted(due.pop_due(150, retry_ms=1000)) == [(1, b"c", 50)]
    assert due.pop_due(150, retry_ms=1000) == []
    assert due.pop_due(250, retry_ms=1000, skip={0}) == []
    assert due.pop_due(250, retry_ms=1000) == [(0, b"b", 200)]
    # c was popped at 150 and is re-sent after the retry delay; a is due at 300
    assert sorted(due.pop_due(1200, retry_ms=1000)) == [(0, b"a", 300), (1, b"c", 50)]
    due.set(1, b"c", None)
    assert len(due) == 2
    # partitions with something due by then: the timer checks only these for a backlog
    fresh = DueIndex()
    fresh.set(3, b"x", 100)
    fresh.set(4, b"y", 500)
    assert fresh.due_partitions(99) == []
    assert fresh.due_partitions(100) == [3]
    assert sorted(fresh.due_partitions(500)) == [3, 4]


ERASURES_IN = "engagement-index.erasure-requests"


def erasure(contact: str = "c-1", erasure_id: str = "x-1") -> bytes:
    return json.dumps(
        {
            "erasure_id": erasure_id,
            "tenant": "acme",
            "contact_id": contact,
            "requested_at": "2026-11-18T12:00:00.000Z",
        }
    ).encode()


def test_an_erasure_deletes_state_and_history_and_confirms(scorer: BatchScorer) -> None:
    tables = Tables()
    other = ContactKey("acme", "c-2").encode()
    run(
        scorer,
        tables,
        [rec(i, event(i, 36_000 + i)) for i in range(12)]
        + [rec(12, event(12, 36_100, contact="c-2"), key=other)],
    )
    stage = json.loads(tables.history[KEY])[-1]["to_stage"]
    out = run(scorer, tables, [rec(0, erasure(), topic=ERASURES_IN)])
    assert isinstance(out, BatchOutcome)
    assert KEY not in tables.contacts
    assert KEY not in tables.history
    assert other in tables.contacts, "other contacts are untouched"
    assert out.contact_writes[KEY] == (0, None)
    assert out.due_updates[KEY] == (canonical_partition(KEY, PARTITIONS), None)
    assert out.stage_moves == [("stage", stage, None)]
    by_topic = {s.topic: s for s in out.sends}
    assert by_topic["engagement.scores"].key == KEY
    assert by_topic["engagement.scores"].value is None, "a compaction tombstone"
    confirmation = json.loads(by_topic["engagement.erasures"].value or b"")
    assert confirmation["found"] is True
    assert confirmation["contact_id"] == "c-1"
    assert confirmation["erasure_id"] == "x-1"
    # a second request for the same contact finds nothing, and says so
    again = run(scorer, tables, [rec(1, erasure(erasure_id="x-2"), topic=ERASURES_IN)])
    assert isinstance(again, BatchOutcome)
    sent = {s.topic: s for s in again.sends}
    assert json.loads(sent["engagement.erasures"].value or b"")["found"] is False
    assert again.stage_moves == []
    # new events after the erasure start a new contact from nothing
    later = run(scorer, tables, [rec(20, event(20, 40_000))])
    assert isinstance(later, BatchOutcome)
    reasons = [
        json.loads(s.value or b"")["reason"]
        for s in later.sends
        if s.topic == "engagement.stage-changes"
    ]
    assert reasons[0] == "first_seen"
    assert (
        scorer.metrics.registry.get_sample_value("engagement_erasures_total", {"outcome": "erased"})
        == 1
    )


def test_an_erasure_in_the_same_batch_as_events_wins_over_earlier_ones(
    scorer: BatchScorer,
) -> None:
    tables = Tables()
    out = run(
        scorer,
        tables,
        [rec(0, event(0, 36_000)), rec(0, erasure(), topic=ERASURES_IN), rec(1, event(1, 36_001))],
    )
    assert isinstance(out, BatchOutcome)
    stored = StoredContact.decode(tables.contacts[KEY])
    assert stored.offsets == {WEB: 1}, "only the event after the erasure is in the new state"
    history = json.loads(tables.history[KEY])
    assert [t["reason"] for t in history] == ["first_seen"]


def test_bad_or_misrouted_erasure_requests(scorer: BatchScorer) -> None:
    tables = Tables()
    bad = run(scorer, tables, [rec(0, b'{"tenant": "acme"}', topic=ERASURES_IN)])
    assert isinstance(bad, BatchOutcome)
    assert [s.topic for s in bad.sends] == ["engagement.dlq"]
    moved = run(scorer, tables, [rec(1, erasure(), key=b"legacy:c-1", topic=ERASURES_IN)])
    assert isinstance(moved, BatchOutcome)
    assert [(s.topic, s.key) for s in moved.sends] == [(ERASURES_IN, KEY)]
    assert moved.contact_writes == {}


def test_a_re_sent_id_is_a_duplicate_long_after_but_counts_again_after_the_window(
    scorer: BatchScorer,
) -> None:
    tables = Tables()
    day = 86_400_000
    first = rec(0, event(100, 36_000))._replace(timestamp_ms=NOW - 4 * day)
    others = [
        rec(1 + i, event(i, 36_001 + i))._replace(timestamp_ms=NOW - 4 * day + i) for i in range(40)
    ]
    run(scorer, tables, [first, *others])
    # 40 events later, 2 days after the first copy's arrival: ignored
    resent = rec(41, event(100, 36_000))._replace(timestamp_ms=NOW - 2 * day)
    run(scorer, tables, [resent])
    state = decode_state(
        StoredContact.decode(tables.contacts[KEY]).state_bytes, ContactKey("acme", "c-1")
    )
    assert state.events_counted == 41
    # 4 days after the first copy (past the default 72 h): counted again
    run(scorer, tables, [rec(42, event(100, 36_000))._replace(timestamp_ms=NOW)])
    state = decode_state(
        StoredContact.decode(tables.contacts[KEY]).state_bytes, ContactKey("acme", "c-1")
    )
    assert state.events_counted == 42
