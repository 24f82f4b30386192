"""Rebalance suite: three workers started and stopped in turn while traffic flows.

Full size: seven steps (w2, w3 join; w1 leaves; w1 joins; w2, w3 leave; w2 joins); fast
subset: four (w2, w3 join; w1, w2 leave). Every stop is graceful (SIGTERM: the worker leaves
the group, its partitions move); every start joins the group. Afterwards every contact equals
the replay oracle.
Full size: 100,000 events over 5,000 contacts; fast subset: 3,000 events over 200 contacts.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.reliability.harness import DEFAULT_MODEL, FaultRun, TrafficPlan, full_size, write_report

pytestmark = pytest.mark.integration

FULL = {"contacts": 5_000, "events": 100_000, "rate": 800.0}
FAST = {"contacts": 200, "events": 3_000, "rate": 150.0}

# (fraction of the traffic, action, worker): three workers joining and leaving in turn
FAST_SCHEDULE = (
    (0.15, "start", "w2"),
    (0.30, "start", "w3"),
    (0.50, "stop", "w1"),
    (0.70, "stop", "w2"),
)
FULL_SCHEDULE = (
    (0.10, "start", "w2"),
    (0.20, "start", "w3"),
    (0.35, "stop", "w1"),
    (0.50, "start", "w1"),
    (0.60, "stop", "w2"),
    (0.75, "stop", "w3"),
    (0.85, "start", "w2"),
)


def test_workers_joining_and_leaving_under_traffic_match_the_oracle(
    stream_env: Callable[..., Any],
) -> None:
    size = FULL if full_size() else FAST
    seed = 8_0002
    env = stream_env(DEFAULT_MODEL, partitions=6)
    plan = TrafficPlan.make(seed, contacts=int(size["contacts"]), events=int(size["events"]))
    run = FaultRun(env, plan, rate=float(size["rate"]), seed=seed)
    try:
        run.traffic.publish_now(plan.dormant)
        run.start_worker("w1")
        run.traffic.start(plan.live)
        schedule = FULL_SCHEDULE if full_size() else FAST_SCHEDULE
        for fraction, action, name in schedule:
            run.traffic.wait_progress(fraction)
            if action == "start":
                run.start_worker(name)
            else:
                run.kill(name, "graceful stop under traffic", sig=signal.SIGTERM)
        figures = run.finish(query=run.running()[0])
    finally:
        run.close()
    figures["workers_running_at_end"] = sorted(
        name for name in ("w1", "w2", "w3") if run.worker(name).alive
    )
    figures["schedule"] = [list(step) for step in schedule]
    write_report("rebalance", figures)
    stops = sum(1 for _, action, _ in schedule if action == "stop")
    assert [f["fault"] for f in run.faults] == ["SIGTERM"] * stops
    assert len(run.restarts) == 1 + len(schedule) - stops
    assert figures["mismatches"] == 0, figures["examples"]
