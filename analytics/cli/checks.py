"""`analytics guardrails` and `benchmark`: the correctness checks and the measured comparison.

Must not hold logic a test cannot reach through the package: each command is a thin call.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from analytics.bench import COLD_REPEATS
from analytics.cli.common import (
    AddCommand,
    CliError,
    load_queries,
    open_lake,
    report_and_exit,
)
from analytics.core import args as argtypes
from analytics.core.memory import DEFAULT_MEMORY_LIMIT


def cmd_guardrails(args: argparse.Namespace) -> int:
    from analytics.checks.guardrails import GuardrailError, format_table, run_guardrails

    open_lake(args.lake)
    try:
        report = run_guardrails(args.lake, args.raw, args.only, memory_limit=args.memory_limit)
    except GuardrailError as exc:
        raise CliError(str(exc)) from None
    return report_and_exit(args, report, format_table(report), not report["failed"])


def cmd_benchmark(args: argparse.Namespace) -> int:
    from analytics.bench.run import run_benchmark
    from analytics.bench.text import summary_table
    from analytics.bench.workloads import DEFAULT_WORKLOADS

    for path in args.workload or []:
        load_queries(path)  # a bad workload fails now, not after the baseline's minutes
    if not Path(args.raw).is_dir():
        raise CliError(f"--raw: raw directory {args.raw!r} does not exist or is not a directory")
    open_lake(args.lake)
    try:
        result = run_benchmark(args.raw, args.lake, workloads=args.workload or DEFAULT_WORKLOADS, repeats=args.repeats,
                               cold_repeats=args.cold_repeats, out_json=args.json, phases=args.phases, rows=args.rows,
                               progress=not args.quiet)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not args.no_summary:
        print(summary_table(result))
    if args.json:
        print(f"figures in {args.json}")
    return 0 if result["all_match"] else 1


def register(add: AddCommand) -> None:
    p = add("guardrails", cmd_guardrails, "run the 23 correctness guardrails over the lake, its views and (with --raw) "
                                          "the raw CSVs; exit 1 if any fails")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--raw", default=None, metavar="DIR", help="raw *.csv parts the lake was prepared from (adds the raw and baseline comparisons)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report (every check with its evidence) as JSON to FILE")
    p.add_argument("--only", default=None, metavar="CATEGORY", help="run one category: timezone, between, avg, mv_consistency, "
                                                                   "data_types, null_handling, date_boundaries")
    p.add_argument("--memory-limit", type=argtypes.memory_size, default=DEFAULT_MEMORY_LIMIT,
                   help=f"DuckDB memory limit (default {DEFAULT_MEMORY_LIMIT})")

    p = add("benchmark", cmd_benchmark, "every workload query on the baseline, DuckDB and Polars over the lake, and the "
                                        "product: answers checked against the baseline, cold and warm timings; exit 1 "
                                        "on any mismatch")
    p.add_argument("--raw", required=True, help="raw *.csv parts the lake was prepared from (the baseline reads them)")
    p.add_argument("--lake", required=True, help="prepared lake directory, views built")
    p.add_argument("--workload", action="append", default=None, metavar="FILE",
                   help="JSON query file; repeat for several (default: queries/examples.json and queries/judges.json)")
    p.add_argument("--repeats", type=argtypes.positive_int, default=5, help="warm runs per query and engine after the cold one "
                                                                    "(default 5; the baseline runs once)")
    p.add_argument("--cold-repeats", type=argtypes.positive_int, default=COLD_REPEATS,
                   help=f"new processes per engine and workload in the cold pass, in a row; its figures are their "
                        f"medians (default {COLD_REPEATS})")
    p.add_argument("--json", default=None, metavar="FILE", help="write every figure as JSON to FILE")
    p.add_argument("--phases", default=None, metavar="DIR", help="phase records (generate/prepare/build times and peak "
                                                                 "RSS) written by `analytics bench phase`")
    p.add_argument("--rows", type=argtypes.rows, default=None, help="the data set's row count, for the report (default: from the lake)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-summary", action="store_true", help="do not print the summary table at the end")
