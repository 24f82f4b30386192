"""Per-partition index of the times at which contacts are due a decay transition.

A heap of ``(due_ms, key)`` with lazy deletion: the authoritative due time of a key is
``self._due[partition][key]``; heap entries that disagree with it are stale and skipped.
Popping due entries costs O(log n) each and never touches contacts that are not due, so the
timer never scans the contacts.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection


class DueIndex:
    """Due times of pending decay transitions, per partition this worker owns."""

    def __init__(self) -> None:
        self._due: dict[int, dict[bytes, int]] = {}
        self._heap: dict[int, list[tuple[int, bytes]]] = {}

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._due.values())

    def set(self, partition: int, key: bytes, due_ms: int | None) -> None:
        """Record (or clear, with ``None``) the due time of ``key``."""
        keys = self._due.setdefault(partition, {})
        if due_ms is None:
            keys.pop(key, None)
            return
        if keys.get(key) == due_ms:
            return
        keys[key] = due_ms
        heapq.heappush(self._heap.setdefault(partition, []), (due_ms, key))

    def due_partitions(self, now_ms: int) -> list[int]:
        """Partitions with an entry due at or before ``now_ms`` (the timer checks only these)."""
        return [p for p, heap in self._heap.items() if heap and heap[0][0] <= now_ms]

    def overdue(self, partition: int, now_ms: int, retry_ms: int) -> list[bytes]:
        """The keys of ``partition`` whose due time is at or before ``now_ms``.

        Those whose wake-up has not been sent yet and those in flight (popped, so their heap
        entry moved to their retry time, at most ``now_ms + retry_ms``). Walks only the heap
        entries up to that time (a heap's children are never earlier than their parent), so
        it costs what is due now and soon, not the partition's size.
        """
        heap = self._heap.get(partition)
        keys = self._due.get(partition)
        if not heap or not keys:
            return []
        limit = now_ms + retry_ms
        found: dict[bytes, None] = {}
        stack = [0]
        size = len(heap)
        while stack:
            i = stack.pop()
            at, key = heap[i]
            if at > limit:
                continue
            due = keys.get(key)
            if due is not None and due <= now_ms:
                found[key] = None
            child = 2 * i + 1
            if child < size:
                stack.append(child)
                if child + 1 < size:
                    stack.append(child + 1)
        return list(found)

    def pop_due(
        self,
        now_ms: int,
        retry_ms: int,
        limit: int = 10_000,
        skip: Collection[int] = (),
    ) -> list[tuple[int, bytes, int]]:
        """Return up to ``limit`` ``(partition, key, due_ms)`` with ``due_ms <= now_ms``.

        Each returned entry stays in the index with a retry time ``now_ms + retry_ms`` in the
        heap, so a wake-up that is lost is sent again; processing the wake-up replaces the
        entry with the contact's next due time (or clears it). Partitions in ``skip`` are left
        alone (the worker skips partitions that are still catching up on a backlog).
        """
        out: list[tuple[int, bytes, int]] = []
        for partition, heap in self._heap.items():
            if partition in skip:
                continue
            keys = self._due[partition]
            while heap and heap[0][0] <= now_ms and len(out) < limit:
                at, key = heapq.heappop(heap)
                due = keys.get(key)
                if due is None or at < due:
                    continue  # stale entry
                out.append((partition, key, due))
                heapq.heappush(heap, (now_ms + retry_ms, key))
        return out
