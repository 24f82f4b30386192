"""The compiled model: the index-based form of a model file that the core runs.

:func:`compile_model` turns a validated :class:`~engagement_index.core.model.ScoringModel`
(format 1 or 2) into one :class:`CompiledModel`: components, rules, weightings, markers, caps,
the trend and the lifecycles with their conditions, all as tuples and small ints. It also runs
the checks that need the whole model (docs/models.md#what-the-loader-rejects). The engine
(``engagement_index.core.lifecycle``) knows no stage names: everything it needs is here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engagement_index.core.model import (
    CONTACT_INDEX,
    Bands,
    Condition,
    Edge,
    InitialEntry,
    Legacy,
    Lifecycle,
    Stage,
    Trend,
    duration_ms,
    parse_duration,
)
from engagement_index.errors import ModelError

if TYPE_CHECKING:
    from engagement_index.core.model import ScoringModel

# condition kinds
LEVEL, EVENT, MARKER, IN_STAGE, SINCE, ALL, ANY = range(7)
# sources of a LEVEL condition besides a weighting (>= 0)
CONTACT = -1
TREND = -2
_MAX_DNF = 512
_MAX_CYCLES = 20_000


@dataclass(frozen=True, slots=True)
class StateLayout:
    """What a stored contact state says about the model it was computed under.

    ``fingerprint``: 32 bits of a hash of everything in the model that changes a state or its
    due time (not the version string). ``component_ids``, ``marker_ids``, ``cap_ids``: 32-bit
    hashes of the component names, marker names and capped event types, in the order of the
    state's fields (``component_ids`` None: a version 1 state, in the order of the model that
    reads it). ``lifecycles``: how many stages the state holds; ``trend``: whether it holds the
    trend sums.
    """

    fingerprint: int
    component_ids: tuple[int, ...] | None
    marker_ids: tuple[int, ...] = ()
    cap_ids: tuple[int, ...] = ()
    lifecycles: int = 1
    trend: bool = False


def name_id(name: str) -> int:
    """The 32-bit id of a name in a stored state."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")


def stage_id(lifecycle: str, stage: str) -> int:
    """The 32-bit id of a stage in a stored state (never 0-3: the four stages of a state
    written before format 2, ``engagement_index.core.state``)."""
    value = name_id(f"{lifecycle}\x1f{stage}")
    return value if value > 3 else value + 4


def model_fingerprint(model: ScoringModel) -> int:
    """32 bits of blake2b over the canonical JSON of the model without its version."""
    # the merge rules (``merge``) decide how two states combine, not what a state means
    content = model.model_dump(mode="json", exclude={"version", "merge"})
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


@dataclass(frozen=True, slots=True)
class Cond:
    """A compiled condition (docs/models.md#conditions); ``kind`` says which fields count.

    LEVEL: ``source`` (a weighting, CONTACT or TREND), ``at_least``, ``level``. EVENT:
    ``types``. MARKER: ``bit``, ``wanted``. IN_STAGE: ``ms``. SINCE: ``marker``, ``bit``,
    ``ms``. ALL / ANY: ``children``.
    """

    kind: int
    source: int = 0
    at_least: bool = False
    level: float = 0.0
    types: frozenset[str] = frozenset()
    marker: int = 0
    bit: int = 0
    wanted: bool = True
    ms: int = 0
    children: tuple[Cond, ...] = ()


ALWAYS = Cond(ALL)


@dataclass(frozen=True, slots=True)
class CompiledEdge:
    """An edge out of a stage: its id, target stage (position), condition and reasons."""

    rule_id: str
    to: int
    cond: Cond
    event_reason: str
    time_reason: str


@dataclass(frozen=True, slots=True)
class CompiledStage:
    """A stage: its name and stored id, the weighting it reports, the edges out of it."""

    name: str
    stage_id: int
    index: int  # a weighting, or CONTACT
    edges: tuple[CompiledEdge, ...]


@dataclass(frozen=True, slots=True)
class CompiledInitial:
    """An ``initial`` entry."""

    rule_id: str
    stage: int
    cond: Cond


