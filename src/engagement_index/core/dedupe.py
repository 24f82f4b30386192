"""Duplicate event ids, recognised by time: the per-contact window of ids seen recently.

Rule. Each record has an *arrival* time. A contact keeps the ids of the records applied to it
whose arrival lies within ``window_ms`` of its *newest arrival* (the latest arrival among its
applied records and the record at hand); an applied record that arrived even earlier than
that counts as arriving at the window's start. A record whose id is kept is a duplicate and is
ignored, however many other events came in between; a copy that comes later than that is
applied again and becomes the new reference. With arrivals in order this is simply "ignored
when it arrives at most ``window_ms`` after the applied copy". A contact keeps at most
``MAX_IDS`` ids (the oldest go first), so one very busy contact cannot grow its table value
without bound.

*Arrival* is the time the record reached the system: the worker uses the Kafka record's
timestamp (kept when a record is forwarded); the replay takes the arrival it is given, by
default the largest event timestamp it has read so far (the file's clock: a late event
arrives "now", not at its own old timestamp). The default window is 72 h, the longest time
webhook providers retry a delivery.

:class:`SeenIds` holds, for one contact, a 7-byte blake2b digest of every id applied within
the window and its arrival time, in arrival order. It is kept next to the contact's state (not
in it: its size grows with the contact's events within the window), in the same table value,
so it is written, changelogged and restored with the state.

False positives: with ``n`` digests of 56 bits in a contact's window, a new id is taken for a
duplicate with probability ``n / 2^56`` (1.4e-15 for 100 ids).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from engagement_index.core.state import event_id_digest
from engagement_index.errors import StateDecodeError

#: Default dedupe window: 72 hours.
DEFAULT_WINDOW_MS = 72 * 3_600_000
#: Most ids one contact keeps (61 KB in its table value); past that the oldest are dropped.
MAX_IDS = 4096
DIGEST_BYTES = 7
_COUNT = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class SeenIds:
    """Digests (``DIGEST_BYTES`` each, concatenated) and their arrival times, in arrival order."""

    digests: bytes = b""
    arrivals: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.arrivals)


EMPTY = SeenIds()


def _find(digests: bytes, digest: bytes) -> int:
    """Index of ``digest`` in the concatenated ``digests`` (aligned), or -1."""
    start = digests.find(digest)
    while start >= 0:
        if start % DIGEST_BYTES == 0:
            return start // DIGEST_BYTES
        start = digests.find(digest, start + 1)
    return -1


def admit(
    seen: SeenIds, event_id: str, arrival_ms: int, window_ms: int, max_ids: int = MAX_IDS
) -> SeenIds | None:
    """None if ``event_id`` is a duplicate (see the module rule); else the window with it.

    At most ``max_ids`` ids are kept: past that the oldest are dropped (a retry of one of them
    would count again; ``len`` before and after tells the caller how many were dropped).
    """
    digest = event_id_digest(event_id)
    digests = seen.digests
    arrivals = seen.arrivals
    newest = arrival_ms if not arrivals or arrivals[-1] < arrival_ms else arrivals[-1]
    cutoff = newest - window_ms
    found = _find(digests, digest)
    if found >= 0 and arrivals[found] >= cutoff:
        return None
    if found >= 0:  # an expired copy: replace it
        digests = digests[: found * DIGEST_BYTES] + digests[(found + 1) * DIGEST_BYTES :]
        arrivals = arrivals[:found] + arrivals[found + 1 :]
    drop = bisect.bisect_left(arrivals, cutoff)
    if drop:
        digests = digests[drop * DIGEST_BYTES :]
        arrivals = arrivals[drop:]
    kept_at = cutoff if arrival_ms < cutoff else arrival_ms  # an old arrival counts as the
    at = bisect.bisect_right(arrivals, kept_at)  # window's start: its copies are still caught
    digests = digests[: at * DIGEST_BYTES] + digest + digests[at * DIGEST_BYTES :]
    arrivals = (*arrivals[:at], kept_at, *arrivals[at:])
    over = len(arrivals) - max_ids
    if over > 0:
        digests = digests[over * DIGEST_BYTES :]
        arrivals = arrivals[over:]
    return SeenIds(digests, arrivals)


def encode_seen(seen: SeenIds) -> bytes:
    """``count:u32``, the digests, then one int64 arrival (ms) each."""
    n = len(seen.arrivals)
    return _COUNT.pack(n) + seen.digests + struct.pack(f"<{n}q", *seen.arrivals)


def decode_seen(data: bytes, pos: int = 0) -> tuple[SeenIds, int]:
    """The window encoded at ``pos`` of ``data`` and the position after it."""
    if len(data) < pos + _COUNT.size:
        raise StateDecodeError("truncated duplicate window")
    (n,) = _COUNT.unpack_from(data, pos)
    pos += _COUNT.size
    end = pos + n * (DIGEST_BYTES + 8)
    if len(data) < end:
        raise StateDecodeError("truncated duplicate window")
    digests = bytes(data[pos : pos + n * DIGEST_BYTES])
    arrivals = struct.unpack_from(f"<{n}q", data, pos + n * DIGEST_BYTES)
    return SeenIds(digests, arrivals), end
