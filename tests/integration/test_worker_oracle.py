"""The streaming worker against the offline replay oracle, on a real broker.

Each contact's records go to one inbound topic (Kafka orders records only within a partition),
some with a non-canonical key so they travel through the re-key topic. The records include
late events (arrival order differs from time order) and re-sent duplicates; timestamps lie in
the recent past and the test model's half-lives are seconds, so decay crossings fall both
before the worker starts and while it runs with no events arriving at all.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer

from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import evaluate
from engagement_index.core.timestamps import parse_timestamp_ms
from engagement_index.replay import replay
from tests.reference import engagement as reference
from tests.reference.compare import snapshot_mismatches, transition_mismatches

pytestmark = pytest.mark.integration

DEFAULT_MODEL = (
    __import__("pathlib").Path(__file__).resolve().parents[2] / "config" / "models" / "default.yaml"
).read_text()
FAST_MODEL = (
    DEFAULT_MODEL.replace('version: "default-1"', 'version: "fast-test-1"')
    .replace("half_life: 14d, saturation: 8", "half_life: 20s, saturation: 8")
    .replace("half_life: 7d,  saturation: 15", "half_life: 10s, saturation: 15")
    .replace("half_life: 14d, saturation: 5", "half_life: 20s, saturation: 5")
    .replace("half_life: 60d, saturation: 5", "half_life: 30s, saturation: 5")
    .replace("half_life: 7d,  saturation: 20", "half_life: 10s, saturation: 20")
)
CHANNELS = ("web", "email", "social", "commerce", "product")
HOT = ("web.form_submit", "email.click", "social.share", "web.page_view", "email.open")
WEAK = ("web.page_view", "email.open", "social.like")
LATE_BURST = (
    "web.form_submit",
    "email.click",
    "social.share",
    "commerce.cart_add",
    "product.core_action",
)


def iso(ms: int) -> str:
    """RFC 3339 with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def make_traffic(
    rng: random.Random, now_ms: int, contacts: int
) -> list[tuple[str, bytes, bytes, str]]:
    """(channel, key, value, contact_id) in publish order, contacts interleaved."""
    per_contact: list[list[tuple[str, bytes, bytes, str]]] = []
    for i in range(contacts):
        cid = f"c-{i:04d}"
        tenant = "acme" if i % 5 else "globex"
        channel = rng.choice(CHANNELS)
        key = ContactKey(tenant, cid).encode() if rng.random() > 0.1 else f"legacy:{cid}".encode()
        kind = rng.random()
        events: list[tuple[int, str]] = []
        if kind < 0.6:  # hot: a burst that reaches purchase, then silence (decay)
            start = now_ms - rng.randint(2_000, 60_000)
            for _ in range(rng.randint(8, 20)):
                events.append((start + rng.randint(0, 8_000), rng.choice(HOT)))
            events.sort()
            if kind < 0.25:  # buyer
                events.append((events[-1][0] + rng.randint(1, 2_000), "commerce.purchase"))
                events.append((events[-1][0] + rng.randint(1, 1_000), "product.core_action"))
        else:  # casual
            for _ in range(rng.randint(2, 6)):
                events.append((now_ms - rng.randint(2_000, 60_000), rng.choice(WEAK)))
            events.sort()
        if len(events) > 3 and rng.random() < 0.25:  # a late event: arrival order != time order
            j = rng.randrange(1, len(events))
            events[j - 1], events[j] = events[j], events[j - 1]
        records = []
        for n, (ts, etype) in enumerate(events):
            value = json.dumps(
                {
                    "event_id": f"{cid}-{n}",
                    "tenant": tenant,
                    "contact_id": cid,
                    "type": etype,
                    "timestamp": iso(ts),
                    "properties": {"n": n},
                }
            ).encode()
            records.append((channel, key, value, cid))
        if rng.random() < 0.15:  # an upstream duplicate, re-sent later
            records.insert(rng.randrange(1, len(records) + 1), rng.choice(records))
        per_contact.append(records)
    # interleave contacts while keeping each contact's order
    out: list[tuple[str, bytes, bytes, str]] = []
    while per_contact:
        pick = rng.randrange(len(per_contact))
        out.append(per_contact[pick].pop(0))
        if not per_contact[pick]:
            per_contact.pop(pick)
    return out


