"""Hand-picked cases: the core, the replay and the independent reference against each other,
and the reference against values worked out by hand from docs/scoring.md.

The default model throughout (``config/models/default.yaml``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from engagement_index.core.dedupe import DEFAULT_WINDOW_MS, EMPTY, SeenIds, admit
from engagement_index.core.events import EventFields, parse_event
from engagement_index.core.lifecycle import advance, evaluate, step
from engagement_index.core.model import load_model
from engagement_index.core.state import ContactState
from engagement_index.replay import Replayer
from tests.reference import engagement as ref
from tests.reference.compare import close, snapshot_mismatches, transition_mismatches

MODEL_FILE = Path(__file__).resolve().parents[2] / "config" / "models" / "default.yaml"
CORE = load_model(MODEL_FILE)


def fields_of(event: Any) -> EventFields:
    """The scoring fields of a parsed event."""
    return EventFields(
        event.event_id, event.tenant, event.contact_id, event.type, event.timestamp_ms
    )


REF = ref.load_model(MODEL_FILE)
T0 = 1_793_527_200_000  # 2026-11-01T10:00:00.000Z
DAY = 86_400_000
KEY = ("acme", "c-1")
# component -> (half-life ms, saturation), and the weights of the halves, as in the model file
H = {"email": 14 * DAY, "web": 7 * DAY, "social": 14 * DAY, "commerce": 60 * DAY}
K = {"email": 8.0, "web": 15.0, "social": 5.0, "commerce": 5.0}
PRE = {"email": 0.35, "web": 0.40, "social": 0.15, "commerce": 0.10}
POST = {"commerce": 0.45, "email": 0.15, "web": 0.10, "social": 0.05}


def record(event_id: str, etype: str, ts: int | str) -> str:
    stamp = ts if isinstance(ts, str) else ref.format_time(ts)
    return json.dumps(
        {"event_id": event_id, "tenant": KEY[0], "contact_id": KEY[1], "type": etype,
         "timestamp": stamp}
    )  # fmt: skip


def hand_index(events: list[tuple[int, str, float]], t: int, weights: dict[str, float]) -> float:
    """The index at ``t`` by the document's formulas, written out once more."""
    total = 0.0
    for c, w in weights.items():
        d = sum(p * 2 ** (-(t - ti) / H[c]) for ti, cc, p in events if cc == c)
        total += w * (100 * max(d, 0) / (max(d, 0) + K[c]))
    return total


class Three:
    """The core (step/advance/evaluate), the replay and the reference, fed the same ops."""

    def __init__(self) -> None:
        self.state: ContactState | None = None
        self.seen: SeenIds = EMPTY
        self.clock = -(2**62)
        self.replayer = Replayer(CORE)
        self.reference = ref.Reference(REF)

    def feed(self, raw: str) -> list[ref.RefTransition]:
        event = parse_event(raw)
        # the core's callers drop duplicates first (arrival: the replay's default, the largest
        # event timestamp read so far)
        self.clock = max(self.clock, event.timestamp_ms)
        window = admit(self.seen, event.event_id, self.clock, DEFAULT_WINDOW_MS)
        core_t: list[Any] = []
        if window is not None:
            self.seen = window
            self.state, core_t = step(self.state, fields_of(event), CORE.compiled)
        replay_t = self.replayer.feed(raw)
        want = self.reference.feed(raw)
        self._same(core_t, replay_t, want)
        return want

    def wake(self, at_ms: int) -> list[ref.RefTransition]:
        """A timer wake-up at ``at_ms`` (the replay: ``finish(at_ms)``)."""
        assert self.state is not None
        self.state, core_t = advance(self.state, at_ms, CORE.compiled)
        replay_t = self.replayer.finish(at_ms)
        want = self.reference.advance(KEY, at_ms)
        self._same(core_t, replay_t, want)
        return want

    def look(self, at_ms: int) -> ref.RefSnapshot:
        assert self.state is not None
        want = self.reference.snapshot(KEY, at_ms)
        for got in (
            evaluate(self.state, at_ms, CORE.compiled).model_dump(mode="json"),
            next(iter(self.replayer.snapshots(at_ms))).model_dump(mode="json"),
        ):
            assert snapshot_mismatches(got, want) == []
        return want

    @staticmethod
    def _same(core_t: list[Any], replay_t: list[Any], want: list[ref.RefTransition]) -> None:
        for got in (core_t, replay_t):
            assert transition_mismatches([t.model_dump(mode="json") for t in got], want) == []


