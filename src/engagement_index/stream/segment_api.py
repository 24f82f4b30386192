"""Segment lists and counts over HTTP: any worker answers, asking the owners of all partitions.

``GET /v1/tenants/{tenant}/contacts`` and ``GET /v1/tenants/{tenant}/summary`` (docs/streaming.md).
The worker that gets the request (the *coordinator*) fixes the instant of the answer, reads
the owner of every partition from Faust's assignment (the routing of the contact API) and asks
each owner once for its partitions, with the caller's token, the instant and the partitions as
``_at`` and ``_partitions``; its own partitions it answers in-process. Each owner answers for
the partitions it was asked for only if it owns every one of them and is not recovering: else
503 ``{"error": "retry"}``, and so does the coordinator, rather than a list that silently lacks
a partition. The coordinator merges the owners' pages by position (segment_query.py).
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import orjson
from faust.web import Request, Response, View
from yarl import URL

from engagement_index.core.events import TENANT_PATTERN
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.stream.auth import TokenAuth, Unauthorized
from engagement_index.stream.segment_query import (
    ModelView,
    QueryError,
    SegmentQuery,
    after,
    encode_cursor,
    parse_query,
)
from engagement_index.stream.segments import WINDOW_MINUTES, Leg

if TYPE_CHECKING:
    from engagement_index.stream.app import Worker

import re

PARTITIONS_PARAM = "_partitions"
AT_PARAM = "_at"
#: how far the instant a coordinator sends may be from the owner's clock
MAX_SKEW_MS = 300_000
LEG_TIMEOUT_SECONDS = 10.0
_TENANT = re.compile(TENANT_PATTERN)
_JSON = "application/json"
_CHALLENGE = 'Bearer realm="engagement-index"'


class Retry(Exception):
    """A partition is not answerable now (rebalancing, recovering, its owner unreachable)."""


class LegFailed(Exception):
    """An owner answered something else than a page or "retry"."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text)


def _earlier(a: bytes, b: bytes, descending: bool) -> bytes:
    """The one of two positions that comes first in the list's order."""
    return b if after(a, b, descending) else a


def merge_legs(
    legs: Sequence[Leg], query: SegmentQuery
) -> tuple[list[dict[str, object]], bytes | None]:
    """The page of the merged ``legs`` and the position its next page starts after (None:
    the list ends). Every leg is complete up to its ``complete_to``, so the merge is complete
    up to the earliest of them."""
    descending = query.sort.descending
    bound: bytes | None = None
    for leg in legs:
        if leg.complete_to is not None:
            bound = (
                leg.complete_to if bound is None else _earlier(bound, leg.complete_to, descending)
            )
    items = [
        entry
        for leg in legs
        for entry in leg.items
        if bound is None or not after(entry[0], bound, descending)
    ]
    items.sort(key=lambda entry: entry[0], reverse=descending)
    page = items[: query.limit]
    if len(items) > query.limit:
        return [item for _, item in page], page[-1][0]
    return [item for _, item in page], bound


