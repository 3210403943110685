"""The router: pick the cheapest healthy view that covers a query, else the lake.

Owns the choice among the views that cover a query (coverage, can this view answer this query
exactly, is the catalog's rule), the cost model (estimated rows scanned: the view's rows for the
query's types times the share of its time range the filters keep), on a lake route the lake index
that answers it if one does (a point filter on its key, every column it reads stored) or else the
lake files it can need (`pruning`), and the resulting `Plan` with its candidates and the reasons others were rejected. It decides from the
registry, health and indexes already in memory: it never opens a file. Must not execute SQL.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from analytics.lake.index.store import IndexDef
from analytics.query.compiler import compile_query, ident
from analytics.query.model import Condition, Query, types_selected
from analytics.query.shape import query_shape, shape_columns
from analytics.views.catalog import CATALOG, ViewDef, compile_for_view, coverage
from analytics.views.registry import ViewEntry

LAKE = "lake"
DAYS_IN_DATA = 366


@dataclass(frozen=True)
class Candidate:
    view: str
    cost: float | None  # estimated rows scanned; None when rejected
    rejected: str | None = None


@dataclass(frozen=True)
class Plan:
    """Immutable: the workbench hands one plan to every repeat of its query until the state changes."""

    route: str  # a view name or "lake"
    sql: str
    params: tuple[Any, ...]
    candidates: tuple[Candidate, ...] = ()
    fallback_reason: str | None = None  # why no view answered, when the route is the lake
    index: str | None = None  # the lake index a lake route reads instead of the whole lake
    lake_version: int | None = None  # the Delta version of the lake the plan was made on
    view_version: int | None = None  # the registered version of the view a view route reads

    def describe(self) -> str:
        lines = [f"route: {self.route}"]
        if self.fallback_reason:
            lines.append(f"fallback: {self.fallback_reason}")
        if self.index:
            lines.append(f"index: {self.index} (a lake index: only the row groups that may hold the key are read)")
        for c in sorted(self.candidates, key=lambda c: (c.rejected is not None, c.cost or 0.0, c.view)):
            if c.rejected:
                lines.append(f"  rejected {c.view}: {c.rejected}")
            else:
                mark = "*" if c.view == self.route else " "
                lines.append(f" {mark}candidate {c.view}: est. {c.cost:,.0f} rows scanned")
        lines.append(f"sql: {self.sql}")
        lines.append(f"params: {_shown(self.params)}")
        return "\n".join(lines)


def _time_fraction(cond: Condition) -> float:
    """Rough share of the year a time condition keeps (the view is sorted by time, so it prunes)."""
    per_day = {"day": 1, "week": 1 / 7, "hour": 24, "minute": 1440}.get(cond.col)
    if per_day is None:
        return 1.0
    if cond.op == "eq":
        return 1 / (DAYS_IN_DATA * per_day)
    if cond.op == "in":
        return len(cond.values) / (DAYS_IN_DATA * per_day)
    if cond.op == "between":
        lo, hi = cond.values
        if isinstance(lo, dt.date) and isinstance(hi, dt.date):
            days = (_as_datetime(hi) - _as_datetime(lo)).total_seconds() / 86400
            return min(1.0, max(0.0, days + 1 / per_day) / DAYS_IN_DATA)
        return 0.1
    return 0.5


def _as_datetime(v: dt.date) -> dt.datetime:
    return v if isinstance(v, dt.datetime) else dt.datetime(v.year, v.month, v.day)


def estimate_cost(entry: ViewEntry, query: Query) -> float:
    """The rows a query would scan in the view's base (those of the types it selects), scaled by the
    share of time its filters keep."""
    rows_by_type = entry.rows_by_type
    types = types_selected(query.where)
    rows = sum(n for t, n in rows_by_type.items() if t in types)
    frac = 1.0
    for cond in query.where:
        frac *= _time_fraction(cond)
    # a fixed cost per statement keeps tiny views from looking free
    return rows * frac + 1.0


class Router:
    """Plans queries against a catalog, given registry entries and each view's health."""

    def __init__(self, catalog: tuple[ViewDef, ...] = CATALOG,
                 indexes: Sequence[tuple[IndexDef, str]] = (),
                 lake_relation: Callable[[Query], str] | None = None) -> None:
        """`indexes`: usable lake indexes, each with the relation that reads it (`IndexDef.relation`);
        `lake_relation`: the relation a lake-routed query reads (`pruning.lake_relation`), else `events`."""
        self.catalog = catalog
        self.indexes = tuple(sorted(indexes, key=lambda ir: ir[0].name))
        self.lake_relation = lake_relation

    def plan(self, query: Query, registry: Mapping[str, ViewEntry], health: Mapping[str, str | None],
             table_names: Mapping[str, str], use_views: bool = True) -> Plan:
        """`health[name]` is None for a healthy view, else why it is not; `table_names` maps views to tables."""
        candidates: list[Candidate] = []
        if use_views:
            for view in self.catalog:
                why = coverage(view, query)
                if why is None:
                    entry = registry.get(view.name)
                    why = "not built" if entry is None else health.get(view.name, "not checked")
                if why is not None:
                    candidates.append(Candidate(view.name, None, why))
                else:
                    candidates.append(Candidate(view.name, estimate_cost(registry[view.name], query)))
        usable = [c for c in candidates if c.rejected is None]
        if usable:
            best = min(usable, key=lambda c: (c.cost, registry[c.view].rows, c.view))
            view = next(v for v in self.catalog if v.name == best.view)
            # quoted: an adaptive view's name may hold a '-' (`ad_day_type_imp-pur_...`)
            sql, params = compile_for_view(query, view, ident(table_names[best.view]))
            return Plan(best.view, sql, tuple(params), tuple(candidates))
        index = self._index_for(query) if use_views else None
        relation = index[1] if index else (self.lake_relation(query) if self.lake_relation else "events")
        sql, params = compile_query(query, relation)
        if not use_views:
            reason = "views disabled (--no-views)"
        elif not any(coverage(v, query) is None for v in self.catalog):
            reason = "no view covers the query"
        else:
            unhealthy = [c for c in candidates if c.rejected and coverage(_by_name(self.catalog, c.view), query) is None]
            reason = "; ".join(f"{c.view}: {c.rejected}" for c in unhealthy[:3])
        return Plan(LAKE, sql, tuple(params), tuple(candidates), reason, index[0].name if index else None)

    def _index_for(self, query: Query) -> tuple[IndexDef, str] | None:
        """The first lake index answering `query`: a point filter (eq/in) on its key, every column read
        stored, every type selected held."""
        if not self.indexes:
            return None
        cols = shape_columns(query_shape(query))
        types = types_selected(query.where)
        for index, relation in self.indexes:
            if (any(c.col == index.key and c.op in ("eq", "in") for c in query.where)
                    and cols <= index.readable() and types <= set(index.types)):
                return index, relation
        return None


def _by_name(catalog: tuple[ViewDef, ...], name: str) -> ViewDef:
    return next(v for v in catalog if v.name == name)


def _shown(params: Any, most: int = 20) -> str:
    """Parameters as `explain` prints them: a long `in` list shows its first values and its length."""
    out = [p if not isinstance(p, list) or len(p) <= most else p[:most] + [f"... {len(p):,} values"] for p in params]
    return repr(out)
