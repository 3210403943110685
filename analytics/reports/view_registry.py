"""The materialized views as notebook 02 shows them: the registry, each view's health and how often it served.

Owns the registry table (per view, the catalog's then the lake's adaptive ones: where it comes
from and, for an adaptive view, why it was chosen; rows, bytes, rollup ratio against the lake,
build time, the lake version it was built from, refresh mode, pending deltas, health with its
reason, and the router's use of it from the query telemetry) and how it is shown (health and use
first, the rest folded away), the record of what one refresh changed (versions, mode, segments
merged) and the two charts. Health is what the caller's
`Workbench.health` says (the registry's `staleness` rule, plus files it could not load); use
is what `analytics.batch.telemetry` recorded. Must not decide health or routes itself, nor
build views other than through `analytics.views.build.build`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from analytics.batch.telemetry import read_events, stats
from analytics.core.files import format_bytes
from analytics.lake.state import Lake
from analytics.views.adaptive_catalog import all_views
from analytics.views.build import build
from analytics.views.catalog import VIEWS
from analytics.views.registry import ViewEntry, load_registry


def router_use(lake_root: str | os.PathLike) -> dict[str, Any]:
    """From LAKE/_telemetry: answered queries per route (view name or `lake`), of them cache hits,
    and `telemetry.stats` over every event."""
    events = list(read_events(lake_root))
    routes: dict[str, dict[str, int]] = {}
    for ev in events:
        if ev.get("error"):
            continue
        use = routes.setdefault(ev.get("route") or "?", {"queries": 0, "cache_hits": 0})
        use["queries"] += 1
        use["cache_hits"] += bool(ev.get("cache"))
    return {"routes": routes, "stats": stats(events)}


def registry_table(lake_root: str | os.PathLike, health: Mapping[str, str | None]) -> list[dict[str, Any]]:
    """One row per view, the catalog's in catalog order then the adaptive ones (see the module
    docstring); `health` is `Workbench.health` (view name -> None when healthy, else why not)."""
    lake = Lake.open(lake_root)
    registry = load_registry(lake.root)
    by_type = (lake.state.get("totals") or {}).get("lake_by_type", {})
    use = router_use(lake.root)["routes"]
    rows = []
    for view in all_views(lake.root).values():
        entry = registry.get(view.name)
        lake_rows = sum(by_type.get(t, 0) for t in view.types)
        why = health.get(view.name, "not known to the workbench")
        served = use.get(view.name, {"queries": 0, "cache_hits": 0})
        rows.append({
            "view": view.name, "origin": "catalog" if view.name in VIEWS else view.note,
            "grain": view.grain, "dims": ", ".join(view.dims) or "-",
            # `entry and ...`: None in each column of a view not built
            "version": entry and entry.version, "rows": entry and entry.rows, "bytes": entry and entry.bytes,
            "lake_rows": lake_rows,
            "rollup": round(lake_rows / entry.rows, 1) if entry and entry.rows else None,
            "build_s": entry and entry.build_seconds, "built_at": entry and entry.built_at,
            "built_from": entry and entry.lake_version, "mode": entry and entry.mode,
            "segments": len(entry.segments) if entry else 0, "deltas": len(entry.deltas) if entry else 0,
            "healthy": why is None, "health": "healthy" if why is None else why,
            "router_uses": served["queries"], "cache_hits": served["cache_hits"],
        })
    return rows


# What a reader of the registry asks first (is each view healthy, how big, is it used); the rest
# (where it came from, which version, how it was built) is one click away, so the table fits the page.
COMPACT_COLUMNS: tuple[str, ...] = ("view", "health", "rows", "bytes", "rollup", "router_uses", "cache_hits")
DETAIL_COLUMNS: tuple[str, ...] = ("view", "origin", "version", "build_s", "built_at", "built_from", "mode",
                                   "segments", "deltas")
UNHEALTHY_STYLE = "color: #c62828; font-weight: bold"


def registry_html(table: list[dict[str, Any]]) -> str:
    """The registry as HTML: the compact columns (unhealthy views in red), then every other column
    in a folded `<details>` section."""
    import pandas as pd

    views = pd.DataFrame(table)
    formats = {"rows": "{:,.0f}", "bytes": format_bytes, "rollup": "{:,.1f}x", "build_s": "{:.3f}",
               "version": "v{:.0f}"}

    def styled(columns: tuple[str, ...]) -> str:
        shown = views[list(columns)]
        red = lambda row: ["" if views.at[row.name, "healthy"] else UNHEALTHY_STYLE] * len(row)  # noqa: E731
        return (shown.style.apply(red, axis=1).hide(axis="index")
                .format({k: v for k, v in formats.items() if k in columns}, na_rep="-").to_html())

    return (styled(COMPACT_COLUMNS) + "<details><summary>Every column: "
            + ", ".join(c for c in DETAIL_COLUMNS if c != "view") + "</summary>"
            + styled(DETAIL_COLUMNS) + "</details>")


def refresh(lake_root: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """`build` the stale views (incrementally where only parts were appended) and say what changed:
    per view its status, versions before and after, mode and the segments merged (with their raw files)."""
    root = Path(lake_root)
    before = load_registry(root)
    summary = build(root, progress=False, **options)
    after = load_registry(root)
    sources = {s["segment"]: s.get("source", {}).get("file") for s in Lake.open(root).state["segments"]}
    status = {**{n: "up to date" for n in summary["up_to_date"]}, **{n: "built" for n in summary["built"]},
              **{n: f"FAILED: {why}" for n, why in summary["failed"].items()}}
    changes = []
    for view in all_views(root).values():
        old, new = before.get(view.name), after.get(view.name)
        built = status.get(view.name) == "built" and new is not None
        added = sorted(set(new.segments) - set(old.segments if old else ())) if built else []
        changes.append({"view": view.name, "status": status.get(view.name, "not selected"),
                        "version_before": old.version if old else None, "version_after": new.version if new else None,
                        "mode": new.mode if built else None,
                        "segments_added": added, "files_added": [sources.get(s) for s in added],
                        "build_s": new.build_seconds if built else None})
    return {"lake_version": summary["lake_version"], "seconds": summary["seconds"], "changes": changes,
            "failed": summary["failed"]}


def size_figure(table: list[dict[str, Any]], lake_bytes: int) -> Any:
    """Each view's rows and bytes beside the lake's own (grey bar first; log scale), coloured by health."""
    from plotly.subplots import make_subplots

    built = [r for r in table if r["rows"]]
    lake_rows = max((r["lake_rows"] for r in table), default=0)
    names = ["lake"] + [r["view"] for r in built]
    colors = ["#757575"] + ["#2e7d32" if r["healthy"] else "#c62828" for r in built]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("rows", "bytes on disk"))
    fig.add_bar(x=names, y=[lake_rows] + [r["rows"] for r in built], marker_color=colors, name="rows",
                customdata=[1.0] + [r["rollup"] for r in built], hovertemplate="%{x}: %{y:,} rows, rollup %{customdata}x",
                row=1, col=1)
    fig.add_bar(x=names, y=[lake_bytes] + [r["bytes"] for r in built], marker_color=colors, name="bytes",
                customdata=[format_bytes(lake_bytes)] + [format_bytes(r["bytes"]) for r in built],
                hovertemplate="%{x}: %{customdata}", row=1, col=2)
    fig.update_yaxes(type="log")
    fig.update_layout(title={"text": "View size against the lake (log scale; grey: the lake, red: unhealthy views)"},
                      showlegend=False, height=540)
    return fig


def build_time_figure(table: list[dict[str, Any]]) -> Any:
    """Seconds each view's current version took to build, coloured by refresh mode."""
    import plotly.express as px

    built = [r for r in table if r["build_s"] is not None]
    fig = px.bar(built, x="view", y="build_s", color="mode", labels={"build_s": "build seconds"},
                 title="Build time per view (current version)",
                 color_discrete_map={"full": "#1565c0", "incremental": "#ef6c00", "compacted": "#6a1b9a",
                                     "recomputed": "#00838f"})
    fig.update_layout(height=460)
    return fig
