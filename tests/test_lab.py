"""`make lab` and the explorer in a real JupyterLab, driven in Debian's Chromium by Playwright.

The server runs on 127.0.0.1 with a random free port and a token, on a copy of 00_explore whose
`lake` parameter points at a small generated lake with its views. The browser runs every cell,
changes the event type, grouping and measure, clicks Run, and the test checks the chart and the
rows/route line against an answer computed here with DuckDB straight from the lake's Parquet files;
then that the table is styled (borders as the browser computes them), that a price the event type
does not carry and a reversed date range are refused with a message and no table, and that a
top-N cut is said in the status line, the chart title and the CSV's name.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import duckdb
import nbformat
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from analytics.reports import explorer as ex
from analytics.reports import notebooks as rep
from analytics.views.catalog import VIEWS

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROWS = 4000
SERVER_START_S = 90
CELL_RUN_MS = 180_000  # the whole notebook on a cold kernel; bounded so a hang fails the test
ANSWER_MS = 60_000


def test_make_lab_opens_jupyterlab_on_the_notebooks() -> None:
    out = subprocess.run(["make", "--no-print-directory", "-n", "lab"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    commands = re.sub(r"\\\n\s*", " ", out.stdout)
    # the explorer's lake: 1M rows with their views, made (or found up to date) before the server starts
    assert re.search(r"^make --no-print-directory views ROWS=1000000 SEED=0 DIRTY=0$", commands, re.M)
    lab = re.search(r"^ANALYTICS_LAKE=(\S+) JUPYTER_PATH=(\S+?)(\$.*)? \.venv/bin/jupyter lab "
                    r"--ServerApp\.root_dir=notebooks --ip=127\.0\.0\.1" + (r" --allow-root" if os.geteuid() == 0 else ""),
                    commands, re.M)
    assert lab, commands
    assert lab.group(1) == str(ROOT / "data" / "lake-1000000")
    assert lab.group(2) == str(ROOT / ".venv" / "share" / "jupyter")  # .venv's kernel first
    assert "register_kernel" in out.stdout  # the `analytics` kernel is registered first
    other = subprocess.run(["make", "--no-print-directory", "-n", "lab", "LAB_ROWS=2000000"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120).stdout
    assert "views ROWS=2000000" in other and f"ANALYTICS_LAKE={ROOT / 'data' / 'lake-2000000'} " in other
    assert re.search(r"^  lab\s+\S", subprocess.run(["make", "--no-print-directory"], cwd=ROOT, capture_output=True,
                                                    text=True, timeout=60).stdout, re.M)


def test_setup_installs_jupyterlab_and_playwright_pinned() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.fullmatch(r"jupyterlab==[\d.]+", r) for r in extras["notebooks"])
    assert any(re.fullmatch(r"playwright==[\d.]+", r) for r in extras["dev"])
    assert "analytics[notebooks,bench,spark]" in extras["dev"]  # `make setup` installs [dev]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from analytics.lake.generator import generate
    from analytics.lake.prepare import prepare
    from analytics.views.build import build

    root = tmp_path_factory.mktemp("lab_data")
    generate(root / "raw", ROWS, seed=21, progress=False)
    prepare(root / "raw", root / "lake", progress=False)
    summary = build(root / "lake", progress=False)
    assert not summary["failed"], summary["failed"]
    return root / "lake"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path: Path, lake: Path) -> Iterator[dict[str, Any]]:
    """JupyterLab serving a copy of 00_explore (its `lake` parameter set to the test lake)."""
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    nb = nbformat.read(str(ROOT / "notebooks" / "00_explore.ipynb"), as_version=4)
    params = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in params.metadata.get("tags", [])
    params.source, n = re.subn(r'^lake = .*$', f"lake = {json.dumps(str(lake))}", params.source, flags=re.M)
    assert n == 1
    nbformat.write(nb, str(nb_dir / "00_explore.ipynb"))

    # no "get notified about Jupyter news?" prompt over the page (it would also fetch from the network)
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))
    rep.ensure_kernel()  # the `analytics` kernel runs this interpreter (JUPYTER_PATH set if needed)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nb_dir}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, f"jupyter lab exited: {(tmp_path / 'server.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"jupyter lab not up in {SERVER_START_S}s"
            time.sleep(0.5)
        _start_session(base, token)
        yield {"url": f"{base}/lab/tree/00_explore.ipynb?token={token}", "log": tmp_path / "server.log"}
    finally:
        proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def _start_session(base: str, token: str) -> None:
    """The notebook's session with its `analytics` kernel, started through the REST API before the
    page opens: JupyterLab then joins it instead of choosing a kernel itself, which on a busy machine
    meant a "Select Kernel" dialog and kernels started and shut down in a row."""
    body = json.dumps({"path": "00_explore.ipynb", "name": "00_explore.ipynb", "type": "notebook",
                       "kernel": {"name": "analytics"}}).encode()
    req = urllib.request.Request(f"{base}/api/sessions?token={token}", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert json.loads(resp.read())["kernel"]["name"] == "analytics"


def _expected_click_counts(lake: Path) -> dict[str, int]:
    """COUNT(*) of clicks per country over 2024, straight from the lake's Parquet files."""
    con = duckdb.connect()
    rows = con.execute(
        "SELECT country, count(*) FROM read_parquet(?, hive_partitioning = true) "
        "WHERE type = 'click' AND day BETWEEN DATE '2024-01-01' AND DATE '2024-12-31' GROUP BY country",
        [str(lake / "events" / "**" / "*.parquet")]).fetchall()
    con.close()
    return dict(rows)


