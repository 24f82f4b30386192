"""Batch scoring: inbound records in, records to send and table writes out.

No Faust and no Kafka client here: the agent hands in plain records and a way to read the
tables, and gets back what to send and what to store. That keeps the delivery rules testable:

* Outputs of a batch (transitions, score snapshots, dead letters, re-keyed records) are sent
  and acknowledged by the broker *before* the batch's state is written, so stored state is
  never ahead of what was published. A crash re-delivers the batch; records already reflected
  in the state are recognised by their per-source offset and skipped, and their outputs were
  already acknowledged, so nothing is lost and nothing is counted twice.
* A batch sends at most one score snapshot per contact: the last one it computed, in the
  place of that last one among the batch's sends (the scores topic is compacted, so a
  snapshot the same batch replaces says nothing a reader keeps; a tombstone sent after it,
  an erasure, stays after it).
* Upstream duplicates (same ``event_id`` for a contact, arriving within the dedupe window of
  the applied copy, by record timestamp) are dropped by ``core.dedupe``; the window is kept in
  the contact's table value.
"""

from __future__ import annotations

import functools
import math
import struct
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from engagement_index import __version__
from engagement_index.core.accounts import is_account_type
from engagement_index.core.dedupe import EMPTY as EMPTY_SEEN
from engagement_index.core.dedupe import SeenIds, admit
from engagement_index.core.erasure import Erasure, ErasureRequest
from engagement_index.core.events import (
    ContactKey,
    EventFields,
    FailureType,
    check_event_type,
    check_time_window,
    parse_event_fields,
)
from engagement_index.core.lifecycle import advance, contact_index, evaluate, stage_names, step
from engagement_index.core.model import ScoringModel
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.records import Transition
from engagement_index.core.state import ContactState, decode_state, encode_state
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.errors import ConfigError, EventRejected
from engagement_index.kernel import batch_kernel, kernel_for
from engagement_index.metrics import Metrics
from engagement_index.settings import Settings
from engagement_index.stream.accounts import MemberUpdates
from engagement_index.stream.daily import DailyBatch, ListDays, closing_day
from engagement_index.stream.identity import IdentityMerge
from engagement_index.stream.stored import (
    StoredContact,
    published_index_of,
    source_id,
    state_offset,
)
from engagement_index.topology import Topology

if TYPE_CHECKING:
    from engagement_index._kernel import KernelBatch

TICK = struct.Struct("<q")
_CLOCK = struct.Struct("<q")  # a stored state's clock, at byte 2 (engagement_index.core.state)
MAX_ERROR_CHARS = 1000


class InboundRecord(NamedTuple):
    """One consumed record, as the agent saw it (a tuple: built once per record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class OutboundRecord(NamedTuple):
    """One record to produce (a tuple: built once per output)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None
    #: the record timestamp (ms); None: the producer's clock. Forwarded records keep theirs.
    timestamp_ms: int | None = None


@dataclass(slots=True)
class BatchOutcome:
    """Everything a processed batch asks the I/O layer to do, in this order."""

    sends: list[OutboundRecord] = field(default_factory=list)
    # table key -> (index in the batch of the last record that touched it, value);
    # value None: delete the key (an erasure)
    contact_writes: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)
    history_writes: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)
    # the aliases table (identity merge, ``stream/identity.py``): key -> (index, value or None)
    alias_writes: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)
    # the daily table (score history, ``stream/daily.py``): day key -> (index, state or None)
    daily_writes: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)
    # table key -> (partition, due time or None)
    due_updates: dict[bytes, tuple[int, int | None]] = field(default_factory=dict)
    # (lifecycle, old stage, new stage); old None: a new contact, new None: an erasure
    stage_moves: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    latency_from_ms: list[int] = field(default_factory=list)


#: the place in ``BatchOutcome.sends`` of a snapshot a later one of the same batch replaced
#: (removed at the batch end)
_REPLACED = OutboundRecord("", None, None)
#: ``StoredScorer.score``'s code of an applied event (1: an event id the window holds)
_SCORED = 2
#: the fields ``StoredScorer.route`` gives: event id, tenant, contact id, type, timestamp ms
RoutedFields = tuple[str, str, str, str, int]
#: a time window's bound beyond any event time (the settings allow larger ones)
_FAR_MS = 1 << 62


def inbound_records(messages: Sequence[Any]) -> list[InboundRecord]:
    """A batch of consumed Faust messages as the scorers read them."""
    return [
        InboundRecord(
            topic=m.topic,
            partition=m.partition,
            offset=m.offset,
            key=m.key,
            value=m.value,
            timestamp_ms=int(m.timestamp * 1000),
        )
        for m in messages
    ]


_VERSION_HEADER = __version__.encode()


def dead_letter(
    topic: str, record: InboundRecord, reason: tuple[FailureType, str], now_ms: int
) -> OutboundRecord:
    """The dead-letter record of ``record``: its original key and value, and headers naming
    its source, the ``(failure, message)`` reason, the worker's version and the time."""
    failure, message = reason
    headers = (
        ("dlq.source.topic", record.topic.encode()),
        ("dlq.source.partition", str(record.partition).encode()),
        ("dlq.source.offset", str(record.offset).encode()),
        ("dlq.failure.type", failure.value.encode()),
        ("dlq.error.message", message[:MAX_ERROR_CHARS].encode("utf-8", "replace")),
        ("dlq.worker.version", _VERSION_HEADER),
        ("dlq.failure.time", ms_to_rfc3339(now_ms).encode()),
    )
    return OutboundRecord(topic, record.key, record.value, headers)


def encode_tick(due_ms: int) -> bytes:
    """Value of a decay wake-up record."""
    return TICK.pack(due_ms)


