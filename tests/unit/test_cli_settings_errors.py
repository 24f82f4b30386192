"""Invalid settings end a command with a one-line error, not a stack trace."""

from __future__ import annotations

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
