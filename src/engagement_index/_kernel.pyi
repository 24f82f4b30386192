"""Types of the compiled kernel (rust/src/lib.rs); ``engagement_index.kernel`` is its user."""

from collections.abc import Callable, Sequence
from typing import Any

Outcome = list[dict[str, Any]] | str | None
#: new state bytes, due ms, clock ms, transitions, snapshot
Stored = tuple[bytes, int | None, int, list[dict[str, Any]] | None, dict[str, Any] | None]
StoredOutcome = Stored | str | None
#: an event's fields (``core.events.EventFields``): event id, tenant, contact id, type,
#: timestamp ms, account id (the kernel reads the first five)
Event = tuple[str, str, str, str, int, str | None]
#: a replay chunk: position, stopped, transitions (JSON lines), lines, applied, duplicates,
#: transitions, largest applied timestamp, arrival clock
ChunkResult = tuple[int, bool, bytes, int, int, int, int, int | None, int]

class Kernel:
    def __init__(self, blob: str) -> None: ...
    def contacts(self) -> Contacts: ...
    def stored_scorer(
        self, window_ms: int, score_step: float, limits: tuple[int, int, int, int]
    ) -> StoredScorer: ...
    def project(self, raw: bytes) -> tuple[tuple[int, ...], float, int] | None: ...
    def event_fields(self, value: bytes) -> tuple[str, str, str, str, int] | None: ...
    def recover(
        self, key: bytes, raw: bytes, partitions: int
    ) -> tuple[int, int | None, tuple[int, ...], float, int] | None: ...
    def step_stored(
        self, items: Sequence[tuple[bytes | None, Event, float, float]]
    ) -> list[StoredOutcome]: ...
    def index_changes(
        self, items: Sequence[tuple[int, bytes, bytes | None, bytes | None]]
    ) -> tuple[
        list[bytes],
        list[bytes],
        list[tuple[int, tuple[int, ...] | None, tuple[int, ...] | None]],
        list[int],
    ]: ...

#: a transition of ``StoredScorer.score``: JSON bytes, lifecycle, from stage, to stage, reason
TransitionRecord = tuple[bytes, str, str | None, str, str]
#: (1 duplicate id / 2 applied, table value, published index, due ms, clock ms, the clock
#: it started from, where the state bytes start, transitions, the snapshot's JSON)
Scored = tuple[
    int,
    bytes,
    float,
    int | None,
    int,
    int | None,
    int,
    list[TransitionRecord] | None,
    bytes | None,
]

class StoredScorer:
    def route(
        self, value: bytes, key: bytes | None, partition: int, now_ms: int
    ) -> tuple[str, str, str, str, int] | None: ...
    def score(
        self,
        stored: bytes | None,
        published: float | None,
        fields: Event | tuple[str, str, str, str, int],
        record: tuple[int, int, int],
    ) -> Scored | int | str | None: ...

#: ``KernelBatch.run``: (stop index, sends, replaced earlier positions, replaced count, due
#: times, stage moves, transition labels, arrival times, (topic, outcome) counts, newest)
RunResult = tuple[
    int,
    list[Any],
    list[int],
    int,
    dict[bytes, tuple[int, int | None]],
    list[tuple[str, str | None, str]],
    list[tuple[str, str | None, str, str]],
    list[int],
    dict[tuple[str, str], int],
    dict[str, int],
]
#: ``KernelBatch.release``: (value, state offset, published, daily, passed days, stored day,
#: last index, snapshot position, history transitions, index of the last)
Released = tuple[
    bytes | None,
    int | None,
    float | None,
    bool,
    dict[int, bytes] | None,
    int | None,
    int,
    int | None,
    list[bytes],
    int,
]
#: ``KernelBatch.finish``: per contact with transitions (key, their JSON bytes, the index of
#: the last), and how many contacts have a snapshot in the batch
Finished = tuple[list[tuple[bytes, list[bytes], int]], int]

class KernelBatch:
    def __init__(
        self,
        scorer: StoredScorer,
        topics: tuple[dict[str, int], str, str, str],
        now_ms: int,
        readers: tuple[Callable[[bytes, int], bytes | None], Callable[[bytes, int], bool]],
        records: tuple[Callable[[tuple[Any, ...]], Any], Any],
    ) -> None: ...
    def run(self, records: list[Any], start: int, base: int) -> RunResult: ...
    def release(self, key: bytes) -> Released | None: ...
    @property
    def ticks(self) -> list[int]: ...
    def finish(
        self,
        writes: dict[bytes, tuple[int, bytes | None]],
        daily_writes: dict[bytes, tuple[int, bytes | None]],
        list_days: Callable[[bytes, int, int | None], list[int]] | None,
        history_days: int,
    ) -> Finished: ...

class Contacts:
    def load(self, tenant: str, contact_id: str, data: bytes) -> bool: ...
    def step(self, events: Sequence[Event]) -> list[Outcome]: ...
    def advance(self, items: Sequence[tuple[str, str, int]]) -> list[Outcome]: ...
    def finish(self, horizon: int) -> list[dict[str, Any]]: ...
    def finish_json(self, horizon: int) -> bytes: ...
    def replay_setup(
        self, window_ms: int, until_ms: int | None = None, max_bytes: int | None = None
    ) -> None: ...
    def replay_chunk(self, data: bytes, start: int, last: bool) -> ChunkResult: ...
    def replay_fields(
        self, fields: Event, arrival_ms: int | None = None
    ) -> tuple[bytes | None, int | None, int]: ...
    def seen_windows(self) -> list[tuple[str, str, bytes, list[int]]]: ...
    def applied_keys(self) -> list[tuple[str, str]]: ...
    def snapshot(self, tenant: str, contact_id: str, at_ms: int) -> dict[str, Any]: ...
    def encode(self, tenant: str, contact_id: str) -> bytes: ...
    def due(self, tenant: str, contact_id: str) -> int | None: ...
    def clock(self, tenant: str, contact_id: str) -> int: ...
    def index(self, tenant: str, contact_id: str) -> float: ...
    def list_keys(self) -> list[tuple[str, str]]: ...
    def remove(self, tenant: str, contact_id: str) -> bool: ...
    def __contains__(self, key: tuple[str, str]) -> bool: ...
    def __len__(self) -> int: ...