@dataclass(frozen=True, slots=True)
class CompiledLifecycle:
    """A lifecycle: its stages and entries; ``id_prefix`` goes into its transition ids."""

    name: str
    position: int
    stages: tuple[CompiledStage, ...]
    initial: tuple[CompiledInitial, ...]
    id_prefix: str


@dataclass(frozen=True, slots=True)
class CompiledCap:
    """A capped rule: ``count`` events per window of ``per_ms``."""

    count: int
    per_ms: int
    component: int
    points: float


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """An event rule: component position, points, marker masks, cap position (-1: none)."""

    component: int
    points: float
    sets: int
    clears: int
    cap: int


@dataclass(frozen=True, slots=True)
class CompiledModel:
    """The index-based form of a model that the core uses."""

    version: str
    layout: StateLayout  # interned (engagement_index.core.state.interned_layout)
    names: tuple[str, ...]
    half_life_ms: tuple[float, ...]
    saturation: tuple[float, ...]
    rules: dict[str, CompiledRule]
    #: weightings: the declared indices, then one per component (weight 1 on it)
    weights: tuple[tuple[float, ...], ...]
    index_names: tuple[str, ...]
    markers: tuple[str, ...]
    caps: tuple[CompiledCap, ...]
    #: (fast, slow) half-lives in ms, or None
    trend: tuple[float, float] | None
    lifecycles: tuple[CompiledLifecycle, ...]
    #: stage id -> (lifecycle position, stage position)
    stage_by_id: dict[int, tuple[int, int]]
    #: states before format 2: stage positions in the first lifecycle of (pre lower, pre upper,
    #: post lower, post upper), and the marker bit a post-purchase state sets (0: none)
    legacy: tuple[tuple[int, int, int, int], int] | None
    #: marker bits whose identity-merge rule is ``earliest`` (the others: ``latest``)
    marker_merge_earliest: int = 0


# ----------------------------------------------------------------------------- compiling


class _Names:
    """Lookups shared by the compilation of every lifecycle."""

    def __init__(self, model: ScoringModel, indices: Mapping[str, Mapping[str, float]]) -> None:
        self.components = tuple(model.components)
        self.index_names = tuple(indices)
        self.index_pos = {n: i for i, n in enumerate(self.index_names)}
        self.component_pos = {n: len(self.index_names) + i for i, n in enumerate(self.components)}
        self.markers = tuple(model.markers)
        self.marker_pos = {n: i for i, n in enumerate(self.markers)}
        self.event_types = frozenset(model.events)


