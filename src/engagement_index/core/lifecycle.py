"""The lifecycle stage machine: fold events into a contact's state and emit transitions.

Order of transitions for one event (all at the contact's clock after the event, except a
pending decay, which carries its own time ``tau``):

1. a pending ``decay`` transition, if the event's timestamp is ``>= tau``; the state is then
   rebased to ``tau`` (its clock becomes ``tau``);
2. ``first_seen`` on the contact's first event;
3. ``customer_event`` if the event type marks a customer and the contact is pre-purchase;
4. ``threshold`` within the (possibly new) half.

``previous_index`` of a transition is the index last reported before it: the index of the
state before the event at its clock, or the index of the preceding transition of the same
event (0 before ``first_seen``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from engagement_index.core.decay import (
    component_scores,
    crossing_delay_ms,
    index_after,
    index_of,
    late_contribution,
    max_delay_for,
    rebase,
)
from engagement_index.core.events import CanonicalEvent, EventFields, FailureType
from engagement_index.core.model import CompiledModel, CompiledRule, ScoringModel
from engagement_index.core.records import ContactSnapshot, HalfName, Transition, TransitionReason
from engagement_index.core.state import (
    ACTIVITY_DAYS,
    ACTIVITY_MASK,
    ContactState,
    active_days_between,
)
from engagement_index.core.timestamps import MS_PER_DAY, ms_to_rfc3339
from engagement_index.errors import EventRejected

_HALF_NAMES: tuple[HalfName, HalfName] = ("pre_purchase", "post_purchase")


def transition_id(
    tenant: str,
    contact_id: str,
    model_version: str,
    occurred_at_ms: int,
    from_stage: str | None,
    to_stage: str,
    reason: str,
    cause_event_id: str | None,
) -> str:
    """Deterministic id: hex blake2b-128 over the fields that identify a transition."""
    text = "\x1f".join(
        (
            tenant,
            contact_id,
            model_version,
            str(occurred_at_ms),
            "\x00" if from_stage is None else from_stage,
            to_stage,
            reason,
            "\x00" if cause_event_id is None else cause_event_id,
        )
    )
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _transition(
    tenant: str,
    contact_id: str,
    cm: CompiledModel,
    at_ms: int,
    from_stage: str | None,
    to_stage: str,
    post: bool,
    reason: TransitionReason,
    index: float,
    previous_index: float,
    values: list[float],
    cause: str | None,
) -> Transition:
    return Transition.trusted(
        transition_id=transition_id(
            tenant, contact_id, cm.version, at_ms, from_stage, to_stage, reason, cause
        ),
        tenant=tenant,
        contact_id=contact_id,
        from_stage=from_stage,
        to_stage=to_stage,
        half=_HALF_NAMES[post],
        reason=reason,
        index=index,
        previous_index=previous_index,
        components=component_scores(values, cm),
        cause_event_id=cause,
        occurred_at=ms_to_rfc3339(at_ms),
        model_version=cm.version,
    )


def _due(values: list[float], clock: int, post: bool, upper: bool, cm: CompiledModel) -> int | None:
    if not upper:
        return None
    half = cm.halves[post]
    delay = crossing_delay_ms(values, half, cm, half.leave_upper_below, max_delay_for(clock))
    if delay is None:
        return None
    # delay == 0 cannot happen for an upper stage (the threshold check ran); keep due > clock.
    return clock + max(delay, 1)


def _decay(state: ContactState, cm: CompiledModel) -> tuple[ContactState, Transition]:
    """Apply the pending decay transition at ``tau = state.due_ms``."""
    tau = state.due_ms
    assert tau is not None
    half = cm.halves[state.post_purchase]
    previous = index_of(state.values, half, cm)
    values = rebase(state.values, tau - state.clock_ms, cm)
    index = index_of(values, half, cm)
    transition = _transition(
        state.tenant,
        state.contact_id,
        cm,
        tau,
        half.upper_stage,
        half.lower_stage,
        state.post_purchase,
        "decay",
        index,
        previous,
        values,
        None,
    )
    new = ContactState(
        tenant=state.tenant,
        contact_id=state.contact_id,
        post_purchase=state.post_purchase,
        upper=False,
        clock_ms=tau,
        values=tuple(values),
        first_seen_ms=state.first_seen_ms,
        last_event_ms=state.last_event_ms,
        events_counted=state.events_counted,
        active_days=state.active_days,
        due_ms=None,
        layout=state.layout,
    )
    return new, transition


def migrate(state: ContactState, cm: CompiledModel) -> tuple[ContactState, list[Transition]]:
    """``state`` (computed under another model) moved to ``cm``, and its ``model_change``.

    The decayed sums are matched by component name (a new component starts at 0, a removed one
    is dropped), at the state's clock. The stage is checked against the new thresholds of the
    contact's half at that clock: an upper-stage contact below the new leave level moves down,
    a lower-stage one at or above the new enter level moves up, both with reason
    ``model_change``, ``occurred_at`` = the clock, no cause event. The due time is solved anew
    under ``cm`` (the old one belongs to the old model). A version 1 state (no layout) keeps
    its values by position.
    """
    ids = state.layout.component_ids
    names = cm.layout.component_ids
    assert names is not None
    if ids is None:
        values = [*state.values[: len(names)], *([0.0] * (len(names) - len(state.values)))]
    else:
        by_id = dict(zip(ids, state.values, strict=True))
        values = [by_id.get(i, 0.0) for i in names]
    post = state.post_purchase
    half = cm.halves[post]
    index = index_of(values, half, cm)
    upper = state.upper
    transitions: list[Transition] = []
    change: tuple[str, str] | None = None
    if upper and index < half.leave_upper_below:
        upper = False
        change = half.upper_stage, half.lower_stage
    elif not upper and index >= half.enter_upper_at:
        upper = True
        change = half.lower_stage, half.upper_stage
    if change is not None:
        transitions.append(
            _transition(
                state.tenant, state.contact_id, cm, state.clock_ms, change[0], change[1], post,
                "model_change", index, index, values, None,
            )
        )  # fmt: skip
    new = ContactState(
        tenant=state.tenant,
        contact_id=state.contact_id,
        post_purchase=post,
        upper=upper,
        clock_ms=state.clock_ms,
        values=tuple(values),
        first_seen_ms=state.first_seen_ms,
        last_event_ms=state.last_event_ms,
        events_counted=state.events_counted,
        active_days=state.active_days,
        due_ms=_due(values, state.clock_ms, post, upper, cm),
        layout=cm.layout,
    )
    return new, transitions


def apply_fields(
    state: ContactState | None,
    fields: EventFields,
    model: ScoringModel | CompiledModel,
    *,
    solve_due: bool = True,
) -> tuple[ContactState, list[Transition]]:
    """:func:`step` on the bare scoring fields of an event (the replay's fast path).

    With ``solve_due=False`` the new state's ``due_ms`` is left None even in an upper stage;
    the caller must then use :func:`decay_possible_by` and :func:`with_due` before the
    contact's next event (see ``engagement_index.replay``).
    """
    cm = model.compiled if isinstance(model, ScoringModel) else model
    event_id, tenant, contact_id, event_type, ts = fields
    rule = cm.rules.get(event_type)
    if rule is None:
        raise EventRejected(
            FailureType.UNKNOWN_TYPE, f"type: {event_type!r} is not scored by model {cm.version!r}"
        )
    new, transitions, _ = apply_rule(state, event_id, tenant, contact_id, ts, rule, cm, solve_due)
    return new, transitions


def apply_rule(
    state: ContactState | None,
    event_id: str,
    tenant: str,
    contact_id: str,
    ts: int,
    rule: CompiledRule,
    cm: CompiledModel,
    solve_due: bool,
) -> tuple[ContactState, list[Transition], float]:
    """The core of :func:`step`; also returns the index at the new state's clock."""
    transitions: list[Transition] = []
    comp = rule.component
    points = rule.points
    if state is None:
        values = [0.0] * len(cm.names)
        values[comp] += points
        clock = first = last = ts
        post = False
        counted = 1
        days = 1 if points > 0.0 else 0
        half = cm.halves[0]
        index = index_of(values, half, cm)
        upper = index >= half.enter_upper_at
        stage = half.upper_stage if upper else half.lower_stage
        transitions.append(
            _transition(
                tenant, contact_id, cm, clock, None, stage, False, "first_seen",
                index, 0.0, values, event_id,
            )
        )  # fmt: skip
        previous: float | None = index
    else:
        if state.tenant != tenant or state.contact_id != contact_id:
            raise ValueError("the event belongs to another contact than the state")
        if state.layout is not cm.layout and state.layout != cm.layout:
            state, transitions = migrate(state, cm)
            if not solve_due:
                state = replace(state, due_ms=None)
        if state.due_ms is not None and ts >= state.due_ms:
            state, decay = _decay(state, cm)
            transitions.append(decay)
        clock = state.clock_ms
        post = state.post_purchase
        upper = state.upper
        if ts >= clock:
            values = rebase(state.values, ts - clock, cm)
            clock = ts
            values[comp] += points
        else:
            values = list(state.values)
            values[comp] += late_contribution(points, clock - ts, cm.half_life_ms[comp])
        first = min(state.first_seen_ms, ts)
        last = state.last_event_ms
        days = state.active_days
        if ts > last:
            shift = ts // MS_PER_DAY - last // MS_PER_DAY
            days = (days << shift) & ACTIVITY_MASK if shift < ACTIVITY_DAYS else 0
            last = ts
        if points > 0.0:
            bit = last // MS_PER_DAY - ts // MS_PER_DAY
            if bit < ACTIVITY_DAYS:
                days |= 1 << bit
        counted = state.events_counted + 1
        half = cm.halves[post]
        index = index_of(values, half, cm)
        # computed only if a transition is emitted (after a model change: the index reported)
        previous = transitions[-1].index if transitions else None

    if rule.marks_customer and not post:
        if previous is None:
            previous = index_of(state.values, cm.halves[0], cm) if state is not None else 0.0
        from_stage = half.upper_stage if upper else half.lower_stage
        post = True
        upper = True
        half = cm.halves[1]
        index = index_of(values, half, cm)
        transitions.append(
            _transition(
                tenant, contact_id, cm, clock, from_stage, half.upper_stage, True,
                "customer_event", index, previous, values, event_id,
            )
        )  # fmt: skip
        previous = index
    change: tuple[str, str] | None = None
    if upper:
        if index < half.leave_upper_below:
            upper = False
            change = half.upper_stage, half.lower_stage
    elif index >= half.enter_upper_at:
        upper = True
        change = half.lower_stage, half.upper_stage
    if change is not None:
        if previous is None:
            assert state is not None
            previous = index_of(state.values, half, cm)
        transitions.append(
            _transition(
                tenant, contact_id, cm, clock, change[0], change[1], post, "threshold",
                index, previous, values, event_id,
            )
        )  # fmt: skip
    new = ContactState(
        tenant,
        contact_id,
        post,
        upper,
        clock,
        tuple(values),
        first,
        last,
        counted,
        days,
        _due(values, clock, post, upper, cm) if solve_due else None,
        cm.layout,
    )
    return new, transitions, index


#: Index margin under which :func:`decay_possible_by` asks for the exact crossing time. Float
#: rounding in the index is around 1e-13; a margin far above it makes the shortcut exact.
DECAY_CHECK_MARGIN = 1e-7


def decay_possible_by(state: ContactState, at_ms: int, model: ScoringModel | CompiledModel) -> bool:
    """False if an upper-stage contact surely has no decay crossing at or before ``at_ms``.

    One index evaluation instead of solving the crossing time: the index only falls between
    events, so if it is still at least ``DECAY_CHECK_MARGIN`` above the leave threshold at
    ``at_ms``, the crossing lies after ``at_ms``.
    """
    if not state.upper or at_ms <= state.clock_ms:
        return False
    cm = model.compiled if isinstance(model, ScoringModel) else model
    half = cm.halves[state.post_purchase]
    index = index_after(state.values, at_ms - state.clock_ms, half, cm)
    return index < half.leave_upper_below + DECAY_CHECK_MARGIN


def with_due(state: ContactState, model: ScoringModel | CompiledModel) -> ContactState:
    """``state`` with its pending decay time solved (as :func:`step` leaves it)."""
    cm = model.compiled if isinstance(model, ScoringModel) else model
    due = _due(list(state.values), state.clock_ms, state.post_purchase, state.upper, cm)
    if due == state.due_ms:
        return state
    return replace(state, due_ms=due)


def step(
    state: ContactState | None, event: CanonicalEvent, model: ScoringModel
) -> tuple[ContactState, list[Transition]]:
    """Fold one event into a contact's state; returns the new state and its transitions.

    Duplicates are the caller's to drop first (:func:`engagement_index.core.dedupe.admit`).
    A state computed under another model is migrated first (:func:`migrate`). An unknown
    event type raises ``EventRejected(unknown_type)``.
    """
    fields = EventFields(
        event.event_id, event.tenant, event.contact_id, event.type, event.timestamp_ms
    )
    return apply_fields(state, fields, model)


def advance(
    state: ContactState, until_ms: int, model: ScoringModel | CompiledModel
) -> tuple[ContactState, list[Transition]]:
    """Emit the pending decay transition if it is due at or before ``until_ms``.

    A state computed under another model is migrated first (:func:`migrate`): its due time is
    solved anew, so a wake-up whose crossing no longer holds under the model emits nothing
    (beyond a ``model_change``, if the new thresholds move the stage).
    """
    cm = model.compiled if isinstance(model, ScoringModel) else model
    transitions: list[Transition] = []
    if state.layout is not cm.layout and state.layout != cm.layout:
        state, transitions = migrate(state, cm)
    if state.due_ms is None or state.due_ms > until_ms:
        return state, transitions
    new, transition = _decay(state, cm)
    transitions.append(transition)
    return new, transitions


def next_due_ms(
    state: ContactState, model: ScoringModel | CompiledModel | None = None
) -> int | None:
    """Time ``tau`` of the pending decay transition, or None (precomputed in the state)."""
    return state.due_ms


def evaluate(
    state: ContactState, at_ms: int, model: ScoringModel | CompiledModel
) -> ContactSnapshot:
    """The contact as of ``at_ms`` (not before its clock), pending decay applied; pure."""
    cm = model.compiled if isinstance(model, ScoringModel) else model
    if state.layout is not cm.layout and state.layout != cm.layout:
        state, _ = migrate(state, cm)
    if state.due_ms is not None and state.due_ms <= at_ms:
        state, _ = _decay(state, cm)
    at = max(at_ms, state.clock_ms)
    values = rebase(state.values, at - state.clock_ms, cm)
    half = cm.halves[state.post_purchase]
    return ContactSnapshot.trusted(
        tenant=state.tenant,
        contact_id=state.contact_id,
        stage=half.upper_stage if state.upper else half.lower_stage,
        half=_HALF_NAMES[state.post_purchase],
        index=index_of(values, half, cm),
        components=component_scores(values, cm),
        customer=state.post_purchase,
        first_seen_at=ms_to_rfc3339(state.first_seen_ms),
        last_event_at=ms_to_rfc3339(state.last_event_ms),
        events_counted=state.events_counted,
        active_days_7d=active_days_between(state, at, 7),
        active_days_30d=active_days_between(state, at, 30),
        active_days_90d=active_days_between(state, at, 90),
        model_version=cm.version,
        evaluated_at=ms_to_rfc3339(at),
    )
