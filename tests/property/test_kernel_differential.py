"""The compiled kernel against the Python core: identical bytes, on every shipped model.

The Python core (``engagement_index.core``) is the specification; the kernel
(``engagement_index._kernel``) must give exactly its outputs. Each test runs one stream of
operations both ways and compares, operation by operation, the encoded state of the contact
(``encode_state``), every transition and every snapshot as JSON bytes. Floats are compared
through their bytes, so one ulp of difference anywhere (a decayed sum, an index, a crossing
that moves by 1 ms) fails.

Streams: hypothesis (random types, gaps from a millisecond to months, late events, events at
a contact's due time and 1 ms either side, wake-ups, snapshots, states re-loaded from their
bytes), and the benchmark workload (``bench.workload``) on every model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from bench import workload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engagement_index import _kernel
from engagement_index.core.compiled import CompiledModel
from engagement_index.core.events import EventFields, parse_event_fields
from engagement_index.core.lifecycle import advance, evaluate, step
from engagement_index.core.model import load_model
from engagement_index.core.records import ContactSnapshot, Transition
from engagement_index.core.state import ContactState, encode_state
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.kernel import Contacts, model_blob
from engagement_index.replay import replay

REPO = Path(__file__).resolve().parents[2]
MODEL_FILES = sorted((REPO / "config" / "models").glob("*.yaml"))
MODELS = {path.stem: load_model(path).compiled for path in MODEL_FILES}
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00.000Z
TENANTS = ("north", "south")
MS_PER_DAY = 86_400_000

Op = tuple[Any, ...]
Key = tuple[str, str]


def test_every_shipped_model_is_covered() -> None:
    assert len(MODELS) >= 5
    assert {"default", "journey", "b2b-qualification"} <= set(MODELS)


# ------------------------------------------------------------------ the two implementations


def _transitions(items: list[Transition]) -> list[bytes]:
    return [t.to_json_bytes() for t in items]


class PythonRun:
    """The Python core, as the replay and the worker use it."""

    def __init__(self, cm: CompiledModel) -> None:
        self.cm = cm
        self.states: dict[Key, ContactState] = {}

    def event(self, fields: EventFields) -> list[bytes]:
        key = (fields.tenant, fields.contact_id)
        state, transitions = step(self.states.get(key), fields, self.cm)
        self.states[key] = state
        return _transitions(transitions)

    def advance(self, key: Key, until: int) -> list[bytes]:
        state, transitions = advance(self.states[key], until, self.cm)
        self.states[key] = state
        return _transitions(transitions)

    def snapshot(self, key: Key, at: int) -> bytes:
        return evaluate(self.states[key], at, self.cm).to_json_bytes()

    def encoded(self, key: Key) -> bytes:
        return encode_state(self.states[key])


class KernelRun:
    """The kernel's store, called in batches of one operation (the state stays in Rust)."""

    def __init__(self, cm: CompiledModel) -> None:
        self.store = _kernel.Kernel(model_blob(cm)).contacts()

    @staticmethod
    def _out(raw: list[dict[str, Any]] | str | None) -> list[bytes]:
        assert not isinstance(raw, str), raw
        return [Transition.trusted(**values).to_json_bytes() for values in raw or []]

    def event(self, fields: EventFields) -> list[bytes]:
        return self._out(self.store.step([fields])[0])

    def advance(self, key: Key, until: int) -> list[bytes]:
        return self._out(self.store.advance([(key[0], key[1], until)])[0])

    def snapshot(self, key: Key, at: int) -> bytes:
        return ContactSnapshot.trusted(**self.store.snapshot(key[0], key[1], at)).to_json_bytes()

    def encoded(self, key: Key) -> bytes:
        return self.store.encode(key[0], key[1])

    def reload(self, key: Key) -> None:
        data = self.encoded(key)
        assert self.store.remove(key[0], key[1])
        assert self.store.load(key[0], key[1], data)


def _run(cm: CompiledModel, ops: list[Op]) -> None:
    """Apply ``ops`` both ways; every output must be the same bytes."""
    py, kernel = PythonRun(cm), KernelRun(cm)
    for n, op in enumerate(ops):
        kind = op[0]
        if kind == "event":
            expected, got = py.event(op[1]), kernel.event(op[1])
            key: Key = (op[1].tenant, op[1].contact_id)
        else:
            key = op[1]
            if key not in py.states:
                continue
            if kind == "advance":
                expected, got = py.advance(key, op[2]), kernel.advance(key, op[2])
            elif kind == "snapshot":
                expected, got = [py.snapshot(key, op[2])], [kernel.snapshot(key, op[2])]
            else:
                kernel.reload(key)
                expected = got = []
        assert got == expected, f"operation {n} {op!r}"
        assert kernel.encoded(key) == py.encoded(key), f"state after operation {n} {op!r}"


# ------------------------------------------------------------------------- random streams

GAPS = st.one_of(
    st.integers(0, 1_000),
    st.integers(0, 6 * 3_600_000),
    st.integers(0, 120 * MS_PER_DAY),
)


