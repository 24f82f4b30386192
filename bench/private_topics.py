"""A bench run's private topic names: a prefix whose scoring sources can share one worker.

Stored values name a source topic by a 16-bit hash of its name, and a worker refuses a
topology in which two of them collide (``stream/stored.py``); a prefix for which they do is
replaced by another, as the test harness does (``tests/kafka_harness.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engagement_index.stream.stored import source_id
from engagement_index.topology import load_topology


def usable_prefix(write: Callable[[str], Path], base: str) -> tuple[str, Path]:
    """``base``, or ``base`` + ``x1``, ``x2``...: the first prefix whose topology (written by
    ``write``) has no two scoring sources with the same 16-bit id; and that topology's file."""
    for attempt in range(100):
        prefix = base if attempt == 0 else f"{base}x{attempt}"
        path = write(prefix)
        sources = load_topology(path).scoring_sources
        if len({source_id(name) for name in sources}) == len(sources):
            return prefix, path
    raise RuntimeError(f"no usable topic prefix from {base!r}")
