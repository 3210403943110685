"""The adaptive views benchmark: a workload family before and after `build --adaptive`.

Owns the measurement: family A (seed 1) is run once through the batch runner with telemetry on
(what `advise` learns from), family B (seed 2: the same shapes, other literal values) and the
judges-style workload are timed warm before the adaptive build, `build_adaptive` runs within the
budget, and the same are timed again. Per pass: the share of queries answered from views (of all,
and of those a view can exactly answer), the lake-routed p50/p95, the total; the build's seconds
and bytes. Then family C (`run_unseen`, with `--copy-of`: on a second copy, taught from nothing) as
a user meets an unseen family: teach, time fresh queries, build, time them again, and compare each
answer after with DuckDB over the lake (the product's promise: exact after adapting, always).
`analytics bench adaptive --lake L [--copy-of BUILT] [--budget 2GiB] [--out F.json]
[--into BENCHMARK_JSON]` on a lake it may write (the build adds views and indexes to it): with
`--copy-of`, L is first made a hard-linked copy of that built lake, which stays untouched.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from analytics.adaptive.advice import minimal_view, parse_budget
from analytics.adaptive.build import build_adaptive
from analytics.batch.runner import SafeBatchRunner
from analytics.batch.telemetry import percentile, read_events
from analytics.bench.freshness import link_copy
from analytics.bench.summary import attach
from analytics.bench.workload_family import UNSEEN, family
from analytics.bench.workloads import ROOT
from analytics.query.model import load_queries, parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.query.shape import query_shape
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench
from analytics.views import DEFAULT_BUDGET


def timed_pass(lake: str, queries: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """Each query once to warm, then `repeats` timed runs in one workbench; the median per query."""
    rows = []
    with Workbench(lake) as wb:
        for raw in queries:
            q = parse_query(raw)
            _, plan = wb.execute(q)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _, plan = wb.execute(q)
                times.append((time.perf_counter() - t0) * 1000)
            view = minimal_view(query_shape(q))[0]
            rows.append({"route": plan.route, "index": plan.index, "ms": statistics.median(times),
                         "viewable": view is not None,
                         # a view keyed per user or auction is about the lake's size: an index's job
                         "rollup_viewable": view is not None and not set(view.dims) & {"user_id", "auction_id"}})
    lake_ms = [r["ms"] for r in rows if r["route"] == LAKE]
    viewable = [r for r in rows if r["viewable"]]
    rollup = [r for r in rows if r["rollup_viewable"]]
    return {
        "queries": len(rows), "from_views": sum(r["route"] != LAKE for r in rows),
        "viewable": len(viewable), "viewable_from_views": sum(r["route"] != LAKE for r in viewable),
        "rollup_viewable": len(rollup), "rollup_viewable_from_views": sum(r["route"] != LAKE for r in rollup),
        "lake_queries": len(lake_ms), "via_index": sum(1 for r in rows if r["index"]),
        "lake_p50_ms": _r(percentile(lake_ms, 50)), "lake_p95_ms": _r(percentile(lake_ms, 95)),
        "lake_max_ms": _r(max(lake_ms) if lake_ms else None),
        "total_ms": _r(sum(r["ms"] for r in rows)), "per_query": rows,
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def run(lake: str, budget: int, repeats: int = 3, n: int = 60, after_only: bool = False) -> dict[str, Any]:
    """The whole benchmark; `after_only` reuses the lake's telemetry (family A already run) and skips
    the before pass (a rerun of the build at a size where the lake pass takes many minutes)."""
    fam_a, fam_b = family(1, n), family(2, n)
    judges = load_queries(str(ROOT / "queries" / "judges.json"))
    out: dict[str, Any] = {"lake": lake, "budget": budget, "repeats": repeats}
    if not after_only:
        with Workbench(lake) as wb:  # family A once, as an analyst would: this is what telemetry records
            runner = SafeBatchRunner(wb, cache=False, persist_cache=False)
            runner.run(fam_a, batching=False)
            runner.close()
        out["before"] = {"family_b": timed_pass(lake, fam_b, repeats), "judges": timed_pass(lake, judges, repeats)}
    events = list(read_events(lake))
    out["build"] = build_adaptive(lake, events, budget=budget, progress=False)
    out["after"] = {"family_b": timed_pass(lake, fam_b, repeats), "judges": timed_pass(lake, judges, repeats)}
    return out


def run_unseen(lake: str, budget: int, repeats: int = 3, n: int = 40) -> dict[str, Any]:
    """Family C (`workload_family.UNSEEN`) as a user meets it on a fresh lake: `n` queries run to
    teach (seed 1), `n` fresh ones (seed 2) timed, `build --adaptive`, the fresh ones timed again and
    each answer after compared with DuckDB over the lake (`mismatches`: must be empty)."""
    teach, fresh = family(1, n, UNSEEN), family(2, n, UNSEEN)
    with Workbench(lake) as wb:
        runner = SafeBatchRunner(wb, cache=False, persist_cache=False)
        runner.run(teach, batching=False)
        runner.close()
    out: dict[str, Any] = {"lake": lake, "budget": budget, "queries": n, "before": timed_pass(lake, fresh, repeats)}
    out["build"] = build_adaptive(lake, list(read_events(lake)), budget=budget, progress=False)
    out["after"] = timed_pass(lake, fresh, repeats)
    mismatches = []
    with Workbench(lake) as wb:
        for i, raw in enumerate(fresh):
            q = parse_query(raw)
            got, plan = wb.execute(q)
            reason = compare_rows(q, to_rows(q, wb.execute(q, use_views=False)[0]), to_rows(q, got))
            if reason is not None:
                mismatches.append({"query": i, "route": plan.route, "reason": reason})
    out["mismatches"] = mismatches
    return out


def summary(res: dict[str, Any]) -> str:
    lines = []
    for wl in ("family_b", "judges"):
        for when in [w for w in ("before", "after") if w in res]:
            p = res[when][wl]
            lines.append(f"{wl:<9} {when:<6}: {p['from_views']}/{p['queries']} from views "
                         f"({p['viewable_from_views']}/{p['viewable']} of those a view can answer, "
                         f"{p['rollup_viewable_from_views']}/{p['rollup_viewable']} without per-user/auction keys), lake-routed "
                         f"{p['lake_queries']} ({p['via_index']} via an index) p50 {p['lake_p50_ms']} ms p95 "
                         f"{p['lake_p95_ms']} ms max {p['lake_max_ms']} ms; total {p['total_ms']:.1f} ms")
    b = res["build"]
    lines.append(f"adaptive build: {len(b['built'])} views, {len(b['indexes'])} indexes ({b['index_seconds']} s), "
                 f"{b['bytes']:,} bytes of "
                 f"{b['budget']:,} in {b['seconds']} s; refused {len(b['refused'])}, failed {len(b['failed'])}")
    u = res.get("unseen")
    if u:
        before, after = u["before"], u["after"]
        lines.append(f"family C (fresh {u['queries']}): {before['from_views']} -> {after['from_views']} from views, total "
                     f"{before['total_ms']:.1f} -> {after['total_ms']:.1f} ms; {len(u['build']['built'])} views built "
                     f"({u['build']['bytes']:,} bytes, {u['build']['seconds']} s), failed {len(u['build']['failed'])}; "
                     f"{len(u['mismatches'])} answers differ from the lake")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="analytics bench adaptive", description="adaptive views benchmark (writes views and indexes into --lake)")
    p.add_argument("--lake", required=True, help="the lake to measure on; it gains views and indexes")
    p.add_argument("--copy-of", default=None, help="first empty --lake and make it a hard-linked copy of this built lake")
    p.add_argument("--budget", default=DEFAULT_BUDGET)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--after-only", action="store_true", help="reuse the telemetry already there; no before pass")
    p.add_argument("--no-unseen", action="store_true", help="skip family C (taught and checked on a copy of --copy-of)")
    p.add_argument("--out", help="write the figures here")
    p.add_argument("--into", help="add the figures to this benchmark JSON (key `adaptive`, targets re-evaluated)")
    args = p.parse_args(argv)
    if args.copy_of:
        shutil.rmtree(args.lake, ignore_errors=True)
        link_copy(Path(args.copy_of), Path(args.lake))
    res = run(args.lake, parse_budget(args.budget), args.repeats, after_only=args.after_only)
    if args.copy_of and not args.no_unseen:  # family C on a lake of its own, taught from nothing
        unseen = f"{args.lake.rstrip('/')}-unseen"
        shutil.rmtree(unseen, ignore_errors=True)
        link_copy(Path(args.copy_of), Path(unseen))
        res["unseen"] = run_unseen(unseen, parse_budget(args.budget), args.repeats)
        shutil.rmtree(unseen, ignore_errors=True)
    print(summary(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    if args.into:
        attach(args.into, "adaptive", res)

