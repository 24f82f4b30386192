"""The cost of an identity merge: records and milliseconds.

    .venv/bin/python bench/merge.py [--merges N] [--no-broker]
    make bench-merge [ARGS="..."]

Method (bench/README.md, "Identity merge"):

1. *In process* (no broker): the worker's batch scorer (``stream/scoring.py``) with its tables
   in dicts. ``--merges`` anonymous contacts with 10 page views each and as many known contacts
   with 5 events each; then one identify per pair, each step of the protocol
   (``stream/identity.py``) scored as a batch of its own. Reported: the CPU time per step
   (median and p99, nearest rank), and the records one merge writes: sends per topic and table
   writes (each table write is one changelog record).
2. *On a broker* (unless ``--no-broker``): a private broker (``dev/kafka/kafka.sh``, free
   ports, state under bench/.cache/), one worker of the default model on 6 partitions, the same
   contacts produced and scored; then the identify records are produced one at a time, 20 a
   second, and each merge's latency is the merge record's timestamp minus its identify
   record's (both producer create times on this machine: publish to merge published, through
   the three steps). p50/p99 nearest rank.

Prints one JSON object; writes bench/results/merge.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from engagement_index.core.events import ContactKey
from engagement_index.core.model import load_model
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.scoring import BatchScorer, InboundRecord
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = ROOT / "config" / "models" / "default.yaml"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _event(contact: str, n: int, ts: int, etype: str) -> bytes:
    return json.dumps(
        {"event_id": f"{contact}-{n}", "tenant": "acme", "contact_id": contact, "type": etype,
         "timestamp": ms_to_rfc3339(ts)}
    ).encode()  # fmt: skip


def _identify(i: int, user: str, anon: str, ts: int) -> bytes:
    return json.dumps(
        {"kind": "identify", "event_id": f"id-{i}", "tenant": "acme", "contact_id": user,
         "anonymous_id": anon, "timestamp": ms_to_rfc3339(ts)}
    ).encode()  # fmt: skip


def traffic(merges: int, now: int) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, bytes]]]:
    """(topic role, contact, value) of the events, and (user, identify value) per merge."""
    events = []
    links = []
    for i in range(merges):
        user, anon = f"user-{i:05d}", f"anon-{i:05d}"
        for n in range(10):
            events.append(
                ("web", anon, _event(anon, n, now - 3_600_000 + n * 60_000, "web.page_view"))
            )
        for n in range(5):
            events.append(
                ("email", user, _event(user, n, now - 1_800_000 + n * 60_000, "email.click"))
            )
        links.append((user, _identify(i, user, anon, now - 1000)))
    return events, links


def in_process(merges: int) -> dict[str, Any]:
    topology = load_topology(ROOT / "streams" / "topology.yaml")
    now = int(time.time() * 1000)
    scorer = BatchScorer(
        model=load_model(MODEL_FILE),
        topology=topology,
        settings=Settings(),
        metrics=Metrics(CollectorRegistry()),
        clock_ms=lambda: now,
    )
    partitions = topology.scoring_partitions
    tables: dict[str, dict[bytes, bytes]] = {"contacts": {}, "history": {}, "aliases": {}}
    offsets: Counter[tuple[str, int]] = Counter()

    def record(topic: str, key: bytes, value: bytes, partition: int | None = None) -> InboundRecord:
        p = canonical_partition(key, partitions) if partition is None else partition
        offset = offsets[(topic, p)]
        offsets[(topic, p)] += 1
        return InboundRecord(topic, p, offset, key, value, now)

    def run(batch: list[InboundRecord]) -> Any:
        out = scorer.process(
            batch,
            lambda k, i: tables["contacts"].get(k),
            lambda k, i: tables["history"].get(k),
            None,
            load_alias=lambda k, i: tables["aliases"].get(k),
        )
        for name, writes in (("contacts", out.contact_writes), ("history", out.history_writes),
                             ("aliases", out.alias_writes)):  # fmt: skip
            for k, (_, v) in writes.items():
                if v is None:
                    tables[name].pop(k, None)
                else:
                    tables[name][k] = v
        return out

    events, links = traffic(merges, now)
    names = {role: spec.name for role, spec in topology.inbound.items()}
    for role, contact, value in events:
        run([record(names[role], ContactKey("acme", contact).encode(), value)])
    step_ms: dict[str, list[float]] = {"link": [], "absorb": [], "merge": []}
    sends: Counter[str] = Counter()
    writes: Counter[str] = Counter()
    read = set(topology.scoring_sources)
    for user, value in links:
        pending = [
            record(topology.outbound.identities.name, ContactKey("acme", user).encode(), value)
        ]
        for step in ("link", "absorb", "merge"):
            started = time.perf_counter()
            out = run(pending)
            step_ms[step].append((time.perf_counter() - started) * 1000)
            pending = []
            for s in out.sends:
                sends[s.topic] += 1
                if s.topic in read:
                    pending.append(record(s.topic, s.key, s.value, s.partition))
            written = {
                "contacts": out.contact_writes,
                "history": out.history_writes,
                "aliases": out.alias_writes,
                "daily": out.daily_writes,
            }
            for name, w in written.items():
                writes[name] += len(w)
    total = [sum(parts) for parts in zip(*step_ms.values(), strict=True)]
    return {
        "merges": merges,
        "cpu_ms_per_merge": {"p50": _pct(total, 0.5), "p99": _pct(total, 0.99)},
        "cpu_ms_per_step_p50": {step: _pct(v, 0.5) for step, v in step_ms.items()},
        "sends_per_merge": {t: n / merges for t, n in sorted(sends.items())},
        "table_writes_per_merge": {t: n / merges for t, n in sorted(writes.items())},
    }


def on_broker(merges: int) -> dict[str, Any]:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from tests.integration.test_worker_faults import wait_until
    from tests.kafka_harness import LocalBroker, StreamEnv

    cache = ROOT / "bench" / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    broker = LocalBroker(Path(tempfile.mkdtemp(prefix="merge-kafka-", dir=cache)))
    started = broker.run("start")
    if started.returncode != 0:
        raise SystemExit(f"could not start the broker:\n{started.stdout}\n{started.stderr}")
    try:
        work = Path(tempfile.mkdtemp(prefix="merge-", dir=cache))
        env = StreamEnv(broker.bootstrap_servers, work, "bm", MODEL_FILE.read_text(), 6)
        worker = env.worker("w1")
        worker.start()
        now = int(time.time() * 1000)
        events, links = traffic(merges, now)
        producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)
        for role, contact, value in events:
            producer.send(env.topic(role), key=ContactKey("acme", contact).encode(), value=value)
        producer.flush()
        last = links[-1][0]
        wait_until(
            lambda: worker.get(f"/v1/contacts/acme/{last}")[1].get("events_counted") == 5,
            300,
            "the contacts scored",
        )
        identities = env.topology.outbound.identities.name
        for user, value in links:
            producer.send(identities, key=ContactKey("acme", user).encode(), value=value)
            producer.flush()
            time.sleep(0.05)
        producer.close()
        merges_topic = env.topology.outbound.merges.name

        def all_merged() -> bool:
            return len(env.consume_all(merges_topic, idle_s=0.5)) >= merges

        wait_until(all_merged, 300, "every merge")

        def stamps(topic: str, field: str) -> dict[str, int]:
            consumer = KafkaConsumer(
                bootstrap_servers=env.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                consumer_timeout_ms=1500,
            )
            parts = consumer.partitions_for_topic(topic) or set()
            consumer.assign([TopicPartition(topic, p) for p in parts])
            consumer.seek_to_beginning()
            out = {json.loads(r.value)[field]: r.timestamp for r in consumer}
            consumer.close()
            return out

        sent = stamps(identities, "contact_id")
        done = stamps(merges_topic, "survivor_id")
        latency = [float(done[u] - sent[u]) for u in sent if u in done]
        worker.stop()
        return {
            "merges": len(latency),
            "latency_ms": {
                "p50": _pct(latency, 0.5),
                "p99": _pct(latency, 0.99),
                "max": max(latency),
            },
        }
    finally:
        broker.run("stop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=500)
    parser.add_argument("--no-broker", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"in_process": in_process(args.merges)}
    if not args.no_broker:
        result["on_broker"] = on_broker(min(args.merges, 200))
    text = json.dumps(result, indent=2)
    print(text)
    out = ROOT / "bench" / "results" / "merge.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
