"""Publishing to Kafka (aiokafka): a connection loop, readiness that follows the broker, and a
bounded stop.

Until the producer is connected, and whenever it is not *ready*, every ingest request answers
503 at once and nothing is queued. Ready means the broker answered the producer within the last
``ready_max_age_s`` seconds: an acknowledged publish, or the answer to a metadata request the
publisher sends every ``probe_interval_s`` seconds (so an idle collector stays ready and a dead
broker is noticed without traffic). When ready, a request gets its 2xx only when the broker has
acknowledged (``acks=all``) every one of its records, and 503 when that does not happen within
``publish_timeout_seconds``.

The producer is not idempotent, so aiokafka drops a record it could not deliver within the
publish timeout (an idempotent producer retries a record for ever: during an outage the records
of requests already answered 503 piled up, were published when the broker came back, and kept
``stop()`` waiting). A request that timed out may still have had some records written: the
sender retries and the worker drops the duplicates by ``event_id``.

An outage is logged once when it starts, once per ``outage_log_interval_s`` while it lasts
(with the number of requests refused) and once when it ends; aiokafka's own per-retry lines are
folded by :class:`RepeatFilter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from aiokafka import AIOKafkaProducer

from engagement_index.errors import BrokerError
from engagement_index.kafka_security import access_problem, aiokafka_options
from engagement_index.settings import Settings

log = logging.getLogger("engagement_index.collector")

#: one record to publish: topic, key, value, headers
Record = tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]]]


class PublishError(BrokerError):
    """The records could not be published (not connected, timeout, broker error)."""


class RepeatFilter(logging.Filter):
    """Lets one record per (logger, level, message template) through per ``interval_s``.

    The first record after a quiet interval carries the number of records folded since the
    last one that got through. Only records of loggers under ``prefixes`` are folded.
    """

    def __init__(
        self,
        interval_s: float,
        prefixes: Iterable[str] = ("aiokafka",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.prefixes = tuple(prefixes)
        self.clock = clock
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return False
        folded = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        if folded:
            record.msg = f"{record.msg} [{folded} more like this in the last {self.interval_s:g}s]"
        return True


class OutageLog:
    """Logs a broker outage once when it starts, once per interval, and once when it ends."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.since: float | None = None
        self._last_line = 0.0
        self.refused = 0
        self._refused_logged = 0

    def down(self, reason: str) -> None:
        """A publish failed, or the broker stopped answering."""
        now = self.clock()
        if self.since is None:
            self.since, self._last_line = now, now
            self.refused = self._refused_logged = 0
            log.warning("Kafka unavailable (%s): ingest requests are answered 503", reason)
        elif now - self._last_line >= self.interval_s:
            self._last_line = now
            log.warning(
                "Kafka still unavailable after %.0fs (%s): %d requests answered 503 in the "
                "last %.0fs",
                now - self.since,
                reason,
                self.refused - self._refused_logged,
                self.interval_s,
            )
            self._refused_logged = self.refused

    def refusal(self, reason: str) -> None:
        """A request was answered 503."""
        self.down(reason)
        self.refused += 1

    def up(self) -> None:
        """The broker answered again."""
        if self.since is None:
            return
        log.warning(
            "Kafka available again after %.1fs; %d requests were answered 503",
            self.clock() - self.since,
            self.refused,
        )
        self.since = None


