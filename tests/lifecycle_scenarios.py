"""Hand-computed lifecycle scenarios (format 2 models), one construct each.

Shared by the replay tier (``tests/unit/core/test_lifecycle_scenarios.py``) and the broker tier
(``tests/integration/test_lifecycle_scenarios.py``): both feed the same records and compare
what comes out with the same expectations, written here as literals.

Every number is the documents' formula evaluated by hand (a calculator, never the code under
test), shown in the comment next to it:

* decayed sum ``D(t) = Σ p·2^(-(t-t_i)/h)``, score ``s = 100·D/(D+k)`` (0 when ``D <= 0``),
  index ``Σ w·s`` (docs/scoring.md#the-math);
* a decay crossing is the closed form ``t* = t_c + h·log2(D(t_c)/D_level)``, where
  ``D_level = k·L/(100-L)`` is the sum at which the score is ``L``; the change happens at the
  first whole millisecond at which the index is below the level, ``ceil(t*)`` (every ``t*``
  below is at least 0.1 ms away from a whole millisecond, so float rounding cannot move it);
* the trend ratio ``rho = (F·h_slow/h_fast)/S`` falls as ``rho0·2^(-(t-t_c)(1/h_fast - 1/h_slow))``
  (docs/models.md#trend);
* a time-driven change happens at its exact millisecond and moves the clock there.

Times are ms after ``t0``, a whole hour (so the 60 s cap windows ``[k·60 s, (k+1)·60 s)`` from
the epoch start at ``t0``). A contact's events are sent in the order listed; event ``n`` of
contact ``cid`` has the id ``f"{cid}-{n}"``.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import yaml

HOUR = 3_600_000
DAY = 86_400_000
#: the replay tier's t0: 2026-01-01T00:00:00.000Z (the broker tier uses a recent whole hour)
T0 = 1_767_225_600_000
#: index values are compared to this
INDEX_TOLERANCE = 1e-9


class Expected(NamedTuple):
    """One expected transition: ``at`` in ms after t0, ``cause`` the ``n`` of the event that
    caused it (None: time-driven), ``idx`` the index it reports."""

    lifecycle: str
    from_stage: str | None
    to_stage: str
    reason: str
    at: int
    rule_id: str | None
    cause: int | None
    idx: float


E = Expected


@dataclass(frozen=True)
class Scenario:
    """A model, each contact's events ``(ms after t0, type)`` and its expected transitions.

    ``resting``: per lifecycle of the model, the stage (and ``initial`` rule id) a contact
    enters that sends none of this scenario's events: what every other scenario's contact
    gets from this model's lifecycles when the models are merged (:func:`merged`).
    """

    name: str
    model_yaml: str
    events: Mapping[str, Sequence[tuple[int, str]]]
    expected: Mapping[str, Sequence[Expected]]
    resting: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def model(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(self.model_yaml)
        return data


# ----------------------------------------------------------------------------- 1. condition kinds
# One lifecycle k0 -> k1 -> ... -> k10, one edge out of each stage, each edge another kind of
# condition. a: h = 10 s, k = 10; c: h = 20 s, k = 10; idx = 0.5·s_a + 0.5·s_c.
KINDS_MODEL = """\
format: 2
version: "scenario-kinds-1"
components:
  k_a: {half_life: 10s, saturation: 10}
  k_c: {half_life: 20s, saturation: 10}
markers: [k_m]
events:
  kinds.hit:    {component: k_a, points: 10}
  kinds.ping:   {component: k_a, points: 0}
  kinds.mark:   {component: k_a, points: 0, sets: [k_m]}
  kinds.unmark: {component: k_a, points: 0, clears: [k_m]}
  kinds.chit:   {component: k_c, points: 10}
  kinds.poke:   {component: k_c, points: -100}
indices:
  k_idx: {k_a: 0.5, k_c: 0.5}
