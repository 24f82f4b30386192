"""Rendered Helm manifests shared by the deploy tests (rendered once per session)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.tools import ALL_ON_VALUES, CHART, KUBE_VERSION, run, tool

BOOTSTRAP = "kafka-bootstrap.kafka.svc:9092"


def render(*extra: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart; the manifests as dictionaries."""
    out = run(
        [
            tool("helm"),
            "template",
            "ei",
            str(CHART),
            "--namespace",
            "streaming",
            "--kube-version",
            KUBE_VERSION,
            *extra,
        ]
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def default_manifests() -> list[dict[str, Any]]:
    """The chart with default values (only the required bootstrap servers set)."""
    return render("--set", f"kafka.bootstrapServers={BOOTSTRAP}")


@pytest.fixture(scope="session")
def all_on_manifests() -> list[dict[str, Any]]:
    """The chart with every flag on (tests/deploy/values-all-on.yaml)."""
    return render("-f", str(ALL_ON_VALUES))
