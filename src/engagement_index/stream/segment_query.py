"""Segment lists, the pure part: query parameters, sort positions, cursors and list items.

No RocksDB, no Faust: :mod:`engagement_index.stream.segments` keeps the index and scans it,
:mod:`engagement_index.stream.segment_api` serves it over HTTP. See docs/streaming.md
(segment lists and counts).

**Positions.** A list is ordered by a *position*, unique per contact: the sort value (8 bytes,
none for ``contact_id``) followed by the UTF-8 contact id, compared as bytes (ascending, or
descending with a ``-`` sort). The sort value of ``index`` is the IEEE 754 big-endian bytes of
the contact's index *as of its clock* (its latest event or time-driven change: what the index
key holds), so they sort as the numbers do (indices are never negative); that of
``last_event`` is the latest event time in ms, offset by 2**63, big-endian.

**Cursor.** Opaque to clients: base64url (no padding) of a version byte, the sort's order byte
and direction, and the position of the last contact of the page. The next page lists the
contacts whose position comes after it; nothing about the tenant or the filters is in it.

**Items** are evaluated at one instant for the whole list (time-driven changes due by then
applied, as ``core.lifecycle.evaluate`` does): :func:`evaluate_item` computes only what a list
needs, with the same float operations as ``evaluate`` (``core.decay.index_after``).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engagement_index.core.compiled import CompiledModel
from engagement_index.core.decay import index_after
from engagement_index.core.lifecycle import advance, migrate
from engagement_index.core.model import ScoringModel, duration_ms, parse_duration
from engagement_index.core.state import ContactState
from engagement_index.core.timestamps import ms_to_rfc3339

#: the most items one page may hold
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
CURSOR_VERSION = 1
#: sort field -> order byte of its index keys
ORDERS = {"contact_id": b"c", "index": b"i", "last_event": b"a"}
_F64 = struct.Struct(">d")
_TIME_OFFSET = 1 << 63
#: parameters of the list (the ``_``-prefixed ones are the fan-out's, segment_api.py)
LIST_PARAMS = frozenset(
    {
        "stage",
        "band",
        "trend",
        "min_index",
        "max_index",
        "customer",
        "active_within",
        "account_id",
        "sort",
        "limit",
        "cursor",
    }
)
REPEATABLE = frozenset({"stage"})


class QueryError(ValueError):
    """A query the list cannot answer: 400 with :meth:`body`."""

    def __init__(self, message: str, error: str = "invalid query") -> None:
        super().__init__(message)
        self.message = message
        self.error = error

    def body(self) -> dict[str, str]:
        """The JSON answer."""
        return {"error": self.error, "message": self.message}


@dataclass(frozen=True, slots=True)
class Sort:
    """How a list is ordered: a field of :data:`ORDERS`, ascending or descending."""

    field: str
    descending: bool = False

    @property
    def order(self) -> bytes:
        """The order byte of the index keys this sort reads."""
        return ORDERS[self.field]

    @property
    def name(self) -> str:
        """As the ``sort`` parameter writes it."""
        return ("-" if self.descending else "") + self.field


@dataclass(frozen=True, slots=True)
class SegmentQuery:
    """A parsed list request (see :func:`parse_query`)."""

    #: lifecycle position -> the stage positions allowed in it (every filter holds: AND)
    stages: Mapping[int, frozenset[int]]
    min_index: float | None = None
    max_index: float | None = None
    customer: bool | None = None
    active_within_ms: int | None = None
    sort: Sort = Sort("contact_id")
    limit: int = DEFAULT_LIMIT
    #: the position after which the page starts (None: the first page)
    after: bytes | None = None
    #: only the members of this account (the account the contact's stored value names)
    account_id: str | None = None


@dataclass(frozen=True, slots=True)
class ModelView:
    """What the lists need of a model: names, the band and trend lifecycles, the customer bit."""

    cm: CompiledModel
    #: lifecycle name -> position, and per position stage name -> position
    lifecycle_of: Mapping[str, int]
    stage_of: tuple[Mapping[str, int], ...]
    band: int | None
    trend: int | None
    customer_bit: int
    #: the model declares accounts (contacts' values then name their account)
    accounts: bool = False

    @classmethod
    def of(cls, model: ScoringModel) -> ModelView:
        """The view of ``model`` (its band lifecycle: the first declared with ``bands``)."""
        cm = model.compiled
        declared = model.lifecycles or {}
        band = trend = None
        for lc in cm.lifecycles:
            spec = declared.get(lc.name)
            if spec is None:
                continue
            if spec.bands is not None and band is None:
                band = lc.position
            if spec.trend is not None and trend is None:
                trend = lc.position
        customer_bit = 1 << cm.markers.index("customer") if "customer" in cm.markers else 0
        return cls(
            cm=cm,
            lifecycle_of={lc.name: lc.position for lc in cm.lifecycles},
            stage_of=tuple({s.name: i for i, s in enumerate(lc.stages)} for lc in cm.lifecycles),
            band=band,
            trend=trend,
            customer_bit=customer_bit,
            accounts=model.accounts is not None,
        )


# ----------------------------------------------------------------------------- positions
def sort_value(order: bytes, index_at_clock: float, last_event_ms: int) -> bytes:
    """The sort value of a contact for the keys of ``order`` (empty for ``contact_id``)."""
    if order == b"c":
        return b""
    if order == b"i":
        return _F64.pack(index_at_clock + 0.0)  # + 0.0: never -0.0
    return (last_event_ms + _TIME_OFFSET).to_bytes(8, "big")


def after(position: bytes, cursor: bytes | None, descending: bool) -> bool:
    """True if ``position`` comes after ``cursor`` in the list's order (any, with no cursor)."""
    if cursor is None:
        return True
    return position < cursor if descending else position > cursor


