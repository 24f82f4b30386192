"""The identity merge protocol (``stream/identity.py``) through BatchScorer, without a broker.

A small simulated log carries every record the scorer sends to a topic it reads (merge
requests, transfers, re-keyed events, erasure requests) back to it, on the partition it was
sent to; tables are dicts. The merged contact is compared with the offline replay in which
every event carried the known id (``Replayer``), and the protocol is run again with every
record delivered twice and with a crash (outputs sent, tables not written) after each batch.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import evaluate
from engagement_index.core.model import load_model
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.state import decode_state
from engagement_index.metrics import Metrics
from engagement_index.replay import Replayer
from engagement_index.settings import Settings
from engagement_index.stream.identity import decode_alias
from engagement_index.stream.scoring import BatchScorer, InboundRecord
from engagement_index.stream.stored import StoredContact
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]
MODEL = load_model(ROOT / "config" / "models" / "default.yaml")
TOPOLOGY = load_topology(ROOT / "streams" / "topology.yaml")
NOW = 1_795_000_000_000
P = TOPOLOGY.scoring_partitions
READ = set(TOPOLOGY.scoring_sources)


def ts(minute: int) -> str:
    return f"2026-11-18T10:{minute:02d}:00Z"


def event(n: int, contact: str, minute: int, etype: str = "web.page_view") -> dict[str, Any]:
    return {
        "event_id": f"e{n}",
        "tenant": "acme",
        "contact_id": contact,
        "type": etype,
        "timestamp": ts(minute),
    }


def identify(user: str, anon: str, minute: int, n: int = 0) -> dict[str, Any]:
    return {
        "kind": "identify",
        "event_id": f"i{n}",
        "tenant": "acme",
        "contact_id": user,
        "anonymous_id": anon,
        "timestamp": ts(minute),
    }


def key(contact: str) -> bytes:
    return ContactKey("acme", contact).encode()


class Sim:
    """The scorer, its tables and a log of the topics it reads."""

    def __init__(self, *, twice: bool = False, crash: bool = False, blocked: Any = ()) -> None:
        self.scorer = BatchScorer(
            model=MODEL,
            topology=TOPOLOGY,
            settings=Settings(identity_blocked_ids=list(blocked)),
            metrics=Metrics(CollectorRegistry()),
            clock_ms=lambda: NOW,
        )
        self.contacts: dict[bytes, bytes] = {}
        self.history: dict[bytes, bytes] = {}
        self.aliases: dict[bytes, bytes] = {}
        self.offsets: Counter[tuple[str, int]] = Counter()
        self.pending: list[InboundRecord] = []
        self.sent: list[Any] = []
        self.twice = twice
        self.crash = crash

    def publish(self, topic: str, value: dict[str, Any], contact: str) -> None:
        k = key(contact)
        self._append(topic, k, json.dumps(value).encode(), canonical_partition(k, P))

    def _append(self, topic: str, k: bytes | None, value: bytes | None, partition: int) -> None:
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] += 1
        self.pending.append(InboundRecord(topic, partition, offset, k, value, NOW - 1000))

    def _batch(self, records: list[InboundRecord], write: bool) -> None:
        out = self.scorer.process(
            records,
            lambda k, i: self.contacts.get(k),
            lambda k, i: self.history.get(k),
            None,
            load_alias=lambda k, i: self.aliases.get(k),
        )
        for s in out.sends:  # acknowledged: what goes to a topic the scorer reads comes back
            self.sent.append(s)
            if s.topic in READ:
                partition = s.partition
                if partition is None:
                    partition = canonical_partition(s.key, P)
                copies = 2 if self.twice else 1
                for _ in range(copies):
                    self._append(s.topic, s.key, s.value, partition)
        if not write:
            return
        for table, writes in (
            (self.contacts, out.contact_writes),
            (self.history, out.history_writes),
            (self.aliases, out.alias_writes),
        ):
            for k, (_, value) in writes.items():
                if value is None:
                    table.pop(k, None)
                else:
                    table[k] = value

    def run(self) -> None:
        """Deliver every pending record, a batch at a time, until nothing is pending."""
        while self.pending:
            records, self.pending = self.pending[:3], self.pending[3:]
            if self.crash:  # the outputs were sent, then the worker died: delivered again
                self._batch(records, write=False)
            self._batch(records, write=True)

    def state(self, contact: str) -> Any:
        raw = self.contacts.get(key(contact))
        if raw is None:
            return None
        stored = StoredContact.decode(raw)
        return decode_state(stored.state_bytes, ContactKey("acme", contact))

    def topic(self, name: str) -> list[Any]:
        return [s for s in self.sent if s.topic == name]


def reference(events: list[dict[str, Any]], user: str) -> Any:
    replayer = Replayer(MODEL)
    for e in events:
        replayer.feed(json.dumps({**e, "contact_id": user}))
    replayer._solve_all()
    return replayer.states[("acme", user)]


SCENARIO_BEFORE = [
    *(event(n, "anon-1", n) for n in range(6)),
    event(6, "user-1", 6, "email.click"),
    event(7, "anon-1", 7, "web.form_submit"),
]
SCENARIO_AFTER = [event(8, "anon-1", 20, "web.form_submit"), event(9, "user-1", 21)]


def scenario(sim: Sim) -> None:
    for e in SCENARIO_BEFORE:
        sim.publish("events.web", e, e["contact_id"])
    sim.publish("engagement.identities", identify("user-1", "anon-1", 8), "user-1")
    sim.run()
    for e in SCENARIO_AFTER:
        sim.publish("events.web", e, e["contact_id"])
    sim.run()


@pytest.mark.parametrize(
    ("twice", "crash"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_the_merged_contact_equals_the_replay_with_the_known_id(twice: bool, crash: bool) -> None:
    sim = Sim(twice=twice, crash=crash)
    scenario(sim)
    got = sim.state("user-1")
    want = reference([*SCENARIO_BEFORE, *SCENARIO_AFTER], "user-1")
    assert got.events_counted == want.events_counted == 10
    assert got.values == pytest.approx(want.values, rel=1e-12)
    a, b = evaluate(got, NOW, MODEL.compiled), evaluate(want, NOW, MODEL.compiled)
    assert a.index == pytest.approx(b.index, abs=1e-9)
    assert a.stage == b.stage
    assert a.first_seen_at == b.first_seen_at
    assert sim.state("anon-1") is None
    assert sim.topic("engagement.dlq") == []
    assert decode_alias(sim.aliases[key("anon-1")])["alias_of"] == "user-1"
    assert [i["id"] for i in decode_alias(sim.aliases[key("user-1")])["aliases"]] == ["anon-1"]
    merges = {json.loads(s.value)["merge_id"] for s in sim.topic("engagement.merges")}
    assert len(merges) == 1
    record = json.loads(sim.topic("engagement.merges")[0].value)
    assert record["absorbed_events"] == 7
    assert record["survivor_events"] == 1


def test_an_identify_before_any_known_event_renames_the_anonymous_contact() -> None:
    sim = Sim()
    events = [event(n, "anon-1", n) for n in range(4)]
    for e in events:
        sim.publish("events.web", e, "anon-1")
    sim.publish("engagement.identities", identify("user-1", "anon-1", 5), "user-1")
    sim.run()
    got, want = sim.state("user-1"), reference(events, "user-1")
    assert got.values == want.values
    assert got.stages == want.stages
    assert got.entered_ms == want.entered_ms
    merge = [json.loads(s.value) for s in sim.topic("engagement.stage-changes")][-1]
    assert (merge["contact_id"], merge["reason"], merge["from_stage"]) == ("user-1", "merge", None)


def test_refused_links_are_dead_lettered_with_the_reason() -> None:
    sim = Sim(blocked=["guest"])
    sim.publish("events.web", event(0, "anon-1", 0), "anon-1")
    sim.publish("events.web", event(1, "user-2", 0), "user-2")
    for n, (user, anon) in enumerate(
        [("user-1", "undefined"), ("null", "anon-1"), ("user-1", " Guest "), ("user-1", "0")]
    ):
        sim.publish("engagement.identities", identify(user, anon, 1, n), user)
    sim.publish("engagement.identities", {"kind": "identify"}, "user-1")
    sim.run()
    dead = sim.topic("engagement.dlq")
    kinds = [dict(s.headers)["dlq.failure.type"] for s in dead]
    assert kinds == [b"identity_refused"] * 4 + [b"schema_violation"]
    assert b"never merges" in dict(dead[0].headers)["dlq.error.message"]
    assert sim.state("anon-1") is not None  # nothing merged
    # two known ids: user-2 has absorbed anon-1, so user-1 cannot absorb user-2
    sim.publish("engagement.identities", identify("user-2", "anon-1", 2, 9), "user-2")
    sim.run()
    sim.publish("engagement.identities", identify("user-1", "user-2", 3, 10), "user-1")
    sim.run()
    last = dict(sim.topic("engagement.dlq")[-1].headers)
    assert last["dlq.failure.type"] == b"identity_refused"
    assert b"aliases of its own" in last["dlq.error.message"]
    assert sim.state("user-2").events_counted == 2


def test_a_chain_merges_into_the_end_of_the_chain() -> None:
    sim = Sim()
    for n, contact in enumerate(["a", "b", "c"]):
        sim.publish("events.web", event(n, contact, n), contact)
    sim.publish("engagement.identities", identify("c", "b", 5, 1), "c")
    sim.run()
    sim.publish("engagement.identities", identify("b", "a", 6, 2), "b")  # b is an alias of c
    sim.run()
    assert sim.state("c").events_counted == 3
    assert sim.state("a") is None
    assert sim.state("b") is None
    assert decode_alias(sim.aliases[key("a")])["alias_of"] == "c"


def test_an_erasure_of_the_known_contact_erases_its_aliases() -> None:
    sim = Sim()
    scenario(sim)
    request = {
        "erasure_id": "x-1",
        "tenant": "acme",
        "contact_id": "user-1",
        "requested_at": "2026-11-18T12:00:00.000Z",
    }
    sim.publish("engagement-index.erasure-requests", request, "user-1")
    sim.run()
    assert sim.contacts == {}
    assert sim.aliases == {}
    erased = [json.loads(s.value) for s in sim.topic("engagement.erasures")]
    assert {(e["contact_id"], e["found"]) for e in erased} == {("user-1", True), ("anon-1", True)}
    # a later event of the anonymous id starts a new contact: nothing points to user-1
    sim.publish("events.web", event(50, "anon-1", 30), "anon-1")
    sim.run()
    assert sim.state("anon-1").events_counted == 1
    assert sim.state("user-1") is None


def test_bad_protocol_records_are_dead_letters_not_crashes() -> None:
    sim = Sim()
    big = {**identify("user-1", "anon-1", 1), "traits": {"x": "y" * 70_000}}
    sim.publish("engagement.identities", big, "user-1")
    bad_transfer = {
        "merge_id": "m",
        "tenant": "acme",
        "survivor": "user-1",
        "absorbed": "a",
        "kind": "identify",
        "cause_event_id": "i",
        "state": "!!",
        "seen": "!!",
    }
    sim.publish("engagement-index.merge-transfers", bad_transfer, "user-1")
    sim.publish("engagement-index.merge-requests", {"tenant": "acme"}, "anon-1")
    misrouted = {**bad_transfer, "state": None, "seen": ""}
    sim.publish("engagement-index.merge-transfers", misrouted, "user-2")  # keyed by another id
    sim.run()
    kinds = [dict(s.headers)["dlq.failure.type"] for s in sim.topic("engagement.dlq")]
    assert kinds == [b"oversized"] + [b"schema_violation"] * 3
    assert sim.contacts == {}
    assert sim.aliases == {}


def test_a_re_delivered_merge_request_writes_the_alias_again_for_the_changelog() -> None:
    sim = Sim()
    scenario(sim)
    request = next(s for s in sim.sent if s.topic == "engagement-index.merge-requests")
    record = InboundRecord(request.topic, request.partition, 0, request.key, request.value, NOW)
    out = sim.scorer.process(
        [record],
        lambda k, i: sim.contacts.get(k),
        lambda k, i: sim.history.get(k),
        None,
        load_alias=lambda k, i: sim.aliases.get(k),
    )
    assert out.sends == []  # no second transfer
    assert out.alias_writes[key("anon-1")][1] == sim.aliases[key("anon-1")]
    assert out.contact_writes[key("anon-1")][1] is None


def test_a_retry_of_an_anonymous_event_after_the_merge_is_a_duplicate_on_the_survivor() -> None:
    sim = Sim()
    scenario(sim)
    before = sim.state("user-1")
    sim.publish("events.web", SCENARIO_BEFORE[2], "anon-1")  # the same event id again
    sim.run()
    after = sim.state("user-1")
    assert after.events_counted == before.events_counted == 10
    assert after.values == before.values


def test_a_re_delivered_event_of_an_absorbed_id_ahead_of_its_transfer_counts_once() -> None:
    # after a crash, an event the absorbed state had applied (and the transfer carries) is
    # delivered again once the absorbed id is an alias; its forwarded copy could reach the
    # survivor before the transfer, where the duplicate window has not got its id yet
    transfers = TOPOLOGY.internal.merge_transfers.name
    sim = Sim()
    for e in SCENARIO_BEFORE:
        sim.publish("events.web", e, e["contact_id"])
    sim.publish("engagement.identities", identify("user-1", "anon-1", 8), "user-1")
    first = next(r for r in sim.pending if r.key == key("anon-1"))
    while not sim.topic(transfers):  # up to the absorb step
        sim._batch([sim.pending.pop(0)], write=True)
    held = [r for r in sim.pending if r.topic == transfers]
    sim.pending = [first] + [r for r in sim.pending if r.topic != transfers]
    sim.run()  # the re-delivered event, and whatever it was forwarded as
    sim.pending.extend(held)
    sim.run()
    got = sim.state("user-1")
    want = reference(SCENARIO_BEFORE, "user-1")
    assert got.events_counted == want.events_counted == 8
    assert got.values == pytest.approx(want.values, rel=1e-12)
    assert not sim.topic(TOPOLOGY.internal.rekey.name)  # nothing forwarded


def test_a_survivor_with_the_most_aliases_refuses_more_links(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("engagement_index.stream.identity.MAX_ALIASES", 2)
    sim = Sim()
    for n in range(3):
        sim.publish("events.web", event(n, f"anon-{n}", n), f"anon-{n}")
        sim.publish("engagement.identities", identify("user-1", f"anon-{n}", 5, n), "user-1")
        sim.run()
    refused = dict(sim.topic("engagement.dlq")[-1].headers)
    assert refused["dlq.failure.type"] == b"identity_refused"
    assert b"aliases already" in refused["dlq.error.message"]
    assert sim.state("user-1").events_counted == 2
    assert sim.state("anon-2").events_counted == 1
