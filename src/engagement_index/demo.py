"""Demo traffic: realistic canonical events for a few hundred contacts, in real time.

Personas (chosen per contact, reproducibly from ``--seed``):

* ``warming``  activity ramps up until the contact becomes sales-ready (``purchase``)
* ``buyer``    warms up, buys (``retention``) and keeps using the product
* ``churner``  buys, then goes quiet until engagement drops (``exit``)
* ``fading``   warms up to ``purchase``, then goes quiet (back to ``nurture`` by decay)
* ``casual``   a little activity now and then (stays in ``nurture``)

A small share of records are deliberately broken or duplicated so the dead-letter topic and
the duplicate handling have something to show. Use with the demo model
(``config/models/demo.yaml``), whose half-lives are seconds and minutes.

With ``journey=True`` (``engagement-index demo --journey``, for
``config/models/demo-journey.yaml``) customers also use the product more, open support tickets
(some left open past the model's 15 s, some escalated), renew, and half the churners leave only
after reaching ``retention``, so every journey edge fires within about seven minutes.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from engagement_index.core.events import ContactKey
from engagement_index.topology import Topology

PERSONAS = ("warming", "buyer", "churner", "fading", "casual")
PERSONA_WEIGHTS = (0.3, 0.2, 0.15, 0.2, 0.15)
# events per second per contact at full activity, by type
HOT_RATES = {
    "web.page_view": 0.5,
    "web.form_submit": 0.01,
    "email.open": 0.06,
    "email.click": 0.04,
    "social.like": 0.03,
    "social.share": 0.02,
}
CUSTOMER_RATES = {"product.login": 0.1, "product.core_action": 0.1, "email.open": 0.03}
# journey mode: enough product, email and web use for the `usage` index to reach retention's 40
JOURNEY_CUSTOMER_RATES = {
    "product.login": 0.1,
    "product.core_action": 0.15,
    "email.open": 0.03,
    "email.click": 0.02,
    "web.page_view": 0.1,
}
# channels with no inbound topic of their own: the worker scores a type on any inbound topic
TOPIC_CHANNEL = {"support": "product"}


@dataclass
class DemoContact:
    """One simulated contact and its plan."""

    contact_id: str
    persona: str
    ramp_s: float
    buy_at_s: float
    quiet_at_s: float
    bought: bool = False
    journey: bool = False
    plan: list[tuple[float, str]] = field(default_factory=list)  # (seconds, type), in order

    def rates(self, elapsed: float) -> dict[str, float]:
        """Event rates (per second) at ``elapsed`` seconds into the demo."""
        if self.persona == "casual":
            return {k: v * 0.08 for k, v in HOT_RATES.items()}
        if self.persona in ("churner", "fading") and elapsed >= self.quiet_at_s:
            return {}
        if self.bought:
            return JOURNEY_CUSTOMER_RATES if self.journey else CUSTOMER_RATES
        ramp = min(1.0, 0.1 + elapsed / self.ramp_s)
        return {k: v * ramp for k, v in HOT_RATES.items()}


def make_contacts(count: int, rng: random.Random, *, journey: bool = False) -> list[DemoContact]:
    """Contacts with personas and reproducible plans (the default ones unchanged by ``journey``)."""
    contacts = []
    for i in range(count):
        persona = rng.choices(PERSONAS, PERSONA_WEIGHTS)[0]
        ramp = rng.uniform(20, 90)
        buy_at = ramp + rng.uniform(20, 90) if persona in ("buyer", "churner") else float("inf")
        quiet_at = {
            "churner": buy_at + rng.uniform(20, 40),
            "fading": ramp + rng.uniform(10, 40),
        }.get(persona, float("inf"))
        contact = DemoContact(f"demo-{i:04d}", persona, ramp, buy_at, quiet_at, journey=journey)
        if journey:
            contact.plan = _journey_plan(persona, buy_at, rng)
            if persona == "churner" and rng.random() < 0.5:  # leaves after reaching retention
                contact.quiet_at_s = buy_at + rng.uniform(240, 360)
        contacts.append(contact)
    return contacts


def _journey_plan(persona: str, buy_at: float, rng: random.Random) -> list[tuple[float, str]]:
    """One-off events of a journey-mode contact: support tickets and a renewal, for buyers."""
    plan: list[tuple[float, str]] = []
    if persona != "buyer":
        return plan
    if rng.random() < 0.6:  # a ticket; resolved after 5-45 s (escalation after 15 s open)
        opened = buy_at + rng.uniform(60, 240)
        plan.append((opened, "support.ticket_opened"))
        if rng.random() < 0.25:  # escalated by support: escalation at once
            escalated = opened + rng.uniform(2, 8)
            plan.append((escalated, "support.escalated"))
            plan.append((escalated + rng.uniform(10, 40), "support.ticket_resolved"))
        else:
            plan.append((opened + rng.uniform(5, 45), "support.ticket_resolved"))
    if rng.random() < 0.5:  # a renewal: adoption -> retention at once
        plan.append((buy_at + rng.uniform(150, 300), "commerce.renewal"))
    return sorted(plan)


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def run_demo(
    *,
    kafka_options: Mapping[str, Any],
    topology: Topology,
    tenant: str,
    contacts: int,
    seed: int,
    duration_s: float | None,
    bad_share: float,
    duplicate_share: float,
    tail: bool,
    journey: bool = False,
    out: Callable[[str], None] = print,
) -> dict[str, int]:
    """Publish demo traffic until ``duration_s`` elapses (or forever); return counts."""
    rng = random.Random(seed)
    people = make_contacts(contacts, rng, journey=journey)
    producer = KafkaProducer(linger_ms=20, **kafka_options)
    stop = threading.Event()
    tailer = None
    if tail:
        tailer = threading.Thread(
            target=_tail_stage_changes,
            args=(kafka_options, topology.outbound.stage_changes.name, stop, out, journey),
            daemon=True,
        )
        tailer.start()
    counts = {"events": 0, "bad": 0, "duplicates": 0}
    recent: list[tuple[str, bytes, bytes]] = []
    start = time.monotonic()
    step_s = 0.1
    next_report = 10.0
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - start
            if duration_s is not None and elapsed >= duration_s:
                break
            now_ms = time.time_ns() // 1_000_000
            for person in people:
                if not person.bought and elapsed >= person.buy_at_s:
                    person.bought = True
                    for kind in ("commerce.cart_add", "commerce.purchase"):
                        _send(producer, topology, tenant, person, kind, now_ms, recent)
                        counts["events"] += 1
                while person.plan and person.plan[0][0] <= elapsed:
                    _send(producer, topology, tenant, person, person.plan.pop(0)[1], now_ms, recent)
                    counts["events"] += 1
                for kind, rate in person.rates(elapsed).items():
                    if rng.random() < rate * step_s:
                        _send(producer, topology, tenant, person, kind, now_ms, recent)
                        counts["events"] += 1
                        if rng.random() < duplicate_share and recent:
                            topic, key, value = recent[-1]
                            producer.send(topic, key=key, value=value)
                            counts["duplicates"] += 1
                        if rng.random() < bad_share:
                            producer.send(
                                topology.inbound["web"].name,
                                key=b"demo-bad",
                                value=rng.choice(_BAD_RECORDS),
                            )
                            counts["bad"] += 1
            del recent[:-10]
            if elapsed >= next_report:
                out(
                    f"demo: {elapsed:5.0f}s  {counts['events']} events, "
                    f"{counts['duplicates']} duplicates, {counts['bad']} bad records sent"
                )
                next_report += 30.0
            time.sleep(max(0.0, step_s - (time.monotonic() - start - elapsed)))
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        producer.flush()
        producer.close()
        if tailer is not None:
            tailer.join(timeout=5)
    return counts


_BAD_RECORDS = (
    b"{not json",
    b'{"event_id": "x", "contact_id": "c", "type": "web.page_view"}',
    b'{"event_id": "x", "contact_id": "c", "type": "fax.sent", '
    b'"timestamp": "2026-01-01T00:00:00Z"}',
    b"\xff\xfe binary",
)


def _send(
    producer: KafkaProducer,
    topology: Topology,
    tenant: str,
    person: DemoContact,
    kind: str,
    now_ms: int,
    recent: list[tuple[str, bytes, bytes]],
) -> None:
    event: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "tenant": tenant,
        "contact_id": person.contact_id,
        "type": kind,
        "timestamp": _iso(now_ms),
        "properties": {"demo_persona": person.persona},
    }
    channel = kind.split(".", 1)[0]
    channel = TOPIC_CHANNEL.get(channel, channel)
    topic = topology.inbound[channel].name  # type: ignore[index]
    key = ContactKey(tenant, person.contact_id).encode()
    value = json.dumps(event, separators=(",", ":")).encode()
    producer.send(topic, key=key, value=value)
    recent.append((topic, key, value))


def _tail_stage_changes(
    kafka_options: Mapping[str, Any],
    topic: str,
    stop: threading.Event,
    out: Callable[[str], None],
    journey: bool = False,
) -> None:
    consumer = KafkaConsumer(
        topic,
        **kafka_options,
        group_id=f"demo-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",
        consumer_timeout_ms=500,
    )
    try:
        while not stop.is_set():
            for record in consumer:
                try:
                    t = json.loads(record.value)
                    lifecycle = t.get("lifecycle") or ""
                    if journey and lifecycle == "trend":
                        continue  # rising/steady/falling flips every few seconds: not shown
                    out(
                        f"stage change  {t['contact_id']:<10} {lifecycle:<8} "
                        f"{t['from_stage']!s:>10} -> {t['to_stage']:<10} {t['reason']:<14} "
                        f"index {t['index']:6.2f}  at {t['occurred_at']}"
                    )
                except (ValueError, KeyError, TypeError):
                    out(f"stage change  (unreadable record at offset {record.offset})")
                if stop.is_set():
                    break
    finally:
        consumer.close()
        sys.stdout.flush()
