"""Segment lists and counts without a broker: keys, cursors, filters, and the index against a
brute-force evaluation of every state at the same instant.

The harness drives the real ``BatchScorer`` and ``SegmentIndex`` (a RocksDB folder under
``tmp_path``) the way ``Worker.process_batch`` does: the values before the batch, the table
writes, then ``SegmentIndex.apply``; the due-time index is updated as the worker updates it,
but no wake-up is ever processed, so every time-driven change is found at request time.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import evaluate
from engagement_index.core.model import ScoringModel, load_model, parse_model
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.state import decode_state, encode_state, peek_activity
from engagement_index.core.timestamps import ms_to_rfc3339, parse_timestamp_ms
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.due_index import DueIndex
from engagement_index.stream.scoring import BatchScorer, InboundRecord
from engagement_index.stream.segment_api import merge_legs
from engagement_index.stream.segment_query import (
    MAX_LIMIT,
    ModelView,
    QueryError,
    SegmentQuery,
    Sort,
    decode_cursor,
    encode_cursor,
    parse_query,
    sort_value,
)
from engagement_index.stream.segments import Leg, SegmentIndex
from engagement_index.stream.stored import StoredContact
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]
TOPOLOGY = load_topology(ROOT / "streams" / "topology.yaml")
PARTITIONS = TOPOLOGY.scoring_partitions
T0 = 1_795_000_000_000
#: the default model with half-lives of seconds: contacts reach purchase and decay out of it
FAST = (
    (ROOT / "config" / "models" / "default.yaml")
    .read_text()
    .replace('version: "default-1"', 'version: "fast-seg-1"')
    .replace("half_life: 14d, saturation: 8", "half_life: 20s, saturation: 8")
    .replace("half_life: 7d,  saturation: 15", "half_life: 10s, saturation: 15")
    .replace("half_life: 14d, saturation: 5", "half_life: 20s, saturation: 5")
    .replace("half_life: 60d, saturation: 5", "half_life: 30s, saturation: 5")
    .replace("half_life: 7d,  saturation: 20", "half_life: 10s, saturation: 20")
)
#: time moves contacts forward (new -> waiting -> ready), a band decays, a customer marker
TIMED = """
format: 2
version: "timed-1"
components:
  web: {half_life: 10s, saturation: 10}
markers: [customer]
events:
  web.visit: {component: web, points: 5}
  commerce.purchase: {component: web, points: 1, sets: [customer]}
indices:
  engagement: {web: 1.0}
lifecycles:
  stage:
    stages:
      new: {index: engagement}
      waiting: {index: engagement}
      ready: {index: engagement}
    initial:
      - {stage: new}
    edges:
      - {id: queued, from: new, to: waiting, when: {in_stage_for: 5s}}
      - {id: promoted, from: waiting, to: ready, when: {in_stage_for: 5s}}
  band:
    bands: {levels: {hot: 60, warm: 30, cold: 0}, hysteresis: 5}