def decode_tick(value: bytes) -> int:
    """Due time carried by a wake-up record."""
    return int(TICK.unpack(value)[0])


@dataclass(slots=True)
class _Batch:
    """One batch being scored: its outcome, the contacts and histories it has read, and how
    to read more (passed to every step instead of the same caches one by one)."""

    out: BatchOutcome
    load_contact: Callable[[bytes, int], bytes | None]
    load_history: Callable[[bytes, int], bytes | None]
    now_ms: int
    daily: DailyBatch
    contacts: dict[bytes, _Entry | None] = field(default_factory=dict)
    histories: dict[bytes, list[bytes]] = field(default_factory=dict)
    #: per topic, the newest event timestamp scored in this batch
    newest: dict[str, int] = field(default_factory=dict)
    #: reads the aliases table (identity merge); its values as read or changed in this batch
    load_alias: Callable[[bytes, int], bytes | None] | None = None
    aliases: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    #: per contact key, where in ``out.sends`` its latest snapshot of this batch is
    snapshot_at: dict[bytes, int] = field(default_factory=dict)
    #: how many snapshots a later one of the same contact replaced in this batch
    replaced: int = 0
    #: the kernel's whole-batch scorer (None: not used); it holds the contacts it scored
    #: until the Python side reads them (:meth:`BatchScorer._load`)
    kernel: KernelBatch | None = None


