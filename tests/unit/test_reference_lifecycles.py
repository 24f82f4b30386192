"""The lifecycle reference (``tests/reference/lifecycles.py``) against values worked out by hand
from docs/models.md and docs/scoring.md, one construct per test.

The numbers in the comments are the documents' formulas evaluated by hand (a calculator): a
component scores ``s = 100 D / (D + k)``, a decayed sum halves every half-life; a crossing time
is the closed form ``t* = h log2(D0 / D_level)``, and the change happens at the first whole
millisecond after ``t*``, at which the float predicate holds (checked here with the plain
formula at ``t*`` rounded down and up). Times are ms after ``T0``.
"""

from __future__ import annotations

import json
import math
import random
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.reference import engagement as old
from tests.reference.compare import lifecycle_transition_mismatches
from tests.reference.engagement import format_time
from tests.reference.lifecycles import (
    LifecycleReference,
    LifecycleTransition,
    ModelError,
    ReferenceModel,
    reference_replay,
)

T0 = 1_793_527_200_000  # 2026-11-01T10:00:00.000Z (10 h into UTC day 20758)
S = 1_000
M = 60_000
H = 3_600_000
DAY = 86_400_000
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "config" / "models" / "default.yaml"

HEADER = """\
format: 2
version: "hand-1"
components:
  web:  {{half_life: {half_life}, saturation: {saturation}}}
  mail: {{half_life: {half_life}, saturation: {saturation}}}
markers: [customer, trial]
events:
  web.ten:    {{component: web, points: 10}}
  web.zero:   {{component: web, points: 0}}
  web.m5:     {{component: web, points: -5}}
  mail.ten:   {{component: mail, points: 10}}
  mail.two:   {{component: mail, points: 2}}
  demo.booked: {{component: web, points: 0}}
  demo.held:  {{component: web, points: 0}}
  shop.buy:   {{component: web, points: 0, sets: [customer]}}
  shop.refund: {{component: web, points: 0, clears: [customer]}}
  trial.start: {{component: web, points: 0, sets: [trial]}}
{events}indices:
  eng:  {{web: 1}}
  mail_only: {{mail: 1}}
  half: {{web: 0.5, mail: 0.5}}
lifecycles:
"""


def load(
    tmp_path: Path,
    lifecycles: str,
    *,
    events: str = "",
    half_life: str = "1h",
    saturation: float = 10,
) -> ReferenceModel:
    """A format 2 model: the header above, more ``events`` lines, then ``lifecycles``."""
    text = HEADER.format(
        half_life=half_life,
        saturation=saturation,
        events=textwrap.indent(textwrap.dedent(events), "  "),
    ) + textwrap.indent(textwrap.dedent(lifecycles), "  ")
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return ReferenceModel.load(path)


def ev(event_id: str, etype: str, at: int, contact: str = "c1") -> dict[str, Any]:
    """A canonical envelope at ``T0 + at`` ms."""
    return {
        "event_id": event_id,
        "tenant": "acme",
        "contact_id": contact,
        "type": etype,
        "timestamp": format_time(T0 + at),
    }


def brief(ts: list[LifecycleTransition]) -> list[tuple[Any, ...]]:
    """(lifecycle, from, to, reason, rule id, ms after T0, cause)."""
    return [
        (t.lifecycle, t.from_stage, t.to_stage, t.reason, t.rule_id, t.occurred_at_ms - T0,
         t.cause_event_id)
        for t in ts
    ]  # fmt: skip


def indices(ts: list[LifecycleTransition]) -> list[tuple[float, float]]:
    return [(t.index, t.previous_index) for t in ts]


def approx(values: list[tuple[float, float]]) -> Any:
    return [pytest.approx(v, rel=1e-12, abs=1e-12) for v in values]


def s(d: float, k: float = 10.0) -> float:
    """A component's score, by hand (for the crossing checks)."""
    return 100 * d / (d + k)


# ----------------------------------------------------------------------------- index
def test_index_at_least_on_events_and_initial_entries(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {cold: {}, mild: {}, warm: {}}
          initial:
            - {stage: warm, id: started_warm, when: {index: eng, at_least: 50}}
            - {stage: mild, when: {index: eng, at_least: 40}}
            - {stage: cold}
          edges:
            - {id: heat, from: [cold, mild], to: warm, when: {index: eng, at_least: 50}}
        """,
        events="web.five: {component: web, points: 5}\n",
    )
    # a: D = 10, s = 100*10/20 = 50.0 exactly: the first entry holds at its level (its id
    #    is the rule_id; the others have the default initial_<stage>)
    # b: D = 5, s = 500/15 = 33.33 -> cold; 1 h later D = 5/2 + 5 = 7.5, s = 750/17.5 =
    #    42.857 -> stays cold (the initial entries are not edges); D = 12.5 at the same ms,
    #    s = 1250/22.5 = 55.556 -> heat, previous = the index before the event at the clock
    out, states = reference_replay(
        model,
        [
            ev("a1", "web.ten", 0, "a"),
            ev("b1", "web.five", 0, "b"),
            ev("b2", "web.five", H, "b"),
            ev("b3", "web.five", H, "b"),
        ],
    )
    assert brief(out) == [
        ("main", None, "warm", "first_seen", "started_warm", 0, "a1"),
        ("main", None, "cold", "first_seen", "initial_cold", 0, "b1"),
        ("main", "cold", "warm", "threshold", "heat", H, "b3"),
    ]
    assert indices(out) == approx(
        [(50.0, 0.0), (33.333333333333336, 0.0), (55.55555555555556, 42.857142857142854)]
    )
    assert out[2].components == pytest.approx({"web": 55.55555555555556, "mail": 0.0}, rel=1e-12)
    assert states[("acme", "b")].sums["web"] == pytest.approx(12.5, rel=1e-12)
    assert states[("acme", "b")].stages == {"main": "warm"}


def test_index_below_decays_at_its_millisecond(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {cold: {}, warm: {}}
          initial: [{stage: warm}]
          edges:
            - {id: cool, from: warm, to: cold, when: {index: eng, below: 25}}
        """,
    )
    # D = 10 at 0 (s = 50); s < 25 <=> D < 10/3 <=> 2^(-t/h) < 1/3 <=> t > h log2 3
    # = 3,600,000 * 1.5849625007 = 5,705,865.0026 ms: the first whole ms is 5,705,866
    tau = 5_705_866
    assert s(10 * 2 ** (-(tau - 1) / H)) >= 25 > s(10 * 2 ** (-tau / H))
    events = [ev("e1", "web.ten", 0)]
    out, _ = reference_replay(model, events, until_ms=T0 + tau - 1)
    assert brief(out) == [("main", None, "warm", "first_seen", "initial_warm", 0, "e1")]
    out, states = reference_replay(model, events, until_ms=T0 + 2 * H)
    assert brief(out)[1:] == [("main", "warm", "cold", "decay", "cool", tau, None)]
    # index at tau: D = 10 * 2^(-5705866/3600000) = 3.3333326932, s = 24.9999963992
    assert indices(out)[1:] == approx([(24.999996399231122, 50.0)])
    state = states[("acme", "c1")]
    assert state.clock == T0 + tau  # the clock moves to the change's time
    assert state.sums["web"] == pytest.approx(3.3333326931966747, rel=1e-12)
    # a later event: the missed change comes first, at its own time, then the event
    out, states = reference_replay(model, [*events, ev("e2", "web.zero", 3 * H)])
    assert brief(out)[1:] == [("main", "warm", "cold", "decay", "cool", tau, None)]
    assert states[("acme", "c1")].clock == T0 + 3 * H
    assert states[("acme", "c1")].events_counted == 2


