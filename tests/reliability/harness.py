"""Shared harness of the reliability suites: traffic, fault injection, the replay oracle, figures.

A suite builds a :class:`TrafficPlan` (contacts, their events, in production order), publishes
it with a :class:`TrafficProducer` while it starts, kills and restarts :class:`FaultWorker`
processes (or the broker), then calls :func:`check_against_oracle`:

* the oracle input is read back from the topics themselves, in the order the worker consumed
  it: every record of an inbound topic whose key is the contact's canonical key, partition by
  partition in offset order, plus every record of the re-key topic (a record with another key
  is scored from there). Each contact lives on one topic and partition, so this is exactly the
  per-contact order the worker used, whatever a producer retry or a re-forward did;
* the final state of every contact comes from the worker's query API
  (``GET /v1/contacts/{tenant}/{id}``), compared with ``engagement_index.replay`` evaluated at
  the same instant: index within 1e-6, same stage, same count of events;
* the distinct ``transition_id`` s on the stage-change topic equal the oracle's (repeats on
  the topic are allowed: delivery is at least once).

Timing rules that keep the oracle exact (see docs/streaming.md, "Equality with replay"):
* live contacts get timestamps within two minutes before the plan was made; with the default
  model (half-lives of days, hysteresis of 15 points) no decay crossing can fall during a run,
  so no event can arrive after a decay it precedes;
* "dormant" contacts have a burst of events 20-30 days old and nothing after it; they are
  published before any worker starts (the worker holds decay wake-ups back while a partition
  has a backlog), so their decay transitions are emitted during the run, under the faults.

Sizes: ``RELIABILITY_SIZE=full`` selects the full sizes (``make reliability``); anything else
the fast subset that runs in ``make test``. Figures are printed and written to
``var/reliability/<suite>[-fast].json``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import evaluate
from engagement_index.core.model import ScoringModel
from engagement_index.core.timestamps import parse_timestamp_ms
from engagement_index.replay import replay
from engagement_index.settings import Settings
from tests.kafka_harness import ENGINE, FAST_FAILOVER_ENV, REPO_ROOT, StreamEnv, WorkerProcess

DEFAULT_MODEL = (REPO_ROOT / "config" / "models" / "default.yaml").read_text()
CHANNELS = ("web", "email", "social", "commerce", "product")
HOT = ("web.form_submit", "email.click", "social.share", "web.page_view", "email.open")
WEAK = ("web.page_view", "email.open", "social.like", "product.login")
BURST = ("web.form_submit", "email.click", "social.share")
DAY_MS = 86_400_000
#: how long before the stage-change topic is read a decay may be due and not yet out
#: (check_against_oracle): the default tick retry interval (5 s) and 5 s of margin
BOUNDARY_WINDOW_MS = int(Settings.model_fields["tick_retry_seconds"].default * 1000) + 5000
#: how long check_against_oracle reads the stage-change topic again for a late decay
LATE_TRANSITION_DEADLINE_S = 30.0
REPORT_DIR = REPO_ROOT / "var" / "reliability"


def full_size() -> bool:
    """True when ``RELIABILITY_SIZE=full`` (``make reliability``)."""
    return os.environ.get("RELIABILITY_SIZE", "fast") == "full"


def iso(ms: int) -> str:
    """RFC 3339 with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def wait_until(check: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> float:
    """Poll ``check`` until true; returns the seconds waited, fails after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - started


# ----------------------------------------------------------------------------- traffic
@dataclass(frozen=True, slots=True)
class Contact:
    """A planned contact: where its events go and how they are keyed."""

    tenant: str
    contact_id: str
    channel: str
    legacy_key: bool  # keyed ``legacy:<id>``: the worker re-keys it through the re-key topic
    dormant: bool  # old burst, published before any worker starts, decays during the run

    @property
    def key(self) -> bytes:
        """The record key the producer uses."""
        if self.legacy_key:
            return f"legacy:{self.contact_id}".encode()
        return ContactKey(self.tenant, self.contact_id).encode()


@dataclass(frozen=True, slots=True)
class Planned:
    """One record to produce: ``value`` is the exact bytes (a duplicate repeats its original)."""

    contact: int
    value: bytes
    duplicate: bool = False


@dataclass
class TrafficPlan:
    """Contacts, the dormant records (published first) and the live records, in order."""

    contacts: list[Contact]
    dormant: list[Planned]
    live: list[Planned]
    made_at_ms: int

    @property
    def events(self) -> int:
        """Records planned, duplicates included."""
        return len(self.dormant) + len(self.live)

    @property
    def duplicates(self) -> int:
        """Planned re-sends of an earlier record (same bytes, same ``event_id``)."""
        return sum(1 for p in self.live if p.duplicate)

    def topic_role(self, planned: Planned) -> str:
        """The inbound channel this record goes to (one per contact)."""
        return self.contacts[planned.contact].channel

    @classmethod
    def make(
        cls,
        seed: int,
        *,
        contacts: int,
        events: int,
        legacy_fraction: float = 0.05,
        dormant_fraction: float = 0.1,
        duplicate_fraction: float = 0.0,
        now_ms: int | None = None,
    ) -> TrafficPlan:
        """About ``events`` records over ``contacts`` contacts (duplicates on top).

        Each live record picks its contact at random, so contacts interleave; a contact's
        own events are in time order except for ~5% late ones. A duplicate repeats one of
        the contact's last three records (well inside the core's window of 16 recent ids).
        """
        rng = random.Random(seed)
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        people: list[Contact] = []
        for i in range(contacts):
            is_dormant = rng.random() < dormant_fraction
            people.append(
                Contact(
                    tenant="acme" if i % 7 else "globex",
                    contact_id=f"r-{i:05d}",
                    channel=rng.choice(CHANNELS),
                    legacy_key=(not is_dormant) and rng.random() < legacy_fraction,
                    dormant=is_dormant,
                )
            )
        # kind < 0.25: buyer, < 0.6: hot, else casual; dormant contacts had a hot burst
        kinds = [rng.random() * (0.6 if c.dormant else 1.0) for c in people]
        dormant_ids = [i for i, c in enumerate(people) if c.dormant]
        live_ids = [i for i, c in enumerate(people) if not c.dormant]
        dormant_share = int(events * len(dormant_ids) / max(1, contacts))
        # how many events each contact gets
        counts = [0] * contacts
        for _ in range(dormant_share):
            counts[rng.choice(dormant_ids)] += 1
        for _ in range(events - dormant_share):
            counts[rng.choice(live_ids)] += 1

        def event_types(i: int, n: int) -> list[str]:
            kind = kinds[i]
            pool = (BURST if people[i].dormant else HOT) if kind < 0.6 else WEAK
            types = [rng.choice(pool) for _ in range(n)]
            if kind < 0.25 and n >= 4:  # a buyer: purchase two thirds in, then product use
                at = (2 * n) // 3
                types[at] = "commerce.purchase"
                for j in range(at + 1, n):
                    types[j] = rng.choice(("product.core_action", "product.login", "email.open"))
            return types

        def value(i: int, n: int, etype: str, ts: int) -> bytes:
            c = people[i]
            return json.dumps(
                {
                    "event_id": f"{c.contact_id}-{n}",
                    "tenant": c.tenant,
                    "contact_id": c.contact_id,
                    "type": etype,
                    "timestamp": iso(ts),
                    "properties": {"n": n},
                },
                separators=(",", ":"),
            ).encode()

        per_contact: dict[int, list[Planned]] = {}
        dormant: list[Planned] = []
        for i, count in enumerate(counts):
            if count == 0:
                continue
            types = event_types(i, count)
            if people[i].dormant:
                start = now - rng.randint(20 * DAY_MS, 30 * DAY_MS)
                stamps = sorted(start + rng.randint(0, 7_200_000) for _ in range(count))
            else:
                stamps = sorted(now - rng.randint(0, 120_000) for _ in range(count))
                if count > 3 and rng.random() < 0.25:  # a late event
                    j = rng.randrange(1, count)
                    stamps[j - 1], stamps[j] = stamps[j], stamps[j - 1]
            records = [
                Planned(i, value(i, n, etype, ts))
                for n, (etype, ts) in enumerate(zip(types, stamps, strict=True))
            ]
            if people[i].dormant:
                dormant.extend(records)
                continue
            out: list[Planned] = []
            for record in records:
                out.append(record)
                if duplicate_fraction and rng.random() < duplicate_fraction:
                    originals = [p for p in out[-3:] if not p.duplicate]
                    out.append(Planned(i, rng.choice(originals).value, duplicate=True))
            per_contact[i] = out
        order = [i for i, recs in per_contact.items() for _ in recs]
        rng.shuffle(order)
        cursors = dict.fromkeys(per_contact, 0)
        live: list[Planned] = []
        for i in order:
            live.append(per_contact[i][cursors[i]])
            cursors[i] += 1
        return cls(people, dormant, live, now)


class TrafficProducer:
    """Publishes planned records from a thread, at a steady rate, surviving broker outages.

    kafka-python retries a failed batch itself (one request in flight per connection keeps
    the order); a record whose delivery still fails is sent again later. The oracle reads the
    topics back, so a re-send (a duplicate on the topic) is harmless.
    """

    def __init__(self, env: StreamEnv, plan: TrafficPlan, rate: float) -> None:
        self.env = env
        self.plan = plan
        self.rate = rate
        self.sent = 0
        self.resent = 0
        self.errors: list[str] = []
        self._failed: list[Planned] = []
        self._records: Sequence[Planned] = ()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._paused = threading.Event()
        self.producer = KafkaProducer(
            bootstrap_servers=env.bootstrap,
            acks="all",
            linger_ms=5,
            retries=2**31 - 1,
            max_in_flight_requests_per_connection=1,
            delivery_timeout_ms=300_000,
            request_timeout_ms=10_000,
            max_block_ms=300_000,
            reconnect_backoff_max_ms=1_000,
        )

    def _send(self, planned: Planned) -> None:
        topic = self.env.topic(self.plan.topic_role(planned))
        future = self.producer.send(
            topic, key=self.plan.contacts[planned.contact].key, value=planned.value
        )

        def failed(exc: BaseException) -> None:
            with self._lock:
                self._failed.append(planned)
                self.errors.append(repr(exc))

        future.add_errback(failed)

    def publish_now(self, records: Sequence[Planned]) -> None:
        """Send ``records`` at full speed and wait until the broker acknowledged them."""
        for planned in records:
            self._send(planned)
        self.flush()

    def flush(self) -> None:
        """Wait for every record sent so far; re-send the failed ones until none fail."""
        while True:
            self.producer.flush()
            with self._lock:
                failed, self._failed = self._failed, []
            if not failed:
                return
            self.resent += len(failed)
            for planned in failed:
                self._send(planned)

    def start(self, records: Sequence[Planned]) -> None:
        """Send ``records`` from a thread at ``rate`` records per second."""

        self._records = records
        self.sent = 0

        def run() -> None:
            started = time.monotonic()
            for n, planned in enumerate(records):
                if self._stop.is_set():
                    return
                while self._paused.is_set() and not self._stop.is_set():
                    time.sleep(0.05)
                ahead = n / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
                self._send(planned)
                self.sent = n + 1

        self._thread = threading.Thread(target=run, name="traffic", daemon=True)
        self._thread.start()

    def progress(self) -> float:
        """Fraction of the records of the last :meth:`start` handed to the client so far."""
        return self.sent / max(1, len(self._records))

    def wait_progress(self, fraction: float, timeout: float = 600) -> None:
        """Block until ``fraction`` of the live records were handed to the client."""
        wait_until(lambda: self.progress() >= fraction, timeout, f"{fraction:.0%} of the traffic")

    def join(self, timeout: float = 900) -> None:
        """Wait for the thread to hand over everything, then flush (with re-sends)."""
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "the traffic thread did not finish"
            self._thread = None
        self.flush()

    def close(self) -> None:
        """Stop the thread and close the client."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.producer.close(timeout=30)