class BatchScorer:
    """Applies the core to batches of records for the partitions this worker owns."""

    def __init__(
        self,
        *,
        model: ScoringModel,
        topology: Topology,
        settings: Settings,
        metrics: Metrics,
        clock_ms: Callable[[], int],
    ) -> None:
        self.model = model
        self._compiled = model.compiled
        self._kernel = kernel_for(self._compiled)  # None: the Python core scores every event
        self.topology = topology
        self.settings = settings
        self.metrics = metrics
        self.clock_ms = clock_ms
        # the sources whose offsets a contact's value keeps (the identity merge's first two
        # steps store no contact, so they need no id)
        unkept = {topology.outbound.identities.name, topology.internal.merge_requests.name}
        self._source_index = {
            name: source_id(name) for name in topology.scoring_sources if name not in unkept
        }
        if len(set(self._source_index.values())) != len(self._source_index):
            raise ConfigError(
                "two scoring sources have the same 16-bit id in stored values; rename one"
            )
        self._legacy_sources = tuple(topology.scoring_sources)
        self._dedupe_window_ms = int(settings.dedupe_window_seconds * 1000)
        self._rekey_topic = topology.internal.rekey.name
        self._partitions = topology.scoring_partitions
        self._tick_topic = topology.internal.ticks.name
        self._stage_topic = topology.outbound.stage_changes.name
        self._scores_topic = topology.outbound.scores.name
        self._dlq_topic = topology.outbound.dead_letters.name
        self._erasure_topic = topology.internal.erasure_requests.name
        self._erasures_out_topic = topology.outbound.erasures.name
        self._max_record_bytes = settings.max_record_bytes
        self._rules = self._compiled.rules
        self._max_future_ms = int(settings.max_future_seconds * 1000)
        self._max_age_ms = int(settings.max_age_days * 86_400_000)
        self._channels = {t: topology.channel_of(t) for t in topology.scoring_sources}
        self._transition_counters: dict[tuple[str, str | None, str, str], Any] = {}
        # per batch, added to the metrics once at its end
        self._transition_counts: Counter[tuple[str, str | None, str, str]] = Counter()
        self._snapshot_count = 0
        #: account membership and member updates (None: the model has no accounts)
        self._members = MemberUpdates.for_scorer(model, topology, metrics)
        self._identity_sources = frozenset(topology.identity_sources)
        self.identity = IdentityMerge(self)
        # what the kernel's route checks a record against
        limits = (
            self._max_record_bytes,
            min(self._max_age_ms, _FAR_MS),
            min(self._max_future_ms, _FAR_MS),
            self._partitions,
        )
        #: the kernel's scorer of whole table values (None: the kernel is not used, or the
        #: model has accounts, whose values the Python side keeps)
        self._stored_scorer = (
            self._kernel.stored_scorer(self._dedupe_window_ms, settings.score_step, limits)
            if self._kernel is not None and self._members is None
            else None
        )
        #: the kernel's check that a record is scored as it stands (see :meth:`_process_one`)
        self._route = self._stored_scorer.route if self._stored_scorer is not None else None
        #: the kernel's decode of a record value on its fast path (None: not used; it does
        #: not read account ids, so models with accounts decode in Python)
        self._kernel_fields = (
            self._kernel.event_fields
            if self._kernel is not None and self._members is None
            else None
        )
        #: the kernel's whole-batch scorer (``rust/src/batch.rs``) and what it is told: the
        #: sources whose records it may take, the wake-up, stage-change and score topics
        self._batch_kernel = batch_kernel() if self._stored_scorer is not None else None
        handled_apart = {*self._identity_sources, self._erasure_topic, self._tick_topic}
        self._kernel_topics = (
            {t: i for t, i in self._source_index.items() if t not in handled_apart},
            self._tick_topic,
            self._stage_topic,
            self._scores_topic,
        )
        self._make_record = functools.partial(tuple.__new__, OutboundRecord)

    # ------------------------------------------------------------------ batch
    def process(
        self,
        records: Sequence[InboundRecord],
        load_contact: Callable[[bytes, int], bytes | None],
        load_history: Callable[[bytes, int], bytes | None],
        list_days: ListDays | None = None,
        held: Collection[int] = (),
        load_alias: Callable[[bytes, int], bytes | None] | None = None,
    ) -> BatchOutcome:
        """Score ``records`` in order, wake-ups last; never raises for a bad record.

        Each contact's stored value is decoded at most once per batch and encoded once at the
        end (one table write, so one changelog record, per contact per batch). ``list_days``
        lists a contact's stored days of the daily table (None: there are none). ``held``:
        partitions whose event sources are not read to their end; their wake-ups are deferred
        (the contact stays due in the due-time index, and the timer sends it again).
        ``load_alias`` reads the aliases table (None: there is none).

        Wake-ups are applied after every other record of the batch: a wake-up that was fetched
        together with events that precede it in time (a fetch read again after a restart or a
        dropped fetch) must not be applied before them.
        """
        out = BatchOutcome()
        daily = DailyBatch(self.settings.history_days)
        batch = _Batch(out, load_contact, load_history, self.clock_ms(), daily)
        batch.load_alias = load_alias
        outcomes: Counter[tuple[str, str]] = Counter()
        channels = self._channels
        tick_topic = self._tick_topic
        ticks: list[int] = []
        kernel = batch.kernel = self._kernel_batch(batch)
        try:
            listed = records if isinstance(records, list) else list(records)  # the kernel's form
            index = 0
            count = len(records)
            while index < count:
                if kernel is not None:  # every record it takes, up to one it does not
                    index = self._run_kernel(batch, listed, index, outcomes)
                    if index >= count:
                        break
                record = records[index]
                if record.topic == tick_topic:
                    ticks.append(index)
                    index += 1
                    continue
                channel = channels.get(record.topic) or self.topology.channel_of(record.topic)
                try:
                    outcome = self._process_one(batch, index, record)
                except Exception as exc:  # a bug must not stop the partition: dead-letter it
                    self.metrics.errors.labels(where="score").inc()
                    failure = FailureType.INTERNAL_ERROR
                    self._dead_letter(out, record, failure, repr(exc), batch.now_ms)
                    outcome = "dead_lettered"
                if outcome:
                    outcomes[(channel, outcome)] += 1
                index += 1
            if kernel is not None:
                ticks = sorted(ticks + kernel.ticks)
            for index in ticks:
                record = records[index]
                try:
                    if record.partition in held:
                        self._defer_tick(batch, index, record)
                    else:
                        self._process_tick(batch, index, record)
                except Exception as exc:  # a bug must not stop the partition: dead-letter it
                    self.metrics.errors.labels(where="score").inc()
                    failure = FailureType.INTERNAL_ERROR
                    self._dead_letter(out, record, failure, repr(exc), batch.now_ms)
            contacts = batch.contacts
            histories = batch.histories
            now_ms = batch.now_ms
            newest = batch.newest
            writes = out.contact_writes
            for key, entry in contacts.items():
                if entry is not None and entry.last_index >= 0:
                    writes[key] = (entry.last_index, entry.encode())
                    if entry.daily:
                        entry.put_days(key, daily)
            if daily:
                out.daily_writes = daily.writes(list_days)
            if kernel is not None:  # its contacts' day keys: none of them is in ``daily``
                self._finish_kernel(batch, list_days)
            history_size = self.settings.history_size
            for key, (index, placeholder) in list(out.history_writes.items()):
                if placeholder is not None:  # None: erased, a tombstone
                    entries = histories[key][-history_size:]
                    out.history_writes[key] = (index, b"[" + b",".join(entries) + b"]")
            consumed = self.metrics.events_consumed
            for (channel, outcome), count in outcomes.items():
                consumed.labels(channel=channel, outcome=outcome).inc(count)
            if batch.replaced:
                out.sends = [r for r in out.sends if r is not _REPLACED]
            self._snapshot_count += len(batch.snapshot_at)
            self._count_outputs()
            for topic, event_ms in newest.items():
                self.metrics.event_time_lag.labels(channel=channels[topic]).set(
                    max(0.0, (now_ms - event_ms) / 1000)
                )
            return out
        finally:
            # the kernel refers to the batch (its alias check reads the batch's aliases) and
            # the batch to it: a cycle through Rust, which the garbage collector cannot see
            batch.kernel = None

    def _count_outputs(self) -> None:
        """Add the batch's transitions and snapshots to the metrics (one call per label set)."""
        counters = self._transition_counters
        for labels, count in self._transition_counts.items():
            counter = counters.get(labels)
            if counter is None:
                lifecycle, from_stage, to_stage, reason = labels
                counter = counters[labels] = self.metrics.transitions.labels(
                    lifecycle=lifecycle,
                    from_stage=from_stage or "none",
                    to_stage=to_stage,
                    reason=reason,
                )
            counter.inc(count)
        self._transition_counts.clear()
        if self._snapshot_count:
            self.metrics.score_snapshots.inc(self._snapshot_count)
            self._snapshot_count = 0

    def _process_one(self, batch: _Batch, index: int, record: InboundRecord) -> str | None:
        if record.topic == self._erasure_topic:
            self._process_erasure(batch, index, record)
            return None
        if record.topic in self._identity_sources:
            return self.identity.process(batch, index, record)
        out = batch.out
        now_ms = batch.now_ms
        value = record.value
        if value is None:
            self._dead_letter(
                out, record, FailureType.SCHEMA_VIOLATION, "record has no value", now_ms
            )
            return "dead_lettered"
        if self._route is not None:
            # the kernel's fast path: a valid event of a type the model scores, in the time
            # window, keyed and placed as its contact (the checks below, in one call)
            routed = self._route(value, record.key, record.partition, now_ms)
            if routed is not None:
                outcome = self._score_routed(batch, index, record, routed)
                if outcome is not None:
                    return outcome
        try:
            decoded = (
                self._kernel_fields(value)
                if self._kernel_fields is not None and len(value) <= self._max_record_bytes
                else None
            )
            fields = (
                EventFields(*decoded)
                if decoded is not None
                else parse_event_fields(value, max_bytes=self._max_record_bytes)
            )
            if fields.type not in self._rules and not (
                self._members is not None and is_account_type(fields.type)
            ):
                check_event_type(fields, self.model)
            event_ms = fields.timestamp_ms
            if not now_ms - self._max_age_ms <= event_ms <= now_ms + self._max_future_ms:
                check_time_window(
                    event_ms,
                    now_ms,
                    max_future_ms=self._max_future_ms,
                    max_age_ms=self._max_age_ms,
                )
        except EventRejected as exc:
            self._dead_letter(out, record, FailureType(exc.failure), exc.message, now_ms)
            return "dead_lettered"
        contact = ContactKey(fields.tenant, fields.contact_id)
        key = contact.encode()
        home = canonical_partition(key, self._partitions)
        if record.key != key:
            out.sends.append(
                OutboundRecord(self._rekey_topic, key, value, (), home, record.timestamp_ms)
            )
            return "rekeyed"
        if record.partition != home:
            # keyed right, but put on another partition (another partitioner, e.g. CRC32):
            # the contact's state lives on its canonical partition, so the record goes there
            out.sends.append(
                OutboundRecord(self._rekey_topic, key, value, (), home, record.timestamp_ms)
            )
            self.metrics.partition_forwards.labels(channel=self._channels[record.topic]).inc()
            return "forwarded"
        entry = self._load(batch, key, index)
        if entry is None:
            redirected = self.identity.redirect(batch, index, record, key)
            if redirected is not None:
                return redirected  # an absorbed id: its events count on its survivor
        source = self._source_index[record.topic]
        if self._stored_scorer is not None:
            outcome = self._kernel_score(batch, index, record, entry, (key, fields, source))
            if outcome is not None:
                return outcome
        if entry is not None and entry.offsets.get(source, -1) >= record.offset:
            # re-delivery of a record already in the state. The local store may hold a write
            # whose changelog record never reached the broker (a crash while it was in flight,
            # before the offsets were committed): write the value (and history) again, so the
            # changelog, which another worker restores from, is not left behind the store.
            self._rewrite(batch, key, index, entry)
            return "duplicate"
        if self._members is not None and fields.type not in self._rules:  # account.*
            state = entry.state(key, contact) if entry is not None else None
            result = self._members.account_event(value, state, entry.account if entry else None)
            self._send_updates(out, result.sends)
            if result.reject is not None:
                self._dead_letter(out, record, result.reject[0], result.reject[1], now_ms)
                return "dead_lettered"
            if entry is not None and result.account != entry.account:
                entry.account = result.account
                entry.offsets[source] = record.offset
                entry.last_index = index
                batch.contacts[key] = entry
            return "scored"
        seen = admit(
            entry.seen if entry is not None else EMPTY_SEEN,
            fields.event_id,
            record.timestamp_ms,
            self._dedupe_window_ms,
        )
        if entry is None:
            entry = _Entry(None, {}, math.nan, EMPTY_SEEN)
        duplicate = seen is None
        if seen is not None:
            if not self._kernel_step(batch, index, record, entry, (key, fields)):
                previous = entry.state(key, contact) if entry.known else None
                state, transitions = step(previous, fields, self._compiled)
                self._emit(batch, index, record, entry, (key, state, transitions))
            entry.seen = seen
            if self._members is not None:
                state = entry.state(key, contact)  # the new state (decoded if the kernel made it)
                account, sends = self._members.member_event(fields, state, entry.account)
                entry.account = account
                self._send_updates(out, sends)
        elif not entry.known:  # a duplicate of nothing: cannot happen (the window is empty)
            return "duplicate"
        # all checks passed: commit the contact's new state to the batch cache
        entry.offsets[source] = record.offset
        self._keep(batch, index, record, (key, entry, fields.timestamp_ms))
        return "duplicate" if duplicate else "scored"

    def _score_routed(
        self, batch: _Batch, index: int, record: InboundRecord, fields: RoutedFields
    ) -> str | None:
        """A record :attr:`_route` took, scored by the kernel as :meth:`_process_one` does
        (its key is the contact's); None where the kernel does not take the stored value."""
        key = record.key
        assert key is not None
        entry = self._load(batch, key, index)
        if entry is None:
            redirected = self.identity.redirect(batch, index, record, key)
            if redirected is not None:
                return redirected
        source = self._source_index[record.topic]
        return self._kernel_score(batch, index, record, entry, (key, fields, source))

    @staticmethod
    def _keep(
        batch: _Batch, index: int, record: InboundRecord, kept: tuple[bytes, _Entry, int]
    ) -> None:
        """Keep a scored record's contact (``(key, entry, event time)``) in the batch cache
        and note its arrival and event time for the metrics."""
        key, entry, event_ms = kept
        entry.last_index = index
        batch.contacts[key] = entry
        batch.out.latency_from_ms.append(record.timestamp_ms)
        newest = batch.newest
        if event_ms > newest.get(record.topic, -1):
            newest[record.topic] = event_ms

    def _defer_tick(self, batch: _Batch, index: int, record: InboundRecord) -> None:
        """A wake-up of a held partition: not applied. The due-time index still holds the
        contact (the timer moved it to its retry time when it sent the wake-up), so the timer
        sends it again once the partition is read to its end."""
        if record.key is not None and record.value is not None and len(record.value) == TICK.size:
            self.metrics.decay_ticks_deferred.inc()

    def _process_tick(self, batch: _Batch, index: int, record: InboundRecord) -> None:
        if record.key is None or record.value is None or len(record.value) != TICK.size:
            return  # not ours; ticks carry no user data, nothing to dead-letter
        key = record.key
        out = batch.out
        entry = self._load(batch, key, index)
        if entry is None:
            out.due_updates[key] = (record.partition, None)
            return
        previous = entry.state(key)
        state, transitions = advance(previous, decode_tick(record.value), self._compiled)
        if not transitions:
            out.due_updates[key] = (record.partition, state.due_ms)
            if state is not previous:  # migrated to a changed model: keep the new due time
                entry.set_state(state)
                entry.last_index = index
            return
        self._emit(batch, index, record, entry, (key, state, transitions))
        entry.last_index = index

    def _process_erasure(self, batch: _Batch, index: int, record: InboundRecord) -> None:
        """Delete the contact's state and history; tombstone its score; confirm downstream."""
        out = batch.out
        now_ms = batch.now_ms
        try:
            if record.value is None:
                raise ValueError("record has no value")
            request = ErasureRequest.model_validate_json(record.value)
        except ValueError as exc:
            self.metrics.erasures.labels(outcome="invalid").inc()
            failure = FailureType.SCHEMA_VIOLATION
            self._dead_letter(out, record, failure, f"erasure request: {exc}", now_ms)
            return
        key = request.key.encode()
        home = canonical_partition(key, self._partitions)
        if record.key != key or record.partition != home:  # not the owner's: send it there
            out.sends.append(OutboundRecord(self._erasure_topic, key, record.value, (), home))
            return
        stored = self._load(batch, key, index)
        if stored is not None and self._members is not None and stored.account is not None:
            self._send_updates(out, self._members.leave(request.key, stored.account[0], now_ms))
        aliased = self.identity.erase(batch, index, request)
        if stored is not None:
            state = stored.state(key)
            for lifecycle, stage in stage_names(state, self._compiled).items():
                out.stage_moves.append((lifecycle, stage, None))
        erasure = Erasure(
            erasure_id=request.erasure_id,
            tenant=request.tenant,
            contact_id=request.contact_id,
            found=stored is not None or aliased,
            requested_at=request.requested_at,
            erased_at=ms_to_rfc3339(now_ms),
            requested_by=request.requested_by,
        )
        out.sends.append(OutboundRecord(self._scores_topic, key, None))  # compaction tombstone
        out.sends.append(OutboundRecord(self._erasures_out_topic, key, erasure.to_json_bytes()))
        batch.contacts[key] = None
        batch.histories[key] = []
        out.contact_writes[key] = (index, None)
        out.history_writes[key] = (index, None)
        batch.daily.erase(key, index)
        out.due_updates[key] = (record.partition, None)
        found = stored is not None or aliased
        self.metrics.erasures.labels(outcome="erased" if found else "not_found").inc()

    @staticmethod
    def _send_updates(out: BatchOutcome, sends: Sequence[tuple[str, bytes, bytes, int]]) -> None:
        """Queue account updates (``(topic, key, value, partition)``)."""
        for topic, key, value, partition in sends:
            out.sends.append(OutboundRecord(topic, key, value, (), partition))

    def _rewrite(self, batch: _Batch, key: bytes, index: int, entry: _Entry) -> None:
        """Write a re-delivered contact's unchanged value and history again at the batch end."""
        entry.last_index = max(entry.last_index, index)
        if not entry.daily:  # its day key may have missed the changelog too
            entry.put_stored_day(key, index, batch.daily)
        out = batch.out
        if key not in out.history_writes and self._history(batch, key, index):
            out.history_writes[key] = (index, b"")  # the value is joined at the batch end

    # ---------------------------------------------------------------- outputs
    def _emit(
        self,
        batch: _Batch,
        index: int,
        record: InboundRecord,
        entry: _Entry,
        change: tuple[bytes, ContactState, list[Transition]],
    ) -> None:
        """Queue the outputs of a state change (``(key, new state, transitions)``) and keep
        the new state and the contact's published index in ``entry``."""
        key, state, transitions = change
        out = batch.out
        out.due_updates[key] = (record.partition, state.due_ms)
        if transitions:
            self._send_transitions(batch, index, key, transitions)
        # the snapshot is evaluated at the state's clock, where the index needs no rebase
        index_now = contact_index(state, self._compiled)
        published = entry.published_index
        moved = math.isnan(published) or abs(index_now - published) > self.settings.score_step
        if moved or transitions:
            snapshot = evaluate(state, state.clock_ms, self._compiled)
            self._send_snapshot(batch, key, snapshot.to_json_bytes())
            entry.published_index = snapshot.index
        entry.set_state(state)

    def _send_snapshot(self, batch: _Batch, key: bytes, value: bytes) -> None:
        """Queue the contact's snapshot in place of the one this batch queued before, if any
        (one snapshot per contact per batch, the latest, where the latest would be sent)."""
        sends = batch.out.sends
        earlier = batch.snapshot_at.get(key)
        if earlier is not None:
            sends[earlier] = _REPLACED
            batch.replaced += 1
        batch.snapshot_at[key] = len(sends)
        sends.append(OutboundRecord(self._scores_topic, key, value))

    def _send_transitions(
        self, batch: _Batch, index: int, key: bytes, transitions: list[Transition]
    ) -> None:
        records = [
            (t.to_json_bytes(), t.lifecycle, t.from_stage, t.to_stage, t.reason)
            for t in transitions
        ]
        self._send_transition_records(batch, index, key, records)

    def _send_transition_records(
        self,
        batch: _Batch,
        index: int,
        key: bytes,
        transitions: Sequence[tuple[bytes, str, str | None, str, str]],
    ) -> None:
        """Queue transitions given as (JSON bytes, lifecycle, from stage, to stage, reason);
        count them and add them to the contact's score history."""
        out = batch.out
        history = self._history(batch, key, index)
        counts = self._transition_counts
        for payload, lifecycle, from_stage, to_stage, reason in transitions:
            out.sends.append(OutboundRecord(self._stage_topic, key, payload))
            move = (lifecycle, from_stage, to_stage)
            out.stage_moves.append(move)
            counts[(*move, reason)] += 1
            history.append(payload)
        del history[: -self.settings.history_size]
        out.history_writes[key] = (index, b"")  # the value is joined at the batch end

    def _kernel_step(
        self,
        batch: _Batch,
        index: int,
        record: InboundRecord,
        entry: _Entry,
        event: tuple[bytes, EventFields],
    ) -> bool:
        """``step`` and :meth:`_emit` of one event by the compiled kernel, on the stored bytes
        (``engagement_index.kernel``: the same outputs); False where the kernel is not used
        (not built, switched off, or a stored state it does not take: the Python core then)."""
        kernel = self._kernel
        if kernel is None:
            return False
        key, fields = event
        item = (entry.stored_bytes(), fields, entry.published_index, self.settings.score_step)
        result = kernel.step_stored([item])[0]
        if result is None:
            return False
        if isinstance(result, str):
            raise RuntimeError(result)
        data, due_ms, clock_ms, transitions, snapshot = result
        out = batch.out
        out.due_updates[key] = (record.partition, due_ms)
        if transitions:
            made = [Transition.trusted(**values) for values in transitions]
            self._send_transitions(batch, index, key, made)
        if snapshot is not None:
            self._send_snapshot(batch, key, orjson.dumps(snapshot))
            entry.published_index = snapshot["index"]
        entry.set_stored(data, clock_ms)
        return True

    def _kernel_score(
        self,
        batch: _Batch,
        index: int,
        record: InboundRecord,
        entry: _Entry | None,
        event: tuple[bytes, EventFields | RoutedFields, int],
    ) -> str | None:
        """One event of a checked, routed record on the contact's whole table value, by the
        kernel (``StoredScorer.score``): the redelivery check, the duplicate window, ``step``
        and :meth:`_emit`. The outcome for the consumed-events metric, or None where the
        kernel does not take the value (the Python side then)."""
        scorer = self._stored_scorer
        assert scorer is not None
        key, fields, source = event
        if entry is None:
            raw, published = None, None
        else:
            raw, published = entry.value(), entry._published
        result = scorer.score(raw, published, fields, (source, record.offset, record.timestamp_ms))
        if result is None:
            return None
        if isinstance(result, str):
            raise RuntimeError(result)
        if isinstance(result, int):  # a re-delivered record: see _process_one
            assert entry is not None
            self._rewrite(batch, key, index, entry)
            return "duplicate"
        code, data, published, due_ms, clock_ms, before, state_at, transitions, snapshot = result
        if entry is None:
            entry = _Entry(None, {}, math.nan, EMPTY_SEEN)
        out = batch.out
        if code == _SCORED:
            out.due_updates[key] = (record.partition, due_ms)
            if transitions:
                self._send_transition_records(batch, index, key, transitions)
            if snapshot is not None:
                self._send_snapshot(batch, key, snapshot)
            entry.set_value(data, state_at, (clock_ms, before))
        else:
            entry.set_bookkeeping(data, state_at)
        entry._published = published
        self._keep(batch, index, record, (key, entry, fields[4]))  # the timestamp
        return "scored" if code == _SCORED else "duplicate"

    # ----------------------------------------------------------- whole batches
    def _kernel_batch(self, batch: _Batch) -> KernelBatch | None:
        """The kernel's scorer of this batch (None where the kernel does not score it)."""
        if self._batch_kernel is None or self._stored_scorer is None:
            return None
        identity = self.identity

        def absorbed(key: bytes, index: int) -> bool:  # as IdentityMerge.redirect reads it
            return identity.alias(batch, key, index).get("alias_of") is not None

        return self._batch_kernel(
            self._stored_scorer,
            self._kernel_topics,
            batch.now_ms,
            (batch.load_contact, absorbed),
            (self._make_record, _REPLACED),
        )

    def _run_kernel(
        self,
        batch: _Batch,
        records: list[InboundRecord],
        start: int,
        outcomes: Counter[tuple[str, str]],
    ) -> int:
        """Records from ``start`` on, scored by the kernel up to the first it does not take
        (its index is returned); their outputs are added to the batch as
        :meth:`_kernel_score` adds them one by one."""
        out = batch.out
        base = len(out.sends)
        kernel = batch.kernel
        assert kernel is not None
        (stop, sends, replaced_earlier, replaced, due, moves, labels, arrivals, counts, newest) = (
            kernel.run(records, start, base)
        )
        if stop == start:
            return stop
        out.sends.extend(sends)
        for position in replaced_earlier:
            out.sends[position] = _REPLACED
        batch.replaced += replaced
        out.due_updates.update(due)
        out.stage_moves.extend(moves)
        self._transition_counts.update(labels)
        out.latency_from_ms.extend(arrivals)
        channels = self._channels
        for (topic, outcome), n in counts.items():
            outcomes[(channels[topic], outcome)] += n
        kept = batch.newest
        for topic, event_ms in newest.items():
            if event_ms > kept.get(topic, -1):
                kept[topic] = event_ms
        return stop

    def _entry_of_kernel(self, batch: _Batch, key: bytes, released: Any) -> _Entry | None:
        """The entry of a contact the kernel held (``KernelBatch.release``), as
        :meth:`_kernel_score` would have left it; its transitions go into its history."""
        value, state_at, published, daily, passed, loaded_day, last_index = released[:7]
        snapshot_at, history, history_index = released[7:]
        if snapshot_at is not None:
            batch.snapshot_at[key] = snapshot_at
        if history:
            self._add_history(batch, key, history_index, history)
        if value is None:
            return None
        entry = _Entry.of_value(value, self._legacy_sources if state_at is None else ())
        entry._raw_state_at = state_at
        entry._published = published
        entry.daily = daily
        entry.passed = passed
        entry._loaded_day = loaded_day
        entry.last_index = last_index
        return entry

    def _finish_kernel(self, batch: _Batch, list_days: ListDays | None) -> None:
        """The table writes of the contacts the kernel still holds at the batch end."""
        out = batch.out
        kernel = batch.kernel
        assert kernel is not None
        histories, snapshots = kernel.finish(
            out.contact_writes, out.daily_writes, list_days, self.settings.history_days
        )
        for key, payloads, index in histories:
            self._add_history(batch, key, index, payloads)
        self._snapshot_count += snapshots

    def _add_history(self, batch: _Batch, key: bytes, index: int, payloads: list[bytes]) -> None:
        """Add a contact's transitions (JSON bytes) to its score history, as
        :meth:`_send_transition_records` does."""
        history = self._history(batch, key, index)
        history.extend(payloads)
        del history[: -self.settings.history_size]
        batch.out.history_writes[key] = (index, b"")

    def _dead_letter(
        self,
        out: BatchOutcome,
        record: InboundRecord,
        failure: FailureType,
        message: str,
        now_ms: int,
    ) -> None:
        self.metrics.dead_letters.labels(failure_type=failure.value).inc()
        out.sends.append(dead_letter(self._dlq_topic, record, (failure, message), now_ms))

    # ------------------------------------------------------------------ tables
    def _load(self, batch: _Batch, key: bytes, index: int) -> _Entry | None:
        cache = batch.contacts
        if key in cache:
            return cache[key]
        if batch.kernel is not None:
            released = batch.kernel.release(key)
            if released is not None:  # the kernel read it in this batch
                entry = cache[key] = self._entry_of_kernel(batch, key, released)
                return entry
        raw = batch.load_contact(key, index)
        entry = None
        if raw is not None:
            if self._stored_scorer is not None:  # decoded when the Python side needs it
                entry = _Entry.of_value(raw, self._legacy_sources)
            else:
                stored = StoredContact.decode(raw, self._legacy_sources)
                entry = _Entry(
                    stored.state_bytes, stored.offsets, stored.published_index, stored.seen
                )
                entry.account = stored.account
        cache[key] = entry
        return entry

    @staticmethod
    def _history(batch: _Batch, key: bytes, index: int) -> list[bytes]:
        history = batch.histories.get(key)
        if history is None:
            raw = batch.load_history(key, index)
            history = [orjson.dumps(item) for item in orjson.loads(raw)] if raw else []
            batch.histories[key] = history
        return history


