"""``engagement-index api-token``: make a query API token and print its digest entry."""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from engagement_index.errors import ConfigError
from engagement_index.stream.auth import ApiTokens, new_token, token_digest

HELP = "make a bearer token for the query API and print the tokens-file entry (its digest)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the sub-command's arguments."""
    parser.add_argument(
        "--tenant",
        action="append",
        required=True,
        help="tenant the token may read (repeat for several; '*' for every tenant)",
    )
    parser.add_argument(
        "--token", help="digest this existing token instead of making one (read it from stdin: -)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """Print the token (to give to the client) and the entry for the tokens file."""
    token = args.token
    if token == "-":
        token = sys.stdin.readline().strip()
    token = token or new_token()
    digest = token_digest(token)
    try:
        ApiTokens(tokens={digest: list(args.tenant)})
    except ValidationError as exc:
        raise ConfigError(exc.errors()[0]["msg"]) from exc
    if args.json:
        print(json.dumps({"token": token, "digest": digest, "tenants": list(args.tenant)}))
        return 0
    print(f"token (give it to the client; it is not stored anywhere): {token}")
    print("tokens-file entry (ENGAGEMENT_INDEX_API_TOKENS_FILE):")
    print("tokens:")
    print(f'  "{digest}": {json.dumps(list(args.tenant))}')
    return 0
