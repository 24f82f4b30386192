"""The Dockerfile is lint clean (hadolint) and its build context holds what it copies."""

from __future__ import annotations

import fnmatch
import re

from tests.deploy.tools import REPO_ROOT, run, tool

DOCKERFILE = REPO_ROOT / "Dockerfile"


def test_hadolint_finds_nothing() -> None:
    # --failure-threshold style: any finding at all (error, warning, info, style) fails
    result = run([tool("hadolint"), "--failure-threshold", "style", str(DOCKERFILE)])
    assert result.stdout.strip() == ""


def test_image_shape() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage build"
    assert not re.search(r"^HEALTHCHECK", text, re.MULTILINE), "Kubernetes probes check health"
    assert re.search(r"^USER\s+\$\{UID\}:\$\{GID\}", text, re.MULTILINE)
    assert re.search(r"^ARG UID=10001$", text, re.MULTILINE), "uid matches the chart's runAsUser"
    assert "--constraint constraints.txt" in text, "locked dependency install"
    assert re.search(r'^ENTRYPOINT \["engagement-index"\]', text, re.MULTILINE)
    final = text.split("FROM ${PYTHON_IMAGE} AS runtime", 1)[1]
    for build_tool in ("gcc", "build-essential", "pip install"):
        assert build_tool not in final, f"{build_tool} in the final image"


def test_build_context_keeps_every_copied_path() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: list[str] = []
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M):
        copied.extend(sources.split())
    assert {"src", "streams/", "config/", "constraints.txt"} <= set(copied)
    for path in copied:
        assert (REPO_ROOT / path).exists(), path
        top = path.rstrip("/").split("/")[0]
        assert not any(fnmatch.fnmatch(top, p) for p in patterns), f"{path} is dockerignored"
