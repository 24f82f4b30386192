"""The stream topology declaration (``streams/topology.yaml``) as validated data."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from engagement_index.errors import TopologyError

DEFAULT_TOPOLOGY_PATH = Path(__file__).resolve().parents[2] / "streams" / "topology.yaml"
CHANNELS = ("web", "email", "social", "commerce", "product")

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_retention_ms(value: str | int) -> int:
    """``"7d"`` -> milliseconds; ``-1`` (or ``"forever"``) keeps records forever."""
    if isinstance(value, int):
        return value
    if value.strip() == "forever":
        return -1
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration like '7d', '12h', '30m', '45s' or '500ms'")
    return int(match.group(1)) * _UNIT_MS[match.group(2) or "s"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TopicSpec(_Frozen):
    """One topic: its name and how the cluster should hold it."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    partitions: int | None = Field(default=None, ge=1)
    retention: str | int = "7d"
    cleanup_policy: Literal["delete", "compact"] = "delete"
    value_schema: str | None = None

    @field_validator("retention")
    @classmethod
    def _retention_parses(cls, value: str | int) -> str | int:
        parse_retention_ms(value)
        return value

    @property
    def retention_ms(self) -> int:
        return parse_retention_ms(self.retention)


class OutboundTopics(_Frozen):
    stage_changes: TopicSpec
    scores: TopicSpec
    dead_letters: TopicSpec
    identities: TopicSpec = TopicSpec(name="engagement.identities", retention="30d")
    erasures: TopicSpec = TopicSpec(name="engagement.erasures", retention="30d")
    account_changes: TopicSpec = TopicSpec(name="engagement.account-changes", retention="30d")
    merges: TopicSpec = TopicSpec(name="engagement.merges", retention="30d")


class InternalTopics(_Frozen):
    rekey: TopicSpec
    ticks: TopicSpec
    erasure_requests: TopicSpec = TopicSpec(
        name="engagement-index.erasure-requests", retention="7d"
    )
    account_updates: TopicSpec = TopicSpec(name="engagement-index.account-updates", retention="7d")
    account_ticks: TopicSpec = TopicSpec(name="engagement-index.account-ticks", retention="1d")
    merge_requests: TopicSpec = TopicSpec(name="engagement-index.merge-requests", retention="7d")
    merge_transfers: TopicSpec = TopicSpec(name="engagement-index.merge-transfers", retention="7d")


class TableSpec(_Frozen):
    retention: str | int = "forever"


def _duration(value: str | int) -> str | int:
    if parse_retention_ms(value) < 0:
        raise ValueError(f"{value!r}: a duration here cannot be 'forever' or negative")
    return value


class ChangelogCompaction(_Frozen):
    """How the log cleaner treats every table changelog (compacted topics).

    A restore reads a changelog from its start; the cleaner keeps only the latest record
    of each key in the segments it has cleaned, but never touches the active segment nor
    a log whose share of uncleaned records is below ``min_cleanable_dirty_ratio``. So a
    short ``segment`` and a low ratio keep a restore at about one record per key.
    """

    segment: str | int = "10m"  # segment.ms: the active segment is rolled after this long
    min_cleanable_dirty_ratio: float = Field(default=0.1, gt=0, le=1)
    min_compaction_lag: str | int = 0  # min.compaction.lag.ms
    delete_retention: str | int = "7d"  # delete.retention.ms: how long tombstones stay

    @field_validator("segment")
    @classmethod
    def _segment_positive(cls, value: str | int) -> str | int:
        if parse_retention_ms(_duration(value)) < 1:
            raise ValueError(f"{value!r}: segment must be at least 1 ms")
        return value

    @field_validator("min_compaction_lag", "delete_retention")
    @classmethod
    def _duration_parses(cls, value: str | int) -> str | int:
        return _duration(value)

    def topic_configs(self) -> dict[str, str]:
        """The Kafka topic configs of a changelog, ``cleanup.policy=compact`` included."""
        return {
            "cleanup.policy": "compact",
            "segment.ms": str(parse_retention_ms(self.segment)),
            "min.cleanable.dirty.ratio": str(self.min_cleanable_dirty_ratio),
            "min.compaction.lag.ms": str(parse_retention_ms(self.min_compaction_lag)),
            "delete.retention.ms": str(parse_retention_ms(self.delete_retention)),
        }


