"""Result cache: keyed by the canonical query and the lake and view versions; answers equal to computing
them; any `prepare` that changes the lake or `build` of a view invalidates it; bounded; persistent
across processes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pyarrow as pa
from helpers import fresh, tables_match
from querygen import random_queries

from analytics.batch.cache import CacheEntry, ResultCache, cache_key, content_stamp
from analytics.batch.runner import SafeBatchRunner
from analytics.lake.generator import generate
from analytics.lake.prepare import prepare
from analytics.query.model import parse_query
from analytics.serving.workbench import Workbench
from analytics.views.build import build

COUNT = {"select": [{"COUNT": "*"}], "from": "events"}
BY_TYPE = {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events", "group_by": ["type"]}
LAKE_Q = {"select": ["user_id", {"COUNT": "*"}], "from": "events", "group_by": ["user_id"],
          "where": [{"col": "type", "op": "eq", "val": "click"}, {"col": "day", "op": "gte", "val": "2024-03-01"}],
          "order_by": [{"col": "COUNT(*)", "dir": "desc"}, {"col": "user_id"}], "limit": 5}



def test_key_ignores_where_order_and_value_spelling():
    a = parse_query({"select": [{"COUNT": "*"}], "from": "events",
                     "where": [{"col": "advertiser_id", "op": "in", "val": [7, "8"]}, {"col": "day", "op": "eq", "val": "2024-03-01"}]})
    b = parse_query({"select": [{"COUNT": "*"}], "from": "events",
                     "where": [{"col": "day", "op": "eq", "val": "2024-03-01"}, {"col": "advertiser_id", "op": "in", "val": ["8", 7, 7]}]})
    c = parse_query({"select": [{"COUNT": "*"}], "from": "events",
                     "where": [{"col": "day", "op": "eq", "val": "2024-03-02"}, {"col": "advertiser_id", "op": "in", "val": [7, 8]}]})
    assert cache_key(a, "s") == cache_key(b, "s") != cache_key(c, "s")
    assert cache_key(a, "s") != cache_key(a, "t")
    entry = SimpleNamespace(version=1, lake_version="x", definition="d")  # what the stamp reads of a ViewEntry
    reg = {"v": entry}
    assert content_stamp("x", reg, True) != content_stamp("y", reg, True)
    assert content_stamp("x", reg, True) != content_stamp("x", {"v": SimpleNamespace(**{**vars(entry), "version": 2})}, True)
    assert content_stamp("x", reg, True) != content_stamp("x", reg, False)


def test_lru_is_bounded_in_bytes_and_entries():
    cache = ResultCache(max_bytes=4096, max_entries=3)
    t = pa.table({"x": list(range(64))})  # 512 bytes
    for i in range(5):
        cache.put(f"k{i}", CacheEntry(t, "lake"))
    assert len(cache) == 3 and cache.get("k0") is None and cache.get("k4") is not None
    cache.get("k2")  # recently used: survives the next eviction
    cache.put("k5", CacheEntry(t, "lake"))
    assert cache.get("k2") is not None and cache.get("k3") is None
    cache.put("big", CacheEntry(pa.table({"x": list(range(1000))}), "lake"))  # over a quarter: not cached
    assert cache.get("big") is None and cache.nbytes <= 4096


def test_cache_on_vs_off_identical_and_repeat_is_answered_from_cache(lake_copy):
    lake = fresh(lake_copy)
    raw = random_queries(150, seed=31) + random_queries(150, seed=32, view_shaped=True)
    with Workbench(lake) as wb:
        runner = SafeBatchRunner(wb, telemetry=False, persist_cache=False)
        first = runner.run(raw)
        second = runner.run(raw)
        off = runner.run(raw, use_cache=False)
        runner.close()
    ok = [i for i, e in enumerate(first.report["queries"]) if "error" not in e]
    assert len(ok) >= 250
    # duplicates inside a batch are answered once; everything else is computed on the first run
    assert all(not e["cache"] or e.get("same_as") for e in first.report["queries"] if "error" not in e)
    assert all(second.report["queries"][i]["cache"] for i in ok)
    assert not any(off.report["queries"][i]["cache"] for i in ok)
    assert second.report["lake_scans"] == 0 and off.report["lake_scans"] > 0
    for i in ok:
        q = parse_query(raw[i])
        assert second.tables[i] is first.tables[i] or tables_match(q, first.tables[i], second.tables[i]) is None
        why = tables_match(q, off.tables[i], second.tables[i])
        assert why is None, f"q{i + 1}: {why}\n{json.dumps(raw[i])}"
        assert second.report["queries"][i]["route"] == first.report["queries"][i]["route"]


def _count(result) -> int:
    return result.tables[0].column(0)[0].as_py()


def test_prepare_that_appends_data_invalidates(raw_dir, lake_copy, tmp_path):
    lake = fresh(lake_copy)
    raw = tmp_path / "raw"
    shutil.copytree(raw_dir, raw)
    with Workbench(lake) as wb:
        runner = SafeBatchRunner(wb, telemetry=False)
        before = runner.run([COUNT, BY_TYPE, LAKE_Q])
        assert runner.run([COUNT, BY_TYPE, LAKE_Q]).report["cache_hits"] == 3
        extra = tmp_path / "extra"
        generate(extra, 5_000, seed=99, parts=1, progress=False)
        shutil.copy(next(extra.glob("*.csv")), raw / "events_part_99999.csv")
        assert prepare(raw, lake, progress=False)["changed"]
        after = runner.run([COUNT, BY_TYPE, LAKE_Q])  # views are stale now: answered from the lake
        assert after.report["cache_hits"] == 0
        assert _count(after) == wb.lake.state["totals"]["rows_lake"] > _count(before)
        assert runner.run([COUNT, BY_TYPE, LAKE_Q]).report["cache_hits"] == 3
        runner.close()


def test_build_invalidates(lake_copy):
    lake = fresh(lake_copy)
    with Workbench(lake) as wb:
        runner = SafeBatchRunner(wb, telemetry=False)
        first = runner.run([COUNT, BY_TYPE])
        assert runner.run([COUNT, BY_TYPE]).report["cache_hits"] == 2
        build(lake, ["mv_day_type_wide"], force=True, progress=False)  # a new version of the view
        again = runner.run([COUNT, BY_TYPE])
        assert again.report["cache_hits"] == 0
        assert again.tables[0].equals(first.tables[0])
        runner.close()


def test_persists_across_processes_and_sweeps_stale_stamps(lake_copy, tmp_path):
    lake = fresh(lake_copy)
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps([COUNT, BY_TYPE, LAKE_Q, {"select": ["nope"], "from": "events"}]))

    def run(out: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "analytics", "run", "--lake", str(lake), "--queries", str(qfile),
                               "--out", str(tmp_path / out), "--no-telemetry"], capture_output=True, text=True)
        assert proc.returncode == 1, proc.stderr  # the invalid query fails, the others answer
        return json.loads((tmp_path / out / "run.json").read_text())

    first, second = run("a"), run("b")
    assert [e.get("cache") for e in first["queries"]] == [False, False, False, None]
    assert [e.get("cache") for e in second["queries"]] == [True, True, True, None]
    for i in (1, 2, 3):
        assert (tmp_path / "a" / f"q{i}.csv").read_text() == (tmp_path / "b" / f"q{i}.csv").read_text()
    stamps = [d.name for d in (lake / "_cache").iterdir()]
    assert len(stamps) == 1
    build(lake, ["mv_day_type_wide"], force=True, progress=False)
    third = run("c")
    assert [e.get("cache") for e in third["queries"]] == [False, False, False, None]
    assert [d.name for d in (lake / "_cache").iterdir()] != stamps  # the old content's answers are gone
    no_cache = subprocess.run([sys.executable, "-m", "analytics", "run", "--lake", str(lake), "--queries", str(qfile),
                               "--out", str(tmp_path / "d"), "--no-cache", "--no-telemetry"], capture_output=True, text=True)
    assert all(not e.get("cache") for e in json.loads((tmp_path / "d" / "run.json").read_text())["queries"])
    assert no_cache.returncode == 1
