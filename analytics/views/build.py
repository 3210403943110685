"""The view indexer: build, check and promote materialized views; the schema registry.

Owns `build` and `LAKE/views/_registry.json`. A view is aggregated by DuckDB (or by Spark, see
`analytics.engines`) into a hidden staging file, checked (schema, and totals per type and day
reconciled with the lake), then promoted by an atomic rename to a new versioned file, then its
serving copy written (`serving_copy`: memory-mappable Arrow files), and only then recorded in
the registry with its rollup (lake rows per view row):
a reader never sees a half-built view, and a build killed at any point leaves the previous
version in force; the next build sweeps its leftovers. One file lock per view means two
builds of the same view never both write; different views build in parallel, one DuckDB
connection per thread, each aggregating one event type at a time (bounded pieces appended to
one file, in type-then-time order without a global sort). A view of the same definition is
refreshed at the cost of what changed (`views.delta`): appended parts become a delta beside the
version, dropped or replaced ones have the days they covered recomputed; `compact_due` merges
the deltas of a view that holds COMPACT_AT of them into a new base. Every file is checksummed
as it is written (`core.checksum`); a version whose files are missing, truncated or noted
damaged (`lake.damage`) is rebuilt in full (never refreshed from: a refresh first checks the
version's Parquet bytes), a full build first checks the lake's bytes, and `repair_indexes`
rebuilds the lake indexes whose files are damaged.
Must not decide routes or answer queries.
"""
from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from analytics.core import db
from analytics.core.checksum import ChecksumError, check, file_record
from analytics.core.faults import crash_point
from analytics.core.memory import DEFAULT_MEMORY_LIMIT, split_memory
from analytics.core.sql import sql_string
from analytics.lake.damage import load_damage, update_damage
from analytics.lake.index.store import IndexBuildError, build_index, index_files
from analytics.lake.index.store import files_damage as index_damage
from analytics.lake.integrity import DamagedSegmentError, cheap_damage, check_segments
from analytics.lake.state import DEFAULT_ROW_GROUP_SIZE, Lake
from analytics.views.adaptive_catalog import all_views, index_def, load_adaptive, save_adaptive
from analytics.views.catalog import VIEWS, ViewDef
from analytics.views.day_ranges import Piece, cut
from analytics.views.delta import COMPACT_AT, OutgrowsEncoding, append_delta, compact, price_totals
from analytics.views.proof import prove
from analytics.views.registry import (
    LOCK_TIMEOUT_S,
    VIEWS_DIR,
    ViewEntry,
    entry_files,
    files_damage,
    is_current,
    load_registry,
    sweep_view_dir,
    update_registry,
)
from analytics.views.serving_copy import WRITER_MEMORY, ServingError, scaled_sums, write_serving_copy
from analytics.views.verify import (  # noqa: F401 - BuildError and the lake's totals are imported from here
    BuildError,
    duplicate_keys,
    file_schema,
    lake_totals,
    lake_totals_sql,
    reconcile,
)

# the interpreter, DuckDB's and Arrow's libraries and the lake totals (measured: 160 MiB before any
# query), held outside DuckDB's buffer pools
PROCESS_MEMORY = 192 * 2**20
ROW_GROUP_ROWS = DEFAULT_ROW_GROUP_SIZE  # DuckDB's row group size: zone maps per group of this many rows


class Aggregator(Protocol):
    """What executes a view's aggregation (`analytics.engines` has DuckDB's and Spark's)."""

    # exceptions that mean "this step failed" (reported per view, not a crash)
    errors: tuple[type[BaseException], ...]

    def aggregate_view(self, view: ViewDef, lake: Lake, out: Path, *, segments: set[str] | None = None,
                       pieces: Sequence[Piece] | None = None) -> None:
        """Write `view` as one Parquet file `out`, sorted by `view.sort_columns`: aggregated from the
        whole lake, or from only `segments` (a delta, `views.delta`). `pieces` (`views.pieces.cut`)
        is how to cut the work to fit the memory; None: a type at a time."""

    def lake_totals(self, lake: Lake) -> pa.Table:
        """`lake_totals_sql` over the committed lake, as Arrow."""


