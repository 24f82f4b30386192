"""Fixtures for broker tests: a real single-node Kafka broker, unique names, worker processes.

A pytest plugin (registered in ``tests/conftest.py``), so ``tests/integration`` and
``tests/reliability`` share one session broker.

``KAFKA_BOOTSTRAP_SERVERS`` set: those brokers are used as they are.
Otherwise the project's own broker script (``dev/kafka/kafka.sh``) starts a fresh broker on a
free loopback port with its state in a temporary folder, and stops it when the session ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from engagement_index.core.model import load_model
from engagement_index.stream.auth import token_digest
from engagement_index.stream.stored import source_id
from engagement_index.topology import load_topology

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO_ROOT / "dev" / "kafka" / "kafka.sh"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """A broker started by ``dev/kafka/kafka.sh`` for this test session."""

    def __init__(self, state_dir: Path) -> None:
        self.port = _free_port()
        self.controller_port = _free_port()
        self.state_dir = state_dir
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self.started_by_tests = True

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_STATE_DIR": str(self.state_dir),
        }

    def run(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KAFKA_SCRIPT), action],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / "server.log"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker | None]:
    """The broker this session started, or None when KAFKA_BOOTSTRAP_SERVERS was given."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"))
    started = broker.run("start")
    if started.returncode != 0:
        # a free port can be taken by another process before the broker binds it: one more
        # try on fresh ports, keeping the first failure's log
        log = (
            broker.log_file.read_text(errors="replace")[-4000:] if broker.log_file.exists() else ""
        )
        broker = LocalBroker(tmp_path_factory.mktemp("kafka"))
        started = broker.run("start")
        if started.returncode != 0:
            pytest.fail(
                f"could not start the local Kafka broker (twice):\n{started.stdout}\n"
                f"{started.stderr}\nfirst attempt's log tail:\n{log}",
                pytrace=False,
            )
    try:
        yield broker
    finally:
        broker.run("stop")


@pytest.fixture(scope="session")
def bootstrap_servers(kafka_broker: LocalBroker | None) -> str:
    """Bootstrap servers of the broker under test."""
    if kafka_broker is None:
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    return kafka_broker.bootstrap_servers


