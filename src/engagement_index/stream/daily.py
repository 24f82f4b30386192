"""Score history: the ``daily`` table's keys, its retention, and the points of a series.

Between a contact's events its index only decays, exactly (docs/scoring.md), so a series needs
no sample per day: the table keeps, per contact, the state as of the end of each UTC day in
which that state changed, and a point is the stored state evaluated at the point's instant.

* **Key**: the contact key, one :data:`SEPARATOR` byte, then the *closing day* of the state as
  4 bytes big-endian, offset by 2**31 (so keys sort by day, days before 1970 included). The
  closing day of a state is :func:`closing_day` of its clock: the day whose end (the next
  midnight, inclusive) the state is as of. An event at exactly ``00:00:00.000`` belongs to the
  day it closes, as ``replay --until`` at that midnight includes it.
* **Value**: ``encode_state`` of the state (the bytes of the contact's table value).
* **Point** at midnight ``t``: ``evaluate(S, t)`` with ``S`` the stored state of the greatest
  day before ``t``'s day. Its clock is at or before ``t`` and no event of the contact lies
  between the two, so the point is what the replay reports at ``t`` (time-driven changes
  between are applied by ``evaluate``).

A contact id may hold any character, the separator too, so the key of one contact can start
with another's prefix; the keys of a contact are exactly those of its prefix that are
:data:`DAY_BYTES` longer than it (a longer contact id gives a longer key).

No Faust and no RocksDB import: :func:`stored_days` reads a partition's database handed in.
The offline replay computes the same points in its own loop (``replay.Replayer``, ``daily``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from engagement_index.core.compiled import CompiledModel
from engagement_index.core.lifecycle import evaluate
from engagement_index.core.state import ContactState
from engagement_index.core.timestamps import MS_PER_DAY, ms_to_rfc3339, parse_timestamp_ms

SEPARATOR = b"\x1f"
DAY_BYTES = 5  # the separator and the 4-byte day
_OFFSET = 1 << 31
#: the most points one request may ask for
MAX_POINTS = 1000

_DATE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
_STEP = re.compile(r"^([1-9][0-9]{0,3})d$")


def closing_day(clock_ms: int) -> int:
    """The UTC day (days since 1970-01-01) whose end the state at ``clock_ms`` is as of.

    The day of the clock, except that a clock at exactly midnight closes the day before it.
    """
    return (clock_ms - 1) // MS_PER_DAY


def prefix(contact_key: bytes) -> bytes:
    """The first bytes of every day key of a contact."""
    return contact_key + SEPARATOR


def day_key(contact_key: bytes, day: int) -> bytes:
    """The table key of ``contact_key``'s state closing ``day``."""
    return contact_key + SEPARATOR + (day + _OFFSET).to_bytes(4, "big")


def day_of_key(contact_key: bytes, key: bytes) -> int | None:
    """The day of ``key`` if it is a day key of ``contact_key``, else None."""
    if len(key) != len(contact_key) + DAY_BYTES or not key.startswith(prefix(contact_key)):
        return None
    return int.from_bytes(key[-4:], "big") - _OFFSET


def expired(days: Sequence[int], cutoff: int) -> list[int]:
    """The days of ``days`` (sorted) that retention deletes for ``cutoff``.

    Every point from ``cutoff``'s midnight on stays exact: the newest day before the cutoff
    is kept (it is the base of the points up to the next stored day), the older ones go.
    """
    older = [day for day in days if day < cutoff]
    return older[:-1]


#: (contact key, index in the batch, days before this one, or None: every day) -> the
#: contact's stored days, sorted (the worker: a prefix seek in the partition's RocksDB)
ListDays = Callable[[bytes, int, "int | None"], list[int]]


