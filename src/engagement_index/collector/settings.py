"""Collector settings (``ENGAGEMENT_INDEX_COLLECTOR_*``) and its secrets (keys file or env)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engagement_index.core.events import TENANT_PATTERN
from engagement_index.errors import ConfigError
from engagement_index.settings import REPO_ROOT

DEFAULT_EVENT_MAP = REPO_ROOT / "config" / "collector" / "segment-events.yaml"
_TENANT_RE = re.compile(TENANT_PATTERN)


def _check_tenants(value: dict[str, str], *, keys_are_tenants: bool) -> dict[str, str]:
    for key, item in value.items():
        tenant = key if keys_are_tenants else item
        if not _TENANT_RE.fullmatch(tenant):
            raise ValueError(f"{tenant!r} is not a tenant id (1-64 of A-Z a-z 0-9 _ . -)")
        if not key or not item:
            raise ValueError("keys and values must not be empty")
    return value


class CollectorKeys(BaseModel):
    """The collector's secrets: what a Kubernetes Secret mounts as ``keys.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    write_keys: dict[str, str] = Field(
        default_factory=dict, description="Segment write key -> tenant"
    )
    pixel_secrets: dict[str, str] = Field(
        default_factory=dict, description="tenant -> HMAC secret that signs pixel URLs"
    )
    sendgrid_public_keys: dict[str, str] = Field(
        default_factory=dict,
        description="tenant -> SendGrid Signed Event Webhook public key (base64 DER or PEM)",
    )
    mailgun_signing_keys: dict[str, str] = Field(
        default_factory=dict, description="tenant -> Mailgun HTTP webhook signing key"
    )

    @field_validator("write_keys")
    @classmethod
    def _write_key_tenants(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_tenants(value, keys_are_tenants=False)

    @field_validator("pixel_secrets", "sendgrid_public_keys", "mailgun_signing_keys")
    @classmethod
    def _tenant_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_tenants(value, keys_are_tenants=True)

    def merged(self, other: CollectorKeys) -> CollectorKeys:
        """These keys with ``other``'s entries added (``other`` wins on conflicts)."""
        return CollectorKeys(
            write_keys={**self.write_keys, **other.write_keys},
            pixel_secrets={**self.pixel_secrets, **other.pixel_secrets},
            sendgrid_public_keys={**self.sendgrid_public_keys, **other.sendgrid_public_keys},
            mailgun_signing_keys={**self.mailgun_signing_keys, **other.mailgun_signing_keys},
        )

    @property
    def tenants(self) -> frozenset[str]:
        """Every tenant some key names: the tenants the collector accepts events for."""
        return frozenset(
            [
                *self.write_keys.values(),
                *self.pixel_secrets,
                *self.sendgrid_public_keys,
                *self.mailgun_signing_keys,
            ]
        )


def load_keys_file(path: Path) -> CollectorKeys:
    """Read a keys file (YAML or JSON); ``ConfigError`` naming the field if invalid."""
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read collector keys file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return CollectorKeys.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc


class CollectorSettings(BaseSettings):
    """Everything the collector needs besides the Kafka connection (``Settings``)."""

    model_config = SettingsConfigDict(
        env_prefix="ENGAGEMENT_INDEX_COLLECTOR_", frozen=True, extra="forbid"
    )

    bind: str = Field(default="127.0.0.1", description="address the HTTP server binds to")
    port: int = Field(default=8080, ge=0, le=65535)
    keys_file: Path | None = Field(
        default=None, description="YAML/JSON file with the secrets (e.g. a mounted Secret)"
    )
    # the same secrets given directly (JSON in the environment); merged over the keys file
    write_keys: dict[str, str] = Field(default_factory=dict)
    pixel_secrets: dict[str, str] = Field(default_factory=dict)
    sendgrid_public_keys: dict[str, str] = Field(default_factory=dict)
    mailgun_signing_keys: dict[str, str] = Field(default_factory=dict)

    event_map_file: Path = DEFAULT_EVENT_MAP
    sendgrid_verify: bool = Field(
        default=False, description="verify SendGrid's ECDSA signature (off: a warning is logged)"
    )
    sendgrid_contact_field: str = Field(
        default="contact_id",
        description="custom arg holding the contact id; the recipient email when absent",
    )
    mailgun_contact_field: str = "contact_id"
    max_event_bytes: int = Field(default=32 * 1024, ge=256)
    max_batch_bytes: int = Field(default=500 * 1024, ge=1024)
    publish_timeout_seconds: float = Field(default=10.0, gt=0)
    ready_max_age_seconds: float = Field(
        default=5.0,
        gt=0,
        description="ready while the broker answered (ack or metadata) within this many seconds",
    )
    probe_interval_seconds: float = Field(
        default=1.0, gt=0, description="how often the producer asks the broker for metadata"
    )
    shutdown_grace_seconds: float = Field(
        default=15.0,
        gt=0,
        description="after SIGTERM: in-flight requests finish, the producer closes, then exit",
    )
    outage_log_interval_seconds: float = Field(
        default=30.0, gt=0, description="a broker outage is logged once per interval"
    )
    machine_open_window_seconds: float = Field(
        default=10.0,
        ge=0,
        description="an open this soon after the message was sent or delivered is machine-made",
    )
    log_level: str = "INFO"

    def keys(self) -> CollectorKeys:
        """The keys file (if any) with the directly given secrets merged over it."""
        base = load_keys_file(self.keys_file) if self.keys_file else CollectorKeys()
        try:
            direct = CollectorKeys(
                write_keys=self.write_keys,
                pixel_secrets=self.pixel_secrets,
                sendgrid_public_keys=self.sendgrid_public_keys,
                mailgun_signing_keys=self.mailgun_signing_keys,
            )
        except ValidationError as exc:
            raise ConfigError(f"collector keys: {exc.errors()[0]['msg']}") from exc
        return base.merged(direct)
