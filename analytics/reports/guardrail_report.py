"""The guardrails as notebook 04 shows them, and the demonstration that they catch a fault.

Owns the guardrail report's presentation (a table by category with each check's evidence in one
line and the whole of it folded away, failures marked in red; a pass/fail chart by category) and the demonstration: the lake is copied to a
temporary directory, one named fault is injected into the copy (never into the lake given),
all guardrails run on the copy, and the checks that fail there but passed on the real lake are
the ones that caught it. Must not hold checks (that is `analytics.checks.guardrails`, used only
through `run_guardrails` and its report) nor write anywhere but the temporary copy.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from analytics.checks.guardrails import run_guardrails
from analytics.core.files import write_atomic
from analytics.lake.table import latest_version, read_state, write_state
from analytics.serving.workbench import Workbench
from analytics.views.registry import load_registry
from analytics.views.serving_copy import serving_files

FAIL_ROW_STYLE = "background:#ffebee"
FAIL_STYLE = "color:#b71c1c;font-weight:bold"  # the verdict cell of a failed check; the row stays readable
SUMMARY_CHARS = 160  # the evidence line; the whole summary and record unfold below it
DEMO_VIEW = "mv_day_type_wide"  # the view a view-file fault damages


def _stale_views(lake: Path) -> str:
    version = latest_version(lake)
    if version is None:
        raise ValueError(f"{lake} is not a prepared lake")
    state = read_state(lake, version)
    old = state["data_version"]
    state.update(data_version=old + 1_000_000, data_aliases=[])
    write_state(lake, state)
    return (f"state of lake version {version}: data version {old} -> {state['data_version']}, "
            "as if `prepare` had committed new data")


def _view_file(lake: Path) -> Path:
    entry = load_registry(lake).get(DEMO_VIEW)
    if entry is None or not (lake / entry.file).is_file():
        raise ValueError(f"{lake}: view {DEMO_VIEW} is not built; run `analytics build` before the demonstration")
    return lake / entry.file


def _view_file_truncated(lake: Path) -> str:
    """The version's Parquet file and its serving copy cut in half: a torn write on the temporary copy."""
    path = _view_file(lake)
    entry = load_registry(lake)[DEMO_VIEW]
    cut = []
    serving = serving_files(entry.serving) if entry.serving else []
    for f in [path] + [path.parent / name for name in serving]:
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
        cut.append(f"{f.relative_to(lake)}: {len(data):,} -> {len(data) // 2:,} bytes")
    return "cut in half: " + "; ".join(cut)


def _view_file_deleted(lake: Path) -> str:
    path = _view_file(lake)
    path.unlink()
    return f"{path.relative_to(lake)}: deleted"


# fault name -> (what it does, the injector, the guardrail meant to catch it)
FAULTS: dict[str, tuple[str, Callable[[Path], str], str]] = {
    "stale_views": ("the manifest's lake version changes after the views were built (new data committed, "
                    "views not refreshed)", _stale_views, "mv_consistency.current_lake_version"),
    "view_file_truncated": (f"{DEMO_VIEW}'s Parquet file and its serving copy are cut in half", _view_file_truncated,
                            "mv_consistency.present_readable"),
    "view_file_deleted": (f"{DEMO_VIEW}'s Parquet file disappears", _view_file_deleted,
                          "mv_consistency.present_readable"),
}


def demonstrate(lake: str | os.PathLike, raw: str | os.PathLike | None, fault: str,
                baseline: dict[str, Any]) -> dict[str, Any]:
    """Inject `fault` into a temporary copy of `lake`, run every guardrail on the copy, and report
    which checks caught it: those failing on the copy that passed in `baseline` (the real lake's report).

    Also returns the workbench's view health on the copy (what serving does about the fault)."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; allowed: {', '.join(FAULTS)}")
    description, inject, expected = FAULTS[fault]
    source = Path(lake).resolve()
    passed_before = {c["id"] for c in baseline["checks"] if c["passed"]}
    with tempfile.TemporaryDirectory(prefix="guardrail-demo-") as tmp:
        copy = Path(tmp) / "lake"
        # the run's telemetry and lock files are not part of the lake's state
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("_telemetry", "*.lock", ".lock"))
        injected = inject(copy)
        report = run_guardrails(copy, raw)
        with Workbench(copy) as wb:
            health = wb.warm()
    caught = [c["id"] for c in report["checks"] if not c["passed"] and c["id"] in passed_before]
    return {"fault": fault, "description": description, "injected": injected, "expected": expected,
            "caught_by": caught, "report": report,
            "views": len(health), "unhealthy_views": {name: why for name, why in health.items() if why is not None}}


def category_counts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per category, in the report's order: checks passed and failed."""
    counts: dict[str, dict[str, Any]] = {}
    for c in report["checks"]:
        row = counts.setdefault(c["category"], {"category": c["category"], "passed": 0, "failed": 0})
        row["passed" if c["passed"] else "failed"] += 1
    return list(counts.values())