lifecycles:
  kinds:
    stages:
      k0: {index: k_idx}
      k1: {index: k_idx}
      k2: {index: k_idx}
      k3: {index: k_idx}
      k4: {index: k_idx}
      k5: {index: k_idx}
      k6: {index: k_idx}
      k7: {index: k_idx}
      k8: {index: k_idx}
      k9: {index: k_idx}
      k10: {index: k_idx}
    initial:
      - {stage: k0}
    edges:
      - {id: e_idx_up, from: k0, to: k1, when: {index: k_idx, at_least: 25}}
      - {id: e_event, from: k1, to: k2, when: {event: kinds.ping}}
      - {id: e_mark, from: k2, to: k3, when: {marker: k_m}}
      - {id: e_unmark, from: k3, to: k4, when: {marker: k_m, set: false}}
      - {id: e_wait, from: k4, to: k5, when: {in_stage_for: 5s}}
      - {id: e_since, from: k5, to: k6, when: {since_marker: k_m, at_least: 4s}}
      - {id: e_comp, from: k6, to: k7, when: {component: k_c, at_least: 50}}
      - id: e_all
        from: k7
        to: k8
        when: {all: [{event: kinds.ping}, {marker: k_m}]}
      - id: e_any
        from: k8
        to: k9
        when: {any: [{marker: k_m, set: false}, {event: kinds.poke}]}
      - {id: e_idx_down, from: k9, to: k10, when: {index: k_idx, below: 12}}
"""

KINDS_1 = [
    # t=0: D_a = 10, s_a = 100·10/20 = 50, s_c = 0: idx = 0.5·50 = 25 (exactly the level)
    E("kinds", None, "k0", "first_seen", 0, "initial_k0", 0, 25.0),
    E("kinds", "k0", "k1", "threshold", 0, "e_idx_up", 0, 25.0),
    # t=1000: D_a = 10·2^-0.1 = 9.330330, idx = 0.5·100·D_a/(D_a+10) = 24.1339...
    E("kinds", "k1", "k2", "event", 1_000, "e_event", 1, 24.133912758390736),
    # t=2000: D_a = 10·2^-0.2 = 8.705506 -> idx 23.2699...; a marker set, no level
    E("kinds", "k2", "k3", "customer_event", 2_000, "e_mark", 2, 23.269901930961822),
    # t=3000: D_a = 10·2^-0.3 = 8.122524 -> idx 22.4100...; "not set" is not
    # customer_event (that tests that a marker is set): any other edge is threshold
    E("kinds", "k3", "k4", "threshold", 3_000, "e_unmark", 3, 22.410024066994545),
    # entered k4 at 3000 + 5 s = 8000 exactly: D_a = 10·2^-0.8 = 5.743492 -> 18.2408...
    E("kinds", "k4", "k5", "time_in_stage", 8_000, "e_wait", None, 18.240844715627208),
    # k_m set at 9000 (event 4) + 4 s = 13000: D_a = 10·2^-1.3 = 4.061262 -> 14.4413...
    E("kinds", "k5", "k6", "time_in_stage", 13_000, "e_since", None, 14.441313969696504),
    # t=14000: D_c = 10 -> s_c = 50 (the level); D_a = 10·2^-1.4 = 3.789291 -> s_a =
    # 27.47996; idx = 0.5·27.47996 + 0.5·50 = 38.7400...
    E("kinds", "k6", "k7", "threshold", 14_000, "e_comp", 5, 38.73997873379976),
    # t=15000: kinds.ping and k_m set (since 9000): all holds. D_a = 10·2^-1.5 =
    # 3.535534 -> s_a = 26.12039; D_c = 10·2^-0.05 = 9.659363 -> s_c = 49.13365;
    # idx = 37.6270...
    E("kinds", "k7", "k8", "event", 15_000, "e_all", 6, 37.62702011771422),
    # t=16000: any (k_m is set, so only the kinds.poke branch holds). D_c = 10·2^-0.1
    # - 100 = -90.67 <= 0 -> s_c = 0; D_a = 10·2^-1.6 = 3.298770 -> s_a = 24.80507;
    # idx = 12.4025... (not yet below 12)
    E("kinds", "k8", "k9", "event", 16_000, "e_any", 7, 12.402537348432828),
    # idx = 0.5·s_a < 12 <=> D_a < 120/38 = 60/19; 10·2^(-t/10 s) = 60/19 <=>
    # t* = 10 000·log2(19/6) = 16 629.650 ms -> 16 630 (idx 11.99978; at 16 629: 12.00041)
    E("kinds", "k9", "k10", "decay", 16_630, "e_idx_down", None, 11.999778829239402),
]

KINDS = Scenario(
    name="condition_kinds",
    model_yaml=KINDS_MODEL,
    events={
        "kinds-1": [
            (0, "kinds.hit"),  # 0
            (1_000, "kinds.ping"),  # 1
            (2_000, "kinds.mark"),  # 2
            (3_000, "kinds.unmark"),  # 3
            (9_000, "kinds.mark"),  # 4: k_m set again at 9 000
            (14_000, "kinds.chit"),  # 5
            (15_000, "kinds.ping"),  # 6
            (16_000, "kinds.poke"),  # 7
        ]
    },
    expected={"kinds-1": KINDS_1},
    resting={"kinds": ("k0", "initial_k0")},
)

# ----------------------------------------------------------------------------- 2. bands
# One component, h = 10 s, k = 15, so the index is s = 100·D/(D+15): s = 40 at D = 10, 80 at
# D = 60; below 75 (hot - 5) at D < 45, below 35 (warm - 5) at D < 15·35/65 = 105/13.
BANDS_MODEL = """\
format: 2
version: "scenario-bands-1"
components:
  band_h: {half_life: 10s, saturation: 15}
