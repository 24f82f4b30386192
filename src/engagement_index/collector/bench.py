"""A load generator for ``POST /v1/batch``: reports events/s and request latency."""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

TYPES = ("Order Completed", "Product Added", "Email Opened", "Signed Up")


@dataclass(frozen=True)
class BenchResult:
    events: int
    requests: int
    failures: int
    seconds: float
    latencies: list[float]

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"{self.events} events in {self.requests} requests ({self.failures} failed) "
            f"in {self.seconds:.2f}s: {self.events_per_second:,.0f} events/s; "
            f"request latency p50 {statistics.median(lat) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms"
        )


def _batch(size: int, contacts: int, n: int) -> dict[str, object]:
    now = datetime.now(tz=UTC).isoformat()
    messages = []
    for i in range(size):
        k = n * size + i
        messages.append(
            {
                "type": "page" if k % 3 == 0 else "track",
                "event": TYPES[k % len(TYPES)],
                "messageId": uuid.uuid4().hex,
                "userId": f"bench-{k % contacts}",
                "timestamp": now,
                "properties": {"i": k},
            }
        )
    return {"batch": messages, "sentAt": now}


async def run_bench(
    url: str, write_key: str, events: int, batch_size: int, concurrency: int, contacts: int
) -> BenchResult:
    """Post ``events`` events in batches from ``concurrency`` parallel senders."""
    auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    batches = max(1, events // batch_size)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(batches):
        queue.put_nowait(n)
    latencies: list[float] = []
    failures = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while not queue.empty():
            n = queue.get_nowait()
            body = _batch(batch_size, contacts, n)
            started = time.perf_counter()
            async with session.post(
                f"{url.rstrip('/')}/v1/batch", json=body, headers={"Authorization": auth}
            ) as response:
                await response.read()
                if response.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return BenchResult(
        events=(batches - failures) * batch_size,
        requests=batches,
        failures=failures,
        seconds=elapsed,
        latencies=latencies,
    )
