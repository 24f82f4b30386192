"""The lifecycle engine: fold events into a contact's state and emit its transitions.

Three pure entry points, all on a :class:`~engagement_index.core.compiled.CompiledModel`:

* :func:`step` ``(state, event, model) -> (state, transitions)``: one event;
* :func:`advance` ``(state, until, model) -> (state, transitions)``: the time-driven changes
  due up to ``until``;
* :func:`evaluate` ``(state, at, model) -> snapshot``: the contact as of ``at``.

The semantics are those of ``docs/models.md#evaluation``: at each instant the lifecycles run in
declared order, each following its first matching edge until none holds; between events the
next time-driven change (``due_ms``) is solved exactly from the monotone atoms of the edges out
of the current stages. The engine knows no stage or lifecycle names: they are model data.

``previous_index`` of a transition is the index last reported before it in its lifecycle at the
same instant (the preceding transition of a same-instant chain), else the index of its
from-stage in the state as it was just before the instant, at its clock (0 for
``first_seen``). It depends on the instants only, not on how many of them one call applies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from engagement_index.core.compiled import (
    ALL,
    ANY,
    CONTACT,
    EVENT,
    IN_STAGE,
    LEVEL,
    MARKER,
    TREND,
    CompiledLifecycle,
    CompiledModel,
    CompiledRule,
    Cond,
)
from engagement_index.core.decay import (
    component_scores,
    crossing_delay_ms,
    index_after,
    index_of,
    late_contribution,
    max_delay_for,
    trend_crossing_ms,
    trend_ratio,
)
from engagement_index.core.events import EventFields, FailureType
from engagement_index.core.records import ContactSnapshot, StageStatus, Transition
from engagement_index.core.state import (
    ACTIVITY_DAYS,
    ACTIVITY_MASK,
    EMPTY_WINDOW,
    ContactState,
    active_days_between,
)
from engagement_index.core.timestamps import MS_PER_DAY, ms_to_rfc3339
from engagement_index.errors import EventRejected

_INF = 1 << 62
Intervals = list[tuple[int, int]]
#: Margin under which :func:`possibly_due_by` asks for the exact due time. Float rounding in
#: an index is around 1e-13; a margin far above it makes the shortcut exact.
DUE_CHECK_MARGIN = 1e-7


def transition_id(parts: Sequence[str | int | None]) -> str:
    """Deterministic id: hex blake2b-128 over the fields that identify a transition.

    ``parts``: tenant, contact id, model version, ``occurred_at`` ms, from stage, to stage,
    reason, cause event id, then (for any lifecycle but the first) the lifecycle name. None
    is written as a NUL character.
    """
    text = "\x1f".join("\x00" if p is None else str(p) for p in parts)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class _Work:
    """A contact's state while one call changes it (mutable; positions instead of ids)."""

    __slots__ = (
        "caps",
        "clock",
        "cm",
        "contact_id",
        "counted",
        "days",
        "due",
        "entered",
        "first",
        "last",
        "last_reported",
        "levels",
        "marker_ms",
        "markers",
        "prev_stages",
        "prev_values",
        "stages",
        "tenant",
        "transitions",
        "trend",
        "values",
    )

    def __init__(self, state: ContactState, cm: CompiledModel) -> None:
        self.cm = cm
        self.tenant = state.tenant
        self.contact_id = state.contact_id
        self.clock = state.clock_ms
        self.values = list(state.values)
        self.first = state.first_seen_ms
        self.last = state.last_event_ms
        self.counted = state.events_counted
        self.days = state.active_days
        self.due = state.due_ms
        by_id = cm.stage_by_id
        self.stages = [by_id[s][1] for s in state.stages]
        self.entered = list(state.entered_ms)
        self.markers = state.markers
        self.marker_ms = list(state.marker_ms)
        self.trend = list(state.trend)
        self.caps = [list(windows) for windows in state.caps]
        self.transitions: list[Transition] = []
        self.last_reported: list[float | None] = [None] * len(cm.lifecycles)
        self.levels: dict[int, float] = {}
        self.prev_values = self.values
        self.prev_stages = self.stages

    def state(self) -> ContactState:
        cm = self.cm
        return ContactState(
            self.tenant, self.contact_id, self.clock, tuple(self.values), self.first, self.last,
            self.counted, self.days, self.due, cm.layout,
            tuple(lc.stages[s].stage_id for lc, s in zip(cm.lifecycles, self.stages, strict=True)),
            tuple(self.entered), self.markers, tuple(self.marker_ms), tuple(self.trend),
            tuple((w[0], w[1]) for w in self.caps),
        )  # fmt: skip

    # ------------------------------------------------------------------ levels
    def stage_statuses(self, at: int) -> dict[str, StageStatus]:
        """Each lifecycle's stage, when it was entered and how long ago at ``at`` (the
        snapshot's ``lifecycles``, a contact's or an account's)."""
        entered = self.entered
        return {
            lc.name: {
                "stage": lc.stages[self.stages[lc.position]].name,
                "entered_at": ms_to_rfc3339(entered[lc.position]),
                "in_stage_ms": at - entered[lc.position],
            }
            for lc in self.cm.lifecycles
        }

    def weights_of(self, index: int, stages: Sequence[int]) -> int:
        """The weighting a stage index stands for (CONTACT resolved with ``stages``)."""
        if index == CONTACT:
            first = self.cm.lifecycles[0]
            return first.stages[stages[0]].index
        return index

    def level(self, source: int) -> float:
        """A weighting's index, or the trend ratio, at the clock (cached until it changes)."""
        if source == CONTACT:
            source = self.weights_of(CONTACT, self.stages)
        cached = self.levels.get(source)
        if cached is None:
            if source == TREND:
                assert self.cm.trend is not None
                cached = trend_ratio(self.trend, 0, self.cm.trend)
            else:
                cached = index_of(self.values, self.cm.weights[source], self.cm)
            self.levels[source] = cached
        return cached

    def holds(self, cond: Cond, lc: int, event_type: str | None) -> bool:
        kind = cond.kind
        if kind == LEVEL:
            value = self.level(cond.source)
            return value >= cond.level if cond.at_least else value < cond.level
        if kind == MARKER:
            return bool(self.markers & cond.bit) == cond.wanted
        if kind == ALL:
            return all(self.holds(c, lc, event_type) for c in cond.children)
        if kind == ANY:
            return any(self.holds(c, lc, event_type) for c in cond.children)
        if kind == EVENT:
            return event_type is not None and event_type in cond.types
        if kind == IN_STAGE:
            return self.clock - self.entered[lc] >= cond.ms
        # SINCE
        at = self.marker_ms[cond.marker]
        return bool(self.markers & cond.bit) and at is not None and self.clock - at >= cond.ms

    # ------------------------------------------------------------- due times
    def truth(self, cond: Cond, lc: int) -> Intervals:
        """Offsets ``d >= 0`` (ms after the clock) at which ``cond`` holds without events."""
        kind = cond.kind
        if kind == LEVEL:
            value = self.level(cond.source)
            below_now = value < cond.level
            if cond.at_least and below_now:
                return []
            if not cond.at_least and below_now:
                return [(0, _INF)]
            crossing = self.crossing(cond.source, cond.level)
            if cond.at_least:
                return [(0, _INF if crossing is None else crossing)]
            return [] if crossing is None else [(crossing, _INF)]
        if kind == MARKER:
            return [(0, _INF)] if bool(self.markers & cond.bit) == cond.wanted else []
        if kind == ALL:
            result: Intervals = [(0, _INF)]
            for child in cond.children:
                result = _intersect(result, self.truth(child, lc))
                if not result:
                    break
            return result
        if kind == ANY:
            return _union([self.truth(child, lc) for child in cond.children])
        if kind == EVENT:
            return []
        if kind == IN_STAGE:
            return [(max(self.entered[lc] + cond.ms - self.clock, 0), _INF)]
        at = self.marker_ms[cond.marker]
        if not self.markers & cond.bit or at is None:
            return []
        return [(max(at + cond.ms - self.clock, 0), _INF)]

    def crossing(self, source: int, level: float) -> int | None:
        """First ms offset at which the source is below ``level`` (None: never)."""
        max_delay = max_delay_for(self.clock)
        if source == CONTACT:
            source = self.weights_of(CONTACT, self.stages)
        if source == TREND:
            assert self.cm.trend is not None
            return trend_crossing_ms(self.trend, self.cm.trend, level, max_delay)
        weights = self.cm.weights[source]
        return crossing_delay_ms(self.values, weights, self.cm, level, max_delay)

    def may_hold_by(self, cond: Cond, lc: int, d: int) -> bool:
        """False if ``cond`` surely holds at no offset in ``(0, d]`` (no event in between).

        A cheap over-approximation of :meth:`truth`: an index, score or ratio only falls, so
        ``below`` can only hold by ``d`` if it holds at ``d`` (checked with a margin far above
        float rounding), ``at_least`` only if it holds now.
        """
        kind = cond.kind
        if kind == LEVEL:
            if cond.at_least:
                return self.level(cond.source) >= cond.level
            source = cond.source
            if source == CONTACT:
                source = self.weights_of(CONTACT, self.stages)
            if source == TREND:
                assert self.cm.trend is not None
                value = trend_ratio(self.trend, d, self.cm.trend)
            else:
                value = index_after(self.values, d, self.cm.weights[source], self.cm)
            return value < cond.level + DUE_CHECK_MARGIN
        if kind == MARKER:
            return bool(self.markers & cond.bit) == cond.wanted
        if kind == ALL:
            return all(self.may_hold_by(c, lc, d) for c in cond.children)
        if kind == ANY:
            return any(self.may_hold_by(c, lc, d) for c in cond.children)
        if kind == EVENT:
            return False
        if kind == IN_STAGE:
            return self.entered[lc] + cond.ms - self.clock <= d
        at = self.marker_ms[cond.marker]
        return bool(self.markers & cond.bit) and at is not None and at + cond.ms - self.clock <= d

    def solve_due(self) -> None:
        """The next time-driven change after the clock (None: there is none)."""
        best = _INF
        max_delay = max_delay_for(self.clock)
        for lc in self.cm.lifecycles:
            for edge in lc.stages[self.stages[lc.position]].edges:
                for start, end in self.truth(edge.cond, lc.position):
                    d = max(start, 1)
                    if d < end:
                        if d < best:
                            best = d
                        break
        self.due = self.clock + best if best <= max_delay else None

    # --------------------------------------------------------------- instants
    def begin_instant(self) -> None:
        """Remember the state before an instant (for ``previous_index``)."""
        self.prev_values = list(self.values)
        self.prev_stages = list(self.stages)
        self.last_reported = [None] * len(self.cm.lifecycles)

    def rebase(self, delta: int) -> None:
        """Move every decayed sum ``delta`` (> 0) ms later and the clock with them."""
        cm = self.cm
        self.values = [
            v * 2.0 ** (-delta / h) for v, h in zip(self.values, cm.half_life_ms, strict=True)
        ]
        if self.trend:
            assert cm.trend is not None
            fast, slow = cm.trend
            f, s = self.trend
            self.trend = [f * 2.0 ** (-delta / fast), s * 2.0 ** (-delta / slow)]
        for c, windows in enumerate(self.caps):
            h = cm.half_life_ms[cm.caps[c].component]
            self.caps[c] = [
                (k, n, s * 2.0 ** (-delta / h)) if n else (k, n, s) for k, n, s in windows
            ]
        self.clock += delta
        self.levels = {}

    def stage_index(self, lc: CompiledLifecycle, stage: int, before: bool) -> float:
        """The index a stage reports, on the current or the pre-instant values."""
        stages = self.prev_stages if before else self.stages
        weights = self.weights_of(lc.stages[stage].index, stages)
        if before:
            return index_of(self.prev_values, self.cm.weights[weights], self.cm)
        return self.level(weights)

    def emit(self, lc: CompiledLifecycle, to: int, change: _Change) -> None:
        """Move ``lc`` to stage ``to`` at the clock and record the transition."""
        position = lc.position
        from_stage = None if change.from_null else lc.stages[self.stages[position]].name
        previous = self.last_reported[position]
        if change.from_null:
            previous = 0.0
        elif previous is None:
            previous = self.stage_index(lc, self.stages[position], before=True)
        self.stages[position] = to
        self.entered[position] = self.clock
        stage = lc.stages[to]
        weights = self.weights_of(stage.index, self.stages)
        index = self.level(weights)
        self.last_reported[position] = index
        cm = self.cm
        parts: list[str | int | None] = [
            self.tenant, self.contact_id, cm.version, self.clock, from_stage, stage.name,
            change.reason, change.cause,
        ]  # fmt: skip
        if lc.id_prefix:
            parts.append(lc.id_prefix)
        self.transitions.append(
            Transition.trusted(
                transition_id=transition_id(parts),
                tenant=self.tenant,
                contact_id=self.contact_id,
                from_stage=from_stage,
                to_stage=stage.name,
                half=cm.index_names[weights],
                reason=change.reason,
                index=index,
                previous_index=previous,
                components=component_scores(self.values, cm),
                cause_event_id=change.cause,
                occurred_at=ms_to_rfc3339(self.clock),
                model_version=cm.version,
                lifecycle=lc.name,
                rule_id=change.rule_id,
            )
        )

    def run_chain(self, lc: CompiledLifecycle, event_type: str | None, context: _Instant) -> None:
        """Follow the first matching edge out of ``lc``'s stage until none holds."""
        position = lc.position
        for _ in range(len(lc.stages) * 4 + 8):
            for edge in lc.stages[self.stages[position]].edges:
                if self.holds(edge.cond, position, event_type):
                    if context.reason is not None:
                        reason = context.reason
                    elif event_type is None:
                        reason = edge.time_reason
                    else:
                        reason = edge.event_reason
                    rule_id = None if context.reason == "model_change" else edge.rule_id
                    self.emit(lc, edge.to, _Change(reason, context.cause, rule_id))
                    break
            else:
                return
        raise RuntimeError(f"lifecycle {lc.name!r}: a same-instant chain did not end")

    def run_instant(self, context: _Instant) -> None:
        """Every lifecycle at the clock: ``initial`` entries on a first event, then chains."""
        for lc in self.cm.lifecycles:
            if context.first_event:
                for entry in lc.initial:
                    if self.holds(entry.cond, lc.position, context.event_type):
                        self.emit(
                            lc, entry.stage, _Change("first_seen", context.cause, entry.rule_id)
                        )
                        break
            self.run_chain(lc, context.event_type, context)

    def fire_due(self) -> None:
        """The time-driven change at ``due``: rebase to it, then run the instant."""
        assert self.due is not None
        assert self.due > self.clock
        self.begin_instant()
        self.rebase(self.due - self.clock)
        self.run_instant(_Instant(None, None, False, None))
        self.solve_due()

    # ------------------------------------------------------------------ events
    def fold(self, rule: CompiledRule, ts: int) -> None:
        """Add an event of ``rule`` at ``ts`` to the sums, caps, trend, markers and counts."""
        cm = self.cm
        comp = rule.component
        points = rule.points
        late = ts < self.clock
        if not late and ts > self.clock:
            self.rebase(ts - self.clock)
        age = self.clock - ts
        if rule.cap >= 0:
            self.fold_cap(rule, ts, age)
        elif late:
            self.values[comp] += late_contribution(points, age, cm.half_life_ms[comp])
        else:
            self.values[comp] += points
        self.levels = {}
        if points > 0.0 and self.trend:
            assert cm.trend is not None
            fast, slow = cm.trend
            if late:
                self.trend[0] += late_contribution(points, age, fast)
                self.trend[1] += late_contribution(points, age, slow)
            else:
                self.trend[0] += points
                self.trend[1] += points
        for m in range(len(cm.markers)):
            bit = 1 << m
            at = self.marker_ms[m]
            if rule.clears & bit and (at is None or ts >= at):
                self.markers &= ~bit
                self.marker_ms[m] = ts
            elif rule.sets & bit and (at is None or ts > at):
                self.markers |= bit
                self.marker_ms[m] = ts
        self.first = min(self.first, ts)
        if ts > self.last:
            shift = ts // MS_PER_DAY - self.last // MS_PER_DAY
            self.days = (self.days << shift) & ACTIVITY_MASK if shift < ACTIVITY_DAYS else 0
            self.last = ts
        if points > 0.0:
            bit = self.last // MS_PER_DAY - ts // MS_PER_DAY
            if bit < ACTIVITY_DAYS:
                self.days |= 1 << bit
        self.counted += 1

    def fold_cap(self, rule: CompiledRule, ts: int, age: int) -> bool:
        """A capped rule's event (docs/models.md#caps); False if its window is too old."""
        cap = self.cm.caps[rule.cap]
        windows = self.caps[rule.cap]
        window = ts // cap.per_ms
        slot = -1
        for i, (k, n, _) in enumerate(windows):
            if n and k == window:
                slot = i
        if slot < 0:
            empty = [i for i, (_, n, _) in enumerate(windows) if not n]
            if empty:
                slot = empty[0]
            else:
                slot = 0 if windows[0][0] < windows[1][0] else 1
                if window < windows[slot][0]:
                    return False  # older than the two latest windows: not counted
            windows[slot] = EMPTY_WINDOW
        _, n, s = windows[slot]
        h = self.cm.half_life_ms[cap.component]
        unit = 2.0 ** (-age / h) if age else 1.0
        points = rule.points
        if n + 1 <= cap.count:
            self.values[cap.component] += late_contribution(points, age, h) if age else points
        else:
            old = points * (cap.count / n) * s if n > cap.count else points * s
            new = points * (cap.count / (n + 1)) * (s + unit)
            self.values[cap.component] += new - old
        windows[slot] = (window, n + 1, s + unit)
        return True