events:
  band.p4:  {component: band_h, points: 4}
  band.p6:  {component: band_h, points: 6}
  band.p0:  {component: band_h, points: 0}
  band.p60: {component: band_h, points: 60}
  band.m60: {component: band_h, points: -60}
indices:
  band_i: {band_h: 1}
lifecycles:
  band:
    bands: {index: band_i, levels: {hot: 80, warm: 40, cold: 0}, hysteresis: 5}
"""

BAND_1 = [
    # D = 4: s = 400/19 = 21.05 -> cold
    E("band", None, "cold", "first_seen", 0, "initial_cold", 0, 21.05263157894737),
    # D = 4 + 6 = 10: s = 1000/25 = 40 exactly: up at the level
    E("band", "cold", "warm", "threshold", 0, "up_to_warm", 1, 40.0),
    # event 2 at 2000: D = 10·2^-0.2 = 8.7055, s = 36.72 < 40 but >= 35: no change.
    # Down below 35: 10·2^(-t/10 s) = 105/13 <=> t* = 10 000·log2(26/21) = 3 081.223
    # -> 3 082 (s = 34.99877; at 3 081: 35.00035)
    E("band", "warm", "cold", "decay", 3_082, "down_to_cold", None, 34.99877467782557),
    # t=5000: D = 10·2^-0.5 + 60 = 67.071068, s = 81.72: a jump over warm, one edge
    E("band", "cold", "hot", "threshold", 5_000, "up_to_hot", 3, 81.72315725879788),
    # below 75: 67.071068·2^(-(t-5000)/10 s) = 45 <=> t* = 5000 + 10 000·log2(67.071068/45)
    # = 10 757.656 -> 10 758 (s = 74.99955; at 10 757: 75.00085)
    E("band", "hot", "warm", "decay", 10_758, "down_to_warm", None, 74.99955251929843),
    # below 35: t* = 5000 + 10 000·log2(67.071068·13/105) = 35 538.129 -> 35 539
    # (s = 34.99863; at 35 538: 35.00020)
    E("band", "warm", "cold", "decay", 35_539, "down_to_cold", None, 34.99862599056503),
]

BAND_2 = [
    # D = 60: s = 6000/75 = 80 exactly: enters hot at the level
    E("band", None, "hot", "first_seen", 0, "initial_hot", 0, 80.0),
    # D = 60·2^-0.1 - 60 = -4.02 <= 0: s = 0, a jump down over warm (lowest band left)
    E("band", "hot", "cold", "threshold", 1_000, "down_to_cold", 1, 0.0),
]

BANDS = Scenario(
    name="bands_hysteresis",
    model_yaml=BANDS_MODEL,
    events={
        "band-1": [
            (0, "band.p4"),  # 0
            (0, "band.p6"),  # 1: D = 10 at the same ms
            (2_000, "band.p0"),  # 2: s = 36.7: below warm's 40, not below 35
            (5_000, "band.p60"),  # 3
        ],
        "band-2": [
            (0, "band.p60"),  # 0
            (1_000, "band.m60"),  # 1
        ],
    },
    expected={"band-1": BAND_1, "band-2": BAND_2},
    resting={"band": ("cold", "initial_cold")},
)

# ----------------------------------------------------------------------------- 3. a backward edge
# idle -> active -> champion, and champion -> idle (two stages back) when the index falls.
# b: h = 20 s, k = 10: s = 50 at D = 10, below 30 at D < 30/7.
BACKWARD_MODEL = """\
format: 2
version: "scenario-backward-1"
components:
  back_b: {half_life: 20s, saturation: 10}