def compile_model(model: ScoringModel) -> CompiledModel:
    """The compiled form of ``model``; ``ModelError`` names the field of a lifecycle problem."""
    legacy: Legacy | None
    if model.format == 1:
        indices, markers, lifecycles, legacy = _from_halves(model)
    else:
        assert model.indices is not None
        assert model.lifecycles is not None
        indices, markers = model.indices, model.markers
        lifecycles, legacy = dict(model.lifecycles), model.legacy
    names = _Names(model.model_copy(update={"markers": markers}), indices)
    components = names.components
    weights = tuple(tuple(w.get(c, 0.0) for c in components) for w in indices.values()) + tuple(
        tuple(1.0 if c == d else 0.0 for c in components) for d in components
    )
    caps: list[CompiledCap] = []
    cap_ids: list[int] = []
    rules: dict[str, CompiledRule] = {}
    for event_type, rule in model.events.items():
        sets = [names.marker_pos[m] for m in rule.sets]
        if rule.marks_customer:
            sets.append(names.marker_pos["customer"])
        cap = -1
        component = components.index(rule.component)
        if rule.cap is not None:
            cap = len(caps)
            caps.append(
                CompiledCap(rule.cap.count, duration_ms(rule.cap.per), component, rule.points)
            )
            cap_ids.append(name_id(event_type))
        rules[event_type] = CompiledRule(
            component=component,
            points=rule.points,
            sets=sum(1 << m for m in set(sets)),
            clears=sum(1 << names.marker_pos[m] for m in rule.clears),
            cap=cap,
        )
    trend: tuple[float, float] | None = None
    compiled_lifecycles = []
    for position, (name, spec) in enumerate(lifecycles.items()):
        if spec.trend is not None:
            if trend is not None:
                raise ModelError(f"lifecycles.{name}: only one trend lifecycle")
            if spec.trend.slow <= spec.trend.fast:
                raise ModelError(f"lifecycles.{name}.trend.slow: must be longer than fast")
            trend = (spec.trend.fast * 1000.0, spec.trend.slow * 1000.0)
        compiled_lifecycles.append(_compile_lifecycle(name, position, spec, names))
    stage_by_id: dict[int, tuple[int, int]] = {}
    for lc in compiled_lifecycles:
        for s, stage in enumerate(lc.stages):
            if stage.stage_id in stage_by_id:
                raise ModelError(f"lifecycles.{lc.name}.stages.{stage.name}: id collision; rename")
            stage_by_id[stage.stage_id] = (lc.position, s)
    from engagement_index.core.state import interned_layout  # state imports this module

    component_ids = tuple(name_id(n) for n in components)
    if len(set(component_ids)) != len(components):
        raise ModelError("components: two component names have the same 32-bit id; rename one")
    layout = StateLayout(
        fingerprint=model_fingerprint(model),
        component_ids=component_ids,
        marker_ids=tuple(name_id(m) for m in markers),
        cap_ids=tuple(cap_ids),
        lifecycles=len(compiled_lifecycles),
        trend=trend is not None,
    )
    compiled_legacy = None
    if legacy is not None:
        first = compiled_lifecycles[0]
        stage_pos = {s.name: i for i, s in enumerate(first.stages)}
        positions = []
        for legacy_stage in legacy.stages:
            if legacy_stage not in stage_pos:
                raise ModelError(
                    f"legacy.stages: {legacy_stage!r} is not a stage of {first.name!r}"
                )
            positions.append(stage_pos[legacy_stage])
        bit = 0
        if legacy.marker is not None:
            if legacy.marker not in names.marker_pos:
                raise ModelError(f"legacy.marker: unknown marker {legacy.marker!r}")
            bit = 1 << names.marker_pos[legacy.marker]
        compiled_legacy = ((positions[0], positions[1], positions[2], positions[3]), bit)
    return CompiledModel(
        version=model.version,
        layout=interned_layout(layout),
        names=components,
        half_life_ms=tuple(c.half_life * 1000.0 for c in model.components.values()),
        saturation=tuple(c.saturation for c in model.components.values()),
        rules=rules,
        weights=weights,
        index_names=names.index_names,
        markers=tuple(markers),
        caps=tuple(caps),
        trend=trend,
        lifecycles=tuple(compiled_lifecycles),
        stage_by_id=stage_by_id,
        legacy=compiled_legacy,
        marker_merge_earliest=_merge_earliest(model, markers),
    )


def _merge_earliest(model: ScoringModel, markers: tuple[str, ...]) -> int:
    """The marker bits whose identity-merge rule is ``earliest``."""
    rules = model.merge.markers if model.merge is not None else {}
    return sum(1 << i for i, name in enumerate(markers) if rules.get(name) == "earliest")


