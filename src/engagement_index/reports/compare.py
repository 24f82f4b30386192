"""Compare report: how a change of model moves contacts, replayed on one event log.

Every line goes to two :class:`~engagement_index.replay.Replayer`\\ s, one per model, in one
pass; both then emit their time-driven changes up to one horizon (``--until``, or the largest
event timestamp either applied) and the contacts are evaluated there. So model A's side is
exactly ``engagement-index replay --model A`` and model B's ``--model B``. Out come:

* the **stage matrix**: contacts by their final stage in one lifecycle (default: each model's
  first) under A (rows) and B (columns); ``(none)`` for a contact that only one model scores;
* the **index histograms** at the horizon under both (the contact's index);
* the **edges**: transitions per ``(lifecycle, rule_id)`` under A and B, and the contacts that
  took an edge under B and never under A (gained) or under A and never under B (lost).
"""

from __future__ import annotations

import csv
import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engagement_index.core.compiled import CompiledModel
from engagement_index.core.dedupe import DEFAULT_WINDOW_MS
from engagement_index.core.model import ScoringModel
from engagement_index.core.records import ContactSnapshot, Transition
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.errors import ConfigError
from engagement_index.replay import Reject, Replayer, ReplayStats
from engagement_index.reports.cohorts import quantile

NONE = "(none)"
DEFAULT_BINS = 20
SIDES = ("a", "b")
EDGE_COLUMNS = (
    "lifecycle",
    "rule_id",
    "edge_a",
    "edge_b",
    "transitions_a",
    "transitions_b",
    "change",
    "contacts_a",
    "contacts_b",
    "contacts_gained",
    "contacts_lost",
)
HISTOGRAM_COLUMNS = ("index_from", "index_to", "contacts_a", "contacts_b")

Edge = tuple[str, str]  # (lifecycle, rule_id); rule_id "(model_change)" for a null rule id


def declared_edges(cm: CompiledModel) -> dict[Edge, str]:
    """Every ``initial`` entry and edge of a model, in declared order: ``from -> to``."""
    out: dict[Edge, str] = {}
    for lc in cm.lifecycles:
        for entry in lc.initial:
            out.setdefault((lc.name, entry.rule_id), f"(new) -> {lc.stages[entry.stage].name}")
        sources: dict[str, list[str]] = {}
        targets: dict[str, str] = {}
        for stage in lc.stages:
            for edge in stage.edges:
                sources.setdefault(edge.rule_id, []).append(stage.name)
                targets[edge.rule_id] = lc.stages[edge.to].name
        for rule_id, froms in sources.items():
            out[(lc.name, rule_id)] = f"{', '.join(froms)} -> {targets[rule_id]}"
    return out


@dataclass(frozen=True, slots=True)
class EdgeRow:
    """One edge's transitions and contacts under both models."""

    lifecycle: str
    rule_id: str
    edge_a: str
    edge_b: str
    transitions_a: int
    transitions_b: int
    contacts_a: int
    contacts_b: int
    contacts_gained: int
    contacts_lost: int

    @property
    def change(self) -> int:
        """Transitions under B minus under A."""
        return self.transitions_b - self.transitions_a

    def csv_row(self) -> list[object]:
        """The row of ``edges.csv``."""
        return [
            self.lifecycle,
            self.rule_id,
            self.edge_a,
            self.edge_b,
            self.transitions_a,
            self.transitions_b,
            self.change,
            self.contacts_a,
            self.contacts_b,
            self.contacts_gained,
            self.contacts_lost,
        ]


@dataclass(frozen=True)
class Side:
    """One model's part of the comparison."""

    label: str  # "a" or "b"
    name: str  # the model file as given
    version: str
    stats: ReplayStats
    rejects_by_failure: dict[str, int]
    contacts: int
    transitions: int
    histogram: list[int]
    index_mean: float
    index_q1: float
    index_median: float
    index_q3: float


