"""Offline replay: JSON Lines of canonical events in, transitions and final states out.

This is the reference the streaming worker is tested against, and the backfill tool.
:class:`Replayer` drives the pure core; it does no I/O of its own.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from engagement_index.core.accounts import (
    AccountSnapshot,
    AccountState,
    AccountTransition,
    AccountUpdate,
    Membership,
    account_updates,
    advance_account,
    apply,
    evaluate_account,
    is_account_type,
    member_event_updates,
)
from engagement_index.core.dedupe import DEFAULT_WINDOW_MS, EMPTY, SeenIds, admit
from engagement_index.core.events import (
    EventFields,
    FailureType,
    parse_event_fields,
)
from engagement_index.core.lifecycle import advance, evaluate, possibly_due_by, step, with_due
from engagement_index.core.model import ScoringModel
from engagement_index.core.records import ContactSnapshot, Transition
from engagement_index.core.state import ContactState
from engagement_index.core.timestamps import MIN_MS, MS_PER_DAY
from engagement_index.errors import EventRejected
from engagement_index.kernel import Contacts
from engagement_index.replay_identity import ReplayIdentities, is_identity_record

if TYPE_CHECKING:
    from engagement_index._kernel import Contacts as _KernelStore


@dataclass(frozen=True, slots=True)
class Reject:
    """An input line that was not scored."""

    line: int
    failure: FailureType
    reason: str

    def to_json_dict(self) -> dict[str, object]:
        """The reject as a JSON-able dict."""
        return {"line": self.line, "failure": str(self.failure), "reason": self.reason}


#: (tenant, contact_id), the point's midnight (days since 1970-01-01), the snapshot there
OnPoint = Callable[[tuple[str, str], int, ContactSnapshot], None]


@dataclass(frozen=True, slots=True)
class DailySeries:
    """Which daily points a replay reports (``--daily-out``): every ``step`` days from
    ``first`` (default: each contact's first midnight) to ``last`` (default: the horizon)."""

    on_point: OnPoint
    first: int | None = None
    last: int | None = None
    step: int = 1


@dataclass
class ReplayStats:
    """Counters of one replay."""

    lines: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    transitions: int = 0
    points: int = 0
    merges: int = 0


def _json_lines(transitions: Iterable[Transition]) -> bytes:
    """``transitions`` as JSON lines (``Transition.to_json_bytes()`` and ``\\n`` each)."""
    return b"".join(t.to_json_bytes() + b"\n" for t in transitions)


def _parse_json_lines(out: bytes) -> list[Transition]:
    """The transitions of the kernel's JSON lines (the inverse of :func:`_json_lines`)."""
    return [Transition.trusted(**orjson.loads(line)) for line in out.splitlines()]


def _one_line(raw: bytes) -> bool:
    """True if ``raw`` is one line as the kernel reads them (not empty, no ``\\n`` but
    maybe a last one)."""
    return bool(raw) and raw.find(b"\n") in (-1, len(raw) - 1)


class Replayer:
    """Feeds raw records (bytes or str, one event each) through the core, in arrival order.

    ``feed`` returns the transitions the record caused; ``finish`` emits the decay transitions
    due up to the horizon (``until_ms``, default: the largest event timestamp seen) and
    leaves every state as of the horizon. With ``until_ms`` set, events after it are rejected
    as ``time_out_of_range``. Rejected records go to ``on_reject`` (default: collected in
    ``rejects``). ``states`` is keyed by ``(tenant, contact_id)``.

    Each event goes through :func:`engagement_index.core.lifecycle.step`, exactly as in the
    worker; ``finish`` applies :func:`~engagement_index.core.lifecycle.advance`. Due times are
    solved lazily: only when a later event of the contact might lie past one
    (:func:`~engagement_index.core.lifecycle.possibly_due_by`), or at ``finish``. Solving is a
    pure function of the state, so the transitions are exactly those of solving after every
    event.

    ``daily`` asks for each contact's series of points at UTC midnights (the score history of
    docs/streaming.md): before an event moves a contact's clock past a midnight, its state is
    evaluated there (the point at midnight ``t`` counts the events up to ``t``, included);
    ``finish`` adds the points up to the horizon. Only the next midnight of each contact is
    kept.

    ``kernel=True`` scores with the compiled kernel (``engagement_index.kernel``) where it is
    built and not switched off, with exactly the outputs of the Python core. The kernel then
    also reads the lines: :meth:`feed_chunks` hands it whole chunks of the file, and it parses,
    validates (the fast path of ``parse_event_fields``), dedupes and scores each line it takes,
    writing the transitions as JSON lines; a line it does not take (anything unusual, and every
    line that is rejected) is handed back and goes through :meth:`feed`, which decides as the
    Python core does. It does not report daily points (``daily`` uses the Python core), and
    the first identity record moves the states and duplicate windows to the Python core, which
    goes on from there. Read the final states with :meth:`final_states` (``states`` holds the
    core's).
    """

    def __init__(
        self,
        model: ScoringModel,
        *,
        until_ms: int | None = None,
        max_bytes: int | None = None,
        on_reject: Callable[[Reject], None] | None = None,
        dedupe_window_ms: int = DEFAULT_WINDOW_MS,
        daily: DailySeries | None = None,
        kernel: bool = False,
        blocked_ids: Iterable[str] = (),
    ) -> None:
        self.model = model
        self.daily = daily
        #: per contact, the day of its next daily point (absent: none left in the range)
        self._next_point: dict[tuple[str, str], int] = {}
        self.dedupe_window_ms = dedupe_window_ms
        #: per contact, the event ids applied within the dedupe window (``core.dedupe``)
        self.seen: dict[tuple[str, str], SeenIds] = {}
        self._arrival_clock = MIN_MS  # the largest event timestamp read (default arrivals)
        self.until_ms = until_ms
        self.max_bytes = max_bytes
        self.on_reject = on_reject
        self.states: dict[tuple[str, str], ContactState] = {}
        self.rejects: list[Reject] = []
        self.stats = ReplayStats()
        self.max_event_ms: int | None = None
        self._cm = model.compiled
        #: contacts whose due time is not solved yet
        self._unsolved: set[tuple[str, str]] = set()
        #: accounts (docs/models.md#accounts): None if the model declares none
        self._accounts = model.accounts_compiled
        self.accounts: dict[tuple[str, str], AccountState] = {}
        self.memberships: dict[tuple[str, str], Membership] = {}
        #: account transitions, in emission order (``finish`` adds the time-driven ones)
        self.account_transitions: list[AccountTransition] = []
        # the kernel scores contacts only: with accounts (each member's new state goes to its
        # account after every event) or a daily series, the Python core scores
        use_kernel = kernel and daily is None and self._accounts is None
        contacts = Contacts(self._cm) if use_kernel else None
        #: the kernel's states (None: the Python core's, in ``states``)
        self._contacts = contacts if contacts is not None and contacts.uses_kernel else None
        #: the kernel's store, which also keeps the duplicate windows and the file's clock
        self._store = self._contacts.store if self._contacts is not None else None
        if self._store is not None:
            self._store.replay_setup(dedupe_window_ms, until_ms, max_bytes)
        self._chunk_pos = 0  # where the last ``replay_chunk`` call ended
        #: identity merge: identify/alias records in the input (``ReplayIdentities``)
        self.identities = ReplayIdentities(self, frozenset(blocked_ids))

    def reject(self, line: int, failure: FailureType | str, reason: str) -> None:
        """Record a rejected line."""
        item = Reject(line, FailureType(failure), reason)
        self.stats.rejected += 1
        if self.on_reject is None:
            self.rejects.append(item)
        else:
            self.on_reject(item)

    def feed(
        self, raw: bytes | str, line: int | None = None, arrival_ms: int | None = None
    ) -> list[Transition]:
        """Parse and apply one record; returns its transitions (rejects are recorded).

        ``arrival_ms``: when the record reached the system (the worker uses the Kafka record
        timestamp); the dedupe window counts from it. Default: the largest event timestamp
        read so far, this one included (the file's clock).
        """
        if is_identity_record(raw):
            self.stats.lines += 1
            self._leave_kernel()
            return self.identities.feed(raw, self.stats.lines if line is None else line)
        fields = self._parse(raw, line)
        if fields is None:
            return []
        if self._store is not None:
            return self._kernel_event(fields, arrival_ms)
        return self._apply(fields, arrival_ms)

    def _parse(self, raw: bytes | str, line: int | None) -> EventFields | None:
        """The fields of a record that can be scored (None: nothing to score: rejected and
        recorded, or an account event, applied to its account here)."""
        stats = self.stats
        stats.lines += 1
        try:
            fields = parse_event_fields(raw, max_bytes=self.max_bytes)
            if self._accounts is not None and is_account_type(fields.type):
                if self.until_ms is not None and fields.timestamp_ms > self.until_ms:
                    raise EventRejected(
                        FailureType.TIME_OUT_OF_RANGE, "timestamp: after the replay's --until time"
                    )
                self._account_event(raw, fields)
                return None
            if fields.type not in self._cm.rules:
                raise EventRejected(
                    FailureType.UNKNOWN_TYPE,
                    f"type: {fields.type!r} is not scored by model {self._cm.version!r}",
                )
            if self.until_ms is not None and fields.timestamp_ms > self.until_ms:
                raise EventRejected(
                    FailureType.TIME_OUT_OF_RANGE, "timestamp: after the replay's --until time"
                )
        except EventRejected as exc:
            self.reject(stats.lines if line is None else line, exc.failure, exc.message)
            return None
        return fields

    def _kernel_event(self, fields: EventFields, arrival_ms: int | None) -> list[Transition]:
        """The kernel's form of :meth:`_apply` (the duplicate window, then ``step``)."""
        store = self._store
        assert store is not None
        out, self.max_event_ms, self._arrival_clock = store.replay_fields(fields, arrival_ms)
        if out is None:
            self.stats.duplicates += 1
            return []
        self.stats.applied += 1
        transitions = _parse_json_lines(out)
        self.stats.transitions += len(transitions)
        return transitions

    def _leave_kernel(self) -> None:
        """Move the kernel's states and duplicate windows to the Python core (``states``,
        ``seen``), which scores from here on: identity merges (``replay_identity``) work on the
        core's states. The kernel's due times are solved, so none is left unsolved."""
        contacts = self._contacts
        store = self._store
        if contacts is not None and store is not None:
            for tenant, contact_id, digests, arrivals in store.seen_windows():
                self.seen[(tenant, contact_id)] = SeenIds(digests, tuple(arrivals))
            self.states = {key: contacts.state(key) for key in self.seen}
            self._contacts = self._store = None

    def _apply(self, fields: EventFields, arrival_ms: int | None) -> list[Transition]:
        event_id, tenant, contact_id, _, ts, _ = fields
        key = (tenant, contact_id)
        survivor = self.identities.alias_of.get(key)
        if survivor is not None:  # an absorbed id: its events count on its survivor
            fields = EventFields(event_id, tenant, survivor, fields.type, ts, fields.account_id)
            key = (tenant, survivor)
        if ts > self._arrival_clock:
            self._arrival_clock = ts
        if arrival_ms is None:
            arrival_ms = self._arrival_clock
        seen = admit(self.seen.get(key, EMPTY), event_id, arrival_ms, self.dedupe_window_ms)
        stats = self.stats
        if seen is None:
            stats.duplicates += 1
            return []
        self.seen[key] = seen
        state = self.states.get(key)
        cm = self._cm
        unsolved = self._unsolved
        if self.daily is not None:
            state = self._points_before(key, state, ts)
        if state is not None and key in unsolved and possibly_due_by(state, ts, cm):
            state = with_due(state, cm)
            unsolved.discard(key)
        new, transitions = step(state, fields, cm, solve_due=False)
        unsolved.add(key)
        if self._accounts is not None:
            new = self._member_event(fields, new)
        self.states[key] = new
        stats.applied += 1
        if transitions:
            stats.transitions += len(transitions)
        if self.max_event_ms is None or ts > self.max_event_ms:
            self.max_event_ms = ts
        return transitions

    def _member_event(self, fields: EventFields, state: ContactState) -> ContactState:
        """Send a member's new state to its account, as the worker does after each event;
        returns the state (its due time solved if it went to an account)."""
        key = (fields.tenant, fields.contact_id)
        current = self.memberships.get(key)
        if current is None and not fields.account_id:
            return state
        state = with_due(state, self._cm)
        self._unsolved.discard(key)
        membership, updates = member_event_updates(fields, state, current)
        self.memberships[key] = membership
        for update in updates:
            self._account_update(update)
        return state

    def _account_event(self, raw: bytes | str, fields: EventFields) -> None:
        """An ``account.licences`` event or a group call (``account.group``)."""
        assert self._accounts is not None
        key = (fields.tenant, fields.contact_id)
        state = self.states.get(key)
        if state is not None and key in self._unsolved:
            state = self.states[key] = with_due(state, self._cm)
            self._unsolved.discard(key)
        try:
            updates, membership = account_updates(
                raw, state, self.memberships.get(key), self._accounts
            )
        except EventRejected as exc:
            self.reject(self.stats.lines, exc.failure, exc.message)
            return
        if membership is not None:
            self.memberships[key] = membership
        self.stats.applied += 1
        for update in updates:
            self._account_update(update)

    def _account_update(self, update: AccountUpdate) -> None:
        assert self._accounts is not None
        key = (update.tenant, update.account_id)
        new, transitions = apply(self.accounts.get(key), update, self._accounts)
        if new is not None:
            self.accounts[key] = new
        self.account_transitions.extend(transitions)

    def finish_accounts(self, until_ms: int | None = None) -> list[AccountTransition]:
        """The accounts' time-driven changes due by the horizon (``finish`` calls it)."""
        horizon = until_ms if until_ms is not None else self.horizon()
        if self._accounts is None or horizon is None:
            return []
        out: list[AccountTransition] = []
        for key in sorted(self.accounts):
            new, transitions = advance_account(self.accounts[key], horizon, self._accounts)
            self.accounts[key] = new
            out.extend(transitions)
        self.account_transitions.extend(out)
        return out

    def account_snapshots(self, at_ms: int | None = None) -> Iterator[AccountSnapshot]:
        """Each account's snapshot at ``at_ms`` (default: the horizon), sorted by key."""
        assert self._accounts is not None or not self.accounts
        at = at_ms if at_ms is not None else self.horizon()
        for key in sorted(self.accounts):
            state = self.accounts[key]
            assert self._accounts is not None
            yield evaluate_account(state, state.clock_ms if at is None else at, self._accounts)

    def _points_before(
        self, key: tuple[str, str], state: ContactState | None, ts: int
    ) -> ContactState | None:
        """Report the contact's daily points at the midnights before ``ts`` (its next event);
        returns its state (with the due time solved if a point needed it)."""
        daily = self.daily
        assert daily is not None
        if state is None:  # its first event: the first point is the midnight at or after it
            first = (ts - 1) // MS_PER_DAY + 1
            if daily.first is not None:  # on the grid of the range
                behind = daily.first - first
                first = daily.first if behind >= 0 else first + behind % daily.step
            if daily.last is None or first <= daily.last:
                self._next_point[key] = first
            return state
        day = self._next_point.get(key)
        if day is None or day * MS_PER_DAY >= ts:
            return state
        last = (ts - 1) // MS_PER_DAY
        if daily.last is not None:
            last = min(last, daily.last)
        return self._points(key, state, day, last)

    def _points(
        self, key: tuple[str, str], state: ContactState, day: int, last: int
    ) -> ContactState:
        """Report the points of ``state`` at ``day``, ``day + step``, ... up to ``last``."""
        daily = self.daily
        assert daily is not None
        cm = self._cm
        if key in self._unsolved and possibly_due_by(state, last * MS_PER_DAY, cm):
            state = self.states[key] = with_due(state, cm)
            self._unsolved.discard(key)
        on_point = daily.on_point
        step = daily.step
        while day <= last:
            on_point(key, day, evaluate(state, day * MS_PER_DAY, cm))
            self.stats.points += 1
            day += step
        if daily.last is not None and day > daily.last:
            self._next_point.pop(key, None)
        else:
            self._next_point[key] = day
        return state

    def finish_points(self, until_ms: int | None = None) -> None:
        """Report every contact's daily points up to the horizon (before :meth:`finish`
        advances the states past them; :meth:`finish` calls it)."""
        horizon = until_ms if until_ms is not None else self.horizon()
        if self.daily is None or horizon is None:
            return
        last = horizon // MS_PER_DAY
        if self.daily.last is not None:
            last = min(last, self.daily.last)
        for key, day in list(self._next_point.items()):
            if day <= last:
                self._points(key, self.states[key], day, last)

    def feed_lines(self, lines: Iterable[bytes | str]) -> Iterator[Transition]:
        """Feed every line (one record each); yields transitions in emission order."""
        feed = self.feed
        for raw in lines:
            store = self._store
            if store is not None and isinstance(raw, bytes) and _one_line(raw):
                out, stopped_at = self._kernel_chunk(store, raw, 0, True)
                if stopped_at is None:  # taken by the kernel
                    yield from _parse_json_lines(out)
                    continue
            transitions = feed(raw)
            if transitions:
                yield from transitions

    def feed_chunks(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Feed the bytes of a JSON Lines file, in chunks of any size (a line may span two);
        yields the transitions as JSON lines (``Transition.to_json_bytes()`` and ``\\n``
        each), in emission order, in blocks. The lines are those of ``bytes.split(b"\\n")``,
        each with its ``\\n``; a last line without one counts too."""
        rest = b""
        for chunk in chunks:
            rest = yield from self._feed_data(rest + chunk if rest else chunk, False)
        if rest:
            yield from self._feed_data(rest, True)

    def _feed_data(self, data: bytes, last: bool) -> Generator[bytes, None, bytes]:
        """Feed the whole lines of ``data`` (all of it if ``last``); returns what is left."""
        pos = 0
        while (store := self._store) is not None:
            out, line_end = self._kernel_chunk(store, data, pos, last)
            if out:
                yield out
            if line_end is None:
                return data[self._chunk_pos :]
            line = data[self._chunk_pos : line_end]
            pos = line_end
            transitions = self.feed(line)
            if transitions:
                yield _json_lines(transitions)
        pieces = data[pos:].split(b"\n")
        rest = pieces.pop()  # after the last newline
        lines = [piece + b"\n" for piece in pieces]
        if last and rest:
            lines.append(rest)
            rest = b""
        feed = self.feed
        for line in lines:
            transitions = feed(line)
            if transitions:
                yield _json_lines(transitions)
        return rest

    def _kernel_chunk(
        self, store: _KernelStore, data: bytes, pos: int, last: bool
    ) -> tuple[bytes, int | None]:
        """One ``replay_chunk`` call from ``pos``: its transitions (JSON lines) and the end of
        the line it stopped at (None: it did not stop; ``_chunk_pos`` is where it ended)."""
        result = store.replay_chunk(data, pos, last)
        end, stopped, out, lines, applied, duplicates, transitions, newest, clock = result
        stats = self.stats
        stats.lines += lines
        stats.applied += applied
        stats.duplicates += duplicates
        stats.transitions += transitions
        self.max_event_ms = newest
        self._arrival_clock = clock
        self._chunk_pos = end
        if not stopped:
            return out, None
        line_end = data.find(b"\n", end)
        return out, len(data) if line_end < 0 else line_end + 1

    def horizon(self) -> int | None:
        """The time ``finish`` advances to: ``until_ms`` or the largest event timestamp."""
        return self.until_ms if self.until_ms is not None else self.max_event_ms

    def final_states(self) -> dict[tuple[str, str], ContactState]:
        """Every contact's state, in the order of their first applied events."""
        if self._contacts is None or self._store is None:
            return dict(self.states)
        return {key: self._contacts.state(key) for key in self._store.applied_keys()}

    def _solve_all(self) -> None:
        for key in self._unsolved:
            self.states[key] = with_due(self.states[key], self._cm)
        self._unsolved.clear()

    def finish_json(self, until_ms: int | None = None) -> bytes:
        """:meth:`finish` as JSON lines (``Transition.to_json_bytes()`` and ``\\n`` each)."""
        horizon = until_ms if until_ms is not None else self.horizon()
        if self._contacts is None or horizon is None:
            return _json_lines(self.finish(until_ms))
        done = self._contacts.finish_json(horizon)
        self.stats.transitions += done.count(b"\n")
        return done

    def finish(self, until_ms: int | None = None) -> list[Transition]:
        """Emit the time-driven changes due by the horizon, ordered by time then contact."""
        self.finish_points(until_ms)
        self._solve_all()
        horizon = until_ms if until_ms is not None else self.horizon()
        if horizon is None:
            return []
        if self._contacts is not None:
            done = self._contacts.finish(horizon)
            self.stats.transitions += len(done)
            return done
        queue = [
            (state.due_ms, key)
            for key, state in self.states.items()
            if state.due_ms is not None and state.due_ms <= horizon
        ]
        heapq.heapify(queue)
        out: list[Transition] = []
        while queue:
            due, key = heapq.heappop(queue)
            new, transitions = advance(self.states[key], due, self._cm)
            self.states[key] = new
            out.extend(transitions)
            if new.due_ms is not None and new.due_ms <= horizon:
                heapq.heappush(queue, (new.due_ms, key))
        self.stats.transitions += len(out)
        self.finish_accounts(horizon)
        return out

    def snapshots(self, at_ms: int | None = None) -> Iterator[ContactSnapshot]:
        """Each contact's snapshot at ``at_ms`` (default: the horizon), sorted by key."""
        self._solve_all()
        at = at_ms if at_ms is not None else self.horizon()
        contacts = self._contacts
        if contacts is not None and self._store is not None:
            for key in sorted(self._store.applied_keys()):
                yield contacts.snapshot(key, contacts.clock(key) if at is None else at)
            return
        for key in sorted(self.states):
            state = self.states[key]
            yield evaluate(state, state.clock_ms if at is None else at, self._cm)


@dataclass(frozen=True)
class ReplayResult:
    """Everything one replay produced."""

    transitions: list[Transition]
    states: dict[tuple[str, str], ContactState]
    rejects: list[Reject]
    snapshots: list[ContactSnapshot]
    account_transitions: list[AccountTransition] = field(default_factory=list)
    account_snapshots: list[AccountSnapshot] = field(default_factory=list)


def replay(
    lines: Iterable[bytes | str],
    model: ScoringModel,
    *,
    until_ms: int | None = None,
    max_bytes: int | None = None,
    dedupe_window_ms: int = DEFAULT_WINDOW_MS,
    kernel: bool = True,
) -> ReplayResult:
    """Replay ``lines`` in order: the oracle for the streaming worker's outputs (scored by
    the compiled kernel where it is built; ``kernel=False``: by the Python core)."""
    replayer = Replayer(
        model,
        until_ms=until_ms,
        max_bytes=max_bytes,
        dedupe_window_ms=dedupe_window_ms,
        kernel=kernel,
    )
    transitions = list(replayer.feed_lines(lines))
    transitions.extend(replayer.finish())
    return ReplayResult(
        transitions=transitions,
        states=replayer.final_states(),
        rejects=list(replayer.rejects),
        snapshots=list(replayer.snapshots()),
        account_transitions=list(replayer.account_transitions),
        account_snapshots=list(replayer.account_snapshots()),
    )
