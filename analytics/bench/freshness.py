"""Freshness and refresh cost of `analytics ingest`, and the query cost of pending deltas.

Owns `measure_freshness`: on a private copy of a built lake (hard links: every lake and view file
is written once under a new name, so the original is never written), a watcher ingests one
fixed part renamed into a landing directory holding the lake's own parts, while a Workbench
polls a view-shaped query; it reports the prepare and view-refresh seconds of that part and the
freshness: seconds from the rename to the first answer served by a view that includes the part.
Then it adds small parts until views hold 5 and 10 pending deltas and reports the view-routed
median query time at 0, 5 and 10 deltas, and the seconds of compacting them.
Run as `analytics bench freshness measure --lake L --raw R --part P --work DIR [--json OUT]
[--into BENCHMARK_JSON]`;
`... chart JSON... --out chart.html` draws refresh time against lake size (`refresh_chart`).
Must not write into `--lake` or `--raw`, nor change the benchmark of `bench/run.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from analytics.bench.summary import attach
from analytics.core.files import write_atomic
from analytics.lake.generator import generate
from analytics.lake.prepare import prepare
from analytics.lake.state import Lake
from analytics.query.model import parse_query
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench
from analytics.views.build import build, compact_due
from analytics.views.ingest import ingest
from analytics.views.registry import load_registry

COUNT_BY_TYPE = {"select": ["type", {"COUNT": "*"}], "from": "events", "group_by": ["type"]}
# view-routed shapes of the judges-style workload: filters on type/day/country, group-bys on time and entities
WORKLOAD = [
    {"select": ["day", {"SUM": "bid_price"}], "from": "events", "group_by": ["day"],
     "where": [{"col": "type", "op": "eq", "val": "impression"}]},
    {"select": ["country", {"COUNT": "*"}, {"AVG": "total_price"}], "from": "events", "group_by": ["country"],
     "where": [{"col": "type", "op": "eq", "val": "purchase"}]},
    {"select": ["advertiser_id", {"COUNT": "*"}], "from": "events", "group_by": ["advertiser_id"],
     "where": [{"col": "type", "op": "eq", "val": "click"},
               {"col": "day", "op": "between", "val": ["2024-03-01", "2024-03-31"]}],
     "order_by": [{"col": "COUNT(*)", "dir": "desc"}], "limit": 10},
    {"select": ["hour", {"COUNT": "*"}, {"MAX": "bid_price"}], "from": "events", "group_by": ["hour"],
     "where": [{"col": "day", "op": "eq", "val": "2024-06-01"}]},
    {"select": ["publisher_id", {"SUM": "bid_price"}], "from": "events", "group_by": ["publisher_id"],
     "where": [{"col": "country", "op": "eq", "val": "JP"}, {"col": "day", "op": "eq", "val": "2024-10-10"}]},
    {"select": ["type", {"COUNT": "*"}, {"MIN": "total_price"}], "from": "events", "group_by": ["type"]},
    {"select": ["week", {"COUNT": "*"}], "from": "events", "group_by": ["week"],
     "where": [{"col": "type", "op": "in", "val": ["click", "purchase"]}]},
    {"select": ["minute", {"COUNT": "*"}], "from": "events", "group_by": ["minute"],
     "where": [{"col": "type", "op": "eq", "val": "impression"}, {"col": "hour", "op": "eq", "val": "2024-12-31 23:00"}]},
]


def link_copy(src: Path, dst: Path) -> None:
    """`dst` as a copy of `src` whose data files are hard links and whose state files (JSON, the
    telemetry's JSON lines, locks) are real copies: everything else the lake rewrites is replaced by
    a rename, never written in place."""
    for root, _, files in os.walk(src):
        out = dst / Path(root).relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.startswith(".") or name.endswith((".json", ".jsonl")):
                if not name.endswith(".lock"):
                    shutil.copy2(Path(root) / name, out / name)
            else:
                os.link(Path(root) / name, out / name)


def _count(wb: Workbench) -> tuple[int, str]:
    table, plan = wb.execute(parse_query(COUNT_BY_TYPE))
    return sum(table.column(1).to_pylist()), plan.route


def view_median_ms(wb: Workbench, repeats: int = 7) -> dict[str, Any]:
    """The median over the workload's view-routed queries of each one's median time (warm)."""
    times = []
    for raw in WORKLOAD:
        q = parse_query(raw)
        _, plan = wb.execute(q)
        if plan.route == LAKE:
            continue
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            wb.execute(q)
            runs.append((time.perf_counter() - t) * 1000)
        times.append(statistics.median(runs))
    return {"median_ms": round(statistics.median(times), 3) if times else None, "view_routed": len(times),
            "queries": len(WORKLOAD)}


def _pending(lake: Path) -> int:
    return max(len(e.deltas) for e in load_registry(lake).values())


def measure_freshness(lake_src: str | os.PathLike, raw_src: str | os.PathLike, part: str | os.PathLike,
                      work: str | os.PathLike, *, small_rows: int = 20_000, deltas: bool = True) -> dict[str, Any]:
    """The figures of one lake size (see the module's docstring); without `deltas`, only the
    ingest of `part` (no small parts, no compaction)."""
    lake_src, raw_src, part, work = Path(lake_src), Path(raw_src), Path(part), Path(work)
    lake, landing = work / "lake", work / "landing"
    shutil.rmtree(work, ignore_errors=True)
    link_copy(lake_src, lake)
    landing.mkdir(parents=True)
    for p in raw_src.glob("*.csv"):
        os.link(p, landing / p.name)
    out: dict[str, Any] = {"lake_rows": Lake.open(lake).state["totals"]["rows_lake"]}
    started = time.perf_counter()
    ingest(landing, lake, settle=0)  # adopts the lake's own parts: nothing to prepare or refresh
    out["adopt_seconds"] = round(time.perf_counter() - started, 3)
    if not all(e.price_totals is not None for e in load_registry(lake).values()):
        # views built before deltas existed learn their price totals (a read of each view) on their
        # first delta: a one-time cost, paid here on a small part so it is not counted below
        generate(work / "warmup", 1_000, seed=98, parts=1, progress=False)
        started = time.perf_counter()
        os.link(work / "warmup" / "events_part_00000.csv", landing / "zz_warmup.csv")
        ingest(landing, lake, settle=0)
        out["first_delta_seconds"] = round(time.perf_counter() - started, 3)
    wb = Workbench(lake)
    wb.warm()
    before, _ = _count(wb)
    out["deltas_0"] = view_median_ms(wb)

    part_rows = sum(1 for _ in part.open("rb")) - 1
    steps: list[dict[str, Any]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=ingest, args=(landing, lake), daemon=True, kwargs={
        "watch": True, "interval": 0.05, "settle": 0, "stop": stop, "on_step": steps.append})
    watcher.start()
    tmp = landing / f".{part.name}.tmp"
    shutil.copy(part, tmp)
    t0 = time.perf_counter()
    os.rename(tmp, landing / "zz_fresh_part.csv")
    while True:
        count, route = _count(wb)
        if route != LAKE and count == before + part_rows:
            break
        time.sleep(0.01)
    out["freshness_seconds"] = round(time.perf_counter() - t0, 3)
    while not steps:
        time.sleep(0.05)
    stop.set()
    watcher.join()
    out["part_rows"] = part_rows
    out["prepare_seconds"] = steps[0]["prepare_seconds"]
    out["refresh_seconds"] = steps[0]["refresh_seconds"]
    out["refresh_modes"] = sorted(set(steps[0]["views"].values()))
    if not deltas:
        wb.close()
        return out

    small = work / "small"
    generate(small, small_rows * 9, seed=99, parts=9, progress=False)
    taken = lake / "_ingest" / "parts"
    for i, p in enumerate(sorted(small.glob("*.csv"))):
        os.link(p, taken / f"zz_small_{i}.csv")
        prepare(taken, lake, progress=False)
        build(lake, progress=False, compact_deltas=False)
        if _pending(lake) in (5, 10):
            out[f"deltas_{_pending(lake)}"] = view_median_ms(wb)
    started = time.perf_counter()
    out["compacted"] = len(compact_due(lake, at=1))
    out["compact_seconds"] = round(time.perf_counter() - started, 3)
    out["deltas_0_after_compaction"] = view_median_ms(wb)
    wb.close()
    return out


def refresh_chart(results: list[dict[str, Any]]) -> Any:
    """A plotly chart of prepare and view-refresh seconds (and freshness) against lake size, one
    point per result of `measure_freshness` (the same part size in each)."""
    import plotly.graph_objects as go

    results = sorted(results, key=lambda r: r["lake_rows"])
    sizes = [f"{r['lake_rows'] / 1e6:g}M" for r in results]
    fig = go.Figure()
    for key, label in (("prepare_seconds", "prepare"), ("refresh_seconds", "view refresh (all views)"),
                       ("freshness_seconds", "freshness (rename -> first view answer)")):
        fig.add_bar(x=sizes, y=[r[key] for r in results], name=label)
    rows = {r["part_rows"] for r in results}
    fig.update_layout(title=f"ingest of a {', '.join(f'{n:,}' for n in sorted(rows))}-row part against lake size",
                      xaxis_title="lake rows", yaxis_title="seconds", barmode="group")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analytics bench freshness", description=(
        "freshness and refresh cost of ingesting one part into a copy of a built lake; query cost of pending deltas"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("measure", help="measure one lake size")
    p.add_argument("--lake", required=True, help="a built lake (read only: a hard-linked copy is used)")
    p.add_argument("--raw", required=True, help="the lake's raw parts (read only: hard-linked)")
    p.add_argument("--part", required=True, help="the CSV part to ingest (e.g. 1M rows, another seed)")
    p.add_argument("--work", required=True, help="scratch directory (emptied first)")
    p.add_argument("--json", default=None, help="write the figures here too")
    p.add_argument("--into", default=None, help="add the figures to this benchmark JSON (key `freshness`, targets re-evaluated)")
    p.add_argument("--no-deltas", action="store_true",
                   help="only the ingest of --part (no pending-delta query times, no compaction)")
    p = sub.add_parser("chart", help="chart refresh time against lake size from measure's JSON files")
    p.add_argument("jsons", nargs="+", help="JSON files written by measure --json (one part size)")
    p.add_argument("--out", required=True, help="the chart, as HTML")
    args = parser.parse_args(argv)
    if args.command == "chart":
        refresh_chart([json.loads(Path(f).read_text()) for f in args.jsons]).write_html(args.out)
        print(f"chart in {args.out}")
        return 0
    Lake.open(args.lake)  # a missing or unprepared lake is named as given, before its copy is made
    result = measure_freshness(args.lake, args.raw, args.part, args.work, deltas=not args.no_deltas)
    print(json.dumps(result, indent=1))
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=1))
    if args.into:
        attach(args.into, "freshness", result)
    return 0

