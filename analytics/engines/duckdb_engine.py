"""The DuckDB engine: everything on one machine, in-process (the default).

Owns nothing but the binding of the engine interface to the package's own DuckDB steps: the
per-part ingest of `lake.prepare.ingest_parts`, the view aggregation of
`views.build.DuckDBAggregator`, and lake queries compiled by `query.compiler`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from analytics.core import db
from analytics.lake.prepare import ingest_parts
from analytics.lake.state import Lake
from analytics.query.compiler import compile_query
from analytics.query.model import Query
from analytics.views.build import DuckDBAggregator


class DuckDBEngine(DuckDBAggregator):
    name = "duckdb"

    def ingest(self, parts: Sequence[tuple[Path, str]], stage: Path, *, row_group_size: int,
               progress: bool) -> list[dict[str, Any]]:
        return ingest_parts(parts, stage, row_group_size=row_group_size, progress=progress,
                            memory_limit=self.memory_limit)

    def query(self, lake: Lake, query: Query) -> pa.Table:
        con = db.connect(memory_limit=self.memory_limit)
        try:
            sql, params = compile_query(query, lake.relation_sql())
            return db.fetch_arrow(con, sql, params)
        finally:
            con.close()

    def close(self) -> None:
        pass
