"""Soak: a worker under a steady 50% of its measured peak for a long time (``make soak``).

1. Start a private broker (or use ``KAFKA_BOOTSTRAP_SERVERS``) and one worker.
2. Calibrate: publish a backlog and time how fast the worker scores it (the peak).
3. Publish at ``--load`` (default 0.5) x peak for ``--minutes`` (default 30) to a fixed
   population of contacts, sampling every ``--sample-seconds`` the worker's RSS (the process
   and its children, from /proc) and the consumer group's lag.
4. Pass when the mean RSS of the last window is less than 10% above the mean RSS of the first
   window after the warm-up (windows: 5 minutes, or a quarter of a shorter run; warm-up: 5
   minutes, or a sixth), no sample's lag exceeds 30 seconds of traffic, and the lag is back to
   0 within 60 s after the load stops.

Figures are printed and written to ``var/reliability/soak.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from engagement_index.core.events import ContactKey
from engagement_index.core.timestamps import ms_to_rfc3339
from tests.kafka_harness import REPO_ROOT, LocalBroker, StreamEnv

MODEL_YAML = (REPO_ROOT / "config" / "models" / "default.yaml").read_text()
CHANNELS = ("web", "email", "social", "commerce", "product")
TYPES = {
    "web": ("web.page_view", "web.form_submit"),
    "email": ("email.open", "email.click"),
    "social": ("social.like", "social.share"),
    "commerce": ("commerce.cart_add", "commerce.purchase"),
    "product": ("product.core_action",),
}


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (0 once it is gone)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        todo.extend(int(c) for c in children)
    return total


class Traffic:
    """Canonical events for a fixed population of contacts, each on its own channel."""

    def __init__(self, env: StreamEnv, contacts: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.n = 0
        self.contacts = []
        for i in range(contacts):
            channel = CHANNELS[i % len(CHANNELS)]
            tenant = "acme" if i % 2 else "globex"
            cid = f"soak-{i:06d}"
            self.contacts.append(
                (env.topic(channel), ContactKey(tenant, cid).encode(), tenant, cid, channel)
            )
        self.producer = KafkaProducer(
            bootstrap_servers=env.bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024
        )

    def send(self, count: int) -> None:
        now = ms_to_rfc3339(int(time.time() * 1000))
        rng = self.rng
        for _ in range(count):
            topic, key, tenant, cid, channel = self.contacts[rng.randrange(len(self.contacts))]
            self.n += 1
            value = (
                f'{{"event_id":"s-{self.n}","tenant":"{tenant}","contact_id":"{cid}",'
                f'"type":"{rng.choice(TYPES[channel])}","timestamp":"{now}"}}'
            ).encode()
            self.producer.send(topic, key=key, value=value)

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()


class Lag:
    """The worker group's uncommitted records on the inbound and re-key topics."""

    def __init__(self, env: StreamEnv) -> None:
        self.admin = KafkaAdminClient(bootstrap_servers=env.bootstrap)
        self.consumer = KafkaConsumer(bootstrap_servers=env.bootstrap)
        self.group = env.topology.app_id
        topics = [env.topic(c) for c in CHANNELS] + [env.topic("rekey")]
        self.tps = [
            TopicPartition(t, p)
            for t in topics
            for p in self.consumer.partitions_for_topic(t) or ()
        ]

    def __call__(self) -> int:
        committed = self.admin.list_consumer_group_offsets(self.group)
        ends = self.consumer.end_offsets(self.tps)
        return sum(
            end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items()
        )

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()


