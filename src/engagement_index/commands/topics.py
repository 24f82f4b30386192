"""``engagement-index topics create|describe``: the declared topics on the cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

from engagement_index.kafka_admin import (
    connect_admin,
    describe_topics,
    ensure_topics,
)
from engagement_index.settings import Settings
from engagement_index.topology import load_topology

HELP = "create (idempotent) or check the topics declared in streams/topology.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["create", "describe"])
    parser.add_argument("--bootstrap-servers", help="default: $KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--topology", type=Path, help="topology file (default streams/...)")


def run(args: argparse.Namespace) -> int:
    overrides = {"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {}
    settings = Settings(**overrides)
    topology = load_topology(args.topology or settings.topology_file)
    if args.action == "create":
        created = ensure_topics(settings, topology)
        total = len(list(topology.all_topics()))
        for name in created:
            print(f"created {name}")
        print(f"topics: {len(created)} created, {total - len(created)} already present, all match")
        return 0
    admin = connect_admin(settings)
    try:
        statuses = describe_topics(admin, topology)
    finally:
        admin.close()
    width = max(len(s.name) for s in statuses)
    bad = 0
    for status in statuses:
        problems = status.problems
        bad += bool(problems)
        verdict = "ok" if not problems else "; ".join(problems)
        print(f"{status.name:<{width}}  {status.partitions_wanted:>3} partitions  {verdict}")
    return 1 if bad else 0
