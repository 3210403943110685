"""A build killed at each of its commit steps (`analytics.core.faults`): the previous views are still
served with exact answers, the next build completes, and nothing is counted twice.

The lake is prepared from three of the four raw parts and built, then the fourth part is
prepared in, so every view has an incremental refresh pending (the step where a delta could
count the old rows twice, or the new rows twice once registered). `analytics build` then runs in a subprocess with
`ANALYTICS_CRASH_AT=<point>` and `--jobs 1`, so the first view of the catalog dies at that step.
Answers are checked against the baseline over the four raw parts (the session's `baseline`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analytics.checks.baseline import baseline_query
from analytics.core.faults import ENV, POINTS
from analytics.lake.prepare import prepare
from analytics.query.model import parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.serving.router import LAKE, Router
from analytics.serving.workbench import Workbench
from analytics.views.build import build
from analytics.views.catalog import CATALOG
from analytics.views.registry import VIEWS_DIR, load_registry

BUILD_POINTS = [p for p in POINTS if p.startswith("build:")]
FIRST = CATALOG[0].name  # with --jobs 1 the catalog builds in order: the kill lands in the first view
MEASURES = [{"COUNT": "*"}, {"SUM": "bid_price"}, {"SUM": "total_price"}, {"MAX": "bid_price"}]


def per_type(*dims: str) -> dict:
    return {"select": ["type", *dims, *MEASURES], "from": "events", "group_by": ["type", *dims]}


@pytest.fixture(scope="module")
def pending_lake(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake whose views were built from three raw parts and which now holds all four."""
    base = tmp_path_factory.mktemp("crash")
    raw, lake = base / "raw", base / "lake"
    raw.mkdir()
    parts = sorted(raw_dir.glob("*.csv"))
    assert len(parts) == 4
    for p in parts[:3]:
        shutil.copy(p, raw / p.name)
    prepare(raw, lake, progress=False)
    assert not build(lake, progress=False)["failed"]
    shutil.copy(parts[3], raw / parts[3].name)
    assert prepare(raw, lake, progress=False)["changed"]
    return lake


def build_cli(lake: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if crash_at:
        env[ENV] = crash_at
    return subprocess.run([sys.executable, "-m", "analytics", "build", "--lake", str(lake), "--jobs", "1", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=900)


def assert_exact(wb: Workbench, baseline, raw: dict, plan=None) -> str:
    q = parse_query(raw)
    table, plan = wb.execute(q, plan=plan)
    reason = compare_rows(q, to_rows(q, baseline_query(baseline, q)), to_rows(q, table))
    assert reason is None, f"{plan.route}: {reason}\n{json.dumps(raw)}"
    return plan.route


def assert_every_view_exact(lake: Path, baseline) -> None:
    """Each view, forced as the only candidate, answers per type (and per day where it has days) like the baseline."""
    with Workbench(lake) as wb:
        for view in CATALOG:
            assert wb.health[view.name] is None, (view.name, wb.health[view.name])
            for raw in [per_type()] + ([per_type("day")] if "day" in view.group_columns else []):
                q = parse_query(raw)
                plan = Router((view,)).plan(q, wb.registry, wb.health, {view.name: wb.table_name(view.name)})
                assert plan.route == view.name
                assert assert_exact(wb, baseline, raw, plan) == view.name


@pytest.mark.parametrize("point", BUILD_POINTS)
def test_a_build_killed_at_each_commit_step(point, pending_lake, baseline, tmp_path):
    assert len(BUILD_POINTS) == 3
    lake = tmp_path / "lake"
    shutil.copytree(pending_lake, lake)
    before = load_registry(lake)
    vdir = lake / VIEWS_DIR / FIRST

    proc = build_cli(lake, crash_at=point)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])

    after = load_registry(lake)
    if point == "build:after-registry":
        assert after[FIRST].version == before[FIRST].version + 1 and after[FIRST].mode == "incremental"
        assert {n: e for n, e in after.items() if n != FIRST} == {n: e for n, e in before.items() if n != FIRST}
    else:
        assert after == before  # the registry still names the previous versions
        if point == "build:after-aggregate":
            assert list(vdir.glob(".staging-*"))  # killed with the new version staged, nothing promoted
        else:
            # the refresh's delta renamed into place, not registered
            assert (vdir / f"d{before[FIRST].version + 1}.parquet").is_file()

    # what is served now: exact, from the lake while a view is stale, from the new version once registered
    with Workbench(lake) as wb:
        routes = {assert_exact(wb, baseline, raw) for raw in (per_type(), per_type("day"), per_type("country"))}
        assert (FIRST in {n for n, why in wb.health.items() if why is None}) == (point == "build:after-registry")
    assert routes - {LAKE} <= ({FIRST} if point == "build:after-registry" else set())

    proc = build_cli(lake)
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = load_registry(lake)
    assert all(e.version == before[n].version + 1 for n, e in final.items())
    assert not list((lake / VIEWS_DIR).glob("*/.staging-*"))
    assert_every_view_exact(lake, baseline)  # no view counts the old parts twice
