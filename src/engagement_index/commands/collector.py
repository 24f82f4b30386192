"""``engagement-index collector``: the HTTP collector, pixel URL signing, a load test, schemas.

* ``collector`` (or ``collector serve``): run the server.
* ``collector sign-pixel --tenant T --contact C``: print a signed pixel URL.
* ``collector bench --write-key K``: post batches to a running collector, report events/s.
* ``collector schemas write|check``: the JSON Schemas in ``schemas/collector/``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from engagement_index.errors import ConfigError

HELP = "run the HTTP collector (Segment API, signed pixel, SendGrid/Mailgun webhooks)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080)")
    parser.add_argument("--bootstrap-servers", help="default: $KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--topology", type=Path, help="topology file (default streams/...)")
    parser.add_argument("--keys-file", type=Path, help="YAML file with write keys and secrets")
    parser.add_argument("--event-map", type=Path, help="track event name mapping (YAML)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("serve", help="run the server (the default)")

    sign = actions.add_parser("sign-pixel", help="print a signed tracking pixel URL")
    sign.add_argument("--base-url", default="http://127.0.0.1:8080", help="collector address")
    sign.add_argument("--tenant", required=True)
    sign.add_argument("--contact", required=True, help="contact id")
    sign.add_argument("--type", default="email.open", help="event type (default email.open)")
    sign.add_argument("--id", help="event id: one event however often the URL is fetched")
    sign.add_argument("--account", help="account id")
    sign.add_argument("--expires-in", type=int, help="seconds until the URL stops counting")
    sign.add_argument(
        "--sent-at",
        type=int,
        help="when the message is sent (Unix seconds; 'now' if 0): an open within "
        "ENGAGEMENT_INDEX_COLLECTOR_MACHINE_OPEN_WINDOW_SECONDS of it is a machine open",
    )
    sign.add_argument(
        "--property", action="append", default=[], metavar="NAME=VALUE", help="repeatable"
    )
    sign.add_argument(
        "--secret",
        help="pixel secret (default: $ENGAGEMENT_INDEX_PIXEL_SECRET or the tenant's secret "
        "in the collector keys)",
    )

    bench = actions.add_parser("bench", help="load-test POST /v1/batch of a running collector")
    bench.add_argument("--url", default="http://127.0.0.1:8080")
    bench.add_argument("--write-key", required=True)
    bench.add_argument("--events", type=int, default=50_000)
    bench.add_argument("--batch-size", type=int, default=100)
    bench.add_argument("--concurrency", type=int, default=8)
    bench.add_argument("--contacts", type=int, default=1000)

    schemas = actions.add_parser("schemas", help="write or check schemas/collector/*.json")
    schemas.add_argument("schemas_action", choices=["write", "check"])
    schemas.add_argument("--dir", type=Path, help="the schemas directory (default schemas/)")


def _settings(args: argparse.Namespace) -> tuple[Any, Any]:
    from engagement_index.collector.settings import CollectorSettings
    from engagement_index.settings import Settings

    overrides: dict[str, Any] = {}
    if args.bind:
        overrides["bind"] = args.bind
    if args.port is not None:
        overrides["port"] = args.port
    if args.keys_file:
        overrides["keys_file"] = args.keys_file
    if args.event_map:
        overrides["event_map_file"] = args.event_map
    kafka_overrides: dict[str, Any] = {}
    if args.bootstrap_servers:
        kafka_overrides["bootstrap_servers"] = args.bootstrap_servers
    if args.topology:
        kafka_overrides["topology_file"] = args.topology
    return CollectorSettings(**overrides), Settings(**kafka_overrides)


def _sign(args: argparse.Namespace) -> int:
    from engagement_index.collector.pixel import sign_pixel_url

    secret = args.secret or os.environ.get("ENGAGEMENT_INDEX_PIXEL_SECRET")
    if not secret:
        settings, _ = _settings(args)
        secret = settings.keys().pixel_secrets.get(args.tenant)
    if not secret:
        raise ConfigError(f"no pixel secret for tenant {args.tenant!r} (use --secret)")
    properties = {}
    for item in args.property:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--property {item!r}: use NAME=VALUE")
        properties[name] = value
    try:
        url = sign_pixel_url(
            args.base_url,
            secret,
            tenant=args.tenant,
            contact_id=args.contact,
            event_type=args.type,
            event_id=args.id,
            account_id=args.account,
            expires=int(time.time()) + args.expires_in if args.expires_in else None,
            sent_at=(args.sent_at or int(time.time())) if args.sent_at is not None else None,
            properties=properties,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(url)
    return 0


def run(args: argparse.Namespace) -> int:
    action = args.action or "serve"
    if action == "sign-pixel":
        return _sign(args)
    if action == "bench":
        from engagement_index.collector.bench import run_bench

        result = asyncio.run(
            run_bench(
                args.url,
                args.write_key,
                args.events,
                args.batch_size,
                args.concurrency,
                args.contacts,
            )
        )
        print(result.report())
        return 1 if result.failures else 0
    if action == "schemas":
        from engagement_index.collector import schemas

        directory = args.dir or schemas.SCHEMAS_DIR
        if args.schemas_action == "write":
            for path in schemas.write(directory):
                print(path)
            return 0
        problems = schemas.check(directory)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    from engagement_index.collector.server import run_server

    settings, kafka = _settings(args)
    run_server(settings, kafka)
    return 0
