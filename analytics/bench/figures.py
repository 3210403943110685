"""Notebook 03's tables and figures: pandas frames and plotly charts of a benchmark result.

Owns the per-query correctness and timing tables (mismatches in red), the engines, cold-pass,
live-ingest, adaptive-views and targets tables, each narrow enough for a ~1,000 px page, the flat
`results` notebook 03 glues, and the latency, route-mix, speedup, cold-pass and scale-sweep charts. Imports pandas and plotly only inside the functions (the command line does
not need them). Must not compute figures: it shows what the result document holds.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from analytics.bench.peers import ENGINES, PEERS
from analytics.bench.result import BenchmarkSummary
from analytics.bench.text import format_pct, target_verdict
from analytics.core.files import format_bytes
from analytics.serving.router import LAKE


def correctness_frame(result: BenchmarkSummary) -> Any:
    """One row per query: workload, route, the lake and view versions the product's answer reflects,
    rows, whether every engine's answer matched the baseline (else which did not, or could not answer) and why."""
    import pandas as pd

    rows = []
    for q in result.queries:
        verdicts = {e: "unsupported" if ok is None else ("match" if ok else "MISMATCH")
                    for e, ok in (q.get("engine_match") or {}).items() if e != "baseline"}
        odd = [f"{e}: {v}" for e, v in verdicts.items() if v != "match"]
        rows.append({"id": q["id"], "workload": q["workload"], "route": q.get("route"),
                     "lake version": q.get("lake_version"), "view version": q.get("view_version"), "rows": q.get("rows"),
                     "match": q["match"], "engines": "; ".join(odd) or f"all {len(verdicts)} match",
                     "reason": "; ".join(f"{e}: {r}" for e, r in (q.get("reasons") or {}).items())})
    return pd.DataFrame(rows)


def timings_frame(result: BenchmarkSummary) -> Any:
    """One row per query: warm median ms per engine (the baseline's one run), the product's speedup
    over each peer, and the routing time."""
    import pandas as pd

    rows = []
    for q in result.queries:
        row: dict[str, Any] = {"id": q["id"]}
        row.update({f"{e} ms": q["ms"][e] for e in ENGINES if e in q.get("ms", {})})
        row.update({f"x vs {p}": s for p, s in (q.get("speedup") or {}).items()})
        row["plan ms"] = q.get("plan_ms")
        rows.append(row)
    return pd.DataFrame(rows)


# Long text columns wrap instead of widening the table past the page (~1,000 px).
WRAP = {"white-space": "normal", "max-width": "360px", "overflow-wrap": "anywhere"}


def style_correctness(frame: Any) -> Any:
    """The correctness table with mismatching rows in red, unsupported answers in grey, long reasons wrapped."""
    def cell(v: Any) -> str:
        if isinstance(v, str) and "MISMATCH" in v:
            return "background-color: #f8d0d0; color: #a00000; font-weight: bold"
        if isinstance(v, str) and "unsupported" in v:
            return "color: #888888"
        return ""

    def row(r: Any) -> list[str]:
        bad = r.get("match") is False
        return ["background-color: #fde8e8" if bad else "" for _ in r]

    styler = frame.style.apply(row, axis=1).hide(axis="index").set_properties(subset=["engines", "reason"], **WRAP)
    styler = styler.map(cell, subset=["engines"]) if hasattr(styler, "map") else styler.applymap(cell, subset=["engines"])
    return styler.format(na_rep="-")


def narrow(frame: Any) -> Any:
    """A table of figures styled to fit the page: no index, headers wrapped (`cold median ms` on
    two lines rather than one wide column), times to 3 decimals, ratios to 1, `-` for missing."""
    fmt = {c: "{:,.3f}" for c in frame.columns if str(c).endswith(" ms")}
    fmt.update({c: "{:,.1f}" for c in frame.columns if str(c).startswith("x ")})
    return (frame.style.hide(axis="index").format(fmt, na_rep="-")
            .set_table_styles([{"selector": "th", "props": "white-space: normal; max-width: 7em"}]))


def notebook_results(result: BenchmarkSummary) -> list[dict[str, Any]]:
    """Per query, the product against the baseline in the flat form notebook 03 has always glued as `results`."""
    out = []
    for q in result.queries:
        rows = q.get("engine_rows") or {}
        row: dict[str, Any] = {"id": q["id"], "query": json.dumps(q["query"], separators=(",", ":")),
                               "rows": rows.get("product"), "route": q.get("route"),
                               "workbench_ms": q["ms"].get("product"), "workbench_cold_ms": q["cold_ms"].get("product")}
        if "baseline" in q["ms"]:
            row.update(baseline_rows=rows.get("baseline"), baseline_ms=q["ms"]["baseline"],
                       speedup=(q.get("speedup") or {}).get("baseline"))
        row["match"] = bool(q["match"]) if result.checked else None
        row["reason"] = "; ".join(f"{e}: {r}" for e, r in (q.get("reasons") or {}).items()
                                  if (q.get("engine_match") or {}).get(e) is False) or q.get("error") or ""
        out.append(row)
    return out