events:
  back.hit:   {component: back_b, points: 10}
  back.share: {component: back_b, points: 0}
indices:
  back_i: {back_b: 1}
lifecycles:
  loop:
    stages:
      idle: {index: back_i}
      active: {index: back_i}
      champion: {index: back_i}
    initial:
      - {stage: idle}
    edges:
      - {id: activate, from: idle, to: active, when: {index: back_i, at_least: 50}}
      - {id: promote, from: active, to: champion, when: {event: back.share}}
      - {id: relapse, from: champion, to: idle, when: {index: back_i, below: 30}}
"""

BACK_1 = [
    # D = 10: s = 50, at the level of activate: first_seen then activate at once
    E("loop", None, "idle", "first_seen", 0, "initial_idle", 0, 50.0),
    E("loop", "idle", "active", "threshold", 0, "activate", 0, 50.0),
    # D = 10·2^-0.1 = 9.330330: s = 48.2678
    E("loop", "active", "champion", "event", 2_000, "promote", 1, 48.26782551678147),
    # backward: 10·2^(-t/20 s) = 30/7 <=> t* = 20 000·log2(7/3) = 24 447.848 -> 24 448
    # (s = 29.99989; at 24 447: 30.00062)
    E("loop", "champion", "idle", "decay", 24_448, "relapse", None, 29.999889684401158),
    # and forward again: D = 10·2^-1.5 + 10 = 13.535534, s = 57.511
    E("loop", "idle", "active", "threshold", 30_000, "activate", 2, 57.51105524111675),
]

BACKWARD = Scenario(
    name="backward_edge",
    model_yaml=BACKWARD_MODEL,
    events={
        "back-1": [
            (0, "back.hit"),  # 0
            (2_000, "back.share"),  # 1
            (30_000, "back.hit"),  # 2
        ]
    },
    expected={"back-1": BACK_1},
    resting={"loop": ("idle", "initial_idle")},
)

# ----------------------------------------------------------------------------- 4. time in stage
# lead -> trial on tis.start, trial -> expired after 30 s in trial, expired -> trial again on
# tis.start. w: h = 60 s, k = 1 (s = 100·D/(D+1)); tis.visit is worth 1, tis.start 0.
IN_STAGE_MODEL = """\
format: 2
version: "scenario-in-stage-1"
components:
  tis_w: {half_life: 60s, saturation: 1}
events:
  tis.visit: {component: tis_w, points: 1}
  tis.start: {component: tis_w, points: 0}
indices:
  tis_i: {tis_w: 1}
lifecycles:
  trial:
    stages:
      lead: {index: tis_i}
      trial: {index: tis_i}
      expired: {index: tis_i}
    initial:
      - {stage: lead}
    edges:
      - {id: start_trial, from: [lead, expired], to: trial, when: {event: tis.start}}
      - {id: expire, from: trial, to: expired, when: {in_stage_for: 30s}}
