"""A real Prometheus server scrapes a running worker; its query API sees what the worker did.

Prometheus (Debian's package, installed by dev/tools/install.sh) listens on a free loopback
port, scrapes the worker every second and loads deploy/prometheus/alerts.yaml. After the test
publishes events, Prometheus must report exactly the scored events per channel and the
stage transitions per stage pair that the offline replay oracle computes for those events.
The Grafana dashboard's metric names are checked against the worker's real /metrics page.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from engagement_index.core.events import ContactKey
from engagement_index.metrics import CollectorMetrics
from engagement_index.replay import replay
from tests.deploy.dashboard import dashboard_metric_names, exposed_names
from tests.deploy.tools import ALERTS, DASHBOARD, tool
from tests.integration.test_worker_oracle import DEFAULT_MODEL, iso

pytestmark = pytest.mark.integration

JOB = "engagement-index-worker"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """``prometheus`` on 127.0.0.1 with a 1 s scrape interval, storage in a temporary folder."""

    def __init__(self, folder: Path, target: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        shutil.copy(ALERTS, folder / "alerts.yaml")
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": ["alerts.yaml"],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_file = folder / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={self.folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log_file.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"prometheus not ready:\n{self.log_file.read_text()}")

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> dict[tuple[str, ...], float]:
        """Instant vector as {label values in label-name order: value}."""
        data = self.api("query", query=promql)
        return {
            tuple(v for _, v in sorted(item["metric"].items())): float(item["value"][1])
            for item in data["result"]
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[str], PrometheusServer]]:
    servers: list[PrometheusServer] = []

    def make(target: str) -> PrometheusServer:
        folder = tmp_path / f"prometheus-{len(servers)}"
        folder.mkdir()
        server = PrometheusServer(folder, target)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


# contact -> (channel, event types in time order); every type is in the default model
SCRIPT: dict[str, list[tuple[str, list[str]]]] = {
    # hot leads: enough to cross purchase (60) in the pre-purchase half
    "hot-1": [
        ("email", ["email.click"] * 10),
        ("web", ["web.form_submit"] * 10),
        ("social", ["social.share"] * 4),
    ],
    "hot-2": [
        ("web", ["web.form_submit"] * 10),
        ("social", ["social.share"] * 4),
        ("email", ["email.click"] * 10),
    ],
    # a buyer: nurture -> purchase, then the purchase moves it to retention
    "buyer-1": [
        ("email", ["email.click"] * 10),
        ("web", ["web.form_submit"] * 10),
        ("social", ["social.share"] * 4),
        ("commerce", ["commerce.purchase"]),
        ("product", ["product.core_action"] * 3),
    ],
    "buyer-2": [("commerce", ["commerce.cart_add", "commerce.purchase"])],
    # casual contacts: a few weak signals, no transition
    "casual-1": [("web", ["web.page_view"] * 2), ("social", ["social.like"])],
    "casual-2": [("social", ["social.comment", "social.follow"]), ("email", ["email.open"])],
}


def make_events(now_ms: int) -> list[tuple[str, bytes, bytes]]:
    """(channel, key, value) in publish order; timestamps in the last minute, in order."""
    out: list[tuple[str, bytes, bytes]] = []
    for n, (contact, steps) in enumerate(SCRIPT.items()):
        ts = now_ms - 60_000 + n * 1_000
        seq = 0
        for channel, types in steps:
            for event_type in types:
                ts += 100
                seq += 1
                value = {
                    "event_id": f"{contact}-{seq}",
                    "tenant": "acme",
                    "contact_id": contact,
                    "type": event_type,
                    "timestamp": iso(ts),
                }
                key = ContactKey("acme", contact).encode()
                out.append((channel, key, json.dumps(value).encode()))
    return out


def wait_for(
    server: PrometheusServer, promql: str, expected: dict[tuple[str, ...], float], timeout: float
) -> dict[tuple[str, ...], float]:
    deadline = time.monotonic() + timeout
    while True:
        got = server.query(promql)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(1)


def test_prometheus_scrapes_the_worker_and_sees_its_throughput_and_transitions(
    stream_env: Callable[..., Any], prometheus_factory: Callable[[str], PrometheusServer]
) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=2)
    worker = env.worker()
    worker.start()
    prometheus = prometheus_factory(worker.url.removeprefix("http://"))

    up = wait_for(
        prometheus,
        f'max by (instance, job) (up{{job="{JOB}"}})',
        {(worker.url[7:], JOB): 1.0},
        timeout=30,
    )
    assert up == {(worker.url[7:], JOB): 1.0}
    rules = prometheus.api("rules")["groups"]
    alerting = [r for g in rules for r in g["rules"] if r["type"] == "alerting"]
    assert len(alerting) == 9, "the alert rules load in a real server"

    now_ms = int(time.time() * 1000)
    events = make_events(now_ms)
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)
    for channel, key, value in events:
        producer.send(env.topic(channel), key=key, value=value)
    producer.flush()
    producer.close()

    per_channel = Counter(channel for channel, _, _ in events)
    expected_scored: dict[tuple[str, ...], float] = {
        (channel,): float(n) for channel, n in per_channel.items()
    }
    scored = wait_for(
        prometheus,
        f'sum by (channel) (engagement_events_consumed_total{{job="{JOB}", outcome="scored"}})',
        expected_scored,
        timeout=90,
    )
    assert scored == expected_scored, worker.log_tail()

    oracle = replay([value for _, _, value in events], env.model, until_ms=now_ms)
    pairs = Counter((t.from_stage or "none", t.to_stage) for t in oracle.transitions)
    assert pairs[("nurture", "purchase")] >= 3
    assert pairs[("purchase", "retention")] == 1
    assert pairs[("nurture", "retention")] == 1
    assert pairs[("none", "nurture")] == len(SCRIPT)
    expected_pairs: dict[tuple[str, ...], float] = {pair: float(n) for pair, n in pairs.items()}
    transitions = wait_for(
        prometheus,
        f'sum by (from_stage, to_stage) (engagement_transitions_total{{job="{JOB}"}})',
        expected_pairs,
        timeout=60,
    )
    assert transitions == expected_pairs, worker.log_tail()

    # the dashboard queries only names this worker's scrape (or the collector's registry) has
    status, page = worker.get("/metrics")
    assert status == 200
    worker_names = exposed_names(page)
    collector_names = exposed_names(CollectorMetrics().render().decode())
    used = dashboard_metric_names(DASHBOARD)
    assert {n for n in used if not n.startswith("engagement_collector_")} <= worker_names
    assert {n for n in used if n.startswith("engagement_collector_")} <= collector_names
    stored = set(prometheus.api("label/__name__/values"))
    assert {"engagement_events_consumed_total", "engagement_transitions_total"} <= stored
