"""The identity merge protocol: identify/alias links fold an absorbed id into a survivor.

Three steps, each on the partition that owns the key it reads (docs/streaming.md#identity-merge):

1. **link** (the identities topic, keyed by the survivor): validate the record, refuse blocked
   ids and self-links, follow the survivor's own alias (a chain ``a -> b`` where ``b`` is an
   alias of ``c`` merges ``a`` into ``c``), then send a *merge request* keyed by the absorbed id
   to the merge-requests topic. Stateless.
2. **absorb** (merge-requests, keyed by the absorbed id): refuse an id that has aliases of its
   own (two known ids never merge) or that is an alias of another survivor; otherwise send a
   *transfer* (the absorbed state and duplicate window) keyed by the survivor to the
   merge-transfers topic, tombstone the absorbed id's score, and, once the transfer is
   acknowledged, delete its state and write its alias (absorbed -> survivor). A request
   whose alias is already written is a duplicate: nothing is sent again.
3. **merge** (merge-transfers, keyed by the survivor): fold the transfer into the survivor's
   state (``core.merge``), publish the transitions, the snapshot and one merge record, then
   store the state and the survivor's alias list. A transfer whose absorbed id is already in
   the list, or whose offset the state already holds, changes nothing.

Events of an absorbed id that arrive later find no state and the alias: they are sent on to
the survivor (the re-key topic, ``contact_id`` replaced) and counted there.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from engagement_index.collector.models import IdentityRecord
from engagement_index.core.accounts import merge_updates
from engagement_index.core.dedupe import EMPTY as EMPTY_SEEN
from engagement_index.core.dedupe import decode_seen, encode_seen
from engagement_index.core.erasure import ErasureRequest
from engagement_index.core.events import ContactKey, FailureType
from engagement_index.core.lifecycle import stage_names
from engagement_index.core.merge import (
    MAX_ALIASES,
    MergeContext,
    MergeRecord,
    is_blocked,
    merge_id_of,
    merge_states,
    unite_seen,
)
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.state import decode_state, encode_state
from engagement_index.core.timestamps import ms_to_rfc3339
from engagement_index.errors import IdentityRecordError, StateDecodeError

if TYPE_CHECKING:
    from engagement_index.stream.scoring import BatchScorer, InboundRecord, _Batch


def decode_alias(raw: bytes | None) -> dict[str, Any]:
    """An aliases-table value: ``{"alias_of": id, "merge_id": ...}`` for an absorbed id,
    ``{"aliases": [{"id": ..., "merge_id": ...}, ...]}`` for a survivor ({} if none)."""
    if raw is None:
        return {}
    value = orjson.loads(bytes(raw))
    if not isinstance(value, dict):
        raise IdentityRecordError("alias value is not an object")
    return value


def alias_body(key: ContactKey, alias: dict[str, Any]) -> dict[str, Any]:
    """The contact API's answer for an absorbed id: where its engagement now counts."""
    return {
        "tenant": key.tenant,
        "contact_id": key.contact_id,
        "merged_into": {"contact_id": alias["alias_of"], "merge_id": alias.get("merge_id")},
    }


def encode_alias(value: dict[str, Any]) -> bytes | None:
    """The table value (None: delete the key)."""
    return orjson.dumps(value) if value else None


def rewrite_contact(value: bytes, contact_id: str) -> bytes:
    """An event's bytes with ``contact_id`` replaced (the event of an alias, for its survivor)."""
    event = orjson.loads(value)
    event["contact_id"] = contact_id
    return orjson.dumps(event)


