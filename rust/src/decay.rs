//! The decay math of `engagement_index.core.decay`, with the same float operations in the same
//! order (so bit-identical results, crossing times included).

use crate::model::Model;
use std::hint::black_box;

/// ``2.0 ** y`` as CPython computes it: the C library's ``pow(2.0, y)``. The base goes through
/// ``black_box`` so that the compiler cannot rewrite ``pow(2, y)`` into ``exp2(y)``, which the
/// C library rounds differently for some ``y``.
#[inline]
pub fn pow2(y: f64) -> f64 {
    black_box(2.0f64).powf(y)
}

#[inline]
fn ln2() -> f64 {
    black_box(2.0f64).ln()
}

/// ``2.0 ** (-delta / h)`` with ``delta`` an int (converted to a float before the division).
#[inline]
pub fn factor(delta: i64, h: f64) -> f64 {
    pow2(-(delta as f64) / h)
}

#[inline]
pub fn late_contribution(points: f64, age: i64, h: f64) -> f64 {
    points * factor(age, h)
}

#[inline]
pub fn score(v: f64, k: f64) -> f64 {
    if v > 0.0 {
        100.0 * v / (v + k)
    } else {
        0.0
    }
}

pub fn index_of(values: &[f64], weights: &[f64], model: &Model) -> f64 {
    let mut total = 0.0;
    for ((&v, &w), &k) in values.iter().zip(weights).zip(&model.saturation) {
        if v > 0.0 && w != 0.0 {
            total += w * (100.0 * v / (v + k));
        }
    }
    total
}

pub fn index_after(values: &[f64], delta: i64, weights: &[f64], model: &Model) -> f64 {
    let mut total = 0.0;
    for (((&v, &w), &k), &h) in values
        .iter()
        .zip(weights)
        .zip(&model.saturation)
        .zip(&model.half_life_ms)
    {
        if v > 0.0 && w != 0.0 {
            let x = if delta != 0 { v * factor(delta, h) } else { v };
            if x > 0.0 {
                total += w * (100.0 * x / (x + k));
            }
        }
    }
    total
}

fn approx(terms: &[(f64, f64, f64, f64)], x: f64) -> (f64, f64) {
    let mut f = 0.0;
    let mut df = 0.0;
    for &(w, v, k, lam) in terms {
        let a = v * (-lam * x).exp();
        let d = a + k;
        f += w * 100.0 * a / d;
        df -= w * 100.0 * lam * k * a / (d * d);
    }
    (f, df)
}

/// Python's ``min(max(math.ceil(x), 1), max_delay)``.
fn clamp_guess(x: f64, max_delay: i64) -> i64 {
    let c = x.ceil();
    let g = if c < 1.0 { 1.0 } else { c };
    if g >= max_delay as f64 {
        max_delay
    } else {
        g as i64
    }
}

pub fn crossing_delay_ms(
    values: &[f64],
    weights: &[f64],
    model: &Model,
    threshold: f64,
    max_delay: i64,
) -> Option<i64> {
    if index_after(values, 0, weights, model) < threshold {
        return Some(0);
    }
    if threshold <= 0.0 || max_delay < 1 {
        return None;
    }
    let lam2 = ln2();
    let terms: Vec<(f64, f64, f64, f64)> = values
        .iter()
        .zip(weights)
        .zip(&model.saturation)
        .zip(&model.half_life_ms)
        .filter(|(((&v, &w), _), _)| v > 0.0 && w != 0.0)
        .map(|(((&v, &w), &k), &h)| (w, v, k, lam2 / h))
        .collect();
    if terms.is_empty() {
        return Some(0);
    }
    let (mut lo, mut hi) = (0.0f64, f64::INFINITY);
    let mut x = 0.0f64;
    let step_hint = model.min_half_life;
    for _ in 0..200 {
        let (f, df) = approx(&terms, x);
        if f >= threshold {
            lo = py_max(lo, x);
        } else {
            hi = py_min(hi, x);
        }
        if hi - lo < 0.5 {
            break;
        }
        let mut r = if df < 0.0 {
            x - (f - threshold) / df
        } else {
            f64::INFINITY
        };
        if !(lo < r && r < hi) {
            r = if hi != f64::INFINITY {
                (lo + hi) / 2.0
            } else {
                py_max(2.0 * lo, lo + step_hint)
            };
        }
        if (r - x).abs() < 0.25 {
            x = r;
            break;
        }
        x = r;
        if x > max_delay as f64 * 4.0 + 1.0 && hi == f64::INFINITY {
            break;
        }
    }
    let guess = clamp_guess(x, max_delay);
    bracket(
        |d| index_after(values, d, weights, model) < threshold,
        guess,
        max_delay,
    )
}

/// Python's ``max(a, b)``: ``a`` unless ``b > a``.
#[inline]
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// Python's ``min(a, b)``: ``a`` unless ``b < a``.
#[inline]
fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

pub fn bracket<F: Fn(i64) -> bool>(below: F, guess: i64, max_delay: i64) -> Option<i64> {
    let mut lo;
    let mut hi;
    if below(guess) {
        hi = guess;
        let mut step = 1i64;
        lo = guess - step;
        while lo > 0 && below(lo) {
            hi = lo;
            step *= 2;
            lo = (hi - step).max(0);
        }
    } else {
        lo = guess;
        let mut step = 1i64;
        hi = guess + step;
        loop {
            if hi >= max_delay {
                hi = max_delay;
                if !below(hi) {
                    return None;
                }
                break;
            }
            if below(hi) {
                break;
            }
            lo = hi;
            step *= 2;
            hi = lo + step;
        }
    }
    while hi - lo > 1 {
        let mid = (lo + hi).div_euclid(2);
        if below(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

pub fn max_delay_for(clock: i64) -> i64 {
    crate::state::MAX_MS - clock
}

pub fn trend_ratio(sums: &[f64], delta: i64, trend: (f64, f64)) -> f64 {
    let (fast, slow) = trend;
    let (mut f, mut s) = (sums[0], sums[1]);
    if s == 0.0 {
        return 1.0;
    }
    if delta != 0 {
        f *= factor(delta, fast);
        s *= factor(delta, slow);
        if s == 0.0 {
            return 0.0;
        }
    }
    f * (slow / fast) / s
}

pub fn trend_crossing_ms(
    sums: &[f64],
    trend: (f64, f64),
    level: f64,
    max_delay: i64,
) -> Option<i64> {
    let rho = trend_ratio(sums, 0, trend);
    if rho < level {
        return Some(0);
    }
    if sums[1] == 0.0 || level <= 0.0 || max_delay < 1 {
        return None;
    }
    let (fast, slow) = trend;
    let rate = 1.0 / fast - 1.0 / slow;
    let x = (rho / level).log2() / rate;
    let guess = clamp_guess(x, max_delay);
    bracket(|d| trend_ratio(sums, d, trend) < level, guess, max_delay)
}
