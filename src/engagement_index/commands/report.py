"""``engagement-index report cohorts|compare``: offline reports from an event log.

See docs/reports.md. Both read a JSON Lines file of canonical events (``-``: standard input;
``.gz``: gzip) in file order through the replay, write their files into one directory and a
short summary to standard output. Bad lines are counted, written to ``rejects.jsonl`` and
summed up at the end; they never stop the run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TextIO

from engagement_index.core.dedupe import DEFAULT_WINDOW_MS
from engagement_index.core.model import DEFAULT_MODEL_PATH, load_model
from engagement_index.core.timestamps import parse_timestamp_ms
from engagement_index.replay import Reject
from engagement_index.reports.cohorts import (
    BY_FIRST_PURCHASE,
    COHORT_BY,
    DEFAULT_DAYS,
    MAX_DAYS,
    CohortSampler,
)
from engagement_index.reports.cohorts import summary_text as cohorts_summary
from engagement_index.reports.compare import DEFAULT_BINS, ModelComparison
from engagement_index.reports.compare import summary_text as compare_summary
from engagement_index.reports.render import (
    DEFAULT_MIN_CONTACTS,
    cohorts_html,
    cohorts_png,
    compare_html,
    compare_png,
)

HELP = "offline reports from an event log: index by cohort, or what a model change moves"
DEFAULT_OUT_PARENT = Path("var/reports")
PROGRESS_SECONDS = 1.0
_CHECK_EVERY = 4096  # lines between two looks at the clock

Writer = Callable[[Path], None]


def _time_arg(text: str) -> int:
    try:
        return parse_timestamp_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text!r}")
    return value


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of days, not {text!r}") from None
    if not 0 <= value <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_DAYS}], not {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be in [1, 1000], not {value}")
    return value


def _common(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "events", metavar="EVENTS", help="JSON Lines file of events ('-': stdin; .gz: gzip)"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help=f"directory for the files (created; files in it are replaced; default: "
        f"{DEFAULT_OUT_PARENT}/{name}-<UTC time, e.g. 20261201T233154Z>)",
    )
    parser.add_argument(
        "--until",
        metavar="TIME",
        type=_time_arg,
        help="RFC 3339 horizon: contacts are evaluated up to then, later events are bad lines "
        "(time_out_of_range) (default: the largest event timestamp)",
    )
    parser.add_argument(
        "--dedupe-window",
        metavar="SECONDS",
        type=_non_negative,
        default=DEFAULT_WINDOW_MS / 1000,
        help="as for 'engagement-index replay' (default 259200 = 72 h)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr (printed every ~1 s)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the sub-command's arguments."""
    sub = parser.add_subparsers(dest="report", metavar="REPORT", required=True)
    cohorts = sub.add_parser(
        "cohorts",
        help="mean and quartiles of the index by days since a cohort event, per monthly cohort",
        description="Mean and quartiles of the contact's index by days since its cohort event "
        "(first purchase or first event), one line per monthly cohort. Writes cohorts.csv, "
        "cohorts.png, cohorts.html and rejects.jsonl into --out.",
    )
    _common(cohorts, "cohorts")
    cohorts.add_argument(
        "--by",
        choices=COHORT_BY,
        default=BY_FIRST_PURCHASE,
        help="cohort event: the first setting of the model's 'customer' marker, or the "
        f"contact's first event (default: {BY_FIRST_PURCHASE})",
    )
    cohorts.add_argument(
        "--days",
        metavar="N",
        type=_days,
        default=DEFAULT_DAYS,
        help=f"sample days 0..N after the cohort event (default {DEFAULT_DAYS})",
    )
    cohorts.add_argument(
        "--min-contacts",
        metavar="N",
        type=_count,
        default=DEFAULT_MIN_CONTACTS,
        help="the picture leaves out the days of a cohort with fewer samples than this "
        f"(cohorts.csv has every day; default {DEFAULT_MIN_CONTACTS})",
    )
    cohorts.add_argument(
        "--model",
        metavar="FILE",
        type=Path,
        default=DEFAULT_MODEL_PATH,
        help="scoring model YAML (default: config/models/default.yaml)",
    )
    compare = sub.add_parser(
        "compare",
        help="how a model change moves contacts: stage matrix, index histograms, edges",
        description="Replay the events under model A and model B in one pass and compare: "
        "final stage of each contact under A vs B, index histograms at the horizon, "
        "transitions gained and lost per edge. Writes matrix.csv, edges.csv, histogram.csv, "
        "histogram.png, compare.html and rejects.jsonl into --out; a summary to stdout.",
    )
    _common(compare, "compare")
    compare.add_argument(
        "--model",
        metavar="FILE",
        type=Path,
        action="append",
        required=True,
        help="scoring model YAML: give it twice, model A (the current one) then model B",
    )
    compare.add_argument(
        "--lifecycle",
        metavar="NAME",
        help="the lifecycle of the stage matrix (default: model A's first)",
    )
    compare.add_argument(
        "--bins",
        metavar="N",
        type=_count,
        default=DEFAULT_BINS,
        help=f"histogram bins over [0, 100] (default {DEFAULT_BINS})",
    )


