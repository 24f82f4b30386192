"""Batch delivery for the hot path: a Faust consumer that hands whole fetches to one handler.

Faust delivers every record on its own: the consumer's drain loop starts two tasks per record
(``wait_first``), the conductor puts it on a channel queue, the stream takes it off, and the
agent's ``take_events`` rebuilds batches from it. That machinery costs far more than scoring a
record. :class:`BulkConsumer` keeps Faust's consumer (group membership, the co-partitioning
assignor, table recovery, commits) but, for the topics in ``BulkApp.bulk_topics``, collects
each fetch into one list and awaits ``BulkApp.bulk_handler`` with it. Records of every other
topic take Faust's normal per-record path, except changelog records: :func:`apply_changelog`
writes each fetch of them to the stores at once, for the partitions being recovered (and only
if no rebalance began since the fetch: see ``docs/reliability.md``).

Positions. A record of a bulk topic is scored only if it was fetched from a position Faust
set: after a rebalance, Faust's recovery resumes the stream partitions *before* it seeks them
to their committed offsets, and resumes its flow control only after that seek. A fetch that
began before the seek ended can hold records from a stale position (the partition's end, or
wherever another generation left it); scored, they would be applied out of order, and the
earlier records, re-read after the seek, would look like re-deliveries. So the consumer counts
its seeks. Records that arrive while the flow control is suspended wait for it, up to
``flow_control_wait_s`` (just dropping them would lose them: the fetch position has moved past
them). A fetch that overlapped a seek may mix records from before and after it, and a fetch
that waited in vain may be stale, so either is dropped unread and the partitions are sought to
their committed offsets once more (those without one to their first record, which aiokafka's
seek leaves alone): everything is fetched again, in order, and the records that were already
scored are recognised by their offsets in the stored state.

Delivery is unchanged: each record is tracked as unacknowledged before the handler runs (so
a rebalance waits for it, as ``stream_wait_empty`` does) and acknowledged only after the
handler returned, i.e. after its outputs were acknowledged by the broker and its state was
written, and only when the future it returns is done (the worker's changelog records, sent
in the background while the next fetch is scored, acknowledged). Faust commits
acknowledged offsets only, so a crash re-delivers the whole batch.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, cast

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from faust import stores
from faust.stores import rocksdb as faust_rocksdb
from faust.tables import TableManager
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from rocksdict import WriteBatch

log = logging.getLogger(__name__)

#: the bulk topics' handler: given a fetch, returns when it is scored, with a future; the
#: fetch's records are acknowledged when that is done (its changelog acknowledged)
BulkHandler = Callable[[Sequence[Message]], Awaitable["asyncio.Future[None]"]]


def apply_changelog(recovery: Any, messages: Sequence[Message]) -> None:
    """Apply a fetch of changelog records to the tables being recovered, in one batch each.

    Does what Faust's ``Recovery._slurp_changelogs`` does per record (track the offset read,
    write the record to the table's store with its persisted offset), for a whole fetch at
    once, and signals the end of recovery when every active partition reached its highwater.
    The writes are those of Faust's ``Store.apply_changelog_batch`` (one RocksDB write batch
    per table partition, raw keys and values, a delete for a tombstone, then the offset of the
    last record of each changelog partition kept in its database), built in the same pass over
    the records instead of a second one over wrappers of them.
    """
    active_tps = recovery.active_tps
    standby_tps = recovery.standby_tps
    tp_to_table = recovery.tp_to_table
    # changelog partition -> its write batch (for the table's store partition of the same
    # number) and the offset of the last record put in it
    batches: dict[TP, WriteBatch] = {}
    last: dict[TP, int] = {}
    now = time.monotonic()
    for message in messages:
        tp = message.tp
        if tp in active_tps:
            if not recovery.in_recovery:
                continue  # recovered: later records are this worker's own writes
            offsets = recovery.active_offsets
            recovery._active_events_received_at[tp] = now
        elif tp in standby_tps:
            offsets = recovery.standby_offsets
            recovery._standby_events_received_at[tp] = now
        else:
            continue  # not recovering this partition (any more): nothing to apply
        seen = offsets.get(tp)
        if seen is None or message.offset > seen:
            offsets[tp] = last[tp] = message.offset
            batch = batches.get(tp)
            if batch is None:
                batch = batches[tp] = WriteBatch(raw_mode=True)
            key, value = cast(bytes, message.key), message.value  # the table's key: never None
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
    for tp, batch in batches.items():
        store = tp_to_table[tp].data
        store._db_for_partition(tp.partition).write(batch)
        store.set_persisted_offset(tp, last[tp])
    recovery._last_flush_at = now
    if recovery.in_recovery and not recovery.need_recovery():
        recovery.flush_buffers()
        recovery._set_recovery_ended()
        # A pulse, as Faust's own loop gives (it clears the event before every record): the
        # waiting recovery wakes, and a later recovery does not find the event still set and
        # end before it has read anything.
        end = recovery.signal_recovery_end
        end.set()
        end.clear()


def _ack_when_sent(
    ack: Callable[[Message], bool], batch: Sequence[Message], done: asyncio.Future[None]
) -> None:
    """Acknowledge a batch's records once its changelog was acknowledged (not if the send
    was cancelled: the records are then fetched again after a restart or rebalance)."""
    if done.cancelled():
        return
    failure = done.exception()
    if failure is not None:  # not expected: the send is retried until acknowledged
        log.error("a batch's changelog send failed; its records are read again", exc_info=failure)
        return
    for message in batch:
        ack(message)


async def _seek_to_committed(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int | None]:
    """aiokafka's ``AIOKafkaConsumer.seek_to_committed`` with one request for all the assigned
    partitions (run on the consumer's thread): the committed offset of each (None: none), and
    a seek to it where it is above 0, as aiokafka leaves a partition at 0 or without one where
    it is (the reset policy's)."""
    partitions = consumer.assignment()
    if not partitions:
        return {}
    committed = await consumer._coordinator.fetch_committed_offsets(partitions)
    offsets: dict[TopicPartition, int | None] = {}
    for tp in partitions:
        found = committed.get(tp)
        offset = None if found is None or found.offset == -1 else found.offset
        offsets[tp] = offset
        if offset and offset > 0:
            consumer.seek(tp, offset)
    return offsets


class BulkConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a batch path for the app's bulk topics."""

    _seeks_started: int = 0
    _seeks_done: int = 0

    async def perform_seek(self) -> None:
        """Seek to the committed offsets, counting the seek (see the module docstring); the
        partitions without one to their first record only if a fetch was dropped unread since
        that was last done (otherwise their positions are the ends of what was handled, or
        not set yet: the reset policy's)."""
        self._seeks_started += 1
        try:
            await super().perform_seek()
            if self._positions_unsure:
                self._positions_unsure = False  # a drop from here on sets it again
                await self._seek_uncommitted_to_beginning()
        finally:
            self._seeks_done += 1
            self.dropped_unread = False  # the positions are where Faust set them again

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek every assigned partition to its committed offset, as aiokafka's
        ``seek_to_committed`` does (the same offsets, the same seeks, the same mapping back),
        with one OffsetFetch request for all of them: aiokafka asks partition after partition
        (sources, internal topics, changelogs), a round trip each, which at the end of a
        recovery of the benchmark's worker took 55-70 ms against 5-6 ms, and grows with the
        partitions a worker owns."""
        thread = cast(Any, self)._thread
        # typed as Faust declares it; the values are None for no commit, as aiokafka's are
        result: Mapping[TP, int] = await thread.call_thread(
            _seek_to_committed, thread._ensure_consumer()
        )
        return result

    async def _seek_uncommitted_to_beginning(self) -> None:
        """Move the bulk partitions that have no committed offset to their first record.

        aiokafka's ``seek_to_committed`` leaves such a partition where it is, which after a
        stale fetch can be anywhere (the app's reset policy is "earliest": start from the
        beginning, as the consumer would on its first assignment). A position only moves
        when a fetch returns records, and each returned record is either handled or dropped
        unread, so without a drop there is nothing to move back: the lookup of the earliest
        offsets (about 1.2 s for the 30 empty internal partitions at a recovery's end, as
        measured) is then skipped.
        """
        bulk_topics = cast(BulkApp, self.app).bulk_topics
        uncommitted = [
            TopicPartition(tp.topic, tp.partition)
            for tp in self.assignment()
            if tp.topic in bulk_topics and not self._read_offset.get(tp)
        ]
        if not uncommitted:
            return
        # the earliest offsets, then plain seeks: aiokafka's ``seek_to_beginning`` leaves the
        # position unset until its fetcher resolves it, and Faust's livelock check reads it
        earliest = await cast(Any, self)._thread.earliest_offsets(*uncommitted)
        for tp in uncommitted:
            offset = earliest.get(tp)
            if offset is not None:
                await self.seek(tp, offset)

    _dropped_unread: bool = False
    #: a fetch was dropped unread since the partitions without a committed offset were last
    #: moved to their first record (:meth:`_seek_uncommitted_to_beginning`)
    _positions_unsure: bool = False

    @property
    def dropped_unread(self) -> bool:
        """True from the moment a fetch's records are dropped unread until the next seek: the
        consumer's positions are then past records nobody scored (the decay hold-back must
        not read them as "read to the end")."""
        return self._dropped_unread

    @dropped_unread.setter
    def dropped_unread(self, value: bool) -> None:
        self._dropped_unread = value
        if value:
            self._positions_unsure = True

    def positions_are_reads(self) -> bool:
        """True when every position is the end of what was handed to the batch handler."""
        return not self.dropped_unread and self.seek_epoch() >= 0

    def seek_epoch(self) -> int:
        """The number of finished seeks, or -1 while a seek is under way."""
        return self._seeks_done if self._seeks_started == self._seeks_done else -1

    #: apply changelog records under recovery a fetch at a time (:func:`apply_changelog`);
    #: False: one by one through Faust's recovery queue
    bulk_recovery: bool = True

    #: how long a fetch waits for the flow control before it is dropped (and sought again)
    flow_control_wait_s: float = 1.0

    async def _wait_for_flow_control(self) -> None:
        """Wait until the app's flow control is resumed, the consumer flow stops, or we stop.

        Bounded, so that this loop, which also delivers the changelog records a recovery
        reads, never waits on the end of that recovery for long.
        """
        await self.wait_first(
            self.app.flow_control.acquire(),
            self.suspend_flow.wait(),
            timeout=self.flow_control_wait_s,
        )

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        app = cast(BulkApp, self.app)
        bulk_topics = app.bulk_topics
        handler = app.bulk_handler
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        acks_enabled_for = self.app.topics.acks_enabled_for
        track = self.track_message
        consumer_flow_stopped = self.suspend_flow.is_set
        flow_control_active = self.app.flow_control.is_active
        seek_epoch = self.seek_epoch
        ack = self.ack
        recovery: Any = cast(Any, self.app.tables).recovery
        # every changelog record takes the batch restore: one sent through Faust's queue instead
        # (its partition not yet under recovery when the fetch began) could be applied after
        # later records of its partition, and be skipped as already applied
        changelog_topics = (
            frozenset(cast(Any, self.app.tables).changelog_topics)
            if self.bulk_recovery
            else frozenset()
        )
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                batch: list[Message] = []
                read: dict[Any, int] = {}  # the batch's read offsets, kept if it is scored
                gaps: list[tuple[Any, int, int]] = []
                changelog: list[Message] = []
                epoch = seek_epoch()
                stale = epoch < 0
                dropped = False  # this fetch held records of bulk topics that were not handled
                generation = -1  # the consumer generation the fetch's changelog records are of
                await asyncio.sleep(0)
                if self.should_stop:
                    break
                async for tp, message in getmany(timeout=1.0):
                    if handler is not None and message.topic in bulk_topics:
                        if stale:
                            self.dropped_unread = dropped = True
                            continue
                        if not (flow_control_active() or consumer_flow_stopped()):
                            await self._wait_for_flow_control()
                        if (
                            consumer_flow_stopped()
                            or not flow_control_active()
                            or seek_epoch() != epoch
                        ):
                            # a rebalance stopped the flow, the flow control is still held,
                            # or a seek moved the positions since this fetch began: drop the
                            # fetch unread, it is fetched again (see the seek after the loop)
                            stale = True
                            self.dropped_unread = dropped = True
                            continue
                        offset = message.offset
                        r_offset = read.get(tp)
                        if r_offset is None:
                            r_offset = get_read_offset(tp)
                        if r_offset is not None and offset < r_offset:
                            continue  # already read (Faust drops these too)
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            gaps.append((tp, r_offset + 1, offset))
                        batch.append(message)
                        read[tp] = offset
                        continue
                    if message.topic in changelog_topics:
                        # applied at the end of the fetch if its partition is being recovered
                        # then (skipping what was applied already, by offset), so no read
                        # offset is kept for these
                        if not changelog:
                            generation = app.consumer_generation_id
                        changelog.append(message)
                        continue
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # already read (Faust drops these too)
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
                if (
                    changelog
                    and generation == app.consumer_generation_id
                    and not consumer_flow_stopped()
                ):
                    # Only if no rebalance began since they were fetched (Faust's loop drops
                    # records while the flow is stopped too): records fetched before a
                    # rebalance come from positions of before its recovery's seeks. Applied,
                    # they would move the recovered offsets past records that the new
                    # recovery then skipped. Dropped ones are read again after that seek.
                    apply_changelog(recovery, changelog)
                if stale or seek_epoch() != epoch:
                    if batch:
                        self.dropped_unread = dropped = True
                    batch = []
                    if dropped and not (consumer_flow_stopped() or self.should_stop):
                        self.log.info("dropped a fetch (a seek or a held flow); seeking again")
                        # some of the dropped records may have been fetched after the seek:
                        # the position is past them. Seek again; re-reads are recognised.
                        # (A fetch without records of bulk topics moved no position of
                        # theirs: the seek's positions stand, and the recovery's seek is
                        # not followed by a second one.)
                        await self.perform_seek()
                elif consumer_flow_stopped():
                    # a rebalance began; its recovery seeks before the flow resumes
                    if batch:
                        self.dropped_unread = True
                    batch = []
                if batch:
                    assert handler is not None
                    # no await between these checks and tracking: a rebalance that starts
                    # from here on waits for the batch (Faust's ``stream_wait_empty``)
                    for message in batch:
                        track(message)
                    for tp, offset in read.items():
                        set_read_offset(tp, offset)
                    for tp, first, last in gaps:
                        await self._add_gap(tp, first, last)
                    completion = await handler(batch)
                    completion.add_done_callback(functools.partial(_ack_when_sent, ack, batch))
                commit_every = self._commit_every
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class BulkTransport(faust_aiokafka.Transport):
    """The aiokafka transport, with :class:`BulkConsumer`."""

    Consumer: ClassVar[Any] = BulkConsumer


class BulkApp(faust.App):
    """A Faust app whose consumer delivers ``bulk_topics`` in batches to ``bulk_handler``."""

    bulk_topics: frozenset[str] = frozenset()
    bulk_handler: BulkHandler | None = None

    def _new_transport(self) -> Any:
        return BulkTransport(self.conf.broker_consumer, self)


class BulkTableManager(TableManager):
    """Faust's table manager without the second it sleeps before starting its recovery.

    Faust waits 1 s on start for tables declared late; the worker declares every table before
    the app starts (``stream/app.py``, ``stream/account_agent.py``), so the wait only delays
    every start and every recovery by a second.
    """

    async def on_start(self) -> None:
        """Start the recovery service at once (Faust's ``on_start`` without its sleep)."""
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class BulkStore(faust_rocksdb.Store):
    """Faust's RocksDB store, without a full garbage collection at rebalances that revoke
    none of its table's partitions.

    Faust's ``revoke_partitions`` drops the databases of the revoked partitions and then
    runs ``gc.collect()`` (so that RocksDB closes them), once per table at every rebalance,
    even when nothing of the table is revoked: at a worker's start and at every recovery,
    five full collections of a process that holds Faust, the model and the indexes (7% of a
    recovery's samples). This one collects only when it dropped a database.
    """

    def revoke_partitions(self, table: Any, tps: set[Any]) -> None:
        """Drop the databases of ``table``'s revoked partitions; collect if any was open."""
        topics = table.changelog_topic.topics
        closed = 0
        for tp in tps:
            if tp.topic in topics and self._dbs.pop(tp.partition, None) is not None:
                closed += 1
        if closed:
            self.logger.info("closing the databases of %d revoked partitions", closed)
            gc.collect()


#: the worker's store URL scheme (``store=f"{STORE_SCHEME}://"``): :class:`BulkStore`
STORE_SCHEME = "bulkrocksdb"
stores.STORES.aliases.setdefault(STORE_SCHEME, f"{__name__}:BulkStore")