def scored(worker: Any) -> float:
    """The worker's count of scored + duplicate records."""
    status, text = worker.get("/metrics")
    if status != 200:
        return float("nan")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("engagement_events_consumed_total{") and (
            'outcome="scored"' in line or 'outcome="duplicate"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def calibrate(traffic: Traffic, worker: Any, events: int) -> dict[str, float]:
    """Publish a backlog of ``events`` and time the worker through its middle 80%."""
    base = scored(worker)

    def backlog() -> None:
        traffic.send(events)
        traffic.producer.flush()

    sender = threading.Thread(target=backlog)
    started = time.monotonic()
    sender.start()
    marks: dict[float, float] = {}
    deadline = started + 900
    while time.monotonic() < deadline:
        done = scored(worker) - base
        now = time.monotonic()
        for frac in (0.1, 0.9, 1.0):
            if frac not in marks and done >= frac * events:
                marks[frac] = now
        if 1.0 in marks:
            break
        time.sleep(0.2)
    sender.join()
    publish_s = time.monotonic() - started
    if 0.9 not in marks or 0.1 not in marks:
        raise SystemExit("calibration: the worker did not score the backlog within 900 s")
    peak = 0.8 * events / max(1e-3, marks[0.9] - marks[0.1])
    return {
        "calibration_events": events,
        "peak_events_per_s": round(peak, 1),
        "calibration_seconds": round(marks.get(1.0, time.monotonic()) - started, 1),
        "calibration_publish_seconds": round(publish_s, 1),
    }


def mean_in(samples: list[dict[str, float]], start: float, end: float, key: str) -> float:
    values = [s[key] for s in samples if start <= s["t"] < end]
    return statistics.fmean(values) if values else float("nan")


def run(args: argparse.Namespace) -> int:
    figures: dict[str, Any] = {"suite": "soak", "minutes": args.minutes, "load": args.load}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp_path = Path(tmp)
        broker = None
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            broker = LocalBroker(tmp_path / "kafka")
            started = broker.run("start")
            if started.returncode != 0:
                raise SystemExit(f"broker: {started.stdout}{started.stderr}")
            bootstrap = broker.bootstrap_servers
        env = StreamEnv(bootstrap, tmp_path, f"soak-{os.getpid()}", MODEL_YAML, args.partitions)
        worker = env.worker("soak")
        try:
            worker.start(timeout=180)
            assert worker.proc is not None
            traffic = Traffic(env, args.contacts)
            lag = Lag(env)
            figures.update(calibrate(traffic, worker, args.calibration_events))
            while lag() > 0:
                time.sleep(1)
            rate = args.load * figures["peak_events_per_s"]
            figures["target_events_per_s"] = round(rate, 1)
            print(json.dumps(figures), flush=True)
            total_s = args.minutes * 60
            window = min(300.0, total_s / 4)
            warmup = min(300.0, total_s / 6)
            lag_bound = int(rate * 30)
            samples: list[dict[str, float]] = []
            start = time.monotonic()
            next_sample = start
            sent = 0
            base_scored = scored(worker)
            while (now := time.monotonic()) < start + total_s:
                due = int((now - start) * rate) - sent
                if due > 0:
                    traffic.send(due)
                    sent += due
                if now >= next_sample:
                    sample = {
                        "t": round(now - start, 1),
                        "rss_mb": round(rss_bytes(worker.proc.pid) / 2**20, 1),
                        "lag": lag(),
                        "scored": scored(worker) - base_scored,
                        "sent": sent,
                    }
                    samples.append(sample)
                    print(json.dumps(sample), flush=True)
                    next_sample += args.sample_seconds
                time.sleep(0.05)
            traffic.close()
            stop = time.monotonic()
            drained = None
            while time.monotonic() < stop + 60:
                if lag() == 0:
                    drained = round(time.monotonic() - stop, 1)
                    break
                time.sleep(0.5)
            lag.close()
            first = mean_in(samples, warmup, warmup + window, "rss_mb")
            last = mean_in(samples, total_s - window, total_s + 1, "rss_mb")
            growth = last / first - 1
            after_warmup = [s for s in samples if s["t"] >= warmup]
            max_lag = max((s["lag"] for s in after_warmup), default=0)
            achieved = samples[-1]["scored"] / samples[-1]["t"] if samples[-1]["t"] else 0.0
            figures.update(
                {
                    "events_sent": sent,
                    "achieved_events_per_s": round(achieved, 1),
                    "warmup_seconds": warmup,
                    "window_seconds": window,
                    "rss_mb_first_window": round(first, 1),
                    "rss_mb_last_window": round(last, 1),
                    "rss_mb_max": max(s["rss_mb"] for s in samples),
                    "memory_growth": round(growth, 4),
                    "max_lag_after_warmup": max_lag,
                    "lag_bound": lag_bound,
                    "drained_seconds_after_stop": drained,
                    "samples": samples,
                }
            )
            checks = {
                "memory_growth_under_10pct": growth < 0.10,
                "lag_bounded": max_lag <= lag_bound,
                "drained_within_60s": drained is not None,
            }
            figures["checks"] = checks
            figures["passed"] = all(checks.values())
        finally:
            env.close()
            if broker is not None:
                broker.run("stop")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    summary = {k: v for k, v in figures.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    return 0 if figures.get("passed") else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--load", type=float, default=0.5, help="fraction of the peak")
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--calibration-events", type=int, default=60_000)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "reliability" / "soak.json")
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
