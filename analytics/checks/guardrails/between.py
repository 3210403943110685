"""BETWEEN checks: day, hour and minute BETWEEN include both ends whole, on every covering view and the lake.

Owns `day_inclusive` and `hour_minute_inclusive` and their probe ranges (around 2024-01-07/08,
06-30/07-01 and 09-29/30); the reference is the lake's rows with an explicit inclusive `ts` range.
Must not probe the other checks' windows (a BETWEEN fault must show up here alone), nor change
the lake or the views.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from analytics.checks.guardrails.context import CheckResult, Context, Probe, one_row, probes_result
from analytics.core import db
from analytics.query.model import parse_query
from analytics.query.results import to_rows
from analytics.views.catalog import SUM_TYPE

BETWEEN_DAYS: tuple[tuple[str, str], ...] = (
    ("2024-06-30", "2024-07-01"), ("2024-09-29", "2024-09-29"), ("2024-01-07", "2024-01-08"), ("2024-09-23", "2024-09-30"),
)
BETWEEN_HOURS: tuple[tuple[str, str], ...] = (
    ("2024-06-30 23:00", "2024-07-01 00:00"), ("2024-09-29 22:00", "2024-09-29 23:00"), ("2024-07-01 00:00", "2024-07-01 00:00"),
)
BETWEEN_MINUTES: tuple[tuple[str, str], ...] = (
    ("2024-06-30 23:58", "2024-06-30 23:59"), ("2024-07-01 00:00", "2024-07-01 00:00"), ("2024-09-29 23:59", "2024-09-30 00:00"),
)


def _ts_upper(day: dt.date) -> dt.datetime:
    """The last microsecond of `day`: the inclusive upper end of a day range as a ts value."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) - dt.timedelta(microseconds=1)


def _between_probe(ctx: Context, col: str, lo_ts: dt.datetime, hi_ts: dt.datetime, lo_txt: str, hi_txt: str,
                   lo_edge_end: dt.datetime, hi_edge_start: dt.datetime) -> tuple[Probe, dict[str, Any]]:
    qdict = {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events",
             "where": [{"col": col, "op": "between", "val": [lo_txt, hi_txt]}], "group_by": ["type"]}
    query = parse_query(qdict)
    ref = db.fetch_arrow(ctx.con, f"""
        SELECT type, count(*) AS "COUNT(*)", CAST(sum(CAST(bid_price AS {SUM_TYPE})) AS DOUBLE) AS "SUM(bid_price)"
        FROM events WHERE ts >= ? AND ts <= ? GROUP BY type""", [lo_ts, hi_ts])
    edges = one_row(ctx.con, "SELECT count(*) FILTER (ts < ?) AS rows_in_low_end, count(*) FILTER (ts >= ?) AS rows_in_high_end "
                             "FROM events WHERE ts >= ? AND ts <= ?", [lo_edge_end, hi_edge_start, lo_ts, hi_ts])
    probe = ctx.probe(qdict, f"lake rows with ts >= {lo_ts} AND ts <= {hi_ts}", to_rows(query, ref))
    return probe, {"range": [lo_txt, hi_txt], "ts_from": lo_ts, "ts_to": hi_ts, **edges}


def day_inclusive(ctx: Context) -> CheckResult:
    probes, edges = [], []
    for lo, hi in BETWEEN_DAYS:
        lo_d, hi_d = dt.date.fromisoformat(lo), dt.date.fromisoformat(hi)
        p, e = _between_probe(ctx, "day", dt.datetime.combine(lo_d, dt.time()), _ts_upper(hi_d), lo, hi,
                              dt.datetime.combine(lo_d + dt.timedelta(days=1), dt.time()),
                              dt.datetime.combine(hi_d, dt.time()))
        probes.append(p)
        edges.append(e)
    return probes_result(probes, "day BETWEEN keeps both end days whole, on every day view and the lake",
                         {"edges": edges, "skipped": ctx.skipped_views})


def hour_minute_inclusive(ctx: Context) -> CheckResult:
    probes, edges = [], []
    for col, ranges, width in (("hour", BETWEEN_HOURS, dt.timedelta(hours=1)), ("minute", BETWEEN_MINUTES, dt.timedelta(minutes=1))):
        for lo, hi in ranges:
            lo_t, hi_t = dt.datetime.fromisoformat(lo), dt.datetime.fromisoformat(hi)
            p, e = _between_probe(ctx, col, lo_t, hi_t + width - dt.timedelta(microseconds=1), lo, hi, lo_t + width, hi_t)
            probes.append(p)
            edges.append({"column": col, **e})
    return probes_result(probes, "hour and minute BETWEEN keep both end buckets whole, on every hour/minute view and the lake",
                         {"edges": edges, "skipped": ctx.skipped_views})