@dataclass
class ComparisonReport:
    """What :meth:`ModelComparison.finish` computed."""

    lifecycle: str
    horizon_ms: int | None
    a: Side
    b: Side
    stages_a: list[str]  # matrix rows
    stages_b: list[str]  # matrix columns
    matrix: dict[tuple[str, str], int]
    edges: list[EdgeRow]
    bins: int
    contacts: int  # contacts with a state under either model

    @property
    def moved(self) -> int:
        """Contacts whose final stage differs (by name) between A and B."""
        return sum(n for (sa, sb), n in self.matrix.items() if sa != sb)

    def bin_edges(self) -> list[tuple[float, float]]:
        """The index range of each histogram bin (the last one includes 100)."""
        width = 100.0 / self.bins
        return [(i * width, (i + 1) * width) for i in range(self.bins)]

    def write_matrix_csv(self, path: Path) -> None:
        """``matrix.csv``: a row per stage under A, a column per stage under B, and totals."""
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow([f"{self.lifecycle}: a \\ b", *self.stages_b, "total"])
            for sa in self.stages_a:
                cells = [self.matrix.get((sa, sb), 0) for sb in self.stages_b]
                writer.writerow([sa, *cells, sum(cells)])
            totals = [
                sum(self.matrix.get((sa, sb), 0) for sa in self.stages_a) for sb in self.stages_b
            ]
            writer.writerow(["total", *totals, sum(totals)])

    def write_edges_csv(self, path: Path) -> None:
        """``edges.csv``: one row per edge of either model (or taken under either)."""
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(EDGE_COLUMNS)
            for row in self.edges:
                writer.writerow(row.csv_row())

    def write_histogram_csv(self, path: Path) -> None:
        """``histogram.csv``: contacts per index bin at the horizon under A and B."""
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(HISTOGRAM_COLUMNS)
            for (lo, hi), na, nb in zip(
                self.bin_edges(), self.a.histogram, self.b.histogram, strict=True
            ):
                writer.writerow([repr(lo), repr(hi), na, nb])


@dataclass
class _Tally:
    name: str
    replayer: Replayer
    rejects: Counter[str] = field(default_factory=Counter)
    per_edge: Counter[int] = field(default_factory=Counter)
    #: contact -> bit mask of the edges it took
    taken: dict[tuple[str, str], int] = field(default_factory=dict)
    transitions: int = 0


