"""The Python client limit: a bare aiokafka consume -> JSON decode -> produce loop, no state.

Reads the inbound topics with one consumer (its own group), decodes every record with orjson,
sends one small record per event (key: the contact key, value: the event id) to a sink topic,
waits for the broker to acknowledge each batch's sends, then commits the batch's offsets.
Stops after ``--events`` records. Prints one JSON line with its timings (epoch seconds).

Run by bench/run.py as a separate process:
    python bench/client_limit.py --bootstrap HOST:PORT --topics a,b --sink s --group g --events N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


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
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5, acks=1)
    await consumer.start()
    await producer.start()
    loads = orjson.loads
    send = producer.send
    sink = args.sink
    done = 0
    first: float | None = None
    last_commit = time.monotonic()
    try:
        while done < args.events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=args.batch)
            if not batches:
                continue
            if first is None:
                first = time.time()
            pending = []
            for records in batches.values():
                for record in records:
                    event = loads(record.value)
                    pending.append(await send(sink, event["event_id"].encode(), key=record.key))
            await asyncio.gather(*pending)
            done += len(pending)
            if time.monotonic() - last_commit >= 1.0 or done >= args.events:
                await consumer.commit()
                last_commit = time.monotonic()
        finished = time.time()
    finally:
        await producer.stop()
        await consumer.stop()
    return {"events": done, "started": started, "first": first, "finished": finished}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated inbound topics")
    parser.add_argument("--sink", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1000)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
