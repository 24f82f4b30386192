"""`engagement-index topics create|describe` against the real broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

from engagement_index.topology import load_topology

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def topics(bootstrap: str, topology: Path, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "engagement_index.cli",
            "topics",
            action,
            "--bootstrap-servers",
            bootstrap,
            "--topology",
            str(topology),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def describe_configs(admin: KafkaAdminClient, topic: str) -> dict[str, str]:
    response = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])[0]
    entries = response.resources[0][4]
    return {entry[0]: entry[1] for entry in entries}


def private_topology(tmp_path: Path, prefix: str) -> Path:
    raw = yaml.safe_load((REPO / "streams" / "topology.yaml").read_text())
    raw["app_id"] = f"{prefix}-app"
    for group in ("inbound", "outbound", "internal"):
        for spec in raw[group].values():
            spec["name"] = f"{prefix}.{spec['name']}"
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_create_is_idempotent_and_describe_reports_ok(
    bootstrap_servers: str,
    kafka_admin: KafkaAdminClient,
    tmp_path: Path,
    unique_name: Callable[[str], str],
) -> None:
    prefix = unique_name("topo")
    path = private_topology(tmp_path, prefix)
    # a changelog created before its compaction configs were declared (an upgrade): create
    # sets them as declared
    old_changelog = f"{prefix}-app-contacts-changelog"
    kafka_admin.create_topics(
        [NewTopic(old_changelog, 6, 1, topic_configs={"cleanup.policy": "compact"})]
    )
    first = topics(bootstrap_servers, path, "create")
    assert first.returncode == 0, first.stderr
    assert f"created {prefix}.events.web" in first.stdout
    assert f"{old_changelog}: compaction configs set as declared" in first.stderr
    found = describe_configs(kafka_admin, old_changelog)
    assert found["segment.ms"] == "600000"
    assert found["min.cleanable.dirty.ratio"] == "0.1"
    second = topics(bootstrap_servers, path, "create")
    assert second.returncode == 0, second.stderr
    assert "0 created" in second.stdout
    described = topics(bootstrap_servers, path, "describe")
    assert described.returncode == 0, described.stdout
    lines = [line for line in described.stdout.splitlines() if line.strip()]
    assert len(lines) == len(list(load_topology(path).all_topics()))
    assert all(line.endswith("ok") for line in lines), described.stdout
    assert any("engagement.scores" in line for line in lines)


def test_a_topic_that_disagrees_with_the_declaration_is_reported(
    bootstrap_servers: str,
    kafka_admin: KafkaAdminClient,
    tmp_path: Path,
    unique_name: Callable[[str], str],
) -> None:
    prefix = unique_name("topo")
    path = private_topology(tmp_path, prefix)
    kafka_admin.create_topics([NewTopic(f"{prefix}.events.web", 2, 1)])
    created = topics(bootstrap_servers, path, "create")
    assert created.returncode == 2
    assert f"{prefix}.events.web: 2 partitions, want 6" in created.stderr
    described = topics(bootstrap_servers, path, "describe")
    assert described.returncode == 1
    assert "2 partitions, want 6" in described.stdout


def test_unreachable_broker_fails_with_a_clear_message(tmp_path: Path) -> None:
    path = private_topology(tmp_path, "nobody")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engagement_index.cli",
            "topics",
            "describe",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--topology",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"ENGAGEMENT_INDEX_ADMIN_TIMEOUT_SECONDS": "3", **__import__("os").environ},
    )
    assert result.returncode == 2
    assert "no Kafka broker answered at 127.0.0.1:1" in result.stderr
