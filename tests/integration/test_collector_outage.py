"""The collector under traffic while its broker stops: honest readiness, few log lines, and a
SIGTERM that ends the process within the grace period.

Uses a broker of its own (stopped and restarted by the tests), not the session broker. The
collector runs with its default readiness, logging and shutdown settings; the publish timeout
is 3 s as in the other collector tests, but 10 s (the default) for the SIGTERM test.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from engagement_index.collector.settings import CollectorSettings
from engagement_index.kafka_admin import ensure_topics
from engagement_index.settings import Settings
from engagement_index.topology import load_topology
from tests.integration.test_collector import CollectorProcess, _private_topology, basic, request
from tests.kafka_harness import LocalBroker

pytestmark = pytest.mark.integration

#: the documented figures (docs/collector.md), with the collector's default settings:
READY_MAX_AGE_S = 5.0  # ready_max_age_seconds
PROBE_INTERVAL_S = 1.0  # probe_interval_seconds
GRACE_S = 15.0  # shutdown_grace_seconds
#: /readyz answers 503 at most this long after the broker stopped answering: the readiness
#: window, one probe interval and the probe's own 1 s timeout
READY_BOUND_S = READY_MAX_AGE_S + PROBE_INTERVAL_S + 1.0
#: ... and 200 again at most this long after the broker is back (it accepts clients)
RECOVERY_BOUND_S = 2 * PROBE_INTERVAL_S + 1.0
#: log lines of a 20 s outage under traffic (before: about 30 a second)
MAX_OUTAGE_LOG_LINES = 20


def test_the_figures_are_the_defaults() -> None:
    defaults = CollectorSettings()
    assert defaults.ready_max_age_seconds == READY_MAX_AGE_S
    assert defaults.probe_interval_seconds == PROBE_INTERVAL_S
    assert defaults.shutdown_grace_seconds == GRACE_S


class Broker:
    def __init__(self, state: Path) -> None:
        self.local = LocalBroker(state)
        self.running = False

    def start(self) -> None:
        if not self.running:
            done = self.local.run("start")
            assert done.returncode == 0, done.stdout + done.stderr
            self.running = True

    def stop(self) -> None:
        if self.running:
            done = self.local.run("stop")
            assert done.returncode == 0, done.stdout + done.stderr
            self.running = False

    def _signal(self, sig: signal.Signals) -> None:
        os.kill(int((self.local.state_dir / "kafka.pid").read_text().strip()), sig)

    def freeze(self) -> None:
        """The broker stops answering but its sockets stay open (a hung host, a partition)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(tmp_path_factory.mktemp("outage-kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.local.run("stop")


class Traffic:
    """Senders posting track calls as fast as they are answered, each on one keep-alive
    connection as the SDKs send (a new connection after an error), counting the statuses."""

    def __init__(self, url: str, senders: int = 4) -> None:
        self.address = urlsplit(url).netloc
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._send, args=(n,), daemon=True) for n in range(senders)
        ]
        for thread in self._threads:
            thread.start()

    def _send(self, sender: int) -> None:
        n = 0
        conn = http.client.HTTPConnection(self.address, timeout=30)
        headers = {"Authorization": basic("wk"), "Content-Type": "application/json"}
        while not self._stop.is_set():
            n += 1
            body = {"userId": f"u-{sender}", "event": "Order Completed", "messageId": f"{n}"}
            try:
                conn.request("POST", "/v1/track", json.dumps(body).encode(), headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0  # the collector closed the connection, or has stopped
                conn.close()
                conn = http.client.HTTPConnection(self.address, timeout=30)
            with self._lock:
                self.statuses[status] += 1
            time.sleep(0.02)
        conn.close()

    def stop(self) -> Counter[int]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)
        return self.statuses


def _collector(broker: Broker, tmp: Path, **env: str) -> CollectorProcess:
    broker.start()
    topology_file = _private_topology(tmp, "outage")
    ensure_topics(
        Settings(bootstrap_servers=broker.local.bootstrap_servers), load_topology(topology_file)
    )
    keys = tmp / "keys.yaml"
    keys.write_text(yaml.safe_dump({"write_keys": {"wk": "t"}}))
    collector = CollectorProcess(
        broker.local.bootstrap_servers, topology_file, keys, tmp / "collector.log", **env
    )
    collector.wait("/readyz", 200)
    return collector


