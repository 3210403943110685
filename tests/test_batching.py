"""Superset batching: lake queries that scan the same data share one scan, and every answer derived
from the superset is the answer of the query run alone (and the baseline's), with the same column
types, so the CSV output does not change."""
from __future__ import annotations

import json
import random
from typing import Any

import pytest
from helpers import same_answer, tables_match
from querygen import random_query

from analytics.batch.runner import SafeBatchRunner
from analytics.batch.shared_scans import estimate_groups, plan_shared_scans
from analytics.checks.baseline import baseline_query
from analytics.query.model import parse_query
from analytics.query.results import to_rows
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench

# ---- related lake queries ------------------------------------------------------------------------
LAKE_WHERES = [
    [{"col": "type", "op": "eq", "val": "impression"}, {"col": "day", "op": "between", "val": ["2024-02-01", "2024-03-31"]}],
    [{"col": "type", "op": "in", "val": ["click", "purchase"]}],
    [{"col": "type", "op": "eq", "val": "serve"}, {"col": "day", "op": "between", "val": ["2024-06-01", "2024-06-30"]}],
    [{"col": "day", "op": "between", "val": ["2024-12-01", "2024-12-31"]}],
    [{"col": "type", "op": "eq", "val": "click"}, {"col": "country", "op": "in", "val": ["US", "JP"]}],
]
RESIDUALS = [
    {"col": "country", "op": "eq", "val": "DE"},
    {"col": "country", "op": "in", "val": ["US", "FR", "GB"]},
    {"col": "type", "op": "neq", "val": "serve"},
    {"col": "advertiser_id", "op": "lt", "val": 20},
    {"col": "day", "op": "eq", "val": "2024-02-29"},
    {"col": "bid_price", "op": "gt", "val": 2.5},  # no small domain: such a query scans alone
]
LAKE_DIMS = ["user_id", "minute", "day", "week", "hour", "type", "country", "advertiser_id", "publisher_id"]


