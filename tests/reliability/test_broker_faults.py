"""Broker-fault suite: the broker is stopped (SIGTERM) and killed (SIGKILL) mid-run.

The suite runs a broker of its own (``dev/kafka/kafka.sh`` on free ports and a private
folder), never the session's. The live traffic goes in two halves; in the middle of each, the
broker goes away for a while (first SIGTERM, then SIGKILL) and comes back. The producer
buffers and retries; the worker is left alone and must reconnect by itself (same process at
the end). After each return the consumer lag is back to 0 within 60 s, and at the end every
contact equals the replay oracle.
Full size: 100,000 events over 5,000 contacts, both outages of 15 s; fast subset: 3,000 events
over 200 contacts, the SIGKILL outage only, 2 s (plus the broker's own start).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_harness import LocalBroker, StreamEnv
from tests.reliability.harness import (
    DEFAULT_MODEL,
    FaultRun,
    TrafficPlan,
    consumer_lag,
    full_size,
    scoring_topics,
    wait_until,
    write_report,
)

pytestmark = pytest.mark.integration

FULL = {"contacts": 5_000, "events": 100_000, "rate": 800.0, "outage_s": 15.0}
FAST = {"contacts": 200, "events": 3_000, "rate": 300.0, "outage_s": 2.0}
LAG_RECOVERY_LIMIT_S = 60.0


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker for this test alone (it gets stopped and killed)."""
    broker = LocalBroker(tmp_path / "kafka")
    started = broker.run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield broker
    finally:
        broker.run("stop")


def broker_pid(broker: LocalBroker) -> int:
    """The broker's process id (from the script's pid file)."""
    return int((broker.state_dir / "kafka.pid").read_text().strip())


def stop_broker(broker: LocalBroker, sig: int) -> None:
    """SIGTERM through the script (graceful, waits), or SIGKILL the JVM and wait for its end."""
    if sig == signal.SIGTERM:
        stopped = broker.run("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        return
    pid = broker_pid(broker)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "the broker to die")


def test_broker_stopped_and_killed_mid_run(own_broker: LocalBroker, tmp_path: Path) -> None:
    size = FULL if full_size() else FAST
    seed = 8_0003
    env = StreamEnv(own_broker.bootstrap_servers, tmp_path, "rel-broker", DEFAULT_MODEL, 3)
    plan = TrafficPlan.make(seed, contacts=int(size["contacts"]), events=int(size["events"]))
    run = FaultRun(env, plan, rate=float(size["rate"]), seed=seed)
    outages: list[dict[str, Any]] = []
    try:
        run.traffic.publish_now(plan.dormant)
        worker = run.start_worker("w1")
        assert worker.proc is not None
        pid = worker.proc.pid
        half = len(plan.live) // 2
        faults = (
            ((plan.live[:half], signal.SIGTERM), (plan.live[half:], signal.SIGKILL))
            if full_size()
            else ((plan.live, signal.SIGKILL),)
        )
        for chunk, sig in faults:
            run.traffic.start(chunk)
            run.traffic.wait_progress(run.rng.uniform(0.3, 0.6))
            went = time.monotonic()
            stop_broker(own_broker, sig)
            run.faults.append(
                {
                    "fault": f"broker {signal.Signals(sig).name}",
                    "at_s": run.elapsed(),
                    "progress": round(run.traffic.progress(), 3),
                }
            )
            time.sleep(float(size["outage_s"]))
            started = own_broker.run("start")
            assert started.returncode == 0, started.stdout + started.stderr
            back = time.monotonic()
            run.traffic.join()
            lag_zero = wait_until(
                lambda: consumer_lag(env.bootstrap, env.topology.app_id, scoring_topics(env)) == 0,
                LAG_RECOVERY_LIMIT_S + 120,
                "the consumer lag to return to 0",
                every=0.5,
            )
            outages.append(
                {
                    "signal": signal.Signals(sig).name,
                    "broker_away_s": round(back - went, 1),
                    "lag_zero_s_after_broker_returned": round(time.monotonic() - back, 1),
                    "lag_zero_s_after_traffic_flushed": round(lag_zero, 1),
                }
            )
        figures = run.finish(query=worker)
        same_process = worker.alive and worker.proc.pid == pid
    finally:
        run.close()
        env.close()
    figures.update(outages=outages, worker_reconnected_without_restart=same_process)
    figures["max_lag_recovery_s"] = max(o["lag_zero_s_after_broker_returned"] for o in outages)
    write_report("broker_faults", figures)
    assert same_process, worker.log_tail()
    assert len(outages) == len(faults)
    assert figures["max_lag_recovery_s"] <= LAG_RECOVERY_LIMIT_S, outages
    assert figures["mismatches"] == 0, figures["examples"]
