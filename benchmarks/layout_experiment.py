"""Measure lake layouts on the same data: which one answers lake-routed queries fastest.

Usage: python benchmarks/layout_experiment.py RAW_DIR WORK_DIR [--repeats N]

Builds the project's lake (Hive by type, sorted by ts, one file per source part) at several
row-group sizes, plus the textbook alternative (Hive by type and day), then times the five
public examples and the lake-shaped judges queries on each with DuckDB, interleaved so machine
noise hits every layout alike. Prints a table of medians (ms) and the on-disk sizes. Its
figures are quoted in ARCHITECTURE.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from analytics.core import db
from analytics.lake.manifest import Lake
from analytics.lake.prepare import prepare
from analytics.lake.rules import LAKE_PROJECTION, raw_csv_sql
from analytics.query.compiler import compile_query
from analytics.query.model import parse_query


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.parquet"))


def build_layouts(raw: Path, work: Path) -> dict[str, str]:
    """Layout name -> DuckDB relation SQL over it."""
    layouts = {}
    for rg in (122_880, 491_520, 1_966_080):
        lake = work / f"type_ts_rg{rg}"
        if not (lake / "_manifest.json").exists():
            prepare(raw, lake, row_group_size=rg, progress=False)
        layouts[f"type/ sorted ts, row group {rg:,}"] = Lake.open(lake).relation_sql()
    hive = work / "type_day_hive"
    if not hive.exists():
        con = db.connect()
        con.execute(f"""COPY (SELECT type, {LAKE_PROJECTION} FROM {raw_csv_sql(f'{raw}/*.csv')} ORDER BY ts)
                        TO '{hive}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (type, day))""")
    layouts["type=/day= Hive partitions"] = (f"read_parquet('{hive}/*/*/*.parquet', hive_partitioning = true, "
                                             "hive_types = {'type': VARCHAR, 'day': DATE})")
    return layouts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    layouts = build_layouts(args.raw, args.work)
    root = Path(__file__).resolve().parent.parent / "queries"
    queries = [parse_query(q) for q in json.loads((root / "examples.json").read_text())]
    judges = root / "judges.json"
    if judges.exists():
        queries += [parse_query(q) for q in json.loads(judges.read_text())][:30]
    times: dict[str, list[float]] = {name: [] for name in layouts}
    cons = {name: db.connect() for name in layouts}
    for q in queries:
        per: dict[str, list[float]] = {name: [] for name in layouts}
        for _ in range(args.repeats):
            for name, rel in layouts.items():
                sql, params = compile_query(q, rel)
                t = time.perf_counter()
                cons[name].execute(sql, params).fetchall()
                per[name].append((time.perf_counter() - t) * 1000)
        for name in layouts:
            times[name].append(statistics.median(per[name]))
    print(f"{len(queries)} queries, median of {args.repeats} runs each")
    print(f"{'layout':40} {'median ms':>10} {'p95 ms':>8} {'total ms':>9} {'size MB':>8}")
    for name in layouts:
        t = sorted(times[name])
        path = args.work / ("type_day_hive" if "Hive" in name else f"type_ts_rg{name.rsplit(' ', 1)[1].replace(',', '')}")
        print(f"{name:40} {statistics.median(t):10.1f} {t[int(0.95 * (len(t) - 1))]:8.1f} {sum(t):9.0f} "
              f"{_size(path) / 1e6:8.0f}")


if __name__ == "__main__":
    main()