class _Source(Protocol):
    @property
    def lines(self) -> int: ...
    @property
    def contacts(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    def feed(self, raw: bytes | str) -> None: ...


class _Progress:
    """A progress line on stderr every ~1 s: overwritten on a terminal, appended elsewhere."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name = name
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.shown = False

    def tick(self, source: _Source, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS and not (final and self.shown):
            return
        self.last = now
        rate = source.lines / max(now - self.start, 1e-9)
        text = (
            f"report {self.name}: {source.lines:,} lines, {source.contacts:,} contacts, "
            f"{source.rejected:,} bad lines ({rate:,.0f} lines/s)"
        )
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{text}" + ("\n" if final else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()
        self.shown = True


def _read(stream: Iterable[bytes], source: _Source, progress: _Progress) -> None:
    feed = source.feed
    for count, line in enumerate(stream, 1):
        feed(line)
        if count % _CHECK_EVERY == 0:
            progress.tick(source)
    progress.tick(source, final=True)


def _open_events(events: str, stack: ExitStack) -> Iterable[bytes]:
    if events == "-":
        return sys.stdin.buffer
    if events.endswith(".gz"):
        return stack.enter_context(gzip.open(events, "rb"))
    return stack.enter_context(open(events, "rb"))


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        path: Path = args.out
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = DEFAULT_OUT_PARENT / f"{args.report}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class _RejectWriter:
    """Writes each bad line to ``rejects.jsonl`` (``model``: the side, in a comparison)."""

    def __init__(self) -> None:
        self.out: TextIO | None = None  # set once the output directory exists

    def __call__(self, item: Reject, side: str | None = None) -> None:
        assert self.out is not None
        record = item.to_json_dict()
        if side is not None:
            record = {"model": side, **record}
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _bad_lines_note(counts: dict[str, int], where: Path, label: str = "") -> str | None:
    total = sum(counts.values())
    if not total:
        return None
    parts = ", ".join(f"{k} {v:,}" for k, v in counts.items())
    return f"{label}{total:,} bad lines not scored ({parts}): {where}"


def _cohorts(args: argparse.Namespace, rejects: _RejectWriter) -> tuple[CohortSampler, Writer]:
    sampler = CohortSampler(
        load_model(args.model),
        by=args.by,
        days=args.days,
        until_ms=args.until,
        dedupe_window_ms=int(args.dedupe_window * 1000),
        on_reject=rejects,
    )

    def write(out: Path) -> None:
        report = sampler.finish()
        report.write_csv(out / "cohorts.csv")
        png = cohorts_png(report, args.min_contacts)
        (out / "cohorts.png").write_bytes(png)
        page = cohorts_html(report, png, args.events, args.min_contacts)
        (out / "cohorts.html").write_text(page, encoding="utf-8")
        print(cohorts_summary(report))
        print(f"wrote {out}/: cohorts.csv cohorts.png cohorts.html rejects.jsonl")
        note = _bad_lines_note(report.rejects_by_failure, out / "rejects.jsonl")
        if note is not None:
            print(note, file=sys.stderr)

    return sampler, write


def _compare(args: argparse.Namespace, rejects: _RejectWriter) -> tuple[ModelComparison, Writer]:
    path_a, path_b = args.model
    comparison = ModelComparison(
        load_model(path_a),
        load_model(path_b),
        names=(str(path_a), str(path_b)),
        lifecycle=args.lifecycle,
        until_ms=args.until,
        dedupe_window_ms=int(args.dedupe_window * 1000),
        bins=args.bins,
        on_reject=lambda side, item: rejects(item, side),
    )

    def write(out: Path) -> None:
        report = comparison.finish()
        report.write_matrix_csv(out / "matrix.csv")
        report.write_edges_csv(out / "edges.csv")
        report.write_histogram_csv(out / "histogram.csv")
        png = compare_png(report)
        (out / "histogram.png").write_bytes(png)
        page = compare_html(report, png, args.events)
        (out / "compare.html").write_text(page, encoding="utf-8")
        print(compare_summary(report))
        print(
            f"wrote {out}/: matrix.csv edges.csv histogram.csv histogram.png compare.html "
            "rejects.jsonl"
        )
        for side in (report.a, report.b):
            label = f"model {side.label.upper()}: "
            note = _bad_lines_note(side.rejects_by_failure, out / "rejects.jsonl", label)
            if note is not None:
                print(note, file=sys.stderr)

    return comparison, write


def run(args: argparse.Namespace) -> int:
    """Run the report; 0 unless the input cannot be read or an output written (2)."""
    if args.report == "compare" and len(args.model) != 2:
        print(
            "engagement-index report compare: give --model exactly twice (A, then B), "
            f"not {len(args.model)} time(s)",
            file=sys.stderr,
        )
        return 2
    rejects = _RejectWriter()
    # the models and options are checked before any file is opened or created
    source: _Source
    if args.report == "cohorts":
        source, write = _cohorts(args, rejects)
    else:
        source, write = _compare(args, rejects)
    with ExitStack() as stack:
        try:
            stream = _open_events(args.events, stack)
            out = _out_dir(args)
            rejects.out = stack.enter_context((out / "rejects.jsonl").open("w", encoding="utf-8"))
        except OSError as exc:
            print(f"engagement-index report: cannot open: {exc}", file=sys.stderr)
            return 2
        try:
            _read(stream, source, _Progress(args.report, not args.quiet))
            write(out)
        except (OSError, EOFError) as exc:
            print(f"engagement-index report: {exc}", file=sys.stderr)
            return 2
    return 0
