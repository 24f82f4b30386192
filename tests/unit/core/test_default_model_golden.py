"""The default model's outputs, frozen: replay two fixed inputs and compare to tests/golden/.

Two inputs, both rebuilt here from fixed seeds:

* ``bench``: the benchmark workload (``bench.workload``), 40,000 events of 3,000 contacts in
  4 tenants over 90 days, in timestamp order;
* ``adversarial``: 50 contacts in 3 tenants (10 contact ids in two tenants each), 22,933
  events, 86 to 882 a contact, over 14 months: long gaps, purchases early, late, twice or
  never, bursts of bounces and unsubscribes, events out of timestamp order (up to weeks
  late), repeated event ids (within and past the dedupe window, some with another type or
  time).

Each is replayed with ``config/models/default.yaml`` (decays up to the last event time
included) and every transition, in emission order, then every final snapshot is compared to
the golden file. A record may gain fields; every golden field must be present, with the same
JSON value (byte for byte, floats included) and in the same order relative to the other golden
fields. ``tests/golden/README.md`` says how the golden files were made.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from bench import workload

from engagement_index.core.model import load_model
from engagement_index.replay import replay

REPO = Path(__file__).resolve().parents[3]
MODEL_PATH = REPO / "config" / "models" / "default.yaml"
GOLDEN_DIR = REPO / "tests" / "golden"
#: The inputs, in the order the golden files are written.
INPUT_NAMES = ("bench", "adversarial")

BENCH_SPEC = workload.WorkloadSpec(events=40_000, contacts=3_000, seed=40, end_ms=1_790_000_000_000)

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 24 * MS_PER_HOUR
#: Chosen among the first few seeds for covering every stage change of both halves several
#: times, threshold drops included (see the last test).
ADV_SEED = 4
ADV_CONTACTS = 50
ADV_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00.000Z
ADV_SPAN_DAYS = 420
ADV_TENANTS = ("north", "south", "east")
#: The default model's event types and their weight in an ordinary burst of activity.
ADV_MIX: dict[str, float] = {
    "web.page_view": 30.0,
    "web.form_submit": 3.0,
    "email.sent": 6.0,
    "email.open": 20.0,
    "email.machine_open": 3.0,
    "email.click": 6.0,
    "email.bounce": 1.5,
    "email.unsubscribe": 0.5,
    "social.like": 5.0,
    "social.comment": 2.0,
    "social.follow": 1.0,
    "social.share": 1.0,
    "commerce.cart_add": 3.0,
    "commerce.purchase": 0.0,  # placed by hand (see _contact_events)
    "product.login": 6.0,
    "product.core_action": 4.0,
}
#: A burst of complaints: bounces, unsubscribes and a few opens.
NEGATIVE_MIX = {"email.bounce": 1.0, "email.unsubscribe": 1.0, "email.open": 0.5}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _rfc3339(ms: int) -> str:
    at = _EPOCH + timedelta(milliseconds=ms)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _line(event: dict[str, object]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode("utf-8")


def bench_lines() -> list[bytes]:
    """The benchmark workload of ``BENCH_SPEC``, one JSON line (no newline) per event."""
    return [_line(event) for event in workload.generate(BENCH_SPEC)]


def _contact_events(rng: random.Random, n: int) -> Iterator[tuple[int, str]]:
    """(timestamp, type) of contact number ``n``; its style is ``n % 5``.

    0: buys in its first burst (sometimes with its very first event); 1: buys in its last
    burst; 2: never buys; 3: never buys; 4: buys twice. Styles 0, 3 and 4 follow half of
    their bursts with a few complaints (bounces, unsubscribes, opens).
    """
    style = n % 5
    types = list(ADV_MIX)
    weights = [w * rng.uniform(0.2, 3.0) for w in ADV_MIX.values()]
    negative = [NEGATIVE_MIX.get(t, 0.0) for t in types]
    bursts = sorted(rng.sample(range(ADV_SPAN_DAYS), rng.randint(4, 14)))
    buy_in = {0: {0}, 1: {len(bursts) - 1}, 4: set(rng.sample(range(len(bursts)), 2))}.get(
        style, set()
    )
    for b, day in enumerate(bursts):
        start = ADV_START_MS + day * MS_PER_DAY + rng.randrange(MS_PER_DAY)
        length = rng.choice((MS_PER_HOUR, 6 * MS_PER_HOUR, 2 * MS_PER_DAY))
        size = min(200, int(rng.paretovariate(1.1) * 12))
        stamps = sorted(start + rng.randrange(length) for _ in range(size))
        for ts, event_type in zip(stamps, rng.choices(types, weights=weights, k=size), strict=True):
            yield ts, event_type
        if style in (0, 3, 4) and rng.random() < 0.5:  # complaints, up to 3 days later
            later = start + length + rng.randrange(3 * MS_PER_DAY)
            k = rng.randint(2, 12)
            for event_type in rng.choices(types, weights=negative, k=k):
                yield later + rng.randrange(6 * MS_PER_HOUR), event_type
        if b in buy_in:
            # the very first event, or anywhere in the burst
            at = start - 1 if b == 0 and rng.random() < 0.5 else rng.choice(stamps)
            yield at, "commerce.purchase"
    # single events at any time, many of them complaints for styles 0, 3 and 4
    mix = [w + 10.0 * c for w, c in zip(weights, negative, strict=True)]
    if style not in (0, 3, 4):
        mix = weights
    for event_type in rng.choices(types, weights=mix, k=rng.randint(5, 40)):
        yield ADV_START_MS + rng.randrange(ADV_SPAN_DAYS * MS_PER_DAY), event_type


def adversarial_events() -> list[dict[str, object]]:
    """The adversarial input as canonical-event dicts, in arrival order."""
    rng = random.Random(ADV_SEED)
    # (arrival, sequence, event): the sequence keeps the sort stable and total
    queue: list[tuple[int, int, dict[str, object]]] = []
    seq = 0
    for n in range(ADV_CONTACTS):
        tenant = ADV_TENANTS[n % len(ADV_TENANTS)]
        contact = f"p-{n % 40:02d}"  # contacts n and n + 40 share an id in two tenants
        for ts, event_type in _contact_events(rng, n):
            event: dict[str, object] = {
                "event_id": f"{tenant}-{rng.getrandbits(64):016x}",
                "tenant": tenant,
                "contact_id": contact,
                "type": event_type,
                "timestamp": _rfc3339(ts),
            }
            if rng.random() < 0.3:
                event["properties"] = {"campaign_id": f"cmp-{rng.randrange(40):03d}"}
            r = rng.random()
            if r < 0.06:  # late by minutes to hours
                arrival = ts + rng.randrange(1, 12 * MS_PER_HOUR)
            elif r < 0.10:  # late by days
                arrival = ts + rng.randrange(MS_PER_DAY, 6 * MS_PER_DAY)
            elif r < 0.12:  # late by weeks
                arrival = ts + rng.randrange(7 * MS_PER_DAY, 45 * MS_PER_DAY)
            else:
                arrival = ts
            queue.append((arrival, seq, event))
            seq += 1
            r = rng.random()
            if r < 0.03:  # a retry within the dedupe window (72 h): ignored
                again = arrival + rng.randrange(0, 48 * MS_PER_HOUR)
                queue.append((again, seq, event))
                seq += 1
            elif r < 0.045:  # a retry past the window: counted again
                again = arrival + rng.randrange(4 * MS_PER_DAY, 60 * MS_PER_DAY)
                queue.append((again, seq, event))
                seq += 1
            elif r < 0.05:  # the same id on another event (another type and time)
                other = dict(event)
                other["type"] = rng.choice(list(ADV_MIX))
                other["timestamp"] = _rfc3339(ts + rng.randrange(-MS_PER_DAY, 10 * MS_PER_DAY))
                queue.append((arrival + rng.randrange(0, 10 * MS_PER_DAY), seq, other))
                seq += 1
    queue.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in queue]


def adversarial_lines() -> list[bytes]:
    """The adversarial input, one JSON line (no newline) per event."""
    return [_line(event) for event in adversarial_events()]


INPUTS: dict[str, Callable[[], list[bytes]]] = {
    "bench": bench_lines,
    "adversarial": adversarial_lines,
}


def golden_path(name: str) -> Path:
    """The golden file of input ``name``."""
    return GOLDEN_DIR / f"default-model-{name}.jsonl.gz"


def input_sha256(lines: list[bytes]) -> str:
    """Digest of the input lines (newline-terminated)."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line)
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Outputs:
    """One replay's records as JSON: transitions in emission order, then final snapshots."""

    transitions: list[bytes]
    snapshots: list[bytes]


