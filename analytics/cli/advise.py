"""`analytics advise`: view definitions (and refusals) proposed from the lake's query telemetry.

Must not hold logic a test cannot reach through the package: the command is a thin call into
`views.adaptive`; it reads the telemetry log (warning, with the file and line, about each line it
skips) and prints the advice.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from analytics.cli.common import AddCommand, CliError, open_lake
from analytics.views import DEFAULT_BUDGET

# the command line's defaults (argparse converts them with the types below, so they load nothing)
DEFAULT_RETIRE_AFTER = "7d"


def add_budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=budget_arg, default=DEFAULT_BUDGET,
                   help=f"bytes the adaptive views and indexes may take, e.g. 500MB, 2GiB (default {DEFAULT_BUDGET}); "
                        "more than 0 and no more than the lake's disk has free")
    p.add_argument("--retire-after", type=duration_arg, default=DEFAULT_RETIRE_AFTER,
                   help="an adaptive view that served no query for this long is retired, and only the telemetry "
                        f"of this window (back from its last event) is advised on, e.g. 12h, 7d (default {DEFAULT_RETIRE_AFTER})")


def budget_arg(text: str) -> int:
    from analytics.adaptive.advice import parse_budget

    try:
        budget = parse_budget(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if budget <= 0:
        raise argparse.ArgumentTypeError(f"expected a size above 0, e.g. 500MB or 2GiB, got {text[:40]!r}")
    return budget


def check_budget(budget: int, lake: str) -> None:
    """Refuse a budget the lake's disk cannot hold (what it has free now): one line, before any work."""
    import shutil

    from analytics.core.files import format_bytes

    free = shutil.disk_usage(lake).free
    if budget > free:
        raise CliError(f"--budget {format_bytes(budget)} is more than the {format_bytes(free)} free on the disk of "
                       f"{lake}; give at most that")


def duration_arg(text: str) -> float:
    from analytics.adaptive.advice import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def read_workload(lake: str) -> list[dict[str, Any]]:
    """The lake's telemetry events; each line skipped is named on stderr, the rest are used."""
    from analytics.batch.telemetry import read_events

    def warn(path: Any, line: int, why: str) -> None:
        where = f"{path} line {line}" if line else str(path)
        print(f"warning: {where} skipped: {why}", file=sys.stderr)

    return list(read_events(lake, on_bad_line=warn))


def cmd_advise(args: argparse.Namespace) -> int:
    from analytics.adaptive.advice import advise
    from analytics.core.files import format_bytes
    from analytics.lake.state import Lake

    open_lake(args.lake)
    check_budget(args.budget, args.lake)
    events = read_workload(args.lake)
    try:
        advice = advise(Lake.open(args.lake), events, args.budget, window_s=args.retire_after)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        json.dump(advice, sys.stdout, indent=1, default=str)
        print()
        return 0
    print(f"{advice['events']:,} telemetry events, {advice['shapes']} query shapes, {advice['lake_shapes']} answered "
          f"by the lake; budget {format_bytes(advice['budget'])} ({format_bytes(advice['bytes_kept'])} used by the adaptive views kept, "
          f"{format_bytes(advice['bytes_used'])} with these proposals)")
    for p in advice["proposals"]:
        print(f"{'keep' if p['status'] == 'kept' else 'propose'} {p['name']}: grain {p['grain']}, dims "
              f"{', '.join(p['dims']) or '-'}, types {', '.join(p['types'])}; ~{p['est_rows']:,} rows, "
              f"~{format_bytes(p['est_bytes'])}, rollup {p['rollup']:g}; covers {p['queries']} lake queries of "
              f"{len(p['shapes'])} shape(s), saving {p['saved_ms']:,.1f} ms measured")
    for p in advice["refused"]:
        print(f"refuse  {p['name']}: {p['reason']} (would cover {p['queries']} queries, {p['saved_ms']:,.1f} ms)")
    for shape, why in advice["uncovered"].items():
        print(f"no view for {shape}: {why}")
    for ix in advice.get("indexes", []):
        print(f"index   {ix['name']} ({ix['status']}): {ix['key']} point filters over {', '.join(ix['types'])}, "
              f"columns {', '.join(ix['columns'])}; ~{format_bytes(ix['est_bytes'])}; covers {ix['queries']} lake "
              f"queries of {len(ix['shapes'])} shape(s), {ix['saved_ms']:,.1f} ms measured"
              + (f"; {ix['reason']}" if ix.get("reason") else ""))
    if not advice["proposals"] and not advice["refused"] and not advice["uncovered"]:
        print("nothing to advise: no lake-routed query with a recorded shape")
    return 0


def register(add: AddCommand) -> None:
    p = add("advise", cmd_advise, "propose views for the lake-routed queries of the telemetry (see build --adaptive)")
    p.add_argument("--lake", required=True, help="prepared lake directory (its _telemetry/queries.jsonl is read)")
    add_budget_args(p)
    p.add_argument("--json", action="store_true", help="the whole advice as JSON")
