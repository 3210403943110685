"""The batch runner: answer a file of queries safely and fast, time compute only, write results atomically.

Owns the contract's `run` output (`q{i}.csv` per answered query, `run.json`) and how a list of
queries is executed:

- in batches of at most `batch_size` (20) queries; each batch is parsed, looked up in the
  result cache, planned, computed, then written, and reported in `run.json["batches"]`;
- lake-routed aggregates of a batch that scan overlapping data share one superset scan
  (`shared_scans.py`); `run.json` counts `lake_queries` and the `lake_scans` they needed, and lists
  each shared scan in its batch. If a superset fails, its members run on their own;
- lake work runs on a thread pool sized to the cores, one DuckDB cursor per thread, while the
  view-routed answers run one after another on the calling thread (they hold the GIL: threads
  would only make them wait for each other); `parallel=False`, `analytics run --sequential`,
  keeps the one-at-a-time mode;
- a result cache (`cache.py`): a hit is answered without planning; a query repeated within a
  batch is computed once (`"same_as"`);
- a memory guard (`memory.py`): DuckDB's `memory_limit` plus an RSS watch (psutil) that interrupts a lake
  statement when the process grew by more than the limit while it ran, and a check that no
  answer is larger than the limit. A query that fails that way while others ran beside it is
  retried alone; alone, it fails with an error naming the query and the limit. The other
  queries still run and the process does not die;
- `ms` covers compute only (parse, cache lookup, plan, execution, fetching into Arrow; a shared
  scan's time is split evenly among its members, plus each one's own derivation). Files are
  written after timing, each to a temporary name renamed into place, so a killed run never
  leaves a truncated `q{i}.csv` (answers of the same indices from an earlier run are removed
  first, so what is there belongs to this run);
- one failing query (validation or execution) never stops the others: its `run.json` entry has
  `"error"` and the CLI exits non-zero;
- every query appends one telemetry event (`telemetry.py`), never blocking the query.

The per-query state and the files are `items.py`; the simple sequential runners (`baseline`,
`--engine spark`) are `simple.py`. Must not choose routes (that is the router, via
`Workbench.plan/execute`) or print.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import resource
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb
import pyarrow as pa

from analytics.batch import DEFAULT_BATCH_SIZE
from analytics.batch.cache import CacheEntry, ResultCache, cache_key, content_stamp, disk_dir, query_hash
from analytics.batch.items import QueryItem, RunResult, describe_error, prepare_out_dir, write_answers
from analytics.batch.memory import (
    MEMORY_ERRORS,
    GuardTrip,
    MemoryGuard,
    MemoryLimitError,
    Watch,
    check_answer,
    memory_error_message,
)
from analytics.batch.shared_scans import (
    DEFAULT_MAX_GROUP_RATIO,
    DEFAULT_MAX_GROUPS,
    SharedScan,
    can_share,
    plan_shared_scans,
)
from analytics.batch.telemetry import TelemetryLog, telemetry_log, utc_now
from analytics.core import db
from analytics.core.closing import Closing
from analytics.core.files import write_atomic
from analytics.core.memory import parse_size
from analytics.query.compiler import ident
from analytics.query.model import Query, parse_query
from analytics.query.shape import query_shape
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench

SNAPSHOT_EVERY_S = 30.0  # a long run's partial run.json is at most this old (besides the doubling rule)

# cursor -> whether DuckDB profiling is on; shared by all runners, as the cursors are (per thread). Weak
# keys: an id() would be reused by a later workbench's cursor, which then never had profiling turned on
_PROFILING: "weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, bool]" = weakref.WeakKeyDictionary()
_BYTES_READ = re.compile(r'"total_bytes_read":\s*(\d+)')


def _thread_blocks_read() -> int | None:
    """512-byte blocks the calling thread has read from storage (a view answer runs on it alone, its
    page faults on the mapped serving copies included); None where the OS keeps no per-thread count."""
    who = getattr(resource, "RUSAGE_THREAD", None)
    return None if who is None else resource.getrusage(who).ru_inblock


# ---- the runner ---------------------------------------------------------------------------------
class SafeBatchRunner(Closing):
    """Executes lists of queries through a `Workbench`: batches, memory guard, shared scans, cache, threads, telemetry.

    >>> runner = SafeBatchRunner(Workbench("data/lake"))                     # doctest: +SKIP
    >>> runner.run(queries, "out/").report["lake_scans"]                     # doctest: +SKIP
    """

    def __init__(self, wb: "Workbench", *, batch_size: int = DEFAULT_BATCH_SIZE, parallel: bool = True,
                 workers: int | None = None, cache: bool | ResultCache = True, persist_cache: bool = True,
                 batching: bool = True, telemetry: bool | TelemetryLog = True, memory_limit: str | None = None,
                 max_groups: float = DEFAULT_MAX_GROUPS, max_group_ratio: float = DEFAULT_MAX_GROUP_RATIO) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.wb = wb
        self.batch_size = batch_size
        self.parallel = parallel
        self.workers = workers or os.cpu_count() or 1
        self.batching = batching
        self.max_groups = max_groups  # superset size limits (batching.plan_shared_scans)
        self.max_group_ratio = max_group_ratio
        self.memory_limit_text = memory_limit or wb.memory_limit
        self.memory_limit = parse_size(self.memory_limit_text)
        if memory_limit is not None and memory_limit != wb.memory_limit:
            wb.set_memory_limit(memory_limit)
        if isinstance(cache, ResultCache):
            self.cache: ResultCache | None = cache
        elif cache:
            self.cache = ResultCache(directory=disk_dir(wb.root) if persist_cache else None)
        else:
            self.cache = None
        if isinstance(telemetry, TelemetryLog):
            self.telemetry: TelemetryLog | None = telemetry
        else:
            self.telemetry = telemetry_log(wb.root) if telemetry else None
        self.guard = MemoryGuard(self.memory_limit)
        self._pool: ThreadPoolExecutor | None = None
        self._scan_ids = itertools.count(1)

    # ---- public --------------------------------------------------------------------------------
    def run(self, queries: Sequence[Any], out_dir: str | os.PathLike | None = None, *,
            keep_tables: bool | None = None, progress: Callable[[int], None] | None = None,
            **overrides: Any) -> RunResult:
        """Answer `queries` (JSON objects or `Query`s); write `q{i}.csv` and `run.json` into `out_dir` if given.

        `overrides` change `batch_size`, `parallel`, `batching` or `use_cache` for this run only.
        Answers are kept in the result when `keep_tables` (default: when there is no `out_dir`).
        `progress(done)` is called after each batch with the number of queries done so far.
        Linear in the number of queries: each query's state lives for its batch only, and the
        partial `run.json` of a long run is rewritten only when the queries done have doubled or
        `SNAPSHOT_EVERY_S` passed, so rewriting it costs O(n) in all.
        """
        unknown = set(overrides) - {"batch_size", "parallel", "batching", "use_cache"}
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}")
        batch_size = overrides.get("batch_size") or self.batch_size
        parallel = self.parallel if overrides.get("parallel") is None else overrides["parallel"]
        batching = self.batching if overrides.get("batching") is None else overrides["batching"]
        use_cache = self.cache is not None and (overrides.get("use_cache") is None or overrides["use_cache"])
        keep = out_dir is None if keep_tables is None else keep_tables
        out = Path(out_dir) if out_dir is not None else None
        if out is not None:
            prepare_out_dir(out, len(queries))

        started = time.perf_counter()
        run_id = uuid.uuid4().hex[:12]
        n = len(queries)
        tables: list[pa.Table | None] = [None] * n if keep else []
        batches: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        settings = (started, batch_size, parallel, batching, use_cache)
        snapshot_n, snapshot_t = 0, started
        for b, start in enumerate(range(0, n, batch_size), start=1):
            chunk = [QueryItem(i, queries[i - 1]) for i in range(start + 1, min(start + batch_size, n) + 1)]
            batches.append(self._run_batch(chunk, b, parallel=parallel, batching=batching, use_cache=use_cache,
                                           run_id=run_id))
            if out is not None:
                write_answers(out, chunk)
            for it in chunk:
                if keep:
                    tables[it.idx - 1] = it.table
                entries.append(it.entry())
            if progress is not None:
                progress(len(entries))
            now = time.perf_counter()
            if (out is not None and len(entries) < n
                    and (len(entries) >= 2 * snapshot_n or now - snapshot_t >= SNAPSHOT_EVERY_S)):
                report = self._report(entries, batches, *settings, complete=False)
                write_atomic(out / "run.json", json.dumps(report, indent=1, default=str))
                snapshot_n, snapshot_t = len(entries), time.perf_counter()
        report = self._report(entries, batches, *settings, complete=True)
        if out is not None:
            write_atomic(out / "run.json", json.dumps(report, indent=1, default=str))
        return RunResult(report, tables)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.telemetry is not None:
            self.telemetry.flush()

    # ---- one batch -------------------------------------------------------------------------------
    def _stamp(self) -> str:
        wb = self.wb
        wb.refresh()
        return content_stamp(wb.lake.version, wb.registry, wb.use_views)

    def _run_batch(self, items: list[QueryItem], number: int, *, parallel: bool, batching: bool, use_cache: bool,
                   run_id: str) -> dict[str, Any]:
        t_batch = time.perf_counter()
        stamp = self._stamp() if use_cache else None
        persist_stamp = stamp if (self.cache is not None and self.cache.directory is not None) else None
        first_by_key: dict[str, QueryItem] = {}
        todo: list[QueryItem] = []
        for it in items:
            t0 = time.perf_counter()
            try:
                it.query = parse_query(it.raw) if not isinstance(it.raw, Query) else it.raw
                it.qhash = query_hash(it.query)
                if use_cache:
                    it.key = cache_key(it.query, stamp)
                    if it.key in first_by_key:  # the same query earlier in this batch answers it
                        it.same_as = first_by_key[it.key]
                        it.cache = True
                        it.ms_pre = (time.perf_counter() - t0) * 1000
                        continue
                    hit = self.cache.get(it.key, persist_stamp)
                    if hit is not None:
                        it.table, it.route, it.fallback, it.cache = hit.table, hit.route, hit.fallback_reason, True
                        it.lake_version = self.wb.lake.version  # the cache key holds the lake and view versions
                        it.view_version = self.wb.registry[it.route].version if it.route != LAKE else None
                        it.ms_pre = (time.perf_counter() - t0) * 1000
                        continue
                    first_by_key[it.key] = it
                it.plan = self.wb.plan(it.query)
                it.ms_pre = (time.perf_counter() - t0) * 1000
                todo.append(it)
            except Exception as exc:  # noqa: BLE001 - one bad query never stops the batch
                it.error = describe_error(exc)

        # plan the work: shared scans for lake aggregates, single statements for the rest
        # a lake query answered through a lake index reads a few row groups: a superset scan would not
        shareable = [it for it in todo if batching and it.plan.route == LAKE and it.plan.index is None
                     and can_share(it.query)]
        shared_ids = {id(it) for it in shareable}
        singles = [it for it in todo if id(it) not in shared_ids]
        scans: list[SharedScan] = []
        if shareable:
            rows_by_type = (self.wb.lake.state.get("totals") or {}).get("lake_by_type")
            for g in plan_shared_scans([(it, it.query) for it in shareable], max_groups=self.max_groups,
                                       max_ratio=self.max_group_ratio, rows_by_type=rows_by_type):
                if g.size == 1:
                    singles.append(g.members[0][0])
                else:
                    scans.append(g)
        # Lake statements run in DuckDB without the GIL: they take the pool. View answers are
        # sub-millisecond interpreter work that threads would only make wait for each other's GIL
        # (doubling each one's time on 2 cores): they run here, one after another, beside the pool.
        scan_reports: list[dict[str, Any]] = []
        lake_tasks: list[Callable[[], None]] = [lambda g=g: self._shared(g, number, scan_reports) for g in scans]
        lake_tasks += [lambda it=it: self._single(it, alone=not parallel) for it in singles if it.plan.route == LAKE]
        view_tasks = [lambda it=it: self._single(it, alone=not parallel) for it in singles if it.plan.route != LAKE]
        if parallel and lake_tasks:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="query")
            running = [self._pool.submit(task) for task in lake_tasks]
            for task in view_tasks:
                task()
            for future in running:
                future.result()
        else:
            for task in lake_tasks + view_tasks:
                task()
        for it in todo:  # failed beside others (memory) or in a failed shared scan: once more, alone
            if it.retry_alone:
                it.reset()
                self._single(it, alone=True)

        for it in items:
            if it.same_as is not None:
                src = it.same_as
                it.table, it.route, it.fallback, it.error = src.table, src.route, src.fallback, src.error
                it.lake_version, it.view_version = src.lake_version, src.view_version
        for it in items:
            if it.error is None and it.table is None:
                it.error = "internal error: no answer was produced"  # never expected; never silent
            it.rows = it.table.num_rows if it.table is not None else None
        if use_cache:
            self._store(todo, stamp, persist_stamp)
        if self.telemetry is not None:
            for it in items:
                self._record(it, run_id)
        answered = [it for it in items if it.error is None]
        return {
            "batch": number, "queries": [it.id for it in items], "ms": round((time.perf_counter() - t_batch) * 1000, 3),
            "lake_queries": sum(1 for it in answered if it.route == LAKE),
            "lake_scans": self._lake_scans(items, scan_reports),
            "cache_hits": sum(1 for it in answered if it.cache),
            "errors": sum(1 for it in items if it.error is not None),
            "shared_scans": scan_reports,
        }

    @staticmethod
    def _lake_scans(items: list[QueryItem], scan_reports: list[dict[str, Any]]) -> int:
        singles = sum(1 for it in items if it.computed and it.scan is None and it.route == LAKE and it.error is None)
        return singles + sum(1 for s in scan_reports if s.get("ok"))

    def _store(self, todo: list[QueryItem], stamp: str, persist_stamp: str | None) -> None:
        if self.cache is None or not todo:
            return
        if self._stamp() != stamp:
            return  # the lake or a view changed while computing: these answers may be of either
        for it in todo:
            if it.error is None and it.table is not None and it.key is not None:
                self.cache.put(it.key, CacheEntry(it.table, it.route, it.fallback), persist_stamp)

    # ---- execution -------------------------------------------------------------------------------
    def _cursor(self, lake: bool) -> duckdb.DuckDBPyConnection:
        """This thread's cursor; DuckDB profiling on for lake statements only (bytes read), off for views."""
        cur = self.wb.cursor()
        want = lake and self.telemetry is not None
        if _PROFILING.get(cur) != want:
            try:
                cur.execute("PRAGMA enable_profiling = 'no_output'" if want else "PRAGMA disable_profiling")
                _PROFILING[cur] = want
            except duckdb.Error:
                pass
        return cur

    def _bytes_read(self, cur: duckdb.DuckDBPyConnection) -> int | None:
        """`io.total_bytes_read` of the cursor's last statement (~0.1 ms: the profile is rendered as JSON)."""
        if self.telemetry is None or not _PROFILING.get(cur):
            return None
        try:
            m = _BYTES_READ.search(cur.get_profiling_information())
            return int(m.group(1)) if m else None
        except Exception:  # noqa: BLE001 - telemetry only
            return None

    def _single(self, it: QueryItem, alone: bool) -> None:
        on_lake = it.plan is not None and it.plan.route == LAKE
        cur = self._cursor(lake=on_lake)
        t0 = time.perf_counter()
        blocks = None if on_lake else _thread_blocks_read()
        w: Watch | None = None
        try:
            # a view answer re-aggregates rows already in memory (under DuckDB's memory_limit when it
            # takes SQL): only its size is checked, sparing two RSS reads per sub-ms query
            with self.guard.watch(cur) if on_lake else nullcontext() as w:
                table, plan = self.wb.execute(it.query, plan=it.plan)
                check_answer(table, self.memory_limit)
            if w is not None and w.tripped is not None:
                raise GuardTrip()
            it.ms_exec = (time.perf_counter() - t0) * 1000
            it.table, it.route, it.fallback, it.computed = table, plan.route, plan.fallback_reason, True
            it.lake_version, it.view_version = plan.lake_version, plan.view_version
            it.bytes_read = self._bytes_read(cur) if plan.route == LAKE else None
            if blocks is not None and plan.route != LAKE:
                it.disk_bytes = (_thread_blocks_read() - blocks) * 512
        except (duckdb.InterruptException, *MEMORY_ERRORS) as exc:
            guard_hit = w is not None and w.tripped is not None
            if isinstance(exc, duckdb.InterruptException) and not guard_hit:
                it.error = describe_error(exc)
            elif not alone and w is not None and w.overlapped:
                it.retry_alone = True  # maybe the others' memory: decide alone
            else:
                it.error = memory_error_message(
                    it.id, self.memory_limit_text, self.memory_limit, None if isinstance(exc, GuardTrip) else exc,
                    w.tripped if guard_hit and not isinstance(exc, MemoryLimitError) else None)
        except Exception as exc:  # noqa: BLE001 - the batch goes on
            it.error = describe_error(exc)

    def _shared(self, scan: SharedScan, batch: int, reports: list[dict[str, Any]]) -> None:
        scan_id = f"b{batch}s{next(self._scan_ids)}"
        members: list[QueryItem] = [m for m, _ in scan.members]
        cur = self._cursor(lake=True)
        table_name = f"__superset_{uuid.uuid4().hex[:12]}"
        rep: dict[str, Any] = {"scan": scan_id, "queries": [m.id for m in members], "dims": list(scan.dims),
                               "measures": len(scan.measures), "est_groups": round(scan.est_groups), "ok": False}
        reports.append(rep)
        sql, params = scan.superset_sql("events")
        try:
            self.wb.check_lake(m.query for m in members)  # a damaged file: each member alone fails naming it
            with self.guard.watch(cur) as w:
                t0 = time.perf_counter()
                cur.execute(f"CREATE TEMP TABLE {ident(table_name)} AS {sql}", params)
                scan_ms = (time.perf_counter() - t0) * 1000
                rep["bytes_read"] = self._bytes_read(cur)
                rep["rows"] = cur.execute(f"SELECT count(*) FROM {ident(table_name)}").fetchall()[0][0]
                share = scan_ms / len(members)
                for k, it in enumerate(members):
                    t1 = time.perf_counter()
                    try:
                        msql, mparams = scan.member_sql(k, ident(table_name))
                        table = db.fetch_arrow(cur, msql, mparams)
                        check_answer(table, self.memory_limit)
                    except (duckdb.Error, MemoryLimitError, MemoryError):
                        it.retry_alone = True  # derive failed: its own plan, alone, decides
                        continue
                    it.table, it.route, it.fallback, it.computed = table, LAKE, it.plan.fallback_reason, True
                    it.lake_version = it.plan.lake_version
                    it.ms_exec = share + (time.perf_counter() - t1) * 1000
                    it.scan, it.scan_members, it.bytes_read = scan_id, len(members), rep["bytes_read"]
            if w.tripped is not None:
                raise GuardTrip()
            rep.update(ok=True, ms=round(scan_ms, 3))
        except Exception as exc:  # noqa: BLE001 - the superset failed: each member runs on its own
            rep["error"] = describe_error(exc) if not isinstance(exc, GuardTrip) else "memory guard"
            for it in members:
                it.reset()
                it.retry_alone = True
        finally:
            try:
                cur.execute(f"DROP TABLE IF EXISTS {ident(table_name)}")
            except duckdb.Error:
                pass

    # ---- reporting -------------------------------------------------------------------------------
    def _record(self, it: QueryItem, run_id: str) -> None:
        assert self.telemetry is not None
        self.telemetry.record({
            "time": utc_now(), "run": run_id, "id": it.id, "query": it.qhash,
            "shape": query_shape(it.query) if it.query is not None else None,
            "index": it.plan.index if it.plan is not None and it.route == LAKE else None,
            "route": it.route if it.error is None else None,
            "fallback": it.fallback if it.route == LAKE else None,
            "ms": round(it.ms_pre + it.ms_exec, 3) if it.error is None else None,
            "rows": it.rows if it.error is None else None,
            "cache": it.cache, "shared_scan": it.scan is not None, "bytes_read": it.bytes_read,
            "error": it.error,
        })

    def _report(self, entries: list[dict[str, Any]], batches: list[dict[str, Any]], started: float, batch_size: int,
                parallel: bool, batching: bool, use_cache: bool, complete: bool) -> dict[str, Any]:
        return {
            "queries": entries,
            "errors": sum(b["errors"] for b in batches),
            "lake_queries": sum(b["lake_queries"] for b in batches),
            "lake_scans": sum(b["lake_scans"] for b in batches),
            "cache_hits": sum(b["cache_hits"] for b in batches),
            "batches": batches,
            "batch_size": batch_size,
            "parallel": parallel, "workers": self.workers if parallel else 1,
            "batching": batching, "cache": use_cache,
            "memory_limit": self.memory_limit_text,
            "wall_ms": round((time.perf_counter() - started) * 1000, 3),
            "complete": complete,
        }
