"""Materialized-view checks: each view file is registered, readable, current, of the registered
schema, holds each group key once, matches its checksums and reconciles with the lake.

Owns `reconcile`, `current_lake_version`, `schema_matches_registry`, `unique_group_keys` and
`present_readable`. Whether a view is built from this definition and lake version, and whether
its file is present, is `views.registry.staleness`'s rule, applied here, never restated. Must
not judge the engine's answers (the other categories probe those), nor change the lake or the views.
"""
from __future__ import annotations

import json
from pathlib import Path

import duckdb

from analytics.checks.guardrails.context import SAMPLES, CheckResult, Context, dict_rows, jsonable, one_row, presence
from analytics.core.checksum import ChecksumError, check
from analytics.core.sql import sql_string
from analytics.lake.damage import update_damage
from analytics.query import compiler
from analytics.views import build as view_build
from analytics.views.registry import ViewEntry, entry_records, staleness


def reconcile(ctx: Context) -> CheckResult:
    totals = ctx.lake_totals()
    per_view, fails = [], []
    for h in ctx.views():
        try:
            bad = view_build.reconcile(ctx.con, h.view, h.rel, totals)
        except duckdb.Error as exc:
            fails.append(f"{h.name}: error {str(exc).splitlines()[0]}")
            continue
        keys = "type, day" if "day" in h.view.group_columns else "type"
        per_view.append({"view": h.name, "grain": keys, "groups_differing_sample": bad[:SAMPLES]})
        if bad:
            fails.append(f"{h.name}: totals per ({keys}) differ from the lake, e.g. {jsonable(bad[0])}")
    n_groups = ctx.con.execute(f"SELECT count(*), sum(cnt) FROM {totals}").fetchall()[0]
    summary = "; ".join(fails) if fails else (
        f"{len(per_view)} views reconcile with the lake's {n_groups[0]:,} (type, day) totals of rows, non-NULL counts "
        f"and exact sums ({n_groups[1] or 0:,} rows)")
    return CheckResult(not fails and bool(per_view), {"summary": summary if per_view else "no view to reconcile",
                                                      "views": per_view, "skipped": ctx.skipped_views})


def current_lake_version(ctx: Context) -> CheckResult:
    per_view, fails = [], []
    segments = sorted(ctx.lake.segment_ids)
    for view in ctx.catalog:
        entry = ctx.registry.get(view.name)
        if entry is None:
            continue  # never built: present_readable's finding
        stale = staleness(view, ctx.lake, entry)
        # a missing file alone is present_readable's finding, not a stale build
        problems = [stale] if stale is not None and stale != presence(view, ctx.lake, entry) else []
        built_from = set(entry.segments)
        if sorted(built_from) != segments:
            problems.append(f"segments differ: missing {sorted(set(segments) - built_from)}, gone {sorted(built_from - set(segments))}")
        per_view.append({"view": view.name, "version": entry.version, "lake_version": entry.lake_version,
                         "definition": entry.definition, "catalog_definition": view.definition_hash(),
                         "built_at": entry.built_at, "problems": problems})
        if problems:
            fails.append(f"{view.name}: {'; '.join(problems)}")
    summary = "; ".join(fails) if fails else (
        f"{len(per_view)} views built from the current lake version {ctx.lake.version} ({len(segments)} segments) "
        "with the catalog's definitions")
    return CheckResult(not fails and bool(per_view), {"summary": summary if per_view else "no view registered",
                                                      "lake_version": ctx.lake.version, "views": per_view,
                                                      "skipped": ctx.skipped_views})


def schema_matches_registry(ctx: Context) -> CheckResult:
    per_view, fails = [], []
    for h in ctx.views():
        catalog = [[c, t] for c, t in h.view.schema()]
        try:
            actual = view_build.file_schema(ctx.con, h.path)
        except duckdb.Error as exc:
            fails.append(f"{h.name}: error {str(exc).splitlines()[0]}")
            continue
        registered = h.entry.columns
        diffs = []
        for label, other in (("registry", registered), ("catalog", catalog)):
            if actual != other:
                a, o = dict(map(tuple, actual)), dict(map(tuple, other or []))
                diffs.append({"against": label,
                              "differing": {c: {"file": a.get(c), label: o.get(c)} for c in sorted(set(a) | set(o)) if a.get(c) != o.get(c)},
                              "order_differs": [c for c, _ in actual] != [c for c, _ in (other or [])]})
        if registered != catalog:
            diffs.append({"against": "registry vs catalog", "registry": registered, "catalog": catalog})
        per_view.append({"view": h.name, "columns": len(actual), "differences": diffs})
        if diffs:
            fails.append(f"{h.name}: file schema differs from the {diffs[0]['against']}: {json.dumps(diffs[0].get('differing', ''))}")
    summary = "; ".join(fails) if fails else f"{len(per_view)} view files have exactly the registry's and catalog's columns and types"
    return CheckResult(not fails and bool(per_view), {"summary": summary if per_view else "no view to check",
                                                      "views": per_view, "skipped": ctx.skipped_views})


