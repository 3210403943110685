"""The benchmark's result document: per-query records turned into medians, speedups, sizes and targets.

Owns `summarize` (the figures `benchmark.json` holds, from what `run.py` and `cold.py` recorded),
the statistics helpers (median, p95 by linear interpolation, rounding), `attach` (a side benchmark
added, its targets judged by `targets.py`), and `sweep_from_files` (benchmark JSONs of several sizes combined). Must not
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
from analytics.bench.targets import TARGET_ROWS, evaluate_targets
from analytics.bench.workloads import JUDGES
from analytics.core.files import write_atomic
from analytics.lake.state import Lake
from analytics.serving.router import LAKE


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def p95(values: Iterable[float | None]) -> float | None:
    return percentile(values, 95)


def rounded(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def _sizes(raw_dir: Path | None, lake: Lake) -> dict[str, Any]:
    from analytics.views.registry import entry_files, load_registry

    csv = sum(f.stat().st_size for f in raw_dir.glob("*.csv")) if raw_dir is not None else 0
    lake_bytes = lake.size_bytes()
    views: dict[str, int] = {}
    on_disk = 0  # what serving needs: each version's Parquet, serving copy and deltas
    for name, entry in load_registry(lake.root).items():
        f = lake.root / entry.file
        if f.is_file():
            views[name] = f.stat().st_size
        on_disk += sum(p.stat().st_size for n in entry_files(entry) if (p := f.parent / n).is_file())
    view_bytes = sum(views.values())
    return {
        "csv_bytes": csv, "lake_bytes": lake_bytes, "views_bytes": view_bytes, "views": views,
        "views_on_disk_bytes": on_disk,
        "lake_to_csv": rounded(lake_bytes / csv) if csv else None,
        "views_to_csv": rounded(view_bytes / csv) if csv else None,
        "lake_and_views_to_csv": rounded((lake_bytes + view_bytes) / csv) if csv else None,
    }


def _batch_failed(product_extra: Mapping[str, Any]) -> bool:
    return "error" in (product_extra.get("batch") or {})


# the cold passes: (key prefix of their per-query figures, how a mismatch of theirs is named)
COLD_PASSES: tuple[tuple[str, str], ...] = (("cold_pass", "cold run"), ("disk_cold_pass", "disk-cold run"))


def _query_entry(it: dict[str, Any], recs: dict[str, dict[str, Any]], passes: Sequence[Mapping[str, dict[str, Any]]],
                 engines: Sequence[str], product_extra: Mapping[str, Any], mismatches: list[dict[str, Any]],
                 unsupported: list[dict[str, Any]]) -> dict[str, Any]:
    """One query's figures; its mismatches and unsupported engines are appended to the lists given.
    `passes`: its records in each cold pass (`COLD_PASSES` order) by engine, empty when that pass did not run."""
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
    for (key, _), cold in zip(COLD_PASSES, passes):
        if cold:
            entry[f"{key}_ms"] = {e: rounded(r.get("ms")) for e, r in cold.items()}
            entry[f"{key}_route"] = {e: r.get("route") for e, r in cold.items() if r.get("route")}
            entry[f"{key}_read_bytes"] = {e: r["read_bytes"] for e, r in cold.items() if r.get("read_bytes") is not None}
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
    failed = {f"{e} ({name})": rec for (_, name), cold in zip(COLD_PASSES, passes) for e, rec in cold.items()
              if rec.get("match") is False}
    for label, rec in failed.items():
        engine_match[label] = False
        mismatches.append({"id": it["id"], "engine": label, "reason": rec.get("reason")})
    entry["engine_match"] = engine_match
    entry["match"] = all(v is not False for v in engine_match.values())
    if prod.get("ms"):
        entry["speedup"] = {p: rounded(recs[p]["ms"] / prod["ms"], 2)
                            for p in PEERS if p in recs and recs[p].get("ms") is not None}
    reasons = {e: recs[e].get("reason") or recs[e].get("error") for e in ran
               if recs[e].get("match") is False or recs[e].get("status") == "unsupported"}
    reasons.update({label: r.get("reason") for label, r in failed.items()})
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


def _cold_summary(cold: Mapping[str, Any], queries: list[dict[str, Any]], key: str = "cold_pass") -> dict[str, Any]:
    """Per cold engine: wall, peak RSS and bytes read of its processes (one per workload), per-query
    median and p95, from the queries' `{key}_ms` and `{key}_route`. A disk-cold pass also gets, per
    workload, the time its reads take at the disk's cold bandwidth (`read_ms_at_bandwidth`)."""
    ms_key, route_key = f"{key}_ms", f"{key}_route"
    bandwidth = (cold.get("read_bandwidth") or {}).get("bytes_per_s")
    engines: dict[str, Any] = {}
    for e in COLD_ENGINES:
        run = cold["engines"].get(e)
        if run is None:
            continue
        workloads: dict[str, Any] = {}
        for proc in run["processes"]:
            w = proc["workload"]
            wq = [q for q in queries if q["workload"] == w and (q.get(ms_key) or {}).get(e) is not None]
            view_ms = [q[ms_key][e] for q in wq if _is_view(q[route_key].get(e))]
            view_read = [q[f"{key}_read_bytes"][e] for q in wq if _is_view(q[route_key].get(e))
                         and e in q.get(f"{key}_read_bytes", {})]
            workloads[w] = {**proc, "median_ms": rounded(median(q[ms_key][e] for q in wq)),
                            "view_median_ms": rounded(median(view_ms)),
                            "view_sum_ms": rounded(sum(view_ms)) if view_ms else None,
                            "view_read_bytes": sum(view_read) if view_read else None}
            if bandwidth and view_read:
                workloads[w]["view_read_ms_at_bandwidth"] = rounded(sum(view_read) / bandwidth * 1000)
            if bandwidth and proc.get("read_bytes") is not None:
                workloads[w]["read_ms_at_bandwidth"] = rounded(proc["read_bytes"] / bandwidth * 1000)
        ms = [q[ms_key][e] for q in queries if (q.get(ms_key) or {}).get(e) is not None]
        procs = run["processes"]
        walls = [p["wall_ms"] for p in procs]
        engines[e] = {
            "label": COLD_LABELS[e], "command": run["command"], "processes": len(procs), "workloads": workloads,
            "wall_ms": None if None in walls else rounded(sum(walls), 3),
            "peak_rss_bytes": max((p["peak_rss_bytes"] or 0 for p in procs), default=0) or None,
            "read_bytes": sum(p.get("read_bytes") or 0 for p in procs),
            "queries": len(ms), "errors": sum(p["errors"] for p in procs),
            "median_ms": rounded(median(ms)), "p95_ms": rounded(p95(ms)),
        }
    view_ms = [q[ms_key]["product"] for q in queries
               if (q.get(ms_key) or {}).get("product") is not None and _is_view(q[route_key].get("product"))]
    out = {"how": cold["how"], "repeats": cold.get("repeats", 1), "engines": engines,
           "view_routed_cold_median_ms": rounded(median(view_ms))}
    return {**out, "read_bandwidth": cold["read_bandwidth"]} if "read_bandwidth" in cold else out


