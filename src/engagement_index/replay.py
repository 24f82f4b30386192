"""Offline replay: JSON Lines of canonical events in, transitions and final states out.

This is the reference the streaming worker is tested against, and the backfill tool.
:class:`Replayer` drives the pure core; it does no I/O of its own.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

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
from engagement_index.core.timestamps import MIN_MS
from engagement_index.errors import EventRejected


@dataclass(frozen=True, slots=True)
class Reject:
    """An input line that was not scored."""

    line: int
    failure: FailureType
    reason: str

    def to_json_dict(self) -> dict[str, object]:
        """The reject as a JSON-able dict."""
        return {"line": self.line, "failure": str(self.failure), "reason": self.reason}


@dataclass
class ReplayStats:
    """Counters of one replay."""

    lines: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    transitions: int = 0


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
    """

    def __init__(
        self,
        model: ScoringModel,
        *,
        until_ms: int | None = None,
        max_bytes: int | None = None,
        on_reject: Callable[[Reject], None] | None = None,
        dedupe_window_ms: int = DEFAULT_WINDOW_MS,
    ) -> None:
        self.model = model
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
        stats = self.stats
        stats.lines += 1
        try:
            fields = parse_event_fields(raw, max_bytes=self.max_bytes)
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
            return []
        return self._apply(fields, arrival_ms)

    def _apply(self, fields: EventFields, arrival_ms: int | None) -> list[Transition]:
        event_id, tenant, contact_id, _, ts = fields
        key = (tenant, contact_id)
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
        if state is not None and key in unsolved and possibly_due_by(state, ts, cm):
            state = with_due(state, cm)
            unsolved.discard(key)
        new, transitions = step(state, fields, cm, solve_due=False)
        self.states[key] = new
        unsolved.add(key)
        stats.applied += 1
        if transitions:
            stats.transitions += len(transitions)
        if self.max_event_ms is None or ts > self.max_event_ms:
            self.max_event_ms = ts
        return transitions

    def feed_lines(self, lines: Iterable[bytes | str]) -> Iterator[Transition]:
        """Feed every line; yields transitions in emission order."""
        feed = self.feed
        for raw in lines:
            transitions = feed(raw)
            if transitions:
                yield from transitions

    def horizon(self) -> int | None:
        """The time ``finish`` advances to: ``until_ms`` or the largest event timestamp."""
        return self.until_ms if self.until_ms is not None else self.max_event_ms

    def _solve_all(self) -> None:
        for key in self._unsolved:
            self.states[key] = with_due(self.states[key], self._cm)
        self._unsolved.clear()

    def finish(self, until_ms: int | None = None) -> list[Transition]:
        """Emit the time-driven changes due by the horizon, ordered by time then contact."""
        self._solve_all()
        horizon = until_ms if until_ms is not None else self.horizon()
        if horizon is None:
            return []
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
        return out

    def snapshots(self, at_ms: int | None = None) -> Iterator[ContactSnapshot]:
        """Each contact's snapshot at ``at_ms`` (default: the horizon), sorted by key."""
        self._solve_all()
        at = at_ms if at_ms is not None else self.horizon()
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


def replay(
    lines: Iterable[bytes | str],
    model: ScoringModel,
    *,
    until_ms: int | None = None,
    max_bytes: int | None = None,
    dedupe_window_ms: int = DEFAULT_WINDOW_MS,
) -> ReplayResult:
    """Replay ``lines`` in order: the oracle for the streaming worker's outputs."""
    replayer = Replayer(
        model, until_ms=until_ms, max_bytes=max_bytes, dedupe_window_ms=dedupe_window_ms
    )
    transitions = list(replayer.feed_lines(lines))
    transitions.extend(replayer.finish())
    return ReplayResult(
        transitions=transitions,
        states=dict(replayer.states),
        rejects=list(replayer.rejects),
        snapshots=list(replayer.snapshots()),
    )
