"""`analytics bench TOOL ...`: what `make benchmark`, `make sweep` and `make reports` run besides the
pipeline, under the one command line.

Owns the list of tools and their one-line help. Each tool is the `main(argv)` of the module that
owns it, imported only when called, with the rest of the command line passed on (`analytics bench
TOOL --help` is the tool's own help). Must not hold logic a test cannot reach through the package.
"""
from __future__ import annotations

import argparse
import importlib

from analytics.cli.common import AddCommand

HELPERS = "analytics.bench.helpers"
# tool -> (module owning its `main`, what it does)
TOOLS: dict[str, tuple[str, str]] = {
    "phase": (HELPERS, "time a command as a benchmark phase (wall time, peak RSS) into DIR/NAME.json"),
    "summary": (HELPERS, "print a benchmark JSON's summary table; exit 1 on any mismatch"),
    "sweep": (HELPERS, "combine benchmark JSONs of several sizes into one sweep JSON"),
    "docs": (HELPERS, "record a run under docs/benchmarks/; regenerate docs/benchmark.md and README's table"),
    "freshness": ("analytics.bench.freshness", "live ingest: a part into a copy of a lake, rename to first view answer"),
    "adaptive": ("analytics.bench.adaptive", "adaptive views: workload families before and after build --adaptive"),
    "layout": ("analytics.bench.layout", "the lake layout experiment ARCHITECTURE.md quotes (row groups, day partitions)"),
    "family": ("analytics.bench.workload_family", "write a query file of an adaptive-views workload family"),
    "reports": ("analytics.reports.notebooks", "run the notebooks into reports/*.html (what make reports runs)"),
}


def _run(module: str, argv: list[str]) -> int:
    return importlib.import_module(module).main(argv) or 0


def cmd_bench(args: argparse.Namespace) -> int:
    module = TOOLS[args.tool][0]
    return _run(module, ([args.tool] if module == HELPERS else []) + args.args)


def register(add: AddCommand) -> None:
    p = add("bench", cmd_bench, "the benchmark's helpers and side measurements (what make benchmark runs): "
            + "; ".join(f"{name}: {what}" for name, (_, what) in TOOLS.items()))
    p.add_argument("tool", choices=TOOLS, help="the tool; `analytics bench TOOL --help` for its arguments")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the tool's own arguments")
