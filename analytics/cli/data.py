"""`analytics generate`, `prepare`, `remediation` and `stats`: raw parts in, the lake and what it holds out.

Must not hold logic a test cannot reach through the package: each command is a thin call.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from analytics.cli.common import (
    AddCommand,
    CliError,
    add_engine_args,
    engine_from_args,
    open_lake,
    out_dir,
    report_and_exit,
    write_json,
)
from analytics.core import args as argtypes
from analytics.core.memory import DEFAULT_MEMORY_LIMIT


def cmd_generate(args: argparse.Namespace) -> int:
    out_dir(args.out)
    from analytics.lake.generator import generate

    summary = generate(args.out, args.rows, seed=args.seed, parts=args.parts, dirty=args.dirty,
                       progress=not args.quiet)
    print(f"wrote {summary['rows']:,} rows in {summary['parts']} part(s) to {args.out} "
          f"in {summary['seconds']:.1f}s ({summary['rows_per_second']:,.0f} rows/s)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from analytics.lake.prepare import prepare
    from analytics.lake.table import latest_version

    out_dir(args.lake, "--lake")
    if latest_version(Path(args.lake)) is not None:
        open_lake(args.lake)  # a damaged state: stop before adding to a lake of unknown state

    summary = prepare(args.raw, args.lake, progress=not args.quiet, memory_limit=args.memory_limit,
                      engine=engine_from_args(args))
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


def cmd_remediation(args: argparse.Namespace) -> int:
    from analytics.checks.remediation import format_report, remediation_report

    open_lake(args.lake)
    try:
        report = remediation_report(args.lake, samples=args.samples)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return report_and_exit(args, report, format_report(report), report["ok"])


def cmd_vacuum(args: argparse.Namespace) -> int:
    from analytics.core.files import format_bytes
    from analytics.lake.table import latest_version, parse_retention, vacuum
    from analytics.views.adaptive_catalog import covered_lake_versions

    open_lake(args.lake)
    try:
        retain = parse_retention(args.retain)
    except ValueError as exc:
        raise CliError(f"--retain: {exc}") from None
    lake = Path(args.lake)
    done = vacuum(lake, retain, covered_lake_versions(lake), dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"lake {args.lake} version {latest_version(lake)}: {verb} {len(done['removed_files'])} file(s) "
          f"({format_bytes(done['bytes'])}) of {len(done['removed_versions'])} version(s) older than {args.retain}; "
          f"kept versions {', '.join(map(str, done['kept_versions']))}")
    if args.dry_run:
        for rel in done["removed_files"]:
            print(f"  {rel}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from analytics.batch.telemetry import format_stats, log_path, read_events, stats

    lake = Path(args.lake)
    if not lake.is_dir():
        raise CliError(f"lake directory {args.lake!r} does not exist")
    from analytics.lake.damage import load_damage

    summary = stats(read_events(lake))
    summary["log"] = str(log_path(lake))
    summary["damaged"] = load_damage(lake)  # found by queries or `analytics verify`, not yet repaired
    print(format_stats(summary))
    for rel, why in sorted(summary["damaged"].items()):
        print(f"unhealthy: {rel} is damaged ({why}): `analytics build` repairs views, `analytics prepare` lake files")
    if args.json:
        write_json(args.json, summary, "stats")
    return 0


def register(add: AddCommand) -> None:
    p = add("generate", cmd_generate, "write realistic synthetic raw CSV parts")
    p.add_argument("--out", required=True, help="directory to write events_part_NNNNN.csv into")
    p.add_argument("--rows", required=True, type=argtypes.rows, help="total data rows, e.g. 15000000 or 15M")
    p.add_argument("--seed", type=argtypes.int_in(0, 2**63 - 1), default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--parts", type=argtypes.positive_int, default=None, help="number of CSV parts (default: one per 5M rows)")
    p.add_argument("--dirty", type=argtypes.fraction, default=0.0,
                   help="fraction of rows made untrustworthy, to exercise remediation, from 0 to 1 (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add("prepare", cmd_prepare, "remediate raw CSVs into the lake's Delta table (+ quarantine), one commit per run")
    p.add_argument("--raw", required=True, help="directory of raw *.csv parts")
    p.add_argument("--lake", required=True, help="lake directory (created if missing)")
    p.add_argument("--memory-limit", type=argtypes.memory_size, default=DEFAULT_MEMORY_LIMIT,
                   help=f"DuckDB memory limit while preparing (default {DEFAULT_MEMORY_LIMIT})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_args(p, "remediation runs")

    p = add("remediation", cmd_remediation, "what prepare quarantined and kept, per reason, type, file and day; exit 1 if the counts do not add up")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the full report (checks, samples) as JSON to FILE")
    p.add_argument("--samples", type=argtypes.int_in(0, 10_000), default=5,
                   help="offending rows kept per quarantine reason (default 5)")

    p = add("vacuum", cmd_vacuum, "remove lake files no version within the retention (or a view, or a running "
            "query) still reads; time travel to older versions then fails")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--retain", default="7d", metavar="DURATION",
                   help="keep every version committed within this long: 7d, 12h, 30m or 0 (default 7d)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")

    p = add("stats", cmd_stats, "query telemetry of a lake: view hit rate, cache hit rate, p50/p95/p99 latency per route")
    p.add_argument("--lake", required=True, help="prepared lake directory")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the statistics as JSON to FILE")