"""

TIS_1 = [
    # D = 1: s = 50
    E("trial", None, "lead", "first_seen", 0, "initial_lead", 0, 50.0),
    # D = 2^(-1234/60000) = 0.985844: s = 49.6436
    E("trial", "lead", "trial", "event", 1_234, "start_trial", 1, 49.64361286022871),
    # entered at 1234 + 30 000 = 31 234 exactly; D = 2^(-31234/60000) + 2^(-11234/60000)
    # = 0.697003 + 0.878271 = 1.575274: s = 61.1709
    E("trial", "trial", "expired", "time_in_stage", 31_234, "expire", None, 61.17087484614583),
    # D = 2^(-40000/60000) + 2^(-20000/60000) = 0.629961 + 0.793701 = 1.423661: s = 58.740
    E("trial", "expired", "trial", "event", 40_000, "start_trial", 3, 58.74010519681995),
    # 40 000 + 30 000 = 70 000; D = 2^(-7/6) + 2^(-5/6) = 0.445449 + 0.561231 = 1.006680
    E("trial", "trial", "expired", "time_in_stage", 70_000, "expire", None, 50.16645359372379),
]

IN_STAGE = Scenario(
    name="time_in_stage",
    model_yaml=IN_STAGE_MODEL,
    events={
        "tis-1": [
            (0, "tis.visit"),  # 0
            (1_234, "tis.start"),  # 1
            (20_000, "tis.visit"),  # 2: an event in trial does not restart the time in stage
            (40_000, "tis.start"),  # 3
        ]
    },
    expected={"tis-1": TIS_1},
    resting={"trial": ("lead", "initial_lead")},
)

# ----------------------------------------------------------------------------- 5. trend
# fast 10 s, slow 40 s: rho = 4·F/S falls as rho0·2^(-Δ·3/40 000) between events (rate = 1/10 000
# - 1/40 000 = 3/40 000 per ms). margin 0.25, hysteresis 0.15: rising at >= 1.25, falling
# below 0.75; rising -> steady below 1.10, falling -> steady at >= 0.90.
# Component w: h = 20 s, k = 10 (the stage index: the first declared weighting).
TREND_MODEL = """\
format: 2
version: "scenario-trend-1"
components:
  tr_w: {half_life: 20s, saturation: 10}
events:
  trend.ten: {component: tr_w, points: 10}
  trend.one: {component: tr_w, points: 1}
indices:
  tr_i: {tr_w: 1}
lifecycles:
  trend:
    trend: {fast: 10s, slow: 40s, margin: 0.25, hysteresis: 0.15}
