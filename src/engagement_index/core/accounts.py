"""Accounts: the members' indices aggregated, active users, licences, and account lifecycles.

Pure: time is an argument, no I/O. The account section of a model file (docs/models.md#accounts)
compiles with the contact lifecycles' compiler (conditions, reasons, reachability, same-instant
cycle checks) into a :class:`~engagement_index.core.compiled.CompiledModel` whose level sources
are the account levels (its declared indices, then ``utilisation``) instead of weightings; the
lifecycle engine of ``core/lifecycle.py`` runs it (instant chains, interval algebra, due
times), with the levels read from the members (:class:`_AccountWork`).

The account at time ``t`` is a function of its members' states at ``t`` (each member's stored
contact state, with its own time-driven changes up to ``t`` applied), its licences and its
stages. Between two member updates every member index only falls (docs/models.md#evaluation)
as long as no member has a time-driven change, so every account level falls too (a mean of
the top k, a max, a share above a level, active users); the account's due time is the earliest
of the first millisecond at which an edge holds (each crossing found by an integer search on
the level as computed here) and the next member's own due time (where a member can switch
weighting, so the account is evaluated again there).

Entry points: :func:`apply` (a member update, a departure or licences), :func:`advance_account`
(the time-driven changes up to a time), :func:`evaluate_account` (the account as of a time).
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic import Field

from engagement_index.core.compiled import (
    CONTACT,
    CompiledLifecycle,
    CompiledModel,
    StateLayout,
    _compile_lifecycle,
    _Names,
)
from engagement_index.core.decay import _bracket, crossing_delay_ms, index_after, max_delay_for
from engagement_index.core.events import ContactKey, EventFields, FailureType, parse_event
from engagement_index.core.lifecycle import _Change, _Instant, _Work, advance, migrate
from engagement_index.core.model import UTILISATION_INDEX, duration_ms
from engagement_index.core.records import StageStatus, TransitionReason, _Record
from engagement_index.core.state import ContactState, decode_state, encode_state
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.errors import EventRejected, ModelError, StateDecodeError

if TYPE_CHECKING:
    from engagement_index.core.model import ScoringModel

#: the event type an account instant of an update is evaluated with: no condition names it
#: (account lifecycles have no ``event`` conditions), so reasons are those of events
UPDATE_EVENT = "account.update"
#: event types of the ``account`` channel: not scored on the contact (docs/models.md#accounts)
GROUP_TYPE = "account.group"
LICENCES_TYPE = "account.licences"

TOP_K, MAX, SHARE = range(3)
#: a contact's account and since when (the timestamp that made it a member), or None
Membership = tuple[str, int] | None
JOIN, LEAVE, LICENCES = range(1, 4)


def is_account_type(event_type: str) -> bool:
    """Whether an event type belongs to the account channel (``account.*``)."""
    return event_type.startswith("account.")


@dataclass(frozen=True, slots=True)
class CompiledAccounts:
    """The compiled ``accounts`` section of a model."""

    #: the contact model (members' states are of it)
    contacts: CompiledModel
    #: the account lifecycles; its ``index_names`` are the account levels
    lifecycles: CompiledModel
    #: per declared account index: (kind, k, level)
    aggregates: tuple[tuple[int, int, float], ...]
    active_ms: int
    licences_trait: str
    top_members: int

    @property
    def level_names(self) -> tuple[str, ...]:
        """The account levels: the declared indices, then ``utilisation``."""
        return self.lifecycles.index_names


def compile_accounts(model: ScoringModel) -> CompiledAccounts:
    """The compiled ``accounts`` section of ``model`` (``ModelError`` naming the field)."""
    spec = model.accounts
    assert spec is not None
    levels = (*spec.indices, UTILISATION_INDEX)
    names = _Names.__new__(_Names)
    names.components = ()
    names.index_names = levels
    names.index_pos = {n: i for i, n in enumerate(levels)}
    names.component_pos = {}
    names.markers = ()
    names.marker_pos = {}
    names.event_types = frozenset()
    lifecycles: list[CompiledLifecycle] = []
    for position, (name, lifecycle) in enumerate(spec.lifecycles.items()):
        try:
            lifecycles.append(_compile_lifecycle(name, position, lifecycle, names))
        except ModelError as exc:
            raise ModelError(f"accounts.{exc}") from None
    stage_by_id: dict[int, tuple[int, int]] = {}
    for lc in lifecycles:
        for s, stage in enumerate(lc.stages):
            stage_by_id[stage.stage_id] = (lc.position, s)
    kinds = {"top_k_mean": TOP_K, "max": MAX, "share_at_least": SHARE}
    aggregates = tuple(
        (kinds[index.aggregate], index.k or 0, float(index.level or 0.0))
        for index in spec.indices.values()
    )
    contacts = model.compiled
    compiled = CompiledModel(
        version=contacts.version,
        layout=StateLayout(fingerprint=0, component_ids=(), lifecycles=len(lifecycles)),
        names=(),
        half_life_ms=(),
        saturation=(),
        rules={},
        weights=tuple(() for _ in levels),
        index_names=levels,
        markers=(),
        caps=(),
        trend=None,
        lifecycles=tuple(lifecycles),
        stage_by_id=stage_by_id,
        legacy=None,
    )
    return CompiledAccounts(
        contacts=contacts,
        lifecycles=compiled,
        aggregates=aggregates,
        active_ms=duration_ms(spec.active_within),
        licences_trait=spec.licences_trait,
        top_members=spec.top_members,
    )


# ------------------------------------------------------------------------------- records


class AccountTransition(_Record):
    """An account moved from one stage of an account lifecycle to another."""

    transition_id: str = Field(description="deterministic: the same input gives the same id")
    tenant: str
    account_id: str
    from_stage: str | None = Field(description="null on the account's first update")
    to_stage: str
    half: str = Field(description="the account level of to_stage, which index reports")
    reason: TransitionReason
    index: float = Field(description="that level at occurred_at, after the change")
    previous_index: float = Field(description="the level last reported before (0: first_seen)")
    components: dict[str, float] = Field(description="account level name -> value")
    cause_event_id: str | None = Field(description="the member event behind it; null for time")
    occurred_at: str = Field(description="RFC 3339, UTC, milliseconds")
    model_version: str
    lifecycle: str
    rule_id: str | None
    members: int = Field(ge=0)
    active_users: int = Field(ge=0)
    licences: int | None


class AccountSnapshot(_Record):
    """An account evaluated at ``evaluated_at`` (the query API's answer)."""

    tenant: str
    account_id: str
    members: int = Field(ge=0)
    active_users: int = Field(ge=0)
    licences: int | None
    utilisation: float | None = Field(description="active users / licences; null: no licences")
    index: float = Field(description="the level of the stage in the first account lifecycle")
    half: str = Field(description="which level that is")
    indices: dict[str, float] = Field(description="account level name -> value")
    lifecycles: dict[str, StageStatus]
    top_members: list[dict[str, Any]] = Field(description="contact_id and index, highest first")
    first_seen_at: str
    evaluated_at: str
    model_version: str


# --------------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Member:
    """A member: its contact id, the ``events_counted`` of the state it sent (the version of
    the update: a re-delivered or older update is ignored) and that state (None: it joined by
    a group call before its first event)."""

    contact_id: str
    version: int
    state: ContactState | None


@dataclass(frozen=True, slots=True)
class AccountState:
    """Everything the core knows about one account."""

    tenant: str
    account_id: str
    clock_ms: int
    first_seen_ms: int
    members: tuple[Member, ...]  # by contact id
    licences: int | None
    licences_ms: int | None
    due_ms: int | None
    stages: tuple[int, ...]
    entered_ms: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """What reaches an account: a member's state (``JOIN``: after each of its events, or its
    group call), a departure (``LEAVE``: it moved to another account, or was erased) or
    licences (``LICENCES``). ``at_ms``: the time of the member's event / the call."""

    kind: int
    tenant: str
    account_id: str
    at_ms: int
    cause: str | None = None
    contact_id: str = ""
    version: int = 0
    state: ContactState | None = None
    licences: int | None = None

    @property
    def key(self) -> bytes:
        """The account's key (the canonical key format, with the account id)."""
        return ContactKey(self.tenant, self.account_id).encode()


class _View:
    """A member's state at the account's clock, as the levels need it."""

    __slots__ = ("clock", "last", "values", "weights")

    def __init__(
        self, clock: int, last: int, values: Sequence[float], weights: Sequence[float]
    ) -> None:
        self.clock = clock
        self.last = last
        self.values = values
        self.weights = weights


class _Book:
    """The members as the levels see them at one clock: their views and counts."""

    __slots__ = ("licences", "members", "views")

    def __init__(self, views: list[_View], members: int, licences: int | None) -> None:
        self.views = views
        self.members = members
        self.licences = licences


def member_indices(book: _Book, at_ms: int, cm: CompiledModel) -> list[float]:
    """The index of every member with a state at ``at_ms`` (members without one are 0)."""
    return [index_after(v.values, at_ms - v.clock, v.weights, cm) for v in book.views]


def active_users(book: _Book, at_ms: int, active_ms: int) -> int:
    """Members whose latest event is less than ``active_ms`` before ``at_ms``."""
    return sum(1 for v in book.views if at_ms - v.last < active_ms)


def level_of(acc: CompiledAccounts, book: _Book, source: int, at_ms: int) -> float:
    """Account level ``source`` (a declared index, or ``utilisation`` last) at ``at_ms``."""
    if source == len(acc.aggregates):
        licences = book.licences
        if not licences:
            return 100.0  # no licences known: nothing is under-used
        return 100.0 * active_users(book, at_ms, acc.active_ms) / licences
    n = book.members
    if n == 0:
        return 0.0
    kind, k, level = acc.aggregates[source]
    indices = member_indices(book, at_ms, acc.contacts)
    if kind == MAX:
        return max(indices, default=0.0)
    if kind == SHARE:
        without_state = n - len(indices) if level <= 0.0 else 0  # they count 0
        return 100.0 * (sum(1 for x in indices if x >= level) + without_state) / n
    top = heapq.nlargest(k, indices)
    return sum(top) / min(k, n)


def _member_crossing(view: _View, level: float, cm: CompiledModel) -> int | None:
    """The first ms at which the member's index is below ``level`` (None: never)."""
    d = crossing_delay_ms(view.values, view.weights, cm, level, max_delay_for(view.clock))
    return None if d is None else view.clock + d


def _step_crossing(
    acc: CompiledAccounts, book: _Book, source: int, level: float, clock: int
) -> int | None:
    """The first ms after ``clock`` at which ``max``, ``share_at_least`` or ``utilisation``
    (as :func:`level_of` computes it) is below ``level`` while the members only decay, from
    the members' own crossing times (None: never). Each of these levels changes only at them:
    ``max`` is below once every member is; a share counts the members still at its level;
    utilisation the members still active (active until ``last event + active_within``)."""
    cm = acc.contacts
    if source == len(acc.aggregates):
        licences = book.licences
        if not licences:
            return None  # 100 for ever
        ends = sorted(v.last + acc.active_ms for v in book.views if v.last + acc.active_ms > clock)
        for j, end in enumerate(ends):
            if j + 1 < len(ends) and ends[j + 1] == end:
                continue  # the members who stop at the same time stop together
            if 100.0 * (len(ends) - j - 1) / licences < level:
                return end
        return None
    kind, _, share_level = acc.aggregates[source]
    n = book.members
    if kind == MAX:
        latest = clock
        for view in book.views:
            at = _member_crossing(view, level, cm)
            if at is None:
                return None
            latest = max(latest, at)
        return latest
    without_state = n - len(book.views) if share_level <= 0.0 else 0
    crossings = []
    for view in book.views:
        at = _member_crossing(view, share_level, cm)
        if at is None or at > clock:
            crossings.append(at)
    count = len(crossings) + without_state
    finite = sorted(at for at in crossings if at is not None)
    for j, at in enumerate(finite):
        if j + 1 < len(finite) and finite[j + 1] == at:
            continue
        if 100.0 * (count - j - 1) / n < level:
            return at
    return None


def _views_at(
    members: dict[str, Member], clock: int, cm: CompiledModel
) -> tuple[list[_View], int | None]:
    """Every member's state moved to ``clock`` (its time-driven changes up to it applied, in
    ``members``), their views, and the earliest member due time after ``clock``."""
    views: list[_View] = []
    next_due: int | None = None
    for contact_id, member in members.items():
        state = member.state
        if state is None:
            continue
        moved = state
        if moved.layout is not cm.layout and moved.layout != cm.layout:
            moved, _ = migrate(moved, cm)
        if moved.due_ms is not None and moved.due_ms <= clock:
            moved, _ = advance(moved, clock, cm)
        if moved is not state:
            members[contact_id] = replace(member, state=moved)
        first = cm.lifecycles[0]
        weights = cm.weights[first.stages[cm.stage_by_id[moved.stages[0]][1]].index]
        views.append(_View(moved.clock_ms, moved.last_event_ms, moved.values, weights))
        due = moved.due_ms
        if due is not None and (next_due is None or due < next_due):
            next_due = due
    return views, next_due


class _AccountWork(_Work):
    """The lifecycle engine's working state for an account: stages and clock as for a contact,
    levels read from the members (:func:`level_of`) instead of decayed sums."""

    __slots__ = ("acc", "book", "licences", "licences_ms", "member_due", "members", "out", "prev")

    def __init__(self, state: AccountState, acc: CompiledAccounts) -> None:
        # the fields of a contact's work that the engine reads, set for an account
        cm = acc.lifecycles
        self.cm = cm
        self.acc = acc
        self.tenant = state.tenant
        self.contact_id = state.account_id
        self.clock = state.clock_ms
        self.values = []
        self.first = state.first_seen_ms
        self.last = state.clock_ms
        self.counted = 0
        self.days = 0
        self.due = state.due_ms
        by_id = cm.stage_by_id
        self.stages = [by_id[s][1] for s in state.stages]
        self.entered = list(state.entered_ms)
        self.markers = 0
        self.marker_ms = []
        self.trend = []
        self.caps = []
        self.transitions = []
        self.last_reported = [None] * len(cm.lifecycles)
        self.levels = {}
        self.prev_values = []
        self.prev_stages = self.stages
        self.members = {m.contact_id: m for m in state.members}
        self.licences = state.licences
        self.licences_ms = state.licences_ms
        self.out: list[AccountTransition] = []
        self.member_due: int | None = None
        self.book = _Book([], 0, None)
        self.refresh()
        self.prev = (self.book, self.clock)

    def refresh(self) -> None:
        """Recompute the members' views at the clock (after a change, or a member's due)."""
        views, self.member_due = _views_at(self.members, self.clock, self.acc.contacts)
        self.book = _Book(views, len(self.members), self.licences)
        self.levels = {}

    def account_state(self) -> AccountState:
        cm = self.cm
        return AccountState(
            tenant=self.tenant,
            account_id=self.contact_id,
            clock_ms=self.clock,
            first_seen_ms=self.first,
            members=tuple(self.members[c] for c in sorted(self.members)),
            licences=self.licences,
            licences_ms=self.licences_ms,
            due_ms=self.due,
            stages=tuple(
                lc.stages[s].stage_id for lc, s in zip(cm.lifecycles, self.stages, strict=True)
            ),
            entered_ms=tuple(self.entered),
        )

    # the engine's hooks, for account levels
    def level(self, source: int) -> float:
        if source == CONTACT:
            source = self.weights_of(CONTACT, self.stages)
        cached = self.levels.get(source)
        if cached is None:
            cached = self.levels[source] = level_of(self.acc, self.book, source, self.clock)
        return cached

    def crossing(self, source: int, level: float) -> int | None:
        """First ms offset at which the level is below ``level``, before the next member's
        due time (after it the members are evaluated again); None: not before then."""
        if source == CONTACT:
            source = self.weights_of(CONTACT, self.stages)
        limit = max_delay_for(self.clock)
        if self.member_due is not None:
            limit = min(limit, self.member_due - self.clock - 1)
        if limit < 1:
            return None
        acc, book, clock = self.acc, self.book, self.clock
        if source == len(acc.aggregates) or acc.aggregates[source][0] != TOP_K:
            at = _step_crossing(acc, book, source, level, clock)
            if at is None or at - clock > limit:
                return None
            return max(at - clock, 1)

        def below(d: int) -> bool:
            return level_of(acc, book, source, clock + d) < level

        return _bracket(below, 1, limit)

    def solve_due(self) -> None:
        super().solve_due()
        member_due = self.member_due
        if member_due is not None and member_due > self.clock:
            self.due = member_due if self.due is None else min(self.due, member_due)

    def begin_instant(self) -> None:
        self.prev = (self.book, self.clock)
        self.prev_stages = list(self.stages)
        self.last_reported = [None] * len(self.cm.lifecycles)

    def rebase(self, delta: int) -> None:
        self.clock += delta
        self.levels = {}
        if self.member_due is not None and self.clock >= self.member_due:
            self.refresh()

    def stage_index(self, lc: CompiledLifecycle, stage: int, before: bool) -> float:
        stages = self.prev_stages if before else self.stages
        source = self.weights_of(lc.stages[stage].index, stages)
        if before:
            book, clock = self.prev
            return level_of(self.acc, book, source, clock)
        return self.level(source)

    def emit(self, lc: CompiledLifecycle, to: int, change: _Change) -> None:
        super().emit(lc, to, change)
        t = self.transitions.pop()
        self.out.append(
            AccountTransition.trusted(
                transition_id=t.transition_id,
                tenant=t.tenant,
                account_id=self.contact_id,
                from_stage=t.from_stage,
                to_stage=t.to_stage,
                half=t.half,
                reason=t.reason,
                index=t.index,
                previous_index=t.previous_index,
                components=self.all_levels(),
                cause_event_id=t.cause_event_id,
                occurred_at=t.occurred_at,
                model_version=t.model_version,
                lifecycle=t.lifecycle,
                rule_id=t.rule_id,
                members=self.book.members,
                active_users=active_users(self.book, self.clock, self.acc.active_ms),
                licences=self.licences,
            )
        )

    def all_levels(self) -> dict[str, float]:
        return {name: self.level(i) for i, name in enumerate(self.acc.level_names)}

    def change(self, update: AccountUpdate) -> None:
        """Apply ``update`` at the clock."""
        if update.kind == LICENCES:
            self.licences = update.licences
            self.licences_ms = update.at_ms
        elif update.kind == LEAVE:
            self.members.pop(update.contact_id, None)
        else:
            self.members[update.contact_id] = Member(
                update.contact_id, update.version, update.state
            )
        self.refresh()


def _changes_nothing(state: AccountState, update: AccountUpdate) -> bool:
    """An update that is already applied, or older than what it would replace."""
    if update.kind == LICENCES:
        at = state.licences_ms
        return at is not None and (
            update.at_ms < at or (update.at_ms == at and update.licences == state.licences)
        )
    member = next((m for m in state.members if m.contact_id == update.contact_id), None)
    if update.kind == LEAVE:
        return member is None
    return (
        member is not None
        and member.version >= update.version
        and (update.state is None or member.state is not None)
    )


def _new_account(update: AccountUpdate, acc: CompiledAccounts) -> AccountState:
    lifecycles = acc.lifecycles.lifecycles
    at = update.at_ms
    return AccountState(
        tenant=update.tenant,
        account_id=update.account_id,
        clock_ms=at,
        first_seen_ms=at,
        members=(),
        licences=None,
        licences_ms=None,
        due_ms=None,
        stages=tuple(lc.stages[0].stage_id for lc in lifecycles),
        entered_ms=(at,) * len(lifecycles),
    )


def _current(state: AccountState, acc: CompiledAccounts) -> tuple[AccountState, bool]:
    """``state`` with stages of the current account model; True if it had other ones (the
    model changed: its lifecycles are entered again, reason ``model_change``)."""
    by_id = acc.lifecycles.stage_by_id
    lifecycles = acc.lifecycles.lifecycles
    if len(state.stages) == len(lifecycles) and all(
        by_id.get(s, (-1, 0))[0] == i for i, s in enumerate(state.stages)
    ):
        return state, False
    return replace(
        state,
        stages=tuple(lc.stages[0].stage_id for lc in lifecycles),
        entered_ms=(state.clock_ms,) * len(lifecycles),
    ), True


def _start(work: _AccountWork, context: _Instant, reason: str | None = None) -> None:
    """Enter every lifecycle's ``initial`` stage (``first_seen``, or ``reason``)."""
    for lc in work.cm.lifecycles:
        for entry in lc.initial:
            if work.holds(entry.cond, lc.position, context.event_type):
                change = _Change(
                    reason or "first_seen", context.cause, entry.rule_id, from_null=True
                )
                work.emit(lc, entry.stage, change)
                break


def apply(
    state: AccountState | None, update: AccountUpdate, acc: CompiledAccounts
) -> tuple[AccountState | None, list[AccountTransition]]:
    """Apply one update; returns the new state (None: still no account) and its transitions.

    Time-driven changes due at or before the update's time are applied first, each at its own
    time; the update is then applied at ``max(clock, at_ms)`` (an update older than the clock
    counts at the clock, as a late event does) and the lifecycles run there. An update already
    applied (same or older member version, same licences) changes nothing.
    """
    first = state is None
    if state is None:
        if update.kind == LEAVE:
            return None, []
        state = _new_account(update, acc)
    elif _changes_nothing(state, update):
        return state, []
    state, moved = _current(state, acc)
    work = _AccountWork(state, acc)
    if moved:
        _start(work, _Instant(None, None, False, None), "model_change")
        work.solve_due()
    while work.due is not None and update.at_ms >= work.due:
        work.fire_due()
    work.begin_instant()
    if update.at_ms > work.clock:
        work.rebase(update.at_ms - work.clock)
    work.change(update)
    work.run_instant(_Instant(UPDATE_EVENT, update.cause, first, None))
    work.solve_due()
    return work.account_state(), work.out


def advance_account(
    state: AccountState, until_ms: int, acc: CompiledAccounts
) -> tuple[AccountState, list[AccountTransition]]:
    """The time-driven changes due at or before ``until_ms``, each at its own time."""
    state, moved = _current(state, acc)
    if not moved and (state.due_ms is None or state.due_ms > until_ms):
        return state, []
    work = _AccountWork(state, acc)
    if moved:
        _start(work, _Instant(None, None, False, None), "model_change")
        work.solve_due()
    while work.due is not None and work.due <= until_ms:
        work.fire_due()
    return work.account_state(), work.out


def evaluate_account(state: AccountState, at_ms: int, acc: CompiledAccounts) -> AccountSnapshot:
    """The account as of ``at_ms`` (not before its clock), time-driven changes applied."""
    state, _ = advance_account(state, at_ms, acc)
    work = _AccountWork(state, acc)
    at = max(at_ms, work.clock)
    if at > work.clock:
        work.clock = at
        work.refresh()
    cm = work.cm
    lifecycles = work.stage_statuses(at)
    first = cm.lifecycles[0]
    source = work.weights_of(first.stages[work.stages[0]].index, work.stages)
    book = work.book
    active = active_users(book, at, acc.active_ms)
    ranked = sorted(
        (
            (index_after(v.values, at - v.clock, v.weights, acc.contacts), contact_id)
            for contact_id, v in _views_by_member(work)
        ),
        key=lambda item: (-item[0], item[1]),
    )
    return AccountSnapshot.trusted(
        tenant=state.tenant,
        account_id=state.account_id,
        members=book.members,
        active_users=active,
        licences=work.licences,
        utilisation=active / work.licences if work.licences else None,
        index=work.level(source),
        half=cm.index_names[source],
        indices=work.all_levels(),
        lifecycles=lifecycles,
        top_members=[
            {"contact_id": contact_id, "index": index}
            for index, contact_id in ranked[: acc.top_members]
        ],
        first_seen_at=ms_to_rfc3339(state.first_seen_ms),
        evaluated_at=ms_to_rfc3339(at),
        model_version=cm.version,
    )


def _views_by_member(work: _AccountWork) -> list[tuple[str, _View]]:
    """The members with a state, with their views (in the order ``refresh`` made them)."""
    with_state = [c for c, m in work.members.items() if m.state is not None]
    return list(zip(with_state, work.book.views, strict=True))


# ------------------------------------------------------------------------------ encoding

_HEAD = struct.Struct("<BqqqqqH")
_U32 = struct.Struct("<I")
_STAGE = struct.Struct("<Iq")
_MEMBER = struct.Struct("<IIH")
_NONE = -(1 << 63)
_VERSION = 1


def _opt(value: int | None) -> int:
    return _NONE if value is None else value


def _unopt(value: int) -> int | None:
    return None if value == _NONE else value


def encode_account(state: AccountState) -> bytes:
    """The account table value (docs/streaming.md#state-size)."""
    out = bytearray(
        _HEAD.pack(
            _VERSION,
            state.clock_ms,
            state.first_seen_ms,
            _opt(state.due_ms),
            _opt(state.licences),
            _opt(state.licences_ms),
            len(state.stages),
        )
    )
    for stage, entered in zip(state.stages, state.entered_ms, strict=True):
        out += _STAGE.pack(stage, entered)
    out += _U32.pack(len(state.members))
    for member in state.members:
        contact = member.contact_id.encode("utf-8", "surrogatepass")
        body = encode_state(member.state) if member.state is not None else b""
        out += _MEMBER.pack(len(contact), member.version, len(body))
        out += contact
        out += body
    return bytes(out)


def decode_account(data: bytes, key: ContactKey) -> AccountState:
    """Parse a value of :func:`encode_account`; ``key``: the account's (tenant, account id)."""
    try:
        version, clock, first, due, licences, licences_ms, n = _HEAD.unpack_from(data, 0)
        if version != _VERSION:
            raise StateDecodeError(f"unknown account state version {version}")
        pos = _HEAD.size
        stages = []
        entered = []
        for _ in range(n):
            stage, at = _STAGE.unpack_from(data, pos)
            pos += _STAGE.size
            stages.append(stage)
            entered.append(at)
        (count,) = _U32.unpack_from(data, pos)
        pos += _U32.size
        members = []
        for _ in range(count):
            id_len, member_version, body_len = _MEMBER.unpack_from(data, pos)
            pos += _MEMBER.size
            contact_id = data[pos : pos + id_len].decode("utf-8", "surrogatepass")
            pos += id_len
            body = data[pos : pos + body_len]
            pos += body_len
            member_state = (
                decode_state(body, ContactKey(key.tenant, contact_id)) if body_len else None
            )
            members.append(Member(contact_id, member_version, member_state))
        if pos != len(data):
            raise StateDecodeError("trailing bytes after the account state")
    except (struct.error, UnicodeDecodeError) as exc:
        raise StateDecodeError(f"truncated or corrupt account state: {exc}") from None
    return AccountState(
        tenant=key.tenant,
        account_id=key.contact_id,
        clock_ms=clock,
        first_seen_ms=first,
        members=tuple(members),
        licences=_unopt(licences),
        licences_ms=_unopt(licences_ms),
        due_ms=_unopt(due),
        stages=tuple(stages),
        entered_ms=tuple(entered),
    )


_UPDATE = struct.Struct("<BBqIqHIIHH")


def encode_update(update: AccountUpdate) -> bytes:
    """The value of an account update record (the account-updates topic)."""
    tenant = update.tenant.encode()
    account = update.account_id.encode("utf-8", "surrogatepass")
    contact = update.contact_id.encode("utf-8", "surrogatepass")
    cause = update.cause.encode("utf-8", "surrogatepass") if update.cause is not None else b""
    body = encode_state(update.state) if update.state is not None else b""
    head = _UPDATE.pack(
        _VERSION,
        update.kind,
        update.at_ms,
        update.version,
        _opt(update.licences),
        len(tenant),
        len(account),
        len(contact),
        len(cause) + (1 if update.cause is not None else 0),
        len(body),
    )
    return head + tenant + account + contact + cause + body


def decode_update(data: bytes) -> AccountUpdate:
    """Parse a value of :func:`encode_update` (``StateDecodeError`` if it is not one)."""
    try:
        version, kind, at, member_version, licences, nt, na, nc, ncause, nb = _UPDATE.unpack_from(
            data, 0
        )
        if version != _VERSION or kind not in (JOIN, LEAVE, LICENCES):
            raise StateDecodeError(f"not an account update (version {version}, kind {kind})")
        pos = _UPDATE.size
        parts = []
        for size in (nt, na, nc, max(ncause - 1, 0), nb):
            parts.append(data[pos : pos + size])
            pos += size
        if pos != len(data):
            raise StateDecodeError("an account update of the wrong length")
        tenant = parts[0].decode()
        contact_id = parts[2].decode("utf-8", "surrogatepass")
        state = decode_state(parts[4], ContactKey(tenant, contact_id)) if nb else None
        return AccountUpdate(
            kind=kind,
            tenant=tenant,
            account_id=parts[1].decode("utf-8", "surrogatepass"),
            at_ms=at,
            cause=parts[3].decode("utf-8", "surrogatepass") if ncause else None,
            contact_id=contact_id,
            version=member_version,
            state=state,
            licences=_unopt(licences),
        )
    except (struct.error, UnicodeDecodeError) as exc:
        raise StateDecodeError(f"not an account update: {exc}") from None


# --------------------------------------------------------------------------- membership


def moves_to(
    current: str | None, current_ms: int | None, account_id: str | None, at_ms: int
) -> bool:
    """Whether an event (or group call) at ``at_ms`` naming ``account_id`` makes the contact a
    member of it: the account named by the latest one (by timestamp; at equal timestamps the
    later arrival) wins; an event without an account changes nothing."""
    if account_id is None or account_id == "":
        return False
    return current_ms is None or at_ms >= current_ms


def licences_of(value: object) -> int | None:
    """A licence count from an event property or a group trait (None: not a count)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 <= value < 1 << 62:
        return value
    if isinstance(value, float) and value.is_integer() and 0 <= value < 2.0**62:
        return int(value)
    return None


def account_updates(
    value: bytes | str, state: ContactState | None, account: Membership, acc: CompiledAccounts
) -> tuple[list[AccountUpdate], Membership]:
    """The updates an ``account.*`` event sends and the contact's membership after it.

    ``account.licences``: ``properties.licences`` (a whole number >= 0) on ``account_id``.
    ``account.group``: the contact joins ``account_id`` (by the membership rule), with its
    state if it has one; a ``licences`` trait (``accounts.licences_trait``) sets the licences.
    Raises ``EventRejected`` for an invalid one (the caller dead-letters it).
    """
    event = parse_event(value)
    if not event.account_id:
        raise EventRejected(FailureType.SCHEMA_VIOLATION, f"account_id: required by {event.type}")
    properties: dict[str, Any] = event.properties or {}
    at = event.timestamp_ms
    tenant, account_id = event.tenant, event.account_id
    if event.type == LICENCES_TYPE:
        licences = licences_of(properties.get("licences"))
        if licences is None:
            raise EventRejected(
                FailureType.SCHEMA_VIOLATION,
                "properties.licences: required, a whole number from 0",
            )
        update = AccountUpdate(LICENCES, tenant, account_id, at, event.event_id, licences=licences)
        return [update], account
    if event.type != GROUP_TYPE:
        raise EventRejected(
            FailureType.UNKNOWN_TYPE,
            f"type: {event.type!r}: the account channel has {GROUP_TYPE} and {LICENCES_TYPE}",
        )
    updates: list[AccountUpdate] = []
    current, since = account if account is not None else (None, None)
    if state is not None and moves_to(current, since, event.account_id, at):
        if current is not None and current != event.account_id:
            updates.append(
                AccountUpdate(LEAVE, event.tenant, current, at, event.event_id, event.contact_id)
            )
        account = (event.account_id, at)
    updates.append(
        AccountUpdate(
            JOIN,
            tenant,
            account_id,
            at,
            event.event_id,
            event.contact_id,
            state.events_counted if state is not None else 0,
            state,
        )
    )
    licences = licences_of(properties.get(acc.licences_trait))
    if licences is not None:
        updates.append(
            AccountUpdate(LICENCES, tenant, account_id, at, event.event_id, licences=licences)
        )
    return updates, account


def member_event_updates(
    fields: EventFields, state: ContactState, account: Membership
) -> tuple[Membership, list[AccountUpdate]]:
    """After a member's scored event: its membership, and its state for its account (and a
    departure for the account it left)."""
    updates: list[AccountUpdate] = []
    current, since = account if account is not None else (None, None)
    at = fields.timestamp_ms
    if moves_to(current, since, fields.account_id, at):
        assert fields.account_id is not None
        if current is not None and current != fields.account_id:
            updates.append(
                AccountUpdate(LEAVE, fields.tenant, current, at, fields.event_id, fields.contact_id)
            )
        account = (fields.account_id, at)
    if account is not None:
        updates.append(
            AccountUpdate(
                JOIN,
                fields.tenant,
                account[0],
                at,
                fields.event_id,
                fields.contact_id,
                state.events_counted,
                state,
            )
        )
    return account, updates


def merge_updates(
    context: tuple[str, str, str],
    memberships: tuple[Membership, Membership],
    states: tuple[ContactState | None, ContactState | None],
) -> tuple[Membership, list[AccountUpdate]]:
    """An identity merge (docs/streaming.md#identity-merge) seen by accounts: ``context`` is
    (tenant, survivor id, absorbed id), ``memberships`` and ``states`` the survivor's (its
    merged state) and the absorbed contact's. The absorbed contact leaves its account; the
    survivor belongs to the account of the later membership (by time; the survivor's at equal
    times), as if every event had carried its id, and sends its merged state there."""
    tenant, survivor, absorbed = context
    (kept, taken), (merged, gone) = memberships, states
    updates: list[AccountUpdate] = []
    if taken is not None:
        at = gone.clock_ms if gone is not None else taken[1]
        updates.append(AccountUpdate(LEAVE, tenant, taken[0], at, None, absorbed))
    account = kept
    if taken is not None and (kept is None or taken[1] > kept[1]):
        account = taken
    if merged is None or account is None:
        return account, updates
    if kept is not None and kept[0] != account[0]:
        updates.append(AccountUpdate(LEAVE, tenant, kept[0], merged.clock_ms, None, survivor))
    updates.append(
        AccountUpdate(
            JOIN, tenant, account[0], merged.clock_ms, None, survivor, merged.events_counted, merged
        )
    )
    return account, updates