def encode_cursor(sort: Sort, position: bytes) -> str:
    """The opaque cursor of the page that starts after ``position``."""
    raw = bytes([CURSOR_VERSION]) + sort.order + (b"-" if sort.descending else b"+") + position
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str, sort: Sort) -> bytes:
    """The position a cursor holds; ``QueryError`` if it is not one of ``sort``'s."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise QueryError("cursor: not a cursor of this API") from None
    if len(raw) < 4 or raw[0] != CURSOR_VERSION or raw[2:3] not in (b"+", b"-"):
        raise QueryError("cursor: not a cursor of this API")
    if raw[1:2] != sort.order or (raw[2:3] == b"-") != sort.descending:
        raise QueryError(f"cursor: it belongs to another sort than {sort.name!r}")
    position = raw[3:]
    if sort.order != b"c" and len(position) < 9:
        raise QueryError("cursor: not a cursor of this API")
    return position


# ------------------------------------------------------------------------------- parsing
def _single(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise QueryError(f"{name}: given {len(values)} times")
    return values[0]


def _level(params: Mapping[str, Sequence[str]], name: str) -> float | None:
    text = _single(params, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise QueryError(f"{name}: {text!r} is not a number") from None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise QueryError(f"{name}: must be between 0 and 100")
    return value


def _stages(view: ModelView, lifecycle: int, text: str, what: str) -> frozenset[int]:
    names = [name.strip() for name in text.split(",")]
    known = view.stage_of[lifecycle]
    lc_name = view.cm.lifecycles[lifecycle].name
    out = set()
    for name in names:
        if name not in known:
            raise QueryError(
                f"{what}: lifecycle {lc_name!r} has no stage {name!r} "
                f"(its stages: {', '.join(known)})"
            )
        out.add(known[name])
    return frozenset(out)


def parse_query(params: Mapping[str, Sequence[str]], view: ModelView) -> SegmentQuery:
    """The list request of ``params`` (name -> values, in order); ``QueryError`` if invalid.

    ``stage=NAME[,NAME...]`` filters the model's first lifecycle, ``stage=LIFECYCLE:NAME[,...]``
    any lifecycle (repeatable); ``band``/``trend`` the model's band and trend lifecycles.
    Filters combine with AND; the stages listed for one lifecycle with OR.
    """
    unknown = sorted(name for name in params if name not in LIST_PARAMS)
    if unknown:
        raise QueryError(
            f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(LIST_PARAMS))})"
        )
    for name, values in params.items():
        if name not in REPEATABLE and len(values) > 1:
            raise QueryError(f"{name}: given {len(values)} times")
    account_id = _single(params, "account_id")
    if account_id is not None and not view.accounts:
        raise QueryError("account_id: the model declares no accounts")
    if account_id == "":
        raise QueryError("account_id: empty")
    stages: dict[int, frozenset[int]] = {}

    def restrict(lifecycle: int, allowed: frozenset[int]) -> None:
        stages[lifecycle] = stages[lifecycle] & allowed if lifecycle in stages else allowed

    for text in params.get("stage", ()):
        lc_name, sep, names = text.partition(":")
        if not sep:
            restrict(0, _stages(view, 0, text, "stage"))
            continue
        lifecycle = view.lifecycle_of.get(lc_name)
        if lifecycle is None:
            raise QueryError(
                f"stage: the model has no lifecycle {lc_name!r} "
                f"(its lifecycles: {', '.join(view.lifecycle_of)})"
            )
        restrict(lifecycle, _stages(view, lifecycle, names, "stage"))
    for what, where in (("band", view.band), ("trend", view.trend)):
        given = _single(params, what)
        if given is None:
            continue
        if where is None:
            raise QueryError(f"{what}: the model has no {what} lifecycle")
        restrict(where, _stages(view, where, given, what))
    min_index = _level(params, "min_index")
    max_index = _level(params, "max_index")
    customer_text = _single(params, "customer")
    customer = None
    if customer_text is not None:
        if customer_text not in ("true", "false"):
            raise QueryError("customer: true or false")
        customer = customer_text == "true"
    within_text = _single(params, "active_within")
    within = None
    if within_text is not None:
        try:
            within = duration_ms(parse_duration(within_text, "active_within"))
        except ValueError as exc:
            raise QueryError(str(exc)) from None
    sort_text = _single(params, "sort") or "contact_id"
    field = sort_text.removeprefix("-")
    if field not in ORDERS:
        raise QueryError(
            f"sort: {sort_text!r} is not one of " + ", ".join(f"{f}, -{f}" for f in ORDERS)
        )
    sort = Sort(field, sort_text.startswith("-"))
    limit_text = _single(params, "limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise QueryError(f"limit: a whole number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    cursor_text = _single(params, "cursor")
    start = decode_cursor(cursor_text, sort) if cursor_text else None
    return SegmentQuery(
        stages=stages,
        min_index=min_index,
        max_index=max_index,
        customer=customer,
        active_within_ms=within,
        sort=sort,
        limit=limit,
        after=start,
        account_id=account_id,
    )


# --------------------------------------------------------------------------------- items
@dataclass(frozen=True, slots=True)
class Evaluated:
    """A contact as of the list's instant: what filters and items read."""

    contact_id: str
    #: the stage position in each lifecycle
    stages: tuple[int, ...]
    #: the index at the instant, and at the (advanced) state's clock: its sort value
    index: float
    index_at_clock: float
    last_event_ms: int
    customer: bool
    #: the account the contact belongs to (its stored value's; None: none)
    account_id: str | None = None


