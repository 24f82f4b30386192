"""Duplicate event ids are recognised by time (core.dedupe), not by a count."""

from __future__ import annotations

from engagement_index.core.dedupe import (
    DEFAULT_WINDOW_MS,
    EMPTY,
    SeenIds,
    admit,
    decode_seen,
    encode_seen,
)

T0 = 1_793_527_200_000
HOUR = 3_600_000


def _admit(seen: SeenIds, event_id: str, at: int) -> SeenIds:
    new = admit(seen, event_id, at, DEFAULT_WINDOW_MS)
    assert new is not None, event_id
    return new


def test_a_copy_is_a_duplicate_however_many_events_came_between() -> None:
    seen = _admit(EMPTY, "orig", T0)
    for i in range(1000):
        seen = _admit(seen, f"other-{i}", T0 + i * 60_000)
    assert admit(seen, "orig", T0 + 71 * HOUR, DEFAULT_WINDOW_MS) is None
    assert admit(seen, "orig", T0 + 72 * HOUR, DEFAULT_WINDOW_MS) is None  # the window's edge


def test_a_copy_after_the_window_counts_again_and_is_the_new_reference() -> None:
    seen = _admit(EMPTY, "orig", T0)
    later = _admit(seen, "orig", T0 + 72 * HOUR + 1)
    assert len(later) == 1, "the expired copy is replaced, not kept twice"
    assert admit(later, "orig", T0 + 100 * HOUR, DEFAULT_WINDOW_MS) is None
    assert admit(later, "orig", T0 + 144 * HOUR + 2, DEFAULT_WINDOW_MS) is not None


def test_the_window_keeps_only_ids_of_its_time() -> None:
    seen = EMPTY
    for i in range(300):
        seen = _admit(seen, f"e{i}", T0 + i * HOUR)  # one an hour
    assert len(seen) == 73, "72 h back from the newest, both ends included"
    assert admit(seen, "e0", T0 + 299 * HOUR, DEFAULT_WINDOW_MS) is not None
    assert admit(seen, "e227", T0 + 299 * HOUR, DEFAULT_WINDOW_MS) is None


def test_an_out_of_order_arrival_is_still_judged_by_its_own_time() -> None:
    seen = _admit(EMPTY, "late", T0 + 10 * HOUR)
    seen = _admit(seen, "early", T0)  # arrival times are not monotonic across producers
    assert admit(seen, "late", T0 + 5 * HOUR, DEFAULT_WINDOW_MS) is None
    assert admit(seen, "early", T0 + 73 * HOUR, DEFAULT_WINDOW_MS) is not None


def test_a_window_of_zero_still_drops_copies_of_the_same_instant() -> None:
    seen = admit(EMPTY, "x", T0, 0)
    assert seen is not None
    assert admit(seen, "x", T0, 0) is None
    assert admit(seen, "x", T0 + 1, 0) is not None


def test_round_trip() -> None:
    seen = EMPTY
    for i in range(20):
        seen = _admit(seen, f"id-{i}", T0 + i)
    data = b"prefix" + encode_seen(seen) + b"rest"
    decoded, end = decode_seen(data, 6)
    assert decoded == seen
    assert data[end:] == b"rest"
    assert len(encode_seen(seen)) == 4 + 20 * 15


def test_a_contact_keeps_at_most_max_ids() -> None:
    seen = EMPTY
    for i in range(50):
        new = admit(seen, f"e{i}", T0 + i, DEFAULT_WINDOW_MS, max_ids=10)
        assert new is not None
        seen = new
    assert len(seen) == 10
    assert admit(seen, "e49", T0 + 60, DEFAULT_WINDOW_MS, max_ids=10) is None
    assert admit(seen, "e0", T0 + 60, DEFAULT_WINDOW_MS, max_ids=10) is not None  # dropped


def test_an_applied_record_older_than_the_window_counts_as_its_start() -> None:
    # a producer that stamps records with the event time (a backfill): its retry still drops
    seen = _admit(EMPTY, "new", T0 + 10 * 24 * HOUR)
    seen = _admit(seen, "old", T0)
    assert admit(seen, "old", T0, DEFAULT_WINDOW_MS) is None
    assert admit(seen, "old", T0 + 10 * 24 * HOUR + 1, DEFAULT_WINDOW_MS) is not None