def _from_halves(
    model: ScoringModel,
) -> tuple[dict[str, dict[str, float]], tuple[str, ...], dict[str, Lifecycle], Legacy]:
    """A format 1 model as format 2 parts (docs/models.md#the-default-model)."""
    halves = model.halves
    assert halves is not None
    pre, post = halves.pre_purchase, halves.post_purchase
    stages = (pre.lower_stage, pre.upper_stage, post.upper_stage, post.lower_stage)
    if len(set(stages)) != 4:
        raise ModelError("halves: the four stage names must all differ")
    weights = {"pre_purchase": dict(pre.weights), "post_purchase": dict(post.weights)}

    def level(index: str, at_least: float | None = None, below: float | None = None) -> Condition:
        return Condition(index=index, at_least=at_least, below=below)

    lifecycle = Lifecycle(
        stages={
            pre.lower_stage: Stage(index="pre_purchase"),
            pre.upper_stage: Stage(index="pre_purchase"),
            post.upper_stage: Stage(index="post_purchase"),
            post.lower_stage: Stage(index="post_purchase"),
        },
        initial=(
            InitialEntry(
                stage=pre.upper_stage, when=level("pre_purchase", at_least=pre.enter_upper_at)
            ),
            InitialEntry(stage=pre.lower_stage),
        ),
        edges=(
            Edge(
                id="purchased",
                from_=(pre.lower_stage, pre.upper_stage),
                to=post.upper_stage,
                when=Condition(marker="customer"),
            ),
            Edge(
                id="engaged",
                from_=pre.lower_stage,
                to=pre.upper_stage,
                when=level("pre_purchase", at_least=pre.enter_upper_at),
            ),
            Edge(
                id="cooled",
                from_=pre.upper_stage,
                to=pre.lower_stage,
                when=level("pre_purchase", below=pre.leave_upper_below),
            ),
            Edge(
                id="returned",
                from_=post.lower_stage,
                to=post.upper_stage,
                when=level("post_purchase", at_least=post.enter_upper_at),
            ),
            Edge(
                id="lapsed",
                from_=post.upper_stage,
                to=post.lower_stage,
                when=level("post_purchase", below=post.leave_upper_below),
            ),
        ),
    )
    legacy = Legacy(
        stages=(pre.lower_stage, pre.upper_stage, post.lower_stage, post.upper_stage),
        marker="customer",
    )
    return weights, ("customer",), {"stage": lifecycle}, legacy


def _band_lifecycle(spec: Bands) -> Lifecycle:
    levels = sorted(spec.levels.items(), key=lambda item: item[1])  # lowest first
    if levels[0][1] != 0:
        raise ValueError("bands.levels: the lowest level must be 0")
    if len({v for _, v in levels}) != len(levels):
        raise ValueError("bands.levels: two bands have the same level")
    index = spec.index
    edges = []
    # out of a band: up to the highest band reached first, then down to the lowest band left
    for higher in range(len(levels) - 1, 0, -1):
        target, level = levels[higher]
        edges.append(
            Edge(
                id=f"up_to_{target}",
                from_=tuple(name for name, _ in levels[:higher]),
                to=target,
                when=Condition(index=index, at_least=level),
            )
        )
    for lower in range(len(levels) - 1):
        target = levels[lower][0]
        leave = levels[lower + 1][1] - spec.hysteresis  # leaving the band above it
        edges.append(
            Edge(
                id=f"down_to_{target}",
                from_=tuple(name for name, _ in levels[lower + 1 :]),
                to=target,
                when=Condition(index=index, below=max(leave, 0.0)),
            )
        )
    initial = (
        *tuple(
            InitialEntry(stage=name, when=Condition(index=index, at_least=level))
            for name, level in reversed(levels[1:])
        ),
        InitialEntry(stage=levels[0][0]),
    )
    return Lifecycle(
        stages={name: Stage(index=index) for name, _ in reversed(levels)},
        initial=initial,
        edges=tuple(edges),
    )


def _trend_lifecycle(spec: Trend) -> Lifecycle:
    from engagement_index.core.model import RatioLevel

    up, down = 1.0 + spec.margin, 1.0 - spec.margin
    leave_up, leave_down = up - spec.hysteresis, down + spec.hysteresis

    def ratio(at_least: float | None = None, below: float | None = None) -> Condition:
        return Condition(trend_ratio=RatioLevel(at_least=at_least, below=below))

    def edge(source: str, target: str, when: Condition) -> Edge:
        return Edge(id=f"{source}_to_{target}", from_=source, to=target, when=when)

    return Lifecycle(
        stages={"rising": Stage(), "steady": Stage(), "falling": Stage()},
        initial=(
            InitialEntry(stage="rising", when=ratio(at_least=up)),
            InitialEntry(stage="falling", when=ratio(below=down)),
            InitialEntry(stage="steady"),
        ),
        edges=(
            edge("steady", "rising", ratio(at_least=up)),
            edge("steady", "falling", ratio(below=down)),
            edge("rising", "falling", ratio(below=down)),
            edge("rising", "steady", ratio(below=leave_up)),
            edge("falling", "rising", ratio(at_least=up)),
            edge("falling", "steady", ratio(at_least=leave_down)),
        ),
    )


