"""Differential fuzzing weighted toward view-coverable shapes: views = lake = baseline.

Kept in its own module so the test runner's workers share the differential load."""
from __future__ import annotations

from collections import Counter

from analytics.router import LAKE
from querygen import random_queries
from test_differential import _check


def test_random_view_shaped_queries_views_equal_lake_equal_baseline(baseline, workbench):
    routes = Counter()
    for raw in random_queries(520, seed=23, view_shaped=True):
        routes[_check(baseline, workbench, raw).route] += 1
        _check(baseline, workbench, raw, use_views=False)
    from_views = sum(n for r, n in routes.items() if r != LAKE)
    assert from_views >= 300, routes  # the workload really exercises the views
    assert len(routes) >= 10, routes
