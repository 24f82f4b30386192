"""A plain reference implementation of ``docs/scoring.md`` (and ``config/models/README.md``).

Written from the documents, importing nothing from ``engagement_index``: the model YAML is
read with PyYAML, RFC 3339 times with ``datetime``. It favours plainness over speed:

* every contact keeps the full list of its applied events, and a decayed sum is computed
  directly from the definition, ``D_c(t) = sum_i p_i * 2^(-(t - t_i)/h_c)``, over that list
  (no incremental rebase);
* the decay crossing ``tau`` is found by plain bisection over whole milliseconds on this
  module's own index function: the first millisecond at which the index is below
  ``leave_upper_below``;
* a duplicate is recognised by time: a record whose ``(tenant, contact_id, event_id)`` was
  already applied is ignored when the applied copy arrived at most ``duplicate_window_ms``
  (default 72 h) before the contact's newest arrival (the latest arrival of its applied
  records and of this record); otherwise it is applied again and its arrival becomes the new
  reference; an applied record that arrived more than the window before the newest arrival
  counts as arriving at the window's start. A record's arrival time defaults to the largest
  event timestamp fed so far, its own included. (The cap on ids per contact is not modelled:
  tests stay below it.)

Floats are not computed the way the core computes them, so compare with a tolerance (the
document's 1e-9 for indices, 1 ms for ``tau``). Comparisons that fall within float rounding
of a threshold make the outcome undecidable; the contacts concerned are listed in
:attr:`Reference.ambiguous` so that tests can leave them out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

MS_PER_DAY = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: 9999-12-31T23:59:59.999Z, the last representable millisecond
MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC) - EPOCH) // timedelta(
    milliseconds=1
)
DEFAULT_DUPLICATE_WINDOW_MS = 72 * 3_600_000
#: a threshold comparison closer than this is undecidable between two implementations whose
#: float rounding differs (an index is around 1e2 and rounds at around 1e-14)
DECISION_TOLERANCE = 1e-11
HALVES = ("pre_purchase", "post_purchase")

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


# ----------------------------------------------------------------------------- time
def parse_time(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 time with an offset, floored to the millisecond."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time with an offset: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    fraction = m.group(7) or ""
    millis = int((fraction + "000")[:3])  # floor: extra digits are dropped
    local = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    offset = timedelta(0)
    if m.group(9):
        sign = 1 if m.group(9) == "+" else -1
        offset = sign * timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
    seconds = (local - offset - EPOCH) // timedelta(seconds=1)
    return seconds * 1000 + millis


def format_time(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    when = EPOCH + timedelta(milliseconds=ms)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


# ----------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Component:
    name: str
    half_life_ms: float
    saturation: float


@dataclass(frozen=True)
class Rule:
    component: str
    points: float
    marks_customer: bool


@dataclass(frozen=True)
class Half:
    name: str
    weights: dict[str, float]
    lower_stage: str
    upper_stage: str
    enter_upper_at: float
    leave_upper_below: float


@dataclass(frozen=True)
class Model:
    version: str
    components: list[Component]
    events: dict[str, Rule]
    halves: dict[str, Half]


_UNITS_S = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}


def half_life_ms(value: Any) -> float:
    """A half-life: seconds (a number) or a number with a unit d/h/m/s, in milliseconds."""
    if isinstance(value, bool):
        raise ValueError("half_life must be a number or a string")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if text and text[-1] in _UNITS_S:
            seconds = float(text[:-1]) * _UNITS_S[text[-1]]
        else:
            seconds = float(text)
    ms = seconds * 1000.0
    if not ms >= 1.0:
        raise ValueError("half_life must be at least 1 ms")
    return ms


def load_model(source: str | Path) -> Model:
    """A model from YAML text or a file path (no validation beyond what is needed): format 1,
    or a format 2 file whose one lifecycle is the two halves."""
    text = source.read_text() if isinstance(source, Path) else source
    raw = yaml.safe_load(text)
    if raw.get("format") == 2:
        # a format 2 file that is exactly the documented two-halves lifecycle
        # (docs/models.md#the-default-model, e.g. config/models/default.yaml): its halves
        from tests.reference.lifecycles import ReferenceModel, halves_of

        raw = halves_of(ReferenceModel.from_mapping(raw))
    components = [
        Component(name, half_life_ms(spec["half_life"]), float(spec["saturation"]))
        for name, spec in raw["components"].items()
    ]
    events = {
        etype: Rule(spec["component"], float(spec["points"]), bool(spec.get("marks_customer")))
        for etype, spec in raw["events"].items()
    }
    halves = {}
    for name in HALVES:
        spec = raw["halves"][name]
        halves[name] = Half(
            name,
            {c: float(w) for c, w in spec["weights"].items()},
            spec["lower_stage"],
            spec["upper_stage"],
            float(spec["enter_upper_at"]),
            float(spec["leave_upper_below"]),
        )
    return Model(str(raw["version"]), components, events, halves)


# ----------------------------------------------------------------------------- outputs
@dataclass
class RefTransition:
    tenant: str
    contact_id: str
    from_stage: str | None
    to_stage: str
    half: str
    reason: str
    index: float
    previous_index: float
    components: dict[str, float]
    cause_event_id: str | None
    occurred_at_ms: int
    model_version: str


@dataclass
class RefSnapshot:
    tenant: str
    contact_id: str
    stage: str
    half: str
    index: float
    components: dict[str, float]
    customer: bool
    first_seen_ms: int
    last_event_ms: int
    events_counted: int
    active_days_7d: int
    active_days_30d: int
    active_days_90d: int
    evaluated_at_ms: int
    model_version: str


@dataclass
class Contact:
    """Everything the reference remembers of one contact."""

    tenant: str
    contact_id: str
    events: list[tuple[int, str, float]] = field(default_factory=list)  # (t_i, component, p_i)
    clock: int = 0
    customer: bool = False  # post-purchase half
    upper: bool = False
    first_seen: int = 0
    last_event: int = 0
    counted: int = 0
    active_days: set[int] = field(default_factory=set)  # UTC day numbers
    applied_arrival: dict[str, int] = field(default_factory=dict)  # event id -> arrival

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.contact_id)

    @property
    def half_name(self) -> str:
        return HALVES[self.customer]


# ----------------------------------------------------------------------------- the engine
class Reference:
    """Contacts fed one raw record at a time, in arrival order."""

    def __init__(
        self, model: Model, *, duplicate_window_ms: int = DEFAULT_DUPLICATE_WINDOW_MS
    ) -> None:
        self.model = model
        self.window = duplicate_window_ms
        self.contacts: dict[tuple[str, str], Contact] = {}
        self.rejected: list[tuple[Any, str]] = []
        self.duplicates = 0
        self.arrival_clock: int | None = None  # the largest event timestamp fed so far
        self.max_event_ms: int | None = None
        self.ambiguous: set[tuple[str, str]] = set()

    # ---- the math
    def decayed_sum(self, contact: Contact, component: Component, t: int) -> float:
        """``D_c(t)`` straight from the definition (events up to ``t`` only)."""
        total = 0.0
        for t_i, name, points in contact.events:
            if name == component.name and t_i <= t:
                total += points * 2.0 ** (-(t - t_i) / component.half_life_ms)
        return total

    def scores(self, contact: Contact, t: int) -> dict[str, float]:
        """``s_c(t) = 100 D+ / (D+ + k)`` of every component, in model order."""
        out = {}
        for component in self.model.components:
            d_plus = max(self.decayed_sum(contact, component, t), 0.0)
            out[component.name] = 100.0 * d_plus / (d_plus + component.saturation)
        return out

    def index(self, contact: Contact, t: int, half: str | None = None) -> float:
        """``I(t) = sum_c w_{half,c} s_c(t)``; ``half`` defaults to the contact's own."""
        weights = self.model.halves[half or contact.half_name].weights
        scores = self.scores(contact, t)
        return sum(weights.get(name, 0.0) * s for name, s in scores.items())

    def _compare(self, contact: Contact, value: float, threshold: float) -> None:
        if abs(value - threshold) < DECISION_TOLERANCE:
            self.ambiguous.add(contact.key)

    def decay_time(self, contact: Contact, by_ms: int) -> int | None:
        """``tau`` if the contact's pending decay falls at or before ``by_ms``, else None.

        The index only falls after the clock, so there is a crossing by ``by_ms`` exactly when
        the index at ``by_ms`` is below the leave level; bisection over whole milliseconds
        in ``(clock, by_ms]`` then finds the first one.
        """
        if not contact.upper or by_ms <= contact.clock:
            return None
        leave = self.model.halves[contact.half_name].leave_upper_below
        at_end = self.index(contact, by_ms)
        self._compare(contact, at_end, leave)
        if at_end >= leave:
            return None
        lo, hi = contact.clock, by_ms  # index(lo) >= leave > index(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.index(contact, mid) < leave:
                hi = mid
            else:
                lo = mid
        for edge in (hi - 1, hi):  # a crossing within 1 ms of rounding is undecidable
            self._compare(contact, self.index(contact, edge), leave)
        return hi

    def next_decay_time(self, contact: Contact) -> int | None:
        """``tau`` of the pending decay, or None (none before the end of year 9999)."""
        return self.decay_time(contact, MAX_MS)

    # ---- transitions
    def _transition(
        self,
        contact: Contact,
        from_stage: str | None,
        to_stage: str,
        reason: str,
        previous: float,
        cause: str | None,
    ) -> RefTransition:
        return RefTransition(
            tenant=contact.tenant,
            contact_id=contact.contact_id,
            from_stage=from_stage,
            to_stage=to_stage,
            half=contact.half_name,
            reason=reason,
            index=self.index(contact, contact.clock),
            previous_index=previous,
            components=self.scores(contact, contact.clock),
            cause_event_id=cause,
            occurred_at_ms=contact.clock,
            model_version=self.model.version,
        )

    def _stage(self, contact: Contact) -> str:
        half = self.model.halves[contact.half_name]
        return half.upper_stage if contact.upper else half.lower_stage

    def _decay(self, contact: Contact, tau: int) -> RefTransition:
        """The decay transition at ``tau``; the contact's clock moves to ``tau``."""
        previous = self.index(contact, contact.clock)
        from_stage = self._stage(contact)
        contact.clock = tau
        contact.upper = False
        return self._transition(contact, from_stage, self._stage(contact), "decay", previous, None)

    def feed(self, raw: bytes | str, arrival_ms: int | None = None) -> list[RefTransition]:
        """Apply one record; returns its transitions (a rejected record gives none)."""
        try:
            record = json.loads(raw)
            event_id = record["event_id"]
            tenant = record.get("tenant", "default")
            contact_id = record["contact_id"]
            rule = self.model.events[record["type"]]
            ts = parse_time(record["timestamp"])
        except (ValueError, KeyError, TypeError) as exc:
            self.rejected.append((raw, repr(exc)))
            return []
        self.arrival_clock = ts if self.arrival_clock is None else max(self.arrival_clock, ts)
        arrival = self.arrival_clock if arrival_ms is None else arrival_ms
        key = (tenant, contact_id)
        contact = self.contacts.get(key)
        applied_at = None if contact is None else contact.applied_arrival.get(event_id)
        if applied_at is not None:
            assert contact is not None
            newest = max([arrival, *contact.applied_arrival.values()])
            if newest - applied_at <= self.window:
                self.duplicates += 1  # applied at most W before the newest arrival
                return []
        out: list[RefTransition] = []
        if contact is None:
            contact = self.contacts[key] = Contact(tenant, contact_id, clock=ts)
            contact.first_seen = contact.last_event = ts
            first = True
            previous = 0.0
        else:
            first = False
            tau = self.decay_time(contact, ts)
            if tau is not None:  # 1. a pending decay at or before the event
                out.append(self._decay(contact, tau))
                previous = out[-1].index
            else:
                previous = self.index(contact, contact.clock)
        # an arrival older than the window of the contact's newest counts as the window's start
        newest = max([arrival, *contact.applied_arrival.values()])
        contact.applied_arrival[event_id] = max(arrival, newest - self.window)
        contact.events.append((ts, rule.component, rule.points))
        contact.clock = max(contact.clock, ts)
        contact.first_seen = min(contact.first_seen, ts)
        contact.last_event = max(contact.last_event, ts)
        contact.counted += 1
        if rule.points > 0:
            contact.active_days.add(ts // MS_PER_DAY)
        if self.max_event_ms is None or ts > self.max_event_ms:
            self.max_event_ms = ts

        if first:  # 2. first_seen
            half = self.model.halves["pre_purchase"]
            now = self.index(contact, contact.clock)
            self._compare(contact, now, half.enter_upper_at)
            contact.upper = now >= half.enter_upper_at
            out.append(
                self._transition(contact, None, self._stage(contact), "first_seen", 0.0, event_id)
            )
            previous = out[-1].index
        if rule.marks_customer and not contact.customer:  # 3. customer_event
            from_stage = self._stage(contact)
            contact.customer = True
            contact.upper = True
            out.append(
                self._transition(
                    contact, from_stage, self._stage(contact), "customer_event", previous, event_id
                )
            )
            previous = out[-1].index
        half = self.model.halves[contact.half_name]  # 4. threshold
        now = self.index(contact, contact.clock)
        if contact.upper:
            self._compare(contact, now, half.leave_upper_below)
            change = now < half.leave_upper_below
        else:
            self._compare(contact, now, half.enter_upper_at)
            change = now >= half.enter_upper_at
        if change:
            from_stage = self._stage(contact)
            contact.upper = not contact.upper
            out.append(
                self._transition(
                    contact, from_stage, self._stage(contact), "threshold", previous, event_id
                )
            )
        return out

    def advance(self, key: tuple[str, str], until_ms: int) -> list[RefTransition]:
        """The contact's pending decay if it falls at or before ``until_ms`` (a wake-up)."""
        contact = self.contacts[key]
        tau = self.decay_time(contact, until_ms)
        return [] if tau is None else [self._decay(contact, tau)]

    def finish(self, until_ms: int | None = None) -> list[RefTransition]:
        """Every decay due by ``until_ms`` (default: the largest event time), by time then key."""
        horizon = self.max_event_ms if until_ms is None else until_ms
        if horizon is None:
            return []
        due = []
        for key in self.contacts:
            tau = self.decay_time(self.contacts[key], horizon)
            if tau is not None:
                due.append((tau, key))
        return [self._decay(self.contacts[key], tau) for tau, key in sorted(due)]

    def snapshot(self, key: tuple[str, str], at_ms: int) -> RefSnapshot:
        """The contact as the API shows it at ``at_ms`` (not before its clock); pure."""
        contact = self.contacts[key]
        at = max(at_ms, contact.clock)
        stage = self._stage(contact)
        if self.decay_time(contact, at) is not None:  # the pending decay applies
            stage = self.model.halves[contact.half_name].lower_stage
        day = at // MS_PER_DAY

        def active(days: int) -> int:
            return sum(1 for d in contact.active_days if day - days < d <= day)

        return RefSnapshot(
            tenant=contact.tenant,
            contact_id=contact.contact_id,
            stage=stage,
            half=contact.half_name,
            index=self.index(contact, at),
            components=self.scores(contact, at),
            customer=contact.customer,
            first_seen_ms=contact.first_seen,
            last_event_ms=contact.last_event,
            events_counted=contact.counted,
            active_days_7d=active(7),
            active_days_30d=active(30),
            active_days_90d=active(90),
            evaluated_at_ms=at,
            model_version=self.model.version,
        )


def run(
    records: list[tuple[bytes | str, int | None]] | list[bytes] | list[str],
    model: Model,
    *,
    until_ms: int | None = None,
    duplicate_window_ms: int = DEFAULT_DUPLICATE_WINDOW_MS,
) -> tuple[Reference, list[RefTransition]]:
    """Feed records (raw, or ``(raw, arrival_ms)`` pairs) then finish at ``until_ms``."""
    ref = Reference(model, duplicate_window_ms=duplicate_window_ms)
    out: list[RefTransition] = []
    for item in records:
        if isinstance(item, tuple):
            out.extend(ref.feed(item[0], item[1]))
        else:
            out.extend(ref.feed(item))
    out.extend(ref.finish(until_ms))
    return ref, out
