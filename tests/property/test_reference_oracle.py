"""The core and the replay against the independent reference of docs/scoring.md (hypothesis).

Random traffic over a few contacts, with the default model and the demo model (half-lives of
seconds): bursts that reach the upper stages, customer events, negative points, late events,
long quiet periods that decay, close duplicates, timer wake-ups (``advance``) followed by late
events, and snapshots at arbitrary times. Every transition field and every field of the
snapshot the API returns is compared with ``tests.reference``, which shares no code with
``engagement_index``.

Duplicates here follow their original closely (fewer than 16 events of the contact apart),
which the duplicate window of the code under test recognises.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from engagement_index.core.dedupe import DEFAULT_WINDOW_MS as WINDOW
from engagement_index.core.dedupe import EMPTY, SeenIds, admit
from engagement_index.core.events import EventFields, parse_event
from engagement_index.core.lifecycle import advance, evaluate, step
from engagement_index.core.model import ScoringModel, load_model
from engagement_index.core.state import ContactState
from engagement_index.replay import Replayer
from tests.reference import engagement as ref
from tests.reference.compare import snapshot_mismatches, transition_mismatches

MODELS_DIR = Path(__file__).resolve().parents[2] / "config" / "models"
MODEL_FILES = ("default.yaml", "demo.yaml")
T0 = 1_793_527_200_000  # 2026-11-01T10:00:00.000Z
CONTACTS = (("acme", "c-0"), ("acme", "c-1"), ("globex", "c-0"))
TYPES = sorted(ref.load_model(MODELS_DIR / "default.yaml").events)
HOT = ("web.form_submit", "email.click", "social.share", "commerce.cart_add", "web.page_view")


@dataclass(frozen=True)
class Models:
    core: ScoringModel
    reference: ref.Model
    unit_ms: int  # the shortest half-life: the time scale of the traffic


def _models(name: str) -> Models:
    core = load_model(MODELS_DIR / name)
    reference = ref.load_model(MODELS_DIR / name)
    return Models(core, reference, int(min(c.half_life_ms for c in reference.components)))


MODELS = {name: _models(name) for name in MODEL_FILES}

# (what, contact, event type, amount)
op = st.tuples(
    st.sampled_from(
        (
            *("burst", "burst", "event", "event", "late", "late", "quiet", "duplicate"),
            *("wake", "look", "decay then late", "decay then late"),
            *("at the crossing", "at the crossing"),
        )
    ),
    st.integers(0, len(CONTACTS) - 1),
    st.sampled_from((*TYPES, "commerce.purchase", "email.unsubscribe")),
    st.integers(0, 2**40),
)
ops_strategy = st.lists(op, min_size=2, max_size=30)


def _record(event_id: str, contact: tuple[str, str], etype: str, ts: int) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "tenant": contact[0],
            "contact_id": contact[1],
            "type": etype,
            "timestamp": ref.format_time(ts),
            "properties": {"k": 1},
        }
    )


def _traffic(
    ops: list[tuple[str, int, str, int]], unit: int
) -> list[tuple[str, tuple[str, str], str, int]]:
    """Ops as (what, contact, record or '', time) with what in record, wake and look.

    ``burst``: 8-23 hot events within a fraction of a half-life (reaches the upper stages);
    ``event``: one event a little later; ``late``: one event up to three half-lives before
    the latest time; ``quiet``: one to 25 half-lives without events (decay); ``duplicate``:
    one of the contact's last three records again (well within the 16 most recent ids);
    ``wake``: the worker's timer for the contact; ``look``: a snapshot, as the API answers;
    ``decay then late``: a burst, a wake-up long after it (a decay if the burst reached the
    upper stage), then an event timestamped between the two (a late event at the clock);
    ``at the crossing``: an event 1-2 ms before the contact's decay time ``tau``, then one at,
    just before or just after the next ``tau`` (the test asks the reference for ``tau``:
    ``crossing`` items carry the event id and type, and the offset from ``tau``).
    """
    now = T0
    sent: dict[tuple[str, str], list[str]] = defaultdict(list)
    out: list[tuple[str, tuple[str, str], str, int]] = []

    def send(event_id: str, contact: tuple[str, str], etype: str, ts: int) -> None:
        raw = _record(event_id, contact, etype, ts)
        sent[contact].append(raw)
        out.append(("record", contact, raw, ts))

    for n, (what, who, etype, amount) in enumerate(ops):
        contact = CONTACTS[who]
        if what == "burst":
            for j in range(8 + amount % 16):
                now += (amount >> (j + 4)) % max(1, unit // 400)
                send(f"e-{n}-{j}", contact, HOT[(amount >> (2 * j)) % len(HOT)], now)
        elif what == "event":
            now += amount % max(1, unit // 40)
            send(f"e-{n}", contact, etype, now)
        elif what == "late":
            send(f"e-{n}", contact, etype, now - amount % (3 * unit))
        elif what == "decay then late":
            burst_at = now
            for j in range(10 + amount % 12):
                send(f"e-{n}-{j}", contact, HOT[(amount >> (2 * j)) % len(HOT)], now)
            now += unit * (2 + amount % 8)
            out.append(("wake", contact, "", now))
            send(f"e-{n}-late", contact, etype, burst_at + (amount >> 8) % (now - burst_at))
        elif what == "quiet":
            now += unit * (1 + amount % 25) + amount % unit
        elif what == "duplicate":
            recent = sent[contact][-3:]
            if recent:
                out.append(("record", contact, recent[amount % len(recent)], now))
        elif what == "at the crossing":  # one just before tau, one around the next tau
            out.append(("crossing", contact, f"e-{n}-a {etype}", -1 - amount % 2))
            offset = (-1, 0, 1, amount % max(1, unit // 50))[(amount >> 1) % 4]
            out.append(("crossing", contact, f"e-{n}-b email.open", offset))
        else:  # wake, look
            now += amount % (5 * unit)
            out.append((what, contact, "", now))
    return out


def _resolve(
    item: tuple[str, tuple[str, str], str, int], reference: ref.Reference
) -> tuple[str, tuple[str, str], str, int] | None:
    """A ``crossing`` item as a record at ``tau + offset`` (None without a pending decay)."""
    what, contact, raw, at = item
    if what != "crossing":
        return item
    known = reference.contacts.get(contact)
    tau = None if known is None else reference.next_decay_time(known)
    if tau is None:
        return None
    event_id, etype = raw.split(" ")
    return ("record", contact, _record(event_id, contact, etype, tau + at), tau + at)


def _check(problems: list[str], context: object) -> None:
    assert not problems, (context, problems[:5])


@pytest.mark.parametrize("model_file", MODEL_FILES)
@settings(max_examples=200, deadline=None)
@given(ops=ops_strategy)
def test_core_step_advance_evaluate_equal_the_reference(
    model_file: str, ops: list[tuple[str, int, str, int]]
) -> None:
    models = MODELS[model_file]
    reference = ref.Reference(models.reference)
    states: dict[tuple[str, str], ContactState] = {}
    decayed_at: dict[tuple[str, str], int] = {}  # contacts whose clock a wake-up moved
    seen: dict[tuple[str, str], SeenIds] = {}
    clock = -(2**62)
    for item in _traffic(ops, models.unit_ms):
        resolved = _resolve(item, reference)
        if resolved is None:
            continue
        what, contact, raw, at = resolved
        if what == "record":
            state = states.get(contact)
            parsed = parse_event(raw)
            # the core's callers drop duplicates first (arrival: the replay's default, the
            # largest event timestamp read so far)
            clock = max(clock, parsed.timestamp_ms)
            window = admit(seen.get(contact, EMPTY), parsed.event_id, clock, WINDOW)
            if window is None:
                transitions: list[Any] = []
            else:
                seen[contact] = window
                fields = EventFields(
                    parsed.event_id, parsed.tenant, parsed.contact_id, parsed.type,
                    parsed.timestamp_ms,
                )  # fmt: skip
                new, transitions = step(state, fields, models.core.compiled)
                states[contact] = new
            want = reference.feed(raw)
        elif contact not in states:
            continue
        elif what == "wake":  # the worker's timer
            states[contact], transitions = advance(states[contact], at, models.core.compiled)
            want = reference.advance(contact, at)
        else:  # "look": a pure snapshot, as the API answers
            if contact not in reference.ambiguous:
                got = evaluate(states[contact], at, models.core.compiled).model_dump(mode="json")
                _check(snapshot_mismatches(got, reference.snapshot(contact, at)), (what, at))
            continue
        for w in want:
            event(f"transition: {w.reason}")
        if what == "wake" and want:
            decayed_at[contact] = want[0].occurred_at_ms
        elif what == "record" and at < decayed_at.get(contact, at):
            event("a late event after a timer decay" + (", with a transition" if want else ""))
        if what == "record" and at >= decayed_at.get(contact, at):
            decayed_at.pop(contact, None)
        if contact not in reference.ambiguous:
            got_t = [t.model_dump(mode="json") for t in transitions]
            _check(transition_mismatches(got_t, want), (what, contact, raw, at))
    last = max((s.clock_ms for s in states.values()), default=T0)
    for end in (last + 3_600_000, last + 30 * models.unit_ms):
        for contact, state in states.items():
            if contact in reference.ambiguous:
                continue
            got = evaluate(state, end, models.core.compiled).model_dump(mode="json")
            _check(snapshot_mismatches(got, reference.snapshot(contact, end)), ("end", contact))


@pytest.mark.parametrize("model_file", MODEL_FILES)
@settings(max_examples=200, deadline=None)
@given(ops=ops_strategy, extra=st.integers(0, 40))
def test_replay_equals_the_reference(
    model_file: str, ops: list[tuple[str, int, str, int]], extra: int
) -> None:
    models = MODELS[model_file]
    reference = ref.Reference(models.reference)
    replayer = Replayer(models.core)
    got_all: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    want_all: dict[tuple[str, str], list[ref.RefTransition]] = defaultdict(list)
    for item in _traffic(ops, models.unit_ms):
        resolved = _resolve(item, reference)
        if resolved is None or resolved[0] != "record":
            continue
        _, contact, raw, _ = resolved
        got_all[contact].extend(t.model_dump(mode="json") for t in replayer.feed(raw))
        want_all[contact].extend(reference.feed(raw))
    assert replayer.max_event_ms == reference.max_event_ms
    until = (replayer.max_event_ms or T0) + extra * models.unit_ms
    for t in replayer.finish(until):
        got_all[(t.tenant, t.contact_id)].append(t.model_dump(mode="json"))
    for w in reference.finish(until):
        want_all[(w.tenant, w.contact_id)].append(w)
    assert set(replayer.states) == set(reference.contacts)
    for w in (w for ws in want_all.values() for w in ws):
        event(f"transition: {w.reason}")
    for contact in reference.contacts:
        if contact not in reference.ambiguous:
            _check(transition_mismatches(got_all[contact], want_all[contact]), contact)
    for snapshot in replayer.snapshots(until):
        contact = (snapshot.tenant, snapshot.contact_id)
        if contact not in reference.ambiguous:
            got = snapshot.model_dump(mode="json")
            _check(snapshot_mismatches(got, reference.snapshot(contact, until)), contact)
    assert replayer.stats.duplicates == reference.duplicates
