"""Score history (``stream/daily.py``): keys, retention, point selection, parameters, and the
worker's batch path on real RocksDB stores (no broker)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from engagement_index.core.events import ContactKey
from engagement_index.core.model import load_model
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.timestamps import MS_PER_DAY, ms_to_rfc3339, parse_timestamp_ms
from engagement_index.metrics import Metrics
from engagement_index.replay import replay
from engagement_index.settings import Settings
from engagement_index.stream.app import Worker
from engagement_index.stream.daily import (
    DailyBatch,
    Range,
    SeriesError,
    closing_day,
    day_key,
    day_of_key,
    expired,
    points,
    series_range,
    stored_day_numbers,
    stored_days,
)
from engagement_index.stream.transaction import TableTransaction
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]
MODEL = load_model(ROOT / "config" / "models" / "default.yaml")
TOPOLOGY = load_topology(ROOT / "streams" / "topology.yaml")
DAY = MS_PER_DAY
TODAY = 20_700  # 2026-09-04
NOW = TODAY * DAY + 15 * 3_600_000  # 15:00 that day: the worker's clock
KEY = ContactKey("acme", "c-1").encode()


# ------------------------------------------------------------------------------ keys
def test_day_keys_sort_by_day_and_name_their_contact_only() -> None:
    days = [-800_000, -1, 0, 1, 20_000, 2_900_000]
    keys = [day_key(KEY, d) for d in days]
    assert keys == sorted(keys), "keys sort by day, days before 1970 included"
    assert all(len(k) == len(KEY) + 5 for k in keys)
    assert [day_of_key(KEY, k) for k in keys] == days
    # a contact whose id extends c-1 with the separator: its keys share c-1's prefix
    longer = ContactKey("acme", "c-1\x1f\x80\x00\x50").encode()
    assert longer.startswith(KEY + b"\x1f")
    assert day_of_key(KEY, day_key(longer, 3)) is None
    assert day_of_key(KEY, day_key(ContactKey("acme", "c-2").encode(), 3)) is None
    assert day_of_key(longer, day_key(longer, 3)) == 3


def test_a_state_closes_the_day_of_its_clock_and_an_exact_midnight_the_day_before() -> None:
    midnight = TODAY * DAY
    assert closing_day(midnight) == TODAY - 1, "the replay at that midnight includes it"
    assert closing_day(midnight + 1) == TODAY
    assert closing_day(midnight + DAY - 1) == TODAY
    assert closing_day(-1) == -1
    assert closing_day(0) == -1


def test_retention_keeps_the_newest_day_before_the_cutoff_as_the_base() -> None:
    assert expired([1, 5, 9, 10], cutoff=9) == [1]
    assert expired([1, 5, 9, 10], cutoff=11) == [1, 5, 9]
    assert expired([1, 5, 9, 10], cutoff=1) == []
    assert expired([], cutoff=5) == []


class DayLister:
    """``list_days`` over a dict of stored days per contact; counts its calls."""

    def __init__(self, stored: dict[bytes, list[int]]) -> None:
        self.stored = stored
        self.calls: list[tuple[bytes, int | None]] = []

    def __call__(self, key: bytes, index: int, before: int | None) -> list[int]:
        self.calls.append((key, before))
        return [d for d in sorted(self.stored.get(key, [])) if before is None or d < before]


def test_a_new_day_deletes_the_days_past_retention_and_never_writes_expired_ones() -> None:
    lister = DayLister({KEY: [100, 103, 110, 111]})
    batch = DailyBatch(history_days=10)
    # the batch moved the contact from day 111 past 118 to 121: cutoff 111
    batch.put(KEY, 4, {105: b"s105", 118: b"s118", 121: b"s121"}, new_day=True)
    writes = batch.writes(lister)
    assert lister.calls == [(KEY, 111)]
    assert writes == {
        day_key(KEY, 100): (4, None),
        day_key(KEY, 103): (4, None),
        # 105 is put and expired by the same batch: never written; 110 is the base of 111
        day_key(KEY, 118): (4, b"s118"),
        day_key(KEY, 121): (4, b"s121"),
    }


def test_the_same_day_again_does_not_look_at_the_store() -> None:
    lister = DayLister({KEY: [1, 2, 3]})
    batch = DailyBatch(history_days=1)
    batch.put(KEY, 0, {3: b"s3"}, new_day=False)
    assert batch.writes(lister) == {day_key(KEY, 3): (0, b"s3")}
    assert lister.calls == []


def test_an_erasure_deletes_every_day_and_a_contact_started_after_it_keeps_only_its_own() -> None:
    other = ContactKey("acme", "c-2").encode()
    lister = DayLister({KEY: [7, 8, 9], other: [8]})
    batch = DailyBatch(history_days=400)
    batch.put(KEY, 0, {9: b"old"}, new_day=False)
    batch.erase(KEY, 1)
    batch.put(KEY, 2, {9: b"new"}, new_day=True)  # an event after the erasure
    writes = batch.writes(lister)
    assert writes == {
        day_key(KEY, 7): (1, None),
        day_key(KEY, 8): (1, None),
        day_key(KEY, 9): (2, b"new"),
    }
    assert (other, None) not in lister.calls


# ---------------------------------------------------------------------------- series
def test_series_parameters() -> None:
    first = TODAY - 30
    full = series_range({}, today=TODAY, first_day=first)
    assert (full.first, full.last, full.step) == (first, TODAY, 1), "default: all of it"
    assert len(series_range({"step": "7d"}, today=TODAY, first_day=first)) == 5
    dated = series_range(
        {"from": "2026-08-20", "to": "2026-09-01T23:59:59.999+00:00"},
        today=TODAY,
        first_day=first,
    )
    assert dated.first == parse_timestamp_ms("2026-08-20T00:00:00Z") // DAY
    assert dated.last == TODAY - 3, "a time is rounded down to its day"
    offset = series_range({"from": "2026-08-20T01:00:00+02:00"}, today=TODAY, first_day=first)
    assert offset.first == dated.first - 1, "the UTC day of the instant"
    future = series_range({"to": "2027-01-01"}, today=TODAY, first_day=first)
    assert future.last == TODAY, "no point after today's midnight"
    long = series_range({}, today=TODAY, first_day=TODAY - 5000)
    assert (len(long), long.last) == (1000, TODAY), "the default is cut to 1,000 points"
    assert len(series_range({"step": "5d"}, today=TODAY, first_day=TODAY - 5000)) == 1000
    none = series_range({}, today=TODAY, first_day=None)
    assert (none.first, none.last) == (TODAY, TODAY)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"step": "1w"}, "step"),
        ({"step": "0d"}, "step"),
        ({"step": "1.5d"}, "step"),
        ({"step": "24h"}, "step"),
        ({"step": "d"}, "step"),
        ({"from": "2026-13-01"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-09-01T10:00:00"}, "to"),  # no offset
        ({"from": "2026-09-02", "to": "2026-09-01"}, "from"),
        ({"from": "2020-01-01"}, "from"),  # more than 1,000 points
    ],
)
def test_bad_series_parameters_are_named(params: dict[str, str], parameter: str) -> None:
    with pytest.raises(SeriesError) as caught:
        series_range(params, today=TODAY, first_day=TODAY - 10)
    assert caught.value.parameter == parameter
    body = caught.value.body()
    assert body["error"] == "invalid parameter"
    assert body["parameter"] == parameter
    assert body["message"]


def _states_by_day(lines: list[bytes]) -> dict[int, Any]:
    """The contact's state closing each day with events (what the daily table keeps)."""
    by_day = {}
    for n in range(1, len(lines) + 1):
        result = replay(lines[:n], MODEL)
        [state] = result.states.values()
        by_day[closing_day(state.clock_ms)] = state
    return by_day


