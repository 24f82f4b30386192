"""``engagement-index worker``: run one streaming worker (a Faust worker)."""

from __future__ import annotations

import argparse
import gc
import logging
from pathlib import Path

from engagement_index.core.model import load_model
from engagement_index.kafka_admin import ensure_topics
from engagement_index.kafka_security import check_access
from engagement_index.settings import Settings
from engagement_index.topology import load_topology

HELP = "run a streaming worker: score inbound events, emit stage changes, serve the API"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", help="default: $KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--model", type=Path, help="scoring model YAML")
    parser.add_argument("--topology", type=Path, help="topology YAML")
    parser.add_argument("--data-dir", type=Path, help="folder for the RocksDB tables")
    parser.add_argument("--web-port", type=int, help="HTTP port (API, health, metrics)")
    parser.add_argument("--web-bind", help="HTTP bind address (default 127.0.0.1)")
    parser.add_argument(
        "--no-create-topics", action="store_true", help="do not create missing topics first"
    )


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    for option, name in (
        ("bootstrap_servers", "bootstrap_servers"),
        ("model", "model_file"),
        ("topology", "topology_file"),
        ("data_dir", "data_dir"),
        ("web_port", "web_port"),
        ("web_bind", "web_bind"),
    ):
        value = getattr(args, option)
        if value is not None:
            overrides[name] = value
    settings = Settings(**overrides)  # type: ignore[arg-type]
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    topology = load_topology(settings.topology_file)
    model = load_model(settings.model_file)
    check_access(settings)  # wrong credentials or TLS trust: a clear error, not a retry loop
    if not args.no_create_topics:
        ensure_topics(settings, topology)
    from engagement_index.stream.app import Worker

    worker = Worker(settings, topology, model)
    # Full collections of the cyclic GC scan every long-lived object (modules, Faust, the
    # due-time index) and took 70-220 ms every few seconds under load while finding nothing:
    # collect the young generations less often and the oldest one far less often.
    gc.set_threshold(50_000, 20, 100)
    from faust.worker import Worker as FaustWorker

    FaustWorker(worker.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
    return 0