class _Change:
    """What a transition is about: reason, cause event id, rule id."""

    __slots__ = ("cause", "from_null", "reason", "rule_id")

    def __init__(
        self, reason: str, cause: str | None, rule_id: str | None, *, from_null: bool = False
    ) -> None:
        self.reason = reason
        self.cause = cause
        self.rule_id = rule_id
        self.from_null = from_null or reason == "first_seen"


class _Instant:
    """How one instant is evaluated: the event (if any), and a reason forced on every change."""

    __slots__ = ("cause", "event_type", "first_event", "reason")

    def __init__(
        self, event_type: str | None, cause: str | None, first_event: bool, reason: str | None
    ) -> None:
        self.event_type = event_type
        self.cause = cause
        self.first_event = first_event
        self.reason = reason


def _intersect(a: Intervals, b: Intervals) -> Intervals:
    out: Intervals = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _union(sets: list[Intervals]) -> Intervals:
    items = sorted(iv for s in sets for iv in s)
    out: Intervals = []
    for start, end in items:
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _new_state(fields: EventFields, cm: CompiledModel) -> ContactState:
    """The state before a contact's first event: nothing yet, at the event's time."""
    ts = fields.timestamp_ms
    n_lifecycles = len(cm.lifecycles)
    return ContactState(
        fields.tenant, fields.contact_id, ts, (0.0,) * len(cm.names), ts, ts, 0, 0, None,
        cm.layout, tuple(lc.stages[0].stage_id for lc in cm.lifecycles), (ts,) * n_lifecycles,
        0, (None,) * len(cm.markers), (0.0, 0.0) if cm.trend else (),
        tuple((EMPTY_WINDOW, EMPTY_WINDOW) for _ in cm.caps),
    )  # fmt: skip