def test_a_first_event_that_is_a_purchase() -> None:
    three = Three()
    first, customer = three.feed(record("p", "commerce.purchase", T0))
    s = 100 * 10 / 15
    assert (first.reason, first.from_stage, first.to_stage, first.half) == (
        "first_seen", None, "nurture", "pre_purchase",
    )  # fmt: skip
    assert close(first.index, 0.10 * s)
    assert first.previous_index == 0.0
    assert (customer.reason, customer.from_stage, customer.to_stage, customer.half) == (
        "customer_event", "nurture", "retention", "post_purchase",
    )  # fmt: skip
    assert close(customer.index, 0.45 * s)
    assert close(customer.previous_index, 0.10 * s)
    assert customer.occurred_at_ms == T0
    assert customer.cause_event_id == "p"
    # alone, commerce decays below 25: 45 D / (D + 5) < 25 <=> D < 6.25 = 10 * 2^(-t/h)
    tau = T0 + math.floor(H["commerce"] * math.log2(10 / 6.25)) + 1
    assert three.wake(tau - 2) == []
    (decay,) = three.wake(tau + DAY)
    assert abs(decay.occurred_at_ms - tau) <= 1
    assert (decay.reason, decay.from_stage, decay.to_stage, decay.cause_event_id) == (
        "decay", "retention", "exit", None,
    )  # fmt: skip
    assert close(decay.previous_index, 0.45 * s)
    assert decay.index < 25 <= decay.previous_index
    snap = three.look(tau + 5 * DAY)
    assert (snap.stage, snap.half, snap.customer, snap.events_counted) == (
        "exit", "post_purchase", True, 1,
    )  # fmt: skip


def _burst(three: Three, at: int) -> list[tuple[int, str, float]]:
    """Six form submits, six clicks and four shares at ``at``: purchase (index 61.49)."""
    events = []
    for n, (etype, comp, points) in enumerate(
        [("web.form_submit", "web", 5.0)] * 6
        + [("email.click", "email", 3.0)] * 6
        + [("social.share", "social", 3.0)] * 4
    ):
        three.feed(record(f"b{n}", etype, at))
        events.append((at, comp, points))
    return events


def _hand_tau(events: list[tuple[int, str, float]], clock: int, leave: float) -> int:
    """The first whole ms after ``clock`` with the index below ``leave`` (plain scan by day,
    then by ms)."""
    t = clock
    while hand_index(events, t + DAY, PRE) >= leave:
        t += DAY
    lo, hi = t, t + DAY
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if hand_index(events, mid, PRE) < leave else (mid, hi)
    return hi


def test_a_pending_decay_comes_first_and_the_clock_moves_to_tau() -> None:
    three = Three()
    events = _burst(three, T0)
    assert three.reference.contacts[KEY].upper
    assert close(three.look(T0).index, hand_index(events, T0, PRE))
    tau = _hand_tau(events, T0, 45.0)
    later = tau + 3 * DAY
    decay, *rest = three.feed(record("later", "web.page_view", later))
    assert rest == []
    assert abs(decay.occurred_at_ms - tau) <= 1
    assert decay.cause_event_id is None
    assert close(decay.previous_index, hand_index(events, T0, PRE))
    assert close(decay.index, hand_index(events, decay.occurred_at_ms, PRE))
    events.append((later, "web", 1.0))
    assert close(three.look(later).index, hand_index(events, later, PRE))


