"""The query model: every validation error is precise, values coerce like DuckDB string literals,
and a hostile value stays a value."""
from __future__ import annotations

import datetime as dt

import pytest

from analytics.query.model import QueryError, parse_query

BASE = {"select": [{"COUNT": "*"}], "from": "events"}


def q(**kw):
    return {**BASE, **kw}


@pytest.mark.parametrize("query, message", [
    (q(select=["nope"], group_by=["nope"]), "unknown column 'nope'"),
    (q(select=[{"SUM": "country"}]), "SUM needs a numeric column, 'country' is not"),
    (q(select=[{"AVG": "day"}]), "AVG needs a numeric column"),
    (q(select=[{"MEDIAN": "bid_price"}]), "unknown aggregate 'MEDIAN'"),
    (q(select=[{"SUM": "*"}]), "only COUNT takes '*'"),
    (q(where=[{"col": "day", "op": "like", "val": "2024"}]), "unknown op 'like'"),
    (q(where=[{"col": "day", "op": "between", "val": ["2024-01-01"]}]), "needs exactly two values"),
    (q(where=[{"col": "day", "op": "between", "val": "2024-01-01"}]), "needs exactly two values"),
    (q(where=[{"col": "country", "op": "in", "val": "JP"}]), "'in' on 'country' needs a non-empty list"),
    (q(where=[{"col": "country", "op": "in", "val": []}]), "non-empty list"),
    (q(where=[{"col": "country", "op": "eq", "val": ["JP"]}]), "takes one value"),
    (q(where=[{"col": "country", "op": "eq", "val": None}]), "must be a string or a number"),
    (q(where=[{"col": "country", "op": "eq", "val": True}]), "must be a string or a number"),
    (q(where=[{"col": "country", "op": "eq"}]), "missing ['val']"),
    (q(select=["day", {"COUNT": "*"}]), "'day' neither grouped nor aggregated"),
    (q(order_by=[{"col": "day", "dir": "asc"}]), "'day' is not in the select list"),
    (q(order_by=[{"col": "COUNT(*)", "dir": "up"}]), "dir must be 'asc' or 'desc'"),
    (q(limit=0), "limit: must be a positive integer"),
    (q(limit=-3), "limit: must be a positive integer"),
    (q(limit="10"), "limit: must be a positive integer"),
    (q(limit=2.5), "limit: must be a positive integer"),
    ({**BASE, "from": "users"}, "unknown table 'users'"),
    ({"select": []}, "select: needs a non-empty list"),
    ({"selct": ["day"]}, "unknown key(s) ['selct']"),
    ([1, 2], "must be a JSON object"),
    (q(where=[{"col": "advertiser_id", "op": "eq", "val": "abc"}]), "'abc' for column 'advertiser_id' is not a valid INTEGER"),
    (q(where=[{"col": "day", "op": "eq", "val": "2024-02-30"}]), "not a valid DATE"),
    (q(where=[{"col": "hour", "op": "gt", "val": "noon"}]), "not a valid TIMESTAMPTZ"),
    (q(group_by=["day", "day"], select=["day"]), "listed more than once"),
])
def test_validation_errors_name_the_problem(query, message):
    with pytest.raises(QueryError) as exc:
        parse_query(query)
    assert message in str(exc.value)


def test_values_coerce_like_duckdb_string_literals():
    parsed = parse_query(q(where=[
        {"col": "advertiser_id", "op": "in", "val": [7, "8", " 9"]},
        {"col": "day", "op": "between", "val": ["2024-01-01", "2024-1-5"]},
        {"col": "hour", "op": "eq", "val": "2024-03-01 14:00+02"},
        {"col": "country", "op": "eq", "val": 7},
    ]))
    adv, day, hour, country = parsed.where
    assert adv.values == (7, 8, 9)
    assert day.values == (dt.date(2024, 1, 1), dt.date(2024, 1, 5))
    assert hour.values == (dt.datetime(2024, 3, 1, 12, 0),)  # TIMESTAMPTZ literal, read in UTC
    assert country.values == ("7",)


def test_canonical_form_ignores_where_order_and_value_spelling():
    a = parse_query(q(where=[{"col": "advertiser_id", "op": "eq", "val": 7},
                             {"col": "country", "op": "in", "val": ["JP", "US"]}]))
    b = parse_query(q(where=[{"col": "country", "op": "in", "val": ["US", "JP", "JP"]},
                             {"col": "advertiser_id", "op": "eq", "val": "7"}]))
    c = parse_query(q(where=[{"col": "advertiser_id", "op": "eq", "val": 8}]))
    assert a.canonical() == b.canonical()
    assert a.canonical() != c.canonical()


def test_output_names_and_order_by_aggregate_spelling():
    parsed = parse_query({"select": ["country", {"avg": "total_price"}], "from": "events", "group_by": ["country"],
                          "order_by": [{"col": "avg(total_price)", "dir": "DESC"}]})
    assert parsed.output_names == ["country", "AVG(total_price)"]
    assert parsed.order_by[0].name == "AVG(total_price)" and parsed.order_by[0].desc


def test_hostile_value_is_only_a_value(workbench):
    hostile = "x'); DROP TABLE events; --"
    parsed = parse_query(q(where=[{"col": "country", "op": "eq", "val": hostile}]))
    assert workbench.query(parsed).to_pylist() == [{"COUNT(*)": 0}]
    assert workbench.query(BASE).to_pylist()[0]["COUNT(*)"] > 0  # events is still there
    sql = workbench.plan(parsed).sql
    assert hostile not in sql and "DROP" not in sql
