"""Differential fuzzing weighted toward view-coverable shapes: views = lake = baseline.

Kept in its own module so the test runner's workers share the differential load."""
from __future__ import annotations

from collections import Counter

from analytics.query import parse_query
from analytics.router import LAKE
from analytics.workbench import Workbench
from querygen import random_queries
from test_differential import _check


def test_random_view_shaped_queries_views_equal_lake_equal_baseline(baseline, workbench, lake_dir):
    sql_only = Workbench(lake_dir, fast_path=False)  # the same views answered by DuckDB SQL
    routes = Counter()
    fast = identity = text_search = 0
    for raw in random_queries(520, seed=23, view_shaped=True):
        plan = _check(baseline, workbench, raw)
        routes[plan.route] += 1
        if plan.route != LAKE:
            assert _check(baseline, sql_only, raw).route == plan.route
            workbench._ensure_loaded(plan.route)
            view, q = workbench._arrow[workbench.table_name(plan.route)], parse_query(raw)
            answered = view.answer(q) is not None
            fast += answered
            identity += bool(q.group_by) and view._one_row_per_group(q)
            text_search += answered and any(c.col == "minute" and c.op not in ("in", "neq") for c in q.where)
        _check(baseline, workbench, raw, use_views=False)
    from_views = sum(n for r, n in routes.items() if r != LAKE)
    assert from_views >= 300, routes  # the workload really exercises the views
    assert len(routes) >= 10, routes
    assert fast >= 0.9 * from_views, (fast, from_views)  # the Arrow fast path really answers them
    assert identity >= 30, identity  # and its shortcut for groups that are the view's own rows
    assert text_search >= 10, text_search  # and its binary search on the minute text
