"""Differential tests: every query path answers exactly as the baseline (a DuckDB view over the raw CSVs).

Floats compare to relative 1e-9; row order is checked where order_by is given. The data has
boundary rows (midnight, 23:59:59.999, leap day, year end, week edges)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import EXAMPLES, TARGETED, check_against_baseline
from querygen import random_queries

from analytics.serving.router import LAKE
from analytics.views.catalog import CATALOG


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
