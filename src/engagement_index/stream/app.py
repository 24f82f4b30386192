"""The Faust application: wiring only. Decode, call the core (via BatchScorer), store, send.

Ordering and delivery (see docs/streaming.md):
* One agent reads every scoring source (inbound channels, re-key topic, tick topic); they are
  co-partitioned, so a contact's records all arrive on one partition number of this worker.
* Per batch: outputs are sent and acknowledged first, then the tables are written and their
  changelog records acknowledged (``stream/transaction.py``), then the batch's offsets become
  committable. State is never ahead of published outputs, the changelog never behind a
  committed offset; a failed send fails the batch, which is retried.
* Decay: a per-worker timer pops due contacts from the in-memory due-time index and sends a
  wake-up to the tick topic on the contact's partition; the agent applies it in stream context
  (Faust forbids table writes from timers). The index is rebuilt from the local table after
  every recovery; the timer never iterates contacts, and holds back the wake-ups of a partition
  while its event sources have unread records (a backlog).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from bisect import bisect_left
from collections import Counter as CounterDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import faust
from faust.exceptions import SameNode
from faust.types import TP
from faust.web import Request, Response, View

from engagement_index import __version__
from engagement_index.core.events import ContactKey
from engagement_index.core.lifecycle import evaluate, migrate
from engagement_index.core.model import ScoringModel
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.state import ContactState, decode_state, peek_state
from engagement_index.core.timestamps import MS_PER_DAY, ms_to_rfc3339
from engagement_index.errors import BatchWriteError
from engagement_index.kafka_security import ssl_context
from engagement_index.kernel import kernel_for
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.account_agent import AccountAgent
from engagement_index.stream.auth import TokenAuth, Unauthorized, load_tokens
from engagement_index.stream.bulk import STORE_SCHEME, BulkApp, BulkTableManager
from engagement_index.stream.console import Console
from engagement_index.stream.daily import (
    SeriesError,
    check_series_params,
    closing_day,
    points,
    series_range,
    stored_day_numbers,
    stored_days,
)
from engagement_index.stream.due_index import DueIndex
from engagement_index.stream.identity import alias_body, decode_alias
from engagement_index.stream.produce import send_batched
from engagement_index.stream.scoring import (
    BatchScorer,
    OutboundRecord,
    encode_tick,
    inbound_records,
)
from engagement_index.stream.segment_api import SegmentApi
from engagement_index.stream.segments import Projection, SegmentIndex
from engagement_index.stream.stored import StoredContact
from engagement_index.stream.transaction import (
    TableTransaction,
    stored_value,
    until_done,
)
from engagement_index.topology import Topology

log = logging.getLogger("engagement_index.worker")


def wall_clock_ms() -> int:
    """Milliseconds since the epoch, from the wall clock (I/O layer only)."""
    return time.time_ns() // 1_000_000


def broker_urls(settings: Settings) -> list[str]:
    """Faust broker URLs from the comma-separated bootstrap servers."""
    return [f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")]


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for the SASL/SSL settings, or None for PLAINTEXT."""
    context = ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


BEARER_CHALLENGE = 'Bearer realm="engagement-index"'


def not_found(key: ContactKey) -> dict[str, Any]:
    """The API body for a contact that does not exist (or that the token may not read)."""
    return {"error": "contact not found", "tenant": key.tenant, "contact_id": key.contact_id}