def event(n: int, ts: int, etype: str = "web.form_submit", contact: str = "c-1") -> bytes:
    return json.dumps(
        {
            "event_id": f"e{n}",
            "tenant": "acme",
            "contact_id": contact,
            "type": etype,
            "timestamp": ms_to_rfc3339(ts),
        }
    ).encode()


def test_a_point_is_the_state_of_the_greatest_day_before_it_and_equals_the_replay() -> None:
    start = (TODAY - 10) * DAY
    lines = [
        event(0, start + 3_600_000),
        event(1, start + 5 * 3_600_000, "email.click"),
        event(2, start + 2 * DAY),  # exactly midnight: the point at it includes the event
        event(3, start + 2 * DAY + 60_000, "commerce.purchase"),
        event(4, start + 6 * DAY + 7_000, "social.share"),
    ]
    by_day = _states_by_day(lines)
    assert sorted(by_day) == [TODAY - 10, TODAY - 9, TODAY - 8, TODAY - 4]
    wanted = Range(TODAY - 11, TODAY, 1)
    series = list(points(sorted(by_day.items()), wanted, MODEL.compiled))
    assert series[0]["at"] == ms_to_rfc3339((TODAY - 9) * DAY)
    assert len(series) == 10, "no point before the first state"
    for p in series:
        at = parse_timestamp_ms(p["at"])
        [snapshot] = replay(lines, MODEL, until_ms=at).snapshots
        assert abs(p["index"] - snapshot.index) <= 1e-9, p["at"]
        assert p["stages"] == {"stage": snapshot.lifecycles["stage"]["stage"]}
        assert p["components"].keys() == snapshot.components.keys()
    # a step and a range that starts between states
    weekly = list(points(sorted(by_day.items()), Range(TODAY - 8, TODAY, 3), MODEL.compiled))
    assert [parse_timestamp_ms(p["at"]) // DAY for p in weekly] == [TODAY - 8, TODAY - 5, TODAY - 2]


def test_stored_days_is_one_prefix_seek_in_a_rocksdb(tmp_path: Path) -> None:
    rocksdict = pytest.importorskip("rocksdict")
    db = rocksdict.Rdict(str(tmp_path / "db"), rocksdict.Options(raw_mode=True))
    longer = ContactKey("acme", "c-1\x1f\x80\x00\x50\x00").encode()
    for d in (3, 5, 9):
        db[day_key(KEY, d)] = b"s%d" % d
    db[day_key(longer, 4)] = b"other"
    db[ContactKey("acme", "c-0").encode() + b"\x1f\x80\x00\x00\x01"] = b"before"
    db[ContactKey("acme", "c-2").encode() + b"\x1f\x80\x00\x00\x01"] = b"after"
    assert list(stored_days(db, KEY, None)) == [(3, b"s3"), (5, b"s5"), (9, b"s9")]
    assert list(stored_days(db, KEY, 9)) == [(3, b"s3"), (5, b"s5")]
    assert list(stored_days(db, longer, None)) == [(4, b"other")]
    db.close()


def test_one_cursor_finds_the_days_of_every_contact_in_any_order(tmp_path: Path) -> None:
    rocksdict = pytest.importorskip("rocksdict")
    db = rocksdict.Rdict(str(tmp_path / "db"), rocksdict.Options(raw_mode=True))
    # ids that extend one another (their day keys share prefixes), one without days
    keys = [ContactKey("acme", name).encode() for name in ("c", "c-1", "c-1\x1f", "c-10", "d")]
    days = {keys[0]: [2, 7], keys[1]: [1, 3, 8], keys[2]: [5], keys[3]: [], keys[4]: [4, 6, 9]}
    for key, stored in days.items():
        for d in stored:
            db[day_key(key, d)] = b"v"
    cursor = db.iter()
    for key in [*reversed(keys), *keys, keys[1], keys[4], keys[1]]:
        assert stored_day_numbers(cursor, key, None) == days[key]
        assert stored_day_numbers(cursor, key, 7) == [d for d in days[key] if d < 7]
        assert stored_day_numbers(cursor, key, None) == [d for d, _ in stored_days(db, key, None)]
    del cursor
    db.close()


# ------------------------------------------------------------ the worker, no broker
class Message(SimpleNamespace):
    """What the consumer hands ``process_batch``."""


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Worker:
    """A worker whose sends and changelog records go nowhere; its stores are real."""
    settings = Settings(data_dir=tmp_path, api_auth=False, history_days=5)
    made = Worker(settings, TOPOLOGY, MODEL, Metrics(CollectorRegistry()), clock_ms=lambda: NOW)

    async def nothing(*args: Any) -> None:
        return None

    monkeypatch.setattr(made, "_send_all", nothing)
    monkeypatch.setattr(TableTransaction, "send_changelog", nothing)
    monkeypatch.setattr(made, "_aio_producer", lambda: None)
    return made


def feed(worker: Worker, values: list[bytes], offset: int = 0, topic: str = "events.web") -> None:
    partition = canonical_partition(KEY, TOPOLOGY.scoring_partitions)
    messages = [
        Message(
            topic=topic,
            partition=partition,
            offset=offset + i,
            key=KEY,
            value=value,
            timestamp=NOW / 1000,
        )
        for i, value in enumerate(values)
    ]
    asyncio.run(worker.process_batch(messages))


def days_in_store(worker: Worker, key: bytes = KEY) -> list[int]:
    store: Any = worker.daily.data
    db = store._db_for_partition(canonical_partition(key, TOPOLOGY.scoring_partitions))
    return [d for d, _ in stored_days(db, key, None)]


def test_one_batch_over_several_days_stores_each_day_and_the_api_equals_the_replay(
    worker: Worker,
) -> None:
    start = (TODAY - 4) * DAY
    lines = [
        event(0, start + 3_600_000, "email.click"),
        event(1, start + 2 * 3_600_000, "web.form_submit"),
        event(2, start + DAY),  # midnight
        event(3, start + 2 * DAY + 1, "commerce.purchase"),
        event(4, start + 3 * DAY + 50_000, "social.share"),
    ]
    feed(worker, lines)  # one batch: the clock passes three midnights inside it
    # the event at midnight closes the day before it, as the first two do
    assert days_in_store(worker) == [TODAY - 4, TODAY - 2, TODAY - 1]
    body, status = worker.history_view(ContactKey("acme", "c-1"), KEY, {})
    assert status == 200, body
    assert (body["from"], body["to"], body["step"]) == ("2026-09-01", "2026-09-04", "1d")
    assert len(body["points"]) == 4
    for p in body["points"]:
        [snapshot] = replay(lines, MODEL, until_ms=parse_timestamp_ms(p["at"])).snapshots
        assert abs(p["index"] - snapshot.index) <= 1e-9, p["at"]
        assert p["stages"]["stage"] == snapshot.lifecycles["stage"]["stage"]
    # a duplicate changes no state and writes no day
    before = days_in_store(worker)
    feed(worker, [lines[-1]], offset=len(lines))
    assert days_in_store(worker) == before


def test_retention_on_real_stores(worker: Worker) -> None:
    start = (TODAY - 12) * DAY  # history_days=5 in the fixture
    for n in range(12):
        feed(worker, [event(n, start + n * DAY + 3_600_000)], offset=n)
    # the last day is TODAY - 1, its cutoff TODAY - 6: TODAY - 7 is kept as the base
    assert days_in_store(worker) == list(range(TODAY - 7, TODAY))
    body, status = worker.history_view(ContactKey("acme", "c-1"), KEY, {})
    assert status == 200
    assert body["from"] == ms_to_rfc3339((TODAY - 6) * DAY)[:10], "points from the retained days"


def test_an_erasure_deletes_every_day_key_in_its_batch(worker: Worker) -> None:
    start = (TODAY - 3) * DAY
    other = ContactKey("acme", "c-1\x1f").encode()  # shares the prefix of c-1's day keys
    feed(worker, [event(n, start + n * DAY + 1000) for n in range(3)])
    partition = canonical_partition(other, TOPOLOGY.scoring_partitions)
    asyncio.run(
        worker.process_batch(
            [
                Message(
                    topic="events.web",
                    partition=partition,
                    offset=0,
                    key=other,
                    value=event(9, start + 1000, contact="c-1\x1f"),
                    timestamp=NOW / 1000,
                )
            ]
        )
    )
    assert days_in_store(worker) == [TODAY - 3, TODAY - 2, TODAY - 1]
    request = json.dumps(
        {
            "erasure_id": "x-1",
            "tenant": "acme",
            "contact_id": "c-1",
            "requested_at": ms_to_rfc3339(NOW),
        }
    ).encode()
    feed(worker, [request], topic=TOPOLOGY.internal.erasure_requests.name)
    assert days_in_store(worker) == []
    assert days_in_store(worker, other) == [TODAY - 3], "the other contact keeps its day"
    _, status = worker.history_view(ContactKey("acme", "c-1"), KEY, {})
    assert status == 404


def test_a_redelivered_record_writes_its_day_again(worker: Worker) -> None:
    feed(worker, [event(0, (TODAY - 1) * DAY + 5)])
    store: Any = worker.daily.data
    db = store._db_for_partition(canonical_partition(KEY, TOPOLOGY.scoring_partitions))
    del db[day_key(KEY, TODAY - 1)]  # as if its changelog record had been lost with the disk
    feed(worker, [event(0, (TODAY - 1) * DAY + 5)])  # the same offset again
    assert days_in_store(worker) == [TODAY - 1]


def test_history_view_answers(worker: Worker) -> None:
    contact = ContactKey("acme", "c-1")
    body, status = worker.history_view(contact, KEY, {})
    assert status == 404
    assert body["error"] == "contact not found"
    feed(worker, [event(0, (TODAY - 2) * DAY + 5)])
    body, status = worker.history_view(contact, KEY, {"step": "2h"})
    assert status == 400
    assert body["parameter"] == "step"
    body, status = worker.history_view(contact, KEY, {"from": "2026-01-01", "to": "2026-01-05"})
    assert (status, body["points"]) == (200, []), "midnights before the first state: no point"
    body, status = worker.history_view(contact, KEY, {"from": "2026-09-01"})
    assert status == 200
    first, _ = body["points"]
    assert first["at"] == "2026-09-03T00:00:00.000Z", "the midnight after the first event"
    assert body["points"][0]["stages"] == {"stage": "nurture"}


def test_a_contact_day_is_the_contact_key_plus_5_bytes_and_its_state(worker: Worker) -> None:
    """The figure of docs/operations.md (default model: 142 bytes of state)."""
    cid = "0123456789abcdef0123456789abcdef0123"  # 36 characters, as a UUID
    key = ContactKey("acme", cid).encode()
    partition = canonical_partition(key, TOPOLOGY.scoring_partitions)
    value = event(0, (TODAY - 1) * DAY + 5, contact=cid)
    message = Message(
        topic="events.web",
        partition=partition,
        offset=0,
        key=key,
        value=value,
        timestamp=NOW / 1000,
    )
    asyncio.run(worker.process_batch([message]))
    store: Any = worker.daily.data
    [(day_stored, state)] = list(stored_days(store._db_for_partition(partition), key, None))
    assert day_stored == TODAY - 1
    assert (len(day_key(key, day_stored)), len(state)) == (46, 142)
