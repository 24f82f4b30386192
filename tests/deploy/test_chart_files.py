"""The chart's copies of the topology, models, alerts and dashboard match their sources."""

from __future__ import annotations

from tests.deploy.tools import CHART, REPO_ROOT, run

FILES = CHART / "files"


def expected_copies() -> dict[str, str]:
    """Path under files/ -> source path in the repository."""
    pairs = {
        "topology.yaml": "streams/topology.yaml",
        "prometheus/alerts.yaml": "deploy/prometheus/alerts.yaml",
        "grafana/engagement-index.json": "deploy/grafana/engagement-index.json",
    }
    for model in sorted((REPO_ROOT / "config" / "models").glob("*.yaml")):
        pairs[f"models/{model.name}"] = f"config/models/{model.name}"
    for item in sorted((REPO_ROOT / "config" / "collector").glob("*.yaml")):
        if not item.name.endswith(".example.yaml"):
            pairs[f"collector/{item.name}"] = f"config/collector/{item.name}"
    return pairs


def test_copies_match_sources() -> None:
    hint = "run dev/tools/sync-chart-files.sh"
    pairs = expected_copies()
    for copy, source in pairs.items():
        assert (FILES / copy).is_file(), f"helm/engagement-index/files/{copy} missing: {hint}"
        assert (FILES / copy).read_bytes() == (REPO_ROOT / source).read_bytes(), (
            f"helm/engagement-index/files/{copy} differs from {source}: {hint}"
        )
    present = {str(p.relative_to(FILES)) for p in FILES.rglob("*") if p.is_file()}
    assert present == set(pairs), f"stale copies {present - set(pairs)}: {hint}"


def test_sync_script_check_mode_agrees() -> None:
    result = run(["bash", str(REPO_ROOT / "dev" / "tools" / "sync-chart-files.sh"), "--check"])
    assert "up to date" in result.stdout
