"""The account agent: the ``accounts`` table, its updates and wake-ups, and the account API.

Records reach it on two topics keyed by the account key (the canonical key format with the
account id), co-partitioned with the ``accounts`` table: the account-updates topic (member
states, departures and licences, from the scoring agent: ``stream/accounts.py``) and the
account-ticks topic (wake-ups for time-driven account changes, sent by this module's timer from
its due-time index, as the decay timer does for contacts). Per batch, as for contacts
(docs/streaming.md#processing-and-delivery-guarantees): the account transitions are sent and
acknowledged, then the table values and their changelog records are written and awaited, then
the records are acknowledged. Updates are idempotent (a member's update carries its version,
licences their time), so a re-delivered batch changes nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from faust.exceptions import SameNode
from faust.types import TP
from faust.web import Request, Response, View

from engagement_index.core.accounts import (
    JOIN,
    LEAVE,
    AccountState,
    AccountTransition,
    CompiledAccounts,
    advance_account,
    apply,
    decode_account,
    decode_update,
    encode_account,
    evaluate_account,
)
from engagement_index.core.events import ContactKey, FailureType
from engagement_index.core.partitioning import canonical_partition
from engagement_index.errors import StateDecodeError
from engagement_index.metrics import Metrics
from engagement_index.stream.due_index import DueIndex
from engagement_index.stream.scoring import (
    InboundRecord,
    OutboundRecord,
    dead_letter,
    decode_tick,
    encode_tick,
    inbound_records,
)
from engagement_index.stream.transaction import (
    TableTransaction,
    stored_value,
    until_done,
)
from engagement_index.topology import Topology

if TYPE_CHECKING:
    from engagement_index.stream.app import Worker

log = logging.getLogger("engagement_index.accounts")

_KINDS = {JOIN: "join", LEAVE: "leave"}


@dataclass(slots=True)
class AccountOutcome:
    """What a batch of account records asks the I/O layer to do."""

    sends: list[OutboundRecord] = field(default_factory=list)
    writes: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)
    due_updates: dict[bytes, tuple[int, int | None]] = field(default_factory=dict)
    transitions: list[AccountTransition] = field(default_factory=list)


class AccountScorer:
    """Applies the account core to batches of account records (no Faust, no Kafka)."""

    def __init__(
        self,
        acc: CompiledAccounts,
        topology: Topology,
        metrics: Metrics,
        clock_ms: Callable[[], int],
    ) -> None:
        self.acc = acc
        self.metrics = metrics
        self.clock_ms = clock_ms
        self._ticks = topology.internal.account_ticks.name
        self._changes = topology.outbound.account_changes.name
        self._dlq = topology.outbound.dead_letters.name
        self._partitions = topology.scoring_partitions

    def process(
        self, records: Sequence[InboundRecord], load: Callable[[bytes, int], bytes | None]
    ) -> AccountOutcome:
        """Apply ``records`` in order; never raises for a bad record (it is dead-lettered)."""
        out = AccountOutcome()
        states: dict[bytes, AccountState | None] = {}
        counts: Counter[tuple[str, str]] = Counter()
        for index, record in enumerate(records):
            try:
                kind, outcome = self._one(out, states, (index, record), load)
            except Exception as exc:  # a bug or a bad record must not stop the agent
                failure = (
                    FailureType.SCHEMA_VIOLATION
                    if isinstance(exc, StateDecodeError)
                    else FailureType.INTERNAL_ERROR
                )
                if failure is FailureType.INTERNAL_ERROR:
                    self.metrics.errors.labels(where="accounts").inc()
                self._dead_letter(out, record, failure, repr(exc))
                kind, outcome = "invalid", "invalid"
            counts[(kind, outcome)] += 1
        for (kind, outcome), n in counts.items():
            self.metrics.account_updates.labels(kind=kind, outcome=outcome).inc(n)
        for key, state in states.items():
            if key in out.writes:
                assert state is not None
                index = out.writes[key][0]
                out.writes[key] = (index, encode_account(state))
        for transition in out.transitions:
            self.metrics.account_transitions.labels(
                lifecycle=transition.lifecycle,
                to_stage=transition.to_stage,
                reason=transition.reason,
            ).inc()
        return out

    def _one(
        self,
        out: AccountOutcome,
        states: dict[bytes, AccountState | None],
        item: tuple[int, InboundRecord],
        load: Callable[[bytes, int], bytes | None],
    ) -> tuple[str, str]:
        index, record = item
        if record.value is None or record.key is None:
            raise StateDecodeError("an account record without a key or value")
        key = record.key
        account = ContactKey.decode(key)
        if key not in states:
            raw = load(key, index)
            states[key] = decode_account(raw, account) if raw is not None else None
        state = states[key]
        if record.topic == self._ticks:
            kind = "tick"
            if state is None:
                out.due_updates[key] = (record.partition, None)
                return kind, "unchanged"
            new, transitions = advance_account(state, decode_tick(record.value), self.acc)
        else:
            update = decode_update(record.value)
            kind = _KINDS.get(update.kind, "licences")
            if update.key != key:
                raise StateDecodeError("an account update under another account's key")
            found, transitions = apply(state, update, self.acc)
            if found is None:
                return kind, "unchanged"
            new = found
        if new is state:
            if state is not None:
                out.due_updates[key] = (record.partition, state.due_ms)
            return kind, "unchanged"
        states[key] = new
        out.writes[key] = (index, None)  # the value is encoded at the batch end
        out.due_updates[key] = (record.partition, new.due_ms)
        for transition in transitions:
            out.sends.append(OutboundRecord(self._changes, key, transition.to_json_bytes()))
            out.transitions.append(transition)
        return kind, "applied"

    def _dead_letter(
        self, out: AccountOutcome, record: InboundRecord, failure: FailureType, message: str
    ) -> None:
        self.metrics.dead_letters.labels(failure_type=failure.value).inc()
        out.sends.append(dead_letter(self._dlq, record, (failure, message), self.clock_ms()))


class AccountAgent:
    """The Faust wiring of accounts in a :class:`~engagement_index.stream.app.Worker`."""

    def __init__(self, worker: Worker, acc: CompiledAccounts) -> None:
        self.worker = worker
        self.acc = acc
        topology = worker.topology
        app = worker.app
        partitions = topology.scoring_partitions
        self.table = app.Table(
            "accounts",
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            extra_topic_configs=topology.changelog_configs(),
        )
        self._updates = topology.internal.account_updates.name
        self._ticks = topology.internal.account_ticks.name
        self.topic = app.topic(
            self._updates,
            self._ticks,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
        )
        self.scorer = AccountScorer(acc, topology, worker.metrics, worker.clock_ms)
        self.due = DueIndex()
        self.recovered = False
        self.table.on_recover(self._rebuild_due_index)
        app.agent(self.topic, name="accounts")(self._agent)
        app.timer(worker.settings.tick_interval_seconds)(self._timer)
        app.on_partitions_revoked.connect(self._on_revoked)
        self._register_view()

    @classmethod
    def for_worker(cls, worker: Worker) -> AccountAgent | None:
        """The account agent of ``worker``, or None if its model declares no accounts."""
        acc = worker.model.accounts_compiled
        return None if acc is None else cls(worker, acc)

    # ------------------------------------------------------------------ agent
    async def _agent(self, stream: Any) -> AsyncIterator[None]:
        settings = self.worker.settings
        async for events in stream.take_events(
            settings.batch_size, within=settings.batch_within_seconds
        ):
            await self._until_done([event.message for event in events])
            yield None

    async def _until_done(self, messages: Sequence[Any]) -> None:
        """Process a batch, retrying with back-off: no exception leaves the agent."""
        await until_done(
            lambda: self.process_batch(messages),
            self.worker.metrics,
            "accounts",
            f"account batch of {len(messages)} records",
        )

    async def process_batch(self, messages: Sequence[Any]) -> None:
        """Apply one batch: send and await the transitions, then write the table."""
        records = inbound_records(messages)

        def load(key: bytes, index: int) -> bytes | None:
            return stored_value(self.table, records[index].partition, key)

        outcome = self.scorer.process(records, load)
        worker = self.worker
        await worker.send_outputs(outcome.sends)
        transaction = TableTransaction(worker._aio_producer())
        transaction.stage(self.table, outcome.writes, lambda i: records[i].partition)
        transaction.write_stores()
        await transaction.send_changelog_until_acked(worker.metrics, "accounts")
        for key, (partition, due_ms) in outcome.due_updates.items():
            self.due.set(partition, key, due_ms)
        worker.metrics.account_due_index_size.set(len(self.due))

    # -------------------------------------------------------------- wake-ups
    async def _timer(self) -> None:
        if not self.recovered:
            return
        try:
            now = self.worker.clock_ms()
            held = [p for p in self.due.due_partitions(now) if not await self._caught_up(p)]
            retry = int(self.worker.settings.tick_retry_seconds * 1000)
            due = self.due.pop_due(now, retry, skip=held)
            ticks = [
                OutboundRecord(self._ticks, key, encode_tick(due_ms), (), partition)
                for partition, key, due_ms in due
            ]
            await self.worker._send_all(ticks)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.worker.metrics.errors.labels(where="timer").inc()
            log.exception("account timer failed; retrying on the next tick")

    async def _caught_up(self, partition: int) -> bool:
        """True when the partition's account updates are read to the end of the last fetch
        (an update that precedes a due time is applied first, as in the replay)."""
        consumer: Any = self.worker.app.consumer
        tp = TP(self._updates, partition)
        try:
            highwater = consumer.highwater(tp)
            if highwater is None:
                return False
            position = await asyncio.wait_for(consumer.position(tp), timeout=0.5)
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        return position is not None and position >= highwater

    async def _on_revoked(self, *args: Any, **kwargs: Any) -> None:
        self.recovered = False

    async def _rebuild_due_index(self) -> None:
        """Re-index the accounts' due times from the partitions now owned."""
        self.due = DueIndex()
        store: Any = self.table.data
        topic = self.table.changelog_topic.get_topic_name()
        app = self.worker.app
        owned = [tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic]
        count = 0
        for partition in owned:
            db = store._db_for_partition(partition)
            for raw_key, raw_value in store._visible_items(db):
                key = bytes(raw_key)
                try:
                    state = decode_account(bytes(raw_value), ContactKey.decode(key))
                except Exception:
                    self.worker.metrics.errors.labels(where="recovery").inc()
                    log.exception("undecodable account state in partition %d", partition)
                    continue
                self.due.set(partition, key, state.due_ms)
                count += 1
                if count % 10_000 == 0:
                    await asyncio.sleep(0)
        self.worker.metrics.account_due_index_size.set(len(self.due))
        self.recovered = True
        log.info("recovered: %d accounts in partitions %s", count, sorted(owned))

    # -------------------------------------------------------------------- web
    def _register_view(self) -> None:
        agent = self
        worker = self.worker
        app = worker.app

        @app.page("/v1/accounts/{tenant}/{account_id}")
        class AccountPage(View):
            async def get(self, request: Request, tenant: str, account_id: str) -> Response:
                key = ContactKey(tenant, account_id)
                denied = worker.check_api_access(request, key)
                if denied is not None:
                    body, status = denied
                    if status == 401:
                        headers = {"WWW-Authenticate": 'Bearer realm="engagement-index"'}
                        return self.json(body, status=status, headers=headers)
                    return self.json(_not_found(key), status=404)
                try:
                    raw_key = key.encode()
                except UnicodeEncodeError:
                    return self.json({"error": "tenant must be ASCII"}, status=400)
                try:
                    return await app.router.route_req(agent.table.name, raw_key, self.web, request)
                except SameNode:
                    pass
                body, status = agent.account_view(key, raw_key)
                return self.json(body, status=status)

    def account_view(self, key: ContactKey, raw_key: bytes) -> tuple[dict[str, Any], int]:
        """The API body of one account, evaluated now (read on its canonical partition)."""
        partition = canonical_partition(raw_key, self.worker.topology.scoring_partitions)
        raw = stored_value(self.table, partition, raw_key)
        if raw is None:
            return _not_found(key), 404
        state = decode_account(raw, key)
        snapshot = evaluate_account(state, self.worker.clock_ms(), self.acc)
        return snapshot.model_dump(mode="json"), 200


def _not_found(key: ContactKey) -> dict[str, Any]:
    return {"error": "account not found", "tenant": key.tenant, "account_id": key.contact_id}