class IdentityMerge:
    """The three steps, run by :class:`~engagement_index.stream.scoring.BatchScorer`."""

    def __init__(self, scorer: BatchScorer) -> None:
        topology = scorer.topology
        self.scorer = scorer
        self.identities = topology.outbound.identities.name
        self.requests = topology.internal.merge_requests.name
        self.transfers = topology.internal.merge_transfers.name
        self.merges = topology.outbound.merges.name
        self.blocked = frozenset(i.strip().casefold() for i in scorer.settings.identity_blocked_ids)
        self.partitions = topology.scoring_partitions
        self.max_bytes = scorer.settings.max_record_bytes
        self.steps = {self.identities: "link", self.requests: "absorb", self.transfers: "merge"}
        self.links = scorer.metrics.identity_links

    # ------------------------------------------------------------------ tables
    def alias(self, batch: _Batch, key: bytes, index: int) -> dict[str, Any]:
        """The key's aliases-table value, read once per batch (changes kept in the batch)."""
        cache = batch.aliases
        if key not in cache:
            raw = batch.load_alias(key, index) if batch.load_alias is not None else None
            cache[key] = decode_alias(raw)
        return cache[key]

    def put_alias(self, batch: _Batch, key: bytes, index: int, value: dict[str, Any]) -> None:
        batch.aliases[key] = value
        batch.out.alias_writes[key] = (index, encode_alias(value))

    # ---------------------------------------------------------------- dispatch
    def process(self, batch: _Batch, index: int, record: InboundRecord) -> str:
        """One record of an identity source; the outcome for the consumed-events metric."""
        step = self.steps[record.topic]
        try:
            if record.value is None:
                raise IdentityRecordError("record has no value")
            if len(record.value) > self.max_bytes:
                self.links.labels(step=step, outcome="invalid").inc()
                why = f"record is {len(record.value)} bytes, the limit is {self.max_bytes}"
                scorer = self.scorer
                scorer._dead_letter(batch.out, record, FailureType.OVERSIZED, why, batch.now_ms)
                return "dead_lettered"
            if record.topic == self.identities:
                return self._link(batch, index, record)
            message = orjson.loads(record.value)
            if not isinstance(message, dict):
                raise IdentityRecordError("not a JSON object")
            if record.topic == self.requests:
                return self._absorb(batch, index, record, message)
            return self._merge(batch, index, record, message)
        except (
            ValidationError,
            IdentityRecordError,
            orjson.JSONDecodeError,
            KeyError,
            TypeError,
            binascii.Error,
            StateDecodeError,
        ) as exc:
            self.links.labels(step=step, outcome="invalid").inc()
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.scorer._dead_letter(
                batch.out, record, FailureType.SCHEMA_VIOLATION, f"identity: {text}", batch.now_ms
            )
            return "dead_lettered"

    def _refuse(self, batch: _Batch, record: InboundRecord, step: str, why: str) -> str:
        self.links.labels(step=step, outcome="refused").inc()
        self.scorer._dead_letter(batch.out, record, FailureType.IDENTITY_REFUSED, why, batch.now_ms)
        return "dead_lettered"

    # ------------------------------------------------------------------ step 1
    def _link(self, batch: _Batch, index: int, record: InboundRecord) -> str:
        assert record.value is not None
        link = IdentityRecord.model_validate_json(record.value)
        if link.kind == "group" or not link.links:
            self.links.labels(step="link", outcome="ignored").inc()
            return "ignored"  # group calls and identify without an anonymous id: no link
        absorbed = link.anonymous_id if link.kind == "identify" else link.previous_id
        assert absorbed is not None
        for name, value in (("contact_id", link.contact_id), ("absorbed", absorbed)):
            if is_blocked(value, self.blocked):
                return self._refuse(batch, record, "link", f"{name}: {value!r} never merges")
        if not 1 <= len(absorbed) <= 256:
            raise IdentityRecordError("the absorbed id must have 1 to 256 characters")
        survivor = link.contact_id
        key = ContactKey(link.tenant, survivor).encode()
        home = canonical_partition(key, self.partitions)
        if record.key != key or record.partition != home:  # read where the survivor lives
            batch.out.sends.append(self._out(self.identities, key, record.value, home))
            return "forwarded"
        current = self.alias(batch, key, index)
        alias_of = current.get("alias_of")
        if alias_of is not None:  # the survivor was merged itself: link to its survivor
            survivor = alias_of
        elif len(current.get("aliases", ())) >= MAX_ALIASES:
            why = f"contact_id: has {MAX_ALIASES} aliases already, the most one contact keeps"
            return self._refuse(batch, record, "link", why)
        if survivor == absorbed:
            self.links.labels(step="link", outcome="duplicate").inc()
            return "duplicate"
        request = {
            "merge_id": merge_id_of(link.tenant, survivor, absorbed),
            "tenant": link.tenant,
            "survivor": survivor,
            "absorbed": absorbed,
            "kind": link.kind,
            "cause_event_id": link.event_id,
        }
        target = ContactKey(link.tenant, absorbed).encode()
        partition = canonical_partition(target, self.partitions)
        batch.out.sends.append(self._out(self.requests, target, orjson.dumps(request), partition))
        self.links.labels(step="link", outcome="requested").inc()
        return "linked"

    # ------------------------------------------------------------------ step 2
    def _absorb(
        self, batch: _Batch, index: int, record: InboundRecord, request: dict[str, Any]
    ) -> str:
        tenant, survivor, absorbed = request["tenant"], request["survivor"], request["absorbed"]
        key = ContactKey(tenant, absorbed).encode()
        if record.key != key or record.partition != canonical_partition(key, self.partitions):
            raise IdentityRecordError("a merge request must be keyed by its absorbed id")
        current = self.alias(batch, key, index)
        if current.get("alias_of") == survivor:
            # applied: its transfer was acknowledged before the alias was written. The local
            # store may hold writes whose changelog records were in flight at a crash: write
            # the alias and the deletions again (as BatchScorer._rewrite does for a contact)
            out = batch.out
            out.alias_writes.setdefault(key, (index, encode_alias(current)))
            if self.scorer._load(batch, key, index) is None:
                out.contact_writes.setdefault(key, (index, None))
                out.history_writes.setdefault(key, (index, None))
            self.links.labels(step="absorb", outcome="duplicate").inc()
            return "duplicate"
        if "alias_of" in current:
            why = f"absorbed: already merged into {current['alias_of']!r}"
            return self._refuse(batch, record, "absorb", why)
        if current.get("aliases"):
            why = "absorbed: has aliases of its own (two known ids are not merged)"
            return self._refuse(batch, record, "absorb", why)
        scorer = self.scorer
        entry = scorer._load(batch, key, index)
        state_b64 = None
        seen_b64 = base64.b64encode(encode_seen(EMPTY_SEEN)).decode()
        out = batch.out
        if entry is not None and entry.known:
            state = entry.state(key)
            state_b64 = base64.b64encode(encode_state(state)).decode()
            seen_b64 = base64.b64encode(encode_seen(entry.seen)).decode()
            for lifecycle, stage in stage_names(state, scorer._compiled).items():
                out.stage_moves.append((lifecycle, stage, None))
        account = list(entry.account) if entry is not None and entry.account else None
        transfer = {**request, "state": state_b64, "seen": seen_b64, "account": account}
        target = ContactKey(tenant, survivor).encode()
        partition = canonical_partition(target, self.partitions)
        out.sends.append(self._out(self.transfers, target, orjson.dumps(transfer), partition))
        if entry is not None:
            out.sends.append(self._out(scorer._scores_topic, key, None, None))
            batch.contacts[key] = None
            batch.histories[key] = []
            out.contact_writes[key] = (index, None)
            out.history_writes[key] = (index, None)
            batch.daily.erase(key, index)
        out.due_updates[key] = (record.partition, None)
        alias: dict[str, Any] = {"alias_of": survivor, "merge_id": request["merge_id"]}
        if entry is not None and entry.offsets:
            # the last offset per source the transfer holds: a record of the absorbed id at
            # or below it, delivered again after a crash, is in the transfer (redirect)
            alias["offsets"] = {str(source): offset for source, offset in entry.offsets.items()}
        self.put_alias(batch, key, index, alias)
        self.links.labels(step="absorb", outcome="absorbed").inc()
        return "absorbed"

    # ------------------------------------------------------------------ step 3
    def _merge(
        self, batch: _Batch, index: int, record: InboundRecord, transfer: dict[str, Any]
    ) -> str:
        tenant, survivor, absorbed = transfer["tenant"], transfer["survivor"], transfer["absorbed"]
        contact = ContactKey(tenant, survivor)
        key = contact.encode()
        if record.key != key or record.partition != canonical_partition(key, self.partitions):
            raise IdentityRecordError("a merge transfer must be keyed by its survivor")
        scorer = self.scorer
        entry = scorer._load(batch, key, index)
        source = scorer._source_index[record.topic]
        if entry is not None and entry.offsets.get(source, -1) >= record.offset:
            scorer._rewrite(batch, key, index, entry)
            self._rewrite_alias(batch, key, index)
            return "duplicate"
        current = self.alias(batch, key, index)
        aliases = list(current.get("aliases", ()))
        if any(item["id"] == absorbed for item in aliases):
            self.links.labels(step="merge", outcome="duplicate").inc()
            return "duplicate"
        alias_of = current.get("alias_of")
        if alias_of is not None:  # merged itself meanwhile: the transfer goes on to its survivor
            onward = {**transfer, "survivor": alias_of}
            target = ContactKey(tenant, alias_of).encode()
            partition = canonical_partition(target, self.partitions)
            value = orjson.dumps(onward)
            batch.out.sends.append(self._out(self.transfers, target, value, partition))
            self.links.labels(step="merge", outcome="forwarded").inc()
            return "forwarded"
        absorbed_state = None
        if transfer.get("state") is not None:
            absorbed_state = decode_state(
                base64.b64decode(transfer["state"]), ContactKey(tenant, absorbed)
            )
        seen, _ = decode_seen(base64.b64decode(transfer["seen"]))
        from engagement_index.stream.scoring import _Entry

        if entry is None:
            entry = _Entry(None, {}, float("nan"), EMPTY_SEEN)
        previous = entry.state(key, contact) if entry.known else None
        context = MergeContext(contact, transfer["merge_id"])
        result = merge_states(previous, absorbed_state, scorer._compiled, context)
        record_value = MergeRecord(
            merge_id=transfer["merge_id"],
            tenant=tenant,
            survivor_id=survivor,
            absorbed_id=absorbed,
            kind=transfer["kind"],
            cause_event_id=transfer["cause_event_id"],
            merged_at=None if result.at_ms is None else ms_to_rfc3339(result.at_ms),
            survivor_index=result.survivor_index,
            absorbed_index=result.absorbed_index,
            index=result.index,
            survivor_events=previous.events_counted if previous is not None else 0,
            absorbed_events=absorbed_state.events_counted if absorbed_state is not None else 0,
        )
        out = batch.out
        if result.state is not None:
            scorer._emit(batch, index, record, entry, (key, result.state, result.transitions))
            entry.seen = unite_seen(entry.seen, seen)
            entry.offsets[source] = record.offset
            entry.last_index = index
            batch.contacts[key] = entry
        if scorer._members is not None:  # the accounts of the two (docs/models.md#accounts)
            taken = transfer.get("account")
            account, updates = merge_updates(
                (tenant, survivor, absorbed),
                (entry.account, (str(taken[0]), int(taken[1])) if taken else None),
                (result.state, absorbed_state),
            )
            entry.account = account
            scorer._send_updates(out, scorer._members.records(updates))
        out.sends.append(self._out(self.merges, key, record_value.to_json_bytes(), None))
        aliases.append({"id": absorbed, "merge_id": transfer["merge_id"]})
        self.put_alias(batch, key, index, {"aliases": aliases})
        self.links.labels(step="merge", outcome="merged").inc()
        return "merged"

    def _rewrite_alias(self, batch: _Batch, key: bytes, index: int) -> None:
        """A re-delivered transfer: its alias list may have missed the changelog too."""
        current = self.alias(batch, key, index)
        if current and key not in batch.out.alias_writes:
            batch.out.alias_writes[key] = (index, encode_alias(current))

    # ------------------------------------------------------------ later events
    def redirect(self, batch: _Batch, index: int, record: InboundRecord, key: bytes) -> str | None:
        """Send an event of an absorbed id (no state, an alias) on to its survivor: outcome
        ``aliased``; ``duplicate`` for a record the absorbed state had applied before step 2
        (delivered again after a crash: it travelled in the transfer, so forwarding it would
        count it twice where its copy reaches the survivor before the transfer); None: the
        key is not an alias."""
        current = self.alias(batch, key, index)
        alias_of = current.get("alias_of")
        if alias_of is None:
            return None
        source = self.scorer._source_index.get(record.topic)
        applied = current.get("offsets", {}).get(str(source), -1)
        if record.offset <= applied:
            # as BatchScorer._rewrite: the alias may have missed the changelog at the crash
            batch.out.alias_writes.setdefault(key, (index, encode_alias(current)))
            return "duplicate"
        assert record.value is not None
        tenant = ContactKey.decode(key).tenant
        target = ContactKey(tenant, alias_of).encode()
        partition = canonical_partition(target, self.partitions)
        value = rewrite_contact(record.value, alias_of)
        batch.out.sends.append(
            self._out(self.scorer._rekey_topic, target, value, partition, record.timestamp_ms)
        )
        return "aliased"

    # ---------------------------------------------------------------- erasure
    def erase(self, batch: _Batch, index: int, request: ErasureRequest) -> bool:
        """Erase the key's aliases too: an absorbed id's alias, or a survivor's list (each
        listed id gets an erasure request of its own). True if there was any."""
        key = request.key.encode()
        current = self.alias(batch, key, index)
        if not current:
            return False
        for n, item in enumerate(current.get("aliases", ())):
            follow = ErasureRequest(
                erasure_id=f"{request.erasure_id[:100]}.alias-{n}",
                tenant=request.tenant,
                contact_id=item["id"],
                requested_at=request.requested_at,
                requested_by=request.requested_by,
            )
            target = follow.key.encode()
            partition = canonical_partition(target, self.partitions)
            topic = self.scorer._erasure_topic
            batch.out.sends.append(self._out(topic, target, follow.to_json_bytes(), partition))
        self.put_alias(batch, key, index, {})
        return True

    @staticmethod
    def _out(
        topic: str,
        key: bytes,
        value: bytes | None,
        partition: int | None,
        timestamp_ms: int | None = None,
    ) -> Any:
        from engagement_index.stream.scoring import OutboundRecord

        return OutboundRecord(topic, key, value, (), partition, timestamp_ms)
