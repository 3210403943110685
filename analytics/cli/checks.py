"""`analytics guardrails`, `verify` and `benchmark`: the correctness checks, the scrub, the measured comparison.

Must not hold logic a test cannot reach through the package: each command is a thin call.
"""
from __future__ import annotations

import argparse
import sys
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


def cmd_verify(args: argparse.Namespace) -> int:
    from analytics.checks.scrub import scrub
    from analytics.core.files import format_bytes

    open_lake(args.lake)
    bar = None
    if sys.stderr.isatty() and not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="verify", file=sys.stderr,
                   mininterval=0.5)

    def total(n: int) -> None:
        if bar is not None:
            bar.total = n
            bar.refresh()

    try:
        report = scrub(args.lake, views=not args.lake_only, segments=not args.views_only,
                       progress=bar.update if bar is not None else None, total=total)
    finally:
        if bar is not None:
            bar.close()
    for d in report["damaged"]:
        print(f"DAMAGED {d['file']}: {d['why']} ({d['owner']})")
    if report["unrecorded"]:
        print(f"{len(report['unrecorded'])} file(s) written before checksums (checked present only), e.g. "
              f"{report['unrecorded'][0]}; `analytics build --force` or a new prepare records them")
    print(f"verified {report['files']} file(s), {format_bytes(report['bytes'])} in {report['seconds']:.1f}s: "
          f"{len(report['damaged'])} damaged or missing"
          + ("; `analytics build` rebuilds damaged views and lake indexes, `analytics prepare` re-ingests "
             "damaged lake segments" if report["damaged"] else ""))
    return 1 if report["damaged"] else 0


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
                               cold_repeats=args.cold_repeats, disk_cold=not args.no_disk_cold, out_json=args.json,
                               phases=args.phases, rows=args.rows, progress=not args.quiet)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not args.no_summary:
        print(summary_table(result))
    if args.json:
        print(f"figures in {args.json}")
    return 0 if result.all_match else 1


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

    p = add("verify", cmd_verify, "read every file an answer can come from (lake segments, views, indexes) against "
                                  "its checksum; print each damaged or missing file; exit 1 if any")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--views-only", action="store_true", help="check only the views and lake indexes")
    only.add_argument("--lake-only", action="store_true", help="check only the lake's segments")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")

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
    p.add_argument("--no-disk-cold", action="store_true",
                   help="skip the disk-cold pass (the cold pass again, the lake's pages dropped from the page cache "
                        "before each process)")
    p.add_argument("--json", default=None, metavar="FILE", help="write every figure as JSON to FILE")
    p.add_argument("--phases", default=None, metavar="DIR", help="phase records (generate/prepare/build times and peak "
                                                                 "RSS) written by `analytics bench phase`")
    p.add_argument("--rows", type=argtypes.rows, default=None, help="the data set's row count, for the report (default: from the lake)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-summary", action="store_true", help="do not print the summary table at the end")
