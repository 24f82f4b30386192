"""Identity merge: fold an absorbed contact (an anonymous id) into a survivor (a known id).

The merge is exact. Decayed sums are linear in the events, so the sums of the two contacts,
rebased to one reference time, add up to the sums of a contact that had received every event
of both (docs/scoring.md#identity-merge). The other parts of a state combine by these rules:

* the merge instant ``M`` is the later of the two clocks; each contact's time-driven changes
  due by ``M`` are applied first (the survivor's are published, the absorbed contact's are
  not: it disappears);
* component sums, trend sums and cap windows are rebased to ``M`` and added; a cap window both
  contacts hold is united (its count and sum add, and its ``N/n`` share is applied to the
  united count: the component sum is corrected by the difference); the two latest windows of
  the union are kept. Each id's capped events count as they counted on it, which can differ
  from the one-id result (docs/scoring.md#identity-merge, caps);
* first seen is the earlier, last event the later, ``events_counted`` the sum; the activity
  bitmaps are aligned on the later last event and united;
* markers: by the model's ``merge.markers`` rule, ``latest`` by default (the later change of
  the two wins, a clear wins a tie: what the events would have given on one contact) or
  ``earliest`` (set if set on either side, at the earlier setting);
* stages: the survivor's, then every lifecycle runs at ``M`` with no event, each change with
  reason ``merge``. A survivor without state takes the absorbed contact's stages and times as
  they are (it is the same contact under another id), announced by one ``merge`` transition
  from null per lifecycle.

The duplicate windows are united (:func:`unite_seen`), so a retried event that reaches the
survivor under either id is still recognised.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engagement_index.core.compiled import CompiledModel
from engagement_index.core.dedupe import DIGEST_BYTES, MAX_IDS, SeenIds
from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import (
    _Change,
    _Instant,
    _Work,
    advance,
    contact_index,
    migrate,
)
from engagement_index.core.records import Transition
from engagement_index.core.state import ACTIVITY_DAYS, ACTIVITY_MASK, ContactState, Window
from engagement_index.core.timestamps import MS_PER_DAY

#: The ids that never merge, compared after stripping white space and case-folding (Segment's
#: identity rules block the same values).
_RFC3339_MS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
#: most aliases one survivor takes (its table value stays small): later links are refused
MAX_ALIASES = 1000
BLOCKED_IDS = frozenset({"", "null", "undefined", "anonymous", "0", "none", "nil"})


def merge_id_of(tenant: str, survivor: str, absorbed: str) -> str:
    """The deterministic id of a merge: the same link always gives the same id."""
    text = "\x1f".join(("merge", tenant, survivor, absorbed))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def is_blocked(contact_id: str | None, extra: frozenset[str] = frozenset()) -> bool:
    """True for an id that must never merge (:data:`BLOCKED_IDS` and ``extra``, folded)."""
    if contact_id is None:
        return True
    folded = contact_id.strip().casefold()
    return folded in BLOCKED_IDS or folded in extra


@dataclass(frozen=True, slots=True)
class MergeContext:
    """What a merge is about: the survivor's key and the merge id (the transitions' cause)."""

    survivor: ContactKey
    merge_id: str


@dataclass(frozen=True, slots=True)
class MergeResult:
    """The merged state (None: neither contact had one), its transitions and the figures of
    the merge record: the instant and the contacts' indices before and after, at it."""

    state: ContactState | None
    transitions: list[Transition]
    at_ms: int | None
    survivor_index: float | None
    absorbed_index: float | None
    index: float | None


def _index_at(state: ContactState, at_ms: int, model: CompiledModel) -> float:
    work = _Work(state, model)
    if at_ms > work.clock:
        work.rebase(at_ms - work.clock)
    first = model.lifecycles[0].stages[work.stages[0]]
    return work.level(work.weights_of(first.index, work.stages))


def _of_model(state: ContactState, model: CompiledModel) -> ContactState:
    if state.layout is not model.layout and state.layout != model.layout:
        state, _ = migrate(state, model)
    return state


def merge_states(
    survivor: ContactState | None,
    absorbed: ContactState | None,
    model: CompiledModel,
    context: MergeContext,
) -> MergeResult:
    """``absorbed`` folded into ``survivor`` (see the module rules); pure."""
    key = context.survivor
    transitions: list[Transition] = []
    if survivor is not None and survivor.layout != model.layout:
        survivor, transitions = migrate(survivor, model)
    if absorbed is None:
        if survivor is None:
            return MergeResult(None, [], None, None, None, None)
        at = survivor.clock_ms
        index = contact_index(survivor, model)
        return MergeResult(survivor, transitions, at, index, None, index)
    absorbed = _of_model(absorbed, model)
    if survivor is None:
        renamed = replace(absorbed, tenant=key.tenant, contact_id=key.contact_id)
        work = _Work(renamed, model)
        work.begin_instant()
        for lc in model.lifecycles:
            stage = work.stages[lc.position]
            work.emit(lc, stage, _Change("merge", context.merge_id, None, from_null=True))
        index = contact_index(renamed, model)
        at = renamed.clock_ms
        return MergeResult(renamed, work.transitions, at, None, index, index)
    at = max(survivor.clock_ms, absorbed.clock_ms)
    survivor_index = _index_at(survivor, at, model)
    absorbed_index = _index_at(absorbed, at, model)
    survivor, fired = advance(survivor, at, model)
    transitions.extend(fired)
    absorbed, _ = advance(absorbed, at, model)
    work = _Work(survivor, model)
    work.transitions = transitions
    work.begin_instant()
    if at > work.clock:
        work.rebase(at - work.clock)
    other = _Work(absorbed, model)
    if at > other.clock:
        other.rebase(at - other.clock)
    _add(work, other, model)
    work.run_instant(_Instant(None, context.merge_id, False, "merge"))
    work.solve_due()
    state = work.state()
    return MergeResult(
        state, work.transitions, at, survivor_index, absorbed_index, contact_index(state, model)
    )


