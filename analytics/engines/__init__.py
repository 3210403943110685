"""Execution engines: where `prepare`, `build` and lake-routed queries run.

Everything that decides or commits is shared and engine-free: the query model (`query.py`), the
catalog (`catalog.py`), the remediation rules (`lake.REMEDIATION_RULES`, engine-neutral SQL over
the raw text), segment ids, staging/promote, the manifest and sweeping (`lake.prepare`), the view
checks, registry and reconciliation (`views.build_view`), the router and the serving Workbench.
An engine only *executes* four things, always producing the same files:

- `ingest`: remediate raw CSV parts into staged Parquet (one file per segment and type, one
  quarantine file per segment) and return each segment's manifest entry;
- `aggregate_view`: write one view version (one Parquet file) from the lake, or merge new
  segments into the previous version;
- `lake_totals`: the per type and day totals the view checks reconcile against;
- `query`: answer a `Query` over the lake's committed files.

`duckdb` (one machine, the default) and `spark` (PySpark, `local[*]` or a cluster) implement it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from ..catalog import ViewDef
    from ..lake import Lake
    from ..query import Query

ENGINES: tuple[str, ...] = ("duckdb", "spark")
DEFAULT_ENGINE = "duckdb"


class Engine(Protocol):
    name: str
    # exceptions of this engine that mean "this step failed" (reported per view, not a crash)
    errors: tuple[type[BaseException], ...]

    def ingest(self, parts: Sequence[tuple[Path, str]], stage: Path, *, row_group_size: int,
               progress: bool) -> list[dict[str, Any]]:
        """Remediate each `(csv_path, segment_id)` into files under `stage` (paths as in the lake);
        returns one manifest entry per part, in order, without its `source`."""

    def aggregate_view(self, view: "ViewDef", lake: "Lake", out: Path, *, base: Path | None = None,
                       segments: set[str] | None = None) -> None:
        """Write `view` as one Parquet file `out`, sorted by `view.sort_columns`: aggregated from the
        whole lake, or, with `base`, the previous version merged with the aggregate of `segments`."""

    def lake_totals(self, lake: "Lake") -> "pa.Table":
        """`views.lake_totals_sql` over the committed lake, as Arrow."""

    def query(self, lake: "Lake", query: "Query") -> "pa.Table":
        """The answer to `query` over the lake's committed files, columns named as the contract's header."""

    def close(self) -> None:
        ...


def get_engine(name: str = DEFAULT_ENGINE, *, memory_limit: str = "4GB", master: str | None = None,
               conf: Mapping[str, str] | None = None) -> Engine:
    """An engine by name; `memory_limit` is DuckDB's, `master` and `conf` are Spark's."""
    if name == "duckdb":
        from .duckdb_engine import DuckDBEngine

        return DuckDBEngine(memory_limit=memory_limit)
    if name == "spark":
        from .spark_engine import SparkEngine

        return SparkEngine(master=master, conf=conf)
    raise ValueError(f"unknown engine {name!r}; allowed: {', '.join(ENGINES)}")


def run_on_engine(wb: Any, engine: Engine, queries: Sequence[Any], out_dir: str | Path) -> dict[str, Any]:
    """`analytics run --engine spark`: each query is planned by `wb` (the Workbench's router and
    views, on DuckDB); a view-routed one is answered there, a lake-routed one by `engine` over the
    lake's committed files. Sequential (`runner.run_queries`): the contract's files and run.json,
    plus `engine`, `master` and `lake_queries`."""
    from ..router import LAKE
    from ..runner import run_queries

    extra: dict[str, Any] = {"engine": engine.name, "master": getattr(engine, "master", None), "lake_queries": 0}

    def answer(query: Any) -> tuple[Any, str]:
        plan = wb.plan(query)
        if plan.route == LAKE:
            extra["lake_queries"] += 1
            return engine.query(wb.lake, query), LAKE
        table, plan = wb.execute(query)
        return table, plan.route

    return run_queries(answer, queries, out_dir, extra=extra)
