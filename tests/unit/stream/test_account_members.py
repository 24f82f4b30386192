"""The member side of accounts in the scoring batch, and the account batch (no broker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from engagement_index.core.accounts import JOIN, LEAVE, LICENCES, decode_update
from engagement_index.core.events import ContactKey
from engagement_index.core.model import load_model
from engagement_index.core.partitioning import canonical_partition
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.account_agent import AccountScorer
from engagement_index.stream.scoring import BatchScorer, InboundRecord
from engagement_index.stream.stored import StoredContact, StoredStateError, account_of
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]
MODEL = load_model(ROOT / "config" / "models" / "b2b-qualification.yaml")
TOPOLOGY = load_topology(ROOT / "streams" / "topology.yaml")
UPDATES = TOPOLOGY.internal.account_updates.name
NOW = 1_795_000_000_000
KEY = ContactKey("acme", "c-1").encode()


def line(n: int, etype: str = "email.click", account: str | None = "a1", **extra: object) -> bytes:
    body: dict[str, object] = {
        "event_id": f"e{n}",
        "tenant": "acme",
        "contact_id": "c-1",
        "type": etype,
        "timestamp": "2026-11-18T10:00:00Z",
    }
    if account is not None:
        body["account_id"] = account
    body.update(extra)
    return json.dumps(body).encode()  # fmt: skip


def rec(offset: int, value: bytes, key: bytes = KEY) -> InboundRecord:
    partition = canonical_partition(key, TOPOLOGY.scoring_partitions)
    return InboundRecord("events.web", partition, offset, key, value, NOW)


class Scorer:
    def __init__(self) -> None:
        self.scorer = BatchScorer(
            model=MODEL,
            topology=TOPOLOGY,
            settings=Settings(),
            metrics=Metrics(CollectorRegistry()),
            clock_ms=lambda: NOW,
        )
        self.contacts: dict[bytes, bytes] = {}

    def run(self, records: list[InboundRecord]) -> list[tuple[int, str, str, int]]:
        out = self.scorer.process(records, lambda k, i: self.contacts.get(k), lambda k, i: None)
        for key, (_, value) in out.contact_writes.items():
            if value is None:
                self.contacts.pop(key, None)
            else:
                self.contacts[key] = value
        self.dead = [s for s in out.sends if s.topic == TOPOLOGY.outbound.dead_letters.name]
        updates = []
        for send in out.sends:
            if send.topic == UPDATES:
                assert send.value is not None
                assert send.key is not None
                update = decode_update(send.value)
                assert send.key == update.key
                assert send.partition == canonical_partition(send.key, TOPOLOGY.scoring_partitions)
                updates.append((update.kind, update.account_id, update.contact_id, update.version))
        return updates


def test_each_scored_event_of_a_member_sends_its_state_to_its_account() -> None:
    s = Scorer()
    assert s.run([rec(0, line(0)), rec(1, line(1, account=None))]) == [
        (JOIN, "a1", "c-1", 1),
        (JOIN, "a1", "c-1", 2),
    ]
    stored = s.contacts[KEY]
    assert account_of(stored) == "a1"
    assert StoredContact.decode(stored).account is not None
    assert s.run([rec(1, line(1))]) == [], "a re-delivered record sends nothing"
    # a later event naming another account: a departure, then the state to the new one
    moved = line(2, account="a2", timestamp="2026-11-18T11:00:00Z")
    assert s.run([rec(2, moved)]) == [(LEAVE, "a1", "c-1", 0), (JOIN, "a2", "c-1", 3)]
    assert account_of(s.contacts[KEY]) == "a2"


def test_account_events_set_licences_and_membership_or_are_dead_letters() -> None:
    s = Scorer()
    licences = line(0, "account.licences", properties={"licences": 10})
    assert s.run([rec(0, licences)]) == [(LICENCES, "a1", "", 0)]
    assert s.contacts == {}, "the contact that sets the licences does not join"
    assert s.run([rec(1, line(1, account=None))]) == []
    group = line(2, "account.group", account="g", properties={"licences": 3})
    assert s.run([rec(2, group)]) == [(JOIN, "g", "c-1", 1), (LICENCES, "g", "", 0)]
    assert account_of(s.contacts[KEY]) == "g"
    bad = [
        line(3, "account.licences", properties={"licences": -1}),
        line(4, "account.licences", account=None, properties={"licences": 1}),
        line(5, "account.renamed"),
    ]
    assert s.run([rec(3 + i, b) for i, b in enumerate(bad)]) == []
    reasons = [dict(d.headers)["dlq.failure.type"] for d in s.dead]
    assert reasons == [b"schema_violation", b"schema_violation", b"unknown_type"]


def test_the_account_batch_applies_updates_once_and_dead_letters_garbage() -> None:
    s = Scorer()
    s.run([rec(0, line(0))])
    out = s.scorer.process([rec(1, line(1))], lambda k, i: s.contacts.get(k), lambda k, i: None)
    (update,) = [x for x in out.sends if x.topic == UPDATES]
    assert update.key is not None
    assert update.value is not None
    acc = MODEL.accounts_compiled
    assert acc is not None
    accounts = AccountScorer(acc, TOPOLOGY, Metrics(CollectorRegistry()), lambda: NOW)
    table: dict[bytes, bytes] = {}
    partition = canonical_partition(update.key, TOPOLOGY.scoring_partitions)
    record = InboundRecord(UPDATES, partition, 0, update.key, update.value, NOW)
    first = accounts.process([record], lambda k, i: table.get(k))
    assert [t.reason for t in first.transitions] == ["first_seen", "first_seen"]
    (value,) = [v for _, v in first.writes.values()]
    assert value is not None
    table[update.key] = value
    again = accounts.process([record], lambda k, i: table.get(k))
    assert (again.transitions, again.writes) == ([], {}), "a re-delivered update changes nothing"
    garbage = InboundRecord(UPDATES, partition, 1, update.key, b"\x00junk", NOW)
    dead = accounts.process([garbage], lambda k, i: table.get(k))
    assert [dict(x.headers)["dlq.failure.type"] for x in dead.sends] == [b"schema_violation"]


def test_stored_values_without_an_account_read_none_and_a_cut_one_is_an_error() -> None:
    assert account_of(StoredContact(b"core", {1: 2}).encode()) is None
    assert account_of(b"") is None
    with pytest.raises(StoredStateError):
        account_of(b"\x03" + b"\x00" * 5)


@pytest.mark.parametrize("crash", [False, True])
def test_an_identity_merge_moves_the_membership_to_the_known_contact(crash: bool) -> None:
    """The anonymous visitor's page views named the account; after the identify the known
    contact is its member (as if its id had been on every event), with its merged state, and
    the anonymous id is not: the stream's account updates, applied in their order, give the
    replay's account."""
    from engagement_index.core.accounts import apply
    from tests.unit.stream.test_identity import Sim, event, identify

    sim = Sim(crash=crash)
    sim.scorer = Scorer().scorer
    events = [{**event(n, "anon-1", n), "account_id": "acct-9"} for n in range(4)]
    events.append(event(4, "user-1", 5, "email.click"))
    lines = [json.dumps(e) for e in events]
    for e in events:
        sim.publish("events.web", e, e["contact_id"])
    sim.run()
    link = identify("user-1", "anon-1", 8)
    sim.publish("engagement.identities", link, "user-1")
    sim.run()
    acc = MODEL.accounts_compiled
    assert acc is not None
    state = None
    for send in sim.topic(UPDATES):
        state, _ = apply(state, decode_update(send.value), acc)
    assert state is not None
    assert [m.contact_id for m in state.members] == ["user-1"]
    assert state.members[0].version == 5, "the merged state: both contacts' events"
    assert sim.contacts[ContactKey("acme", "user-1").encode()] is not None
    assert account_of(sim.contacts[ContactKey("acme", "user-1").encode()]) == "acct-9"
    from engagement_index.replay import Replayer

    replayer = Replayer(MODEL)
    for line in [*lines, json.dumps(link)]:
        replayer.feed(line)
    replayed = replayer.accounts[("acme", "acct-9")]
    assert [(m.contact_id, m.version) for m in replayed.members] == [("user-1", 5)]
    assert (replayed.members, replayed.stages, replayed.clock_ms) == (
        state.members,
        state.stages,
        state.clock_ms,
    )
