"""A plain reference implementation of ``docs/models.md`` (declarative lifecycles).

Written from ``docs/models.md`` and ``docs/scoring.md`` alone, importing nothing from
``engagement_index`` (the model YAML is read with PyYAML, times with ``tests.reference``'s own
parser). It covers format 2 model files and format 1 files through the documented conversion,
and, per contact: the decayed sums (late events included), markers, caps, the trend sums, the
``initial`` entries, the same-instant chains, lifecycles in declared order with the ``contact``
index, the reasons, ``previous_index`` and the time-driven changes.

API::

    model = ReferenceModel.load(path_or_yaml_text)
    transitions, states = reference_replay(model, events, until_ms=None)

or, step by step, ``ref = LifecycleReference(model)``, ``ref.feed(event)`` (one event in
arrival order, its transitions), ``ref.advance(key, until_ms)`` (a wake-up),
``ref.finish(until_ms)``, ``ref.evaluate(key, at_ms)``. Events are dicts shaped like the
canonical envelope (``event_id``, ``tenant`` (default ``"default"``), ``contact_id``, ``type``,
``timestamp`` RFC 3339) or their JSON text. Duplicates are not recognised here (every event
fed is applied); ``tests.reference.engagement`` models them for the two-halves model.
``finish`` and ``advance`` give one wake-up per contact (``previous_index`` depends on the
instants only, see :meth:`LifecycleReference._chains`).

Not modelled: model changes (``model_change``, the ``legacy`` mapping of old states: the key is
read and kept), activity days, and the loader's reachability, same-instant cycle and
duplicate-key checks (the reference loads what it can run).

How it finds time-driven changes (independently of how the core solves them): between events
nothing but time changes and every atom is monotone in time, so each value atom
(``index``/``component``/``trend_ratio``) flips at most once after the clock. That flip is
found by exponential probing then bisection over whole milliseconds on the exact float
predicate (every stored value rebased ``v * 2.0 ** (-delta_ms / h)``, then the score, index or
ratio as documented); time atoms give their times directly. The candidate times of all atoms of
all edges out of the current stages, plus the first millisecond after the clock, are then tried
in increasing order, each by evaluating every such edge's whole condition at that millisecond:
the first one at which some edge holds is the due time. No closed forms are used.

Points where the documents leave a choice are marked ``READING:`` below; each names the
reading taken.

Floats are not computed exactly as the core computes them (the order of a few additions may
differ), so compare with a tolerance (1e-9; due times to 1 ms). A comparison that falls within
:func:`tolerance` of its level makes the outcome undecidable between two
implementations; the contacts concerned are listed in :attr:`LifecycleReference.ambiguous`.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.reference.engagement import DECISION_TOLERANCE, MAX_MS, parse_time

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
CONTACT = "contact"
REASONS = (
    "first_seen",
    "customer_event",
    "event",
    "threshold",
    "decay",
    "time_in_stage",
    "trend",
    "model_change",
)
TREND_STAGES = ("rising", "steady", "falling")
#: the reasons an edge may name (docs/models.md#what-the-loader-rejects)
NAMED_REASONS = ("customer_event", "event", "threshold")
_UNITS_S = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}


class ModelError(ValueError):
    """A model file the reference cannot load (the message names the field)."""


def duration_ms(value: Any, where: str) -> float:
    """A duration: a number of seconds, or a number with a unit d/h/m/s, in milliseconds.

    READING: a duration that is not a whole number of milliseconds is kept as is; a time
    atom with it first holds at the next whole millisecond (ceil).
    """
    if isinstance(value, bool):
        raise ModelError(f"{where}: a duration must be a number or a string")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            if text and text[-1] in _UNITS_S:
                seconds = float(text[:-1]) * _UNITS_S[text[-1]]
            else:
                seconds = float(text)
        except ValueError:
            raise ModelError(f"{where}: not a duration: {value!r}") from None
    ms = seconds * 1000.0
    if not ms >= 1.0 or math.isinf(ms):
        raise ModelError(f"{where}: a duration must be at least 1 ms")
    return ms


# ----------------------------------------------------------------------------- conditions
@dataclass(frozen=True)
class Level:
    """``{index|component: NAME, at_least|below: L}`` or ``{trend_ratio: {...}}``.

    ``kind`` is ``index`` (``name`` a weighting or ``contact``), ``component`` or ``trend``
    (``name`` the trend lifecycle whose ratio it is).
    """

    kind: str
    name: str
    op: str  # "at_least" | "below"
    level: float


@dataclass(frozen=True)
class EventIs:
    types: frozenset[str]


@dataclass(frozen=True)
class MarkerIs:
    name: str
    value: bool


@dataclass(frozen=True)
class InStageFor:
    ms: float


@dataclass(frozen=True)
class SinceMarker:
    name: str
    ms: float


@dataclass(frozen=True)
class All:
    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Condition, ...]


Condition = Level | EventIs | MarkerIs | InStageFor | SinceMarker | All | AnyOf
ALWAYS: Condition = All(())


def atoms(cond: Condition) -> Iterable[Condition]:
    """Every atom of a condition (all/any flattened)."""
    if isinstance(cond, All | AnyOf):
        for part in cond.parts:
            yield from atoms(part)
    else:
        yield cond


def tests_event(cond: Condition) -> bool:
    return any(isinstance(a, EventIs) for a in atoms(cond))


def tests_marker_set(cond: Condition) -> bool:
    """A ``{marker: NAME}`` atom (set: true) in the condition.

    READING: "tests that a marker is set" means a ``marker`` atom with ``set: true``;
    ``since_marker`` (which also needs the marker set) is a time condition, not a marker
    test.
    """
    return any(isinstance(a, MarkerIs) and a.value for a in atoms(cond))


def has_level(cond: Condition, op: str | None = None) -> bool:
    """An ``index``/``component``/``trend_ratio`` atom (with ``op``, if given)."""
    return any(isinstance(a, Level) and op in (None, a.op) for a in atoms(cond))


def has_time(cond: Condition) -> bool:
    """READING: decided on the edge's condition as written (an ``in_stage_for`` or
    ``since_marker`` anywhere in it), not on which part of it made it hold."""
    return any(isinstance(a, InStageFor | SinceMarker) for a in atoms(cond))


# ----------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class ComponentSpec:
    name: str
    half_life_ms: float
    saturation: float


@dataclass(frozen=True)
class Cap:
    count: int
    per_ms: float


@dataclass(frozen=True)
class EventSpec:
    type: str
    component: str
    points: float
    sets: tuple[str, ...] = ()
    clears: tuple[str, ...] = ()
    cap: Cap | None = None


@dataclass(frozen=True)
class Entry:
    stage: str
    when: Condition
    id: str  # the rule_id of its first_seen transition (default ``initial_<stage>``)


@dataclass(frozen=True)
class Edge:
    id: str  # `bands:` writes up_to_<band>/down_to_<band>, `trend:` <from>_to_<to>
    sources: tuple[str, ...]
    target: str
    when: Condition
    reason: str | None = None


@dataclass(frozen=True)
class TrendSpec:
    fast_ms: float
    slow_ms: float
    margin: float
    hysteresis: float = 0.0


@dataclass(frozen=True)
class Lifecycle:
    name: str
    kind: str  # "stages" | "bands" | "trend"
    stages: dict[str, str]  # stage -> the weighting it reports (or "contact")
    initial: tuple[Entry, ...]
    edges: tuple[Edge, ...]
    trend: TrendSpec | None = None


@dataclass(frozen=True)
class ReferenceModel:
    version: str
    format: int
    components: tuple[ComponentSpec, ...]
    markers: tuple[str, ...]
    events: dict[str, EventSpec]
    indices: dict[str, dict[str, float]]
    lifecycles: tuple[Lifecycle, ...]
    #: ``legacy: {stages: [...4], marker: ...}`` (how states of format 1 engines map); kept,
    #: not used: the reference has no states from before format 2
    legacy: tuple[tuple[str, ...], str | None] | None = None

    @classmethod
    def load(cls, source: str | Path) -> ReferenceModel:
        """A model from a file path (``Path``, or a ``str`` naming an existing file) or YAML
        text; format 2, or format 1 through the documented conversion."""
        if isinstance(source, Path) or (
            "\n" not in source and source.endswith((".yaml", ".yml")) and Path(source).exists()
        ):
            text = Path(source).read_text()
        else:
            text = source
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise ModelError("a model is a mapping")
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ReferenceModel:
        fmt = raw.get("format", 1)
        if fmt == 2:
            return _Loader(raw).model()
        if fmt == 1 or "format" not in raw:
            return _Loader(format1_to_format2(raw), fmt=1).model()
        raise ModelError(f"format: unknown format {fmt!r}")

    # ---- lookups
    def component(self, name: str) -> ComponentSpec:
        return next(c for c in self.components if c.name == name)

    def lifecycle(self, name: str) -> Lifecycle:
        return next(lc for lc in self.lifecycles if lc.name == name)

    @property
    def trend_lifecycles(self) -> tuple[Lifecycle, ...]:
        return tuple(lc for lc in self.lifecycles if lc.kind == "trend")


def format1_to_format2(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The format 2 mapping of a format 1 file, as docs/models.md#the-default-model shows it:
    one lifecycle ``stage``, indices named after the halves, a ``customer`` marker set by the
    ``marks_customer`` event types."""
    halves = raw["halves"]
    pre, post = halves["pre_purchase"], halves["post_purchase"]
    events = {}
    for etype, spec in raw["events"].items():
        spec = dict(spec)
        if spec.pop("marks_customer", False):
            spec["sets"] = ["customer"]
        events[etype] = spec
    return {
        "format": 2,
        "version": raw["version"],
        "components": raw["components"],
        "markers": ["customer"],
        "events": events,
        "indices": {"pre_purchase": pre["weights"], "post_purchase": post["weights"]},
        "legacy": {
            "stages": [
                pre["lower_stage"],
                pre["upper_stage"],
                post["lower_stage"],
                post["upper_stage"],
            ],
            "marker": "customer",
        },
        "lifecycles": {
            "stage": {
                "stages": {
                    pre["lower_stage"]: {"index": "pre_purchase"},
                    pre["upper_stage"]: {"index": "pre_purchase"},
                    post["upper_stage"]: {"index": "post_purchase"},
                    post["lower_stage"]: {"index": "post_purchase"},
                },
                "initial": [
                    {
                        "stage": pre["upper_stage"],
                        "when": {"index": "pre_purchase", "at_least": pre["enter_upper_at"]},
                    },
                    {"stage": pre["lower_stage"]},
                ],
                "edges": [
                    {
                        "id": "purchased",
                        "from": [pre["lower_stage"], pre["upper_stage"]],
                        "to": post["upper_stage"],
                        "when": {"marker": "customer"},
                    },
                    {
                        "id": "engaged",
                        "from": pre["lower_stage"],
                        "to": pre["upper_stage"],
                        "when": {"index": "pre_purchase", "at_least": pre["enter_upper_at"]},
                    },
                    {
                        "id": "cooled",
                        "from": pre["upper_stage"],
                        "to": pre["lower_stage"],
                        "when": {"index": "pre_purchase", "below": pre["leave_upper_below"]},
                    },
                    {
                        "id": "returned",
                        "from": post["lower_stage"],
                        "to": post["upper_stage"],
                        "when": {"index": "post_purchase", "at_least": post["enter_upper_at"]},
                    },
                    {
                        "id": "lapsed",
                        "from": post["upper_stage"],
                        "to": post["lower_stage"],
                        "when": {"index": "post_purchase", "below": post["leave_upper_below"]},
                    },
                ],
            }
        },
    }


