"""Alert rules: promtool check + unit tests, one test and one runbook per alert."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.deploy.tools import ALERT_TESTS, ALERTS, REPO_ROOT, run, tool


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = run([tool("promtool"), "check", "rules", str(ALERTS)])
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run([tool("promtool"), "test", "rules", str(ALERT_TESTS)])
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_unit_test() -> None:
    tested: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check["exp_alerts"]:
                tested.add(check["alertname"])
    assert tested == {rule["alert"] for rule in alerts()}


def test_every_alert_has_severity_summary_and_runbook() -> None:
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", operations, re.MULTILINE)
    }
    for rule in alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert anchor in headings, f"docs/operations.md has no runbook heading {rule['alert']}"
