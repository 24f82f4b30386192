"""Kafka connection security for every client the project creates, and a fail-fast check.

One place turns the ``ENGAGEMENT_INDEX_SECURITY_PROTOCOL`` / ``SASL_*`` / ``SSL_*`` settings into
options for the three client libraries in use: Faust (the worker), aiokafka (the collector) and
kafka-python (admin, ``erase``, ``demo``). :func:`check_access` connects once before a command
starts its real clients, so a wrong password or an untrusted certificate ends the command within
seconds with a message that says so, instead of a retry loop or a misleading client error.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from engagement_index.errors import BrokerError, ConfigError
from engagement_index.settings import Settings


def check_security_settings(settings: Settings) -> None:
    """``ConfigError`` naming the setting when the security settings cannot work together."""
    protocol = settings.security_protocol
    if protocol.startswith("SASL_"):
        missing = [
            f"ENGAGEMENT_INDEX_{name.upper()}"
            for name in ("sasl_mechanism", "sasl_username", "sasl_password")
            if not getattr(settings, name)
        ]
        if missing:
            raise ConfigError(f"security protocol {protocol} needs {', '.join(missing)}")
    elif settings.sasl_mechanism:
        raise ConfigError(
            f"ENGAGEMENT_INDEX_SASL_MECHANISM={settings.sasl_mechanism} needs "
            "ENGAGEMENT_INDEX_SECURITY_PROTOCOL SASL_SSL (or SASL_PLAINTEXT)"
        )
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        raise ConfigError(
            "a client certificate needs both ENGAGEMENT_INDEX_SSL_CERTFILE and "
            "ENGAGEMENT_INDEX_SSL_KEYFILE"
        )


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (CA bundle, optional client certificate)."""
    check_security_settings(settings)
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
        if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
            context.load_cert_chain(
                str(settings.ssl_certfile),
                str(settings.ssl_keyfile),
                password=settings.ssl_key_password,
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the Kafka TLS files: {exc}") from exc
    context.check_hostname = settings.ssl_check_hostname
    return context


def _servers(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()]


def _sasl_options(settings: Settings) -> dict[str, Any]:
    if not settings.security_protocol.startswith("SASL_"):
        return {}
    return {
        "sasl_mechanism": settings.sasl_mechanism,
        "sasl_plain_username": settings.sasl_username,
        "sasl_plain_password": settings.sasl_password,
    }


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    """Connection options for kafka-python clients (admin, producer, consumer)."""
    options: dict[str, Any] = {
        "bootstrap_servers": _servers(settings),
        "security_protocol": settings.security_protocol,
        **_sasl_options(settings),
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    return options


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Connection options for aiokafka clients (the same names as kafka-python's)."""
    return kafka_python_options(settings)


def _who(settings: Settings) -> str:
    if settings.security_protocol.startswith("SASL_"):
        return f"user {settings.sasl_username!r} ({settings.sasl_mechanism})"
    return settings.security_protocol


async def access_problem(settings: Settings, timeout_s: float = 10.0) -> BrokerError | None:
    """Connect to the bootstrap servers once: the authentication or TLS error, if any.

    ``None`` when a server accepted the connection and the credentials, or when no server
    could be reached at all (that is not a credentials problem: callers retry).
    """
    if settings.security_protocol == "PLAINTEXT":
        return None  # nothing to authenticate or trust
    problem, _ = await _connect_once(settings, timeout_s)
    return problem


async def _connect_once(settings: Settings, timeout_s: float) -> tuple[BrokerError | None, str]:
    """(authentication/TLS error or None, ``ok`` | ``closed`` | ``unreachable``).

    ``closed``: a server accepted the TCP connection, then closed it during the handshake
    (a listener with another security protocol, or one that requires a client certificate).
    """
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailed

    options = aiokafka_options(settings)
    options.pop("bootstrap_servers")
    outcome = "unreachable"
    for server in _servers(settings):
        host, _, port = server.rpartition(":")
        try:
            async with asyncio.timeout(timeout_s):
                conn = await create_conn(host.strip("[]"), int(port), **options)
        except SaslAuthenticationFailed as exc:
            return BrokerError(
                f"Kafka authentication failed for {_who(settings)} at {server}: {exc}; "
                "check ENGAGEMENT_INDEX_SASL_USERNAME / ENGAGEMENT_INDEX_SASL_PASSWORD"
            ), "ok"
        except ssl.SSLCertVerificationError as exc:
            return BrokerError(
                f"TLS: the certificate of the Kafka broker at {server} is not trusted "
                f"({exc.verify_message}); check ENGAGEMENT_INDEX_SSL_CAFILE"
            ), "ok"
        except ssl.SSLError as exc:
            return BrokerError(
                f"TLS handshake with the Kafka broker at {server} failed: {exc}"
            ), "ok"
        except KafkaConnectionError:
            outcome = "closed"  # connected, then closed by the broker: try the next one
        except (OSError, TimeoutError, KafkaError, ValueError):
            continue  # unreachable: try the next one
        else:
            conn.close()
            return None, "ok"
    return None, outcome


def check_access(settings: Settings) -> None:
    """Fail fast (``BrokerError``) on wrong credentials or TLS trust; wait for a reachable broker.

    Waits up to ``admin_timeout_seconds`` for a broker to answer; authentication and TLS
    errors are raised at once, they do not heal by waiting.
    """
    check_security_settings(settings)
    if settings.security_protocol == "PLAINTEXT":
        return  # nothing to authenticate; the clients report unreachable brokers themselves
    deadline = time.monotonic() + settings.admin_timeout_seconds
    closed = 0
    while True:
        problem, outcome = asyncio.run(_connect_once(settings, 10.0))
        if problem is not None:
            raise problem
        if outcome == "ok":
            return
        closed = closed + 1 if outcome == "closed" else 0
        if closed >= 3:  # not a broker still starting: it keeps refusing this handshake
            raise BrokerError(
                f"the Kafka broker at {settings.bootstrap_servers} closes every "
                f"{settings.security_protocol} connection during the handshake: check that "
                "ENGAGEMENT_INDEX_SECURITY_PROTOCOL matches the listener, and whether it "
                "requires a client certificate (ENGAGEMENT_INDEX_SSL_CERTFILE/SSL_KEYFILE)"
            )
        if time.monotonic() > deadline:
            raise BrokerError(
                f"no Kafka broker answered at {settings.bootstrap_servers} over "
                f"{settings.security_protocol} within {settings.admin_timeout_seconds:.0f}s"
            )
        time.sleep(0.5)