def summarize(items: list[dict[str, Any]], per: dict[str, dict[str, dict[str, Any]]], *, engines: Sequence[str],
              repeats: int, rows: int, raw_dir: Path | None, lake: Lake, phases: dict[str, Any],
              engine_runs: dict[str, Any], product_extra: dict[str, Any],
              cold: Mapping[str, Any] | None = None,
              cold_disk: Mapping[str, Any] | None = None) -> BenchmarkSummary:
    """The result document from the per-query, per-engine records (and the cold passes', if they ran)."""
    mismatches: list[dict[str, Any]] = []
    unsupported: list[dict[str, Any]] = []
    records = [(p or {}).get("records", {}) for p in (cold, cold_disk)]
    queries = [_query_entry(it, per[it["id"]], [r.get(it["id"], {}) for r in records], engines, product_extra,
                            mismatches, unsupported) for it in items]

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
    for (_, name), p in zip(COLD_PASSES, (cold, cold_disk)):
        for e, run in (p or {}).get("engines", {}).items():
            for proc in run["processes"]:
                if proc.get("error"):
                    mismatches.append({"id": proc["workload"], "engine": f"{e} ({name})", "reason": proc["error"]})
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
        cold_disk=_cold_summary(cold_disk, queries, "disk_cold_pass") if cold_disk else None,
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