# ----------------------------------------------------------------------------- workers
class FaultWorker(WorkerProcess):
    """A worker that can be launched without waiting, so it can be killed mid-recovery."""

    def spawn(self) -> None:
        """Start the process; do not wait for readiness."""
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [*ENGINE, "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait until ``/readyz`` answers 200; returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise AssertionError(f"worker exited with {code}:\n{self.log_tail()}")
            if self.ready():
                return time.monotonic() - started
            time.sleep(0.25)
        raise AssertionError(f"worker not ready within {timeout}s:\n{self.log_tail()}")

    def readiness(self) -> dict[str, Any] | None:
        """The ``/readyz`` body, or None when the web server does not answer."""
        try:
            _status, body = self.get("/readyz")
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    @property
    def alive(self) -> bool:
        """The process runs."""
        return self.proc is not None and self.proc.poll() is None

    def wipe_state(self) -> None:
        """Delete the worker's RocksDB folder (the worker must not be running)."""
        assert not self.alive
        shutil.rmtree(self.data_dir, ignore_errors=True)


def fault_worker(env: StreamEnv, name: str, extra_env: dict[str, str] | None = None) -> FaultWorker:
    """A :class:`FaultWorker` on ``env``'s topology, stopped with the environment."""
    worker = FaultWorker(
        env.bootstrap,
        env.topology_file,
        env.model_file,
        env.tmp_path / f"data-{name}",
        env.tmp_path / f"{name}.log",
        {**FAST_FAILOVER_ENV, **(extra_env or {})},
    )
    env.workers.append(worker)
    return worker


# ----------------------------------------------------------------------------- broker side
def read_topic(bootstrap: str, topic: str, *, max_frame_bytes: int | None = None) -> list[Any]:
    """Every record of ``topic`` up to its current end, partition by partition, offset order.

    ``max_frame_bytes`` raises kafka-python's limit on a response (1,000,000 bytes by default;
    a fetch of several partitions' megabytes is refused, closed and retried until it fits).
    """
    limits = {} if max_frame_bytes is None else {"receive_message_max_bytes": max_frame_bytes}
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
        **limits,
    )
    try:
        partitions = None
        for _ in range(50):
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                break
            time.sleep(0.2)
        assert partitions, f"topic {topic} not found"
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = consumer.end_offsets(tps)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 300
        while remaining:
            assert time.monotonic() < deadline, f"reading {topic} took too long"
            for tp, batch in consumer.poll(timeout_ms=1000, max_records=10_000).items():
                for record in batch:
                    if record.offset < ends[tp]:
                        records[tp.partition].append(record)
                if records[tp.partition] and records[tp.partition][-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
            for tp in list(remaining):
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return [r for p in sorted(records) for r in records[p]]
    finally:
        consumer.close()


def consumer_lag(bootstrap: str, group: str, topics: Iterable[str]) -> int | None:
    """Records of ``topics`` not yet committed by ``group``; None while the broker is away."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    except KafkaError:
        return None
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, request_timeout_ms=5000)
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = consumer.end_offsets(tps)
        committed = {
            tp: meta.offset
            for tp, meta in admin.list_consumer_group_offsets(group).items()
            if meta.offset >= 0
        }
        return int(sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items()))
    except KafkaError:
        return None
    finally:
        consumer.close()
        admin.close()


def scoring_topics(env: StreamEnv) -> list[str]:
    """Topics the scoring agent consumes (inbound channels, re-key, ticks)."""
    return list(env.topology.scoring_sources)


# ----------------------------------------------------------------------------- the oracle
@dataclass
class OracleCheck:
    """Figures of one comparison with the replay oracle."""

    contacts: int = 0
    contacts_checked: int = 0
    state_mismatches: int = 0
    oracle_events_applied: int = 0
    oracle_duplicates_dropped: int = 0
    oracle_transitions: int = 0
    oracle_decay_transitions: int = 0
    streamed_transition_records: int = 0
    streamed_distinct_transitions: int = 0
    transitions_missing: int = 0
    transitions_invented: int = 0
    transitions_in_boundary_window: int = 0
    stage_change_reads: int = 0
    rekeyed_records: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        """Every disagreement with the oracle."""
        return self.state_mismatches + self.transitions_missing + self.transitions_invented


def oracle_input(env: StreamEnv) -> tuple[list[bytes], int]:
    """Records in the order the worker applied them per contact; and the re-keyed count."""
    lines: list[bytes] = []
    for role in CHANNELS:
        for record in read_topic(env.bootstrap, env.topic(role)):
            event = json.loads(record.value)
            if record.key == ContactKey(event["tenant"], event["contact_id"]).encode():
                lines.append(record.value)
    rekeyed = [r.value for r in read_topic(env.bootstrap, env.topic("rekey"))]
    return lines + rekeyed, len(rekeyed)


def fetch_contacts(
    worker: WorkerProcess, keys: Sequence[tuple[str, str]], threads: int = 4
) -> dict[tuple[str, str], tuple[int, Any]]:
    """``GET /v1/contacts/...`` for every key, a few requests in parallel."""

    def one(key: tuple[str, str]) -> tuple[tuple[str, str], tuple[int, Any]]:
        for attempt in range(5):
            try:
                return key, worker.get(f"/v1/contacts/{key[0]}/{key[1]}")
            except (OSError, urllib.error.URLError):
                time.sleep(0.5 * (attempt + 1))
        return key, worker.get(f"/v1/contacts/{key[0]}/{key[1]}")

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, keys))


def wait_for_catch_up(env: StreamEnv, timeout: float) -> float:
    """Wait until the group's committed offsets reach the end of every scoring source."""
    group = env.topology.app_id
    topics = scoring_topics(env)
    last: list[int | None] = [None]

    def caught_up() -> bool:
        last[0] = consumer_lag(env.bootstrap, group, topics)
        return last[0] == 0

    try:
        return wait_until(caught_up, timeout, "the consumer lag to reach 0", every=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last lag: {last[0]})") from None


def check_against_oracle(
    env: StreamEnv, plan: TrafficPlan, worker: WorkerProcess, model: ScoringModel
) -> OracleCheck:
    """Compare every planned contact and the stage-change topic with the replay oracle."""
    check = OracleCheck(contacts=len(plan.contacts))
    lines, check.rekeyed_records = oracle_input(env)
    states_result = replay(lines, model)
    check.oracle_events_applied = sum(s.events_counted for s in states_result.states.values())
    check.oracle_duplicates_dropped = (
        len(lines) - check.oracle_events_applied - len(states_result.rejects)
    )
    assert not states_result.rejects, states_result.rejects[:5]

    # transitions: every oracle transition up to the moment the topic was read, none invented.
    # A decay due in the last seconds before the read may not be out yet: the timer runs
    # every 0.2 s and holds back during a backlog. Those are not counted as missing: the
    # window is the tick retry interval and 5 s more for the timer, the send and the scoring
    # on a loaded machine. A wake-up deferred when it is scored (its partition not read to
    # its end then) is sent again only after the tick retry interval
    # (ENGAGEMENT_INDEX_TICK_RETRY_SECONDS, 5 s by default) and its transition carries the
    # due time, which after a broker fault can lie well before the window: the topic is read
    # again (up to LATE_TRANSITION_DEADLINE_S) until no transition older than the window is
    # missing; how many reads it took is a figure. One that never comes is missing.
    deadline = time.monotonic() + LATE_TRANSITION_DEADLINE_S
    while True:
        check.stage_change_reads += 1
        streamed = [
            json.loads(r.value) for r in read_topic(env.bootstrap, env.topic("stage_changes"))
        ]
        read_at = int(time.time() * 1000)
        streamed_ids = {t["transition_id"]: t for t in streamed}
        expected = replay(lines, model, until_ms=read_at + 1000).transitions
        expected_ids = {t.transition_id: t for t in expected}
        window_start = read_at - BOUNDARY_WINDOW_MS
        missing = [
            t
            for tid, t in expected_ids.items()
            if tid not in streamed_ids and parse_timestamp_ms(t.occurred_at) <= window_start
        ]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    check.streamed_transition_records = len(streamed)
    check.streamed_distinct_transitions = len(streamed_ids)
    check.oracle_transitions = len(expected_ids)
    check.oracle_decay_transitions = sum(1 for t in expected if t.reason == "decay")
    check.transitions_in_boundary_window = sum(
        1 for t in expected if parse_timestamp_ms(t.occurred_at) > window_start
    )
    invented = [t for tid, t in streamed_ids.items() if tid not in expected_ids]
    check.transitions_missing = len(missing)
    check.transitions_invented = len(invented)
    for t in missing[:3]:
        check.examples.append(f"missing transition {t.model_dump(mode='json')}")
    for s in invented[:3]:
        check.examples.append(f"invented transition {s}")
    # streamed transitions carry the oracle's fields
    for tid, s in streamed_ids.items():
        e = expected_ids.get(tid)
        if e is None:
            continue
        ej = e.model_dump(mode="json")
        if any(s[f] != ej[f] for f in ("from_stage", "to_stage", "reason", "cause_event_id")) or (
            abs(s["index"] - ej["index"]) > 1e-6
        ):
            check.transitions_invented += 1
            check.examples.append(f"transition differs: {s} != {ej}")

    # states through the query API, evaluated at the instant the worker answered
    planned = {
        (c.tenant, c.contact_id)
        for p in (*plan.dormant, *plan.live)
        for c in [plan.contacts[p.contact]]
    }
    assert planned == set(states_result.states), "the oracle saw every planned contact, no other"
    keys = sorted(planned)
    answers = fetch_contacts(worker, keys)
    for key, (status, body) in answers.items():
        state = states_result.states[key]
        check.contacts_checked += 1
        if status != 200:
            check.state_mismatches += 1
            check.examples.append(f"{key}: HTTP {status} {body}")
            continue
        at = parse_timestamp_ms(body["evaluated_at"])
        want = evaluate(state, at, model.compiled)
        if (
            abs(body["index"] - want.index) > 1e-6
            or body["stage"] != want.stage
            or body["events_counted"] != want.events_counted
            or body["customer"] != want.customer
        ):
            check.state_mismatches += 1
            if len(check.examples) < 10:
                check.examples.append(
                    f"{key}: worker index={body['index']} stage={body['stage']} "
                    f"events={body['events_counted']}; oracle index={want.index} "
                    f"stage={want.stage} events={want.events_counted}"
                )
    return check


# ----------------------------------------------------------------------------- figures
def write_report(suite: str, figures: dict[str, Any]) -> Path:
    """Print the figures and write them to ``var/reliability/<suite>[-fast].json``."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    size = "full" if full_size() else "fast"
    figures = {"suite": suite, "size": size, **figures}
    path = REPORT_DIR / (f"{suite}.json" if size == "full" else f"{suite}-fast.json")
    path.write_text(json.dumps(figures, indent=2, sort_keys=False) + "\n")
    print(f"\n[reliability:{suite}] " + json.dumps(figures, sort_keys=False))
    return path


def check_figures(check: OracleCheck) -> dict[str, Any]:
    """The oracle comparison as a JSON-able dict."""
    return {
        "contacts": check.contacts,
        "contacts_checked_via_api": check.contacts_checked,
        "state_mismatches": check.state_mismatches,
        "oracle_events_applied": check.oracle_events_applied,
        "oracle_duplicates_dropped": check.oracle_duplicates_dropped,
        "rekeyed_records": check.rekeyed_records,
        "oracle_transitions": check.oracle_transitions,
        "oracle_decay_transitions": check.oracle_decay_transitions,
        "streamed_transition_records": check.streamed_transition_records,
        "streamed_distinct_transitions": check.streamed_distinct_transitions,
        "transitions_missing": check.transitions_missing,
        "transitions_invented": check.transitions_invented,
        "stage_change_reads": check.stage_change_reads,
        "mismatches": check.mismatches,
    }


def kill_signal_name(sig: int) -> str:
    """``SIGKILL`` for 9 and so on."""
    return signal.Signals(sig).name


# ----------------------------------------------------------------------------- a faulty run
class FaultRun:
    """One suite's run: the environment, the plan, the traffic and a log of injected faults."""

    def __init__(
        self,
        env: StreamEnv,
        plan: TrafficPlan,
        rate: float,
        seed: int,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.env = env
        self.plan = plan
        self.seed = seed
        self.worker_env = dict(worker_env or {})  # extra environment of every worker
        self.rng = random.Random(seed)
        self.traffic = TrafficProducer(env, plan, rate)
        self.faults: list[dict[str, Any]] = []
        self.restarts: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self._workers: dict[str, FaultWorker] = {}

    def worker(self, name: str) -> FaultWorker:
        """The worker called ``name`` (created on first use, with its own data folder)."""
        if name not in self._workers:
            self._workers[name] = fault_worker(self.env, name, self.worker_env)
        return self._workers[name]

    def running(self) -> list[FaultWorker]:
        """Workers whose process runs."""
        return [w for w in self._workers.values() if w.alive]

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return round(time.monotonic() - self.started, 2)

    def start_worker(self, name: str, *, wipe: bool = False, wait: bool = True) -> FaultWorker:
        """Start (or restart) a worker; ``wipe`` deletes its RocksDB folder first."""
        worker = self.worker(name)
        assert not worker.alive, f"{name} already runs"
        if wipe:
            worker.wipe_state()
        worker.spawn()
        entry: dict[str, Any] = {
            "worker": name,
            "at_s": self.elapsed(),
            "progress": round(self.traffic.progress(), 3),
            "wiped_state": wipe,
        }
        self.restarts.append(entry)
        if wait:
            entry["ready_after_s"] = round(worker.wait_ready(), 2)
        return worker

    def kill(self, name: str, moment: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a worker (SIGKILL: no shutdown work) and log it as a fault."""
        worker = self.worker(name)
        assert worker.alive, f"{name} is not running"
        readiness = worker.readiness()
        assert worker.proc is not None
        if sig == signal.SIGKILL:
            worker.kill()
        else:
            code = worker.stop()
            assert code == 0, f"{name} exited with {code} on {signal.Signals(sig).name}"
        self.faults.append(
            {
                "fault": signal.Signals(sig).name,
                "worker": name,
                "moment": moment,
                "at_s": self.elapsed(),
                "progress": round(self.traffic.progress(), 3),
                "readyz": readiness,
            }
        )

    def wait_for(self, name: str, predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
        """Poll a worker's ``/readyz`` body until ``predicate`` holds."""
        worker = self.worker(name)

        def check() -> bool:
            body = worker.readiness()
            return body is not None and predicate(body)

        wait_until(check, 180, f"{name}: {what}", every=0.05)

    def finish(self, query: FaultWorker, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the traffic and the catch-up, compare with the oracle, return figures."""
        if timeout is None:
            timeout = 900 if full_size() else 240
        self.traffic.join()
        traffic_done = self.elapsed()
        try:
            caught_up = wait_for_catch_up(self.env, timeout)
        except AssertionError as exc:
            tails = "\n".join(
                f"--- {w.log_file.name} (alive={w.alive}, readyz={w.readiness()})\n{w.log_tail(15)}"
                for w in self._workers.values()
            )
            raise AssertionError(f"{exc}\n{tails}") from None
        check = check_against_oracle(self.env, self.plan, query, self.env.model)
        figures: dict[str, Any] = {
            "seed": self.seed,
            "contacts": len(self.plan.contacts),
            "events_published": self.plan.events,
            "live_events": len(self.plan.live),
            "dormant_events": len(self.plan.dormant),
            "planned_duplicates": self.plan.duplicates,
            "producer_resends": self.traffic.resent,
            "rate_events_per_s": self.traffic.rate,
            "faults_injected": len(self.faults),
            "faults": self.faults,
            "worker_starts": self.restarts,
            "traffic_done_at_s": traffic_done,
            "caught_up_s_after_traffic": round(caught_up, 1),
            "total_s": self.elapsed(),
            **check_figures(check),
            "examples": check.examples,
        }
        self.check = check
        return figures

    def close(self) -> None:
        """Stop the traffic and every running worker (SIGTERM to all, then wait for each)."""
        self.traffic.close()
        running = self.running()
        for worker in running:
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGTERM)
        for worker in running:
            worker.stop(timeout=60)
