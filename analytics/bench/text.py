"""The benchmark as text: how its figures are written, and the summary table `make benchmark` prints.

Owns `format_ms`, `format_pct` and `summary_table` (every engine's warm and cold figures, the
cold pass of new processes per workload (medians over repeats), the product's routing figures,
sizes, phases and the targets met or missed, mismatches in red). Bytes are written by `core.files.format_bytes`. Must
not compute figures: it prints what the result document (`summary.py`) holds.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Mapping

from analytics.bench.peers import ENGINES
from analytics.bench.phases import PHASE_ORDER
from analytics.bench.result import BenchmarkSummary
from analytics.core.files import format_bytes


def format_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 10_000:
        return f"{ms / 1000:,.1f} s"
    if ms >= 100:
        return f"{ms:,.0f} ms"
    if ms >= 1:
        return f"{ms:.2f} ms"
    return f"{ms:.3f} ms"


def format_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def target_verdict(target: Mapping[str, Any]) -> str:
    """`met`, `MISSED`, `n/a below 1M rows` (a ratio target on small data) or `-` (not measured); a
    target of a JSON written before verdicts were recorded is read from its `ok`."""
    return target.get("verdict") or {True: "met", False: "MISSED", None: "-"}[target["ok"]]


def _color(text: str, code: str, enable: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if enable else text


def _cold_lines(result: BenchmarkSummary) -> list[str]:
    """The cold pass: per engine, the wall of each new process (one per workload), its peak RSS, per-query medians."""
    cold = result.cold
    if not cold or not cold.get("engines"):
        return []
    workloads = list(result.workloads)
    walls = "wall (" + " / ".join(workloads) + ")"
    width = max(len(walls), 24)
    head = f"{'cold pass':<18}{walls:>{width}}{'peak RSS':>11}{'cold median':>13}{'warm median':>13}{'errors':>8}"
    lines = [f"cold: {cold['how']}", head, "-" * len(head)]
    passes = [("", cold["engines"]), (" disk", (result.cold_disk or {}).get("engines") or {})]
    for suffix, engines in passes:
        for e, s in engines.items():
            wall = " / ".join(format_ms(s["workloads"].get(w, {}).get("wall_ms")) for w in workloads)
            warm = (result.engines.get(e) or {}).get("median_ms")
            lines.append(f"{e + suffix:<18}{wall:>{width}}{format_bytes(s.get('peak_rss_bytes')):>11}"
                         f"{format_ms(s.get('median_ms')):>13}{format_ms(warm):>13}{s.get('errors', 0):>8}")
    bandwidth = ((result.cold_disk or {}).get("read_bandwidth") or {}).get("bytes_per_s")
    if bandwidth:
        lines.append(f"disk: the lake's pages dropped before each process; cold read {format_bytes(bandwidth)}/s")
    lines.append(f"view-routed cold median (product, first touch included): "
                 f"{format_ms(cold.get('view_routed_cold_median_ms'))}")
    return lines


def summary_table(result: BenchmarkSummary, color: bool | None = None) -> str:
    """The benchmark's figures as a plain-text table (ANSI red/green when `color`, default: stdout is a tty)."""
    if color is None:
        color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
    red = lambda s: _color(s, "31;1", color)  # noqa: E731
    green = lambda s: _color(s, "32", color)  # noqa: E731
    engines = [e for e in ENGINES if e in result.engines]
    lines: list[str] = []
    if not result.checked:
        status = red("ANSWERS NOT CHECKED (no raw data, no baseline run)")
    elif result.all_match:
        status = green("ALL ANSWERS MATCH THE BASELINE")
    else:
        status = red(f"{len(result.mismatches)} MISMATCH(ES) WITH THE BASELINE")
    wl = ", ".join(f"{w} {v['queries']}" for w, v in result.workloads.items())
    lines.append(f"Benchmark at {result.rows:,} rows: {result.n_queries} queries ({wl}), "
                 f"{result.repeats} warm repeats - {status}")
    head = (f"{'engine':<14}{'median':>11}{'p95':>11}{'total':>11}{'cold median':>13}{'best median':>13}{'peak RSS':>11}"
            "   product speedup (of medians / per-query median)")
    lines.append(head)
    lines.append("-" * len(head))
    for e in engines:
        s = result.engines[e]
        sp = result.speedup.get(e)
        sp_text = f"{sp['of_medians']:,.1f}x / {sp['median_per_query']:,.1f}x" if sp and sp.get("of_medians") else ""
        lines.append(f"{e:<14}{format_ms(s['median_ms']):>11}{format_ms(s['p95_ms']):>11}{format_ms(s['total_ms']):>11}"
                     f"{format_ms(s['cold_median_ms']):>13}{format_ms(s.get('best_median_ms')):>13}"
                     f"{format_bytes(s.get('peak_rss_bytes')):>11}   {sp_text}")
    lines += _cold_lines(result)
    prod = result.product
    if prod:
        hits = {w: v["view_hit_rate"] for w, v in result.workloads.items() if v["view_hit_rate"] is not None}
        lines.append(f"view hit rate: {format_pct(result.view_hit_rate)} of all queries"
                     + "".join(f"; {w} {h:.1%}" for w, h in hits.items()))
        lines.append(f"product: view-routed median {format_ms(prod.get('view_median_ms'))} "
                     f"(p95 {format_ms(prod.get('view_p95_ms'))}, best-run median {format_ms(prod.get('view_best_median_ms'))}, "
                     f"{prod.get('view_queries')} queries); lake-routed median "
                     f"{format_ms(prod.get('lake_median_ms'))}, p95 {format_ms(prod.get('lake_p95_ms'))} "
                     f"({prod.get('lake_queries')} queries)")
        lines.append(f"routing overhead (Workbench.plan): median {format_ms(prod.get('routing_overhead_median_ms'))}, "
                     f"p95 {format_ms(prod.get('routing_overhead_p95_ms'))}; startup + view loading "
                     f"{format_ms(prod.get('startup_ms'))}")
        b = prod.get("batch")
        if b and b.get("error"):
            lines.append(red(f"whole workload as one runner batch: FAILED - {b['error']}"))
        elif b:
            lines.append(f"whole workload as one runner batch: {format_ms(b['wall_ms'])} wall, {b['lake_queries']} lake "
                         f"queries in {b['lake_scans']} scan(s), {b['workers']} worker(s), "
                         + (green("answers match") if b["all_match"] else red("answers differ")))
    sz = result.sizes
    lines.append(f"sizes: CSV {format_bytes(sz['csv_bytes'])}; lake {format_bytes(sz['lake_bytes'])} "
                 f"({sz['lake_to_csv'] or 0:.2f}x CSV); views {format_bytes(sz['views_bytes'])} "
                 f"({sz['views_to_csv'] or 0:.3f}x CSV)"
                 + (f", {format_bytes(sz['views_on_disk_bytes'])} with serving copies" if sz.get("views_on_disk_bytes") else ""))
    ph = result.phases
    parts = []
    for name in PHASE_ORDER:
        p = ph.get(name)
        if not p or p.get("seconds") is None:
            continue
        rss = max(p.get("peak_rss_bytes") or 0, p.get("max_process_rss_bytes") or 0) or None
        parts.append(f"{name} {p['seconds']:.1f}s (peak RSS {format_bytes(rss)})"
                     + (" [reused]" if p.get("reused") else ""))
    lines.append("phases: " + ("; ".join(parts) if parts else "not recorded"))
    env = result.environment
    if env:
        lines.append(f"machine: {env.get('affinity')} core(s) available, load average {env.get('loadavg_start', ['?'])[0]} "
                     f"-> {env.get('loadavg_end', ['?'])[0]}; duckdb {env.get('duckdb')}, polars {env.get('polars')}")
    target_rows = result.target_rows
    at_scale = result.rows == target_rows
    lines.append("targets" + ("" if at_scale else f" (stated for {target_rows:,} rows; this run has {result.rows:,})")
                 + ":")
    for t in result.targets:
        verdict = target_verdict(t)
        mark = {"met": green(" met "), "MISSED": red("MISSED"), "-": "  -  "}.get(verdict, " n/a ")
        lines.append(f"  [{mark}] {t['target']}: {t['shown']} (want {t['want']})"
                     + (f": {verdict}" if mark == " n/a " else ""))
    for m in result.mismatches:
        lines.append(red(f"MISMATCH {m['id']} [{m['engine']}]: {m['reason']}"))
    for u in result.unsupported:
        lines.append(f"unsupported {u['id']} [{u['engine']}]: {u['reason']}")
    return "\n".join(lines)