def step(
    state: ContactState | None, event: EventFields, model: CompiledModel, *, solve_due: bool = True
) -> tuple[ContactState, list[Transition]]:
    """Fold one event into a contact's state; returns the new state and its transitions.

    With ``solve_due=False`` the new state's ``due_ms`` is left None: the caller must use
    :func:`possibly_due_by` and :func:`with_due` before the contact's next event or wake-up
    (the replay does, to solve due times only when they matter).

    Duplicates are the caller's to drop first (:func:`engagement_index.core.dedupe.admit`).
    A state computed under another model is migrated first (:func:`migrate`). An unknown
    event type raises ``EventRejected(unknown_type)``.
    """
    rule = model.rules.get(event.type)
    if rule is None:
        raise EventRejected(
            FailureType.UNKNOWN_TYPE,
            f"type: {event.type!r} is not scored by model {model.version!r}",
        )
    ts = event.timestamp_ms
    transitions: list[Transition] = []
    first_event = state is None
    if state is None:
        work = _Work(_new_state(event, model), model)
    else:
        if state.tenant != event.tenant or state.contact_id != event.contact_id:
            raise ValueError("the event belongs to another contact than the state")
        if state.layout is not model.layout and state.layout != model.layout:
            state, transitions = migrate(state, model)
        work = _Work(state, model)
        work.transitions = transitions
        while work.due is not None and ts >= work.due:
            work.fire_due()
    work.begin_instant()
    work.fold(rule, ts)
    work.run_instant(_Instant(event.type, event.event_id, first_event, None))
    if solve_due:
        work.solve_due()
    else:
        work.due = None
    return work.state(), work.transitions