class Topology(_Frozen):
    """The whole declaration: inbound, outbound and internal topics and the tables."""

    version: Literal[1]
    app_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")
    scoring_partitions: int = Field(ge=1, le=10_000)
    replication_factor: int = Field(ge=1, le=10)
    inbound: dict[Literal["web", "email", "social", "commerce", "product"], TopicSpec]
    outbound: OutboundTopics
    internal: InternalTopics
    tables: dict[Literal["contacts", "history", "daily", "aliases", "accounts"], TableSpec]
    changelogs: ChangelogCompaction = ChangelogCompaction()

    @field_validator("inbound")
    @classmethod
    def _inbound_co_partitioned(cls, value: dict[str, TopicSpec]) -> dict[str, TopicSpec]:
        for channel, spec in value.items():
            if spec.partitions is not None:
                raise ValueError(
                    f"inbound.{channel}.partitions: inbound topics take scoring_partitions "
                    "(co-partitioning); remove this key"
                )
        return value

    @model_validator(mode="after")
    def _identities_co_partitioned(self) -> Topology:
        partitions = self.outbound.identities.partitions
        if partitions is not None and partitions != self.scoring_partitions:
            raise ValueError(
                "outbound.identities.partitions: the worker reads the identities topic, so it "
                "takes scoring_partitions (co-partitioning); remove this key"
            )
        return self

    def changelog_topic(self, table: str) -> str:
        """Faust's changelog topic name for ``table``."""
        return f"{self.app_id}-{table}-changelog"

    @property
    def scoring_sources(self) -> list[str]:
        """Topics the scoring agent reads. Stored values key their offsets by a 16-bit id of
        each topic's name (``stream.stored.source_id``); this order only maps the values of the
        previous release (which stored positions), so keep it for that one upgrade.
        """
        return [
            *(spec.name for spec in self.inbound.values()),
            self.internal.rekey.name,
            self.internal.ticks.name,
            self.internal.erasure_requests.name,
            *self.identity_sources,
        ]

    @property
    def identity_sources(self) -> list[str]:
        """The identity merge's sources (docs/streaming.md#identity-merge): the identities
        topic and the two internal steps, co-partitioned with the others."""
        return [
            self.outbound.identities.name,
            self.internal.merge_requests.name,
            self.internal.merge_transfers.name,
        ]

    def channel_of(self, topic: str) -> str:
        """The channel label of an inbound topic (``rekeyed``/``erasure``/``tick`` otherwise)."""
        for channel, spec in self.inbound.items():
            if spec.name == topic:
                return channel
        if topic == self.internal.rekey.name:
            return "rekeyed"
        if topic == self.internal.erasure_requests.name:
            return "erasure"
        if topic in self.identity_sources:
            return "identity"
        return "tick"

    def all_topics(self) -> Iterator[tuple[str, int, TopicSpec]]:
        """Every topic with its partition count: what ``topics create`` makes."""
        for spec in self.inbound.values():
            yield spec.name, self.scoring_partitions, spec
        internal = self.internal
        for spec in (
            internal.rekey,
            internal.ticks,
            internal.erasure_requests,
            internal.merge_requests,
            internal.merge_transfers,
        ):
            yield spec.name, self.scoring_partitions, spec
        for spec in (self.internal.account_updates, self.internal.account_ticks):
            yield spec.name, self.scoring_partitions, spec
        for spec in (
            self.outbound.stage_changes,
            self.outbound.scores,
            self.outbound.dead_letters,
            self.outbound.identities,
            self.outbound.erasures,
            self.outbound.account_changes,
            self.outbound.merges,
        ):
            yield spec.name, spec.partitions or self.scoring_partitions, spec
        for table, table_spec in self.tables.items():
            changelog = TopicSpec(
                name=self.changelog_topic(table),
                retention=table_spec.retention,
                cleanup_policy="compact",
            )
            yield changelog.name, self.scoring_partitions, changelog

    @property
    def changelog_names(self) -> frozenset[str]:
        """The changelog topics of the declared tables."""
        return frozenset(self.changelog_topic(table) for table in self.tables)

    def changelog_configs(self) -> dict[str, str]:
        """Topic configs of every table changelog: what ``topics create`` sets and what the
        worker gives Faust's tables (``extra_topic_configs``) for the topics Faust creates."""
        return self.changelogs.topic_configs()

    def topic_configs(self, spec: TopicSpec) -> dict[str, str]:
        """Kafka topic configs for ``spec``."""
        if spec.name in self.changelog_names:
            return self.changelog_configs()
        configs: dict[str, str] = {"cleanup.policy": spec.cleanup_policy}
        if spec.cleanup_policy == "delete":
            configs["retention.ms"] = str(spec.retention_ms)
        return configs


def load_topology(path: Path | str | None = None) -> Topology:
    """Read and validate a topology file; errors name the offending field."""
    source = Path(path) if path is not None else DEFAULT_TOPOLOGY_PATH
    try:
        raw: Any = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopologyError(f"cannot read topology file {source}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise TopologyError(f"{source} is not valid YAML: {exc}") from exc
    try:
        return Topology.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise TopologyError(f"{source}: {problems}") from exc
