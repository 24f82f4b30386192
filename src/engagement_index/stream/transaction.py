"""A batch's table writes and their changelog records, committed as one unit.

What a Faust table does per key, done for a whole batch: one RocksDB write batch per table
partition, the changelog record of every key (raw key and value, a tombstone for a delete) on
the same partition, and, once the broker has acknowledged them, the offset of the last one
kept in the partition's database (where a recovery starts reading).

:meth:`TableTransaction.write_stores` writes the local stores;
:meth:`TableTransaction.send_changelog` produces the changelog records and awaits their
acknowledgements, raising :class:`~engagement_index.errors.BatchWriteError` if any was
refused or timed out; :meth:`TableTransaction.send_changelog_until_acked` sends the same
records again, with back-off, until they are acknowledged (the contact and account batches):
until then the batch's source records are not acknowledged, so no offset is committed past a
changelog that is behind the local store. (A crash in between is
covered by the re-delivery path: ``BatchScorer._rewrite`` writes the values of re-delivered
records again.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from faust.types import TP
from rocksdict import WriteBatch

from engagement_index.errors import BatchWriteError
from engagement_index.metrics import Metrics
from engagement_index.stream.produce import Record, SentGroup, send_batched

log = logging.getLogger(__name__)

T = TypeVar("T")

#: table key -> (index in the batch of the record that last touched it, value or None: delete)
Writes = dict[bytes, tuple[int, bytes | None]]


def retry_delay(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): 0.5 s doubling, at most 30 s."""
    return float(min(30.0, 0.5 * 2 ** (attempt - 1)))


async def until_done(
    process: Callable[[], Awaitable[T]], metrics: Metrics, where: str, what: str
) -> T:
    """Run ``process`` (one batch) until it returns, with back-off (:func:`retry_delay`), and
    give what it returned: no exception but a cancellation leaves. Each failure is logged and
    counted in ``engagement_batch_failures_total{step=...}`` (the ``BatchWriteError``'s step,
    else ``score``) and ``engagement_worker_errors_total{where=...}``; ``what`` names the
    batch in the log."""
    attempt = 0
    while True:
        try:
            return await process()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempt += 1
            step = exc.step if isinstance(exc, BatchWriteError) else "score"
            metrics.batch_failures.labels(step=step).inc()
            metrics.errors.labels(where=where).inc()
            delay = retry_delay(attempt)
            log.exception("%s failed (attempt %d); retrying in %.1fs", what, attempt, delay)
            await asyncio.sleep(delay)


def stored_value(table: Any, partition: int, key: bytes) -> bytes | None:
    """The value of ``key`` in the local store of ``table``'s ``partition`` (None: none)."""
    value = table.data._db_for_partition(partition).get(key)
    return bytes(value) if value is not None else None


class TableTransaction:
    """The writes of one batch to the worker's tables (see the module docstring)."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._stores: list[tuple[Any, str, dict[int, WriteBatch]]] = []
        self._changelog: list[Record] = []

    def stage(self, table: Any, writes: Writes, partition_of: Callable[[int], int]) -> None:
        """Add ``writes`` to ``table`` (a Faust table) to the transaction.

        Faust's key index (its cache of the partition of a key, for reads without a partition)
        is not kept: every read of these tables names its partition (:func:`stored_value`,
        ``_db_for_partition``). The tables' mapping API (``table[key]``, ``key in table``,
        ``get``, ``del``) is not to be used on them: without the index it looks in every
        partition's database and could find a copy a partition this worker no longer owns
        left behind."""
        if not writes:
            return
        store = table.data
        topic = table.changelog_topic.get_topic_name()
        batches: dict[int, WriteBatch] = {}
        changelog = self._changelog
        for key, (index, value) in writes.items():
            partition = partition_of(index)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = WriteBatch(raw_mode=True)
            if value is None:  # erased: a tombstone in the changelog
                batch.delete(key)
            else:
                batch.put(key, value)
            changelog.append((topic, key, value, partition, None, None))
        self._stores.append((store, topic, batches))

    def write_stores(self) -> None:
        """Write every staged write batch to its partition's database."""
        for store, _topic, batches in self._stores:
            for partition, batch in batches.items():
                store._db_for_partition(partition).write(batch)

    async def send_changelog(self) -> None:
        """Produce the changelog records and await them (``BatchWriteError`` if any fails)."""
        if not self._changelog:
            return
        try:
            groups = await send_batched(self._producer, self._changelog)
            await asyncio.gather(*(group.future for group in groups))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise BatchWriteError("changelog", exc) from exc
        stores = {topic: store for store, topic, _ in self._stores}
        for group in groups:
            _persist_offset(stores[group.topic], group)

    async def send_changelog_until_acked(self, metrics: Metrics, where: str) -> None:
        """:meth:`send_changelog` again, with back-off, until every record is acknowledged
        (the stores are written: the same records); each refusal is logged and counted in
        ``engagement_batch_failures_total{step="changelog"}`` and
        ``engagement_worker_errors_total{where=...}``."""
        attempt = 0
        while True:
            try:
                await self.send_changelog()
                return
            except BatchWriteError:
                attempt += 1
                metrics.batch_failures.labels(step="changelog").inc()
                metrics.errors.labels(where=where).inc()
                delay = retry_delay(attempt)
                log.exception(
                    "%d changelog records not acknowledged (attempt %d); "
                    "sending them again in %.1fs",
                    len(self._changelog),
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)


def _persist_offset(store: Any, group: SentGroup) -> None:
    """Keep the offset of the last acknowledged changelog record in the table's database."""
    store.set_persisted_offset(TP(group.topic, group.partition), group.last_offset())
