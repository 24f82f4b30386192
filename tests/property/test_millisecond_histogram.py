"""``MillisecondHistogram`` against ``prometheus_client.Histogram``, observed one by one.

The worker's processing-latency histogram takes a batch's record timestamps at once; what a
scrape reads must be what the client library's own histogram gives for the same durations,
observed a value at a time as ``(now - t) / 1000`` seconds (0 if negative): the same bucket
counts (a duration equal to a bound is in that bound's bucket), count and sum.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engagement_index.metrics import LATENCY_BUCKETS, MillisecondHistogram

NAME = "engagement_processing_latency_seconds"
#: whole milliseconds on and beside every bound (2.5 ms: 1-4)
NEAR_BOUNDS_MS = [
    d for b in LATENCY_BUCKETS for d in range(math.floor(b * 1000) - 1, math.ceil(b * 1000) + 2)
]

# elapsed times on and beside every bound, negative ones (a record stamped ahead of the
# worker's clock), and anything up to a minute
elapsed = st.one_of(
    st.sampled_from(NEAR_BOUNDS_MS),
    st.integers(-5_000, 60_000),
)
batches = st.lists(
    st.tuples(st.integers(1_700_000_000_000, 1_900_000_000_000), st.lists(elapsed, max_size=60)),
    max_size=8,
)


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """``(sample name, le)`` -> value for the histogram's ``_bucket``, ``_count`` and ``_sum``."""
    text = generate_latest(registry).decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_count", "_sum")):
                found[(sample.name, sample.labels.get("le", ""))] = sample.value
    return found


@given(batches)
def test_the_exposition_equals_the_client_librarys_histogram(
    observed: list[tuple[int, list[int]]],
) -> None:
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = MillisecondHistogram(NAME, "latency", LATENCY_BUCKETS, ours_registry)
    theirs = Histogram(NAME, "latency", buckets=LATENCY_BUCKETS, registry=theirs_registry)
    for now, durations in observed:
        started = [now - d for d in durations]
        ours.observe_since(now, started)
        for t in started:
            theirs.observe(max(0.0, (now - t) / 1000))
    got, want = samples(ours_registry), samples(theirs_registry)
    assert got.keys() == want.keys()
    for name_le, value in want.items():
        if name_le[0].endswith("_sum"):
            assert abs(got[name_le] - value) <= 1e-9 * max(1.0, value), name_le
        else:
            assert got[name_le] == value, name_le
    assert want[(f"{NAME}_count", "")] == sum(len(d) for _, d in observed)
