"""Compare JSON records of the code under test (transitions, API answers) with the reference.

Works on plain dicts, as the stage-change topic, the query API or ``model_dump(mode="json")``
give them; returns a list of readable differences (empty when they agree). Tolerances are the
document's: floats to 1e-9 (absolute or relative), ``occurred_at`` to 1 ms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from tests.reference.engagement import RefSnapshot, RefTransition, parse_time
from tests.reference.lifecycles import LifecycleTransition

FLOAT_TOLERANCE = 1e-9
TAU_TOLERANCE_MS = 1


def close(a: float, b: float, tolerance: float = FLOAT_TOLERANCE) -> bool:
    """Equal to 1e-9, absolute or relative."""
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)


def _components(
    where: str, got: Mapping[str, float], want: Mapping[str, float], tolerance: float
) -> list[str]:
    if list(got) != list(want):
        return [f"{where}: components {list(got)} != {list(want)}"]
    return [
        f"{where}: component {name} {got[name]!r} != {want[name]!r}"
        for name in want
        if not close(got[name], want[name], tolerance)
    ]


def transition_mismatches(
    got: Sequence[Mapping[str, Any]],
    want: Sequence[RefTransition],
    *,
    tolerance: float = FLOAT_TOLERANCE,
) -> list[str]:
    """Differences between one contact's transitions (in order) and the reference's."""
    if len(got) != len(want):
        return [
            f"{len(got)} transitions != reference {len(want)}: "
            f"{[(g['reason'], g['to_stage'], g['occurred_at']) for g in got]} != "
            f"{[(w.reason, w.to_stage, w.occurred_at_ms) for w in want]}"
        ]
    out: list[str] = []
    for n, (g, w) in enumerate(zip(got, want, strict=True)):
        where = f"transition {n} ({w.reason} {w.from_stage}->{w.to_stage})"
        for name in (
            "tenant",
            "contact_id",
            "from_stage",
            "to_stage",
            "half",
            "reason",
            "cause_event_id",
            "model_version",
        ):
            if g[name] != getattr(w, name):
                out.append(f"{where}: {name} {g[name]!r} != {getattr(w, name)!r}")
        occurred = parse_time(g["occurred_at"])
        if abs(occurred - w.occurred_at_ms) > TAU_TOLERANCE_MS:
            out.append(f"{where}: occurred_at {occurred} != {w.occurred_at_ms} ms")
        for name in ("index", "previous_index"):
            if not close(g[name], getattr(w, name), tolerance):
                out.append(f"{where}: {name} {g[name]!r} != {getattr(w, name)!r}")
        out.extend(_components(where, g["components"], w.components, tolerance))
    return out


def lifecycle_transition_mismatches(
    got: Sequence[Mapping[str, Any]],
    want: Sequence[LifecycleTransition],
    *,
    tolerance: float = FLOAT_TOLERANCE,
) -> list[str]:
    """Differences between one contact's transitions (in order, every lifecycle) and those of
    the lifecycle reference (``tests.reference.lifecycles``)."""
    if len(got) != len(want):
        return [
            f"{len(got)} transitions != reference {len(want)}: "
            f"{[(g['lifecycle'], g['reason'], g['to_stage'], g['occurred_at']) for g in got]} != "
            f"{[(w.lifecycle, w.reason, w.to_stage, w.occurred_at_ms) for w in want]}"
        ]
    out: list[str] = []
    for n, (g, w) in enumerate(zip(got, want, strict=True)):
        where = f"transition {n} ({w.lifecycle}: {w.reason} {w.from_stage}->{w.to_stage})"
        for name in (
            "tenant",
            "contact_id",
            "lifecycle",
            "from_stage",
            "to_stage",
            "half",
            "reason",
            "rule_id",
            "cause_event_id",
            "model_version",
        ):
            if g[name] != getattr(w, name):
                out.append(f"{where}: {name} {g[name]!r} != {getattr(w, name)!r}")
        occurred = parse_time(g["occurred_at"])
        if abs(occurred - w.occurred_at_ms) > TAU_TOLERANCE_MS:
            out.append(f"{where}: occurred_at {occurred} != {w.occurred_at_ms} ms")
        for name in ("index", "previous_index"):
            if not close(g[name], getattr(w, name), tolerance):
                out.append(f"{where}: {name} {g[name]!r} != {getattr(w, name)!r}")
        out.extend(_components(where, g["components"], w.components, tolerance))
    return out


def snapshot_mismatches(
    got: Mapping[str, Any], want: RefSnapshot, *, tolerance: float = FLOAT_TOLERANCE
) -> list[str]:
    """Differences between an API answer (or a snapshot dict) and the reference's snapshot.

    ``want`` must be evaluated at the answer's ``evaluated_at``.
    """
    out: list[str] = []
    for name in (
        "tenant",
        "contact_id",
        "stage",
        "half",
        "customer",
        "events_counted",
        "active_days_7d",
        "active_days_30d",
        "active_days_90d",
        "model_version",
    ):
        if got[name] != getattr(want, name):
            out.append(f"{name} {got[name]!r} != {getattr(want, name)!r}")
    for name, ms in (
        ("first_seen_at", want.first_seen_ms),
        ("last_event_at", want.last_event_ms),
        ("evaluated_at", want.evaluated_at_ms),
    ):
        if parse_time(got[name]) != ms:
            out.append(f"{name} {got[name]} != {ms} ms")
    if not close(got["index"], want.index, tolerance):
        out.append(f"index {got['index']!r} != {want.index!r}")
    out.extend(_components("snapshot", got["components"], want.components, tolerance))
    return out
