"""Identify and alias records in a replay's input: the identity merge of the worker, offline.

A line that is a JSON object with ``kind`` and no ``type`` is an identity record (the format of
the identities topic, ``schemas/collector/identity-record.json``); every other line is an
event. The rules are the worker's (``stream/identity.py``, docs/streaming.md#identity-merge):
blocked ids and self-links are refused, a link to an absorbed id follows it to its survivor,
an id with aliases of its own is never absorbed, an id absorbed into one survivor is not
absorbed again. The merge is applied at once, where the worker applies it when the transfer
reaches the survivor: the sums, counts and markers do not depend on that moment
(docs/scoring.md#identity-merge).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from pydantic import ValidationError

from engagement_index.collector.models import IdentityRecord
from engagement_index.core.accounts import merge_updates
from engagement_index.core.dedupe import EMPTY
from engagement_index.core.events import ContactKey, FailureType
from engagement_index.core.lifecycle import with_due
from engagement_index.core.merge import (
    MAX_ALIASES,
    MergeContext,
    is_blocked,
    merge_id_of,
    merge_states,
    unite_seen,
)
from engagement_index.core.records import Transition

if TYPE_CHECKING:
    from engagement_index.replay import Replayer


def is_identity_record(raw: bytes | str) -> bool:
    """True for a JSON object with ``kind`` and without ``type`` (cheap test first)."""
    if isinstance(raw, bytes):
        if b'"kind"' not in raw:
            return False
    elif '"kind"' not in raw:
        return False
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and "kind" in value and "type" not in value


class ReplayIdentities:
    """The alias table of one replay and the merges it applies."""

    def __init__(self, replayer: Replayer, blocked: frozenset[str]) -> None:
        self.replayer = replayer
        self.blocked = frozenset(b.strip().casefold() for b in blocked)
        #: (tenant, absorbed id) -> survivor id
        self.alias_of: dict[tuple[str, str], str] = {}
        #: (tenant, survivor id) -> its aliases, in merge order
        self.aliases: dict[tuple[str, str], list[str]] = {}

    def feed(self, raw: bytes | str, line: int) -> list[Transition]:
        """Apply one identity record; refusals and bad records are rejects."""
        replayer = self.replayer
        try:
            link = IdentityRecord.model_validate_json(raw)
        except ValidationError as exc:
            text = str(exc).splitlines()[0]
            replayer.reject(line, FailureType.SCHEMA_VIOLATION, f"identity: {text}")
            return []
        if link.kind == "group" or not link.links:
            return []
        absorbed = link.anonymous_id if link.kind == "identify" else link.previous_id
        assert absorbed is not None
        tenant = link.tenant
        for name, value in (("contact_id", link.contact_id), ("absorbed", absorbed)):
            if is_blocked(value, self.blocked):
                replayer.reject(
                    line, FailureType.IDENTITY_REFUSED, f"{name}: {value!r} never merges"
                )
                return []
        if not 1 <= len(absorbed) <= 256:
            replayer.reject(
                line,
                FailureType.SCHEMA_VIOLATION,
                "identity: the absorbed id must have 1 to 256 characters",
            )
            return []
        survivor = self.alias_of.get((tenant, link.contact_id), link.contact_id)
        if len(self.aliases.get((tenant, survivor), ())) >= MAX_ALIASES:
            why = f"contact_id: has {MAX_ALIASES} aliases already, the most one contact keeps"
            replayer.reject(line, FailureType.IDENTITY_REFUSED, why)
            return []
        if survivor == absorbed:
            return []
        current = self.alias_of.get((tenant, absorbed))
        if current == survivor:
            return []
        if current is not None:
            why = f"absorbed: already merged into {current!r}"
            replayer.reject(line, FailureType.IDENTITY_REFUSED, why)
            return []
        if self.aliases.get((tenant, absorbed)):
            why = "absorbed: has aliases of its own (two known ids are not merged)"
            replayer.reject(line, FailureType.IDENTITY_REFUSED, why)
            return []
        return self._merge(tenant, survivor, absorbed)

    def _merge(self, tenant: str, survivor: str, absorbed: str) -> list[Transition]:
        replayer = self.replayer
        cm = replayer.model.compiled
        skey, akey = (tenant, survivor), (tenant, absorbed)
        states = replayer.states
        unsolved = replayer._unsolved
        for key in (skey, akey):
            if key in unsolved and key in states:
                states[key] = with_due(states[key], cm)
                unsolved.discard(key)
        context = MergeContext(
            ContactKey(tenant, survivor), merge_id_of(tenant, survivor, absorbed)
        )
        absorbed_state = states.pop(akey, None)
        result = merge_states(states.get(skey), absorbed_state, cm, context)
        if result.state is not None:
            states[skey] = result.state
        if replayer._accounts is not None:  # the accounts of the two (docs/models.md#accounts)
            memberships = replayer.memberships
            kept, taken = memberships.get(skey), memberships.pop(akey, None)
            account, updates = merge_updates(
                (tenant, survivor, absorbed), (kept, taken), (result.state, absorbed_state)
            )
            if account is not None:
                memberships[skey] = account
            for update in updates:
                replayer._account_update(update)
        seen = replayer.seen
        seen[skey] = unite_seen(seen.get(skey, EMPTY), seen.pop(akey, EMPTY))
        replayer._next_point.pop(akey, None)
        self.alias_of[akey] = survivor
        self.aliases.setdefault(skey, []).append(absorbed)
        replayer.stats.merges += 1
        replayer.stats.transitions += len(result.transitions)
        return result.transitions
