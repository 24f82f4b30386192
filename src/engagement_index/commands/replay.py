"""``engagement-index replay``: score a JSON Lines file of events offline."""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from engagement_index.core.compiled import CompiledModel
from engagement_index.core.dedupe import DEFAULT_WINDOW_MS
from engagement_index.core.model import DEFAULT_MODEL_PATH, load_model
from engagement_index.core.records import ContactSnapshot
from engagement_index.core.timestamps import MS_PER_DAY, ms_to_rfc3339, parse_timestamp_ms
from engagement_index.replay import DailySeries, Reject, Replayer, ReplayStats

_PROGRESS_MIN_BYTES = 1 << 20

HELP = "replay a JSON Lines file of canonical events; print the stage transitions"


def _time_arg(text: str) -> int:
    try:
        return parse_timestamp_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _day_arg(text: str) -> int:
    """A date (YYYY-MM-DD) or an RFC 3339 time, rounded down to its UTC day -> day number."""
    try:
        if len(text) == 10:
            text += "T00:00:00Z"
        return parse_timestamp_ms(text) // MS_PER_DAY
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: not a date YYYY-MM-DD: {exc}") from None


def _step_arg(text: str) -> int:
    days = text[:-1] if text.endswith("d") else ""
    if not days.isdigit() or not 1 <= int(days) <= 9999:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of days like 1d or 7d")
    return int(days)


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the sub-command's arguments."""
    parser.add_argument("events", metavar="EVENTS", help="JSON Lines file of events, or '-'")
    parser.add_argument(
        "--model",
        metavar="FILE",
        type=Path,
        default=DEFAULT_MODEL_PATH,
        help="scoring model YAML (default: config/models/default.yaml)",
    )
    parser.add_argument(
        "--until",
        metavar="TIME",
        type=_time_arg,
        help="RFC 3339 horizon: decay transitions due by then are included, states are "
        "evaluated then, later events are rejected (default: the largest event timestamp)",
    )
    parser.add_argument(
        "--blocked-id",
        metavar="ID",
        action="append",
        default=[],
        help="an id that never merges in identify/alias records, besides null, undefined, "
        "anonymous, 0 and empty (repeatable; as the worker's "
        "ENGAGEMENT_INDEX_IDENTITY_BLOCKED_IDS)",
    )
    parser.add_argument(
        "--dedupe-window",
        metavar="SECONDS",
        type=_non_negative,
        default=DEFAULT_WINDOW_MS / 1000,
        help="a re-sent event id is ignored when its applied copy arrived at most this long "
        "before (arrival: the largest event timestamp read so far; default 259200 = 72 h, "
        "as the worker's ENGAGEMENT_INDEX_DEDUPE_WINDOW_SECONDS)",
    )
    parser.add_argument(
        "--states-out", metavar="FILE", type=Path, help="write one JSON line per contact"
    )
    parser.add_argument(
        "--daily-out",
        metavar="FILE",
        type=Path,
        help="write every contact's score history here: one row per contact and UTC midnight "
        "(tenant, contact_id, at, index, the stage of each lifecycle, each component score), "
        "exactly as the worker's GET .../history; Parquet if FILE ends in .parquet (needs "
        "pyarrow), else CSV",
    )
    parser.add_argument(
        "--daily-from",
        metavar="DATE",
        type=_day_arg,
        help="first midnight of --daily-out (default: each contact's first midnight)",
    )
    parser.add_argument(
        "--daily-to",
        metavar="DATE",
        type=_day_arg,
        help="last midnight of --daily-out (default: the horizon's)",
    )
    parser.add_argument(
        "--daily-step",
        metavar="DAYS",
        type=_step_arg,
        default=1,
        help="days between two points of --daily-out, like 1d (default) or 7d",
    )
    parser.add_argument(
        "--account-changes-out",
        metavar="FILE",
        type=Path,
        help="write the account transitions (docs/models.md#accounts) as JSON lines here",
    )
    parser.add_argument(
        "--accounts-out",
        metavar="FILE",
        type=Path,
        help="write one JSON line per account, evaluated at the horizon",
    )
    parser.add_argument(
        "--rejects-out",
        metavar="FILE",
        type=Path,
        help="write rejected lines as JSON lines here (default: stderr)",
    )


