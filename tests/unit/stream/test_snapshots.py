"""One score snapshot per contact per batch: the latest, where the latest was computed.

A batch of records gives the records of the same records scored one per batch, except that
of each contact's snapshots only the last one the batch computed is sent (the scores topic is
compacted). Tombstones (erasures) are never dropped, and a snapshot computed before a
tombstone of the same batch stays before it. Checked with the kernel and the Python core.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from engagement_index.core.events import ContactKey
from engagement_index.core.model import load_model
from engagement_index.core.partitioning import canonical_partition
from engagement_index.kernel import KERNEL_ENV
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.scoring import (
    BatchOutcome,
    BatchScorer,
    InboundRecord,
    OutboundRecord,
    encode_tick,
)
from engagement_index.stream.stored import StoredContact
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]
TOPOLOGY = load_topology(ROOT / "streams" / "topology.yaml")
PARTITIONS = TOPOLOGY.scoring_partitions
SCORES = TOPOLOGY.outbound.scores.name
ERASURES_IN = TOPOLOGY.internal.erasure_requests.name
TICKS = TOPOLOGY.internal.ticks.name
NOW = 1_795_000_000_000


def key_of(contact: str) -> bytes:
    return ContactKey("acme", contact).encode()


def event(n: int, second: int, etype: str = "web.form_submit", contact: str = "c-1") -> bytes:
    stamp = f"2026-11-18T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"
    body = {"event_id": f"e{n}", "tenant": "acme", "contact_id": contact, "type": etype}
    return json.dumps({**body, "timestamp": stamp}).encode()


def rec(offset: int, value: bytes, topic: str = "events.web") -> InboundRecord:
    """A record keyed by the contact its value names, on that key's partition."""
    key = key_of(json.loads(value)["contact_id"])
    return InboundRecord(topic, canonical_partition(key, PARTITIONS), offset, key, value, NOW)


def erasure(n: int, contact: str = "c-1") -> InboundRecord:
    value = json.dumps(
        {
            "erasure_id": f"x-{n}",
            "tenant": "acme",
            "contact_id": contact,
            "requested_at": "2026-11-18T12:00:00.000Z",
        }
    ).encode()
    return rec(n, value, ERASURES_IN)


class World:
    """A scorer and its tables (dicts), written from each outcome."""

    def __init__(self) -> None:
        self.scorer = BatchScorer(
            model=load_model(ROOT / "config" / "models" / "default.yaml"),
            topology=TOPOLOGY,
            settings=Settings(),
            metrics=Metrics(CollectorRegistry()),
            clock_ms=lambda: NOW,
        )
        self.contacts: dict[bytes, bytes] = {}
        self.history: dict[bytes, bytes] = {}
        self.aliases: dict[bytes, bytes] = {}

    def run(self, records: list[InboundRecord]) -> BatchOutcome:
        out = self.scorer.process(
            records,
            lambda k, _i: self.contacts.get(k),
            lambda k, _i: self.history.get(k),
            load_alias=lambda k, _i: self.aliases.get(k),
        )
        for table, writes in (
            (self.contacts, out.contact_writes),
            (self.history, out.history_writes),
            (self.aliases, out.alias_writes),
        ):
            for key, (_, value) in writes.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
        return out

    def snapshots_sent(self) -> float:
        value = self.scorer.metrics.registry.get_sample_value("engagement_score_snapshots_total")
        return value or 0.0


