"""Fixtures for integration tests: a real single-node Kafka broker and unique names.

``KAFKA_BOOTSTRAP_SERVERS`` set: those brokers are used as they are.
Otherwise the project's own broker script (``dev/kafka/kafka.sh``) starts a fresh broker on a
free loopback port with its state in a temporary folder, and stops it when the session ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parents[2]
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
            timeout=180,
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
        pytest.fail(
            f"could not start the local Kafka broker:\n{started.stdout}\n{started.stderr}",
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


@pytest.fixture(scope="session")
def kafka_admin(bootstrap_servers: str) -> Iterator[KafkaAdminClient]:
    """A kafka-python admin client for the session."""
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
