"""The query model: every validation error is precise, values coerce like DuckDB string literals,
and a hostile value stays a value."""
from __future__ import annotations

import datetime as dt
import json

import duckdb
import pytest

from analytics.checks.baseline import baseline_query
from analytics.query.compiler import INLINE_IN_VALUES, compile_query
from analytics.query.model import MAX_IN_VALUES, QueryError, _plain_value, load_queries, parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.query.schema import COLUMNS

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
    (q(limit=10**30), "limit: must be a positive integer no larger than 9223372036854775807 (2^63-1), got 1000000"),
    (q(where=[{"col": "day", "op": "in", "val": ["2024-01-01", "5877642-06-25 (BC)"] * 60}]),
     "where[0]: value '5877642-06-25 (BC)' for column 'day' is out of range for DATE"),
    (q(where=[{"col": "bid_price", "op": "in", "val": [str(i / 8) for i in range(300)] + ["cheap"]}]),
     "where[0]: value 'cheap' for column 'bid_price' is not a valid DOUBLE"),
    (q(where=[{"col": "user_id", "op": "eq", "val": 10**5000}]), "more than 4300 digits"),
    (q(where=[{"col": "country", "op": "eq", "val": {"x": "y" * 10**6}}]), 'got {"x": "yyyyyyyyyy'),
    (q(where=[{"col": "user_id", "op": "in", "val": list(range(MAX_IN_VALUES + 1))}]),
     "where[0]: 'in' on 'user_id' holds 1,000,001 values; a query may hold at most 1,000,000 in all"),
    (q(where=[{"col": "user_id", "op": "in", "val": list(range(MAX_IN_VALUES // 2))},
              {"col": "advertiser_id", "op": "in", "val": list(range(MAX_IN_VALUES // 2 + 1))}]),
     "where[1]: 'in' on 'advertiser_id' holds 500,001 values; a query may hold at most 1,000,000 in all"),
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


@pytest.mark.parametrize("text", [
    "2024-03-04", "2024-03-04 00:00:00", "2024-03-04T23:59:59", "2024-02-29 12:30", "2024-12-31 23:59:59",
    "2023-02-29", "2024-04-31", "2024-03-04 24:00:00", "2024-03-04 23:59:60", "2024-03-04 25:00", "0000-01-01",
    "9999-12-31 23:59:59", "0001-01-01", "2024-13-01", "2024-00-10"])
def test_timestamps_read_without_duckdb_equal_duckdb_casts(text):
    """A plainly written timestamp is read by Python; DuckDB's own cast in a UTC session is the oracle."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    expected = con.execute("SELECT TRY_CAST(? AS TIMESTAMPTZ)", [text]).fetchone()[0]
    # DuckDB renders a timestamp Python cannot hold (year 0) as text: out of range for the product
    expected = expected.astimezone(dt.timezone.utc).replace(tzinfo=None) if isinstance(expected, dt.datetime) else None
    plain = _plain_value(COLUMNS["week"], text)
    assert plain is None or plain == expected, (text, plain, expected)
    try:
        (parsed,) = parse_query(q(where=[{"col": "week", "op": "eq", "val": text}])).where
    except QueryError:
        assert expected is None
    else:
        assert parsed.values == (expected,)


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


def test_messages_quote_a_bounded_part_of_a_huge_value():
    with pytest.raises(QueryError) as exc:
        parse_query(q(select=[["day"] * 1_000_000]))
    assert len(str(exc.value)) < 300 and "\n" not in str(exc.value)


def test_long_in_lists_are_one_list_parameter_and_answer_like_the_baseline(workbench, baseline):
    users = list(range(0, 1_000_000, 3))
    days = [f"2024-{m:02d}-{d:02d}" for m in range(1, 13) for d in range(1, 29, 2)]
    hours = [f"2024-03-{d:02d} {h:02d}:00:00+00" for d in range(1, 11) for h in range(24)]
    prices = [str(r[0]) for r in baseline.execute(
        "SELECT DISTINCT bid_price FROM events WHERE bid_price IS NOT NULL ORDER BY 1 LIMIT 300").fetchall()]
    queries = [
        {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events", "group_by": ["type"],
         "where": [{"col": "user_id", "op": "in", "val": users}]},
        {"select": ["day", {"COUNT": "*"}], "from": "events", "group_by": ["day"],
         "where": [{"col": "day", "op": "in", "val": days}, {"col": "country", "op": "in", "val": ["US", "JP"] * 80}]},
        {"select": ["hour", {"COUNT": "*"}], "from": "events", "group_by": ["hour"],
         "where": [{"col": "hour", "op": "in", "val": hours}]},
        {"select": [{"COUNT": "*"}, {"MAX": "bid_price"}], "from": "events",
         "where": [{"col": "bid_price", "op": "in", "val": prices}]},
    ]
    for raw in queries:
        query = parse_query(raw)
        assert all(len(c.values) > INLINE_IN_VALUES for c in query.where)
        for raw_values in (False, True):
            sql, params = compile_query(query, "events", raw_values=raw_values)
            assert sql.count("?") == len(query.where) and "unnest" in sql
        expected = to_rows(query, baseline_query(baseline, query))
        assert any(row[-1] not in ("0", "") for row in expected)  # the filters keep rows
        for use_views in (True, False):
            table, plan = workbench.execute(query, use_views=use_views)
            reason = compare_rows(query, expected, to_rows(query, table))
            assert reason is None, f"{plan.route}: {reason}\n{json.dumps(raw)[:200]}"


@pytest.mark.parametrize("content, message", [
    (b"[" * 100_000, "nests JSON deeper than 100 levels at line 1 column 101"),
    (b'[{"select": ["day"],\n "from": "ev\xffents"}]', "is not UTF-8 text: byte 0xff at line 2 column 13"),
    (b"[" + b"7" * 5000 + b"]", "holds a number with more than 4300 digits at line 1 column 2"),
    (b"", "is not valid JSON"),
    (b"\xef\xbb\xbf[]", "holds no queries"),  # a byte-order mark is fine
])
def test_query_files_that_cannot_be_read_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "q.json"
    path.write_bytes(content)
    with pytest.raises(QueryError) as exc:
        load_queries(str(path))
    assert message in str(exc.value) and str(path) in str(exc.value)
    with pytest.raises(QueryError, match="is a directory; expected a JSON file"):
        load_queries(str(tmp_path))