@pytest.fixture(params=["kernel", "python"])
def world(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[[], World]:
    """Makes worlds that score with the kernel or with the Python core."""
    if request.param == "python":
        monkeypatch.setenv(KERNEL_ENV, "python")
    else:
        monkeypatch.delenv(KERNEL_ENV, raising=False)
    return World


def scores(out: BatchOutcome, contact: str = "c-1") -> list[bytes | None]:
    """The values sent to the scores topic for ``contact``, in order (None: a tombstone)."""
    return [s.value for s in out.sends if s.topic == SCORES and s.key == key_of(contact)]


def one_per_batch(sends: list[OutboundRecord]) -> list[OutboundRecord]:
    """``sends`` without every snapshot that a later snapshot of the same key follows."""
    kept: list[OutboundRecord] = []
    later: set[bytes | None] = set()
    for s in reversed(sends):
        if s.topic == SCORES and s.value is not None:
            if s.key in later:
                continue
            later.add(s.key)
        kept.append(s)
    return kept[::-1]


def test_two_events_of_a_contact_in_one_batch_send_one_snapshot_the_last(
    world: Callable[[], World],
) -> None:
    first, second = rec(0, event(0, 36_000)), rec(1, event(1, 36_010, "email.click"))
    apart = world()
    [s0] = scores(apart.run([first]))
    [s1] = scores(apart.run([second]))
    assert s0 != s1, "each event alone publishes a snapshot"
    together = world()
    out = together.run([first, second])
    assert scores(out) == [s1], "one snapshot, the last one"
    assert together.contacts == apart.contacts, "the same stored value (published index too)"
    assert s1 is not None
    published = StoredContact.decode(together.contacts[key_of("c-1")]).published_index
    assert published == pytest.approx(json.loads(s1)["index"], rel=1e-6)  # kept as float32
    assert together.snapshots_sent() == 1
    assert apart.snapshots_sent() == 2


def test_an_erasure_after_events_of_its_contact_leaves_the_tombstone_last(
    world: Callable[[], World],
) -> None:
    events = [rec(0, event(0, 36_000)), rec(1, event(1, 36_010, "email.click"))]
    apart = world()
    [_, last] = [scores(apart.run([r]))[0] for r in events]
    w = world()
    out = w.run([*events, erasure(2)])
    assert scores(out) == [last, None], "the latest snapshot, then the tombstone"
    assert key_of("c-1") not in w.contacts
    assert w.snapshots_sent() == 1
    # an event after the erasure, in the same batch: the new contact's snapshot follows it
    again = world()
    out = again.run([*events, erasure(2), rec(3, event(3, 36_020))])
    sent = scores(out)
    assert len(sent) == 2
    assert sent[0] is None
    assert sent[1] is not None
    assert json.loads(sent[1])["events_counted"] == 1


def test_snapshots_of_two_batches_are_both_sent(world: Callable[[], World]) -> None:
    w = world()
    first = scores(w.run([rec(0, event(0, 36_000))]))
    second = scores(w.run([rec(1, event(1, 36_010, "email.click"))]))
    assert len(first) == len(second) == 1
    assert first != second
    assert w.snapshots_sent() == 2


def test_a_batch_sends_what_one_record_batches_send_less_earlier_snapshots(
    world: Callable[[], World],
) -> None:
    """Events of three contacts interleaved, an erasure between events of one of them, a
    re-delivered record, and a wake-up after an event of its contact (wake-ups go last)."""
    hot = ("web.form_submit", "email.click", "social.share")
    warm = [rec(i, event(i, 36_000 + i, hot[i % 3])) for i in range(30)]
    records = [
        rec(30, event(30, 37_000, "email.click")),
        rec(0, event(100, 37_001, contact="c-2")),
        rec(31, event(31, 37_002, "social.share")),
        rec(1, event(101, 37_003, "email.click", contact="c-2")),
        rec(0, event(200, 37_004, contact="c-3")),
        erasure(0, "c-3"),
        rec(1, event(201, 37_005, "email.click", contact="c-3")),
        rec(2, event(202, 37_006, "social.share", contact="c-3")),
        rec(31, event(31, 37_002, "social.share")),  # re-delivered
        rec(2, event(102, 37_007, "social.share", contact="c-2")),
    ]
    apart, together = world(), world()
    due = apart.run(warm).due_updates[key_of("c-1")][1]
    together.run(warm)
    assert due is not None
    home = canonical_partition(key_of("c-1"), PARTITIONS)
    tick = InboundRecord(TICKS, home, 0, key_of("c-1"), encode_tick(due + 30 * 86_400_000), NOW)
    records.append(tick)
    expected = [s for r in records for s in apart.run([r]).sends]
    before = together.snapshots_sent()
    out = together.run(records)
    assert out.sends == one_per_batch(expected)
    assert together.contacts == apart.contacts
    assert together.history == apart.history
    for contact in ("c-1", "c-2", "c-3"):
        assert sum(v is not None for v in scores(out, contact)) == 1, contact
    decays = [
        json.loads(s.value or b"")["reason"]
        for s in out.sends
        if s.topic == TOPOLOGY.outbound.stage_changes.name and s.key == key_of("c-1")
    ]
    assert "decay" in decays, "the wake-up changed the contact after its events"
    dropped = sum(s.topic == SCORES for s in expected) - sum(s.topic == SCORES for s in out.sends)
    assert dropped >= 5
    assert together.snapshots_sent() - before == sum(
        s.topic == SCORES and s.value is not None for s in out.sends
    )


def test_an_identity_merge_in_a_batch_with_events_of_both_ids(world: Callable[[], World]) -> None:
    """The absorbed id's snapshot stays before its tombstone; the survivor's merge snapshot is
    replaced by the one of its event after the merge in the same batch."""
    anon = [
        rec(0, event(300, 36_000, contact="anon-1")),
        rec(1, event(301, 36_010, contact="anon-1")),
    ]
    user = [rec(0, event(400, 36_020, contact="u-1")), rec(1, event(401, 36_030, contact="u-1"))]
    link = json.dumps(
        {
            "kind": "identify",
            "event_id": "i1",
            "tenant": "acme",
            "contact_id": "u-1",
            "anonymous_id": "anon-1",
            "timestamp": "2026-11-18T10:00:40Z",
        }
    ).encode()
    scratch = world()
    scratch.run(anon)
    identities = TOPOLOGY.outbound.identities.name
    step_two = TOPOLOGY.internal.merge_requests.name
    step_three = TOPOLOGY.internal.merge_transfers.name
    [request] = [s for s in scratch.run([rec(0, link, identities)]).sends if s.topic == step_two]
    [transfer] = [s for s in scratch.run([as_inbound(request)]).sends if s.topic == step_three]
    assert json.loads(transfer.value or b"")["state"] is not None, "anon-1 has a state to merge"
    records = [*anon, *user, as_inbound(request), as_inbound(transfer)]
    records.append(rec(2, event(402, 36_050, "email.click", contact="u-1")))
    apart, together = world(), world()
    each = [apart.run([r]).sends for r in records]
    assert SCORES in {s.topic for s in each[5]}, "the merge alone sends the survivor's snapshot"
    expected = [s for sends in each for s in sends]
    out = together.run(records)
    assert out.sends == one_per_batch(expected)
    assert together.contacts == apart.contacts
    assert together.aliases == apart.aliases
    absorbed = scores(out, "anon-1")
    assert len(absorbed) == 2
    assert absorbed[0] is not None
    assert absorbed[1] is None, "the tombstone last"
    [survivor] = scores(out, "u-1")
    sent_apart = [s.value for s in expected if s.topic == SCORES and s.key == key_of("u-1")]
    assert survivor == sent_apart[-1]
    assert len(sent_apart) == 4, "each of the survivor's events and the merge sent one apart"


def as_inbound(sent: OutboundRecord) -> InboundRecord:
    """A record the scorer sent to a topic it reads, as it comes back (offset 0)."""
    assert sent.key is not None
    assert sent.value is not None
    partition = sent.partition
    if partition is None:
        partition = canonical_partition(sent.key, PARTITIONS)
    return InboundRecord(sent.topic, partition, 0, sent.key, sent.value, NOW)