def run(lines: list[bytes], model_path: Path) -> Outputs:
    """Replay ``lines`` with the model at ``model_path`` (decays due by the last event too)."""
    result = replay(lines, load_model(model_path))
    return Outputs(
        transitions=[t.to_json_bytes() for t in result.transitions],
        snapshots=[s.to_json_bytes() for s in result.snapshots],
    )


@dataclass(frozen=True)
class Golden:
    """A golden file: its first line (metadata), then the records."""

    meta: dict[str, Any]
    outputs: Outputs


def read_golden(path: Path) -> Golden:
    """Parse a golden file: a metadata line, then ``transitions`` and ``snapshots`` lines."""
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    assert lines[-1] == b"", f"{path}: no final newline"
    meta = orjson.loads(lines[0])
    records = lines[1:-1]
    nt, ns = meta["transitions"], meta["snapshots"]
    assert len(records) == nt + ns, f"{path}: {len(records)} records, metadata says {nt} + {ns}"
    return Golden(meta, Outputs(records[:nt], records[nt:]))


# ----------------------------------------------------------------------------- comparison


def difference(golden: bytes, now: bytes) -> str | None:
    """None if ``now`` keeps every field of ``golden``: value (as JSON bytes) and order."""
    if now == golden:
        return None
    old = orjson.loads(golden)
    new = orjson.loads(now)
    try:
        kept = {k: new[k] for k in old}
    except KeyError:
        return f"missing field(s) {[k for k in old if k not in new]}"
    if orjson.dumps(kept) != golden:
        changed = [k for k in old if orjson.dumps(new[k]) != orjson.dumps(old[k])]
        return f"different value(s) of {changed}"
    order = [k for k in new if k in old]
    if order != list(old):
        return f"fields in another order: {order}"
    return None


