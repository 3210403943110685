"""A view version proves itself before it serves: its answers to sample queries must equal the lake's.

The build's other checks (schema, totals per type and day, unique keys) say the rows are right; they
cannot say that the code answering from those rows is. So before the registry names a new version
(a full build, a delta, a compaction; catalog or adaptive), `prove` answers sample queries of the
shapes the view claims three ways: by the fast path over the new serving copy (`views.answer`, the
code the workbench serves with), by SQL over its Parquet files, and by DuckDB over the lake (pruned
to the files the query can need). Any disagreement is a `BuildError` naming the view, the query and
the difference, and the version is never registered, so no router ever sees it.

Owns `sample_queries`: shapes given by the caller (the telemetry shapes an adaptive view was chosen
for) plus shapes generated from the view's own keys (folding keys away, minute and hour keys with
others, NULL partials of a type without the price, filters that keep nothing, top k with ties),
their values taken from rows of the version itself so answers are not empty; deterministic per view
and version. Must not write, promote or register anything.
"""
from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any, Iterable, Mapping

import duckdb

from analytics.core import db
from analytics.lake.pruning import lake_relation
from analytics.lake.state import Lake
from analytics.query.compiler import compile_query
from analytics.query.model import Query, QueryError, parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.query.schema import EVENT_TYPES
from analytics.views.answer.fastpath import ArrowView
from analytics.views.answer.version import open_version
from analytics.views.catalog import MEASURE_COLUMNS, ViewDef, compile_for_view, coverage
from analytics.views.delta import version_relation
from analytics.views.registry import ViewEntry
from analytics.views.verify import BuildError

# Generated queries per version, on top of the given shapes (at most MAX_SHAPES of them). Each costs
# a lake query over the files of its types and day range: see README for the measured cost.
GENERATED_QUERIES = 8
MAX_SHAPES = 8
_AGGREGATES = ([{"COUNT": "*"}] + [{f: m} for m in MEASURE_COLUMNS for f in ("COUNT", "SUM", "AVG", "MIN", "MAX")])