@st.composite
def streams(draw: st.DrawFn, cm: CompiledModel) -> list[Op]:
    """Operations on up to three contacts: events (some late), bursts of one type (past the
    caps of capped rules), wake-ups, snapshots, reloads, and events placed at a contact's due
    time (solved by the Python core) or 1 ms off it."""
    types = sorted(cm.rules)
    keys = [(TENANTS[i % 2], f"c{i}") for i in range(draw(st.integers(1, 3)))]
    now = START_MS
    ops: list[Op] = []
    py = PythonRun(cm)
    for n in range(draw(st.integers(1, 50))):
        key = draw(st.sampled_from(keys))
        kinds = ("event",) * 6 + ("burst", "due", "advance", "snapshot", "reload")
        kind = draw(st.sampled_from(kinds))
        state = py.states.get(key)
        if kind == "due" and state is not None and state.due_ms is not None:
            ts = state.due_ms + draw(st.sampled_from((-1, 0, 1)))
            kind = "event"
        elif draw(st.integers(0, 9)) == 0:
            ts = now - draw(st.integers(0, 30 * MS_PER_DAY))  # late
        else:
            ts = now + draw(GAPS)
        if kind == "burst":
            event_type = draw(st.sampled_from(types))
            for b in range(draw(st.integers(2, 25))):
                ts = now + draw(st.integers(0, 60_000))
                fields = EventFields(f"e{n}.{b}", key[0], key[1], event_type, ts)
                ops.append(("event", fields))
                py.event(fields)
                now = max(now, ts)
        elif kind in ("event", "due"):
            event_type = draw(st.sampled_from(types))
            fields = EventFields(f"e{n}", key[0], key[1], event_type, ts)
            ops.append(("event", fields))
            py.event(fields)
            now = max(now, ts)
        elif kind == "advance":
            until = now + draw(GAPS)
            ops.append(("advance", key, until))
            if state is not None:
                py.advance(key, until)
                now = max(now, until)
        elif kind == "snapshot":
            ops.append(("snapshot", key, now + draw(GAPS)))
        else:
            ops.append(("reload", key))
    return ops


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_streams_give_identical_bytes(name: str, data: st.DataObject) -> None:
    cm = MODELS[name]
    _run(cm, data.draw(streams(cm)))


# ----------------------------------------------------------------------- the bench workload


def _bench_fields(cm: CompiledModel, events: int, contacts: int) -> list[EventFields]:
    """The benchmark workload, its types mapped onto ``cm``'s where the model lacks them."""
    spec = workload.WorkloadSpec(
        events=events, contacts=contacts, seed=40, end_ms=1_790_000_000_000
    )
    types = sorted(cm.rules)
    out = []
    for record in workload.generate(spec):
        fields = parse_event_fields(orjson.dumps(record))
        if fields.type not in cm.rules:
            fields = fields._replace(type=types[sum(fields.type.encode()) % len(types)])
        out.append(fields)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_bench_workload_gives_identical_bytes_in_one_batch(name: str) -> None:
    """The workload in one kernel call, then every contact's wake-ups up to 120 days later."""
    cm = MODELS[name]
    events = _bench_fields(cm, 6_000, 400)
    py = PythonRun(cm)
    expected = [py.event(fields) for fields in events]
    store = _kernel.Kernel(model_blob(cm)).contacts()
    got = [KernelRun._out(raw) for raw in store.step(events)]
    assert got == expected
    horizon = max(f.timestamp_ms for f in events) + 120 * MS_PER_DAY
    keys = sorted(py.states)
    assert sorted(store.list_keys()) == keys
    for key in keys:
        assert store.encode(*key) == py.encoded(key)
    decays = [py.advance(key, horizon) for key in keys]
    assert [KernelRun._out(r) for r in store.advance([(*k, horizon) for k in keys])] == decays
    assert sum(map(len, decays)) > 0  # time-driven changes were compared too
    for key in keys:
        assert store.encode(*key) == py.encoded(key)
        snapshot = ContactSnapshot.trusted(**store.snapshot(*key, horizon + MS_PER_DAY))
        assert snapshot.to_json_bytes() == py.snapshot(key, horizon + MS_PER_DAY)


# ------------------------------------------------------------------- the Python fallback


def test_a_state_of_another_model_is_scored_by_the_python_core() -> None:
    """The kernel does not take a state of another layout; ``Contacts`` migrates it in Python
    and gives the core's outcome (``model_change`` transitions first)."""
    old, new = MODELS["journey"], MODELS["default"]
    key = ("north", "c1")
    events = _bench_fields(old, 300, 1)
    events = [f._replace(tenant=key[0], contact_id=key[1]) for f in events[:50]]
    py_old = PythonRun(old)
    for fields in events[:40]:
        py_old.event(fields)
    data = py_old.encoded(key)
    assert not _kernel.Kernel(model_blob(new)).contacts().load(*key, data)
    later = [f._replace(type=sorted(new.rules)[0]) for f in events[40:]]
    contacts = Contacts(new)
    contacts.load(key, data)
    got = contacts.step(later)
    state: ContactState | None = py_old.states[key]
    expected = []
    for fields in later:
        state, transitions = step(state, fields, new)
        expected.append(_transitions(transitions))
    assert [_transitions(t) for t in got if not isinstance(t, Exception)] == expected
    assert any(b'"model_change"' in t for t in expected[0])
    assert state is not None
    assert contacts.encoded(key) == encode_state(state)