def _wait_ready(collector: CollectorProcess, status: int, within_s: float) -> float:
    """Seconds until ``/readyz`` answers ``status`` (fails after ``within_s`` + 20 s)."""
    began = time.monotonic()
    while time.monotonic() - began < within_s + 20:
        if request(collector.url + "/readyz")[0] == status:
            return time.monotonic() - began
        time.sleep(0.1)
    raise AssertionError(f"/readyz never answered {status}:\n{collector.log.read_text()[-3000:]}")


def _lines_since(log: Path, offset: int) -> list[str]:
    return log.read_bytes()[offset:].decode(errors="replace").splitlines()


def test_readiness_follows_the_broker_and_an_outage_logs_a_few_lines(
    broker: Broker, tmp_path: Path
) -> None:
    collector = _collector(broker, tmp_path)
    traffic = Traffic(collector.url)
    try:
        time.sleep(2)
        offset = collector.log.stat().st_size
        broker.stop()
        unready_after = _wait_ready(collector, 503, READY_BOUND_S)
        ready = json.loads(request(collector.url + "/readyz")[2])
        assert ready == {"ready": False, "kafka": "unreachable"}
        time.sleep(max(0.0, 20 - unready_after))  # 20 s of outage under traffic
        outage_lines = _lines_since(collector.log, offset)
        during = dict(traffic.statuses)

        broker.start()
        ready_after = _wait_ready(collector, 200, RECOVERY_BOUND_S)
        deadline = time.monotonic() + 30
        while traffic.statuses[200] == during.get(200, 0) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        statuses = traffic.stop()
        collector.stop()
    print(
        f"readyz 503 {unready_after:.1f}s after the broker stopped, 200 {ready_after:.1f}s after "
        f"it was back; {len(outage_lines)} log lines in 20 s of outage; statuses {dict(statuses)}"
    )
    assert unready_after <= READY_BOUND_S, unready_after
    assert ready_after <= RECOVERY_BOUND_S, ready_after
    assert len(outage_lines) <= MAX_OUTAGE_LOG_LINES, "\n".join(outage_lines)
    assert any("Kafka unavailable" in line for line in outage_lines), outage_lines
    assert during.get(503, 0) > 100, during  # traffic went on: refused at once, not queued
    assert statuses[200] > during.get(200, 0), "publishing resumed once the broker was back"
    assert set(statuses) <= {200, 503}, statuses


@pytest.mark.parametrize(
    ("outage", "outage_s"),
    [
        ("stopped", 1.5),  # requests are waiting for acks that will not come
        ("stopped", 12.0),  # requests were answered 503 after the publish timeout
        ("frozen", 12.0),  # the broker hangs: connections open, nothing answered
    ],
)
def test_sigterm_during_an_outage_exits_within_the_grace_period(
    broker: Broker, tmp_path: Path, outage: str, outage_s: float
) -> None:
    # the default publish timeout (10 s), as a user runs it
    collector = _collector(
        broker, tmp_path, ENGAGEMENT_INDEX_COLLECTOR_PUBLISH_TIMEOUT_SECONDS="10"
    )
    traffic = Traffic(collector.url)
    try:
        time.sleep(2)
        offset = collector.log.stat().st_size
        if outage == "frozen":
            broker.freeze()
        else:
            broker.stop()
        time.sleep(outage_s)
        began = time.monotonic()
        collector.proc.send_signal(signal.SIGTERM)
        try:
            code = collector.proc.wait(timeout=GRACE_S + 15)
        except Exception:
            code = None
        took = time.monotonic() - began
    finally:
        if outage == "frozen":
            broker.thaw()
        traffic.stop()
        collector.stop()
    lines = _lines_since(collector.log, offset)
    print(f"exited {took:.1f}s after SIGTERM with {code}; {len(lines)} log lines")
    assert code == 0, "\n".join(lines[-40:])
    assert took <= GRACE_S, took
    assert len(lines) <= MAX_OUTAGE_LOG_LINES, "\n".join(lines)
    assert any(line.endswith(f"stopping (grace period {GRACE_S:g}s)") for line in lines), lines
