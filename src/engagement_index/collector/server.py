"""Running the collector: build it from settings, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from prometheus_client import CollectorRegistry

from engagement_index.collector.app import Collector
from engagement_index.collector.publisher import Publisher
from engagement_index.collector.segment import load_event_map
from engagement_index.collector.settings import CollectorSettings
from engagement_index.errors import BrokerError
from engagement_index.metrics import CollectorMetrics
from engagement_index.settings import Settings
from engagement_index.topology import load_topology


def build_collector(settings: CollectorSettings, kafka: Settings) -> Collector:
    """A collector wired from settings (keys, topology, event map, producer, metrics)."""
    return Collector(
        settings=settings,
        keys=settings.keys(),
        topology=load_topology(kafka.topology_file),
        event_map=load_event_map(settings.event_map_file),
        publisher=Publisher(kafka, settings.publish_timeout_seconds),
        metrics=CollectorMetrics(CollectorRegistry()),
    )


async def serve(collector: Collector, bind: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop the producer (flushing it)."""
    runner = web.AppRunner(collector.app(), access_log=None, handle_signals=False)
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
    try:
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(failed.wait())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
    finally:
        await runner.cleanup()
    if failed.is_set():
        raise BrokerError(collector.publisher.failure or "Kafka refused the collector")


def run_server(settings: CollectorSettings, kafka: Settings) -> None:
    """Blocking entry point used by the CLI."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    collector = build_collector(settings, kafka)
    asyncio.run(serve(collector, settings.bind, settings.port))