"""
TREND_FAST_MS = 10_000
TREND_SLOW_MS = 40_000
#: (from ms, ratio at that ms, level, the first whole ms below it): the time-driven flips
TREND_CROSSINGS = (
    # F = S = 10: rho0 = 4; 4·2^(-3t/40 000) = 1.10 <=> t* = (40 000/3)·log2(4/1.1) = 24 833.286
    (0, 4.0, 1.1, 24_834),
    # t* = (40 000/3)·log2(4/0.75) = 32 200.49999
    (0, 4.0, 0.75, 32_201),
    # event at 60 000: F = 10·2^-6 + 10 = 10.15625, S = 10·2^-1.5 + 10 = 13.535534,
    # rho0 = 4·10.15625/13.535534 = 3.001359; t* = 60 000 + (40 000/3)·log2(rho0/1.1) = 79 308.167
    (60_000, 3.0013592579598005, 1.1, 79_309),
    # t* = 60 000 + (40 000/3)·log2(rho0/0.75) = 86 675.380
    (60_000, 3.0013592579598005, 0.75, 86_676),
    # two trend.one at 100 000: F = 10·2^-10 + 10·2^-4 + 2 = 2.634766, S = 10·2^-2.5 +
    # 10·2^-1 + 2 = 8.767767, rho0 = 4·F/S = 1.202024; t* = 100 000 + (40 000/3)·log2(rho0/0.75)
    # = 109 073.369
    (100_000, 1.2020235661526513, 0.75, 109_074),
)

TREND_1 = [
    # first event with points: rho = h_slow/h_fast = 4 >= 1.25; D = 10, s = 50
    E("trend", None, "rising", "first_seen", 0, "initial_rising", 0, 50.0),
    # D = 10·2^(-24834/20000) = 4.229: s = 29.7197
    E("trend", "rising", "steady", "trend", 24_834, "rising_to_steady", None, 29.71971153515538),
    # D = 10·2^(-32201/20000) = 3.275: s = 24.6754
    E("trend", "steady", "falling", "trend", 32_201, "steady_to_falling", None, 24.67536953077496),
    # rho0 = 3.001359 >= 1.25; D = 10·2^-3 + 10 = 11.25, s = 1125/21.25 = 52.9412
    E("trend", "falling", "rising", "trend", 60_000, "falling_to_rising", 1, 52.94117647058823),
    # D = 11.25·2^(-19309/20000) = 5.755: s = 36.5536
    E("trend", "rising", "steady", "trend", 79_309, "rising_to_steady", None, 36.55359695233287),
    # D = 11.25·2^(-26676/20000) = 4.463: s = 30.8586
    E("trend", "steady", "falling", "trend", 86_676, "steady_to_falling", None, 30.85863263455989),
    # D = 10·2^-5 + 10·2^-2 + 1 + 1 = 4.8125: s = 481.25/14.8125 = 32.4895
    E("trend", "falling", "steady", "trend", 100_000, "falling_to_steady", 3, 32.48945147679325),
    # D = 4.8125·2^(-9074/20000) = 3.5146: s = 26.0023
    E("trend", "steady", "falling", "trend", 109_074, "steady_to_falling", None, 26.0022951280069),
]

TREND = Scenario(
    name="trend",
    model_yaml=TREND_MODEL,
    events={
        "trend-1": [
            (0, "trend.ten"),  # 0
            (60_000, "trend.ten"),  # 1
            # 2: F = 1.634766, S = 7.767767: rho = 0.841820, >= 0.75 but < 0.90: stays falling
            (100_000, "trend.one"),
            (100_000, "trend.one"),  # 3: rho = 1.202024 >= 0.90 (< 1.25): steady
        ]
    },
    expected={"trend-1": TREND_1},
    resting={},  # a trend lifecycle follows every event: it is never merged (see GROUPS)
)

# ----------------------------------------------------------------------------- 6. caps
# cap.view: 1 point, at most 3 per 60 s window; c: h = 60 s, k = 3 (s = 100·D/(D+3)).
# base -> checked on cap.check (which reports the index), checked -> flooded at s >= 55
# (D >= 11/3: 5 uncapped views in a window would get there, 3 counted views do not).
CAP_MODEL = """\
format: 2
version: "scenario-cap-1"
components:
  cap_c: {half_life: 60s, saturation: 3}
events:
  cap.view:  {component: cap_c, points: 1, cap: {count: 3, per: 60s}}
  cap.check: {component: cap_c, points: 0}
indices:
  cap_i: {cap_c: 1}
lifecycles:
  capped:
    stages:
      base: {index: cap_i}
      checked: {index: cap_i}
      flooded: {index: cap_i}
    initial:
      - {stage: base}
    edges:
      - {id: checked, from: base, to: checked, when: {event: cap.check}}
      - {id: flood, from: checked, to: flooded, when: {component: cap_c, at_least: 55}}
