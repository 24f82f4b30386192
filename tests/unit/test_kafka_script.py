"""The broker script fails clearly when its prerequisites are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "dev" / "kafka" / "kafka.sh"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH with bash and coreutils-like tools but without the named commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in (
        "bash",
        "cat",
        "head",
        "base64",
        "tr",
        "awk",
        "cut",
        "grep",
        "dirname",
        "seq",
        "sleep",
        "rm",
        "mkdir",
        "mv",
        "touch",
        "tail",
        "echo",
    ):
        found = shutil.which(tool)
        if found and tool not in missing:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_missing_java_is_reported_clearly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": _path_without(tmp_path, "java"),
        "KAFKA_STATE_DIR": str(tmp_path / "state"),
        "KAFKA_PORT": "1",
    }
    result = _run(["start"], env)
    assert result.returncode == 1
    assert "Java 17 or newer is required" in result.stderr


def test_status_of_a_stopped_broker(tmp_path: Path) -> None:
    env = {**os.environ, "KAFKA_STATE_DIR": str(tmp_path / "state"), "KAFKA_PORT": "1"}
    result = _run(["status"], env)
    assert result.returncode == 3
    assert "not running" in result.stdout


def test_stop_is_idempotent(tmp_path: Path) -> None:
    env = {**os.environ, "KAFKA_STATE_DIR": str(tmp_path / "state"), "KAFKA_PORT": "1"}
    assert _run(["stop"], env).returncode == 0
    assert _run(["stop"], env).returncode == 0


def test_unknown_action_shows_usage(tmp_path: Path) -> None:
    result = _run(["bogus"], dict(os.environ))
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_missing_maven_is_reported_clearly_when_jars_are_not_cached(tmp_path: Path) -> None:
    path = _path_without(tmp_path, "mvn")
    java = shutil.which("java")
    assert java is not None, "the test machine has Java"
    (Path(path) / "java").symlink_to(java)
    env = {
        **os.environ,
        "PATH": path,
        "KAFKA_VERSION": "0.0.0-not-cached",
        "KAFKA_STATE_DIR": str(tmp_path / "state"),
        "KAFKA_PORT": "1",
    }
    result = _run(["start"], env)
    assert result.returncode == 1
    assert "Maven ('mvn') is required" in result.stderr
