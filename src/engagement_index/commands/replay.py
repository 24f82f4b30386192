"""``engagement-index replay``: score a JSON Lines file of events offline."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO, TextIO

from engagement_index.core.dedupe import DEFAULT_WINDOW_MS
from engagement_index.core.model import DEFAULT_MODEL_PATH, load_model
from engagement_index.core.timestamps import parse_timestamp_ms
from engagement_index.replay import Reject, Replayer

_PROGRESS_MIN_BYTES = 1 << 20

HELP = "replay a JSON Lines file of canonical events; print the stage transitions"


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


def _lines(stream: BinaryIO, progress: _Progress | None) -> Iterator[bytes]:
    if progress is None:
        yield from stream
        return
    done = count = 0
    for line in stream:
        count += 1
        done += len(line)
        if count % 8192 == 0:
            progress.update(count, done)
        yield line
    progress.update(count, done, final=True)


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
        except OSError as exc:
            print(f"engagement-index replay: cannot open: {exc}", file=sys.stderr)
            return 2

        progress = (
            _Progress(size)
            if sys.stderr.isatty() and (size is None or size >= _PROGRESS_MIN_BYTES)
            else None
        )
        clear_line = "\r\x1b[K" if progress is not None and rejects_out is sys.stderr else ""

        def on_reject(item: Reject) -> None:
            text = json.dumps(item.to_json_dict(), ensure_ascii=False)
            rejects_out.write(f"{clear_line}{text}\n")

        replayer = Replayer(
            model,
            until_ms=args.until,
            on_reject=on_reject,
            dedupe_window_ms=int(args.dedupe_window * 1000),
        )
        out = sys.stdout.buffer
        try:
            for transition in replayer.feed_lines(_lines(source, progress)):
                out.write(transition.to_json_bytes() + b"\n")
        except OSError as exc:
            print(f"engagement-index replay: cannot read {args.events}: {exc}", file=sys.stderr)
            return 2
        for transition in replayer.finish():
            out.write(transition.to_json_bytes() + b"\n")
        out.flush()
        if states_out is not None:
            for snapshot in replayer.snapshots():
                states_out.write(snapshot.to_json_bytes() + b"\n")
    return 0