"""


def event(tenant: str, cid: str, n: int, etype: str, ts: int) -> bytes:
    return json.dumps(
        {
            "event_id": f"{cid}-{n}",
            "tenant": tenant,
            "contact_id": cid,
            "type": etype,
            "timestamp": ms_to_rfc3339(ts),
        }
    ).encode()


class Harness:
    """The worker's batch path and index, with dicts for the tables and no broker."""

    def __init__(self, tmp_path: Path, model_text: str) -> None:
        self.model: ScoringModel = parse_model(__import__("yaml").safe_load(model_text))
        self.clock = T0
        self.scorer = BatchScorer(
            model=self.model,
            topology=TOPOLOGY,
            settings=Settings(),
            metrics=Metrics(CollectorRegistry()),
            clock_ms=lambda: self.clock,
        )
        self.contacts: dict[bytes, bytes] = {}
        self.history: dict[bytes, bytes] = {}
        self.due = DueIndex()
        self.offset = 0
        self.view = ModelView.of(self.model)
        self.index = SegmentIndex(
            tmp_path / "segments.db",
            self.view,
            legacy_sources=TOPOLOGY.scoring_sources,
            stage_topic=TOPOLOGY.outbound.stage_changes.name,
            partitions=PARTITIONS,
            load=lambda partition, key: self.contacts.get(key),
            overdue=lambda partition, at: self.due.overdue(partition, at, 5_000),
        )
        self.index.begin_rebuild(range(PARTITIONS), T0)
        self.index.end_rebuild()

    def feed(self, values: list[bytes]) -> None:
        """One batch of events, keyed canonically, as the worker applies it."""
        records = []
        for value in values:
            fields = json.loads(value)
            key = ContactKey(fields["tenant"], fields["contact_id"]).encode()
            self.offset += 1
            partition = canonical_partition(key, PARTITIONS)
            records.append(
                InboundRecord("events.web", partition, self.offset, key, value, self.clock)
            )
        loaded: dict[bytes, bytes | None] = {}

        def load_contact(key: bytes, index: int) -> bytes | None:
            loaded[key] = value = self.contacts.get(key)
            return value

        out = self.scorer.process(records, load_contact, lambda key, index: self.history.get(key))
        for key, (_, written) in out.contact_writes.items():
            if written is None:
                self.contacts.pop(key, None)
            else:
                self.contacts[key] = written
        self.index.apply(
            out.contact_writes,
            loaded,
            lambda i: records[i].partition,
            out.sends,
            out.due_updates,
            self.clock,
        )
        for key, (partition, due_ms) in out.due_updates.items():
            self.due.set(partition, key, due_ms)

    def states(self, tenant: str) -> Iterator[Any]:
        for key, raw in self.contacts.items():
            contact = ContactKey.decode(key)
            if contact.tenant == tenant:
                stored = StoredContact.decode(raw)
                yield decode_state(stored.state_bytes, contact)

    def expected(self, tenant: str, at: int, **stages: str) -> list[str]:
        """Brute force: every state of the tenant evaluated at ``at``, filtered by stage."""
        out = []
        for state in self.states(tenant):
            snapshot = evaluate(state, at, self.model.compiled)
            if all(snapshot.lifecycles[lc]["stage"] == s for lc, s in stages.items()):
                out.append(state.contact_id)
        return sorted(out)

    def page(self, params: dict[str, list[str]], tenant: str, at: int) -> tuple[list[Any], Any]:
        query = parse_query(params, self.view)
        # two "workers": partitions split in two legs, merged as the coordinator merges them
        legs = [
            self.index.list_local(query, tenant, [p for p in range(PARTITIONS) if p % 2 == w], at)
            for w in (0, 1)
        ]
        items, position = merge_legs(legs, query)
        return items, None if position is None else encode_cursor(query.sort, position)

    def list_all(
        self, params: dict[str, list[str]], tenant: str, at: int, limit: int = 7
    ) -> list[Any]:
        """Every page, following the cursors."""
        out: list[Any] = []
        cursor = None
        for _ in range(10_000):
            query = {**params, "limit": [str(limit)]}
            if cursor:
                query["cursor"] = [cursor]
            items, cursor = self.page(query, tenant, at)
            out.extend(items)
            if cursor is None:
                return out
        raise AssertionError("pagination did not end")


# ------------------------------------------------------------------------- pure parts
def test_sort_values_sort_as_the_numbers_do() -> None:
    rng = random.Random(1)
    indices = [0.0, -0.0, 1e-300, 5e-324, 100.0, 45.0, 44.999999999] + [
        rng.uniform(0, 100) for _ in range(200)
    ]
    by_bytes = sorted(indices, key=lambda x: sort_value(b"i", x, 0))
    assert by_bytes == sorted(indices)
    assert sort_value(b"i", -0.0, 0) == sort_value(b"i", 0.0, 0)
    times = [-62_135_596_800_000, -1, 0, 1, T0, 253_402_300_799_999] + [
        rng.randint(-(10**13), 10**13) for _ in range(200)
    ]
    assert sorted(times, key=lambda t: sort_value(b"a", 0.0, t)) == sorted(times)
    assert sort_value(b"c", 50.0, T0) == b""


