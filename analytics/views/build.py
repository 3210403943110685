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
one file, in type-then-time order without a global sort). After `prepare` only appended parts,
a view is refreshed by merging the aggregate of the new parts into the old version instead of
rescanning the lake.
Must not decide routes or answer queries.
"""
from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from analytics.core import db
from analytics.core.faults import crash_point
from analytics.core.memory import DEFAULT_MEMORY_LIMIT, split_memory
from analytics.core.sql import sql_string
from analytics.lake.manifest import Lake
from analytics.views.catalog import CATALOG, MEASURE_COLUMNS, SUM_TYPE, VIEWS, ViewDef
from analytics.views.registry import (
    LOCK_TIMEOUT_S,
    VIEWS_DIR,
    is_current,
    load_registry,
    update_registry,
)
from analytics.views.serving_copy import SUFFIX as SERVING_SUFFIX
from analytics.views.pieces import Piece, cut
from analytics.views.serving_copy import WRITER_MEMORY, ServingError, scaled_sums, serving_files, write_serving_copy

# the interpreter, DuckDB's and Arrow's libraries and the lake totals (measured: 160 MiB before any
# query), held outside DuckDB's buffer pools
PROCESS_MEMORY = 192 * 2**20
ROW_GROUP_ROWS = 122_880  # DuckDB's row group size: zone maps per group of this many rows


class Aggregator(Protocol):
    """What executes a view's aggregation (`analytics.engines` has DuckDB's and Spark's)."""

    # exceptions that mean "this step failed" (reported per view, not a crash)
    errors: tuple[type[BaseException], ...]

    def aggregate_view(self, view: ViewDef, lake: Lake, out: Path, *, base: Path | None = None,
                       segments: set[str] | None = None, pieces: Sequence[Piece] | None = None) -> None:
        """Write `view` as one Parquet file `out`, sorted by `view.sort_columns`: aggregated from the
        whole lake, or, with `base`, the previous version merged with the aggregate of `segments`.
        `pieces` (`views.pieces.cut`) is how to cut the work to fit the memory; None: a type at a time."""

    def lake_totals(self, lake: Lake) -> pa.Table:
        """`lake_totals_sql` over the committed lake, as Arrow."""


class DuckDBAggregator:
    """`Aggregator` on this machine: one DuckDB connection per step."""

    errors: tuple[type[BaseException], ...] = (duckdb.Error,)

    def __init__(self, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> None:
        self.memory_limit = memory_limit

    def aggregate_view(self, view: ViewDef, lake: Lake, out: Path, *, base: Path | None = None,
                       segments: set[str] | None = None, pieces: Sequence[Piece] | None = None) -> None:
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
                    where = piece.where()
                    fresh = view.aggregate_sql(lake.relation_sql(segments=segments), where=where)
                    if base is not None:
                        old = f"SELECT * FROM read_parquet({sql_string(base)}) WHERE {where}"
                        select = view.reaggregate_sql(f"({old} UNION ALL BY NAME {fresh})")
                    else:
                        select = fresh
                    reader = con.sql(f"{select} ORDER BY {', '.join(view.sort_columns[1:])}"
                                     ).to_arrow_reader(ROW_GROUP_ROWS)
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


class BuildError(RuntimeError):
    """A view failed its checks or could not be built; the previous version stays in force."""


def lake_totals_sql(relation: str) -> str:
    """Per type and day: rows, non-NULL counts and exact sums of the prices of `relation` (the lake);
    plain SQL that every engine runs."""
    items = ["type", "day", "count(*)::BIGINT AS cnt"]
    for m in MEASURE_COLUMNS:
        items += [f"count({m})::BIGINT AS nn_{m}", f"sum(CAST({m} AS {SUM_TYPE})) AS sum_{m}"]
    return f"SELECT {', '.join(items)} FROM {relation} GROUP BY type, day"


def lake_distinct(con: duckdb.DuckDBPyConnection, lake: Lake, columns: Sequence[str]) -> dict[str, int]:
    """Distinct values of each of `columns` (from the allow-list) in the whole lake: one scan."""
    items = ", ".join(f"count(DISTINCT {c})" for c in columns)
    return dict(zip(columns, con.execute(f"SELECT {items} FROM {lake.relation_sql()}").fetchone()))


def lake_totals(con: duckdb.DuckDBPyConnection, lake: Lake) -> pa.Table:
    """Per type and day: rows, non-NULL counts and exact sums of the prices, from the lake itself."""
    return db.fetch_arrow(con, lake_totals_sql(lake.relation_sql()))


def reconcile(con: duckdb.DuckDBPyConnection, view: ViewDef, relation: str, totals_relation: str) -> list[dict[str, Any]]:
    """Groups (type[, day]) where the view's totals differ from the lake's; empty when they reconcile."""
    keys = ["type", "day"] if "day" in view.group_columns else ["type"]
    measures = ["cnt"] + [f"{p}_{m}" for m in MEASURE_COLUMNS for p in ("nn", "sum")]
    agg = ", ".join(f"sum({c}) AS {c}" for c in measures)
    type_filter = f"WHERE type IN ({', '.join(repr(t) for t in view.types)})"
    diff = " OR ".join(f"v.{c} IS DISTINCT FROM l.{c}" for c in measures)
    sql = f"""
        WITH v AS (SELECT {', '.join(keys)}, {agg} FROM {relation} GROUP BY ALL),
             l AS (SELECT {', '.join(keys)}, {agg} FROM {totals_relation} {type_filter} GROUP BY ALL)
        SELECT {', '.join(f'coalesce(v.{k}, l.{k}) AS {k}' for k in keys)},
               {', '.join(f'v.{c} AS view_{c}, l.{c} AS lake_{c}' for c in measures)}
        FROM v FULL OUTER JOIN l USING ({', '.join(keys)})
        WHERE {diff}
        ORDER BY ALL LIMIT 20
    """
    table = db.fetch_arrow(con, sql)
    return table.to_pylist()


def duplicate_keys(con: duckdb.DuckDBPyConnection, view: ViewDef, relation: str,
                   pieces: Iterable[Piece] = (None,)) -> int:
    """Keys held by more than one row, counted piece by piece (`pieces.cut`: a key lies in one
    piece, so each group-by holds one piece's keys); by default over the whole relation."""
    keys = ", ".join(view.group_columns)
    total = 0
    for piece in pieces:
        where = f"WHERE {piece.where()}" if piece else ""
        total += con.execute(f"SELECT count(*) FROM (SELECT {keys} FROM {relation} {where} GROUP BY ALL "
                             f"HAVING count(*) > 1)").fetchone()[0]
    return total


def file_schema(con: duckdb.DuckDBPyConnection, path: Path) -> list[list[str]]:
    rows = con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_string(path)})").fetchall()
    return [[r[0], r[1]] for r in rows]


