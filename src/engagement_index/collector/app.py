"""The collector's aiohttp application: routes, limits, auth, and publishing.

Every ingest route validates the request first, then publishes every resulting record and
answers 2xx only after the broker acknowledged all of them (503 otherwise, so the sender
retries). A batch is validated item by item: the good items are published, each refused item
goes to the dead-letter topic with its reason, and the answer says how many were refused.
Errors are JSON: ``{"success": false, "code", "message", "field"}``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from pydantic_core import from_json, to_json

from engagement_index.collector.errors import (
    RequestRejected,
    invalid,
    message_of,
    too_large,
    unauthorized,
)
from engagement_index.collector.machine import MACHINE_OPEN, OPEN, machine_open_signal
from engagement_index.collector.models import SegmentBatch, SegmentMessage
from engagement_index.collector.pixel import (
    GIF,
    NO_CACHE_HEADERS,
    PixelInvalid,
    verify_pixel,
)
from engagement_index.collector.publisher import Publisher, PublishError
from engagement_index.collector.segment import (
    DEAD_LETTER,
    IDENTITY,
    EventMap,
    Outgoing,
    channel_of,
    encode_event,
    map_message,
)
from engagement_index.collector.settings import CollectorKeys, CollectorSettings
from engagement_index.collector.webhooks import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    load_ecdsa_public_key,
    map_mailgun,
    map_sendgrid,
    parse_mailgun,
    verify_mailgun,
    verify_sendgrid,
)
from engagement_index.core.events import CanonicalEvent, ContactKey
from engagement_index.core.timestamps import parse_rfc3339
from engagement_index.metrics import CollectorMetrics
from engagement_index.topology import Topology

log = logging.getLogger("engagement_index.collector")

SEGMENT_CALLS = ("track", "page", "screen", "identify", "group", "alias")
MAX_WEBHOOK_BYTES = 4 * 1024 * 1024
#: refused batch items listed in the answer (the count is always complete)
MAX_LISTED_ERRORS = 50
MAX_DLQ_MESSAGE_CHARS = 1000
_INFLATE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _Inflater:
    """Streaming gzip/deflate decoding that never produces more than ``limit + 1`` bytes.

    gzip: concatenated members are decoded one after another. deflate: the zlib format, or
    a raw deflate stream (as some clients send) when the first bytes are not a zlib header.
    """

    def __init__(self, encoding: str, limit: int) -> None:
        self.wbits = _INFLATE[encoding]
        self.limit = limit
        self.out = 0
        self.started = False
        self._obj = zlib.decompressobj(self.wbits)

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data:
            if self._obj.eof:
                if self.wbits != _INFLATE["gzip"]:
                    raise zlib.error("data after the end of the deflate stream")
                self._obj = zlib.decompressobj(self.wbits)
            try:
                out += self._obj.decompress(data, self.limit + 1 - self.out - len(out))
            except zlib.error:
                if self.started or self.wbits != zlib.MAX_WBITS:
                    raise
                self.wbits = -zlib.MAX_WBITS  # raw deflate, no zlib header
                self._obj = zlib.decompressobj(self.wbits)
                continue
            self.started = True
            if self.out + len(out) > self.limit:
                break  # the caller refuses the body
            data = self._obj.unconsumed_tail or (self._obj.unused_data if self._obj.eof else b"")
        self.out += len(out)
        return bytes(out)

    def finish(self) -> bytes:
        if not self._obj.eof:
            raise zlib.error("the compressed body is truncated")
        return b""


_OK = {"success": True}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def loc_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """``('batch', 3, 'userId')`` -> ``batch[3].userId``."""
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validation_error(exc: ValidationError, prefix: str = "") -> RequestRejected:
    err = exc.errors(include_url=False)[0]
    return invalid(loc_path(err["loc"], prefix) or None, message_of(err))


def _json_error(exc: RequestRejected) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="collector"'} if exc.status == 401 else None
    return web.json_response(exc.body(), status=exc.status, headers=headers)


class Collector:
    """The HTTP collector: build with settings and collaborators, then ``app()``."""

    def __init__(
        self,
        settings: CollectorSettings,
        keys: CollectorKeys,
        topology: Topology,
        event_map: EventMap,
        publisher: Publisher,
        metrics: CollectorMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.event_map = event_map
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self.topics: dict[str, str] = {
            channel: spec.name for channel, spec in topology.inbound.items()
        }
        self.topics[IDENTITY] = topology.outbound.identities.name
        self.topics[DEAD_LETTER] = topology.outbound.dead_letters.name
        publisher.topics = sorted(set(self.topics.values()))
        self.shutdown_deadline: float | None = None
        self.sendgrid_keys = {
            tenant: load_ecdsa_public_key(text)
            for tenant, text in keys.sendgrid_public_keys.items()
        }
        self.tenants = keys.tenants

    # ------------------------------------------------------------------ wiring
    def app(self) -> web.Application:
        """The aiohttp application (the publisher is started and stopped with it)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_WEBHOOK_BYTES)
        routes = [web.post(f"/v1/{call}", self._segment_call(call)) for call in SEGMENT_CALLS]
        routes += [
            web.post("/v1/batch", self._segment_call("batch")),
            web.post("/v1/import", self._segment_call("batch")),
            web.get("/p.gif", self._pixel, allow_head=False),
            web.head("/p.gif", self._pixel_head),
            web.post("/webhooks/sendgrid/{tenant}", self._sendgrid),
            web.post("/webhooks/mailgun/{tenant}", self._mailgun),
            web.get("/healthz", self._healthz),
            web.get("/readyz", self._readyz),
            web.get("/metrics", self._metrics),
        ]
        app.add_routes(routes)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        if not self.settings.sendgrid_verify:
            log.warning(
                "SendGrid signature verification is OFF: anyone who knows a tenant's webhook URL "
                "can post email events for it (set ENGAGEMENT_INDEX_COLLECTOR_SENDGRID_VERIFY=1)"
            )
        await self.publisher.start()

    def begin_shutdown(self, deadline: float) -> None:
        """SIGTERM: ``/readyz`` and new ingest requests answer 503 from now on; the producer
        must be closed by ``deadline`` (``time.monotonic()``)."""
        self.shutdown_deadline = deadline
        self.publisher.begin_stop()

    async def _on_cleanup(self, _app: web.Application) -> None:
        remaining = 5.0
        if self.shutdown_deadline is not None:
            remaining = self.shutdown_deadline - time.monotonic()
        await self.publisher.stop(max(0.5, remaining))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        label = route.canonical if route is not None else "other"
        try:
            response = await handler(request)
        except RequestRejected as exc:
            self.metrics.rejected.labels(_source(label), exc.reason).inc()
            response = _json_error(exc)
        except web.HTTPException as exc:
            response = exc
        except Exception:
            log.exception("unexpected error on %s", label)
            response = web.json_response(
                {"success": False, "code": "internal_error", "message": "internal error"},
                status=500,
            )
        self.metrics.requests.labels(label, str(response.status)).inc()
        return response

    # ------------------------------------------------------------------ helpers
    async def _body(self, request: web.Request, limit: int) -> bytes:
        """The (decompressed) body, at most ``limit`` bytes; 413 beyond, 415 for an encoding
        other than gzip/deflate/identity, answered before anything is read or decoded. aiohttp
        does not decompress (``auto_decompress=False``): the body is inflated here as it
        streams in, so the limit applies to the inflated size and a compression bomb stops at
        the limit."""
        header = request.headers.get("Content-Encoding", "")
        codings = [c.strip().lower() for c in header.split(",")]
        codings = [c for c in codings if c not in ("", "identity")]
        if len(codings) > 1 or (codings and codings[0] not in _INFLATE):
            raise RequestRejected(
                415,
                "unsupported_encoding",
                f"Content-Encoding {header.strip()!r} is not supported (use gzip, deflate or "
                "identity)",
            )
        encoding = codings[0] if codings else None
        if request.content_length is not None and request.content_length > limit:
            raise too_large(None, f"the body is {request.content_length} bytes, limit {limit}")
        inflater = _Inflater(encoding, limit) if encoding else None
        buf = bytearray()
        received = 0
        try:
            async for chunk in request.content.iter_chunked(64 * 1024):
                received += len(chunk)
                buf += chunk if inflater is None else inflater.feed(chunk)
                if received > limit or len(buf) > limit:
                    raise too_large(None, f"the body is larger than the limit of {limit} bytes")
            if inflater is not None:
                buf += inflater.finish()
        except zlib.error as exc:
            raise invalid(None, f"the {encoding} body cannot be decompressed: {exc}") from None
        if len(buf) > limit:
            raise too_large(None, f"the body is larger than the limit of {limit} bytes")
        return bytes(buf)

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return from_json(body, allow_inf_nan=False)
        except ValueError as exc:
            raise RequestRejected(
                400, "invalid_json", f"the body is not valid JSON: {exc}", None, "invalid_json"
            ) from None

    def _write_key_tenant(self, request: web.Request) -> str | None:
        """The tenant of the Basic-auth write key; None without a header; 401 if unknown."""
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise unauthorized("use HTTP Basic auth with the write key as the user name")
        try:
            user = base64.b64decode(value.strip(), validate=True).decode("utf-8").split(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized("malformed Basic auth header") from None
        tenant = self.keys.write_keys.get(user)
        if tenant is None:
            raise unauthorized("unknown write key")
        return tenant

    async def _publish(self, source: str, records: list[Outgoing]) -> None:
        if not records:
            return
        started = time.perf_counter()
        try:
            await self.publisher.publish(
                [(self.topics[r.channel], r.key, r.value, r.headers) for r in records]
            )
        except PublishError as exc:
            self.publisher.refused(str(exc))  # logged once per outage interval, not per request
            raise RequestRejected(
                503, "unavailable", f"events not accepted, retry later: {exc}", None, "kafka"
            ) from None
        self.metrics.publish_latency.labels(source).observe(time.perf_counter() - started)
        for record in records:
            if record.channel == DEAD_LETTER:
                failure = dict(record.headers).get("dlq.failure.type", b"").decode()
                self.metrics.dead_letters.labels(source, failure).inc()
            else:
                self.metrics.events_published.labels(source, record.channel).inc()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), tz=UTC)

    # ------------------------------------------------------------------ Segment
    def _segment_call(self, call: str) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            return await self._segment(request, call)

        return handle

    async def _segment(self, request: web.Request, call: str) -> web.Response:
        tenant = self._write_key_tenant(request)
        limit = self.settings.max_batch_bytes if call == "batch" else self.settings.max_event_bytes
        payload = self._json(await self._body(request, limit))
        if not isinstance(payload, dict):
            raise invalid(None, "the body must be a JSON object")
        if tenant is None:
            key = payload.get("writeKey")
            tenant = self.keys.write_keys.get(key) if isinstance(key, str) else None
            if tenant is None:
                raise unauthorized("a write key is required (Basic auth user name)")
        received = self._now()
        if call == "batch":
            records, refused = self._segment_batch(payload, tenant, received, request.path)
            await self._publish("segment", records)
            return web.json_response(
                {
                    "success": True,
                    "accepted": len(records) - len(refused),
                    "refused": len(refused),
                    **({"errors": refused[:MAX_LISTED_ERRORS]} if refused else {}),
                }
            )
        try:
            message = SegmentMessage.model_validate(payload)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        message = message.model_copy(update={"type": call})
        records = [
            map_message(
                message, payload, tenant=tenant, event_map=self.event_map, received=received
            )
        ]
        await self._publish("segment", records)
        return web.json_response(_OK)

    def _segment_batch(
        self, payload: dict[str, Any], tenant: str, received: datetime, route: str
    ) -> tuple[list[Outgoing], list[dict[str, Any]]]:
        """(records to publish, refused items) of a batch. The request as a whole is refused
        (400) only when the batch itself is malformed: not a non-empty list, a bad ``sentAt``
        or ``context``. Each item is validated on its own; a refused item becomes a
        dead-letter record among the records and an entry of the refused list."""
        items = payload.get("batch")
        try:  # the batch's own fields, with the items left to the loop below
            shell = (
                {**payload, "batch": [{} for _ in items]} if isinstance(items, list) else payload
            )
            batch = SegmentBatch.model_validate(shell)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        if batch.sentAt is not None:
            try:
                parse_rfc3339(batch.sentAt)
            except ValueError as exc:
                raise invalid("sentAt", f"{exc} (got {batch.sentAt[:40]!r})") from None
        raw_items: list[Any] = payload["batch"]
        limit = self.settings.max_event_bytes
        records: list[Outgoing] = []
        refused: list[dict[str, Any]] = []
        for i, item in enumerate(raw_items):
            where = f"batch[{i}]"
            encoded = to_json(item)
            try:
                if len(encoded) > limit:
                    raise too_large(where, f"{where} is {len(encoded)} bytes, limit {limit}")
                if not isinstance(item, dict):
                    raise invalid(where, "must be an object")
                try:
                    message = SegmentMessage.model_validate(item)
                except ValidationError as exc:
                    raise _validation_error(exc, where) from None
                records.append(
                    map_message(
                        message,
                        item,
                        tenant=tenant,
                        event_map=self.event_map,
                        received=received,
                        batch_sent_at=batch.sentAt,
                        batch_context=batch.context,
                        where=f"{where}.",
                    )
                )
            except RequestRejected as exc:
                error = {k: v for k, v in exc.body().items() if k != "success"}
                refused.append({"index": i, **error})
                records.append(self._dead_letter(tenant, item, encoded, exc, route, i))
        return records, refused

    def _dead_letter(
        self,
        tenant: str,
        item: Any,
        encoded: bytes,
        exc: RequestRejected,
        route: str,
        index: int,
    ) -> Outgoing:
        """A refused batch item on the dead-letter topic: its JSON as received, keyed by its
        contact when it names one, with the reason in headers (as the worker's dead letters)."""
        key = None
        if isinstance(item, dict):
            contact = item.get("userId") or item.get("anonymousId")
            if isinstance(contact, str | int) and not isinstance(contact, bool):
                key = ContactKey(tenant, str(contact)).encode()
        failure = "oversized" if exc.status == 413 else "schema_violation"
        headers = (
            ("dlq.source.collector", f"{route}#{index}".encode()),
            ("dlq.source.tenant", tenant.encode()),
            ("dlq.failure.type", failure.encode()),
            ("dlq.error.message", exc.message[:MAX_DLQ_MESSAGE_CHARS].encode("utf-8", "replace")),
            ("dlq.failure.time", self._now().isoformat().replace("+00:00", "Z").encode()),
        )
        return Outgoing(DEAD_LETTER, key, encoded, headers)

    # ------------------------------------------------------------------ pixel
    async def _pixel(self, request: web.Request) -> web.Response:
        now = self.clock()
        try:
            hit = verify_pixel(list(request.query.items()), self.keys.pixel_secrets, now)
            event_type, properties = hit.event_type, {"source": "pixel", **hit.properties}
            signal = None
            if event_type == OPEN:
                signal = machine_open_signal(
                    user_agent=request.headers.get("User-Agent"),
                    opened_at=now,
                    delivered_at=hit.sent_at,
                    window_s=self.settings.machine_open_window_seconds,
                )
                if signal is not None:
                    event_type, properties["machine_open"] = MACHINE_OPEN, signal
            try:
                channel = channel_of(event_type)
                event = CanonicalEvent(
                    event_id=hit.event_id or uuid.uuid4().hex,
                    tenant=hit.tenant,
                    contact_id=hit.contact_id,
                    type=event_type,
                    timestamp=datetime.fromtimestamp(now, tz=UTC),
                    account_id=hit.account_id,
                    properties=properties,
                )
            except (ValueError, ValidationError) as exc:
                raise PixelInvalid("invalid_event", str(exc)) from None
        except PixelInvalid as exc:
            self.metrics.pixel_invalid.labels(exc.reason).inc()
            log.info("pixel not published: %s", exc)
            return web.Response(body=GIF, headers=NO_CACHE_HEADERS)
        if channel == "custom":
            channel = self.event_map.custom_channel
        key = ContactKey(hit.tenant, hit.contact_id).encode()
        record = Outgoing(channel, key, encode_event(event))
        try:
            await self._publish("pixel", [record])
        except RequestRejected as exc:
            self.metrics.rejected.labels("pixel", exc.reason).inc()
            return web.Response(body=GIF, status=503, headers=NO_CACHE_HEADERS)
        if signal is not None:
            self.metrics.machine_opens.labels("pixel", signal).inc()
        return web.Response(body=GIF, headers=NO_CACHE_HEADERS)

    async def _pixel_head(self, _request: web.Request) -> web.Response:
        """``HEAD /p.gif``: link scanners and prefetchers check the image; nobody saw it, so
        nothing is published (the headers are those of the GIF)."""
        self.metrics.machine_opens.labels("pixel", "head").inc()
        return web.Response(body=GIF, headers=NO_CACHE_HEADERS)

    # ------------------------------------------------------------------ webhooks
    def _tenant(self, request: web.Request) -> str:
        tenant = request.match_info["tenant"]
        if tenant not in self.tenants:
            raise RequestRejected(404, "not_found", "unknown tenant", None, "unknown_tenant")
        return tenant

    async def _sendgrid(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        body = await self._body(request, MAX_WEBHOOK_BYTES)
        if self.settings.sendgrid_verify:
            key = self.sendgrid_keys.get(tenant)
            if key is None:
                raise unauthorized("no SendGrid verification key for this tenant", "no_key")
            verify_sendgrid(
                key,
                body,
                request.headers.get(SENDGRID_SIGNATURE_HEADER),
                request.headers.get(SENDGRID_TIMESTAMP_HEADER),
            )
        machine_opens: list[str] = []
        records, ignored = map_sendgrid(
            self._json(body),
            tenant=tenant,
            contact_field=self.settings.sendgrid_contact_field,
            machine_open_window_s=self.settings.machine_open_window_seconds,
            machine_opens=machine_opens,
        )
        await self._publish("sendgrid", records)
        if ignored:
            self.metrics.events_ignored.labels("sendgrid").inc(ignored)
        for signal in machine_opens:
            self.metrics.machine_opens.labels("sendgrid", signal).inc()
        return web.json_response({"success": True, "published": len(records), "ignored": ignored})

    async def _mailgun(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        signing_key = self.keys.mailgun_signing_keys.get(tenant)
        if signing_key is None:
            raise unauthorized("no Mailgun signing key for this tenant", "no_key")
        webhook = parse_mailgun(self._json(await self._body(request, MAX_WEBHOOK_BYTES)))
        verify_mailgun(signing_key, webhook)
        machine_opens: list[str] = []
        records = map_mailgun(
            webhook,
            tenant=tenant,
            contact_field=self.settings.mailgun_contact_field,
            machine_opens=machine_opens,
        )
        await self._publish("mailgun", records)
        for signal in machine_opens:
            self.metrics.machine_opens.labels("mailgun", signal).inc()
        if not records:
            self.metrics.events_ignored.labels("mailgun").inc()
        return web.json_response({"success": True, "published": len(records)})

    # ------------------------------------------------------------------ ops
    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        """200 while the collector can publish: the producer is connected and the broker
        answered it (an ack or a metadata request) within ``ready_max_age_seconds``; 503
        otherwise, and from SIGTERM on."""
        ready = self.publisher.ready
        self.metrics.producer_ready.set(1 if ready else 0)
        return web.json_response(
            {"ready": ready, "kafka": self.publisher.state}, status=200 if ready else 503
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        self.metrics.producer_ready.set(1 if self.publisher.ready else 0)
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )


def _source(route: str) -> str:
    if route.startswith("/v1/"):
        return "segment"
    if route == "/p.gif":
        return "pixel"
    if route.startswith("/webhooks/"):
        return route.split("/")[2]
    return "other"