def test_index_keys_name_partition_tenant_lifecycle_stage_and_order(tmp_path: Path) -> None:
    h = Harness(tmp_path, FAST)
    h.feed([event("acme", "c\x1f1", 0, "web.form_submit", T0 - 1000)])
    [raw] = h.contacts.values()
    key = ContactKey("acme", "c\x1f1").encode()
    projection = h.index.project(raw, key)
    assert projection is not None
    keys = h.index._keys(3, key, projection)
    head = struct.pack(">H", 3) + b"acme\x1fstage\x1fnurture\x1f"
    assert keys == [
        head + b"c" + b"c\x1f1",
        head + b"i" + struct.pack(">d", projection.index) + b"c\x1f1",
        head + b"a" + (T0 - 1000 + 2**63).to_bytes(8, "big") + b"c\x1f1",
    ]


def test_peek_activity_agrees_with_decode(tmp_path: Path) -> None:
    model = load_model(ROOT / "config" / "models" / "journey.yaml")
    h = Harness(tmp_path, (ROOT / "config" / "models" / "journey.yaml").read_text())
    types = sorted(model.events)
    h.feed([event("acme", f"j{i}", n, types[(i * 7 + n) % len(types)], T0 - 9000 + n * 10)
            for i in range(20) for n in range(6)])  # fmt: skip
    assert len(h.contacts) == 20
    for key, raw in h.contacts.items():
        state_bytes = StoredContact.decode(raw).state_bytes
        state = decode_state(state_bytes, ContactKey.decode(key))
        assert peek_activity(state_bytes) == (
            state.layout,
            state.stages,
            state.last_event_ms,
            state.values,
        )
        assert peek_activity(encode_state(state)) == peek_activity(state_bytes)


def test_cursor_round_trip_and_rejections() -> None:
    for sort in (Sort("contact_id"), Sort("index", True), Sort("last_event")):
        position = sort_value(sort.order, 42.5, T0) + "ü\x1f-id".encode()
        text = encode_cursor(sort, position)
        assert "=" not in text
        assert "/" not in text
        assert "+" not in text
        assert decode_cursor(text, sort) == position
    cursor = encode_cursor(Sort("index", True), sort_value(b"i", 1.0, 0) + b"x")
    for other in (Sort("index"), Sort("contact_id"), Sort("last_event", True)):
        with pytest.raises(QueryError, match="another sort"):
            decode_cursor(cursor, other)
    for garbage in ("", "!!!", "AAAA", base64.urlsafe_b64encode(b"\x02i+" + b"x" * 9).decode()):
        with pytest.raises(QueryError):
            decode_cursor(garbage, Sort("index"))
    with pytest.raises(QueryError):  # an index cursor needs its 8-byte sort value
        decode_cursor(encode_cursor(Sort("index"), b"short"), Sort("index"))


