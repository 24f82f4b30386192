"""``replay --daily-out``: every contact's point at every midnight, as ``replay --until`` there."""

from __future__ import annotations

import csv
import importlib
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engagement_index.commands.replay import column_names
from engagement_index.core.model import load_model
from engagement_index.core.records import ContactSnapshot
from engagement_index.core.timestamps import MS_PER_DAY, ms_to_rfc3339, parse_timestamp_ms
from engagement_index.replay import DailySeries, Replayer, replay

ROOT = Path(__file__).resolve().parents[2]
DAY = MS_PER_DAY
START = 20_600 * DAY  # 2026-05-27
TYPES = ["web.page_view", "email.click", "web.form_submit", "social.share", "commerce.purchase"]


def events(seed: int, n: int = 300, contacts: int = 12, days: int = 30) -> list[str]:
    """Time-ordered events; some exactly at midnight, some sharing a timestamp."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = START + rng.randrange(days * DAY)
        if rng.random() < 0.08:
            ts = ts // DAY * DAY
        out.append((ts, i, f"c-{rng.randrange(contacts)}", rng.choice(TYPES)))
    out.sort()
    for k in range(1, len(out), 25):  # a few at the same millisecond as the one before
        out[k] = (out[k - 1][0], *out[k][1:])
    # a burst into the upper stages, then silence: decays fall between two midnights
    hot = ["email.click", "web.form_submit", "social.share"] * 8
    out += [(START + DAY + 60_000 * j, n + j, "burst", t) for j, t in enumerate(hot)]
    out.append((START + (days - 2) * DAY + 1, n + len(hot), "burst", "web.page_view"))
    out.sort()
    return [
        json.dumps(
            {
                "event_id": f"e{i}",
                "tenant": "acme",
                "contact_id": cid,
                "type": etype,
                "timestamp": ms_to_rfc3339(ts),
            }
        )
        for ts, i, cid, etype in out
    ]


def collect(
    lines: list[str], model: Any, until_ms: int | None = None, **series: Any
) -> dict[tuple[str, str, int], Any]:
    found: dict[tuple[str, str, int], ContactSnapshot] = {}

    def on_point(key: tuple[str, str], day: int, snapshot: ContactSnapshot) -> None:
        assert (*key, day) not in found, "one point per contact and midnight"
        found[(*key, day)] = snapshot

    replayer = Replayer(model, until_ms=until_ms, daily=DailySeries(on_point, **series))
    list(replayer.feed_lines(lines))
    replayer.finish()
    return found


@pytest.mark.parametrize(("model_file", "seed"), [("default.yaml", 1), ("journey.yaml", 2)])
def test_each_point_equals_the_replay_until_that_midnight(model_file: str, seed: int) -> None:
    model = load_model(ROOT / "config" / "models" / model_file)
    lines = events(seed)
    found = collect(lines, model)
    decays = [t for t in replay(lines, model).transitions if t.contact_id == "burst"]
    assert any(t.reason in ("decay", "threshold", "trend") and t.cause_event_id is None
               for t in decays), "a time-driven change between two midnights"  # fmt: skip
    first_seen: dict[str, int] = {}
    for line in lines:
        body = json.loads(line)
        first_seen.setdefault(body["contact_id"], parse_timestamp_ms(body["timestamp"]))
    horizon = max(parse_timestamp_ms(json.loads(line)["timestamp"]) for line in lines)
    expected = {
        ("acme", cid, day)
        for cid, ts in first_seen.items()
        for day in range(-(-ts // DAY), horizon // DAY + 1)
    }
    assert set(found) == expected, "every midnight from the first event's on, to the horizon"
    for day in sorted({d for _, _, d in found}):
        at = day * DAY
        for snapshot in replay(lines, model, until_ms=at).snapshots:
            point = found[(snapshot.tenant, snapshot.contact_id, day)]
            assert abs(point.index - snapshot.index) <= 1e-9
            assert point.lifecycles == snapshot.lifecycles
            assert point.components == pytest.approx(snapshot.components, abs=1e-9)
            assert point.evaluated_at == snapshot.evaluated_at == ms_to_rfc3339(at)


def test_a_range_and_a_step_put_every_contact_on_one_grid() -> None:
    model = load_model(ROOT / "config" / "models" / "default.yaml")
    lines = events(3)
    everything = collect(lines, model)
    first, last = START // DAY + 4, START // DAY + 20
    grid = collect(lines, model, first=first, last=last, step=3)
    assert grid, "points in the range"
    assert {d for _, _, d in grid} <= set(range(first, last + 1, 3))
    assert grid.keys() == {
        k for k in everything if first <= k[2] <= last and (k[2] - first) % 3 == 0
    }
    for key, snapshot in grid.items():
        assert snapshot.index == everything[key].index


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engagement_index.cli", "replay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_daily_out_csv(tmp_path: Path) -> None:
    model = load_model(ROOT / "config" / "models" / "journey.yaml")
    lines = events(4, n=120, contacts=5, days=10)
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "daily.csv"
    done = _run(
        str(source),
        "--model",
        str(ROOT / "config" / "models" / "journey.yaml"),
        "--daily-out",
        str(out),
        "--until",
        ms_to_rfc3339(START + 12 * DAY),
    )
    assert done.returncode == 0, done.stderr
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = ["tenant", "contact_id", "at", "index", "journey", "band", "trend"]
    assert list(rows[0])[:7] == header
    assert list(rows[0])[7:] == list(model.compiled.names)
    found = collect(lines, model, until_ms=START + 12 * DAY)
    assert max(day for _, _, day in found) == START // DAY + 12, "up to the --until midnight"
    assert len(rows) == len(found)
    for row in rows:
        snapshot = found[("acme", row["contact_id"], parse_timestamp_ms(row["at"]) // DAY)]
        assert float(row["index"]) == snapshot.index, "floats as computed"
        assert row["band"] == snapshot.lifecycles["band"]["stage"]
        assert float(row["web"]) == snapshot.components["web"]


def test_parquet_without_pyarrow_says_csv_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(events(5, n=10)) + "\n")
    real = importlib.import_module

    def no_pyarrow(name: str) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(importlib, "import_module", no_pyarrow)
    from engagement_index.cli import main

    code = main(["replay", str(source), "--daily-out", str(tmp_path / "d.parquet")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pyarrow" in err
    assert "CSV" in err
    assert not (tmp_path / "d.parquet").exists()


def test_parquet(tmp_path: Path) -> None:
    import pyarrow.parquet as pq  # a dev dependency: this test never skips

    lines = events(6, n=60, contacts=4, days=8)
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    assert _run(str(source), "--daily-out", str(tmp_path / "d.csv")).returncode == 0
    done = _run(str(source), "--daily-out", str(tmp_path / "d.parquet"))
    assert done.returncode == 0, done.stderr
    table = pq.read_table(tmp_path / "d.parquet").to_pylist()
    with (tmp_path / "d.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(table) == len(rows)
    for got, row in zip(table, rows, strict=True):
        assert got["contact_id"] == row["contact_id"]
        assert ms_to_rfc3339(int(got["at"].timestamp() * 1000)) == row["at"]
        assert got["index"] == float(row["index"])
        assert got["stage"] == row["stage"]


def test_bad_daily_arguments_are_refused() -> None:
    done = _run("-", "--daily-out", "x.csv", "--daily-step", "24h")
    assert done.returncode == 2
    assert "--daily-step" in done.stderr
    done = _run("-", "--daily-out", "x.csv", "--daily-from", "2026-02-30")
    assert done.returncode == 2
    assert "--daily-from" in done.stderr


def test_column_names_never_repeat() -> None:
    assert column_names(["stage"], ["web", "index"]) == [
        "tenant", "contact_id", "at", "index", "stage", "web", "component.index",
    ]  # fmt: skip
    assert column_names(["tenant", "web"], ["web"]) == [
        "tenant", "contact_id", "at", "index", "stage.tenant", "web", "component.web",
    ]  # fmt: skip
