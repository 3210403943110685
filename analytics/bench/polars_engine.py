"""Polars over the lake: the query model compiled to a Polars LazyFrame, and the `polars_lake` engine.

Owns the translation of a `Query` into Polars expressions with DuckDB's meaning (SQL NULL
semantics, inclusive `between`, NULLS LAST, aggregates of no value are NULL, the coercion of
values as DuckDB compares them) and `PolarsLakeEngine`, which scans the lake's committed Parquet
files. A query it cannot express exactly raises `Unsupported`, never an approximate answer. A
benchmark-only extra: the product never imports it. Must not time, check or record anything.
"""
from __future__ import annotations

import datetime as dt
import math
import os
from typing import Any

import pyarrow as pa

from analytics.bench.peers import Unsupported
from analytics.lake.state import Lake
from analytics.query.model import Agg, Condition, Query


# Lake column types as Polars reads them (DuckDB writes TIMESTAMP as microseconds).
def _polars_types() -> dict[str, Any]:
    import polars as pl

    return {
        "ts": pl.Datetime("us"), "week": pl.Date, "day": pl.Date, "hour": pl.Datetime("us"),
        "minute": pl.String, "type": pl.String, "auction_id": pl.String, "advertiser_id": pl.Int32,
        "publisher_id": pl.Int32, "bid_price": pl.Float64, "user_id": pl.Int64, "total_price": pl.Float64,
        "country": pl.String,
    }


def _polars_operands(col: str, value: Any) -> tuple[Any, Any]:
    """(column expression, literal) comparable exactly as DuckDB compares the coerced value with the column."""
    import polars as pl

    dtype = _polars_types()[col]
    column = pl.col(col)
    if dtype == pl.Date:
        if isinstance(value, dt.datetime):  # e.g. week (DATE in the lake) against a TIMESTAMPTZ value
            if value.tzinfo is not None:
                raise Unsupported(f"time zone aware value for {col}")
            return column.cast(pl.Datetime("us")), pl.lit(value, dtype=pl.Datetime("us"))
        if isinstance(value, dt.date):
            return column, pl.lit(value, dtype=pl.Date)
    elif dtype == pl.Datetime("us"):
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None:
                raise Unsupported(f"time zone aware value for {col}")
            return column, pl.lit(value, dtype=pl.Datetime("us"))
        if isinstance(value, dt.date):
            return column, pl.lit(dt.datetime(value.year, value.month, value.day), dtype=pl.Datetime("us"))
    elif dtype in (pl.Int32, pl.Int64):
        if isinstance(value, int) and not isinstance(value, bool):
            return column.cast(pl.Int64), pl.lit(value, dtype=pl.Int64)
    elif dtype == pl.Float64:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return column, pl.lit(float(value), dtype=pl.Float64)
    elif dtype == pl.String:
        if isinstance(value, str):
            return column, pl.lit(value, dtype=pl.String)
    raise Unsupported(f"value {value!r} ({type(value).__name__}) for column {col} ({dtype})")


def polars_condition(cond: Condition) -> Any:
    """One WHERE condition as a Polars boolean expression (SQL NULL semantics: a NULL never passes)."""
    import polars as pl

    if cond.op == "in":
        parts = []
        for v in cond.values:
            left, right = _polars_operands(cond.col, v)
            parts.append(left == right)
        return pl.any_horizontal(parts) if len(parts) > 1 else parts[0]
    if cond.op == "between":
        left, lo = _polars_operands(cond.col, cond.values[0])
        _, hi = _polars_operands(cond.col, cond.values[1])
        return (left >= lo) & (left <= hi)  # inclusive, and empty when lo > hi, as in SQL
    left, right = _polars_operands(cond.col, cond.values[0])
    return {"eq": left == right, "neq": left != right, "lt": left < right, "lte": left <= right,
            "gt": left > right, "gte": left >= right}[cond.op]


def polars_aggregate(agg: Agg) -> Any:
    """An aggregate with DuckDB's meaning: NULLs ignored; SUM/AVG/MIN/MAX of no value is NULL; COUNT is BIGINT."""
    import polars as pl

    name = agg.name
    if agg.col == "*":
        return pl.len().cast(pl.Int64).alias(name)
    col = pl.col(agg.col)
    dtype = _polars_types()[agg.col]
    if agg.func == "COUNT":
        return col.count().cast(pl.Int64).alias(name)
    if agg.func == "SUM":
        total = col.cast(pl.Int64).sum() if dtype in (pl.Int32, pl.Int64) else col.sum()
        return pl.when(col.count() > 0).then(total).otherwise(None).alias(name)
    if agg.func == "AVG":
        return col.cast(pl.Float64).mean().alias(name)
    if agg.func == "MIN":
        return col.min().alias(name)
    if agg.func == "MAX":
        return col.max().alias(name)
    raise Unsupported(f"aggregate {agg.name}")


def polars_plan(source: Any, query: Query) -> Any:
    """The query as a Polars LazyFrame over `source` (a LazyFrame with the lake's columns and `type`)."""
    lf = source
    if query.where:
        pred = polars_condition(query.where[0])
        for cond in query.where[1:]:
            pred = pred & polars_condition(cond)
        lf = lf.filter(pred)
    names = query.output_names
    if query.group_by:
        aggs = [polars_aggregate(a) for a in query.aggregates]
        lf = lf.group_by(list(query.group_by)).agg(aggs).select(names)
    elif query.aggregates:
        lf = lf.select([polars_aggregate(a) for a in query.aggregates]).select(names)
    else:
        lf = lf.select(list(query.select))
    if query.order_by:
        lf = lf.sort([o.name for o in query.order_by], descending=[o.desc for o in query.order_by],
                     nulls_last=True, maintain_order=True)  # DuckDB: NULLS LAST in both directions
    if query.limit is not None:
        lf = lf.head(query.limit)
    return lf


class PolarsLakeEngine:
    """Polars lazily scanning the lake's committed Parquet files, `type` from the Hive path."""

    name = "polars_lake"

    def __init__(self, lake_dir: str | os.PathLike) -> None:
        import polars as pl

        self.files = [str(f) for f in Lake.open(lake_dir).event_files()]
        self.pl = pl

    def source(self) -> Any:
        pl = self.pl
        if not self.files:
            return pl.LazyFrame(schema=_polars_types())
        return pl.scan_parquet(self.files, hive_partitioning=True, hive_schema={"type": pl.String})

    def run(self, query: Query) -> pa.Table:
        return polars_plan(self.source(), query).collect().to_arrow()

    def close(self) -> None:
        pass
