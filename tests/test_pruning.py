"""Lake pruning: a lake-routed query reads only the files of its types and of the segments holding a
day of its time range, and answers exactly as the baseline, at every segment's first and last day
(the test data's parts are chronological slices, so those are the days pruning could get wrong)."""
from __future__ import annotations

import datetime as dt

from helpers import check_against_baseline

from analytics.lake.pruning import day_bounds, lake_relation
from analytics.lake.state import Lake
from analytics.query.model import parse_query
from analytics.serving.router import LAKE


def _where(*conds: tuple) -> tuple:
    return parse_query({"select": [{"COUNT": "*"}], "from": "events",
                        "where": [{"col": c, "op": op, "val": v} for c, op, v in conds]}).where


def test_day_bounds_cover_every_row_the_filters_keep():
    assert day_bounds(_where(("week", "eq", "2024-06-03"))) == ("2024-06-03", "2024-06-09")  # Monday to Sunday
    assert day_bounds(_where(("minute", "between", ["2024-02-28 23:59", "2024-03-01 00:00"]))) == ("2024-02-28", "2024-03-01")
    assert day_bounds(_where(("ts", "lt", "2024-06-01 00:00:00"))) == (None, "2024-06-01")
    assert day_bounds(_where(("hour", "gte", "2024-12-31 23:00:00"))) == ("2024-12-31", None)
    assert day_bounds(_where(("day", "in", ["2024-05-02", "2024-01-09"]))) == ("2024-01-09", "2024-05-02")
    assert day_bounds(_where(("day", "neq", "2024-05-02"), ("country", "eq", "US"))) == (None, None)
    # several filters intersect
    assert day_bounds(_where(("day", "gte", "2024-03-01"), ("ts", "lt", "2024-03-05 12:00:00"))) == ("2024-03-01", "2024-03-05")


def test_pruned_lake_answers_equal_the_baseline_at_segment_edges(baseline, workbench, lake_dir):
    lake = Lake.open(lake_dir)
    segments = lake.state["segments"]
    assert len(segments) >= 3
    all_files = len(lake.event_files())
    pruned = 0
    for seg in segments:
        for t in ("serve", "click"):
            days = sorted(seg["days"][t])
            for d in (days[0], days[-1]):
                day = dt.date.fromisoformat(d)
                monday = (day - dt.timedelta(days=day.weekday())).isoformat()
                nxt = (day + dt.timedelta(days=1)).isoformat()
                filters = [
                    [{"col": "day", "op": "eq", "val": d}],
                    [{"col": "ts", "op": "between", "val": [f"{d} 23:59:59.999", f"{nxt} 00:00:00"]}],
                    [{"col": "week", "op": "eq", "val": monday}],
                    [{"col": "week", "op": "gte", "val": monday}],
                    [{"col": "hour", "op": "eq", "val": f"{d} 00:00:00"}],
                    [{"col": "minute", "op": "in", "val": [f"{d} 00:00", f"{d} 23:59"]}],
                    [{"col": "day", "op": "lt", "val": d}],
                    [{"col": "ts", "op": "gte", "val": f"{d} 23:59:59.999"}],
                ]
                for where in filters:
                    raw = {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events",
                           "where": [{"col": "type", "op": "eq", "val": t}, *where], "group_by": ["type"]}
                    plan = check_against_baseline(baseline, workbench, raw, use_views=False)
                    assert plan.route == LAKE
                    pruned += plan.sql.count(".parquet") < all_files
    assert pruned > 50
    # nothing to prune: the whole lake, as before
    q = parse_query({"select": [{"COUNT": "*"}], "from": "events"})
    assert lake_relation(lake, q) == "events"
    # a range holding no segment's day reads no file and still answers
    check_against_baseline(baseline, workbench, {"select": [{"COUNT": "*"}, {"MAX": "bid_price"}], "from": "events",
                                 "where": [{"col": "day", "op": "gt", "val": "2025-06-01"}]}, use_views=False)
