"""Accounts on a real broker: ``GET /v1/accounts/{tenant}/{account_id}`` and the account-changes
topic.

The account of ``tests/account_scenario.py`` (20 members, 10 licences): the API answer matches
the hand computation (levels from the independent references); the member going quiet moves the
account to at risk at exactly the solved millisecond, published on the account-changes topic;
and every account transition the worker published equals the replay's for the same arrival
order (the order of the account's updates on its partition of the account-updates topic).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from engagement_index.core.accounts import decode_update
from engagement_index.core.events import ContactKey
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.timestamps import ms_to_rfc3339, parse_timestamp_ms
from engagement_index.replay import Replayer
from tests.account_scenario import ACCOUNT, TENANT, scenario
from tests.integration.test_erasure import erase
from tests.integration.test_worker_faults import wait_until
from tests.reference.accounts import AccountReference

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
B2B = (ROOT / "config" / "models" / "b2b-qualification.yaml").read_text()


def worker_lifecycles(body: dict[str, Any]) -> dict[str, Any]:
    """An API answer's stages and since when (without the time in stage, which runs on)."""
    return {
        name: {k: v for k, v in s.items() if k != "in_stage_ms"}
        for name, s in body["lifecycles"].items()
    }


def _publish(env: Any, lines: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)
    for line in lines:
        body = json.loads(line)
        key = ContactKey(body["tenant"], body["contact_id"]).encode()
        producer.send(env.topic("web"), key=key, value=line)  # any type scores on any topic
    producer.flush()
    producer.close()


def test_an_account_of_twenty_members_with_ten_licences(
    stream_env: Callable[..., Any],
) -> None:
    env = stream_env(B2B, partitions=2)
    worker = env.worker()
    worker.start()
    now = int(time.time() * 1000)
    case = scenario(now, quiet_in_ms=45_000)
    path = f"/v1/accounts/{TENANT}/{ACCOUNT}"
    assert worker.get(path)[0] == 404

    def members(n: int) -> Callable[[], bool]:
        def check() -> bool:
            status, body = worker.get(path)
            return bool(
                status == 200 and body["members"] == n and body["active_users"] >= min(n, 6)
            )

        return check

    # the champions first (the account's clock reaches the last hour), then everyone else:
    # their updates are older than the clock, so none of them waits on a time-driven change
    _publish(env, case.first)
    wait_until(members(3), 60, "the three champions on the account")
    _publish(env, case.second)
    wait_until(members(20), 60, "all twenty members on the account")
    wait_until(lambda: worker.get(path)[1]["licences"] == 10, 30, "the licences")

    status, body = worker.get(path)
    assert status == 200, body
    at = parse_timestamp_ms(body["evaluated_at"])
    assert at < case.quiet_at, "the test reached the check too late"
    reference = AccountReference(B2B)
    for line in case.events:
        reference.feed(line)
    expected = reference.levels(TENANT, ACCOUNT, at)
    champions = sorted(expected["member_indices"][f"c-0{c}"] for c in range(3))
    assert (body["members"], body["active_users"], body["licences"]) == (20, 6, 10)
    assert body["utilisation"] == pytest.approx(0.6, abs=1e-12)
    assert body["index"] == pytest.approx(sum(champions) / 3, abs=1e-6)
    assert body["indices"]["engaged_share"] == pytest.approx(15.0, abs=1e-12)
    for name in ("engagement", "champion", "engaged_share", "utilisation"):
        assert body["indices"][name] == pytest.approx(expected[name], abs=1e-6), name
    assert body["lifecycles"]["health"]["stage"] == "healthy"
    assert [m["contact_id"] for m in body["top_members"][:3]] == sorted(
        (f"c-0{c}" for c in range(3)), key=lambda c: -expected["member_indices"][c]
    )
    assert worker.get(path, token=None)[0] == 401
    assert worker.get(f"/v1/accounts/other/{ACCOUNT}")[0] == 404

    # c-05 goes quiet at quiet_at: at risk at exactly that millisecond
    wait_until(
        lambda: worker.get(path)[1]["lifecycles"]["health"]["stage"] == "at_risk",
        90,
        "the account to be at risk",
    )
    key = ContactKey(TENANT, ACCOUNT).encode()
    published = {}
    for record in env.consume_all(env.topology.outbound.account_changes.name):
        assert record.key == key
        transition = json.loads(record.value)
        published[transition["transition_id"]] = transition
    stream = sorted(published.values(), key=lambda t: (t["occurred_at"], t["lifecycle"]))
    last = [t for t in stream if t["lifecycle"] == "health"][-1]
    assert (last["from_stage"], last["to_stage"], last["reason"]) == (
        "healthy",
        "at_risk",
        "decay",
    )
    assert last["occurred_at"] == ms_to_rfc3339(case.quiet_at)
    assert (last["members"], last["active_users"], last["licences"]) == (20, 5, 10)

    # the replay, given the events in the order their updates reached the account, publishes
    # the same account transitions
    partition = canonical_partition(key, env.topology.scoring_partitions)
    updates = [
        r
        for r in env.consume_all(env.topology.internal.account_updates.name)
        if r.partition == partition and r.key == key
    ]
    order: dict[str | None, int] = {}
    for record in sorted(updates, key=lambda r: r.offset):
        order.setdefault(decode_update(record.value).cause, len(order))
    lines = sorted(case.events, key=lambda line: order[json.loads(line)["event_id"]])
    assert len(order) == len(lines)
    replayer = Replayer(env.model)
    for line in lines:
        replayer.feed(line)
    replayer.finish(case.quiet_at + 1000)
    replayed = sorted(
        (t.model_dump(mode="json") for t in replayer.account_transitions),
        key=lambda t: (t["occurred_at"], t["lifecycle"]),
    )
    assert [t["transition_id"] for t in stream] == [t["transition_id"] for t in replayed]
    for got, want in zip(stream, replayed, strict=True):
        assert got["index"] == pytest.approx(want["index"], abs=1e-6)
        for name in ("from_stage", "to_stage", "reason", "occurred_at", "members", "licences"):
            assert got[name] == want[name], (name, got, want)

    # an erased member leaves its account
    done = erase(env, "c-19")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: worker.get(path)[1]["members"] == 19, 60, "the erased member to leave")
    body = worker.get(path)[1]

    # a new worker without the data folder restores the account from its changelog
    worker.stop()
    second = env.worker("w2")
    second.start(timeout=120)
    status, restored = second.get(path)
    assert status == 200, restored
    assert (restored["members"], restored["licences"]) == (19, 10)
    assert worker_lifecycles(restored) == worker_lifecycles(body)
    assert restored["lifecycles"]["health"]["stage"] == "at_risk"
