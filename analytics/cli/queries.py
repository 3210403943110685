"""`analytics run`, `baseline`, `compare` and `explain`: a JSON query file in, answers and plans out.

Must not hold logic a test cannot reach through the package: each command is a thin call.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from analytics.batch import DEFAULT_BATCH_SIZE
from analytics.cli.common import (
    AddCommand,
    CliError,
    add_engine_args,
    engine_from_args,
    first_line,
    load_queries,
    open_lake,
    out_dir,
    print_run,
    progress_bar,
)
from analytics.core import args as argtypes
from analytics.core.memory import DEFAULT_MEMORY_LIMIT


def cmd_run(args: argparse.Namespace) -> int:
    import duckdb

    from analytics.batch.simple import run_workbench
    from analytics.serving.workbench import Workbench

    queries = load_queries(args.queries)
    open_lake(args.lake, args.as_of)
    out_dir(args.out)
    if args.engine == "duckdb":
        engine_from_args(args)  # refuses the Spark-only flags
    try:
        wb = Workbench(args.lake, memory_limit=args.memory_limit, use_views=not args.no_views, as_of=args.as_of)
    except duckdb.Error as exc:
        raise CliError(f"cannot open lake {args.lake}: {str(exc).splitlines()[0]}") from None
    if args.engine != "duckdb":
        return _run_on_engine(args, wb, queries)
    try:
        with progress_bar(len(queries), "run") as progress:
            result = run_workbench(wb, queries, args.out, progress=progress, batch_size=args.batch_size,
                                   parallel=not args.sequential, workers=args.workers, cache=not args.no_cache,
                                   persist_cache=not args.no_cache, batching=not args.no_batching,
                                   telemetry=not args.no_telemetry)
    finally:
        wb.close()
    report = result.report
    print(f"{len(report['queries'])} queries in {len(report['batches'])} batch(es) of at most {report['batch_size']}: "
          f"{report['lake_queries']} lake queries took {report['lake_scans']} lake scan(s), "
          f"{report['cache_hits']} cache hit(s)")
    print_run(report, args.out)
    return 1 if report["errors"] else 0


def _run_on_engine(args: argparse.Namespace, wb: Any, queries: list[Any]) -> int:
    """`run --engine spark`: views answered by DuckDB as always, lake-routed queries by Spark."""
    from analytics.batch.simple import run_on_engine

    try:
        engine = engine_from_args(args)
        try:
            with progress_bar(len(queries), f"run on {engine.name}") as progress:
                report = run_on_engine(wb, engine, queries, args.out, progress=progress)
        finally:
            engine.close()
    finally:
        wb.close()
    print_run(report, args.out)
    print(f"{report['lake_queries']} lake-routed quer(ies) ran on {report['engine']} ({report['master']})")
    return 1 if report["errors"] else 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from analytics.batch.simple import run_queries
    from analytics.checks.baseline import baseline_query, connect_baseline

    queries = load_queries(args.queries)
    out_dir(args.out)
    try:
        con = connect_baseline(args.raw)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    with progress_bar(len(queries), "baseline") as progress:
        report = run_queries(lambda q: (baseline_query(con, q), "baseline"), queries, args.out, progress=progress)
    print_run(report, args.out)
    return 1 if report["errors"] else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from analytics.query.compare import compare_dirs

    queries = load_queries(args.queries)
    for flag, path in (("expected", args.expected), ("actual", args.actual)):
        if not os.path.isdir(path):
            raise CliError(f"{flag}: result directory {path!r} does not exist or is not a directory")
    try:
        outcome = compare_dirs(queries, args.expected, args.actual)
    except (UnicodeDecodeError, ValueError) as exc:  # a q{i}.csv that is not the contract's CSV
        raise CliError(f"cannot read the answers in {args.expected} or {args.actual}: {first_line(exc)}") from None
    for row in outcome:
        print(f"{row['id']}: {'match' if row['match'] else 'MISMATCH'}{'' if row['match'] else ' - ' + row['reason']}")
    bad = sum(1 for r in outcome if not r["match"])
    print(f"{len(outcome) - bad}/{len(outcome)} match")
    return 1 if bad else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from analytics.adaptive.advice import explain_lake
    from analytics.query.model import QueryError
    from analytics.serving.router import LAKE
    from analytics.serving.workbench import Workbench

    queries = load_queries(args.queries)
    open_lake(args.lake)
    wb = Workbench(args.lake)
    failed = 0
    for i, raw in enumerate(queries, start=1):
        print(f"== q{i}")
        try:
            plan = wb.plan(raw)
            print(plan.describe())
            if plan.route == LAKE and plan.index is None:
                for why in wb.lake_damage(raw):
                    print(f"damaged: {why} (this query fails until then)")
            if plan.route == LAKE and plan.fallback_reason != "views disabled (--no-views)":
                print("\n".join(explain_lake(args.lake, wb.parse(raw))))
        except QueryError as exc:
            failed += 1
            print(f"invalid query: {exc}")
    return 1 if failed else 0


def register(add: AddCommand) -> None:
    p = add("run", cmd_run, "answer a JSON file of queries into q{i}.csv and run.json")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--queries", required=True, help="JSON file with a list of queries")
    p.add_argument("--out", required=True, help="directory for q{i}.csv and run.json")
    p.add_argument("--no-views", action="store_true", help="answer from the lake only")
    p.add_argument("--as-of", default=None, metavar="VERSION|TIMESTAMP",
                   help="answer as the lake stood at a Delta version (e.g. 3) or time (e.g. 2026-12-01T09:00:00Z); "
                        "views answer only where they hold exactly that data (default: the newest version)")
    p.add_argument("--memory-limit", type=argtypes.memory_size, default=DEFAULT_MEMORY_LIMIT,
                   help="memory limit for query execution, e.g. 512MB or 4GiB (default "
                        f"{DEFAULT_MEMORY_LIMIT}); a query that "
                        "needs more fails with an error, the others still run")
    p.add_argument("--batch-size", type=argtypes.positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"queries per batch (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--sequential", action="store_true", help="one query at a time instead of a thread pool")
    p.add_argument("--workers", type=argtypes.threads, default=None, help="threads of the pool (default: cores)")
    p.add_argument("--no-cache", action="store_true", help="compute every answer; do not read or fill the result cache")
    p.add_argument("--no-batching", action="store_true", help="one lake scan per query (no shared superset scans)")
    p.add_argument("--no-telemetry", action="store_true", help="do not append to LAKE/_telemetry/queries.jsonl")
    add_engine_args(p, "lake-routed queries run (views are always served by DuckDB; with spark, queries run "
                        "one at a time and the cache/batching/worker options do not apply)")

    p = add("baseline", cmd_baseline, "reference answers: the challenge baseline (DuckDB view over the raw CSVs)")
    p.add_argument("--raw", required=True, help="directory of raw *.csv parts")
    p.add_argument("--queries", required=True, help="JSON file with a list of queries")
    p.add_argument("--out", required=True, help="directory for q{i}.csv and run.json")

    p = add("compare", cmd_compare, "compare two result directories query by query; exit 1 on any mismatch")
    p.add_argument("--queries", required=True, help="the JSON query file both directories answer")
    p.add_argument("expected", help="directory with the reference q{i}.csv (e.g. from `baseline`)")
    p.add_argument("actual", help="directory with the q{i}.csv to check")

    p = add("explain", cmd_explain, "show route, candidates, costs and SQL for each query")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--queries", required=True, help="JSON file with a list of queries")