def test_component_conditions(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {quiet: {index: half}, mailing: {index: half}}
          initial: [{stage: quiet}]
          edges:
            - {id: opens, from: quiet, to: mailing, when: {component: mail, at_least: 50}}
            - {id: stops, from: mailing, to: quiet, when: {component: mail, below: 25}}
        """,
    )
    # mail D = 10: s_mail = 50.0 (at_least 50 holds) while the index (half) is 0.5*50 = 25;
    # mail falls below 25 at 5,705,866 ms as in the test above; the index is then
    # 0.5 * 24.999996399231122 = 12.499998199615561
    out, _ = reference_replay(model, [ev("e1", "mail.ten", 0)], until_ms=T0 + DAY)
    assert brief(out) == [
        ("main", None, "quiet", "first_seen", "initial_quiet", 0, "e1"),
        ("main", "quiet", "mailing", "threshold", "opens", 0, "e1"),
        ("main", "mailing", "quiet", "decay", "stops", 5_705_866, None),
    ]
    assert indices(out) == approx([(25.0, 0.0), (25.0, 25.0), (12.499998199615561, 25.0)])
    assert out[2].components == pytest.approx({"web": 0.0, "mail": 24.999996399231122}, rel=1e-12)


# ----------------------------------------------------------------------------- events, markers
def test_event_condition(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {lead: {}, demo: {}}
          initial: [{stage: lead}]
          edges:
            - {id: booked, from: lead, to: demo, when: {event: [demo.booked, demo.held]}}
        """,
    )
    # a: a demo.held 1 s after a web.ten: D = 10 * 2^(-1000/3600000) = 9.998074776513175,
    #    s = 49.995186477927646; previous: the lead index at the clock before (50.0)
    # b: web.ten twice: never moves, neither on events nor later (no event at due times)
    # c: demo.booked first: first_seen then the edge at the same instant (s = 0)
    out, _ = reference_replay(
        model,
        [
            ev("a1", "web.ten", 0, "a"),
            ev("a2", "demo.held", S, "a"),
            ev("b1", "web.ten", 0, "b"),
            ev("b2", "web.ten", S, "b"),
            ev("c1", "demo.booked", 0, "c"),
        ],
        until_ms=T0 + 30 * DAY,
    )
    assert brief(out) == [
        ("main", None, "lead", "first_seen", "initial_lead", 0, "a1"),
        ("main", "lead", "demo", "event", "booked", S, "a2"),
        ("main", None, "lead", "first_seen", "initial_lead", 0, "b1"),
        ("main", None, "lead", "first_seen", "initial_lead", 0, "c1"),
        ("main", "lead", "demo", "event", "booked", 0, "c1"),
    ]
    assert indices(out)[:2] == approx([(50.0, 0.0), (49.995186477927646, 50.0)])


def test_marker_set_and_cleared(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {prospect: {}, customer: {}}
          initial: [{stage: prospect}]
          edges:
            - {id: bought, from: prospect, to: customer, when: {marker: customer}}
            - {id: refunded, from: customer, to: prospect,
               when: {marker: customer, set: false}}
        """,
    )
    # `refunded` tests that the marker is not set: not "a marker is set", so `threshold`
    out, states = reference_replay(
        model,
        [
            # a: set, then cleared an hour later
            ev("a1", "shop.buy", 0, "a"),
            ev("a2", "shop.refund", H, "a"),
            # b: set and cleared at the same ms, set first: the clear applies (ts >= change)
            ev("b1", "shop.buy", 5 * S, "b"),
            ev("b2", "shop.refund", 5 * S, "b"),
            # c: the same two the other way round: the clear wins, the set changes nothing
            ev("c1", "shop.refund", 5 * S, "c"),
            ev("c2", "shop.buy", 5 * S, "c"),
            # d: a late clear older than the set does not undo it
            ev("d1", "shop.buy", H, "d"),
            ev("d2", "shop.refund", 0, "d"),
        ],
    )
    assert brief(out) == [
        ("main", None, "prospect", "first_seen", "initial_prospect", 0, "a1"),
        ("main", "prospect", "customer", "customer_event", "bought", 0, "a1"),
        ("main", "customer", "prospect", "threshold", "refunded", H, "a2"),
        ("main", None, "prospect", "first_seen", "initial_prospect", 5 * S, "b1"),
        ("main", "prospect", "customer", "customer_event", "bought", 5 * S, "b1"),
        ("main", "customer", "prospect", "threshold", "refunded", 5 * S, "b2"),
        ("main", None, "prospect", "first_seen", "initial_prospect", 5 * S, "c1"),
        ("main", None, "prospect", "first_seen", "initial_prospect", H, "d1"),
        ("main", "prospect", "customer", "customer_event", "bought", H, "d1"),
    ]
    markers = {key[1]: st.markers["customer"] for key, st in states.items()}
    assert {c: m.is_set for c, m in markers.items()} == {"a": False, "b": False, "c": False,
                                                          "d": True}  # fmt: skip
    assert markers["d"].changed_at == T0 + H
    assert markers["c"].changed_at == T0 + 5 * S


def test_reasons(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        m:
          stages: {a: {}, b: {}}
          initial: [{stage: a}]
          edges: [{id: m1, from: a, to: b, when: {marker: customer}}]
        ml:
          stages: {a: {}, b: {}}
          initial: [{stage: a}]
          edges:
            - {id: ml1, from: a, to: b,
               when: {all: [{marker: customer}, {index: contact, at_least: 0}]}}
        me:
          stages: {a: {}, b: {}}
          initial: [{stage: a}]
          edges:
            - {id: me1, from: a, to: b, when: {all: [{marker: customer}, {event: shop.buy}]}}
        """,
    )
    # on an event: a marker set, no event type, no level -> customer_event; with a level ->
    # threshold; with an event type -> event. Each lifecycle in turn: first_seen, then chain.
    out, _ = reference_replay(model, [ev("e1", "shop.buy", 0)])
    assert [(t.lifecycle, t.reason, t.rule_id) for t in out] == [
        ("m", "first_seen", "initial_a"),
        ("m", "customer_event", "m1"),
        ("ml", "first_seen", "initial_a"),
        ("ml", "threshold", "ml1"),
        ("me", "first_seen", "initial_a"),
        ("me", "event", "me1"),
    ]


