"""The scoring model: components, event types, and the two halves of the lifecycle.

The YAML format (see ``config/models/README.md``) is the contract; these pydantic models
validate it. A loaded model is immutable and carries a precompiled, index-based form
(:class:`CompiledModel`) that the hot path uses.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from engagement_index.errors import ModelError

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


def parse_half_life(value: object) -> float:
    """Seconds of a half-life given as a number of seconds or a string like ``"14d"``."""
    if isinstance(value, bool):
        raise ValueError("half_life must be a number of seconds or a string like '14d'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"half_life {value!r} is not a number of seconds or like '14d'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("half_life must be a number of seconds or a string like '14d'")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("half_life must be positive")
    if seconds < 0.001:
        raise ValueError("half_life must be at least one millisecond")
    return seconds


HalfLife = Annotated[
    float,
    BeforeValidator(parse_half_life),
    WithJsonSchema(
        {
            "description": "seconds, or a number with a unit d/h/m/s such as '14d'",
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?\s*[dhms]$"},
            ],
        }
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Component(_Strict):
    """A decayed sum with its half-life (seconds) and saturation constant."""

    half_life: HalfLife
    saturation: float = Field(gt=0, allow_inf_nan=False)


class EventRule(_Strict):
    """What one event type contributes."""

    component: str
    points: float = Field(allow_inf_nan=False)
    marks_customer: bool = False


class Half(_Strict):
    """One half of the lifecycle: weights and the two stages with hysteresis thresholds."""

    weights: dict[str, Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]]
    lower_stage: str = Field(min_length=1)
    upper_stage: str = Field(min_length=1)
    enter_upper_at: float = Field(ge=0, le=100, allow_inf_nan=False)
    leave_upper_below: float = Field(ge=0, le=100, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> Half:
        total = math.fsum(self.weights.values())
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(f"weights: sum to {total!r}, must sum to 1 (within 1e-9)")
        if self.leave_upper_below > self.enter_upper_at:
            raise ValueError(
                f"leave_upper_below: {self.leave_upper_below} must not exceed "
                f"enter_upper_at ({self.enter_upper_at})"
            )
        if self.lower_stage == self.upper_stage:
            raise ValueError("upper_stage: must differ from lower_stage")
        return self


class Halves(_Strict):
    """The two halves; a contact moves from the first to the second on a customer event."""

    pre_purchase: Half
    post_purchase: Half


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """An event rule with its component as an index."""

    component: int
    points: float
    marks_customer: bool


@dataclass(frozen=True, slots=True)
class CompiledHalf:
    """A half with weights aligned on the model's component order."""

    name: str
    weights: tuple[float, ...]
    lower_stage: str
    upper_stage: str
    enter_upper_at: float
    leave_upper_below: float
    min_half_life_ms: float  # shortest half-life among the components weighted in this half


@dataclass(frozen=True, slots=True)
class StateLayout:
    """What a stored contact state says about the model it was computed under.

    ``fingerprint``: 32 bits of a hash of everything in the model that changes a state or its
    due time (components, event rules, halves; not the version string). ``component_ids``: a
    32-bit hash of each component name, in the order of the state's values (None: a version 1
    state, in the order of the model that reads it).
    """

    fingerprint: int
    component_ids: tuple[int, ...] | None


def name_id(name: str) -> int:
    """The 32-bit id of a component name in a stored state."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")


def model_fingerprint(model: ScoringModel) -> int:
    """32 bits of blake2b over the canonical JSON of the model without its version."""
    content = model.model_dump(mode="json", exclude={"version"})
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


@dataclass(frozen=True, slots=True)
class CompiledModel:
    """The index-based form of a model that the hot path uses."""

    version: str
    layout: StateLayout  # interned (engagement_index.core.state.interned_layout)
    names: tuple[str, ...]
    half_life_ms: tuple[float, ...]
    saturation: tuple[float, ...]
    rules: dict[str, CompiledRule]
    halves: tuple[CompiledHalf, CompiledHalf]  # (pre_purchase, post_purchase)


class ScoringModel(_Strict):
    """A versioned scoring and lifecycle model."""

    version: str = Field(min_length=1, max_length=128)
    components: dict[str, Component] = Field(min_length=1)
    events: dict[str, EventRule]
    halves: Halves

    _compiled: CompiledModel | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_references(self) -> ScoringModel:
        for name in self.components:
            if not name:
                raise ValueError("components: a component name must not be empty")
        for event_type, rule in self.events.items():
            if not re.fullmatch(EVENT_TYPE_PATTERN, event_type):
                raise ValueError(f"events.{event_type}: type must look like 'channel.action'")
            if rule.component not in self.components:
                raise ValueError(
                    f"events.{event_type}.component: unknown component {rule.component!r}"
                )
        for half_name in ("pre_purchase", "post_purchase"):
            half: Half = getattr(self.halves, half_name)
            for component in half.weights:
                if component not in self.components:
                    raise ValueError(f"halves.{half_name}.weights.{component}: unknown component")
        return self

    @property
    def compiled(self) -> CompiledModel:
        """The precompiled form (built once)."""
        private = self.__pydantic_private__
        compiled: CompiledModel | None = private.get("_compiled") if private else None
        if compiled is None:
            compiled = _compile(self)
            self._compiled = compiled
        return compiled


def _compile(model: ScoringModel) -> CompiledModel:
    names = tuple(model.components)
    position = {name: i for i, name in enumerate(names)}

    def half(name: str, spec: Half) -> CompiledHalf:
        return CompiledHalf(
            name=name,
            weights=tuple(spec.weights.get(n, 0.0) for n in names),
            lower_stage=spec.lower_stage,
            upper_stage=spec.upper_stage,
            enter_upper_at=spec.enter_upper_at,
            leave_upper_below=spec.leave_upper_below,
            min_half_life_ms=min(
                model.components[n].half_life * 1000.0 for n, w in spec.weights.items() if w > 0
            ),
        )

    from engagement_index.core.state import interned_layout  # state imports this module

    layout = StateLayout(model_fingerprint(model), tuple(name_id(n) for n in names))
    if len(set(layout.component_ids or ())) != len(names):
        raise ModelError("components: two component names have the same 32-bit id; rename one")
    return CompiledModel(
        version=model.version,
        layout=interned_layout(layout),
        names=names,
        half_life_ms=tuple(c.half_life * 1000.0 for c in model.components.values()),
        saturation=tuple(c.saturation for c in model.components.values()),
        rules={
            t: CompiledRule(position[r.component], r.points, r.marks_customer)
            for t, r in model.events.items()
        },
        halves=(
            half("pre_purchase", model.halves.pre_purchase),
            half("post_purchase", model.halves.post_purchase),
        ),
    )


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
        return ScoringModel.model_validate(dict(data))
    except ValidationError as exc:
        raise ModelError(_format_errors(exc)) from None


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
