"""Account membership on the contact side: what the scoring agent sends to accounts.

A contact belongs to the account named by its latest event (or group call) that names one
(``core.accounts.moves_to``); the membership is kept in the contact's table value
(``stream/stored.py``, readable with ``stored.account_of``). After every scored event of a
member, its new state goes to the account-updates topic keyed by the account (the repartition
from contacts to accounts; ``stream/account_agent.py`` applies it); a contact that moves to
another account, or is erased, sends a departure to the old one. ``account.licences`` events and
group calls (``account.group``, from the collector) are handled here: they change no score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from engagement_index.core.accounts import (
    LEAVE,
    AccountUpdate,
    CompiledAccounts,
    Membership,
    account_updates,
    encode_update,
    member_event_updates,
)
from engagement_index.core.events import ContactKey, EventFields, FailureType
from engagement_index.core.model import ScoringModel
from engagement_index.core.partitioning import canonical_partition
from engagement_index.core.state import ContactState
from engagement_index.errors import EventRejected
from engagement_index.metrics import Metrics
from engagement_index.topology import Topology

#: a record to send: (topic, key, value, partition)
Send = tuple[str, bytes, bytes, int]


class AccountEventResult(NamedTuple):
    """What an ``account.*`` event does: records to send, the contact's membership after it,
    and a dead-letter reason if it is not valid."""

    sends: Sequence[Send]
    account: Membership
    reject: tuple[FailureType, str] | None = None


class MemberUpdates:
    """The scoring agent's side of accounts (see the module docstring)."""

    def __init__(
        self, acc: CompiledAccounts, topic: str, partitions: int, metrics: Metrics
    ) -> None:
        self.acc = acc
        self.topic = topic
        self.partitions = partitions
        self.metrics = metrics

    @classmethod
    def for_scorer(
        cls, model: ScoringModel, topology: Topology, metrics: Metrics
    ) -> MemberUpdates | None:
        """The member side for ``model``, or None if it declares no accounts."""
        acc = model.accounts_compiled
        if acc is None:
            return None
        topic = topology.internal.account_updates.name
        return cls(acc, topic, topology.scoring_partitions, metrics)

    def _sends(self, updates: Sequence[AccountUpdate]) -> list[Send]:
        out = []
        for update in updates:
            key = update.key
            partition = canonical_partition(key, self.partitions)
            out.append((self.topic, key, encode_update(update), partition))
        return out

    def records(self, updates: Sequence[AccountUpdate]) -> list[Send]:
        """``updates`` as records to send."""
        return self._sends(updates)

    def member_event(
        self, fields: EventFields, state: ContactState, account: Membership
    ) -> tuple[Membership, list[Send]]:
        """:func:`member_event_updates`, as records."""
        account, updates = member_event_updates(fields, state, account)
        return account, self._sends(updates)

    def account_event(
        self, value: bytes, state: ContactState | None, account: Membership
    ) -> AccountEventResult:
        """:func:`account_updates`, as records (or the reason to dead-letter the event)."""
        try:
            updates, account = account_updates(value, state, account, self.acc)
        except EventRejected as exc:
            return AccountEventResult((), account, (FailureType(exc.failure), exc.message))
        return AccountEventResult(self._sends(updates), account)

    def leave(self, contact: ContactKey, account_id: str, at_ms: int) -> list[Send]:
        """An erased member's departure from its account."""
        update = AccountUpdate(LEAVE, contact.tenant, account_id, at_ms, None, contact.contact_id)
        return self._sends([update])
