"""Delta versions of a view: a refresh that costs what the new data costs, and their compaction.

A registered view version is a *base* (its Parquet file and serving copy) plus zero or more
*deltas*, one per refresh: the view's aggregate of only the segments that refresh added, in the
view's own shape and sort order, with its own Parquet file (`d{version}.parquet`, checksummed
like a base's) and serving copy. A key may appear in the base and in deltas; readers re-aggregate
at query time (counts and exact sums add, min/max combine), as they already re-aggregate view
rows, so base + deltas answers exactly what one merged file would. Deltas keep the base's serving encoding (the same
scaled int64 sums, checked against the prices the version holds).

Owns writing a delta (staged, checked against the new segments' own totals, promoted under a new
name, registered: the same steps and crash points as a full build), compaction (base + deltas
re-aggregated into a new base, checked against the totals of what it merged), the recomputation
of the days a dropped or replaced segment touched (the version minus those (type, day) keys,
plus the lake's aggregate of exactly those keys: MIN/MAX cannot be subtracted, so the keys are
recomputed), and `version_relation`, the SQL of a version's rows. Callers hold the view's lock.
Must not decide when to refresh (that is `build`) or answer queries.
"""
from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import duckdb
import pyarrow as pa

from analytics.core.checksum import file_record
from analytics.core.faults import crash_point
from analytics.core.sql import sql_string
from analytics.lake.state import Lake
from analytics.views.catalog import MEASURE_COLUMNS, ViewDef
from analytics.views.registry import VIEWS_DIR, DeltaEntry, ViewEntry, entry_files, update_registry
from analytics.views.serving_copy import INT64_MAX, SCALE, write_serving_copy
from analytics.views.verify import BuildError, duplicate_keys, file_schema, lake_totals_sql, reconcile

# Pending deltas past which a view is compacted: each delta adds one piece per type to every
# view answer (measured in bench/freshness.py: the view-routed median stays within 1 ms up to 10).
COMPACT_AT = 8

# A check of a new registry entry before it is registered (the build's self-check, `views.proof`).
Check = Callable[[ViewEntry], dict[str, Any]]


class OutgrowsEncoding(BuildError):
    """The version's price sums no longer fit its serving copy's int64 encoding: build a new base."""


def version_relation(root: Path, entry: ViewEntry) -> str:
    """A relation over the rows of a registered version: its base file, or base and deltas
    re-read as one (keys may repeat across files; every query over a view re-aggregates)."""
    return f"read_parquet([{', '.join(sql_string(root / v.file) for v in entry.versions())}])"


def _write_sorted(con: duckdb.DuckDBPyConnection, view: ViewDef, select: str, out: Path) -> None:
    con.execute("SET preserve_insertion_order = true")
    con.execute(f"COPY ({select} ORDER BY {', '.join(view.sort_columns)}) TO {sql_string(out)} "
                f"(FORMAT parquet, COMPRESSION zstd)")


def _checked(con: duckdb.DuckDBPyConnection, view: ViewDef, staging: Path, totals: str) -> dict[str, int]:
    """The checks of a staged file (schema, totals against `totals`, unique keys); its rows per type."""
    schema = file_schema(con, staging)
    expected = [[c, t] for c, t in view.schema()]
    if schema != expected:
        raise BuildError(f"{view.name}: built schema {schema} differs from the catalog's {expected}")
    staged = f"read_parquet({sql_string(staging)})"
    bad = reconcile(con, view, staged, totals)
    if bad:
        raise BuildError(f"{view.name}: totals do not reconcile with the lake, e.g. {bad[0]}")
    dupes = duplicate_keys(con, view, staged)
    if dupes:
        raise BuildError(f"{view.name}: {dupes} duplicate group keys")
    return dict(con.execute(f"SELECT type, count(*) FROM {staged} GROUP BY type ORDER BY type").fetchall())