def test_query_parameters_and_their_errors() -> None:
    journey = ModelView.of(load_model(ROOT / "config" / "models" / "journey.yaml"))
    default = ModelView.of(load_model(ROOT / "config" / "models" / "default.yaml"))
    query = parse_query(
        {
            "stage": ["purchase,onboarding", "trend:rising"],
            "band": ["hot"],
            "min_index": ["40"],
            "max_index": ["90.5"],
            "customer": ["true"],
            "active_within": ["7d"],
            "sort": ["-index"],
            "limit": ["1000"],
        },
        journey,
    )
    stages = journey.stage_of
    assert journey.band is not None
    assert journey.trend is not None
    assert query.stages == {
        0: frozenset({stages[0]["purchase"], stages[0]["onboarding"]}),
        journey.trend: frozenset({stages[journey.trend]["rising"]}),
        journey.band: frozenset({stages[journey.band]["hot"]}),
    }
    assert (query.min_index, query.max_index, query.customer) == (40.0, 90.5, True)
    assert query.active_within_ms == 7 * 86_400_000
    assert query.sort == Sort("index", True)
    assert query.limit == MAX_LIMIT
    assert parse_query({}, default) == SegmentQuery(stages={})
    # two filters on one lifecycle: both hold
    both = parse_query({"stage": ["band:hot,warm"], "band": ["warm,cold"]}, journey)
    assert both.stages == {journey.band: frozenset({stages[journey.band]["warm"]})}
    bad = {
        "stage=nope": ({"stage": ["nope"]}, "has no stage 'nope'"),
        "lifecycle": ({"stage": ["nope:x"]}, "no lifecycle 'nope'"),
        "band on default": ({"band": ["hot"]}, "no band lifecycle"),
        "trend on default": ({"trend": ["rising"]}, "no trend lifecycle"),
        "unknown": ({"stages": ["purchase"]}, "unknown parameter 'stages'"),
        "twice": ({"limit": ["1", "2"]}, "given 2 times"),
        "limit 0": ({"limit": ["0"]}, "limit"),
        "limit 1001": ({"limit": ["1001"]}, "limit"),
        "limit -1": ({"limit": ["-1"]}, "limit"),
        "min_index": ({"min_index": ["101"]}, "between 0 and 100"),
        "nan": ({"max_index": ["nan"]}, "between 0 and 100"),
        "word": ({"min_index": ["high"]}, "not a number"),
        "customer": ({"customer": ["yes"]}, "true or false"),
        "within": ({"active_within": ["7 weeks"]}, "active_within"),
        "sort": ({"sort": ["name"]}, "sort"),
    }
    for name, (params, message) in bad.items():
        with pytest.raises(QueryError, match=message) as raised:
            parse_query(params, default)
        assert raised.value.body()["error"] == "invalid query", name
    with pytest.raises(QueryError, match="declares no accounts"):
        parse_query({"account_id": ["acc-1"]}, default)


def test_overdue_lists_due_and_in_flight_keys_only() -> None:
    due = DueIndex()
    due.set(0, b"a", 100)
    due.set(0, b"b", 200)
    due.set(0, b"c", 10_000)
    due.set(1, b"d", 50)
    due.set(0, b"a", 150)  # moved: its old heap entry is stale
    assert sorted(due.overdue(0, 160, 5_000)) == [b"a"]
    assert sorted(due.overdue(0, 300, 5_000)) == [b"a", b"b"]
    # popped (a wake-up in flight): still overdue until it is processed
    assert {key for _, key, _ in due.pop_due(300, 5_000)} == {b"a", b"b", b"d"}
    assert sorted(due.overdue(0, 300, 5_000)) == [b"a", b"b"]
    assert due.overdue(1, 300, 5_000) == [b"d"]
    due.set(0, b"a", None)
    assert due.overdue(0, 300, 5_000) == [b"b"]
    assert due.overdue(7, 300, 5_000) == []


def test_merge_is_complete_only_up_to_the_earliest_leg_bound() -> None:
    query = SegmentQuery(stages={}, limit=3)
    a = Leg([(b"a", {"id": "a"}), (b"d", {"id": "d"})], b"d")  # stopped at d (budget)
    b = Leg([(b"b", {"id": "b"}), (b"e", {"id": "e"}), (b"f", {"id": "f"})], None)
    items, position = merge_legs([a, b], query)
    assert [i["id"] for i in items] == ["a", "b", "d"]
    assert position == b"d"
    items, position = merge_legs([Leg([(b"a", {"id": "a"})], None), Leg([], None)], query)
    assert [i["id"] for i in items] == ["a"]
    assert position is None
    items, position = merge_legs([Leg([], b"m"), Leg([(b"z", {"id": "z"})], None)], query)
    assert (items, position) == ([], b"m"), "nothing up to m yet: go on after m"
    desc = SegmentQuery(stages={}, sort=Sort("contact_id", True), limit=2)
    items, position = merge_legs(
        [Leg([(b"z", {"id": "z"}), (b"q", {"id": "q"})], b"q"), Leg([(b"r", {"id": "r"})], None)],
        desc,
    )
    assert [i["id"] for i in items] == ["z", "r"]
    assert position == b"r"


