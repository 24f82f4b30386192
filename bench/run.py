"""The benchmark harness: throughput, latency, recovery and footprint on one private broker.

    .venv/bin/python bench/run.py [--events N] [--contacts N] [--seed N] [--latency-seconds S]

One run starts its own broker (``dev/kafka/kafka.sh``, free ports, a state folder under
bench/.cache/runs/), loads the cached workload into private inbound topics once, then measures
in turn: (1) Kafka's ConsumerPerformance, (2) a bare aiokafka client, (3) a Quix Streams peer,
(4) the worker, (8) its footprint, (6) recovery of its deleted state, (5) the recovered
worker's latency at a fraction of its maximum, (7) the offline replay. It prints a table, writes
bench/results/latest.json and appends a row to bench/RESULTS.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import psutil
import yaml
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError

from bench import workload
from bench.private_topics import usable_prefix
from engagement_index.core.events import ContactKey
from engagement_index.topology import load_topology

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
CACHE = BENCH / ".cache"
KAFKA_SCRIPT = REPO / "dev" / "kafka" / "kafka.sh"
MODEL = REPO / "config" / "models" / "default.yaml"
QUIX_CONSTRAINTS = BENCH / "quix-constraints.txt"
RESULTS_JSON = BENCH / "results" / "latest.json"
RESULTS_MD = BENCH / "RESULTS.md"
ENGINE = [sys.executable, "-m", "engagement_index.cli"]
#: A cached workload is reused while its newest event is at most this old.
WORKLOAD_MAX_AGE_DAYS = 30

TARGETS = {
    "worker_vs_client": 0.5,
    "worker_vs_peer": 2.0,
    "worker_events_per_s": 50_000,
    "p99_ms": 50.0,
    "bytes_per_contact": 256,
    "recovery_contacts_per_s": 100_000,
    "replay_events_per_s": 300_000,
    # issue 17 (the compiled kernel)
    "worker_vs_peer_kernel": 1.5,
    "replay_vs_json_parse": 1.0,
}

_T0 = time.monotonic()


def log(message: str) -> None:
    """A progress line with the time since the run started."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rate(events: int, seconds: float | None) -> float | None:
    return events / seconds if seconds and seconds > 0 else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# --------------------------------------------------------------------------- broker
class Broker:
    """A private broker started with the project's script; stopped by :meth:`stop`."""

    def __init__(self, state_dir: Path) -> None:
        self.port = free_port()
        self.state_dir = state_dir
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_STATE_DIR": str(state_dir),
        }

    def _script(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAFKA_SCRIPT), action],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    def start(self) -> None:
        done = self._script("start")
        if done.returncode != 0:
            raise SystemExit(f"could not start the broker:\n{done.stdout}\n{done.stderr}")

    def stop(self) -> None:
        self._script("stop")

    def classpath(self) -> str:
        return self._script("classpath").stdout.strip()


class Kafka:
    """Offsets and reads: kafka-python for group offsets, confluent-kafka for bulk I/O."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
        self.offsets_consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
        )

    def close(self) -> None:
        self.offsets_consumer.close()
        self.admin.close()

    def partitions(self, topic: str) -> list[TopicPartition]:
        for _ in range(50):
            self.offsets_consumer.topics()  # refresh metadata
            found = self.offsets_consumer.partitions_for_topic(topic)
            if found:
                return [TopicPartition(topic, p) for p in sorted(found)]
            time.sleep(0.2)
        raise RuntimeError(f"topic {topic} not found")

    def end_offsets(self, topics: list[str]) -> dict[TopicPartition, int]:
        tps = [tp for topic in topics for tp in self.partitions(topic)]
        return dict(self.offsets_consumer.end_offsets(tps))

    def total_end(self, topics: list[str]) -> int:
        return sum(self.end_offsets(topics).values())

    def committed(self, group: str) -> dict[TopicPartition, int]:
        try:
            offsets = self.admin.list_consumer_group_offsets(group)
        except KafkaError:  # e.g. the coordinator is not there yet: nothing committed
            return {}
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    def lag(self, group: str, topics: list[str]) -> int:
        """Records in ``topics`` not yet committed by ``group``."""
        ends = self.end_offsets(topics)
        committed = self.committed(group)
        return sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items())

    def create_topic(self, name: str, partitions: int) -> None:
        self.admin.create_topics([NewTopic(name, partitions, 1)])

    def read(
        self, topic: str, start: dict[int, int] | None = None
    ) -> Iterator[tuple[bytes | None, bytes | None, int]]:
        """(key, value, timestamp_ms) of every record now in ``topic`` (from ``start``)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "bench-reader",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        try:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            remaining: dict[int, int] = {}
            assign = []
            for p in parts:
                low, high = consumer.get_watermark_offsets(CTopicPartition(topic, p), timeout=10)
                begin = max(low, (start or {}).get(p, low))
                if high > begin:
                    remaining[p] = high
                    assign.append(CTopicPartition(topic, p, begin))
            if not assign:
                return
            consumer.assign(assign)
            while remaining:
                for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                    if msg.error():
                        continue
                    p = msg.partition()
                    yield msg.key(), msg.value(), msg.timestamp()[1]
                    if p in remaining and msg.offset() + 1 >= remaining[p]:
                        del remaining[p]
        finally:
            consumer.close()


# --------------------------------------------------------------------------- workload
def prepare_workload(events: int, contacts: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """The cached workload file for these parameters (generated when missing or too old)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    now_ms = int(time.time() * 1000)
    for meta_file in sorted(CACHE.glob(f"events-{events}-{contacts}-{seed}-*.json"), reverse=True):
        meta = json.loads(meta_file.read_text())
        path = CACHE / meta["file"]
        if path.exists() and now_ms - meta["end_ms"] < WORKLOAD_MAX_AGE_DAYS * workload.MS_PER_DAY:
            log(f"workload: reusing {path.relative_to(REPO)}")
            return path, meta
    spec = workload.WorkloadSpec(events, contacts, seed, now_ms - 60_000)
    path = CACHE / spec.file_name()
    log(f"workload: generating {events:,} events over {contacts:,} contacts into {path.name}")
    started = time.monotonic()
    seen = workload.write(spec, path)
    meta = {
        "file": path.name,
        "events": events,
        "contacts": contacts,
        "contacts_seen": seen,
        "seed": seed,
        "end_ms": spec.end_ms,
        "start_ms": spec.start_ms,
        "bytes": path.stat().st_size,
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    log(f"workload: {seen:,} distinct contacts, written in {time.monotonic() - started:.1f}s")
    return path, meta


def load_topics(bootstrap: str, path: Path, inbound: dict[str, str]) -> dict[str, int]:
    """Produce every event of ``path`` to its channel's topic, keyed by contact."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",  # the Java client's default: same as aiokafka
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
        }
    )
    counts = dict.fromkeys(inbound, 0)
    with path.open("rb") as source:
        for n, line in enumerate(source, 1):
            event = orjson.loads(line)
            channel = workload.channel_of(event["type"])
            key = ContactKey(event["tenant"], event["contact_id"]).encode()
            while True:
                try:
                    producer.produce(inbound[channel], line.rstrip(b"\n"), key)
                    break
                except BufferError:
                    producer.poll(0.05)
            counts[channel] += 1
            if n % 10_000 == 0:
                producer.poll(0)
            if n % 250_000 == 0:
                log(f"load: {n:,} events produced")
    if producer.flush(120) != 0:
        raise RuntimeError("could not deliver every workload record")
    return counts


