"""Cohort report: a contact's index by days since its cohort event, per monthly cohort.

A contact joins the cohort of the UTC month of its *cohort event*:

* ``first_purchase_month``: the first time the model's ``customer`` marker is set (its time is
  the timestamp of the event that set it);
* ``first_seen_month``: its first applied event.

It is then *sampled* at ``t0 + d`` days (``d = 0, 1, ..., days``, ``t0`` the cohort event's
time): its index at that instant with the events of timestamp ``<= t0 + d`` folded in, and the
time-driven changes due by then applied (what the worker would report then). Samples after the
replay's horizon (the largest event timestamp, or ``--until``) are not taken: a cohort's count
of contacts falls at the days its newest members have not reached yet.

The pass is exact and memory-bounded: events are fed in file order to a
:class:`~engagement_index.replay.Replayer`; a contact keeps only its next sampling instant,
and when one of its events lies after that instant, every instant before the event is sampled
from the state as it was before the event (the state's clock is at or before the instant, so
:func:`~engagement_index.core.lifecycle.advance` and a rebase give the exact index there, as
:func:`~engagement_index.core.lifecycle.evaluate` would). The remaining instants up to the
horizon are sampled from the final states. The values of one (cohort, day) are kept as
float64s (8 bytes per sample) for the exact quartiles.

The file is expected in timestamp order per contact (as the topics and the bench workload
are). An event older than a sample already taken of its contact (``late_events``) is included
from the next sample on; a sampling instant before the state's clock (only when the cohort
event itself came late) is skipped (``skipped_samples``). Both are reported.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engagement_index.core.decay import index_after
from engagement_index.core.dedupe import DEFAULT_WINDOW_MS
from engagement_index.core.events import parse_event_fields
from engagement_index.core.lifecycle import advance, with_due
from engagement_index.core.model import ScoringModel
from engagement_index.core.state import ContactState
from engagement_index.core.timestamps import MS_PER_DAY, ms_to_rfc3339
from engagement_index.errors import ConfigError, EventRejected
from engagement_index.replay import Reject, Replayer, ReplayStats

BY_FIRST_PURCHASE = "first_purchase_month"
BY_FIRST_SEEN = "first_seen_month"
COHORT_BY = (BY_FIRST_PURCHASE, BY_FIRST_SEEN)
#: The marker whose first setting is a contact's first purchase.
CUSTOMER_MARKER = "customer"
DEFAULT_DAYS = 90
MAX_DAYS = 3650
CSV_COLUMNS = ("cohort", "day", "contacts", "mean", "q1", "median", "q3")

Key = tuple[str, str]
#: ``(tenant, contact_id)``, cohort, day, sampling instant (ms), index
SampleSink = Callable[[Key, str, int, int, float], None]


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ascending values: linear between the closest ranks.

    Position ``h = (n - 1) * q`` (0-based); the value is ``x[i] + (h - i) * (x[i+1] - x[i])``
    with ``i = floor(h)`` (Hyndman and Fan's type 7, the default of R, NumPy and spreadsheets).
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("no values")
    h = (n - 1) * q
    i = math.floor(h)
    if i + 1 >= n:
        return float(sorted_values[n - 1])
    lo = sorted_values[i]
    return float(lo + (h - i) * (sorted_values[i + 1] - lo))


@dataclass(frozen=True, slots=True)
class CohortDay:
    """The index of one cohort's contacts ``day`` days after their cohort event."""

    cohort: str
    day: int
    contacts: int
    mean: float
    q1: float
    median: float
    q3: float

    def csv_row(self) -> list[object]:
        """The row of ``cohorts.csv`` (floats as computed: shortest round-trip repr)."""
        return [
            self.cohort,
            self.day,
            self.contacts,
            repr(self.mean),
            repr(self.q1),
            repr(self.median),
            repr(self.q3),
        ]


@dataclass
class CohortReport:
    """What :meth:`CohortSampler.finish` computed."""

    by: str
    days: int
    model_version: str
    horizon_ms: int | None
    rows: list[CohortDay]
    #: cohort -> contacts that joined it
    sizes: dict[str, int]
    stats: ReplayStats
    rejects_by_failure: dict[str, int]
    contacts: int
    samples: int
    late_events: int
    skipped_samples: int

    def series(self, cohort: str) -> list[CohortDay]:
        """The rows of one cohort, by day."""
        return [row for row in self.rows if row.cohort == cohort]

    def write_csv(self, path: Path) -> None:
        """``cohorts.csv``: one row per (cohort, day) with at least one sample."""
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for row in self.rows:
                writer.writerow(row.csv_row())