# ------------------------------------------------------------------- index vs brute force
def traffic(rng: random.Random, start: int, contacts: int, tenant: str) -> list[bytes]:
    """Per contact: a burst of hot events (most reach purchase, then decay), a few casual
    ones, or a burst and a purchase (retention, then exit)."""
    hot = ("web.form_submit", "email.click", "social.share", "commerce.cart_add")
    weak = ("web.page_view", "email.open", "social.like")
    out = []
    for i in range(contacts):
        cid = f"{tenant[0]}-{i:03d}"
        kind = rng.random()
        ts = start + rng.randint(0, 5_000)
        types = [rng.choice(hot) for _ in range(rng.randint(8, 20))]
        if kind < 0.3:
            types = [rng.choice(weak) for _ in range(rng.randint(1, 5))]
        elif kind < 0.45:
            types += ["commerce.purchase", "product.core_action"]
        for j, etype in enumerate(types):
            out.append(event(tenant, cid, j, etype, ts + j * rng.randint(1, 100)))
    return out


def stored_stage(h: Harness, state: Any) -> int:
    """The contact's stage in the first lifecycle as stored (no due change applied)."""
    key = state.key.encode()
    projection = h.index.project(h.contacts[key], key)
    assert projection is not None
    return projection.stages[0]


def test_stage_lists_equal_the_states_evaluated_at_each_instant(tmp_path: Path) -> None:
    """No wake-up is processed: every decay out of purchase is found at request time, and the
    contacts it moves into nurture are listed there, at each instant, in every sort."""
    h = Harness(tmp_path, FAST)
    rng = random.Random(5)
    values = traffic(rng, T0 - 10_000, 120, "acme") + traffic(rng, T0 - 10_000, 40, "globex")
    rng.shuffle(values)  # contacts interleaved; each contact's events stay in order below
    by_contact: dict[str, list[bytes]] = {}
    for v in values:
        by_contact.setdefault(json.loads(v)["contact_id"], []).append(v)
    ordered = sorted(
        (v for vs in by_contact.values() for v in vs), key=lambda v: json.loads(v)["timestamp"]
    )
    for i in range(0, len(ordered), 97):
        h.feed(ordered[i : i + 97])
    moved = 0
    for at in (T0, T0 + 2_000, T0 + 8_000, T0 + 20_000, T0 + 60_000, T0 + 600_000):
        for stage in ("purchase", "nurture", "retention", "exit"):
            want = h.expected("acme", at, stage=stage)
            for sort in (
                "contact_id",
                "-contact_id",
                "index",
                "-index",
                "last_event",
                "-last_event",
            ):
                got = h.list_all({"stage": [stage], "sort": [sort]}, "acme", at)
                ids = [item["contact_id"] for item in got]
                assert len(ids) == len(set(ids)), (at, stage, sort)
                assert sorted(ids) == want, (at, stage, sort)
        stored_purchase = {
            s.contact_id
            for s in h.states("acme")
            if stored_stage(h, s) == 1  # purchase, as the index holds it
        }
        moved += len(stored_purchase - set(h.expected("acme", at, stage="purchase")))
        # the items: the state as of the instant
        for item in h.list_all({}, "acme", at, limit=50):
            state = next(s for s in h.states("acme") if s.contact_id == item["contact_id"])
            snapshot = evaluate(state, at, h.model.compiled)
            assert item["stages"] == {"stage": snapshot.stage}
            assert item["index"] == snapshot.index
            assert item["last_event_at"] == snapshot.last_event_at
            assert item["band"] is None
            assert item["trend"] is None
    assert moved > 20, "the scenario must hold stored purchase contacts that decayed out"
    # a list sorted by index is in order of the index as of each contact's clock
    items = h.list_all({"sort": ["-index"]}, "acme", T0 + 60_000, limit=13)
    assert len(items) == 120
    tenant_b = h.list_all({}, "globex", T0)
    assert {i["contact_id"][0] for i in tenant_b} == {"g"}
    assert len(tenant_b) == 40


