"""Crash suite: SIGKILL the worker at random moments, during recovery and during a rebalance.

Full size (``make reliability``): 200,000 events over 10,000 contacts, 5 SIGKILLs. Fast subset
(``make test``): 3,000 events over 200 contacts, 3 SIGKILLs (a random moment, during recovery,
during a rebalance between two workers). Afterwards every contact's state equals the replay
oracle and the distinct transition ids on the stage-change topic equal the oracle's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.reliability.harness import DEFAULT_MODEL, FaultRun, TrafficPlan, full_size, write_report

pytestmark = pytest.mark.integration

FULL = {"contacts": 10_000, "events": 200_000, "rate": 1_200.0, "kills": 5}
FAST = {"contacts": 200, "events": 3_000, "rate": 300.0, "kills": 3}


def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    stream_env: Callable[..., Any],
) -> None:
    size = FULL if full_size() else FAST
    seed = 8_0001
    env = stream_env(DEFAULT_MODEL, partitions=4)
    plan = TrafficPlan.make(seed, contacts=int(size["contacts"]), events=int(size["events"]))
    run = FaultRun(env, plan, rate=float(size["rate"]), seed=seed)
    try:
        run.traffic.publish_now(plan.dormant)
        run.start_worker("w1")
        run.traffic.start(plan.live)
        # the moments (fractions of the live traffic) of the plain random kills
        kills = int(size["kills"])
        moments = sorted(run.rng.uniform(0.05, 0.85) for _ in range(kills - 2))

        # 1: a random moment; the restarted worker lost its disk, so it restores from the
        # changelog; 2: kill it again while it has not recovered yet
        run.traffic.wait_progress(moments[0])
        run.kill("w1", "random")
        run.start_worker("w1", wipe=True, wait=False)
        run.wait_for("w1", lambda body: not body["recovered"], "web up, not recovered yet")
        run.kill("w1", "during recovery")
        run.start_worker("w1")

        # 3: a second worker joins; kill the first while the group rebalances
        run.start_worker("w2", wait=False)
        run.wait_for("w1", lambda body: body["rebalancing"] or not body["recovered"], "rebalance")
        run.kill("w1", "during rebalance (w2 joining)")
        run.worker("w2").wait_ready()
        run.start_worker("w1")

        # 4, 5 (full size): random moments, alternating workers
        for n, moment in enumerate(moments[1:]):
            run.traffic.wait_progress(moment)
            name = ("w2", "w1")[n % 2]
            run.kill(name, "random")
            run.start_worker(name)

        figures = run.finish(query=run.worker("w1"))
    finally:
        run.close()
    write_report("crash", figures)
    assert figures["faults_injected"] == kills
    assert all(f["fault"] == "SIGKILL" for f in run.faults)
    assert run.check.oracle_transitions > 0
    assert run.check.oracle_decay_transitions > 0
    assert figures["mismatches"] == 0, figures["examples"]