def test_a_late_event_after_a_timer_decay_is_evaluated_at_tau() -> None:
    """docs/scoring.md, "Determinism decision": after a decay the clock is ``tau``."""
    three = Three()
    events = _burst(three, T0)
    tau = _hand_tau(events, T0, 45.0)
    (decay,) = three.wake(tau + 1000)
    assert abs(decay.occurred_at_ms - tau) <= 1
    tau = decay.occurred_at_ms
    # late form submits one day after the burst, until the index at tau is back above 60
    for n in range(40):
        before = hand_index(events, tau, PRE)
        events.append((T0 + DAY, "web", 5.0))
        after = hand_index(events, tau, PRE)
        got = three.feed(record(f"late{n}", "web.form_submit", T0 + DAY))
        assert close(three.look(T0).index, after)  # evaluated at tau, not at T0 + 1 day
        if after >= 60:
            (back,) = got
            assert (back.reason, back.from_stage, back.to_stage, back.cause_event_id) == (
                "threshold", "nurture", "purchase", f"late{n}",
            )  # fmt: skip
            assert back.occurred_at_ms == tau
            assert close(back.index, after)
            assert close(back.previous_index, before)
            break
        assert got == []
    else:
        raise AssertionError("the late events never brought the contact back to purchase")
    # the next decay is solved from tau
    assert three.look(tau + 1).stage == "purchase"
    snap = three.look(tau + 60 * DAY)
    assert snap.stage == "nurture"
    assert snap.events_counted == len(events)


def test_negative_points_activity_days_and_late_first_seen() -> None:
    three = Three()
    three.feed(record("u", "email.unsubscribe", T0))
    three.feed(record("c", "email.click", T0 + DAY))
    three.feed(record("v", "web.page_view", T0 + 2 * DAY))
    three.feed(record("s", "email.sent", T0 + 5 * DAY))  # 0 points: not an active day
    assert three.feed(record("old", "web.page_view", T0 - 40 * DAY)) == []  # late, long ago
    at = T0 + 10 * DAY
    snap = three.look(at)
    d_email = -10 * 2 ** (-10 / 14) + 3 * 2 ** (-9 / 14)
    d_web = 2 ** (-8 / 7) + 2 ** (-50 / 7)
    assert d_email < 0
    assert snap.components == {
        "email": 0.0,
        "web": snap.components["web"],
        "social": 0.0,
        "commerce": 0.0,
        "product": 0.0,
    }
    assert close(snap.components["web"], 100 * d_web / (d_web + 15))
    assert close(snap.index, 0.40 * 100 * d_web / (d_web + 15))
    # active days: the click and the page views (not the unsubscribe nor the email sent)
    assert (snap.active_days_7d, snap.active_days_30d, snap.active_days_90d) == (0, 2, 3)
    assert (snap.first_seen_ms, snap.last_event_ms, snap.events_counted) == (
        T0 - 40 * DAY, T0 + 5 * DAY, 5,
    )  # fmt: skip
    assert three.look(T0 + 2 * DAY).active_days_7d == 2
    assert three.look(T0 + 131 * DAY).active_days_90d == 0


def test_timestamps_with_offsets_are_floored_to_the_millisecond() -> None:
    three = Three()
    three.feed(record("a", "web.page_view", "2026-11-01T12:00:00.9999+02:00"))
    three.feed(record("b", "web.page_view", "2026-11-01T04:29:59.5-05:30"))
    snap = three.look(T0 + 5000)
    assert snap.first_seen_ms == T0 - 500  # 04:29:59.5-05:30 is 09:59:59.500Z
    assert snap.last_event_ms == T0 + 999
    assert ref.parse_time("2026-11-01T10:00:00.9999Z") == T0 + 999
    assert ref.format_time(T0 + 999) == "2026-11-01T10:00:00.999Z"


def test_close_duplicates_are_ignored() -> None:
    three = Three()
    original = record("dup", "web.form_submit", T0)
    three.feed(original)
    for n in range(15):  # 15 other events: the copy is still among the 16 most recent ids
        three.feed(record(f"o{n}", "email.open", T0 + n))
        assert three.feed(original) == []
    assert three.look(T0 + 20).events_counted == 16
    assert three.reference.duplicates == 15 == three.replayer.stats.duplicates
