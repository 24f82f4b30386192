"""Duplicates recognised by arrival time, the replay against the reference.

The rule (docs/scoring.md, Duplicates): a record whose (tenant, contact_id, event_id) was
applied is ignored when the applied copy arrived at most W (72 h) before the contact's newest
arrival; otherwise it is applied again and becomes the new reference. Without an arrival
time, the replay takes the largest event timestamp read so far.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from engagement_index.core.model import load_model
from engagement_index.replay import Replayer
from tests.reference import engagement as ref
from tests.reference.compare import snapshot_mismatches, transition_mismatches

MODEL_FILE = Path(__file__).resolve().parents[2] / "config" / "models" / "default.yaml"
T0 = 1_793_527_200_000  # 2026-11-01T10:00:00.000Z
HOUR = 3_600_000
W = 72 * HOUR


def _record(event_id: str, etype: str, ts: int, contact: str = "c-1") -> str:
    return json.dumps(
        {"event_id": event_id, "tenant": "acme", "contact_id": contact, "type": etype,
         "timestamp": ref.format_time(ts)}
    )  # fmt: skip


def _compare(records: list[tuple[str, int | None]]) -> tuple[Replayer, ref.Reference]:
    replayer = Replayer(load_model(MODEL_FILE))
    reference = ref.Reference(ref.load_model(MODEL_FILE))
    got: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    want: dict[tuple[str, str], list[ref.RefTransition]] = defaultdict(list)
    for raw, arrival in records:
        for t in replayer.feed(raw, arrival_ms=arrival):
            got[(t.tenant, t.contact_id)].append(t.model_dump(mode="json"))
        for w in reference.feed(raw, arrival):
            want[(w.tenant, w.contact_id)].append(w)
    until = max(a if a is not None else T0 for _, a in records) + 30 * 24 * HOUR
    for t in replayer.finish(until):
        got[(t.tenant, t.contact_id)].append(t.model_dump(mode="json"))
    for w in reference.finish(until):
        want[(w.tenant, w.contact_id)].append(w)
    for contact in reference.contacts:
        assert transition_mismatches(got[contact], want[contact]) == [], contact
    for snapshot in replayer.snapshots(until):
        contact = (snapshot.tenant, snapshot.contact_id)
        assert (
            snapshot_mismatches(
                snapshot.model_dump(mode="json"), reference.snapshot(contact, until)
            )
            == []
        ), contact
    assert replayer.stats.duplicates == reference.duplicates
    return replayer, reference


@pytest.mark.parametrize(
    ("gap_events", "copy_arrival_after_ms", "applied_again"),
    [
        (20, 1_000, False),  # 20 newer events in between, seconds later: still a duplicate
        (200, 71 * HOUR, False),  # hours later, after many events: still a duplicate
        (3, W, False),  # exactly W after the first copy's arrival: ignored
        (3, W + 1, True),  # just past the window: applied again
        (40, 5 * 24 * HOUR, True),  # days later: applied again
    ],
)
def test_duplicates_long_after(
    gap_events: int, copy_arrival_after_ms: int, applied_again: bool
) -> None:
    original = _record("orig", "web.form_submit", T0)
    records: list[tuple[str, int | None]] = [(original, T0)]
    for n in range(gap_events):  # newer events of the same contact, arriving as they happen
        ts = T0 + (n + 1) * 1_000
        records.append((_record(f"n{n}", "email.open", ts), ts))
    records.append((original, T0 + copy_arrival_after_ms))
    # a third copy within W of the copy applied last (an ignored copy is no reference)
    third = copy_arrival_after_ms + HOUR if applied_again else min(copy_arrival_after_ms, W)
    records.append((original, T0 + third))
    _, reference = _compare(records)
    counted = reference.contacts[("acme", "c-1")].counted
    assert counted == gap_events + 1 + int(applied_again)
    assert reference.duplicates == 2 - int(applied_again)


def test_duplicates_without_arrival_use_the_files_clock() -> None:
    original = _record("orig", "web.form_submit", T0)
    records: list[tuple[str, int | None]] = [(original, None)]
    records += [(_record(f"n{n}", "email.open", T0 + n + 1), None) for n in range(30)]
    records.append((original, None))  # arrives at the file's clock, 30 ms after: a duplicate
    _, reference = _compare(records)
    assert reference.duplicates == 1