class DailyBatch:
    """The ``daily`` table's writes of one batch: puts, erasures and retention deletes.

    ``put`` a contact's state for the day it closes (several days if the batch moved its clock
    past midnights), ``erase`` a contact; :meth:`writes` turns them into table writes (value
    None: delete), reading the stored days only where something can be deleted: an erased
    contact, or one that got a day it did not have when the batch started (``new_day``).
    """

    __slots__ = ("_erased", "_puts", "history_days")

    def __init__(self, history_days: int) -> None:
        self.history_days = history_days
        #: contact key -> index of the erasure (its stored days are all deleted)
        self._erased: dict[bytes, int] = {}
        #: contact key -> (index, {day: state bytes}, whether retention must look at the store)
        self._puts: dict[bytes, tuple[int, dict[int, bytes], bool]] = {}

    def put(self, contact_key: bytes, index: int, days: dict[int, bytes], new_day: bool) -> None:
        """Store ``days`` (day -> encoded state) of a contact whose state changed; ``new_day``:
        its newest day is not the one its stored state had (retention may delete some)."""
        earlier = self._puts.get(contact_key)
        if earlier is not None:  # a re-written day, then the batch's own
            days = {**earlier[1], **days}
            new_day = new_day or earlier[2]
        self._puts[contact_key] = (index, days, new_day)

    def erase(self, contact_key: bytes, index: int) -> None:
        """Delete every day of the contact (and forget what this batch put for it so far)."""
        self._erased[contact_key] = index
        self._puts.pop(contact_key, None)

    def __bool__(self) -> bool:
        return bool(self._puts or self._erased)

    def writes(self, list_days: ListDays | None) -> dict[bytes, tuple[int, bytes | None]]:
        """Table key -> (index, value or None) for the batch's transaction."""
        out: dict[bytes, tuple[int, bytes | None]] = {}
        for contact_key, index in self._erased.items():
            for day in list_days(contact_key, index, None) if list_days is not None else []:
                out[day_key(contact_key, day)] = (index, None)
        keep = self.history_days
        for contact_key, (index, days, new_day) in self._puts.items():
            for day, value in days.items():
                out[day_key(contact_key, day)] = (index, value)
            if not new_day:
                continue  # the day it had at the batch start: retention ran when it was new
            cutoff = max(days) - keep
            stored: list[int] = []
            if list_days is not None and contact_key not in self._erased:
                stored = list_days(contact_key, index, cutoff)
            below = sorted({*stored, *(d for d in days if d < cutoff)})
            for day in expired(below, cutoff):
                key = day_key(contact_key, day)
                if day in days and day not in stored:
                    del out[key]  # put by this batch only: never written
                else:
                    out[key] = (index, None)
        return out


# ------------------------------------------------------------------------------- the series
class SeriesError(ValueError):
    """A series parameter that cannot be used (the API answers 400 with it)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message

    def body(self) -> dict[str, str]:
        """The API's JSON error body."""
        return {"error": "invalid parameter", "parameter": self.parameter, "message": self.message}


def parse_day(text: str, parameter: str) -> int:
    """``YYYY-MM-DD`` or an RFC 3339 time (rounded down to its UTC day) -> day number."""
    text = text.strip()
    match = _DATE.match(text)
    try:
        if match is not None:
            ms = parse_timestamp_ms(f"{text}T00:00:00Z")
        else:
            ms = parse_timestamp_ms(text)
    except ValueError as exc:
        raise SeriesError(
            parameter, f"{text!r} is not a date (YYYY-MM-DD) or an RFC 3339 time: {exc}"
        ) from None
    return ms // MS_PER_DAY


def parse_step(text: str) -> int:
    """``"7d"`` -> 7: a whole number of days (1-9999)."""
    match = _STEP.match(text.strip())
    if match is None:
        raise SeriesError("step", f"{text!r} is not a whole number of days like '1d' or '7d'")
    return int(match.group(1))


def check_series_params(params: dict[str, str]) -> None:
    """``SeriesError`` if ``step``, ``from`` or ``to`` (when given) does not parse."""
    parse_step(params.get("step") or "1d")
    for name in ("from", "to"):
        if params.get(name):
            parse_day(params[name], name)


