"""Date-boundary checks: the leap day, the year end and the first and last day are answered alike by
every view, the lake and (with raw) the baseline's casts, and are complete in the manifest's day index.

Owns `leap_day_and_year_end` and `first_last_day_complete`, their probes (2024-02-28..03-01,
2024-12-30.. and the first/last day) and the baseline's per-minute aggregates they compare with.
Must not probe other checks' windows, nor change the lake or the views.
"""
from __future__ import annotations

from typing import Any, Iterable

from analytics.checks.guardrails.context import CheckResult, Context, Probe, dict_rows, one_row, probes_result
from analytics.query import compiler
from analytics.query.model import Agg, Query, parse_query
from analytics.views.catalog import MEASURE_COLUMNS

LEAP_YEAR_END_PROBES: tuple[dict[str, Any], ...] = (
    {"select": ["day", "type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events",
     "where": [{"col": "day", "op": "between", "val": ["2024-02-28", "2024-03-01"]}], "group_by": ["day", "type"]},
    {"select": ["hour", "type", {"COUNT": "*"}], "from": "events",
     "where": [{"col": "hour", "op": "between", "val": ["2024-02-28 23:00", "2024-03-01 00:00"]}], "group_by": ["hour", "type"]},
    {"select": ["minute", {"COUNT": "*"}], "from": "events",
     "where": [{"col": "minute", "op": "in", "val": ["2024-02-28 23:59", "2024-02-29 00:00", "2024-02-29 23:59", "2024-03-01 00:00"]}],
     "group_by": ["minute"]},
    {"select": ["day", "type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events",
     "where": [{"col": "day", "op": "between", "val": ["2024-12-30", "2025-01-01"]}], "group_by": ["day", "type"]},
    {"select": ["hour", "type", {"COUNT": "*"}], "from": "events",
     "where": [{"col": "hour", "op": "gte", "val": "2024-12-31 22:00"}], "group_by": ["hour", "type"]},
    {"select": [{"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events", "where": [{"col": "day", "op": "gte", "val": "2025-01-01"}]},
    {"select": ["week", "type", {"COUNT": "*"}], "from": "events",
     "where": [{"col": "week", "op": "eq", "val": "2024-12-30"}], "group_by": ["week", "type"]},
    {"select": ["minute", {"COUNT": "*"}], "from": "events",
     "where": [{"col": "minute", "op": "between", "val": ["2024-12-31 23:58", "2025-01-01 00:01"]}], "group_by": ["minute"]},
)


def _preaggregated(query: Query) -> dict[Agg, str]:
    """Aggregates over per-minute counts and exact sums (the boundary probes use only these)."""
    out = {}
    for a in query.aggregates:
        if a.col == "*":
            out[a] = "COALESCE(sum(cnt), 0)::BIGINT"
        elif a.col in MEASURE_COLUMNS and a.func == "COUNT":
            out[a] = f"COALESCE(sum(nn_{a.col}), 0)::BIGINT"
        elif a.col in MEASURE_COLUMNS and a.func == "SUM":
            out[a] = f"CAST(sum(sum_{a.col}) AS DOUBLE)"
        else:
            raise ValueError(f"a boundary probe cannot use {a.name}")
    return out


def _boundary_probes(ctx: Context, qdicts: Iterable[dict[str, Any]]) -> tuple[list[Probe], dict[str, Any]]:
    """Each query answered by every covering view and the lake (the engine), and with raw by the
    baseline's casts over the raw rows; the reference is the lake with every derived column
    recomputed from ts in UTC. Probes stay inside the boundary windows of `lake_window`."""
    probes = []
    window = ctx.lake_window()
    raw = ctx.raw_summary()
    for qdict in qdicts:
        query = parse_query(qdict)
        sql, params = compiler.compile_query(query, window)
        ref = ctx.answer_rows(query, sql, params)
        extra = {}
        if raw:
            bsql, bparams = compiler.compile_query(query, "raw_minutes", raw_values=True, aggregate_sql=_preaggregated(query))
            extra["baseline"] = ctx.answer_rows(query, bsql, bparams)
        probes.append(ctx.probe(qdict, "lake with day/hour/minute/week recomputed from ts (UTC)", ref, extra=extra))
    baseline = ({"compared": True, "rows": "accepted raw rows, the baseline's casts (to_timestamp(ts/1000.0), DATE, "
                                           "DATE_TRUNC, STRFTIME as values are bound as text), counted per minute"}
                if raw else {"compared": False, "why": "no --raw: the baseline was not asked"})
    return probes, baseline


def leap_day_and_year_end(ctx: Context) -> CheckResult:
    probes, baseline = _boundary_probes(ctx, LEAP_YEAR_END_PROBES)
    counts = one_row(ctx.con, """
        SELECT count(*) FILTER (day = DATE '2024-02-29') AS leap_day_rows,
               count(*) FILTER (day = DATE '2024-12-31' AND hour(ts) >= 22) AS dec31_late_rows,
               count(*) FILTER (day >= DATE '2025-01-01') AS rows_in_2025
        FROM events""")
    return probes_result(probes, f"leap day ({counts['leap_day_rows']:,} rows), 2024-12-31 late "
                                 f"({counts['dec31_late_rows']:,} rows) and 2025 ({counts['rows_in_2025']:,} rows) agree",
                         {"lake_rows": counts, "baseline": baseline, "skipped": ctx.skipped_views})


def first_last_day_complete(ctx: Context) -> CheckResult:
    fails: list[str] = []
    span = one_row(ctx.con, "SELECT min(day) AS first_day, max(day) AS last_day, min(ts) AS first_ts, max(ts) AS last_ts FROM events")
    first, last = span["first_day"], span["last_day"]
    raw_span = None
    if ctx.raw_summary():
        raw_span = one_row(ctx.con, "SELECT min(day) AS first_day, max(day) AS last_day FROM raw_minutes")
        if (raw_span["first_day"], raw_span["last_day"]) != (first, last):
            fails.append(f"the lake spans {first}..{last}, the raw rows {raw_span['first_day']}..{raw_span['last_day']}")
            first, last = raw_span["first_day"] or first, raw_span["last_day"] or last
    if first is None:
        return CheckResult(False, {"summary": "the lake holds no rows: no first or last day", "span": span})
    # the manifest's day index (what pruning, incremental refresh and the remediation report trust)
    actual = {(t, d.isoformat()) for t, d in ctx.con.execute("SELECT DISTINCT type, day FROM events").fetchall()}
    indexed = {(t, d) for t, days in ctx.lake.days_by_type().items() for d in days}
    missing = sorted(actual - indexed)
    phantom = sorted(indexed - actual)
    edges = {first.isoformat(), last.isoformat()}
    edge_missing = [x for x in missing if x[1] in edges]
    if missing or phantom:
        fails.append(f"lake state's day index differs from the lake files: {len(missing)} (type, day) missing"
                     f"{' incl. ' + str(edge_missing[:4]) if edge_missing else ''}, {len(phantom)} listed without rows")
    probes = []
    for d in (first, last):
        qdicts = [{"select": ["hour", "type", {"COUNT": "*"}], "from": "events",
                   "where": [{"col": "day", "op": "eq", "val": d.isoformat()}], "group_by": ["hour", "type"]},
                  {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events",
                   "where": [{"col": "day", "op": "eq", "val": d.isoformat()}], "group_by": ["type"]}]
        got, baseline = _boundary_probes(ctx, qdicts)
        probes += got
    per_type = dict_rows(ctx.con, "SELECT type, count(*) FILTER (day = ?) AS first_day_rows, count(*) FILTER (day = ?) AS last_day_rows "
                                  "FROM events GROUP BY type ORDER BY type", [first, last])
    return probes_result(probes, f"first day {first} and last day {last} complete in the manifest index, every day view, "
                                 f"the lake{' and the baseline' if raw_span else ''}",
                         {"span": span, "raw_span": raw_span, "per_type": per_type,
                          "manifest_index": {"missing": missing[:20], "listed_without_rows": phantom[:20],
                                             "pairs": len(actual)},
                          "baseline": baseline, "skipped": ctx.skipped_views}, fail_extra=fails)

