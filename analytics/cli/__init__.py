"""The `analytics` command line: one subcommand per contract command, each a thin call into the package.

Owns the parser (the commands are registered here, in the order `--help` lists them) and `main`,
which turns every failure into one line and an exit code (`common.EXIT_CODES`): no input, however
bad, gets a traceback. The commands live in the modules beside this one, one per stage of the data
flow. Must not hold logic a test cannot reach through the package.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from analytics import __version__
from analytics.cli import advise, bench, checks, data, ingest, queries, views
from analytics.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    TRACEBACK_ENV,
    CliError,
    first_line,
)

__all__ = ["EXIT_BAD_INPUT", "EXIT_CODES", "EXIT_FAILED", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "CliError",
           "build_parser", "main"]
# the command modules in the order of the data flow; each registers its subcommands
COMMAND_MODULES = (data, queries, views, advise, ingest, checks, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analytics", description=(
        "Ad-event analytics workbench: JSON queries answered from a Parquet lake and materialized "
        "views, every answer provable against the DuckDB baseline."),
        epilog="exit codes (every command):\n" + "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"analytics {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=parser.epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    for module in COMMAND_MODULES:
        module.register(add)
    return parser


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean bad input. A command's own error class is looked up only if its module
    was imported (an error of it cannot exist otherwise): `analytics run` never imports `prepare`
    and `build` (~40 ms of a new process)."""
    from analytics.query.model import QueryError

    found: list[type[BaseException]] = [CliError, QueryError]
    for module, name in (("analytics.lake.prepare", "PrepareError"), ("analytics.views.build", "BuildError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"analytics {args.command}"
    try:
        try:
            return args.func(args)
        except Exception as exc:
            if not isinstance(exc, _bad_input_errors()):
                raise
            print(f"{name}: error: {first_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
    except OSError as exc:  # a path that is missing, a directory, unreadable or unwritable
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{name}: error: {where}{exc.strerror or first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (Exception, MemoryError) as exc:
        if os.environ.get(TRACEBACK_ENV):
            raise
        what = "out of memory" if isinstance(exc, MemoryError) else "internal error"
        print(f"{name}: {what}: {type(exc).__name__}: {first_line(exc)} (set {TRACEBACK_ENV}=1 for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
