"""Superset batching: lake queries of one batch that scan the same data share one scan.

Pure functions over validated `Query` objects. `plan_shared_scans` groups lake-routed
aggregate queries whose filters overlap into `SharedScan`s; a shared scan computes one
superset aggregate from the lake (GROUP BY the union of the members' group-by columns plus
the columns their filters differ on, with every measure any member needs) and each member's
answer is derived from that small table by re-aggregation:

- COUNT(x) is the SUM of the partial counts (COALESCE 0, BIGINT, as an ungrouped COUNT of no rows);
- SUM re-sums partial sums (DOUBLE stays DOUBLE, integer sums stay HUGEINT);
- AVG is SUM(partial sums) / SUM(partial non-NULL counts), never an average of averages;
- MIN/MAX re-aggregate MIN/MAX (same type as the column);
- a member's own filters that are not common to the group (its *residual*) are applied to the
  superset's group columns, which is exact because every superset group holds rows with one
  value of each such column; the superset's WHERE is the common filters AND the OR of the
  members' residuals (plus an IN list or range hull per residual column, so partitions and
  row groups still prune);
- ORDER BY / LIMIT are applied per member after derivation.

Raw-row queries never batch. A query joins a group only if the superset stays small enough
(estimated groups from the domain of each column); otherwise it scans alone. Must not run SQL:
the runner executes what these functions produce.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from analytics.query.aggregates import FROM_ROWS, RULES, combine_sql
from analytics.query.compiler import ident, order_limit_sql, predicate, where_sql
from analytics.query.model import Agg, Condition, Query, _canonical_value
from analytics.query.schema import COUNTRIES, EVENT_TYPES, N_ADVERTISERS, N_PUBLISHERS, N_USERS

DEFAULT_MAX_GROUPS = 2_000_000
# A superset must be much smaller than the rows it scans, or deriving from it costs as much as scanning.
DEFAULT_MAX_GROUP_RATIO = 0.25
DEFAULT_MAX_MEMBERS = 64
DAYS = 366

# Distinct values of each column over the data's year; None = too many to group on cheaply.
_DOMAIN: dict[str, int | None] = {
    "type": len(EVENT_TYPES), "country": len(COUNTRIES), "advertiser_id": N_ADVERTISERS,
    "publisher_id": N_PUBLISHERS, "user_id": N_USERS, "day": DAYS, "week": 53, "hour": DAYS * 24,
    "minute": DAYS * 1440, "ts": None, "auction_id": None, "bid_price": None, "total_price": None,
}
_PER_DAY = {"day": 1.0, "week": 1 / 7, "hour": 24.0, "minute": 1440.0}
_TIME_FINEST_FIRST = ("minute", "hour", "day", "week")
_ORDERED_OPS = ("eq", "in", "between", "lt", "lte", "gt", "gte")


def condition_key(cond: Condition) -> str:
    """Equal for conditions that select the same rows whatever the spelling or order of values."""
    values = sorted(set(cond.values), key=_canonical_value) if cond.op == "in" else cond.values
    return json.dumps([cond.col, cond.op, [_canonical_value(v) for v in values]])


def can_share(query: Query) -> bool:
    """Only aggregates batch: raw-row queries list rows, which no superset can hold."""
    return query.is_aggregate


@dataclass(frozen=True)
class Measure:
    func: str  # sum | count | min | max (superset side)
    col: str  # a column or "*"

    @property
    def alias(self) -> str:
        return f"__{self.func}_{'star' if self.col == '*' else self.col}"

    def sql(self) -> str:
        arg = "*" if self.col == "*" else ident(self.col)
        return f"{self.func}({arg}) AS {ident(self.alias)}"


def measures_for(agg: Agg) -> tuple[Measure, ...]:
    """The partial measures the superset computes for `agg` (the rules of `query.aggregates`; the
    column stays the member's, so COUNT(x) counts x even where the lake never holds NULL)."""
    return tuple(Measure(FROM_ROWS[k], agg.col) for k in RULES[agg.func])


def derive_sql(agg: Agg) -> str:
    """The member's aggregate over the superset's partial measures, typed as the unbatched one
    (a SUM re-sums in the column's own type: DOUBLE stays DOUBLE, integer sums HUGEINT)."""
    cols = [ident(m.alias) for m in measures_for(agg)]
    return combine_sql(agg.func, cols, sum_as_double=False)


@dataclass
class SharedScan:
    """One superset aggregate over the lake and the members it answers."""

    members: list[tuple[Any, Query]]  # (caller's id, query)
    common: tuple[Condition, ...]  # conditions every member has
    residuals: list[tuple[Condition, ...]]  # per member, its conditions not in `common`
    dims: tuple[str, ...]  # superset group-by: members' group-bys and residual columns
    measures: tuple[Measure, ...]
    est_groups: float = 0.0  # estimated groups, capped by the rows scanned
    raw_groups: float = 0.0  # product of the dims' domains (inf if one has none)
    hull: tuple[tuple[str, str, list[Any]], ...] = field(default_factory=tuple)  # (col, sql, params)

    @property
    def size(self) -> int:
        return len(self.members)

    def superset_sql(self, relation: str = "events") -> tuple[str, list[Any]]:
        """SELECT dims, partial measures FROM relation WHERE common AND hull AND (OR of residuals) GROUP BY dims."""
        where, params = where_sql(self.common)
        parts = [where[len(" WHERE "):]] if where else []
        for _, sql, ps in self.hull:
            parts.append(sql)
            params.extend(ps)
        if all(self.residuals):  # a member without residual wants every common row: no OR then
            ors = []
            for res in self.residuals:
                preds = [predicate(c, ident(c.col)) for c in res]
                ors.append("(" + " AND ".join(sql for sql, _ in preds) + ")")
                for _, ps in preds:
                    params.extend(ps)
            parts.append("(" + " OR ".join(ors) + ")")
        items = [ident(d) for d in self.dims] + [m.sql() for m in self.measures]
        sql = f"SELECT {', '.join(items)} FROM {relation}"
        if parts:
            sql += " WHERE " + " AND ".join(parts)
        if self.dims:
            sql += " GROUP BY " + ", ".join(ident(d) for d in self.dims)
        return sql, params

    def member_sql(self, k: int, table: str) -> tuple[str, list[Any]]:
        """The k-th member's answer from the superset table `table`."""
        _, q = self.members[k]
        items = []
        for item in q.select:
            items.append(f"{derive_sql(item)} AS {ident(item.name)}" if isinstance(item, Agg) else ident(item))
        where, params = where_sql(self.residuals[k])
        sql = f"SELECT {', '.join(items)} FROM {table}{where}"
        if q.group_by:
            sql += " GROUP BY " + ", ".join(ident(g) for g in q.group_by)
        return sql + order_limit_sql(q), params


def _day_span(conds: Iterable[Condition]) -> float:
    """Days of the year the conditions keep at most (from day/week/hour/minute/ts bounds)."""
    span = float(DAYS)
    for c in conds:
        if c.col not in ("day", "week", "hour", "minute", "ts"):
            continue
        if c.op in ("eq", "in") and c.col in _PER_DAY:
            span = min(span, len(set(c.values)) / _PER_DAY[c.col] if c.col != "week" else 7.0 * len(set(c.values)))
        elif c.op == "between":
            lo, hi = c.values
            if isinstance(lo, dt.date) and isinstance(hi, dt.date):
                lo_d = lo if isinstance(lo, dt.datetime) else dt.datetime(lo.year, lo.month, lo.day)
                hi_d = hi if isinstance(hi, dt.datetime) else dt.datetime(hi.year, hi.month, hi.day)
                days = (hi_d - lo_d).total_seconds() / 86400 + (7 if c.col == "week" else 1)
                span = min(span, max(days, 1 / 1440))
    return max(span, 1 / 1440)


def _cardinality(col: str, conds: Sequence[Condition], span: float) -> float:
    dom = _DOMAIN.get(col)
    if dom is None:
        return math.inf
    card = float(dom)
    if col in _PER_DAY:
        card = min(card, max(1.0, span * _PER_DAY[col]) + (1 if col == "week" else 0))
    for c in conds:
        if c.col == col and c.op in ("eq", "in"):
            card = min(card, float(len(set(c.values))))
    return card


def estimate_groups(dims: Sequence[str], conds: Sequence[Condition], rows: float | None = None) -> float:
    """Upper estimate of the superset's groups: product of each dim's distinct values, capped by rows."""
    span = _day_span(conds)
    est = 1.0
    # a finer time column determines the coarser ones (minute -> hour -> day -> week): count the finest only
    times = [d for d in _TIME_FINEST_FIRST if d in dims]
    for d in dims:
        if d in _TIME_FINEST_FIRST and d != times[0]:
            continue
        est *= _cardinality(d, conds, span)
    if rows is not None:
        est = min(est, max(1.0, rows * span / DAYS))
    return est


def _hull(col: str, residuals: Sequence[Sequence[Condition]]) -> tuple[str, str, list[Any]] | None:
    """A condition implied by every residual on `col` (for pruning), or None if some member is unbounded."""
    lows: list[Any] = []
    highs: list[Any] = []
    in_values: list[Any] = []
    all_in = True
    for res in residuals:
        conds = [c for c in res if c.col == col]
        if not conds:
            return None
        lo = hi = None
        lo_set = hi_set = False
        member_in: set[Any] | None = None
        for c in conds:
            if c.op not in _ORDERED_OPS:
                continue
            if c.op in ("eq", "in"):
                vals = set(c.values)
                member_in = vals if member_in is None else member_in & vals
                lo_c, hi_c = min(c.values), max(c.values)
            elif c.op == "between":
                lo_c, hi_c = c.values
            elif c.op in ("lt", "lte"):
                lo_c, hi_c = None, c.values[0]
            else:
                lo_c, hi_c = c.values[0], None
            if lo_c is not None:
                lo = lo_c if not lo_set else max(lo, lo_c)
                lo_set = True
            if hi_c is not None:
                hi = hi_c if not hi_set else min(hi, hi_c)
                hi_set = True
        if member_in is None:
            all_in = False
        else:
            in_values.extend(sorted(member_in, key=_canonical_value))
        lows.append(lo if lo_set else None)
        highs.append(hi if hi_set else None)
    if all_in:
        vals = sorted(set(in_values), key=_canonical_value)
        return col, f"{ident(col)} IN ({', '.join('?' for _ in vals)})", vals
    parts, params = [], []
    try:
        if all(v is not None for v in lows):
            parts.append(f"{ident(col)} >= ?")
            params.append(min(lows))
        if all(v is not None for v in highs):
            parts.append(f"{ident(col)} <= ?")
            params.append(max(highs))
    except TypeError:  # values of different Python types: no hull, the OR still filters exactly
        return None
    if not parts:
        return None
    return col, " AND ".join(parts), params


def _make_scan(members: list[tuple[Any, Query]], rows: float | None) -> SharedScan:
    keyed = [{condition_key(c): c for c in q.where} for _, q in members]
    common_keys = set(keyed[0]).intersection(*keyed[1:]) if len(keyed) > 1 else set(keyed[0])
    common = tuple(keyed[0][k] for k in sorted(common_keys))
    residuals = [tuple(kc[k] for k in sorted(set(kc) - common_keys)) for kc in keyed]
    dims: list[str] = []
    for _, q in members:
        for g in q.group_by:
            if g not in dims:
                dims.append(g)
    residual_cols = sorted({c.col for res in residuals for c in res})
    for col in residual_cols:
        if col not in dims:
            dims.append(col)
    measures: list[Measure] = []
    for _, q in members:
        for agg in q.aggregates:
            for m in measures_for(agg):
                if m not in measures:
                    measures.append(m)
    hull = []
    if residual_cols and all(residuals):
        for col in residual_cols:
            h = _hull(col, residuals)
            if h is not None:
                hull.append(h)
    scan = SharedScan(members, common, residuals, tuple(dims), tuple(measures), hull=tuple(hull))
    scan.raw_groups = estimate_groups(scan.dims, common)
    scan.est_groups = estimate_groups(scan.dims, common, rows)
    return scan


def plan_shared_scans(queries: Sequence[tuple[Any, Query]], *, max_groups: float = DEFAULT_MAX_GROUPS,
                      max_ratio: float = DEFAULT_MAX_GROUP_RATIO, max_members: int = DEFAULT_MAX_MEMBERS,
                      rows: float | None = None, rows_by_type: Mapping[str, int] | None = None) -> list[SharedScan]:
    """Group lake-routed queries into shared scans, greedily in order; every query lands in exactly one.

    A query joins the first group whose merged superset is estimated at most `max_groups`
    groups and at most `max_ratio` of the rows it scans (`rows`, or from `rows_by_type`, the
    lake's rows per event type); otherwise it starts its own (a group of one runs as a plain
    query). Raw-row queries are always alone; a column without a small domain (ts, prices,
    auction_id) can never become a superset dimension.
    """
    groups: list[SharedScan] = []
    for ident_q in queries:
        _, q = ident_q
        if not can_share(q):
            groups.append(_make_scan([ident_q], None))
            continue
        placed = False
        for gi, g in enumerate(groups):
            if g.size >= max_members or not can_share(g.members[0][1]):
                continue
            scanned = _rows_for(g.members + [ident_q], rows, rows_by_type)
            cand = _make_scan(g.members + [ident_q], scanned)
            if cand.est_groups <= max_groups and (scanned is None or cand.est_groups <= max_ratio * max(
                    1.0, scanned * _day_span(cand.common) / DAYS)) and math.isfinite(cand.raw_groups):
                groups[gi] = cand
                placed = True
                break
        if not placed:
            groups.append(_make_scan([ident_q], _rows_for([ident_q], rows, rows_by_type)))
    return groups


def _rows_for(members: Sequence[tuple[Any, Query]], rows: float | None,
              rows_by_type: Mapping[str, int] | None) -> float | None:
    if rows_by_type is None:
        return rows
    wanted: set[str] = set()
    for _, q in members:
        types = set(EVENT_TYPES)
        for c in q.where:
            if c.col == "type" and c.op in ("eq", "in"):
                types &= {str(v) for v in c.values}
        wanted |= types
    return float(sum(n for t, n in rows_by_type.items() if t in wanted))