def possibly_due_by(state: ContactState, at_ms: int, model: CompiledModel) -> bool:
    """False if ``state`` (of ``model``) surely has no time-driven change in ``(clock, at_ms]``.

    Cheap (one index evaluation per atom instead of solving crossing times); exact in the
    sense that a False is always right.
    """
    if at_ms <= state.clock_ms:
        return False
    work = _Work(state, model)
    d = at_ms - state.clock_ms
    for lc in model.lifecycles:
        for edge in lc.stages[work.stages[lc.position]].edges:
            if work.may_hold_by(edge.cond, lc.position, d):
                return True
    return False


def with_due(state: ContactState, model: CompiledModel) -> ContactState:
    """``state`` (of ``model``) with its due time solved, as :func:`step` leaves it."""
    work = _Work(state, model)
    work.solve_due()
    if work.due == state.due_ms:
        return state
    return work.state()


def advance(
    state: ContactState, until_ms: int, model: CompiledModel
) -> tuple[ContactState, list[Transition]]:
    """Emit the time-driven changes due at or before ``until_ms``, each at its own time.

    A state computed under another model is migrated first (:func:`migrate`): its due time is
    solved anew, so a wake-up whose change no longer holds under the model emits nothing
    (beyond a ``model_change``, if the new model moves a stage).
    """
    transitions: list[Transition] = []
    if state.layout is not model.layout and state.layout != model.layout:
        state, transitions = migrate(state, model)
    if state.due_ms is None or state.due_ms > until_ms:
        return state, transitions
    work = _Work(state, model)
    work.transitions = transitions
    while work.due is not None and work.due <= until_ms:
        work.fire_due()
    return work.state(), work.transitions