def _dismiss_dialog(page: Any, seen: list[str]) -> bool:
    """Accept the dialog JupyterLab shows, if any, noting its text in `seen`; True if there was one.

    Its accept button is clicked (or Escape pressed when it has none or the click is not taken);
    the caller's loop comes back to it if it is still open, or open again, on its next turn."""
    dialog = page.locator(".jp-Dialog").first
    if not dialog.count():
        return False
    try:
        text = " ".join(dialog.inner_text(timeout=5_000).split())
    except PlaywrightTimeout:
        text = "(a dialog that closed before its text was read)"
    if not seen or seen[-1] != text:
        seen.append(text)
    accept = dialog.locator(".jp-Dialog-button.jp-mod-accept")
    try:
        accept.first.click(timeout=5_000)
        dialog.wait_for(state="detached", timeout=10_000)
    except PlaywrightTimeout:
        page.keyboard.press("Escape")
    return True


def _run_all_cells(page: Any, server_log: Path) -> None:
    """Run > Run All Cells, until the explorer shows its first answer.

    On a busy machine JupyterLab may open a dialog ("Select Kernel" when the kernel list came late,
    "Kernel Restarting") or drop a Run All clicked before the kernel connected: each dialog is
    accepted (the notebook's `analytics` kernel is preselected) and Run All clicked again, all
    within CELL_RUN_MS. A run that does not finish by then fails with the dialogs seen and the
    server's last log lines."""
    deadline = time.monotonic() + CELL_RUN_MS / 1000
    clicked_at = None
    disconnected_since = None
    seen: list[str] = []
    while True:
        assert time.monotonic() < deadline, (
            f"the notebook did not run in {CELL_RUN_MS / 1000:.0f}s; dialogs seen: {seen or 'none'}; "
            f"server log ends: {server_log.read_text(errors='replace')[-3000:]}")
        if _dismiss_dialog(page, seen):
            clicked_at = None
            continue
        # a page whose kernel connection dropped (it shows "Disconnected") reconnects on a reload
        if "Disconnected" in " ".join(page.locator(".jp-StatusBar-Widget").all_inner_texts()):
            disconnected_since = disconnected_since or time.monotonic()
            if time.monotonic() - disconnected_since > 15:
                page.reload()
                page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
                disconnected_since = clicked_at = None
        else:
            disconnected_since = None
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0
        ran = "row(s) via route" in (page.locator(".explorer .explorer-status").all_inner_texts() or [""])[0]
        if ran:
            return
        if idle and (clicked_at is None or time.monotonic() - clicked_at > 30):
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
            clicked_at = time.monotonic()
        page.wait_for_timeout(1000)


def _select(page: Any, label: str, value: str) -> None:
    page.locator(f".explorer .widget-dropdown:has(label:text-is('{label}')) select").select_option(value)


def _run(page: Any, before: str) -> str:
    """Press Run and wait for the status line to change from `before`; the new status."""
    page.locator(".explorer button", has_text="Run").click()
    page.wait_for_function("(before) => { const t = document.querySelector('.explorer-status')?.innerText || '';"
                           " return t.trim() !== '' && t !== before; }", arg=before)
    return page.locator(".explorer .explorer-status").inner_text()


def test_explorer_in_jupyterlab(lab: dict[str, Any], lake: Path, tmp_path: Path) -> None:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install it (`apt-get install chromium`; .ci/run does)"
    expected = _expected_click_counts(lake)
    assert len(expected) >= 3  # a bar chart worth comparing
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(ANSWER_MS)
            try:
                _drive_the_explorer(page, lab["url"], lab["log"], expected)
            finally:
                page.screenshot(path=str(tmp_path / "explorer.png"))
        finally:
            browser.close()


