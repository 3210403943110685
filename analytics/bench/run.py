"""The benchmark run: every engine answers every workload query, checked against the baseline, timed.

Owns `run_benchmark` (what `analytics benchmark`, `make benchmark` and notebook 03 run): one loop
over the engines, each with a small strategy saying how it is opened and run:

- `baseline` opens once and answers each query once (it is slow); its answers are the reference;
- `duckdb_lake` and `polars_lake` open anew for each query, so the first (cold) run is a fresh
  connection / scan, then `repeats` warm runs; a query Polars cannot express exactly is recorded
  as `unsupported` rather than answered wrongly;
- `product` opens one warmed `Workbench` (its cold run is the first run of the query there, no
  result cache), times `repeats` warm runs and its routing overhead (`Workbench.plan`), then
  answers the whole workload as one runner batch (threads, shared lake scans), checked too;

then the cold pass (`cold.py`: new processes per engine and workload file, medians) and the result
document (`summary.py`), written to JSON. Times are compute only (planning, execution, fetching
the answer into memory as Arrow). Must not choose routes or build SQL itself.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil
import pyarrow as pa

from analytics.bench import COLD_REPEATS, peers
from analytics.bench.cold import cold_engines, cold_pass
from analytics.bench.pagecache import cold_read_bandwidth
from analytics.bench.peers import ENGINES, Unsupported
from analytics.bench.phases import load_phases, measured
from analytics.bench.polars_engine import PolarsLakeEngine
from analytics.bench.result import BenchmarkSummary
from analytics.bench.summary import rounded, summarize, write
from analytics.bench.targets import evaluate_targets
from analytics.bench.workloads import DEFAULT_WORKLOADS, ROOT, load_workloads
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.lake.state import Lake
from analytics.query.model import Query
from analytics.query.results import compare_rows, to_rows

Progress = Callable[[str], None]
# one timed answer: the table, its ms, the route and the fallback reason (None for engines without routes)
Timed = tuple[pa.Table, float, str | None, str | None]
Record = Callable[..., None]


def _timed(eng: Any, query: Query) -> Timed:
    t0 = time.perf_counter()
    table = eng.run(query)
    return table, (time.perf_counter() - t0) * 1000, None, None


@dataclass(frozen=True)
class Strategy:
    """How one engine runs the workload."""

    name: str
    open: Callable[[], Any]  # starts the engine; if it fails, every query it would answer fails
    fresh_per_query: bool  # a new engine per query: its cold run is a fresh connection / scan
    warm_runs: int  # timed runs after the cold one
    run: Callable[[Any, Query], Timed] = _timed
    reference: bool = False  # its answers are what the others are checked against
    extra: Callable[[Any, Query], dict[str, Any]] = lambda eng, query: {}  # more per-query figures
    started: Callable[[Any], None] = lambda eng: None  # a shared engine is up
    finish: Callable[[Any], None] = lambda eng: None  # a shared engine answered every query


class Answers:
    """The reference answers, and every other answer checked against them (floats to relative 1e-9)."""

    def __init__(self, checked: bool) -> None:
        self.checked = checked
        self.tables: dict[str, pa.Table] = {}

    def judge(self, it: Mapping[str, Any], table: pa.Table, reference: bool = False) -> tuple[bool | None, str | None]:
        if reference:
            self.tables[it["id"]] = table
            return True, None
        if not self.checked:
            return None, "no baseline run"
        expected = self.tables.get(it["id"])
        if expected is None:
            return False, "no baseline answer to compare with"
        query = it["query"]
        reason = compare_rows(query, to_rows(query, expected), to_rows(query, table))
        return reason is None, reason


def _bar(items: Sequence[Any], desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="q", disable=not progress, leave=True, dynamic_ncols=True)


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _open(s: Strategy) -> tuple[Any, str | None]:
    """The engine, or None and why it did not start."""
    try:
        return s.open(), None
    except Exception as exc:  # noqa: BLE001 - the engine cannot start: every query fails on it, the report still comes
        return None, f"engine did not start: {_error_text(exc)}"


def _measure(s: Strategy, eng: Any, it: Mapping[str, Any], answers: Answers) -> dict[str, Any]:
    """One query on one engine: the cold run, the warm runs, the answer checked."""
    q = it["query"]
    try:
        table, cold, route, fallback = s.run(eng, q)
        runs = [s.run(eng, q) for _ in range(s.warm_runs)]
        extra = s.extra(eng, q)
    except Unsupported as exc:
        return {"status": "unsupported", "reason": str(exc), "match": None}
    except Exception as exc:  # noqa: BLE001 - recorded, the others go on
        return {"status": "error", "error": _error_text(exc), "match": False}
    warm = [r[1] for r in runs]
    ok, reason = answers.judge(it, table, s.reference)
    fields = {"status": "ok" if ok is not False else "mismatch", "match": ok, "reason": reason, "cold_ms": cold,
              "warm_ms": warm, "ms": statistics.median(warm) if warm else cold, "rows": table.num_rows}
    if route is not None:
        fields.update(route=route, fallback_reason=fallback, route_stable=len({route} | {r[2] for r in runs}) == 1)
    return {**fields, **extra}


def _run_engine(s: Strategy, valid: Sequence[dict[str, Any]], record: Record, answers: Answers,
                progress: bool) -> None:
    shared, failure = (None, None) if s.fresh_per_query else _open(s)
    if failure is not None:
        for it in valid:
            record(s.name, it, status="error", error=failure, match=False)
        return
    if shared is not None:
        s.started(shared)
    try:
        for it in _bar(valid, s.name, progress):
            eng, failure = (shared, None) if shared is not None else _open(s)
            if failure is not None:
                record(s.name, it, status="error", error=failure, match=False)
                continue
            try:
                record(s.name, it, **_measure(s, eng, it, answers))
            finally:
                if shared is None:
                    eng.close()
        if shared is not None:
            s.finish(shared)
    finally:
        if shared is not None:
            shared.close()


def _product_batch(eng: Any, valid: Sequence[dict[str, Any]], per: dict[str, dict[str, dict[str, Any]]],
                   answers: Answers, product_extra: dict[str, Any], say: Progress) -> None:
    """The whole workload as one run of the product's runner (threads, shared lake scans), answers checked too."""
    say("product: the whole workload as one batch run (threads, shared lake scans, no cache)")
    try:
        tables, report, wall = eng.run_batch([it["query"] for it in valid])
    except Exception as exc:  # noqa: BLE001 - the batch path failed: a failure, reported
        product_extra["batch"] = {"error": _error_text(exc), "all_match": False,
                                  "mismatches": [{"id": "all", "reason": _error_text(exc)}]}
        return
    bad = []
    for it, table, entry in zip(valid, tables, report["queries"]):
        if table is None or "error" in entry:
            bad.append({"id": it["id"], "reason": entry.get("error", "no answer")})
            continue
        ok, reason = answers.judge(it, table)
        per[it["id"]]["product"].update(batch_match=ok, batch_ms=entry.get("ms"))
        if ok is False:
            bad.append({"id": it["id"], "reason": reason})
    product_extra["batch"] = {
        "wall_ms": rounded(wall, 3), "sum_query_ms": rounded(sum(e.get("ms", 0) for e in report["queries"]), 3),
        "lake_queries": report["lake_queries"], "lake_scans": report["lake_scans"], "workers": report["workers"],
        "batches": len(report["batches"]), "all_match": answers.checked and not bad, "mismatches": bad,
    }


