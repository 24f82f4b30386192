"""Running the collector: build it from settings, serve until SIGTERM/SIGINT, stop in bounded time.

On SIGTERM (or SIGINT) the collector stops within ``shutdown_grace_seconds``: ``/readyz`` and
every new ingest request answer 503 at once, the listening socket closes, requests in flight
get their answer (each within ``publish_timeout_seconds``), then the producer closes. Records
still queued at that point belong to requests that were answered 503 and are given up (the
senders retry them). Nothing waits on a broker that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from aiohttp import web
from prometheus_client import CollectorRegistry

from engagement_index.collector.app import Collector
from engagement_index.collector.publisher import Publisher, RepeatFilter
from engagement_index.collector.segment import load_event_map
from engagement_index.collector.settings import CollectorSettings
from engagement_index.errors import BrokerError
from engagement_index.metrics import CollectorMetrics
from engagement_index.settings import Settings
from engagement_index.topology import load_topology

log = logging.getLogger("engagement_index.collector")


def build_collector(settings: CollectorSettings, kafka: Settings) -> Collector:
    """A collector wired from settings (keys, topology, event map, producer, metrics)."""
    return Collector(
        settings=settings,
        keys=settings.keys(),
        topology=load_topology(kafka.topology_file),
        event_map=load_event_map(settings.event_map_file),
        publisher=Publisher(
            kafka,
            settings.publish_timeout_seconds,
            ready_max_age_s=settings.ready_max_age_seconds,
            probe_interval_s=settings.probe_interval_seconds,
            outage_log_interval_s=settings.outage_log_interval_seconds,
        ),
        metrics=CollectorMetrics(CollectorRegistry()),
    )


def make_runner(collector: Collector) -> web.AppRunner:
    """The app runner: bodies are not decompressed by aiohttp (the collector does it, so an
    unsupported ``Content-Encoding`` is a 415 before anything tries to decode it), and
    in-flight requests get at most the publish timeout (and the grace period) to finish."""
    settings = collector.settings
    return web.AppRunner(
        collector.app(),
        access_log=None,
        handle_signals=False,
        auto_decompress=False,
        shutdown_timeout=min(settings.shutdown_grace_seconds, settings.publish_timeout_seconds + 1),
    )


async def serve(collector: Collector, bind: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop within the grace period."""
    runner = make_runner(collector)
    await runner.setup()
    site = web.TCPSite(runner, bind, port)
    await site.start()
    for address in runner.addresses:
        host, bound_port = address[0], address[1]
        print(f"collector listening on http://{host}:{bound_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    failed = collector.publisher.failed
    grace = collector.settings.shutdown_grace_seconds
    try:
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(failed.wait())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
    finally:
        began = time.monotonic()
        collector.begin_shutdown(began + grace)
        log.info("stopping (grace period %gs)", grace)
        try:
            async with asyncio.timeout(grace):
                await runner.cleanup()
        except TimeoutError:
            log.error("stopping: not done within the %gs grace period; exiting anyway", grace)
        log.info("stopped in %.1fs", time.monotonic() - began)
    if failed.is_set():
        raise BrokerError(collector.publisher.failure or "Kafka refused the collector")


def run_server(settings: CollectorSettings, kafka: Settings) -> None:
    """Blocking entry point used by the CLI."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    repeats = RepeatFilter(settings.outage_log_interval_seconds)
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeats)
    collector = build_collector(settings, kafka)
    asyncio.run(serve(collector, settings.bind, settings.port))
