"""The table changelogs' compaction configs declared in streams/topology.yaml: validated by
the loader and given to both paths that create the changelog topics (``topics create`` and
Faust's tables in the worker), and set on existing changelogs that lack them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka.admin import NewTopic
from prometheus_client import CollectorRegistry

from engagement_index.core.model import load_model
from engagement_index.errors import TopologyError
from engagement_index.kafka_admin import TopicStatus, align_changelogs, create_topics
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY_FILE = ROOT / "streams" / "topology.yaml"


def topology_with(tmp_path: Path, changelogs: dict[str, Any]) -> Path:
    raw = yaml.safe_load(TOPOLOGY_FILE.read_text())
    raw["changelogs"] = changelogs
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


#: what the changelogs block below must become, written out by hand from Kafka's config names
DECLARED = {"segment": "45s", "min_cleanable_dirty_ratio": 0.25, "delete_retention": "2h"}
EXPECTED = {
    "cleanup.policy": "compact",
    "segment.ms": "45000",
    "min.cleanable.dirty.ratio": "0.25",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "7200000",
}


def test_the_shipped_topology_declares_the_changelog_compaction() -> None:
    raw = yaml.safe_load(TOPOLOGY_FILE.read_text())
    assert set(raw["changelogs"]) == {
        "segment",
        "min_cleanable_dirty_ratio",
        "min_compaction_lag",
        "delete_retention",
    }
    configs = load_topology(TOPOLOGY_FILE).changelog_configs()
    assert configs["segment.ms"] == "600000"  # 10m
    assert configs["min.cleanable.dirty.ratio"] == "0.1"


def test_every_table_changelog_gets_the_declared_configs(tmp_path: Path) -> None:
    topology = load_topology(topology_with(tmp_path, DECLARED))
    changelogs = {
        name: topology.topic_configs(spec)
        for name, _partitions, spec in topology.all_topics()
        if name.endswith("-changelog")
    }
    assert set(changelogs) == {f"engagement-index-{t}-changelog" for t in topology.tables}
    assert all(configs == EXPECTED for configs in changelogs.values())
    # other topics are not touched by it
    scores = topology.topic_configs(topology.outbound.scores)
    assert scores == {"cleanup.policy": "compact"}


@pytest.mark.parametrize(
    ("changelogs", "complaint"),
    [
        ({"segment": "forever"}, "changelogs.segment"),
        ({"segment": 0}, "changelogs.segment"),
        ({"min_cleanable_dirty_ratio": 0}, "changelogs.min_cleanable_dirty_ratio"),
        ({"min_cleanable_dirty_ratio": 1.5}, "changelogs.min_cleanable_dirty_ratio"),
        ({"delete_retention": "soon"}, "changelogs.delete_retention"),
        ({"segment_bytes": 1024}, "changelogs.segment_bytes"),
    ],
)
def test_bad_changelog_declarations_are_refused(
    tmp_path: Path, changelogs: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(TopologyError, match=complaint):
        load_topology(topology_with(tmp_path, changelogs))


class FakeAdmin:
    """Records what create_topics and align_changelogs ask of the cluster."""

    def __init__(self, existing: list[str]) -> None:
        self.existing = existing
        self.created: list[NewTopic] = []
        self.altered: list[Any] = []

    def list_topics(self) -> list[str]:
        return self.existing

    def create_topics(self, topics: list[NewTopic]) -> None:
        self.created.extend(topics)

    def alter_configs(self, resources: list[Any]) -> None:
        self.altered.extend(resources)


def test_topics_create_gives_the_changelogs_their_configs(tmp_path: Path) -> None:
    topology = load_topology(topology_with(tmp_path, DECLARED))
    admin = FakeAdmin(existing=[])
    create_topics(admin, topology)
    changelogs = [t for t in admin.created if t.name.endswith("-changelog")]
    assert len(changelogs) == len(topology.tables)
    assert all(t.topic_configs == EXPECTED for t in changelogs)


def test_the_worker_gives_faust_the_changelog_configs(tmp_path: Path) -> None:
    from engagement_index.stream.app import Worker

    topology = load_topology(topology_with(tmp_path, DECLARED))
    worker = Worker(
        Settings(data_dir=tmp_path / "data"),
        topology,
        load_model(ROOT / "config" / "models" / "b2b-qualification.yaml"),
        Metrics(CollectorRegistry()),
    )
    assert worker.accounts is not None
    tables = [worker.contacts, worker.history, worker.daily, worker.aliases, worker.accounts.table]
    for table in tables:
        topic = table.changelog_topic
        # what Faust's topic creation sends (its own cleanup.policy, then these over it)
        assert topic.config == EXPECTED, topic.get_topic_name()
        assert topic.compacting


def test_existing_changelogs_that_lack_the_configs_are_aligned(tmp_path: Path) -> None:
    topology = load_topology(topology_with(tmp_path, DECLARED))
    changelog = topology.changelog_topic("contacts")
    stale = TopicStatus(
        name=changelog,
        partitions_wanted=6,
        partitions_found=6,
        configs_wanted=EXPECTED,
        configs_found={**EXPECTED, "segment.ms": "604800000"},
    )
    other = TopicStatus(
        name="engagement.scores",
        partitions_wanted=6,
        partitions_found=6,
        configs_wanted={"cleanup.policy": "compact"},
        configs_found={"cleanup.policy": "delete"},
    )
    wrong_partitions = TopicStatus(
        name=topology.changelog_topic("history"),
        partitions_wanted=6,
        partitions_found=2,
        configs_wanted=EXPECTED,
        configs_found={},
    )
    admin = FakeAdmin(existing=[])
    aligned = align_changelogs(admin, topology, [stale, other, wrong_partitions])
    assert aligned == [changelog]
    assert [(r.name, r.configs) for r in admin.altered] == [(changelog, EXPECTED)]
