"""The worker's batch scoring with the compiled kernel gives the Python core's outcome, exactly.

``BatchScorer`` scores with the kernel where it is built (``engagement_index.kernel``) and with
the Python core under ``ENGAGEMENT_INDEX_KERNEL=python``. Here both score the same records,
batch after batch with their own tables, and every part of each ``BatchOutcome`` must be
equal: the records sent (transitions, snapshots, re-keys, dead letters) byte for byte, the
stored values, histories, daily states and due times. On every shipped model, with the
benchmark workload (90 days, so the daily table closes days within batches), re-delivered
offsets, repeated event ids, decay wake-ups and bad records.
"""

from __future__ import annotations

import gc
import random
import struct
from collections import Counter
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from bench import workload
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from engagement_index.core.events import ContactKey, parse_event_fields
from engagement_index.core.model import ScoringModel, load_model
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.state import peek_state
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.errors import EventRejected
from engagement_index.kernel import KERNEL_ENV, kernel_available, kernel_for
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.daily import day_of_key
from engagement_index.stream.scoring import (
    BatchOutcome,
    BatchScorer,
    InboundRecord,
    _Batch,
    encode_tick,
)
from engagement_index.stream.segment_query import ModelView
from engagement_index.stream.segments import SegmentIndex
from engagement_index.stream.stored import StoredContact
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]
MODEL_FILES = sorted((ROOT / "config" / "models").glob("*.yaml"))
TOPOLOGY = load_topology(ROOT / "streams" / "topology.yaml")
END_MS = 1_790_000_000_000
NOW = END_MS + 60_000


class Tables:
    """The contact, history and daily tables as dicts, written from each outcome."""

    def __init__(self) -> None:
        self.contacts: dict[bytes, bytes] = {}
        self.history: dict[bytes, bytes] = {}
        self.daily: dict[bytes, bytes] = {}

    def apply(self, out: BatchOutcome) -> None:
        for table, writes in (
            (self.contacts, out.contact_writes),
            (self.history, out.history_writes),
            (self.daily, out.daily_writes),
        ):
            for key, (_, value) in writes.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value

    def list_days(self, key: bytes, _index: int, before: int | None) -> list[int]:
        """The contact's stored days of the daily table (before ``before``), as the worker's
        prefix seek gives them."""
        days = (day_of_key(key, k) for k in self.daily)
        return sorted(d for d in days if d is not None and (before is None or d < before))


def _scorer(model_file: Path, history_days: int = 400) -> BatchScorer:
    return BatchScorer(
        model=load_model(model_file),
        topology=TOPOLOGY,
        settings=Settings(history_days=history_days),
        metrics=Metrics(CollectorRegistry()),
        clock_ms=lambda: NOW,
    )


def _records(model_file: Path) -> list[list[InboundRecord]]:
    """Batches of the workload's records, with re-deliveries, repeats, bad records and
    erasures; each event on the inbound topic of its channel (so a contact's stored value
    holds the offsets of several sources)."""
    model = load_model(model_file)
    types = sorted(model.compiled.rules)
    spec = workload.WorkloadSpec(events=3_000, contacts=150, seed=40, end_ms=END_MS)
    sources = TOPOLOGY.scoring_sources[:5]
    partitions = TOPOLOGY.scoring_partitions
    rng = random.Random(5)
    records: list[InboundRecord] = []
    offsets: dict[tuple[str, int], int] = {}
    window_ms = int(Settings().dedupe_window_seconds * 1000)
    for event in workload.generate(spec):
        if event["type"] not in model.compiled.rules:
            event["type"] = types[sum(str(event["type"]).encode()) % len(types)]
        key = ContactKey(str(event["tenant"]), str(event["contact_id"])).encode()
        value = orjson.dumps(event)
        partition = canonical_partition(key, partitions)
        topic = sources[sum(str(event["type"]).encode()) % len(sources)]
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        records.append(InboundRecord(topic, partition, offset, key, value, NOW - 1_000))
        draw = rng.random()
        if draw < 0.02:  # the same event id again, later, within the window
            records.append(records[-1]._replace(offset=offset + 1_000_000))
        elif draw < 0.03:  # the same event id again, after the window
            later = NOW + window_ms + 1_000
            records.append(records[-1]._replace(offset=offset + 1_000_000, timestamp_ms=later))
        elif draw < 0.035:  # an erasure of the contact, then its events start again
            request = {"erasure_id": f"e-{len(records)}", "tenant": str(event["tenant"]),
                       "contact_id": str(event["contact_id"]),
                       "requested_at": "2026-12-01T00:00:00.000Z"}  # fmt: skip
            erasures = TOPOLOGY.internal.erasure_requests.name
            records.append(InboundRecord(erasures, partition, 0, key, orjson.dumps(request), NOW))
    records.insert(100, records[50])  # a re-delivered offset
    records.insert(200, records[10]._replace(value=b"{not json", offset=2_000_000))
    return [records[i : i + 250] for i in range(0, len(records), 250)]