def _sweep_view_dir(vdir: Path, keep: Iterable[str]) -> None:
    """Remove staging leftovers and versions older than those in `keep` (caller holds the view lock)."""
    keep = set(keep)
    for f in vdir.glob(".staging-*"):
        f.unlink(missing_ok=True)
    files = [f for f in vdir.glob("v*") if f.suffix in (".parquet", SERVING_SUFFIX)]
    versions = sorted({_version(f) for f in files})
    for f in files:
        # the previous version stays for readers that still hold it
        if _version(f) not in versions[-2:] and f.name not in keep:
            f.unlink(missing_ok=True)


def _version(f: Path) -> int:
    """The version of a view file: `v12.parquet`, `v12.click.arrow` -> 12."""
    head = f.name.split(".", 1)[0][1:]
    return int(head) if head.isdigit() else 0


def _files(entry: dict[str, Any]) -> list[str]:
    """The file names of a registered version: its Parquet and its serving copy."""
    return [Path(entry["file"]).name] + (serving_files(entry["serving"]) if entry.get("serving") else [])


def _sweep_idle(vdir: Path, entry: dict[str, Any]) -> None:
    """Sweep a view's leftovers (e.g. of a killed build) unless a build holds its lock right now."""
    lock = FileLock(str(vdir / ".lock"))
    try:
        with lock.acquire(timeout=0):
            _sweep_view_dir(vdir, keep=_files(entry))
    except Timeout:
        pass