class ModelComparison:
    """Feed raw event lines in file order to both models, then :meth:`finish`.

    ``on_reject(side, reject)`` receives each line a model rejected (side ``"a"`` or ``"b"``);
    they are counted in any case. ``lifecycle``: the lifecycle of the stage matrix, which both
    models must have (default: each model's first, whatever their names).
    """

    def __init__(
        self,
        model_a: ScoringModel,
        model_b: ScoringModel,
        *,
        names: tuple[str, str] = ("a", "b"),
        lifecycle: str | None = None,
        until_ms: int | None = None,
        max_bytes: int | None = None,
        dedupe_window_ms: int = DEFAULT_WINDOW_MS,
        bins: int = DEFAULT_BINS,
        on_reject: Callable[[str, Reject], None] | None = None,
    ) -> None:
        if not 1 <= bins <= 1000:
            raise ValueError(f"bins: {bins} is not in [1, 1000]")
        cms = (model_a.compiled, model_b.compiled)
        if lifecycle is None:
            chosen = (cms[0].lifecycles[0].name, cms[1].lifecycles[0].name)
        else:
            chosen = (lifecycle, lifecycle)
            for label, cm in zip(SIDES, cms, strict=True):
                names_here = [lc.name for lc in cm.lifecycles]
                if lifecycle not in names_here:
                    raise ConfigError(
                        f"lifecycle {lifecycle!r} is not in model {label.upper()} "
                        f"({cm.version!r}: {', '.join(names_here)}); choose one with --lifecycle"
                    )
        #: the lifecycle of the stage matrix under A and under B
        self.lifecycles = chosen
        self.lifecycle = chosen[0] if chosen[0] == chosen[1] else f"{chosen[0]} / {chosen[1]}"
        self._cms = cms
        self._first_of = tuple(
            cm.lifecycles[0].name == name for cm, name in zip(cms, chosen, strict=True)
        )
        self.bins = bins
        self.until_ms = until_ms
        self._on_reject = on_reject
        self._edge_bit: dict[Edge, int] = {}
        self._edges: list[Edge] = []
        self._described = [declared_edges(cm) for cm in cms]
        for described in self._described:
            for edge in described:
                self._bit(edge)
        self._tallies: list[_Tally] = []
        for label, model, name in zip(SIDES, (model_a, model_b), names, strict=True):
            rejects: Counter[str] = Counter()
            replayer = Replayer(
                model,
                until_ms=until_ms,
                max_bytes=max_bytes,
                on_reject=self._sink(label, rejects),
                dedupe_window_ms=dedupe_window_ms,
            )
            self._tallies.append(_Tally(name, replayer, rejects))

    def _sink(self, label: str, rejects: Counter[str]) -> Callable[[Reject], None]:
        def on_reject(item: Reject) -> None:
            rejects[str(item.failure)] += 1
            if self._on_reject is not None:
                self._on_reject(label, item)

        return on_reject

    def _bit(self, edge: Edge) -> int:
        bit = self._edge_bit.get(edge)
        if bit is None:
            bit = self._edge_bit[edge] = len(self._edges)
            self._edges.append(edge)
        return bit

    # ------------------------------------------------------------------ counters
    @property
    def lines(self) -> int:
        """Lines fed so far."""
        return self._tallies[0].replayer.stats.lines

    @property
    def contacts(self) -> int:
        """Contacts with a state under model A so far."""
        return len(self._tallies[0].replayer.states)

    @property
    def rejected(self) -> int:
        """Lines rejected by either model so far (a line rejected by both counts twice)."""
        return sum(t.replayer.stats.rejected for t in self._tallies)

    # ------------------------------------------------------------------ the pass
    def _count(self, tally: _Tally, transitions: Iterable[Transition]) -> None:
        taken = tally.taken
        for t in transitions:
            bit = self._bit((t.lifecycle, t.rule_id or "(model_change)"))
            tally.per_edge[bit] += 1
            tally.transitions += 1
            key = (t.tenant, t.contact_id)
            taken[key] = taken.get(key, 0) | 1 << bit

    def feed(self, raw: bytes | str) -> None:
        """Apply one line under both models."""
        for tally in self._tallies:
            transitions = tally.replayer.feed(raw)
            if transitions:
                self._count(tally, transitions)

    def horizon(self) -> int | None:
        """``until_ms``, or the largest event timestamp either model applied."""
        if self.until_ms is not None:
            return self.until_ms
        seen = [t.replayer.max_event_ms for t in self._tallies]
        known = [ms for ms in seen if ms is not None]
        return max(known) if known else None

    def _stage(self, side: int, snapshot: ContactSnapshot) -> str:
        if self._first_of[side]:
            return snapshot.stage
        return snapshot.lifecycles[self.lifecycles[side]]["stage"]

    def finish(self) -> ComparisonReport:
        """Time-driven changes up to the horizon, then the matrix, histograms and edges."""
        horizon = self.horizon()
        if horizon is not None:
            for tally in self._tallies:
                self._count(tally, tally.replayer.finish(horizon))
        finals: list[dict[tuple[str, str], tuple[str, float]]] = []
        for side, tally in enumerate(self._tallies):
            finals.append(
                {
                    (s.tenant, s.contact_id): (self._stage(side, s), s.index)
                    for s in tally.replayer.snapshots(horizon)
                }
            )
        keys = sorted(finals[0].keys() | finals[1].keys())
        matrix: Counter[tuple[str, str]] = Counter()
        for key in keys:
            sa = finals[0].get(key, (NONE, 0.0))[0]
            sb = finals[1].get(key, (NONE, 0.0))[0]
            matrix[(sa, sb)] += 1
        stage_lists: list[list[str]] = []
        for side, cm in enumerate(self._cms):
            lc = next(lc for lc in cm.lifecycles if lc.name == self.lifecycles[side])
            names = [stage.name for stage in lc.stages]
            if any(pair[side] == NONE for pair in matrix):
                names.append(NONE)
            stage_lists.append(names)
        sides = [
            self._side(label, tally, [index for _, index in final.values()])
            for label, tally, final in zip(SIDES, self._tallies, finals, strict=True)
        ]
        return ComparisonReport(
            lifecycle=self.lifecycle,
            horizon_ms=horizon,
            a=sides[0],
            b=sides[1],
            stages_a=stage_lists[0],
            stages_b=stage_lists[1],
            matrix=dict(matrix),
            edges=self._edge_rows(),
            bins=self.bins,
            contacts=len(keys),
        )

    def _side(self, label: str, tally: _Tally, indices: list[float]) -> Side:
        histogram = [0] * self.bins
        for index in indices:
            histogram[min(int(index * self.bins / 100.0), self.bins - 1)] += 1
        ordered = sorted(array("d", indices))
        nan = math.nan
        return Side(
            label=label,
            name=tally.name,
            version=self._cms[SIDES.index(label)].version,
            stats=tally.replayer.stats,
            rejects_by_failure=dict(sorted(tally.rejects.items())),
            contacts=len(indices),
            transitions=tally.transitions,
            histogram=histogram,
            index_mean=math.fsum(ordered) / len(ordered) if ordered else nan,
            index_q1=quantile(ordered, 0.25) if ordered else nan,
            index_median=quantile(ordered, 0.5) if ordered else nan,
            index_q3=quantile(ordered, 0.75) if ordered else nan,
        )

    def _edge_rows(self) -> list[EdgeRow]:
        ta, tb = self._tallies
        n = len(self._edges)
        contacts = [[0] * n, [0] * n]
        gained = [0] * n
        lost = [0] * n
        for key in ta.taken.keys() | tb.taken.keys():
            ma = ta.taken.get(key, 0)
            mb = tb.taken.get(key, 0)
            for side, mask in enumerate((ma, mb)):
                for bit in _bits(mask):
                    contacts[side][bit] += 1
            for bit in _bits(mb & ~ma):
                gained[bit] += 1
            for bit in _bits(ma & ~mb):
                lost[bit] += 1
        rows = []
        for bit, edge in enumerate(self._edges):
            rows.append(
                EdgeRow(
                    lifecycle=edge[0],
                    rule_id=edge[1],
                    edge_a=self._described[0].get(edge, ""),
                    edge_b=self._described[1].get(edge, ""),
                    transitions_a=ta.per_edge[bit],
                    transitions_b=tb.per_edge[bit],
                    contacts_a=contacts[0][bit],
                    contacts_b=contacts[1][bit],
                    contacts_gained=gained[bit],
                    contacts_lost=lost[bit],
                )
            )
        return rows


