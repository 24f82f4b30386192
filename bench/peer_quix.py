"""The peer: the same scoring as a minimal Quix Streams application with its RocksDB state.

What a Python user would otherwise write: one ``Application`` over the inbound topics
(concatenated into one ``StreamingDataFrame``), a stateful ``apply`` that folds each event into
the contact's state with the project's pure core (``parse_event_fields``, ``admit`` for the
duplicate window, ``step``, ``encode_state``/``decode_state``; state values stored as
the same compact bytes), and the transitions sent to an output topic. With the compiled kernel
built, the fold runs in it on the stored bytes (``Kernel.step_stored``, what the worker uses);
``ENGAGEMENT_INDEX_KERNEL=python`` gives the pure-Python core (bench/run.py runs both).
Quix Streams' defaults otherwise (RocksDB state with a changelog topic, at-least-once, commit
every 5 s). It stops once it has processed ``--events`` records and prints one JSON line with
its timings (epoch seconds).

It runs in its own virtual environment (bench/.cache/quix-venv, pinned by
bench/quix-constraints.txt) with ``PYTHONPATH=src``: quixstreams caps pydantic below the
version the project pins, so it cannot share the project's venv.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import orjson
from quixstreams import Application, State
from quixstreams.state.rocksdb import RocksDBOptions

from engagement_index.core.dedupe import DEFAULT_WINDOW_MS, EMPTY, admit, decode_seen, encode_seen
from engagement_index.core.events import ContactKey, parse_event_fields
from engagement_index.core.lifecycle import step
from engagement_index.core.model import load_model
from engagement_index.core.state import decode_state, encode_state
from engagement_index.kernel import kernel_for

_INF = float("inf")  # no snapshots: the peer sends transitions only


def _raw(value: Any) -> Any:
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated inbound topics")
    parser.add_argument("--out", required=True, help="output topic for transitions")
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--events", type=int, required=True)
    args = parser.parse_args()
    started = time.time()
    compiled = load_model(args.model).compiled
    # the compiled kernel (engagement_index.kernel) unless ENGAGEMENT_INDEX_KERNEL=python
    kernel = kernel_for(compiled)

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        rocksdb_options=RocksDBOptions(dumps=_raw, loads=_raw),
        loglevel="WARNING",
    )
    topics = [
        app.topic(name, key_deserializer="bytes", value_deserializer="bytes")
        for name in args.topics.split(",")
    ]
    out = app.topic(args.out, key_serializer="bytes", value_serializer="bytes")
    sdf = app.dataframe(topics[0])
    for topic in topics[1:]:
        sdf = sdf.concat(app.dataframe(topic))

    progress: dict[str, Any] = {"done": 0, "first": None, "transitions": 0}

    def score(value: bytes, state: State) -> list[bytes]:
        fields = parse_event_fields(value)
        raw = state.get(b"s")
        # the duplicate window by arrival, as the worker keeps it (here: the event time)
        seen_raw = state.get(b"d")
        seen = decode_seen(seen_raw)[0] if seen_raw is not None else EMPTY
        window = admit(seen, fields.event_id, fields.timestamp_ms, DEFAULT_WINDOW_MS)
        transitions: list[Any] = []
        if window is not None:
            scored = kernel.step_stored([(raw, fields, 0.0, _INF)])[0] if kernel else None
            if scored is None or isinstance(scored, str):  # the Python core
                key = ContactKey(fields.tenant, fields.contact_id)
                previous = decode_state(raw, key) if raw is not None else None
                new, made = step(previous, fields, compiled)
                transitions = [t.to_json_bytes() for t in made]
                state.set(b"s", encode_state(new))
            else:  # the kernel: new state bytes, due, clock, transitions, snapshot
                transitions = [orjson.dumps(t) for t in scored[3] or ()]
                state.set(b"s", scored[0])
            state.set(b"d", encode_seen(window))
        done = progress["done"] = progress["done"] + 1
        if done == 1:
            progress["first"] = time.time()
        progress["transitions"] += len(transitions)
        if done >= args.events:
            app.stop()
        return transitions

    sdf = sdf.apply(score, stateful=True, expand=True)
    sdf.to_topic(out)
    app.run()
    finished = time.time()
    print(
        json.dumps(
            {
                "events": progress["done"],
                "transitions": progress["transitions"],
                "started": started,
                "first": progress["first"],
                "finished": finished,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
