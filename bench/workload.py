"""The benchmark workload: canonical events with Zipf-distributed contact activity.

Deterministic for a given ``(events, contacts, seed, end_ms)``: the same arguments give the
same file byte for byte. Events are written as JSON lines in timestamp order (the order an
upstream tracker would publish them), so the same file feeds the Kafka topics and
``engagement-index replay``.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MS_PER_DAY = 86_400_000
#: Timestamps span this many days, ending at ``end_ms``.
SPAN_DAYS = 90
#: Zipf exponent of contact activity (rank r gets weight r ** -ZIPF_EXPONENT).
ZIPF_EXPONENT = 0.8
TENANTS = ("acme", "globex", "initech", "umbrella")

#: The default model's event types and their share of the traffic: mostly page views and
#: email opens, a few percent clicks, social and product usage, about 1% purchases.
TYPE_MIX: dict[str, float] = {
    "web.page_view": 0.450,
    "email.open": 0.280,
    "email.sent": 0.060,
    "email.click": 0.040,
    "web.form_submit": 0.020,
    "social.like": 0.030,
    "social.comment": 0.010,
    "social.follow": 0.005,
    "social.share": 0.005,
    "commerce.cart_add": 0.020,
    "commerce.purchase": 0.010,
    "product.login": 0.040,
    "product.core_action": 0.025,
    "email.bounce": 0.003,
    "email.unsubscribe": 0.002,
}

_PROPERTIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "web": ("url", ("/", "/pricing", "/docs", "/blog/launch", "/features", "/contact")),
    "email": ("campaign_id", tuple(f"cmp-{i:03d}" for i in range(40))),
    "social": ("network", ("linkedin", "x", "facebook", "instagram")),
    "commerce": ("sku", tuple(f"sku-{i:04d}" for i in range(200))),
    "product": ("feature", ("dashboard", "reports", "export", "api", "settings")),
}


@dataclass(frozen=True)
class WorkloadSpec:
    """What to generate."""

    events: int
    contacts: int
    seed: int
    end_ms: int  # the newest timestamp; the oldest is SPAN_DAYS before it

    @property
    def start_ms(self) -> int:
        """The oldest possible timestamp."""
        return self.end_ms - SPAN_DAYS * MS_PER_DAY

    def file_name(self) -> str:
        """A cache file name that changes with every parameter."""
        return f"events-{self.events}-{self.contacts}-{self.seed}-{self.end_ms}.jsonl"


def contact_id(n: int) -> str:
    """The id of contact number ``n``."""
    return f"c-{n:07d}"


def tenant_of(n: int) -> str:
    """The tenant of contact number ``n``."""
    return TENANTS[n % len(TENANTS)]


def _rfc3339(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    days, rest = divmod(seconds, 86_400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    year, month, day = _civil_from_days(days)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count since 1970-01-01."""
    z += 719_468
    era = (z if z >= 0 else z - 146_096) // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + (m <= 2), m, d)


def zipf_cum_weights(n: int, exponent: float = ZIPF_EXPONENT) -> list[float]:
    """Cumulative weights of ranks 1..n for ``random.choices``."""
    return list(itertools.accumulate(r**-exponent for r in range(1, n + 1)))


def generate(spec: WorkloadSpec) -> Iterator[dict[str, object]]:
    """The events of ``spec`` as canonical-event dicts, in timestamp order."""
    if spec.events < 1 or spec.contacts < 1:
        raise ValueError("events and contacts must be positive")
    rng = random.Random(spec.seed)
    # rank -> contact number: the busiest contacts are spread over tenants and partitions
    numbers = list(range(spec.contacts))
    rng.shuffle(numbers)
    ranks = rng.choices(numbers, cum_weights=zipf_cum_weights(spec.contacts), k=spec.events)
    types = list(TYPE_MIX)
    kinds = rng.choices(types, weights=list(TYPE_MIX.values()), k=spec.events)
    span = spec.end_ms - spec.start_ms
    stamps = sorted(spec.start_ms + int(rng.random() * span) for _ in range(spec.events))
    for i in range(spec.events):
        n = ranks[i]
        event_type = kinds[i]
        channel = event_type.partition(".")[0]
        prop, values = _PROPERTIES[channel]
        yield {
            "event_id": f"{rng.getrandbits(128):032x}",
            "tenant": tenant_of(n),
            "contact_id": contact_id(n),
            "type": event_type,
            "timestamp": _rfc3339(stamps[i]),
            "account_id": f"acct-{n % 5000:04d}",
            "properties": {prop: values[rng.randrange(len(values))]},
        }


def write(spec: WorkloadSpec, path: Path) -> int:
    """Write the workload to ``path`` (atomically); returns the number of distinct contacts."""
    tmp = path.with_suffix(".tmp")
    seen: set[str] = set()
    with tmp.open("w", encoding="utf-8") as out:
        for event in generate(spec):
            seen.add(str(event["contact_id"]))
            out.write(json.dumps(event, separators=(",", ":")))
            out.write("\n")
    tmp.replace(path)
    return len(seen)


def channel_of(event_type: str) -> str:
    """The inbound channel of an event type (its prefix)."""
    return event_type.partition(".")[0]


def share_of_top(counts: list[int], fraction: float) -> float:
    """Share of all events that the busiest ``fraction`` of contacts account for."""
    ordered = sorted(counts, reverse=True)
    top = max(1, int(len(ordered) * fraction))
    return sum(ordered[:top]) / max(1, sum(ordered))


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of an ascending list, nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]


class LiveSource:
    """Fresh events for the latency phase: the workload's contacts and type mix, time = now.

    Contact ``n`` has the same Zipf rank as in :func:`generate` for the same seed.
    """

    def __init__(self, contacts: int, seed: int) -> None:
        numbers = list(range(contacts))
        random.Random(seed).shuffle(numbers)
        self._numbers = numbers
        self._cum = zipf_cum_weights(contacts)
        self._types = list(TYPE_MIX)
        self._type_cum = list(itertools.accumulate(TYPE_MIX.values()))
        self._rng = random.Random(seed + 1)

    def event(self, now_ms: int) -> dict[str, object]:
        """One event at ``now_ms``."""
        rng = self._rng
        n = rng.choices(self._numbers, cum_weights=self._cum)[0]
        event_type = rng.choices(self._types, cum_weights=self._type_cum)[0]
        prop, values = _PROPERTIES[channel_of(event_type)]
        return {
            "event_id": f"{rng.getrandbits(128):032x}",
            "tenant": tenant_of(n),
            "contact_id": contact_id(n),
            "type": event_type,
            "timestamp": _rfc3339(now_ms),
            "account_id": f"acct-{n % 5000:04d}",
            "properties": {prop: values[rng.randrange(len(values))]},
        }