def _text(column: str, value: Any) -> Any:
    """A view row's value as an analyst writes it in a query."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


class _Rows:
    """Rows drawn from the version itself (a piece and a row at random: nothing read whole)."""

    def __init__(self, arrow: ArrowView, rng: random.Random) -> None:
        self.pieces = [(t, p) for t in EVENT_TYPES for p in arrow.slices.get(t, ())]
        self.rng = rng

    def draw(self, types: Iterable[str] | None = None) -> dict[str, Any]:
        wanted = set(types) if types is not None else None
        pool = [(t, p) for t, p in self.pieces if wanted is None or t in wanted] or self.pieces
        t, piece = self.rng.choice(pool)
        row = piece.table.slice(self.rng.randrange(piece.table.num_rows), 1).to_pylist()[0]
        return {"type": t, **{c: _text(c, v) for c, v in row.items() if c != "type"}}


def _keys(view: ViewDef) -> list[str]:
    return ["type", *view.time_columns, *view.dims]


def _generated(view: ViewDef, rows: _Rows, rng: random.Random, i: int) -> dict[str, Any]:
    """One query the view claims: a row's time bounding the lake's cost, filters on some of its
    keys, a group-by that folds others away, measures a type may not carry. The first two group by
    the finest time column and the first dimension (folding the others away), then by the whole key."""
    row = rows.draw()
    where: list[dict[str, Any]] = []
    held = [t for t in EVENT_TYPES if t in view.types]
    if len(held) > 1 and rng.random() < 0.4:
        where.append({"col": "type", "op": "in", "val": sorted({row["type"], rng.choice(held)})})
    elif len(held) < len(EVENT_TYPES) or rng.random() < 0.8:
        where.append({"col": "type", "op": "eq", "val": row["type"]})
    if view.time_columns:
        col = rng.choice(view.time_columns) if i else "day"
        if col == "day" and rng.random() < 0.3:
            later = dt.date.fromisoformat(row["day"]) + dt.timedelta(days=rng.choice([0, 1, 6]))
            where.append({"col": "day", "op": "between", "val": [row["day"], later.isoformat()]})
        else:
            where.append({"col": col, "op": "eq", "val": row[col]})
    for dim in view.dims if i else ():  # the first query filters on time alone: every dim is folded
        roll = rng.random()
        if roll < 0.25:
            where.append({"col": dim, "op": "eq", "val": row[dim]})
        elif roll < 0.35:
            where.append({"col": dim, "op": "in", "val": [row[dim], rows.draw([row["type"]])[dim]]})
        elif roll < 0.4:
            where.append({"col": dim, "op": "neq", "val": row[dim]})
    keys = _keys(view)
    if i == 0:
        group_by = [*view.time_columns[:1], *view.dims[:1]] or ["type"]
    elif i == 1:
        group_by = keys
    else:
        group_by = rng.sample(keys, rng.randint(0, min(3, len(keys))))
    aggs = rng.sample(_AGGREGATES, rng.randint(1, 3))
    if rng.random() < 0.15 and keys:
        aggs.append({rng.choice(["MIN", "MAX"]): rng.choice(keys[1:] or keys)})
    select: list[Any] = [*group_by, *aggs]
    query: dict[str, Any] = {"select": select, "from": "events", "where": where}
    if group_by:
        query["group_by"] = group_by
        names = [*group_by, *(f"{f}({c})" for a in aggs for f, c in a.items())]
        if rng.random() < 0.4:  # a top k on a measure: ties cut by the limit
            query["order_by"] = [{"col": names[len(group_by)], "dir": "desc"}]
            query["limit"] = rng.choice([1, 3, 10])
        else:
            query["order_by"] = [{"col": g, "dir": rng.choice(["asc", "desc"])} for g in group_by]
    return query


def _instantiated(shape: Mapping[str, Any], rows: _Rows, rng: random.Random) -> dict[str, Any]:
    """A query of telemetry `shape` (`adaptive_catalog.query_shape`: literal values dropped) with
    values from the view's rows of the shape's types."""
    types = list(shape.get("types") or EVENT_TYPES)
    picked = [rows.draw(types) for _ in range(3)]
    where: list[dict[str, Any]] = []
    for col, op, n in shape["where"]:
        if col == "type":  # the shape keeps the types its filter selects
            if op in ("eq", "in") and int(n) == len(types):
                where.append({"col": "type", "op": op, "val": types[0] if op == "eq" else types})
            continue
        values = [r.get(col) for r in picked]
        if op == "in":
            val: Any = [values[i % len(values)] for i in range(max(1, int(n)))]
        elif op == "between":
            val = sorted(values[:2], key=str)
        else:
            val = values[0]
        where.append({"col": col, "op": op, "val": val})
    select = [{s[0]: s[1]} if isinstance(s, list) else s for s in shape["select"]]
    query: dict[str, Any] = {"select": select, "from": "events", "where": where}
    if shape["group_by"]:
        query["group_by"] = list(shape["group_by"])
    if shape.get("order_limit"):
        first = select[0] if isinstance(select[0], str) else next(f"{f}({c})" for f, c in select[0].items())
        query["order_by"] = [{"col": first, "dir": "desc"}]
        query["limit"] = rng.choice([5, 10])
    return query


def sample_queries(view: ViewDef, arrow: ArrowView, shapes: Iterable[Mapping[str, Any]] = (),
                   n: int = GENERATED_QUERIES, seed: str = "") -> list[tuple[dict[str, Any], Query]]:
    """The queries a version proves itself on: one per given shape (at most MAX_SHAPES), then `n`
    generated; each one the view covers, as (JSON, parsed)."""
    rng = random.Random(f"{view.name}|{seed}")
    if not arrow.slices:
        return []
    rows = _Rows(arrow, rng)
    drafts = [_instantiated(s, rows, rng) for s in list(shapes)[:MAX_SHAPES]]
    drafts += [_generated(view, rows, rng, i) for i in range(n)]
    out = []
    for raw in drafts:
        try:
            q = parse_query(raw)
        except QueryError:
            continue  # a shape whose values a row cannot fill (e.g. NULL in a filtered column)
        if coverage(view, q) is None:
            out.append((raw, q))
    return out


def prove(view: ViewDef, lake: Lake, entry: ViewEntry, *, shapes: Iterable[Mapping[str, Any]] = (),
          n: int = GENERATED_QUERIES, memory_limit: str | None = None) -> int:
    """Answer the sample queries from the version `entry` (not yet registered) and from the lake;
    raise `BuildError` at the first disagreement. Returns how many queries agreed. The lake must be
    the one the version covers (a compaction proves against the lake its parts were built from)."""
    arrow = open_version(lake.root, view, entry)
    queries = sample_queries(view, arrow, shapes, n, seed=str(entry.version))
    if not queries:
        return 0
    con = db.connect(memory_limit=memory_limit)
    try:
        con.execute("SET enable_progress_bar = false")
        version = version_relation(lake.root, entry)
        for raw, q in queries:
            lake_sql, lake_params = compile_query(q, lake_relation(lake, q, default=lake.relation_sql()))
            expected = to_rows(q, db.fetch_arrow(con, lake_sql, lake_params))
            try:
                answers = [("the fast path", arrow.answer(q))]
            except ValueError as exc:  # the fast path's own guards (e.g. duplicate group keys)
                raise BuildError(f"{view.name}: v{entry.version} fails on the fast path ({exc}); not "
                                 f"promoted. Query: {json.dumps(raw)}") from None
            view_sql, view_params = compile_for_view(q, view, version)
            answers.append(("SQL over the view", db.fetch_arrow(con, view_sql, view_params)))
            for path, got in answers:
                if got is None:
                    continue  # a shape the fast path leaves to SQL
                reason = compare_rows(q, expected, to_rows(q, got))
                if reason is not None:
                    raise BuildError(f"{view.name}: v{entry.version} answers differently from the lake by "
                                     f"{path} ({reason}); not promoted. Query: {json.dumps(raw)}")
    except duckdb.Error as exc:
        raise BuildError(f"{view.name}: the self-check could not run: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
    return len(queries)
