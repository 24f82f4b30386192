"""Backlog suite: a history published before any worker starts, read over many fetches.

Every contact's events are historical (30 days ago onwards, 30 minutes apart) and bring it into
the upper stage ``purchase`` early, keeping it there for many more events; they are published
round-robin over the contacts, so a contact's next event is a whole lap of the log later, in a
later fetch. Every decay crossing lies in the past, so the worker's timer finds each contact due
as soon as it is scored: a decay woken up before the contact's next event is read (still in the
backlog) would be wrong. The worker holds wake-ups back while a partition's event sources have
unread records (docs/streaming.md, "Decay transitions without scans"), and then gives exactly
the replay's transitions, for every contact; the same with two SIGKILLs and one deleted state
folder while the backlog is read.

Full size (``make reliability``): 300,000 events over 12,000 contacts with the default batch and
fetch settings (every partition's backlog is several times Faust's 1 MiB per fetch). Fast subset
(``make test``): 30,000 events over 1,500 contacts, fetches of 16 KiB per partition
(``CONSUMER_MAX_FETCH_SIZE``), so each partition's backlog still takes dozens of fetches.
Besides the replay oracle (the harness's check), transitions and API states are compared with
the independent reference in ``tests/reference`` (every contact in the fast subset, every tenth
at full size).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from engagement_index.replay import replay
from tests.kafka_harness import StreamEnv
from tests.reference import engagement as reference
from tests.reference.compare import snapshot_mismatches, transition_mismatches
from tests.reliability.harness import (
    DAY_MS,
    DEFAULT_MODEL,
    Contact,
    FaultRun,
    FaultWorker,
    Planned,
    TrafficPlan,
    consumer_lag,
    fetch_contacts,
    full_size,
    iso,
    read_topic,
    wait_for_catch_up,
    wait_until,
    write_report,
)

pytestmark = pytest.mark.integration

#: Faust's default ``consumer_max_fetch_size``: bytes per partition per fetch response
FAUST_DEFAULT_FETCH_BYTES = 1024**2
HALF_HOUR_MS = 1_800_000
#: what this suite's own topic reads accept in one fetch response (a partition's megabytes each)
MAX_FRAME_BYTES = 256 * 1024**2
HOT = ("email.click", "web.form_submit", "social.share")
CHANNELS = ("email", "web")  # one topic per contact: Kafka orders only within a partition

FULL = {"contacts": 12_000, "per_contact": 25, "partitions": 4, "fetch_bytes": None, "sample": 10}
FAST = {"contacts": 1_500, "per_contact": 20, "partitions": 4, "fetch_bytes": 16_384, "sample": 1}


def size() -> dict[str, Any]:
    return FULL if full_size() else FAST


def backlog_plan(contacts: int, per_contact: int, now_ms: int) -> TrafficPlan:
    """Round-robin over the contacts: event ``n`` of every contact, then event ``n + 1``."""
    start = now_ms - 30 * DAY_MS
    people = [
        Contact(
            tenant="globex" if i % 7 == 0 else "acme",
            contact_id=f"b-{i:05d}",
            channel=CHANNELS[i % len(CHANNELS)],
            legacy_key=False,
            dormant=True,  # published before any worker starts
        )
        for i in range(contacts)
    ]

    def value(i: int, n: int) -> bytes:
        c = people[i]
        return json.dumps(
            {
                "event_id": f"{c.contact_id}-{n}",
                "tenant": c.tenant,
                "contact_id": c.contact_id,
                "type": HOT[(i + n) % len(HOT)],
                "timestamp": iso(start + i * 10_000 + n * HALF_HOUR_MS),
                "properties": {"n": n},
            },
            separators=(",", ":"),
        ).encode()

    records = [Planned(i, value(i, n)) for n in range(per_contact) for i in range(contacts)]
    return TrafficPlan(people, records, [], now_ms)


def published_layout(env: StreamEnv) -> tuple[dict[str, int], list[Any]]:
    """Bytes (keys and values) per inbound topic-partition, and every record published."""
    sizes: dict[str, int] = defaultdict(int)
    records: list[Any] = []
    for role in CHANNELS:
        for record in read_topic(env.bootstrap, env.topic(role), max_frame_bytes=MAX_FRAME_BYTES):
            sizes[f"{role}/{record.partition}"] += (
                record.serialized_key_size + record.serialized_value_size
            )
            records.append(record)
    return dict(sizes), records


def metric_sum(worker: FaultWorker, name: str, match: str = "") -> float | None:
    """The sum of the samples of ``name`` whose labels contain ``match`` (None: no answer)."""
    try:
        status, text = worker.get("/metrics")
    except OSError:
        return None
    if status != 200 or not isinstance(text, str):
        return None
    total = 0.0
    for line in text.splitlines():
        head, _, number = line.rpartition(" ")
        if (head == name or head.startswith(name + "{")) and match in head:
            total += float(number)
    return total


def scored(worker: FaultWorker) -> float:
    """Inbound records this worker process scored so far (0 while it does not answer)."""
    return metric_sum(worker, "engagement_events_consumed_total", 'outcome="scored"') or 0.0


def batches(worker: FaultWorker) -> int:
    """Batches this worker process handled so far."""
    return int(metric_sum(worker, "engagement_batch_records_count") or 0)


def backlog_lag(env: StreamEnv) -> int | None:
    """Inbound records not yet committed by the worker's group."""
    return consumer_lag(env.bootstrap, env.topology.app_id, [env.topic(c) for c in CHANNELS])