def test_reasons_at_a_due_time(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {a: {index: eng}, b: {index: mail_only}, c: {index: mail_only}}
          initial: [{stage: a}]
          edges:
            - {id: ab, from: a, to: b, when: {in_stage_for: 1h}}
            - {id: bc, from: b, to: c, when: {marker: customer}}
        heat:
          bands: {levels: {hi: 30, lo: 0}}
        """,
        events="mail.buy: {component: mail, points: 10, sets: [customer]}\n",
    )
    # mail D = 10 at 0, web 0: eng = 0, mail_only = 50; heat on `contact` = eng = 0: lo.
    # At 1 h (3,600,000): main a -> b (time_in_stage), then b -> c at the same instant (a
    # marker edge at a due time: READING `threshold`, as "only at_least levels"); heat now sees
    # `contact` = mail_only = 100 * 5/15 = 33.333 >= 30: up at the due time, `threshold`;
    # its previous_index is the `contact` index of the state before (eng at 0 = 0.0).
    # Then mail_only falls below 30 (no hysteresis): mail D < 30/7 = 4.2857 <=> t > 1 h +
    # h log2(7/6) = 3,600,000 + 800,612.7168 -> 4,400,613 (`decay`).
    assert s(10 * 2 ** (-4_400_612 / H)) >= 30 > s(10 * 2 ** (-4_400_613 / H))
    out, _ = reference_replay(model, [ev("e1", "mail.buy", 0)], until_ms=T0 + DAY)
    assert brief(out) == [
        ("main", None, "a", "first_seen", "initial_a", 0, "e1"),
        ("heat", None, "lo", "first_seen", "initial_lo", 0, "e1"),
        ("main", "a", "b", "time_in_stage", "ab", H, None),
        ("main", "b", "c", "threshold", "bc", H, None),
        ("heat", "lo", "hi", "threshold", "up_to_hi", H, None),
        ("heat", "hi", "lo", "decay", "down_to_lo", 4_400_613, None),
    ]
    assert indices(out) == approx(
        [(0.0, 0.0), (0.0, 0.0), (33.333333333333336, 0.0),
         (33.333333333333336, 33.333333333333336), (33.333333333333336, 0.0),
         (29.9999988549662, 33.333333333333336)]
    )  # fmt: skip


# ----------------------------------------------------------------------------- time atoms
def test_in_stage_for_moves_at_its_exact_millisecond(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {new: {}, settled: {}, done: {}}
          initial: [{stage: new}]
          edges:
            - {id: settle, from: new, to: settled, when: {in_stage_for: 90m}}
            - {id: finish, from: settled, to: done, when: {in_stage_for: 30}}
        """,
    )
    # entered at 0: settled at 90 min = 5,400,000 ms; time in stage restarts there, so done
    # 30 s later, at 5,430,000. Indices: D = 10 * 2^(-1.5) = 3.5355, s = 26.120387496374146;
    # D = 10 * 2^(-5430000/3600000), s = 26.00907379955408
    events = [ev("e1", "web.ten", 0)]
    out, _ = reference_replay(model, events, until_ms=T0 + 5_400_000 - 1)
    assert len(out) == 1
    out, _ = reference_replay(model, events, until_ms=T0 + DAY)
    assert brief(out)[1:] == [
        ("main", "new", "settled", "time_in_stage", "settle", 5_400_000, None),
        ("main", "settled", "done", "time_in_stage", "finish", 5_430_000, None),
    ]
    assert indices(out)[1:] == approx(
        [(26.120387496374146, 50.0), (26.00907379955408, 26.120387496374146)]
    )
    # an event exactly at the due time: the change is due at or before it, so it comes first
    out, _ = reference_replay(model, [*events, ev("e2", "web.zero", 5_400_000)])
    assert brief(out)[1:] == [("main", "new", "settled", "time_in_stage", "settle", 5_400_000,
                               None)]  # fmt: skip
    # an event a day later: both changes first, each at its own time, then the event
    out, states = reference_replay(model, [*events, ev("e2", "web.zero", DAY)])
    assert [t[5] for t in brief(out)] == [0, 5_400_000, 5_430_000]
    assert states[("acme", "c1")].entered_at["main"] == T0 + 5_430_000


