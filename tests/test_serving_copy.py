"""Serving copies: a view is opened by memory-mapping, a query reads only the rows it needs, an old
mapping survives the promotion of a new version, and opening one view never waits for another."""
from __future__ import annotations

import subprocess
import sys
import threading

import duckdb
import pytest

from analytics.checks.baseline import baseline_query
from analytics.query.model import parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench
from analytics.views.answer.fastpath import ArrowView
from analytics.views.registry import load_registry

HOUR_ADV_Q = {"select": ["hour", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events", "group_by": ["hour"],
              "where": [{"col": "advertiser_id", "op": "in", "val": [354, 720, 1051]},  # with rows that day
                        {"col": "day", "op": "eq", "val": "2024-02-29"}]}
DAY_Q = {"select": ["day", {"SUM": "bid_price"}, {"COUNT": "*"}], "from": "events",
         "where": [{"col": "type", "op": "eq", "val": "impression"}], "group_by": ["day"]}


def _expect(baseline, raw):
    q = parse_query(raw)
    return q, to_rows(q, baseline_query(baseline, q))


def test_a_cold_view_query_reads_only_the_rows_of_its_day(lake_dir, monkeypatch):
    """The fast path narrows each piece to the rows its time filters leave (binary searches), and
    every later step (the first dimension's runs, the masks, the take) reads only that span
    (`ArrowView._dim_runs` is given it): on a newly opened view, a one-day query's spans hold
    exactly that day's rows, a small share of the view, and the answer is the lake's."""
    name = "mv_hour_advertiser_id_wide"
    spans = []
    runs = ArrowView._dim_runs

    def recording(self, piece, lo, hi, rest):  # noqa: ANN001, ANN202 - _dim_runs' own signature
        spans.append((piece.table.num_rows, lo, hi))
        return runs(self, piece, lo, hi, rest)

    monkeypatch.setattr(ArrowView, "_dim_runs", recording)
    with Workbench(lake_dir) as wb:
        table, plan = wb.execute(HOUR_ADV_Q)
        assert plan.route == name and table.num_rows > 0
        lake_table, lake_plan = wb.execute(HOUR_ADV_Q, use_views=False)
    assert lake_plan.route == LAKE
    q = parse_query(HOUR_ADV_Q)
    assert compare_rows(q, to_rows(q, lake_table), to_rows(q, table)) is None
    entry = load_registry(lake_dir)[name]
    (day_rows,) = duckdb.connect().execute(
        f"SELECT count(*) FROM read_parquet('{lake_dir / entry.file}') WHERE CAST(hour AS DATE) = DATE '2024-02-29'"
    ).fetchone()
    assert sum(hi - lo for _, lo, hi in spans) == day_rows > 0, spans
    assert day_rows * 100 < entry.rows  # one day of 366


def test_a_mapped_version_stays_valid_while_another_process_promotes_new_ones(lake_copy, baseline):
    q, expected = _expect(baseline, DAY_Q)
    wb = Workbench(lake_copy)
    table, plan = wb.execute(q)
    assert plan.route == "mv_day_type_wide"
    old_view = wb._arrow[wb.table_name("mv_day_type_wide")]
    entry = load_registry(lake_copy)["mv_day_type_wide"]
    old_file = (lake_copy / entry.file).parent / entry.serving["types"]["impression"]["file"]
    for _ in range(3):  # three new versions: the first one's files are swept (unlinked) meanwhile
        subprocess.run([sys.executable, "-m", "analytics", "build", "--lake", str(lake_copy), "--quiet", "--views",
                        "mv_day_type_wide", "--force"], check=True, capture_output=True)
    assert not old_file.exists()
    assert compare_rows(q, expected, to_rows(q, old_view.answer(q))) is None  # the old mapping still reads
    table, plan = wb.execute(q)
    assert plan.route == "mv_day_type_wide" and wb.table_name("mv_day_type_wide").endswith("__v4")
    assert compare_rows(q, expected, to_rows(q, table)) is None


def test_opening_one_view_never_waits_for_another(lake_copy, baseline):
    wb = Workbench(lake_copy)
    busy = wb.table_name("mv_hour_type_wide")
    lock = wb._open_locks.setdefault(busy, threading.Lock())
    q, expected = _expect(baseline, DAY_Q)
    done: list[object] = []
    with lock:  # another thread is (forever) opening mv_hour_type_wide
        worker = threading.Thread(target=lambda: done.append(wb.execute(q)))
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive(), "a query on another view waited for this view's open"
    table, plan = done[0]
    assert plan.route == "mv_day_type_wide"
    assert compare_rows(q, expected, to_rows(q, table)) is None


@pytest.mark.parametrize("name", ["mv_day_country_wide", "mv_minute_type_wide"])
def test_serving_copy_holds_each_type_as_time_sorted_batches(lake_dir, name):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    entry = load_registry(lake_dir)[name]
    for t, rec in entry.serving["types"].items():
        reader = ipc.open_file(pa.memory_map(str((lake_dir / entry.file).parent / rec["file"])))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        assert sum(b.num_rows for b in batches) == entry.rows_by_type[t]
        types = pa.concat_arrays([b.column("type").dictionary_decode() for b in batches])
        assert set(types.to_pylist()) == {t}
        key = pa.concat_arrays([b.column(entry.grain) for b in batches]).to_pylist()
        assert key == sorted(key)
        assert reader.schema.field("type").type.index_type == pa.int8()
        price = "bid_price" if t == "impression" else "total_price" if t == "purchase" else None
        assert [f.name for f in reader.schema if f.name.startswith("sum_")] == ([f"sum_{price}"] if price else [])
        if price:
            assert reader.schema.field(f"sum_{price}").type == pa.int64()


def test_a_parquet_version_out_of_time_order_gets_no_serving_copy(lake_dir, tmp_path):
    import duckdb

    from analytics.views.catalog import VIEWS
    from analytics.views.serving_copy import ServingError, write_serving_copy

    entry = load_registry(lake_dir)["mv_hour_type_wide"]
    shuffled = tmp_path / "v9.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * FROM read_parquet('{lake_dir / entry.file}') ORDER BY type, hour DESC) "
                f"TO '{shuffled}' (FORMAT parquet)")
    with pytest.raises(ServingError, match="not sorted by type then hour"):
        write_serving_copy(con, VIEWS["mv_hour_type_wide"], shuffled, tmp_path / "v9", entry.rows_by_type, [])
    assert not list(tmp_path.glob("*.arrow")) and not list(tmp_path.glob(".staging-*"))