class DuckDBAggregator:
    """`Aggregator` on this machine: one DuckDB connection per step."""

    errors: tuple[type[BaseException], ...] = (duckdb.Error,)

    def __init__(self, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> None:
        self.memory_limit = memory_limit

    def aggregate_view(self, view: ViewDef, lake: Lake, out: Path, *, segments: set[str] | None = None,
                       pieces: Sequence[Piece] | None = None) -> None:
        con = db.connect(memory_limit=self.memory_limit)
        try:
            con.execute("SET preserve_insertion_order = true")
            con.execute("SET enable_progress_bar = false")  # streamed results would draw one per type
            # One piece at a time (a type, or a range of its days: `pieces`), appended to one file:
            # each piece's hash table and sort fit the connection's share, and the pieces in order
            # are the file's type-then-time order.
            writer = None
            try:
                for piece in pieces or cut(view, None, self.memory_limit):
                    select = view.aggregate_sql(lake.relation_sql(segments=segments), where=piece.where())
                    # a piece holds one type: its order is the rest of the sort (none for a view
                    # of type alone, one row per type)
                    order = f" ORDER BY {', '.join(view.sort_columns[1:])}" if view.sort_columns[1:] else ""
                    reader = con.sql(select + order).to_arrow_reader(ROW_GROUP_ROWS)
                    if writer is None:
                        writer = pq.ParquetWriter(out, reader.schema, compression="zstd")
                    for batch in reader:
                        if batch.num_rows:
                            writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
            finally:
                if writer is not None:
                    writer.close()
        finally:
            con.close()

    def lake_totals(self, lake: Lake) -> pa.Table:
        con = db.connect(memory_limit=self.memory_limit)
        con.execute("SET enable_progress_bar = false")  # the build's own bars say where it is
        try:
            return lake_totals(con, lake)
        finally:
            con.close()


def lake_distinct(con: duckdb.DuckDBPyConnection, lake: Lake, columns: Sequence[str]) -> dict[str, int]:
    """Distinct values of each of `columns` (from the allow-list) in the whole lake: one scan."""
    items = ", ".join(f"count(DISTINCT {c})" for c in columns)
    return dict(zip(columns, con.execute(f"SELECT {items} FROM {lake.relation_sql()}").fetchone()))


def _parquet_intact(root: Path, entry: ViewEntry) -> bool:
    """Whether a version's Parquet files (base and deltas: what a refresh or a compaction reads) match
    their checksums; a damaged one is noted in the damage register. A read of each file, far less
    than the refresh that follows."""
    try:
        for version in entry.versions():
            check(root / version.file, version.checksum)
    except ChecksumError as exc:
        update_damage(root, {Path(exc.path).relative_to(root).as_posix(): exc.why})
        return False
    return True


def repair_indexes(lake: Lake, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> dict[str, str]:
    """Rebuild each lake index of the adaptive catalog built for this lake version whose files are
    missing, truncated or noted damaged (one of another lake version is the adaptive build's to
    refresh); returns index -> "rebuilt" or why it failed."""
    state = load_adaptive(lake.root)
    damaged = load_damage(lake.root)
    out: dict[str, str] = {}
    for name, record in sorted(state["indexes"].items()):
        index = index_def(name, record) if isinstance(record, dict) else None
        if index is None or not lake.covers(record.get("lake_version")):
            continue
        missing = any(not f.is_file() for f in index_files(lake.root, record).values())
        if not missing and index_damage(lake.root, record, damaged) is None:
            continue
        try:
            state["indexes"][name] = {**record, **build_index(index, lake, version=int(record["version"]) + 1,
                                                             memory_limit=memory_limit)}
        except (IndexBuildError, OSError, RuntimeError) as exc:
            out[name] = f"failed: {str(exc).splitlines()[0]}"
            continue
        out[name] = "rebuilt"
    if any(v == "rebuilt" for v in out.values()):
        save_adaptive(lake.root, state)
    return out


def _sweep_idle(vdir: Path, entry: ViewEntry) -> None:
    """Sweep a view's leftovers (e.g. of a killed build) unless a build holds its lock right now."""
    lock = FileLock(str(vdir / ".lock"))
    try:
        with lock.acquire(timeout=0):
            sweep_view_dir(vdir, entry)
    except Timeout:
        pass


def _refresh_in_place(view: ViewDef, lake: Lake, entry: ViewEntry, engine: Aggregator, memory_limit: str,
                      bar: tqdm | None, shapes: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any] | None:
    """Refresh a version of the same definition at the cost of what changed (`views.delta`): a delta
    for appended segments; for dropped or replaced ones, the days they covered recomputed. None
    when only a full build can (the dropped segments' days are unknown, or the view has no days)."""
    started = time.perf_counter()
    covered, now = set(entry.segments), set(lake.segment_ids)
    new_segments, dropped = now - covered, covered - now
    affected = None
    if dropped:
        affected = lake.segment_days(dropped | new_segments) if "day" in view.group_columns else None
        if affected is None:
            return None
    con = db.connect(memory_limit=memory_limit)
    con.execute("SET enable_progress_bar = false")
    try:
        if bar:
            bar.set_postfix_str("delta" if affected is None else "recompute days")
        check = partial(proved, view, lake, old_entry=entry, shapes=shapes, memory_limit=memory_limit)
        if affected is None:
            try:
                new_entry = append_delta(con, view, lake, entry, new_segments,
                                         lambda out: engine.aggregate_view(view, lake, out, segments=new_segments),
                                         check=check)
            except OutgrowsEncoding:
                return None  # the new base gets the encoding the grown sums allow
        else:
            new_entry = compact(con, view, lake, entry, affected, check=check)
    finally:
        con.close()
    if bar:
        bar.update(bar.total - bar.n)
        bar.set_postfix_str(f"v{new_entry.version} {new_entry.mode}")
    rows = new_entry.rows + sum(d.rows for d in new_entry.deltas)
    return {"view": view.name, "status": "built", "mode": new_entry.mode, "version": new_entry.version,
            "rows": rows, "seconds": round(time.perf_counter() - started, 3)}


def compact_due(lake_dir: str | os.PathLike, names: Iterable[str] | None = None, *, at: int = COMPACT_AT,
                memory_limit: str = DEFAULT_MEMORY_LIMIT) -> list[str]:
    """Compact each named view (default: all) holding at least `at` deltas into a new base, one view
    at a time under its lock; returns the views compacted. A view whose files are not all there is
    left to the next build."""
    lake = Lake.open(lake_dir)
    defs = all_views(lake.root)
    done = []
    for name in [n for n in names or defs if n in defs]:
        vdir = lake.root / VIEWS_DIR / name
        with FileLock(str(vdir / ".lock"), timeout=LOCK_TIMEOUT_S):
            entry = load_registry(lake.root).get(name)
            if (entry is None or len(entry.deltas) < at
                    or entry.definition != defs[name].definition_hash()
                    or files_damage(lake.root, entry, load_damage(lake.root)) is not None
                    or not _parquet_intact(lake.root, entry)):  # left to the next build, which rebuilds it
                continue
            sweep_view_dir(vdir, entry)
            con = db.connect(memory_limit=memory_limit)
            try:
                # proved against the lake the deltas cover: only a current version is compacted
                check = (partial(proved, defs[name], lake, old_entry=entry, shapes=(), memory_limit=memory_limit)
                         if lake.covers(entry.lake_version) else None)
                compact(con, defs[name], lake, entry, check=check)
            finally:
                con.close()
            done.append(name)
    return done


def proved(view: ViewDef, lake: Lake, new_entry: ViewEntry, old_entry: ViewEntry | None,
           shapes: Sequence[Mapping[str, Any]], memory_limit: str) -> dict[str, Any]:
    """The proof of a new version before it is registered (`views.proof`): how many sample queries
    agreed with the lake, in how long. On a disagreement the new version's files (those the old
    version does not share) are removed and the `BuildError` raised: the version never serves."""
    started = time.perf_counter()
    try:
        agreed = prove(view, lake, new_entry, shapes=shapes, memory_limit=memory_limit)
    except BaseException:
        vdir = lake.root / VIEWS_DIR / view.name
        for name in set(entry_files(new_entry)) - set(entry_files(old_entry) if old_entry else ()):
            (vdir / name).unlink(missing_ok=True)
        raise
    return {"queries": agreed, "seconds": round(time.perf_counter() - started, 3)}


def build_view(view: ViewDef, lake: Lake, totals: Callable[[], pa.Table], *, force: bool = False,
               memory_limit: str = DEFAULT_MEMORY_LIMIT, bar: tqdm | None = None, engine: Aggregator | None = None,
               distinct: Callable[[Sequence[str]], Mapping[str, int]] | None = None,
               shapes: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Build one view if it is stale; returns what happened (`status`: built | up-to-date).

    `engine` aggregates the staged file (default DuckDB); the checks, promotion and registry here
    are the same whichever engine wrote it. `totals` and `distinct` (the lake's distinct values of
    some columns; default: counted now) are the build's shared facts about the lake. Every new
    version proves itself (`proved`) before it is registered, on generated queries and `shapes`
    (telemetry query shapes it was chosen for)."""
    root = lake.root
    vdir = root / VIEWS_DIR / view.name
    vdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with FileLock(str(vdir / ".lock"), timeout=LOCK_TIMEOUT_S):
        entry = load_registry(root).get(view.name)
        damaged = load_damage(root)
        # files missing, truncated or noted damaged: the version is rebuilt in full, never refreshed
        current = entry is not None and files_damage(root, entry, damaged) is None
        same_def = current and entry.definition == view.definition_hash()
        sweep_view_dir(vdir, entry if current else None)
        if is_current(view, lake, entry, damaged) and not force:
            if bar:
                bar.update(bar.total - bar.n)
            return {"view": view.name, "status": "up-to-date", "version": entry.version}
        engine = engine or DuckDBAggregator(memory_limit)
        if same_def and not force and not _parquet_intact(root, entry):
            same_def = False  # a refresh would carry the damage into the new version: rebuild in full
        if same_def and not force:
            refreshed = _refresh_in_place(view, lake, entry, engine, memory_limit, bar, shapes)
            if refreshed is not None:
                return refreshed
        version = (entry.version + 1) if entry else 1
        staging = vdir / f".staging-{uuid.uuid4().hex}.parquet"
        final = vdir / f"v{version}.parquet"
        con = db.connect(memory_limit=memory_limit)
        con.execute("SET enable_progress_bar = false")
        try:
            if bar:
                bar.set_postfix_str("aggregate")
            pieces = cut(view, totals(), memory_limit, distinct or (lambda cols: lake_distinct(con, lake, cols)))
            engine.aggregate_view(view, lake, staging, pieces=pieces)
            crash_point("build:after-aggregate")
            if bar:
                bar.update(1)
                bar.set_postfix_str("check")
            schema = file_schema(con, staging)
            expected = [[c, t] for c, t in view.schema()]
            if schema != expected:
                raise BuildError(f"{view.name}: built schema {schema} differs from the catalog's {expected}")
            lake_totals_table = totals()
            con.register("lake_totals", lake_totals_table)
            staged = f"read_parquet({sql_string(staging)})"
            bad = reconcile(con, view, staged, "lake_totals")
            if bad:
                raise BuildError(f"{view.name}: totals do not reconcile with the lake, e.g. {bad[0]}")
            dupes = duplicate_keys(con, view, staged, pieces)
            if dupes:
                raise BuildError(f"{view.name}: {dupes} duplicate group keys")
            rows_by_type = dict(con.execute(f"SELECT type, count(*) FROM {staged} GROUP BY type ORDER BY type").fetchall())
            if bar:
                bar.update(1)
                bar.set_postfix_str("promote")
            checksum = file_record(staging)
            os.replace(staging, final)  # atomic: the new version appears whole or not at all
            if bar:
                bar.set_postfix_str("serving copy")
            serving = write_serving_copy(con, view, final, final.with_suffix(""), rows_by_type,
                                         scaled_sums(lake_totals_table))
            lake_rows = pc.sum(pc.filter(lake_totals_table.column("cnt"),
                                         pc.is_in(lake_totals_table.column("type"), pa.array(view.types)))).as_py() or 0
            totals_of_prices = price_totals(con, f"read_parquet({sql_string(final)})")
            crash_point("build:after-rename-before-registry")
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        finally:
            con.close()
        built_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        new_entry = ViewEntry(
            name=view.name, version=version, file=final.relative_to(root).as_posix(),
            columns=expected, rows=sum(rows_by_type.values()), rows_by_type=rows_by_type,
            bytes=final.stat().st_size, checksum=checksum, built_at=built_at,
            build_seconds=round(time.perf_counter() - started, 3),
            lake_version=lake.data_version, segments=sorted(lake.segment_ids),
            definition=view.definition_hash(), mode="full",
            grain=view.grain, dims=list(view.group_columns),
            serving=serving, price_totals=totals_of_prices,
            previous_files=entry_files(entry) if current else [],
            # lake rows per view row: how much a query served from the view saves over the lake
            rollup=round(lake_rows / max(1, sum(rows_by_type.values())), 2),
        )
        if bar:
            bar.set_postfix_str("self-check")
        new_entry = replace(new_entry, proof=proved(view, lake, new_entry, entry if current else None, shapes,
                                                    memory_limit))
        update_registry(root, new_entry)
        crash_point("build:after-registry")
        if bar:
            bar.update(1)
            bar.set_postfix_str(f"v{version} {new_entry.mode}")
        return {"view": view.name, "status": "built", "mode": new_entry.mode, "version": version,
                "rows": new_entry.rows, "seconds": new_entry.build_seconds}


def build(lake_dir: str | os.PathLike, names: Iterable[str] | None = None, *, jobs: int | None = None,
          force: bool = False, progress: bool = True, memory_limit: str = DEFAULT_MEMORY_LIMIT,
          engine: Aggregator | None = None, compact_deltas: bool = True,
          shapes: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> dict[str, Any]:
    """Build or refresh the named views (default: the catalog and the lake's adaptive views,
    `views.adaptive_catalog`), `jobs` at a time, aggregated by
    `engine` (default DuckDB; see analytics.engines). `memory_limit` bounds the whole build: each of
    the `jobs` connections gets an equal share, so more cores never means more memory. With
    `compact_deltas`, views holding COMPACT_AT deltas are then compacted (`compact_due`). `shapes`:
    per view, telemetry query shapes it served (`adaptive.shapes_by_route`), which its new version
    proves itself on besides generated ones."""
    lake = Lake.open(lake_dir)
    defs = all_views(lake.root)
    selected = list(names) if names else list(defs)
    unknown = [n for n in selected if n not in defs]
    if unknown:
        raise BuildError(f"unknown view(s) {', '.join(unknown)}; the catalog has: {', '.join(VIEWS)}"
                         + (f"; this lake's adaptive views: {', '.join(n for n in defs if n not in VIEWS)}"
                            if len(defs) > len(VIEWS) else ""))
    started = time.perf_counter()
    jobs = jobs or min(len(selected), os.cpu_count() or 1)
    try:
        # the budget is the process's: the interpreter and libraries, and per job the serving-copy
        # writer's Arrow batches, are set aside before DuckDB's connections share the rest
        memory_limit = split_memory(memory_limit, jobs, reserve=PROCESS_MEMORY + jobs * WRITER_MEMORY)
    except ValueError as exc:
        raise BuildError(f"--memory-limit: {exc}; or build with fewer --jobs") from None
    registry = load_registry(lake.root)
    damaged = load_damage(lake.root)
    if not force and all(is_current(defs[n], lake, registry.get(n), damaged) for n in selected):
        for name in selected:
            _sweep_idle(lake.root / VIEWS_DIR / name, registry[name])
        compacted = compact_due(lake.root, selected, memory_limit=memory_limit) if compact_deltas else []
        return {"lake_version": lake.version, "views": [], "failed": {}, "built": [], "up_to_date": selected,
                "compacted": compacted, "indexes": repair_indexes(lake, memory_limit) if not names else {},
                "seconds": round(time.perf_counter() - started, 3)}
    bad_lake = cheap_damage(lake, damaged)
    if bad_lake:
        raise BuildError(next(iter(bad_lake.values())))
    engine = engine or DuckDBAggregator(memory_limit)
    totals_cache: list[pa.Table] = []
    lock = threading.Lock()

    def totals() -> pa.Table:
        # one scan of the lake per build, shared by every view's reconciliation; a full build reads
        # every lake file, so their bytes are checked first (a view is never built from damage)
        with lock:
            if not totals_cache:
                try:
                    check_segments(lake)
                except DamagedSegmentError as exc:
                    raise BuildError(str(exc)) from None
                totals_cache.append(engine.lake_totals(lake))
            return totals_cache[0]

    counted: dict[str, int] = {}

    def distinct(columns: Sequence[str]) -> Mapping[str, int]:
        # counted when a view first needs them (a view whose types fit needs none), once per build
        with lock:
            missing = [c for c in columns if c not in counted]
            if missing:
                con = db.connect(memory_limit=memory_limit)
                try:
                    con.execute("SET enable_progress_bar = false")
                    counted.update(lake_distinct(con, lake, missing))
                finally:
                    con.close()
            return {c: counted[c] for c in columns}

    results: list[dict[str, Any]] = []
    failures: dict[str, str] = {}

    def one(i_name: tuple[int, str]) -> None:
        i, name = i_name
        with tqdm(total=3, desc=name, position=i, leave=True, disable=not progress, unit="step") as bar:
            try:
                res = build_view(defs[name], lake, totals, force=force, memory_limit=memory_limit, bar=bar,
                                 engine=engine, distinct=distinct, shapes=(shapes or {}).get(name, ()))
            except (BuildError, ServingError, duckdb.Error, OSError, *engine.errors) as exc:
                with lock:
                    failures[name] = str(exc).splitlines()[0]
                return
        with lock:
            results.append(res)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, enumerate(selected)))
    order = {n: i for i, n in enumerate(selected)}
    results.sort(key=lambda r: order[r["view"]])
    compacted = compact_due(lake.root, selected, memory_limit=memory_limit) if compact_deltas else []
    return {"lake_version": lake.version, "views": results, "failed": failures, "compacted": compacted,
            "indexes": repair_indexes(lake, memory_limit) if not names else {},
            "built": [r["view"] for r in results if r["status"] == "built"],
            "up_to_date": [r["view"] for r in results if r["status"] == "up-to-date"],
            "seconds": round(time.perf_counter() - started, 3)}