def test_since_marker(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {free: {}, expired: {}}
          initial: [{stage: free}]
          edges:
            - {id: expire, from: free, to: expired, when: {since_marker: trial, at_least: 2h}}
        """,
    )
    # a: the trial starts 10 s in: expired at 10,000 + 7,200,000 = 7,210,000 ms;
    #    s = 100 D/(D + 10), D = 10 * 2^(-7210000/3600000): 19.96921125243142
    # b: first event at 1 h, a late trial start at 30 min: counted from the late event's
    #    time, 30 min + 2 h = 9,000,000 ms (index: the web.ten of 1 h, 1.5 h later:
    #    26.120387496374146)
    out, _ = reference_replay(
        model,
        [
            ev("a1", "web.ten", 0, "a"),
            ev("a2", "trial.start", 10 * S, "a"),
            ev("b1", "web.ten", H, "b"),
            ev("b2", "trial.start", 30 * M, "b"),
        ],
        until_ms=T0 + DAY,
    )
    assert brief(out) == [
        ("main", None, "free", "first_seen", "initial_free", 0, "a1"),
        ("main", None, "free", "first_seen", "initial_free", H, "b1"),
        ("main", "free", "expired", "time_in_stage", "expire", 7_210_000, None),
        ("main", "free", "expired", "time_in_stage", "expire", 9_000_000, None),
    ]
    assert out[2].index == pytest.approx(19.96921125243142, rel=1e-12)
    assert out[3].index == pytest.approx(26.120387496374146, rel=1e-12)


def test_all_and_any(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        keen:
          stages: {new: {}, keen: {}}
          initial: [{stage: new}]
          edges:
            - {id: k, from: new, to: keen,
               when: {all: [{in_stage_for: 30m}, {index: eng, at_least: 40}]}}
        late:
          stages: {new: {index: eng}, keen: {index: eng}}
          initial: [{stage: new}]
          edges:
            - {id: l, from: new, to: keen,
               when: {all: [{in_stage_for: 1h}, {index: eng, at_least: 40}]}}
        gone:
          stages: {here: {index: eng}, gone: {index: eng}}
          initial: [{stage: here}]
          edges:
            - {id: g, from: here, to: gone,
               when: {any: [{in_stage_for: 2h}, {index: eng, below: 25}]}}
        empty:
          stages: {a: {index: eng}, b: {index: eng}, c: {index: eng}}
          initial: [{stage: a}]
          edges:
            - {id: never, from: a, to: b, when: {any: []}}
            - {id: always, from: a, to: c, when: {all: []}}
        """,
    )
    # D = 10 at 0. s >= 40 <=> D >= 20/3 <=> t <= h log2 1.5 = 2,105,865.0026 ms.
    # keen: at 30 min = 1,800,000 both hold (s = 100 * 7.0711/17.0711 = 41.4213562373095).
    # late: in stage for 1 h only from 3,600,000, when s < 40 already: never.
    # gone: any of 2 h (7,200,000) and s < 25 (5,705,866, as above): 5,705,866, and the reason
    #       is time_in_stage (the edge has an in_stage_for condition).
    # empty: `all: []` holds at once; `any: []` never.
    assert s(10 * 2 ** (-2_105_865 / H)) >= 40 > s(10 * 2 ** (-2_105_866 / H))
    out, _ = reference_replay(model, [ev("e1", "web.ten", 0)], until_ms=T0 + 30 * DAY)
    assert brief(out) == [
        ("keen", None, "new", "first_seen", "initial_new", 0, "e1"),
        ("late", None, "new", "first_seen", "initial_new", 0, "e1"),
        ("gone", None, "here", "first_seen", "initial_here", 0, "e1"),
        ("empty", None, "a", "first_seen", "initial_a", 0, "e1"),
        ("empty", "a", "c", "threshold", "always", 0, "e1"),
        ("keen", "new", "keen", "time_in_stage", "k", 1_800_000, None),
        ("gone", "here", "gone", "time_in_stage", "g", 5_705_866, None),
    ]
    assert out[5].index == pytest.approx(41.4213562373095, rel=1e-12)


# ----------------------------------------------------------------------------- bands
BANDS = """
member:
  stages: {member: {}}
  initial: [{stage: member}]
heat:
  bands: {levels: {hot: 80, warm: 40, cold: 0}, hysteresis: 5}
"""
BAND_EVENTS = """\
web.p20: {component: web, points: 20}
web.m3: {component: web, points: -3}
web.p208: {component: web, points: 208}
web.m40: {component: web, points: -40}
web.m180: {component: web, points: -180}
web.p240: {component: web, points: 240}
"""


def test_bands_hysteresis(tmp_path: Path) -> None:
    # saturation 60: s = 100 D/(D + 60); every event at T0 (no decay). The band lifecycle
    # reports `contact`: the index of the `member` stage (eng = s_web).
    model = load(tmp_path, BANDS, events=BAND_EVENTS, saturation=60)
    out, _ = reference_replay(
        model,
        [
            ev("e1", "web.p20", 0),  # D = 20, s = 25: cold
            ev("e2", "web.p20", 0),  # D = 40, s = 40.0: up to warm at its level exactly
            ev("e3", "web.m5", 0),  # D = 35, s = 36.842 >= 40 - 5: stays warm
            ev("e4", "web.m3", 0),  # D = 32, s = 34.783 < 35: down to cold
            ev("e5", "web.p208", 0),  # D = 240, s = 80.0: up over warm to hot, one move
            ev("e6", "web.m40", 0),  # D = 200, s = 76.923 >= 75: stays hot
            ev("e7", "web.m180", 0),  # D = 20, s = 25 < 35: down over warm to cold, one move
        ],
    )
    heat = [t for t in out if t.lifecycle == "heat"]
    assert [(t.from_stage, t.to_stage, t.reason, t.rule_id, t.cause_event_id) for t in heat] == [
        (None, "cold", "first_seen", "initial_cold", "e1"),
        ("cold", "warm", "threshold", "up_to_warm", "e2"),
        ("warm", "cold", "threshold", "down_to_cold", "e4"),
        ("cold", "hot", "threshold", "up_to_hot", "e5"),
        ("hot", "cold", "threshold", "down_to_cold", "e7"),
    ]
    assert indices(heat) == approx(
        [
            (25.0, 0.0),
            (40.0, 25.0),
            (34.78260869565217, 36.8421052631579),
            (80.0, 34.78260869565217),
            (25.0, 76.92307692307692),
        ]
    )


def test_bands_first_seen_and_decay(tmp_path: Path) -> None:
    model = load(tmp_path, BANDS, events=BAND_EVENTS, saturation=60)
    # D = 240 (s = 80.0): first_seen hot. Then it decays (half-life 1 h):
    # s < 75 <=> D < 180 <=> t > h log2(4/3) = 1,494,134.9974 ms -> 1,494,135 (hot -> warm);
    # s < 35 <=> D < 60*35/65 = 32.3077 <=> t > h log2(240/32.3077) = 10,415,105.2659 ms
    # -> 10,415,106 (warm -> cold)
    assert s(240 * 2 ** (-1_494_134 / H), 60) >= 75 > s(240 * 2 ** (-1_494_135 / H), 60)
    assert s(240 * 2 ** (-10_415_105 / H), 60) >= 35 > s(240 * 2 ** (-10_415_106 / H), 60)
    out, _ = reference_replay(model, [ev("e1", "web.p240", 0)], until_ms=T0 + DAY)
    heat = [t for t in out if t.lifecycle == "heat"]
    assert brief(heat) == [
        ("heat", None, "hot", "first_seen", "initial_hot", 0, "e1"),
        ("heat", "hot", "warm", "decay", "down_to_warm", 1_494_135, None),
        ("heat", "warm", "cold", "decay", "down_to_cold", 10_415_106, None),
    ]