def _bits(mask: int) -> Iterable[int]:
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _rejects_text(side: Side) -> str:
    if not side.rejects_by_failure:
        return "0"
    parts = ", ".join(f"{k} {v:,}" for k, v in side.rejects_by_failure.items())
    return f"{side.stats.rejected:,} ({parts})"


def summary_text(report: ComparisonReport, top: int = 10) -> str:
    """A short plain-text summary for the terminal."""
    a, b = report.a, report.b
    horizon = ms_to_rfc3339(report.horizon_ms) if report.horizon_ms is not None else "-"
    lines = [
        f"A: {a.name} ({a.version})   B: {b.name} ({b.version})   horizon {horizon}",
        f"{a.stats.lines:,} lines; bad lines: A {_rejects_text(a)}, B {_rejects_text(b)}",
    ]
    moved = report.moved
    share = 100.0 * moved / report.contacts if report.contacts else 0.0
    lines.append(
        f"{report.contacts:,} contacts; {moved:,} ({share:.1f}%) end in another stage of "
        f"lifecycle '{report.lifecycle}' under B"
    )
    changes = sorted(
        ((n, sa, sb) for (sa, sb), n in report.matrix.items() if sa != sb), reverse=True
    )
    for n, sa, sb in changes[:top]:
        lines.append(f"  {sa} -> {sb}: {n:,}")
    if len(changes) > top:
        lines.append(f"  ... {len(changes) - top} more (matrix.csv)")
    lines.append(
        f"index at the horizon: mean A {a.index_mean:.2f}, B {b.index_mean:.2f}; "
        f"median A {a.index_median:.2f}, B {b.index_median:.2f}"
    )
    lines.append(f"transitions: A {a.transitions:,}, B {b.transitions:,}")
    changed = [
        row for row in report.edges if row.change or row.contacts_gained or row.contacts_lost
    ]
    changed.sort(key=lambda row: -abs(row.change))
    for row in changed[:top]:
        lines.append(
            f"  {row.lifecycle}/{row.rule_id}: {row.transitions_a:,} -> {row.transitions_b:,} "
            f"({row.change:+,}); contacts +{row.contacts_gained:,} -{row.contacts_lost:,}"
        )
    if not changed:
        lines.append("  every edge fires the same number of times for the same contacts")
    elif len(changed) > top:
        lines.append(f"  ... {len(changed) - top} more (edges.csv)")
    return "\n".join(lines)