def build_view(view: ViewDef, lake: Lake, totals: Callable[[], pa.Table], *, force: bool = False,
               memory_limit: str = DEFAULT_MEMORY_LIMIT, bar: tqdm | None = None, engine: Aggregator | None = None,
               distinct: Callable[[Sequence[str]], Mapping[str, int]] | None = None) -> dict[str, Any]:
    """Build one view if it is stale; returns what happened (`status`: built | up-to-date).

    `engine` aggregates the staged file (default DuckDB); the checks, promotion and registry here
    are the same whichever engine wrote it. `totals` and `distinct` (the lake's distinct values of
    some columns; default: counted now) are the build's shared facts about the lake."""
    root = lake.root
    vdir = root / VIEWS_DIR / view.name
    vdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with FileLock(str(vdir / ".lock"), timeout=LOCK_TIMEOUT_S):
        entry = load_registry(root)["views"].get(view.name)
        current = entry is not None and (root / entry["file"]).is_file()
        same_def = current and entry["definition"] == view.definition_hash()
        _sweep_view_dir(vdir, keep=_files(entry) if current else [])
        if is_current(view, lake, entry) and not force:
            if bar:
                bar.update(bar.total - bar.n)
            return {"view": view.name, "status": "up-to-date", "version": entry["version"]}
        new_segments = set(lake.segment_ids) - set(entry["segments"]) if same_def else set()
        incremental = (same_def and not force and set(entry["segments"]) <= set(lake.segment_ids)
                       and bool(new_segments))
        version = (entry["version"] + 1) if entry else 1
        staging = vdir / f".staging-{uuid.uuid4().hex}.parquet"
        final = vdir / f"v{version}.parquet"
        engine = engine or DuckDBAggregator(memory_limit)
        con = db.connect(memory_limit=memory_limit)
        con.execute("SET enable_progress_bar = false")
        try:
            if bar:
                bar.set_postfix_str("aggregate")
            pieces = cut(view, totals(), memory_limit, distinct or (lambda cols: lake_distinct(con, lake, cols)))
            engine.aggregate_view(view, lake, staging, base=root / entry["file"] if incremental else None,
                                  segments=new_segments if incremental else None, pieces=pieces)
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
            os.replace(staging, final)  # atomic: the new version appears whole or not at all
            if bar:
                bar.set_postfix_str("serving copy")
            serving = write_serving_copy(con, view, final, final.with_suffix(""), rows_by_type,
                                         scaled_sums(lake_totals_table))
            lake_rows = pc.sum(pc.filter(lake_totals_table.column("cnt"),
                                         pc.is_in(lake_totals_table.column("type"), pa.array(view.types)))).as_py() or 0
            crash_point("build:after-rename-before-registry")
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        finally:
            con.close()
        built_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        new_entry = {
            "name": view.name, "version": version, "file": final.relative_to(root).as_posix(),
            "columns": expected, "rows": sum(rows_by_type.values()), "rows_by_type": rows_by_type,
            "bytes": final.stat().st_size, "built_at": built_at,
            "build_seconds": round(time.perf_counter() - started, 3),
            "lake_version": lake.version, "segments": sorted(lake.segment_ids),
            "definition": view.definition_hash(), "mode": "incremental" if incremental else "full",
            "grain": view.grain, "dims": list(view.group_columns),
            "serving": serving,  # its files beside the Parquet version
            # lake rows per view row: how much a query served from the view saves over the lake
            "rollup": round(lake_rows / max(1, sum(rows_by_type.values())), 2),
        }
        update_registry(root, view.name, new_entry)
        crash_point("build:after-registry")
        if bar:
            bar.update(1)
            bar.set_postfix_str(f"v{version} {new_entry['mode']}")
        return {"view": view.name, "status": "built", "mode": new_entry["mode"], "version": version,
                "rows": new_entry["rows"], "seconds": new_entry["build_seconds"]}


def build(lake_dir: str | os.PathLike, names: Iterable[str] | None = None, *, jobs: int | None = None,
          force: bool = False, progress: bool = True, memory_limit: str = DEFAULT_MEMORY_LIMIT,
          engine: Aggregator | None = None) -> dict[str, Any]:
    """Build or refresh the named views (default: the whole catalog), `jobs` at a time, aggregated by
    `engine` (default DuckDB; see analytics.engines). `memory_limit` bounds the whole build: each of
    the `jobs` connections gets an equal share, so more cores never means more memory."""
    lake = Lake.open(lake_dir)
    selected = list(names) if names else [v.name for v in CATALOG]
    unknown = [n for n in selected if n not in VIEWS]
    if unknown:
        raise BuildError(f"unknown view(s) {', '.join(unknown)}; the catalog has: {', '.join(VIEWS)}")
    started = time.perf_counter()
    jobs = jobs or min(len(selected), os.cpu_count() or 1)
    try:
        # the budget is the process's: the interpreter and libraries, and per job the serving-copy
        # writer's Arrow batches, are set aside before DuckDB's connections share the rest
        memory_limit = split_memory(memory_limit, jobs, reserve=PROCESS_MEMORY + jobs * WRITER_MEMORY)
    except ValueError as exc:
        raise BuildError(f"--memory-limit: {exc}; or build with fewer --jobs") from None
    registry = load_registry(lake.root)["views"]
    if not force and all(is_current(VIEWS[n], lake, registry.get(n)) for n in selected):
        for name in selected:
            _sweep_idle(lake.root / VIEWS_DIR / name, registry[name])
        return {"lake_version": lake.version, "views": [], "failed": {}, "built": [], "up_to_date": selected,
                "seconds": round(time.perf_counter() - started, 3)}
    engine = engine or DuckDBAggregator(memory_limit)
    totals_cache: list[pa.Table] = []
    lock = threading.Lock()

    def totals() -> pa.Table:
        # one scan of the lake per build, shared by every view's reconciliation
        with lock:
            if not totals_cache:
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
                res = build_view(VIEWS[name], lake, totals, force=force, memory_limit=memory_limit, bar=bar,
                                 engine=engine, distinct=distinct)
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
    return {"lake_version": lake.version, "views": results, "failed": failures,
            "built": [r["view"] for r in results if r["status"] == "built"],
            "up_to_date": [r["view"] for r in results if r["status"] == "up-to-date"],
            "seconds": round(time.perf_counter() - started, 3)}
