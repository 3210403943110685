"""The simple runners: `analytics run` over a Workbench, and one query at a time for any answerer.

Owns `run_workbench` (what the CLI's `run` calls: a `SafeBatchRunner`, closed afterwards),
`run_queries` (sequential, for any `answer(query) -> (table, route)`, e.g. the baseline) and
`run_on_engine` (`run --engine spark`: views on DuckDB, lake-routed queries on the engine). They
write the same files with the same guarantees as the batch runner (`items.py`). Must not print.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pyarrow as pa

from analytics.batch.items import QueryItem, RunResult, describe_error, prepare_out_dir, write_answers
from analytics.batch.runner import SafeBatchRunner
from analytics.core.files import write_atomic
from analytics.query.model import Query, parse_query
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench

if TYPE_CHECKING:  # the engines' module imports prepare and build: not for `analytics run`
    from analytics.engines import Engine

# answer(query) -> (table, route): the simple runner's contract, used by `baseline`
Answerer = Callable[[Query], tuple[pa.Table, str]]
# progress(queries done so far)
Progress = Callable[[int], None]


def run_workbench(wb: "Workbench", queries: Sequence[Any], out_dir: str | os.PathLike | None, *,
                  progress: Progress | None = None, **options: Any) -> RunResult:
    """What `analytics run` calls: a `SafeBatchRunner` over `wb` with `options`, closed afterwards;
    `progress(done)` after each batch."""
    with SafeBatchRunner(wb, **options) as runner:
        return runner.run(queries, out_dir, progress=progress)


def run_queries(answer: Answerer, queries: Sequence[Any], out_dir: str | os.PathLike,
                extra: dict[str, Any] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """The simple sequential runner for any `answer(query) -> (table, route)` (e.g. the baseline).

    Same files and guarantees as `SafeBatchRunner` (compute-only timing, atomic writes, failures
    recorded), without cache, batching or threads; `progress(done)` after each query.
    """
    out = Path(out_dir)
    prepare_out_dir(out, len(queries))
    entries = []
    for i, raw in enumerate(queries, start=1):
        it = QueryItem(i, raw)
        try:
            t0 = time.perf_counter()
            it.query = parse_query(raw)
            it.table, it.route = answer(it.query)
            it.ms_exec = (time.perf_counter() - t0) * 1000
        except Exception as exc:  # noqa: BLE001 - an execution failure must not stop the batch
            it.error = describe_error(exc)
            it.table = None
        write_answers(out, [it])  # now, after timing: no answer is held beyond its query
        e: dict[str, Any] = {"id": it.id}
        if it.error is not None:
            e["error"] = it.error
        else:
            e.update(ms=round(it.ms_exec, 3), route=it.route, rows=it.table.num_rows)
        entries.append(e)
        if progress is not None:
            progress(i)
    report = {"queries": entries, "errors": sum(1 for e in entries if "error" in e), **(extra or {})}
    write_atomic(out / "run.json", json.dumps(report, indent=1, default=str))
    return report


def run_on_engine(wb: Workbench, engine: Engine, queries: Sequence[Any], out_dir: str | Path,
                  progress: Progress | None = None) -> dict[str, Any]:
    """`analytics run --engine spark`: each query is planned by `wb` (the Workbench's router and
    views, on DuckDB); a view-routed one is answered there, a lake-routed one by `engine` over the
    lake's committed files. Sequential (`run_queries`): the contract's files and run.json,
    plus `engine`, `master` and `lake_queries`."""
    extra: dict[str, Any] = {"engine": engine.name, "master": getattr(engine, "master", None), "lake_queries": 0}

    def answer(query: Any) -> tuple[Any, str]:
        plan = wb.plan(query)
        if plan.route == LAKE:
            extra["lake_queries"] += 1
            return engine.query(wb.lake, query), LAKE
        table, plan = wb.execute(query)
        return table, plan.route

    return run_queries(answer, queries, out_dir, extra=extra, progress=progress)
