"""Correctness guardrails: 23 executable checks over the lake, the views and (when given) the raw CSVs.

Owns the registry of checks (`CHECKS`, listed in one place here, like an optimizer's rules), which
checks a run selects, running them and the report they produce. A check is a small function
`(ctx) -> CheckResult(passed, evidence)` in the module of its category; its evidence says what was
compared (sources, numbers, sample offending rows), so a pass is never silent. Checks read what
is on disk: the lake through the manifest's committed files, every view through its registered
Parquet file (never an in-memory copy), and the raw CSVs through the same remediation rules
`prepare` applies (see `context`). Checks of the engine's answers (BETWEEN, AVG, COUNT, date
boundaries) plan and compile probe queries with the product's own router and compiler, run them
against every covering view file and the lake, and compare with an independent reference
(explicit `ts` ranges, exact DECIMAL sums, the baseline's casts over the raw rows).

Each check owns one failure mode; its probes stay away from the others' so that a fault shows up
in exactly the check that guards it. Probe windows: BETWEEN around 2024-01-07/08, 06-30/07-01 and
09-29/30; AVG in Q1, July-September and August; date boundaries at 2024-02-28..03-01,
2024-12-30.. and the first/last day. Must not hold a check itself, nor change the lake or the views.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from analytics.checks.guardrails import (
    avg,
    between,
    data_types,
    date_boundaries,
    mv_consistency,
    null_handling,
    timezone,
)
from analytics.checks.guardrails.context import (
    Check,
    CheckResult,
    Context,
    GuardrailError,
    Probe,
    ViewHandle,
    jsonable,
)
from analytics.core.memory import DEFAULT_MEMORY_LIMIT

__all__ = [
    "CATEGORIES", "CHECKS", "CHECKS_BY_ID", "Check", "CheckResult", "Context", "GuardrailError", "Probe", "ViewHandle",
    "format_table", "jsonable", "run_guardrails", "select_checks",
]

CATEGORIES: tuple[str, ...] = (
    "timezone", "between", "avg", "mv_consistency", "data_types", "null_handling", "date_boundaries",
)

CHECKS: tuple[Check, ...] = (
    Check("timezone.derived_columns_utc", "timezone",
          "stored day/hour/minute equal the UTC date, hour and minute of ts (a row at 23:59:59.999 stays on its day)",
          timezone.derived_columns_utc),
    Check("timezone.week_starts_monday", "timezone",
          "every week in the lake and the views is a Monday and the week of its ts/day", timezone.week_starts_monday),
    Check("timezone.session_zone_independent", "timezone",
          "time columns are zone-free: the UTC calendar of ts is the same under any session zone, and equals the raw epoch ms",
          timezone.session_zone_independent),
    Check("between.day_inclusive", "between",
          "day BETWEEN a AND b includes both end days whole, on every day view and the lake", between.day_inclusive),
    Check("between.hour_minute_inclusive", "between",
          "hour and minute BETWEEN include both end buckets whole, on every hour/minute view and the lake",
          between.hour_minute_inclusive),
    Check("avg.nonnull_denominator", "avg",
          "AVG from a view = SUM / non-NULL COUNT of its stored measures, never SUM / COUNT(*)", avg.nonnull_denominator),
    Check("avg.view_equals_lake", "avg",
          "each view's per-group average equals the lake's exact AVG for the same group", avg.view_equals_lake),
    Check("avg.empty_is_null", "avg",
          "AVG (and SUM/MIN/MAX) over no rows or no values is NULL, COUNT is 0, on every route", avg.empty_is_null),
    Check("avg.no_average_of_averages", "avg",
          "AVG over a range spanning many view rows is SUM/COUNT of the whole range, never an average of averages",
          avg.no_average_of_averages),
    Check("mv_consistency.reconcile", "mv_consistency",
          "each view's rows, non-NULL counts and exact sums per type and day equal the lake's", mv_consistency.reconcile),
    Check("mv_consistency.current_lake_version", "mv_consistency",
          "each view was built from the current lake version and segments, with the catalog's definition",
          mv_consistency.current_lake_version),
    Check("mv_consistency.schema_matches_registry", "mv_consistency",
          "each view file's columns and types equal the registry's and the catalog's", mv_consistency.schema_matches_registry),
    Check("mv_consistency.unique_group_keys", "mv_consistency",
          "no view holds a group key twice", mv_consistency.unique_group_keys),
    Check("mv_consistency.present_readable", "mv_consistency",
          "every catalog view is registered, its files present and matching their checksums, every column decodes",
          mv_consistency.present_readable),
    Check("data_types.ts_millisecond_precision", "data_types",
          "ts keeps exactly the raw milliseconds: no truncation to seconds, no sub-ms residue", data_types.ts_millisecond_precision),
    Check("data_types.price_sums_exact", "data_types",
          "bid_price/total_price are exact 4-decimal values; their exact sums equal the raw text's", data_types.price_sums_exact),
    Check("data_types.ids_integral_in_range", "data_types",
          "advertiser, publisher and user ids are integers within their known ranges, in the lake and the views",
          data_types.ids_integral_in_range),
    Check("data_types.country_known_code", "data_types",
          "country is one of the known 2-letter codes, in the lake and the views", data_types.country_known_code),
    Check("null_handling.price_only_on_its_type", "null_handling",
          "bid_price is set exactly on impressions and total_price exactly on purchases (deviations reported)",
          null_handling.price_only_on_its_type),
    Check("null_handling.count_col_vs_count_star", "null_handling",
          "COUNT(col) counts non-NULL values and COUNT(*) rows, on every route", null_handling.count_col_vs_count_star),
    Check("null_handling.null_keys_quarantined", "null_handling",
          "rows with a NULL key are quarantined, never in the lake nor silently dropped: the accounting holds",
          null_handling.null_keys_quarantined),
    Check("date_boundaries.leap_day_and_year_end", "date_boundaries",
          "leap day, 2024-12-31 late and anything in 2025 answered identically by views, lake and baseline",
          date_boundaries.leap_day_and_year_end),
    Check("date_boundaries.first_last_day_complete", "date_boundaries",
          "first and last day are complete in the manifest's day index, every view, the lake and the baseline",
          date_boundaries.first_last_day_complete),
)
CHECKS_BY_ID: dict[str, Check] = {c.id: c for c in CHECKS}


def _category(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    aliases = {"tz": "timezone", "time_zone": "timezone", "mv": "mv_consistency", "views": "mv_consistency",
               "types": "data_types", "null": "null_handling", "nulls": "null_handling", "dates": "date_boundaries",
               "date": "date_boundaries"}
    key = aliases.get(key, key)
    if key not in CATEGORIES:
        raise GuardrailError(f"unknown category {name!r}; categories: {', '.join(CATEGORIES)}")
    return key


def select_checks(only: str | Iterable[str] | None = None) -> list[Check]:
    """The checks of the given categories (or check ids); all of them by default."""
    if only is None:
        return list(CHECKS)
    names = [only] if isinstance(only, str) else list(only)
    ids = {n for n in names if n in CHECKS_BY_ID}
    cats = {_category(n) for n in names if n not in CHECKS_BY_ID}
    return [c for c in CHECKS if c.category in cats or c.id in ids]


def run_guardrails(lake_dir: str | os.PathLike, raw_dir: str | os.PathLike | None = None,
                   only: str | Iterable[str] | None = None, *, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> dict[str, Any]:
    """Run the checks; returns `{"checks": [{"id", "category", "description", "passed", "evidence",
    "seconds"}], "passed": n, "failed": n, ...}` (JSON-able). A check that raises fails with the error."""
    checks = select_checks(only)
    started = time.perf_counter()
    ctx = Context(lake_dir, raw_dir, memory_limit=memory_limit)
    out = []
    try:
        for chk in checks:
            t0 = time.perf_counter()
            try:
                res = chk.func(ctx)
            except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check, never a pass
                res = CheckResult(False, {"summary": f"check raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                          "error": repr(exc)})
            out.append({"id": chk.id, "category": chk.category, "description": chk.description,
                        "passed": bool(res.passed), "evidence": jsonable(res.evidence),
                        "seconds": round(time.perf_counter() - t0, 3)})
    finally:
        ctx.close()
    n_ok = sum(c["passed"] for c in out)
    return {"checks": out, "passed": n_ok, "failed": len(out) - n_ok, "lake": str(Path(lake_dir)),
            "lake_version": ctx.lake.version, "raw": str(raw_dir) if raw_dir is not None else None,
            "seconds": round(time.perf_counter() - started, 3)}


def format_table(report: dict[str, Any]) -> str:
    """The report as text: checks grouped by category, one line each plus its evidence summary."""
    lines = []
    width = max((len(c["id"]) for c in report["checks"]), default=10)
    for cat in CATEGORIES:
        rows = [c for c in report["checks"] if c["category"] == cat]
        if not rows:
            continue
        lines.append(f"{cat} ({sum(r['passed'] for r in rows)}/{len(rows)})")
        for c in rows:
            lines.append(f"  {'PASS' if c['passed'] else 'FAIL'}  {c['id']:<{width}}  {c['seconds']:6.2f}s  {c['description']}")
            summary = c["evidence"].get("summary", "")
            if summary:
                lines.append(f"        {summary if len(summary) <= 400 else summary[:397] + '...'}")
    lines.append(f"{report['passed']} passed, {report['failed']} failed in {report['seconds']:.1f}s "
                 f"(lake {report['lake']} version {report['lake_version']}, raw {report['raw'] or 'not given'})")
    return "\n".join(lines)
