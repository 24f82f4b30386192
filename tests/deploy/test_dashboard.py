"""The Grafana dashboard queries only metrics the service exports, and covers what SREs need.

tests/integration/test_prometheus_e2e.py checks the same against a running worker's scrape.
"""

from __future__ import annotations

import json

import pytest

from engagement_index.metrics import CollectorMetrics, Metrics
from tests.deploy.dashboard import dashboard_metric_names, exposed_names, metric_names, queries
from tests.deploy.tools import DASHBOARD


def service_names() -> set[str]:
    return exposed_names(Metrics().render().decode()) | exposed_names(
        CollectorMetrics().render().decode()
    )


def test_dashboard_only_queries_exported_metrics() -> None:
    names = dashboard_metric_names(DASHBOARD)
    assert names, "no metric found in the dashboard"
    assert names <= service_names(), names - service_names()


def test_dashboard_covers_every_required_view() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = queries(dashboard)
    for name, grouping in [
        ("engagement_events_consumed_total", "by (channel)"),  # throughput by channel
        ("engagement_dead_letters_total", "by (failure_type)"),  # DLQ by failure type
        ("engagement_transitions_total", "by (lifecycle, from_stage, to_stage)"),  # by stage pair
        ("engagement_processing_latency_seconds_bucket", "histogram_quantile(0.99"),
        ("engagement_event_time_lag_seconds", "by (channel)"),  # lag
        ("engagement_contacts", "by (lifecycle, stage)"),  # contacts per stage
        ("engagement_recovery_remaining_records", ""),  # recovery progress
        ("engagement_collector_requests_total", "by (status)"),
    ]:
        assert any(name in metric_names(e) and grouping in e for e in exprs), (name, grouping)
    assert dashboard["uid"] == "engagement-index"
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "job"}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (channel) (rate(a_total{job=~"$job", x="y{z}"}[$__rate_interval]))',
            {"a_total"},
        ),
        ("histogram_quantile(0.9, sum by (le) (rate(b_bucket[5m]))) / c", {"b_bucket", "c"}),
        ("up == 0 unless on (job) d offset 5m", {"up", "d"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
