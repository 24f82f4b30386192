"""Creating and checking the declared topics on a cluster (kafka-python admin client)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, NoBrokersAvailable, TopicAlreadyExistsError

from engagement_index.errors import BrokerError, TopologyError
from engagement_index.kafka_security import check_access, kafka_python_options
from engagement_index.settings import Settings
from engagement_index.topology import Topology

log = logging.getLogger("engagement_index.topics")


def client_options(settings: Settings) -> dict[str, Any]:
    """kafka-python connection options from the settings (SASL/SSL included)."""
    return kafka_python_options(settings)


def connect_admin(settings: Settings) -> KafkaAdminClient:
    """An admin client, or ``BrokerError`` naming the servers when none answers."""
    check_access(settings)  # wrong credentials or TLS trust: a clear error at once
    timeout_s = settings.admin_timeout_seconds
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(client_id="engagement-index-admin", **client_options(settings))
        except NoBrokersAvailable as exc:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"no Kafka broker answered at {settings.bootstrap_servers} within "
                    f"{timeout_s:.0f}s"
                ) from exc
            time.sleep(0.5)
        except KafkaError as exc:
            raise BrokerError(f"Kafka refused the connection: {exc}") from exc


@dataclass(frozen=True)
class TopicStatus:
    """How one declared topic compares with the cluster."""

    name: str
    partitions_wanted: int
    partitions_found: int | None
    configs_wanted: dict[str, str]
    configs_found: dict[str, str]

    @property
    def problems(self) -> list[str]:
        if self.partitions_found is None:
            return ["missing"]
        found = []
        if self.partitions_found != self.partitions_wanted:
            found.append(f"{self.partitions_found} partitions, want {self.partitions_wanted}")
        for key, want in self.configs_wanted.items():
            have = self.configs_found.get(key)
            if have != want:
                found.append(f"{key}={have}, want {want}")
        return found


def create_topics(admin: KafkaAdminClient, topology: Topology) -> list[str]:
    """Create the declared topics that do not exist yet; return the names created."""
    existing = set(admin.list_topics())
    created: list[str] = []
    for name, partitions, spec in topology.all_topics():
        if name in existing:
            continue
        try:
            admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=partitions,
                        replication_factor=topology.replication_factor,
                        topic_configs=topology.topic_configs(spec),
                    )
                ]
            )
            created.append(name)
        except TopicAlreadyExistsError:
            continue
    return created


def align_changelogs(
    admin: KafkaAdminClient, topology: Topology, statuses: list[TopicStatus]
) -> list[str]:
    """Set the declared compaction configs on existing table changelogs that lack them.

    The changelogs are the worker's own state topics and every config of theirs is
    declared (``changelogs`` in streams/topology.yaml), so they are brought to the
    declaration, e.g. after an upgrade that declares new ones; any other topic that differs
    is left as it is and reported. Returns the names altered.
    """
    stale = [
        s
        for s in statuses
        if s.name in topology.changelog_names
        and s.partitions_found == s.partitions_wanted
        and s.problems
    ]
    if not stale:
        return []
    admin.alter_configs(
        [
            ConfigResource(ConfigResourceType.TOPIC, s.name, configs=topology.changelog_configs())
            for s in stale
        ]
    )
    for status in stale:
        log.warning("%s: compaction configs set as declared (%s)", status.name, status.problems)
    return [s.name for s in stale]


def describe_topics(admin: KafkaAdminClient, topology: Topology) -> list[TopicStatus]:
    """Compare every declared topic with the cluster."""
    declared = list(topology.all_topics())
    names = [name for name, _, _ in declared]
    existing = set(admin.list_topics())
    partitions: dict[str, int] = {}
    for meta in admin.describe_topics([n for n in names if n in existing]):
        partitions[meta["topic"]] = len(meta["partitions"])
    configs: dict[str, dict[str, str]] = {}
    present = [n for n in names if n in existing]
    if present:
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in present]
        for response in admin.describe_configs(resources):
            for resource in response.resources:
                _error, _msg, _type, resource_name, entries = resource[:5]
                configs[resource_name] = {entry[0]: entry[1] for entry in entries}
    return [
        TopicStatus(
            name=name,
            partitions_wanted=wanted,
            partitions_found=partitions.get(name),
            configs_wanted=topology.topic_configs(spec),
            configs_found=configs.get(name, {}),
        )
        for name, wanted, spec in declared
    ]


def ensure_topics(settings: Settings, topology: Topology) -> list[str]:
    """Create missing topics, then fail if any declared topic disagrees with the cluster."""
    admin = connect_admin(settings)
    try:
        created = create_topics(admin, topology)
        deadline = time.monotonic() + 30
        while True:  # new topics take a moment to show up in the cluster metadata
            bad = [s for s in describe_topics(admin, topology) if s.problems]
            if not any(s.partitions_found is None for s in bad) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if align_changelogs(admin, topology, bad):
            bad = [s for s in describe_topics(admin, topology) if s.problems]
    finally:
        admin.close()
    if bad:
        detail = "; ".join(f"{s.name}: {', '.join(s.problems)}" for s in bad)
        raise TopologyError(f"topics differ from streams/topology.yaml: {detail}")
    return created
