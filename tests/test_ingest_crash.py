"""`analytics ingest` killed (SIGKILL) at each named crash point of its steps (`core.faults`):
the state served afterwards is the last committed one, exact, and a restart ends with every part
counted once (none twice, none lost), checked by counts against the baseline over the raw CSVs.

A lake ingested from two parts gets a third part appended, or its second part replaced; the
ingest runs in a subprocess with `ANALYTICS_CRASH_AT=<point>` and `--jobs 1`, so a build point
lands in the first view refreshed (the smallest: ingest refreshes views smallest first), and each
kill is checked to have landed mid-step.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analytics.checks.baseline import baseline_query, connect_baseline
from analytics.core.faults import ENV
from analytics.lake.generator import generate
from analytics.lake.landing import TAKEN_DIR
from analytics.lake.state import Lake
from analytics.query.model import parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.serving.router import LAKE, Router, coverage
from analytics.serving.workbench import Workbench
from analytics.views.catalog import CATALOG
from analytics.views.ingest import ingest
from analytics.views.registry import VIEWS_DIR, load_registry

MEASURES = [{"COUNT": "*"}, {"SUM": "bid_price"}, {"MIN": "bid_price"}, {"MAX": "total_price"}]
QUERIES = [
    {"select": ["type", *MEASURES], "from": "events", "group_by": ["type"]},
    {"select": ["type", "day", *MEASURES], "from": "events", "group_by": ["type", "day"]},
    {"select": ["country", *MEASURES], "from": "events", "group_by": ["country"]},
]
PREPARE_POINTS = ["ingest:after-take", "prepare:after-stage", "prepare:mid-rename",
                  "prepare:after-rename-before-commit", "commit:before-delta", "commit:after-delta",
                  "prepare:after-commit"]
BUILD_POINTS = ["build:after-aggregate", "build:after-rename-before-registry", "build:after-registry"]
CASES = [("append", p) for p in PREPARE_POINTS + BUILD_POINTS] + [("replace", p) for p in
                                                                  ["commit:after-delta", "prepare:after-commit",
                                                                   *BUILD_POINTS]]
P = [f"events_part_0000{i}.csv" for i in range(3)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("ingest-crash")
    generate(base / "gen", 36_000, seed=41, parts=3, progress=False)
    generate(base / "other", 7_000, seed=42, parts=1, progress=False)
    landing, lake = base / "landing", base / "lake"
    landing.mkdir()
    for name in P[:2]:
        shutil.copy2(base / "gen" / name, landing / name)
    ingest(landing, lake, settle=0)
    sets = {"old": {P[0]: base / "gen" / P[0], P[1]: base / "gen" / P[1]}}
    sets["append"] = {**sets["old"], P[2]: base / "gen" / P[2]}
    sets["replace"] = {P[0]: base / "gen" / P[0], P[1]: base / "other" / "events_part_00000.csv"}
    expected = {}
    for key, files in sets.items():
        raw = base / f"raw-{key}"
        raw.mkdir()
        for name, src in files.items():
            shutil.copy(src, raw / name)
        con = connect_baseline(raw, materialize=True)
        expected[key] = [to_rows(q, baseline_query(con, q)) for q in map(parse_query, QUERIES)]
        con.close()
    return {"landing": landing, "lake": lake, "sets": sets, "expected": expected}


def ingest_cli(landing: Path, lake: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if crash_at:
        env[ENV] = crash_at
    return subprocess.run([sys.executable, "-m", "analytics", "ingest", "--raw", str(landing), "--lake", str(lake),
                           "--settle", "0", "--jobs", "1", "--quiet"], capture_output=True, text=True, env=env,
                          timeout=900)


def sources(lake: Path) -> set[str]:
    return {s["source"]["file"] for s in Lake.open(lake).state["segments"]}


def assert_served(lake: Path, expected: list, *, every_view: bool = False) -> set[str]:
    """The Workbench answers exactly `expected` (the baseline of one set of parts); the routes used."""
    routes = set()
    with Workbench(lake) as wb:
        for raw, rows in zip(QUERIES, expected):
            q = parse_query(raw)
            table, plan = wb.execute(q)
            assert compare_rows(q, rows, to_rows(q, table)) is None, (plan.route, raw)
            routes.add(plan.route)
            if every_view:  # each view alone: none counts a part twice
                for view in CATALOG:
                    if coverage(view, q) is not None:
                        continue
                    forced = Router((view,)).plan(q, wb.registry, wb.health, {view.name: wb.table_name(view.name)})
                    assert forced.route == view.name, forced.fallback_reason
                    table, _ = wb.execute(q, plan=forced)
                    assert compare_rows(q, rows, to_rows(q, table)) is None, (view.name, raw)
    return routes


@pytest.mark.parametrize("scenario,point", CASES)
def test_ingest_killed_mid_step_serves_the_last_commit_and_resumes_without_duplicates(world, scenario, point, tmp_path):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    shutil.copytree(world["landing"], landing)
    shutil.copytree(world["lake"], lake)
    before = load_registry(lake)
    first = min(before, key=lambda n: (before[n].rows, n))
    new_name = P[2] if scenario == "append" else P[1]
    tmp = landing / f"{new_name}.tmp"
    shutil.copy(world["sets"][scenario][new_name], tmp)
    tmp.rename(landing / new_name)

    proc = ingest_cli(landing, lake, crash_at=point)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])

    # where it died: mid-step, the step's durable result not yet (or only just) there
    after = load_registry(lake)
    committed = "old" if point in PREPARE_POINTS[:-2] else scenario  # the last two: the Delta log has it
    assert sources(lake) == set(world["sets"][committed])
    if point == "ingest:after-take":
        assert (lake / TAKEN_DIR / new_name).is_file()
    if point in PREPARE_POINTS:
        assert after == before
    vdir = lake / VIEWS_DIR / first
    if point == "build:after-aggregate":
        assert after == before and list(vdir.glob(".staging-*"))
    elif point == "build:after-rename-before-registry":
        kind = "d" if scenario == "append" else "v"
        assert after == before and (vdir / f"{kind}{before[first].version + 1}.parquet").is_file()
    elif point == "build:after-registry":
        assert after[first].lake_version == Lake.open(lake).data_version
        assert {n: e for n, e in after.items() if n != first} == {n: e for n, e in before.items() if n != first}

    routes = assert_served(lake, world["expected"][committed])
    if point != "build:after-registry" and committed != "old":
        assert routes == {LAKE}  # the views are stale: the lake answers, never a stale view

    proc = ingest_cli(landing, lake)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sources(lake) == set(world["sets"][scenario])
    assert_served(lake, world["expected"][scenario], every_view=True)
    final = load_registry(lake)
    assert all(e.lake_version == Lake.open(lake).version for e in final.values())
    assert not list((lake / VIEWS_DIR).glob("*/.staging-*"))
