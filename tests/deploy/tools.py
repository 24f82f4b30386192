"""Locating and running the deployment checking tools (installed by ``dev/tools/install.sh``).

A missing tool is a test failure, never a skip: ``make setup`` installs every one of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "engagement-index"
TOOLS_BIN = REPO_ROOT / ".cache" / "tools" / "bin"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "engagement-index.json"
ALL_ON_VALUES = Path(__file__).resolve().parent / "values-all-on.yaml"
# The Kubernetes version the chart is rendered for and validated against.
KUBE_VERSION = "1.33.0"
INSTALL_HINT = "install the checking tools with `make setup` (runs dev/tools/install.sh)"


def tool(name: str) -> str:
    """Absolute path of a tool: .cache/tools/bin, then the venv's bin folder, then PATH."""
    for folder in (TOOLS_BIN, Path(sys.executable).parent):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return found


def run(
    args: list[str], *, timeout: float = 120, check: bool = True, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a tool; with ``check`` a non-zero exit fails the test showing its output."""
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return result