def _short(record: bytes, limit: int = 700) -> str:
    text = record.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


def first_difference(kind: str, golden: list[bytes], now: list[bytes]) -> str | None:
    """A short description of the first record of ``now`` that does not match, or None."""
    for i, (g, n) in enumerate(zip(golden, now, strict=False)):
        why = difference(g, n)
        if why is not None:
            return (
                f"{kind} #{i} (of {len(golden)} golden, {len(now)} now): {why}\n"
                f"  golden: {_short(g)}\n  now:    {_short(n)}"
            )
    if len(golden) != len(now):
        i = min(len(golden), len(now))
        extra = ("golden", golden[i]) if len(golden) > len(now) else ("now", now[i])
        return (
            f"{kind}: {len(now)} now, {len(golden)} golden; the first {i} match, "
            f"then #{i} is only in {extra[0]}: {_short(extra[1])}"
        )
    return None


# ----------------------------------------------------------------------------- the tests


@dataclass(frozen=True)
class Case:
    name: str
    lines: list[bytes]
    golden: Golden
    now: Outputs


@pytest.fixture(scope="module", params=INPUT_NAMES)
def case(request: pytest.FixtureRequest) -> Case:
    name: str = request.param
    lines = INPUTS[name]()
    return Case(name, lines, read_golden(golden_path(name)), run(lines, MODEL_PATH))


def test_the_input_is_the_golden_one(case: Case) -> None:
    # Fails if the input generators changed (bench/workload.py, this module, or Python's
    # random): regenerate the golden files from the commit they came from, see the README.
    meta = case.golden.meta
    assert len(case.lines) == meta["events"]
    assert input_sha256(case.lines) == meta["input_sha256"], "the input changed, not the core"


def test_transitions_match_the_golden_file(case: Case) -> None:
    problem = first_difference("transition", case.golden.outputs.transitions, case.now.transitions)
    if problem is not None:
        pytest.fail(f"{case.name}: {problem}", pytrace=False)


def test_snapshots_match_the_golden_file(case: Case) -> None:
    problem = first_difference("snapshot", case.golden.outputs.snapshots, case.now.snapshots)
    if problem is not None:
        pytest.fail(f"{case.name}: {problem}", pytrace=False)


def test_the_adversarial_golden_file_exercises_every_transition() -> None:
    # What the golden file covers (a check of the frozen file, not of the code): every stage
    # change of both halves, for every reason a replay can give (model_change needs a new
    # model version). Field names and values as in the golden records.
    golden = read_golden(golden_path("adversarial"))
    seen = Counter(
        (t["reason"], t["from_stage"], t["to_stage"])
        for t in map(orjson.loads, golden.outputs.transitions)
    )
    assert set(seen) >= {
        ("first_seen", None, "nurture"),
        ("customer_event", "nurture", "retention"),
        ("customer_event", "purchase", "retention"),
        ("threshold", "nurture", "purchase"),
        ("threshold", "purchase", "nurture"),
        ("threshold", "exit", "retention"),
        ("threshold", "retention", "exit"),
        ("decay", "purchase", "nurture"),
        ("decay", "retention", "exit"),
    }, seen
