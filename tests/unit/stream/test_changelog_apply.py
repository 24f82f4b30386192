"""Batched changelog restore: what ``apply_changelog`` writes and how it ends a recovery."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from faust.types import TP
from rocksdict import Options, Rdict

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


class Store:
    """What ``apply_changelog`` uses of Faust's RocksDB store: a real raw-mode database per
    partition (as Faust opens them) and the persisted offsets."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dbs: dict[int, Rdict] = {}
        self.writes: list[int] = []  # the partition of each write batch
        self.persisted: dict[TP, int] = {}

    def _db_for_partition(self, partition: int) -> Any:
        db = self.dbs.get(partition)
        if db is None:
            db = self.dbs[partition] = Rdict(
                str(self.folder / str(partition)), options=Options(raw_mode=True)
            )
        self.writes.append(partition)
        return db

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted[tp] = offset

    def items(self, partition: int) -> dict[bytes, bytes]:
        return {cast(bytes, k): cast(bytes, v) for k, v in self.dbs[partition].items()}

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


class Table:
    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.data = Store(folder)


class Recovery:
    """The attributes of Faust's ``Recovery`` that ``apply_changelog`` uses."""

    def __init__(self, highwaters: dict[TP, int], folder: Path) -> None:
        self.contacts, self.history = Table(folder / "contacts"), Table(folder / "history")
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


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


def test_one_batch_per_table_partition_skipping_seen_offsets_and_other_partitions(
    folder: Path,
) -> None:
    recovery = Recovery({CONTACTS: 10, HISTORY: 10}, folder)
    recovery.active_offsets[CONTACTS] = 3
    contacts = recovery.contacts.data
    contacts._db_for_partition(0).put(b"gone", b"old")  # a key a tombstone erases
    contacts.writes.clear()
    messages = [
        Message(CONTACTS, 2, b"a", b"applied before"),  # already applied: not written again
        Message(CONTACTS, 4, b"a", b"a4"),
        Message(HISTORY, 0, b"a", b"h0"),
        Message(OTHER, 7, b"x", b"x7"),  # not being recovered
        Message(STANDBY, 5, b"s", b"s5"),
        Message(CONTACTS, 5, b"a", b"a5"),  # the later value of a key wins
        Message(CONTACTS, 6, b"gone", None),
        Message(CONTACTS, 7, b"b", b"b7"),
    ]
    apply(recovery, messages)
    assert sorted(contacts.writes) == [0, 1]  # one write batch per partition
    assert contacts.items(0) == {b"a": b"a5", b"b": b"b7"}
    assert contacts.items(1) == {b"s": b"s5"}
    assert 2 not in contacts.dbs
    assert recovery.history.data.items(0) == {b"a": b"h0"}
    assert contacts.persisted == {CONTACTS: 7, STANDBY: 5}
    assert recovery.history.data.persisted == {HISTORY: 0}
    contacts.close()
    recovery.history.data.close()
    assert recovery.active_offsets == Counter({CONTACTS: 7, HISTORY: 0})
    assert recovery.standby_offsets == Counter({STANDBY: 5})
    assert recovery.in_recovery
    assert not recovery.signal_recovery_end.is_set()


def test_the_end_of_recovery_wakes_the_waiter_and_is_not_left_set(folder: Path) -> None:
    async def scenario() -> None:
        recovery = Recovery({CONTACTS: 1, HISTORY: 0}, folder)
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


def test_active_records_after_the_recovery_ended_are_left_alone(folder: Path) -> None:
    recovery = Recovery({CONTACTS: 1}, folder)
    recovery.in_recovery = False  # recovered: the worker writes these partitions itself now
    apply(recovery, [Message(CONTACTS, 2, b"a", b"a2"), Message(STANDBY, 3, b"s", b"s3")])
    contacts = recovery.contacts.data
    assert 0 not in contacts.dbs  # the standby record only
    assert contacts.items(1) == {b"s": b"s3"}
    contacts.close()
    assert recovery.active_offsets == Counter()
