"""Invalid settings end a command with a one-line error, not a stack trace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engagement_index.cli import main


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ENGAGEMENT_INDEX_SECURITY_PROTOCOL", "TLS", "security_protocol"),
        ("ENGAGEMENT_INDEX_API_TOKENS", "{not json", "api_tokens"),
        ("ENGAGEMENT_INDEX_SASL_MECHANISM", "PLAIN", "ENGAGEMENT_INDEX_SECURITY_PROTOCOL"),
    ],
)
def test_invalid_settings_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
    expected: str,
) -> None:
    monkeypatch.setenv(name, value)
    assert main(["erase", "acme", "c-1", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("engagement-index: error: ")
    assert expected in err
    assert "Traceback" not in err


def test_replay_does_not_load_the_settings_module(tmp_path: Path) -> None:
    """``replay`` reads no settings, and pydantic-settings' import is a third of its start-up
    (bench/README.md, the replay start-up figure): the CLI must not import it for ``replay``."""
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    probe = (
        "import sys\n"
        "from engagement_index.cli import main\n"
        f"code = main(['replay', {str(empty)!r}])\n"
        "print(code, 'pydantic_settings' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split()[-2:] == ["0", "False"], done.stdout + done.stderr
