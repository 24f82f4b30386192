"""Service settings, read from ``ENGAGEMENT_INDEX_*`` environment variables (and flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Everything a worker needs that is not the topology or the scoring model."""

    model_config = SettingsConfigDict(
        env_prefix="ENGAGEMENT_INDEX_",
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        env_ignore_empty=True,
    )

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices(
            "ENGAGEMENT_INDEX_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers"
        ),
        description="Kafka bootstrap servers, comma separated",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="SASL_SSL for SCRAM or PLAIN over TLS"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(default=None, repr=False)
    ssl_cafile: Path | None = Field(
        default=None, description="PEM CA bundle that signed the brokers' certificates"
    )
    ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate (mutual TLS), with ssl_keyfile"
    )
    ssl_keyfile: Path | None = Field(default=None, description="PEM private key of ssl_certfile")
    ssl_key_password: str | None = Field(
        default=None, repr=False, description="password of an encrypted ssl_keyfile"
    )
    ssl_check_hostname: bool = Field(
        default=True, description="check that the broker certificate names the host"
    )

    topology_file: Path = REPO_ROOT / "streams" / "topology.yaml"
    model_file: Path = REPO_ROOT / "config" / "models" / "default.yaml"
    data_dir: Path = REPO_ROOT / "var" / "worker"

    web_bind: str = Field(default="127.0.0.1", description="address the HTTP server binds to")
    web_host: str = Field(
        default="127.0.0.1", description="host other workers use to reach this one (routing)"
    )
    web_port: int = Field(default=6066, ge=1, le=65535)
    api_auth: bool = Field(
        default=True,
        description="require a bearer token on the query API (/v1/...); off only for demos",
    )
    api_tokens_file: Path | None = Field(
        default=None,
        description="YAML/JSON file {tokens: {'sha256:<hex>': [tenant, ...]}} (a mounted Secret)",
    )
    api_tokens: dict[str, list[str]] = Field(
        default_factory=dict,
        description="the same digest -> tenants map as JSON; merged over the tokens file",
    )

    max_record_bytes: int = Field(default=64 * 1024, ge=1024)
    max_future_seconds: float = Field(default=300.0, ge=0)
    max_age_days: float = Field(default=400.0, gt=0)
    score_step: float = Field(
        default=1.0,
        ge=0,
        description="a score snapshot when the index moves more than this (a transition makes "
        "one too); a batch sends the last one per contact",
    )
    batch_size: int = Field(
        default=4000,
        ge=1,
        description="the most records one fetch hands to a batch (docs/performance.md: batch size)",
    )
    batch_within_seconds: float = Field(default=0.02, gt=0)
    tick_interval_seconds: float = Field(default=0.2, gt=0)
    tick_retry_seconds: float = Field(default=5.0, gt=0)
    commit_interval_seconds: float = Field(default=1.0, gt=0)
    history_size: int = Field(default=10, ge=1, le=100)
    history_days: int = Field(
        default=400,
        ge=1,
        le=36_500,
        description="score history (GET .../history): days of daily states kept per contact, "
        "counted back from its latest state",
    )
    dedupe_window_seconds: float = Field(
        default=72 * 3600.0,
        ge=0,
        description="a re-sent event id arriving within this time of the applied copy "
        "(by record timestamp) is ignored",
    )
    identity_blocked_ids: list[str] = Field(
        default_factory=list,
        description="ids that never merge, besides null, undefined, anonymous, 0 and empty "
        "(compared case-folded, white space stripped); JSON list",
    )
    rocksdb_block_cache_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    rocksdb_write_buffer_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024 * 1024,
        description="memtable size of each table partition's RocksDB (up to 3 per partition)",
    )
    admin_timeout_seconds: float = Field(
        default=30.0, gt=0, description="how long admin commands wait for a broker to answer"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
