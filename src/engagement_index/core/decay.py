"""The decay math: decayed sums, component scores, the index, and the crossing-time solver.

Invariant (determinism): every place that evaluates the index at a later time does it with
:func:`rebase` followed by :func:`index_of`, with the same float operations in the same order.
The crossing solver's final answer is checked with exactly these two functions, so the index a
decay transition reports at ``tau`` is bit-for-bit the one the solver saw below the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from engagement_index.core.compiled import CompiledModel
from engagement_index.core.timestamps import MAX_MS

_LN2 = math.log(2.0)


def rebase(values: Sequence[float], delta_ms: int, model: CompiledModel) -> list[float]:
    """Decayed sums moved ``delta_ms`` (>= 0) later: ``v * 2^(-delta/h)`` per component."""
    if delta_ms == 0:
        return list(values)
    return [v * 2.0 ** (-delta_ms / h) for v, h in zip(values, model.half_life_ms, strict=True)]


def late_contribution(points: float, age_ms: int, half_life_ms: float) -> float:
    """What ``points`` that happened ``age_ms`` before the reference time weigh now."""
    factor: float = 2.0 ** (-age_ms / half_life_ms)
    return points * factor


def component_scores(values: Sequence[float], model: CompiledModel) -> dict[str, float]:
    """Score ``100 * D+ / (D+ + k)`` of every component, by name, in model order."""
    return {
        name: (100.0 * v / (v + k) if v > 0.0 else 0.0)
        for name, v, k in zip(model.names, values, model.saturation, strict=True)
    }


def index_of(values: Sequence[float], weights: Sequence[float], model: CompiledModel) -> float:
    """The engagement index ``sum_c w_c * s_c`` of a weighting."""
    total = 0.0
    for v, w, k in zip(values, weights, model.saturation, strict=True):
        if v > 0.0 and w != 0.0:
            total += w * (100.0 * v / (v + k))
    return total


def index_after(
    values: Sequence[float], delta_ms: int, weights: Sequence[float], model: CompiledModel
) -> float:
    """``index_of(rebase(values, delta_ms))``: the index ``delta_ms`` after the reference.

    Fused for speed, with the very same float operations (so bit-identical).
    """
    total = 0.0
    for v, w, k, h in zip(values, weights, model.saturation, model.half_life_ms, strict=True):
        if v > 0.0 and w != 0.0:
            x = v * 2.0 ** (-delta_ms / h) if delta_ms else v
            if x > 0.0:
                total += w * (100.0 * x / (x + k))
    return total


def _approx(terms: list[tuple[float, float, float, float]], x: float) -> tuple[float, float]:
    """Index and its derivative at ``x`` ms (continuous; only guides the search)."""
    f = 0.0
    df = 0.0
    for w, v, k, lam in terms:
        a = v * math.exp(-lam * x)
        d = a + k
        f += w * 100.0 * a / d
        df -= w * 100.0 * lam * k * a / (d * d)
    return f, df


def crossing_delay_ms(
    values: Sequence[float],
    weights: Sequence[float],
    model: CompiledModel,
    threshold: float,
    max_delay_ms: int,
) -> int | None:
    """Smallest integer ``d`` in ``[1, max_delay_ms]`` with ``index_after(d) < threshold``.

    Returns None when the index stays at or above ``threshold`` up to ``max_delay_ms`` (or the
    threshold is not positive), and 0 if it is already below. A safeguarded Newton iteration
    on the continuous index finds the neighbourhood; an integer bracket on the exact
    :func:`index_after` fixes the answer to the millisecond.
    """
    if index_after(values, 0, weights, model) < threshold:
        return 0
    if threshold <= 0.0 or max_delay_ms < 1:
        return None
    terms = [
        (w, v, k, _LN2 / h)
        for v, w, k, h in zip(values, weights, model.saturation, model.half_life_ms, strict=True)
        if v > 0.0 and w != 0.0
    ]
    if not terms:  # pragma: no cover - the index would be 0 < threshold, handled above
        return 0
    # Continuous phase: Newton with a bracket [lo, hi] (f(lo) >= T > f(hi)).
    lo, hi = 0.0, math.inf
    x = 0.0
    step_hint = min(model.half_life_ms)
    for _ in range(200):
        f, df = _approx(terms, x)
        if f >= threshold:
            lo = max(lo, x)
        else:
            hi = min(hi, x)
        if hi - lo < 0.5:
            break
        r = x - (f - threshold) / df if df < 0.0 else math.inf
        if not lo < r < hi:
            r = (lo + hi) / 2.0 if hi != math.inf else max(2.0 * lo, lo + step_hint)
        if abs(r - x) < 0.25:
            x = r
            break
        x = r
        if x > max_delay_ms * 4.0 + 1.0 and hi == math.inf:
            break
    guess = min(max(math.ceil(x), 1), max_delay_ms)
    return _integer_search(values, weights, model, threshold, guess, max_delay_ms)


def _integer_search(
    values: Sequence[float],
    weights: Sequence[float],
    model: CompiledModel,
    threshold: float,
    guess: int,
    max_delay_ms: int,
) -> int | None:
    """Exact integer bracket around ``guess`` on :func:`index_after`, then bisection."""

    def below(d: int) -> bool:
        return index_after(values, d, weights, model) < threshold

    return _bracket(below, guess, max_delay_ms)


def _bracket(below: Callable[[int], bool], guess: int, max_delay_ms: int) -> int | None:
    """Smallest ``d`` in ``[1, max_delay_ms]`` with ``below(d)`` (monotone), searched from
    ``guess``; None if there is none (``below(0)`` is known to be False)."""
    if below(guess):
        hi = guess
        step = 1
        lo = guess - step
        while lo > 0 and below(lo):
            hi = lo
            step *= 2
            lo = max(hi - step, 0)
        # lo == 0 (known not below) or below(lo) is False
    else:
        lo = guess
        step = 1
        hi = guess + step
        while True:
            if hi >= max_delay_ms:
                hi = max_delay_ms
                if not below(hi):
                    return None
                break
            if below(hi):
                break
            lo = hi
            step *= 2
            hi = lo + step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if below(mid):
            hi = mid
        else:
            lo = mid
    return hi


def max_delay_for(clock_ms: int) -> int:
    """The largest delay that keeps ``clock_ms + delay`` representable."""
    return MAX_MS - clock_ms


def trend_ratio(sums: Sequence[float], delta_ms: int, trend: tuple[float, float]) -> float:
    """The trend ratio ``(F * h_slow / h_fast) / S``, ``delta_ms`` after the sums' reference.

    ``sums`` = ``(F, S)``; 1 when ``S`` is 0 (no positive points), 0 once ``S`` underflows.
    Rebased exactly as :func:`rebase` does, so the ratio at a time-driven change is the one
    the solver saw.
    """
    fast, slow = trend
    f, s = sums
    if s == 0.0:
        return 1.0
    if delta_ms:
        f = f * 2.0 ** (-delta_ms / fast)
        s = s * 2.0 ** (-delta_ms / slow)
        if s == 0.0:
            return 0.0
    return f * (slow / fast) / s


def trend_crossing_ms(
    sums: Sequence[float], trend: tuple[float, float], level: float, max_delay_ms: int
) -> int | None:
    """Smallest integer ``d`` in ``[1, max_delay_ms]`` with ``trend_ratio(d) < level``.

    0 if it is below already, None if it stays at or above ``level``. The ratio falls as
    ``rho0 * 2^(-d (1/h_fast - 1/h_slow))`` (closed form); an integer bracket on the exact
    :func:`trend_ratio` fixes the answer to the millisecond.
    """
    rho = trend_ratio(sums, 0, trend)
    if rho < level:
        return 0
    if sums[1] == 0.0 or level <= 0.0 or max_delay_ms < 1:
        return None  # a ratio of 1 that never moves, or a level it cannot fall below
    fast, slow = trend
    rate = 1.0 / fast - 1.0 / slow
    x = math.log2(rho / level) / rate
    guess = min(max(math.ceil(x), 1), max_delay_ms)

    def below(d: int) -> bool:
        return trend_ratio(sums, d, trend) < level

    return _bracket(below, guess, max_delay_ms)
