"""Score history on a real broker: ``GET /v1/contacts/{tenant}/{contact_id}/history``.

A week of historical events is published before the worker starts (small batches, so some
batches span midnights and some days span batches). Then every point the API gives equals the
replay with ``--until`` at that point's midnight, computed independently for each midnight
(index to 1e-9, every lifecycle's stage); ``replay --daily-out`` writes the same series; a
second worker restores its partitions from the changelogs and answers the same, forwarding to
the owner where it is not; an erasure tombstones every day key of the contact.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from engagement_index.core.events import ContactKey
from engagement_index.core.records import ContactSnapshot
from engagement_index.core.timestamps import MS_PER_DAY, ms_to_rfc3339, parse_timestamp_ms
from engagement_index.replay import replay
from tests.integration.test_erasure import erase, last_value_per_key
from tests.integration.test_exactness import wait_caught_up
from tests.integration.test_worker_faults import wait_until
from tests.kafka_harness import ENGINE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOURNEY = (ROOT / "config" / "models" / "journey.yaml").read_text()
DAY = MS_PER_DAY
TYPES = (
    "web.page_view",
    "web.form_submit",
    "email.click",
    "email.open",
    "social.share",
    "commerce.purchase",
    "product.core_action",
)
CHANNEL = {"web": "web", "email": "email", "social": "social", "commerce": "commerce"}


def traffic(today: int, contacts: int = 6) -> list[tuple[str, bytes, bytes]]:
    """(channel, key, value) in publish order: each contact on one topic, in time order."""
    rng = random.Random(7)
    out: list[tuple[int, str, bytes, bytes]] = []
    for i in range(contacts):
        cid = f"h-{i}"
        channel = ("web", "email", "social", "commerce")[i % 4]
        key = ContactKey("acme", cid).encode()
        stamps = []
        for day in range(today - 8, today):
            if rng.random() < 0.3:
                continue  # a quiet day: its points decay from the day before
            stamps += [day * DAY + rng.randrange(DAY) for _ in range(rng.randint(1, 8))]
            if rng.random() < 0.2:
                stamps.append(day * DAY)  # exactly midnight: counted in that midnight's point
        for n, ts in enumerate(sorted(stamps)):
            value = json.dumps(
                {
                    "event_id": f"{cid}-{n}",
                    "tenant": "acme",
                    "contact_id": cid,
                    "type": rng.choice(TYPES),
                    "timestamp": ms_to_rfc3339(ts),
                }
            ).encode()
            out.append((ts, channel, key, value))
    out.sort(key=lambda item: item[0])
    return [(channel, key, value) for _, channel, key, value in out]


def same_point(point: dict[str, Any], snapshot: ContactSnapshot) -> list[str]:
    """What differs between an API point and the replay's snapshot at its instant."""
    problems = []
    if abs(point["index"] - snapshot.index) > 1e-9:
        problems.append(f"index {point['index']!r} != {snapshot.index!r}")
    stages = {name: status["stage"] for name, status in snapshot.lifecycles.items()}
    if point["stages"] != stages:
        problems.append(f"stages {point['stages']} != {stages}")
    for name, score in snapshot.components.items():
        if abs(point["components"][name] - score) > 1e-9:
            problems.append(f"component {name}")
    return problems


