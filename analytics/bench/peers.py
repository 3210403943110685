"""The engines the benchmark compares, except Polars (`polars_engine.py`): names, labels, and how each answers.

Owns `baseline` (the challenge's DuckDB view over the raw CSVs), `duckdb_lake` (DuckDB over the
lake's committed Parquet, no views: what a capable user would do) and `product` (a warmed
`Workbench` and its safe batch runner), each answering a `Query` as an Arrow table with the
contract's column names, and `Unsupported`, which an engine raises rather than answer a query
it cannot express exactly. Must not time, check or record anything: `run.py` does.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import pyarrow as pa

from analytics.checks.baseline import baseline_query, connect_baseline
from analytics.core import db
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.lake.state import Lake
from analytics.query.compiler import compile_query
from analytics.query.model import Query

ENGINES: tuple[str, ...] = ("baseline", "duckdb_lake", "polars_lake", "product")
PEERS: tuple[str, ...] = ("baseline", "duckdb_lake", "polars_lake")
ENGINE_LABELS: dict[str, str] = {
    "baseline": "baseline (DuckDB over raw CSVs)",
    "duckdb_lake": "DuckDB over the lake (no views)",
    "polars_lake": "Polars over the lake",
    "product": "product (router + views + runner)",
}


class Unsupported(Exception):
    """The engine cannot express this query exactly; recorded instead of a possibly wrong answer."""


class BaselineEngine:
    name = "baseline"

    def __init__(self, raw_dir: str | os.PathLike) -> None:
        self.con = connect_baseline(raw_dir)
        self.con.execute("SET enable_progress_bar = false")

    def run(self, query: Query) -> pa.Table:
        return baseline_query(self.con, query)

    def close(self) -> None:
        self.con.close()


class DuckDBLakeEngine:
    """DuckDB over the lake's committed Parquet files (Hive `type`), no views: the capable user's way."""

    name = "duckdb_lake"

    def __init__(self, lake_dir: str | os.PathLike, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> None:
        self.con = db.connect(memory_limit=memory_limit)
        self.con.execute("SET enable_progress_bar = false")
        Lake.open(lake_dir).register(self.con, "events")

    def run(self, query: Query) -> pa.Table:
        sql, params = compile_query(query, "events")
        return db.fetch_arrow(self.con, sql, params)

    def close(self) -> None:
        self.con.close()


class ProductEngine:
    """The product: a warmed `Workbench` (views loaded) and its safe batch runner, one query per run.

    The result cache and telemetry are off (every answer is computed; the lake is not written);
    `ms` is the runner's own compute time of the query (parse, plan, execution, fetch).
    """

    name = "product"

    def __init__(self, lake_dir: str | os.PathLike, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> None:
        from analytics.batch.runner import SafeBatchRunner
        from analytics.serving.workbench import Workbench

        t0 = time.perf_counter()
        self.wb = Workbench(lake_dir, memory_limit=memory_limit)
        self.health = self.wb.warm()
        self.startup_ms = (time.perf_counter() - t0) * 1000
        self.runner = SafeBatchRunner(self.wb, cache=False, persist_cache=False, telemetry=False)

    def run_timed(self, query: Query) -> tuple[pa.Table, float, str, str | None]:
        """The answer, the runner's ms, the route and why it fell back to the lake (if it did)."""
        res = self.runner.run([query], keep_tables=True, parallel=False, batching=False)
        entry = res.report["queries"][0]
        if "error" in entry:
            raise RuntimeError(entry["error"])
        return res.tables[0], float(entry["ms"]), entry["route"], entry.get("fallback_reason")

    def run_batch(self, queries: Sequence[Query]) -> tuple[list[pa.Table | None], dict[str, Any], float]:
        """The whole workload as one run of the runner (batches, threads, shared lake scans), cache off."""
        t0 = time.perf_counter()
        res = self.runner.run(list(queries), keep_tables=True)
        return res.tables, res.report, (time.perf_counter() - t0) * 1000

    def versions(self, query: Query) -> dict[str, int | None]:
        """The lake version the answer reflects and, for a view route, the view's version (run.json's provenance)."""
        plan = self.wb.plan(query)
        return {"lake_version": plan.lake_version, "view_version": plan.view_version}

    def plan_ms(self, query: Query) -> float:
        t0 = time.perf_counter()
        self.wb.plan(query)
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.runner.close()
        self.wb.close()
