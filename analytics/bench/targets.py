"""The issue's targets: what each figure of a benchmark run must reach, and `evaluate_targets`.

Owns `TARGETS` (each stated once, for 15M rows unless named otherwise), the scales they are stated
at, and the rows of the targets table (target, want, value, ok, shown, verdict) that `summarize`
stores and `text`, `docs` and notebook 03 render. Targets are reported, never asserted. Must not
compute the figures it judges (`summary.py` does) nor format beyond one cell's text.
"""
from __future__ import annotations

from typing import Any, Mapping

from analytics.bench.result import BenchmarkSummary
from analytics.bench.text import format_ms
from analytics.bench.workloads import JUDGES
from analytics.core.files import format_bytes
from analytics.core.memory import parse_size

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
    # the same run disk-cold (the lake's pages dropped first), stated for 245M rows: the view sum at
    # most this, or this factor of the physical floor (the views' bytes read at the disk's cold
    # bandwidth), whichever is larger
    "disk_cold_view_sum_ms_max": 100.0,
    "disk_cold_floor_factor": 1.5,
    "disk_cold_wall_ms_max": 1500.0,
    # the views as served (Parquet, serving copies, deltas), stated for 245M rows: no larger than
    # before the disk-cold issue's layout work (3.10 GB there, `du -h`'s 2.9G)
    "views_on_disk_bytes_max": float(parse_size("2.9GiB")),
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



def _ms_at_most(name: str, key: str, value: float | None) -> tuple[str, str, Any, bool | None, str]:
    """A target row for a time in milliseconds that must be at most `TARGETS[key]` (None: not measured)."""
    return (name, f"<= {format_ms(TARGETS[key])}", value, None if value is None else value <= TARGETS[key],
            format_ms(value))


def _cold_targets(result: BenchmarkSummary) -> list[tuple[Any, ...]]:
    """The cold-serving targets, on the product's cold run of the judges workload (None: it did not run)."""
    judges, no_views = result.cold_run("product", JUDGES), result.cold_run("product_no_views", JUDGES)
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


def _views_on_disk_target(result: BenchmarkSummary) -> list[tuple[Any, ...]]:
    """The views' bytes as served (none: a run recorded before they were measured)."""
    on_disk, most = result.sizes.get("views_on_disk_bytes"), TARGETS["views_on_disk_bytes_max"]
    if on_disk is None:
        return []
    return [("views with their serving copies on disk (target stated at 245M rows)", f"<= {format_bytes(most)}",
             on_disk, on_disk <= most, f"{format_bytes(on_disk)} ({on_disk / 1e9:.2f} GB)")]


def _disk_cold_targets(result: BenchmarkSummary) -> list[tuple[Any, ...]]:
    """The disk-cold targets, on the product's disk-cold run of the judges workload (none: it did not
    run). The view-routed sum must stay under the larger of its bound and 1.5x the physical floor:
    the bytes the view answers read (each query's thread, pages faulted in included) at the disk's
    cold bandwidth. Both are shown, and what the whole process read."""
    if not result.cold_disk:
        return []
    judges = result.cold_run("product", JUDGES, disk=True)
    view_sum, wall, read = judges.get("view_sum_ms"), judges.get("wall_ms"), judges.get("read_bytes")
    floor, view_read = judges.get("view_read_ms_at_bandwidth"), judges.get("view_read_bytes")
    bound = TARGETS["disk_cold_view_sum_ms_max"]
    limit = max(bound, TARGETS["disk_cold_floor_factor"] * floor) if floor is not None else bound
    want = f"<= {format_ms(bound)} or {TARGETS['disk_cold_floor_factor']:g}x the floor"
    shown = format_ms(view_sum)
    if view_read is not None:
        shown += f" (views read {format_bytes(view_read)}" + (
            "" if floor is None else f": a floor of {format_ms(floor)} at the disk's cold bandwidth") + ")"
    if read is not None:
        shown += f"; the process read {format_bytes(read)}"
    return [("disk-cold judges run: view-routed queries summed (target stated at 245M rows)", want, view_sum,
             None if view_sum is None else view_sum <= limit, shown),
            _ms_at_most("disk-cold judges run: wall of one new process (target stated at 245M rows)",
                        "disk_cold_wall_ms_max", wall)]


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
    out += [row(*t) for t in _cold_targets(result) + _disk_cold_targets(result) + _views_on_disk_target(result)
            + _adaptive_targets(result) + _freshness_targets(result)]
    for r in out:
        r["at_target_scale"] = result.rows == TARGET_ROWS
    return out
