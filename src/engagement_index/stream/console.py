"""The web console (docs/console.md): a static page the worker serves, a client of the query API.

The page reads the public API with the user's bearer token (the contact card, its score
history, segment lists, the summary). What the API did not have, this module adds, under the
same token and tenant rules:

* ``GET /v1/tenants/{tenant}/model``: the model's lifecycles, stages, index weights and the
  index thresholds of the edges (the dial and the component bars are drawn from it; the page
  knows no stage names).
* ``GET /v1/tenants/{tenant}/stage-changes``: Server-Sent Events, one ``transition`` event per
  record of the stage-change topic for the tenant (``?contact_id=``: that contact only).
* ``GET /v1/tenants/{tenant}/transitions/per-minute``: transitions per minute of their
  ``occurred_at`` over the last hour, by lifecycle, counted from the same feed.

The feed (:class:`StageFeed`) is one consumer of the stage-change topic per worker, without a
consumer group (it commits nothing), assigned every partition: any worker can serve any tenant
without a fan-out. It starts at the first console request, from the records of the last hour
(``offsets_for_times``), so a freshly started feed has the hour's rates when the topic still
holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web as aioweb
from faust.web import Request, Response, View

from engagement_index.core.compiled import ALL, ANY, CONTACT, LEVEL, Cond
from engagement_index.core.events import TENANT_PATTERN
from engagement_index.core.model import ScoringModel
from engagement_index.core.timestamps import ms_to_rfc3339, parse_timestamp_ms
from engagement_index.kafka_security import aiokafka_options
from engagement_index.stream.auth import TokenAuth, Unauthorized
from engagement_index.stream.segment_query import ModelView

if TYPE_CHECKING:
    from engagement_index.stream.app import Worker

log = logging.getLogger("engagement_index.console")

STATIC = Path(__file__).with_name("console_static")
#: the files of the page, with their content types (nothing else under /console/ is served)
FILES = {"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css"}
#: the page runs only its own script; inline style attributes (bar widths) are allowed
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "frame-ancestors 'none'"
    ),
}
WINDOW_MINUTES = 60
MINUTE_MS = 60_000
#: a comment line on every open stream this often, so proxies and the page see it is alive
KEEPALIVE_SECONDS = 15.0
#: a stream ends after this long (the page reconnects): no connection outlives a token's removal
STREAM_SECONDS = 300.0
SUBSCRIBER_QUEUE = 1000
_JSON = "application/json"
_TENANT = re.compile(TENANT_PATTERN)
_CHALLENGE = 'Bearer realm="engagement-index"'


# ----------------------------------------------------------------------------- the model
def _levels(cond: Cond) -> list[tuple[int, bool, float]]:
    """Every ``(source, at_least, level)`` index/component level in a compiled condition."""
    if cond.kind == LEVEL:
        return [(cond.source, cond.at_least, cond.level)]
    if cond.kind in (ALL, ANY):
        return [level for child in cond.children for level in _levels(child)]
    return []


def describe_model(model: ScoringModel) -> dict[str, Any]:
    """The model as the console draws it: indices with their weights, and per lifecycle its
    stages (with the index each is measured on) and edges (with their index thresholds).

    ``kind`` of a lifecycle: ``first`` (the dial), ``band``, ``trend`` or ``stages``. A
    threshold's ``index`` is an index name, or null for the contact's own index (the index of
    its stage in the first lifecycle).
    """
    cm = model.compiled
    view = ModelView.of(model)
    components = list(cm.names)
    indices = {
        name: {c: w for c, w in zip(components, cm.weights[i], strict=True) if w}
        for i, name in enumerate(cm.index_names)
        if i < len(cm.weights)
    }

    def index_name(source: int) -> str | None:
        if source == CONTACT or source < 0 or source >= len(cm.index_names):
            return None
        return cm.index_names[source]

    lifecycles = []
    for lc in cm.lifecycles:
        kind = "stages"
        if lc.position == 0:
            kind = "first"
        elif lc.position == view.band:
            kind = "band"
        elif lc.position == view.trend:
            kind = "trend"
        edges = []
        for stage in lc.stages:
            for edge in stage.edges:
                thresholds = [
                    {"index": index_name(source), "at_least": at_least, "level": level}
                    for source, at_least, level in _levels(edge.cond)
                    if source >= 0 or source == CONTACT
                ]
                edges.append(
                    {
                        "id": edge.rule_id,
                        "from": stage.name,
                        "to": lc.stages[edge.to].name,
                        "thresholds": thresholds,
                    }
                )
        lifecycles.append(
            {
                "name": lc.name,
                "kind": kind,
                "stages": [
                    {"name": s.name, "index": index_name(s.index) if s.index >= 0 else None}
                    for s in lc.stages
                ],
                "edges": edges,
            }
        )
    return {
        "model_version": model.version,
        "components": components,
        "indices": indices,
        "lifecycles": lifecycles,
        "band_lifecycle": None if view.band is None else cm.lifecycles[view.band].name,
        "trend_lifecycle": None if view.trend is None else cm.lifecycles[view.trend].name,
    }


# ----------------------------------------------------------------------------- the feed
class MinuteCounts:
    """Transitions per tenant, minute and lifecycle over the last ``WINDOW_MINUTES``."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[int, Counter[str]]] = {}

    def add(self, tenant: str, occurred_ms: int, lifecycle: str, now_ms: int) -> None:
        minute = occurred_ms // MINUTE_MS
        first = now_ms // MINUTE_MS - WINDOW_MINUTES + 1
        if minute < first:
            return
        minutes = self._counts.setdefault(tenant, {})
        minutes.setdefault(minute, Counter())[lifecycle] += 1
        for old in [m for m in minutes if m < first]:
            del minutes[old]

    def window(self, tenant: str, now_ms: int) -> list[dict[str, Any]]:
        """One entry per minute of the window, oldest first (minutes without any: zeros)."""
        current = now_ms // MINUTE_MS
        minutes = self._counts.get(tenant, {})
        out = []
        for minute in range(current - WINDOW_MINUTES + 1, current + 1):
            by_lifecycle = minutes.get(minute, Counter())
            out.append(
                {
                    "at": ms_to_rfc3339(minute * MINUTE_MS),
                    "count": sum(by_lifecycle.values()),
                    "by_lifecycle": dict(sorted(by_lifecycle.items())),
                }
            )
        return out


