"""The segment index: which contacts of a tenant are in which stage, sorted three ways.

One RocksDB database per worker (``segments.db`` in the table folder), keys only (empty
values), for the partitions the worker owns::

    partition:u16be  tenant 0x1f lifecycle 0x1f stage 0x1f  order  sort value  contact id

one key per lifecycle and order (``c``: by contact id, no sort value; ``i``: by the index as of
the contact's clock; ``a``: by the latest event time; ``stream/segment_query.py``), so three
keys per contact and lifecycle. Lifecycle and stage names cannot hold ``0x1f`` and the tenant
cannot either, so a stage's keys are exactly those under its prefix; the contact id comes last
and may hold any byte. A member of an account has three more keys, under an empty lifecycle
name and the account's 8-byte key (:func:`account_key`) in place of the stage::

    partition:u16be  tenant 0x1f 0x1f account key 0x1f  order  sort value  contact id

**Maintained with the state.** :meth:`SegmentIndex.apply` runs in the same synchronous step as
the batch's write of the ``contacts`` table (``Worker.process_batch``, right after
``TableTransaction.write_stores``): it projects each written contact's value before the batch
(as the batch loaded it) and after, and writes the difference in one write batch. No
coroutine runs in between, so no request sees a state without its keys or keys without their
state. Per-tenant counts per stage and per-minute counts of transitions per edge are kept in
memory in the same step.

**Rebuilt at recovery, no changelog.** The index is derived data: at every recovery (start,
rebalance) the worker iterates the contacts of the partitions it owns anyway
(``Worker._rebuild_due_index``), and the index is rebuilt from them there (:meth:`begin_rebuild`,
:meth:`add`, :meth:`end_rebuild`). So it needs no changelog topic of its own, cannot disagree
with a contacts table restored from its changelog, and is written without a write-ahead log
(a crash loses nothing that the next start does not rebuild). The price: recovery writes the
index once more (measured in bench/RESULTS.md).

The per-minute transition counts live in memory only: they restart from 0 when the worker
restarts, and a partition that moves to another worker starts from 0 there
(``counting_since`` in the summary says from when the counts are complete).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import shutil
import struct
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from engagement_index.core.decay import index_of
from engagement_index.core.events import KEY_SEPARATOR, ContactKey
from engagement_index.core.lifecycle import advance, migrate
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.state import ContactState, decode_state, peek_activity
from engagement_index.core.timestamps import parse_timestamp_ms
from engagement_index.kernel import kernel_for
from engagement_index.stream.segment_query import (
    Evaluated,
    ModelView,
    SegmentQuery,
    after,
    evaluate_item,
    item_json,
    matches,
    position_of,
    sort_value,
)
from engagement_index.stream.stored import StoredContact, account_of, state_bytes_of
from engagement_index.stream.transaction import stored_value

if TYPE_CHECKING:
    from engagement_index.stream.app import Worker

log = logging.getLogger("engagement_index.segments")

SEP = KEY_SEPARATOR
_PARTITION = struct.Struct(">H")
#: index entries one list request examines per worker before it answers with what it has
#: (a shorter page and a cursor to go on: selective filters cannot make a request scan on)
SCAN_BUDGET = 5_000
#: the transition counts cover this many whole minutes up to the current one
WINDOW_MINUTES = 1440
_MS_PER_MINUTE = 60_000
#: margin for "the index only falls between events" (float rounding is far below it)
_INDEX_MARGIN = 1e-9
_REBUILD_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class Projection:
    """What the index holds of a contact: its stages, its index at its clock, its last event."""

    stages: tuple[int, ...]
    index: float
    last_event_ms: int
    #: the 8-byte key of the contact's account (:func:`account_key`), None: no account
    account: bytes | None = None


def account_key(account_id: str) -> bytes:
    """The fixed-length stand-in of an account id in index keys (any id, any bytes; a list
    compares the stored account id itself, so a collision only costs a skipped candidate)."""
    return hashlib.blake2b(account_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()


@dataclass(slots=True)
class Leg:
    """One worker's answer to a list request, for the partitions it was asked for.

    ``items``: ``(position, item)`` in the list's order, at most the page's limit;
    ``complete_to``: the position up to which the answer is complete (None: to the end).
    """

    items: list[tuple[bytes, dict[str, object]]]
    complete_to: bytes | None


@dataclass(slots=True)
class _Edges:
    """Transitions per edge and minute of ``occurred_at``, for one partition, by tenant."""

    since_ms: int
    #: tenant -> minute -> (lifecycle, edge id, from, to) -> count
    by_tenant: dict[str, dict[int, Counter[tuple[str, str | None, str | None, str]]]] = field(
        default_factory=dict
    )
    pruned_minute: int = 0

    def add(self, tenant: str, minute: int, edge: tuple[str, str | None, str | None, str]) -> None:
        minutes = self.by_tenant.setdefault(tenant, {})
        counter = minutes.get(minute)
        if counter is None:
            counter = minutes[minute] = Counter()
        counter[edge] += 1

    def prune(self, now_minute: int) -> None:
        """Drop the minutes that left the window (at most once a minute)."""
        if now_minute == self.pruned_minute:
            return
        self.pruned_minute = now_minute
        first = now_minute - WINDOW_MINUTES + 1
        for tenant in list(self.by_tenant):
            minutes = self.by_tenant[tenant]
            for minute in [m for m in minutes if m < first]:
                del minutes[minute]
            if not minutes:
                del self.by_tenant[tenant]


class SegmentIndex:
    """The worker's segment index, stage counts and transition counts (module docstring)."""

    def __init__(
        self,
        path: Path,
        view: ModelView,
        *,
        legacy_sources: Sequence[str],
        stage_topic: str,
        partitions: int,
        load: Callable[[int, bytes], bytes | None],
        overdue: Callable[[int, int], Iterable[bytes]],
        write_buffer_bytes: int = 4 * 1024 * 1024,
        block_cache_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        """``load(partition, key)``: a contact's table value; ``overdue(partition, at)``: the
        keys of a partition whose due time is at or before ``at`` (the due-time index)."""
        self.path = path
        self.view = view
        self._cm = view.cm
        #: projects the table values it takes (None: the Python side projects them all)
        self._kernel = kernel_for(self._cm)
        self._legacy_sources = tuple(legacy_sources)
        self._stage_topic = stage_topic
        self._partitions = partitions
        self._load = load
        self._overdue = overdue
        self._write_buffer_bytes = write_buffer_bytes
        self._block_cache_bytes = block_cache_bytes
        self._db: Rdict | None = None
        self._write_options = WriteOptions()
        cast(Any, self._write_options).disable_wal = True  # rebuilt at every start: no log
        #: lifecycle and stage names as key bytes, by position
        self._names = tuple(
            (lc.name.encode(), tuple(s.name.encode() for s in lc.stages))
            for lc in self._cm.lifecycles
        )
        #: partition -> tenant -> (lifecycle position, stage position) -> contacts
        self.counts: dict[int, dict[str, Counter[tuple[int, int]]]] = {}
        self.edges: dict[int, _Edges] = {}
        #: False while the index is rebuilt (a request answers "retry")
        self.ready = False
        #: the last batch's due times (key -> (partition, due)): the due-time index gets them
        #: only once the batch's changelog is acknowledged, the index at once
        self._recent: dict[bytes, tuple[int, int]] = {}
        self._rebuild: WriteBatch | None = None
        self._rebuild_pending = 0

    @classmethod
    def for_worker(cls, worker: Worker) -> SegmentIndex:
        """The index of ``worker``: its table folder, model, topology, tables and due index."""
        settings = worker.settings
        topology = worker.topology
        retry_ms = int(settings.tick_retry_seconds * 1000)

        def load(partition: int, key: bytes) -> bytes | None:
            return stored_value(worker.contacts, partition, key)

        def overdue(partition: int, at_ms: int) -> list[bytes]:
            return worker.due.overdue(partition, at_ms, retry_ms)

        return cls(
            Path(worker.app.conf.tabledir) / "segments.db",
            ModelView.of(worker.model),
            legacy_sources=topology.scoring_sources,
            stage_topic=topology.outbound.stage_changes.name,
            partitions=topology.scoring_partitions,
            load=load,
            overdue=overdue,
            write_buffer_bytes=settings.rocksdb_write_buffer_bytes,
            block_cache_bytes=settings.rocksdb_block_cache_bytes,
        )

    # ------------------------------------------------------------------ storage
    def _options(self) -> Options:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(self._write_buffer_bytes)
        from rocksdict import BlockBasedOptions, Cache

        table = BlockBasedOptions()
        table.set_block_cache(Cache(self._block_cache_bytes))
        options.set_block_based_table_factory(table)
        return options

    def _open(self) -> Rdict:
        db = self._db
        if db is None:
            # a folder left by an earlier run is rebuilt anyway: start from nothing
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._db = Rdict(str(self.path), options=self._options())
            db.set_write_options(self._write_options)
        return db

    def close(self) -> None:
        """Close the database (the worker stops)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def compact(self) -> None:
        """Flush the memtables and compact everything (to measure the size on disk)."""
        db = self._open()
        db.flush(True)
        db.compact_range(None, None)

    def disk_bytes(self) -> int:
        """Bytes of the index on disk (live SST files)."""
        return sum(f.stat().st_size for f in self.path.glob("*.sst")) if self.path.exists() else 0

    # --------------------------------------------------------------- projection
    def project_state(
        self,
        state_bytes: bytes,
        key: bytes,
        state: ContactState | None = None,
        account_id: str | None = None,
    ) -> Projection:
        """The projection of an encoded state (``state``: it decoded and migrated, if known;
        ``account_id``: the account its stored value names)."""
        cm = self._cm
        if state is None:
            layout, stage_ids, last, values = peek_activity(state_bytes)
            if layout is not cm.layout and layout != cm.layout:
                # another model's state: indexed as the model will see it (recovery migrates
                # it the same way to index its due time)
                state, _ = migrate(decode_state(state_bytes, ContactKey.decode(key)), cm)
        if state is not None:
            stage_ids, last, values = state.stages, state.last_event_ms, state.values
        by_id = cm.stage_by_id
        stages = tuple(by_id[s][1] for s in stage_ids)
        weights = cm.weights[cm.lifecycles[0].stages[stages[0]].index]
        account = None if account_id is None else account_key(account_id)
        return Projection(stages, index_of(values, weights, cm), last, account)

    def project(self, raw: bytes | None, key: bytes) -> Projection | None:
        """The projection of a ``contacts`` table value (None: none, or undecodable)."""
        if raw is None:
            return None
        if self._kernel is not None:
            projected = self._kernel.project(raw)
            if projected is not None:
                return Projection(*projected)
        try:
            state_bytes = state_bytes_of(raw, self._legacy_sources)
            return self.project_state(state_bytes, key, account_id=account_of(raw))
        except Exception:  # undecodable: recovery does not index it either
            return None

    def _keys(self, partition: int, key: bytes, projection: Projection) -> list[bytes]:
        tenant, _, contact = key.partition(SEP)
        head = _PARTITION.pack(partition) + tenant + SEP
        by_index = sort_value(b"i", projection.index, projection.last_event_ms)
        by_time = sort_value(b"a", projection.index, projection.last_event_ms)
        out = []
        for (lifecycle, stages), stage in zip(self._names, projection.stages, strict=True):
            base = head + lifecycle + SEP + stages[stage] + SEP
            out.append(base + b"c" + contact)
            out.append(base + b"i" + by_index + contact)
            out.append(base + b"a" + by_time + contact)
        if projection.account is not None:
            # the members of an account, under an empty lifecycle name (no lifecycle's)
            base = head + SEP + projection.account + SEP
            out.append(base + b"c" + contact)
            out.append(base + b"i" + by_index + contact)
            out.append(base + b"a" + by_time + contact)
        return out

    def _count(self, partition: int, key: bytes, stages: Sequence[int], delta: int) -> None:
        """Add ``delta`` to the counts of a contact's ``stages`` (a position per lifecycle)."""
        tenant = key.partition(SEP)[0].decode("ascii")
        per_tenant = self.counts.setdefault(partition, {})
        counts = per_tenant.get(tenant)
        if counts is None:
            counts = per_tenant[tenant] = Counter()
        for lifecycle, stage in enumerate(stages):
            counts[(lifecycle, stage)] += delta

    # --------------------------------------------------------------------- batch
    def apply(
        self,
        writes: Mapping[bytes, tuple[int, bytes | None]],
        loaded: Mapping[bytes, bytes | None],
        partition_of: Callable[[int], int],
        sends: Iterable[Any],
        due_updates: Mapping[bytes, tuple[int, int | None]],
        now_ms: int,
    ) -> None:
        """Bring the index up to a batch's table writes (module docstring).

        ``writes``: the batch's ``contacts`` writes (key -> (record index, value or None));
        ``loaded``: each written key's value before the batch, as the batch read it;
        ``sends``: the batch's output records (its transitions are counted).
        """
        db = self._open()
        batch = WriteBatch(raw_mode=True)
        partition_of_key: dict[bytes, int] = {}
        changes: list[tuple[int, bytes, bytes | None, bytes | None]] = []
        for key, (index, new_raw) in writes.items():
            partition = partition_of(index)
            partition_of_key[key] = partition
            old_raw = loaded.get(key)
            if old_raw != new_raw:
                changes.append((partition, key, old_raw, new_raw))
        changed = self._write_changes(batch, changes)
        if changed:
            db.write(batch)
        self._recent = {
            key: (partition, due) for key, (partition, due) in due_updates.items() if due
        }
        self._count_transitions(sends, partition_of_key, now_ms)

    def _write_changes(
        self, batch: WriteBatch, changes: Sequence[tuple[int, bytes, bytes | None, bytes | None]]
    ) -> bool:
        """Put the index keys of ``changes`` ((partition, key, value before, value after)) into
        ``batch`` and count the stage moves; True if anything may have changed. The kernel
        does the values it takes in one call (``Kernel.index_changes``), the Python side the
        rest, with the same keys and counts."""
        changed = False
        if self._kernel is not None and changes:
            deletes, puts, moves, rest = self._kernel.index_changes(changes)
            for k in deletes:
                batch.delete(k)
            for k in puts:
                batch.put(k, b"")
            for position, old_stages, new_stages in moves:
                partition, key = changes[position][:2]
                if old_stages is not None:
                    self._count(partition, key, old_stages, -1)
                if new_stages is not None:
                    self._count(partition, key, new_stages, 1)
            changed = bool(deletes or puts or moves)
            changes = [changes[position] for position in rest]
        for partition, key, old_raw, new_raw in changes:
            old = self.project(old_raw, key)
            new = self.project(new_raw, key)
            if old == new:
                continue
            old_keys = self._keys(partition, key, old) if old is not None else []
            new_keys = self._keys(partition, key, new) if new is not None else []
            keep = set(old_keys) & set(new_keys)
            for k in old_keys:
                if k not in keep:
                    batch.delete(k)
            for k in new_keys:
                if k not in keep:
                    batch.put(k, b"")
            if old is not None:
                self._count(partition, key, old.stages, -1)
            if new is not None:
                self._count(partition, key, new.stages, 1)
            changed = True
        return changed

    def _count_transitions(
        self, sends: Iterable[Any], partition_of_key: Mapping[bytes, int], now_ms: int
    ) -> None:
        topic = self._stage_topic
        now_minute = now_ms // _MS_PER_MINUTE
        first = now_minute - WINDOW_MINUTES + 1
        for send in sends:
            if send.topic != topic or send.value is None or send.key is None:
                continue
            t = orjson.loads(send.value)
            minute = parse_timestamp_ms(t["occurred_at"]) // _MS_PER_MINUTE
            if minute < first:
                continue  # a late event's transition, older than the window
            partition = partition_of_key.get(send.key)
            if partition is None:
                partition = canonical_partition(send.key, self._partitions)
            edges = self.edges.get(partition)
            if edges is None:
                continue  # not a partition of this worker (cannot happen)
            edges.add(
                t["tenant"], minute, (t["lifecycle"], t["rule_id"], t["from_stage"], t["to_stage"])
            )
        for edges in self.edges.values():
            edges.prune(now_minute)

    # ------------------------------------------------------------------ rebuild
    def begin_rebuild(self, owned: Collection[int], now_ms: int) -> None:
        """Forget the index (it is rebuilt from the states of the ``owned`` partitions)."""
        self.ready = False
        db = self._open()
        db.delete_range(b"", b"\xff\xff\xff")
        self.counts = {p: {} for p in owned}
        # a partition kept through the rebalance keeps its transition counts
        self.edges = {p: self.edges.get(p) or _Edges(now_ms) for p in owned}
        self._recent = {}
        self._rebuild = WriteBatch(raw_mode=True)
        self._rebuild_pending = 0

    def add(
        self,
        partition: int,
        key: bytes,
        stored: StoredContact,
        state: ContactState | None = None,
    ) -> None:
        """Index one stored contact during a rebuild (``state``: decoded and migrated)."""
        account_id = None if stored.account is None else stored.account[0]
        self.add_projection(
            partition, key, self.project_state(stored.state_bytes, key, state, account_id)
        )

    def add_projection(self, partition: int, key: bytes, projection: Projection) -> None:
        """Index one contact during a rebuild by its projection (the kernel's, or
        :meth:`add`'s)."""
        assert self._rebuild is not None, "add() outside begin_rebuild()/end_rebuild()"
        for k in self._keys(partition, key, projection):
            self._rebuild.put(k, b"")
        self._count(partition, key, projection.stages, 1)
        self._rebuild_pending += 1
        if self._rebuild_pending >= _REBUILD_BATCH:
            self._open().write(self._rebuild)
            self._rebuild = WriteBatch(raw_mode=True)
            self._rebuild_pending = 0

    def end_rebuild(self) -> None:
        """The rebuild is complete: the index answers again."""
        if self._rebuild is not None and self._rebuild_pending:
            self._open().write(self._rebuild)
        self._rebuild = None
        self._rebuild_pending = 0
        self.ready = True

    # -------------------------------------------------------------------- reads
    def _stage_base(self, partition: int, tenant: bytes, lifecycle: int, stage: int) -> bytes:
        lc_name, stage_names = self._names[lifecycle]
        return _PARTITION.pack(partition) + tenant + SEP + lc_name + SEP + stage_names[stage] + SEP

    @staticmethod
    def _account_base(partition: int, tenant: bytes, account_id: str) -> bytes:
        return _PARTITION.pack(partition) + tenant + SEP + SEP + account_key(account_id) + SEP

    def _scan(
        self,
        base: bytes,
        partition: int,
        order: bytes,
        start: bytes | None,
        descending: bool,
    ) -> Iterator[tuple[bytes, int, bytes]]:
        """``(position, partition, contact id)`` of the keys under ``base`` (a stage's, or an
        account's) after ``start``, in order."""
        prefix = base + order
        skip = len(prefix) + (0 if order == b"c" else 8)
        cut = len(prefix)
        it = self._open().iter()
        if not descending:
            target = prefix + start if start is not None else prefix
            it.seek(target)
            if start is not None and it.valid() and it.key() == target:
                it.next()
            while it.valid():
                k = it.key()
                if not k.startswith(prefix):
                    return
                yield k[cut:], partition, k[skip:]
                it.next()
        else:
            target = prefix + start if start is not None else prefix[:-1] + bytes([order[0] + 1])
            it.seek_for_prev(target)
            if it.valid() and it.key() == target:
                it.prev()
            while it.valid():
                k = it.key()
                if not k.startswith(prefix):
                    return
                yield k[cut:], partition, k[skip:]
                it.prev()

    def _state(self, partition: int, key: bytes) -> tuple[ContactState, str | None] | None:
        """A contact's state and account (None: no state, or undecodable)."""
        raw = self._load(partition, key)
        if raw is None:
            return None
        try:
            stored = StoredContact.decode(bytes(raw), self._legacy_sources)
            state = decode_state(stored.state_bytes, ContactKey.decode(key))
        except Exception:
            log.exception("undecodable state of a contact in partition %d", partition)
            return None
        return state, None if stored.account is None else stored.account[0]

    def overdue(self, tenant: str, partitions: Collection[int], at_ms: int) -> dict[bytes, int]:
        """The tenant's contacts with a time-driven change due by ``at_ms``: key -> partition.

        From the due-time index, and the last batch's due times (the due-time index gets
        those once the batch's changelog is acknowledged).
        """
        prefix = tenant.encode("ascii") + SEP
        out: dict[bytes, int] = {}
        for partition in partitions:
            for key in self._overdue(partition, at_ms):
                if key.startswith(prefix):
                    out[key] = partition
        for key, (partition, due) in self._recent.items():
            if due <= at_ms and partition in partitions and key.startswith(prefix):
                out[key] = partition
        return out

    def driving(
        self, query: SegmentQuery, tenant: str, partitions: Collection[int]
    ) -> tuple[int, list[int]]:
        """The lifecycle whose keys a list scans, and its stages: of the filtered lifecycles
        the one with the fewest contacts in the allowed stages (none: the first, all stages)."""
        if not query.stages:
            return 0, list(range(len(self._names[0][1])))
        totals = Counter[tuple[int, int]]()
        for partition in partitions:
            counts = self.counts.get(partition, {}).get(tenant)
            if counts:
                totals.update(counts)
        best = min(
            query.stages.items(),
            key=lambda item: (sum(totals[(item[0], s)] for s in item[1]), item[0]),
        )
        return best[0], sorted(best[1])

    def list_local(
        self, query: SegmentQuery, tenant: str, partitions: Collection[int], at_ms: int
    ) -> Leg:
        """This worker's part of a list: the page of its ``partitions`` (see :class:`Leg`).

        Every candidate is evaluated at ``at_ms``. Candidates: the keys of the driving
        lifecycle's allowed stages after the cursor, and every contact of the tenant with a
        time-driven change due by ``at_ms`` (whatever its stored stage: it may have moved
        into the segment, or out, and its sort value may have changed), each at the
        position its state will have once the change is applied.
        """
        view = self.view
        order = query.sort.order
        descending = query.sort.descending
        start = query.after
        limit = query.limit
        tenant_bytes = tenant.encode("ascii")
        seen: set[bytes] = set()
        candidates: list[tuple[bytes, dict[str, object]]] = []

        def consider(item: Evaluated, position: bytes) -> bool:
            if after(position, start, descending) and matches(item, query, at_ms):
                candidates.append((position, item_json(item, view)))
                return True
            return False

        overdue = self.overdue(tenant, partitions, at_ms)
        for key, partition in overdue.items():
            found_state = self._state(partition, key)
            if found_state is None:
                continue
            seen.add(key)
            item = evaluate_item(found_state[0], at_ms, view, found_state[1])
            consider(item, position_of(item, order))
        if query.account_id is not None:  # the account's members (usually far fewer)
            bases = [
                (self._account_base(p, tenant_bytes, query.account_id), p)
                for p in sorted(partitions)
            ]
        else:
            lifecycle, stages = self.driving(query, tenant, partitions)
            bases = [
                (self._stage_base(p, tenant_bytes, lifecycle, s), p)
                for p in sorted(partitions)
                for s in stages
            ]
        scans = [self._scan(base, p, order, start, descending) for base, p in bases]
        merged = heapq.merge(*scans, key=lambda entry: entry[0], reverse=descending)
        floor = None  # sort=-index with min_index: nothing below it can match any more
        if order == b"i" and descending and query.min_index is not None:
            floor = sort_value(b"i", max(query.min_index - _INDEX_MARGIN, 0.0), 0)
        oldest = None  # sort=-last_event with active_within: nothing older can match
        if order == b"a" and descending and query.active_within_ms is not None:
            oldest = sort_value(b"a", 0.0, at_ms - query.active_within_ms)
        stop: bytes | None = None
        last: bytes | None = None
        examined = found = 0
        for position, partition, contact in merged:
            if (floor is not None and position[:8] < floor) or (
                oldest is not None and position[:8] < oldest
            ):
                break
            if examined >= SCAN_BUDGET:
                stop = last
                break
            examined += 1
            last = position
            key = tenant_bytes + SEP + contact
            if key in seen:
                continue
            found_state = self._state(partition, key)
            if found_state is None:
                continue  # erased since (cannot happen: the keys go with the state)
            seen.add(key)
            item = evaluate_item(found_state[0], at_ms, view, found_state[1])
            if position_of(item, order) != position:
                continue  # a change due by now moves it: it was considered above
            if consider(item, position):
                found += 1
                if found >= limit:
                    stop = position
                    break
        if stop is not None:
            candidates = [c for c in candidates if not after(c[0], stop, descending)]
        candidates.sort(key=lambda c: c[0], reverse=descending)
        if len(candidates) >= limit:
            del candidates[limit:]
            return Leg(candidates, candidates[-1][0])
        return Leg(candidates, stop)

    def summary_local(self, tenant: str, partitions: Collection[int], at_ms: int) -> dict[str, Any]:
        """This worker's counts for ``partitions`` as of ``at_ms``: contacts per lifecycle
        and stage, transitions per edge in the window, and since when they are counted.

        The counts of the contacts with a change due by ``at_ms`` are corrected to the stages
        it leads to, and its transitions are counted (what their wake-ups will emit).
        """
        cm = self._cm
        counts: Counter[tuple[int, int]] = Counter()
        for partition in partitions:
            per_tenant = self.counts.get(partition, {}).get(tenant)
            if per_tenant:
                counts.update(per_tenant)
        now_minute = at_ms // _MS_PER_MINUTE
        first = now_minute - WINDOW_MINUTES + 1
        edges: Counter[tuple[str, str | None, str | None, str]] = Counter()
        since = 0
        for partition in partitions:
            partition_edges = self.edges.get(partition)
            if partition_edges is None:
                continue
            since = max(since, partition_edges.since_ms)
            for minute, counter in partition_edges.by_tenant.get(tenant, {}).items():
                if first <= minute <= now_minute:
                    edges.update(counter)
        for key, partition in self.overdue(tenant, partitions, at_ms).items():
            raw = self._load(partition, key)
            if raw is None:
                continue
            try:
                stored = StoredContact.decode(bytes(raw), self._legacy_sources)
                before = self.project_state(stored.state_bytes, key)  # (its stages only)
                state = decode_state(stored.state_bytes, ContactKey.decode(key))
            except Exception:
                continue  # undecodable: not counted either
            moved, transitions = advance(state, at_ms, cm)
            by_id = cm.stage_by_id
            for lifecycle, stage in enumerate(before.stages):
                counts[(lifecycle, stage)] -= 1
            for stage_id in moved.stages:
                counts[by_id[stage_id]] += 1
            for t in transitions:
                minute = parse_timestamp_ms(t.occurred_at) // _MS_PER_MINUTE
                if first <= minute <= now_minute:
                    edges[(t.lifecycle, t.rule_id, t.from_stage, t.to_stage)] += 1
        return {
            "counts": [[lc, stage, n] for (lc, stage), n in sorted(counts.items()) if n],
            "edges": [[*edge, n] for edge, n in edges.items()],
            "counting_since": since,
        }
