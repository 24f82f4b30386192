"""Collector settings: keys from a file and from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from engagement_index.collector.settings import CollectorSettings, load_keys_file
from engagement_index.collector.webhooks import load_ecdsa_public_key
from engagement_index.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_example_keys_file_is_valid() -> None:
    keys = load_keys_file(REPO / "config" / "collector" / "keys.example.yaml")
    assert keys.tenants == {"acme", "globex"}
    for text in keys.sendgrid_public_keys.values():
        load_ecdsa_public_key(text)


def test_env_keys_merge_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("write_keys: {wk1: acme}\npixel_secrets: {acme: a}\n")
    monkeypatch.setenv("ENGAGEMENT_INDEX_COLLECTOR_KEYS_FILE", str(path))
    monkeypatch.setenv("ENGAGEMENT_INDEX_COLLECTOR_WRITE_KEYS", '{"wk2": "globex"}')
    monkeypatch.setenv("ENGAGEMENT_INDEX_COLLECTOR_PORT", "9999")
    settings = CollectorSettings()
    keys = settings.keys()
    assert settings.port == 9999
    assert keys.write_keys == {"wk1": "acme", "wk2": "globex"}
    assert keys.tenants == {"acme", "globex"}


@pytest.mark.parametrize(
    "text",
    ["write_keys: {wk: 'bad tenant'}\n", "unknown: 1\n", "pixel_secrets: {acme: ''}\n", "[1"],
)
def test_bad_keys_files_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_keys_file(path)