# ----------------------------------------------------------------------------- lifecycles
def test_backward_edge(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {new: {}, active: {}, dormant: {}}
          initial: [{stage: new}]
          edges:
            - {id: go, from: new, to: active, when: {index: eng, at_least: 30}}
            - {id: sleep, from: active, to: dormant, when: {index: eng, below: 20}}
            - {id: back, from: dormant, to: active, when: {index: eng, at_least: 30}}
        """,
        events=BAND_EVENTS
        + "web.p10: {component: web, points: 10}\nweb.m20: {component: web, points: -20}\n",
        saturation=60,
    )
    # saturation 60, all at T0: D = 20 (s = 25), 30 (33.333), 10 (14.286), 30 (33.333)
    out, _ = reference_replay(
        model,
        [
            ev("e1", "web.p20", 0),
            ev("e2", "web.p10", 0),
            ev("e3", "web.m20", 0),
            ev("e4", "web.p20", 0),
        ],
    )
    assert [(t.from_stage, t.to_stage, t.rule_id) for t in out] == [
        (None, "new", "initial_new"),
        ("new", "active", "go"),
        ("active", "dormant", "sleep"),
        ("dormant", "active", "back"),
    ]
    assert indices(out) == approx(
        [
            (25.0, 0.0),
            (33.333333333333336, 25.0),
            (14.285714285714286, 33.333333333333336),
            (33.333333333333336, 14.285714285714286),
        ]
    )


def test_same_instant_chain_of_three(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {lead: {index: eng}, mql: {index: half}, sql: {index: eng},
                   won: {index: half}}
          initial: [{stage: lead}]
          edges:
            - {id: to_mql, from: lead, to: mql, when: {index: eng, at_least: 30}}
            - {id: to_sql, from: mql, to: sql, when: {event: deal.won}}
            - {id: to_won, from: sql, to: won, when: {marker: customer}}
        """,
        events="web.p10: {component: web, points: 10}\n"
        "deal.won: {component: web, points: 30, sets: [customer]}\n",
        saturation=60,
    )
    # e1: D = 10, eng = 1000/70 = 14.286 (lead). e2 at the same ms: D = 40, eng = 40.0,
    # half = 0.5 * 40 = 20.0: lead -> mql -> sql -> won, each previous_index the index of the
    # transition before it (the first: lead's index before the event)
    out, _ = reference_replay(model, [ev("e1", "web.p10", 0), ev("e2", "deal.won", 0)])
    assert brief(out) == [
        ("main", None, "lead", "first_seen", "initial_lead", 0, "e1"),
        ("main", "lead", "mql", "threshold", "to_mql", 0, "e2"),
        ("main", "mql", "sql", "event", "to_sql", 0, "e2"),
        ("main", "sql", "won", "customer_event", "to_won", 0, "e2"),
    ]
    assert indices(out) == approx(
        [(14.285714285714286, 0.0), (20.0, 14.285714285714286), (40.0, 20.0), (20.0, 40.0)]
    )


