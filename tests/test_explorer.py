"""The explorer of notebook 00 without a browser: widget values -> JSON query -> the answer shown.

Expected answers are counted here with DuckDB straight from the lake's Parquet files, not through
the workbench the explorer uses.
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import re
import urllib.parse
from pathlib import Path

import duckdb
import pytest

from analytics import Workbench, parse_query
from analytics.lake.table import latest_version
from analytics.reports import explorer as ex
from analytics.views.catalog import VIEWS
from analytics.views.registry import load_registry

ROWS = 4000


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from analytics.lake.generator import generate
    from analytics.lake.prepare import prepare
    from analytics.views.build import build

    root = tmp_path_factory.mktemp("explorer")
    generate(root / "raw", ROWS, seed=5, progress=False)
    prepare(root / "raw", root / "lake", progress=False)
    build(root / "lake", progress=False)
    return root / "lake"


@pytest.fixture(scope="module")
def wb(lake: Path) -> Workbench:
    with Workbench(lake) as w:
        yield w


def lake_count(lake: Path, where: str, params: list) -> dict:
    con = duckdb.connect()
    rows = con.execute(f"SELECT country, count(*) FROM read_parquet(?, hive_partitioning = true) WHERE {where} "
                       "GROUP BY country", [str(lake / "events" / "**" / "*.parquet"), *params]).fetchall()
    con.close()
    return dict(rows)


def test_query_builder() -> None:
    q = ex.explorer_query("impression", "2024-02-01", "2024-02-29", "advertiser_id", "SUM(bid_price)")
    assert q == {"select": ["advertiser_id", {"SUM": "bid_price"}], "from": "events",
                 "where": [{"col": "type", "op": "eq", "val": "impression"},
                           {"col": "day", "op": "between", "val": ["2024-02-01", "2024-02-29"]}],
                 "group_by": ["advertiser_id"],
                 "order_by": [{"col": "SUM(bid_price)", "dir": "desc"}, {"col": "advertiser_id", "dir": "asc"}],
                 "limit": ex.ENTITY_TOP}
    for g in ex.EXPLORER_GROUPINGS:
        for m in ex.EXPLORER_MEASURES:
            event_type = "purchase" if "total_price" in m else "impression"
            parse_query(ex.explorer_query(event_type, "2024-01-01", "2024-12-31", g, m, country="JP",
                                          advertiser_id="4, 9", publisher_id=7))  # all valid queries
    # top N: any N, or 0 / None for every advertiser
    assert ex.explorer_query("click", "2024-02-01", "2024-02-29", "publisher_id", "COUNT(*)", top=10)["limit"] == 10
    for everything in (0, None):
        assert "limit" not in ex.explorer_query("click", "2024-02-01", "2024-02-29", "publisher_id", "COUNT(*)",
                                                top=everything)


def test_query_builder_filters() -> None:
    q = ex.explorer_query("serve", "2024-01-01", "2024-01-31", "day", "COUNT(*)", country="DE", advertiser_id=" 12 ",
                          publisher_id="3, 5,8")
    assert q["where"][2:] == [{"col": "country", "op": "eq", "val": "DE"},
                              {"col": "advertiser_id", "op": "eq", "val": 12},
                              {"col": "publisher_id", "op": "in", "val": [3, 5, 8]}]
    assert q["order_by"] == [{"col": "day", "dir": "asc"}] and "limit" not in q
    # "all", None and empty text mean no filter
    for country, adv in ((None, None), ("all", ""), ("", " ")):
        assert len(ex.explorer_query("serve", "2024-01-01", "2024-01-31", "day", "COUNT(*)", country=country,
                                     advertiser_id=adv)["where"]) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"grouping": "minute"}, "grouping must be one of"),
    ({"measure": "MAX(ts)"}, "measure must be one of"),
    ({"event_type": "view"}, "event type must be one of"),
    ({"country": "XX"}, "country must be one of"),
    ({"advertiser_id": "12a"}, "advertiser_id: '12a' is not a whole number; allowed 1..1654"),
    ({"publisher_id": "0"}, "publisher_id: 0 is out of range; allowed 1..1114"),
])
def test_query_builder_errors(kwargs: dict, message: str) -> None:
    args = {"event_type": "serve", "start": "2024-01-01", "end": "2024-01-02", "grouping": "day",
            "measure": "COUNT(*)", **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        ex.explorer_query(**args)


@pytest.mark.parametrize("event_type, measure, message", [
    ("click", "SUM(bid_price)", "click events carry no bid_price: only impressions do"),
    ("serve", "AVG(bid_price)", "serve events carry no bid_price: only impressions do"),
    ("impression", "SUM(total_price)", "impression events carry no total_price: only purchases do"),
    ("click", "AVG(total_price)", "click events carry no total_price: only purchases do"),
])
def test_a_price_the_event_type_does_not_carry_is_refused(wb: Workbench, lake: Path, event_type: str, measure: str,
                                                          message: str) -> None:
    column = measure[4:-1]
    # the refusal states a fact of the data: that type's rows in the lake hold no value of the column
    assert lake_count(lake, f"type = ? AND {column} IS NOT NULL", [event_type]) == {}
    with pytest.raises(ex.Refused, match=re.escape(message)):
        ex.explorer_query(event_type, "2024-01-01", "2024-12-31", "day", measure)
    assert "only" in ex.measure_label(measure)  # the form names the type next to the measure
    assert ex.measure_label("COUNT(*)") == "COUNT(*)"


@pytest.mark.parametrize("start, end, message", [
    ("2024-03-02", "2024-03-01", "the from-date 2024-03-02 is after the to-date 2024-03-01"),
    (None, "2024-03-01", "pick both dates"),
    ("2024-03-01", "", "pick both dates"),
])
def test_a_reversed_or_empty_date_range_is_refused(start: str | None, end: str, message: str) -> None:
    with pytest.raises(ex.Refused, match=re.escape(message)):
        ex.explorer_query("serve", start, end, "day", "COUNT(*)")
    ex.explorer_query("serve", "2024-03-01", "2024-03-01", "day", "COUNT(*)")  # one day is a range


def test_the_top_n_cut_is_said_in_status_title_and_csv_name(wb: Workbench, lake: Path) -> None:
    per_advertiser = duckdb.connect().execute(
        "SELECT count(DISTINCT advertiser_id) FROM read_parquet(?, hive_partitioning = true) WHERE type = 'serve'",
        [str(lake / "events" / "**" / "*.parquet")]).fetchone()[0]
    assert per_advertiser > 10
    res = ex.answer(wb, ex.explorer_query("serve", "2024-01-01", "2024-12-31", "advertiser_id", "COUNT(*)", top=10))
    assert res["rows"] == 10 and res["groups"] == per_advertiser
    cut = f"top 10 of {per_advertiser:,} advertisers"
    assert res["status"].endswith(f" · {cut} by COUNT(*)")
    assert res["figure"].layout.title.text == f"COUNT(*) of serve events by advertiser_id, {cut}"
    assert 'download="serve_count_by_advertiser_id_top10.csv"' in res["csv_link"]
    everyone = ex.answer(wb, ex.explorer_query("serve", "2024-01-01", "2024-12-31", "advertiser_id", "COUNT(*)",
                                               top=None))
    assert everyone["rows"] == per_advertiser and "top" not in everyone["status"]
    assert 'download="serve_count_by_advertiser_id.csv"' in everyone["csv_link"]


def test_a_sparse_series_is_drawn_as_bars_a_dense_one_as_a_line(wb: Workbench) -> None:
    sparse = ex.answer(wb, ex.explorer_query("purchase", "2024-01-01", "2024-12-31", "day", "COUNT(*)"))
    assert 0 < sparse["rows"] < 366
    assert [t.type for t in sparse["figure"].data] == ["bar"]
    assert f"({sparse['rows']} of 366 days have events)" in sparse["figure"].layout.title.text
    dense = ex.answer(wb, ex.explorer_query("serve", "2024-01-01", "2024-03-31", "week", "COUNT(*)"))
    assert dense["rows"] == ex.periods("week", "2024-01-01", "2024-03-31") == 13  # Mondays 2024-01-01 .. 2024-03-25
    assert [t.type for t in dense["figure"].data] == ["scatter"] and dense["figure"].data[0].mode.startswith("lines")
    assert ex.periods("hour", "2024-03-01", "2024-03-02") == 48


def test_the_answer_table_is_styled(wb: Workbench) -> None:
    res = ex.answer(wb, ex.explorer_query("serve", "2024-01-01", "2024-12-31", "country", "COUNT(*)"))
    table = res["table_html"]
    assert "<style>" in table and 'class="explorer-answer"' in table and "border: 1px solid" in table
    assert '<th class="txt">country</th><th class="num">COUNT(*)</th>' in table
    biggest = int(res["frame"]["COUNT(*)"].max())
    assert f'<td class="num">{biggest:,}</td>' in table
    assert "explorer-download" in res["csv_link"] and "text-decoration:underline" in res["csv_link"]


def test_answer_shows_route_explanation_and_csv(wb: Workbench, lake: Path) -> None:
    q = ex.explorer_query("impression", "2024-01-01", "2024-12-31", "country", "COUNT(*)")
    res = ex.answer(wb, q)
    expected = lake_count(lake, "type = 'impression'", [])
    assert res["rows"] == len(expected) and res["route"] in VIEWS
    versions = (f"lake version {latest_version(lake)}, "
                f"view version {load_registry(lake)[res['route']].version}")
    assert re.fullmatch(rf"{len(expected)} row\(s\) via route {res['route']} \({versions}\) in \d+\.\d ms",
                        res["status"])
    assert res["explain"].startswith(f"route: {res['route']}\n")
    assert f"*candidate {res['route']}" in res["explain"] and "rejected mv_" in res["explain"]
    assert res["figure"].layout.title.text == "COUNT(*) of impression events by country"
    href = re.search(r'href="data:text/csv;charset=utf-8;base64,([^"]+)"', res["csv_link"]).group(1)
    header, *rows = list(csv.reader(io.StringIO(base64.b64decode(urllib.parse.unquote(href)).decode())))
    assert header == ["country", "COUNT(*)"]
    assert {c: int(n) for c, n in rows} == expected
    assert f"({len(expected)} rows, " in res["csv_link"] and 'download="impression_count_by_country.csv"' in res["csv_link"]


def test_explorer_form_runs_the_selection(wb: Workbench, lake: Path) -> None:
    form = ex.Explorer(wb, event_type="serve", start="2024-01-01", end="2024-12-31", grouping="day",
                       measure="COUNT(*)")
    first = form.run()
    assert first is not None and form.error is None and first["rows"] >= 300
    assert form.explain_box.value == ""  # explanation hidden until toggled
    form.event_type.value, form.grouping.value, form.country.value = "click", "country", "US"
    assert form.last is first  # nothing runs before Run is pressed
    form.run_button.click()
    assert form.last is not first and form.last["query"]["where"][2] == {"col": "country", "op": "eq", "val": "US"}
    assert form.last["rows"] == len(lake_count(lake, "type = 'click' AND country = 'US'", [])) == 1
    assert form.status.value == f"<b>{form.last['status']}</b>"
    kinds = [sorted(o["data"]) for o in form.chart.outputs]
    assert len(kinds) == 1 and "application/vnd.plotly.v1+json" in kinds[0]
    assert "<table" in form.table.value and "download=" in form.query_box.value
    form.explain_toggle.value = True
    assert form.explain_box.value.startswith(f"<pre>route: {form.last['route']}")


def test_explorer_form_shows_a_bad_selection(wb: Workbench) -> None:
    form = ex.Explorer(wb, event_type="serve", start="2024-01-01", end="2024-12-31", grouping="day",
                       measure="COUNT(*)", explain=True)
    assert form.run() is not None and form.explain_box.value
    form.advertiser_id.value = "abc"
    assert form.run() is None and form.last is None
    assert "color:#c62828" in form.status.value and "is not a whole number" in form.status.value
    assert form.chart.outputs == () and form.table.value == "" and form.explain_box.value == ""
    form.advertiser_id.value, form.end.value = "", None
    assert form.run() is None and "pick both dates" in form.error


def test_explorer_form_refuses_a_meaningless_selection(wb: Workbench) -> None:
    form = ex.Explorer(wb, event_type="impression", start="2024-01-01", end="2024-12-31", grouping="day",
                       measure="SUM(bid_price)")
    assert form.run() is not None and "<table" in form.table.value
    form.event_type.value = "click"
    assert form.run() is None and form.last is None
    assert "explorer-refused" in form.status.value and "click events carry no bid_price" in form.status.value
    assert form.chart.outputs == () and form.table.value == "" and form.query_box.value == ""
    form.event_type.value, form.start.value = "impression", form.end.value + dt.timedelta(days=1)
    assert form.run() is None and "is after the to-date" in form.error


def test_explorer_form_offers_top_n_for_advertisers_and_publishers_only(wb: Workbench) -> None:
    form = ex.Explorer(wb, event_type="serve", start="2024-01-01", end="2024-12-31", grouping="day",
                       measure="COUNT(*)")
    assert form.top.disabled and form.top.value == ex.ENTITY_TOP
    form.grouping.value = "publisher_id"
    assert not form.top.disabled
    form.top.value = 10
    assert form.run()["rows"] == 10 and "top 10 of" in form.status.value
    form.top.value = 0  # all rows
    assert form.run()["rows"] > 10 and "top" not in form.status.value