class SegmentApi:
    """The two endpoints, their fan-out legs, and the merge."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.view = ModelView.of(worker.model)

    # ------------------------------------------------------------------ helpers
    def _respond(
        self, view: View, body: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        return view.bytes(orjson.dumps(body), content_type=_JSON, status=status, headers=headers)

    def _denied(self, view: View, request: Request, tenant: str) -> Response | None:
        """401 without a valid token, 404 for a tenant the token may not read (as the contact
        API answers), 400 for a malformed tenant; None if the request may go on."""
        worker = self.worker
        if worker.auth is not None:
            try:
                tenants = worker.auth.tenants(request.headers.get("Authorization"))
            except Unauthorized as exc:
                worker.metrics.api_auth_failures.inc()
                body = {"error": "unauthorized", "message": exc.message}
                return self._respond(view, body, 401, {"WWW-Authenticate": _CHALLENGE})
            if not TokenAuth.may_read(tenants, tenant):
                return self._respond(view, {"error": "tenant not found", "tenant": tenant}, 404)
        if not _TENANT.fullmatch(tenant):
            return self._respond(view, {"error": "invalid tenant", "tenant": tenant}, 400)
        return None

    def _retry(self, view: View, message: str) -> Response:
        body = {"error": "retry", "message": message}
        return self._respond(view, body, 503, {"Retry-After": "1"})

    def owned(self) -> set[int]:
        """The partitions this worker owns (active) now."""
        worker = self.worker
        topic = worker.contacts.changelog_topic.get_topic_name()
        return {tp.partition for tp in worker.app.assignor.assigned_actives() if tp.topic == topic}

    def _check_owner(self, partitions: Sequence[int]) -> None:
        """``Retry`` unless this worker can answer for ``partitions`` now."""
        worker = self.worker
        if not worker.is_ready() or not worker.segments.ready:
            raise Retry("the worker is recovering or rebalancing")
        missing = set(partitions) - self.owned()
        if missing:
            raise Retry(f"partitions {sorted(missing)} moved (a rebalance)")

    def plan(self) -> dict[str, list[int]]:
        """Owner URL -> its partitions, for every partition; ``Retry`` if one has no owner."""
        worker = self.worker
        app = worker.app
        if not worker.is_ready() or not worker.segments.ready:
            raise Retry("the worker is recovering or rebalancing")
        topic = worker.contacts.changelog_topic.get_topic_name()
        plan: dict[str, list[int]] = {}
        seen: Counter[int] = Counter()
        for url, topics in app.router.table_metadata(worker.contacts.name).items():
            partitions = sorted(topics.get(topic, ()))
            if partitions:
                plan[str(url)] = partitions
                seen.update(partitions)
        every = set(range(worker.topology.scoring_partitions))
        if set(seen) != every or any(n > 1 for n in seen.values()):
            raise Retry(f"partitions {sorted(every - set(seen))} have no owner (a rebalance)")
        return plan

    def _is_self(self, url: str) -> bool:
        mine = URL(str(self.worker.app.conf.canonical_url))
        other = URL(url)
        return (other.host, other.port) == (mine.host, mine.port)

    @staticmethod
    def _params(request: Request) -> dict[str, list[str]]:
        query = cast(Any, request).query
        return {name: query.getall(name) for name in dict.fromkeys(query.keys())}

    def _leg_args(self, params: Mapping[str, list[str]]) -> tuple[list[int], int] | None:
        """``(partitions, at)`` of a fan-out leg, None for a client's request."""
        if PARTITIONS_PARAM not in params:
            return None
        try:
            partitions = [int(p) for p in params[PARTITIONS_PARAM][0].split(",")]
            at = int(params[AT_PARAM][0])
        except (KeyError, ValueError, IndexError):
            raise QueryError("_partitions and _at: a fan-out leg's parameters") from None
        every = range(self.worker.topology.scoring_partitions)
        if not partitions or any(p not in every for p in partitions):
            raise QueryError("_partitions: not partitions of this topology")
        if abs(at - self.worker.clock_ms()) > MAX_SKEW_MS:
            raise QueryError("_at: too far from this worker's clock")
        return partitions, at

    async def _remote(
        self,
        url: str,
        request: Request,
        params: Mapping[str, list[str]],
        partitions: list[int],
        at: int,
    ) -> Any:
        pairs = [(k, v) for k, values in params.items() for v in values]
        pairs += [(PARTITIONS_PARAM, ",".join(map(str, partitions))), (AT_PARAM, str(at))]
        target = URL(url).with_path(cast(Any, request).path).with_query(pairs)
        headers = {}
        token = request.headers.get("Authorization")
        if token is not None:
            headers["Authorization"] = token
        client: Any = self.worker.app.http_client
        try:
            async with client.get(
                target,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=LEG_TIMEOUT_SECONDS),
            ) as response:
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Retry(f"the owner of partitions {partitions} did not answer ({exc!r})") from None
        if status == 503:
            raise Retry(f"the owner of partitions {partitions} is rebalancing")
        if status != 200:
            raise LegFailed(
                f"the owner of partitions {partitions} answered {status}: {raw[:200]!r}"
            )
        return orjson.loads(raw)

    async def _fan_out(
        self, request: Request, params: Mapping[str, list[str]], local: Any, at: int
    ) -> list[Any]:
        """Every owner's answer: remote legs over HTTP, this worker's own by ``local``."""
        plan = self.plan()
        remote = {
            url: asyncio.ensure_future(self._remote(url, request, params, partitions, at))
            for url, partitions in plan.items()
            if not self._is_self(url)
        }
        try:
            if remote:
                await asyncio.sleep(0)  # let the requests go out before the local part runs
            answers = [local(partitions) for url, partitions in plan.items() if self._is_self(url)]
            for url in remote:
                answers.append(await remote[url])
        finally:
            for task in remote.values():
                if not task.done():
                    task.cancel()
        return answers

    # --------------------------------------------------------------------- list
    async def contacts(self, view: View, request: Request, tenant: str) -> Response:
        """``GET /v1/tenants/{tenant}/contacts``."""
        denied = self._denied(view, request, tenant)
        if denied is not None:
            return denied
        worker = self.worker
        params = self._params(request)
        client_params = {k: v for k, v in params.items() if not k.startswith("_")}
        try:
            leg = self._leg_args(params)
            query = parse_query(client_params, self.view)
        except QueryError as exc:
            return self._respond(view, exc.body(), 400)
        segments = worker.segments
        try:
            if leg is not None:
                partitions, at = leg
                self._check_owner(partitions)
                found = segments.list_local(query, tenant, partitions, at)
                leg_body = {
                    "items": [{"position": _b64(p), "item": item} for p, item in found.items],
                    "complete_to": None if found.complete_to is None else _b64(found.complete_to),
                }
                return self._respond(view, leg_body)
            at = worker.clock_ms()

            def local(partitions: list[int]) -> Leg:
                self._check_owner(partitions)
                return segments.list_local(query, tenant, partitions, at)

            answers = await self._fan_out(request, client_params, local, at)
        except Retry as exc:
            return self._retry(view, str(exc))
        except LegFailed as exc:
            return self._respond(view, {"error": "fan-out failed", "message": str(exc)}, 502)
        legs = [
            a
            if isinstance(a, Leg)
            else Leg(
                [(_unb64(e["position"]), e["item"]) for e in a["items"]],
                None if a["complete_to"] is None else _unb64(a["complete_to"]),
            )
            for a in answers
        ]
        items, next_position = merge_legs(legs, query)
        body: dict[str, Any] = {
            "tenant": tenant,
            "as_of": ms_to_rfc3339(at),
            "sort": query.sort.name,
            "items": items,
            "next_cursor": None
            if next_position is None
            else encode_cursor(query.sort, next_position),
        }
        return self._respond(view, body)

    # ------------------------------------------------------------------ summary
    async def summary(self, view: View, request: Request, tenant: str) -> Response:
        """``GET /v1/tenants/{tenant}/summary``."""
        denied = self._denied(view, request, tenant)
        if denied is not None:
            return denied
        worker = self.worker
        params = self._params(request)
        client_params = {k: v for k, v in params.items() if not k.startswith("_")}
        try:
            leg = self._leg_args(params)
            if client_params:
                raise QueryError(f"unknown parameter {sorted(client_params)[0]!r}")
        except QueryError as exc:
            return self._respond(view, exc.body(), 400)
        segments = worker.segments
        try:
            if leg is not None:
                partitions, at = leg
                self._check_owner(partitions)
                return self._respond(view, segments.summary_local(tenant, partitions, at))
            at = worker.clock_ms()

            def local(partitions: list[int]) -> dict[str, Any]:
                self._check_owner(partitions)
                return segments.summary_local(tenant, partitions, at)

            answers = await self._fan_out(request, {}, local, at)
        except Retry as exc:
            return self._retry(view, str(exc))
        except LegFailed as exc:
            return self._respond(view, {"error": "fan-out failed", "message": str(exc)}, 502)
        return self._respond(view, self.summary_body(tenant, at, answers))

    def summary_body(
        self, tenant: str, at: int, answers: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """The summary of the owners' ``answers`` (``SegmentIndex.summary_local``)."""
        view = self.view
        lifecycles = view.cm.lifecycles
        counts: Counter[tuple[int, int]] = Counter()
        edges: Counter[tuple[str, str | None, str | None, str]] = Counter()
        since = 0
        for answer in answers:
            for lc, stage, n in answer["counts"]:
                counts[(lc, stage)] += n
            for lc_name, rule, from_stage, to_stage, n in answer["edges"]:
                edges[(lc_name, rule, from_stage, to_stage)] += n
            since = max(since, answer["counting_since"])
        per_lifecycle = {
            lc.name: {s.name: counts[(lc.position, i)] for i, s in enumerate(lc.stages)}
            for lc in lifecycles
        }
        minute = 60_000
        window_start = (at // minute - WINDOW_MINUTES + 1) * minute
        order = {lc.name: lc.position for lc in lifecycles}
        return {
            "tenant": tenant,
            "as_of": ms_to_rfc3339(at),
            "model_version": self.worker.model.version,
            "contacts": sum(per_lifecycle[lifecycles[0].name].values()),
            "lifecycles": per_lifecycle,
            "bands": None if view.band is None else per_lifecycle[lifecycles[view.band].name],
            "trends": None if view.trend is None else per_lifecycle[lifecycles[view.trend].name],
            "transitions_24h": {
                "from": ms_to_rfc3339(window_start),
                "to": ms_to_rfc3339(at),
                "counting_since": ms_to_rfc3339(since),
                "complete": since <= window_start,
                "edges": [
                    {
                        "lifecycle": lc_name,
                        "edge": rule,
                        "from_stage": from_stage,
                        "to_stage": to_stage,
                        "count": n,
                    }
                    for (lc_name, rule, from_stage, to_stage), n in sorted(
                        edges.items(),
                        key=lambda e: (order.get(e[0][0], len(order)), -e[1], str(e[0][1])),
                    )
                ],
            },
        }

    # ----------------------------------------------------------------- register
    def register(self) -> None:
        """Add the two pages to the worker's web server."""
        api = self
        app = self.worker.app

        @app.page("/v1/tenants/{tenant}/contacts")
        class SegmentList(View):
            async def get(self, request: Request, tenant: str) -> Response:
                return await api.contacts(self, request, tenant)

        @app.page("/v1/tenants/{tenant}/summary")
        class SegmentSummary(View):
            async def get(self, request: Request, tenant: str) -> Response:
                return await api.summary(self, request, tenant)