"""

CAP_1 = [
    # D = 1: s = 100/4 = 25
    E("capped", None, "base", "first_seen", 1_000, "initial_base", 0, 25.0),
    # 5 views at one ms, each counts 3/5: D = 5·(3/5) = 3 exactly, s = 300/6 = 50
    # (uncapped D = 5 would give 62.5 and flood at once)
    E("capped", "base", "checked", "event", 1_000, "checked", 5, 50.0),
    # window 1 starts afresh: D = 3·2^-1 + 1 + 1 + 1 = 4.5, s = 450/7.5 = 60
    # (after views 6 and 7: 2.5 -> 45.45, 3.5 -> 53.85, not yet 55)
    E("capped", "checked", "flooded", "threshold", 61_000, "flood", 8, 60.0),
]

CAP_2 = [
    E("capped", None, "base", "first_seen", 0, "initial_base", 0, 25.0),
    # D = (3/4)·(2^-0.5 + 2^(-1/3) + 2^(-1/6) + 1) = 0.75·3.391706 = 2.543780:
    # s = 254.378/5.543780 = 45.8853
    E("capped", "base", "checked", "event", 30_000, "checked", 4, 45.885293783288546),
]

CAP = Scenario(
    name="cap",
    model_yaml=CAP_MODEL,
    events={
        "cap-1": [
            *[(1_000, "cap.view")] * 5,  # 0-4: n = 5 > 3 in window [0, 60 s)
            (1_000, "cap.check"),  # 5
            *[(61_000, "cap.view")] * 3,  # 6-8: the next window, n = 3
        ],
        "cap-2": [
            (0, "cap.view"),  # 0
            (10_000, "cap.view"),  # 1
            (20_000, "cap.view"),  # 2
            (30_000, "cap.view"),  # 3: n = 4 > 3, each counts 3/4 at its own time
            (30_000, "cap.check"),  # 4
        ],
    },
    expected={"cap-1": CAP_1, "cap-2": CAP_2},
    resting={"capped": ("base", "initial_base")},
)

# ----------------------------------------------------------------------------- 7. instant chain
# s0 -> s1 (marker vip) -> s2 (event chain.buy) -> s3 (index >= 50), all at one event; the edge
# s0 -> s3 on chain.buy, declared after s0 -> s1, loses the tie. w: h = 10 s, k = 10.
CHAIN_MODEL = """\
format: 2
version: "scenario-chain-1"
components:
  chain_w: {half_life: 10s, saturation: 10}
markers: [vip]
events:
  chain.visit: {component: chain_w, points: 1}
  chain.buy:   {component: chain_w, points: 10, sets: [vip]}
indices:
  chain_i: {chain_w: 1}
lifecycles:
  chain:
    stages:
      s0: {index: chain_i}
      s1: {index: chain_i}
      s2: {index: chain_i}
      s3: {index: chain_i}
    initial:
      - {stage: s0}
    edges:
      - {id: c_marker, from: s0, to: s1, when: {marker: vip}}
      - {id: c_skip, from: s0, to: s3, when: {event: chain.buy}}
      - {id: c_event, from: s1, to: s2, when: {event: chain.buy}}
      - {id: c_level, from: s2, to: s3, when: {index: chain_i, at_least: 50}}
