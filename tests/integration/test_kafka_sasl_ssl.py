"""Every Kafka client of the project over SASL_SSL (SCRAM and PLAIN, TLS with a client
certificate) against a local broker with such a listener; a wrong password fails fast.

The broker is the project's own (``dev/kafka/kafka.sh``) with a SASL_SSL listener: the
certificates are made here (a CA, the broker's and a client's), the SCRAM credentials are
created when its storage is formatted, and it requires a client certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.test_collector import CollectorProcess, basic, request
from tests.kafka_harness import ENGINE, KAFKA_SCRIPT, REPO_ROOT, WorkerProcess, _free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "engagement-index", "scram-secret-7f3a"
MODEL = REPO_ROOT / "config" / "models" / "default.yaml"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(folder: Path) -> None:
    """ca.pem; broker.pem (PKCS#8 key, then its chain: a Kafka PEM keystore); client.crt/key."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("engagement-index test CA"))
        .issuer_name(_name("engagement-index test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName] | None
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM

    def pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    broker_key, broker_cert = leaf(
        "127.0.0.1",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key, client_cert = leaf("engagement-index", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "broker.pem").write_bytes(
        pkcs8(broker_key) + broker_cert.public_bytes(pem) + ca.public_bytes(pem)
    )
    (folder / "client.crt").write_bytes(client_cert.public_bytes(pem))
    (folder / "client.key").write_bytes(pkcs8(client_key))


@dataclass
class SaslBroker:
    bootstrap: str  # the SASL_SSL listener
    tls: Path

    def env(self, mechanism: str = "SCRAM-SHA-512", password: str = PASSWORD) -> dict[str, str]:
        """Client settings for the SASL_SSL listener."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "ENGAGEMENT_INDEX_SECURITY_PROTOCOL": "SASL_SSL",
            "ENGAGEMENT_INDEX_SASL_MECHANISM": mechanism,
            "ENGAGEMENT_INDEX_SASL_USERNAME": USER,
            "ENGAGEMENT_INDEX_SASL_PASSWORD": password,
            "ENGAGEMENT_INDEX_SSL_CAFILE": str(self.tls / "ca.pem"),
            "ENGAGEMENT_INDEX_SSL_CERTFILE": str(self.tls / "client.crt"),
            "ENGAGEMENT_INDEX_SSL_KEYFILE": str(self.tls / "client.key"),
        }


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    root = tmp_path_factory.mktemp("sasl-broker")
    make_certificates(root / "tls")
    port = _free_port()
    env = {
        **os.environ,
        "KAFKA_PORT": str(_free_port()),
        "KAFKA_CONTROLLER_PORT": str(_free_port()),
        "KAFKA_STATE_DIR": str(root / "state"),
        "KAFKA_SASL_SSL_PORT": str(port),
        "KAFKA_TLS_KEYSTORE": str(root / "tls" / "broker.pem"),
        "KAFKA_TLS_TRUSTSTORE": str(root / "tls" / "ca.pem"),
        "KAFKA_TLS_CLIENT_AUTH": "required",
        "KAFKA_SASL_USERS": f"{USER}:{PASSWORD} other:other-secret",
    }
    started = subprocess.run(
        [str(KAFKA_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300
    )
    if started.returncode != 0:
        pytest.fail(f"SASL_SSL broker did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield SaslBroker(f"127.0.0.1:{port}", root / "tls")
    finally:
        subprocess.run([str(KAFKA_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def engine(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [*ENGINE, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done, time.monotonic() - started


def private_topology(folder: Path, prefix: str) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "streams" / "topology.yaml").read_text())
    raw["app_id"] = f"{prefix}-app"
    raw["scoring_partitions"] = 2
    for group in ("inbound", "outbound", "internal"):
        for spec in raw[group].values():
            spec["name"] = f"{prefix}.{spec['name']}"
            if "partitions" in spec:
                spec["partitions"] = 2
    path = folder / "topology.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_other_mechanisms_authenticate(sasl_broker: SaslBroker, mechanism: str) -> None:
    done, _ = engine(["topics", "describe"], sasl_broker.env(mechanism))
    # the default topology's topics do not exist on this broker: describe says so, exit 1
    assert done.returncode == 1, done.stdout + done.stderr
    assert "missing" in done.stdout
    assert "error" not in done.stderr


def test_topics_collector_worker_and_erase_over_sasl_ssl(
    sasl_broker: SaslBroker, tmp_path: Path
) -> None:
    topology = private_topology(tmp_path, f"sasl{os.getpid()}")
    env = {**sasl_broker.env(), "ENGAGEMENT_INDEX_TOPOLOGY_FILE": str(topology)}
    done, _ = engine(["topics", "create"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all match" in done.stdout

    worker = WorkerProcess(
        sasl_broker.bootstrap, topology, MODEL, tmp_path / "data", tmp_path / "worker.log", env
    )
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"write_keys": {"wk-sasl": "sasl"}}))
    collector = CollectorProcess(
        sasl_broker.bootstrap, topology, keys, tmp_path / "collector.log", **env
    )
    try:
        worker.start()
        collector.wait("/readyz", 200, timeout=60)
        body = {"userId": "buyer-1", "event": "Order Completed", "messageId": "m-sasl-1"}
        status, _, answer = request(
            collector.url + "/v1/track",
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "Authorization": basic("wk-sasl")},
        )
        assert status == 200, answer
        deadline = time.monotonic() + 60
        while worker.get("/v1/contacts/sasl/buyer-1")[0] != 200:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
        contact = worker.get("/v1/contacts/sasl/buyer-1")[1]
        assert contact["customer"] is True
        assert contact["events_counted"] == 1

        erased, _ = engine(["erase", "sasl", "buyer-1", "--wait", "60"], env)
        assert erased.returncode == 0, erased.stdout + erased.stderr
        assert "erased" in erased.stdout
        assert worker.get("/v1/contacts/sasl/buyer-1")[0] == 404
    finally:
        collector.stop()
        worker.stop()


@pytest.mark.parametrize(
    "command",
    [
        ["topics", "create"],
        ["worker", "--no-create-topics"],
        ["collector"],
        ["erase", "acme", "c-1"],
        ["demo", "--duration", "1"],
    ],
)
def test_a_wrong_password_fails_fast_and_clearly(
    sasl_broker: SaslBroker, tmp_path: Path, command: list[str]
) -> None:
    env = {
        **sasl_broker.env(password="not-the-password"),
        "ENGAGEMENT_INDEX_DATA_DIR": str(tmp_path / "data"),
        "ENGAGEMENT_INDEX_WEB_PORT": str(_free_port()),
        "ENGAGEMENT_INDEX_COLLECTOR_PORT": str(_free_port()),
    }
    done, elapsed = engine(command, env, timeout=60)
    assert done.returncode != 0
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert "Kafka authentication failed" in done.stderr, done.stderr
    assert USER in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "not-the-password" not in done.stdout + done.stderr


def test_an_untrusted_broker_certificate_fails_fast(sasl_broker: SaslBroker) -> None:
    env = {**sasl_broker.env(), "ENGAGEMENT_INDEX_SSL_CAFILE": ""}  # the system CAs only
    done, elapsed = engine(["topics", "describe"], env, timeout=60)
    assert done.returncode != 0
    assert elapsed < 15
    assert "not trusted" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
