"""The scoring model file: components, event rules, markers, indices and lifecycles.

The YAML format (``docs/models.md``) is the contract; these pydantic models validate it. A
loaded model is immutable; its precompiled, index-based form
(:class:`engagement_index.core.compiled.CompiledModel`, built once) is what the core uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from engagement_index.errors import ModelError

if TYPE_CHECKING:
    from engagement_index.core.compiled import CompiledModel

_REPO_MODEL = Path(__file__).resolve().parents[3] / "config" / "models" / "default.yaml"
#: The copy of ``config/models/default.yaml`` shipped inside the package (kept identical by a test).
PACKAGED_MODEL_PATH = Path(__file__).resolve().with_name("default_model.yaml")
#: The default model: ``config/models/default.yaml`` of the source tree when present, else the
#: packaged copy.
DEFAULT_MODEL_PATH = _REPO_MODEL if _REPO_MODEL.is_file() else PACKAGED_MODEL_PATH

WEIGHT_TOLERANCE = 1e-9
EVENT_TYPE_PATTERN = r"^[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{1,64}$"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([dhms])")
_FIELD_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*: ")
_UNIT_SECONDS = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: object, what: str = "a duration") -> float:
    """Seconds of a duration given as a number of seconds or a string like ``"14d"``."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of seconds or a string like '14d'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{what} {value!r} is not a number of seconds or like '14d'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"{what} must be a number of seconds or a string like '14d'")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be positive")
    if seconds < 0.001:
        raise ValueError(f"{what} must be at least one millisecond")
    return seconds


def parse_half_life(value: object) -> float:
    """Seconds of a half-life given as a number of seconds or a string like ``"14d"``."""
    return parse_duration(value, "half_life")


def duration_ms(seconds: float) -> int:
    """A duration in whole milliseconds (rounded; at least 1)."""
    return max(1, round(seconds * 1000.0))


_DURATION_SCHEMA = WithJsonSchema(
    {
        "description": "seconds, or a number with a unit d/h/m/s such as '14d'",
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?\s*[dhms]$"},
        ],
    }
)
HalfLife = Annotated[float, BeforeValidator(parse_half_life), _DURATION_SCHEMA]
Duration = Annotated[float, BeforeValidator(parse_duration), _DURATION_SCHEMA]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Level = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Weight = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]

EdgeReason = Literal["customer_event", "event", "threshold"]
#: The index of a stage in the first lifecycle, usable as an index name elsewhere.
CONTACT_INDEX = "contact"


class Component(_Strict):
    """A decayed sum with its half-life (seconds) and saturation constant."""

    half_life: HalfLife
    saturation: float = Field(gt=0, allow_inf_nan=False)


class Cap(_Strict):
    """At most ``count`` events of a rule count per contact per window of ``per`` seconds."""

    count: int = Field(ge=1, le=1_000_000)
    per: Duration


class EventRule(_Strict):
    """What one event type contributes."""

    component: str
    points: float = Field(allow_inf_nan=False)
    marks_customer: bool = False  # format 1; format 2 writes sets: [customer]
    sets: tuple[Name, ...] = Field(default=(), strict=False)
    clears: tuple[Name, ...] = Field(default=(), strict=False)
    cap: Cap | None = None


class Half(_Strict):
    """Format 1: one half of the lifecycle, weights and two stages with hysteresis."""

    weights: dict[str, Weight]
    lower_stage: str = Field(min_length=1)
    upper_stage: str = Field(min_length=1)
    enter_upper_at: Level
    leave_upper_below: Level

    @model_validator(mode="after")
    def _check(self) -> Half:
        _check_weights(self.weights)
        if self.leave_upper_below > self.enter_upper_at:
            raise ValueError(
                f"leave_upper_below: {self.leave_upper_below} must not exceed "
                f"enter_upper_at ({self.enter_upper_at})"
            )
        if self.lower_stage == self.upper_stage:
            raise ValueError("upper_stage: must differ from lower_stage")
        return self


class Halves(_Strict):
    """Format 1: the two halves; a contact moves to the second on a customer event."""

    pre_purchase: Half
    post_purchase: Half


