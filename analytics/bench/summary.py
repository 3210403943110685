"""The benchmark's result document: per-query records turned into medians, speedups, sizes and targets.

Owns `summarize` (the figures `benchmark.json` holds, from what `run.py` and `cold.py` recorded),
the statistics helpers (median, p95 by linear interpolation, rounding), the issue's targets and
`evaluate_targets`, and `sweep_from_files` (benchmark JSONs of several sizes combined). Must not
run, time or check queries, nor format text (`text.py`) or draw (`figures.py`).
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from analytics.batch.telemetry import percentile
from analytics.bench.cold import COLD_ENGINES, COLD_LABELS
from analytics.bench.peers import ENGINE_LABELS, ENGINES, PEERS
from analytics.bench.result import BenchmarkSummary
from analytics.bench.text import format_ms
from analytics.bench.workloads import JUDGES
from analytics.core.files import format_bytes, write_atomic
from analytics.core.memory import parse_size
from analytics.lake.state import Lake
from analytics.serving.router import LAKE

TARGET_ROWS = 15_000_000
# The targets, stated for 15M rows; reported, never asserted.
TARGETS: dict[str, float] = {
    "view_median_ms_max": 1.0,
    "speedup_vs_baseline_min": 1000.0,
    "speedup_vs_duckdb_lake_min": 50.0,
    "judges_view_hit_rate_min": 0.95,
    "lake_p95_ms_max": 1000.0,
    # one cold `analytics run` of the judges workload (a new process, no result cache)
    "cold_wall_ms_max": 1000.0,
    "cold_view_median_ms_max": 1.0,
    "cold_peak_rss_bytes_max": float(parse_size("400MB")),
    # stated for 245M rows: the view-routed queries of that cold run together
    "cold_view_sum_ms_max": 100.0,
    # the cold-serving issue's warm figure, stated at both scales
    "warm_view_median_ms_max": 0.3,
    # adaptive views (analytics bench adaptive): family B before and after `build --adaptive`
    "adaptive_rollup_share_min": 0.95,
    "adaptive_lake_p95_drop_min": 3.0,
    "adaptive_judges_total_ms_max": 100.0,  # stated for 245M rows
    "adaptive_judges_lake_p95_ms_max": 300.0,  # stated for 245M rows
    # family C, unseen: taught, then fresh queries before and after `build --adaptive` (1M and 15M rows)
    "adaptive_unseen_share_min": 0.6,
    "adaptive_unseen_speedup_min": 3.0,
    # live ingest (analytics bench freshness): a 1M-row part at 15M rows, 5M rows at 245M
    "freshness_s_max": 5.0,
    "freshness_full_scale_s_max": 20.0,
    "pending_deltas_view_median_ms_max": 1.0,
}
FULL_SCALE_ROWS = 245_000_000
# Targets on ratios to a peer (speedups, the cold run against --no-views, the adaptive p95 drop)
# cannot apply on small data, where fixed costs (process start, DuckDB's planning, loading views)
# swamp the work they compare: below this size they are reported "n/a", neither met nor missed.
SCALED_MIN_ROWS = 1_000_000


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def p95(values: Iterable[float | None]) -> float | None:
    return percentile(values, 95)


def rounded(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def _sizes(raw_dir: Path | None, lake: Lake) -> dict[str, Any]:
    from analytics.views.registry import load_registry

    csv = sum(f.stat().st_size for f in raw_dir.glob("*.csv")) if raw_dir is not None else 0
    lake_bytes = lake.size_bytes()
    views: dict[str, int] = {}
    for name, entry in load_registry(lake.root).items():
        f = lake.root / entry.file
        if f.is_file():
            views[name] = f.stat().st_size
    view_bytes = sum(views.values())
    return {
        "csv_bytes": csv, "lake_bytes": lake_bytes, "views_bytes": view_bytes, "views": views,
        "lake_to_csv": rounded(lake_bytes / csv) if csv else None,
        "views_to_csv": rounded(view_bytes / csv) if csv else None,
        "lake_and_views_to_csv": rounded((lake_bytes + view_bytes) / csv) if csv else None,
    }


def _batch_failed(product_extra: Mapping[str, Any]) -> bool:
    return "error" in (product_extra.get("batch") or {})


def _query_entry(it: dict[str, Any], recs: dict[str, dict[str, Any]], cold: Mapping[str, dict[str, Any]],
                 engines: Sequence[str], product_extra: Mapping[str, Any], mismatches: list[dict[str, Any]],
                 unsupported: list[dict[str, Any]]) -> dict[str, Any]:
    """One query's figures; its mismatches and unsupported engines are appended to the lists given."""
    prod = recs.get("product", {})
    ran = [e for e in engines if e in recs]
    entry: dict[str, Any] = {
        "id": it["id"], "workload": it["workload"], "index": it["index"], "query": it["raw"],
        "route": prod.get("route"), "fallback_reason": prod.get("fallback_reason"),
        "rows": recs.get("baseline", prod).get("rows"),
        "engine_rows": {e: recs[e].get("rows") for e in ran},
        "ms": {e: rounded(recs[e].get("ms")) for e in ran},
        "cold_ms": {e: rounded(recs[e].get("cold_ms")) for e in ran},
        "warm_ms": {e: [rounded(x) for x in recs[e].get("warm_ms", [])] for e in ran},
        # the fastest warm run: on a busy machine the median carries scheduling noise, the best less
        "best_ms": {e: rounded(min(recs[e].get("warm_ms") or [recs[e]["ms"]])) for e in ran
                    if recs[e].get("ms") is not None},
        "status": {e: recs[e].get("status") for e in ran},
        "plan_ms": rounded(prod.get("plan_ms")),
        "lake_version": prod.get("lake_version"), "view_version": prod.get("view_version"),
    }
    if cold:
        entry["cold_pass_ms"] = {e: rounded(r.get("ms")) for e, r in cold.items()}
        entry["cold_pass_route"] = {e: r.get("route") for e, r in cold.items() if r.get("route")}
    if it["error"]:
        entry.update(match=False, error=it["error"])
        mismatches.append({"id": it["id"], "engine": "all", "reason": it["error"]})
        return entry
    engine_match: dict[str, bool | None] = {}
    for e in engines:
        rec = recs.get(e)
        if rec is None:
            engine_match[e] = False
            mismatches.append({"id": it["id"], "engine": e, "reason": "not run"})
            continue
        engine_match[e] = rec.get("match")
        if rec.get("status") == "unsupported":
            unsupported.append({"id": it["id"], "engine": e, "reason": rec.get("reason")})
        elif rec.get("match") is False:
            mismatches.append({"id": it["id"], "engine": e,
                               "reason": rec.get("reason") or rec.get("error") or rec.get("status")})
    if prod.get("batch_match") is False and not _batch_failed(product_extra):
        engine_match["product_batch"] = False
        mismatches.append({"id": it["id"], "engine": "product (batch run)", "reason": "batch answer differs"})
    for e, rec in cold.items():
        if rec.get("match") is False:
            engine_match[f"{e} (cold run)"] = False
            mismatches.append({"id": it["id"], "engine": f"{e} (cold run)", "reason": rec.get("reason")})
    entry["engine_match"] = engine_match
    entry["match"] = all(v is not False for v in engine_match.values())
    if prod.get("ms"):
        entry["speedup"] = {p: rounded(recs[p]["ms"] / prod["ms"], 2)
                            for p in PEERS if p in recs and recs[p].get("ms") is not None}
    reasons = {e: recs[e].get("reason") or recs[e].get("error") for e in ran
               if recs[e].get("match") is False or recs[e].get("status") == "unsupported"}
    reasons.update({f"{e} (cold run)": r.get("reason") for e, r in cold.items() if r.get("match") is False})
    if reasons:
        entry["reasons"] = reasons
    return entry