def run_benchmark(raw_dir: str | os.PathLike | None, lake_dir: str | os.PathLike, *,
                  workloads: Sequence[str | os.PathLike] = DEFAULT_WORKLOADS, repeats: int = 5,
                  out_json: str | os.PathLike | None = None, phases: str | os.PathLike | Mapping[str, Any] | None = None,
                  engines: Sequence[str] = ENGINES, rows: int | None = None, progress: bool = True,
                  memory_limit: str = DEFAULT_MEMORY_LIMIT, cold: bool = True,
                  cold_repeats: int = COLD_REPEATS, disk_cold: bool = True) -> BenchmarkSummary:
    """Run every workload query on every engine, compare each answer with the baseline, time it.

    `raw_dir` holds the CSVs the lake at `lake_dir` was prepared from (views built); without it the
    baseline does not run, nothing is checked and `all_match` is False (`checked` False). `repeats` warm
    runs per query and engine after the cold one (the baseline runs once). `phases`: the directory
    `run_phase` writes (or a mapping) with the generate/prepare/build figures. `cold`: also the cold
    pass (`cold_repeats` new processes per engine and workload file, `cold.py`); with `disk_cold` too,
    the same pass again with the lake's pages dropped from the page cache before each process, and
    the disk's cold read bandwidth (`pagecache.py`). Returns the result (see the module doc) and
    writes it to `out_json` if given.
    """
    if repeats < 1 or cold_repeats < 1:
        raise ValueError(f"repeats and cold repeats must be >= 1, got {repeats} and {cold_repeats}")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or (raw_dir is not None and "baseline" not in engines):
        raise ValueError(f"engines must include baseline and come from {', '.join(ENGINES)}; got {list(engines)}")
    checked = raw_dir is not None
    engines = [e for e in ENGINES if e in engines and (checked or e != "baseline")]
    say: Progress = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)
    from analytics.batch import runner as _runner  # noqa: F401 - fail now, not after the baseline's minutes
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    raw_dir, lake_dir = (Path(raw_dir) if checked else None), Path(lake_dir)
    lake = Lake.open(lake_dir)
    items = load_workloads(workloads)
    valid = [it for it in items if it["query"] is not None]
    n_rows = int(rows) if rows else int(lake.state.get("totals", {}).get("rows_read") or 0)
    say(f"benchmark: {len(items)} queries ({', '.join(sorted({it['workload'] for it in items}))}) on "
        f"{n_rows:,} rows; engines {', '.join(engines)}; {repeats} warm repeats")
    load_start = os.getloadavg()

    per: dict[str, dict[str, dict[str, Any]]] = {it["id"]: {} for it in items}
    answers = Answers(checked)
    engine_runs: dict[str, dict[str, Any]] = {}
    product_extra: dict[str, Any] = {}

    def record(engine: str, it: dict[str, Any], **fields: Any) -> None:
        per[it["id"]][engine] = fields

    def product_started(eng: Any) -> None:
        product_extra["startup_ms"] = eng.startup_ms
        product_extra["unhealthy_views"] = {k: v for k, v in eng.health.items() if v is not None}

    strategies = {
        "baseline": Strategy("baseline", lambda: peers.BaselineEngine(raw_dir), fresh_per_query=False, warm_runs=0,
                             reference=True),
        "duckdb_lake": Strategy("duckdb_lake", lambda: peers.DuckDBLakeEngine(lake_dir, memory_limit),
                                fresh_per_query=True, warm_runs=repeats),
        "polars_lake": Strategy("polars_lake", lambda: PolarsLakeEngine(lake_dir), fresh_per_query=True,
                                warm_runs=repeats),
        "product": Strategy(
            "product", lambda: peers.ProductEngine(lake_dir, memory_limit), fresh_per_query=False, warm_runs=repeats,
            run=lambda eng, q: eng.run_timed(q),
            extra=lambda eng, q: {"plan_ms": statistics.median(eng.plan_ms(q) for _ in range(max(repeats, 5))),
                                  **eng.versions(q)},
            started=product_started,
            finish=lambda eng: _product_batch(eng, valid, per, answers, product_extra, say)),
    }
    for name in engines:
        with measured(engine_runs.setdefault(name, {})):
            _run_engine(strategies[name], valid, record, answers, progress)
    cold_result = disk_result = None
    if cold:
        def one_pass(disk: bool) -> dict[str, Any]:
            return cold_pass(lake_dir, items, answers.tables, engines=cold_engines(engines), checked=checked,
                             repeats=cold_repeats, memory_limit=memory_limit, disk_cold=disk, say=say)

        cold_result = one_pass(False)
        if disk_cold:
            disk_result = {**one_pass(True), "read_bandwidth": cold_read_bandwidth(lake_dir)}

    result = summarize(items, per, engines=engines, repeats=repeats, rows=n_rows, raw_dir=raw_dir, lake=lake,
                       phases=load_phases(phases), engine_runs=engine_runs, product_extra=product_extra,
                       cold=cold_result, cold_disk=disk_result)
    if not checked:
        result.all_match = False
        result.targets = evaluate_targets(result)
    result.checked = checked
    result.environment = _environment(load_start)
    result.started_at = started_at
    result.seconds = round(time.perf_counter() - t_start, 3)
    result.phases.setdefault("benchmark", {})
    result.phases["benchmark"].update({
        "seconds": result.seconds,
        "peak_rss_bytes": max((r.get("peak_rss_bytes") or 0) for r in engine_runs.values()) if engine_runs else None,
        "engines": engine_runs,
    })
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        write(out_json, result)
    say(f"benchmark: done in {result.seconds:.0f}s; "
        f"{'all answers match the baseline' if result.all_match else 'MISMATCHES: ' + ', '.join(m['id'] for m in result.mismatches)}")
    return result


def _environment(load_start: tuple[float, float, float]) -> dict[str, Any]:
    import duckdb

    env: dict[str, Any] = {
        "python": platform.python_version(), "duckdb": duckdb.__version__, "pyarrow": pa.__version__,
        "cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
        "memory_bytes": psutil.virtual_memory().total, "machine": platform.machine(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import polars as pl

        env["polars"] = pl.__version__
    except ImportError:
        env["polars"] = None
    try:  # which code was measured: the commit and whether the package had uncommitted changes
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "analytics"],
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            env["git_commit"] = head.stdout.strip()
            env["git_dirty_files"] = [line[3:] for line in dirty.stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass
    return env