def wait_for_transitions(env: StreamEnv, wanted: set[str], timeout: float) -> float:
    """Poll the stage-change topic until it holds every id in ``wanted`` (or time runs out)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        have = {json.loads(r.value)["transition_id"] for r in read_stage_changes(env)}
        if wanted <= have:
            break
        time.sleep(3)
    return round(time.monotonic() - started, 1)


def read_stage_changes(env: StreamEnv) -> list[Any]:
    try:
        return read_topic(
            env.bootstrap, env.topic("stage_changes"), max_frame_bytes=MAX_FRAME_BYTES
        )
    except AssertionError:  # no record yet
        return []


def reference_check(
    env: StreamEnv, worker: FaultWorker, published: list[Any], every: int
) -> dict[str, Any]:
    """Every ``every``-th contact's transitions and API state against tests/reference."""
    # the records of the chosen contacts, with their arrival (the record timestamp, as the
    # worker takes it for the dedupe window)
    records: list[tuple[bytes | str, int | None]] = []
    chosen: set[tuple[str, str]] = set()
    for record in published:
        body = json.loads(record.value)
        if int(body["contact_id"][2:]) % every == 0:
            chosen.add((body["tenant"], body["contact_id"]))
            records.append((record.value, record.timestamp))
    model = reference.load_model(DEFAULT_MODEL)
    read_at = int(time.time() * 1000)
    finished, expected = reference.run(records, model, until_ms=read_at - 5000)
    live = reference.Reference(model)  # no decay applied ahead of the API's clock
    for raw, arrival in records:
        live.feed(raw, arrival)
    want: dict[tuple[str, str], list[reference.RefTransition]] = defaultdict(list)
    for t in expected:
        want[(t.tenant, t.contact_id)].append(t)
    seen: set[str] = set()
    streamed: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in read_stage_changes(env):
        t = json.loads(record.value)
        key = (t["tenant"], t["contact_id"])
        if key in chosen and t["transition_id"] not in seen:
            seen.add(t["transition_id"])
            streamed[key].append(t)
    problems: dict[tuple[str, str], list[str]] = {}
    compared = sorted(chosen - finished.ambiguous)
    for key in compared:
        found = transition_mismatches(streamed.get(key, []), want.get(key, []))
        if found:
            problems[key] = found
    for key, (status, body) in fetch_contacts(worker, compared).items():
        if status != 200:
            problems.setdefault(key, []).append(f"HTTP {status} {body}")
            continue
        at = reference.parse_time(body["evaluated_at"])
        found = snapshot_mismatches(body, live.snapshot(key, at))
        if found:
            problems.setdefault(key, []).extend(found)
    return {
        "reference_contacts": len(compared),
        "reference_ambiguous": len(chosen & finished.ambiguous),
        "reference_transitions": len(expected),
        "reference_mismatches": len(problems),
        "reference_examples": [f"{k}: {v[:2]}" for k, v in list(problems.items())[:3]],
    }


