"""Segment lists and counts on a real broker with two workers: any worker answers for every
partition; lists equal the replay at the instant of the answer; pages list each contact once
while events arrive; a rebalance answers "retry", never a short list; tokens keep tenants apart.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer

from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import evaluate
from engagement_index.core.timestamps import parse_timestamp_ms
from engagement_index.replay import Replayer
from engagement_index.stream.auth import token_digest
from tests.integration.test_worker_faults import wait_until
from tests.integration.test_worker_oracle import (
    DEFAULT_MODEL,
    FAST_MODEL,
    iso,
    make_traffic,
    publish,
)
from tests.reliability.harness import consumer_lag

pytestmark = pytest.mark.integration

ACME = "segments-acme-token-0123456789"
GLOBEX = "segments-globex-token-0123456789"
ALL = "segments-all-token-0123456789"
TOKENS = json.dumps(
    {token_digest(ACME): ["acme"], token_digest(GLOBEX): ["globex"], token_digest(ALL): ["*"]}
)


def url(tenant: str, what: str = "contacts", **params: Any) -> str:
    query = urllib.parse.urlencode([(k, v) for k, v in params.items() if v is not None])
    return f"/v1/tenants/{tenant}/{what}" + (f"?{query}" if query else "")


def caught_up(env: Any) -> bool:
    """The group committed every record of every scoring source."""
    return consumer_lag(env.bootstrap, env.topology.app_id, env.topology.scoring_sources) == 0


def oracle(values: list[bytes], model: Any) -> Replayer:
    """The replay of everything published, in publish order (each contact's order kept),
    its due times solved (``snapshots`` solves them)."""
    replayer = Replayer(model)
    for value in values:
        replayer.feed(value)
    for _ in replayer.snapshots():
        break
    return replayer


def in_stage(replayer: Replayer, tenant: str, stage: str, at: int) -> set[str]:
    """The replay's contacts of ``tenant`` in ``stage`` as of ``at``."""
    return {s.contact_id for s in replayer.snapshots(at) if s.tenant == tenant and s.stage == stage}


def test_stage_lists_equal_the_replay_at_the_instant_without_wake_ups(
    stream_env: Callable[..., Any],
) -> None:
    """Wake-ups are held back (a tick interval of an hour): every decay out of purchase, and
    into nurture, is found when the list is asked for, right after its solved time."""
    env = stream_env(FAST_MODEL, partitions=4)
    extra = {
        "ENGAGEMENT_INDEX_API_TOKENS": TOKENS,
        "ENGAGEMENT_INDEX_TICK_INTERVAL_SECONDS": "3600",
    }
    first, second = env.worker("w1", extra), env.worker("w2", extra)
    first.start()
    second.start()
    wait_until(lambda: first.ready() and second.ready(), 90, "both workers ready")
    # published once the partitions are shared out: no rebalance resets the transition counts
    rng = random.Random(20261201)
    publish_ms = int(time.time() * 1000)
    traffic = make_traffic(rng, publish_ms, contacts=240)
    publish(env, traffic)
    wait_until(lambda: caught_up(env), 120, "every record scored")
    replayer = oracle([value for _, _, value, _ in traffic], env.model)
    tenants = Counter(t for t, _ in replayer.states)
    assert tenants["acme"] > 150
    assert tenants["globex"] > 30

    def check(worker: Any, tenant: str, stage: str) -> tuple[int, set[str]]:
        status, body = worker.get(url(tenant, stage=stage, limit=1000), ALL)
        assert status == 200, body
        assert body["next_cursor"] is None
        at = parse_timestamp_ms(body["as_of"])
        got = [item["contact_id"] for item in body["items"]]
        assert len(got) == len(set(got))
        assert set(got) == in_stage(replayer, tenant, stage, at), (worker.url, stage, at)
        return at, set(got)

    for stage in ("purchase", "nurture", "retention", "exit"):
        for tenant in ("acme", "globex"):
            check(first, tenant, stage)
            check(second, tenant, stage)
    # hot bursts now: contacts in purchase whose solved decay is still ahead
    burst = [
        ("web", ContactKey("acme", f"h-{i:02d}").encode(), value)
        for i in range(20)
        for value in hot_events("acme", f"h-{i:02d}", 0, int(time.time() * 1000), 40)
    ]
    publish(env, [(channel, key, value, "") for channel, key, value in burst])
    values = [value for _, _, value, _ in traffic] + [value for _, _, value in burst]
    wait_until(lambda: caught_up(env), 60, "the bursts scored")
    replayer = oracle(values, env.model)
    cm = env.model.compiled
    pending = sorted(
        (state.due_ms, cid)
        for (tenant, cid), state in replayer.states.items()
        if tenant == "acme"
        and evaluate(state, state.clock_ms, cm).stage == "purchase"
        and state.due_ms is not None
        and state.due_ms > int(time.time() * 1000) + 500
    )
    assert len(pending) >= 5, "the scenario must decay out of purchase while the test runs"
    decayed_at_request = 0
    for tau, cid in pending[:5]:
        # ask around the crossing: each answer equals the replay at its own instant
        while int(time.time() * 1000) < tau - 300:
            time.sleep(0.05)
        deadline = tau + 400
        while int(time.time() * 1000) < deadline:
            for worker in (first, second):
                at, purchase = check(worker, "acme", "purchase")
                assert (cid in purchase) == (at < tau), (cid, at, tau)
                at, nurture = check(worker, "acme", "nurture")
                assert (cid in nurture) == (at >= tau), (cid, at, tau)
                decayed_at_request += at >= tau
    assert decayed_at_request > 0
    # the stored states were never woken: the worker's stage gauges still count them there
    stored = 0
    for worker in (first, second):
        for line in worker.get("/metrics")[1].splitlines():
            if line.startswith('engagement_contacts{lifecycle="stage",stage="purchase"}'):
                stored += int(float(line.rsplit(" ", 1)[1]))
    now = int(time.time() * 1000)
    assert stored > len(in_stage(replayer, "acme", "purchase", now)) + len(
        in_stage(replayer, "globex", "purchase", now)
    ), "stored states still in purchase that the lists no longer show"
    for stage in ("purchase", "nurture", "retention", "exit"):
        for tenant in ("acme", "globex"):
            check(first, tenant, stage)
            check(second, tenant, stage)
    # the summary: the same counts, from either worker, at its instant
    for worker in (first, second):
        status, summary = worker.get(url("acme", "summary"), ACME)
        assert status == 200, summary
        at = parse_timestamp_ms(summary["as_of"])
        want = Counter(
            evaluate(state, at, cm).stage
            for (tenant, _), state in replayer.states.items()
            if tenant == "acme"
        )
        assert summary["lifecycles"]["stage"] == {
            s: want.get(s, 0) for s in ("nurture", "purchase", "retention", "exit")
        }
        assert summary["contacts"] == sum(1 for t, _ in replayer.states if t == "acme")
        assert summary["bands"] is None
        assert summary["trends"] is None
        edges = {(e["edge"], e["from_stage"], e["to_stage"]): e["count"] for e in summary[
            "transitions_24h"]["edges"]}  # fmt: skip
        cooled = sum(
            1
            for t in replayer_transitions(values, env.model, at)
            if t.tenant == "acme" and t.rule_id == "cooled"
        )
        assert edges[("cooled", "purchase", "nurture")] == cooled


def replayer_transitions(values: list[bytes], model: Any, at: int) -> list[Any]:
    """Every transition of the replay up to ``at`` (time-driven ones included)."""
    replayer = Replayer(model, until_ms=at)
    out = [t for value in values for t in replayer.feed(value)]
    return out + replayer.finish(at)


def hot_events(tenant: str, cid: str, start: int, now: int, n: int = 24) -> list[bytes]:
    types = ("web.form_submit", "email.click", "social.share", "commerce.cart_add")
    return [
        json.dumps(
            {
                "event_id": f"{cid}-{start + i}",
                "tenant": tenant,
                "contact_id": cid,
                "type": types[i % len(types)],
                "timestamp": iso(now - (n - i) * 10),
            }
        ).encode()
        for i in range(n)
    ]


def test_pages_rebalance_tenants_and_summary_on_two_workers(
    stream_env: Callable[..., Any],
) -> None:
    env = stream_env(DEFAULT_MODEL, partitions=4)
    extra = {"ENGAGEMENT_INDEX_API_TOKENS": TOKENS}
    now = int(time.time() * 1000)
    published: list[tuple[str, bytes, bytes]] = []
    contacts = {
        "acme": [f"p-{i:03d}" for i in range(150)],
        "globex": [f"p-{i:03d}" for i in range(40)],
    }
    for tenant, cids in contacts.items():
        for i, cid in enumerate(cids):
            key = ContactKey(tenant, cid).encode()
            n = 24 if i % 3 == 0 else 2  # a third reach purchase
            for value in hot_events(tenant, cid, 0, now - 60_000, n):
                published.append(("web" if i % 2 else "email", key, value))
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)

    def send(items: list[tuple[str, bytes, bytes]]) -> None:
        for channel, key, value in items:
            producer.send(env.topic(channel), key=key, value=value)
        producer.flush()

    send(published)
    first = env.worker("w1", extra)
    first.start()
    wait_until(lambda: caught_up(env), 120, "the first worker scored everything")
    everyone = {tenant: sorted(cids) for tenant, cids in contacts.items()}

    def listed(worker: Any, tenant: str, token: str, **params: Any) -> tuple[int, Any]:
        status, body = worker.get(url(tenant, **{"limit": 1000, **params}), token)
        return int(status), body

    status, body = listed(first, "acme", ACME)
    assert status == 200
    assert [i["contact_id"] for i in body["items"]] == everyone["acme"]

    # a second worker joins: every answer during the rebalance is complete, or "retry"
    second = env.worker("w2", extra)
    starter = threading.Thread(target=second.start)
    starter.start()
    answers: Counter[str] = Counter()
    settle_until = None
    while True:
        status, body = listed(first, "acme", ACME)
        if status == 200:
            assert [i["contact_id"] for i in body["items"]] == everyone["acme"], "a short list"
            answers["complete"] += 1
        else:
            assert (status, body["error"]) == (503, "retry"), body
            answers["retry"] += 1
        if settle_until is None and not starter.is_alive():
            settle_until = time.monotonic() + 5
        if settle_until is not None and time.monotonic() > settle_until:
            break
        time.sleep(0.05)
    starter.join()
    assert answers["complete"] > 0
    wait_until(lambda: first.ready() and second.ready(), 60, "both workers ready")
    for worker in (first, second):  # both own partitions and answer for all of them
        status, body = listed(worker, "acme", ACME)
        assert status == 200
        assert [i["contact_id"] for i in body["items"]] == everyone["acme"]
    scored = [
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in w.get("/metrics")[1].splitlines()
            if line.startswith("engagement_contacts{")
        )
        for w in (first, second)
    ]
    assert all(n > 0 for n in scored), scored

    # pages of 13, alternating between the workers, while events keep arriving (stage moves,
    # index and last-event changes, new contacts): every contact exactly once
    stop = threading.Event()
    arrived: list[tuple[str, bytes, bytes]] = []

    def keep_sending() -> None:
        rng = random.Random(4)
        n = 1000
        while not stop.is_set():
            batch = []
            for cid in rng.sample(everyone["acme"], 10):
                n += 1
                key = ContactKey("acme", cid).encode()
                for value in hot_events("acme", cid, n * 100, int(time.time() * 1000), 3):
                    batch.append(("web", key, value))
            new = f"q-{n:05d}"
            for value in hot_events("acme", new, 0, int(time.time() * 1000), 2):
                batch.append(("email", ContactKey("acme", new).encode(), value))
            arrived.extend(batch)
            send(batch)
            time.sleep(0.05)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        for sort in ("contact_id", "-contact_id"):
            seen: list[str] = []
            cursor = None
            pages = 0
            sent_before = len(arrived)
            while True:
                worker = (first, second)[pages % 2]
                status, body = worker.get(url("acme", limit=13, sort=sort, cursor=cursor), ACME)
                assert status == 200, body
                seen.extend(i["contact_id"] for i in body["items"])
                cursor = body["next_cursor"]
                pages += 1
                if cursor is None:
                    break
                time.sleep(0.1)  # events arrive between the pages
            assert pages > 10
            assert len(arrived) > sent_before + 100, "events arrived during the pagination"
            assert len(seen) == len(set(seen)), "a contact listed twice"
            assert set(everyone["acme"]) <= set(seen), "a contact missing"
            assert seen == sorted(seen, reverse=sort.startswith("-"))
    finally:
        stop.set()
        sender.join()
        producer.close()

    # once everything is scored: stage=purchase equals the replay at the instant
    wait_until(lambda: caught_up(env), 120, "the arriving events scored")
    replayer = oracle([value for _, _, value in published + arrived], env.model)
    for worker in (first, second):
        status, body = listed(worker, "acme", ACME, stage="purchase")
        assert status == 200, body
        at = parse_timestamp_ms(body["as_of"])
        want = in_stage(replayer, "acme", "purchase", at)
        assert len(want) > 40
        assert {i["contact_id"] for i in body["items"]} == want
        items = listed(worker, "acme", ACME, sort="-index", stage="purchase")[1]["items"]
        assert len(items) == len(want)
        status, summary = worker.get(url("acme", "summary"), ACME)
        assert status == 200, summary
        assert summary["lifecycles"]["stage"]["purchase"] == len(
            in_stage(replayer, "acme", "purchase", parse_timestamp_ms(summary["as_of"]))
        )
        assert summary["transitions_24h"]["complete"] is False  # counted since the start

    # tenants: a token for acme never lists globex, from either worker, with any cursor
    for worker in (first, second):
        status, body = listed(worker, "globex", GLOBEX)
        assert status == 200
        assert [i["contact_id"] for i in body["items"]] == everyone["globex"]
        for what in ("contacts", "summary"):
            status, body = worker.get(url("globex", what), ACME)
            assert (status, body["error"]) == (404, "tenant not found"), body
            assert "p-000" not in json.dumps(body)
            for token in (None, "wrong-token"):
                status, body = worker.get(url("globex", what), token)
                assert (status, body["error"]) == (401, "unauthorized"), body
        # an acme cursor on globex lists globex contacts only (a position, not a tenant)
        page = listed(first, "acme", ACME, limit=5)[1]
        status, body = worker.get(url("globex", limit=1000, cursor=page["next_cursor"]), GLOBEX)
        assert status == 200
        assert {i["contact_id"] for i in body["items"]} <= set(everyone["globex"])
        status, body = worker.get(url("acme", account_id="acc-1"), ACME)
        assert status == 400, body
        assert "declares no accounts" in body["message"], body
        status, body = worker.get(url("acme", stage="nope"), ACME)
        assert status == 400, body
        assert "nope" in body["message"], body
