"""SQL compiler: a validated `Query` to one parameterized DuckDB statement over a relation.

Owns the mapping of the grammar to SQL text. Column names come only from the allow-list
(they reached a `Query` through `schema.COLUMNS`) and are quoted; every value becomes a `?`
parameter, so no value can ever become SQL. Must not decide *where* a query runs (that is
the router) nor run it.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Mapping, Sequence

from analytics.query.model import Agg, Condition, Query
from analytics.query.schema import COLUMNS

_COMPARE = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}

# An `in` list longer than this is bound as ONE list parameter and matched by a semi-join on its
# unnested values: one `?` per value costs DuckDB ~5 KB each to parse, bind and plan (a 1M-value
# list took gigabytes), a list parameter ~100 bytes and a hash table.
INLINE_IN_VALUES = 100
# the DuckDB type of a list of coerced values, by their Python type (see model.Value)
_LIST_TYPES: dict[type, str] = {int: "BIGINT", float: "DOUBLE", str: "VARCHAR", dt.date: "DATE",
                                dt.datetime: "TIMESTAMP"}


def ident(name: str) -> str:
    """Quote an identifier; names here are allow-listed, quoting guards output aliases like COUNT(*)."""
    return '"' + name.replace('"', '""') + '"'


def condition_sql(cond: Condition, expr: str, placeholders: Sequence[str] | None = None) -> str:
    """The predicate of one condition on `expr`, with one `?` per value (or `placeholders`, one per
    value, for an engine that wraps a parameter, e.g. in a cast); `predicate` binds long lists as one."""
    ph = list(placeholders) if placeholders is not None else ["?"] * len(cond.values)
    if cond.op == "in":
        return f"{expr} IN ({', '.join(ph)})"
    if cond.op == "between":
        return f"{expr} BETWEEN {ph[0]} AND {ph[1]}"
    return f"{expr} {_COMPARE[cond.op]} {ph[0]}"


Bind = Callable[[Any], tuple[str, Any]]


def predicate(cond: Condition, expr: str, raw_values: bool = False, bind: Bind | None = None) -> tuple[str, list[Any]]:
    """The predicate of one condition on `expr` and its parameters (typed values, or the analyst's
    text if `raw_values`); a long `in` list becomes one list parameter (`INLINE_IN_VALUES`).

    `bind` maps a value to its placeholder text and the parameter bound to it (default: `?`, itself)."""
    values = cond.raw if raw_values else cond.values
    if bind is not None:
        bound = [bind(v) for v in values]
        return condition_sql(cond, expr, [ph for ph, _ in bound]), [v for _, v in bound]
    if cond.op == "in" and len(values) > INLINE_IN_VALUES:
        # the analyst's text is cast to the column's baseline type, as DuckDB casts a string literal
        types = {COLUMNS[cond.col].baseline_type} if raw_values else {_LIST_TYPES.get(type(v)) for v in values}
        if len(types) == 1 and None not in types:
            return f"{expr} IN (SELECT unnest(CAST(? AS {types.pop()}[])))", [list(values)]
    return condition_sql(cond, expr), list(values)


def where_sql(conditions: Sequence[Condition], raw_values: bool = False,
              bind: Bind | None = None) -> tuple[str, list[Any]]:
    """` WHERE ...` (or empty) and its parameters: typed values, or the analyst's text if `raw_values`;
    `bind` as in `predicate`."""
    if not conditions:
        return "", []
    params: list[Any] = []
    parts = []
    for cond in conditions:
        sql, values = predicate(cond, ident(cond.col), raw_values, bind)
        parts.append(sql)
        params.extend(values)
    return " WHERE " + " AND ".join(parts), params


def order_limit_sql(query: Query, nulls_last: bool = False) -> str:
    """` ORDER BY ... LIMIT n`; `nulls_last` spells out DuckDB's default for engines whose differs."""
    sql = ""
    if query.order_by:
        nulls = " NULLS LAST" if nulls_last else ""
        sql += " ORDER BY " + ", ".join(
            f"{ident(o.name)} {'DESC' if o.desc else 'ASC'}{nulls}" for o in query.order_by)
    if query.limit is not None:
        sql += f" LIMIT {int(query.limit)}"
    return sql


def select_item_sql(item: str | Agg, aggregate_sql: Mapping[Agg, str] | None = None) -> str:
    if isinstance(item, Agg):
        if aggregate_sql is not None:
            return f"{aggregate_sql[item]} AS {ident(item.name)}"
        arg = "*" if item.col == "*" else ident(item.col)
        return f"{item.func}({arg}) AS {ident(item.name)}"
    return ident(item)


def compile_query(query: Query, relation: str, raw_values: bool = False,
                  aggregate_sql: Mapping[Agg, str] | None = None, *, bind: Bind | None = None,
                  nulls_last: bool = False) -> tuple[str, list[Any]]:
    """SQL and parameters answering `query` from `relation`, a table or view with the events columns.

    `raw_values=True` binds the values as the analyst wrote them and lets DuckDB cast them to the
    column types, the way the baseline's plain SQL does with string literals. `aggregate_sql`
    replaces each aggregate by an expression over a rollup's measures (a view's re-aggregation).
    `bind` and `nulls_last` adapt the text to another engine's SQL (see `where_sql`, `order_limit_sql`).
    """
    where, params = where_sql(query.where, raw_values, bind)
    sql = f"SELECT {', '.join(select_item_sql(i, aggregate_sql) for i in query.select)} FROM {relation}{where}"
    if query.group_by:
        sql += " GROUP BY " + ", ".join(ident(g) for g in query.group_by)
    return sql + order_limit_sql(query, nulls_last), params
