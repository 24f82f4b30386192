"""The consume-only limit: a bare aiokafka consumer that reads the inbound topics, no decode.

Counts the records of ``--events`` and stops; no JSON, no produce, no commits. What the
Python client gets from the broker at best, next to the client limit (bench/client_limit.py:
consume, decode, produce). Prints one JSON line with its timings (epoch seconds).

Run by bench/run.py as a separate process:
    python bench/consume_limit.py --bootstrap HOST:PORT --topics a,b --group g --events N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    consumer = AIOKafkaConsumer(
        *args.topics.split(","),
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    done = 0
    first: float | None = None
    try:
        while done < args.events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=args.batch)
            if batches and first is None:
                first = time.time()
            for records in batches.values():
                done += len(records)
        finished = time.time()
    finally:
        await consumer.stop()
    return {"events": done, "started": started, "first": first, "finished": finished}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated inbound topics")
    parser.add_argument("--group", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1000)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
