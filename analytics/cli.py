"""The `analytics` command line: one subcommand per contract command, each a thin call into the package.

Owns argument parsing, one-line error messages and the exit codes (`EXIT_CODES`, printed in
`--help`): no input, however bad, gets a traceback. Must not hold logic a test cannot reach
through the package.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from analytics import __version__
from analytics.core import args as argtypes
from analytics.core.files import write_atomic
from analytics.core.memory import DEFAULT_MEMORY_LIMIT

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES: dict[int, str] = {EXIT_OK: "success", EXIT_FAILED: (
    "the command ran but something failed: a query errored (its run.json entry says why), a check or guardrail "
    "failed, answers differ, a view failed to build"), EXIT_BAD_INPUT: (
    "bad usage or bad input: an argument, a path, a query file, a raw file or a lake that cannot be used; one line "
    "on stderr names the file, where in it, and what is allowed"), EXIT_INTERNAL: (
    "an internal error (a bug) or out of memory: one line on stderr; ANALYTICS_TRACEBACK=1 shows the traceback"),
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)"}
TRACEBACK_ENV = "ANALYTICS_TRACEBACK"


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def _open_lake(path: str) -> None:
    """Refuse a `--lake` that is not a readable prepared lake before any work starts."""
    from analytics.lake.manifest import MANIFEST, Lake

    try:
        lake = Lake.open(path)
        lake.version, lake.segment_ids  # the fields every command reads first
    except (FileNotFoundError, NotADirectoryError):
        raise CliError(f"{path} is not a prepared lake (no {MANIFEST}); run `analytics prepare` first") from None
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise CliError(f"{os.path.join(path, MANIFEST)} is damaged ({type(exc).__name__}: {_first_line(exc)}); "
                       f"prepare the lake again into a new directory") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _out_dir(path: str, flag: str = "--out") -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"{flag}: {path} exists and is not a directory")


def cmd_generate(args: argparse.Namespace) -> int:
    _out_dir(args.out)
    from analytics.lake.generator import generate

    summary = generate(args.out, args.rows, seed=args.seed, parts=args.parts, dirty=args.dirty,
                       progress=not args.quiet)
    print(f"wrote {summary['rows']:,} rows in {summary['parts']} part(s) to {args.out} "
          f"in {summary['seconds']:.1f}s ({summary['rows_per_second']:,.0f} rows/s)")
    return 0


def _engine(args: argparse.Namespace) -> Any:
    """The engine `--engine` names: None for duckdb (each command's own default), else a started
    Spark engine (`--master`, `--spark-conf`); a Spark that cannot start is a one-line error."""
    if args.engine == "duckdb":
        for flag, value in (("--master", args.master), ("--spark-conf", args.spark_conf)):
            if value:
                raise CliError(f"{flag} applies to --engine spark only")
        return None
    conf = {}
    for item in args.spark_conf:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--spark-conf: expected KEY=VALUE, got {item!r}")
        conf[key.strip()] = value.strip()
    try:
        from analytics.engines import get_engine

        return get_engine(args.engine, master=args.master, conf=conf)
    except ImportError:
        raise CliError("--engine spark needs PySpark: pip install -e '.[spark]' (and Java 17+)") from None
    except Exception as exc:  # noqa: BLE001 - e.g. no Java, a master that does not answer
        raise CliError(f"cannot start Spark (--master {args.master or 'local[*]'}): {_first_line(exc)}") from None


def _add_engine_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                   help=f"where {what}: duckdb (this machine, the default) or spark (PySpark; docs/spark.md)")
    p.add_argument("--master", default=None, metavar="URL",
                   help="Spark master for --engine spark: local[*] (default), local[N], spark://HOST:7077, yarn, "
                        "k8s://...; under spark-submit, its --master applies")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting for --engine spark (repeatable), e.g. spark.executor.memory=8g")


def cmd_prepare(args: argparse.Namespace) -> int:
    from analytics.lake.manifest import MANIFEST
    from analytics.lake.prepare import prepare

    _out_dir(args.lake, "--lake")
    if os.path.exists(os.path.join(args.lake, MANIFEST)):
        _open_lake(args.lake)  # a damaged manifest: stop before adding to a lake of unknown state

    summary = prepare(args.raw, args.lake, progress=not args.quiet, memory_limit=args.memory_limit,
                      engine=_engine(args))
    totals = summary["totals"]
    if not summary["changed"]:
        print(f"lake {args.lake} is up to date with {args.raw} (version {summary['lake_version']}); nothing to do")
        return 0
    print(f"lake {args.lake} version {summary['lake_version']}: added {len(summary['added'])} part(s), "
          f"dropped {len(summary['dropped'])}, in {summary['seconds']:.1f}s")
    print(f"rows read {totals['rows_read']:,} = in lake {totals['rows_lake']:,} + quarantined {totals['rows_quarantined']:,}")
    for reason, n in sorted(totals["quarantine_by_reason"].items()):
        print(f"  quarantined {reason}: {n:,}")
    return 0


def _load_queries(path: str) -> list[Any]:
    from analytics.query.model import QueryError, load_queries

    try:
        return load_queries(path)
    except QueryError as exc:
        raise CliError(str(exc)) from None


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[int], None] | None]:
    """A tqdm bar on stderr when stderr is a terminal (never in a pipe or a log), as `progress(done)`."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="query", desc=what, file=sys.stderr, mininterval=0.5) as bar:
        yield lambda done: bar.update(done - bar.n)


def cmd_run(args: argparse.Namespace) -> int:
    import duckdb

    from analytics.batch.simple import run_workbench
    from analytics.serving.workbench import Workbench

    queries = _load_queries(args.queries)
    _open_lake(args.lake)
    _out_dir(args.out)
    if args.engine == "duckdb":
        _engine(args)  # refuses the Spark-only flags
    try:
        wb = Workbench(args.lake, memory_limit=args.memory_limit, use_views=not args.no_views)
    except duckdb.Error as exc:
        raise CliError(f"cannot open lake {args.lake}: {str(exc).splitlines()[0]}") from None
    if args.engine != "duckdb":
        return _run_on_engine(args, wb, queries)
    try:
        with _progress(len(queries), "run") as progress:
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
    _print_run(report, args.out)
    return 1 if report["errors"] else 0


def _run_on_engine(args: argparse.Namespace, wb: Any, queries: list[Any]) -> int:
    """`run --engine spark`: views answered by DuckDB as always, lake-routed queries by Spark."""
    from analytics.batch.simple import run_on_engine

    try:
        engine = _engine(args)
        try:
            with _progress(len(queries), f"run on {engine.name}") as progress:
                report = run_on_engine(wb, engine, queries, args.out, progress=progress)
        finally:
            engine.close()
    finally:
        wb.close()
    _print_run(report, args.out)
    print(f"{report['lake_queries']} lake-routed quer(ies) ran on {report['engine']} ({report['master']})")
    return 1 if report["errors"] else 0


def _write_json(path: str, data: dict[str, Any], label: str) -> None:
    """Write a command's `--json` file atomically and say where it is."""
    try:
        write_atomic(path, json.dumps(data, indent=1, default=str))
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    print(f"{label} in {path}")


def cmd_stats(args: argparse.Namespace) -> int:
    from analytics.batch.telemetry import format_stats, log_path, read_events, stats

    lake = Path(args.lake)
    if not lake.is_dir():
        raise CliError(f"lake directory {args.lake!r} does not exist")
    summary = stats(read_events(lake))
    summary["log"] = str(log_path(lake))
    print(format_stats(summary))
    if args.json:
        _write_json(args.json, summary, "stats")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from analytics.batch.simple import run_queries
    from analytics.checks.baseline import baseline_query, connect_baseline

    queries = _load_queries(args.queries)
    _out_dir(args.out)
    try:
        con = connect_baseline(args.raw)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    with _progress(len(queries), "baseline") as progress:
        report = run_queries(lambda q: (baseline_query(con, q), "baseline"), queries, args.out, progress=progress)
    _print_run(report, args.out)
    return 1 if report["errors"] else 0


def _print_run(report: dict[str, Any], out: str) -> None:
    for e in report["queries"]:
        if "error" in e:
            print(f"{e['id']}: ERROR {e['error']}")
        else:
            how = " (cache)" if e.get("cache") else (f" (shared scan {e['scan']})" if e.get("shared_scan") else "")
            print(f"{e['id']}: {e['rows']} rows in {e['ms']:.2f} ms via {e['route']}{how}")
    print(f"results in {out}/ ({report['errors']} error(s))")


def cmd_compare(args: argparse.Namespace) -> int:
    from analytics.query.compare import compare_dirs

    queries = _load_queries(args.queries)
    for flag, path in (("expected", args.expected), ("actual", args.actual)):
        if not os.path.isdir(path):
            raise CliError(f"{flag}: result directory {path!r} does not exist or is not a directory")
    try:
        outcome = compare_dirs(queries, args.expected, args.actual)
    except (UnicodeDecodeError, ValueError) as exc:  # a q{i}.csv that is not the contract's CSV
        raise CliError(f"cannot read the answers in {args.expected} or {args.actual}: {_first_line(exc)}") from None
    for row in outcome:
        print(f"{row['id']}: {'match' if row['match'] else 'MISMATCH'}{'' if row['match'] else ' - ' + row['reason']}")
    bad = sum(1 for r in outcome if not r["match"])
    print(f"{len(outcome) - bad}/{len(outcome)} match")
    return 1 if bad else 0


def cmd_build(args: argparse.Namespace) -> int:
    from analytics.views.build import build

    _open_lake(args.lake)
    summary = build(args.lake, args.views or None, jobs=args.jobs, force=args.force, progress=not args.quiet,
                    memory_limit=args.memory_limit, engine=_engine(args))
    if not summary["built"] and not summary["failed"]:
        print(f"all {len(summary['up_to_date'])} view(s) are up to date with lake version {summary['lake_version']}; nothing to do")
        return 0
    for r in summary["views"]:
        if r["status"] == "built":
            print(f"{r['view']}: built v{r['version']} ({r['mode']}) {r['rows']:,} rows in {r['seconds']:.1f}s")
        else:
            print(f"{r['view']}: up to date (v{r['version']})")
    for name, why in summary["failed"].items():
        print(f"{name}: FAILED - {why}", file=sys.stderr)
    print(f"{len(summary['built'])} built, {len(summary['up_to_date'])} up to date, {len(summary['failed'])} failed "
          f"in {summary['seconds']:.1f}s")
    return 1 if summary["failed"] else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from analytics.query.model import QueryError
    from analytics.serving.workbench import Workbench

    queries = _load_queries(args.queries)
    _open_lake(args.lake)
    wb = Workbench(args.lake)
    failed = 0
    for i, raw in enumerate(queries, start=1):
        print(f"== q{i}")
        try:
            print(wb.explain(raw))
        except QueryError as exc:
            failed += 1
            print(f"invalid query: {exc}")
    return 1 if failed else 0


def _report(args: argparse.Namespace, report: dict[str, Any], text: str, ok: bool) -> int:
    """Print a report, write it as JSON when asked; exit 0 when it holds, 1 when it does not."""
    print(text)
    if args.json:
        _write_json(args.json, report, "report")
    return 0 if ok else 1


def cmd_remediation(args: argparse.Namespace) -> int:
    from analytics.checks.remediation import format_report, remediation_report

    _open_lake(args.lake)
    try:
        report = remediation_report(args.lake, samples=args.samples)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return _report(args, report, format_report(report), report["ok"])


def cmd_guardrails(args: argparse.Namespace) -> int:
    from analytics.checks.guardrails import GuardrailError, format_table, run_guardrails

    _open_lake(args.lake)
    try:
        report = run_guardrails(args.lake, args.raw, args.only, memory_limit=args.memory_limit)
    except GuardrailError as exc:
        raise CliError(str(exc)) from None
    return _report(args, report, format_table(report), not report["failed"])


def cmd_benchmark(args: argparse.Namespace) -> int:
    from analytics.bench.run import run_benchmark
    from analytics.bench.text import summary_table
    from analytics.bench.workloads import DEFAULT_WORKLOADS

    for path in args.workload or []:
        _load_queries(path)  # a bad workload fails now, not after the baseline's minutes
    if not Path(args.raw).is_dir():
        raise CliError(f"--raw: raw directory {args.raw!r} does not exist or is not a directory")
    _open_lake(args.lake)
    try:
        result = run_benchmark(args.raw, args.lake, workloads=args.workload or DEFAULT_WORKLOADS, repeats=args.repeats,
                               out_json=args.json, phases=args.phases, rows=args.rows, progress=not args.quiet)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not args.no_summary:
        print(summary_table(result))
    if args.json:
        print(f"figures in {args.json}")
    return 0 if result["all_match"] else 1


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

    p = add("generate", cmd_generate, "write realistic synthetic raw CSV parts")
    p.add_argument("--out", required=True, help="directory to write events_part_NNNNN.csv into")
    p.add_argument("--rows", required=True, type=argtypes.rows, help="total data rows, e.g. 15000000 or 15M")
    p.add_argument("--seed", type=argtypes.int_in(0, 2**63 - 1), default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--parts", type=argtypes.positive_int, default=None, help="number of CSV parts (default: one per 5M rows)")
    p.add_argument("--dirty", type=argtypes.fraction, default=0.0,
                   help="fraction of rows made untrustworthy, to exercise remediation, from 0 to 1 (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("prepare", cmd_prepare, "remediate raw CSVs into the partitioned Parquet lake (+ quarantine, manifest)")
    p.add_argument("--raw", required=True, help="directory of raw *.csv parts")
    p.add_argument("--lake", required=True, help="lake directory (created if missing)")
    p.add_argument("--memory-limit", type=argtypes.memory_size, default=DEFAULT_MEMORY_LIMIT,
                   help=f"DuckDB memory limit while preparing (default {DEFAULT_MEMORY_LIMIT})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_engine_args(p, "remediation runs")

    p = add("run", cmd_run, "answer a JSON file of queries into q{i}.csv and run.json")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--queries", required=True, help="JSON file with a list of queries")
    p.add_argument("--out", required=True, help="directory for q{i}.csv and run.json")
    p.add_argument("--no-views", action="store_true", help="answer from the lake only")
    p.add_argument("--memory-limit", type=argtypes.memory_size, default=DEFAULT_MEMORY_LIMIT,
                   help="memory limit for query execution, e.g. 512MB or 4GiB (default "
                        f"{DEFAULT_MEMORY_LIMIT}); a query that "
                        "needs more fails with an error, the others still run")
    p.add_argument("--batch-size", type=argtypes.positive_int, default=20, help="queries per batch (default 20)")
    p.add_argument("--sequential", action="store_true", help="one query at a time instead of a thread pool")
    p.add_argument("--workers", type=argtypes.threads, default=None, help="threads of the pool (default: cores)")
    p.add_argument("--no-cache", action="store_true", help="compute every answer; do not read or fill the result cache")
    p.add_argument("--no-batching", action="store_true", help="one lake scan per query (no shared superset scans)")
    p.add_argument("--no-telemetry", action="store_true", help="do not append to LAKE/_telemetry/queries.jsonl")
    _add_engine_args(p, "lake-routed queries run (views are always served by DuckDB; with spark, queries run "
                        "one at a time and the cache/batching/worker options do not apply)")

    p = add("baseline", cmd_baseline, "reference answers: the challenge baseline (DuckDB view over the raw CSVs)")
    p.add_argument("--raw", required=True, help="directory of raw *.csv parts")
    p.add_argument("--queries", required=True, help="JSON file with a list of queries")
    p.add_argument("--out", required=True, help="directory for q{i}.csv and run.json")

    p = add("compare", cmd_compare, "compare two result directories query by query; exit 1 on any mismatch")
    p.add_argument("--queries", required=True, help="the JSON query file both directories answer")
    p.add_argument("expected", help="directory with the reference q{i}.csv (e.g. from `baseline`)")
    p.add_argument("actual", help="directory with the q{i}.csv to check")

    p = add("build", cmd_build, "build or refresh materialized views (only what changed)")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--views", nargs="+", metavar="NAME", help="views to build (default: the whole catalog)")
    p.add_argument("--jobs", type=argtypes.threads, default=None, help="views built in parallel (default: cores)")
    p.add_argument("--force", action="store_true", help="rebuild from the lake even when up to date")
    p.add_argument("--memory-limit", type=argtypes.memory_size, default=DEFAULT_MEMORY_LIMIT,
                   help=f"DuckDB memory for the whole build, shared equally by the --jobs connections "
                        f"(default {DEFAULT_MEMORY_LIMIT})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_engine_args(p, "views are aggregated (their checks and registry are the same for both)")

    p = add("explain", cmd_explain, "show route, candidates, costs and SQL for each query")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--queries", required=True, help="JSON file with a list of queries")

    p = add("stats", cmd_stats, "query telemetry of a lake: view hit rate, cache hit rate, p50/p95/p99 latency per route")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the statistics as JSON to FILE")

    p = add("remediation", cmd_remediation, "what prepare quarantined and kept, per reason, type, file and day; exit 1 if the counts do not add up")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the full report (checks, samples) as JSON to FILE")
    p.add_argument("--samples", type=argtypes.int_in(0, 10_000), default=5,
                   help="offending rows kept per quarantine reason (default 5)")

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
    p.add_argument("--json", default=None, metavar="FILE", help="write every figure as JSON to FILE")
    p.add_argument("--phases", default=None, metavar="DIR", help="phase records (generate/prepare/build times and peak "
                                                                 "RSS) written by `python -m analytics.bench phase`")
    p.add_argument("--rows", type=argtypes.rows, default=None, help="the data set's row count, for the report (default: from the lake)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-summary", action="store_true", help="do not print the summary table at the end")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from analytics.lake.prepare import PrepareError
    from analytics.query.model import QueryError
    from analytics.views.build import BuildError

    name = f"analytics {args.command}"
    try:
        return args.func(args)
    except (CliError, PrepareError, QueryError, BuildError) as exc:
        print(f"{name}: error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a path that is missing, a directory, unreadable or unwritable
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{name}: error: {where}{exc.strerror or _first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if os.environ.get(TRACEBACK_ENV):
            raise
        what = "out of memory" if isinstance(exc, MemoryError) else "internal error"
        print(f"{name}: {what}: {type(exc).__name__}: {_first_line(exc)} (set {TRACEBACK_ENV}=1 for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