class Backlog:
    """The environment, the published backlog and the oracle's transition ids."""

    def __init__(self, stream_env: Callable[..., Any], seed: int) -> None:
        self.size = size()
        self.env: StreamEnv = stream_env(DEFAULT_MODEL, partitions=int(self.size["partitions"]))
        self.plan = backlog_plan(
            int(self.size["contacts"]), int(self.size["per_contact"]), int(time.time() * 1000)
        )
        fetch = self.size["fetch_bytes"]
        self.fetch_bytes = int(fetch) if fetch else FAUST_DEFAULT_FETCH_BYTES
        worker_env = {"CONSUMER_MAX_FETCH_SIZE": str(fetch)} if fetch else {}
        self.run = FaultRun(self.env, self.plan, rate=1.0, seed=seed, worker_env=worker_env)
        self.batches = 0

    def publish(self) -> None:
        """The whole backlog, before any worker starts; then what the topics hold."""
        self.run.traffic.publish_now(self.plan.dormant)
        self.published_s = self.run.elapsed()
        self.partition_bytes, self.published = published_layout(self.env)
        assert len(self.published) >= self.plan.events
        # more than one fetch per partition: every partition's backlog is bigger than a fetch
        assert len(self.partition_bytes) == len(CHANNELS) * int(self.size["partitions"])
        assert min(self.partition_bytes.values()) > 2 * self.fetch_bytes, self.partition_bytes
        values = [p.value for p in self.plan.dormant]
        oracle = replay(values, self.env.model, until_ms=self.plan.made_at_ms).transitions
        self.wanted = {t.transition_id for t in oracle}
        # the scenario: contacts reach purchase early and their crossing lies past their next
        # event, so a decay applied between two fetches of the backlog would be wrong
        contacts = len(self.plan.contacts)
        assert sum(1 for t in oracle if t.to_stage == "purchase") >= contacts
        assert sum(1 for t in oracle if t.reason == "decay") >= contacts

    def kill(self, name: str, moment: str) -> None:
        """SIGKILL ``name``, noting its batches and the backlog left uncommitted."""
        self.batches += batches(self.run.worker(name))
        self.run.kill(name, moment)
        lag = backlog_lag(self.env)
        self.run.faults[-1]["backlog_uncommitted"] = lag
        if lag is not None:
            self.run.faults[-1]["backlog_committed"] = round(1 - lag / self.plan.events, 3)
        assert lag, f"the backlog was read to its end before the kill {moment!r}"

    def finish(self, query: FaultWorker) -> dict[str, Any]:
        """Catch up, wait for the oracle's transitions, compare; the figures."""
        timeout = 900.0 if full_size() else 180.0
        caught_up = wait_for_catch_up(self.env, timeout)
        waited = wait_for_transitions(self.env, self.wanted, 300.0 if full_size() else 45.0)
        figures = self.run.finish(query=query)
        self.batches += batches(query)
        figures.update(
            {
                "events_per_contact": int(self.size["per_contact"]),
                "partitions": int(self.size["partitions"]),
                "fetch_bytes_per_partition": self.fetch_bytes,
                "min_partition_backlog_bytes": min(self.partition_bytes.values()),
                "min_fetches_per_partition": min(self.partition_bytes.values()) // self.fetch_bytes,
                "published_s": self.published_s,
                "caught_up_s": round(caught_up, 1),
                "transitions_waited_s": waited,
                "batches": self.batches,
                **reference_check(self.env, query, self.published, int(self.size["sample"])),
            }
        )
        figures["total_s"] = self.run.elapsed()
        return figures


def test_a_backlog_of_history_gives_exactly_the_replay_transitions(
    stream_env: Callable[..., Any],
) -> None:
    backlog = Backlog(stream_env, seed=8_0007)
    run = backlog.run
    try:
        backlog.publish()
        run.start_worker("w1")
        figures = backlog.finish(query=run.worker("w1"))
    finally:
        run.close()
    write_report("backlog", figures)
    assert figures["events_published"] >= (300_000 if full_size() else 30_000)
    assert run.check.oracle_decay_transitions >= len(backlog.plan.contacts)
    assert figures["mismatches"] == 0, figures["examples"]
    assert figures["reference_mismatches"] == 0, figures["reference_examples"]


def test_a_backlog_with_two_sigkills_and_a_lost_state_folder(
    stream_env: Callable[..., Any],
) -> None:
    backlog = Backlog(stream_env, seed=8_0008)
    run = backlog.run
    total = backlog.plan.events
    try:
        backlog.publish()
        w1 = run.start_worker("w1")
        # 1: a quarter of the backlog scored; restarted on its own disk
        wait_until(lambda: scored(w1) >= 0.25 * total, 300, "a quarter scored", every=0.05)
        backlog.kill("w1", "a quarter of the backlog scored")
        run.start_worker("w1")
        # 2: another quarter scored by the restarted process; its disk is lost, so it restores
        # its tables from the changelogs
        wait_until(lambda: scored(w1) >= 0.25 * total, 300, "another quarter", every=0.05)
        backlog.kill("w1", "another quarter scored (state folder deleted after)")
        run.start_worker("w1", wipe=True)
        figures = backlog.finish(query=w1)
    finally:
        run.close()
    figures["state_wipes"] = sum(1 for s in run.restarts if s["wiped_state"])
    write_report("backlog_faults", figures)
    assert figures["faults_injected"] == 2
    assert figures["state_wipes"] == 1
    assert run.check.oracle_decay_transitions >= len(backlog.plan.contacts)
    assert figures["mismatches"] == 0, figures["examples"]
    assert figures["reference_mismatches"] == 0, figures["reference_examples"]
