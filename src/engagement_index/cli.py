"""The ``engagement-index`` command line: one sub-command per module in ``commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from engagement_index import __version__
from engagement_index.errors import EngagementIndexError

# sub-command name -> module under engagement_index.commands exposing
# ``HELP: str``, ``add_arguments(parser)`` and ``run(args) -> int``.
# Modules are imported lazily so ``replay`` does not pay for importing Faust.
SUBCOMMANDS: dict[str, str] = {
    "replay": "replay",
    "report": "report",
    "schemas": "schemas",
    "topics": "topics",
    "worker": "worker",
    "demo": "demo",
    "collector": "collector",
    "api-token": "api_token",
    "erase": "erase",
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Build the parser, importing only the sub-command that ``argv`` names."""
    parser = argparse.ArgumentParser(
        prog="engagement-index",
        description="Real-time engagement scores and lifecycle stages per contact.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name in SUBCOMMANDS.items():
        if wanted is not None and name != wanted:
            sub.add_parser(name, help=f"(run 'engagement-index {name} --help')")
            continue
        try:
            module = importlib.import_module(f"engagement_index.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"engagement_index.commands.{module_name}":
                raise
            continue
        child = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(child)
        child.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    run = getattr(args, "_run", None)
    if run is None:
        parser.error(f"sub-command {args.command!r} is not available in this build")
    try:
        return int(run(args))
    except EngagementIndexError as exc:
        print(f"engagement-index: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a setting from the environment or a flag is invalid
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(settings)'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        print(f"engagement-index: error: invalid settings: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _is_settings_error(exc):
            raise
        print(f"engagement-index: error: invalid settings: {exc}", file=sys.stderr)
        return 2


def _is_settings_error(exc: Exception) -> bool:
    """Whether ``exc`` is pydantic-settings' ``SettingsError``. The module is looked up, not
    imported: a sub-command that never loaded it (``replay``) cannot have raised its error, and
    importing it costs a third of ``replay``'s start-up."""
    settings = sys.modules.get("pydantic_settings")
    return settings is not None and isinstance(exc, settings.SettingsError)


if __name__ == "__main__":
    raise SystemExit(main())