@dataclass
class _Cohort:
    label: str
    size: int = 0
    values: list[array[float]] = field(default_factory=list)


class CohortSampler:
    """Feed raw event lines in file order, then :meth:`finish` for the cohort table.

    ``on_reject`` receives each bad line (they are counted in any case); ``on_sample`` each
    sample taken (for checks and debugging).
    """

    def __init__(
        self,
        model: ScoringModel,
        *,
        by: str = BY_FIRST_PURCHASE,
        days: int = DEFAULT_DAYS,
        until_ms: int | None = None,
        max_bytes: int | None = None,
        dedupe_window_ms: int = DEFAULT_WINDOW_MS,
        on_reject: Callable[[Reject], None] | None = None,
        on_sample: SampleSink | None = None,
    ) -> None:
        if by not in COHORT_BY:
            raise ValueError(f"by: {by!r} is not one of {', '.join(COHORT_BY)}")
        if not 0 <= days <= MAX_DAYS:
            raise ValueError(f"days: {days} is not in [0, {MAX_DAYS}]")
        cm = model.compiled
        self._marker_bit = 0
        self._marker_pos = -1
        if by == BY_FIRST_PURCHASE:
            if CUSTOMER_MARKER not in cm.markers:
                declared = ", ".join(cm.markers) or "none"
                raise ConfigError(
                    f"model {cm.version!r} has no marker named {CUSTOMER_MARKER!r} (markers: "
                    f"{declared}), so it has no first purchase: use --by {BY_FIRST_SEEN}"
                )
            self._marker_pos = cm.markers.index(CUSTOMER_MARKER)
            self._marker_bit = 1 << self._marker_pos
        self.by = by
        self.days = days
        self.model = model
        self._cm = cm
        self._max_bytes = max_bytes
        self._on_reject = on_reject
        self._on_sample = on_sample
        self.rejects_by_failure: Counter[str] = Counter()
        self.replayer = Replayer(
            model,
            until_ms=until_ms,
            max_bytes=max_bytes,
            on_reject=self._reject,
            dedupe_window_ms=dedupe_window_ms,
        )
        #: contact -> (cohort event ms, next day to sample, cohort position)
        self._pending: dict[Key, tuple[int, int, int]] = {}
        #: contacts that joined a cohort (first_purchase_month only: a marker can be cleared)
        self._joined: set[Key] = set()
        self._cohorts: list[_Cohort] = []
        self._cohort_pos: dict[str, int] = {}
        self.samples = 0
        self.late_events = 0
        self.skipped_samples = 0

    # ------------------------------------------------------------------ counters
    @property
    def lines(self) -> int:
        """Lines fed so far."""
        return self.replayer.stats.lines

    @property
    def contacts(self) -> int:
        """Contacts with a state so far."""
        return len(self.replayer.states)

    @property
    def rejected(self) -> int:
        """Bad lines so far."""
        return self.replayer.stats.rejected

    def _reject(self, item: Reject) -> None:
        self.rejects_by_failure[str(item.failure)] += 1
        if self._on_reject is not None:
            self._on_reject(item)

    # ------------------------------------------------------------------ the pass
    def feed(self, raw: bytes | str) -> None:
        """Apply one line; first sample its contact at every pending instant before it."""
        replayer = self.replayer
        try:
            fields = parse_event_fields(raw, max_bytes=self._max_bytes)
        except EventRejected:
            replayer.feed(raw)  # counts and reports the bad line
            return
        key = (fields.tenant, fields.contact_id)
        before = replayer.states.get(key)
        applied = replayer.stats.applied
        replayer.feed(raw)
        if replayer.stats.applied == applied:
            return  # rejected or a duplicate: nothing changed
        ts = fields.timestamp_ms
        pending = self._pending.get(key)
        if pending is not None:
            t0, day, pos = pending
            if day > 0 and ts <= t0 + (day - 1) * MS_PER_DAY:
                self.late_events += 1
            if t0 + day * MS_PER_DAY < ts:
                assert before is not None
                day = self._sample(key, before, t0, day, pos, ts - 1)
                if day > self.days:
                    del self._pending[key]
                else:
                    self._pending[key] = (t0, day, pos)
            return
        state = replayer.states[key]
        if self.by == BY_FIRST_SEEN:
            if before is None:
                self._join(key, ts)
        elif state.markers & self._marker_bit and key not in self._joined:
            self._joined.add(key)
            marker_ms = state.marker_ms[self._marker_pos]
            assert marker_ms is not None
            self._join(key, marker_ms)

    def _join(self, key: Key, t0: int) -> None:
        label = ms_to_rfc3339(t0)[:7]
        pos = self._cohort_pos.get(label)
        if pos is None:
            pos = self._cohort_pos[label] = len(self._cohorts)
            self._cohorts.append(_Cohort(label, 0, [array("d") for _ in range(self.days + 1)]))
        self._cohorts[pos].size += 1
        self._pending[key] = (t0, 0, pos)

    def _sample(
        self, key: Key, state: ContactState, t0: int, day: int, pos: int, last_ms: int
    ) -> int:
        """Sample ``state`` at every instant ``t0 + d`` days ``<= last_ms``; the next day."""
        cm = self._cm
        first = cm.lifecycles[0]
        cohort = self._cohorts[pos]
        solved: ContactState | None = None
        while day <= self.days:
            at = t0 + day * MS_PER_DAY
            if at > last_ms:
                break
            if at < state.clock_ms:
                self.skipped_samples += 1
                day += 1
                continue
            if solved is None:
                solved = with_due(state, cm)
            if solved.due_ms is not None and solved.due_ms <= at:
                solved, _ = advance(solved, at, cm)
            stage = first.stages[cm.stage_by_id[solved.stages[0]][1]]
            index = index_after(solved.values, at - solved.clock_ms, cm.weights[stage.index], cm)
            cohort.values[day].append(index)
            self.samples += 1
            if self._on_sample is not None:
                self._on_sample(key, cohort.label, day, at, index)
            day += 1
        return day

    def finish(self) -> CohortReport:
        """Sample the remaining instants up to the horizon; the cohort table."""
        replayer = self.replayer
        horizon = replayer.horizon()
        if horizon is not None:
            for key, (t0, day, pos) in self._pending.items():
                self._sample(key, replayer.states[key], t0, day, pos, horizon)
        self._pending.clear()
        rows: list[CohortDay] = []
        sizes: dict[str, int] = {}
        for cohort in sorted(self._cohorts, key=lambda c: c.label):
            sizes[cohort.label] = cohort.size
            for day, values in enumerate(cohort.values):
                if not values:
                    continue
                ordered = sorted(values)
                rows.append(
                    CohortDay(
                        cohort.label,
                        day,
                        len(ordered),
                        math.fsum(ordered) / len(ordered),
                        quantile(ordered, 0.25),
                        quantile(ordered, 0.5),
                        quantile(ordered, 0.75),
                    )
                )
        return CohortReport(
            by=self.by,
            days=self.days,
            model_version=self._cm.version,
            horizon_ms=horizon,
            rows=rows,
            sizes=sizes,
            stats=replayer.stats,
            rejects_by_failure=dict(sorted(self.rejects_by_failure.items())),
            contacts=len(replayer.states),
            samples=self.samples,
            late_events=self.late_events,
            skipped_samples=self.skipped_samples,
        )


