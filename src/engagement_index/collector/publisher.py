"""Publishing to Kafka (aiokafka), with a connection loop so the HTTP side can start first.

Until the producer is connected every ingest request answers 503 at once; afterwards a request
gets its 2xx only when the broker has acknowledged (``acks=all``) every one of its records,
and 503 when that does not happen within ``publish_timeout_seconds``. A request that timed out
may still have had some records written: the sender retries and the worker drops the
duplicates by ``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from engagement_index.errors import BrokerError
from engagement_index.kafka_security import access_problem, aiokafka_options
from engagement_index.settings import Settings

log = logging.getLogger("engagement_index.collector")


class PublishError(BrokerError):
    """The records could not be published (not connected, timeout, broker error)."""


class Publisher:
    """One idempotent aiokafka producer shared by every request."""

    def __init__(self, settings: Settings, timeout_s: float) -> None:
        self._options = aiokafka_options(settings)
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()  # set with ``failure`` when retrying cannot help
        self.failure: str | None = None
        self._settings = settings

    async def start(self) -> None:
        """Begin connecting in the background (returns at once)."""
        self._task = asyncio.create_task(self._connect_loop(), name="kafka-connect")

    async def _connect_loop(self) -> None:
        delay = 0.5
        while True:
            producer = AIOKafkaProducer(
                client_id="engagement-index-collector",
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                request_timeout_ms=max(1000, int(self._timeout_s * 1000)),
                **self._options,
            )
            try:
                await producer.start()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                problem = await access_problem(self._settings)
                if problem is not None:  # wrong credentials or TLS trust: waiting cannot help
                    self.failure = str(problem)
                    log.error("%s", problem)
                    self.failed.set()
                    return
                log.warning("Kafka not reachable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._producer = producer
            self.connected.set()
            log.info("Kafka producer connected")
            return

    async def publish(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Send ``(topic, key, value)`` records and wait for every ack; ``PublishError`` else."""
        producer = self._producer
        if producer is None:
            raise PublishError("not connected to Kafka yet")
        try:
            async with asyncio.timeout(self._timeout_s):
                futures = [
                    await producer.send(topic, value=value, key=key)
                    for topic, key, value in records
                ]
                await asyncio.gather(*futures)
        except TimeoutError:
            raise PublishError(f"no ack from Kafka within {self._timeout_s:g}s") from None
        except Exception as exc:
            raise PublishError(f"Kafka refused the records: {exc}") from exc

    async def stop(self) -> None:
        """Stop connecting, flush and close the producer."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
