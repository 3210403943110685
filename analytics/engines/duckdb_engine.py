"""The DuckDB engine: everything on one machine, in-process (the default).

Owns only execution: a connection per step with the project's settings (UTC, memory limit), the
per-part ingest of `lake._ingest`, the view aggregate `COPY`, the lake totals and lake queries.
What the steps compute is shared with every engine (`lake`, `catalog`, `views`, `compiler`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import duckdb
import pyarrow as pa
from tqdm.auto import tqdm

from .. import db
from ..catalog import ViewDef
from ..compiler import compile_query
from ..lake import Lake, _ingest, _sql_str
from ..query import Query


class DuckDBEngine:
    name = "duckdb"
    errors: tuple[type[BaseException], ...] = (duckdb.Error,)

    def __init__(self, memory_limit: str = "4GB") -> None:
        self.memory_limit = memory_limit

    def ingest(self, parts: Sequence[tuple[Path, str]], stage: Path, *, row_group_size: int,
               progress: bool) -> list[dict[str, Any]]:
        con = db.connect(memory_limit=self.memory_limit)
        try:
            con.execute("SET temp_directory = ?", [str(stage / "spill")])
            con.execute("SET preserve_insertion_order = false")
            entries = []
            bar = tqdm(parts, desc="prepare", unit="part", disable=not progress)
            for src, seg_id in bar:
                bar.set_postfix_str(src.name)
                entries.append(_ingest(con, src, seg_id, stage, row_group_size))
            return entries
        finally:
            con.close()

    def aggregate_view(self, view: ViewDef, lake: Lake, out: Path, *, base: Path | None = None,
                       segments: set[str] | None = None) -> None:
        if base is not None:
            fresh = view.aggregate_sql(lake.relation_sql(segments=segments))
            source = f"(SELECT * FROM read_parquet({_sql_str(str(base))}) UNION ALL BY NAME {fresh})"
            select = view.reaggregate_sql(source)
        else:
            select = view.aggregate_sql(lake.relation_sql(segments=segments))
        con = db.connect(memory_limit=self.memory_limit)
        try:
            con.execute("SET preserve_insertion_order = true")
            con.execute(f"COPY ({select} ORDER BY {', '.join(view.sort_columns)}) TO {_sql_str(str(out))} "
                        "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)")
        finally:
            con.close()

    def lake_totals(self, lake: Lake) -> pa.Table:
        from .. import views

        con = db.connect(memory_limit=self.memory_limit)
        try:
            return views.lake_totals(con, lake)
        finally:
            con.close()

    def query(self, lake: Lake, query: Query) -> pa.Table:
        con = db.connect(memory_limit=self.memory_limit)
        try:
            sql, params = compile_query(query, lake.relation_sql())
            return db.fetch_arrow(con, sql, params)
        finally:
            con.close()

    def close(self) -> None:
        pass
