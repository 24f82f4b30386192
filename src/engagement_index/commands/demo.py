"""``engagement-index demo``: publish realistic demo traffic and tail the stage changes."""

from __future__ import annotations

import argparse
from pathlib import Path

from engagement_index.demo import run_demo
from engagement_index.kafka_security import check_access, kafka_python_options
from engagement_index.settings import Settings
from engagement_index.topology import load_topology

HELP = "publish demo events for a few hundred contacts and print stage changes as they happen"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", help="default: $KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--topology", type=Path, help="topology YAML")
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--contacts", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--duration", type=float, help="seconds (default: until Ctrl-C)")
    parser.add_argument("--bad-share", type=float, default=0.002, help="share of bad records")
    parser.add_argument("--duplicate-share", type=float, default=0.005)
    parser.add_argument("--no-tail", action="store_true", help="do not print stage changes")
    parser.add_argument(
        "--journey",
        action="store_true",
        help="product, support and renewal traffic for config/models/demo-journey.yaml",
    )


def run(args: argparse.Namespace) -> int:
    settings = (
        Settings(bootstrap_servers=args.bootstrap_servers) if args.bootstrap_servers else Settings()
    )
    topology = load_topology(args.topology or settings.topology_file)
    check_access(settings)
    counts = run_demo(
        kafka_options=kafka_python_options(settings),
        topology=topology,
        tenant=args.tenant,
        contacts=args.contacts,
        seed=args.seed,
        duration_s=args.duration,
        bad_share=args.bad_share,
        duplicate_share=args.duplicate_share,
        tail=not args.no_tail,
        journey=args.journey,
    )
    print(
        f"demo: sent {counts['events']} events, {counts['duplicates']} duplicates, "
        f"{counts['bad']} bad records"
    )
    return 0