# --------------------------------------------------------------------------- topology
def private_topology(run_dir: Path, prefix: str) -> tuple[Path, dict[str, Any]]:
    """Copy streams/topology.yaml with a unique app id and topic names, 6 partitions."""
    raw = yaml.safe_load((REPO / "streams" / "topology.yaml").read_text())
    raw["app_id"] = f"{prefix}-app"
    raw["scoring_partitions"] = 6
    for group in raw.values():
        if not isinstance(group, dict):
            continue
        for spec in group.values():
            if isinstance(spec, dict) and "name" in spec:
                spec["name"] = f"{prefix}.{spec['name']}"
    # the changelogs' active segments roll every second during the worker's run (4), so that
    # the log cleaner (the broker's log.cleaner.backoff.ms is 1 s, dev/kafka/kafka.sh) has
    # cleaned most of each changelog before the recovery (6) reads it, as it would have in a
    # deployment that ran longer than the declared segment time. Rolling that often costs
    # the broker (a flush per rolled segment) and the latency phase (5) runs after the
    # recovery, with the declared segment time set back (Run.declared_changelog_segments).
    raw.setdefault("changelogs", {})["segment"] = "1s"
    path = run_dir / "topology.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw


# --------------------------------------------------------------------------- worker
class Worker:
    """One ``engagement-index worker`` process with RSS sampling."""

    def __init__(
        self,
        bootstrap: str,
        topology: Path,
        data_dir: Path,
        log_file: Path,
        env: dict[str, str],
        cprofile: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_file = log_file
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ENGAGEMENT_INDEX_TOPOLOGY_FILE": str(topology),
            "ENGAGEMENT_INDEX_MODEL_FILE": str(MODEL),
            "ENGAGEMENT_INDEX_DATA_DIR": str(data_dir),
            "ENGAGEMENT_INDEX_WEB_PORT": str(self.port),
            "ENGAGEMENT_INDEX_WEB_HOST": "127.0.0.1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.python = [sys.executable]
        if cprofile is not None:  # deterministic profile of the main thread, written on exit
            self.python = [sys.executable, "-m", "cProfile", "-o", str(cprofile)]
        self.started = 0.0
        self.peak_rss = 0
        self._sampling = False
        self._sampler: threading.Thread | None = None

    def start(self) -> None:
        with self.log_file.open("ab") as out:
            self.started = time.time()
            self.proc = subprocess.Popen(
                [*self.python, "-m", "engagement_index.cli", "worker"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        assert self.proc is not None
        try:
            process = psutil.Process(self.proc.pid)
            while self._sampling and self.proc.poll() is None:
                rss = process.memory_info().rss
                rss += sum(c.memory_info().rss for c in process.children(recursive=True))
                self.peak_rss = max(self.peak_rss, rss)
                time.sleep(0.5)
        except psutil.Error:
            pass

    def vm_hwm(self) -> int | None:
        """The kernel's peak resident set size of the process (VmHWM), in bytes."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(found.group(1)) * 1024 if found else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"the worker exited; see {self.log_file}:\n{self.log_tail()}")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (OSError, urllib.error.URLError):
            return 0, b""

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def metrics(self) -> dict[str, float]:
        """Prometheus samples summed over labels, by metric name."""
        status, body = self.get("/metrics")
        sums: dict[str, float] = {}
        if status != 200:
            return sums
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.partition("{")[0]
            with contextlib.suppress(ValueError):
                sums[name] = sums.get(name, 0.0) + float(value)
            outcome = re.search(r'outcome="([a-z_]+)"', name_labels)
            if outcome:
                key = f"{name}:{outcome.group(1)}"
                sums[key] = sums.get(key, 0.0) + float(value)
        return sums

    def stop(self, timeout: float = 120.0) -> None:
        self._sampling = False
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def compact_rocksdb(root: Path) -> int:
    """Run a manual full compaction of every RocksDB database under ``root`` (the worker
    stopped): what is left on disk is then the live data without older versions and
    tombstones. Opened with Faust's ``raw_mode``, as the worker's store opens them. Returns
    how many databases were compacted."""
    from rocksdict import Options, Rdict

    compacted = 0
    for current in sorted(root.rglob("CURRENT")):
        db = Rdict(str(current.parent), options=Options(raw_mode=True))
        try:
            db.compact_range(None, None)
        finally:
            db.close()
        compacted += 1
    return compacted


def dir_sizes(root: Path) -> dict[str, int]:
    """Bytes on disk under ``root``, split into the contacts table, history table, other.

    RocksDB's info logs (``LOG``, ``LOG.old.*``: text that each open of a database starts
    anew) are not counted: they are diagnostics, not data, and the compaction's own open
    would otherwise add one per database to the figure after compaction.
    """
    sizes = {"contacts": 0, "history": 0, "other": 0}
    if not root.exists():
        return sizes
    for path in root.rglob("*"):
        if not path.is_file() or path.name == "LOG" or path.name.startswith("LOG.old"):
            continue
        rel = str(path.relative_to(root))
        kind = next((k for k in ("contacts", "history") if f"{k}-" in rel), "other")
        sizes[kind] += path.stat().st_size
    return sizes


# --------------------------------------------------------------------------- the phases
class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        self.run_dir = CACHE / "runs" / stamp
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"b{stamp[-6:]}"
        self.results: dict[str, Any] = {}
        self.broker = Broker(self.run_dir / "kafka")
        self.kafka: Kafka | None = None
        self.worker: Worker | None = None
        self.worker_env = dict(kv.split("=", 1) for kv in args.worker_env)

    # -- setup
    def setup(self) -> None:
        args = self.args
        self.events_file, self.meta = prepare_workload(args.events, args.contacts, args.seed)
        self.results["workload"] = self.meta
        log(f"broker: starting (state in {self.broker.state_dir.relative_to(REPO)})")
        self.broker.start()
        log(f"broker: ready on {self.broker.bootstrap}")
        self.kafka = Kafka(self.broker.bootstrap)
        self.prefix, self.topology_file = usable_prefix(
            lambda prefix: private_topology(self.run_dir, prefix)[0], self.prefix
        )
        topo = yaml.safe_load(self.topology_file.read_text())
        self.app_id: str = topo["app_id"]
        self.tables: list[str] = list(topo["tables"])
        self.inbound: dict[str, str] = {ch: spec["name"] for ch, spec in topo["inbound"].items()}
        self.stage_topic: str = topo["outbound"]["stage_changes"]["name"]
        created = subprocess.run(
            [
                *ENGINE,
                "topics",
                "create",
                "--bootstrap-servers",
                self.broker.bootstrap,
                "--topology",
                str(self.topology_file),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if created.returncode != 0:
            raise SystemExit(f"topics create failed:\n{created.stdout}\n{created.stderr}")
        # Inbound record timestamps are the broker's append times, so that latency (5) counts
        # from the moment an event reached Kafka: on a shared 2-core machine the harness's own
        # producer can queue events for seconds, which is not the worker's latency. The
        # harness's send times are kept and reported too.
        # (AlterConfigs replaces a topic's configs: the topology's own go along)
        topology = load_topology(self.topology_file)
        self.k().admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    name,
                    configs={
                        **topology.topic_configs(spec),
                        "message.timestamp.type": "LogAppendTime",
                    },
                )
                for name, _partitions, spec in topology.all_topics()
                if name in self.inbound.values()
            ]
        )
        log(f"load: producing {self.meta['events']:,} events to {len(self.inbound)} topics")
        started = time.monotonic()
        counts = load_topics(self.broker.bootstrap, self.events_file, self.inbound)
        loaded = time.monotonic() - started
        self.results["load"] = {"per_channel": counts, "seconds": loaded}
        log(f"load: done in {loaded:.1f}s {counts}")
        self.n = self.meta["events"]

    def k(self) -> Kafka:
        assert self.kafka is not None
        return self.kafka

    # -- (1)
    def broker_limit(self) -> None:
        log("(1) broker limit: ConsumerPerformance per inbound topic")
        cp = self.broker.classpath()
        counts = self.results["load"]["per_channel"]
        total_msgs = 0
        total_s = 0.0
        fetch_s = 0.0
        per_topic = {}
        for channel, topic in self.inbound.items():
            if not counts[channel]:
                continue
            out = subprocess.run(
                [
                    "java",
                    "-Xmx512m",
                    "-cp",
                    cp,
                    "org.apache.kafka.tools.ConsumerPerformance",
                    "--bootstrap-server",
                    self.broker.bootstrap,
                    "--topic",
                    topic,
                    "--messages",
                    str(counts[channel]),
                    "--group",
                    f"{self.prefix}-cp-{channel}",
                    "--timeout",
                    "60000",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            lines = [line for line in out.stdout.splitlines() if line.strip()]
            header = next((i for i, line in enumerate(lines) if "nMsg.sec" in line), None)
            if out.returncode != 0 or header is None or header + 1 >= len(lines):
                raise RuntimeError(f"ConsumerPerformance failed:\n{out.stdout}\n{out.stderr}")
            names = [c.strip() for c in lines[header].split(",")]
            values = [c.strip() for c in lines[header + 1].split(",")]
            row = dict(zip(names, values, strict=False))
            msgs = int(row["data.consumed.in.nMsg"])
            msg_rate = float(row["nMsg.sec"])
            fetch_ms = float(row["fetch.time.ms"])
            per_topic[topic] = row
            total_msgs += msgs
            total_s += msgs / msg_rate if msg_rate else 0.0
            fetch_s += fetch_ms / 1000
        self.results["broker_limit"] = {
            "events": total_msgs,
            "seconds": total_s,
            "events_per_s": rate(total_msgs, total_s),
            "fetch_events_per_s": rate(total_msgs, fetch_s),
            "per_topic": per_topic,
        }
        log(
            f"(1) broker limit: {total_msgs:,} records, "
            f"{self.results['broker_limit']['events_per_s']:,.0f} records/s "
            f"(fetch only {self.results['broker_limit']['fetch_events_per_s']:,.0f}/s)"
        )

    # -- (2)
    def client_limit(self) -> None:
        log("(2) Python client limit: aiokafka consume + orjson decode + produce")
        sink = f"{self.prefix}.client-sink"
        self.k().create_topic(sink, 6)
        result = self._timed_subprocess(
            [
                sys.executable,
                str(BENCH / "client_limit.py"),
                "--bootstrap",
                self.broker.bootstrap,
                "--topics",
                ",".join(self.inbound.values()),
                "--sink",
                sink,
                "--group",
                f"{self.prefix}-client",
                "--events",
                str(self.n),
            ],
            self.run_dir / "client_limit.log",
        )
        self.results["client_limit"] = result
        log(f"(2) client limit: {result['events_per_s']:,.0f} events/s from process start")

    def _timed_subprocess(
        self, cmd: list[str], log_file: Path, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        started = time.time()
        with log_file.open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
            peak = 0
            with contextlib.suppress(psutil.Error):
                ps = psutil.Process(proc.pid)
                while proc.poll() is None:
                    peak = max(peak, ps.memory_info().rss)
                    time.sleep(0.5)
            out, _ = proc.communicate()
        finished = time.time()
        if proc.returncode != 0:
            tail = log_file.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{cmd[1]} failed ({proc.returncode}):\n{tail}")
        report = json.loads(out.decode().strip().splitlines()[-1])
        events = int(report["events"])
        wall = finished - started
        from_first = report["finished"] - report["first"] if report.get("first") else None
        return {
            **report,
            "seconds": wall,
            "events_per_s": rate(events, wall),
            "seconds_from_first_record": from_first,
            "events_per_s_from_first_record": rate(events, from_first),
            "peak_rss_bytes": peak,
        }

    # -- (2b)
    def consume_limit(self) -> None:
        log("(2b) consume-only limit: a bare aiokafka consumer, no decode")
        result = self._timed_subprocess(
            [
                sys.executable,
                str(BENCH / "consume_limit.py"),
                "--bootstrap",
                self.broker.bootstrap,
                "--topics",
                ",".join(self.inbound.values()),
                "--group",
                f"{self.prefix}-consume",
                "--events",
                str(self.n),
            ],
            self.run_dir / "consume_limit.log",
        )
        self.results["consume_limit"] = result
        log(f"(2b) consume-only limit: {result['events_per_s']:,.0f} events/s from process start")

    # -- (3)
    def peer(self) -> None:
        """The peer twice: with the pure-Python core, then with the compiled kernel."""
        self.results["peer"] = self._peer("python", {"ENGAGEMENT_INDEX_KERNEL": "python"})
        self.results["peer_kernel"] = self._peer("kernel", {})

    def _peer(self, label: str, extra_env: dict[str, str]) -> dict[str, Any]:
        python = ensure_quix_venv()
        log(f"(3) peer ({label}): Quix Streams app with the same core and RocksDB state")
        out = f"{self.prefix}.quix-{label}-out"
        self.k().create_topic(out, 6)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        env.pop("ENGAGEMENT_INDEX_KERNEL", None)
        env.update(extra_env)
        result = self._timed_subprocess(
            [
                str(python),
                str(BENCH / "peer_quix.py"),
                "--bootstrap",
                self.broker.bootstrap,
                "--topics",
                ",".join(self.inbound.values()),
                "--out",
                out,
                "--group",
                f"{self.prefix}-quix-{label}",
                "--state-dir",
                str(self.run_dir / f"quix-state-{label}"),
                "--model",
                str(MODEL),
                "--events",
                str(self.n),
            ],
            self.run_dir / f"peer_quix_{label}.log",
            env,
        )
        log(
            f"(3) peer ({label}): {result['events_per_s']:,.0f} events/s from process start, "
            f"{result['transitions']:,} transitions"
        )
        return result

    # -- (4)
    def worker_throughput(self) -> None:
        log("(4) worker: from process start until the inbound lag is 0 and committed")
        kafka = self.k()
        inbound = list(self.inbound.values())
        ends = kafka.end_offsets(inbound)
        total = sum(ends.values())
        worker = self.worker = Worker(
            self.broker.bootstrap,
            self.topology_file,
            self.run_dir / "worker-data",
            self.run_dir / "worker.log",
            self.worker_env,
            cprofile=CACHE / f"worker-{self.run_dir.name}.prof" if self.args.cprofile else None,
        )
        worker.start()
        profiler = self._start_profiler(worker)
        last_report = time.monotonic()
        deadline = time.monotonic() + self.args.timeout
        done_at: float | None = None
        while time.monotonic() < deadline:
            worker.check_alive()
            committed = kafka.committed(self.app_id)
            done = sum(min(committed.get(tp, 0), end) for tp, end in ends.items())
            if done >= total:
                done_at = time.time()
                break
            if time.monotonic() - last_report >= 10:
                elapsed = time.time() - worker.started
                log(f"(4) worker: {done:,}/{total:,} committed after {elapsed:.0f}s")
                last_report = time.monotonic()
            time.sleep(0.25)
        if done_at is None:
            raise RuntimeError(f"the worker did not catch up within {self.args.timeout}s")
        if profiler is not None and profiler.wait() != 0:
            log(f"profile: py-spy failed, see {self.run_dir / 'py-spy.log'} (try --cprofile)")
        first = min((ts for _k, _v, ts in self._first_records(self.stage_topic)), default=None)
        first_s = first / 1000 if first else None
        seconds = done_at - worker.started
        from_first = done_at - first_s if first_s else None
        metrics = worker.metrics()
        changelogs = {
            table: kafka.total_end([f"{self.app_id}-{table}-changelog"])
            for table in ("contacts", "history")
        }
        produced_topics = yaml.safe_load(self.topology_file.read_text())
        produced = {  # records on every topic the worker writes (outbound, internal, changelogs)
            role: kafka.total_end([spec["name"]])
            for group in ("outbound", "internal")
            for role, spec in produced_topics[group].items()
        }
        for table in produced_topics["tables"]:
            produced[f"{table}_changelog"] = kafka.total_end([f"{self.app_id}-{table}-changelog"])
        self.results["worker"] = {
            "events": total,
            "seconds": seconds,
            "events_per_s": rate(total, seconds),
            "startup_seconds": (first_s - worker.started) if first_s else None,
            "seconds_from_first_record": from_first,
            "events_per_s_from_first_record": rate(total, from_first),
            "scored": metrics.get("engagement_events_consumed_total:scored"),
            "duplicates": metrics.get("engagement_events_consumed_total:duplicate"),
            "dead_lettered": metrics.get("engagement_events_consumed_total:dead_lettered"),
            "transitions": metrics.get("engagement_transitions_total"),
            "changelog_records": changelogs,
            "changelog_records_per_event": sum(changelogs.values()) / total,
            "contacts_changelog_records_per_event": changelogs["contacts"] / total,
            "score_snapshots": metrics.get("engagement_score_snapshots_total"),
            "produced_records": produced,
            "produced_records_per_event": sum(produced.values()) / total,
        }
        w = self.results["worker"]
        log(
            f"(4) worker: {w['events_per_s']:,.0f} events/s from process start, "
            f"{w['events_per_s_from_first_record'] or 0:,.0f}/s from the first record; "
            f"{w['transitions'] or 0:,.0f} transitions, {w['dead_lettered'] or 0:,.0f} dead letters"
        )
        self._settle()

    def _first_records(self, topic: str) -> Iterator[tuple[bytes | None, bytes | None, int]]:
        """The first record of each partition of ``topic``."""
        consumer = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": "bench-first"})
        try:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            for p in parts:
                low, high = consumer.get_watermark_offsets(CTopicPartition(topic, p), timeout=10)
                if high <= low:
                    continue
                consumer.assign([CTopicPartition(topic, p, low)])
                for _ in range(20):
                    msgs = consumer.consume(1, timeout=1.0)
                    if msgs and not msgs[0].error():
                        yield msgs[0].key(), msgs[0].value(), msgs[0].timestamp()[1]
                        break
        finally:
            consumer.close()

    def _start_profiler(self, worker: Worker) -> subprocess.Popen[bytes] | None:
        seconds = self.args.profile_seconds
        if not seconds:
            return None
        py_spy = Path(sys.executable).parent / "py-spy"
        if not py_spy.exists():
            log("profile: py-spy is not installed in this venv; skipped")
            return None
        assert worker.proc is not None
        out = CACHE / f"worker-profile-{self.run_dir.name}.txt"
        log(f"profile: py-spy for {seconds}s into {out.relative_to(REPO)}")
        self.results["profile_file"] = str(out)
        time.sleep(3)  # past the imports
        # --native (the kernel's frames too) needs py-spy to pause the process for each sample
        mode = ["--native"] if self.args.profile_native else ["--nonblocking"]
        return subprocess.Popen(
            [
                str(py_spy),
                "record",
                *mode,
                "--format",
                "raw",
                "-o",
                str(out),
                "-d",
                str(max(1, round(seconds))),  # py-spy takes whole seconds
                "--pid",
                str(worker.proc.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.run_dir / "py-spy.log").open("wb"),
        )

    def _settle(self, quiet_s: float = 3.0, max_s: float = 120.0) -> None:
        """Wait until the group has no lag anywhere (decay ticks included) for ``quiet_s``."""
        assert self.worker is not None
        topology = yaml.safe_load(self.topology_file.read_text())
        topics = [*self.inbound.values(), topology["internal"]["ticks"]["name"]]
        quiet_since: float | None = None
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            self.worker.check_alive()
            lag = self.k().lag(self.app_id, topics)
            if lag == 0:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= quiet_s:
                    return
            else:
                quiet_since = None
            time.sleep(0.5)
        log("settle: the worker still had lag (decay ticks) after the wait; going on")

    # -- (5)
    def declared_changelog_segments(self) -> None:
        """Set the table changelogs' configs back to those of streams/topology.yaml (the
        run's topology rolls their segments every second for the recovery (6))."""
        declared = load_topology(REPO / "streams" / "topology.yaml").changelog_configs()
        self.k().admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, f"{self.app_id}-{table}-changelog", configs=declared
                )
                for table in self.tables
            ]
        )
        log(f"changelogs: segment.ms back to the declared {declared['segment.ms']} ms")

    def _running_worker(self) -> Worker:
        """The worker the recovery (6) left running; a new one on the same state otherwise."""
        if self.worker is not None and self.worker.alive():
            return self.worker
        assert self.worker is not None
        worker = self.worker = Worker(
            self.broker.bootstrap,
            self.topology_file,
            self.worker.data_dir,
            self.run_dir / "worker-latency.log",
            self.worker_env,
        )
        worker.start()
        deadline = time.monotonic() + self.args.timeout
        while not worker.ready():
            worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("the worker for the latency phase did not become ready")
            time.sleep(0.1)
        return worker

    def latency(self) -> None:
        assert self.worker is not None
        self.declared_changelog_segments()
        self._running_worker()
        self._settle()  # a recovered worker sends the wake-ups that came due meanwhile
        max_rate = (
            self.results["worker"]["events_per_s_from_first_record"]
            or self.results["worker"]["events_per_s"]
        )
        target = self.args.latency_rate or max(1.0, max_rate * self.args.latency_load)
        seconds = self.args.latency_seconds
        share = (
            "fixed by --latency-rate"
            if self.args.latency_rate
            else f"{self.args.latency_load:.0%} of {max_rate:,.0f}"
        )
        log(f"(5) latency: {target:,.0f} events/s ({share}) for {seconds:.0f}s")
        kafka = self.k()
        start = {tp.partition: off for tp, off in kafka.end_offsets([self.stage_topic]).items()}
        inbound_start = {
            topic: {tp.partition: off for tp, off in kafka.end_offsets([topic]).items()}
            for topic in self.inbound.values()
        }
        source = workload.LiveSource(self.args.contacts, self.args.seed)
        producer = Producer(
            {
                "bootstrap.servers": self.broker.bootstrap,
                "partitioner": "murmur2_random",
                "linger.ms": 1,
            }
        )
        sent_at: dict[str, int] = {}
        begin = time.monotonic()
        sent = 0
        next_report = begin + 10
        while True:
            now = time.monotonic()
            if now - begin >= seconds:
                break
            due = int(target * (now - begin)) - sent
            for _ in range(due):
                ms = int(time.time() * 1000)
                event = source.event(ms)
                event_id = str(event["event_id"])
                topic = self.inbound[workload.channel_of(str(event["type"]))]
                key = ContactKey(str(event["tenant"]), str(event["contact_id"])).encode()
                producer.produce(topic, orjson.dumps(event), key, timestamp=ms)
                sent_at[event_id] = ms
            sent += max(due, 0)
            producer.poll(0)
            if now >= next_report:
                log(f"(5) latency: {sent:,} events sent")
                next_report += 10
            time.sleep(0.002)
        producer.flush(60)
        elapsed = time.monotonic() - begin
        log(f"(5) latency: {sent:,} events sent in {elapsed:.1f}s; waiting for the worker")
        deadline = time.monotonic() + 120
        while kafka.lag(self.app_id, list(self.inbound.values())) and time.monotonic() < deadline:
            self.worker.check_alive()
            time.sleep(0.5)
        time.sleep(1.0)
        appended_at: dict[str, int] = {}  # event id -> the inbound record's (append) timestamp
        for topic, offsets in inbound_start.items():
            for _key, value, ts in kafka.read(topic, offsets):
                if value is not None:
                    appended_at[str(orjson.loads(value).get("event_id"))] = ts
        latencies: list[float] = []
        from_send: list[float] = []
        samples: list[str] = []
        transitions = 0
        for _key, value, ts in kafka.read(self.stage_topic, start):
            if value is None:
                continue
            transitions += 1
            cause = orjson.loads(value).get("cause_event_id")
            if cause in sent_at and cause in appended_at:
                latencies.append(float(ts - appended_at[cause]))
                from_send.append(float(ts - sent_at[cause]))
                samples.append(f"{sent_at[cause]},{appended_at[cause]},{ts}")
        # every sample, to see whether the slow ones cluster in time and where they waited
        (self.run_dir / "latency.csv").write_text(
            "sent_ms,appended_ms,stage_change_ms\n" + "\n".join(samples)
        )
        latencies.sort()
        from_send.sort()
        self.results["latency"] = {
            "target_events_per_s": target,
            "sent": sent,
            "sent_events_per_s": sent / elapsed,
            "seconds": elapsed,
            "transitions_read": transitions,
            "samples": len(latencies),
            "p50_ms": workload.percentile(latencies, 0.50),
            "p99_ms": workload.percentile(latencies, 0.99),
            "p999_ms": workload.percentile(latencies, 0.999),
            "max_ms": latencies[-1] if latencies else None,
            # from the harness's produce() call instead of the broker's append
            "from_send_p50_ms": workload.percentile(from_send, 0.50),
            "from_send_p99_ms": workload.percentile(from_send, 0.99),
            "from_send_p999_ms": workload.percentile(from_send, 0.999),
        }
        r = self.results["latency"]
        log(
            f"(5) latency: {r['samples']:,} stage changes: p50 {r['p50_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms, p99.9 {r['p999_ms']:.1f} ms from the broker's append "
            f"(from the harness's send: p50 {r['from_send_p50_ms']:.1f}, "
            f"p99 {r['from_send_p99_ms']:.1f}, p99.9 {r['from_send_p999_ms']:.1f})"
        )

    # -- (8)
    def footprint(self) -> None:
        worker = self.worker
        assert worker is not None
        log("(8) footprint: peak RSS, RocksDB size, changelog values")
        hwm = worker.vm_hwm()
        worker.stop()
        sizes = dir_sizes(worker.data_dir)
        databases = compact_rocksdb(worker.data_dir)
        compacted = dir_sizes(worker.data_dir)
        contacts_cl = f"{self.app_id}-contacts-changelog"
        latest: dict[bytes | None, int] = {}
        records = 0
        key_bytes = 0
        for key, value, _ts in self.k().read(contacts_cl):
            records += 1
            latest[key] = len(value or b"")
        for key in latest:
            key_bytes += len(key or b"")
        contacts = len(latest)
        self.contacts_restored = contacts
        self.results["footprint"] = {
            "peak_rss_bytes": max(hwm or 0, worker.peak_rss),
            "vm_hwm_bytes": hwm,
            "sampled_peak_rss_bytes": worker.peak_rss,
            "data_dir_bytes": sizes,
            "data_dir_bytes_compacted": compacted,
            "rocksdb_databases_compacted": databases,
            "contacts": contacts,
            # as the worker left them (older versions and tombstones not yet compacted away)
            "rocksdb_bytes_per_contact": sizes["contacts"] / contacts if contacts else None,
            "rocksdb_bytes_per_contact_all_tables": sum(sizes.values()) / contacts
            if contacts
            else None,
            # after a manual full compaction of every database (the figure the target is for)
            "rocksdb_bytes_per_contact_compacted": compacted["contacts"] / contacts
            if contacts
            else None,
            "rocksdb_bytes_per_contact_all_tables_compacted": sum(compacted.values()) / contacts
            if contacts
            else None,
            "changelog_mean_value_bytes": sum(latest.values()) / contacts if contacts else None,
            "changelog_mean_key_bytes": key_bytes / contacts if contacts else None,
            "contacts_changelog_records": records,
            "changelog_records_per_event": self.results["worker"]["changelog_records_per_event"],
        }
        f = self.results["footprint"]
        log(
            f"(8) footprint: peak RSS {f['peak_rss_bytes'] / 2**20:,.0f} MiB, "
            f"{f['rocksdb_bytes_per_contact'] or 0:,.0f} B/contact on disk (contacts table), "
            f"{f['rocksdb_bytes_per_contact_compacted'] or 0:,.0f} B after compaction, "
            f"{f['changelog_mean_value_bytes'] or 0:,.0f} B mean value, "
            f"{f['changelog_records_per_event']:.2f} changelog records/event"
        )

    # -- (6)
    def recovery(self) -> None:
        old = self.worker
        assert old is not None
        log("(6) recovery: state folder deleted, restart until /readyz is 200")
        shutil.rmtree(old.data_dir, ignore_errors=True)
        # what the restore reads: the records now in the table changelogs (the cleaner has
        # dropped the older versions of keys in the segments it has cleaned)
        restore_records = {
            table: sum(1 for _ in self.k().read(f"{self.app_id}-{table}-changelog"))
            for table in self.tables
        }
        worker = self.worker = Worker(
            self.broker.bootstrap,
            self.topology_file,
            old.data_dir,
            self.run_dir / "worker-recovery.log",
            self.worker_env,
        )
        worker.start()
        deadline = time.monotonic() + self.args.timeout
        ready_at: float | None = None
        while time.monotonic() < deadline:
            worker.check_alive()
            if worker.ready():
                ready_at = time.time()
                break
            time.sleep(0.1)
        hwm = worker.vm_hwm()  # it goes on running: the latency phase (5) comes next
        if ready_at is None:
            raise RuntimeError("the worker did not become ready after deleting its state")
        seconds = ready_at - worker.started
        changelog_records = sum(self.results["worker"]["changelog_records"].values())
        self.results["recovery"] = {
            "seconds": seconds,
            "contacts": self.contacts_restored,
            "contacts_per_s": rate(self.contacts_restored, seconds),
            "changelog_records": changelog_records,
            "changelog_records_per_s": rate(changelog_records, seconds),
            "restore_records": restore_records,
            "restore_records_per_contact": sum(restore_records.values()) / self.contacts_restored
            if self.contacts_restored
            else None,
            "peak_rss_bytes": max(hwm or 0, worker.peak_rss),
        }
        r = self.results["recovery"]
        log(
            f"(6) recovery: {r['contacts']:,} contacts ready in {seconds:.1f}s = "
            f"{r['contacts_per_s']:,.0f} contacts/s; the changelogs held "
            f"{sum(restore_records.values()):,} records "
            f"({r['restore_records_per_contact'] or 0:.2f} per contact)"
        )

    # -- (7)
    def replay(self) -> None:
        """The replay with the kernel and with the Python core (``ENGAGEMENT_INDEX_KERNEL=
        python``), and its JSON-parse limit: a bare ``orjson.loads`` loop over the same file."""
        self.results["replay"] = replay_figures(self.events_file, self.n, self.run_dir)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=30)
        if self.kafka is not None:
            with contextlib.suppress(Exception):
                self.kafka.close()
        log("broker: stopping")
        self.broker.stop()
        if not self.args.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)