def _ticks(out: BatchOutcome, until: int) -> list[InboundRecord]:
    """A wake-up for every contact of ``out`` with a due time by ``until``."""
    topic = TOPOLOGY.internal.ticks.name
    return [
        InboundRecord(topic, partition, 0, key, encode_tick(due), NOW)
        for key, (partition, due) in sorted(out.due_updates.items())
        if due is not None and due <= until
    ]


def _metric_samples(scorer: BatchScorer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The scorer's counters (events by outcome, transitions, snapshots, dead letters)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in scorer.metrics.registry.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }


def _score(
    model_file: Path,
    *,
    whole_batches: bool = True,
    use: Counter[str] | None = None,
    history_days: int = 400,
) -> tuple[list[BatchOutcome], BatchScorer]:
    """The outcomes of ``model_file``'s workload, batch after batch, and the scorer. The
    kernel (where it is used) scores whole batches unless ``whole_batches`` is False (then
    one record at a time); ``use`` counts its runs and the contacts it handed over;
    ``history_days`` is the daily table's retention (the workload spans 90 days)."""
    scorer = _scorer(model_file, history_days)
    if not whole_batches:
        scorer._batch_kernel = None
    if use is not None:
        run, release = scorer._run_kernel, scorer._entry_of_kernel

        def counted_run(*args: Any) -> int:
            use["runs"] += 1
            return run(*args)

        def counted_release(*args: Any) -> Any:
            use["released"] += 1
            return release(*args)

        patched = cast(Any, scorer)
        patched._run_kernel, patched._entry_of_kernel = counted_run, counted_release
    tables = Tables()
    outcomes = []
    ticks: list[InboundRecord] = []
    for batch in _records(model_file):
        records = ticks + batch
        out = scorer.process(
            records,
            lambda key, _i: tables.contacts.get(key),
            lambda key, _i: tables.history.get(key),
            tables.list_days,
        )
        tables.apply(out)
        outcomes.append(out)
        last = max(r.timestamp_ms for r in batch)
        ticks = _ticks(out, last + 7 * 86_400_000)
    return outcomes, scorer


def _run(model_file: Path) -> list[BatchOutcome]:
    return _score(model_file)[0]


def _day_deletes(outcomes: list[BatchOutcome]) -> int:
    return sum(v is None for o in outcomes for _, v in o.daily_writes.values())


def _assert_same_outcomes(fast: list[BatchOutcome], slow: list[BatchOutcome]) -> None:
    assert len(fast) == len(slow)
    for n, (a, b) in enumerate(zip(fast, slow, strict=True)):
        assert a.sends == b.sends, f"batch {n}: sends"
        assert a.contact_writes == b.contact_writes, f"batch {n}: contact writes"
        assert a.history_writes == b.history_writes, f"batch {n}: history"
        assert a.daily_writes == b.daily_writes, f"batch {n}: daily"
        assert a.due_updates == b.due_updates, f"batch {n}: due times"
        assert a.stage_moves == b.stage_moves, f"batch {n}: stage moves"
        assert a.latency_from_ms == b.latency_from_ms, f"batch {n}: arrival times"


@pytest.mark.parametrize("history_days", [400, 20])
@pytest.mark.parametrize("model_file", MODEL_FILES, ids=[p.stem for p in MODEL_FILES])
def test_the_kernel_and_the_python_core_give_the_same_batch_outcomes(
    model_file: Path, history_days: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the kernel scoring whole batches, one record at a time, and not at all; with the
    daily table's retention beyond the workload's 90 days and within them (deletes)."""
    assert kernel_available(), "the kernel is built by make setup"
    use: Counter[str] = Counter()
    fast, fast_scorer = _score(model_file, use=use, history_days=history_days)
    one_by_one, one_by_one_scorer = _score(
        model_file, whole_batches=False, history_days=history_days
    )
    monkeypatch.setenv(KERNEL_ENV, "python")
    assert not kernel_available()
    slow, slow_scorer = _score(model_file, history_days=history_days)
    _assert_same_outcomes(fast, slow)
    _assert_same_outcomes(one_by_one, slow)
    assert _metric_samples(fast_scorer) == _metric_samples(slow_scorer)
    assert _metric_samples(one_by_one_scorer) == _metric_samples(slow_scorer)
    if fast_scorer._members is None:  # the whole-batch kernel scores models without accounts
        # it stopped at records it does not take and handed contacts it held to the Python
        # side (re-deliveries, erasures, wake-ups of contacts it scored in the same batch)
        assert use["runs"] > len(fast), use
        assert use["released"] > 0, use
    assert sum(len(o.daily_writes) for o in fast) > 0
    if history_days < 90:  # the retention deleted days (erasures delete days at any setting)
        assert _day_deletes(fast) > _day_deletes(_run(model_file))
    scores = TOPOLOGY.outbound.scores.name
    # one snapshot per contact per batch (tests/unit/stream/test_snapshots.py)
    for n, o in enumerate(fast):
        keys = [r.key for r in o.sends if r.topic == scores and r.value is not None]
        assert len(keys) == len(set(keys)), f"batch {n}: one snapshot per contact"
    assert any(r.topic == TOPOLOGY.outbound.dead_letters.name for o in fast for r in o.sends)
    assert any(r.topic == TOPOLOGY.outbound.erasures.name for o in fast for r in o.sends)
    assert sum(r.topic == TOPOLOGY.outbound.stage_changes.name for o in fast for r in o.sends)


def _written_values(model_file: Path) -> set[tuple[bytes, bytes]]:
    """Every (key, table value) the workload writes under ``model_file``, and one value that
    is not a table value."""
    values = {
        (key, value)
        for out in _run(model_file)
        for key, (_, value) in out.contact_writes.items()
        if value is not None
    }
    values.add((b"north\x1fc-bad", b"\x02garbage"))
    return values


def _segment_index(path: Path, model: ScoringModel) -> SegmentIndex:
    """A segment index of ``model`` at ``path`` (the kernel's where the environment allows)."""
    return SegmentIndex(
        path,
        ModelView.of(model),
        legacy_sources=TOPOLOGY.scoring_sources,
        stage_topic=TOPOLOGY.outbound.stage_changes.name,
        partitions=TOPOLOGY.scoring_partitions,
        load=lambda _partition, _key: None,
        overdue=lambda _partition, _at: [],
    )


@pytest.mark.parametrize("model_file", MODEL_FILES, ids=[p.stem for p in MODEL_FILES])
def test_the_kernel_projects_table_values_as_the_python_side_does(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SegmentIndex.project`` (stages, index at the clock, last event) of every value the
    workload writes: the kernel's (``Kernel.project``) against the Python side's, the index
    compared through its bytes; values the kernel does not take (accounts) agree too."""
    assert kernel_available(), "the kernel is built by make setup"
    values = _written_values(model_file)
    model = load_model(model_file)
    fast = _segment_index(tmp_path / "kernel.db", model)
    kernel = kernel_for(model.compiled)
    assert kernel is not None
    monkeypatch.setenv(KERNEL_ENV, "python")
    slow = _segment_index(tmp_path / "python.db", model)
    taken = 0
    for key, raw in sorted(values):
        a, b = fast.project(raw, key), slow.project(raw, key)
        assert a == b, key
        if a is not None and b is not None:
            assert struct.pack("<d", a.index) == struct.pack("<d", b.index), key
        taken += kernel.project(raw) is not None
    assert len(values) > 100
    if model.accounts is None:
        assert taken == len(values) - 1, "the kernel takes every version 2 value"


@pytest.mark.parametrize("model_file", MODEL_FILES, ids=[p.stem for p in MODEL_FILES])
def test_the_kernel_reads_recovered_values_as_the_python_side_does(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the recovery's rebuild reads of every value the workload writes, under keys of
    every partition count: the kernel's (``Kernel.recover``: partition, due time, projection)
    against the Python side's (``canonical_partition``, ``peek_state``,
    ``SegmentIndex.project``), the index through its bytes; the values it does not take are
    those ``project`` does not take."""
    assert kernel_available(), "the kernel is built by make setup"
    values = _written_values(model_file)
    model = load_model(model_file)
    kernel = kernel_for(model.compiled)
    assert kernel is not None
    monkeypatch.setenv(KERNEL_ENV, "python")
    slow = _segment_index(tmp_path / "python.db", model)
    taken = 0
    for n, (key, raw) in enumerate(sorted(values)):
        partitions = 1 + n % 13
        got = kernel.recover(key, raw, partitions)
        assert (got is None) == (kernel.project(raw) is None), key
        if got is None:
            continue
        taken += 1
        home, due_ms, stages, index, last = got
        projection = slow.project(raw, key)
        assert projection is not None
        stored = StoredContact.decode(raw, TOPOLOGY.scoring_sources)
        assert home == canonical_partition(key, partitions), key
        assert due_ms == peek_state(stored.state_bytes)[0], key
        assert (stages, last) == (projection.stages, projection.last_event_ms), key
        assert struct.pack("<d", index) == struct.pack("<d", projection.index), key
    assert len(values) > 100
    if model.accounts is None:
        assert taken == len(values) - 1, "the kernel takes every version 2 value"
    with pytest.raises(ValueError, match="at least 1"):
        kernel.recover(b"k", b"", 0)


def _index_contents(index: SegmentIndex) -> tuple[list[bytes], dict[int, dict[str, Any]]]:
    """Every key of ``index``'s database, and its stage counts (as dicts: a ``Counter``
    compares a zero count equal to none)."""
    keys = cast(list[bytes], list(index._open().keys()))
    counts = {
        partition: {tenant: dict(counter) for tenant, counter in tenants.items()}
        for partition, tenants in index.counts.items()
    }
    return keys, counts


@pytest.mark.parametrize("model_file", MODEL_FILES, ids=[p.stem for p in MODEL_FILES])
def test_the_kernel_keeps_the_segment_index_as_the_python_side_does(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SegmentIndex.apply`` over every batch the workload writes (new contacts, stage
    moves, erasures, re-deliveries), with values the kernel does not take mixed in (not a
    table value, before and after; a key without a separator): the index keys and the stage
    counts after each batch, with the kernel (``Kernel.index_changes``) and without."""
    assert kernel_available(), "the kernel is built by make setup"
    model = load_model(model_file)
    outcomes = _run(model_file)
    fast = _segment_index(tmp_path / "kernel.db", model)
    assert fast._kernel is not None
    monkeypatch.setenv(KERNEL_ENV, "python")
    slow = _segment_index(tmp_path / "python.db", model)
    partitions = TOPOLOGY.scoring_partitions
    for index in (fast, slow):
        index.begin_rebuild(range(partitions), NOW)
        index.end_rebuild()
    table: dict[bytes, bytes] = {}
    garbage = b"\x02garbage"
    moved = 0
    for n, out in enumerate(outcomes):
        writes = {key: value for key, (_, value) in sorted(out.contact_writes.items())}
        if n % 3 == 1:  # a value nothing takes, then a real one under the same key
            writes[b"north\x1fc-bad"] = garbage if n % 2 else table.get(b"north\x1fc-ok")
            writes[b"no-separator"] = table.get(next(iter(table))) if table else None
        loaded = {key: table.get(key) for key in writes}
        keys = list(writes)
        positions = {key: (position, writes[key]) for position, key in enumerate(keys)}
        placed = [canonical_partition(key, partitions) for key in keys]
        for index in (fast, slow):
            index.apply(positions, loaded, placed.__getitem__, (), {}, NOW)
        assert _index_contents(fast) == _index_contents(slow), f"batch {n}"
        moved += sum(
            1
            for key in keys
            if loaded[key] is not None
            and writes[key] is not None
            and (a := slow.project(loaded[key], key)) is not None
            and (b := slow.project(writes[key], key)) is not None
            and a.stages != b.stages
        )
        for key, value in writes.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        if n == 0:
            table[b"north\x1fc-ok"] = next(v for k, v in table.items() if b"\x1f" in k)
    assert len(_index_contents(fast)[0]) > 100
    assert moved > 0, "some contact moved between stages"


ROUTE_SETTINGS = Settings(max_record_bytes=1024, max_future_seconds=300, max_age_days=400)
_AGE_MS = 400 * 86_400_000
_FUTURE_MS = 300_000


def _python_route(
    model: ScoringModel, value: bytes, key: bytes | None, partition: int
) -> tuple[str, str, str, str, int] | None:
    """The Python side's checks of a record before it is scored (``BatchScorer._process_one``
    up to the kernel call), written out: the fields if it is scored as it stands."""
    if key is None or len(value) > ROUTE_SETTINGS.max_record_bytes:
        return None
    try:
        fields = parse_event_fields(value, max_bytes=ROUTE_SETTINGS.max_record_bytes)
    except EventRejected:
        return None
    if fields.type not in model.compiled.rules:
        return None
    if not NOW - _AGE_MS <= fields.timestamp_ms <= NOW + _FUTURE_MS:
        return None
    own = ContactKey(fields.tenant, fields.contact_id).encode()
    if own != key or canonical_partition(own, TOPOLOGY.scoring_partitions) != partition:
        return None
    return fields.event_id, fields.tenant, fields.contact_id, fields.type, fields.timestamp_ms


@pytest.fixture(scope="module")
def route_scorer() -> tuple[ScoringModel, Any, Any]:
    """The default model, its kernel's ``StoredScorer.route`` under :data:`ROUTE_SETTINGS`,
    and the kernel."""
    model = load_model(ROOT / "config" / "models" / "default.yaml")
    scorer = BatchScorer(
        model=model,
        topology=TOPOLOGY,
        settings=ROUTE_SETTINGS,
        metrics=Metrics(CollectorRegistry()),
        clock_ms=lambda: NOW,
    )
    assert scorer._route is not None, "the kernel is built by make setup"
    return model, scorer._route, kernel_for(model.compiled)


_EDGES = [
    -_AGE_MS - 1,
    -_AGE_MS,
    -_AGE_MS + 1,
    -1,
    0,
    1,
    _FUTURE_MS - 1,
    _FUTURE_MS,
    _FUTURE_MS + 1,
]


@settings(max_examples=500, deadline=None)
@given(
    tenant=st.sampled_from(["north", "t-1", "bad tenant", ""]),
    contact=st.text(min_size=0, max_size=20),
    event_type=st.sampled_from(["email.open", "web.page_view", "commerce.purchase", "no.such"]),
    offset_ms=st.one_of(st.sampled_from(_EDGES), st.integers(-(2**45), 2**45)),
    padding=st.sampled_from([0, 10, 900, 1100]),
    key_kind=st.sampled_from(["own", "own", "none", "other", "longer", "separator"]),
    placed=st.sampled_from(["home", "home", "other"]),
)
def test_route_takes_exactly_the_records_the_python_side_scores_as_they_stand(
    route_scorer: tuple[ScoringModel, Any, Any],
    tenant: str,
    contact: str,
    event_type: str,
    offset_ms: int,
    padding: int,
    key_kind: str,
    placed: str,
) -> None:
    """``StoredScorer.route`` against the Python side's checks (:func:`_python_route`):
    records at the time window's edges, too long, of types the model does not score, keyed
    or placed elsewhere, invalid. What it takes, the Python side takes with the same fields;
    it leaves to the Python side only what the Python side would refuse, and values the
    kernel's decode does not take (``Kernel.event_fields``)."""
    model, route, kernel = route_scorer
    event: dict[str, Any] = {
        "event_id": f"e-{offset_ms}",
        "tenant": tenant,
        "contact_id": contact,
        "type": event_type,
        "timestamp": ms_to_rfc3339(max(-62_135_596_800_000, NOW + offset_ms)),
    }
    if padding:
        event["properties"] = {"note": "x" * padding}
    value = orjson.dumps(event)
    own = tenant.encode() + b"\x1f" + contact.encode("utf-8", "surrogatepass")
    keys = {"own": own, "none": None, "other": b"north\x1fsomeone", "longer": own + b"!"}
    keys["separator"] = own.replace(b"\x1f", b"\x1e", 1)  # another byte in its place
    key = keys[key_kind]
    home = canonical_partition(key or b"", TOPOLOGY.scoring_partitions)
    partition = home if placed == "home" else (home + 1) % TOPOLOGY.scoring_partitions
    got = route(value, key, partition, NOW)
    expected = _python_route(model, value, key, partition)
    if got is None and expected is not None:
        assert kernel.event_fields(value) is None, "left a record the kernel's decode takes"
    else:
        assert got == expected


def test_route_takes_a_plain_event(route_scorer: tuple[ScoringModel, Any, Any]) -> None:
    """The common case is the kernel's: an event keyed and placed as its contact."""
    model, route, _ = route_scorer
    value = orjson.dumps({"event_id": "e-1", "tenant": "north", "contact_id": "c-1",
                          "type": "email.open", "timestamp": ms_to_rfc3339(NOW - 5)})  # fmt: skip
    key = b"north\x1fc-1"
    home = canonical_partition(key, TOPOLOGY.scoring_partitions)
    expected = ("e-1", "north", "c-1", "email.open", NOW - 5)
    assert route(value, key, home, NOW) == expected == _python_route(model, value, key, home)


@pytest.fixture(scope="module")
def taken_value() -> tuple[Any, bytes]:
    """The default model's kernel and a table value it takes."""
    model_file = ROOT / "config" / "models" / "default.yaml"
    kernel = kernel_for(load_model(model_file).compiled)
    assert kernel is not None
    for out in _run(model_file):
        for _, value in out.contact_writes.values():
            if value is not None and kernel.project(value) is not None:
                return kernel, value
    raise AssertionError("no value the kernel takes")


@settings(max_examples=400, deadline=None)
@given(key=st.binary(max_size=80), partitions=st.integers(1, 1 << 16))
def test_the_kernel_places_keys_as_canonical_partition(
    taken_value: tuple[Any, bytes], key: bytes, partitions: int
) -> None:
    """The kernel's murmur2 (``Kernel.recover``'s partition) against the Python core's, for
    any key bytes and partition count."""
    kernel, raw = taken_value
    got = kernel.recover(key, raw, partitions)
    assert got is not None
    assert got[0] == canonical_partition(key, partitions)


def test_a_scored_batch_leaves_nothing_behind() -> None:
    """The whole-batch kernel refers to its batch (the alias check reads the batch's aliases)
    and the batch to it; the garbage collector cannot follow references held in Rust, so the
    scorer must drop the pair itself once the batch is scored, or every batch stays in memory."""
    assert kernel_available(), "the kernel is built by make setup"
    model_file = ROOT / "config" / "models" / "default.yaml"
    scorer = _scorer(model_file)
    assert scorer._batch_kernel is not None
    tables = Tables()
    for batch in _records(model_file)[:4]:
        out = scorer.process(
            batch,
            lambda key, _i: tables.contacts.get(key),
            lambda key, _i: tables.history.get(key),
        )
        tables.apply(out)
    gc.collect()
    left = [o for o in gc.get_objects() if isinstance(o, _Batch)]
    assert left == [], f"{len(left)} batches still in memory"


def test_a_failed_table_read_fails_one_record_as_without_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A contact whose stored value cannot be read: its records are dead-lettered (an internal
    error) and the rest of the batch is scored, with the kernel on whole batches exactly as
    with the Python core (the kernel's run leaves the record to the Python side)."""
    assert kernel_available(), "the kernel is built by make setup"
    model_file = ROOT / "config" / "models" / "default.yaml"
    batch = _records(model_file)[0]
    broken = next(r.key for r in batch if r.key is not None)

    def score() -> BatchOutcome:
        def load(key: bytes, _index: int) -> bytes | None:
            if key == broken:
                raise OSError("the disk went away")
            return None

        return _scorer(model_file).process(batch, load, lambda _key, _i: None)

    fast = score()
    monkeypatch.setenv(KERNEL_ENV, "python")
    slow = score()
    _assert_same_outcomes([fast], [slow])
    dead = [r for r in fast.sends if r.topic == TOPOLOGY.outbound.dead_letters.name]
    assert dead, "the unreadable contact's records are dead letters"
    assert all(r.key is not None for r in dead)
    assert len(fast.contact_writes) > 1