def summary_text(report: CohortReport, days_shown: Sequence[int] = (0, 7, 30, 60, 90)) -> str:
    """A short plain-text summary: per cohort its size and mean index at a few days."""
    shown = [d for d in days_shown if d <= report.days]
    if report.days not in shown:
        shown.append(report.days)
    lines = [
        f"cohorts by {report.by}, model {report.model_version}, "
        f"horizon {ms_to_rfc3339(report.horizon_ms) if report.horizon_ms is not None else '-'}",
        f"{report.stats.lines:,} lines, {report.stats.applied:,} applied, "
        f"{report.stats.duplicates:,} duplicates, {report.stats.rejected:,} rejected; "
        f"{report.contacts:,} contacts, {sum(report.sizes.values()):,} in cohorts, "
        f"{report.samples:,} samples",
    ]
    header = "cohort   contacts " + "".join(f"{'day ' + str(d):>10}" for d in shown)
    lines.append(header)
    by_key = {(row.cohort, row.day): row for row in report.rows}
    for cohort, size in report.sizes.items():
        cells = []
        for d in shown:
            row = by_key.get((cohort, d))
            cells.append(f"{row.mean:10.2f}" if row is not None else f"{'-':>10}")
        lines.append(f"{cohort:<8} {size:>8} " + "".join(cells))
    lines.append("(mean index; '-': no contact of the cohort has reached that day)")
    if report.late_events or report.skipped_samples:
        lines.append(
            f"out of order: {report.late_events:,} events older than a sample already taken, "
            f"{report.skipped_samples:,} samples skipped (docs/reports.md#exactness)"
        )
    return "\n".join(lines)
