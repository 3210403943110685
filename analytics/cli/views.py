"""`analytics build`: materialized views built or refreshed from the lake.

Must not hold logic a test cannot reach through the package: the command is a thin call.
"""
from __future__ import annotations

import argparse
import sys

from analytics.cli.advise import add_budget_args, check_budget, read_workload
from analytics.cli.common import (
    AddCommand,
    CliError,
    add_engine_args,
    engine_from_args,
    open_lake,
)
from analytics.core import args as argtypes
from analytics.core.memory import DEFAULT_MEMORY_LIMIT


def cmd_build(args: argparse.Namespace) -> int:
    from analytics.views.build import build

    open_lake(args.lake)
    if args.adaptive:
        return _build_adaptive(args)
    from analytics.adaptive.advice import shapes_by_route

    # each new version proves itself on the query shapes the telemetry saw its view answer
    summary = build(args.lake, args.views or None, jobs=args.jobs, force=args.force, progress=not args.quiet,
                    memory_limit=args.memory_limit, engine=engine_from_args(args),
                    shapes=shapes_by_route(read_workload(args.lake)))
    for name, outcome in summary["indexes"].items():  # lake indexes whose files were damaged
        print(f"{name}: lake index {outcome} (its files were damaged or missing)",
              file=sys.stdout if outcome == "rebuilt" else sys.stderr)
    index_failed = any(outcome != "rebuilt" for outcome in summary["indexes"].values())
    if not summary["built"] and not summary["failed"]:
        print(f"all {len(summary['up_to_date'])} view(s) are up to date with lake version {summary['lake_version']}"
              f"{'' if summary['indexes'] else '; nothing to do'}")
        return 1 if index_failed else 0
    for r in summary["views"]:
        if r["status"] == "built":
            print(f"{r['view']}: built v{r['version']} ({r['mode']}) {r['rows']:,} rows in {r['seconds']:.1f}s")
        else:
            print(f"{r['view']}: up to date (v{r['version']})")
    for name, why in summary["failed"].items():
        print(f"{name}: FAILED - {why}", file=sys.stderr)
    print(f"{len(summary['built'])} built, {len(summary['up_to_date'])} up to date, {len(summary['failed'])} failed "
          f"in {summary['seconds']:.1f}s")
    return 1 if summary["failed"] or index_failed else 0


def _build_adaptive(args: argparse.Namespace) -> int:
    from analytics.adaptive.build import build_adaptive
    from analytics.core.files import format_bytes

    if args.views or args.force or args.engine != "duckdb":
        raise CliError("--adaptive builds what the telemetry advises: it takes no --views, --force or --engine")
    check_budget(args.budget, args.lake)
    summary = build_adaptive(args.lake, read_workload(args.lake), budget=args.budget, retire_after_s=args.retire_after,
                             memory_limit=args.memory_limit, progress=not args.quiet, log=print)
    for ix in summary["indexes"]:
        print(f"{ix['index']}: lake index built, {format_bytes(ix['bytes'])} in {ix['seconds']:.1f}s")
    for name in summary["retired"]:
        print(f"{name}: retired (served no query for {args.retire_after:g} s, or over the budget)")
    for name, why in summary["failed"].items():
        print(f"{name}: FAILED - {why}", file=sys.stderr)
    for p in summary["refused"]:
        print(f"{p['name']}: refused - {p['reason']}")
    print(f"adaptive build: {len(summary['built'])} view(s) and {len(summary['indexes'])} index(es) built, "
          f"{len(summary['retired'])} retired, "
          f"{len(summary['failed'])} failed in {summary['seconds']:.1f}s; adaptive views and indexes take "
          f"{format_bytes(summary['bytes'])} of the {format_bytes(summary['budget'])} budget")
    return 1 if summary["failed"] else 0


def register(add: AddCommand) -> None:
    p = add("build", cmd_build, "build or refresh materialized views (only what changed)")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--views", nargs="+", metavar="NAME",
                   help="views to build (default: the catalog and this lake's adaptive views)")
    p.add_argument("--jobs", type=argtypes.threads, default=None, help="views built in parallel (default: cores)")
    p.add_argument("--force", action="store_true", help="rebuild from the lake even when up to date")
    p.add_argument("--memory-limit", type=argtypes.memory_size, default=DEFAULT_MEMORY_LIMIT,
                   help=f"DuckDB memory for the whole build, shared equally by the --jobs connections "
                        f"(default {DEFAULT_MEMORY_LIMIT})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_args(p, "views are aggregated (their checks and registry are the same for both)")
    p.add_argument("--adaptive", action="store_true",
                   help="build the views `analytics advise` proposes from the telemetry, within --budget; retire idle ones")
    add_budget_args(p)
