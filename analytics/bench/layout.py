"""The lake layout experiment: which layout answers lake-routed queries fastest, on the same data.

Owns `measure_layouts`: the project's lake (Hive by type, sorted by ts, one file per source part) at
several row-group sizes, plus the textbook alternative (Hive by type and day), each answering the
public examples and the first 30 judges queries with DuckDB, interleaved so machine noise hits every
layout alike, and checked to give every layout the same answer. `analytics bench layout RAW WORK
[--repeats N]` prints medians, p95, totals and sizes; ARCHITECTURE.md quotes its figures at 15M
rows. Must not change the product's lake.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from analytics.batch.telemetry import percentile
from analytics.bench.workloads import ROOT
from analytics.core import db
from analytics.core.sql import sql_string
from analytics.lake.prepare import prepare
from analytics.lake.rules import LAKE_PROJECTION, raw_csv_sql
from analytics.lake.state import Lake
from analytics.query.compiler import compile_query
from analytics.query.model import Query, load_queries, parse_query
from analytics.query.results import compare_rows, to_rows

ROW_GROUPS = (122_880, 491_520, 1_966_080)
HIVE = "type=/day= Hive partitions"


def build_layouts(raw: Path, work: Path, row_groups: Sequence[int] = ROW_GROUPS) -> dict[str, tuple[str, Path]]:
    """Layout name -> (DuckDB relation over it, its directory); each built once under `work`."""
    layouts = {}
    for rg in row_groups:
        lake = work / f"type_ts_rg{rg}"
        if not (lake / "_manifest.json").exists():
            prepare(raw, lake, row_group_size=rg, progress=False)
        layouts[f"type/ sorted ts, row group {rg:,}"] = (Lake.open(lake).relation_sql(), lake)
    hive = work / "type_day_hive"
    if not hive.exists():
        con = db.connect()
        try:
            con.execute(f"COPY (SELECT type, {LAKE_PROJECTION} FROM {raw_csv_sql(f'{raw}/*.csv')} ORDER BY ts) "
                        f"TO {sql_string(hive)} (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (type, day))")
        finally:
            con.close()
    layouts[HIVE] = (f"read_parquet({sql_string(f'{hive}/*/*/*.parquet')}, hive_partitioning = true, "
                     "hive_types = {'type': VARCHAR, 'day': DATE})", hive)
    return layouts


def measure_layouts(raw: Path, work: Path, queries: Sequence[Query], repeats: int = 5,
                    row_groups: Sequence[int] = ROW_GROUPS) -> dict[str, dict[str, Any]]:
    """Per layout: the median of `repeats` runs of each query, then their median, p95 and total (ms),
    and its bytes on disk. Raises `ValueError` if two layouts answer a query differently."""
    work.mkdir(parents=True, exist_ok=True)
    layouts = build_layouts(raw, work, row_groups)
    cons = {name: db.connect() for name in layouts}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    try:
        for q in queries:
            per: dict[str, list[float]] = {name: [] for name in layouts}
            answers = {}
            for _ in range(repeats):
                for name, (relation, _) in layouts.items():
                    sql, params = compile_query(q, relation)
                    t = time.perf_counter()
                    table = db.fetch_arrow(cons[name], sql, params)
                    per[name].append((time.perf_counter() - t) * 1000)
                    answers[name] = to_rows(q, table)
            first = next(iter(answers.values()))
            for name, rows in answers.items():
                if (why := compare_rows(q, first, rows)) is not None:
                    raise ValueError(f"{name} answers differently: {why}")
            for name in layouts:
                times[name].append(statistics.median(per[name]))
    finally:
        for con in cons.values():
            con.close()
    return {name: {"median_ms": statistics.median(times[name]), "p95_ms": percentile(times[name], 95),
                   "total_ms": sum(times[name]),
                   "bytes": sum(f.stat().st_size for f in path.rglob("*.parquet"))}
            for name, (_, path) in layouts.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="analytics bench layout", description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path, help="raw CSV parts")
    ap.add_argument("work", type=Path, help="where the layouts are built (reused when present)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    raw = load_queries(str(ROOT / "queries" / "examples.json")) + load_queries(str(ROOT / "queries" / "judges.json"))[:30]
    queries = [parse_query(q) for q in raw]
    results = measure_layouts(args.raw, args.work, queries, args.repeats)
    print(f"{len(queries)} queries, median of {args.repeats} runs each; every layout gave every answer alike")
    print(f"{'layout':40} {'median ms':>10} {'p95 ms':>8} {'total ms':>9} {'size MB':>8}")
    for name, r in results.items():
        print(f"{name:40} {r['median_ms']:10.1f} {r['p95_ms']:8.1f} {r['total_ms']:9.0f} {r['bytes'] / 1e6:8.0f}")
    return 0