# --------------------------------------------------------------------------- replay
#: The replay's JSON-parse limit: what reading and parsing the file alone costs.
JSON_PARSE_LOOP = """
import sys, orjson
loads = orjson.loads
with open(sys.argv[1], "rb") as f:
    for line in f:
        loads(line)
"""


def _timed(command: list[str], err_path: Path, env: dict[str, str] | None = None) -> float:
    started = time.time()
    with err_path.open("wb") as err:
        done = subprocess.run(
            command,
            stdout=subprocess.DEVNULL,
            stderr=err,
            check=False,
            env={**os.environ, **(env or {})},
        )
    if done.returncode != 0:
        raise RuntimeError(f"{command[2:4]} failed; see {err_path}")
    return time.time() - started


def replay_figures(events_file: Path, n: int, run_dir: Path) -> dict[str, Any]:
    """(7): ``engagement-index replay`` with the kernel and with the Python core, and the
    JSON-parse limit of the same file; events/s and ratios within the run. Each command also
    runs on an empty file: its start-up (interpreter, imports, model compile), so that the
    per-event rates after start-up can be compared as well as the wall times."""
    empty = run_dir / "empty.jsonl"
    empty.write_bytes(b"")
    replay = [*ENGINE, "replay"]
    parse_loop = [sys.executable, "-c", JSON_PARSE_LOOP]
    log("(7) replay: start-up of each command on an empty file")
    kernel_start = _timed([*replay, str(empty)], run_dir / "replay-empty.err")
    parse_start = _timed([*parse_loop, str(empty)], run_dir / "json-parse-empty.err")
    log(f"(7) replay: start-up {kernel_start:.2f}s; JSON-parse loop start-up {parse_start:.2f}s")
    log("(7) replay: engagement-index replay on the same events file (kernel)")
    kernel = _timed([*replay, str(events_file)], run_dir / "replay.err")
    log(f"(7) replay: {n / kernel:,.0f} events/s with the kernel ({kernel:.1f}s)")
    python = _timed(
        [*replay, str(events_file)],
        run_dir / "replay-python.err",
        {"ENGAGEMENT_INDEX_KERNEL": "python"},
    )
    log(f"(7) replay: {n / python:,.0f} events/s with the Python core ({python:.1f}s)")
    parse = _timed([*parse_loop, str(events_file)], run_dir / "json-parse.err")
    log(f"(7) replay: JSON-parse limit {n / parse:,.0f} events/s ({parse:.1f}s)")
    kernel_work, parse_work = kernel - kernel_start, parse - parse_start
    return {
        "events": n,
        "seconds": kernel,
        "events_per_s": rate(n, kernel),
        "python_core_events_per_s": rate(n, python),
        "json_parse_events_per_s": rate(n, parse),
        "vs_python_core": python / kernel,
        "vs_json_parse": parse / kernel,
        "startup_seconds": kernel_start,
        "json_parse_startup_seconds": parse_start,
        "events_per_s_after_startup": rate(n, kernel_work) if kernel_work > 0 else None,
        "json_parse_events_per_s_after_startup": rate(n, parse_work) if parse_work > 0 else None,
        "vs_json_parse_after_startup": (
            parse_work / kernel_work if kernel_work > 0 and parse_work > 0 else None
        ),
    }


