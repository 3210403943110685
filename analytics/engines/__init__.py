"""Execution engines: where `prepare`, `build` and lake-routed queries run.

Everything that decides or commits is shared and engine-free: the query model (`query.py`), the
catalog (`catalog.py`), the remediation rules (`lake.REMEDIATION_RULES`, engine-neutral SQL over
the raw text), segment ids, staging/promote, the manifest and sweeping (`lake.prepare`), the view
checks, registry and reconciliation (`views.build_view`), the router and the serving Workbench.
An engine only *executes* four things, always producing the same files:

- `ingest`: remediate raw CSV parts into staged Parquet (one file per segment and type, one
  quarantine file per segment) and return each segment's manifest entry;
- `aggregate_view`: write one view version (one Parquet file) from the lake, or a delta from
  only some segments (`views.delta`);
- `lake_totals`: the per type and day totals the view checks reconcile against;
- `query`: answer a `Query` over the lake's committed files.

Engines sit above the lake and the views, whose definitions they execute, and below serving:
they never import the router, the workbench or the batch runner.

`duckdb` (one machine, the default) and `spark` (PySpark, `local[*]` or a cluster) implement it.
"""
from __future__ import annotations

from typing import Mapping, Protocol

import pyarrow as pa

from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.lake.prepare import Ingester
from analytics.lake.state import Lake
from analytics.query.model import Query
from analytics.views.build import Aggregator

ENGINES: tuple[str, ...] = ("duckdb", "spark")
DEFAULT_ENGINE = "duckdb"


class Engine(Ingester, Aggregator, Protocol):
    """An engine ingests raw parts (`lake.prepare.Ingester`), aggregates views
    (`views.build.Aggregator`) and answers lake queries."""

    name: str

    def query(self, lake: Lake, query: Query) -> pa.Table:
        """The answer to `query` over the lake's committed files, columns named as the contract's header."""

    def close(self) -> None:
        ...


def get_engine(name: str = DEFAULT_ENGINE, *, memory_limit: str = DEFAULT_MEMORY_LIMIT, master: str | None = None,
               conf: Mapping[str, str] | None = None) -> Engine:
    """An engine by name; `memory_limit` is DuckDB's, `master` and `conf` are Spark's."""
    if name == "duckdb":
        from analytics.engines.duckdb_engine import DuckDBEngine

        return DuckDBEngine(memory_limit=memory_limit)
    if name == "spark":
        from analytics.engines.spark_engine import SparkEngine

        return SparkEngine(master=master, conf=conf)
    raise ValueError(f"unknown engine {name!r}; allowed: {', '.join(ENGINES)}")