def migrate(state: ContactState, cm: CompiledModel) -> tuple[ContactState, list[Transition]]:
    """``state`` (computed under another model) moved to ``cm``, and its ``model_change``s.

    Matched by name: components (a new one starts at 0, a removed one is dropped), markers,
    capped rules, and stages (a lifecycle whose stage the state does not hold enters its
    ``initial`` stage); a state written before format 2 maps through the model's ``legacy``
    key. Then the lifecycles run at the state's clock with no event: every change has reason
    ``model_change``. The due time is solved anew under ``cm``. A version 1 state (no layout)
    keeps its values by position.
    """
    old = state.layout
    ids = old.component_ids
    names = cm.layout.component_ids
    assert names is not None
    if ids is None:
        values = [*state.values[: len(names)], *([0.0] * (len(names) - len(state.values)))]
    else:
        by_id = dict(zip(ids, state.values, strict=True))
        values = [by_id.get(i, 0.0) for i in names]
    clock = state.clock_ms
    markers = 0
    marker_ms: list[int | None] = [None] * len(cm.markers)
    old_markers = dict(zip(old.marker_ids, range(len(old.marker_ids)), strict=True))
    for m, marker_id in enumerate(cm.layout.marker_ids):
        o = old_markers.get(marker_id)
        if o is not None and o < len(state.marker_ms):
            marker_ms[m] = state.marker_ms[o]
            if state.markers >> o & 1:
                markers |= 1 << m
    legacy_stage = state.stages[0] if len(state.stages) == 1 and state.stages[0] < 4 else None
    if legacy_stage is not None and cm.legacy is not None and legacy_stage >= 2:
        bit = cm.legacy[1]
        if bit:
            markers |= bit
            marker_ms[bit.bit_length() - 1] = clock
    old_caps = dict(zip(old.cap_ids, state.caps, strict=False))
    caps = tuple(old_caps.get(i, (EMPTY_WINDOW, EMPTY_WINDOW)) for i in cm.layout.cap_ids)
    trend: tuple[float, ...] = ()
    if cm.trend is not None:
        trend = state.trend if len(state.trend) == 2 else (0.0, 0.0)
    stages: list[int] = []
    entered: list[int] = []
    missing: list[int] = []
    for lc in cm.lifecycles:
        found = None
        for s, at in zip(state.stages, state.entered_ms, strict=True):
            where = cm.stage_by_id.get(s)
            if where is not None and where[0] == lc.position:
                found = (s, at)
        if found is None and lc.position == 0 and legacy_stage is not None and cm.legacy:
            found = (lc.stages[cm.legacy[0][legacy_stage]].stage_id, clock)
        if found is None:
            missing.append(lc.position)
            found = (lc.stages[0].stage_id, clock)
        stages.append(found[0])
        entered.append(found[1])
    moved = ContactState(
        state.tenant, state.contact_id, clock, tuple(values), state.first_seen_ms,
        state.last_event_ms, state.events_counted, state.active_days, None, cm.layout,
        tuple(stages), tuple(entered), markers, tuple(marker_ms), trend, caps,
    )  # fmt: skip
    work = _Work(moved, cm)
    work.begin_instant()
    for position in missing:  # enter the initial stage, from null
        lc = cm.lifecycles[position]
        for entry in lc.initial:
            if work.holds(entry.cond, position, None):
                work.emit(lc, entry.stage, _Change("model_change", None, None, from_null=True))
                break
    context = _Instant(None, None, False, "model_change")
    for lc in cm.lifecycles:
        work.run_chain(lc, None, context)
    work.solve_due()
    return work.state(), work.transitions