def engines_frame(result: BenchmarkSummary) -> Any:
    """One row per engine: median, p95, total, cold median, best-run median, peak RSS, and the product's
    speedup over it (of the medians, and the median of per-query ratios). `engine_labels` says what each is."""
    import pandas as pd

    rows = []
    for e, s in result.engines.items():
        sp = result.speedup.get(e, {})
        rows.append({"engine": e, "queries": s["queries"], "median ms": s["median_ms"], "p95 ms": s["p95_ms"],
                     "total ms": s["total_ms"], "cold median ms": s["cold_median_ms"],
                     "best median ms": s.get("best_median_ms"), "peak RSS": format_bytes(s.get("peak_rss_bytes")),
                     "x of medians": sp.get("of_medians"), "x per query": sp.get("median_per_query")})
    return pd.DataFrame(rows)


def engine_labels(result: BenchmarkSummary) -> str:
    """`engine`: what it is, one per line (Markdown), for the legend under the engines table."""
    return "  \n".join(f"`{e}`: {s['label']}" for e, s in result.engines.items())


def cold_frame(result: BenchmarkSummary) -> Any:
    """One row per cold engine and start (page cache as found, or disk-cold: the lake's pages dropped):
    wall of each new process (one per workload), peak RSS, bytes read from disk, cold and warm medians."""
    import pandas as pd

    rows = []
    for start, summary in (("cache as found", result.cold), ("disk-cold", result.cold_disk)):
        for e, s in ((summary or {}).get("engines") or {}).items():
            row: dict[str, Any] = {"engine": e, "start": start}
            for w, p in s["workloads"].items():
                row[f"{w} wall ms"] = p["wall_ms"]
            row.update({"wall ms (all)": s["wall_ms"], "peak RSS": format_bytes(s.get("peak_rss_bytes")),
                        "read from disk": format_bytes(s.get("read_bytes")), "cold median ms": s["median_ms"],
                        "cold p95 ms": s["p95_ms"], "warm median ms": (result.engines.get(e) or {}).get("median_ms"),
                        "errors": s["errors"]})
            rows.append(row)
    return pd.DataFrame(rows)


