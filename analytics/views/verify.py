"""The checks a view version passes before it is promoted, shared by full builds and deltas.

Owns `BuildError`, the lake's totals per type and day (`lake_totals_sql`, plain SQL every engine
runs), the reconciliation of a staged file's totals with such totals, the unique-key check and
the schema of a staged file. Must not write, promote or register anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from analytics.core import db
from analytics.core.sql import sql_string
from analytics.lake.state import Lake
from analytics.views.catalog import MEASURE_COLUMNS, SUM_TYPE, ViewDef
from analytics.views.day_ranges import Piece


class BuildError(RuntimeError):
    """A view failed its checks or could not be built; the previous version stays in force."""


def lake_totals_sql(relation: str) -> str:
    """Per type and day: rows, non-NULL counts and exact sums of the prices of `relation` (the lake);
    plain SQL that every engine runs."""
    items = ["type", "day", "count(*)::BIGINT AS cnt"]
    for m in MEASURE_COLUMNS:
        items += [f"count({m})::BIGINT AS nn_{m}", f"sum(CAST({m} AS {SUM_TYPE})) AS sum_{m}"]
    return f"SELECT {', '.join(items)} FROM {relation} GROUP BY type, day"


def lake_totals(con: duckdb.DuckDBPyConnection, lake: Lake) -> pa.Table:
    """Per type and day: rows, non-NULL counts and exact sums of the prices, from the lake itself."""
    return db.fetch_arrow(con, lake_totals_sql(lake.relation_sql()))


def reconcile(con: duckdb.DuckDBPyConnection, view: ViewDef, relation: str, totals_relation: str) -> list[dict[str, Any]]:
    """Groups (type[, day]) where the view's totals differ from the lake's; empty when they reconcile."""
    keys = ["type", "day"] if "day" in view.group_columns else ["type"]
    measures = ["cnt"] + [f"{p}_{m}" for m in MEASURE_COLUMNS for p in ("nn", "sum")]
    agg = ", ".join(f"sum({c}) AS {c}" for c in measures)
    type_filter = f"WHERE type IN ({', '.join(repr(t) for t in view.types)})"
    diff = " OR ".join(f"v.{c} IS DISTINCT FROM l.{c}" for c in measures)
    sql = f"""
        WITH v AS (SELECT {', '.join(keys)}, {agg} FROM {relation} GROUP BY ALL),
             l AS (SELECT {', '.join(keys)}, {agg} FROM {totals_relation} {type_filter} GROUP BY ALL)
        SELECT {', '.join(f'coalesce(v.{k}, l.{k}) AS {k}' for k in keys)},
               {', '.join(f'v.{c} AS view_{c}, l.{c} AS lake_{c}' for c in measures)}
        FROM v FULL OUTER JOIN l USING ({', '.join(keys)})
        WHERE {diff}
        ORDER BY ALL LIMIT 20
    """
    table = db.fetch_arrow(con, sql)
    return table.to_pylist()


def duplicate_keys(con: duckdb.DuckDBPyConnection, view: ViewDef, relation: str,
                   pieces: Iterable[Piece | None] = (None,)) -> int:
    """Keys held by more than one row, counted piece by piece (`pieces.cut`: a key lies in one
    piece, so each group-by holds one piece's keys); by default over the whole relation."""
    keys = ", ".join(view.group_columns)
    total = 0
    for piece in pieces:
        where = f"WHERE {piece.where()}" if piece else ""
        total += con.execute(f"SELECT count(*) FROM (SELECT {keys} FROM {relation} {where} GROUP BY ALL "
                             f"HAVING count(*) > 1)").fetchone()[0]
    return total


def file_schema(con: duckdb.DuckDBPyConnection, path: Path) -> list[list[str]]:
    rows = con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_string(path)})").fetchall()
    return [[r[0], r[1]] for r in rows]
