"""The notebooks, run by papermill on small generated data: what they compute, and that their reports render.

`make reports` on the clean data set runs every notebook once with its defaults (the lake and raw
data named): the run the suite makes of each notebook as committed, and the one the tests of those
parameters read. Other parameter sets run once each (a few seconds); the tests assert on the
values a notebook glued with scrapbook, not only that it ran. Every report is opened in real
headless Chromium, offline, and must show its plotly charts drawn. No notebook's prose may promise
what it does not do yet ("filled in when X lands").
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import nbformat
import pytest
import scrapbook as sb

from analytics.lake.prepare import prepare
from analytics.lake.state import Lake
from analytics.reports import notebooks as rep
from analytics.views.catalog import VIEWS

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
CHROMIUM = "/usr/bin/chromium"
ROWS = 4000
CELL_TIMEOUT = 300  # a hung cell fails the test instead of blocking the run


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A clean and a dirty (5%) data set, generated and prepared."""
    from analytics.lake.generator import generate
    from analytics.views.build import build

    root = tmp_path_factory.mktemp("notebook_data").resolve()  # as `bench reports` names the lake
    out: dict[str, Any] = {}
    for name, seed, dirty in (("clean", 11, 0.0), ("dirty", 12, 0.05)):
        raw, lake = root / name / "raw", root / name / "lake"
        summary = generate(raw, ROWS, seed=seed, dirty=dirty, progress=False)
        prepare(raw, lake, progress=False)
        if name == "clean":  # answers then come from the views where the router picks one
            build(lake, progress=False)
        out[name] = {"raw": str(raw), "lake": str(lake), "generated": summary,
                     "manifest": Lake.open(lake).state}
    return out


