"""Output records: stage transitions and contact snapshots.

Floats are kept as computed (no rounding), so streaming and replay outputs can be compared
to any tolerance. ``to_json_bytes`` gives compact JSON with the fields in declaration order.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

TransitionReason = Literal[
    "first_seen",
    "customer_event",
    "event",
    "threshold",
    "decay",
    "time_in_stage",
    "trend",
    "model_change",
    "merge",
]
_RFC3339_MS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"


_setattr = object.__setattr__


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """Build from values the core computed itself: every field, already valid.

        Skips validation (like ``model_construct``, but much cheaper); a unit test checks
        that the core's records validate.
        """
        record = cls.__new__(cls)
        _setattr(record, "__dict__", values)
        _setattr(record, "__pydantic_fields_set__", set(values))
        _setattr(record, "__pydantic_extra__", None)
        _setattr(record, "__pydantic_private__", None)
        return record

    _field_order: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._field_order = tuple(cls.__annotations__)

    def to_json_bytes(self) -> bytes:
        """Compact JSON, UTF-8 (byte-identical to pydantic's ``model_dump_json``).

        Fast path: the field values are JSON types already (str, int, float, bool, None,
        dict of str to float), in declaration order, so orjson writes them directly; its
        number and string formatting is pydantic's (a unit test compares the two).
        """
        values = self.__dict__
        if tuple(values) == self._field_order:
            return orjson.dumps(values)
        return self.model_dump_json().encode("utf-8")


class Transition(_Record):
    """A contact moved from one lifecycle stage to another."""

    transition_id: str = Field(description="deterministic: the same input gives the same id")
    tenant: str
    contact_id: str
    from_stage: str | None = Field(description="null on the contact's first event")
    to_stage: str
    half: str = Field(
        description="the index weighting of to_stage, which index and previous_index use "
        "(format 1 models: the half, pre_purchase or post_purchase)"
    )
    reason: TransitionReason
    index: float = Field(description="index at occurred_at, after the change")
    previous_index: float = Field(
        description="index last reported before this change (0 for first_seen)"
    )
    components: dict[str, float] = Field(description="component name -> score at occurred_at")
    cause_event_id: str | None = Field(description="the event that caused it; null for decay")
    occurred_at: str = Field(pattern=_RFC3339_MS, description="RFC 3339, UTC, milliseconds")
    model_version: str
    lifecycle: str = Field(description="the lifecycle whose stage changed")
    rule_id: str | None = Field(
        description="the edge that fired, or the initial entry for first_seen; null for "
        "model_change"
    )


class StageStatus(TypedDict):
    """A contact's current stage in one lifecycle."""

    stage: str
    entered_at: str
    in_stage_ms: int


class ContactSnapshot(_Record):
    """A contact's state evaluated at ``evaluated_at``."""

    tenant: str
    contact_id: str
    stage: str = Field(description="the stage in the model's first lifecycle")
    half: str = Field(description="the index weighting of that stage")
    index: float
    components: dict[str, float]
    customer: bool
    first_seen_at: str = Field(pattern=_RFC3339_MS)
    last_event_at: str = Field(pattern=_RFC3339_MS)
    events_counted: int = Field(ge=0)
    active_days_7d: int = Field(ge=0, le=7)
    active_days_30d: int = Field(ge=0, le=30)
    active_days_90d: int = Field(ge=0, le=90)
    model_version: str
    evaluated_at: str = Field(pattern=_RFC3339_MS)
    lifecycles: dict[str, StageStatus] = Field(
        description="lifecycle -> current stage, since when, and for how long at evaluated_at"
    )
    markers: dict[str, str] = Field(description="set markers -> when they were set")
