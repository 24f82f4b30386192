"""State-loss suite: every worker loses its RocksDB folder and restarts from the changelogs.

Two workers share the traffic. Mid-run both are SIGKILLed, both folders deleted, both
restarted (they restore the tables from the changelog topics); in the full size, later both
are stopped gracefully, wiped again and restarted. Afterwards every contact equals the
replay oracle.
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
FAST = {"contacts": 200, "events": 3_000, "rate": 200.0}


def test_all_workers_lose_their_disks_and_match_the_oracle(
    stream_env: Callable[..., Any],
) -> None:
    size = FULL if full_size() else FAST
    seed = 8_0004
    env = stream_env(DEFAULT_MODEL, partitions=4)
    plan = TrafficPlan.make(seed, contacts=int(size["contacts"]), events=int(size["events"]))
    run = FaultRun(env, plan, rate=float(size["rate"]), seed=seed)
    try:
        run.traffic.publish_now(plan.dormant)
        run.start_worker("w1")
        run.start_worker("w2")
        run.traffic.start(plan.live)
        rounds = (
            ((0.4, signal.SIGKILL), (0.8, signal.SIGTERM))
            if full_size()
            else ((0.5, signal.SIGKILL),)
        )
        for fraction, sig in rounds:
            run.traffic.wait_progress(fraction)
            for name in ("w1", "w2"):
                run.kill(name, "before deleting every RocksDB folder", sig=sig)
            for name in ("w1", "w2"):
                run.start_worker(name, wipe=True, wait=False)
            for name in ("w1", "w2"):
                run.worker(name).wait_ready()
        figures = run.finish(query=run.worker("w2"))
    finally:
        run.close()
    figures["state_wipes"] = sum(1 for s in run.restarts if s["wiped_state"])
    write_report("state_loss", figures)
    assert figures["state_wipes"] == 2 * len(rounds)
    assert figures["mismatches"] == 0, figures["examples"]