def publish(env: Any, traffic: list[tuple[str, bytes, bytes, str]]) -> None:
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)
    for channel, key, value, _ in traffic:
        producer.send(env.topic(channel), key=key, value=value)
    producer.flush()
    producer.close()


def by_contact(transitions: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Transitions per contact in emission order, duplicates (same id) dropped."""
    seen: set[str] = set()
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for t in transitions:
        if t["transition_id"] in seen:
            continue
        seen.add(t["transition_id"])
        out[(t["tenant"], t["contact_id"])].append(t)
    return out


def assert_same_transitions(
    streamed: dict[tuple[str, str], list[dict[str, Any]]],
    oracle: dict[tuple[str, str], list[dict[str, Any]]],
) -> None:
    assert set(streamed) == set(oracle)
    for contact, expected in oracle.items():
        got = streamed[contact]
        assert [t["transition_id"] for t in got] == [t["transition_id"] for t in expected], (
            contact,
            got,
            expected,
        )
        for g, e in zip(got, expected, strict=True):
            for field in (
                "from_stage",
                "to_stage",
                "reason",
                "half",
                "cause_event_id",
                "model_version",
            ):
                assert g[field] == e[field], (contact, field, g, e)
            assert (
                abs(parse_timestamp_ms(g["occurred_at"]) - parse_timestamp_ms(e["occurred_at"]))
                <= 1
            )
            assert g["index"] == pytest.approx(e["index"], abs=1e-6)
            assert g["previous_index"] == pytest.approx(e["previous_index"], abs=1e-6)


def assert_reference_transitions(
    streamed: dict[tuple[str, str], list[dict[str, Any]]],
    expected: list[reference.RefTransition],
    ambiguous: set[tuple[str, str]],
) -> None:
    """The worker's transitions, contact by contact, against the independent reference."""
    want: dict[tuple[str, str], list[reference.RefTransition]] = defaultdict(list)
    for t in expected:
        want[(t.tenant, t.contact_id)].append(t)
    assert set(streamed) == set(want)
    problems = {
        contact: transition_mismatches(streamed[contact], ts)
        for contact, ts in want.items()
        if contact not in ambiguous
    }
    problems = {contact: found for contact, found in problems.items() if found}
    assert not problems, list(problems.items())[:3]


def assert_api_equals_reference(
    worker: Any, ref: reference.Reference, keys: list[tuple[str, str]]
) -> int:
    """Every field of the API's answer for ``keys`` against the reference at the same instant.

    Returns how many answers were compared.
    """
    problems: dict[tuple[str, str], list[str]] = {}
    compared = 0
    for tenant, cid in keys:
        status, body = worker.get(f"/v1/contacts/{tenant}/{cid}")
        assert status == 200, body
        if (tenant, cid) in ref.ambiguous:
            continue
        want = ref.snapshot((tenant, cid), parse_timestamp_ms(body["evaluated_at"]))
        found = snapshot_mismatches(body, want)
        compared += 1
        if found:
            problems[(tenant, cid)] = found
    assert not problems, list(problems.items())[:3]
    return compared


def wait_for_oracle(
    env: Any, oracle: dict[tuple[str, str], list[dict[str, Any]]], timeout: float
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Poll the stage-change topic until it holds every oracle transition (or time runs out)."""
    wanted = {t["transition_id"] for ts in oracle.values() for t in ts}
    deadline = time.monotonic() + timeout
    while True:
        records = env.consume_all(env.topic("stage_changes"), idle_s=1.5)
        streamed = [json.loads(r.value) for r in records]
        have = {t["transition_id"] for t in streamed}
        if wanted <= have or time.monotonic() > deadline:
            return by_contact(streamed)
        time.sleep(2)


def test_worker_equals_replay_and_serves_api_and_metrics(
    stream_env: Callable[..., Any],
) -> None:
    env = stream_env(FAST_MODEL)
    rng = random.Random(20261123)
    publish_ms = int(time.time() * 1000)
    traffic = make_traffic(rng, publish_ms, contacts=300)
    publish(env, traffic)
    worker = env.worker()
    worker.start()

    result = replay([value for _, _, value, _ in traffic], env.model, until_ms=publish_ms + 10**9)
    oracle = by_contact([t.model_dump(mode="json") for t in result.transitions])
    decays_after_publish = [
        t
        for ts in oracle.values()
        for t in ts
        if t["reason"] == "decay" and parse_timestamp_ms(t["occurred_at"]) > publish_ms
    ]
    assert len(traffic) > 2000
    assert len(decays_after_publish) > 20, "the scenario must decay while no events arrive"
    assert any(t["reason"] == "customer_event" for ts in oracle.values() for t in ts)

    # the independent reference (tests/reference) must agree with the replay and the worker
    ref_model = reference.load_model(FAST_MODEL)
    ref_finished, ref_transitions = reference.run(
        [value for _, _, value, _ in traffic], ref_model, until_ms=publish_ms + 10**9
    )
    assert len(ref_finished.ambiguous) < 5, ref_finished.ambiguous
    assert_reference_transitions(oracle, ref_transitions, ref_finished.ambiguous)
    ref_live = reference.Reference(ref_model)  # no decay applied ahead of the API's clock
    for _, _, value, _ in traffic:
        ref_live.feed(value)

    streamed = wait_for_oracle(env, oracle, timeout=120)
    assert_same_transitions(streamed, oracle)
    assert_reference_transitions(streamed, ref_transitions, ref_finished.ambiguous)
    assert assert_api_equals_reference(worker, ref_live, sorted(ref_live.contacts)) > 250

    # decay transitions while nothing arrives are emitted within ~1 s of their crossing
    records = env.consume_all(env.topic("stage_changes"), idle_s=1.0)
    delays = [
        r.timestamp - parse_timestamp_ms(json.loads(r.value)["occurred_at"])
        for r in records
        if json.loads(r.value)["reason"] == "decay"
        and parse_timestamp_ms(json.loads(r.value)["occurred_at"]) > publish_ms + 15_000
    ]
    assert delays, "some crossings fall well after the worker caught up"
    assert max(delays) < 1_500, sorted(delays)[-5:]

    # the query API evaluates the same state the oracle holds, at request time
    for (tenant, cid), state in list(result.states.items())[:25]:
        status, body = worker.get(f"/v1/contacts/{tenant}/{cid}")
        assert status == 200, body
        at = parse_timestamp_ms(body["evaluated_at"])
        expected = evaluate(state, at, env.model.compiled)
        assert body["index"] == pytest.approx(expected.index, abs=1e-6)
        assert body["stage"] == expected.stage
        assert body["events_counted"] == expected.events_counted
        assert body["model_version"] == "fast-test-1"
        assert [t["transition_id"] for t in body["last_transitions"]] == [
            t["transition_id"] for t in reversed(oracle[(tenant, cid)][-10:])
        ]
    status, body = worker.get("/v1/contacts/acme/nobody-here")
    assert status == 404
    assert body["error"] == "contact not found"

    status, text = worker.get("/metrics")
    assert status == 200
    scored = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("engagement_events_consumed_total") and 'outcome="scored"' in line
    )
    distinct_events = {json.loads(value)["event_id"] for _, _, value, _ in traffic}
    assert scored == len(distinct_events), "each distinct event scored once, duplicates not"
    decay_lines = [
        line
        for line in text.splitlines()
        if line.startswith("engagement_transitions_total{") and 'reason="decay"' in line
    ]
    decays_counted = sum(float(line.rsplit(" ", 1)[1]) for line in decay_lines)
    assert decays_counted == sum(1 for ts in oracle.values() for t in ts if t["reason"] == "decay")
    assert "c-0001" not in text, "no contact ids in metrics"
    assert "acme" not in text, "no tenants in metrics"

    # Late events after the timer's decays (docs/scoring.md, "Determinism decision"): a
    # decayed contact's clock is tau, so events timestamped before tau are evaluated at tau
    late_events_after_timer_decays(env, worker, traffic, ref_finished, publish_ms)


def late_events_after_timer_decays(
    env: Any,
    worker: Any,
    traffic: list[tuple[str, bytes, bytes, str]],
    ref: reference.Reference,
    publish_ms: int,
) -> None:
    """Hot events timestamped just before the decays the worker's timer emitted.

    ``ref`` is the reference with every decay applied (``finish``), as the worker has them.
    Each of up to 30 contacts whose last transition is a decay after the publication gets 25
    hot events stamped 1-2000 ms before its ``tau``: late events, evaluated at ``tau``, that
    take it back to the upper stage at ``occurred_at = tau``.
    """
    rng = random.Random(7)
    route = {cid: (channel, key) for channel, key, _, cid in traffic}
    assert ref.finish(publish_ms + 10**9) == [], "every decay is applied already"
    # a contact whose clock a decay moved past its last event, and no event since
    taus = {
        c.key: c.clock
        for c in ref.contacts.values()
        if not c.upper and c.clock > publish_ms and c.clock > c.last_event
    }
    chosen = sorted(k for k in taus if k not in ref.ambiguous)[:30]
    assert len(chosen) >= 10, "the scenario must have contacts decayed by the timer"
    producer = KafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)
    want: dict[tuple[str, str], list[reference.RefTransition]] = defaultdict(list)
    late_ids: set[str] = set()
    for tenant, cid in chosen:
        tau = taus[(tenant, cid)]
        channel, key = route[cid]
        for n in range(25):
            event_id = f"{cid}-late-{n}"
            late_ids.add(event_id)
            value = json.dumps(
                {
                    "event_id": event_id,
                    "tenant": tenant,
                    "contact_id": cid,
                    "type": LATE_BURST[n % len(LATE_BURST)],
                    "timestamp": iso(tau - rng.randint(1, 2000)),
                }
            ).encode()
            producer.send(env.topic(channel), key=key, value=value)
            want[(tenant, cid)].extend(ref.feed(value))
    producer.flush()
    producer.close()
    back_up = [t for ts in want.values() for t in ts if t.to_stage in ("purchase", "retention")]
    assert len(back_up) >= 10, "the late bursts must cross back into the upper stages"
    assert all(t.occurred_at_ms == taus[(t.tenant, t.contact_id)] for t in back_up)

    def scored() -> bool:
        return all(
            worker.get(f"/v1/contacts/{tenant}/{cid}")[1]["events_counted"]
            == ref.contacts[(tenant, cid)].counted
            for tenant, cid in chosen
        )

    deadline = time.monotonic() + 60
    while not scored():
        assert time.monotonic() < deadline, "the worker did not score the late events"
        time.sleep(1)
    expected = sum(len(ts) for ts in want.values())
    while True:  # their transitions are produced before the offsets are committed
        records = env.consume_all(env.topic("stage_changes"), idle_s=1.0)
        caused = [
            t for t in (json.loads(r.value) for r in records) if t["cause_event_id"] in late_ids
        ]
        got = by_contact(caused)
        if sum(len(ts) for ts in got.values()) >= expected or time.monotonic() > deadline:
            break
        time.sleep(1)
    problems = {
        contact: found
        for contact in chosen
        if (found := transition_mismatches(got.get(contact, []), want.get(contact, [])))
    }
    assert not problems, list(problems.items())[:3]
    assert assert_api_equals_reference(worker, ref, chosen) == len(chosen)


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
#: the shipped models that have no test of their own here (default: the test above); the
#: journey model runs with its demo timings so its time-driven edges fire within the test
SHIPPED = ("demo-journey", "b2b-qualification")


def model_traffic(
    rng: random.Random, model_text: str, now_ms: int, contacts: int
) -> list[tuple[str, bytes, bytes, str]]:
    """(channel, key, value, contact_id) of random events of every type the model scores.

    Timestamps in the last minute, some late, some duplicates; each contact on one topic.
    """
    import yaml

    types = sorted(yaml.safe_load(model_text)["events"])
    per_contact = []
    for i in range(contacts):
        cid = f"m-{i:04d}"
        tenant = "acme" if i % 4 else "globex"
        channel = rng.choice(CHANNELS)
        key = ContactKey(tenant, cid).encode()
        stamps = sorted(now_ms - rng.randint(1_000, 60_000) for _ in range(rng.randint(3, 25)))
        if len(stamps) > 3 and rng.random() < 0.3:
            j = rng.randrange(1, len(stamps))
            stamps[j - 1], stamps[j] = stamps[j], stamps[j - 1]
        records = []
        for n, ts in enumerate(stamps):
            value = json.dumps(
                {
                    "event_id": f"{cid}-{n}",
                    "tenant": tenant,
                    "contact_id": cid,
                    "type": rng.choice(types),
                    "timestamp": iso(ts),
                }
            ).encode()
            records.append((channel, key, value, cid))
        if rng.random() < 0.1:
            records.insert(rng.randrange(1, len(records) + 1), rng.choice(records))
        per_contact.append(records)
    out: list[tuple[str, bytes, bytes, str]] = []
    while per_contact:
        pick = rng.randrange(len(per_contact))
        out.append(per_contact[pick].pop(0))
        if not per_contact[pick]:
            per_contact.pop(pick)
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_worker_equals_replay_for_each_shipped_model(
    stream_env: Callable[..., Any], name: str
) -> None:
    """Every transition up to a horizon, byte for byte, as the replay gives them."""
    text = (REPO / "config" / "models" / f"{name}.yaml").read_text()
    env = stream_env(text)
    rng = random.Random(sum(map(ord, name)))
    publish_ms = int(time.time() * 1000)
    traffic = model_traffic(rng, text, publish_ms, contacts=200)
    publish(env, traffic)  # all of it before the worker starts: the same decay points
    worker = env.worker()
    worker.start()
    horizon = publish_ms + 30_000
    result = replay([value for _, _, value, _ in traffic], env.model, until_ms=horizon)
    expected = [t.to_json_bytes() for t in result.transitions]
    lifecycles = {t.lifecycle for t in result.transitions}
    reasons = {t.reason for t in result.transitions}
    assert len(lifecycles) >= 2, lifecycles
    assert {"first_seen", "event", "threshold"} <= reasons, reasons
    while int(time.time() * 1000) < horizon + 3_000:
        time.sleep(1)
    wanted = {json.loads(t)["transition_id"] for t in expected}
    deadline = time.monotonic() + 60
    while True:
        streamed = [r.value for r in env.consume_all(env.topic("stage_changes"), idle_s=1.5)]
        within = [
            v for v in streamed if parse_timestamp_ms(json.loads(v)["occurred_at"]) <= horizon
        ]
        if wanted <= {json.loads(v)["transition_id"] for v in within}:
            break
        if time.monotonic() > deadline:  # compare what arrived: the assertions below say how
            break
        time.sleep(2)

    def per_contact(values: list[bytes]) -> dict[tuple[str, str], list[bytes]]:
        out: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        seen: set[str] = set()
        for v in values:
            t = json.loads(v)
            if t["transition_id"] not in seen:
                seen.add(t["transition_id"])
                out[(t["tenant"], t["contact_id"])].append(v)
        return out

    got, want = per_contact(within), per_contact(expected)
    assert set(got) == set(want)
    differing = [c for c in want if got[c] != want[c]]
    assert not differing, (differing[:2], got[differing[0]][:3], want[differing[0]][:3])
    assert worker.stop() == 0
