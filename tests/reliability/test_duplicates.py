"""Duplicates suite: 1% of events re-sent with the same ``event_id``, some after a crash.

A duplicate repeats one of the contact's last three records byte for byte. The worker is
SIGKILLed mid-run and restarted, so duplicates arrive both before and after the crash (and
the crash re-delivers uncommitted records on top). Scores are unchanged: the replay of the
stream *without* the duplicates gives the same states as the replay of what the topics hold,
and the worker equals both. Full size: 100,000 events over 5,000 contacts; fast subset: 3,000
events over 200 contacts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from engagement_index.core.lifecycle import evaluate
from engagement_index.replay import replay
from tests.reliability.harness import (
    DEFAULT_MODEL,
    FaultRun,
    TrafficPlan,
    full_size,
    oracle_input,
    write_report,
)

pytestmark = pytest.mark.integration

FULL = {"contacts": 5_000, "events": 100_000, "rate": 800.0}
FAST = {"contacts": 200, "events": 3_000, "rate": 300.0}


def test_replayed_event_ids_leave_scores_unchanged(stream_env: Callable[..., Any]) -> None:
    size = FULL if full_size() else FAST
    seed = 8_0005
    env = stream_env(DEFAULT_MODEL, partitions=3)
    plan = TrafficPlan.make(
        seed, contacts=int(size["contacts"]), events=int(size["events"]), duplicate_fraction=0.01
    )
    run = FaultRun(env, plan, rate=float(size["rate"]), seed=seed)
    crash_at = run.rng.uniform(0.3, 0.6)
    try:
        run.traffic.publish_now(plan.dormant)
        run.start_worker("w1")
        run.traffic.start(plan.live)
        run.traffic.wait_progress(crash_at)
        run.kill("w1", "random")
        sent_before_crash = run.traffic.sent
        run.start_worker("w1")
        figures = run.finish(query=run.worker("w1"))
    finally:
        run.close()
    duplicates_after = sum(1 for p in plan.live[sent_before_crash:] if p.duplicate)

    # scores unchanged: the stream without the duplicates replays to the same states
    without = replay([p.value for p in (*plan.dormant, *plan.live) if not p.duplicate], env.model)
    with_topics = replay(oracle_input(env)[0], env.model)
    at = max(s.clock_ms for s in with_topics.states.values())
    differing = [
        key
        for key, state in without.states.items()
        if evaluate(state, at, env.model.compiled)
        != evaluate(with_topics.states[key], at, env.model.compiled)
    ]
    figures.update(
        duplicates_sent=plan.duplicates,
        duplicates_sent_after_crash=duplicates_after,
        distinct_events=len(plan.dormant) + len(plan.live) - plan.duplicates,
        states_differing_from_duplicate_free_replay=len(differing),
    )
    write_report("duplicates", figures)
    assert plan.duplicates >= len(plan.live) // 200
    assert duplicates_after > 0
    assert figures["oracle_events_applied"] == figures["distinct_events"]
    assert set(without.states) == set(with_topics.states)
    assert not differing, differing[:5]
    assert figures["mismatches"] == 0, figures["examples"]