class _Entry:
    """A contact within one batch: its stored bookkeeping and its state, decoded lazily.

    Two forms. *Fields*: the offsets, the duplicate window, the account and the state (decoded
    or as bytes) are held one by one. *Raw*: the whole table value is held as bytes (as read,
    or as the kernel's :meth:`BatchScorer._kernel_score` wrote it) and the fields are decoded
    from it on first use (which turns the entry into the fields form); the state's bytes are a
    slice of the value. The published index is held apart in both forms (at full precision:
    the value keeps it as an f32).

    ``daily``: the state changed in this batch (its day key is written at the batch end);
    ``passed``: states of this batch the clock has moved on from, by the day they close (each
    is that day's last state: ``stream/daily.py``).
    """

    __slots__ = (
        "_account",
        "_legacy_sources",
        "_loaded_day",
        "_offsets",
        "_published",
        "_raw",
        "_raw_state_at",
        "_seen",
        "_state",
        "_state_bytes",
        "daily",
        "last_index",
        "passed",
    )

    def __init__(
        self,
        state_bytes: bytes | None,
        offsets: dict[int, int],
        published_index: float,
        seen: SeenIds,
    ) -> None:
        self._state_bytes = state_bytes
        self._state: ContactState | None = None
        self._offsets: dict[int, int] | None = offsets
        self._published: float | None = published_index
        self._seen: SeenIds | None = seen
        #: the contact's account and since when (docs/models.md#accounts), or None
        self._account: tuple[str, int] | None = None
        self._raw: bytes | None = None
        self._raw_state_at: int | None = None
        self._legacy_sources: Sequence[str] = ()
        self.last_index = -1  # index in the batch of the last record that changed it
        self.daily = False
        self.passed: dict[int, ContactState | bytes] | None = None
        self._loaded_day: int | None = None  # the day of the stored state, once decoded

    @classmethod
    def of_value(cls, raw: bytes, legacy_sources: Sequence[str]) -> _Entry:
        """An entry of a table value as read, in the raw form (nothing decoded yet)."""
        entry = cls(None, {}, math.nan, EMPTY_SEEN)
        entry._offsets = entry._seen = entry._published = None
        entry._raw = raw
        entry._legacy_sources = legacy_sources
        return entry

    # ------------------------------------------------------------ the two forms
    def _fields(self) -> None:
        """Turn a raw entry into the fields form (decode its bookkeeping)."""
        raw = self._raw
        if raw is None:
            return
        stored = StoredContact.decode(raw, self._legacy_sources)
        self._offsets = stored.offsets
        self._seen = stored.seen
        self._account = stored.account
        if self._published is None:
            self._published = stored.published_index
        if self._state_bytes is None:
            self._state_bytes = stored.state_bytes
        self._raw = None
        self._raw_state_at = None

    def value(self) -> bytes | None:
        """The table value of the entry as it stands (None: it has no state yet)."""
        return self.encode() if self.known else None

    @property
    def offsets(self) -> dict[int, int]:
        """Last applied offset per source id."""
        self._fields()
        assert self._offsets is not None
        return self._offsets

    @property
    def seen(self) -> SeenIds:
        """The duplicate window."""
        self._fields()
        assert self._seen is not None
        return self._seen

    @seen.setter
    def seen(self, seen: SeenIds) -> None:
        self._fields()
        self._seen = seen

    @property
    def account(self) -> tuple[str, int] | None:
        """The contact's account and since when, or None."""
        self._fields()
        return self._account

    @account.setter
    def account(self, account: tuple[str, int] | None) -> None:
        self._fields()
        self._account = account

    @property
    def published_index(self) -> float:
        """The index of the contact's last published snapshot (NaN: none)."""
        if self._published is None:
            assert self._raw is not None
            self._published = published_index_of(self._raw)
        return self._published

    @published_index.setter
    def published_index(self, index: float) -> None:
        self._fields()  # the raw value's copy would be stale
        self._published = index

    @property
    def known(self) -> bool:
        """True once the contact has a state (stored, or made in this batch)."""
        return self._state is not None or self._state_bytes is not None or self._raw is not None

    def state(self, key: bytes, contact: ContactKey | None = None) -> ContactState:
        """The contact's state (decoded on first use); ``contact``: ``key`` decoded, if known."""
        state = self._state
        if state is None:
            data = self.stored_bytes()
            assert data is not None
            if contact is None:
                contact = ContactKey.decode(key)
            state = self._state = decode_state(data, contact)
            if not self.daily:  # the stored state, not one of this batch
                self._loaded_day = closing_day(state.clock_ms)
        return state

    def stored_bytes(self) -> bytes | None:
        """The state's bytes (None: no state yet)."""
        if self._state_bytes is None:
            if self._raw is not None:
                self._state_bytes = self._raw[self._state_at() :]
            elif self._state is not None:
                self._state_bytes = encode_state(self._state)
        return self._state_bytes

    def _state_at(self) -> int:
        at = self._raw_state_at
        if at is None:
            assert self._raw is not None
            at = self._raw_state_at = state_offset(self._raw, self._legacy_sources)
        return at

    def clock_ms(self) -> int:
        """The state's clock (the entry must be :attr:`known`)."""
        if self._state is not None:
            return self._state.clock_ms
        if self._state_bytes is None and self._raw is not None:
            return int(_CLOCK.unpack_from(self._raw, self._state_at() + 2)[0])
        assert self._state_bytes is not None
        return int(_CLOCK.unpack_from(self._state_bytes, 2)[0])

    def set_state(self, state: ContactState) -> None:
        """Replace the state (its bytes are re-encoded at the batch end if it changed)."""
        if state is not self._state:
            self._fields()
            self._pass_day(state.clock_ms)
            self._state = state
            self._state_bytes = None
            self.daily = True

    def set_stored(self, data: bytes, clock_ms: int) -> None:
        """Replace the state by its bytes (the kernel's step), as :meth:`set_state` does."""
        self._fields()
        if not self.daily and self._state is None and self._state_bytes is not None:
            self._loaded_day = closing_day(self.clock_ms())  # the stored state's day
        self._pass_day(clock_ms)
        self._state = None
        self._state_bytes = data
        self.daily = True

    def set_value(self, raw: bytes, state_at: int, clocks: tuple[int, int | None]) -> None:
        """Replace the whole table value by the kernel's, with a new state in it (starting at
        ``state_at``); ``clocks``: the new state's clock and that of the state it replaced
        (None: there was none)."""
        clock_ms, before = clocks
        if not self.daily and before is not None and self._state is None:
            self._loaded_day = closing_day(before)  # the stored state's day
        self._pass_day(clock_ms)
        self._into_raw(raw, state_at)
        self._state = None
        self._state_bytes = None
        self.daily = True

    def set_bookkeeping(self, raw: bytes, state_at: int) -> None:
        """Replace the whole table value by the kernel's, with the same state in it (an
        event id the duplicate window holds: only the offsets changed)."""
        self._into_raw(raw, state_at)

    def _into_raw(self, raw: bytes, state_at: int) -> None:
        self._raw = raw
        self._raw_state_at = state_at
        self._offsets = self._seen = None
        self._account = None
        self._legacy_sources = ()

    def _pass_day(self, clock_ms: int) -> None:
        """Keep the current state of this batch if the next one, at ``clock_ms``, is on
        another day (it is the last state of its day)."""
        if self.daily:
            day = closing_day(self.clock_ms())
            if day != closing_day(clock_ms):
                if self.passed is None:
                    self.passed = {}
                old = self._state
                self.passed[day] = old if old is not None else self.stored_bytes() or b""

    def put_days(self, key: bytes, daily: DailyBatch) -> None:
        """Hand the contact's day states to ``daily`` (after :meth:`encode`)."""
        state_bytes = self.stored_bytes()
        assert state_bytes is not None
        day = closing_day(self.clock_ms())
        days = {
            d: s if isinstance(s, bytes) else encode_state(s)
            for d, s in (self.passed or {}).items()
        }
        days[day] = state_bytes
        daily.put(key, self.last_index, days, day != self._loaded_day)

    def put_stored_day(self, key: bytes, index: int, daily: DailyBatch) -> None:
        """Write the unchanged stored state's day key again (a re-delivered record)."""
        state = self.state(key)
        state_bytes = self.stored_bytes()
        assert state_bytes is not None
        daily.put(key, index, {closing_day(state.clock_ms): state_bytes}, False)

    def encode(self) -> bytes:
        """The table value."""
        if self._raw is not None:
            return self._raw
        state_bytes = self.stored_bytes()
        assert state_bytes is not None
        assert self._offsets is not None
        assert self._seen is not None
        return StoredContact(
            state_bytes, self._offsets, self.published_index, self._seen, self._account
        ).encode()