@dataclass(frozen=True, slots=True)
class Range:
    """The midnights of a series: day numbers ``first, first + step, ...`` up to ``last``."""

    first: int
    last: int
    step: int

    def days(self) -> range:
        return range(self.first, self.last + 1, self.step)

    def __len__(self) -> int:
        return len(self.days())


def series_range(
    params: dict[str, str],
    *,
    today: int,
    first_day: int | None,
    max_points: int = MAX_POINTS,
) -> Range:
    """The requested midnights (``from``, ``to``, ``step`` query parameters).

    ``today``: the day of the worker's clock; the series ends at its midnight at the latest
    (a later point would be a forecast, undone by the next event). ``first_day``: the first
    midnight the contact has a point at (None: none). Defaults: ``to`` today, ``step`` 1d,
    ``from`` the contact's first point, moved later if that gives more than ``max_points``.
    """
    step = parse_step(params.get("step") or "1d")
    last = parse_day(params["to"], "to") if params.get("to") else today
    last = min(last, today)
    if params.get("from"):
        first = parse_day(params["from"], "from")
    else:
        first = first_day if first_day is not None else last
        first = max(first, last - (max_points - 1) * step)
    if first > last:
        raise SeriesError("from", "is after 'to' (or after today)")
    wanted = Range(first, last, step)
    if len(wanted) > max_points:
        raise SeriesError(
            "from", f"the range has {len(wanted)} points; at most {max_points} per request"
        )
    return wanted


def point(state: ContactState, day: int, cm: CompiledModel) -> dict[str, Any]:
    """The point at midnight ``day`` (00:00 UTC) of ``state``, its base (see the module)."""
    snapshot = evaluate(state, day * MS_PER_DAY, cm)
    return {
        "at": ms_to_rfc3339(day * MS_PER_DAY),
        "index": snapshot.index,
        "components": snapshot.components,
        "stages": {name: status["stage"] for name, status in snapshot.lifecycles.items()},
    }


def points(
    stored: Iterable[tuple[int, ContactState]], wanted: Range, cm: CompiledModel
) -> Iterator[dict[str, Any]]:
    """The points of ``wanted`` from the states stored by closing day (sorted by day).

    A midnight before the contact's first stored state has no point (it is left out).
    """
    states = iter(stored)
    base: ContactState | None = None
    upcoming = next(states, None)
    for day in wanted.days():
        while upcoming is not None and upcoming[0] < day:
            base = upcoming[1]
            upcoming = next(states, None)
        if base is not None:
            yield point(base, day, cm)


def stored_days(db: Any, contact_key: bytes, before: int | None) -> Iterator[tuple[int, bytes]]:
    """``(day, value)`` of the contact's keys in ``db`` (a partition's RocksDB, raw mode), in
    day order; only the days before ``before`` if it is given. One seek, then the keys of the
    prefix (those of another contact whose id extends this one are skipped)."""
    cursor = db.iter()
    for day in _walk_days(cursor, contact_key, before):
        yield day, bytes(cursor.value())


def stored_day_numbers(cursor: Any, contact_key: bytes, before: int | None) -> list[int]:
    """The days of :func:`stored_days`, without reading their values, found by ``cursor``: an
    iterator over a partition's RocksDB that a batch reuses for every contact it looks up (a
    seek each; it sees the database as it was when the iterator was made)."""
    return list(_walk_days(cursor, contact_key, before))


def _walk_days(cursor: Any, contact_key: bytes, before: int | None) -> Iterator[int]:
    """Seek ``cursor`` to the contact's first day key; the day of each of its keys (before
    ``before``), with ``cursor`` on that key."""
    start = prefix(contact_key)
    stop = day_key(contact_key, before) if before is not None else None
    cursor.seek(start)
    while cursor.valid():
        key = bytes(cursor.key())
        if not key.startswith(start) or (stop is not None and key >= stop):
            break
        day = day_of_key(contact_key, key)
        if day is not None:
            yield day
        cursor.next()