def summary_line(summary: str, limit: int = SUMMARY_CHARS) -> str:
    """An evidence summary in one line: `name: message` items that repeat a message are said once with
    how many and the first names (twelve views stale from the same lake version read as one item),
    then the whole cut to `limit` characters."""
    items = summary.split("; ")
    pairs = [item.split(": ", 1) for item in items]
    by_message: dict[str, list[str]] = {}
    for pair in pairs:
        if len(pair) == 2:
            by_message.setdefault(pair[1], []).append(pair[0])
    if len(by_message) < len(items) and all(len(p) == 2 for p in pairs):
        items = [f"{names[0]}: {message}" if len(names) == 1 else
                 f"{len(names)} × {message} ({', '.join(names[:2])}{', …' if len(names) > 2 else ''})"
                 for message, names in by_message.items()]
    line = "; ".join(items)
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def checks_html(report: dict[str, Any], highlight: set[str] | None = None) -> str:
    """The checks as an HTML table grouped by category: verdict, id, what it guards, the evidence in
    one line and (folded) its whole summary and record; failed rows tinted with the verdict in red,
    `highlight` ids marked."""
    highlight = highlight or set()
    # inline: the notebook's table style right-aligns every cell and beats a <style> block
    td = '<td style="text-align:left;vertical-align:top">'
    rows = []
    for cat in category_counts(report):
        rows.append(f'<tr><th colspan="5" style="text-align:left;background:#eceff1">{html.escape(cat["category"])} '
                    f'({cat["passed"]}/{cat["passed"] + cat["failed"]} pass)</th></tr>')
        for c in (c for c in report["checks"] if c["category"] == cat["category"]):
            evidence = c["evidence"]
            summary = str(evidence.get("summary", ""))
            details = json.dumps({k: v for k, v in evidence.items() if k != "summary"}, indent=1, default=str)
            mark = " &larr; caught the fault" if c["id"] in highlight else ""
            verdict = "PASS" if c["passed"] else f'<span style="{FAIL_STYLE}">FAIL</span>'
            rows.append(
                f'<tr style="{"" if c["passed"] else FAIL_ROW_STYLE}">'
                f'{td}{verdict}</td>{td}<code>{html.escape(c["id"])}</code>{mark}</td>'
                f'<td style="text-align:left;vertical-align:top;min-width:14em">{html.escape(c["description"])}</td>'
                f'{td}{html.escape(summary_line(summary))}'
                f'<details><summary>evidence</summary><p>{html.escape(summary)}</p>'
                f'<pre style="white-space:pre-wrap;max-height:20em;overflow:auto">'
                f'{html.escape(details)}</pre></details></td>{td}{c["seconds"]:.2f}s</td></tr>')
    head = "".join(f'<th style="text-align:left">{h}</th>' for h in ("verdict", "check", "guards", "evidence", "time"))
    return f'<table class="guardrails"><tr>{head}</tr>{"".join(rows)}</table>'


def pass_fail_figure(report: dict[str, Any], title: str) -> Any:
    """Stacked bars per category: checks passed (green) and failed (red)."""
    import plotly.graph_objects as go

    counts = category_counts(report)
    cats = [c["category"] for c in counts]
    fig = go.Figure([go.Bar(name="passed", x=cats, y=[c["passed"] for c in counts], marker_color="#2e7d32"),
                     go.Bar(name="failed", x=cats, y=[c["failed"] for c in counts], marker_color="#c62828")])
    fig.update_layout(barmode="stack", title={"text": title}, yaxis_title="checks", height=420)
    return fig