@pytest.fixture
def kafka_admin(bootstrap_servers: str) -> Iterator[KafkaAdminClient]:
    """A kafka-python admin client for the test. One per test, not per session: the broker
    closes a connection idle for 10 minutes (``connections.max.idle.ms``), and a session's
    client that went unused that long failed its next request with "Connection to 1 failed"
    instead of connecting again."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="tests-admin")
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make names unique to this test: ``unique_name("events")`` -> ``t-<test>-events-<hex>``."""
    test = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")

    def make(prefix: str) -> str:
        return f"t-{test}-{prefix}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def new_topic(
    kafka_admin: KafkaAdminClient, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics for one test; they are deleted afterwards."""
    created: list[str] = []

    def create(prefix: str = "topic", partitions: int = 1, **configs: str) -> str:
        name = unique_name(prefix)
        kafka_admin.create_topics(
            [
                NewTopic(
                    name=name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=dict(configs),
                )
            ]
        )
        created.append(name)
        return name

    yield create
    if created:
        try:
            kafka_admin.delete_topics(created)
        except Exception as exc:
            print(f"warning: could not delete test topics {created}: {exc}")


@pytest.fixture
def new_group(unique_name: Callable[[str], str]) -> Callable[[], str]:
    """Make a unique consumer group id for one test."""
    return lambda: unique_name("group")


# --------------------------------------------------------------------------- worker processes
ENGINE = [sys.executable, "-m", "engagement_index.cli"]
# Faust reads these from the environment. A SIGKILLed worker stays in its consumer group until
# its session times out (Faust's default: 60 s) and its partitions wait that long; tests that
# kill a worker use the broker's minimum (6 s) so that their time goes into processing.
FAST_FAILOVER_ENV = {"BROKER_SESSION_TIMEOUT": "6", "BROKER_HEARTBEAT_INTERVAL": "1"}
# the query API token every test worker accepts (for every tenant) unless a test configures its own
TEST_API_TOKEN = "test-token-" + uuid.uuid4().hex


class WorkerProcess:
    """One ``engagement-index worker`` subprocess with its own data folder and web port."""

    def __init__(
        self,
        bootstrap: str,
        topology: Path,
        model: Path,
        data_dir: Path,
        log_file: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_file = log_file
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ENGAGEMENT_INDEX_TOPOLOGY_FILE": str(topology),
            "ENGAGEMENT_INDEX_MODEL_FILE": str(model),
            "ENGAGEMENT_INDEX_DATA_DIR": str(data_dir),
            "ENGAGEMENT_INDEX_WEB_PORT": str(self.port),
            "ENGAGEMENT_INDEX_WEB_HOST": "127.0.0.1",
            "ENGAGEMENT_INDEX_API_TOKENS": json.dumps({token_digest(TEST_API_TOKEN): ["*"]}),
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        """Start and wait until ``/readyz`` answers 200."""
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [*ENGINE, "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.25)
        raise AssertionError(f"worker not ready within {timeout}s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def get(self, path: str, token: str | None = TEST_API_TOKEN) -> tuple[int, Any]:
        """GET a JSON (or text) page with a bearer token (None: without); (status, body)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        request = urllib.request.Request(f"{self.url}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                status = response.status
                ctype = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw, status, ctype = exc.read(), exc.code, exc.headers.get("Content-Type", "")
        return status, json.loads(raw) if "json" in ctype else raw.decode()

    def kill(self) -> None:
        """SIGKILL: no shutdown work at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait for a graceful exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _prefixed(prefix: str, partitions: int) -> dict[str, Any]:
    """The project's topology with every topic name and the app id under ``prefix``."""
    raw: dict[str, Any] = yaml.safe_load((REPO_ROOT / "streams" / "topology.yaml").read_text())
    raw["app_id"] = f"{prefix}-app"
    raw["scoring_partitions"] = partitions
    for group in ("inbound", "outbound", "internal"):
        for spec in raw[group].values():
            spec["name"] = f"{prefix}.{spec['name']}"
            if "partitions" in spec:
                spec["partitions"] = partitions
    return raw


class StreamEnv:
    """A private topology (unique topics and app id), a model file, and workers on them."""

    def __init__(
        self, bootstrap: str, tmp_path: Path, prefix: str, model_yaml: str, partitions: int = 3
    ) -> None:
        self.bootstrap = bootstrap
        self.tmp_path = tmp_path
        self.topology_file = tmp_path / "topology.yaml"
        # Stored values name a source topic by a 16-bit hash of its name, and a worker refuses
        # a topology in which two of them collide; random test names collide now and then
        # (about one environment in a thousand), so such a prefix is replaced by another.
        for attempt in range(100):
            candidate = prefix if attempt == 0 else f"{prefix}-{attempt}"
            self.topology_file.write_text(yaml.safe_dump(_prefixed(candidate, partitions)))
            self.topology = load_topology(self.topology_file)
            ids = {source_id(name) for name in self.topology.scoring_sources}
            if len(ids) == len(self.topology.scoring_sources):
                break
        self.prefix = prefix = candidate
        self.model_file = tmp_path / "model.yaml"
        self.model_file.write_text(model_yaml)
        self.model = load_model(self.model_file)
        self.workers: list[WorkerProcess] = []
        created = subprocess.run(
            [
                *ENGINE,
                "topics",
                "create",
                "--bootstrap-servers",
                bootstrap,
                "--topology",
                str(self.topology_file),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr

    def worker(self, name: str = "w1", extra_env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(
            self.bootstrap,
            self.topology_file,
            self.model_file,
            self.tmp_path / f"data-{name}",
            self.tmp_path / f"{name}.log",
            extra_env,
        )
        self.workers.append(worker)
        return worker

    def topic(self, role: str) -> str:
        if role in self.topology.inbound:
            return self.topology.inbound[role].name
        if role in ("stage_changes", "scores", "dead_letters", "erasures"):
            spec = getattr(self.topology.outbound, role)
            return str(spec.name)
        return str(getattr(self.topology.internal, role).name)

    def consume_all(self, topic: str, idle_s: float = 3.0, max_s: float = 60.0) -> list[Any]:
        """Every record currently in ``topic`` (reads until ``idle_s`` without new records)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            consumer_timeout_ms=int(idle_s * 1000),
        )
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records = []
        deadline = time.monotonic() + max_s
        for record in consumer:
            records.append(record)
            if time.monotonic() > deadline:
                break
        consumer.close()
        return records

    def close(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=30)


@pytest.fixture
def stream_env(
    bootstrap_servers: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., StreamEnv]]:
    """Factory of private stream environments; their workers are stopped afterwards."""
    envs: list[StreamEnv] = []

    def make(model_yaml: str, partitions: int = 3) -> StreamEnv:
        env = StreamEnv(bootstrap_servers, tmp_path, unique_name("s"), model_yaml, partitions)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()