def _speedups(queries: list[dict[str, Any]], engines: Sequence[str]) -> dict[str, Any]:
    """The product over each peer, on the queries both answered."""
    out: dict[str, Any] = {}
    if "product" not in engines:
        return out
    for p in PEERS:
        both = [q for q in queries if q["ms"].get(p) is not None and q["ms"].get("product")]
        if p not in engines or not both:
            continue
        ratios = [q["ms"][p] / q["ms"]["product"] for q in both]
        med_p, med_prod = median(q["ms"][p] for q in both), median(q["ms"]["product"] for q in both)
        out[p] = {
            "queries": len(both),
            "of_medians": rounded(med_p / med_prod, 2) if med_prod else None,
            "of_totals": rounded(sum(q["ms"][p] for q in both) / sum(q["ms"]["product"] for q in both), 2),
            "median_per_query": rounded(median(ratios), 2), "min_per_query": rounded(min(ratios), 2),
            "max_per_query": rounded(max(ratios), 2),
        }
    return out


def _is_view(route: str | None) -> bool:
    return route not in (None, LAKE)


def _cold_summary(cold: Mapping[str, Any], queries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cold engine: wall and peak RSS of its processes (one per workload), per-query median and p95."""
    engines: dict[str, Any] = {}
    for e in COLD_ENGINES:
        run = cold["engines"].get(e)
        if run is None:
            continue
        workloads: dict[str, Any] = {}
        for proc in run["processes"]:
            w = proc["workload"]
            wq = [q for q in queries if q["workload"] == w and (q.get("cold_pass_ms") or {}).get(e) is not None]
            view_ms = [q["cold_pass_ms"][e] for q in wq if _is_view(q["cold_pass_route"].get(e))]
            workloads[w] = {**proc, "median_ms": rounded(median(q["cold_pass_ms"][e] for q in wq)),
                            "view_median_ms": rounded(median(view_ms)),
                            "view_sum_ms": rounded(sum(view_ms)) if view_ms else None}
        ms = [q["cold_pass_ms"][e] for q in queries if (q.get("cold_pass_ms") or {}).get(e) is not None]
        procs = run["processes"]
        walls = [p["wall_ms"] for p in procs]
        engines[e] = {
            "label": COLD_LABELS[e], "command": run["command"], "processes": len(procs), "workloads": workloads,
            "wall_ms": None if None in walls else rounded(sum(walls), 3),
            "peak_rss_bytes": max((p["peak_rss_bytes"] or 0 for p in procs), default=0) or None,
            "queries": len(ms), "errors": sum(p["errors"] for p in procs),
            "median_ms": rounded(median(ms)), "p95_ms": rounded(p95(ms)),
        }
    view_ms = [q["cold_pass_ms"]["product"] for q in queries
               if (q.get("cold_pass_ms") or {}).get("product") is not None
               and _is_view(q["cold_pass_route"].get("product"))]
    return {"how": cold["how"], "repeats": cold.get("repeats", 1), "engines": engines,
            "view_routed_cold_median_ms": rounded(median(view_ms))}


def summarize(items: list[dict[str, Any]], per: dict[str, dict[str, dict[str, Any]]], *, engines: Sequence[str],
              repeats: int, rows: int, raw_dir: Path | None, lake: Lake, phases: dict[str, Any],
              engine_runs: dict[str, Any], product_extra: dict[str, Any],
              cold: Mapping[str, Any] | None = None) -> BenchmarkSummary:
    """The result document from the per-query, per-engine records (and the cold pass's, if it ran)."""
    mismatches: list[dict[str, Any]] = []
    unsupported: list[dict[str, Any]] = []
    cold_records = (cold or {}).get("records", {})
    queries = [_query_entry(it, per[it["id"]], cold_records.get(it["id"], {}), engines, product_extra, mismatches,
                            unsupported) for it in items]

    def ms_list(engine: str, sel: Callable[[dict[str, Any]], bool] = lambda q: True, key: str = "ms") -> list[float]:
        return [q[key][engine] for q in queries if sel(q) and q.get(key, {}).get(engine) is not None]

    engine_stats: dict[str, Any] = {}
    for e in engines:
        vals = ms_list(e)
        engine_stats[e] = {
            "label": ENGINE_LABELS[e], "queries": len(vals), "median_ms": rounded(median(vals)),
            "p95_ms": rounded(p95(vals)), "total_ms": rounded(sum(vals)) if vals else None,
            "max_ms": rounded(max(vals)) if vals else None,
            "cold_median_ms": rounded(median(ms_list(e, key="cold_ms"))),
            "best_median_ms": rounded(median(ms_list(e, key="best_ms"))),
            "cold_total_ms": rounded(sum(ms_list(e, key="cold_ms"))) if vals else None,
            "peak_rss_bytes": engine_runs.get(e, {}).get("peak_rss_bytes"),
            "seconds": engine_runs.get(e, {}).get("seconds"),
        }

    routed = [q for q in queries if q.get("route")]
    by_workload: dict[str, Any] = {}
    for w in dict.fromkeys(it["workload"] for it in items):
        wq = [q for q in queries if q["workload"] == w]
        wr = [q for q in wq if q.get("route")]
        by_workload[w] = {
            "queries": len(wq), "all_match": all(q["match"] for q in wq),
            "view_hit_rate": rounded(sum(1 for q in wr if q["route"] != LAKE) / len(wr)) if wr else None,
            "median_ms": {e: rounded(median(ms_list(e, lambda q, w=w: q["workload"] == w))) for e in engines},
            "total_ms": {e: rounded(sum(ms_list(e, lambda q, w=w: q["workload"] == w))) for e in engines},
        }
    route_mix: dict[str, int] = {}
    for q in routed:
        route_mix[q["route"]] = route_mix.get(q["route"], 0) + 1
    has_product = "product" in engines
    view_ms = ms_list("product", lambda q: _is_view(q.get("route"))) if has_product else []
    lake_ms = ms_list("product", lambda q: q.get("route") == LAKE) if has_product else []
    plan = [q["plan_ms"] for q in queries if q.get("plan_ms") is not None]
    cold_summary = _cold_summary(cold, queries) if cold else None
    product = {
        **product_extra,
        "startup_ms": rounded(product_extra.get("startup_ms"), 3),
        "view_queries": len(view_ms), "lake_queries": len(lake_ms),
        "view_median_ms": rounded(median(view_ms)), "view_p95_ms": rounded(p95(view_ms)),
        "view_best_median_ms": rounded(median(ms_list("product", lambda q: _is_view(q.get("route")), "best_ms")))
        if has_product else None,
        "view_routed_cold_median_ms": cold_summary["view_routed_cold_median_ms"] if cold_summary else None,
        "lake_median_ms": rounded(median(lake_ms)), "lake_p95_ms": rounded(p95(lake_ms)),
        "lake_max_ms": rounded(max(lake_ms)) if lake_ms else None,
        "routing_overhead_median_ms": rounded(median(plan)), "routing_overhead_p95_ms": rounded(p95(plan)),
        "routing_overhead_share": rounded(median(plan) / median(view_ms)) if plan and view_ms else None,
        "route_mix": dict(sorted(route_mix.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    if _batch_failed(product_extra):
        mismatches.append({"id": "all", "engine": "product (batch run)", "reason": product_extra["batch"]["error"]})
    for e, run in (cold or {}).get("engines", {}).items():
        for proc in run["processes"]:
            if proc.get("error"):
                mismatches.append({"id": proc["workload"], "engine": f"{e} (cold run)", "reason": proc["error"]})
    result = BenchmarkSummary(
        rows=rows,
        all_match=not mismatches,
        view_hit_rate=rounded(sum(1 for q in routed if q["route"] != LAKE) / len(routed)) if routed else None,
        view_hit_rate_judges=by_workload.get(JUDGES, {}).get("view_hit_rate"),
        median_ms={e: engine_stats[e]["median_ms"] for e in engines},
        p95_ms={e: engine_stats[e]["p95_ms"] for e in engines},
        total_ms={e: engine_stats[e]["total_ms"] for e in engines},
        speedup=_speedups(queries, engines),
        engines=engine_stats,
        product=product,
        cold=cold_summary,
        workloads=by_workload,
        sizes=_sizes(raw_dir, lake),
        phases=phases,
        repeats=repeats,
        n_queries=len(queries),
        mismatches=mismatches,
        unsupported=unsupported,
        raw_dir=str(raw_dir) if raw_dir is not None else None, lake_dir=str(lake.root), lake_version=lake.version,
        target_rows=TARGET_ROWS,
        queries=queries,
    )
    result.targets = evaluate_targets(result)
    return result


def _ms_at_most(name: str, key: str, value: float | None) -> tuple[str, str, Any, bool | None, str]:
    """A target row for a time in milliseconds that must be at most `TARGETS[key]` (None: not measured)."""
    return (name, f"<= {format_ms(TARGETS[key])}", value, None if value is None else value <= TARGETS[key],
            format_ms(value))


def _cold_targets(result: BenchmarkSummary) -> list[tuple[Any, ...]]:
    """The cold-serving targets, on the product's cold run of the judges workload (None: it did not run)."""
    runs = ((result.cold or {}).get("engines") or {})
    judges = (runs.get("product") or {}).get("workloads", {}).get(JUDGES, {})
    no_views = (runs.get("product_no_views") or {}).get("workloads", {}).get(JUDGES, {})
    wall, wall_nv = judges.get("wall_ms"), no_views.get("wall_ms")
    view, rss, view_sum = judges.get("view_median_ms"), judges.get("peak_rss_bytes"), judges.get("view_sum_ms")
    warm = result.product.get("view_median_ms")
    return [
        _ms_at_most("warm view-routed median, next to the cold run (stated at 15M and 245M rows)",
                    "warm_view_median_ms_max", warm),
        _ms_at_most("cold judges run: view-routed queries summed (target stated at 245M rows)",
                    "cold_view_sum_ms_max", view_sum),
        _ms_at_most("cold judges run: wall of one new process", "cold_wall_ms_max", wall),
        ("cold judges run: wall against the same run with --no-views",
         "<= " + (format_ms(wall_nv) if wall_nv is not None else "the --no-views run"), wall,
         None if wall is None or wall_nv is None else wall <= wall_nv, format_ms(wall), True),
        _ms_at_most("cold judges run: view-routed median (first touch included)", "cold_view_median_ms_max", view),
        ("cold judges run: peak RSS", f"<= {TARGETS['cold_peak_rss_bytes_max'] / 1e6:g} MB", rss,
         None if rss is None else rss <= TARGETS["cold_peak_rss_bytes_max"],
         "-" if rss is None else f"{rss / 1e6:,.0f} MB ({format_bytes(rss)})"),
    ]


def _adaptive_targets(result: BenchmarkSummary) -> list[tuple[Any, ...]]:
    """The adaptive-views targets, from `result.adaptive` (None: that benchmark did not run)."""
    ad = result.adaptive
    if not ad:
        return []
    before, after = ad.get("before", {}), ad["after"]
    fam, fam0, judges = after["family_b"], before.get("family_b", {}), after["judges"]
    # the queries a rollup can exactly answer: per-user or per-auction keys are an index's job by design
    share = fam["rollup_viewable_from_views"] / fam["rollup_viewable"] if fam.get("rollup_viewable") else None
    p95_0, p95_1 = fam0.get("lake_p95_ms"), fam.get("lake_p95_ms")
    drop = None if p95_0 is None else (float("inf") if not p95_1 else p95_0 / p95_1)
    total, lake_p95 = judges.get("total_ms"), judges.get("lake_p95_ms")
    return _unseen_targets(ad.get("unseen")) + [
        ("adaptive: family B queries a rollup can answer (no per-user/auction keys), from views after build --adaptive",
         f">= {TARGETS['adaptive_rollup_share_min']:.0%}", share,
         None if share is None else share >= TARGETS["adaptive_rollup_share_min"],
         "-" if share is None else f"{share:.0%} ({fam['rollup_viewable_from_views']}/{fam['rollup_viewable']})"),
        ("adaptive: family B lake-routed p95, before / after", f">= {TARGETS['adaptive_lake_p95_drop_min']:g}x lower",
         drop, None if drop is None else drop >= TARGETS["adaptive_lake_p95_drop_min"],
         "-" if drop is None else f"{format_ms(p95_0)} -> {format_ms(p95_1)} ({drop:,.1f}x)", True),
        _ms_at_most("adaptive: judges workload warm total (target stated at 245M rows)",
                    "adaptive_judges_total_ms_max", total),
        _ms_at_most("adaptive: judges lake-routed p95 (target stated at 245M rows)",
                    "adaptive_judges_lake_p95_ms_max", lake_p95),
    ]


def _unseen_targets(un: Mapping[str, Any] | None) -> list[tuple[str, str, Any, bool | None, str]]:
    """Family C's targets: every fresh answer after adapting exact, most from views, much faster."""
    if not un:
        return []
    before, after, n = un["before"], un["after"], un["after"]["queries"]
    share = after["from_views"] / n if n else None
    speedup = before["total_ms"] / after["total_ms"] if after["total_ms"] else None
    wrong = len(un["mismatches"])
    return [
        ("adaptive: family C (unseen), fresh answers after build --adaptive that differ from the lake", "0", wrong,
         wrong == 0, f"{wrong} of {n}"),
        ("adaptive: family C (unseen), fresh queries from views after build --adaptive",
         f">= {TARGETS['adaptive_unseen_share_min']:.0%}", share,
         None if share is None else share >= TARGETS["adaptive_unseen_share_min"],
         "-" if share is None else f"{share:.0%} ({after['from_views']}/{n})"),
        ("adaptive: family C (unseen), fresh queries' total time, before / after",
         f">= {TARGETS['adaptive_unseen_speedup_min']:g}x lower", speedup,
         None if speedup is None else speedup >= TARGETS["adaptive_unseen_speedup_min"],
         "-" if speedup is None else f"{format_ms(before['total_ms'])} -> {format_ms(after['total_ms'])} "
                                      f"({speedup:,.1f}x)"),
    ]


def _freshness_targets(result: BenchmarkSummary) -> list[tuple[str, str, Any, bool | None, str]]:
    """The live-ingest targets, from `result.freshness` (None: that benchmark did not run)."""
    fr = result.freshness
    if not fr:
        return []
    full = fr["lake_rows"] >= FULL_SCALE_ROWS
    want = TARGETS["freshness_full_scale_s_max" if full else "freshness_s_max"]
    secs = fr.get("freshness_seconds")
    out = [(f"freshness: a {fr['part_rows']:,}-row part, rename to first view answer including it",
            f"<= {want:g} s", secs, None if secs is None else secs <= want, "-" if secs is None else f"{secs:.2f} s")]
    worst = (fr.get("deltas_10") or {}).get("median_ms")
    out.append(_ms_at_most("view-routed median with 10 pending deltas", "pending_deltas_view_median_ms_max", worst))
    return out


def evaluate_targets(result: BenchmarkSummary) -> list[dict[str, Any]]:
    """The issue's targets against this run (they are stated for 15M rows; reported, not asserted)."""
    prod, sp = result.product, result.speedup
    small = result.rows < SCALED_MIN_ROWS

    def row(name: str, want: str, value: Any, ok: bool | None, shown: str, scaled: bool = False) -> dict[str, Any]:
        if scaled and small:
            return {"target": name, "want": want, "value": value, "shown": shown, "ok": None,
                    "verdict": f"n/a below {SCALED_MIN_ROWS / 1e6:g}M rows"}
        return {"target": name, "want": want, "value": value, "shown": shown, "ok": ok,
                "verdict": {True: "met", False: "MISSED", None: "-"}[ok]}

    out = [row("every answer matches the baseline", "all match", result.all_match, result.all_match,
               "all match" if result.all_match else f"{len(result.mismatches)} mismatch(es)")]
    v = prod.get("view_median_ms")
    out.append(row("view-routed median (warm)", f"<= {TARGETS['view_median_ms_max']:g} ms", v,
                   None if v is None else v <= TARGETS["view_median_ms_max"], format_ms(v)))
    for peer, key in (("baseline", "speedup_vs_baseline_min"), ("duckdb_lake", "speedup_vs_duckdb_lake_min")):
        s = sp.get(peer, {}).get("of_medians")
        out.append(row(f"speedup over {peer} on the median", f">= {TARGETS[key]:g}x", s,
                       None if s is None else s >= TARGETS[key], "-" if s is None else f"{s:,.0f}x", True))
    h = result.view_hit_rate_judges
    out.append(row("judges-style workload from views", f">= {TARGETS['judges_view_hit_rate_min']:.0%}", h,
                   None if h is None else h >= TARGETS["judges_view_hit_rate_min"], "-" if h is None else f"{h:.1%}"))
    p = prod.get("lake_p95_ms")
    out.append(row("lake fallback p95 (warm)", f"<= {TARGETS['lake_p95_ms_max']:g} ms", p,
                   None if p is None else p <= TARGETS["lake_p95_ms_max"], format_ms(p)))
    out += [row(*t) for t in _cold_targets(result) + _adaptive_targets(result) + _freshness_targets(result)]
    for r in out:
        r["at_target_scale"] = result.rows == TARGET_ROWS
    return out


def attach(bench_json: str | os.PathLike, key: str, value: Mapping[str, Any]) -> BenchmarkSummary:
    """Add a side benchmark's figures (`adaptive`, `freshness`) to a benchmark JSON under `key`,
    targets re-evaluated; written atomically."""
    result = replace(BenchmarkSummary.read(bench_json), **{key: dict(value)})
    result.targets = evaluate_targets(result)
    write(bench_json, result)
    return result


def write(path: str | os.PathLike, result: BenchmarkSummary) -> None:
    """Write `result` as the JSON file `path`, atomically."""
    write_atomic(path, json.dumps(result.to_json(), indent=1, default=str))


def sweep_from_files(paths: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Combine benchmark JSONs of several sizes: per engine, median / p95 / total ms against rows.

    A file the pattern matched that is not a benchmark result (no `rows` and `median_ms`, e.g. a
    side file written next to one) is left out rather than failing the report."""
    runs = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            doc = json.loads(p.read_text())
            if isinstance(doc, dict) and "rows" in doc and "median_ms" in doc:
                runs.append(BenchmarkSummary.from_json(doc))
    runs.sort(key=lambda r: r.rows)
    engines = [e for e in ENGINES if any(e in r.median_ms for r in runs)]
    return {
        "rows": [r.rows for r in runs],
        "all_match": [r.all_match for r in runs],
        "view_hit_rate": [r.view_hit_rate for r in runs],
        "engines": {e: {k: [getattr(r, k).get(e) for r in runs] for k in ("median_ms", "p95_ms", "total_ms")}
                    for e in engines},
        "product_view_median_ms": [r.product.get("view_median_ms") for r in runs],
        "product_lake_p95_ms": [r.product.get("lake_p95_ms") for r in runs],
        "sizes": [r.sizes for r in runs],
    }
