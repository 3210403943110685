"""The re-aggregation rules: how each aggregate is derived from partial aggregates of groups.

Owns the one table of which partials an aggregate needs and how partials of many groups combine
(COUNT(*) = SUM(cnt), COUNT(x) = SUM(nn), SUM = SUM(sum), AVG = SUM(sum) / SUM(nn), MIN/MAX of
MIN/MAX), and the SQL spelling of the combination. The views' SQL (catalog), the views' Arrow fast
path and the batch's superset scans all read it, so the rule is written once. Must not name any
view, table or file.
"""
from __future__ import annotations

from typing import Sequence

from analytics.query.schema import NOT_NULL_IN_LAKE

# A partial of a group: `cnt` its rows, `nn` its non-NULL values of a column, then sum/min/max.
# How the partials of several groups combine into the partial of their union:
COMBINE: dict[str, str] = {"cnt": "sum", "nn": "sum", "sum": "sum", "min": "min", "max": "max"}
# The partial computed from raw rows (SQL aggregate of the column, or of `*` for cnt).
FROM_ROWS: dict[str, str] = {"cnt": "count", "nn": "count", "sum": "sum", "min": "min", "max": "max"}

# aggregate -> the partials it is derived from, in the order `combine_sql` takes them
RULES: dict[str, tuple[str, ...]] = {
    "COUNT": ("nn",),
    "SUM": ("sum",),
    "AVG": ("sum", "nn"),
    "MIN": ("min",),
    "MAX": ("max",),
}


def partials(func: str, col: str) -> tuple[str, ...]:
    """The partial kinds `func(col)` derives from: COUNT(*) and COUNT of a column the lake never
    holds NULL in both count rows."""
    if func == "COUNT" and (col == "*" or col in NOT_NULL_IN_LAKE):
        return ("cnt",)
    return RULES[func]


def combine_sql(func: str, cols: Sequence[str], *, sum_as_double: bool = True) -> str:
    """SQL deriving `func` from partial columns `cols` (named in `partials` order) over many groups,
    typed as the unbatched aggregate: COUNT is BIGINT and 0 over no rows, AVG a DOUBLE (never an
    average of averages), SUM a DOUBLE unless `sum_as_double` is False (partial sums already of
    the column's own type)."""
    if func == "COUNT":
        return f"COALESCE(sum({cols[0]}), 0)::BIGINT"
    if func == "SUM":
        return f"CAST(sum({cols[0]}) AS DOUBLE)" if sum_as_double else f"sum({cols[0]})"
    if func == "AVG":
        return f"CAST(sum({cols[0]}) AS DOUBLE) / NULLIF(sum({cols[1]}), 0)"
    return f"{COMBINE[RULES[func][0]]}({cols[0]})"


def merge_sql(kind: str, col: str) -> str:
    """SQL merging partial column `col` of kind `kind` over groups into one partial (counts stay BIGINT)."""
    expr = f"{COMBINE[kind]}({col})"
    return f"{expr}::BIGINT" if kind in ("cnt", "nn") else expr