def _add(work: _Work, other: _Work, model: CompiledModel) -> None:
    """Add ``other`` (at the same clock) into ``work``: sums, caps, markers, times, days."""
    work.values = [a + b for a, b in zip(work.values, other.values, strict=True)]
    if work.trend:
        work.trend = [a + b for a, b in zip(work.trend, other.trend, strict=True)]
    for c, cap in enumerate(model.caps):
        united: dict[int, tuple[int, float]] = {}
        correction = 0.0
        for k, n, s in (*work.caps[c], *other.caps[c]):
            if not n:
                continue
            if k in united:
                n0, s0 = united[k]
                correction += (
                    _capped(cap.points, cap.count, n0 + n, s0 + s)
                    - _capped(cap.points, cap.count, n0, s0)
                    - _capped(cap.points, cap.count, n, s)
                )
                united[k] = (n0 + n, s0 + s)
            else:
                united[k] = (n, s)
        work.values[cap.component] += correction
        latest: list[Window] = [(k, n, s) for k, (n, s) in sorted(united.items())[-2:]]
        while len(latest) < 2:
            latest.append((0, 0, 0.0))
        work.caps[c] = latest
    for m in range(len(model.markers)):
        bit = 1 << m
        mine = (bool(work.markers & bit), work.marker_ms[m])
        theirs = (bool(other.markers & bit), other.marker_ms[m])
        is_set, at = _marker(mine, theirs, earliest=bool(model.marker_merge_earliest & bit))
        work.markers = work.markers | bit if is_set else work.markers & ~bit
        work.marker_ms[m] = at
    work.first = min(work.first, other.first)
    last = max(work.last, other.last)
    work.days = _align(work.days, work.last, last) | _align(other.days, other.last, last)
    work.last = last
    work.counted += other.counted
    work.levels = {}


def _capped(points: float, count: int, n: int, s: float) -> float:
    """What a cap window of ``n`` events with decayed unit sum ``s`` adds to its component."""
    return points * (count / n) * s if n > count else points * s


def _align(days: int, last_ms: int, anchor_ms: int) -> int:
    shift = anchor_ms // MS_PER_DAY - last_ms // MS_PER_DAY
    return (days << shift) & ACTIVITY_MASK if shift < ACTIVITY_DAYS else 0


def _marker(
    mine: tuple[bool, int | None], theirs: tuple[bool, int | None], *, earliest: bool
) -> tuple[bool, int | None]:
    """One marker of the merged contact, from both contacts' ``(set, time of last change)``."""
    if theirs[1] is None:
        return mine
    if mine[1] is None:
        return theirs
    if earliest and (mine[0] or theirs[0]):
        times = [at for is_set, at in (mine, theirs) if is_set and at is not None]
        return True, min(times)
    if mine[1] != theirs[1]:
        return mine if mine[1] > theirs[1] else theirs
    return (mine[0] and theirs[0]), mine[1]  # the same instant: a clear wins


def unite_seen(a: SeenIds, b: SeenIds, max_ids: int = MAX_IDS) -> SeenIds:
    """The duplicate windows of two contacts as one, in arrival order (a digest both hold
    keeps its later arrival); at most ``max_ids``, the oldest dropped."""
    latest: dict[bytes, int] = {}
    for seen in (a, b):
        for i, arrival in enumerate(seen.arrivals):
            digest = seen.digests[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES]
            if latest.get(digest, arrival - 1) < arrival:
                latest[digest] = arrival
    items = sorted(latest.items(), key=lambda item: item[1])[-max_ids:]
    return SeenIds(b"".join(d for d, _ in items), tuple(at for _, at in items))


class MergeRecord(BaseModel):
    """One identity merge (the merges topic's record value, keyed by the survivor)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    merge_id: str = Field(description="deterministic: tenant, survivor and absorbed id")
    tenant: str
    survivor_id: str = Field(description="the known contact that now holds both histories")
    absorbed_id: str = Field(description="the id folded into it; now an alias of the survivor")
    kind: Literal["identify", "alias"]
    cause_event_id: str = Field(description="the event id of the identify or alias call")
    merged_at: str | None = Field(
        pattern=_RFC3339_MS, description="the merge instant (the later clock); null: no state"
    )
    survivor_index: float | None = Field(description="the survivor's index at merged_at")
    absorbed_index: float | None = Field(description="the absorbed contact's index at merged_at")
    index: float | None = Field(description="the merged contact's index at merged_at")
    survivor_events: int = Field(ge=0, description="events counted on the survivor before")
    absorbed_events: int = Field(ge=0, description="events counted on the absorbed id")

    def to_json_bytes(self) -> bytes:
        """Compact JSON, UTF-8."""
        return self.model_dump_json().encode("utf-8")