def price_totals(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    """The total of each price's sums over `relation` (view rows or lake totals), exact, as text."""
    row = con.execute(f"SELECT {', '.join(f'sum(sum_{m})' for m in MEASURE_COLUMNS)} FROM {relation}").fetchall()[0]
    return {m: str(v or 0) for m, v in zip(MEASURE_COLUMNS, row)}


def scalable(totals: Mapping[str, str]) -> list[str]:
    """The sum columns whose every partial and re-aggregation fits the int64 encoding (`serving_copy`)."""
    return [f"sum_{m}" for m in MEASURE_COLUMNS if Decimal(totals[m]) * SCALE <= INT64_MAX]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _relation_totals(root: Path, entry: ViewEntry, con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    # an entry written before price totals were recorded has them counted from its files
    return dict(entry.price_totals or price_totals(con, version_relation(root, entry)))


def _next_files(lake: Lake, view: ViewDef, entry: ViewEntry, prefix: str) -> tuple[int, Path, Path]:
    """The view's next version number, its staging file and its final file (`{prefix}{version}.parquet`:
    `d` for a delta, `v` for a base)."""
    vdir = lake.root / VIEWS_DIR / view.name
    version = entry.version + 1
    return version, vdir / f".staging-{uuid.uuid4().hex}.parquet", vdir / f"{prefix}{version}.parquet"


def append_delta(con: duckdb.DuckDBPyConnection, view: ViewDef, lake: Lake, entry: ViewEntry,
                 segments: set[str], aggregate: Callable[[Path], None], check: Check | None = None) -> ViewEntry:
    """Register a delta holding the aggregate of `segments` (the lake's segments the version lacks),
    written by `aggregate(out)`; returns the new registry entry. `check(new_entry)` runs before the
    registry names it (the build's self-check): what it returns is recorded as `proof`, what it
    raises stops the delta."""
    started = time.perf_counter()
    root = lake.root
    version, staging, final = _next_files(lake, view, entry, "d")
    try:
        aggregate(staging)
        crash_point("build:after-aggregate")
        new_rows = f"(SELECT * FROM {lake.relation_sql(segments=segments)})"
        rows_by_type = _checked(con, view, staging, f"({lake_totals_sql(new_rows)})")
        totals = _relation_totals(root, entry, con)
        added = price_totals(con, f"read_parquet({sql_string(staging)})")
        totals = {m: str(Decimal(totals[m]) + Decimal(added[m])) for m in MEASURE_COLUMNS}
        scaled = entry.serving["scaled"]
        if not set(scaled) <= set(scalable(totals)):
            raise OutgrowsEncoding(f"{view.name}: price sums outgrow the serving copy's int64 encoding")
        checksum = file_record(staging)
        os.replace(staging, final)
        serving = write_serving_copy(con, view, final, final.with_suffix(""), rows_by_type, scaled)
        crash_point("build:after-rename-before-registry")
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    delta = DeltaEntry(file=final.relative_to(root).as_posix(), segments=sorted(segments),
                       rows=sum(rows_by_type.values()), rows_by_type=rows_by_type, bytes=final.stat().st_size,
                       checksum=checksum, serving=serving, built_at=_now())
    new_entry = replace(entry, version=version, lake_version=lake.data_version, segments=sorted(lake.segment_ids),
                        deltas=[*entry.deltas, delta], price_totals=totals, mode="incremental",
                        built_at=delta.built_at, build_seconds=round(time.perf_counter() - started, 3),
                        previous_files=entry_files(entry))
    if check is not None:
        new_entry = replace(new_entry, proof=check(new_entry))
    update_registry(root, new_entry)
    crash_point("build:after-registry")
    return new_entry


def _affected_table(affected: Mapping[str, Iterable[str]]) -> pa.Table:
    pairs = sorted({(t, d) for t, days in affected.items() for d in days})
    return pa.table({"type": pa.array([t for t, _ in pairs], pa.string()),
                     "day": pa.array([dt.date.fromisoformat(d) for _, d in pairs], pa.date32())})


def compact(con: duckdb.DuckDBPyConnection, view: ViewDef, lake: Lake, entry: ViewEntry,
            affected: Mapping[str, Iterable[str]] | None = None, check: Check | None = None) -> ViewEntry:
    """A new base from the version's base and deltas re-aggregated; returns the new registry entry.

    Without `affected` the new base covers what the version covered. With `affected` (type ->
    days: those of the segments dropped from or added to the lake since the version), the rows
    of those (type, day) keys are recomputed from the lake and the others kept, so the new base
    covers the lake as it is now (only for views with a `day` column)."""
    started = time.perf_counter()
    root = lake.root
    version, staging, final = _next_files(lake, view, entry, "v")
    source = version_relation(root, entry)
    measures = ", ".join(["cnt"] + [f"{p}_{m}" for m in MEASURE_COLUMNS for p in ("nn", "sum")])
    keys = "type, day" if "day" in view.group_columns else "type"
    if affected is None:
        select = view.reaggregate_sql(source)
        totals = f"(SELECT {keys}, {measures} FROM {source})"
        covers = {"lake_version": entry.lake_version, "segments": entry.segments}
    else:
        if "day" not in view.group_columns:
            raise BuildError(f"{view.name} has no day column: recompute it in full")
        table = _affected_table(affected)
        con.register("affected_days", table)
        days = table.column("day")
        lo, hi = (min(days.to_pylist()), max(days.to_pylist())) if len(table) else (dt.date(1970, 1, 1),) * 2
        kept = f"(SELECT * FROM {source} ANTI JOIN affected_days USING (type, day))"
        # the day range first: the lake is sorted by time, so its zone maps skip the other days
        fresh = (f"(SELECT * FROM (SELECT * FROM {lake.relation_sql()} WHERE day BETWEEN "
                 f"{sql_string(lo.isoformat())}::DATE AND {sql_string(hi.isoformat())}::DATE) "
                 f"SEMI JOIN affected_days USING (type, day))")
        select = view.reaggregate_sql(f"(SELECT * FROM {kept} UNION ALL BY NAME {view.aggregate_sql(fresh)})")
        totals = (f"(SELECT {keys}, {measures} FROM {kept} UNION ALL BY NAME "
                  f"SELECT {keys}, {measures} FROM ({lake_totals_sql(fresh)}))")
        covers = {"lake_version": lake.data_version, "segments": sorted(lake.segment_ids)}
    try:
        _write_sorted(con, view, select, staging)
        crash_point("build:after-aggregate")
        rows_by_type = _checked(con, view, staging, totals)
        staged_totals = price_totals(con, f"read_parquet({sql_string(staging)})")
        checksum = file_record(staging)
        os.replace(staging, final)
        serving = write_serving_copy(con, view, final, final.with_suffix(""), rows_by_type, scalable(staged_totals))
        crash_point("build:after-rename-before-registry")
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    rows = sum(rows_by_type.values())
    lake_rows = con.execute(f"SELECT sum(cnt) FROM read_parquet({sql_string(final)})").fetchall()[0][0] or 0
    new_entry = replace(entry, **covers, version=version, file=final.relative_to(root).as_posix(),
                        rows=rows, rows_by_type=rows_by_type, bytes=final.stat().st_size, checksum=checksum,
                        serving=serving, deltas=[], price_totals=staged_totals,
                        mode="compacted" if affected is None else "recomputed", built_at=_now(),
                        build_seconds=round(time.perf_counter() - started, 3), previous_files=entry_files(entry),
                        rollup=round(lake_rows / max(1, rows), 2))
    if check is not None:
        new_entry = replace(new_entry, proof=check(new_entry))
    update_registry(root, new_entry)
    crash_point("build:after-registry")
    return new_entry
