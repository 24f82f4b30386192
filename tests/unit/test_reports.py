"""``engagement-index report cohorts|compare`` on small hand-made event files.

The model has one component ``a`` (half-life 1 day, saturation 1) weighing 1, so by
docs/scoring.md#the-math a contact's index is ``I = 100 * D / (D + 1)`` with
``D(t) = sum of 2^-(t - t_i)/1d`` over its events (each worth 1 point): one event is worth
``D = 1, 1/2, 1/4, 1/8`` on days 0, 1, 2, 3 after it, i.e. ``I = 50, 100/3, 20, 100/9``. The
expected numbers below are worked out by hand from that formula and the quartile rule of
docs/reports.md (type 7: position ``h = (n - 1) q``, linear between the closest ranks).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engagement_index.cli import main
from engagement_index.commands import report as report_command
from engagement_index.core.model import ScoringModel, parse_model
from engagement_index.errors import ConfigError
from engagement_index.replay import replay
from engagement_index.reports.cohorts import (
    BY_FIRST_PURCHASE,
    BY_FIRST_SEEN,
    CohortDay,
    CohortReport,
    CohortSampler,
    quantile,
)
from engagement_index.reports.compare import ComparisonReport, ModelComparison

TINY: dict[str, Any] = {
    "format": 2,
    "version": "tiny-1",
    "components": {"a": {"half_life": "1d", "saturation": 1}},
    "markers": ["customer"],
    "events": {
        "t.visit": {"component": "a", "points": 1},
        "t.buy": {"component": "a", "points": 1, "sets": ["customer"]},
    },
    "indices": {"idx": {"a": 1}},
    "lifecycles": {
        "stage": {
            "stages": {"lead": {"index": "idx"}, "hot": {"index": "idx"},
                       "customer": {"index": "idx"}},
            "initial": [{"stage": "lead"}],
            "edges": [
                {"id": "bought", "from": ["lead", "hot"], "to": "customer",
                 "when": {"marker": "customer"}},
                {"id": "warmed", "from": "lead", "to": "hot",
                 "when": {"index": "idx", "at_least": 60}},
                {"id": "cooled", "from": "hot", "to": "lead",
                 "when": {"index": "idx", "below": 40}},
            ],
        }
    },
}  # fmt: skip


def _model(version: str = "tiny-1", warm_at: float = 60) -> ScoringModel:
    data = json.loads(json.dumps(TINY))
    data["version"] = version
    data["lifecycles"]["stage"]["edges"][1]["when"]["at_least"] = warm_at
    return parse_model(data)


def _event(event_id: str, contact: str, type_: str, ts: str) -> str:
    return json.dumps(
        {"event_id": event_id, "tenant": "acme", "contact_id": contact, "type": type_,
         "timestamp": ts}
    )  # fmt: skip


# X buys on 01-10; Y buys on 01-20 and visits exactly one day later; V buys twice on 01-31;
# Z visits on 01-05 and buys on 02-03 12:00; W only visits, on 02-05 12:00 (the horizon).
# Three bad lines (invalid_json, unknown_type, schema_violation) and a duplicate of X's buy.
COHORT_LINES = [
    _event("z1", "Z", "t.visit", "2026-01-05T00:00:00Z"),
    _event("x1", "X", "t.buy", "2026-01-10T00:00:00Z"),
    "{not json",
    _event("x1", "X", "t.buy", "2026-01-10T00:00:00Z"),  # duplicate
    _event("y1", "Y", "t.buy", "2026-01-20T00:00:00Z"),
    _event("q1", "X", "t.other", "2026-01-20T01:00:00Z"),  # unknown type
    _event("y2", "Y", "t.visit", "2026-01-21T00:00:00Z"),
    _event("v1", "V", "t.buy", "2026-01-31T00:00:00Z"),
    _event("v2", "V", "t.buy", "2026-01-31T00:00:00Z"),
    json.dumps({"event_id": "s", "tenant": "acme", "contact_id": "S", "type": "t.visit"}),
    _event("z2", "Z", "t.buy", "2026-02-03T12:00:00Z"),
    _event("w1", "W", "t.visit", "2026-02-05T12:00:00Z"),
]
BAD = {"invalid_json": 1, "schema_violation": 1, "unknown_type": 1}


def _cohorts(by: str, days: int = 3) -> CohortReport:
    sampler = CohortSampler(_model(), by=by, days=days)
    for line in COHORT_LINES:
        sampler.feed(line)
    return sampler.finish()


def _row(report: CohortReport, cohort: str, day: int) -> CohortDay:
    (row,) = [r for r in report.rows if (r.cohort, r.day) == (cohort, day)]
    return row


def _check(row: CohortDay, contacts: int, mean: float, q1: float, med: float, q3: float) -> None:
    assert row.contacts == contacts
    got = (row.mean, row.q1, row.median, row.q3)
    assert got == pytest.approx((mean, q1, med, q3), rel=1e-12, abs=1e-12), row


def test_quantile_is_linear_between_closest_ranks() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.25) == 1.75  # h = 0.75
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([7.0], 0.75) == 7.0


def test_first_purchase_cohorts_by_hand() -> None:
    report = _cohorts(BY_FIRST_PURCHASE)
    assert report.sizes == {"2026-01": 3, "2026-02": 1}  # X, Y, V; Z. W never buys.
    # 2026-01, per day: X = 50, 100/3, 20, 100/9 (one event).
    # Y: day 0 D = 1 -> 50; day 1 its visit is at the instant: D = 1/2 + 1 -> 60;
    #    day 2 D = 3/4 -> 300/7; day 3 D = 3/8 -> 300/11.
    # V: two buys, D = 2, 1, 1/2, 1/4 -> 200/3, 50, 100/3, 20.
    # n = 3: q1 at h = 0.5, median x[1], q3 at h = 1.5.
    _check(_row(report, "2026-01", 0), 3, (100 + 200 / 3) / 3, 50, 50, 50 + (200 / 3 - 50) / 2)
    _check(_row(report, "2026-01", 1), 3, (100 / 3 + 60 + 50) / 3, (100 / 3 + 50) / 2, 50, 55)
    _check(
        _row(report, "2026-01", 2),
        3,
        (20 + 300 / 7 + 100 / 3) / 3,
        (20 + 100 / 3) / 2,
        100 / 3,
        (100 / 3 + 300 / 7) / 2,
    )
    _check(
        _row(report, "2026-01", 3),
        3,
        (100 / 9 + 300 / 11 + 20) / 3,
        (100 / 9 + 20) / 2,
        20,
        (20 + 300 / 11) / 2,
    )
    # Z bought on 02-03 12:00 with a visit 29.5 days before: D = (1 + 2^-29.5) / 2^d.
    # The horizon (02-05 12:00) is its day 2: no day 3.
    e = 2**-29.5
    for day in range(3):
        d = (1 + e) / 2**day
        value = 100 * d / (d + 1)
        _check(_row(report, "2026-02", day), 1, value, value, value, value)
    assert [(r.cohort, r.day) for r in report.rows][-1] == ("2026-02", 2)
    assert report.samples == 3 * 4 + 3
    assert report.late_events == report.skipped_samples == 0


def test_first_seen_cohorts_by_hand() -> None:
    report = _cohorts(BY_FIRST_SEEN)
    assert report.sizes == {"2026-01": 4, "2026-02": 1}  # Z, X, Y, V; W
    # day 0: X 50, Y 50, V 200/3, Z 50 (its visit); n = 4, q3 at h = 2.25
    _check(_row(report, "2026-01", 0), 4, (150 + 200 / 3) / 4, 50, 50, 50 + (200 / 3 - 50) / 4)
    # W: seen at the horizon, day 0 only, one visit: 50
    _check(_row(report, "2026-02", 0), 1, 50, 50, 50, 50)
    assert [r for r in report.rows if r.cohort == "2026-02"] == [_row(report, "2026-02", 0)]


def test_a_time_driven_change_between_events_is_applied_at_its_time() -> None:
    """36 h after its first event the contact moves (no event) to a stage whose weighting is
    an empty component: its index there is 0, not the 20 of the old weighting on day 2."""
    data = json.loads(json.dumps(TINY))
    data["components"]["b"] = {"half_life": "1d", "saturation": 1}
    data["indices"]["idle"] = {"b": 1}
    data["lifecycles"]["stage"] = {
        "stages": {"lead": {"index": "idx"}, "quiet": {"index": "idle"}},
        "initial": [{"stage": "lead"}],
        "edges": [{"id": "hushed", "from": "lead", "to": "quiet", "when": {"in_stage_for": "36h"}}],
    }
    sampler = CohortSampler(parse_model(data), by=BY_FIRST_SEEN, days=3)
    for line in [
        _event("x1", "X", "t.visit", "2026-01-01T00:00:00Z"),
        _event("y1", "Y", "t.visit", "2026-01-04T00:00:00Z"),  # the horizon reaches X's day 3
        _event(
            "x2", "X", "t.visit", "2026-01-04T00:00:00Z"
        ),  # days 0-2 are sampled before it, 3 with it
    ]:
        sampler.feed(line)
    report = sampler.finish()
    assert [r.mean for r in report.series("2026-01") if r.contacts == 2] == [50.0]
    x_days = [(r.day, r.contacts) for r in report.series("2026-01")]
    assert x_days == [(0, 2), (1, 1), (2, 1), (3, 1)]
    assert [r.mean for r in report.series("2026-01")[1:]] == pytest.approx([100 / 3, 0.0, 0.0])


def test_bad_lines_are_counted_not_fatal() -> None:
    report = _cohorts(BY_FIRST_PURCHASE)
    assert report.rejects_by_failure == BAD
    assert report.stats.rejected == 3
    assert report.stats.duplicates == 1
    assert report.stats.lines == len(COHORT_LINES)


def test_first_purchase_needs_a_customer_marker() -> None:
    data = json.loads(json.dumps(TINY))
    data["markers"] = ["buyer"]
    data["events"]["t.buy"]["sets"] = ["buyer"]
    data["lifecycles"]["stage"]["edges"][0]["when"] = {"marker": "buyer"}
    with pytest.raises(ConfigError, match="no marker named 'customer'"):
        CohortSampler(parse_model(data), by=BY_FIRST_PURCHASE)
    CohortSampler(parse_model(data), by=BY_FIRST_SEEN)


# --------------------------------------------------------------------------- compare
# B lowers `warmed` from 60 to 50. T visits once on 03-01, P once on 03-05, Q twice on 03-05,
# R buys on 03-05; horizon 03-05 01:00. One visit is I = 50: under B it warms T and P. T's index
# falls below 40 within the day (D < 2/3), so under B it cools back to lead; P is still at
# 100 * 2^-1/24 / (1 + 2^-1/24) = 49.3 at the horizon: hot under B, lead under A. Q (I = 66.7)
# is hot and R a customer under both.
UNTIL = "2026-03-05T01:00:00Z"
COMPARE_LINES = [
    _event("t1", "T", "t.visit", "2026-03-01T00:00:00Z"),
    _event("p1", "P", "t.visit", "2026-03-05T00:00:00Z"),
    _event("q1", "Q", "t.visit", "2026-03-05T00:00:00Z"),
    _event("q2", "Q", "t.visit", "2026-03-05T00:00:00Z"),
    "not json either",
    _event("r1", "R", "t.buy", "2026-03-05T00:00:00Z"),
]


def _compare() -> ComparisonReport:
    from engagement_index.core.timestamps import parse_timestamp_ms

    comparison = ModelComparison(
        _model(), _model("tiny-2", warm_at=50), until_ms=parse_timestamp_ms(UNTIL)
    )
    for line in COMPARE_LINES:
        comparison.feed(line)
    return comparison.finish()


def test_compare_matrix_moves_exactly_the_known_contacts() -> None:
    report = _compare()
    assert report.contacts == 4
    assert report.stages_a == report.stages_b == ["lead", "hot", "customer"]
    assert report.matrix == {
        ("lead", "lead"): 1,  # T
        ("lead", "hot"): 1,  # P
        ("hot", "hot"): 1,  # Q
        ("customer", "customer"): 1,  # R
    }
    assert report.moved == 1


def test_compare_edges_gained_and_lost() -> None:
    report = _compare()
    rows = {row.rule_id: row for row in report.edges}
    assert list(rows) == ["initial_lead", "bought", "warmed", "cooled"]
    got = {
        rule: (r.transitions_a, r.transitions_b, r.contacts_gained, r.contacts_lost)
        for rule, r in rows.items()
    }
    assert got == {
        "initial_lead": (4, 4, 0, 0),
        "bought": (1, 1, 0, 0),
        "warmed": (1, 3, 2, 0),  # Q under A; T, P, Q under B
        "cooled": (0, 1, 1, 0),  # T under B
    }
    assert rows["warmed"].change == 2
    assert rows["warmed"].edge_a == rows["warmed"].edge_b == "lead -> hot"
    assert report.a.transitions == 6
    assert report.b.transitions == 9


def test_compare_edges_are_the_replays_transitions() -> None:
    report = _compare()
    from engagement_index.core.timestamps import parse_timestamp_ms

    for side, model in ((report.a, _model()), (report.b, _model("tiny-2", warm_at=50))):
        result = replay(COMPARE_LINES, model, until_ms=parse_timestamp_ms(UNTIL))
        counted = Counter(t.rule_id for t in result.transitions)
        column = "transitions_a" if side.label == "a" else "transitions_b"
        mine = {r.rule_id: getattr(r, column) for r in report.edges if getattr(r, column)}
        assert mine == dict(counted)


def test_compare_histograms_and_bad_lines() -> None:
    report = _compare()
    # the weighting is unchanged, so the index is the same under A and B:
    # T 4 days + 1 h after one visit: D = 2^-(4 + 1/24) -> I = 5.7 (bin 1 of [0, 5), [5, 10)...)
    # P and R one hour after one event: I = 49.3 (bin 9); Q: D = 2 * 2^-1/24 -> 66.0 (bin 13)
    expected = [0] * 20
    expected[1], expected[9], expected[13] = 1, 2, 1
    assert report.a.histogram == report.b.histogram == expected
    assert report.a.rejects_by_failure == report.b.rejects_by_failure == {"invalid_json": 1}


# --------------------------------------------------------------------------- the command
def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_model(tmp_path: Path, name: str, model: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(model), encoding="utf-8")  # JSON is YAML
    return path


def _assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert '<img alt="' in page
    assert 'src="data:image/png;base64,' in page
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page
    assert "<link" not in page


def test_cohorts_command_writes_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = _write(tmp_path, COHORT_LINES)
    model = _write_model(tmp_path, "tiny.yaml", TINY)
    out = tmp_path / "out"
    code = main(["report", "cohorts", str(events), "--model", str(model), "--days", "3",
                 "--out", str(out), "--min-contacts", "1"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "cohorts.csv", "cohorts.html", "cohorts.png", "rejects.jsonl"
    ]  # fmt: skip
    assert (out / "cohorts.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    _assert_self_contained((out / "cohorts.html").read_text(encoding="utf-8"))
    with (out / "cohorts.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["cohort"], r["day"], r["contacts"]) for r in rows] == [
        *(("2026-01", str(d), "3") for d in range(4)),
        *(("2026-02", str(d), "1") for d in range(3)),
    ]
    assert float(rows[1]["q3"]) == 55.0  # 2026-01 day 1 (by hand, above)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert Counter(r["failure"] for r in rejects) == BAD
    assert [r["line"] for r in rejects] == [3, 6, 10]
    assert "3 bad lines not scored" in captured.err
    assert "2026-01" in captured.out
    assert "wrote" in captured.out


def test_compare_command_writes_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = _write(tmp_path, COMPARE_LINES)
    model_a = _write_model(tmp_path, "a.yaml", TINY)
    b = json.loads(json.dumps(TINY))
    b["version"] = "tiny-2"
    b["lifecycles"]["stage"]["edges"][1]["when"]["at_least"] = 50
    model_b = _write_model(tmp_path, "b.yaml", b)
    out = tmp_path / "cmp"
    code = main(["report", "compare", str(events), "--model", str(model_a), "--model",
                 str(model_b), "--until", UNTIL, "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "compare.html", "edges.csv", "histogram.csv", "histogram.png", "matrix.csv",
        "rejects.jsonl",
    ]  # fmt: skip
    assert (out / "histogram.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    _assert_self_contained((out / "compare.html").read_text(encoding="utf-8"))
    with (out / "matrix.csv").open(encoding="utf-8") as f:
        matrix = list(csv.reader(f))
    assert matrix == [
        ["stage: a \\ b", "lead", "hot", "customer", "total"],
        ["lead", "1", "1", "0", "2"],
        ["hot", "0", "1", "0", "1"],
        ["customer", "0", "0", "1", "1"],
        ["total", "1", "2", "1", "4"],
    ]
    with (out / "edges.csv").open(encoding="utf-8") as f:
        edges = {r["rule_id"]: r for r in csv.DictReader(f)}
    assert (edges["warmed"]["transitions_a"], edges["warmed"]["transitions_b"]) == ("1", "3")
    assert edges["warmed"]["contacts_gained"] == "2"
    assert "1 (25.0%) end in another stage" in captured.out
    assert "stage/warmed: 1 -> 3 (+2)" in captured.out
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 2  # one per model
    assert "model A: 1 bad lines" in captured.err


def test_compare_needs_two_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = _write(tmp_path, COMPARE_LINES)
    model = _write_model(tmp_path, "a.yaml", TINY)
    code = main(["report", "compare", str(events), "--model", str(model), "--out",
                 str(tmp_path / "x")])  # fmt: skip
    assert code == 2
    assert "exactly twice" in capsys.readouterr().err


def test_long_runs_show_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_command, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(report_command, "_CHECK_EVERY", 2)
    events = _write(tmp_path, COHORT_LINES)
    model = _write_model(tmp_path, "tiny.yaml", TINY)
    code = main(["report", "cohorts", str(events), "--model", str(model), "--by",
                 BY_FIRST_SEEN, "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert "report cohorts: 2 lines, 2 contacts, 0 bad lines" in err
    assert f"report cohorts: {len(COHORT_LINES)} lines, 5 contacts, 3 bad lines" in err


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize(
    ("model_file", "by"),
    [("default.yaml", BY_FIRST_PURCHASE), ("journey.yaml", BY_FIRST_SEEN)],
)
def test_samples_are_what_a_replay_up_to_the_instant_reports(model_file: str, by: str) -> None:
    """Each sample equals the index of the contact in ``replay(its events <= t, until=t)``."""
    import random

    from bench import workload

    from engagement_index.core.events import parse_event_fields
    from engagement_index.core.model import load_model

    model = load_model(Path(__file__).resolve().parents[2] / "config" / "models" / model_file)
    spec = workload.WorkloadSpec(events=4_000, contacts=80, seed=5, end_ms=1_790_000_000_000)
    lines = [json.dumps(e) for e in workload.generate(spec)]
    samples: list[tuple[tuple[str, str], int, float]] = []
    sampler = CohortSampler(
        model, by=by, days=20, on_sample=lambda key, _c, _d, at, index: samples.append(
            (key, at, index)
        )
    )  # fmt: skip
    for line in lines:
        sampler.feed(line)
    report = sampler.finish()
    assert report.samples == len(samples) > 200
    per_contact: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for line in lines:
        f = parse_event_fields(line)
        per_contact.setdefault((f.tenant, f.contact_id), []).append((f.timestamp_ms, line))
    for key, at, index in random.Random(1).sample(samples, 150):
        mine = [line for ts, line in per_contact[key] if ts <= at]
        (snapshot,) = replay(mine, model, until_ms=at).snapshots
        assert snapshot.index == index, (key, at)