class _Progress:
    """A one-line progress indicator on a terminal's stderr."""

    def __init__(self, total_bytes: int | None) -> None:
        self.total = total_bytes
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, lines: int, done_bytes: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        rate = lines / max(now - self.start, 1e-9)
        if self.total:
            pct = min(100.0, 100.0 * done_bytes / self.total)
            width = 30
            filled = int(width * pct / 100)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r[{bar}] {pct:5.1f}% {lines:,} lines {rate:,.0f}/s"
        else:
            text = f"\r{lines:,} lines {rate:,.0f}/s"
        sys.stderr.write(text + ("\n" if final else ""))
        sys.stderr.flush()


#: Bytes read from the events file at a time.
READ_CHUNK = 1 << 20


def _chunks(stream: BinaryIO, progress: _Progress | None, stats: ReplayStats) -> Iterator[bytes]:
    """The bytes of ``stream`` in chunks of :data:`READ_CHUNK` (progress after each)."""
    done = 0
    while chunk := stream.read(READ_CHUNK):
        if progress is not None:
            progress.update(stats.lines, done)
        done += len(chunk)
        yield chunk
    if progress is not None:
        progress.update(stats.lines, done, final=True)


class DailyWriter:
    """The rows of ``--daily-out``: CSV, or Parquet (row groups of ``BATCH`` rows)."""

    BATCH = 65_536

    def __init__(self, path: Path, model: CompiledModel) -> None:
        self.lifecycles = [lc.name for lc in model.lifecycles]
        self.components = list(model.names)
        self.columns = column_names(self.lifecycles, self.components)
        self.rows = 0
        self._parquet: Any = None
        self._pending: list[tuple[Any, ...]] = []
        if path.suffix.lower() == ".parquet":
            try:
                pa = importlib.import_module("pyarrow")
                pq = importlib.import_module("pyarrow.parquet")
            except ImportError:
                raise DailyOutError(
                    f"--daily-out {path}: writing Parquet needs pyarrow (pip install pyarrow); "
                    "a file name not ending in .parquet is written as CSV without it"
                ) from None
            fields = [
                pa.field("tenant", pa.string()),
                pa.field("contact_id", pa.string()),
                pa.field("at", pa.timestamp("ms", tz="UTC")),
                pa.field("index", pa.float64()),
                *(pa.field(c, pa.string()) for c in self.columns[4 : 4 + len(self.lifecycles)]),
                *(pa.field(c, pa.float64()) for c in self.columns[4 + len(self.lifecycles) :]),
            ]
            self._pa = pa
            self._schema = pa.schema(fields)
            self._parquet = pq.ParquetWriter(str(path), self._schema)
            self._csv: Any = None
            self._file: Any = None
        else:
            self._file = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
            self._csv = csv.writer(self._file, lineterminator="\n")
            self._csv.writerow(self.columns)

    def point(self, key: tuple[str, str], day: int, snapshot: ContactSnapshot) -> None:
        """One row: the contact's point at midnight ``day``."""
        stages = snapshot.lifecycles
        scores = snapshot.components
        self.rows += 1
        if self._parquet is None:
            self._csv.writerow(
                [
                    key[0],
                    key[1],
                    ms_to_rfc3339(day * MS_PER_DAY),
                    repr(snapshot.index),
                    *(stages[name]["stage"] for name in self.lifecycles),
                    *(repr(scores[name]) for name in self.components),
                ]
            )
            return
        self._pending.append(
            (
                key[0],
                key[1],
                day * MS_PER_DAY,
                snapshot.index,
                *(stages[name]["stage"] for name in self.lifecycles),
                *(scores[name] for name in self.components),
            )
        )
        if len(self._pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        columns = list(zip(*self._pending, strict=True))
        table = self._pa.Table.from_arrays(
            [
                self._pa.array(list(c), type=f.type)
                for c, f in zip(columns, self._schema, strict=True)
            ],
            schema=self._schema,
        )
        self._parquet.write_table(table)
        self._pending.clear()

    def close(self) -> None:
        if self._parquet is not None:
            self._flush()
            self._parquet.close()
        else:
            self._file.close()


class DailyOutError(Exception):
    """``--daily-out`` cannot be written as asked."""


def column_names(lifecycles: list[str], components: list[str]) -> list[str]:
    """The header of ``--daily-out``: fixed columns, the lifecycles, the components (a name
    already taken gets a ``stage.`` or ``component.`` prefix)."""
    columns = ["tenant", "contact_id", "at", "index"]
    for prefix, names in (("stage.", lifecycles), ("component.", components)):
        for name in names:
            columns.append(prefix + name if name in columns else name)
    return columns


def run(args: argparse.Namespace) -> int:
    """Run the replay; 0 unless the input (or an output) cannot be opened or read."""
    model = load_model(args.model)
    with ExitStack() as stack:
        try:
            if args.events == "-":
                source: BinaryIO = sys.stdin.buffer
                size = None
            else:
                source = stack.enter_context(open(args.events, "rb"))
                size = os.fstat(source.fileno()).st_size
            rejects_out: TextIO = (
                stack.enter_context(open(args.rejects_out, "w", encoding="utf-8"))
                if args.rejects_out is not None
                else sys.stderr
            )
            states_out = (
                stack.enter_context(open(args.states_out, "wb"))
                if args.states_out is not None
                else None
            )
            daily_out = (
                DailyWriter(args.daily_out, model.compiled) if args.daily_out is not None else None
            )
            account_changes_out = (
                stack.enter_context(open(args.account_changes_out, "wb"))
                if args.account_changes_out is not None
                else None
            )
            accounts_out = (
                stack.enter_context(open(args.accounts_out, "wb"))
                if args.accounts_out is not None
                else None
            )
        except OSError as exc:
            print(f"engagement-index replay: cannot open: {exc}", file=sys.stderr)
            return 2
        except DailyOutError as exc:
            print(f"engagement-index replay: {exc}", file=sys.stderr)
            return 2
        progress = (
            _Progress(size)
            if sys.stderr.isatty() and (size is None or size >= _PROGRESS_MIN_BYTES)
            else None
        )
        daily = None
        tail: list[float] = []  # while the points up to the horizon are written: their start
        if daily_out is not None:
            writer = daily_out
            stack.callback(writer.close)

            def on_point(key: tuple[str, str], day: int, snapshot: ContactSnapshot) -> None:
                writer.point(key, day, snapshot)
                if tail and writer.rows % 65_536 == 0:
                    rate = writer.rows / max(time.monotonic() - tail[0], 1e-9)
                    sys.stderr.write(f"\r{writer.rows:,} daily points {rate:,.0f}/s")
                    sys.stderr.flush()

            daily = DailySeries(on_point, args.daily_from, args.daily_to, args.daily_step)

        clear_line = "\r\x1b[K" if progress is not None and rejects_out is sys.stderr else ""

        def on_reject(item: Reject) -> None:
            text = json.dumps(item.to_json_dict(), ensure_ascii=False)
            rejects_out.write(f"{clear_line}{text}\n")

        replayer = Replayer(
            model,
            until_ms=args.until,
            on_reject=on_reject,
            dedupe_window_ms=int(args.dedupe_window * 1000),
            daily=daily,
            kernel=True,  # where it is built; the daily points use the Python core
            blocked_ids=args.blocked_id,
        )
        out = sys.stdout.buffer
        try:
            for block in replayer.feed_chunks(_chunks(source, progress, replayer.stats)):
                out.write(block)
        except OSError as exc:
            print(f"engagement-index replay: cannot read {args.events}: {exc}", file=sys.stderr)
            return 2
        if daily_out is not None:
            if progress is not None:  # the points up to the horizon can take a while
                tail.append(time.monotonic())
            replayer.finish_points()
            if progress is not None:
                sys.stderr.write(f"\r{daily_out.rows:,} daily points in {args.daily_out}\n")
        out.write(replayer.finish_json())
        out.flush()
        if states_out is not None:
            for snapshot in replayer.snapshots():
                states_out.write(snapshot.to_json_bytes() + b"\n")
        if account_changes_out is not None:
            for change in replayer.account_transitions:
                account_changes_out.write(change.to_json_bytes() + b"\n")
        if accounts_out is not None:
            for account in replayer.account_snapshots():
                accounts_out.write(account.to_json_bytes() + b"\n")
    return 0