def figure_cold(result: BenchmarkSummary) -> Any:
    """The cold pass per engine: wall time of its new processes (by workload) and their peak RSS, side by side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    engines = (result.cold or {}).get("engines") or {}
    names = list(engines)
    fig = make_subplots(rows=1, cols=2,
                        subplot_titles=("wall time of one new process, median (s)", "peak RSS, largest (MiB)"))
    for w in result.workloads:
        walls = [(engines[e]["workloads"].get(w) or {}).get("wall_ms") for e in names]
        fig.add_trace(go.Bar(x=names, y=[None if v is None else v / 1000 for v in walls], name=w,
                             hovertemplate="%{x}<br>%{y:.2f} s"), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[(engines[e].get("peak_rss_bytes") or 0) / 2**20 for e in names],
                         name="peak RSS", marker_color="#7f7f7f", showlegend=False,
                         hovertemplate="%{x}<br>%{y:,.0f} MiB"), row=1, col=2)
    repeats = (result.cold or {}).get("repeats", 1)
    fig.update_layout(title=f"Cold pass at {result.rows:,} rows: each engine in one new process per workload, "
                            f"no result cache (median of {repeats})", barmode="stack", height=420)
    return fig


def freshness_frame(result: BenchmarkSummary) -> Any:
    """Live ingest of one part (`result.freshness`): what each step took, and the view-routed
    median with pending deltas; None when that benchmark did not run."""
    import pandas as pd

    fr = result.freshness
    if not fr:
        return None
    rows = [("part rows", f"{fr['part_rows']:,}"), ("lake rows before", f"{fr['lake_rows']:,}"),
            ("freshness: rename to first view answer including it", f"{fr['freshness_seconds']:.2f} s"),
            ("prepare of the part", f"{fr['prepare_seconds']:.2f} s"),
            ("refresh of every view (deltas)", f"{fr['refresh_seconds']:.2f} s ({', '.join(fr['refresh_modes'])})")]
    for n in (0, 5, 10):
        m = (fr.get(f"deltas_{n}") or {}).get("median_ms")
        if m is not None:
            rows.append((f"view-routed median, {n} pending deltas", f"{m:.3f} ms"))
    if "compact_seconds" in fr:
        rows.append(("compaction of the deltas", f"{fr['compact_seconds']:.2f} s ({fr['compacted']} views)"))
    return pd.DataFrame(rows, columns=["what", "measured"])


def adaptive_frame(result: BenchmarkSummary) -> Any:
    """The adaptive-views benchmark (`result.adaptive`): per workload, before and after `build
    --adaptive`, the share from views (of the view-answerable queries, and of those a rollup without
    per-user/auction keys answers: the share the target counts), the lake-routed p50/p95 and the total;
    None when it did not run."""
    import pandas as pd

    ad = result.adaptive
    if not ad:
        return None
    rows = []
    for wl in ("family_b", "judges"):
        for when in ("before", "after"):
            p = (ad.get(when) or {}).get(wl)
            if p:
                rows.append({"workload": wl, "when": when, "queries": p["queries"], "from views": p["from_views"],
                             "view-answerable from views": f"{p['viewable_from_views']}/{p['viewable']}",
                             "rollup-answerable from views": f"{p['rollup_viewable_from_views']}/{p['rollup_viewable']}",
                             "lake-routed": p["lake_queries"], "via an index": p["via_index"],
                             "lake p50 ms": p["lake_p50_ms"], "lake p95 ms": p["lake_p95_ms"], "total ms": p["total_ms"]})
    return pd.DataFrame(rows)


def targets_frame(result: BenchmarkSummary) -> Any:
    """The targets with this run's figure and verdict (met, MISSED, n/a below the size a ratio needs,
    or - when not measured), long names wrapped to the page."""
    import pandas as pd

    frame = pd.DataFrame([{"target": t["target"], "want": t["want"], "this run": t["shown"],
                           "verdict": target_verdict(t)} for t in result.targets])
    colour = {"met": "color: #006000", "MISSED": "color: #a00000; font-weight: bold"}
    styler = frame.style.hide(axis="index").set_properties(subset=["target"], **WRAP)
    paint = styler.map if hasattr(styler, "map") else styler.applymap
    return paint(lambda v: colour.get(v, "color: #666666"), subset=["verdict"])


def figure_latency(result: BenchmarkSummary) -> Any:
    """Per-query warm latency by engine (log scale), queries in workload order."""
    import plotly.graph_objects as go

    ids = [q["id"] for q in result.queries]
    fig = go.Figure()
    for e in ENGINES:
        if e not in result.engines:
            continue
        ys = [q["ms"].get(e) for q in result.queries]
        fig.add_trace(go.Scatter(x=ids, y=ys, mode="markers", name=e,
                                 text=[q.get("route") or "" for q in result.queries],
                                 hovertemplate="%{x}<br>%{y:.3f} ms<br>route %{text}"))
    bad = [q["id"] for q in result.queries if not q["match"]]
    for qid in bad:
        fig.add_vline(x=qid, line_color="red", line_width=2, opacity=0.5)
    fig.update_layout(title=f"Warm latency per query and engine at {result.rows:,} rows (median of "
                            f"{result.repeats}; baseline one run)", yaxis_type="log", yaxis_title="ms (log)",
                      xaxis_title="query", height=480)
    return fig


def figure_route_mix(result: BenchmarkSummary) -> Any:
    """How many queries each route answered (views and the lake)."""
    import plotly.graph_objects as go

    mix = result.product.get("route_mix", {})
    colors = ["#d62728" if r == LAKE else "#1f77b4" for r in mix]
    fig = go.Figure(go.Bar(x=list(mix.values()), y=list(mix.keys()), orientation="h", marker_color=colors))
    fig.update_layout(title=f"Route mix: view hit rate {format_pct(result.view_hit_rate)}", xaxis_title="queries",
                      yaxis={"autorange": "reversed"}, height=120 + 28 * len(mix))
    return fig


def figure_ratios(result: BenchmarkSummary) -> Any:
    """Distribution of the per-query speedup of the product over each peer (log scale)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for p in PEERS:
        vals = [q["speedup"][p] for q in result.queries if (q.get("speedup") or {}).get(p)]
        if vals:
            fig.add_trace(go.Box(y=vals, name=f"vs {p}", boxpoints="all", jitter=0.4,
                                 text=[q["id"] for q in result.queries if (q.get("speedup") or {}).get(p)]))
    fig.add_hline(y=1, line_dash="dot", line_color="grey")
    fig.update_layout(title="Speedup of the product per query (peer ms / product ms)", yaxis_type="log",
                      yaxis_title="x (log)", height=450)
    return fig


def figure_sweep(sweep_result: Mapping[str, Any], stat: str = "median_ms") -> Any:
    """Time against rows per engine, log axes."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for e, figs in sweep_result.get("engines", {}).items():
        fig.add_trace(go.Scatter(x=sweep_result["rows"], y=figs[stat], mode="lines+markers", name=e))
    fig.update_layout(title=f"Scale sweep: {stat.replace('_ms', '')} query time against rows", xaxis_type="log",
                      yaxis_type="log", xaxis_title="rows (log)", yaxis_title="ms (log)", height=450)
    return fig
