"""Differential fuzzing of user_id filters: the per-user view (fast path and SQL) = lake = baseline.

Its own module so the test runner's workers share the differential load."""
from __future__ import annotations

from collections import Counter

from helpers import check_against_baseline
from querygen import user_queries

from analytics.checks.baseline import baseline_query
from analytics.query.model import parse_query
from analytics.query.results import to_rows
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench
from analytics.views.answer import fastpath


def test_user_queries_from_the_per_user_view_equal_lake_equal_baseline(baseline, workbench, lake_dir, monkeypatch):
    """Filters on user_id (points, in-lists, ranges), by type or by user, top users: the per-user
    view (its rows searched by their marks for points and lists), its SQL, and the lake all
    answer as the baseline."""
    sql_only = Workbench(lake_dir, fast_path=False)
    searched = Counter()
    real = fastpath.sorted_bound

    def spy(values, marks, key, side):
        searched[side] += 1
        return real(values, marks, key, side)
    monkeypatch.setattr(fastpath, "sorted_bound", spy)
    routes = Counter()
    for raw in user_queries(100, seed=43):
        q = parse_query(raw)
        expected = to_rows(q, baseline_query(baseline, q))
        plan = check_against_baseline(baseline, workbench, raw, expected=expected)
        routes[plan.route] += 1
        if plan.route != LAKE:
            assert check_against_baseline(baseline, sql_only, raw, expected=expected).route == plan.route
        check_against_baseline(baseline, workbench, raw, use_views=False, expected=expected)
    assert routes["mv_all_user_id"] >= 75, routes
    assert searched["left"] >= 60 and searched["left"] == searched["right"], searched