def _compile_lifecycle(
    name: str, position: int, spec: Lifecycle, names: _Names
) -> CompiledLifecycle:
    where = f"lifecycles.{name}"
    is_trend = spec.trend is not None
    try:
        if spec.bands is not None:
            spec = _band_lifecycle(spec.bands)
        elif spec.trend is not None:
            spec = _trend_lifecycle(spec.trend)
    except ValueError as exc:
        raise ModelError(f"{where}.{exc}") from None
    assert spec.stages is not None
    assert spec.initial is not None
    stage_names = tuple(spec.stages)
    stage_pos = {s: i for i, s in enumerate(stage_names)}
    ctx = _CondContext(names, position, where, is_trend)

    def stage_ref(stage: str, field: str) -> int:
        if stage not in stage_pos:
            raise ModelError(f"{field}: unknown stage {stage!r}")
        return stage_pos[stage]

    initial = []
    for i, entry in enumerate(spec.initial):
        field = f"{where}.initial[{i}]"
        if entry.when is not None and i == len(spec.initial) - 1:
            raise ModelError(f"{field}.when: the last initial entry must have no condition")
        initial.append(
            CompiledInitial(
                rule_id=entry.id or f"initial_{entry.stage}",
                stage=stage_ref(entry.stage, f"{field}.stage"),
                cond=ctx.compile(entry.when, f"{field}.when"),
            )
        )
    edges_by_stage: list[list[CompiledEdge]] = [[] for _ in stage_names]
    seen_ids: set[str] = {e.rule_id for e in initial}
    arcs: list[tuple[int, int, Cond, str]] = []
    for i, edge in enumerate(spec.edges):
        field = f"{where}.edges[{i}]"
        if edge.id in seen_ids:
            raise ModelError(f"{field}.id: {edge.id!r} is used twice in this lifecycle")
        seen_ids.add(edge.id)
        sources = (edge.from_,) if isinstance(edge.from_, str) else edge.from_
        if not sources:
            raise ModelError(f"{field}.from: at least one stage")
        target = stage_ref(edge.to, f"{field}.to")
        cond = ctx.compile(edge.when, f"{field}.when")
        event_reason = edge.reason or _event_reason(cond)
        time_reason = "trend" if is_trend else _time_reason(cond)
        if is_trend:
            event_reason = "trend"
        for source in sources:
            s = stage_ref(source, f"{field}.from")
            if s == target:
                raise ModelError(f"{field}: an edge from a stage to itself is not allowed")
            edges_by_stage[s].append(CompiledEdge(edge.id, target, cond, event_reason, time_reason))
            arcs.append((s, target, cond, edge.id))
    stages = []
    for s, stage_name in enumerate(stage_names):
        index_name = spec.stages[stage_name].index
        stages.append(
            CompiledStage(
                name=stage_name,
                stage_id=stage_id(name, stage_name),
                index=ctx.index_source(index_name, f"{where}.stages.{stage_name}.index"),
                edges=tuple(edges_by_stage[s]),
            )
        )
    _check_reachable(where, stage_names, [e.stage for e in initial], arcs)
    _check_instant_cycles(where, stage_names, arcs)
    return CompiledLifecycle(
        name=name,
        position=position,
        stages=tuple(stages),
        initial=tuple(initial),
        id_prefix="" if position == 0 else name,
    )