def test_contact_index_in_a_later_lifecycle(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        stage:
          stages: {nurture: {index: eng}, customer: {index: mail_only}}
          initial: [{stage: nurture}]
          edges:
            - {id: bought, from: nurture, to: customer, when: {marker: customer}}
        heat:
          bands: {levels: {hot: 50, cold: 0}, hysteresis: 10}
        """,
        events="mail.buy: {component: mail, points: 2, sets: [customer]}\n",
    )
    # e1 (0): web D = 10, eng = 50.0 -> nurture; heat on `contact` = eng = 50 -> hot.
    # e2 (same ms): web D = 10, mail D = 2 (mail_only = 200/12 = 16.667):
    #   stage: nurture -> customer, index 16.667, previous = eng at the clock before = 50.0;
    #   heat then sees `contact` = mail_only = 16.667 < 50 - 10: hot -> cold, previous = the
    #   `contact` index of the state before (nurture's eng at 0) = 50.0
    out, _ = reference_replay(model, [ev("e1", "web.ten", 0), ev("e2", "mail.buy", 0)])
    assert brief(out) == [
        ("stage", None, "nurture", "first_seen", "initial_nurture", 0, "e1"),
        ("heat", None, "hot", "first_seen", "initial_hot", 0, "e1"),
        ("stage", "nurture", "customer", "customer_event", "bought", 0, "e2"),
        ("heat", "hot", "cold", "threshold", "down_to_cold", 0, "e2"),
    ]
    assert indices(out) == approx(
        [(50.0, 0.0), (50.0, 0.0), (16.666666666666668, 50.0), (16.666666666666668, 50.0)]
    )
    # each transition names the weighting its to-stage reports (`contact` resolved)
    assert [t.half for t in out] == ["eng", "eng", "mail_only", "mail_only"]
    # A first event that is a purchase: `stage` enters and runs its chain before `heat`
    # enters, so heat's first_seen sees `contact` = mail_only = 16.667 (not nurture's 0): cold
    out, _ = reference_replay(model, [ev("d1", "mail.buy", 0, "d")])
    assert brief(out) == [
        ("stage", None, "nurture", "first_seen", "initial_nurture", 0, "d1"),
        ("stage", "nurture", "customer", "customer_event", "bought", 0, "d1"),
        ("heat", None, "cold", "first_seen", "initial_cold", 0, "d1"),
    ]
    assert indices(out) == approx(
        [(0.0, 0.0), (16.666666666666668, 0.0), (16.666666666666668, 0.0)]
    )


def test_previous_index_within_an_event_and_a_wake_up(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {a: {}, b: {}, c: {}}
          initial: [{stage: a}]
          edges:
            - {id: ab, from: a, to: b, when: {in_stage_for: 1h}}
            - {id: bc, from: b, to: c, when: {event: demo.booked}}
        aux:
          stages: {p: {}, q: {}}
          initial: [{stage: p}]
          edges: [{id: pq, from: p, to: q, when: {in_stage_for: 2h}}]
        """,
    )
    # web D = 10 at 0 (s = 50), halving every hour: s = 33.333 at 1 h, 20.0 at 2 h, 11.111 at
    # 3 h. The event at 3 h first applies main a -> b at 1 h (previous: a's index at 0, 50)
    # and aux p -> q at 2 h (previous: p's index at the clock before, 1 h: 33.333); then main
    # b -> c on the event: previous = b's index at the clock before the event's instant (2 h:
    # 20.0), not main's transition of an earlier instant (33.333): previous_index depends on
    # the instants only, not on which of them one call applied.
    events = [ev("e1", "web.ten", 0), ev("e2", "demo.booked", 3 * H)]
    out, _ = reference_replay(model, events)
    assert brief(out)[2:] == [
        ("main", "a", "b", "time_in_stage", "ab", H, None),
        ("aux", "p", "q", "time_in_stage", "pq", 2 * H, None),
        ("main", "b", "c", "event", "bc", 3 * H, "e2"),
    ]
    assert indices(out)[2:] == approx(
        [(33.333333333333336, 50.0), (20.0, 33.333333333333336),
         (11.11111111111111, 20.0)]
    )  # fmt: skip
    # With a wake-up at 2.5 h in between, the event's own transition has no preceding one
    # in its call: previous = b's index in the state before the event, at its clock (2 h)
    ref = LifecycleReference(model)
    ref.feed(events[0])
    woken = ref.advance(("acme", "c1"), T0 + 5 * H // 2)
    assert indices(woken) == approx([(33.333333333333336, 50.0), (20.0, 33.333333333333336)])
    assert indices(ref.feed(events[1])) == approx([(11.11111111111111, 20.0)])


def test_late_event_and_named_reason(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {low: {}, high: {}, out: {}}
          initial: [{stage: low}]
          edges:
            - {id: up, from: low, to: high, when: {index: eng, at_least: 60}}
            - {id: drop, from: high, to: out, when: {index: eng, below: 55},
               reason: customer_event}
        """,
    )
    # e1 at 1 h: D = 10 (s = 50); e2 late, at 0: adds 10 * 2^(-1) = 5 at the clock (1 h),
    # D = 15, s = 1500/25 = 60.0: `up` fires at the clock, 1 h, not at the event's time.
    # e3 at 1 h: -5: D = 10, s = 50 < 55: `drop` on an event, with its named reason.
    # Contact b: the same two events, then the fall happens by time: the reason is `decay`
    # (s < 55 <=> D < 12.222 <=> t > h log2(15/12.2222) = 1,063,641.18 ms after 1 h).
    assert s(15 * 2 ** (-1_063_641 / H)) >= 55 > s(15 * 2 ** (-1_063_642 / H))
    out, states = reference_replay(
        model,
        [
            ev("a1", "web.ten", H, "a"),
            ev("a2", "web.ten", 0, "a"),
            ev("a3", "web.m5", H, "a"),
            ev("b1", "web.ten", H, "b"),
            ev("b2", "web.ten", 0, "b"),
        ],
        until_ms=T0 + DAY,
    )
    assert brief(out) == [
        ("main", None, "low", "first_seen", "initial_low", H, "a1"),
        ("main", "low", "high", "threshold", "up", H, "a2"),
        ("main", "high", "out", "customer_event", "drop", H, "a3"),
        ("main", None, "low", "first_seen", "initial_low", H, "b1"),
        ("main", "low", "high", "threshold", "up", H, "b2"),
        ("main", "high", "out", "decay", "drop", H + 1_063_642, None),
    ]
    assert out[1].index == pytest.approx(60.0, rel=1e-12)
    assert states[("acme", "a")].clock == T0 + H
    assert states[("acme", "a")].first_seen_ms == T0


# ----------------------------------------------------------------------------- trend
def test_trend_flips_at_its_solved_millisecond(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {live: {}, idle: {}}
          initial: [{stage: live}]
          edges:
            - {id: cooling, from: live, to: idle, when: {trend_ratio: {below: 0.6}}}
        trend:
          trend: {fast: 1h, slow: 2h, margin: 0.25}
        """,
    )
    # One web.ten at 0: F = S = 10, rho0 = (10 * 2h/1h) / 10 = 2 >= 1.25: rising.
    # rho(t) = rho0 * 2^(-t (1/hf - 1/hs)) = 2 * 2^(-t / 7,200,000):
    #   rho < 1.25 <=> t > 7.2e6 log2(2/1.25) = 4,882,117.7168 -> 4,882,118 (rising -> steady)
    #   rho < 0.75 <=> t > 7.2e6 log2(2/0.75) = 10,188,269.9948 -> 10,188,270 (-> falling)
    #   rho < 0.6  <=> t > 7.2e6 log2(2/0.6) = 12,506,152.2780 -> 12,506,153 (main: idle, decay)
    for level, t_star in ((1.25, 4_882_117.7168), (0.75, 10_188_269.9948), (0.6, 12_506_152.278)):
        closed = 7_200_000 * math.log2(2 / level)
        assert closed == pytest.approx(t_star, abs=1e-3)
        first = math.ceil(closed)
        assert rho(first - 1) >= level > rho(first)
    out, _ = reference_replay(model, [ev("e1", "web.ten", 0)], until_ms=T0 + DAY)
    assert brief(out) == [
        ("main", None, "live", "first_seen", "initial_live", 0, "e1"),
        ("trend", None, "rising", "first_seen", "initial_rising", 0, "e1"),
        ("trend", "rising", "steady", "trend", "rising_to_steady", 4_882_118, None),
        ("trend", "steady", "falling", "trend", "steady_to_falling", 10_188_270, None),
        ("main", "live", "idle", "decay", "cooling", 12_506_153, None),
    ]
    # the trend stages report `contact` (the main lifecycle's eng)
    assert out[2].index == pytest.approx(s(10 * 2 ** (-4_882_118 / H)), rel=1e-12)
    # S = 0 gives rho = 1: steady; negative points do not count in F or S
    out, states = reference_replay(model, [ev("e1", "web.m5", 0)])
    assert brief(out)[1] == ("trend", None, "steady", "first_seen", "initial_steady", 0, "e1")
    assert states[("acme", "c1")].trend["trend"] == [0.0, 0.0]


def rho(t: int, extra: float = 0.0) -> float:
    """The trend ratio of one web.ten at 0 (fast 1 h, slow 2 h) at ``t``, with ``extra``
    positive points added at ``t``, by hand: (F * hs/hf) / S."""
    return (10 * 2 ** (-t / H) + extra) * 2 / (10 * 2 ** (-t / (2 * H)) + extra)


def test_trend_hysteresis(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {one: {}}
          initial: [{stage: one}]
        trend:
          trend: {fast: 1h, slow: 2h, margin: 0.25, hysteresis: 0.15}
        """,
        events="mail.half: {component: mail, points: 0.5}\n",
    )
    # rising is left below 1 + m - h = 1.1: 7.2e6 log2(2/1.1) = 6,209,974.629 -> 6,209,975;
    # falling still below 1 - m = 0.75 at 10,188,270 (as above).
    # At 13,000,000: F = 10 * 2^(-13/3.6) = 0.81837, S = 10 * 2^(-13/7.2) = 2.86071;
    # + 0.5: rho = 2 * 1.31837 / 3.36071 = 0.78458 < 1 - m + h = 0.9: stays falling;
    # + 0.5 more: rho = 2 * 1.81837 / 3.86071 = 0.94199 >= 0.9: falling -> steady.
    assert rho(6_209_974) >= 1.1 > rho(6_209_975)
    assert 0.75 <= rho(13_000_000, 0.5) < 0.9 <= rho(13_000_000, 1.0) < 1.25
    out, _ = reference_replay(
        model,
        [
            ev("e1", "web.ten", 0),
            ev("e2", "mail.half", 13_000_000),
            ev("e3", "mail.half", 13_000_000),
        ],
    )
    assert brief(out)[2:] == [
        ("trend", "rising", "steady", "trend", "rising_to_steady", 6_209_975, None),
        ("trend", "steady", "falling", "trend", "steady_to_falling", 10_188_270, None),
        ("trend", "falling", "steady", "trend", "falling_to_steady", 13_000_000, "e3"),
    ]


# ----------------------------------------------------------------------------- caps
def test_cap_reached_and_reset_in_the_next_window(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        """
        main:
          stages: {one: {}}
          initial: [{stage: one}]
        trend:
          trend: {fast: 1d, slow: 2d, margin: 0.25}
        """,
        events="web.view: {component: web, points: 10, cap: {count: 2, per: 1d}}\n",
        half_life="1d",
    )
    # Half-life 1 day, f(x h) = 2^(-x/24). T0 is 10:00 of UTC day k; midnight is T0 + 14 h.
    events = [
        ev("v1", "web.view", 0),  # day k
        ev("v2", "web.view", 6 * H),  # day k: n = 2 <= N, D = 10 f(6) + 10 = 18.408964152537145
        ev("v3", "web.view", 12 * H),  # day k: n = 3 > 2, each counts 2/3:
        # D = 2/3 (10 f(12) + 10 f(6) + 10) = 2/3 * 25.48003196440262 = 16.986687976268414
        ev("v4", "web.view", 14 * H),  # day k+1, n = 1: counts fully
        # D = 16.986687976268414 f(2) + 10 = 26.033298438338736
        ev("v5", "web.view", 2 * H),  # late, day k (still kept): n = 4, each 2/4:
        # D = 10 + 1/2 (10 f(14) + 10 f(8) + 10 f(2) + 10 f(12)) = 25.56050773468679
        ev("v6", "web.view", 38 * H),  # day k+2: keeps days k+1 and k+2, day k is forgotten
        # D = 10 + 10 f(24) + 1/2 (10 f(38) + 10 f(32) + 10 f(26) + 10 f(36)) = 22.780253867343397
        ev("v7", "web.view", 4 * H),  # late, day k: older than both kept windows: not counted
    ]
    want = [
        10.0,
        18.408964152537145,
        16.986687976268414,
        26.033298438338736,
        25.56050773468679,
        22.780253867343397,
        22.780253867343397,
    ]
    for n, d in enumerate(want, start=1):
        _, states = reference_replay(model, events[:n])
        assert states[("acme", "c1")].sums["web"] == pytest.approx(d, rel=1e-12), n
    state = states[("acme", "c1")]
    assert state.events_counted == 7
    assert [(w.k - (T0 // DAY), w.count) for w in state.windows["web.view"]] == [(1, 1), (2, 1)]
    # caps do not apply to the trend sums: after v3, F (fast = 1 d) = 10 f(12) + 10 f(6) + 10
    _, states = reference_replay(model, events[:3])
    assert states[("acme", "c1")].trend["trend"][0] == pytest.approx(25.48003196440262, rel=1e-12)


# ----------------------------------------------------------------------------- format 1
#: the default model as earlier releases wrote it (format 1: two halves)
FORMAT_1 = """\
version: "default-1"
components:
  email:    {half_life: 14d, saturation: 8}
  web:      {half_life: 7d,  saturation: 15}
  social:   {half_life: 14d, saturation: 5}
  commerce: {half_life: 60d, saturation: 5}
  product:  {half_life: 7d,  saturation: 20}
events:
  web.page_view:      {component: web, points: 1}
  web.form_submit:    {component: web, points: 5}
  email.sent:         {component: email, points: 0}
  email.open:         {component: email, points: 1}
  email.machine_open: {component: email, points: 0}
  email.click:        {component: email, points: 3}
  email.bounce:       {component: email, points: -1}
  email.unsubscribe:  {component: email, points: -10}
  social.like:        {component: social, points: 1}
  social.comment:     {component: social, points: 2}
  social.follow:      {component: social, points: 2}
  social.share:       {component: social, points: 3}
  commerce.cart_add:  {component: commerce, points: 2}
  commerce.purchase:  {component: commerce, points: 10, marks_customer: true}
  product.login:      {component: product, points: 1}
  product.core_action: {component: product, points: 2}
halves:
  pre_purchase:
    weights: {email: 0.35, web: 0.40, social: 0.15, commerce: 0.10}
    lower_stage: nurture
    upper_stage: purchase
    enter_upper_at: 60
    leave_upper_below: 45
  post_purchase:
    weights: {commerce: 0.45, product: 0.25, email: 0.15, web: 0.10, social: 0.05}
    lower_stage: exit
    upper_stage: retention
    enter_upper_at: 35
    leave_upper_below: 25
"""


def test_format_1_becomes_the_documented_lifecycle() -> None:
    """The conversion gives exactly the lifecycle of docs/models.md#the-default-model, which
    is what config/models/default.yaml (format 2) declares."""
    fmt1 = ReferenceModel.load(FORMAT_1)
    fmt2 = ReferenceModel.load(DEFAULT_MODEL)
    assert (fmt1.format, fmt2.format) == (1, 2)
    (stage,) = fmt1.lifecycles
    assert stage.name == "stage"
    assert stage.stages == {"nurture": "pre_purchase", "purchase": "pre_purchase",
                            "retention": "post_purchase", "exit": "post_purchase"}  # fmt: skip
    assert [(e.id, e.sources, e.target) for e in stage.edges] == [
        ("purchased", ("nurture", "purchase"), "retention"),
        ("engaged", ("nurture",), "purchase"),
        ("cooled", ("purchase",), "nurture"),
        ("returned", ("exit",), "retention"),
        ("lapsed", ("retention",), "exit"),
    ]
    assert [(e.id, e.stage) for e in stage.initial] == [
        ("initial_purchase", "purchase"),
        ("initial_nurture", "nurture"),
    ]
    assert fmt1.markers == ("customer",)
    assert fmt1.events["commerce.purchase"].sets == ("customer",)
    assert fmt1.legacy == (("nurture", "purchase", "exit", "retention"), "customer")
    for name in ("lifecycles", "events", "indices", "components", "markers", "legacy"):
        assert getattr(fmt2, name) == getattr(fmt1, name), name


def test_format_2_default_agrees_with_the_halves_reference() -> None:
    """config/models/default.yaml (format 2) gives, in the lifecycle reference, what the format
    1 file gives in ``tests.reference.engagement`` (docs/scoring.md's halves): bursts, gaps of
    days, late events."""
    new_model = ReferenceModel.load(DEFAULT_MODEL)
    old_model = old.load_model(FORMAT_1)
    types = list(old_model.events)
    compared = 0
    for seed in range(12):
        rng = random.Random(seed)
        t = T0
        records = []
        for n in range(300):
            t += rng.choice([0] * 12 + [S, H, DAY, 5 * DAY, 20 * DAY])
            at = t - rng.choice([0, 0, 0, 2 * DAY])
            records.append(
                json.dumps(
                    {
                        "event_id": f"e{n}",
                        "tenant": "acme",
                        "contact_id": f"c{rng.randrange(4)}",
                        "type": rng.choice(types),
                        "timestamp": format_time(at),
                    }
                )
            )
        until = t + 200 * DAY
        ref, want = old.run(records, old_model, until_ms=until)
        got, _ = reference_replay(new_model, records, until_ms=until)
        for key in ref.contacts:
            if key in ref.ambiguous:
                continue
            w = [x for x in want if (x.tenant, x.contact_id) == key]
            g = [x for x in got if (x.tenant, x.contact_id) == key]
            assert [
                (x.from_stage, x.to_stage, x.reason, x.half, x.occurred_at_ms, x.cause_event_id)
                for x in g
            ] == [
                (x.from_stage, x.to_stage, x.reason, x.half, x.occurred_at_ms, x.cause_event_id)
                for x in w
            ]
            for x, y in zip(g, w, strict=True):
                assert x.index == pytest.approx(y.index, rel=1e-9, abs=1e-9)
                assert x.previous_index == pytest.approx(y.previous_index, rel=1e-9, abs=1e-9)
                assert x.components == pytest.approx(y.components, rel=1e-9, abs=1e-9)
            compared += len(w)
    assert compared > 200


def test_the_shipped_models_load_and_replay() -> None:
    """The models the core is compared on load into the reference and replay (no hand values:
    the final stages are those of the last transitions, and the comparison helper agrees with
    the reference's own records)."""
    for name in ("default.yaml", "journey.yaml", "b2b-qualification.yaml"):
        model = ReferenceModel.load(DEFAULT_MODEL.parent / name)
        rng = random.Random(name)
        types = sorted(model.events)
        t = T0
        events = []
        for n in range(200):
            t += rng.choice([0] * 6 + [S, H, DAY, 3 * DAY])
            events.append(ev(f"e{n}", rng.choice(types), t - T0, f"c{rng.randrange(3)}"))
        out, states = reference_replay(model, events, until_ms=t + 60 * DAY)
        for key, state in states.items():
            mine = [x for x in out if (x.tenant, x.contact_id) == key]
            for lc in model.lifecycles:
                assert [x for x in mine if x.lifecycle == lc.name][-1].to_stage == state.stages[
                    lc.name
                ]
            records = [{**vars(x), "occurred_at": format_time(x.occurred_at_ms)} for x in mine]
            assert lifecycle_transition_mismatches(records, mine) == []
            records[-1]["rule_id"] = "other"
            assert len(lifecycle_transition_mismatches(records, mine)) == 1


# ----------------------------------------------------------------------------- the loader
@pytest.mark.parametrize(
    ("lifecycles", "message"),
    [
        ("a:\n  bands: {levels: {hi: 50, lo: 0}}\n", "'contact' is not allowed"),
        ("a:\n  stages: {x: {}}\n  initial: [{stage: y}]\n", "unknown stage 'y'"),
        (
            "a:\n  stages: {x: {}}\n  initial: [{stage: x, when: {marker: trial}}]\n",
            "last entry",
        ),
        (
            "a:\n  stages: {x: {}}\n  initial: [{stage: x}]\n"
            "  edges: [{id: e, from: x, to: x, when: {marker: nope}}]\n",
            "unknown marker 'nope'",
        ),
        ("a:\n  trend: {fast: 2h, slow: 1h, margin: 0.1}\n", "slow must be longer"),
        ("a:\n  trend: {fast: 1h, slow: 2h, margin: 0.1, hysteresis: 0.1}\n", "hysteresis"),
        (
            "a:\n  stages: {x: {}}\n  initial: [{stage: x}]\n"
            "b:\n  trend: {fast: 1h, slow: 2h, margin: 0.1}\n"
            "c:\n  trend: {fast: 1h, slow: 2h, margin: 0.1}\n",
            "at most one trend",
        ),
        (
            "a:\n  stages: {x: {}}\n  initial: [{stage: x}]\n"
            "  edges: [{id: e, from: x, to: x, reason: decay}]\n",
            "unknown reason 'decay'",
        ),
    ],
)
def test_the_loader_rejects(tmp_path: Path, lifecycles: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load(tmp_path, lifecycles)


def test_the_loader_rejects_markers_and_indices(tmp_path: Path) -> None:
    lifecycle = "a:\n  stages: {x: {}}\n  initial: [{stage: x}]\n"
    with pytest.raises(ModelError, match="sets and clears the same marker"):
        load(tmp_path, lifecycle, events="x.y: {component: web, points: 0, sets: [trial], "
             "clears: [trial]}\n")  # fmt: skip
    load(tmp_path, lifecycle)
    text = (tmp_path / "model.yaml").read_text()
    with pytest.raises(ModelError, match="'contact' is reserved"):
        ReferenceModel.load(text.replace("  eng:  {web: 1}", "  contact: {web: 1}"))
    with pytest.raises(ModelError, match="at most 16"):
        ReferenceModel.load(
            text.replace("markers: [customer, trial]", f"markers: {[f'm{n}' for n in range(17)]}")
            .replace("sets: [customer]", "sets: []")
            .replace("clears: [customer]", "clears: []")
            .replace("sets: [trial]", "sets: []")
        )