def _check_weights(weights: Mapping[str, float]) -> None:
    total = math.fsum(weights.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValueError(f"weights: sum to {total!r}, must sum to 1 (within 1e-9)")


class RatioLevel(_Strict):
    """A level of the trend ratio: exactly one of ``at_least`` and ``below``."""

    at_least: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    below: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> RatioLevel:
        if (self.at_least is None) == (self.below is None):
            raise ValueError("give exactly one of at_least and below")
        return self


_CONDITION_KINDS = (
    "all",
    "any",
    "index",
    "component",
    "trend_ratio",
    "event",
    "marker",
    "in_stage_for",
    "since_marker",
)


class Condition(_Strict):
    """One condition of an edge (docs/models.md#conditions): exactly one kind of key."""

    all: tuple[Condition, ...] | None = Field(default=None, strict=False)
    any: tuple[Condition, ...] | None = Field(default=None, strict=False)
    index: str | None = None
    component: str | None = None
    trend_ratio: RatioLevel | None = None
    event: str | Annotated[tuple[str, ...], Strict(False)] | None = None
    marker: str | None = None
    set: bool | None = None
    in_stage_for: Duration | None = None
    since_marker: str | None = None
    at_least: float | str | None = None
    below: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> Condition:
        kinds = [k for k in _CONDITION_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            listed = ", ".join(kinds) if kinds else "none"
            raise ValueError(
                f"a condition has exactly one of {', '.join(_CONDITION_KINDS)} (got {listed})"
            )
        kind = kinds[0]
        if self.set is not None and kind != "marker":
            raise ValueError("set: only with marker")
        if kind in ("index", "component"):
            if (self.at_least is None) == (self.below is None):
                raise ValueError(f"{kind}: give exactly one of at_least and below")
            level = self.at_least if self.at_least is not None else self.below
            if isinstance(level, str) or not (
                isinstance(level, int | float) and 0.0 <= level <= 100.0
            ):
                raise ValueError(f"{kind}: the level must be a number in [0, 100]")
        elif kind == "since_marker":
            if self.at_least is None or self.below is not None:
                raise ValueError("since_marker: give at_least (a duration)")
            parse_duration(self.at_least, "since_marker.at_least")
        elif self.at_least is not None or self.below is not None:
            raise ValueError(f"{kind}: at_least and below belong to index, component or since")
        return self


class Stage(_Strict):
    """Options of one stage."""

    index: str | None = None


class InitialEntry(_Strict):
    """Where a contact starts: the first entry whose condition holds."""

    stage: Name
    when: Condition | None = None
    id: Name | None = None


class Edge(_Strict):
    """A declared transition between stages of one lifecycle."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    id: Name
    from_: Name | Annotated[tuple[Name, ...], Strict(False)] = Field(alias="from")
    to: Name
    when: Condition | None = None
    reason: EdgeReason | None = None


class Bands(_Strict):
    """Short form of a lifecycle whose stages are index levels."""

    index: str = CONTACT_INDEX
    levels: dict[Name, Level] = Field(min_length=1)
    hysteresis: float = Field(default=0.0, ge=0, le=100, allow_inf_nan=False)


class Trend(_Strict):
    """Short form of the rising / steady / falling lifecycle."""

    fast: HalfLife
    slow: HalfLife
    margin: float = Field(gt=0, lt=1, allow_inf_nan=False)
    hysteresis: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> Trend:
        if self.hysteresis >= self.margin:
            raise ValueError("hysteresis: must be smaller than margin")
        return self


class Lifecycle(_Strict):
    """Stages, where contacts start, and edges; or a ``bands`` or ``trend`` short form."""

    stages: dict[Name, Stage] | None = None
    initial: tuple[InitialEntry, ...] | None = Field(default=None, strict=False)
    edges: tuple[Edge, ...] = Field(default=(), strict=False)
    bands: Bands | None = None
    trend: Trend | None = None

    @model_validator(mode="after")
    def _check(self) -> Lifecycle:
        forms = [n for n in ("stages", "bands", "trend") if getattr(self, n) is not None]
        if len(forms) != 1:
            raise ValueError("a lifecycle has exactly one of stages, bands and trend")
        if self.stages is not None:
            if not self.stages:
                raise ValueError("stages: at least one stage")
            if not self.initial:
                raise ValueError("initial: at least one entry")
        elif self.initial is not None or self.edges:
            raise ValueError(f"{forms[0]}: initial and edges are generated, do not give them")
        return self


class Legacy(_Strict):
    """How states written before format 2 (two halves) map to this model."""

    stages: tuple[Name, Name, Name, Name] = Field(strict=False)
    marker: Name | None = None


class MergeRules(_Strict):
    """How two contacts' states combine when an identity merge folds one into the other."""

    markers: dict[Name, Literal["latest", "earliest"]] = Field(
        default_factory=dict,
        description="per marker: latest (default; the later change wins, as if the events "
        "had come on one contact) or earliest (set if set on either, at the earlier setting)",
    )


class ScoringModel(_Strict):
    """A versioned scoring and lifecycle model (docs/models.md)."""

    format: Literal[1, 2] = 1
    version: str = Field(min_length=1, max_length=128)
    components: dict[str, Component] = Field(min_length=1)
    markers: tuple[Name, ...] = Field(default=(), strict=False)
    events: dict[str, EventRule]
    halves: Halves | None = None
    indices: dict[Name, dict[str, Weight]] | None = None
    lifecycles: dict[Name, Lifecycle] | None = None
    legacy: Legacy | None = None
    merge: MergeRules | None = None

    _compiled: CompiledModel | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_references(self) -> ScoringModel:
        for name in self.components:
            if not name:
                raise ValueError("components: a component name must not be empty")
        if self.format == 1:
            for key in ("indices", "lifecycles", "legacy"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key}: a format 2 key (add format: 2)")
            if self.markers:
                raise ValueError("markers: a format 2 key (add format: 2)")
            if self.halves is None:
                raise ValueError("halves: required in a format 1 model")
        else:
            if self.halves is not None:
                raise ValueError("halves: a format 1 key (format 2 declares lifecycles)")
            if not self.indices:
                raise ValueError("indices: required in a format 2 model")
            if not self.lifecycles:
                raise ValueError("lifecycles: required in a format 2 model")
        for marker in self.merge.markers if self.merge is not None else {}:
            if marker not in self.markers:
                raise ValueError(f"merge.markers.{marker}: unknown marker")
        if len(set(self.markers)) != len(self.markers):
            raise ValueError("markers: a marker is declared twice")
        if len(self.markers) > 16:
            raise ValueError("markers: at most 16")
        for event_type, rule in self.events.items():
            where = f"events.{event_type}"
            if not re.fullmatch(EVENT_TYPE_PATTERN, event_type):
                raise ValueError(f"{where}: type must look like 'channel.action'")
            if rule.component not in self.components:
                raise ValueError(f"{where}.component: unknown component {rule.component!r}")
            if self.format == 2 and rule.marks_customer:
                raise ValueError(f"{where}.marks_customer: format 1 only (use sets: [customer])")
            for key in ("sets", "clears"):
                for marker in getattr(rule, key):
                    if marker not in self.markers:
                        raise ValueError(f"{where}.{key}: unknown marker {marker!r}")
            if set(rule.sets) & set(rule.clears):
                raise ValueError(f"{where}: an event cannot set and clear the same marker")
        if self.halves is not None:
            for half_name in ("pre_purchase", "post_purchase"):
                half: Half = getattr(self.halves, half_name)
                for component in half.weights:
                    if component not in self.components:
                        raise ValueError(
                            f"halves.{half_name}.weights.{component}: unknown component"
                        )
        for name, weights in (self.indices or {}).items():
            if name == CONTACT_INDEX:
                raise ValueError(f"indices.{name}: the name {CONTACT_INDEX!r} is reserved")
            for component in weights:
                if component not in self.components:
                    raise ValueError(f"indices.{name}.{component}: unknown component")
            try:
                _check_weights(weights)
            except ValueError as exc:
                raise ValueError(f"indices.{name}.{exc}") from None
        return self

    @property
    def compiled(self) -> CompiledModel:
        """The precompiled form (built once; ``ModelError`` if the lifecycles are invalid)."""
        private = self.__pydantic_private__
        compiled: CompiledModel | None = private.get("_compiled") if private else None
        if compiled is None:
            from engagement_index.core.compiled import compile_model

            compiled = compile_model(self)
            self._compiled = compiled
        return compiled


Condition.model_rebuild()


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if loc and _FIELD_PREFIX.match(msg):
            parts.append(f"{loc}.{msg}")
        else:
            parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_model(data: Mapping[str, Any]) -> ScoringModel:
    """Validate a mapping (the parsed YAML) into a model; ``ModelError`` names the field."""
    if not isinstance(data, Mapping):
        raise ModelError("the model must be a mapping at the top level")
    try:
        model = ScoringModel.model_validate(dict(data))
    except ValidationError as exc:
        raise ModelError(_format_errors(exc)) from None
    model.compiled  # noqa: B018 - the lifecycle checks run when compiling
    return model


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ModelError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_model(path: str | Path = DEFAULT_MODEL_PATH) -> ScoringModel:
    """Load and validate a YAML model file; ``ModelError`` names the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the model file: {exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: invalid YAML: {exc}") from None
    try:
        return parse_model(data)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