class _CondContext:
    def __init__(self, names: _Names, position: int, where: str, is_trend: bool) -> None:
        self.names = names
        self.position = position
        self.where = where
        self.is_trend = is_trend

    def index_source(self, index: str | None, field: str) -> int:
        if index is None:
            return 0 if self.position == 0 else CONTACT
        if index == CONTACT_INDEX:
            if self.position == 0:
                raise ModelError(f"{field}: {CONTACT_INDEX!r} is the first lifecycle's own index")
            return CONTACT
        if index not in self.names.index_pos:
            raise ModelError(f"{field}: unknown index {index!r}")
        return self.names.index_pos[index]

    def compile(self, cond: Condition | None, field: str) -> Cond:
        if cond is None:
            return ALWAYS
        names = self.names
        if cond.all is not None or cond.any is not None:
            kind = ALL if cond.all is not None else ANY
            items = cond.all if cond.all is not None else cond.any
            assert items is not None
            key = "all" if kind == ALL else "any"
            return Cond(
                kind,
                children=tuple(self.compile(c, f"{field}.{key}[{i}]") for i, c in enumerate(items)),
            )
        if cond.index is not None or cond.component is not None:
            if cond.index is not None:
                source = self.index_source(cond.index, f"{field}.index")
            else:
                assert cond.component is not None
                if cond.component not in names.component_pos:
                    raise ModelError(f"{field}.component: unknown component {cond.component!r}")
                source = names.component_pos[cond.component]
            at_least = cond.at_least is not None
            level = cond.at_least if at_least else cond.below
            assert isinstance(level, int | float)
            return Cond(LEVEL, source=source, at_least=at_least, level=float(level))
        if cond.trend_ratio is not None:
            ratio = cond.trend_ratio
            at_least = ratio.at_least is not None
            level = ratio.at_least if at_least else ratio.below
            assert level is not None
            return Cond(LEVEL, source=TREND, at_least=at_least, level=float(level))
        if cond.event is not None:
            types = (cond.event,) if isinstance(cond.event, str) else cond.event
            for t in types:
                if t not in names.event_types:
                    raise ModelError(f"{field}.event: unknown event type {t!r}")
            return Cond(EVENT, types=frozenset(types))
        if cond.marker is not None:
            m = self._marker(cond.marker, f"{field}.marker")
            return Cond(MARKER, marker=m, bit=1 << m, wanted=cond.set is not False)
        if cond.in_stage_for is not None:
            return Cond(IN_STAGE, ms=duration_ms(cond.in_stage_for))
        assert cond.since_marker is not None
        assert cond.at_least is not None
        m = self._marker(cond.since_marker, f"{field}.since_marker")
        seconds = parse_duration(cond.at_least, "since_marker.at_least")
        return Cond(SINCE, marker=m, bit=1 << m, ms=duration_ms(seconds))

    def _marker(self, marker: str, field: str) -> int:
        if marker not in self.names.marker_pos:
            raise ModelError(f"{field}: unknown marker {marker!r}")
        return self.names.marker_pos[marker]


def _kinds(cond: Cond) -> set[int]:
    if cond.kind in (ALL, ANY):
        return set().union(*(_kinds(c) for c in cond.children)) if cond.children else set()
    return {cond.kind}


def _marker_set(cond: Cond) -> bool:
    """Whether ``cond`` tests that a marker is set."""
    if cond.kind in (ALL, ANY):
        return any(_marker_set(c) for c in cond.children)
    return cond.kind == MARKER and cond.wanted


def _event_reason(cond: Cond) -> str:
    kinds = _kinds(cond)
    if EVENT in kinds:
        return "event"
    if _marker_set(cond) and LEVEL not in kinds:
        return "customer_event"
    return "threshold"


def _falls(cond: Cond) -> bool:
    """Whether ``cond`` has a ``below`` level (one that time alone can make true)."""
    if cond.kind in (ALL, ANY):
        return any(_falls(c) for c in cond.children)
    return cond.kind == LEVEL and not cond.at_least


def _time_reason(cond: Cond) -> str:
    if _kinds(cond) & {IN_STAGE, SINCE}:
        return "time_in_stage"
    return "decay" if _falls(cond) else "threshold"