class Publisher:
    """One aiokafka producer shared by every request, with readiness and a bounded stop."""

    def __init__(
        self,
        settings: Settings,
        timeout_s: float,
        *,
        ready_max_age_s: float = 5.0,
        probe_interval_s: float = 1.0,
        outage_log_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._options = aiokafka_options(settings)
        self._timeout_s = timeout_s
        self.ready_max_age_s = ready_max_age_s
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()  # set with ``failure`` when retrying cannot help
        self.failure: str | None = None
        self.stopping = False
        self.last_answer = 0.0  # clock time of the broker's last ack or metadata answer
        self.outage = OutageLog(outage_log_interval_s, clock)
        self.topics: list[str] = []  # topics to keep metadata of (set by the collector)
        self._pending: set[asyncio.Future[object]] = set()
        self._settings = settings

    # ------------------------------------------------------------------ readiness
    @property
    def ready(self) -> bool:
        """Connected, not stopping, and the broker answered within ``ready_max_age_s``."""
        if self.stopping or self._producer is None:
            return False
        return self._clock() - self.last_answer <= self.ready_max_age_s

    @property
    def state(self) -> str:
        """``connected``, ``unreachable``, ``connecting`` or ``stopping`` (for ``/readyz``)."""
        if self.stopping:
            return "stopping"
        if self._producer is None:
            return "connecting"
        return "connected" if self.ready else "unreachable"

    def _answered(self) -> None:
        self.last_answer = self._clock()
        self.outage.up()

    async def start(self) -> None:
        """Begin connecting in the background (returns at once)."""
        self._task = asyncio.create_task(self._run(), name="kafka-connect")

    async def _run(self) -> None:
        if await self._connect():
            await self._probe_loop()

    async def _connect(self) -> bool:
        delay = 0.5
        while True:
            producer = AIOKafkaProducer(
                client_id="engagement-index-collector",
                acks="all",
                enable_idempotence=False,
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
                    return False
                self.outage.down(f"not reachable: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._producer = producer
            if self.topics:
                producer.client.set_topics(self.topics)
            self._answered()
            self.connected.set()
            log.info("Kafka producer connected")
            return True

    async def _probe_loop(self) -> None:
        """Ask for metadata every ``probe_interval_s``; an answer keeps the collector ready."""
        while self._producer is not None and not self.stopping:
            await asyncio.sleep(self.probe_interval_s)
            producer = self._producer
            if producer is None or self.stopping:
                return
            try:
                async with asyncio.timeout(max(self.probe_interval_s, 1.0)):
                    answered = await producer.client.force_metadata_update()
            except TimeoutError:
                answered = False
            if answered:
                self._answered()
            elif not self.ready:
                self.outage.down("the broker does not answer metadata requests")

    # ------------------------------------------------------------------ publishing
    async def publish(self, records: Sequence[Record]) -> None:
        """Send ``(topic, key, value, headers)`` records and wait for every ack;
        ``PublishError`` else."""
        producer = self._producer
        if producer is None:
            raise PublishError("not connected to Kafka yet")
        if not self.ready:
            raise PublishError(
                "shutting down"
                if self.stopping
                else f"Kafka did not answer in the last {self.ready_max_age_s:g}s"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        futures: list[asyncio.Future[object]] = []
        try:
            async with asyncio.timeout(self._timeout_s):  # send() waits while the buffer is full
                for topic, key, value, headers in records:
                    future = await producer.send(
                        topic, value=value, key=key, headers=list(headers) or None
                    )
                    self._pending.add(future)
                    future.add_done_callback(self._settle)
                    futures.append(future)
            # wait without cancelling: a record not acked in time stays tracked until the
            # producer drops it (or ``stop()`` gives it up)
            _, late = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise PublishError(f"no ack from Kafka within {self._timeout_s:g}s") from None
        except Exception as exc:
            raise PublishError(f"Kafka refused the records: {exc}") from exc
        if late:
            raise PublishError(f"no ack from Kafka within {self._timeout_s:g}s")
        for future in futures:
            if future.exception() is not None:
                raise PublishError(f"Kafka refused the records: {future.exception()}")
        self._answered()

    def _settle(self, future: asyncio.Future[object]) -> None:
        self._pending.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: a failure nobody waits for is not logged as lost

    def refused(self, reason: str) -> None:
        """Note a request answered 503 (for the outage log)."""
        self.outage.refusal(reason)

    # ------------------------------------------------------------------ stopping
    def begin_stop(self) -> None:
        """From now on ``/readyz`` answers 503 and ingest requests are refused at once."""
        self.stopping = True

    async def stop(self, timeout_s: float = 5.0) -> int:
        """Close the producer within ``timeout_s``; returns the number of records given up.

        Called once the HTTP side has answered every request: a record still queued then
        belongs to a request that was answered 503. The producer drops such a record as soon as
        a send of it fails after its publish timeout (within ``retry_backoff`` while the broker
        is down), so closing takes about that long; past ``timeout_s`` the producer is left
        unclosed and whatever it still holds is given up.
        """
        self.stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        producer, self._producer = self._producer, None
        if producer is None:
            return 0
        queued = sum(1 for future in self._pending if not future.done())
        if queued:
            log.warning(
                "stopping: %d records of requests answered 503 are still queued; the producer "
                "drops them at their next failed send",
                queued,
            )
        try:
            async with asyncio.timeout(timeout_s):
                await producer.stop()
        except TimeoutError:
            log.warning("stopping: the Kafka producer did not close within %.1fs", timeout_s)
        given_up = sum(1 for future in self._pending if not future.done())
        self._pending.clear()
        return given_up
