"""Property-based: whatever JSON an analyst writes, the parser either returns a `Query` that compiles,
or raises `QueryError` with a one-line message of bounded length; never another exception. The
same holds for whatever bytes a query file holds."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics.query.compiler import compile_query
from analytics.query.model import OPS, Query, QueryError, load_queries, parse_query
from analytics.query.schema import AGGREGATES, COLUMNS

SETTINGS = settings(max_examples=400, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MAX_MESSAGE = 600  # the longest message names every column as what is allowed

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**40), max_value=10**40)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["2024-01-01", "2024-02-30", "2024-03-01 14:00+02", "1e400", "-0", " 7", "NaN", "infinity",
                              "5877642-06-25 (BC)", "x'); DROP TABLE events; --", "US", "click"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                                 max_size=4), max_leaves=20)
columns = st.sampled_from([*COLUMNS, "nope", "", "*", "COUNT(*)"]) | json_values
aggregates = st.sampled_from([*AGGREGATES, *(a.lower() for a in AGGREGATES), "MEDIAN"])
select_items = columns | st.dictionaries(aggregates, columns, min_size=1, max_size=2)
values = scalars | st.lists(scalars, max_size=6) | json_values
conditions = st.fixed_dictionaries({"col": columns, "op": st.sampled_from([*OPS, "like", ""]) | json_values, "val": values},
                                   optional={"extra": json_values}) | json_values
order_items = columns | st.fixed_dictionaries({"col": columns}, optional={"dir": st.sampled_from(["asc", "DESC", "up"])
                                                                                | json_values})
query_like = st.fixed_dictionaries({}, optional={
    "select": st.lists(select_items, max_size=4) | json_values,
    "from": st.sampled_from(["events", "users"]) | json_values,
    "where": st.lists(conditions, max_size=4) | json_values,
    "group_by": st.lists(columns, max_size=3) | json_values,
    "order_by": st.lists(order_items, max_size=3) | json_values,
    "limit": st.integers(min_value=-5, max_value=2**64) | st.integers() | json_values,
    "bogus": json_values,
})

numeric = [c for c, col in COLUMNS.items() if col.numeric]
value_texts = st.sampled_from(["2024-01-01", "2024-03-01 14:00+02", "2024-06-30 10:00", "2024-02-30", "7", "-3", "2.5",
                               "US", "click", "1e3", "99999999999", ""]) | scalars


@st.composite
def near_valid(draw) -> dict:
    """Queries of the right shape with drawn values: most are valid, some values are not."""
    group_by = draw(st.lists(st.sampled_from(list(COLUMNS)), unique=True, max_size=2))
    aggs = draw(st.lists(st.sampled_from([{"COUNT": "*"}] + [{f: c} for f in AGGREGATES for c in numeric]),
                         min_size=0 if group_by else 1, max_size=3, unique_by=lambda d: json.dumps(d)))
    where = []
    for col in draw(st.lists(st.sampled_from(list(COLUMNS)), max_size=3)):
        op = draw(st.sampled_from(OPS))
        val = (draw(st.lists(value_texts, min_size=1, max_size=150)) if op == "in"
               else draw(st.lists(value_texts, min_size=2, max_size=2)) if op == "between" else draw(value_texts))
        where.append({"col": col, "op": op, "val": val})
    q = {"select": group_by + aggs, "from": "events", "where": where, "group_by": group_by}
    names = group_by + [f"{k}({v})" for a in aggs for k, v in a.items()]
    if names and draw(st.booleans()):
        q["order_by"] = [{"col": draw(st.sampled_from(names)), "dir": draw(st.sampled_from(["asc", "desc"]))}]
    if draw(st.booleans()):
        q["limit"] = draw(st.integers(min_value=-1, max_value=2**64))
    return q


def check(obj) -> None:
    try:
        q = parse_query(obj)
    except QueryError as exc:
        text = str(exc)
        assert text and "\n" not in text and len(text) <= MAX_MESSAGE, text
        return
    assert isinstance(q, Query)
    assert q.canonical() == parse_query(json.loads(json.dumps(obj))).canonical()
    for raw_values in (False, True):
        sql, params = compile_query(q, "events", raw_values=raw_values)
        assert sql.count("?") == len(params)


@SETTINGS
@given(query_like)
def test_query_shaped_json_is_a_query_or_a_query_error(obj):
    check(obj)


@SETTINGS
@given(near_valid())
def test_near_valid_queries_are_a_query_or_a_query_error(obj):
    check(obj)


@SETTINGS
@given(json_values)
def test_any_json_is_a_query_or_a_query_error(obj):
    check(obj)


@SETTINGS
@given(st.binary(max_size=200) | query_like.map(lambda q: json.dumps([q]).encode()))
def test_any_query_file_is_queries_or_a_query_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("qf") / "q.json"
    path.write_bytes(content)
    try:
        queries = load_queries(str(path))
    except QueryError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert isinstance(queries, list) and queries

