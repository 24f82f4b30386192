"""Pictures (PNG, matplotlib's Agg renderer) and self-contained HTML pages of the reports.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, no global
state, no GUI backend: PNGs are drawn by Agg). The HTML pages embed their PNG as base64 and
load nothing from the network. PNGs carry no timestamp or version metadata, so the same
report gives the same bytes on the same installation.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.reports.cohorts import BY_FIRST_PURCHASE, CohortReport
from engagement_index.reports.compare import ComparisonReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
COLOR_A = "#4C72B0"
COLOR_B = "#DD8452"
_EVENT_NAME = {BY_FIRST_PURCHASE: "first purchase"}
#: Days of a cohort with fewer samples than this are left out of the picture (not the CSV).
DEFAULT_MIN_CONTACTS = 10


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _horizon(ms: int | None) -> str:
    return ms_to_rfc3339(ms) if ms is not None else "-"


def _event_name(by: str) -> str:
    return _EVENT_NAME.get(by, "first event")


# ----------------------------------------------------------------------------- cohorts
def cohorts_png(report: CohortReport, min_contacts: int = DEFAULT_MIN_CONTACTS) -> bytes:
    """Mean (line), median (dashed) and quartile band of the index by day, per cohort, on the
    days with at least ``min_contacts`` samples; below, the contacts sampled per day."""
    from matplotlib import colormaps

    fig = _figure(10.5, 6.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    cohorts = list(report.sizes)
    cmap = colormaps["viridis"]
    highest = 0.0
    for i, cohort in enumerate(cohorts):
        rows = report.series(cohort)
        if not rows:
            continue
        color = cmap(0.5 if len(cohorts) == 1 else 0.9 * i / (len(cohorts) - 1))
        bottom.step(
            [r.day for r in rows], [r.contacts for r in rows], where="mid", color=color, lw=1.2
        )
        rows = [r for r in rows if r.contacts >= min_contacts]
        if not rows:
            continue
        days = [row.day for row in rows]
        top.fill_between(
            days, [r.q1 for r in rows], [r.q3 for r in rows], color=color, alpha=0.13, lw=0
        )
        top.plot(days, [r.median for r in rows], color=color, lw=0.9, ls="--")
        top.plot(
            days,
            [r.mean for r in rows],
            color=color,
            lw=2.0,
            label=f"{cohort} ({report.sizes[cohort]:,})",
        )
        highest = max(highest, max(r.q3 for r in rows), max(r.mean for r in rows))
    event = _event_name(report.by)
    top.set_title(
        f"Engagement index by days since {event}, cohorts by month of {event}\n"
        f"model {report.model_version}; line: mean, dashed: median, band: quartiles 1-3 "
        f"(days with at least {min_contacts} contacts)",
        fontsize=11,
    )
    top.set_ylabel("index")
    top.set_ylim(0, min(100.0, max(10.0, highest * 1.08)))
    top.grid(alpha=0.3)
    if top.get_legend_handles_labels()[0]:
        top.legend(
            title="cohort (contacts)",
            fontsize=8,
            title_fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    bottom.set_ylabel("contacts\nsampled")
    bottom.set_xlabel(f"days since {event} (horizon {_horizon(report.horizon_ms)})")
    bottom.set_xlim(0, max(report.days, 1))
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    return _png(fig)


# ----------------------------------------------------------------------------- compare
def compare_png(report: ComparisonReport, top_edges: int = 14) -> bytes:
    """Index histograms under A and B, the stage matrix, and transitions per edge."""
    from matplotlib import colormaps

    fig = _figure(16.0, 5.2)
    hist, grid, bars = fig.subplots(1, 3, width_ratios=[1.15, 1.0, 1.1])
    a, b = report.a, report.b
    edges = report.bin_edges()
    width = edges[0][1] - edges[0][0]
    lefts = [lo for lo, _ in edges]
    hist.bar(
        [x + width * 0.06 for x in lefts],
        a.histogram,
        width * 0.44,
        align="edge",
        color=COLOR_A,
        label=f"A {a.version}",
    )
    hist.bar(
        [x + width * 0.5 for x in lefts],
        b.histogram,
        width * 0.44,
        align="edge",
        color=COLOR_B,
        label=f"B {b.version}",
    )
    hist.set_xlim(0, 100)
    hist.set_xlabel(f"index at the horizon ({_horizon(report.horizon_ms)})")
    hist.set_ylabel("contacts")
    hist.set_title("Index under A and B", fontsize=11)
    hist.legend(fontsize=8)
    hist.grid(alpha=0.3, axis="y")

    rows, cols = report.stages_a, report.stages_b
    shares = []
    for sa in rows:
        counts = [report.matrix.get((sa, sb), 0) for sb in cols]
        total = sum(counts)
        shares.append([c / total if total else 0.0 for c in counts])
    grid.imshow(shares, cmap=colormaps["Blues"], vmin=0.0, vmax=1.0, aspect="auto")
    for i, sa in enumerate(rows):
        for j, sb in enumerate(cols):
            n = report.matrix.get((sa, sb), 0)
            weight = "bold" if sa != sb and n else "normal"
            grid.text(
                j,
                i,
                f"{n:,}",
                ha="center",
                va="center",
                fontsize=9,
                fontweight=weight,
                color="white" if shares[i][j] > 0.6 else "black",
            )
    grid.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=9)
    grid.set_yticks(range(len(rows)), rows, fontsize=9)
    grid.set_xlabel(f"final stage under B ({b.version})")
    grid.set_ylabel(f"final stage under A ({a.version})")
    grid.set_title(
        f"Final stage in lifecycle '{report.lifecycle}' ({report.moved:,} moved)", fontsize=11
    )

    shown = sorted(report.edges, key=lambda r: max(r.transitions_a, r.transitions_b), reverse=True)[
        :top_edges
    ]
    shown = [row for row in shown if row.transitions_a or row.transitions_b]
    shown.reverse()
    ys = list(range(len(shown)))
    bars.barh(
        [y + 0.2 for y in ys], [r.transitions_a for r in shown], 0.4, color=COLOR_A, label="A"
    )
    bars.barh(
        [y - 0.2 for y in ys], [r.transitions_b for r in shown], 0.4, color=COLOR_B, label="B"
    )
    bars.set_yticks(ys, [f"{r.lifecycle}/{r.rule_id}" for r in shown], fontsize=8)
    for y, row in zip(ys, shown, strict=True):
        if row.change:
            end = max(row.transitions_a, row.transitions_b)
            bars.text(end, y, f" {row.change:+,}", va="center", fontsize=8)
    counts = [n for r in shown for n in (r.transitions_a, r.transitions_b) if n]
    if counts and max(counts) > 50 * min(counts):
        bars.set_xscale("log")
        bars.set_xlabel("transitions (log scale)")
    else:
        bars.set_xlabel("transitions")
    bars.set_title("Transitions per edge (label: B - A)", fontsize=11)
    bars.legend(fontsize=8, loc="lower right")
    bars.grid(alpha=0.3, axis="x")
    bars.margins(x=0.15)
    return _png(fig)


# ----------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #ddd}
.small{color:#666;font-size:.85em}code{background:#f3f3f3;padding:0 .2em}
div.cell{margin:-.25em -.6em;padding:.25em .6em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: Iterable[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[str]], left: int = 1) -> str:
    """Cells are HTML already; the first ``left`` columns are left-aligned."""

    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""

    out = ["<table>"]
    if header is not None:
        out.append("<tr>" + "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header)))
        out[-1] += "</tr>"
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _rejects_html(rejects: dict[str, int]) -> str:
    if not rejects:
        return "0"
    total = sum(rejects.values())
    return f"{total:,} (" + ", ".join(f"{_e(k)} {v:,}" for k, v in rejects.items()) + ")"


def cohorts_html(
    report: CohortReport, png: bytes, source: str, min_contacts: int = DEFAULT_MIN_CONTACTS
) -> str:
    """The cohort page: picture, the mean and quartiles at a few days, inputs."""
    event = _event_name(report.by)
    title = f"Cohorts by month of {event}"
    days_shown = [d for d in (0, 7, 14, 30, 60, 90) if d <= report.days]
    if report.days not in days_shown:
        days_shown.append(report.days)
    by_key = {(row.cohort, row.day): row for row in report.rows}
    rows = []
    for cohort, size in report.sizes.items():
        cells = [_e(cohort), f"{size:,}"]
        for d in days_shown:
            row = by_key.get((cohort, d))
            if row is None:
                cells.append("-")
            else:
                cells.append(
                    f"<b>{row.mean:.1f}</b><br><span class=small>{row.q1:.1f} / "
                    f"{row.median:.1f} / {row.q3:.1f}<br>n={row.contacts:,}</span>"
                )
        rows.append(cells)
    stats = report.stats
    inputs = [
        ("events file", f"<code>{_e(source)}</code>"),
        ("model", _e(report.model_version)),
        ("horizon", _e(_horizon(report.horizon_ms))),
        ("lines read", f"{stats.lines:,}"),
        ("events applied", f"{stats.applied:,}"),
        ("duplicates ignored", f"{stats.duplicates:,}"),
        ("bad lines (not scored)", _rejects_html(report.rejects_by_failure)),
        ("contacts", f"{report.contacts:,}"),
        ("contacts in cohorts", f"{sum(report.sizes.values()):,}"),
        ("samples", f"{report.samples:,}"),
        ("events older than a sample already taken", f"{report.late_events:,}"),
        ("samples skipped (before the contact's clock)", f"{report.skipped_samples:,}"),
    ]
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>Each contact joins the cohort of the UTC month of its {_e(event)} and is sampled "
        f"every day after it, up to {report.days} days or the horizon: its engagement index at "
        "that instant, exactly as the worker reports it (an offline replay of the event log). "
        "Line: mean; dashed: median; band: first to third quartile, on the days with at "
        f"least {min_contacts} contacts. Below: how many contacts of each cohort have reached "
        "that day.</p>",
        _img(png, title),
        "<h2>Index at a few days</h2>",
        "<p class=small>Mean in bold; below it quartile 1 / median / quartile 3 and the "
        "number of contacts sampled. Quartiles: linear between the closest ranks (type 7). "
        "Every day is in <code>cohorts.csv</code>.</p>",
        _table(["cohort", "contacts", *(f"day {d}" for d in days_shown)], rows),
        "<h2>Input</h2>",
        _table(None, ([k, v] for k, v in inputs)),
        "<p class=small>Definitions and exactness: docs/reports.md. Numbers: "
        '<a href="cohorts.csv">cohorts.csv</a>; bad lines: '
        '<a href="rejects.jsonl">rejects.jsonl</a>.</p>',
    ]
    return _page(title, body)


def compare_html(report: ComparisonReport, png: bytes, source: str) -> str:
    """The compare page: summary, picture, stage matrix, edges, index statistics, inputs."""
    a, b = report.a, report.b
    title = f"Model comparison: {a.version} (A) vs {b.version} (B)"
    share = 100.0 * report.moved / report.contacts if report.contacts else 0.0
    matrix_rows = []
    for sa in report.stages_a:
        counts = [report.matrix.get((sa, sb), 0) for sb in report.stages_b]
        total = sum(counts)
        cells = [f"<b>{_e(sa)}</b>"]
        for sb, n in zip(report.stages_b, counts, strict=True):
            alpha = 0.08 + 0.6 * n / total if total and n else 0.0
            text = f"<b>{n:,}</b>" if sa != sb and n else f"{n:,}"
            cells.append(
                f'<div class=cell style="background:rgba(76,114,176,{alpha:.2f})">{text}</div>'
            )
        cells.append(f"{total:,}")
        matrix_rows.append(cells)
    totals = [
        sum(report.matrix.get((sa, sb), 0) for sa in report.stages_a) for sb in report.stages_b
    ]
    matrix_rows.append(["<b>total</b>", *(f"{n:,}" for n in totals), f"{sum(totals):,}"])
    edge_rows = []
    for row in report.edges:
        edge_rows.append(
            [
                _e(row.lifecycle),
                _e(row.rule_id),
                _e(row.edge_a or "-"),
                _e(row.edge_b or "-"),
                f"{row.transitions_a:,}",
                f"{row.transitions_b:,}",
                f"<b>{row.change:+,}</b>" if row.change else "0",
                f"{row.contacts_a:,}",
                f"{row.contacts_b:,}",
                f"{row.contacts_gained:,}",
                f"{row.contacts_lost:,}",
            ]
        )
    index_rows = [
        [
            f"{s.label.upper()}",
            _e(s.version),
            f"{s.contacts:,}",
            f"{s.index_mean:.2f}",
            f"{s.index_q1:.2f}",
            f"{s.index_median:.2f}",
            f"{s.index_q3:.2f}",
            f"{s.transitions:,}",
        ]
        for s in (a, b)
    ]
    inputs = [
        ("events file", f"<code>{_e(source)}</code>"),
        ("model A", f"<code>{_e(a.name)}</code> ({_e(a.version)})"),
        ("model B", f"<code>{_e(b.name)}</code> ({_e(b.version)})"),
        ("horizon", _e(_horizon(report.horizon_ms))),
        ("lines read", f"{a.stats.lines:,}"),
        ("events applied", f"A {a.stats.applied:,}, B {b.stats.applied:,}"),
        ("duplicates ignored", f"A {a.stats.duplicates:,}, B {b.stats.duplicates:,}"),
        ("bad lines under A", _rejects_html(a.rejects_by_failure)),
        ("bad lines under B", _rejects_html(b.rejects_by_failure)),
    ]
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>Both models replayed the same event log; every contact evaluated at the horizon "
        f"{_e(_horizon(report.horizon_ms))}. <b>{report.moved:,}</b> of {report.contacts:,} "
        f"contacts ({share:.1f}%) end in another stage of lifecycle "
        f"<code>{_e(report.lifecycle)}</code> under B; transitions: A {a.transitions:,}, "
        f"B {b.transitions:,}.</p>",
        _img(png, title),
        f"<h2>Final stage in lifecycle <code>{_e(report.lifecycle)}</code>: A (rows) by B "
        "(columns)</h2>",
        _table(["A \\ B", *(_e(s) for s in report.stages_b), "total"], matrix_rows),
        "<h2>Transitions per edge</h2>",
        "<p class=small>gained: contacts that took the edge under B and never under A; lost: "
        "under A and never under B. <code>(new) -&gt; stage</code>: an initial entry "
        "(first_seen).</p>",
        _table(
            [
                "lifecycle",
                "rule_id",
                "edge in A",
                "edge in B",
                "A",
                "B",
                "B - A",
                "contacts A",
                "contacts B",
                "gained",
                "lost",
            ],
            edge_rows,
            left=4,
        ),
        "<h2>Index at the horizon</h2>",
        _table(
            [
                "model",
                "version",
                "contacts",
                "mean",
                "quartile 1",
                "median",
                "quartile 3",
                "transitions",
            ],
            index_rows,
            left=2,
        ),
        "<h2>Input</h2>",
        _table(None, ([k, v] for k, v in inputs)),
        '<p class=small>Definitions: docs/reports.md. Tables: <a href="matrix.csv">matrix.csv'
        '</a>, <a href="edges.csv">edges.csv</a>, <a href="histogram.csv">histogram.csv</a>; '
        'bad lines: <a href="rejects.jsonl">rejects.jsonl</a>.</p>',
    ]
    return _page(title, body)
