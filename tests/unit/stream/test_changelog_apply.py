"""Batched changelog restore: what ``apply_changelog`` writes and how it ends a recovery."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from faust.types import TP

from engagement_index.stream.bulk import apply_changelog

CONTACTS = TP("app-contacts-changelog", 0)
HISTORY = TP("app-history-changelog", 0)
STANDBY = TP("app-contacts-changelog", 1)
OTHER = TP("app-contacts-changelog", 2)


@dataclass
class Message:
    tp: TP
    offset: int
    key: bytes = b"k"
    value: bytes | None = b"v"


@dataclass(eq=False)
class Table:
    batches: list[list[int]] = field(default_factory=list)

    def apply_changelog_batch(self, events: list[Any]) -> None:
        self.batches.append([event.message.offset for event in events])


class Recovery:
    """The attributes of Faust's ``Recovery`` that ``apply_changelog`` uses."""

    def __init__(self, highwaters: dict[TP, int]) -> None:
        self.contacts, self.history = Table(), Table()
        self.tp_to_table = {CONTACTS: self.contacts, STANDBY: self.contacts, HISTORY: self.history}
        self.active_tps = {CONTACTS, HISTORY}
        self.standby_tps = {STANDBY}
        self.active_highwaters = highwaters
        self.active_offsets: Counter[TP] = Counter()
        self.standby_offsets: Counter[TP] = Counter()
        self._active_events_received_at: dict[TP, float] = {}
        self._standby_events_received_at: dict[TP, float] = {}
        self._last_flush_at = 0.0
        self.in_recovery = True
        self.flushed = 0
        self.signal_recovery_end = asyncio.Event()

    def need_recovery(self) -> bool:
        return any(self.active_offsets[tp] < hw for tp, hw in self.active_highwaters.items())

    def flush_buffers(self) -> None:
        self.flushed += 1

    def _set_recovery_ended(self) -> None:
        self.in_recovery = False


def apply(recovery: Recovery, messages: list[Message]) -> None:
    apply_changelog(cast(Any, recovery), cast(Any, messages))


def test_one_batch_per_table_skipping_seen_offsets_and_other_partitions() -> None:
    recovery = Recovery({CONTACTS: 10, HISTORY: 10})
    recovery.active_offsets[CONTACTS] = 3
    messages = [
        Message(CONTACTS, 2),  # already applied
        Message(CONTACTS, 4),
        Message(HISTORY, 0),
        Message(OTHER, 7),  # not being recovered
        Message(STANDBY, 5),
        Message(CONTACTS, 5),
    ]
    apply(recovery, messages)
    assert recovery.contacts.batches == [[4, 5, 5]]
    assert recovery.history.batches == [[0]]
    assert recovery.active_offsets == Counter({CONTACTS: 5, HISTORY: 0})
    assert recovery.standby_offsets == Counter({STANDBY: 5})
    assert recovery.in_recovery
    assert not recovery.signal_recovery_end.is_set()


def test_the_end_of_recovery_wakes_the_waiter_and_is_not_left_set() -> None:
    async def scenario() -> None:
        recovery = Recovery({CONTACTS: 1, HISTORY: 0})
        waiter = asyncio.ensure_future(recovery.signal_recovery_end.wait())
        await asyncio.sleep(0)
        apply(recovery, [Message(CONTACTS, 0)])
        await asyncio.sleep(0)
        assert not waiter.done()  # offset 0 of highwater 1: still recovering
        apply(recovery, [Message(CONTACTS, 1), Message(HISTORY, 0)])
        await asyncio.wait_for(waiter, timeout=1.0)
        assert not recovery.in_recovery
        assert recovery.flushed == 1
        # a later recovery waits for its own end instead of finding this one's
        assert not recovery.signal_recovery_end.is_set()

    asyncio.run(scenario())


def test_active_records_after_the_recovery_ended_are_left_alone() -> None:
    recovery = Recovery({CONTACTS: 1})
    recovery.in_recovery = False  # recovered: the worker writes these partitions itself now
    apply(recovery, [Message(CONTACTS, 2), Message(STANDBY, 3)])
    assert recovery.contacts.batches == [[3]]  # the standby record only
    assert recovery.active_offsets == Counter()