# --------------------------------------------------------------------------- quix venv
def ensure_quix_venv() -> Path:
    """The peer's own venv (quixstreams pins clash with the project's), created once."""
    venv = CACHE / "quix-venv"
    python = venv / "bin" / "python"
    digest = hashlib.sha256(QUIX_CONSTRAINTS.read_bytes()).hexdigest()
    stamp = venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    log(f"(3) peer: creating {venv.relative_to(REPO)} with quixstreams (first run only)")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(QUIX_CONSTRAINTS),
            "quixstreams",
            "PyYAML",
        ],
        check=True,
    )
    stamp.write_text(digest)
    return python


# --------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "commit": git("rev-parse", "HEAD"),
        "src_dirty": bool(git("status", "--porcelain", "--", "src")),
        "load_average_at_start": os.getloadavg(),
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    w = results.get("worker", {})
    worker_rate = w.get("events_per_s")
    return {
        "worker_events_per_s": worker_rate,
        "worker_events_per_s_from_first_record": w.get("events_per_s_from_first_record"),
        "worker_vs_client": ratio(worker_rate, results.get("client_limit", {}).get("events_per_s")),
        "worker_vs_peer": ratio(worker_rate, results.get("peer", {}).get("events_per_s")),
        "worker_vs_peer_kernel": ratio(
            worker_rate, results.get("peer_kernel", {}).get("events_per_s")
        ),
        "worker_vs_consume": ratio(
            worker_rate, results.get("consume_limit", {}).get("events_per_s")
        ),
        "replay_vs_json_parse": results.get("replay", {}).get("vs_json_parse"),
        "replay_vs_python_core": results.get("replay", {}).get("vs_python_core"),
        "worker_vs_broker": ratio(worker_rate, results.get("broker_limit", {}).get("events_per_s")),
        "p99_ms": results.get("latency", {}).get("p99_ms"),
        "bytes_per_contact": results.get("footprint", {}).get(
            "rocksdb_bytes_per_contact_compacted"
        ),
        "bytes_per_contact_as_left": results.get("footprint", {}).get("rocksdb_bytes_per_contact"),
        "recovery_contacts_per_s": results.get("recovery", {}).get("contacts_per_s"),
        "replay_events_per_s": results.get("replay", {}).get("events_per_s"),
    }


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def print_table(results: dict[str, Any]) -> None:
    h = results["headline"]
    g = results.get
    b, c, p, w = g("broker_limit", {}), g("client_limit", {}), g("peer", {}), g("worker", {})
    lat, rec, rep, fp = g("latency", {}), g("recovery", {}), g("replay", {}), g("footprint", {})

    def check(value: float | None, target: float, higher: bool = True) -> str:
        if value is None:
            return ""
        ok = value >= target if higher else value < target
        return "ok" if ok else "MISSED"

    rows: list[tuple[str, str, str, str]] = [
        ("(1) broker limit (ConsumerPerformance)", _fmt(b.get("events_per_s")), "records/s", ""),
        ("(2) Python client limit (aiokafka)", _fmt(c.get("events_per_s")), "events/s", ""),
        (
            "(2b) consume-only limit (aiokafka)",
            _fmt(g("consume_limit", {}).get("events_per_s")),
            "events/s",
            "",
        ),
        ("(3) peer (Quix Streams + Python core)", _fmt(p.get("events_per_s")), "events/s", ""),
        (
            "    peer (Quix Streams + kernel)",
            _fmt(g("peer_kernel", {}).get("events_per_s")),
            "events/s",
            "",
        ),
        ("(4) worker, from process start", _fmt(w.get("events_per_s")), "events/s", ""),
        (
            "    worker, from first record",
            _fmt(w.get("events_per_s_from_first_record")),
            "events/s",
            "",
        ),
        (
            "    worker / client limit",
            _fmt(h["worker_vs_client"], 2),
            "x",
            check(h["worker_vs_client"], TARGETS["worker_vs_client"]),
        ),
        (
            "    worker / peer",
            _fmt(h["worker_vs_peer"], 2),
            "x",
            check(h["worker_vs_peer"], TARGETS["worker_vs_peer"]),
        ),
        (
            "    worker / peer with the kernel",
            _fmt(h["worker_vs_peer_kernel"], 2),
            "x",
            check(h["worker_vs_peer_kernel"], TARGETS["worker_vs_peer_kernel"]),
        ),
        ("    worker / consume-only limit", _fmt(h["worker_vs_consume"], 2), "x", ""),
        ("    worker / broker limit", _fmt(h["worker_vs_broker"], 3), "x", ""),
        (
            "    worker >= 50,000 events/s",
            _fmt(w.get("events_per_s")),
            "events/s",
            check(w.get("events_per_s"), TARGETS["worker_events_per_s"]),
        ),
        ("(5) latency p50", _fmt(lat.get("p50_ms"), 1), "ms", ""),
        ("    latency p99", _fmt(lat.get("p99_ms"), 1), "ms", check(lat.get("p99_ms"), 50, False)),
        ("    latency p99.9", _fmt(lat.get("p999_ms"), 1), "ms", ""),
        ("    p99 from the harness's send", _fmt(lat.get("from_send_p99_ms"), 1), "ms", ""),
        (
            "    at load / samples",
            f"{_fmt(lat.get('sent_events_per_s'))} / {_fmt(lat.get('samples'))}",
            "ev/s / n",
            "",
        ),
        (
            "(6) recovery",
            _fmt(rec.get("contacts_per_s")),
            "contacts/s",
            check(rec.get("contacts_per_s"), TARGETS["recovery_contacts_per_s"]),
        ),
        ("    recovery time", _fmt(rec.get("seconds"), 1), "s", ""),
        (
            "    changelog records read per contact",
            _fmt(rec.get("restore_records_per_contact"), 2),
            "",
            "",
        ),
        (
            "(7) replay",
            _fmt(rep.get("events_per_s")),
            "events/s",
            check(rep.get("events_per_s"), TARGETS["replay_events_per_s"]),
        ),
        ("    replay, Python core", _fmt(rep.get("python_core_events_per_s")), "events/s", ""),
        ("    replay JSON-parse limit", _fmt(rep.get("json_parse_events_per_s")), "events/s", ""),
        (
            "    replay / JSON-parse limit",
            _fmt(h["replay_vs_json_parse"], 2),
            "x",
            check(h["replay_vs_json_parse"], TARGETS["replay_vs_json_parse"]),
        ),
        ("    replay / Python core", _fmt(h["replay_vs_python_core"], 2), "x", ""),
        (
            "    start-up: replay / JSON-parse loop",
            " / ".join(
                _fmt(rep.get(key), 2) for key in ("startup_seconds", "json_parse_startup_seconds")
            ),
            "s",
            "",
        ),
        (
            "    after start-up: replay / JSON-parse limit",
            _fmt(rep.get("vs_json_parse_after_startup"), 2),
            "x",
            "",
        ),
        ("(8) peak RSS of the worker", _fmt((fp.get("peak_rss_bytes") or 0) / 2**20), "MiB", ""),
        (
            "    RocksDB B/contact, contacts table, compacted",
            _fmt(fp.get("rocksdb_bytes_per_contact_compacted")),
            "B",
            check(
                fp.get("rocksdb_bytes_per_contact_compacted"),
                TARGETS["bytes_per_contact"] + 1,
                False,
            ),
        ),
        (
            "    RocksDB B/contact, contacts table, as left",
            _fmt(fp.get("rocksdb_bytes_per_contact")),
            "B",
            "",
        ),
        (
            "    RocksDB B/contact, all tables, compacted",
            _fmt(fp.get("rocksdb_bytes_per_contact_all_tables_compacted")),
            "B",
            "",
        ),
        (
            "    RocksDB B/contact, all tables, as left",
            _fmt(fp.get("rocksdb_bytes_per_contact_all_tables")),
            "B",
            "",
        ),
        ("    mean stored value (changelog)", _fmt(fp.get("changelog_mean_value_bytes")), "B", ""),
        (
            "    changelog records per event",
            _fmt(fp.get("changelog_records_per_event"), 2),
            "",
            "",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, unit, verdict in rows:
        print(f"  {name:<{width}}  {value:>14}  {unit:<10} {verdict}")
    print()


def append_history(results: dict[str, Any]) -> None:
    h = results["headline"]
    m = results["machine"]
    if not RESULTS_MD.exists():
        RESULTS_MD.write_text("# Benchmark history\n\n")
    text = RESULTS_MD.read_text()
    header = (
        "| date | commit | events | worker/client | worker/peer | worker events/s "
        "| p99 ms | B/contact | recovery contacts/s | replay events/s |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    if "| date | commit |" not in text:
        text = text.rstrip("\n") + "\n\n" + header
    commit = m["commit"][:10] + ("+dirty" if m["src_dirty"] else "")
    row = (
        f"| {results['date'][:16].replace('T', ' ')} | {commit} "
        f"| {results['workload']['events']:,} | {_fmt(h['worker_vs_client'], 2)} "
        f"| {_fmt(h['worker_vs_peer'], 2)} | {_fmt(h['worker_events_per_s'])} "
        f"| {_fmt(h['p99_ms'], 1)} | {_fmt(h['bytes_per_contact'])} "
        f"| {_fmt(h['recovery_contacts_per_s'])} | {_fmt(h['replay_events_per_s'])} |\n"
    )
    # after the last row of the history table (other tables may follow it in the file)
    lines = text.rstrip("\n").split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("| date | commit | events |"))
    while at + 1 < len(lines) and lines[at + 1].startswith("|"):
        at += 1
    lines.insert(at + 1, row.rstrip("\n"))
    RESULTS_MD.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- main
PHASES: dict[str, Callable[[Run], None]] = {
    "broker": Run.broker_limit,
    "client": Run.client_limit,
    "consume": Run.consume_limit,
    "peer": Run.peer,
    "worker": Run.worker_throughput,
    "footprint": Run.footprint,
    "recovery": Run.recovery,
    "latency": Run.latency,
    "replay": Run.replay,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the worker against the broker, client and peer limits."
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the workload")
    parser.add_argument("--contacts", type=int, default=100_000, help="contacts in the workload")
    parser.add_argument("--seed", type=int, default=7, help="workload seed")
    parser.add_argument(
        "--latency-seconds", type=float, default=60.0, help="length of the latency phase"
    )
    parser.add_argument(
        "--latency-load", type=float, default=0.2, help="latency load as a share of the max"
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="latency load in events/s instead of a share of the max (to compare settings)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["broker", "client", "consume", "peer", "latency", "replay"],
        help="leave a phase out (repeatable); the results then lack its figures",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the worker, e.g. ENGAGEMENT_INDEX_BATCH_SIZE=5000",
    )
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=0,
        help="record a py-spy profile of the worker for this long during (4)",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="with --profile-seconds: py-spy --native (native frames, the kernel's included)",
    )
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help="run the worker of (4) under cProfile (slower; stats in bench/.cache/worker-*.prof)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="max seconds per phase")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs, state)")
    parser.add_argument(
        "--no-history", action="store_true", help="do not append a row to bench/RESULTS.md"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    results = run.results
    results["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["machine"] = machine()
    results["args"] = dict(vars(args).items())
    results["targets"] = TARGETS
    log(
        f"bench: {args.events:,} events, {args.contacts:,} contacts, seed {args.seed}; "
        f"{results['machine']['cores']} cores, {results['machine']['cpu_model']}"
    )
    failed: str | None = None
    try:
        run.setup()
        for name, phase in PHASES.items():
            if name in args.skip:
                log(f"skipping {name}")
                continue
            phase(run)
    except (RuntimeError, OSError) as exc:
        failed = f"{type(exc).__name__}: {exc}"
        log(f"FAILED: {failed}")
    finally:
        run.close()
    results["seconds"] = time.monotonic() - _T0
    results["failed"] = failed
    results["headline"] = headline(results)
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=1, default=str))
    print_table(results)
    log(f"results: {RESULTS_JSON.relative_to(REPO)}")
    if failed is None and not args.no_history:
        append_history(results)
        log(f"history: row appended to {RESULTS_MD.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