# ------------------------------------------------------------------------------ the replay


def _line(fields: EventFields) -> bytes:
    return orjson.dumps(
        {
            "event_id": fields.event_id,
            "tenant": fields.tenant,
            "contact_id": fields.contact_id,
            "type": fields.type,
            "timestamp": ms_to_rfc3339(fields.timestamp_ms),
        }
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_replay_with_the_kernel_gives_the_python_core_bytes(name: str) -> None:
    """``replay`` of the workload (with repeated ids, late and unknown events, a bad line):
    transitions, final snapshots and final states, kernel against Python core."""
    cm = MODELS[name]
    events = _bench_fields(cm, 5_000, 300)
    lines = [_line(f) for f in events]
    lines += [lines[10], lines[4_000], b"{not json", _line(events[5]._replace(type="x.nope"))]
    lines.append(_line(events[0]._replace(timestamp_ms=events[-1].timestamp_ms + 1)))
    model = load_model(REPO / "config" / "models" / f"{name}.yaml")
    fast, slow = replay(lines, model, kernel=True), replay(lines, model, kernel=False)
    assert [t.to_json_bytes() for t in fast.transitions] == [
        t.to_json_bytes() for t in slow.transitions
    ]
    assert [s.to_json_bytes() for s in fast.snapshots] == [
        s.to_json_bytes() for s in slow.snapshots
    ]
    assert list(fast.states) == list(slow.states)
    assert [encode_state(s) for s in fast.states.values()] == [
        encode_state(s) for s in slow.states.values()
    ]
    assert fast.rejects == slow.rejects
    assert len(fast.rejects) == 2
    assert len(fast.transitions) > len(fast.states)


CAPPED = [
    (name, event_type)
    for name, cm in sorted(MODELS.items())
    for event_type, rule in sorted(cm.rules.items())
    if rule.cap >= 0
]


@pytest.mark.parametrize(("name", "event_type"), CAPPED)
def test_capped_rules_past_their_caps_give_identical_bytes(name: str, event_type: str) -> None:
    """Past the cap in one window, into the next two, late into the previous one and too late
    for both kept windows (not counted), with other types between."""
    cm = MODELS[name]
    cap = cm.caps[cm.rules[event_type].cap]
    other = next(t for t in sorted(cm.rules) if t != event_type)
    key = ("north", "capped")
    ops: list[Op] = []
    times = [START_MS + i * cap.per_ms // (3 * cap.count) for i in range(3 * cap.count + 2)]
    times += [START_MS + cap.per_ms + i for i in range(cap.count + 3)]
    times += [START_MS + 2 * cap.per_ms + 5, START_MS + cap.per_ms - 7, START_MS - cap.per_ms]
    for n, ts in enumerate(times):
        ops.append(("event", EventFields(f"c{n}", *key, event_type, ts)))
        if n % 4 == 0:
            ops.append(("event", EventFields(f"o{n}", *key, other, ts)))
    ops.append(("advance", key, START_MS + 400 * MS_PER_DAY))
    ops.append(("snapshot", key, START_MS + 500 * MS_PER_DAY))
    assert len(CAPPED) >= 1
    _run(cm, ops)


def test_identity_records_move_the_replay_to_the_python_core_with_the_same_bytes() -> None:
    """An identify record halfway: the kernel's states go to the Python core, which merges
    and goes on; the outputs are those of a replay on the Python core throughout."""
    cm = MODELS["default"]
    events = _bench_fields(cm, 4_000, 200)
    lines = [_line(f) for f in events]
    first = events[100]
    second = next(
        f for f in events if f.tenant == first.tenant and f.contact_id != first.contact_id
    )
    link = {
        "kind": "identify",
        "event_id": "i-1",
        "tenant": first.tenant,
        "contact_id": first.contact_id,
        "anonymous_id": second.contact_id,
        "timestamp": ms_to_rfc3339(events[2_000].timestamp_ms),
    }
    lines.insert(2_000, orjson.dumps(link))
    model = load_model(REPO / "config" / "models" / "default.yaml")
    fast, slow = replay(lines, model, kernel=True), replay(lines, model, kernel=False)
    assert [t.to_json_bytes() for t in fast.transitions] == [
        t.to_json_bytes() for t in slow.transitions
    ]
    snapshots = [s.to_json_bytes() for s in fast.snapshots]
    assert snapshots == [s.to_json_bytes() for s in slow.snapshots]
    assert [encode_state(s) for s in fast.states.values()] == [
        encode_state(s) for s in slow.states.values()
    ]
    assert (second.tenant, second.contact_id) not in fast.states  # absorbed by the merge
    assert (first.tenant, first.contact_id) in fast.states