def test_time_driven_moves_into_a_stage_are_listed_and_counted(tmp_path: Path) -> None:
    h = Harness(tmp_path, TIMED)
    h.feed([event("acme", f"t-{i}", 0, "web.visit", T0 - 1_000 + i) for i in range(30)])
    h.feed([event("acme", f"t-{i}", 1, "commerce.purchase", T0 - 500) for i in range(0, 30, 3)])
    for at, stage in ((T0, "new"), (T0 + 4_500, "waiting"), (T0 + 9_500, "ready")):
        # every contact moved by time alone (its stored stage is still "new")
        assert h.expected("acme", at, stage=stage) == sorted(f"t-{i}" for i in range(30))
        got = h.list_all({"stage": [stage]}, "acme", at, limit=4)
        assert sorted(i["contact_id"] for i in got) == sorted(f"t-{i}" for i in range(30))
        for other in {"new", "waiting", "ready"} - {stage}:
            assert h.list_all({"stage": [other]}, "acme", at) == []
        summary = h.index.summary_local("acme", range(PARTITIONS), at)
        counts = {(lc, s): n for lc, s, n in summary["counts"]}
        assert counts[(0, h.view.stage_of[0][stage])] == 30
    # filters on the band lifecycle and the customer marker
    at = T0 + 9_500
    customers = h.list_all({"customer": ["true"], "stage": ["ready"]}, "acme", at)
    assert sorted(i["contact_id"] for i in customers) == sorted(f"t-{i}" for i in range(0, 30, 3))
    bands = Counter(
        evaluate(s, at, h.model.compiled).lifecycles["band"]["stage"] for s in h.states("acme")
    )
    for band, n in bands.items():
        assert len(h.list_all({"band": [band]}, "acme", at)) == n
    # the transitions due by the instant are counted as the wake-ups will emit them
    summary = h.index.summary_local("acme", range(PARTITIONS), T0 + 9_500)
    edges = {(lc, rule): n for lc, rule, _, _, n in summary["edges"]}
    assert edges[("stage", "queued")] == 30
    assert edges[("stage", "promoted")] == 30
    assert edges[("stage", "initial_new")] == 30


def test_filters_equal_brute_force(tmp_path: Path) -> None:
    h = Harness(tmp_path, FAST)
    rng = random.Random(9)
    values = sorted(
        traffic(rng, T0 - 60_000, 150, "acme"), key=lambda v: json.loads(v)["timestamp"]
    )
    for i in range(0, len(values), 50):
        h.feed(values[i : i + 50])
    at = T0 + 3_000
    snapshots = {s.contact_id: evaluate(s, at, h.model.compiled) for s in h.states("acme")}
    cases: dict[str, tuple[dict[str, list[str]], Callable[[Any], bool]]] = {
        "min_index": ({"min_index": ["40"]}, lambda s: s.index >= 40),
        "range": ({"min_index": ["10"], "max_index": ["50"]}, lambda s: 10 <= s.index <= 50),
        "customer": ({"customer": ["true"]}, lambda s: s.customer),
        "not customer": ({"customer": ["false"]}, lambda s: not s.customer),
        "active": (
            {"active_within": ["20s"]},
            lambda s: parse_timestamp_ms(s.last_event_at) >= at - 20_000,
        ),
        "stage and index": (
            {"stage": ["nurture"], "min_index": ["5"]},
            lambda s: s.stage == "nurture" and s.index >= 5,
        ),
    }
    for name, (params, predicate) in cases.items():
        want = sorted(cid for cid, s in snapshots.items() if predicate(s))
        for sort in ("contact_id", "-index", "-last_event", "index"):
            got = h.list_all({**params, "sort": [sort]}, "acme", at, limit=9)
            assert sorted(i["contact_id"] for i in got) == want, (name, sort)
            if sort == "-last_event":
                stamps = [parse_timestamp_ms(i["last_event_at"]) for i in got]
                assert stamps == sorted(stamps, reverse=True), name