def evaluate_item(
    state: ContactState, at_ms: int, view: ModelView, account_id: str | None = None
) -> Evaluated:
    """``state`` as of ``at_ms``: time-driven changes due by then applied (as ``evaluate``);
    ``account_id``: the contact's account, from its stored value."""
    cm = view.cm
    if state.layout is not cm.layout and state.layout != cm.layout:
        state, _ = migrate(state, cm)
    if state.due_ms is not None and state.due_ms <= at_ms:
        state, _ = advance(state, at_ms, cm)
    by_id = cm.stage_by_id
    stages = tuple(by_id[s][1] for s in state.stages)
    weights = cm.weights[cm.lifecycles[0].stages[stages[0]].index]
    delta = max(at_ms - state.clock_ms, 0)
    return Evaluated(
        contact_id=state.contact_id,
        stages=stages,
        index=index_after(state.values, delta, weights, cm),
        index_at_clock=index_after(state.values, 0, weights, cm),
        last_event_ms=state.last_event_ms,
        customer=bool(state.markers & view.customer_bit),
        account_id=account_id,
    )


def position_of(item: Evaluated, order: bytes) -> bytes:
    """The item's position in a list of ``order``."""
    value = sort_value(order, item.index_at_clock, item.last_event_ms)
    return value + item.contact_id.encode("utf-8")


def matches(item: Evaluated, query: SegmentQuery, at_ms: int) -> bool:
    """True if ``item`` passes every filter of ``query`` (at the list's instant ``at_ms``)."""
    for lifecycle, allowed in query.stages.items():
        if item.stages[lifecycle] not in allowed:
            return False
    if query.min_index is not None and item.index < query.min_index:
        return False
    if query.max_index is not None and item.index > query.max_index:
        return False
    if query.customer is not None and item.customer != query.customer:
        return False
    if query.account_id is not None and item.account_id != query.account_id:
        return False
    return not (
        query.active_within_ms is not None and item.last_event_ms < at_ms - query.active_within_ms
    )


def item_json(item: Evaluated, view: ModelView) -> dict[str, object]:
    """The API form of a list item."""
    lifecycles = view.cm.lifecycles
    stages = {lc.name: lc.stages[item.stages[lc.position]].name for lc in lifecycles}
    band = trend = None
    if view.band is not None:
        band = lifecycles[view.band].stages[item.stages[view.band]].name
    if view.trend is not None:
        trend = lifecycles[view.trend].stages[item.stages[view.trend]].name
    return {
        "contact_id": item.contact_id,
        "stages": stages,
        "index": item.index,
        "band": band,
        "trend": trend,
        "last_event_at": ms_to_rfc3339(item.last_event_ms),
        "account_id": item.account_id,
    }