def _check_reachable(
    where: str,
    stage_names: Sequence[str],
    starts: Sequence[int],
    arcs: Sequence[tuple[int, int, Cond, str]],
) -> None:
    reached = set(starts)
    frontier = list(reached)
    while frontier:
        s = frontier.pop()
        for source, target, _, _ in arcs:
            if source == s and target not in reached:
                reached.add(target)
                frontier.append(target)
    for s, name in enumerate(stage_names):
        if s not in reached:
            raise ModelError(
                f"{where}.stages.{name}: unreachable (no initial entry or edge leads to it)"
            )


# -- same-instant cycles: a branch is a conjunction of atoms (a DNF term)


def _dnf(cond: Cond) -> list[tuple[Cond, ...]]:
    if cond.kind == ALL:
        branches: list[tuple[Cond, ...]] = [()]
        for child in cond.children:
            branches = [a + b for a in branches for b in _dnf(child)]
            if len(branches) > _MAX_DNF:
                raise ModelError("a condition is too complex to check (more than 512 terms)")
        return branches
    if cond.kind == ANY:
        return [b for child in cond.children for b in _dnf(child)]
    return [(cond,)]


def _satisfiable(atoms: Sequence[Cond]) -> bool:
    """Can all ``atoms`` hold at one instant with time in stage 0?"""
    lows: dict[int, float] = {}
    highs: dict[int, float] = {}
    markers: dict[int, bool] = {}
    types: frozenset[str] | None = None
    for atom in atoms:
        if atom.kind == IN_STAGE:
            return False
        if atom.kind == LEVEL:
            if atom.at_least:
                lows[atom.source] = max(lows.get(atom.source, 0.0), atom.level)
            else:
                highs[atom.source] = min(highs.get(atom.source, float("inf")), atom.level)
        elif atom.kind == EVENT:
            types = atom.types if types is None else types & atom.types
            if not types:
                return False
        elif atom.kind in (MARKER, SINCE):
            wanted = atom.wanted if atom.kind == MARKER else True
            if markers.setdefault(atom.marker, wanted) != wanted:
                return False
    return all(high > lows.get(source, 0.0) for source, high in highs.items())


def _simple_cycles(count: int, arcs: Sequence[tuple[int, int, int]]) -> Iterator[list[int]]:
    """Every simple cycle as a list of arc positions (each cycle once, from its lowest stage)."""
    out: dict[int, list[tuple[int, int]]] = {}
    for i, (source, target, _) in enumerate(arcs):
        out.setdefault(source, []).append((target, i))
    for start in range(count):
        stack: list[tuple[int, list[int], set[int]]] = [(start, [], {start})]
        while stack:
            node, path, visited = stack.pop()
            for target, arc in out.get(node, ()):
                if target == start:
                    yield [*path, arc]
                elif target > start and target not in visited:
                    stack.append((target, [*path, arc], visited | {target}))


def _check_instant_cycles(
    where: str, stage_names: Sequence[str], arcs: Sequence[tuple[int, int, Cond, str]]
) -> None:
    branches: list[list[tuple[Cond, ...]]] = []
    live: list[tuple[int, int, int]] = []
    for i, (source, target, cond, _) in enumerate(arcs):
        try:
            terms = [b for b in _dnf(cond) if _satisfiable(b)]
        except ModelError as exc:
            raise ModelError(f"{where}.edges: {exc}") from None
        branches.append(terms)
        if terms:
            live.append((source, target, i))
    for n, cycle in enumerate(_simple_cycles(len(stage_names), live)):
        if n > _MAX_CYCLES:
            raise ModelError(f"{where}.edges: too many cycles to check for same-instant loops")
        edges = [live[a][2] for a in cycle]
        for choice in itertools.product(*(branches[e] for e in edges)):
            if _satisfiable([atom for term in choice for atom in term]):
                path = " -> ".join(stage_names[arcs[e][0]] for e in edges)
                ids = ", ".join(arcs[e][3] for e in edges)
                raise ModelError(
                    f"{where}.edges: the edges {ids} can fire at the same instant forever "
                    f"({path} -> {stage_names[arcs[edges[0]][0]]}); make their conditions "
                    "exclusive or add in_stage_for to one of them"
                )