def test_pagination_lists_each_contact_once_while_events_arrive(tmp_path: Path) -> None:
    h = Harness(tmp_path, FAST)
    rng = random.Random(3)
    h.feed(sorted(traffic(rng, T0 - 20_000, 200, "acme"), key=lambda v: json.loads(v)["timestamp"]))
    everyone = h.expected("acme", T0)
    seen: list[str] = []
    cursor = None
    n = 1000
    while True:
        h.clock += 50
        params = {"limit": ["11"], **({"cursor": [cursor]} if cursor else {})}
        items, cursor = h.page(params, "acme", h.clock)
        seen.extend(i["contact_id"] for i in items)
        # between pages: events for random contacts move stages and indices
        burst = []
        for cid in rng.sample(everyone, 15):
            n += 1
            burst.append(
                event("acme", cid, n, rng.choice(("email.click", "web.form_submit")), h.clock)
            )
        h.feed(burst)
        if cursor is None:
            break
    assert sorted(seen) == everyone, "each contact exactly once"


def test_summary_counts_equal_brute_force_and_the_rebuild_equals_the_batches(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, FAST)
    rng = random.Random(11)
    values = sorted(
        traffic(rng, T0 - 30_000, 100, "acme"), key=lambda v: json.loads(v)["timestamp"]
    )
    for i in range(0, len(values), 40):
        h.feed(values[i : i + 40])
    for at in (T0, T0 + 30_000):
        summary = h.index.summary_local("acme", range(PARTITIONS), at)
        got = {h.model.compiled.lifecycles[0].stages[s].name: n for _, s, n in summary["counts"]}
        want = Counter(evaluate(s, at, h.model.compiled).stage for s in h.states("acme"))
        assert got == dict(want), at
    before = {
        sort: h.list_all({"sort": [sort]}, "acme", T0 + 1_000) for sort in ("-index", "last_event")
    }
    counts = h.index.counts
    # a rebuild from the stored states gives the same index and counts
    h.index.begin_rebuild(range(PARTITIONS), T0)
    for key, raw in h.contacts.items():
        partition = canonical_partition(key, PARTITIONS)
        h.index.add(partition, key, StoredContact.decode(raw))
    h.index.end_rebuild()
    assert h.index.counts == counts
    for sort, items in before.items():
        assert h.list_all({"sort": [sort]}, "acme", T0 + 1_000) == items
    # an erasure removes the contact's keys and counts
    victim = ContactKey("acme", "a-007")
    request = json.dumps(
        {
            "erasure_id": "e-1",
            "tenant": "acme",
            "contact_id": "a-007",
            "requested_at": ms_to_rfc3339(T0),
        }
    ).encode()
    key = victim.encode()
    partition = canonical_partition(key, PARTITIONS)
    loaded = {key: h.contacts[key]}
    out = h.scorer.process(
        [InboundRecord(TOPOLOGY.internal.erasure_requests.name, partition, 1, key, request, T0)],
        lambda k, i: h.contacts.get(k),
        lambda k, i: None,
    )
    h.contacts.pop(key)
    h.index.apply(out.contact_writes, loaded, lambda i: partition, out.sends, out.due_updates, T0)
    assert "a-007" not in {i["contact_id"] for i in h.list_all({}, "acme", T0 + 1_000)}
    total = sum(n for _, _, n in h.index.summary_local("acme", range(PARTITIONS), T0)["counts"])
    assert total == 99