def test_history_points_equal_the_replay_until_each_midnight(
    stream_env: Callable[..., Any], tmp_path: Path
) -> None:
    env = stream_env(JOURNEY, partitions=2)
    today = int(time.time() * 1000) // DAY
    records = traffic(today)
    lines = [value for _, _, value in records]
    contacts = sorted({json.loads(v)["contact_id"] for v in lines})
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)
    for channel, key, value in records:
        producer.send(env.topic(CHANNEL[channel]), key=key, value=value)
    producer.flush()
    producer.close()

    worker = env.worker(
        extra_env={"ENGAGEMENT_INDEX_BATCH_SIZE": "7", "CONSUMER_MAX_FETCH_SIZE": "4096"}
    )
    worker.start()
    counts = {cid: sum(1 for v in lines if json.loads(v)["contact_id"] == cid) for cid in contacts}

    def scored() -> bool:
        for cid in contacts:
            status, body = worker.get(f"/v1/contacts/acme/{cid}")
            if status != 200 or body["events_counted"] != counts[cid]:
                return False
        return True

    wait_until(scored, 120, "every event to be scored")
    wait_caught_up(env)

    # the API series of every contact, and the replay at each of its midnights
    snapshots: dict[int, dict[str, ContactSnapshot]] = {}

    def replay_at(at_ms: int) -> dict[str, ContactSnapshot]:
        if at_ms not in snapshots:
            result = replay(lines, env.model, until_ms=at_ms)
            snapshots[at_ms] = {s.contact_id: s for s in result.snapshots}
        return snapshots[at_ms]

    series: dict[str, list[dict[str, Any]]] = {}
    compared = 0
    for cid in contacts:
        status, body = worker.get(f"/v1/contacts/acme/{cid}/history")
        assert status == 200, body
        assert body["to"] == ms_to_rfc3339(today * DAY)[:10]
        assert body["step"] == "1d"
        first_ts = min(parse_timestamp_ms(json.loads(v)["timestamp"]) for v in lines
                       if json.loads(v)["contact_id"] == cid)  # fmt: skip
        first_point = -(-first_ts // DAY)
        assert body["from"] == ms_to_rfc3339(first_point * DAY)[:10]
        assert len(body["points"]) == today - first_point + 1, "a point at every midnight"
        series[cid] = body["points"]
        for point in body["points"]:
            at = parse_timestamp_ms(point["at"])
            problems = same_point(point, replay_at(at)[cid])
            assert not problems, (cid, point["at"], problems)
            compared += 1
    assert compared >= 30
    assert len(snapshots) >= 8, "one independent replay per midnight"
    # a step and an explicit range pick the same points
    start = ms_to_rfc3339((today - 6) * DAY)[:10]
    status, body = worker.get(f"/v1/contacts/acme/{contacts[0]}/history?from={start}&step=2d")
    assert status == 200, body
    assert [p["at"] for p in body["points"]] == [
        ms_to_rfc3339(d * DAY) for d in range(today - 6, today + 1, 2)
    ]
    by_at = {p["at"]: p for p in series[contacts[0]]}
    assert all(p == by_at[p["at"]] for p in body["points"])

    # replay --daily-out writes the same series
    events_file = tmp_path / "events.jsonl"
    events_file.write_bytes(b"\n".join(lines) + b"\n")
    daily_file = tmp_path / "daily.csv"
    done = subprocess.run(
        [*ENGINE, "replay", str(events_file), "--model", str(env.model_file),
         "--until", ms_to_rfc3339(today * DAY), "--daily-out", str(daily_file)],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with daily_file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(points) for points in series.values())
    lifecycles = [lc.name for lc in env.model.compiled.lifecycles]
    for row in rows:
        point = next(p for p in series[row["contact_id"]] if p["at"] == row["at"])
        assert abs(float(row["index"]) - point["index"]) <= 1e-9, row
        assert {name: row[name] for name in lifecycles} == point["stages"], row
        assert abs(float(row["web"]) - point["components"]["web"]) <= 1e-9

    # parameters, auth, unknown contacts
    status, body = worker.get(f"/v1/contacts/acme/{contacts[0]}/history?step=12h")
    assert (status, body["error"], body["parameter"]) == (400, "invalid parameter", "step")
    status, body = worker.get(f"/v1/contacts/acme/{contacts[0]}/history?from=2020-01-01")
    assert (status, body["parameter"]) == (400, "from"), "more than 1,000 points"
    assert worker.get(f"/v1/contacts/acme/{contacts[0]}/history", token=None)[0] == 401
    assert worker.get("/v1/contacts/acme/nobody/history")[0] == 404
    assert worker.get(f"/v1/contacts/other/{contacts[0]}/history")[0] == 404

    # a second worker takes half of the partitions, restored from the changelogs; either
    # worker answers for every contact (one of them forwards to the owner) with the same series
    second = env.worker("w2")
    second.start(timeout=120)
    wait_until(lambda: worker.ready() and second.ready(), 90, "both workers ready")
    for cid in contacts:
        for answering in (worker, second):
            status, body = answering.get(f"/v1/contacts/acme/{cid}/history")
            assert status == 200, (cid, body)
            assert len(body["points"]) == len(series[cid])
            for point, before in zip(body["points"], series[cid], strict=True):
                assert point["at"] == before["at"]
                assert point["stages"] == before["stages"]
                assert abs(point["index"] - before["index"]) <= 1e-9

    # an erasure tombstones every day key of the contact, and nothing else
    gone = contacts[0]
    done_erase = erase(env, gone)
    assert done_erase.returncode == 0, done_erase.stdout + done_erase.stderr
    assert worker.get(f"/v1/contacts/acme/{gone}/history")[0] == 404
    latest = last_value_per_key(env.consume_all(env.topology.changelog_topic("daily"), idle_s=2))
    prefix = ContactKey("acme", gone).encode() + b"\x1f"
    days = [k for k in latest if k.startswith(prefix) and len(k) == len(prefix) + 4]
    assert len(days) >= 4, "the contact had a day key for each day with events"
    assert all(latest[k] is None for k in days), "a tombstone for each"
    kept = ContactKey("acme", contacts[1]).encode() + b"\x1f"
    assert any(v is not None for k, v in latest.items() if k.startswith(kept))