"""

CHAIN_1 = [
    # D = 1: s = 100/11 = 9.0909
    E("chain", None, "s0", "first_seen", 0, "initial_s0", 0, 9.090909090909092),
    # D = 2^-0.5 + 10 = 10.707107: s = 1070.71/20.707107 = 51.7074 (>= 50); three
    # edges at the same ms, one per edge, in order
    E("chain", "s0", "s1", "customer_event", 5_000, "c_marker", 1, 51.70740120447197),
    E("chain", "s1", "s2", "event", 5_000, "c_event", 1, 51.70740120447197),
    E("chain", "s2", "s3", "threshold", 5_000, "c_level", 1, 51.70740120447197),
]

CHAIN = Scenario(
    name="instant_chain",
    model_yaml=CHAIN_MODEL,
    events={"chain-1": [(0, "chain.visit"), (5_000, "chain.buy")]},
    expected={"chain-1": CHAIN_1},
    resting={"chain": ("s0", "initial_s0")},
)

SCENARIOS = (KINDS, BANDS, BACKWARD, IN_STAGE, TREND, CAP, CHAIN)
#: the broker tier's worker runs: scenarios whose models are merged into one (a trend
#: lifecycle follows every event of a model, so the trend scenario runs on its own)
GROUPS = {
    "six_constructs": (KINDS, BANDS, BACKWARD, IN_STAGE, CAP, CHAIN),
    "trend": (TREND,),
}


# ----------------------------------------------------------------------------- helpers
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(ms: int) -> str:
    """RFC 3339 with milliseconds, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def ms_of(text: str) -> int:
    """Epoch ms of an output timestamp ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def event(cid: str, n: int, ts_ms: int, etype: str) -> bytes:
    """A canonical event, shaped like ``tests.integration.test_worker_faults.good_event``."""
    return json.dumps(
        {
            "event_id": f"{cid}-{n}",
            "tenant": "acme",
            "contact_id": cid,
            "type": etype,
            "timestamp": iso(ts_ms),
        }
    ).encode()


def records(scenarios: Iterable[Scenario], t0: int) -> list[tuple[str, bytes]]:
    """``(contact_id, value)`` of every scenario's events, each contact's in its order."""
    return [
        (cid, event(cid, n, t0 + at, etype))
        for scenario in scenarios
        for cid, events in scenario.events.items()
        for n, (at, etype) in enumerate(events)
    ]


def merged(scenarios: Sequence[Scenario]) -> tuple[str, dict[str, list[Expected]]]:
    """One model holding every scenario's lifecycles, and the transitions it must give.

    The names of the scenarios are disjoint, so each contact still sees only its own
    scenario's components, markers and events; from every other lifecycle it gets one
    ``first_seen`` into the resting stage at its first event (index 0), evaluated in the
    merged model's lifecycle order at that instant.
    """
    model: dict[str, Any] = {"format": 2, "version": "scenarios-merged-1"}
    for key in ("components", "events", "indices", "lifecycles"):
        model[key] = {}
    model["markers"] = []
    for scenario in scenarios:
        part = scenario.model
        for key in ("components", "events", "indices", "lifecycles"):
            assert not set(part[key]) & set(model[key]), (scenario.name, key)
            model[key].update(part[key])
        model["markers"] += part.get("markers", [])
    order = {name: i for i, name in enumerate(model["lifecycles"])}
    expected: dict[str, list[Expected]] = {}
    for scenario in scenarios:
        foreign = [
            (lifecycle, stage, rule)
            for other in scenarios
            if other is not scenario
            for lifecycle, (stage, rule) in other.resting.items()
        ]
        for cid, transitions in scenario.expected.items():
            first_at = scenario.events[cid][0][0]
            first = [t for t in transitions if t.cause == 0]
            rest = [t for t in transitions if t.cause != 0]
            first += [
                E(lc, None, stage, "first_seen", first_at, rule, 0, 0.0)
                for lc, stage, rule in foreign
            ]
            first.sort(key=lambda t: order[t.lifecycle])  # stable: a chain keeps its order
            expected[cid] = first + rest
    return yaml.safe_dump(model, sort_keys=False), expected


def by_contact(transitions: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Transitions (JSON dicts) per contact id in emission order; a repeated id counts once."""
    seen: set[str] = set()
    out: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for t in transitions:
        if t["transition_id"] not in seen:
            seen.add(t["transition_id"])
            out[str(t["contact_id"])].append(t)
    return out


def _cause(cause_event_id: str | None, cid: str) -> int | None:
    """The ``n`` of ``f"{cid}-{n}"`` (-1 for any other event id)."""
    if cause_event_id is None:
        return None
    n = cause_event_id.removeprefix(f"{cid}-")
    return int(n) if n != cause_event_id and n.isdigit() else -1


def as_expected(t: Mapping[str, Any], cid: str, t0: int) -> Expected:
    """An output transition in the form of an :class:`Expected` (times after ``t0``)."""
    return E(
        t["lifecycle"],
        t["from_stage"],
        t["to_stage"],
        t["reason"],
        ms_of(t["occurred_at"]) - t0,
        t["rule_id"],
        _cause(t["cause_event_id"], cid),
        float(t["index"]),
    )


def mismatches(
    got: Mapping[str, Sequence[Mapping[str, Any]]],
    want: Mapping[str, Sequence[Expected]],
    t0: int,
) -> list[str]:
    """Every difference between the transitions ``got`` and the expectations, per contact."""
    problems = []
    for cid in sorted(set(got) | set(want)):
        have = [as_expected(t, cid, t0) for t in got.get(cid, [])]
        expected = list(want.get(cid, []))
        if len(have) != len(expected):
            problems.append(f"{cid}: {len(have)} transitions, expected {len(expected)}")
        for i in range(max(len(have), len(expected))):
            h = have[i] if i < len(have) else None
            w = expected[i] if i < len(expected) else None
            if h is None or w is None or h[:-1] != w[:-1] or abs(h.idx - w.idx) > INDEX_TOLERANCE:
                problems.append(f"{cid} #{i}: got {h}, expected {w}")
    return problems
