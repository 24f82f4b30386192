"""The compiled scoring kernel (``engagement_index._kernel``, Rust) and its Python fallback.

The pure core (``engagement_index.core``) is the specification. The kernel repeats its
per-contact hot path for a compiled model: the state codec (version 3 bytes), ``step``,
``advance``, ``evaluate`` and the exact crossing solves, with the same float operations in the
same order, so that states, transitions and snapshots are identical to the byte
(``tests/property/test_kernel_differential.py`` checks it on every shipped model).

The kernel takes whole batches (many events of many contacts in one call). It handles states
of the model's own layout; a contact whose stored state it does not take (another model's
layout, a state of version 1 or 2, bytes the core rejects) is scored by the Python core, as
is everything when the extension is absent or ``ENGAGEMENT_INDEX_KERNEL=python`` is set.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from engagement_index.core.compiled import CompiledModel, Cond
from engagement_index.core.events import ContactKey, EventFields
from engagement_index.core.lifecycle import advance, evaluate, step
from engagement_index.core.records import ContactSnapshot, Transition
from engagement_index.core.state import ContactState, decode_state, encode_state, layout_bytes

try:
    from engagement_index import _kernel
except ImportError:  # pragma: no cover - a build without the extension
    _kernel = None  # type: ignore[assignment]

#: ``ENGAGEMENT_INDEX_KERNEL=python``: use the Python core even where the kernel is built.
KERNEL_ENV = "ENGAGEMENT_INDEX_KERNEL"
_kernels: dict[int, tuple[CompiledModel, Any]] = {}


def kernel_available() -> bool:
    """Whether the compiled kernel is built and not switched off by ``KERNEL_ENV``."""
    return _kernel is not None and os.environ.get(KERNEL_ENV, "").lower() != "python"


def _cond(cond: Cond, types: dict[str, int]) -> dict[str, Any]:
    return {
        "kind": cond.kind,
        "source": cond.source,
        "at_least": cond.at_least,
        "level": cond.level,
        "types": sorted(types[t] for t in cond.types),
        "marker": cond.marker,
        "bit": cond.bit,
        "wanted": cond.wanted,
        "ms": cond.ms,
        "children": [_cond(c, types) for c in cond.children],
    }


def model_blob(cm: CompiledModel) -> str:
    """The JSON form of ``cm`` that the kernel reads once (floats as their shortest repr)."""
    types = {t: i for i, t in enumerate(cm.rules)}
    blob = {
        "version": cm.version,
        "layout": list(layout_bytes(cm.layout)),
        "names": list(cm.names),
        "half_life_ms": list(cm.half_life_ms),
        "saturation": list(cm.saturation),
        "rule_types": list(cm.rules),
        "rules": [
            {
                "component": r.component,
                "points": r.points,
                "sets": r.sets,
                "clears": r.clears,
                "cap": r.cap,
            }
            for r in cm.rules.values()
        ],
        "weights": [list(w) for w in cm.weights],
        "index_names": list(cm.index_names),
        "markers": list(cm.markers),
        "caps": [{"count": c.count, "per_ms": c.per_ms, "component": c.component} for c in cm.caps],
        "trend": list(cm.trend) if cm.trend is not None else None,
        "lifecycles": [
            {
                "name": lc.name,
                "position": lc.position,
                "id_prefix": lc.id_prefix,
                "initial": [
                    {"rule_id": e.rule_id, "stage": e.stage, "cond": _cond(e.cond, types)}
                    for e in lc.initial
                ],
                "stages": [
                    {
                        "name": s.name,
                        "stage_id": s.stage_id,
                        "index": s.index,
                        "edges": [
                            {
                                "rule_id": e.rule_id,
                                "to": e.to,
                                "cond": _cond(e.cond, types),
                                "event_reason": e.event_reason,
                                "time_reason": e.time_reason,
                            }
                            for e in s.edges
                        ],
                    }
                    for s in lc.stages
                ],
            }
            for lc in cm.lifecycles
        ],
    }
    return json.dumps(blob, allow_nan=False, separators=(",", ":"))


def kernel_for(cm: CompiledModel) -> _kernel.Kernel | None:
    """The kernel of ``cm`` (made once per compiled model), or None where it is not used."""
    if not kernel_available():
        return None
    held = _kernels.get(id(cm))
    if held is None or held[0] is not cm:
        held = _kernels[id(cm)] = (cm, _kernel.Kernel(model_blob(cm)))
    return held[1]


def batch_kernel() -> type[_kernel.KernelBatch] | None:
    """The kernel's whole-batch scorer (``rust/src/batch.rs``), or None where the kernel is
    not used."""
    return _kernel.KernelBatch if kernel_available() else None


Key = tuple[str, str]
#: per event: its transitions, or the exception the core raised for it
Outcome = list[Transition] | Exception


def _transitions(raw: list[dict[str, Any]] | str | None) -> Outcome:
    if raw is None:
        return []
    if isinstance(raw, str):
        return RuntimeError(raw)
    return [Transition.trusted(**values) for values in raw]


class Contacts:
    """Contact states of one model, scored by the kernel in batches (or the Python core).

    States live in the kernel's store; a contact whose stored bytes the kernel does not take
    is kept and scored here by the Python core, so the outcomes are the core's either way.
    ``kernel=False`` uses the Python core for every contact (the specification).
    """

    def __init__(self, cm: CompiledModel, *, kernel: bool = True) -> None:
        self.cm = cm
        k = kernel_for(cm) if kernel else None
        self._store: _kernel.Contacts | None = k.contacts() if k is not None else None
        self._python: dict[Key, ContactState] = {}

    def _k(self) -> _kernel.Contacts:
        assert self._store is not None
        return self._store

    @property
    def store(self) -> _kernel.Contacts | None:
        """The kernel's store (None: the Python core scores); the replay hands it whole chunks
        of lines (``replay_chunk``), on a store that holds no state of the Python core."""
        return self._store if not self._python else None

    @property
    def uses_kernel(self) -> bool:
        """Whether the kernel scores the contacts it takes."""
        return self._store is not None

    def __len__(self) -> int:
        return len(self._python) + (len(self._store) if self._store is not None else 0)

    def __contains__(self, key: Key) -> bool:
        return key in self._python or (self._store is not None and key in self._store)

    def load(self, key: Key, data: bytes) -> None:
        """Take a contact's stored state (``encode_state`` bytes); ``StateDecodeError`` if the
        bytes are not a state."""
        if self._store is not None and self._store.load(key[0], key[1], data):
            return
        self._python[key] = decode_state(data, ContactKey(*key))

    def step(self, events: Sequence[EventFields]) -> list[Outcome]:
        """Fold ``events`` (of types the model scores) in order; per event its outcome."""
        store = self._store
        python = self._python
        if store is None or python:
            out: list[Outcome] = []
            batch: list[tuple[int, EventFields]] = []
            for i, event in enumerate(events):
                key = (event.tenant, event.contact_id)
                if store is None or key in python:
                    out.append(self._python_step(key, event))
                else:
                    out.append([])
                    batch.append((i, event))
            if batch:
                results = self._k().step([e for _, e in batch])
                for (i, _), raw in zip(batch, results, strict=True):
                    out[i] = _transitions(raw)
            return out
        return [_transitions(raw) for raw in store.step(events)]

    def _python_step(self, key: Key, event: EventFields) -> Outcome:
        try:
            state, transitions = step(self._python.get(key), event, self.cm)
        except Exception as exc:  # the caller decides, as for the kernel's errors
            return exc
        self._python[key] = state
        return transitions

    def advance(self, key: Key, until_ms: int) -> Outcome:
        """The time-driven changes of one contact due up to ``until_ms``."""
        if key in self._python:
            try:
                state, transitions = advance(self._python[key], until_ms, self.cm)
            except Exception as exc:
                return exc
            self._python[key] = state
            return transitions
        return _transitions(self._k().advance([(key[0], key[1], until_ms)])[0])

    def finish(self, horizon: int) -> list[Transition]:
        """Every time-driven change due by ``horizon``, ordered by time then contact."""
        if self._store is not None and not self._python:
            return [Transition.trusted(**v) for v in self._store.finish(horizon)]
        queue = [
            (due, key)
            for key in self.keys()
            if (due := self.due(key)) is not None and due <= horizon
        ]
        heapq.heapify(queue)
        out: list[Transition] = []
        while queue:
            due, key = heapq.heappop(queue)
            outcome = self.advance(key, due)
            if isinstance(outcome, Exception):
                raise outcome
            out.extend(outcome)
            new_due = self.due(key)
            if new_due is not None and new_due <= horizon:
                heapq.heappush(queue, (new_due, key))
        return out

    def finish_json(self, horizon: int) -> bytes:
        """:meth:`finish` as JSON lines (``Transition.to_json_bytes()`` each, the kernel's)."""
        if self._store is not None and not self._python:
            result: bytes = self._store.finish_json(horizon)
            return result
        return b"".join(t.to_json_bytes() + b"\n" for t in self.finish(horizon))

    def due(self, key: Key) -> int | None:
        """The contact's due time (None: no time-driven change is due)."""
        state = self._python.get(key)
        if state is not None:
            return state.due_ms
        result: int | None = self._k().due(key[0], key[1])
        return result

    def snapshot(self, key: Key, at_ms: int) -> ContactSnapshot:
        """``evaluate`` of the contact's state at ``at_ms``."""
        state = self._python.get(key)
        if state is not None:
            return evaluate(state, at_ms, self.cm)
        return ContactSnapshot.trusted(**self._k().snapshot(key[0], key[1], at_ms))

    def clock(self, key: Key) -> int:
        """The contact's clock."""
        state = self._python.get(key)
        if state is not None:
            return state.clock_ms
        result: int = self._k().clock(key[0], key[1])
        return result

    def encoded(self, key: Key) -> bytes:
        """The contact's state as ``encode_state`` bytes."""
        state = self._python.get(key)
        if state is not None:
            return encode_state(state)
        result: bytes = self._k().encode(key[0], key[1])
        return result

    def state(self, key: Key) -> ContactState:
        """The contact's state, as the core's ``ContactState``."""
        state = self._python.get(key)
        if state is not None:
            return state
        return decode_state(self.encoded(key), ContactKey(*key))

    def keys(self) -> Iterator[Key]:
        """Every contact, in no particular order."""
        yield from self._python
        if self._store is not None:
            yield from self._store.list_keys()
