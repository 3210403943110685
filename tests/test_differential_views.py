"""Differential fuzzing weighted toward view-coverable shapes: views = lake = baseline.

Kept in its own module so the test runner's workers share the differential load."""
from __future__ import annotations

from collections import Counter

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from helpers import check_against_baseline
from querygen import random_queries

from analytics.checks.baseline import baseline_query
from analytics.query.model import parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.serving.router import LAKE, coverage
from analytics.serving.workbench import Workbench
from analytics.views.answer.fastpath import ArrowView
from analytics.views.catalog import VIEWS


def test_random_view_shaped_queries_views_equal_lake_equal_baseline(baseline, workbench, lake_dir):
    sql_only = Workbench(lake_dir, fast_path=False)  # the same views answered by DuckDB SQL
    routes = Counter()
    fast = identity = text_search = 0
    for raw in random_queries(520, seed=23, view_shaped=True):
        q = parse_query(raw)
        expected = to_rows(q, baseline_query(baseline, q))  # once: the three answers below are checked on it
        plan = check_against_baseline(baseline, workbench, raw, expected=expected)
        routes[plan.route] += 1
        if plan.route != LAKE:
            assert check_against_baseline(baseline, sql_only, raw, expected=expected).route == plan.route
            workbench._ensure_loaded(plan.route)
            view = workbench._arrow[workbench.table_name(plan.route)]
            answered = view.answer(q) is not None
            fast += answered
            identity += bool(q.group_by) and view._one_row_per_group(q)
            text_search += answered and any(c.col == "minute" and c.op not in ("in", "neq") for c in q.where)
        check_against_baseline(baseline, workbench, raw, use_views=False, expected=expected)
    from_views = sum(n for r, n in routes.items() if r != LAKE)
    assert from_views >= 300, routes  # the workload really exercises the views
    assert len(routes) >= 10, routes
    assert fast >= 0.9 * from_views, (fast, from_views)  # the Arrow fast path really answers them
    assert identity >= 30, identity  # and its shortcut for groups that are the view's own rows
    assert text_search >= 10, text_search  # and its binary search on the minute text


def test_fast_path_answers_from_a_view_whose_rows_lost_their_order(baseline, workbench):
    """A view table not sorted by type and time: the fast path must restore the order its binary
    searches need (or answer wrongly), so shuffled copies are checked against the baseline."""
    rng = np.random.default_rng(5)
    checked = Counter()
    for name in ("mv_hour_type_wide", "mv_minute_type_wide", "mv_day_country_wide"):
        workbench._ensure_loaded(name)
        mapped = workbench._arrow[workbench.table_name(name)]
        table = mapped.table
        shuffled = ArrowView.from_table(VIEWS[name], table.take(rng.permutation(table.num_rows)), mapped.scaled)
        for raw in random_queries(240, seed=41, view_shaped=True):
            q = parse_query(raw)
            if coverage(VIEWS[name], q) is not None or not q.where:
                continue
            got = shuffled.answer(q)
            if got is None:
                continue
            reason = compare_rows(q, to_rows(q, baseline_query(baseline, q)), to_rows(q, got))
            assert reason is None, f"{name}: {reason}\n{raw}"
            checked[name] += 1
    assert min(checked.values()) >= 15, checked


def test_runs_of_the_first_dimension_found_by_search_equal_the_baseline(baseline, workbench, monkeypatch):
    """An `eq`/`in` on a view's first dimension is answered by binary search for its runs within
    each time unit when the rows repay it; on small data they never do, so here they always do."""
    monkeypatch.setattr(ArrowView, "_ROWS_PER_SEARCH", 0)
    used = Counter()
    real = ArrowView._dim_runs

    def spy(self, *args):
        out = real(self, *args)
        used[self.view.name] += out is not None
        return out
    monkeypatch.setattr(ArrowView, "_dim_runs", spy)
    for raw in random_queries(520, seed=29, view_shaped=True):
        check_against_baseline(baseline, workbench, raw)
    assert sum(used.values()) >= 40 and len([v for v in used.values() if v]) >= 3, used


def test_numpy_and_arrow_reaggregation_both_equal_the_baseline(baseline, workbench, monkeypatch):
    """A view answer is re-aggregated by numpy (`reaggregate`: dense groups, exact int64 sums) when
    its keys and partials allow, else by Arrow's group-by; each path is checked on its own against
    the baseline, on the same queries, so neither hides behind the other."""
    real = ArrowView._answer_numpy
    by_numpy = checked = 0
    for raw in random_queries(300, seed=31, view_shaped=True):
        q = parse_query(raw)
        plan = workbench.plan(q)
        if plan.route == LAKE:
            continue
        workbench._ensure_loaded(plan.route)
        view = workbench._arrow[workbench.table_name(plan.route)]
        expected = to_rows(q, baseline_query(baseline, q))
        shape = view._shape(q)
        selections = view._selections(q, shape)
        by_numpy += selections is not None and real(view, q, shape, selections) is not None
        for path, answer_numpy in (("numpy", real), ("arrow", lambda *a: None)):
            monkeypatch.setattr(ArrowView, "_answer_numpy", answer_numpy)
            got = view.answer(q)
            if got is None:
                continue  # a shape left to SQL: the test above checks it
            reason = compare_rows(q, expected, to_rows(q, got))
            assert reason is None, f"{path} re-aggregation on {plan.route}: {reason}\n{raw}"
            checked += 1
    assert by_numpy >= 120 and checked >= 2 * by_numpy, (by_numpy, checked)


def test_minute_groups_of_a_view_with_dimensions_tie_on_the_minute(baseline, lake_dir):
    """A minute x country view answering groups that are its own rows, ordered by minute then
    country: rows of one minute must compare equal on the minute key, so the country decides
    (a minute key taken as each row's own position ordered them by row instead)."""
    from helpers import same_answer

    from analytics.lake.state import Lake
    from analytics.query.results import to_rows
    from analytics.views.catalog import ViewDef

    view = ViewDef("minute_country_click", "minute", ("country",), ("click",))
    table = duckdb.connect().sql(view.aggregate_sql(Lake.open(lake_dir).relation_sql())).to_arrow_table()
    # the clicks in view order, country as sorted int8 codes, as a serving copy holds them (keys by numpy)
    clicks = table.filter(pc.equal(table.column("type"), "click")).sort_by([("minute", "ascending"),
                                                                            ("country", "ascending")])
    words = pa.array(sorted(set(clicks.column("country").to_pylist())))
    codes = pc.index_in(clicks.column("country"), value_set=words).cast(pa.int8())
    at = clicks.schema.get_field_index("country")
    clicks = clicks.set_column(at, "country", pa.DictionaryArray.from_arrays(codes.combine_chunks(), words))
    arrow = ArrowView(view, {"click": [clicks.combine_chunks()]}, clicks.schema)
    raw = {"select": ["minute", "country", {"COUNT": "*"}], "from": "events",
           "where": [{"col": "type", "op": "eq", "val": "click"}],
           "group_by": ["minute", "country"],
           "order_by": [{"col": "minute", "dir": "desc"}, {"col": "country", "dir": "asc"}]}
    q = parse_query(raw)
    assert arrow._one_row_per_group(q)
    answer = arrow.answer(q)
    assert answer is not None and answer.num_rows > len(set(answer.column("minute").to_pylist()))  # ties on minute
    assert same_answer(q, to_rows(q, baseline_query(baseline, q)), to_rows(q, answer)) is None
