"""The collector's aiohttp application: routes, limits, auth, and publishing.

Every ingest route validates the whole request first, then publishes every resulting record and
answers 2xx only after the broker acknowledged all of them (503 otherwise, so the sender
retries). Errors are JSON: ``{"success": false, "code", "message", "field"}``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from pydantic import ValidationError
from pydantic_core import from_json, to_json

from engagement_index.collector.errors import (
    RequestRejected,
    invalid,
    message_of,
    too_large,
    unauthorized,
)
from engagement_index.collector.models import SegmentBatch, SegmentMessage
from engagement_index.collector.pixel import (
    GIF,
    NO_CACHE_HEADERS,
    PixelInvalid,
    verify_pixel,
)
from engagement_index.collector.publisher import Publisher, PublishError
from engagement_index.collector.segment import (
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
from engagement_index.metrics import CollectorMetrics
from engagement_index.topology import Topology

log = logging.getLogger("engagement_index.collector")

SEGMENT_CALLS = ("track", "page", "screen", "identify", "group", "alias")
MAX_WEBHOOK_BYTES = 4 * 1024 * 1024
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
            web.get("/p.gif", self._pixel),
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

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.publisher.stop()

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
        other than gzip/deflate. aiohttp inflates gzip/deflate bodies as they stream in, so
        the limit applies to the inflated size and a compression bomb stops at the limit."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise RequestRejected(
                415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported"
            )
        if (
            encoding in ("", "identity")
            and request.content_length is not None
            and request.content_length > limit
        ):
            raise too_large(None, f"the body is {request.content_length} bytes, limit {limit}")
        buf = bytearray()
        try:
            async for chunk in request.content.iter_chunked(64 * 1024):
                buf += chunk
                if len(buf) > limit:
                    raise too_large(None, f"the body is larger than the limit of {limit} bytes")
        except ContentEncodingError as exc:
            raise invalid(None, f"the {encoding} body cannot be decompressed: {exc}") from None
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
                [(self.topics[r.channel], r.key, r.value) for r in records]
            )
        except PublishError as exc:
            log.warning("publish failed for %s: %s", source, exc)
            raise RequestRejected(
                503, "unavailable", f"events not accepted, retry later: {exc}", None, "kafka"
            ) from None
        self.metrics.publish_latency.labels(source).observe(time.perf_counter() - started)
        for record in records:
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
            records = self._segment_batch(payload, tenant, received)
        else:
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
        self, payload: dict[str, Any], tenant: str, received: datetime
    ) -> list[Outgoing]:
        items = payload.get("batch")
        if isinstance(items, list):
            limit = self.settings.max_event_bytes
            for i, item in enumerate(items):
                size = len(to_json(item))
                if size > limit:
                    raise too_large(f"batch[{i}]", f"batch[{i}] is {size} bytes, limit {limit}")
        try:
            batch = SegmentBatch.model_validate(payload)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        raw_items: list[dict[str, Any]] = payload["batch"]
        return [
            map_message(
                message,
                raw_items[i],
                tenant=tenant,
                event_map=self.event_map,
                received=received,
                batch_sent_at=batch.sentAt,
                batch_context=batch.context,
                where=f"batch[{i}].",
            )
            for i, message in enumerate(batch.batch)
        ]

    # ------------------------------------------------------------------ pixel
    async def _pixel(self, request: web.Request) -> web.Response:
        now = self.clock()
        try:
            hit = verify_pixel(list(request.query.items()), self.keys.pixel_secrets, now)
            try:
                channel = channel_of(hit.event_type)
                event = CanonicalEvent(
                    event_id=hit.event_id or uuid.uuid4().hex,
                    tenant=hit.tenant,
                    contact_id=hit.contact_id,
                    type=hit.event_type,
                    timestamp=datetime.fromtimestamp(now, tz=UTC),
                    account_id=hit.account_id,
                    properties={"source": "pixel", **hit.properties},
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
        records, ignored = map_sendgrid(
            self._json(body), tenant=tenant, contact_field=self.settings.sendgrid_contact_field
        )
        await self._publish("sendgrid", records)
        if ignored:
            self.metrics.events_ignored.labels("sendgrid").inc(ignored)
        return web.json_response({"success": True, "published": len(records), "ignored": ignored})

    async def _mailgun(self, request: web.Request) -> web.Response:
        tenant = self._tenant(request)
        signing_key = self.keys.mailgun_signing_keys.get(tenant)
        if signing_key is None:
            raise unauthorized("no Mailgun signing key for this tenant", "no_key")
        webhook = parse_mailgun(self._json(await self._body(request, MAX_WEBHOOK_BYTES)))
        verify_mailgun(signing_key, webhook)
        records = map_mailgun(
            webhook, tenant=tenant, contact_field=self.settings.mailgun_contact_field
        )
        await self._publish("mailgun", records)
        if not records:
            self.metrics.events_ignored.labels("mailgun").inc()
        return web.json_response({"success": True, "published": len(records)})

    # ------------------------------------------------------------------ ops
    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready = self.publisher.connected.is_set()
        self.metrics.producer_ready.set(1 if ready else 0)
        return web.json_response(
            {"ready": ready, "kafka": "connected" if ready else "connecting"},
            status=200 if ready else 503,
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        self.metrics.producer_ready.set(1 if self.publisher.connected.is_set() else 0)
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