@pytest.fixture(scope="module")
def appended(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A lake prepared from one raw part and built, queried through the batch runner (telemetry on),
    then a second part appended and prepared: every view is stale until refreshed."""
    from analytics import Workbench
    from analytics.batch.simple import run_workbench
    from analytics.lake.generator import generate
    from analytics.views.build import build

    root = tmp_path_factory.mktemp("appended")
    generate(root / "all", ROWS, seed=13, parts=2, progress=False)
    first, second = sorted((root / "all").glob("*.csv"))
    raw, lake = root / "raw", root / "lake"
    raw.mkdir()
    shutil.copy(first, raw)
    prepare(raw, lake, progress=False)
    build(lake, progress=False)
    built_from = Lake.open(lake).state
    queries = [{"select": ["day", {"COUNT": "*"}], "from": "events", "group_by": ["day"]},
               {"select": ["country", {"SUM": "bid_price"}], "from": "events", "group_by": ["country"]},
               {"select": ["country", {"SUM": "bid_price"}], "from": "events", "group_by": ["country"]},
               {"select": ["ts"], "from": "events", "limit": 3}]
    with Workbench(lake) as wb:
        run = run_workbench(wb, queries, None, parallel=False)
    shutil.copy(second, raw)
    prepare(raw, lake, progress=False)
    manifest = Lake.open(lake).state
    return {"lake": str(lake), "routes": Counter(q["route"] for q in run.report["queries"]),
            "built_from": built_from["data_version"], "manifest": manifest, "second_file": second.name,
            "new_segments": sorted(set(s["segment"] for s in manifest["segments"])
                                   - set(s["segment"] for s in built_from["segments"]))}


@pytest.fixture(scope="module")
def reports(data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`make reports` on the clean data set, as a user runs it in a pipe: every notebook executed
    with its defaults and the lake and raw data named, into OUT/NN_name.{ipynb,html,results.html};
    what it printed, and the lake's files before and after (the notebooks must only read it)."""
    clean = data["clean"]
    out = tmp_path_factory.mktemp("reports")
    lake = Path(clean["lake"])
    before = {p: p.read_bytes() for p in sorted(lake.rglob("*")) if p.is_file()}
    proc = subprocess.run(["make", "--no-print-directory", "reports", f"LAKE={clean['lake']}", f"RAW={clean['raw']}",
                           f"REPORTS={out}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout
    after = {p: p.read_bytes() for p in sorted(lake.rglob("*")) if p.is_file()}
    return {"out": out, "stdout": proc.stdout, "lake_before": before, "lake_after": after,
            "params": {"lake": clean["lake"], "raw": clean["raw"]}}


class Runs:
    """Executes a notebook once per distinct parameter set (those it declares) and keeps the
    executed notebook; its HTML reports are exported from it when a test asks for them."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.done: dict[str, dict[str, Path]] = {}

    @staticmethod
    def key(name: str, params: dict[str, Any]) -> str:
        declared = rep.notebook_parameters(NOTEBOOKS_DIR / f"{name}.ipynb")
        return name + json.dumps({k: v for k, v in params.items() if k in declared}, sort_keys=True)

    def adopt(self, name: str, params: dict[str, Any], report_dir: Path) -> None:
        """Take the report `build_report` wrote into `report_dir` as the run of `name` with `params`."""
        self.done[self.key(name, params)] = rep.report_paths(report_dir, name)

    def run(self, name: str, **params: Any) -> Path:
        key = self.key(name, params)
        if key not in self.done:
            paths = rep.report_paths(self.out_dir / str(len(self.done)), name)
            paths["ipynb"].parent.mkdir()
            rep.execute_notebook(NOTEBOOKS_DIR / f"{name}.ipynb", paths["ipynb"], params, timeout=CELL_TIMEOUT)
            self.done[key] = paths
        return self.done[key]["ipynb"]

    def report(self, name: str, **params: Any) -> dict[str, Path]:
        """The run's report files (`build_report`'s names), exported from the executed notebook."""
        self.run(name, **params)
        paths = self.done[self.key(name, params)]
        if not paths["results_html"].exists():
            rep.export_html(paths["ipynb"], paths["html"])
            rep.export_html(paths["ipynb"], paths["results_html"], no_input=True)
        return paths

    def scraps(self, name: str, **params: Any) -> dict[str, Any]:
        return sb.read_notebook(str(self.run(name, **params))).scraps.data_dict


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, reports: dict[str, Any]) -> Runs:
    """The runs of the notebooks, starting with those `make reports` made (the clean data set, defaults)."""
    runs = Runs(tmp_path_factory.mktemp("executed"))
    for name in NOTEBOOKS:
        runs.adopt(name, reports["params"], reports["out"])
    return runs


def test_the_five_notebooks_exist() -> None:
    assert NOTEBOOKS == ["00_explore", "01_data_remediation", "02_mv_builds", "03_batch_benchmark",
                         "04_guardrail_validation"]
    assert [p.stem for p in rep.list_notebooks()] == NOTEBOOKS  # what `make reports` runs by default


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_stripped_and_parameterized(name: str) -> None:
    nb = nbformat.read(str(NOTEBOOKS_DIR / f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{name}: cells {dirty} keep outputs or execution counts; run `make strip` before committing"
    assert "widgets" not in nb.metadata, f"{name}: saved widget state; run `make strip`"
    assert "parameters" in code[0].metadata.get("tags", []), f"{name}: the first code cell must be tagged `parameters`"
    assert nb.metadata["kernelspec"]["name"] == "analytics"
    # defaults point at the nbval data set, so `pytest --nbval-lax notebooks/` runs them in place
    assert "../data/nbval/" in code[0].source


def test_explore_renders_the_default_selection(runs: Runs, data: dict[str, Any]) -> None:
    clean = data["clean"]
    s = runs.scraps("00_explore", lake=clean["lake"], event_type="serve", grouping="country", measure="COUNT(*)")
    assert s["default_query"]["select"] == ["country", {"COUNT": "*"}]
    assert s["default_route"] == "lake" or s["default_route"] in VIEWS
    # the whole year, grouped by country: every serve of the lake is counted once
    assert s["default_measure_total"] == clean["manifest"]["totals"]["lake_by_type"]["serve"]
    assert 1 <= s["default_rows"] <= 12


def test_explore_saves_the_widget_state_with_its_output(runs: Runs, data: dict[str, Any]) -> None:
    nb = nbformat.read(str(runs.run("00_explore", lake=data["clean"]["lake"], event_type="serve",
                                    grouping="country", measure="COUNT(*)")), as_version=4)
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    models = {m["model_name"] for m in state.values()}
    assert {"DropdownModel", "DatePickerModel", "ButtonModel", "OutputModel"} <= models
    (output,) = [m for m in state.values() if m["model_name"] == "OutputModel"]
    kinds = [sorted(o.get("data", {})) for o in output["state"]["outputs"]]
    assert any("application/vnd.plotly.v1+json" in k for k in kinds), kinds  # the explorer's chart
    assert not any(o.get("name") == "stdout" and "error" in o.get("text", "") for o in output["state"]["outputs"])


def test_explore_refuses_a_price_the_event_type_does_not_carry(runs: Runs, data: dict[str, Any]) -> None:
    s = runs.scraps("00_explore", lake=data["clean"]["lake"], event_type="click", measure="SUM(bid_price)")
    assert s["default_refusal"].startswith("click events carry no bid_price: only impressions do")
    assert s["default_rows"] == 0 and s["default_query"] == {}
    assert runs.scraps("00_explore", lake=data["clean"]["lake"], event_type="serve", grouping="country",
                       measure="COUNT(*)")["default_refusal"] == ""


def test_explore_groupings_and_measures(runs: Runs, data: dict[str, Any]) -> None:
    s = runs.scraps("00_explore", lake=data["clean"]["lake"], event_type="impression", grouping="week",
                    measure="AVG(bid_price)", start="2024-03-01", end="2024-03-31")
    assert s["default_query"]["where"][1] == {"col": "day", "op": "between", "val": ["2024-03-01", "2024-03-31"]}
    assert 4 <= s["default_rows"] <= 6  # weeks touching March
    assert 0 < s["default_measure_total"]


def test_remediation_accounts_for_every_row(runs: Runs, data: dict[str, Any]) -> None:
    dirty = data["dirty"]
    s = runs.scraps("01_data_remediation", lake=dirty["lake"], samples=3)
    assert s["rows_read"] == ROWS == s["rows_lake"] + s["rows_quarantined"]
    assert s["accounting_ok"] is True and s["checks_failed"] == 0
    # every dirty row the generator wrote is quarantined, and nothing else
    assert s["rows_quarantined"] == dirty["generated"]["dirty_rows"] > 0
    assert s["quarantine_by_reason"] == {**{r: 0 for r in s["quarantine_by_reason"]},
                                         **dirty["manifest"]["totals"]["quarantine_by_reason"]}
    assert s["sample_reasons"] == sorted(r for r, n in s["quarantine_by_reason"].items() if n)
    # the lake, queried through the workbench, holds exactly the rows the manifest counts
    assert s["rows_by_day_query"] == s["rows_lake"]
    assert s["days_covered"]["serve"] >= 300


def test_remediation_of_a_clean_lake(runs: Runs, data: dict[str, Any]) -> None:
    s = runs.scraps("01_data_remediation", lake=data["clean"]["lake"])
    assert (s["rows_read"], s["rows_lake"], s["rows_quarantined"]) == (ROWS, ROWS, 0)
    assert s["sample_reasons"] == [] and s["accounting_ok"] is True


def test_mv_builds_summarizes_the_lake(runs: Runs, data: dict[str, Any]) -> None:
    clean = data["clean"]
    s = runs.scraps("02_mv_builds", lake=clean["lake"])
    assert s["lake_version"] == clean["manifest"]["version"]
    assert s["rows_lake"] == ROWS and s["segments"] == len(clean["manifest"]["segments"]) == 1
    assert s["size_bytes"] > 0


def test_mv_builds_registry_table(runs: Runs, data: dict[str, Any]) -> None:
    clean = data["clean"]
    s = runs.scraps("02_mv_builds", lake=clean["lake"])
    registry = json.loads((Path(clean["lake"]) / "views" / "_registry.json").read_text())["views"]
    assert [v["view"] for v in s["views"]] == list(VIEWS) and s["views_healthy"] == len(VIEWS)
    assert s["refresh"] == []  # build_views is off by default
    for v in s["views"]:
        entry = registry[v["view"]]
        assert (v["rows"], v["bytes"], v["build_s"], v["built_from"]) == (
            entry["rows"], entry["bytes"], entry["build_seconds"], entry["lake_version"])
        assert v["rollup"] == round(ROWS / entry["rows"], 1) and v["lake_rows"] == ROWS
        assert v["healthy"] is True and v["health"] == "healthy" and v["mode"] == "full"
        assert v["router_uses"] == 0  # nothing queried this lake through the runner
        assert v["origin"] == "catalog" and v["deltas"] == 0


def test_mv_builds_shows_health_first_and_folds_the_other_columns(runs: Runs, appended: dict[str, Any]) -> None:
    from analytics.reports import view_registry as vr

    nb = nbformat.read(str(runs.run("02_mv_builds", lake=appended["lake"])), as_version=4)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    compact, _, folded = html.partition("<details>")
    assert folded, "the other columns are folded away"
    heading = r'<th [^>]*class="col_heading[^"]*"[^>]*>([^<]+)</th>'
    header = re.findall(heading, compact)
    assert header == list(vr.COMPACT_COLUMNS) and header.index("health") == 1 and len(header) <= 7
    assert re.findall(heading, folded.split("</details>")[0]) == list(vr.DETAIL_COLUMNS)
    assert re.sub(r"\s", "", vr.UNHEALTHY_STYLE) in re.sub(r"\s", "", compact)  # every view is stale here: red
    # the registry comes before the lake's segments and prepare history
    headings = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown"]
    assert headings.index("## The view registry") < headings.index("## The lake: layout and segments")


def test_mv_builds_shows_stale_views_and_router_use(runs: Runs, appended: dict[str, Any]) -> None:
    s = runs.scraps("02_mv_builds", lake=appended["lake"])
    assert s["views_healthy"] == 0 and s["segments"] == 2
    for v in s["views"]:
        assert v["healthy"] is False and v["built_from"] == appended["built_from"]
        assert v["health"] == (f"built from lake version {appended['built_from']}, "
                               f"lake is now {appended['manifest']['data_version']}")
        assert v["router_uses"] == appended["routes"].get(v["view"], 0)
    assert s["router_use"]["lake"]["queries"] == appended["routes"]["lake"] >= 1
    assert sum(u["queries"] for u in s["router_use"].values()) == 4
    assert sum(v["router_uses"] for v in s["views"]) == 4 - appended["routes"]["lake"] >= 2


def test_mv_builds_refreshes_incrementally(runs: Runs, appended: dict[str, Any]) -> None:
    runs.run("02_mv_builds", lake=appended["lake"])  # the stale state first (the test above may not have run)
    s = runs.scraps("02_mv_builds", lake=appended["lake"], build_views=True)
    assert s["views_healthy"] == len(VIEWS)
    assert [c["view"] for c in s["refresh"]] == list(VIEWS)
    for c in s["refresh"]:
        assert (c["status"], c["mode"], c["version_before"], c["version_after"]) == ("built", "incremental", 1, 2)
        assert c["segments_added"] == appended["new_segments"] and c["files_added"] == [appended["second_file"]]
    for v in s["views"]:
        assert v["mode"] == "incremental" and v["segments"] == 2 and v["deltas"] == 1
        assert v["built_from"] == appended["manifest"]["data_version"] and v["lake_rows"] == ROWS


def test_benchmark_answers_match_the_baseline(runs: Runs, data: dict[str, Any]) -> None:
    clean = data["clean"]
    s = runs.scraps("03_batch_benchmark", lake=clean["lake"], raw=clean["raw"])
    examples = json.loads((ROOT / "queries" / "examples.json").read_text())
    assert s["n_queries"] == len(examples) == len(s["results"]) == 5
    assert s["all_match"] is True, [(r["id"], r["reason"]) for r in s["results"] if not r["match"]]
    for r in s["results"]:
        assert r["match"] is True and r["rows"] == r["baseline_rows"]
        assert r["workbench_ms"] > 0 and r["baseline_ms"] > 0
        assert r["route"] == "lake" or r["route"] in VIEWS
    assert s["results"][0]["rows"] > 300  # q1: impression revenue per day over the year


def test_benchmark_reports_mismatches(runs: Runs, data: dict[str, Any]) -> None:
    # the dirty lake quarantined rows the baseline still counts: the correctness column must say so
    dirty = data["dirty"]
    s = runs.scraps("03_batch_benchmark", lake=dirty["lake"], raw=dirty["raw"], repeats=1)
    assert s["all_match"] is False
    assert any(not r["match"] and r["reason"] for r in s["results"])


def test_guardrails_all_pass_and_the_demonstration_catches_stale_views(runs: Runs, data: dict[str, Any],
                                                                     reports: dict[str, Any]) -> None:
    clean = data["clean"]
    s = runs.scraps("04_guardrail_validation", lake=clean["lake"], raw=clean["raw"])
    assert (s["checks_total"], s["checks_failed"], s["failed_ids"], s["raw_checked"]) == (23, 0, [], True)
    assert [c["category"] for c in s["categories"]] == ["timezone", "between", "avg", "mv_consistency", "data_types",
                                                        "null_handling", "date_boundaries"]
    assert sum(c["passed"] for c in s["categories"]) == 23
    demo = s["demo"]
    assert demo["fault"] == "stale_views" and demo["caught_by"] == ["mv_consistency.current_lake_version"]
    assert demo["expected"] == "mv_consistency.current_lake_version"
    assert demo["views"] == len(VIEWS) == len(demo["unhealthy_views"])
    assert all(why.startswith("built from lake version") for why in demo["unhealthy_views"].values())
    # the fault went into a temporary copy: the lake is byte for byte what it was before the notebooks ran
    assert {p: b for p, b in reports["lake_after"].items() if "_telemetry" not in p.parts} == \
        {p: b for p, b in reports["lake_before"].items() if "_telemetry" not in p.parts}


def test_guardrail_evidence_is_one_line_with_the_record_folded(runs: Runs, data: dict[str, Any]) -> None:
    """The demonstration's failing check: twelve views stale from one lake version read as one item
    of one short line; the whole summary and record sit in a closed <details>."""
    from analytics.reports.guardrail_report import SUMMARY_CHARS

    clean = data["clean"]
    nb = nbformat.read(str(runs.run("04_guardrail_validation", lake=clean["lake"], raw=clean["raw"])), as_version=4)
    demo = nb.cells[-1].outputs
    table = next(o["data"]["text/html"] for o in demo if "caught the fault" in o.get("data", {}).get("text/html", ""))
    row = re.search(r'<tr style="background:#ffebee">(.*?)</tr>', table, re.S).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    line, folded = cells[3].split("<details>")
    assert line.startswith(f"{len(VIEWS)} × built from lake version ") and len(html.unescape(line)) <= SUMMARY_CHARS
    assert folded.split("</p>")[0].count("built from lake version") == len(VIEWS)  # the whole summary, on demand
    assert "min-width:14em" in row  # "guards" keeps its words on a line


@pytest.mark.parametrize("fault, unhealthy", [("view_file_truncated", "its checksum record says"),
                                             ("view_file_deleted", "file missing")])
def test_guardrail_demonstration_faults(runs: Runs, data: dict[str, Any], fault: str, unhealthy: str) -> None:
    clean = data["clean"]
    s = runs.scraps("04_guardrail_validation", lake=clean["lake"], raw=clean["raw"], fault=fault)
    assert s["checks_failed"] == 0
    assert s["demo"]["caught_by"] == ["mv_consistency.present_readable"] == [s["demo"]["expected"]]
    assert list(s["demo"]["unhealthy_views"]) == ["mv_day_type_wide"]
    assert unhealthy in s["demo"]["unhealthy_views"]["mv_day_type_wide"]


def test_guardrails_report_failures_without_views(runs: Runs, data: dict[str, Any]) -> None:
    # the dirty lake has no views: the view checks fail (and say so), the data checks pass
    dirty = data["dirty"]
    s = runs.scraps("04_guardrail_validation", lake=dirty["lake"], raw=dirty["raw"], demonstrate=False)
    assert s["checks_total"] == 23 and s["demo"] == {}
    assert "mv_consistency.present_readable" in s["failed_ids"]
    assert {i.split(".")[0] for i in s["failed_ids"]} <= {"mv_consistency", "avg"}
    assert not any(i.startswith(("null_handling", "data_types", "timezone")) for i in s["failed_ids"])


STALE_PROMISE = re.compile(r"\bwhen\b[^.]*\blands\b|filled in when|follows (when|once)", re.I)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_prose_promises_nothing_for_later(name: str) -> None:
    nb = nbformat.read(str(NOTEBOOKS_DIR / f"{name}.ipynb"), as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            m = STALE_PROMISE.search(cell.source)
            assert m is None, f"{name} cell {i} promises future work: {m.group(0)!r}; say what the notebook does now"


def _dump_dom(html: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with every network request refused."""
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install it (`apt-get install chromium`; .ci/run does)"
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           # offline: every request goes to a closed local port
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--virtual-time-budget=20000", "--dump-dom", html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_html_renders_charts_offline_in_chromium(tmp_path: Path, runs: Runs, data: dict[str, Any]) -> None:
    paths = runs.report("01_data_remediation", lake=data["dirty"]["lake"], samples=3)
    full = paths["html"].read_text()
    results = paths["results_html"].read_text()
    assert "format_report" in full and "format_report" not in results  # the code is hidden, the results are not
    assert "Quarantined rows by reason" in results
    for page in (full, results):
        assert 'class="main-svg"' not in page  # only drawing the charts puts it there
    dom = _dump_dom(paths["results_html"], tmp_path)
    figures = len(re.findall(r'class="plot-container plotly"', dom))
    assert figures == 2, f"expected the 2 charts drawn, found {figures}"
    assert len(re.findall(r'<svg class="main-svg"', dom)) >= 2
    assert "Quarantined rows by reason" in dom


def test_explore_report_keeps_widget_state_and_renders_offline(tmp_path: Path, runs: Runs, data: dict[str, Any]) -> None:
    paths = runs.report("00_explore", lake=data["clean"]["lake"])
    html = paths["html"].read_text()
    assert "application/vnd.jupyter.widget-state+json" in html
    dom = _dump_dom(paths["results_html"], tmp_path)
    assert len(re.findall(r'<svg class="main-svg"', dom)) >= 1
    assert "SUM(bid_price) of impression events by day" in dom and "route: " in dom
    assert 'href="data:text/csv;charset=utf-8;base64,' in dom


@pytest.mark.parametrize("name, params, charts, texts", [
    ("02_mv_builds", lambda d: {"lake": d["clean"]["lake"]}, 3,
     ["View size against the lake", "Build time per view", "13/13 views healthy"]),
    ("03_batch_benchmark", lambda d: {"lake": d["clean"]["lake"], "raw": d["clean"]["raw"]}, 1, []),
    ("04_guardrail_validation", lambda d: {"lake": d["dirty"]["lake"], "raw": d["dirty"]["raw"], "demonstrate": False},
     1, ["Guardrails passed and failed by category", "FAIL", "mv_consistency.present_readable"]),
    ("04_guardrail_validation", lambda d: {"lake": d["clean"]["lake"], "raw": d["clean"]["raw"]}, 2,
     ["23/23 guardrails pass", "Guardrails on the copy with fault stale_views", "caught the fault"]),
])
def test_report_charts_render_offline_in_chromium_for_each_report(tmp_path: Path, runs: Runs, data: dict[str, Any],
                                                                   name: str, params: Any, charts: int,
                                                                   texts: list[str]) -> None:
    paths = runs.report(name, **params(data))
    dom = _dump_dom(paths["results_html"], tmp_path)
    drawn = len(re.findall(r'class="plot-container plotly"', dom))
    assert drawn >= charts, f"{name}: expected at least {charts} charts drawn, found {drawn}"
    assert len(re.findall(r'<svg class="main-svg"', dom)) >= charts
    for text in texts:
        assert text in dom, text
    if name == "04_guardrail_validation" and "FAIL" in texts:
        assert re.search(r'<tr style="background:#ffebee"><td[^>]*><span style="color:#b71c1c;font-weight:bold">'
                         r'FAIL</span></td>', dom)


def test_benchmark_report_fits_the_page_and_says_na_below_1m_rows(runs: Runs, data: dict[str, Any]) -> None:
    """Notebook 03 on 4,000 rows: a ratio target is "n/a below 1M rows", never MISSED, and every
    table fits a ~1,000 px page as a browser lays it out."""
    from playwright.sync_api import sync_playwright

    paths = runs.report("03_batch_benchmark", lake=data["clean"]["lake"], raw=data["clean"]["raw"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(paths["results_html"].as_uri(), wait_until="load")
            widths = page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea-output table')]"
                                   ".map(t => Math.round(t.getBoundingClientRect().width))")
            verdicts = page.evaluate("() => [...document.querySelectorAll('table')].filter(t => "
                                     "t.querySelector('th')?.innerText === 'target').flatMap(t => [...t.rows]"
                                     ".slice(1).map(r => [r.cells[0].innerText, r.cells[3].innerText]))")
        finally:
            browser.close()
    assert len(widths) >= 4 and max(widths) <= 1000, widths
    verdict = dict(verdicts)
    assert verdict["speedup over baseline on the median"] == "n/a below 1M rows"
    assert verdict["speedup over duckdb_lake on the median"] == "n/a below 1M rows"


def test_a_failing_notebook_leaves_no_report(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    out.mkdir()
    stale = rep.report_paths(out, "02_mv_builds")
    for p in stale.values():
        p.write_text("an older report")
    with pytest.raises(rep.ReportError) as err:
        rep.build_report(NOTEBOOKS_DIR / "02_mv_builds.ipynb", out, {"lake": str(tmp_path / "no-lake")},
                         timeout=CELL_TIMEOUT)
    message = str(err.value)
    assert "02_mv_builds.ipynb failed at cell" in message and "FileNotFoundError" in message
    assert "not a prepared lake" in message
    assert not any(p.exists() for p in stale.values())
    assert sorted(p.name for p in out.iterdir()) == ["02_mv_builds.FAILED.ipynb"]


def test_reporting_says_a_failing_notebook_and_keeps_its_kernel_stderr(tmp_path: Path, data: dict[str, Any]) -> None:
    """The reporting command in a pipe: a notebook that runs prints its one line, a failing one
    prints its error (not a line of its own) and stops the run; the kernel's stderr, hidden while
    notebooks succeed, is kept beside the failed notebook."""
    import sys

    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    for name, body in (("00_works", "print('fine')"), ("01_fails", "raise RuntimeError('boom')"),
                       ("02_never", "print('not reached')")):
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "analytics", "display_name": "analytics",
                                                               "language": "python"}})
        nb.cells = [nbformat.v4.new_code_cell("lake = None", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell(body)]
        nbformat.write(nb, str(nb_dir / f"{name}.ipynb"))
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "analytics", "bench", "reports", "--lake", data["clean"]["lake"],
                           "--notebooks", str(nb_dir), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert re.fullmatch(rf"00_works +\d+\.\d s  {re.escape(str(out))}/00_works\.html\n", proc.stdout), proc.stdout
    assert re.match(r"reporting: error: 01_fails\.ipynb failed at cell In \[\d+\] with RuntimeError: boom", proc.stderr)
    assert "02_never" not in proc.stdout + proc.stderr
    kept = sorted(p.name for p in out.iterdir() if "FAILED" in p.name or p.name.startswith("."))
    assert kept[0] == "01_fails.FAILED.ipynb" and kept[1:] in ([], ["01_fails.FAILED.stderr.log"])
    if kept[1:]:
        assert str(out / kept[1]) in proc.stderr


def test_reporting_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any]) -> None:
    assert rep.main(["--lake", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 1
    assert "not a prepared lake" in capsys.readouterr().err
    assert rep.main(["--lake", data["clean"]["lake"], "--only", "99_nothing", "--out", str(tmp_path / "r")]) == 1
    assert "no notebook" in capsys.readouterr().err
    assert rep.main(["--lake", data["clean"]["lake"], "-p", "novalue", "--out", str(tmp_path / "r")]) == 2


def test_make_reports_prints_one_line_per_notebook(reports: dict[str, Any]) -> None:
    """`make reports` in a pipe: each notebook's name, seconds and report, and nothing else (no
    progress bars, no kernel warnings); an error would add its own lines. Each notebook's report is
    its executed notebook, its HTML and its input-hidden HTML, and nothing else is left."""
    out, stdout = reports["out"], reports["stdout"]
    lines = stdout.splitlines()
    assert len(lines) <= len(NOTEBOOKS) + 1, stdout  # + make's "kernel analytics: up to date"
    for name in NOTEBOOKS:
        assert sum(bool(re.fullmatch(rf"{name} +\d+\.\d s  {re.escape(str(out / name))}\.html", line))
                   for line in lines) == 1, stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}{ext}" for name in NOTEBOOKS
                                                           for ext in (".html", ".ipynb", ".results.html"))


def test_kernel_runs_this_interpreter() -> None:
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    rep.ensure_kernel()
    spec = KernelSpecManager().get_kernel_spec(rep.KERNEL_NAME)
    assert os.path.abspath(spec.argv[0]) == os.path.abspath(sys.executable)