class StageFeed:
    """Reads the stage-change topic (every partition, no group) for the console's live views."""

    def __init__(self, worker: Worker, clock_ms: Callable[[], int]) -> None:
        self.worker = worker
        self.clock_ms = clock_ms
        self.topic = worker.topology.outbound.stage_changes.name
        self.counts = MinuteCounts()
        self.counting_since: int | None = None
        #: tenant -> queues of the open streams (with their contact filter)
        self._subscribers: dict[str, set[tuple[asyncio.Queue[bytes], str | None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    def ensure_started(self) -> None:
        if self._task is None and not self.closing.is_set():
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """End the open streams (an empty message ends each) and the consumer."""
        self.closing.set()
        for subscribers in self._subscribers.values():
            for queue, _ in subscribers:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(b"")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def subscribe(self, tenant: str, contact_id: str | None) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.setdefault(tenant, set()).add((queue, contact_id))
        return queue

    def unsubscribe(self, tenant: str, queue: asyncio.Queue[bytes]) -> None:
        subscribers = self._subscribers.get(tenant, set())
        for entry in [e for e in subscribers if e[0] is queue]:
            subscribers.discard(entry)
        if not subscribers:
            self._subscribers.pop(tenant, None)

    def handle(self, value: bytes | None, live: bool) -> None:
        """One record of the topic: counted, and pushed to the tenant's open streams if
        ``live`` (read after the start's catch-up)."""
        try:
            record = orjson.loads(value or b"")
            tenant = record["tenant"]
            occurred_ms = parse_timestamp_ms(record["occurred_at"])
            lifecycle = str(record.get("lifecycle") or "")
            contact_id = record["contact_id"]
        except Exception:
            # the topic is this service's own output: a record it cannot read is a defect
            self.worker.metrics.errors.labels(where="console").inc()
            log.warning("console: an unreadable record in %s skipped", self.topic)
            return
        self.counts.add(tenant, occurred_ms, lifecycle, self.clock_ms())
        if not live:
            return
        message = b"event: transition\ndata: " + orjson.dumps(record) + b"\n\n"
        for queue, wanted in list(self._subscribers.get(tenant, ())):
            if wanted is not None and wanted != contact_id:
                continue
            # a stream that does not read loses changes; its page re-reads every 30 s anyway
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(message)

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        attempt = 0
        log.info("console: starting the stage-change feed")
        while not self.closing.is_set():
            consumer = None
            try:
                settings = self.worker.settings
                consumer = AIOKafkaConsumer(
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="latest",
                    **aiokafka_options(settings),
                )
                await consumer.start()
                # without a group, a subscription is assigned every partition of the topic
                consumer.subscribe([self.topic])
                for _ in range(600):  # the topic's metadata, within a minute (else restart)
                    if consumer.assignment():
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise TimeoutError(f"no partitions of {self.topic} assigned")
                tps = sorted(consumer.assignment())
                start = self.clock_ms() - WINDOW_MINUTES * MINUTE_MS
                offsets = await consumer.offsets_for_times(dict.fromkeys(tps, start))
                ends = await consumer.end_offsets(tps)
                for tp in tps:
                    found = offsets.get(tp)
                    if found is None:
                        consumer.seek(tp, ends[tp])
                    else:
                        consumer.seek(tp, found.offset)
                if self.counting_since is None:
                    self.counting_since = start
                log.info(
                    "console: reading %s (%d partitions) from %s",
                    self.topic,
                    len(tps),
                    ms_to_rfc3339(start),
                )
                attempt = 0
                while not self.closing.is_set():
                    batches = await consumer.getmany(timeout_ms=1000, max_records=2000)
                    for tp, records in batches.items():
                        for record in records:
                            self.handle(record.value, record.offset >= ends.get(tp, 0))
            except asyncio.CancelledError:
                raise
            except Exception:
                attempt += 1
                self.worker.metrics.errors.labels(where="console").inc()
                log.exception("console: the stage-change feed failed; restarting it")
                await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
            finally:
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await consumer.stop()


# ----------------------------------------------------------------------------- the pages
class Console:
    """The console's page and its three endpoints on the worker's web server."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.feed = StageFeed(worker, worker.clock_ms)
        self.model = orjson.dumps(describe_model(worker.model))

    def _respond(self, view: View, body: Any, status: int = 200, **headers: str) -> Response:
        return view.bytes(orjson.dumps(body), content_type=_JSON, status=status, headers=headers)

    def _denied(self, view: View, request: Request, tenant: str) -> Response | None:
        """401 without a valid token, 404 for a tenant the token may not read, 400 for a
        malformed tenant (the segment API's answers); None if the request may go on."""
        auth = self.worker.auth
        if auth is not None:
            try:
                tenants = auth.tenants(request.headers.get("Authorization"))
            except Unauthorized as exc:
                self.worker.metrics.api_auth_failures.inc()
                body = {"error": "unauthorized", "message": exc.message}
                return self._respond(view, body, 401, **{"WWW-Authenticate": _CHALLENGE})
            if not TokenAuth.may_read(tenants, tenant):
                return self._respond(view, {"error": "tenant not found", "tenant": tenant}, 404)
        if not _TENANT.fullmatch(tenant):
            return self._respond(view, {"error": "invalid tenant", "tenant": tenant}, 400)
        return None

    def page(self, view: View, name: str) -> Any:
        if name not in FILES:
            return view.bytes(b"not found", content_type="text/plain", status=404)
        body = (STATIC / name).read_bytes()
        return aioweb.Response(
            body=body, content_type=FILES[name], charset="utf-8", headers=PAGE_HEADERS
        )

    def rates(self, view: View, request: Request, tenant: str) -> Response:
        denied = self._denied(view, request, tenant)
        if denied is not None:
            return denied
        self.feed.ensure_started()
        now = self.worker.clock_ms()
        since = self.feed.counting_since
        body = {
            "tenant": tenant,
            "as_of": ms_to_rfc3339(now),
            "counting_since": None if since is None else ms_to_rfc3339(since),
            "minutes": self.feed.counts.window(tenant, now),
        }
        return self._respond(view, body)

    async def stream(self, view: View, request: Request, tenant: str) -> Any:
        denied = self._denied(view, request, tenant)
        if denied is not None:
            return denied
        feed = self.feed
        feed.ensure_started()
        contact_id = request.query.get("contact_id") or None
        response = aioweb.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)  # type: ignore[arg-type]
        queue = feed.subscribe(tenant, contact_id)
        ends = time.monotonic() + STREAM_SECONDS
        try:
            await response.write(b"retry: 2000\nevent: ready\ndata: {}\n\n")
            while not feed.closing.is_set() and time.monotonic() < ends:
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    message = b": keep-alive\n\n"
                if not message:
                    break  # the worker stops
                await response.write(message)
        except ConnectionError:
            pass  # the page went away
        finally:
            feed.unsubscribe(tenant, queue)
        return response

    def register(self) -> None:
        console = self
        app = self.worker.app

        @app.page("/console")
        class ConsolePage(View):
            async def get(self, request: Request) -> Any:
                return console.page(self, "index.html")

        @app.page("/console/{name}")
        class ConsoleFile(View):
            async def get(self, request: Request, name: str) -> Any:
                return console.page(self, name)

        @app.page("/v1/tenants/{tenant}/model")
        class ModelPage(View):
            async def get(self, request: Request, tenant: str) -> Response:
                denied = console._denied(self, request, tenant)
                if denied is not None:
                    return denied
                console.feed.ensure_started()
                return self.bytes(console.model, content_type=_JSON)

        @app.page("/v1/tenants/{tenant}/transitions/per-minute")
        class RatesPage(View):
            async def get(self, request: Request, tenant: str) -> Response:
                return console.rates(self, request, tenant)

        @app.page("/v1/tenants/{tenant}/stage-changes")
        class StreamPage(View):
            async def get(self, request: Request, tenant: str) -> Any:
                return await console.stream(self, request, tenant)

        async def on_shutdown(*args: Any, **kwargs: Any) -> None:
            await console.feed.stop()

        app.on_before_shutdown.connect(on_shutdown)