def evaluate(state: ContactState, at_ms: int, model: CompiledModel) -> ContactSnapshot:
    """The contact as of ``at_ms`` (not before its clock), time-driven changes applied; pure."""
    cm = model
    if state.layout is not cm.layout and state.layout != cm.layout:
        state, _ = migrate(state, cm)
    if state.due_ms is not None and state.due_ms <= at_ms:
        state, _ = advance(state, at_ms, cm)
    at = max(at_ms, state.clock_ms)
    work = _Work(state, cm)
    if at > work.clock:
        work.rebase(at - work.clock)
    first = cm.lifecycles[0]
    weights = work.weights_of(first.stages[work.stages[0]].index, work.stages)
    lifecycles = work.stage_statuses(at)
    markers = {}
    for m, name in enumerate(cm.markers):
        marker_at = work.marker_ms[m]
        if work.markers >> m & 1 and marker_at is not None:
            markers[name] = ms_to_rfc3339(marker_at)
    return ContactSnapshot.trusted(
        tenant=state.tenant,
        contact_id=state.contact_id,
        stage=first.stages[work.stages[0]].name,
        half=cm.index_names[weights],
        index=work.level(weights),
        components=component_scores(work.values, cm),
        customer="customer" in markers,
        first_seen_at=ms_to_rfc3339(state.first_seen_ms),
        last_event_at=ms_to_rfc3339(state.last_event_ms),
        events_counted=state.events_counted,
        active_days_7d=active_days_between(state, at, 7),
        active_days_30d=active_days_between(state, at, 30),
        active_days_90d=active_days_between(state, at, 90),
        model_version=cm.version,
        evaluated_at=ms_to_rfc3339(at),
        lifecycles=lifecycles,
        markers=markers,
    )


def stage_names(state: ContactState, model: CompiledModel) -> dict[str, str]:
    """The contact's current stage in each lifecycle, by lifecycle name (no migration)."""
    out = {}
    for stage in state.stages:
        where = model.stage_by_id.get(stage)
        if where is not None:
            lc = model.lifecycles[where[0]]
            out[lc.name] = lc.stages[where[1]].name
    return out


def contact_index(state: ContactState, model: CompiledModel) -> float:
    """The contact's index at its clock: that of its stage in the first lifecycle.

    ``state`` must be of ``model`` (its layout); what :func:`evaluate` reports at the clock.
    """
    first = model.lifecycles[0]
    stage = first.stages[model.stage_by_id[state.stages[0]][1]]
    return index_of(state.values, model.weights[stage.index], model)