def _drive_the_explorer(page: Any, url: str, server_log: Path, expected: dict[str, int]) -> None:
    """Run every cell, change the selection, press Run and check the answer shown."""
    page.goto(url)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=CELL_RUN_MS)
    _run_all_cells(page, server_log)
    status = page.locator(".explorer .explorer-status")
    first = status.inner_text()
    chart = page.locator(".explorer .explorer-chart")
    chart.locator("svg.main-svg").first.wait_for()
    assert "SUM(bid_price) of impression events by day" in chart.locator(".gtitle").text_content()

    _select(page, "event type", "click")
    _select(page, "group by", "country")
    _select(page, "measure", "COUNT(*)")
    page.locator(".explorer button", has_text="Run").click()
    page.wait_for_function(
        "(before) => { const t = document.querySelector('.explorer-status')?.innerText || '';"
        " return t !== before && /row\\(s\\) via route/.test(t); }", arg=first)
    page.wait_for_function("() => (document.querySelector('.explorer-chart .gtitle')?.textContent || '')"
                           ".includes('COUNT(*) of click events by country')")
    line = status.inner_text()
    m = re.match(r"([\d,]+) row\(s\) via route (\S+) \(lake version \d+(?:, view version \d+)?\) in [\d.]+ ms", line)
    assert m, line
    assert int(m.group(1).replace(",", "")) == len(expected)
    assert m.group(2) in VIEWS  # built views cover a per-country count
    bars = chart.locator(".bars .point")
    assert bars.count() == len(expected)
    ticks = set(chart.locator(".xaxislayer-above .xtick text").all_text_contents())
    assert ticks == set(expected)
    table = page.locator(".explorer .explorer-table table")
    shown = {r[0]: int(r[1].replace(",", "")) for r in (row.split("\t") for row in table.locator("tbody tr").all_inner_texts())}
    assert shown == expected

    page.locator(".explorer button", has_text="explain").click()
    explain = page.locator(".explorer .explorer-explain pre")
    explain.wait_for()
    assert explain.inner_text().startswith(f"route: {m.group(2)}")
    link = page.locator(".explorer .explorer-query a[download]")
    assert link.get_attribute("href").startswith("data:text/csv")

    # the table is styled: a class the page can find, and borders and alignment the browser applies
    styled = table.evaluate("(t) => { const th = t.querySelector('th.num'), td = t.querySelector('td.num');"
                            " const cs = (e) => getComputedStyle(e); return [t.className, cs(td).borderTopWidth,"
                            " cs(td).borderTopStyle, cs(th).textAlign, cs(td).textAlign]; }")
    assert styled == ["explorer-answer", "1px", "solid", "right", "right"], styled
    assert link.evaluate("(a) => getComputedStyle(a).textDecorationLine") == "underline"

    outputs = " ".join(page.locator(".jp-OutputArea-output").all_inner_texts())
    assert "Traceback" not in outputs and "error:" not in outputs
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    _drive_the_guidance(page, line)
    page.locator(".explorer").scroll_into_view_if_needed()


def _drive_the_guidance(page: Any, before: str) -> None:
    """A meaningless measure and a reversed date range are refused; a top-N cut is said everywhere."""
    status = page.locator(".explorer .explorer-status")
    table = page.locator(".explorer .explorer-table")
    _select(page, "group by", "day")
    _select(page, "measure", ex.measure_label("SUM(bid_price)"))  # clicks carry no bid price
    line = _run(page, before)
    assert "click events carry no bid_price: only impressions do" in line, line
    assert page.locator(".explorer .explorer-refused").count() == 1
    assert table.locator("table").count() == 0 and "NaN" not in table.inner_text()
    assert page.locator(".explorer .explorer-chart svg.main-svg").count() == 0

    _select(page, "measure", "COUNT(*)")
    page.locator(".explorer .widget-datepicker:has(label:text-is('from')) input").fill("2024-06-30")
    page.locator(".explorer .widget-datepicker:has(label:text-is('to')) input").fill("2024-06-01")
    line = _run(page, line)
    assert "the from-date 2024-06-30 is after the to-date 2024-06-01" in line, line
    assert table.locator("table").count() == 0

    page.locator(".explorer .widget-datepicker:has(label:text-is('from')) input").fill("2024-01-01")
    page.locator(".explorer .widget-datepicker:has(label:text-is('to')) input").fill("2024-12-31")
    _select(page, "event type", "serve")
    _select(page, "group by", "advertiser_id")
    _select(page, "advertisers/publishers", "top 10")
    line = _run(page, line)
    m = re.fullmatch(r"10 row\(s\) via route \S+ \(lake version \d+(?:, view version \d+)?\) in [\d.]+ ms · (top 10 of ([\d,]+) advertisers) by COUNT\(\*\)", line)
    assert m and int(m.group(2).replace(",", "")) > 10, line
    page.wait_for_function("(cut) => (document.querySelector('.explorer-chart .gtitle')?.textContent || '')"
                           ".endsWith(cut)", arg=m.group(1))
    assert page.locator(".explorer .explorer-query a[download]").get_attribute("download") == \
        "serve_count_by_advertiser_id_top10.csv"
    assert status.inner_text() == line
