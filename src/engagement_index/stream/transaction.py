"""A batch's table writes and their changelog records, committed as one unit.

What a Faust table does per key, done for a whole batch: one RocksDB write batch per table
partition, the changelog record of every key (raw key and value, a tombstone for a delete) on
the same partition, and, once the broker has acknowledged them, the offset of the last one
kept in the partition's database (where a recovery starts reading).

:meth:`TableTransaction.commit` awaits the changelog acknowledgements and raises
:class:`~engagement_index.errors.BatchWriteError` if any record was refused or timed out, so
the batch fails, its source records are not acknowledged, and no offset is committed past it.
The local store may then be ahead of the changelog; the retry recognises the batch's records
as applied (by the per-source offsets in the stored values) and writes those values, and
their changelog records, again (``BatchScorer._rewrite``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from faust.types import TP
from rocksdict import WriteBatch

from engagement_index.errors import BatchWriteError
from engagement_index.stream.produce import Record, SentGroup, send_batched

#: table key -> (index in the batch of the record that last touched it, value or None: delete)
Writes = dict[bytes, tuple[int, bytes | None]]


class TableTransaction:
    """The writes of one batch to the worker's tables (see the module docstring)."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._stores: list[tuple[Any, str, dict[int, WriteBatch]]] = []
        self._changelog: list[Record] = []

    def stage(self, table: Any, writes: Writes, partition_of: Callable[[int], int]) -> None:
        """Add ``writes`` to ``table`` (a Faust table) to the transaction."""
        if not writes:
            return
        store = table.data
        key_index = store._key_index
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
                key_index.pop(key, None)
            else:
                batch.put(key, value)
                key_index[key] = partition
            changelog.append((topic, key, value, partition, None, None))
        self._stores.append((store, topic, batches))

    async def commit(self) -> None:
        """Write the stores, produce the changelog records and await their acknowledgements."""
        if not self._stores:
            return
        for store, _topic, batches in self._stores:
            for partition, batch in batches.items():
                store._db_for_partition(partition).write(batch)
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


def _persist_offset(store: Any, group: SentGroup) -> None:
    """Keep the offset of the last acknowledged changelog record in the table's database."""
    store.set_persisted_offset(TP(group.topic, group.partition), group.last_offset())