def test_state_bytes_of_skips_offsets_and_the_duplicate_window(tmp_path: Path) -> None:
    from engagement_index.core.dedupe import EMPTY, admit
    from engagement_index.stream.stored import state_bytes_of

    h = Harness(tmp_path, FAST)
    h.feed([event("acme", "w", n, "email.click", T0 - 5_000 + n) for n in range(40)])
    [raw] = h.contacts.values()
    stored = StoredContact.decode(raw)
    assert len(stored.seen) == 40
    assert state_bytes_of(raw) == stored.state_bytes
    seen = EMPTY
    for n in range(300):
        seen = admit(seen, f"id-{n}", T0 + n, 10**9) or seen
    offsets = {1: 0, 2: 127, 3: 128, 4: 2**40}
    big = StoredContact(stored.state_bytes, offsets, 12.5, seen).encode()
    assert state_bytes_of(big) == stored.state_bytes
    legacy = b"\x01" + big[1:5] + b"\x00" + stored.state_bytes  # version 1: no window
    assert state_bytes_of(legacy) == StoredContact.decode(legacy).state_bytes


def test_account_lists_are_the_members_named_by_each_contacts_latest_event(
    tmp_path: Path,
) -> None:
    """``account_id`` lists the contacts whose latest event naming an account names it
    (docs/models.md#accounts), computed here from the events; members move between
    accounts, and the filter combines with the others."""
    h = Harness(tmp_path, (ROOT / "config" / "models" / "b2b-qualification.yaml").read_text())
    rng = random.Random(14)
    kinds = ("web.form_submit", "email.click", "web.page_view", "social.share")
    values: list[bytes] = []
    member: dict[str, tuple[int, str]] = {}  # contact -> (timestamp, account) of its latest
    for n in range(600):
        cid = f"a-{rng.randrange(60):03d}"
        ts = T0 - 3_600_000 + n * 1_000
        body = json.loads(event("acme", cid, n, rng.choice(kinds), ts))
        if rng.random() < 0.7:
            account = f"acct-{rng.randrange(4)}"
            body["account_id"] = account
            member[cid] = (ts, account)
        values.append(json.dumps(body).encode())
    for i in range(0, len(values), 40):
        h.feed(values[i : i + 40])
    at = T0
    snapshots = {s.contact_id: evaluate(s, at, h.model.compiled) for s in h.states("acme")}
    for account in ("acct-0", "acct-1", "acct-2", "acct-3", "acct-9"):
        want = sorted(cid for cid, (_, a) in member.items() if a == account)
        for sort in ("contact_id", "-index", "last_event"):
            got = h.list_all({"account_id": [account], "sort": [sort]}, "acme", at, limit=4)
            assert sorted(i["contact_id"] for i in got) == want, (account, sort)
            assert {i["account_id"] for i in got} <= {account}
        engaged = sorted(c for c in want if snapshots[c].index >= 20)
        got = h.list_all({"account_id": [account], "min_index": ["20"]}, "acme", at)
        assert sorted(i["contact_id"] for i in got) == engaged, account
    # the rebuild at recovery indexes the same members
    fresh = SegmentIndex(
        tmp_path / "rebuilt.db",
        h.view,
        legacy_sources=TOPOLOGY.scoring_sources,
        stage_topic=TOPOLOGY.outbound.stage_changes.name,
        partitions=PARTITIONS,
        load=lambda partition, key: h.contacts.get(key),
        overdue=lambda partition, at: h.due.overdue(partition, at, 5_000),
    )
    fresh.begin_rebuild(range(PARTITIONS), T0)
    for key, raw in h.contacts.items():
        fresh.add(canonical_partition(key, PARTITIONS), key, StoredContact.decode(raw))
    fresh.end_rebuild()
    h.index = fresh
    for account in ("acct-0", "acct-3"):
        want = sorted(cid for cid, (_, a) in member.items() if a == account)
        got = h.list_all({"account_id": [account]}, "acme", at)
        assert sorted(i["contact_id"] for i in got) == want, account
