"""Differential tests: every query path answers exactly as the baseline (a DuckDB view over the raw CSVs).

Floats compare to relative 1e-9; row order is checked where order_by is given. The data has
boundary rows (midnight, 23:59:59.999, leap day, year end, week edges)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import check_against_baseline
from querygen import random_queries

from analytics.serving.router import LAKE
from analytics.views.catalog import CATALOG

EXAMPLES = json.loads((Path(__file__).parent.parent / "queries" / "examples.json").read_text())

# one query per catalog view, so each is proven by at least one differential comparison
TARGETED = {
    "mv_day_advertiser_id_wide": {"select": ["day", {"SUM": "bid_price"}], "from": "events", "group_by": ["day"],
                                  "where": [{"col": "advertiser_id", "op": "eq", "val": 7},
                                            {"col": "type", "op": "eq", "val": "impression"}]},
    "mv_day_country_wide": {"select": ["week", "country", {"COUNT": "*"}], "from": "events", "group_by": ["week", "country"],
                            "where": [{"col": "type", "op": "eq", "val": "click"}]},
    "mv_day_type_wide": {"select": ["week", {"AVG": "bid_price"}, {"MAX": "bid_price"}], "from": "events", "group_by": ["week"],
                         "order_by": [{"col": "week", "dir": "desc"}]},
    "mv_hour_advertiser_id_wide": {"select": ["hour", {"COUNT": "*"}], "from": "events", "group_by": ["hour"],
                                   "where": [{"col": "advertiser_id", "op": "in", "val": [3, "4"]},
                                             {"col": "day", "op": "eq", "val": "2024-02-29"}]},
    "mv_all_adv_type_counts": EXAMPLES[3],
    "mv_day_publisher_id_wide": {"select": ["publisher_id", {"SUM": "bid_price"}], "from": "events",
                                 "group_by": ["publisher_id"], "where": [{"col": "day", "op": "between", "val": ["2024-12-30", "2024-12-31"]}],
                                 "order_by": [{"col": "SUM(bid_price)", "dir": "desc"}], "limit": 5},
    "mv_day_country_publisher_id_wide": EXAMPLES[1],
    "mv_day_country_advertiser_id_wide": {"select": ["advertiser_id", {"COUNT": "*"}], "from": "events", "group_by": ["advertiser_id"],
                                          "where": [{"col": "country", "op": "eq", "val": "JP"},
                                                    {"col": "day", "op": "between", "val": ["2024-02-28", "2024-03-01"]}]},
    "mv_hour_type_wide": {"select": ["hour", {"COUNT": "*"}], "from": "events", "group_by": ["hour"],
                          "where": [{"col": "hour", "op": "between", "val": ["2024-12-31 00:00", "2024-12-31 23:00"]}]},
    "mv_hour_country_wide": {"select": ["hour", "country", {"SUM": "total_price"}], "from": "events", "group_by": ["hour", "country"],
                             "where": [{"col": "day", "op": "eq", "val": "2024-07-01"}, {"col": "type", "op": "eq", "val": "purchase"}]},
    "mv_minute_type_wide": EXAMPLES[4],
    "mv_all_country_publisher_id": {"select": ["country", "publisher_id", {"MIN": "bid_price"}, {"COUNT": "bid_price"}],
                                    "from": "events", "group_by": ["country", "publisher_id"],
                                    "order_by": [{"col": "COUNT(bid_price)", "dir": "desc"}], "limit": 10},
}


@pytest.mark.parametrize("i", range(len(EXAMPLES)))
def test_examples_match_baseline_from_views_and_lake(baseline, workbench, i):
    assert check_against_baseline(baseline, workbench, EXAMPLES[i]).route != LAKE
    assert check_against_baseline(baseline, workbench, EXAMPLES[i], use_views=False).route == LAKE


def test_every_catalog_view_answers_its_targeted_query(baseline, workbench):
    for name, query in TARGETED.items():
        assert check_against_baseline(baseline, workbench, query).route == name, name
        check_against_baseline(baseline, workbench, query, use_views=False)
    assert set(TARGETED) == {v.name for v in CATALOG}


def test_random_queries_of_the_whole_grammar_lake_matches_baseline(baseline, workbench):
    for raw in random_queries(320, seed=11):
        check_against_baseline(baseline, workbench, raw, use_views=False)


def test_cli_run_matches_baseline_under_a_non_utc_process_time_zone(raw_dir, lake_dir, tmp_path):
    queries = EXAMPLES + list(TARGETED.values()) + random_queries(60, seed=5)
    qfile = tmp_path / "queries.json"
    qfile.write_text(json.dumps(queries))
    env = {**os.environ, "TZ": "America/St_Johns"}  # UTC-3:30: shifts days and hours if anything leaks
    for cmd in (["run", "--lake", str(lake_dir), "--out", str(tmp_path / "views")],
                ["run", "--lake", str(lake_dir), "--out", str(tmp_path / "lake"), "--no-views"],
                ["baseline", "--raw", str(raw_dir), "--out", str(tmp_path / "base")]):
        subprocess.run([sys.executable, "-m", "analytics", *cmd, "--queries", str(qfile)], check=True, env=env,
                       capture_output=True)
    for actual in ("views", "lake"):
        out = subprocess.run([sys.executable, "-m", "analytics", "compare", "--queries", str(qfile), str(tmp_path / "base"),
                              str(tmp_path / actual)], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout
    run = json.loads((tmp_path / "views" / "run.json").read_text())
    assert all(e["route"] != LAKE for e in run["queries"][:5])
    assert all(e["route"] == LAKE for e in json.loads((tmp_path / "lake" / "run.json").read_text())["queries"])
