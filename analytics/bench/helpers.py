"""`analytics bench phase|summary|sweep|docs`: the Makefile's benchmark helpers.

Owns the command line of those helpers: time a command as a phase, print a benchmark JSON's
summary table (exit 1 on any mismatch), combine benchmark JSONs of several sizes, record a run
under docs/benchmarks/ and regenerate docs/benchmark.md and README's table from them. Must not run
the benchmark itself: `analytics benchmark` (cli/checks.py) does.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from analytics.bench import docs
from analytics.bench.phases import run_phase
from analytics.bench.result import BenchmarkSummary
from analytics.bench.summary import sweep_from_files
from analytics.bench.text import summary_table
from analytics.core.files import write_atomic


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analytics bench", description=(
        "benchmark helpers for the Makefile: time a phase, print a benchmark's summary, combine a sweep"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("phase", help="run a command as a timed phase (wall time, peak RSS) into DIR/NAME.json")
    p.add_argument("name", help="phase name, e.g. prepare")
    p.add_argument("--dir", required=True, help="directory of phase records")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    p = sub.add_parser("summary", help="print the summary table of a benchmark JSON; exit 1 on any mismatch")
    p.add_argument("json", help="the benchmark JSON (e.g. reports/benchmark.json)")
    p.add_argument("--report", default=None, help="report path to print at the end")
    p = sub.add_parser("sweep", help="combine benchmark JSONs of several sizes into one sweep JSON")
    p.add_argument("jsons", nargs="+", help="benchmark JSONs")
    p.add_argument("--out", required=True, help="the combined JSON to write")
    p = sub.add_parser("docs", help="record a run's JSON under docs/benchmarks/ and regenerate docs/benchmark.md "
                                    "and README's benchmark table from them")
    p.add_argument("--json", default=None, help="a run to record first (e.g. reports/benchmark.json)")
    p.add_argument("--history", default=str(docs.HISTORY_DIR), help="the recorded runs (default docs/benchmarks)")
    p.add_argument("--out", default=str(docs.DOC), help="the page to write (default docs/benchmark.md)")
    p.add_argument("--readme", default=str(docs.README), help="README whose benchmark table to rewrite")
    args = parser.parse_args(argv)
    if args.command == "docs":
        if args.json:
            print(f"recorded {docs.record(args.json, args.history)}")
        latest = docs.write_docs(args.history, args.out, args.readme)
        print(f"{args.out} and {args.readme}: the run of {latest.started_at} at {latest.rows:,} rows")
        return 0
    if args.command == "phase":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("phase: give the command after --")
        return run_phase(args.name, args.dir, cmd)
    if args.command == "summary":
        path = Path(args.json)
        if not path.is_file():
            print(f"benchmark: error: {path} does not exist (did the notebook run?)", file=sys.stderr)
            return 2
        result = BenchmarkSummary.read(path)
        print(summary_table(result))
        if args.report:
            print(f"report: {args.report}")
        print(f"figures: {path}")
        return 0 if result.all_match else 1
    combined = sweep_from_files(args.jsons)
    write_atomic(args.out, json.dumps(combined, indent=1))
    print(f"sweep over {', '.join(f'{n:,}' for n in combined['rows'])} rows in {args.out}")
    return 0 if all(combined["all_match"]) else 1

