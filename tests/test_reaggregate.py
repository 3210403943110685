"""The numpy re-aggregation of view answers (`views.answer.reaggregate`) on view rows the generated data
rarely holds: NULL partials (a type's price missing on some days), pieces that are slices of a
larger batch (validity bitmaps at an offset), a type's file with its own country dictionary, and
a key repeated across pieces (a base and its delta). Each answer is checked against DuckDB running
the router's SQL for that view over the very same rows."""
from __future__ import annotations

import datetime as dt
import random

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from querygen import random_queries

from analytics.core import db
from analytics.query.model import parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.views.answer import reaggregate
from analytics.views.answer.fastpath import ArrowView
from analytics.views.catalog import VIEWS, compile_for_view, coverage

VIEW = VIEWS["mv_day_country_wide"]
COUNTRIES = ["CA", "DE", "FR", "GB", "US"]


def _rows(rng: random.Random, t: str) -> pa.Table:
    """One type's view rows over 40 days of 2024, sorted by day then country, prices partly NULL."""
    days, countries, cnt, cols = [], [], [], {f"{k}_{m}": [] for m in ("bid_price", "total_price")
                                              for k in ("nn", "sum", "min", "max")}
    own = COUNTRIES if t != "purchase" else ["DE", "US"]  # its file's dictionary holds only these
    for d in range(40):
        day = dt.date(2024, 2, 10) + dt.timedelta(days=d)  # across the leap day and a month end
        for c in own:
            if rng.random() < 0.2:
                continue
            days.append(day)
            countries.append(c)
            n = rng.randint(1, 9)
            cnt.append(n)
            for m in ("bid_price", "total_price"):
                held = (m == "bid_price") == (t == "impression") and rng.random() > 0.25  # else NULL
                nn = rng.randint(1, n) if held else 0
                cols[f"nn_{m}"].append(nn)
                cols[f"sum_{m}"].append(rng.randint(0, 10**7) if held else None)
                cols[f"min_{m}"].append(rng.randint(0, 999) / 100 if held else None)
                cols[f"max_{m}"].append(rng.randint(1000, 1999) / 100 if held else None)
    day = pa.array(days, pa.date32())
    week = pa.array([x - dt.timedelta(days=x.weekday()) for x in days], pa.date32())
    return pa.table({
        "type": pa.array([t] * len(days)).dictionary_encode(),
        "day": day, "week": week,
        "country": pa.array(countries).dictionary_encode(),
        "cnt": pa.array(cnt, pa.int64()),
        **{k: pa.array(v, pa.int64() if k[:3] in ("nn_", "sum") else pa.float64()) for k, v in cols.items()},
    })


@pytest.fixture(scope="module")
def view_and_sql():
    rng = random.Random(3)
    tables = {t: _rows(rng, t) for t in ("click", "impression", "purchase", "serve")}
    pieces = {}
    for t, table in tables.items():
        # each type as two slices of its batch (offsets into its buffers and bitmaps), the second
        # starting mid-day so that a (day, country) key may appear in both: re-aggregated
        cut = table.num_rows // 2
        pieces[t] = [table.slice(0, cut), table.slice(cut)]
    whole = pa.concat_tables(list(tables.values()), promote_options="permissive")  # dictionaries unified
    view = ArrowView(VIEW, pieces, whole.schema, unique_keys=False)
    con = duckdb.connect()
    con.register("view_rows", whole)
    return view, con


def test_numpy_re_aggregation_equals_duckdb_over_the_same_rows(view_and_sql):
    view, con = view_and_sql
    by_numpy = checked = 0
    for raw in random_queries(600, seed=17, view_shaped=True):
        q = parse_query(raw)
        if coverage(VIEW, q) is not None:
            continue
        got = view.answer(q)
        if got is None:
            continue
        shape = view._shape(q)
        selections = view._selections(q, shape)
        by_numpy += view._answer_numpy(q, shape, selections) is not None
        sql, params = compile_for_view(q, VIEW, "view_rows")
        expected = db.fetch_arrow(con, sql, params)
        reason = compare_rows(q, to_rows(q, expected), to_rows(q, got))
        assert reason is None, f"{reason}\n{raw}\n{sql}"
        checked += 1
    assert checked >= 100 and by_numpy >= 0.6 * checked, (checked, by_numpy)


def test_nulls_of_a_sliced_partial_are_read_at_its_offset(view_and_sql):
    view, _ = view_and_sql
    piece = view.slices["impression"][1]  # the second slice: its bitmap starts mid-byte
    col = piece.partial("sum_bid_price")
    arrow = piece.table.column("sum_bid_price").chunk(0)
    assert arrow.offset > 0 and arrow.null_count > 0
    assert col.valid.tolist() == arrow.is_valid().to_pylist()
    assert piece.column("sum_bid_price") is None  # a column with NULLs is never a key or a filter


def test_too_sparse_a_key_product_is_left_to_arrow():
    keys = [reaggregate.Key("advertiser_id", np.array([1, 10**9], dtype=np.int64), pa.int64())]
    assert reaggregate._dense(keys, 2) is None
    keys = [reaggregate.Key("advertiser_id", np.array([5, 9, 5], dtype=np.int64), pa.int64())]
    idx, cells, shape = reaggregate._dense(keys, 3)
    assert cells == 5 and idx.tolist() == [0, 4, 0]


def test_a_cold_run_of_view_queries_imports_neither_pandas_nor_acero_nor_the_build(lake_dir, tmp_path):
    """What a new `analytics run` imports is most of its wall time on a cold start: view answers
    are built over numpy buffers (no pandas), re-aggregated without Acero, and the CLI leaves the
    prepare and build machinery to the commands that use them."""
    import json
    import subprocess
    import sys

    queries = tmp_path / "q.json"
    queries.write_text(json.dumps([
        {"select": ["type", {"COUNT": "*"}], "from": "events", "group_by": ["type"]},
        {"select": ["day", "country", {"SUM": "bid_price"}, {"AVG": "bid_price"}], "from": "events",
         "where": [{"col": "type", "op": "eq", "val": "impression"}], "group_by": ["day", "country"],
         "order_by": [{"col": "SUM(bid_price)", "dir": "desc"}], "limit": 5},
        {"select": ["minute", {"COUNT": "*"}], "from": "events",
         "where": [{"col": "type", "op": "eq", "val": "click"}, {"col": "day", "op": "eq", "val": "2024-03-01"}],
         "group_by": ["minute"], "order_by": [{"col": "COUNT(*)", "dir": "desc"}], "limit": 3},
    ]))
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['analytics', 'run', '--lake', {str(lake_dir)!r}, '--queries', {str(queries)!r},"
        f" '--out', {str(tmp_path / 'out')!r}, '--no-cache', '--no-telemetry']\n"
        "try:\n    runpy.run_module('analytics', run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "mods = ('pandas', 'pyarrow.acero', 'analytics.lake.prepare', 'analytics.views.build')\n"
        "print([m for m in mods if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    assert all(q["route"] != "lake" for q in report["queries"]), report["queries"]