def related_queries(n: int, seed: int) -> list[dict[str, Any]]:
    """Lake-only shapes (user_id, minute, MIN(ts), SUM(advertiser_id)...) over a few shared filters."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = random_query(rng)
        where = [dict(c) for c in rng.choice(LAKE_WHERES)]
        rng.shuffle(where)
        if rng.random() < 0.35:
            where.append(dict(rng.choice(RESIDUALS)))
        q["where"] = where
        if rng.random() < 0.3:  # a lake-only dimension or aggregate
            extra = rng.choice(["user_id", "minute"])
            gb = [g for g in q.get("group_by", []) if g != extra][:1] + [extra]
            aggs = [s for s in q["select"] if isinstance(s, dict)] or [{"COUNT": "*"}]
            q["select"], q["group_by"] = gb + aggs, gb
            q.pop("order_by", None)
        if rng.random() < 0.2:
            q["select"] = q["select"] + [{"MIN": "ts"}] if {"MIN": "ts"} not in q["select"] else q["select"]
        if rng.random() < 0.1:
            q = {"select": ["auction_id", "ts"], "from": "events", "where": where, "limit": 5,
                 "order_by": [{"col": "ts"}, {"col": "auction_id"}]}  # raw rows: never batched
        out.append(q)
    return out


# ---- pure planning -------------------------------------------------------------------------------
def _parsed(*raw):
    return [(i, parse_query(r)) for i, r in enumerate(raw)]


def test_same_filters_share_one_scan_whatever_the_order_and_spelling():
    w1 = [{"col": "type", "op": "eq", "val": "click"}, {"col": "advertiser_id", "op": "in", "val": [3, "4"]}]
    w2 = [{"col": "advertiser_id", "op": "in", "val": ["4", 3, 4]}, {"col": "type", "op": "eq", "val": "click"}]
    groups = plan_shared_scans(_parsed(
        {"select": ["day", {"COUNT": "*"}], "from": "events", "where": w1, "group_by": ["day"]},
        {"select": ["country", {"AVG": "bid_price"}], "from": "events", "where": w2, "group_by": ["country"]},
        {"select": [{"MIN": "ts"}, {"SUM": "advertiser_id"}], "from": "events", "where": w1},
    ))
    assert len(groups) == 1
    g = groups[0]
    assert g.size == 3 and not any(g.residuals)
    assert set(g.dims) == {"day", "country"}
    assert {(m.func, m.col) for m in g.measures} == {("count", "*"), ("sum", "bid_price"), ("count", "bid_price"),
                                                   ("min", "ts"), ("sum", "advertiser_id")}


def test_different_filters_share_only_through_residuals_on_small_domains():
    base = [{"col": "type", "op": "eq", "val": "impression"}]
    groups = plan_shared_scans(_parsed(
        {"select": ["day", {"COUNT": "*"}], "from": "events", "where": base, "group_by": ["day"]},
        {"select": ["day", {"COUNT": "*"}], "from": "events", "group_by": ["day"],
         "where": base + [{"col": "country", "op": "eq", "val": "JP"}]},
        {"select": ["day", {"COUNT": "*"}], "from": "events", "group_by": ["day"],
         "where": base + [{"col": "bid_price", "op": "gt", "val": 2}]},  # prices have no small domain
        {"select": ["auction_id"], "from": "events", "where": base, "limit": 3},  # raw rows
    ))
    sizes = sorted(g.size for g in groups)
    assert sizes == [1, 1, 2]
    shared = next(g for g in groups if g.size == 2)
    assert "country" in shared.dims and [len(r) for r in shared.residuals] == [0, 1]
    sql, params = shared.superset_sql()
    assert "OR" not in sql  # one member wants every common row: no extra filter
    sql1, params1 = shared.member_sql(1, "t")
    assert '"country" = ?' in sql1 and params1 == ["JP"]


def test_residual_or_and_pruning_hull():
    groups = plan_shared_scans(_parsed(
        {"select": ["country", {"COUNT": "*"}], "from": "events", "group_by": ["country"],
         "where": [{"col": "type", "op": "eq", "val": "click"}]},
        {"select": ["country", {"COUNT": "*"}], "from": "events", "group_by": ["country"],
         "where": [{"col": "type", "op": "in", "val": ["purchase", "click"]}]},
    ))
    assert len(groups) == 1
    sql, params = groups[0].superset_sql()
    assert '"type" IN (?, ?)' in sql and " OR " in sql
    assert params[:2] == ["click", "purchase"]


def test_cardinality_guard_keeps_huge_supersets_apart():
    rows_by_type = {"impression": 5_000_000, "serve": 10_000_000}
    groups = plan_shared_scans(_parsed(
        {"select": ["user_id", {"COUNT": "*"}], "from": "events", "group_by": ["user_id"]},
        {"select": ["minute", {"COUNT": "*"}], "from": "events", "group_by": ["minute"]},
    ), rows_by_type=rows_by_type)
    assert [g.size for g in groups] == [1, 1]  # user_id x minute would be about as large as the lake
    assert estimate_groups(["type", "country"], ()) == 48


def test_raw_row_queries_never_batch():
    raw = {"select": ["ts"], "from": "events", "where": [{"col": "type", "op": "eq", "val": "click"}], "limit": 2}
    groups = plan_shared_scans(_parsed(raw, raw, raw))
    assert [g.size for g in groups] == [1, 1, 1]


# ---- answers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lake_runner(lake_dir):
    """A runner over a workbench that answers from the lake only (nothing is written to the lake)."""
    wb = Workbench(lake_dir, use_views=False)
    # small data: let supersets be as large as the scan, so that sharing is exercised hard
    runner = SafeBatchRunner(wb, cache=False, telemetry=False, max_group_ratio=1.0)
    yield runner
    runner.close()
    wb.close()


def test_batching_on_vs_off_identical_and_equal_to_baseline(baseline, lake_runner):
    raw = related_queries(240, seed=3)
    queries = [parse_query(r) for r in raw]
    on = lake_runner.run(raw, batching=True)
    off = lake_runner.run(raw, batching=False, parallel=False)
    assert on.errors == 0 and off.errors == 0, [e for e in on.report["queries"] if "error" in e][:3]
    assert on.report["lake_queries"] == off.report["lake_queries"] == len(raw)
    assert off.report["lake_scans"] == len(raw)
    # related queries in batches of 20: most share a scan
    assert on.report["lake_scans"] <= 0.5 * len(raw), on.report["lake_scans"]
    shared = [e for e in on.report["queries"] if e["shared_scan"]]
    assert len(shared) >= len(raw) // 2
    for q, r, e, t_on, t_off in zip(queries, raw, on.report["queries"], on.tables, off.tables):
        why = tables_match(q, t_off, t_on)  # same types too, so the same CSV text
        assert why is None, f"{e}: {why}\n{json.dumps(r)}"
    for q, r, t_on in list(zip(queries, raw, on.tables))[::5]:  # and the reference, on a fifth of them
        why = same_answer(q, to_rows(q, baseline_query(baseline, q)), to_rows(q, t_on))
        assert why is None, f"{why}\n{json.dumps(r)}"


def test_every_aggregate_derives_exactly_including_empty_and_null_groups(baseline, lake_runner):
    where = [{"col": "type", "op": "eq", "val": "purchase"}, {"col": "day", "op": "between", "val": ["2024-03-01", "2024-03-10"]}]
    aggs = [{"COUNT": "*"}, {"COUNT": "bid_price"}, {"SUM": "total_price"}, {"AVG": "total_price"}, {"AVG": "user_id"},
            {"MIN": "bid_price"}, {"MAX": "total_price"}, {"SUM": "user_id"}, {"MIN": "minute"}, {"MAX": "hour"},
            {"COUNT": "user_id"}, {"SUM": "publisher_id"}]
    raw = [
        {"select": aggs, "from": "events", "where": where},
        {"select": ["user_id"] + aggs[:4], "from": "events", "where": where, "group_by": ["user_id"],
         "order_by": [{"col": "user_id", "dir": "desc"}], "limit": 7},
        {"select": ["day", "country"] + aggs[4:], "from": "events", "where": where, "group_by": ["day", "country"]},
        {"select": ["week"], "from": "events", "where": where, "group_by": ["week"]},
        # no rows at all: COUNT 0 and NULLs, one row, as unbatched
        {"select": aggs, "from": "events", "where": where + [{"col": "country", "op": "eq", "val": "ZZ"}]},
        {"select": ["country", {"COUNT": "*"}], "from": "events", "group_by": ["country"],
         "where": where + [{"col": "country", "op": "eq", "val": "ZZ"}]},
    ]
    on = lake_runner.run(raw)
    off = lake_runner.run(raw, batching=False)
    assert on.report["lake_scans"] == 1, on.report["batches"][0]["shared_scans"]
    for r, t_on, t_off in zip(raw, on.tables, off.tables):
        q = parse_query(r)
        assert t_on.schema == t_off.schema
        assert to_rows(q, t_on) == to_rows(q, t_off) or same_answer(q, to_rows(q, t_off), to_rows(q, t_on)) is None
        assert same_answer(q, to_rows(q, baseline_query(baseline, q)), to_rows(q, t_on)) is None, r
    assert on.tables[4].num_rows == 1 and to_rows(parse_query(raw[4]), on.tables[4])[0][0] == "0"
    assert on.tables[5].num_rows == 0


def test_view_routed_queries_do_not_batch(workbench):
    raw = [{"select": ["day", {"COUNT": "*"}], "from": "events", "group_by": ["day"]}] * 3
    runner = SafeBatchRunner(workbench, cache=False, telemetry=False)
    out = runner.run(raw)
    runner.close()
    assert out.report["lake_queries"] == 0 and out.report["lake_scans"] == 0
    assert all(e["route"] != LAKE for e in out.report["queries"])