def _keys(raw: Any, where: str, allowed: set[str], required: Iterable[str] = ()) -> None:
    if not isinstance(raw, dict):
        raise ModelError(f"{where}: must be a mapping")
    for key in raw:
        if key not in allowed:
            raise ModelError(f"{where}: unknown key {key!r}")
    for key in required:
        if key not in raw:
            raise ModelError(f"{where}: {key} is required")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or NAME.fullmatch(value) is None:
        raise ModelError(f"{where}: invalid name {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelError(f"{where}: must be a number")
    return float(value)


class _Loader:
    """Builds a :class:`ReferenceModel` from a format 2 mapping (light validation: what the
    reference needs to run; not the reachability or same-instant cycle checks)."""

    def __init__(self, raw: Mapping[str, Any], fmt: int = 2) -> None:
        self.raw = raw
        self.fmt = fmt

    def model(self) -> ReferenceModel:
        raw = self.raw
        _keys(
            raw,
            "model",
            {
                "format",
                "version",
                "components",
                "markers",
                "events",
                "indices",
                "lifecycles",
                "legacy",
                "accounts",  # READING: the account section; tests/reference/accounts.py reads it
            },
            {"version", "components", "events", "indices", "lifecycles"},
        )
        components = tuple(self._component(name, spec) for name, spec in raw["components"].items())
        self.component_names = {c.name for c in components}
        self.markers = tuple(
            _name(m, f"markers[{n}]") for n, m in enumerate(raw.get("markers") or [])
        )
        if len(self.markers) > 16:
            raise ModelError("markers: at most 16")
        events = {etype: self._event(etype, spec) for etype, spec in raw["events"].items()}
        self.event_types = set(events)
        indices = {
            _name(name, f"indices.{name}"): self._weights(name, weights)
            for name, weights in raw["indices"].items()
        }
        if CONTACT in indices:
            raise ModelError("indices.contact: the name 'contact' is reserved")
        if not indices:
            raise ModelError("indices: at least one weighting is required")
        self.index_names = set(indices)
        self.first_index = next(iter(indices))
        lifecycles_raw = raw["lifecycles"]
        if not isinstance(lifecycles_raw, dict) or not lifecycles_raw:
            raise ModelError("lifecycles: at least one lifecycle is required")
        # the first trend lifecycle is the one a `trend_ratio` condition refers to
        self.trend_name = next(
            (n for n, s in lifecycles_raw.items() if isinstance(s, dict) and "trend" in s), None
        )
        lifecycles = tuple(
            self._lifecycle(name, spec, first=(n == 0))
            for n, (name, spec) in enumerate(lifecycles_raw.items())
        )
        legacy = None
        if raw.get("legacy") is not None:
            spec = raw["legacy"]
            _keys(spec, "legacy", {"stages", "marker"}, {"stages"})
            first = lifecycles[0]
            stages = tuple(spec["stages"])
            if len(stages) != 4 or any(st not in first.stages for st in stages):
                raise ModelError("legacy.stages: four stages of the first lifecycle")
            marker = spec.get("marker")
            if marker is not None and marker not in self.markers:
                raise ModelError(f"legacy.marker: unknown marker {marker!r}")
            legacy = (stages, marker)
        return ReferenceModel(
            version=str(raw["version"]),
            format=self.fmt,
            components=components,
            markers=self.markers,
            events=events,
            indices=indices,
            lifecycles=lifecycles,
            legacy=legacy,
        )

    def _component(self, name: str, spec: Any) -> ComponentSpec:
        where = f"components.{name}"
        _name(name, where)
        _keys(spec, where, {"half_life", "saturation"}, {"half_life", "saturation"})
        saturation = _number(spec["saturation"], f"{where}.saturation")
        if not saturation > 0:
            raise ModelError(f"{where}.saturation: must be positive")
        return ComponentSpec(name, duration_ms(spec["half_life"], f"{where}.half_life"), saturation)

    def _event(self, etype: str, spec: Any) -> EventSpec:
        where = f"events.{etype}"
        allowed = {"component", "points", "sets", "clears", "cap"}
        if self.fmt == 1:
            allowed.add("marks_customer")
        _keys(spec, where, allowed, {"component", "points"})
        if spec["component"] not in self.component_names:
            raise ModelError(f"{where}.component: unknown component {spec['component']!r}")
        marks = []
        for key in ("sets", "clears"):
            names = tuple(spec.get(key) or ())
            for n, m in enumerate(names):
                if m not in self.markers:
                    raise ModelError(f"{where}.{key}[{n}]: unknown marker {m!r}")
            marks.append(names)
        if set(marks[0]) & set(marks[1]):
            raise ModelError(f"{where}: sets and clears the same marker")
        cap = None
        if "cap" in spec:
            _keys(spec["cap"], f"{where}.cap", {"count", "per"}, {"count", "per"})
            count = spec["cap"]["count"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ModelError(f"{where}.cap.count: must be a positive integer")
            cap = Cap(count, duration_ms(spec["cap"]["per"], f"{where}.cap.per"))
        return EventSpec(
            etype,
            spec["component"],
            _number(spec["points"], f"{where}.points"),
            marks[0],
            marks[1],
            cap,
        )

    def _weights(self, name: str, weights: Any) -> dict[str, float]:
        where = f"indices.{name}"
        if not isinstance(weights, dict):
            raise ModelError(f"{where}: must be a mapping")
        out = {}
        for comp, w in weights.items():
            if comp not in self.component_names:
                raise ModelError(f"{where}: unknown component {comp!r}")
            value = _number(w, f"{where}.{comp}")
            if not 0.0 <= value <= 1.0:
                raise ModelError(f"{where}.{comp}: must be in [0, 1]")
            out[comp] = value
        total = sum(out.values())
        if abs(total - 1.0) > 1e-9:
            raise ModelError(f"{where}: sum to {total}, must sum to 1")
        return out

    # ---- lifecycles
    def _index_ref(self, name: Any, where: str, first: bool) -> str:
        if name == CONTACT:
            if first:
                raise ModelError(f"{where}: 'contact' is not allowed in the first lifecycle")
            return CONTACT
        if name not in self.index_names:
            raise ModelError(f"{where}: unknown index {name!r}")
        return str(name)

    def _default_index(self, first: bool) -> str:
        return self.first_index if first else CONTACT

    def _lifecycle(self, name: str, spec: Any, *, first: bool) -> Lifecycle:
        where = f"lifecycles.{name}"
        _name(name, where)
        if isinstance(spec, dict) and "bands" in spec:
            _keys(spec, where, {"bands"})
            return self._bands(name, spec["bands"], first=first)
        if isinstance(spec, dict) and "trend" in spec:
            _keys(spec, where, {"trend"})
            return self._trend(name, spec["trend"], first=first)
        _keys(spec, where, {"stages", "initial", "edges"}, {"stages", "initial"})
        stages: dict[str, str] = {}
        for stage, options in spec["stages"].items():
            swhere = f"{where}.stages.{stage}"
            _name(stage, swhere)
            options = options or {}
            _keys(options, swhere, {"index"})
            stages[stage] = (
                self._index_ref(options["index"], f"{swhere}.index", first)
                if "index" in options
                else self._default_index(first)
            )

        def stage_ref(value: Any, w: str) -> str:
            if value not in stages:
                raise ModelError(f"{w}: unknown stage {value!r}")
            return str(value)

        initial = []
        for n, entry in enumerate(spec["initial"]):
            ewhere = f"{where}.initial[{n}]"
            _keys(entry, ewhere, {"id", "stage", "when"}, {"stage"})
            stage = stage_ref(entry["stage"], f"{ewhere}.stage")
            initial.append(
                Entry(
                    stage,
                    self._when(entry, ewhere, first),
                    _name(entry.get("id") or f"initial_{stage}", f"{ewhere}.id"),
                )
            )
        if not initial or spec["initial"][-1].get("when") is not None:
            raise ModelError(f"{where}.initial: the last entry must have no `when`")
        edges = []
        ids: set[str] = set()
        for n, edge in enumerate(spec.get("edges") or []):
            ewhere = f"{where}.edges[{n}]"
            _keys(edge, ewhere, {"id", "from", "to", "when", "reason"}, {"id", "from", "to"})
            edge_id = _name(edge["id"], f"{ewhere}.id")
            if edge_id in ids:
                raise ModelError(f"{ewhere}.id: duplicate edge id {edge_id!r}")
            ids.add(edge_id)
            sources = edge["from"] if isinstance(edge["from"], list) else [edge["from"]]
            reason = edge.get("reason")
            if reason is not None and reason not in NAMED_REASONS:
                raise ModelError(f"{ewhere}.reason: unknown reason {reason!r}")
            edges.append(
                Edge(
                    edge_id,
                    tuple(stage_ref(s, f"{ewhere}.from") for s in sources),
                    stage_ref(edge["to"], f"{ewhere}.to"),
                    self._when(edge, ewhere, first),
                    reason,
                )
            )
        return Lifecycle(name, "stages", stages, tuple(initial), tuple(edges))

    def _when(self, raw: Mapping[str, Any], where: str, first: bool) -> Condition:
        """An edge's or entry's ``when`` (no ``when``, or ``when: null``: always)."""
        if raw.get("when") is None:
            return ALWAYS
        return self._cond(raw["when"], f"{where}.when", first)

    def _bands(self, name: str, spec: Any, *, first: bool) -> Lifecycle:
        """The written-out form of docs/models.md#bands.

        READING: the edges are the ones the doc writes out ("up to each higher band (highest
        first, at_least: level), then down to each lower band (lowest first, below: level of
        the band above it - hysteresis)"); so a fall over several bands is one transition to
        the lowest band whose upper neighbour was left, not one per band.
        READING: `hysteresis` defaults to 0 (as in schemas/scoring-model.json; the doc does not
        say); levels may come in any order (sorted here). The initial entries have the default
        ids, ``initial_<band>``.
        """
        where = f"lifecycles.{name}.bands"
        _keys(spec, where, {"index", "levels", "hysteresis"}, {"levels"})
        index = self._index_ref(spec.get("index", CONTACT), f"{where}.index", first)
        levels = {
            _name(b, f"{where}.levels.{b}"): _number(v, f"{where}.levels.{b}")
            for b, v in spec["levels"].items()
        }
        if 0.0 not in levels.values():
            raise ModelError(f"{where}.levels: the lowest level must be 0")
        if len(set(levels.values())) != len(levels):
            raise ModelError(f"{where}.levels: levels must differ")
        hysteresis = _number(spec.get("hysteresis", 0), f"{where}.hysteresis")
        asc = sorted(levels.items(), key=lambda item: item[1])  # lowest first
        stages = {band: index for band, _ in sorted(asc, key=lambda item: -item[1])}
        initial = [
            Entry(
                band,
                Level("index", index, "at_least", level) if level > 0 else ALWAYS,
                f"initial_{band}",
            )
            for band, level in reversed(asc)
        ]
        edges = []
        for i, (band, _) in enumerate(asc):
            for j in range(len(asc) - 1, i, -1):  # up, highest first
                up = asc[j][0]
                edges.append(
                    Edge(f"up_to_{up}", (band,), up, Level("index", index, "at_least", asc[j][1]))
                )
            for j in range(i):  # down, lowest first
                down, below = asc[j][0], asc[j + 1][1] - hysteresis
                edges.append(
                    Edge(f"down_to_{down}", (band,), down, Level("index", index, "below", below))
                )
        return Lifecycle(name, "bands", stages, tuple(initial), tuple(edges))

    def _trend(self, name: str, spec: Any, *, first: bool) -> Lifecycle:
        where = f"lifecycles.{name}.trend"
        _keys(spec, where, {"fast", "slow", "margin", "hysteresis"}, {"fast", "slow", "margin"})
        if self.trend_name != name:
            raise ModelError(f"{where}: at most one trend lifecycle per model")
        fast = duration_ms(spec["fast"], f"{where}.fast")
        slow = duration_ms(spec["slow"], f"{where}.slow")
        if not slow > fast:
            raise ModelError(f"{where}: slow must be longer than fast")
        m = _number(spec["margin"], f"{where}.margin")
        h = _number(spec.get("hysteresis", 0), f"{where}.hysteresis")
        if not 0.0 < m < 1.0:
            raise ModelError(f"{where}.margin: must be in (0, 1)")
        if not 0.0 <= h < m:
            raise ModelError(f"{where}.hysteresis: must be in [0, margin)")
        up, down = 1.0 + m, 1.0 - m

        def rho(op: str, level: float) -> Level:
            return Level("trend", name, op, level)

        index = self._default_index(first)
        stages = dict.fromkeys(TREND_STAGES, index)
        initial = (
            Entry("rising", rho("at_least", up), "initial_rising"),
            Entry("falling", rho("below", down), "initial_falling"),
            Entry("steady", ALWAYS, "initial_steady"),
        )
        edges = tuple(
            Edge(f"{a}_to_{b}", (a,), b, cond)
            for a, b, cond in (
                ("steady", "rising", rho("at_least", up)),
                ("steady", "falling", rho("below", down)),
                ("rising", "falling", rho("below", down)),
                ("rising", "steady", rho("below", up - h)),
                ("falling", "rising", rho("at_least", up)),
                ("falling", "steady", rho("at_least", down + h)),
            )
        )
        return Lifecycle(name, "trend", stages, initial, edges, TrendSpec(fast, slow, m, h))

    def _cond(self, raw: Any, where: str, first: bool) -> Condition:
        if not isinstance(raw, dict) or not raw:
            raise ModelError(f"{where}: a condition is a mapping")
        keys = set(raw)
        if keys == {"all"} or keys == {"any"}:
            (kind,) = keys
            parts = raw[kind]
            if not isinstance(parts, list):
                raise ModelError(f"{where}.{kind}: must be a list")
            conds = tuple(self._cond(p, f"{where}.{kind}[{n}]", first) for n, p in enumerate(parts))
            return All(conds) if kind == "all" else AnyOf(conds)
        if "index" in keys or "component" in keys:
            kind = "index" if "index" in keys else "component"
            _keys(raw, where, {kind, "at_least", "below"})
            op, level = self._level(raw, where)
            if kind == "index":
                name = self._index_ref(raw["index"], f"{where}.index", first)
            else:
                name = raw["component"]
                if name not in self.component_names:
                    raise ModelError(f"{where}.component: unknown component {name!r}")
            if not 0.0 <= level <= 100.0:
                raise ModelError(f"{where}.{op}: must be in [0, 100]")
            return Level(kind, name, op, level)
        if keys == {"trend_ratio"}:
            # `trend_ratio` is the ratio of the model's (only) trend lifecycle. READING: a model
            # without one is rejected.
            if self.trend_name is None:
                raise ModelError(f"{where}.trend_ratio: the model has no trend lifecycle")
            inner = raw["trend_ratio"]
            _keys(inner, f"{where}.trend_ratio", {"at_least", "below"})
            op, level = self._level(inner, f"{where}.trend_ratio")
            return Level("trend", self.trend_name, op, level)
        if "event" in keys:
            _keys(raw, where, {"event"})
            types = raw["event"] if isinstance(raw["event"], list) else [raw["event"]]
            for t in types:
                if t not in self.event_types:
                    raise ModelError(f"{where}.event: unknown event type {t!r}")
            return EventIs(frozenset(types))
        if "marker" in keys:
            _keys(raw, where, {"marker", "set"})
            if raw["marker"] not in self.markers:
                raise ModelError(f"{where}.marker: unknown marker {raw['marker']!r}")
            value = raw.get("set", True)
            if not isinstance(value, bool):
                raise ModelError(f"{where}.set: must be true or false")
            return MarkerIs(raw["marker"], value)
        if keys == {"in_stage_for"}:
            return InStageFor(duration_ms(raw["in_stage_for"], f"{where}.in_stage_for"))
        if "since_marker" in keys:
            _keys(raw, where, {"since_marker", "at_least"}, {"since_marker", "at_least"})
            if raw["since_marker"] not in self.markers:
                raise ModelError(f"{where}.since_marker: unknown marker {raw['since_marker']!r}")
            return SinceMarker(raw["since_marker"], duration_ms(raw["at_least"], where))
        raise ModelError(f"{where}: unknown condition {sorted(keys)}")

    @staticmethod
    def _level(raw: Mapping[str, Any], where: str) -> tuple[str, float]:
        ops = [op for op in ("at_least", "below") if op in raw]
        if len(ops) != 1:
            raise ModelError(f"{where}: exactly one of at_least/below")
        return ops[0], _number(raw[ops[0]], f"{where}.{ops[0]}")


# ----------------------------------------------------------------------------- outputs
@dataclass
class LifecycleTransition:
    tenant: str
    contact_id: str
    lifecycle: str
    from_stage: str | None
    to_stage: str
    reason: str
    #: the id of the edge that fired; for first_seen the id of the initial entry; (None for
    #: model_change, which the reference does not produce)
    rule_id: str | None
    #: the weighting the to-stage reports (``contact`` resolved to the first lifecycle's)
    half: str
    index: float
    previous_index: float
    components: dict[str, float]
    cause_event_id: str | None
    occurred_at_ms: int
    model_version: str


@dataclass
class MarkerState:
    is_set: bool = False
    changed_at: int | None = None  # the time of the last set or clear that changed it
    set_at: int | None = None  # the time of the setting event while set


@dataclass
class CapWindow:
    k: int  # the window [k * per, (k + 1) * per)
    count: int = 0
    raw: float = 0.0  # decayed sum at the clock of the window's points, before the cap


@dataclass
class RefContact:
    """Everything the reference remembers of one contact."""

    tenant: str
    contact_id: str
    clock: int
    sums: dict[str, float]  # D_c at the clock (caps applied)
    trend: dict[str, list[float]]  # trend lifecycle -> [F, S] at the clock
    windows: dict[str, list[CapWindow]]  # capped event type -> its (at most) two latest windows
    markers: dict[str, MarkerState]
    stages: dict[str, str] = field(default_factory=dict)
    entered_at: dict[str, int] = field(default_factory=dict)
    first_seen_ms: int = 0
    last_event_ms: int = 0
    events_counted: int = 0
    uncounted_capped: int = 0  # capped events older than both kept windows (no points)

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.contact_id)


# ----------------------------------------------------------------------------- evaluation
class _View:
    """The contact's values at ``t >= clock`` (rebased, not stored) with the stages given."""

    def __init__(
        self,
        model: ReferenceModel,
        contact: RefContact,
        t: int,
        event_type: str | None,
        stages: Mapping[str, str],
        on_compare: Any = None,
    ) -> None:
        self.model = model
        self.contact = contact
        self.t = t
        self.event_type = event_type
        self.stages = stages
        self.on_compare = on_compare
        dt = t - contact.clock
        assert dt >= 0
        self.scores: dict[str, float] = {}
        for c in model.components:
            d = contact.sums[c.name] * 2.0 ** (-dt / c.half_life_ms)
            d_plus = max(d, 0.0)
            self.scores[c.name] = 100.0 * d_plus / (d_plus + c.saturation)
        self.ratios: dict[str, float] = {}
        for lc in model.trend_lifecycles:
            assert lc.trend is not None
            f_sum, s_sum = contact.trend[lc.name]
            f_t = f_sum * 2.0 ** (-dt / lc.trend.fast_ms)
            s_t = s_sum * 2.0 ** (-dt / lc.trend.slow_ms)
            # rho = (F h_slow / h_fast) / S, and 1 when S = 0
            self.ratios[lc.name] = (
                1.0 if s_t == 0.0 else f_t * (lc.trend.slow_ms / lc.trend.fast_ms) / s_t
            )

    def weighting(self, name: str) -> float:
        """``sum_c w_c s_c``; ``contact``: the weighting of the first lifecycle's stage."""
        if name == CONTACT:
            first = self.model.lifecycles[0]
            name = first.stages[self.stages[first.name]]
        return sum(w * self.scores[c] for c, w in self.model.indices[name].items())

    def stage_index(self, lifecycle: Lifecycle, stage: str | None = None) -> float:
        return self.weighting(lifecycle.stages[stage or self.stages[lifecycle.name]])

    def stage_weighting(self, lifecycle: Lifecycle) -> str:
        """The name of the weighting the lifecycle's current stage reports."""
        name = lifecycle.stages[self.stages[lifecycle.name]]
        if name == CONTACT:
            first = self.model.lifecycles[0]
            name = first.stages[self.stages[first.name]]
        return name

    def value(self, atom: Level) -> float:
        if atom.kind == "index":
            return self.weighting(atom.name)
        if atom.kind == "component":
            return self.scores[atom.name]
        return self.ratios[atom.name]

    def holds(self, cond: Condition, lifecycle: Lifecycle) -> bool:
        if isinstance(cond, All):
            return all(self.holds(p, lifecycle) for p in cond.parts)
        if isinstance(cond, AnyOf):
            return any(self.holds(p, lifecycle) for p in cond.parts)
        if isinstance(cond, Level):
            v = self.value(cond)
            if self.on_compare is not None and abs(v - cond.level) < tolerance(cond):
                self.on_compare()
            return v >= cond.level if cond.op == "at_least" else v < cond.level
        if isinstance(cond, EventIs):
            return self.event_type is not None and self.event_type in cond.types
        if isinstance(cond, MarkerIs):
            return self.contact.markers[cond.name].is_set == cond.value
        if isinstance(cond, InStageFor):
            # READING: in an `initial` entry (no stage yet) time in stage is 0
            entered = self.contact.entered_at.get(lifecycle.name, self.t)
            return self.t - entered >= cond.ms
        if isinstance(cond, SinceMarker):
            marker = self.contact.markers[cond.name]
            return marker.is_set and marker.set_at is not None and self.t - marker.set_at >= cond.ms
        raise TypeError(cond)


def tolerance(atom: Level) -> float:
    """How close to its level a value is undecidable: DECISION_TOLERANCE for indices and
    scores (around 1e2), a hundredth of it for the trend ratio (around 1)."""
    return DECISION_TOLERANCE / 100 if atom.kind == "trend" else DECISION_TOLERANCE


def _factor(cap: Cap, count: int) -> float:
    """What each event of a window of ``count`` events counts: 1, or ``N/n`` when n > N."""
    return 1.0 if count <= cap.count else cap.count / count


# ----------------------------------------------------------------------------- the engine
class LifecycleReference:
    """Contacts fed one event at a time, in arrival order (no duplicate detection)."""

    def __init__(self, model: ReferenceModel) -> None:
        self.model = model
        self.contacts: dict[tuple[str, str], RefContact] = {}
        self.rejected: list[tuple[Any, str]] = []
        self.max_event_ms: int | None = None
        self.ambiguous: set[tuple[str, str]] = set()
        #: the longest same-instant chain accepted in one lifecycle (a guard: the loader of the
        #: core rejects models whose chains could go on forever; this one does not check)
        self.max_chain = 1000

    # ---- helpers
    def _view(self, contact: RefContact, t: int, event_type: str | None = None) -> _View:
        key = contact.key
        return _View(
            self.model,
            contact,
            t,
            event_type,
            contact.stages,
            on_compare=lambda: self.ambiguous.add(key),
        )

    def _new_contact(self, tenant: str, contact_id: str, ts: int) -> RefContact:
        m = self.model
        return RefContact(
            tenant=tenant,
            contact_id=contact_id,
            clock=ts,
            sums={c.name: 0.0 for c in m.components},
            trend={lc.name: [0.0, 0.0] for lc in m.trend_lifecycles},
            windows={e.type: [] for e in m.events.values() if e.cap is not None},
            markers={name: MarkerState() for name in m.markers},
            first_seen_ms=ts,
            last_event_ms=ts,
        )

    def _rebase(self, contact: RefContact, t: int) -> None:
        """Move the clock to ``t >= clock``: every stored value becomes ``v * 2^(-dt/h)``."""
        dt = t - contact.clock
        assert dt >= 0
        if dt == 0:
            return
        for c in self.model.components:
            contact.sums[c.name] *= 2.0 ** (-dt / c.half_life_ms)
        for etype, windows in contact.windows.items():
            h = self.model.component(self.model.events[etype].component).half_life_ms
            for w in windows:
                w.raw *= 2.0 ** (-dt / h)
        for lc in self.model.trend_lifecycles:
            assert lc.trend is not None
            sums = contact.trend[lc.name]
            sums[0] *= 2.0 ** (-dt / lc.trend.fast_ms)
            sums[1] *= 2.0 ** (-dt / lc.trend.slow_ms)
        contact.clock = t

    def _fold(self, contact: RefContact, spec: EventSpec, ts: int) -> None:
        """docs/models.md "On an event" (2): sums, markers, caps, trend."""
        if ts >= contact.clock:
            self._rebase(contact, ts)
        component = self.model.component(spec.component)
        age = contact.clock - ts  # > 0 for a late event

        def at_clock(points: float, h: float) -> float:
            return points if age == 0 else points * 2.0 ** (-age / h)

        points = at_clock(spec.points, component.half_life_ms)
        if spec.cap is None:
            contact.sums[spec.component] += points
        else:
            self._capped(contact, spec, spec.cap, ts, points)
        if spec.points > 0:  # the trend sums: positive points, caps do not apply
            for lc in self.model.trend_lifecycles:
                assert lc.trend is not None
                sums = contact.trend[lc.name]
                sums[0] += at_clock(spec.points, lc.trend.fast_ms)
                sums[1] += at_clock(spec.points, lc.trend.slow_ms)
        for name in spec.sets:
            marker = contact.markers[name]
            # a set applies if its timestamp is after the marker's time (a set marker set again
            # moves its time forward); at equal timestamps a clear wins
            if marker.changed_at is None or ts > marker.changed_at:
                marker.is_set, marker.changed_at, marker.set_at = True, ts, ts
        for name in spec.clears:
            marker = contact.markers[name]
            # a clear of a marker that is not set is still its latest change ("the timestamp of
            # the latest event (by timestamp) that set or cleared it"), so a later-arriving
            # older set does not set it
            if marker.changed_at is None or ts >= marker.changed_at:
                marker.is_set, marker.changed_at, marker.set_at = False, ts, None
        contact.events_counted += 1
        contact.first_seen_ms = min(contact.first_seen_ms, ts)
        contact.last_event_ms = max(contact.last_event_ms, ts)

    @staticmethod
    def _capped(contact: RefContact, spec: EventSpec, cap: Cap, ts: int, points: float) -> None:
        """docs/models.md#caps: each event of a window of ``n > N`` counts ``N/n``.

        READING: "the two latest windows" are the two latest windows that hold events of the
        rule (not the latest and the one before it by number): an event of a window newer
        than the older kept one takes a slot and the oldest kept window is forgotten, its
        contribution staying in the sum as it was; an event of a window older than both kept
        windows adds nothing.
        """
        k = math.floor(ts / cap.per_ms)
        windows = contact.windows[spec.type]
        window = next((w for w in windows if w.k == k), None)
        if window is None:
            if len(windows) == 2 and k < windows[0].k:
                contact.uncounted_capped += 1
                return  # older than the two kept windows: not counted
            window = CapWindow(k)
            windows.append(window)
            windows.sort(key=lambda w: w.k)
            if len(windows) > 2:
                del windows[0]
        before = window.raw * _factor(cap, window.count)
        window.count += 1
        window.raw += points
        contact.sums[spec.component] += window.raw * _factor(cap, window.count) - before

    def _reason(self, lifecycle: Lifecycle, edge: Edge, event_type: str | None) -> str:
        """docs/models.md#reasons."""
        if lifecycle.kind == "trend":
            return "trend"
        if event_type is None:  # a due time
            # READING: the table names at a due time `time_in_stage` (a time condition),
            # `decay` (a `below` level, no time condition) and `threshold` ("only at_least
            # levels"); an edge with neither levels nor time (a marker, or no `when`, reached
            # by a chain at a due time) is taken as "only at_least levels": `threshold`. This
            # contradicts "the reason of time-driven firings is always decay, time_in_stage
            # or trend" (threshold is now one too).
            if has_time(edge.when):
                return "time_in_stage"
            if has_level(edge.when, "below"):
                return "decay"
            return "threshold"
        if edge.reason is not None:
            # READING: a named reason replaces the derived one on events only ("the reason of
            # time-driven firings is always decay, time_in_stage or trend")
            return edge.reason
        if tests_event(edge.when):
            return "event"
        if tests_marker_set(edge.when) and not has_level(edge.when):
            return "customer_event"
        return "threshold"

    def _transition(
        self,
        contact: RefContact,
        view: _View,
        lifecycle: Lifecycle,
        from_stage: str | None,
        reason: str,
        rule_id: str | None,
        previous: float,
        cause: str | None,
    ) -> LifecycleTransition:
        return LifecycleTransition(
            tenant=contact.tenant,
            contact_id=contact.contact_id,
            lifecycle=lifecycle.name,
            from_stage=from_stage,
            to_stage=contact.stages[lifecycle.name],
            reason=reason,
            rule_id=rule_id,
            index=view.stage_index(lifecycle),
            half=view.stage_weighting(lifecycle),
            previous_index=previous,
            components=dict(view.scores),
            cause_event_id=cause,
            occurred_at_ms=contact.clock,
            model_version=self.model.version,
        )

    def _chains(
        self,
        contact: RefContact,
        event_type: str | None,
        cause: str | None,
        reported: dict[str, float],
        before: Mapping[str, float],
        *,
        first: bool = False,
    ) -> list[LifecycleTransition]:
        """Each lifecycle in declared order, at the clock: on a first event its first_seen,
        then its instant chain (docs/models.md "On an event" (3)).

        ``previous_index`` (docs/scoring.md#lifecycle): the index of the preceding transition
        of the same lifecycle at the same instant (a same-instant chain), else the from-stage's
        index of the state just before the instant, at its clock (``before``). ``reported`` is
        the caller's, but only this instant's transitions count: it is emptied first.
        """
        reported.clear()
        out = []
        # the stages are read live: a later lifecycle sees the earlier ones after their chains
        view = self._view(contact, contact.clock, event_type)
        for lc in self.model.lifecycles:
            if first:
                # `event` conditions hold in `initial` entries too (the first event's type)
                entry = next(e for e in lc.initial if view.holds(e.when, lc))
                contact.stages[lc.name] = entry.stage
                contact.entered_at[lc.name] = contact.clock
                out.append(
                    self._transition(contact, view, lc, None, "first_seen", entry.id, 0.0, cause)
                )
                reported[lc.name] = out[-1].index
            for _ in range(self.max_chain):
                stage = contact.stages[lc.name]
                edge = next(
                    (e for e in lc.edges if stage in e.sources and view.holds(e.when, lc)), None
                )
                if edge is None:
                    break
                contact.stages[lc.name] = edge.target
                contact.entered_at[lc.name] = contact.clock
                out.append(
                    self._transition(
                        contact,
                        view,
                        lc,
                        stage,
                        self._reason(lc, edge, event_type),
                        edge.id,
                        reported.get(lc.name, before.get(lc.name, 0.0)),
                        cause,
                    )
                )
                reported[lc.name] = out[-1].index
            else:
                raise RuntimeError(f"{lc.name}: a same-instant chain longer than {self.max_chain}")
        return out

    def _stage_indices(self, contact: RefContact) -> dict[str, float]:
        """Each lifecycle's current stage's index at the clock (previous_index before a
        change: "the from-stage's index of the state before, at its clock")."""
        view = self._view(contact, contact.clock)
        return {lc.name: view.stage_index(lc) for lc in self.model.lifecycles}

    # ---- time-driven changes
    def _flip_time(self, contact: RefContact, atom: Level) -> int | None:
        """The first whole ms after the clock at which ``atom``'s value is below its level
        (the value only falls: ``below`` holds from then on, ``at_least`` until then)."""
        c = contact.clock

        def value(t: int) -> float:
            return _View(self.model, contact, t, None, contact.stages).value(atom)

        lo = c + 1
        if lo > MAX_MS:
            return None
        if value(lo) < atom.level:
            hi = lo
        else:
            step = 1
            while True:
                hi = min(lo + step, MAX_MS)
                if value(hi) < atom.level:
                    break
                if hi == MAX_MS:
                    return None
                lo, step = hi, step * 2
            while hi - lo > 1:  # value(lo) >= level > value(hi)
                mid = (lo + hi) // 2
                if value(mid) < atom.level:
                    hi = mid
                else:
                    lo = mid
        for t in (hi - 1, hi):  # a crossing within float rounding is undecidable
            if t > c and abs(value(t) - atom.level) < tolerance(atom):
                self.ambiguous.add(contact.key)
        return hi

    def _atom_time(self, contact: RefContact, lifecycle: Lifecycle, atom: Condition) -> int | None:
        if isinstance(atom, Level):
            return self._flip_time(contact, atom)
        if isinstance(atom, InStageFor):
            return math.ceil(contact.entered_at[lifecycle.name] + atom.ms)
        if isinstance(atom, SinceMarker):
            marker = contact.markers[atom.name]
            if marker.is_set and marker.set_at is not None:
                return math.ceil(marker.set_at + atom.ms)
        return None  # markers and events do not change between events

    def due_ms(self, contact: RefContact) -> int | None:
        """The earliest whole ms after the clock at which an edge out of a current stage
        holds (no event), or None (none by the end of year 9999)."""
        c = contact.clock
        live = [
            (lc, e)
            for lc in self.model.lifecycles
            for e in lc.edges
            if contact.stages[lc.name] in e.sources
        ]
        candidates = {c + 1}
        for lc, edge in live:
            for atom in atoms(edge.when):
                t = self._atom_time(contact, lc, atom)
                if t is not None and c + 1 < t <= MAX_MS:
                    candidates.add(t)
        for t in sorted(candidates):
            if t > MAX_MS:
                break
            view = _View(self.model, contact, t, None, contact.stages)
            if any(view.holds(e.when, lc) for lc, e in live):
                return t
        return None

    def _apply_due(
        self, contact: RefContact, tau: int, reported: dict[str, float]
    ) -> list[LifecycleTransition]:
        """The time-driven chains at ``tau``; the clock moves to ``tau``."""
        before = self._stage_indices(contact)
        self._rebase(contact, tau)
        out = self._chains(contact, None, None, reported, before)
        assert out, f"nothing fired at the due time {tau}"
        return out

    # ---- the API
    def feed(self, event: Mapping[str, Any] | str | bytes) -> list[LifecycleTransition]:
        """Apply one event; returns its transitions (a rejected event gives none)."""
        try:
            record = json.loads(event) if isinstance(event, str | bytes) else event
            event_id = record["event_id"]
            tenant = record.get("tenant", "default")
            contact_id = record["contact_id"]
            etype = record["type"]
            spec = self.model.events[etype]
            ts = parse_time(record["timestamp"])
        except (ValueError, KeyError, TypeError) as exc:
            self.rejected.append((event, repr(exc)))
            return []
        if self.max_event_ms is None or ts > self.max_event_ms:
            self.max_event_ms = ts
        key = (tenant, contact_id)
        contact = self.contacts.get(key)
        out: list[LifecycleTransition] = []
        reported: dict[str, float] = {}  # the index last reported per lifecycle, this event
        first = contact is None
        if contact is None:
            contact = self.contacts[key] = self._new_contact(tenant, contact_id, ts)
        else:  # (1) time-driven changes due at or before the event, each at its own time
            while (tau := self.due_ms(contact)) is not None and tau <= ts:
                out.extend(self._apply_due(contact, tau, reported))
        before = {} if first else self._stage_indices(contact)
        self._fold(contact, spec, ts)  # (2)
        out.extend(self._chains(contact, etype, event_id, reported, before, first=first))  # (3)
        return out

    def advance(self, key: tuple[str, str], until_ms: int) -> list[LifecycleTransition]:
        """Every time-driven change of the contact due at or before ``until_ms``: one wake-up
        (``previous_index`` follows the transitions of the whole wake-up)."""
        contact = self.contacts[key]
        out: list[LifecycleTransition] = []
        reported: dict[str, float] = {}
        while (tau := self.due_ms(contact)) is not None and tau <= until_ms:
            out.extend(self._apply_due(contact, tau, reported))
        return out

    def finish(self, until_ms: int | None = None) -> list[LifecycleTransition]:
        """Every change due by ``until_ms`` (default: the largest event time): one wake-up
        per contact (:meth:`advance`), the contacts by their first due time, then key."""
        horizon = self.max_event_ms if until_ms is None else until_ms
        if horizon is None:
            return []
        due = []
        for key, contact in self.contacts.items():
            tau = self.due_ms(contact)
            if tau is not None and tau <= horizon:
                due.append((tau, key))
        out: list[LifecycleTransition] = []
        for _, key in sorted(due):
            out.extend(self.advance(key, horizon))
        return out

    def evaluate(self, key: tuple[str, str], at_ms: int) -> dict[str, Any]:
        """The contact as seen at ``at_ms`` (not before its clock; the changes due by then
        applied to a copy): stages, index (of its first-lifecycle stage), components, markers.
        Pure."""
        probe = LifecycleReference(self.model)
        contact = probe.contacts[key] = copy.deepcopy(self.contacts[key])
        at = max(at_ms, contact.clock)
        probe.advance(key, at)
        view = _View(self.model, contact, at, None, contact.stages)
        return {
            "stages": dict(contact.stages),
            "index": view.stage_index(self.model.lifecycles[0]),
            "components": dict(view.scores),
            "markers": {n: m.is_set for n, m in contact.markers.items()},
            "events_counted": contact.events_counted,
            "evaluated_at_ms": at,
        }


def reference_replay(
    model: ReferenceModel,
    events: Iterable[Mapping[str, Any] | str | bytes],
    until_ms: int | None = None,
) -> tuple[list[LifecycleTransition], dict[tuple[str, str], RefContact]]:
    """Feed ``events`` in arrival order, then apply the changes due by ``until_ms`` (default:
    the largest event time); the transitions in emitted order and the final contact states."""
    ref = LifecycleReference(model)
    out: list[LifecycleTransition] = []
    for event in events:
        out.extend(ref.feed(event))
    out.extend(ref.finish(until_ms))
    return out, ref.contacts


def halves_of(model: ReferenceModel) -> dict[str, Any]:
    """The format 1 mapping of a format 2 model that is exactly the documented two-halves
    lifecycle (docs/models.md#the-default-model), for ``tests.reference.engagement``; a
    ``ModelError`` for any other model."""
    if len(model.lifecycles) != 1 or model.lifecycles[0].kind != "stages":
        raise ModelError("not the two-halves lifecycle: one lifecycle expected")
    lc = model.lifecycles[0]
    try:
        (bought,) = [e for e in lc.edges if isinstance(e.when, MarkerIs)]
        marker = bought.when.name  # type: ignore[union-attr]
        enter = {
            e.target: (e.sources[0], e.when)
            for e in lc.edges
            if isinstance(e.when, Level) and e.when.op == "at_least"
        }
        leave = {
            e.sources[0]: e.when
            for e in lc.edges
            if isinstance(e.when, Level) and e.when.op == "below"
        }
        upper_pre = next(s for s in bought.sources if s in enter)
        lower_pre = enter[upper_pre][0]
        upper_post = bought.target
        lower_post = enter[upper_post][0]
    except (ValueError, KeyError, StopIteration):
        raise ModelError("not the two-halves lifecycle") from None
    halves = {}
    for half, lower, upper in (
        ("pre_purchase", lower_pre, upper_pre),
        ("post_purchase", lower_post, upper_post),
    ):
        halves[half] = {
            "weights": model.indices[lc.stages[upper]],
            "lower_stage": lower,
            "upper_stage": upper,
            "enter_upper_at": enter[upper][1].level,
            "leave_upper_below": leave[upper].level,
        }
    raw = {
        "version": model.version,
        "components": {
            c.name: {"half_life": c.half_life_ms / 1000.0, "saturation": c.saturation}
            for c in model.components
        },
        "events": {
            e.type: {
                "component": e.component,
                "points": e.points,
                "marks_customer": marker in e.sets,
            }
            for e in model.events.values()
        },
        "halves": halves,
    }
    unsupported = any(e.cap or e.clears or set(e.sets) - {marker} for e in model.events.values())
    again = ReferenceModel.from_mapping(raw)
    if unsupported or marker != "customer" or again.lifecycles != model.lifecycles:
        raise ModelError("not the two-halves lifecycle")
    return raw