def unique_group_keys(ctx: Context) -> CheckResult:
    per_view, fails = [], []
    for h in ctx.views():
        keys = ", ".join(h.view.group_columns)
        try:
            # one pass over a 64-bit key hash; only a suspected duplicate is confirmed by an exact GROUP BY
            rows, suspected = ctx.con.execute(f"SELECT count(*), count(*) - count(DISTINCT hash({keys})) FROM {h.rel}").fetchall()[0]
            n = view_build.duplicate_keys(ctx.con, h.view, h.rel) if suspected else 0
            sample = dict_rows(ctx.con, f"SELECT {keys}, count(*) AS copies FROM {h.rel} GROUP BY ALL HAVING count(*) > 1 "
                                        f"ORDER BY ALL LIMIT {SAMPLES}") if n else []
        except duckdb.Error as exc:
            fails.append(f"{h.name}: error {str(exc).splitlines()[0]}")
            continue
        per_view.append({"view": h.name, "rows": rows, "duplicate_keys": n, "samples": sample})
        if n:
            fails.append(f"{h.name}: {n:,} group keys appear more than once, e.g. {jsonable(sample[0])}")
    summary = "; ".join(fails) if fails else (
        f"{sum(v['rows'] for v in per_view):,} rows of {len(per_view)} views: every group key once")
    return CheckResult(not fails and bool(per_view), {"summary": summary if per_view else "no view to check",
                                                      "views": per_view, "skipped": ctx.skipped_views})


def _damaged_file(ctx: Context, entry: ViewEntry) -> str | None:
    """The first file of a registered version (Parquet files and serving copies) that does not match
    its checksum, as `damaged: FILE: why` (noted in the damage register), or None."""
    vdir = (ctx.root / entry.file).parent
    try:
        for name, record in entry_records(entry):
            check(vdir / name, record)
    except ChecksumError as exc:
        rel = Path(exc.path).relative_to(ctx.root).as_posix()
        update_damage(ctx.root, {rel: exc.why})
        return f"damaged: {rel}: {exc.why}"
    return None


def present_readable(ctx: Context) -> CheckResult:
    per_view, fails = [], []
    for view in ctx.catalog:
        entry = ctx.registry.get(view.name)
        absent = presence(view, ctx.lake, entry)
        if absent is not None:
            per_view.append({"view": view.name, "problem": absent})
            fails.append(f"{view.name}: {absent}")
            continue
        damaged = _damaged_file(ctx, entry)
        if damaged is not None:
            per_view.append({"view": view.name, "problem": damaged})
            fails.append(f"{view.name}: {damaged}")
            continue
        path = ctx.root / entry.file
        try:
            cols = [c for c, _ in view_build.file_schema(ctx.con, path)]
            got = one_row(ctx.con, f"SELECT count(*) AS rows, {', '.join(f'sum(hash({compiler.ident(c)})) AS {compiler.ident(c)}' for c in cols)} "
                                   f"FROM read_parquet({sql_string(str(path))})")
        except (duckdb.Error, OSError) as exc:
            per_view.append({"view": view.name, "problem": f"unreadable: {str(exc).splitlines()[0]}"})
            fails.append(f"{view.name}: unreadable ({str(exc).splitlines()[0]})")
            continue
        per_view.append({"view": view.name, "file": entry.file, "rows": got["rows"], "registry_rows": entry.rows,
                         "columns_decoded": len(cols), "bytes": path.stat().st_size})
    stale = sorted(set(ctx.registry) - {v.name for v in ctx.catalog})
    summary = "; ".join(fails) if fails else (
        f"all {len(ctx.catalog)} catalog and adaptive views registered, present, matching their checksums and "
        f"fully decoded "
        f"({sum(v.get('rows', 0) for v in per_view):,} rows)")
    return CheckResult(not fails, {"summary": summary, "views": per_view, "registered_not_in_catalog": stale})

