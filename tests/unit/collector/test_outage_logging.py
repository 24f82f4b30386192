"""A broker outage is logged once per interval, not once per retry or per refused request."""

from __future__ import annotations

import logging

import pytest

from engagement_index.collector.publisher import OutageLog, RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeat_filter_folds_aiokafka_lines_per_interval() -> None:
    clock = Clock()
    folding = RepeatFilter(30.0, clock=clock)
    passed = []
    for i in range(300):  # 10 retries a second for 30 s, two kinds of line
        clock.now = 1000.0 + i / 10
        for rec in (
            record("aiokafka.client", "Unable to update metadata from %s", [1]),
            record("aiokafka.conn", "Unable connect to %r: %s", "x", i, level=logging.WARNING),
        ):
            if folding.filter(rec):
                passed.append(rec)
    assert len(passed) == 2
    clock.now = 1031.0
    again = record("aiokafka.client", "Unable to update metadata from %s", [1])
    assert folding.filter(again)
    assert "[299 more like this in the last 30s]" in again.getMessage()
    # other loggers are never folded
    assert all(folding.filter(record("engagement_index.collector", "x")) for _ in range(5))


def test_outage_log_says_start_interval_and_end(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = OutageLog(30.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="engagement_index.collector"):
        for i in range(600):  # 20 refused requests a second for 30 s
            clock.now = 1000.0 + i / 20
            outage.refusal("no ack within 3s")
        clock.now = 1030.0
        outage.refusal("no ack within 3s")
        clock.now = 1035.0
        outage.up()
        outage.up()  # no outage: nothing more
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("Kafka unavailable (no ack within 3s)")
    assert "still unavailable after 30s" in lines[1]
    assert "600 requests answered 503" in lines[1]
    assert lines[2] == "Kafka available again after 35.0s; 601 requests were answered 503"