class Worker:
    """A Faust app with the scoring agent, decay timer, tables and web views."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        model: ScoringModel,
        metrics: Metrics | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.settings = settings
        self.topology = topology
        self.model = model
        self.metrics = metrics or Metrics()
        self.clock_ms = clock_ms
        self.auth = (
            TokenAuth(load_tokens(settings.api_tokens_file, settings.api_tokens))
            if settings.api_auth
            else None
        )
        if self.auth is not None and not len(self.auth):
            log.warning("query API auth is on but no token is configured: /v1/ answers 401")
        self.due = DueIndex()
        #: the changelog send of the last batch the bulk path scored (_process_pipelined)
        self._changelog_tail: asyncio.Future[None] | None = None
        self.stage_counts: CounterDict[tuple[str, str]] = CounterDict()
        self.recovered = False
        ticks = topology.internal.ticks.name
        #: the sources that carry events: a partition's decay wake-ups wait until all are read
        self._data_sources = [t for t in topology.scoring_sources if t != ticks]
        self._rekey_topic = topology.internal.rekey.name
        #: partition -> offset of the last record this worker forwarded to the re-key topic
        self._forwarded: dict[int, int] = {}
        self.scorer = BatchScorer(
            model=model,
            topology=topology,
            settings=settings,
            metrics=self.metrics,
            clock_ms=clock_ms,
        )
        partitions = topology.scoring_partitions
        self.app = BulkApp(
            topology.app_id,
            broker=broker_urls(settings),
            broker_credentials=broker_credentials(settings),
            store=f"{STORE_SCHEME}://",
            datadir=str(settings.data_dir),
            version=1,
            autodiscover=False,
            web_enabled=True,
            web_bind=settings.web_bind,
            web_host=settings.web_host,
            web_port=settings.web_port,
            web_stats_enabled=False,
            web_graph_enabled=False,
            web_router_enabled=False,
            web_tables_enabled=False,
            web_metrics_enabled=False,
            topic_partitions=partitions,
            topic_replication_factor=topology.replication_factor,
            table_standby_replicas=0,
            broker_commit_interval=settings.commit_interval_seconds,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            producer_linger_ms=5,
            producer_max_batch_size=256 * 1024,
            broker_max_poll_records=settings.batch_size,
            stream_wait_empty=True,
            logging_config=None,
            TableManager=BulkTableManager,
        )
        table_options = {
            "block_cache_size": settings.rocksdb_block_cache_bytes,
            "write_buffer_size": settings.rocksdb_write_buffer_bytes,
        }
        #: the changelogs' compaction (streams/topology.yaml) for the topics Faust creates
        changelog_configs = topology.changelog_configs()
        self.contacts = self.app.Table(
            "contacts",
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            options=table_options,
            extra_topic_configs=changelog_configs,
        )
        self.history = self.app.Table(
            "history",
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            options=table_options,
            extra_topic_configs=changelog_configs,
        )
        #: score history (``stream/daily.py``): key = contact key + day, value = a state
        self.daily = self.app.Table(
            "daily",
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            options=table_options,
            extra_topic_configs=changelog_configs,
        )
        #: identity merge (``stream/identity.py``): absorbed id -> survivor, survivor -> aliases
        self.aliases = self.app.Table(
            "aliases",
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            options=table_options,
            extra_topic_configs=changelog_configs,
        )
        self.source = self.app.topic(
            *topology.scoring_sources,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
        )
        self.contacts.on_recover(self._rebuild_due_index)
        self.app.agent(self.source, name="score")(self._score_agent)
        # the agent subscribes the sources; their records reach process_batch in whole fetches
        self.app.bulk_topics = frozenset(topology.scoring_sources)
        self.app.bulk_handler = self._process_pipelined
        self.app.timer(settings.tick_interval_seconds)(self._decay_timer)
        self._register_views()
        #: segment lists and counts (stream/segments.py, stream/segment_api.py)
        self.segments = SegmentIndex.for_worker(self)
        SegmentApi(self).register()
        #: accounts (stream/account_agent.py): None if the model declares none
        self.accounts = AccountAgent.for_worker(self)
        #: the web console's page, model, live feed and rates (stream/console.py)
        Console(self).register()
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)

    # ------------------------------------------------------------------ agent
    async def _score_agent(self, stream: Any) -> AsyncIterator[None]:
        """Fallback path: records reach it only if the bulk path is off."""
        async for events in stream.take_events(
            self.settings.batch_size, within=self.settings.batch_within_seconds
        ):
            await self._process_until_done([event.message for event in events])
            yield None

    async def _process_until_done(self, events: Sequence[Any]) -> None:
        """Process a batch, retrying with back-off: no exception leaves the agent.

        A retry is safe: outputs are sent before states are written, and records whose
        state was already written are recognised by their offsets on the next attempt. (A
        refused changelog write is retried inside :meth:`process_batch`, with the same
        records.)
        """
        await until_done(
            lambda: self.process_batch(events),
            self.metrics,
            "batch",
            f"batch of {len(events)} records",
        )

    async def _process_pipelined(self, events: Sequence[Any]) -> asyncio.Future[None]:
        """The bulk path's handler: :meth:`score_batch` until it succeeds (as
        :meth:`_process_until_done`), then the batch's changelog records sent in the
        background, after those of the batch before (so a key's changelog records stay in
        order, retries included). The consumer acknowledges the batch's records when the
        returned future is done, so no offset is committed past a changelog that is behind
        the store, and a rebalance waits for it; meanwhile the next batch is scored."""
        transaction = await until_done(
            lambda: self.score_batch(events),
            self.metrics,
            "batch",
            f"batch of {len(events)} records",
        )
        previous = self._changelog_tail
        sent = asyncio.ensure_future(self._send_changelog_after(previous, transaction))
        self._changelog_tail = sent
        return sent

    async def _send_changelog_after(
        self, previous: asyncio.Future[None] | None, transaction: TableTransaction
    ) -> None:
        if previous is not None:
            # ends with the one before, however it ended (it only ends by being cancelled, at
            # a stop, if not acknowledged); a cancellation of this one leaves it running
            await asyncio.wait({previous})
        await transaction.send_changelog_until_acked(self.metrics, "batch")

    async def process_batch(self, messages: Sequence[Any]) -> None:
        """Score one batch of consumed messages and await its changelog records."""
        transaction = await self.score_batch(messages)
        await transaction.send_changelog_until_acked(self.metrics, "batch")

    async def score_batch(self, messages: Sequence[Any]) -> TableTransaction:
        """Score one batch of consumed messages: send and await outputs, then write tables;
        the table transaction is returned with its changelog records not yet sent."""
        records = inbound_records(messages)
        loaded: dict[bytes, bytes | None] = {}  # the values before the batch (segment index)

        def load_contact(key: bytes, index: int) -> bytes | None:
            loaded[key] = value = stored_value(self.contacts, records[index].partition, key)
            return value

        def load_history(key: bytes, index: int) -> bytes | None:
            return stored_value(self.history, records[index].partition, key)

        daily_store: Any = self.daily.data
        # one iterator per partition of the daily table for the batch's scoring: nothing
        # writes that table before the scoring ends (the transaction below does)
        cursors: dict[int, Any] = {}

        def list_days(key: bytes, index: int, before: int | None) -> list[int]:
            partition = records[index].partition
            cursor = cursors.get(partition)
            if cursor is None:
                cursor = cursors[partition] = daily_store._db_for_partition(partition).iter()
            return stored_day_numbers(cursor, key, before)

        def load_alias(key: bytes, index: int) -> bytes | None:
            return stored_value(self.aliases, records[index].partition, key)

        ticks = self.topology.internal.ticks.name
        woken = {r.partition for r in records if r.topic == ticks}
        held = [p for p in woken if not await self._caught_up(p)] if woken else []
        try:
            outcome = self.scorer.process(
                records, load_contact, load_history, list_days, held, load_alias=load_alias
            )
        finally:
            cursors.clear()  # before an await: a rebalance may close the databases
        await self.send_outputs(outcome.sends)
        transaction = TableTransaction(self._aio_producer())
        transaction.stage(self.contacts, outcome.contact_writes, lambda i: records[i].partition)
        transaction.stage(self.history, outcome.history_writes, lambda i: records[i].partition)
        transaction.stage(self.daily, outcome.daily_writes, lambda i: records[i].partition)
        transaction.stage(self.aliases, outcome.alias_writes, lambda i: records[i].partition)
        transaction.write_stores()
        self.segments.apply(
            outcome.contact_writes,
            loaded,
            lambda i: records[i].partition,
            outcome.sends,
            outcome.due_updates,
            self.clock_ms(),
        )
        for key, (partition, due_ms) in outcome.due_updates.items():
            self.due.set(partition, key, due_ms)
        for lifecycle, old, new in outcome.stage_moves:
            if old is not None:
                self.stage_counts[(lifecycle, old)] -= 1
            if new is not None:
                self.stage_counts[(lifecycle, new)] += 1
        self._publish_gauges()
        now = self.clock_ms()
        self.metrics.batch_size.observe(len(records))
        self.metrics.processing_latency.observe_since(now, outcome.latency_from_ms)
        return transaction

    def _aio_producer(self) -> Any:
        """The aiokafka producer under Faust's producer (started with the app)."""
        producer: Any = self.app.producer
        return producer._ensure_producer()

    async def send_outputs(self, sends: Sequence[OutboundRecord]) -> None:
        """A batch's outputs, sent and acknowledged before its state is written: any failure
        fails the batch (``BatchWriteError("outputs")``), which is then scored again."""
        try:
            await self._send_all(sends)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise BatchWriteError("outputs", exc) from exc

    async def _send_all(self, sends: Sequence[OutboundRecord]) -> None:
        """Produce ``sends`` (one record batch per topic-partition) and await the acks."""
        if not sends:
            return
        groups = await send_batched(
            self._aio_producer(),
            (
                (s.topic, s.key, s.value, s.partition, list(s.headers) or None, s.timestamp_ms)
                for s in sends
            ),
        )
        await asyncio.gather(*(group.future for group in groups))
        forwarded = self._forwarded
        for group in groups:
            if group.topic == self._rekey_topic:
                last = group.last_offset()
                if last > forwarded.get(group.partition, -1):
                    forwarded[group.partition] = last

    # ------------------------------------------------------------------ decay
    async def _decay_timer(self) -> None:
        if not self.recovered:
            return
        try:
            now = self.clock_ms()
            held = [p for p in self.due.due_partitions(now) if not await self._caught_up(p)]
            self.metrics.decay_held_partitions.set(len(held))
            due = self.due.pop_due(now, int(self.settings.tick_retry_seconds * 1000), skip=held)
            ticks = [
                OutboundRecord(
                    self.topology.internal.ticks.name, key, encode_tick(due_ms), (), partition
                )
                for partition, key, due_ms in due
            ]
            await self._send_all(ticks)
            self.metrics.decay_ticks.inc(len(ticks))
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.errors.labels(where="timer").inc()
            log.exception("decay timer failed; retrying on the next tick")

    async def _caught_up(self, partition: int) -> bool:
        """True when every event source of ``partition`` has been read to its end.

        Decay wake-ups wait for this: while a backlog is read, a contact's next event may
        still be in it, and an event that precedes the crossing must be applied first (as the
        offline replay does). "Read to its end": the consumer's position (the next offset it
        hands out) has reached the highwater of the partition's last fetch response. Records
        handed out but still being scored are no obstacle: a wake-up sent now is a record of
        the tick topic, scored in a later batch than they are, and it is applied only if the
        contact is still due then. Positions are no evidence while the consumer has dropped a
        fetch unread (it seeks back to the committed offsets next) or is seeking: then every
        partition waits. Without a backlog, wake-ups go out within a timer interval.
        """
        consumer: Any = self.app.consumer
        if not consumer.positions_are_reads():
            return False  # a fetch was dropped unread, or a seek is under way
        for topic in self._data_sources:
            tp = TP(topic, partition)
            try:
                highwater = consumer.highwater(tp)
                if highwater is None:
                    return False  # not fetched yet since the assignment
                position = await asyncio.wait_for(consumer.position(tp), timeout=0.5)
            except asyncio.CancelledError:
                raise
            except Exception:  # being reset, or not assigned any more (a rebalance): hold
                return False
            if position is None or position < highwater:
                return False
            if topic == self._rekey_topic and position <= self._forwarded.get(partition, -1):
                return False  # a record this worker forwarded here is not read yet
        return True

    async def _on_partitions_revoked(self, *args: Any, **kwargs: Any) -> None:
        self.recovered = False
        self.metrics.ready.set(0)

    async def _rebuild_due_index(self) -> None:
        """Re-index pending decays and stage counts from the partitions now owned."""
        started = time.monotonic()
        self.due = DueIndex()
        self.stage_counts = CounterDict()
        store: Any = self.contacts.data
        topic = self.contacts.changelog_topic.get_topic_name()
        owned = [tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic]
        self.segments.begin_rebuild(owned, self.clock_ms())
        compiled = self.model.compiled
        layout = compiled.layout
        legacy_sources = self.topology.scoring_sources
        stage_counts = self.stage_counts
        partitions = self.topology.scoring_partitions
        # the kernel reads the values it takes (this model's states, no account) in one call
        # each: partition, due time, projection; the Python side reads the rest
        kernel = kernel_for(compiled)
        labels = [[(lc.name, stage.name) for stage in lc.stages] for lc in compiled.lifecycles]
        stage_by_id = compiled.stage_by_id
        count = foreign = orphans = 0
        for partition in owned:
            db = store._db_for_partition(partition)
            for raw_key, raw_value in store._visible_items(db):
                key = bytes(raw_key)
                raw = bytes(raw_value)
                migrated = stored = projection = None
                try:
                    contact = ContactKey.decode(key)
                    recovered = None if kernel is None else kernel.recover(key, raw, partitions)
                    if recovered is not None:
                        home, due_ms, positions, index, last = recovered
                        projection = Projection(positions, index, last)
                        stages = list(enumerate(positions))
                    else:
                        stored = StoredContact.decode(raw, legacy_sources)
                        due_ms, state_layout, stage_ids = peek_state(stored.state_bytes)
                        home = canonical_partition(key, partitions)
                    if home != partition:
                        # written by a release that kept a contact where its records arrived:
                        # the contact lives on its canonical partition now (docs/topology.md)
                        orphans += 1
                        continue
                    if stored is not None:
                        if state_layout is not layout and state_layout != layout:
                            # computed under another model: its due time is not this model's.
                            # Migrated here only to index it; a contact whose stage changes is
                            # woken at once to publish its model_change (the wake-up migrates)
                            foreign += 1
                            state = decode_state(stored.state_bytes, contact)
                            migrated, changes = migrate(state, compiled)
                            stage_ids = migrated.stages
                            due_ms = 1 if changes else migrated.due_ms
                        stages = [stage_by_id[stage_id] for stage_id in stage_ids]
                except Exception:
                    self.metrics.errors.labels(where="recovery").inc()
                    log.exception("undecodable state for a contact in partition %d", partition)
                    continue
                self.due.set(partition, key, due_ms)
                if stored is not None:
                    self.segments.add(partition, key, stored, migrated)
                else:
                    assert projection is not None
                    self.segments.add_projection(partition, key, projection)
                for position, stage in stages:
                    stage_counts[labels[position][stage]] += 1
                count += 1
                if count % 10_000 == 0:
                    await asyncio.sleep(0)
        self.metrics.recovery_contacts.inc(count)
        self.metrics.model_migrations.inc(foreign)
        self.metrics.orphaned_states.set(orphans)
        self.segments.end_rebuild()
        self._publish_gauges()
        self.recovered = True
        # everything alive now (modules, Faust, the recovered index) stays: collect garbage
        # once, then keep the rest out of the cyclic collector's full collections
        gc.collect()
        gc.freeze()
        self.metrics.ready.set(1)
        self.metrics.recovery_remaining.set(0)
        log.info(
            "recovered: %d contacts in partitions %s re-indexed in %.2fs",
            count,
            sorted(owned),
            time.monotonic() - started,
        )
        if orphans:
            log.warning(
                "%d contact states are not on their canonical partition (written by an earlier "
                "release from a non-murmur2 producer): they are left alone; see docs/topology.md",
                orphans,
            )
        if foreign:
            log.warning(
                "%d contacts hold a state of another model than %r: each is woken now to migrate "
                "(see docs/operations.md, model upgrades)",
                foreign,
                self.model.version,
            )

    def _publish_gauges(self) -> None:
        self.metrics.due_index_size.set(len(self.due))
        gauge = self.metrics.contacts_per_stage
        for (lifecycle, stage), n in self.stage_counts.items():
            gauge.labels(lifecycle=lifecycle, stage=stage).set(n)

    # -------------------------------------------------------------------- web
    def _register_views(self) -> None:
        worker = self
        app = self.app

        @app.page("/healthz")
        class Health(View):
            async def get(self, request: Request) -> Response:
                return self.json({"status": "alive", "version": __version__})

        @app.page("/readyz")
        class Ready(View):
            async def get(self, request: Request) -> Response:
                ready = worker.is_ready()
                body = {
                    "ready": ready,
                    "recovered": worker.recovered,
                    "rebalancing": bool(app.rebalancing),
                }
                return self.json(body, status=200 if ready else 503)

        @app.page("/metrics")
        class MetricsPage(View):
            async def get(self, request: Request) -> Response:
                remaining = cast(Any, app.tables).recovery.active_remaining_total()
                worker.metrics.recovery_remaining.set(remaining)
                return self.bytes(worker.metrics.render(), content_type="text/plain; version=0.0.4")

        async def contact_request(
            view: View,
            request: Request,
            key: ContactKey,
            answer: Callable[[ContactKey, bytes], tuple[dict[str, Any], int]],
            precheck: Callable[[], dict[str, Any] | None] | None = None,
        ) -> Response:
            """Auth and tenant rules, ``precheck`` (a 400 body, or None), then the owner of
            the contact answers (the request is forwarded to it)."""
            denied = worker.check_api_access(request, key)
            if denied is not None:
                body, status = denied
                headers = {"WWW-Authenticate": BEARER_CHALLENGE} if status == 401 else None
                return view.json(body, status=status, headers=headers)
            try:
                raw_key = key.encode()
            except UnicodeEncodeError:
                return view.json({"error": "tenant must be ASCII"}, status=400)
            invalid = precheck() if precheck is not None else None
            if invalid is not None:
                return view.json(invalid, status=400)
            try:
                return await app.router.route_req(worker.contacts.name, raw_key, view.web, request)
            except SameNode:
                pass
            body, status = answer(key, raw_key)
            return view.json(body, status=status)

        @app.page("/v1/contacts/{tenant}/{contact_id}")
        class ContactPage(View):
            async def get(self, request: Request, tenant: str, contact_id: str) -> Response:
                key = ContactKey(tenant, contact_id)
                return await contact_request(self, request, key, worker.contact_view)

        @app.page("/v1/contacts/{tenant}/{contact_id}/history")
        class HistoryPage(View):
            async def get(self, request: Request, tenant: str, contact_id: str) -> Response:
                key = ContactKey(tenant, contact_id)
                query = request.query
                params = {name: query[name] for name in ("from", "to", "step") if name in query}

                def precheck() -> dict[str, Any] | None:
                    """The syntax, before forwarding (the owner checks the range)."""
                    try:
                        check_series_params(params)
                    except SeriesError as exc:
                        return exc.body()
                    return None

                def answer(key: ContactKey, raw_key: bytes) -> tuple[dict[str, Any], int]:
                    return worker.history_view(key, raw_key, params)

                return await contact_request(self, request, key, answer, precheck)

    def check_api_access(
        self, request: Request, key: ContactKey
    ) -> tuple[dict[str, Any], int] | None:
        """None if the request may read ``key``; else the 401 or 404 answer.

        A token that may not read the tenant gets the same 404 as an unknown contact.
        """
        if self.auth is None:
            return None
        try:
            tenants = self.auth.tenants(request.headers.get("Authorization"))
        except Unauthorized as exc:
            self.metrics.api_auth_failures.inc()
            return {"error": "unauthorized", "message": exc.message}, 401
        if not TokenAuth.may_read(tenants, key.tenant):
            return not_found(key), 404
        return None

    def is_ready(self) -> bool:
        """Partitions assigned, changelogs recovered, not rebalancing."""
        accounts = self.accounts is None or self.accounts.recovered
        return self.recovered and accounts and not self.app.rebalancing

    def _stored_state(self, key: ContactKey, raw_key: bytes) -> tuple[int, ContactState] | None:
        """``(canonical partition, state)`` of a contact, read where its state lives (a copy
        an earlier release may have left on another partition is not its state); None if
        there is none."""
        partition = canonical_partition(raw_key, self.topology.scoring_partitions)
        raw = stored_value(self.contacts, partition, raw_key)
        if raw is None:
            return None
        stored = StoredContact.decode(raw, self.topology.scoring_sources)
        return partition, decode_state(stored.state_bytes, key)

    def contact_view(self, key: ContactKey, raw_key: bytes) -> tuple[dict[str, Any], int]:
        """The API body for one contact, with the index evaluated now.

        Read from the contact's canonical partition (where its state lives; a copy an earlier
        release may have left on another partition is not its state).
        """
        found = self._stored_state(key, raw_key)
        alias = self._alias(raw_key)
        if found is None:
            if "alias_of" in alias:  # an absorbed id: a pointer to the contact that holds it
                return alias_body(key, alias), 200
            return not_found(key), 404
        partition, state = found
        snapshot = evaluate(state, self.clock_ms(), self.model.compiled)
        history_raw = stored_value(self.history, partition, raw_key)
        import json

        history = json.loads(history_raw) if history_raw else []
        body = snapshot.model_dump(mode="json")
        body["last_transitions"] = list(reversed(history))
        body["model_version"] = self.model.version
        body["aliases"] = [item["id"] for item in alias.get("aliases", ())]
        return body, 200

    def _alias(self, raw_key: bytes) -> dict[str, Any]:
        """The contact's aliases-table value (``stream/identity.py``), read where it lives."""
        partition = canonical_partition(raw_key, self.topology.scoring_partitions)
        return decode_alias(stored_value(self.aliases, partition, raw_key))

    def history_view(
        self, key: ContactKey, raw_key: bytes, params: dict[str, str]
    ) -> tuple[dict[str, Any], int]:
        """The API body of a contact's score history (``stream/daily.py``): one point per
        midnight of the range, each exact. 400 for a range it cannot serve."""
        found = self._stored_state(key, raw_key)
        if found is None:
            return not_found(key), 404
        partition, state = found
        current = closing_day(state.clock_ms)
        daily: Any = self.daily.data
        days: list[tuple[int, bytes | ContactState]] = [
            item
            for item in stored_days(daily._db_for_partition(partition), raw_key, None)
            if item[0] < current
        ]
        # the contact's state closes its latest day (a contact stored before the daily table
        # existed has only this one)
        days.append((current, state))
        try:
            wanted = series_range(
                params, today=self.clock_ms() // MS_PER_DAY, first_day=days[0][0] + 1
            )
        except SeriesError as exc:
            return exc.body(), 400
        # only the base of the first point and the states before the last one are needed
        start = max(0, bisect_left(days, wanted.first, key=lambda d: d[0]) - 1)
        needed = (
            (d, v if isinstance(v, ContactState) else decode_state(v, key))
            for d, v in days[start:]
            if d < wanted.last
        )
        body: dict[str, Any] = {
            "tenant": key.tenant,
            "contact_id": key.contact_id,
            "model_version": self.model.version,
            "from": ms_to_rfc3339(wanted.first * MS_PER_DAY)[:10],
            "to": ms_to_rfc3339(wanted.last * MS_PER_DAY)[:10],
            "step": f"{wanted.step}d",
            "points": list(points(needed, wanted, self.model.compiled)),
        }
        return body, 200
