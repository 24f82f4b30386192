"""The Kafka security settings become the same options for every client library."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from engagement_index.errors import ConfigError
from engagement_index.kafka_security import (
    aiokafka_options,
    check_security_settings,
    kafka_python_options,
    ssl_context,
)
from engagement_index.settings import Settings
from engagement_index.stream.app import broker_credentials

SCRAM = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "ei",
    "sasl_password": "pw-123",
}


def test_sasl_ssl_options_are_the_same_for_every_client() -> None:
    settings = Settings(bootstrap_servers="a:9093, b:9093", **SCRAM)  # type: ignore[arg-type]
    for options in (kafka_python_options(settings), aiokafka_options(settings)):
        assert options["bootstrap_servers"] == ["a:9093", "b:9093"]
        assert options["security_protocol"] == "SASL_SSL"
        assert options["sasl_mechanism"] == "SCRAM-SHA-512"
        assert options["sasl_plain_username"] == "ei"
        assert options["sasl_plain_password"] == "pw-123"
        assert isinstance(options["ssl_context"], ssl.SSLContext)
        assert options["ssl_context"].check_hostname
    credentials = broker_credentials(settings)
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.protocol.value == "SASL_SSL"
    assert "pw-123" not in repr(settings)


def test_plaintext_has_no_tls_and_no_sasl() -> None:
    settings = Settings()
    assert ssl_context(settings) is None
    assert "sasl_mechanism" not in kafka_python_options(settings)
    assert broker_credentials(settings) is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "ENGAGEMENT_INDEX_SASL_MECHANISM"),
        ({**SCRAM, "sasl_password": None}, "ENGAGEMENT_INDEX_SASL_PASSWORD"),
        ({"sasl_mechanism": "PLAIN"}, "needs ENGAGEMENT_INDEX_SECURITY_PROTOCOL"),
        ({**SCRAM, "ssl_certfile": "/x.crt"}, "ENGAGEMENT_INDEX_SSL_KEYFILE"),
    ],
)
def test_settings_that_cannot_work_are_refused(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_security_settings(Settings(**values))  # type: ignore[arg-type]


def test_missing_tls_files_are_a_config_error(tmp_path: Path) -> None:
    settings = Settings(**SCRAM, ssl_cafile=tmp_path / "nope.pem")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot load the Kafka TLS files"):
        ssl_context(settings)
