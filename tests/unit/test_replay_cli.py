"""The ``engagement-index replay`` command, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engagement_index.core.model import load_model
from engagement_index.replay import Replayer, replay

DAY = 86_400_000


def _event(i: int, type_: str, ts: str, contact: str = "c-1", **extra: Any) -> str:
    return json.dumps(
        {"event_id": f"e{i}", "tenant": "acme", "contact_id": contact, "type": type_,
         "timestamp": ts, **extra}
    )  # fmt: skip


def _c1(first: int, type_: str, count: int) -> list[str]:
    return [_event(i, type_, f"2026-11-01T10:00:{i:02d}Z") for i in range(first, first + count)]


# c-1 climbs into "purchase" on 2026-11-01 (index about 60.5 after its 15th event) and then
# goes quiet; c-2 becomes a customer; c-3 is seen once. Rejected: lines 3, 8 and 20.
LINES = [
    *_c1(1, "email.click", 2),
    "{not json",
    *_c1(3, "email.click", 4),
    _event(99, "support.ticket", "2026-11-01T10:00:05Z"),
    *_c1(7, "web.form_submit", 6),
    *_c1(13, "social.share", 3),
    _event(15, "social.share", "2026-11-01T10:00:15Z"),  # duplicate of line 17
    _event(20, "commerce.purchase", "2026-11-02T09:00:00Z", contact="c-2"),
    json.dumps({"event_id": "x", "contact_id": "c-3", "type": "email.open"}),
    _event(21, "web.page_view", "2026-11-20T00:00:00Z", contact="c-3"),
]
REJECTED_LINES = [3, 8, 20]


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engagement_index.cli", "replay", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def test_replay_outputs(events_file: Path, tmp_path: Path) -> None:
    states = tmp_path / "states.jsonl"
    rejects = tmp_path / "rejects.jsonl"
    proc = _cli(str(events_file), "--states-out", str(states), "--rejects-out", str(rejects))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    transitions = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = [(t["contact_id"], t["reason"], t["from_stage"], t["to_stage"]) for t in transitions]
    assert summary == [
        ("c-1", "first_seen", None, "nurture"),
        ("c-1", "threshold", "nurture", "purchase"),
        ("c-2", "first_seen", None, "nurture"),
        ("c-2", "customer_event", "nurture", "retention"),
        ("c-3", "first_seen", None, "nurture"),
        # horizon = the largest event timestamp (2026-11-20): c-1's decay is due by then
        ("c-1", "decay", "purchase", "nurture"),
    ]
    decay = transitions[-1]
    assert decay["cause_event_id"] is None
    assert "2026-11-01T10:00:15.000Z" < decay["occurred_at"] < "2026-11-20T00:00:00.000Z"
    assert decay["index"] < 45 <= decay["previous_index"]
    assert transitions[1]["cause_event_id"] == "e15"
    assert transitions[1]["index"] == pytest.approx(60.5, abs=0.1)
    rejected = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["failure"]) for r in rejected] == [
        (3, "invalid_json"),
        (8, "unknown_type"),
        (20, "schema_violation"),
    ]
    assert "timestamp" in rejected[2]["reason"]
    snapshots = [json.loads(line) for line in states.read_text().splitlines()]
    assert [(s["contact_id"], s["stage"], s["customer"]) for s in snapshots] == [
        ("c-1", "nurture", False),
        ("c-2", "retention", True),
        ("c-3", "nurture", False),
    ]
    assert {s["evaluated_at"] for s in snapshots} == {"2026-11-20T00:00:00.000Z"}
    assert snapshots[0]["events_counted"] == 15
    assert (snapshots[0]["active_days_7d"], snapshots[0]["active_days_30d"]) == (0, 1)


def test_replay_matches_library_and_is_deterministic(events_file: Path) -> None:
    first = _cli(str(events_file), "--rejects-out", "/dev/null")
    second = _cli("-", "--rejects-out", "/dev/null", stdin=events_file.read_text())
    assert first.stdout == second.stdout
    result = replay(LINES, load_model())
    assert [t.to_json_bytes().decode() for t in result.transitions] == first.stdout.splitlines()


def test_rejects_default_to_stderr(events_file: Path) -> None:
    proc = _cli(str(events_file))
    assert proc.returncode == 0
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [r["line"] for r in lines] == REJECTED_LINES


def test_until_option(events_file: Path, tmp_path: Path) -> None:
    states = tmp_path / "s.jsonl"
    rejects = tmp_path / "r.jsonl"
    proc = _cli(
        str(events_file), "--until", "2026-11-01T12:00:00Z",
        "--states-out", str(states), "--rejects-out", str(rejects),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    reasons = [json.loads(line)["reason"] for line in proc.stdout.splitlines()]
    assert "decay" not in reasons  # not due by then
    assert [json.loads(line)["failure"] for line in rejects.read_text().splitlines()] == [
        "invalid_json",
        "unknown_type",
        "time_out_of_range",  # c-2's purchase is after --until
        "schema_violation",
        "time_out_of_range",
    ]
    snaps = [json.loads(line) for line in states.read_text().splitlines()]
    assert [(s["contact_id"], s["stage"]) for s in snaps] == [("c-1", "purchase")]
    # a far horizon includes the decay and evaluates the states then
    proc = _cli(str(events_file), "--until", "2027-01-01T00:00:00Z", "--rejects-out", "/dev/null")
    decays = [json.loads(line) for line in proc.stdout.splitlines()][-2:]
    assert [(t["contact_id"], t["reason"], t["to_stage"]) for t in decays] == [
        ("c-1", "decay", "nurture"),
        ("c-2", "decay", "exit"),
    ]
    assert decays[0]["occurred_at"] < decays[1]["occurred_at"]


def test_unreadable_input_and_bad_arguments(tmp_path: Path) -> None:
    proc = _cli(str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 2
    assert "missing.jsonl" in proc.stderr
    proc = _cli(str(tmp_path / "x"), "--until", "tomorrow")
    assert proc.returncode == 2
    assert "--until" in proc.stderr
    bad_model = tmp_path / "model.yaml"
    bad_model.write_text("version: x\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = _cli(str(empty), "--model", str(bad_model))
    assert proc.returncode == 2
    assert "components" in proc.stderr


def test_empty_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    states = tmp_path / "s.jsonl"
    proc = _cli(str(empty), "--states-out", str(states))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert states.read_text() == ""


def test_replayer_api() -> None:
    replayer = Replayer(load_model())
    out = []
    for i, line in enumerate(LINES, 1):
        out.extend(replayer.feed(line.encode(), line=i))
    out.extend(replayer.finish())
    assert replayer.stats.lines == len(LINES)
    assert replayer.stats.duplicates == 1
    assert replayer.stats.rejected == 3
    assert replayer.stats.applied == len(LINES) - 4
    assert len(out) == replayer.stats.transitions == 6
    assert [r.line for r in replayer.rejects] == REJECTED_LINES
    assert set(replayer.states) == {("acme", "c-1"), ("acme", "c-2"), ("acme", "c-3")}


def test_identity_records_merge_and_blocked_ids_are_rejected(tmp_path: Path) -> None:
    def event(n: int, contact: str) -> str:
        return json.dumps(
            {
                "event_id": f"e{n}",
                "tenant": "acme",
                "contact_id": contact,
                "type": "web.form_submit",
                "timestamp": f"2026-11-01T10:0{n}:00Z",
            }
        )

    def link(anon: str) -> str:
        return json.dumps(
            {
                "kind": "identify",
                "event_id": f"i-{anon}",
                "tenant": "acme",
                "contact_id": "user",
                "anonymous_id": anon,
                "timestamp": "2026-11-01T10:05:00Z",
            }
        )

    lines = [event(1, "anon"), event(2, "guest"), link("anon"), link("Guest"), event(6, "anon")]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    states = tmp_path / "states.jsonl"
    proc = _cli(str(path), "--states-out", str(states), "--blocked-id", "guest")
    assert proc.returncode == 0, proc.stderr
    rejected = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [(r["line"], r["failure"]) for r in rejected] == [(4, "identity_refused")]
    snapshots = [json.loads(line) for line in states.read_text().splitlines()]
    assert {s["contact_id"]: s["events_counted"] for s in snapshots} == {"guest": 1, "user": 2}
    reasons = [json.loads(line)["reason"] for line in proc.stdout.splitlines()]
    assert "merge" in reasons
