"""The batch benchmark: every engine answers every workload query, checked against the baseline, timed.

Owns what `make benchmark`, `make sweep`, `analytics benchmark` and notebook 03 measure and how:

- engines: `baseline` (the challenge's DuckDB view over the raw CSVs, run once per query: it is
  slow), `duckdb_lake` (DuckDB over the project's lake, no views: what a capable user would do),
  `polars_lake` (Polars lazily scanning the same Parquet files; a benchmark-only extra) and
  `product` (router + views + the safe batch runner over a warm `Workbench`);
- correctness first: each engine's answer to each query is compared with the baseline's
  (`results.compare_rows`, floats to relative 1e-9); a query Polars cannot express exactly is
  recorded as `unsupported` for Polars rather than answered wrongly;
- per query and engine: the cold first run (a fresh connection / scan; for the product a fresh
  warmed `Workbench` that has not seen the query, with no result cache) and the median of
  `repeats` warm runs; the product's route and its routing overhead (`Workbench.plan` time);
- a summary: medians, p95, totals, speedups of the product over each peer, view hit rate,
  sizes of lake and views against the CSVs, phase times and peak RSS (phases are timed by
  `python -m analytics.bench.benchmark phase`, which the Makefile wraps around generate, prepare
  and build; the engines' own peak RSS is sampled here), and the targets met or missed;
- the scale sweep (`sweep`, `sweep_from_files`) and the tables and plotly figures notebook 03 shows.

Times are compute only (planning, execution, fetching the answer into memory as Arrow). Must not
choose routes or build SQL itself beyond the peer engines' translation of the query model.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import psutil
import pyarrow as pa

from analytics.checks.baseline import baseline_query, connect_baseline
from analytics.core import db
from analytics.core.files import format_bytes, write_atomic
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.lake.manifest import Lake
from analytics.query.compiler import compile_query
from analytics.query.model import Agg, Condition, Query, QueryError, load_queries, parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.serving.router import LAKE

ENGINES: tuple[str, ...] = ("baseline", "duckdb_lake", "polars_lake", "product")
PEERS: tuple[str, ...] = ("baseline", "duckdb_lake", "polars_lake")
ENGINE_LABELS: dict[str, str] = {
    "baseline": "baseline (DuckDB over raw CSVs)",
    "duckdb_lake": "DuckDB over the lake (no views)",
    "polars_lake": "Polars over the lake",
    "product": "product (router + views + runner)",
}
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKLOADS: tuple[Path, ...] = (ROOT / "queries" / "examples.json", ROOT / "queries" / "judges.json")
JUDGES = "judges"
MEMORY_LIMIT = DEFAULT_MEMORY_LIMIT
TARGET_ROWS = 15_000_000
# The targets, stated for 15M rows; reported, never asserted.
TARGETS: dict[str, float] = {
    "view_median_ms_max": 1.0,
    "speedup_vs_baseline_min": 1000.0,
    "speedup_vs_duckdb_lake_min": 50.0,
    "judges_view_hit_rate_min": 0.95,
    "lake_p95_ms_max": 1000.0,
}
PHASE_ORDER: tuple[str, ...] = ("generate", "prepare", "build", "benchmark")
NOOP_MARKERS: tuple[str, ...] = ("nothing to do",)

Progress = Callable[[str], None]


class _Skip(Exception):
    pass


class Unsupported(Exception):
    """The engine cannot express this query exactly; recorded instead of a possibly wrong answer."""


# ---------------------------------------------------------------------------------------------
# Workloads


def load_workloads(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """The queries of each workload file, in order: `id` (`<file stem>-q<i>`), `workload`, `raw`, `query`.

    A query that does not validate keeps `query` None and its `error`; it counts as a failure.
    """
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in paths:
        path = Path(path)
        name = path.stem
        if name in seen:
            raise ValueError(f"workload {name!r} is given twice")
        seen.add(name)
        for i, raw in enumerate(load_queries(str(path)), start=1):
            item: dict[str, Any] = {"id": f"{name}-q{i}", "workload": name, "index": i, "raw": raw,
                                    "query": None, "error": None}
            try:
                item["query"] = parse_query(raw)
            except QueryError as exc:
                item["error"] = f"invalid query: {exc}"
            items.append(item)
    if not items:
        raise ValueError("no queries in the given workloads")
    return items


# ---------------------------------------------------------------------------------------------
# Engines: each answers a `Query` as an Arrow table with the contract's column names.


class BaselineEngine:
    name = "baseline"

    def __init__(self, raw_dir: str | os.PathLike) -> None:
        self.con = connect_baseline(raw_dir)
        self.con.execute("SET enable_progress_bar = false")

    def run(self, query: Query) -> pa.Table:
        return baseline_query(self.con, query)

    def close(self) -> None:
        self.con.close()


class DuckDBLakeEngine:
    """DuckDB over the lake's committed Parquet files (Hive `type`), no views: the capable user's way."""

    name = "duckdb_lake"

    def __init__(self, lake_dir: str | os.PathLike, memory_limit: str = MEMORY_LIMIT) -> None:
        self.con = db.connect(memory_limit=memory_limit)
        self.con.execute("SET enable_progress_bar = false")
        Lake.open(lake_dir).register(self.con, "events")

    def run(self, query: Query) -> pa.Table:
        sql, params = compile_query(query, "events")
        return db.fetch_arrow(self.con, sql, params)

    def close(self) -> None:
        self.con.close()


# Lake column types as Polars reads them (DuckDB writes TIMESTAMP as microseconds).
def _polars_types() -> dict[str, Any]:
    import polars as pl

    return {
        "ts": pl.Datetime("us"), "week": pl.Date, "day": pl.Date, "hour": pl.Datetime("us"),
        "minute": pl.String, "type": pl.String, "auction_id": pl.String, "advertiser_id": pl.Int32,
        "publisher_id": pl.Int32, "bid_price": pl.Float64, "user_id": pl.Int64, "total_price": pl.Float64,
        "country": pl.String,
    }


def _polars_operands(col: str, value: Any) -> tuple[Any, Any]:
    """(column expression, literal) comparable exactly as DuckDB compares the coerced value with the column."""
    import polars as pl

    dtype = _polars_types()[col]
    column = pl.col(col)
    if dtype == pl.Date:
        if isinstance(value, dt.datetime):  # e.g. week (DATE in the lake) against a TIMESTAMPTZ value
            if value.tzinfo is not None:
                raise Unsupported(f"time zone aware value for {col}")
            return column.cast(pl.Datetime("us")), pl.lit(value, dtype=pl.Datetime("us"))
        if isinstance(value, dt.date):
            return column, pl.lit(value, dtype=pl.Date)
    elif dtype == pl.Datetime("us"):
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None:
                raise Unsupported(f"time zone aware value for {col}")
            return column, pl.lit(value, dtype=pl.Datetime("us"))
        if isinstance(value, dt.date):
            return column, pl.lit(dt.datetime(value.year, value.month, value.day), dtype=pl.Datetime("us"))
    elif dtype in (pl.Int32, pl.Int64):
        if isinstance(value, int) and not isinstance(value, bool):
            return column.cast(pl.Int64), pl.lit(value, dtype=pl.Int64)
    elif dtype == pl.Float64:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return column, pl.lit(float(value), dtype=pl.Float64)
    elif dtype == pl.String:
        if isinstance(value, str):
            return column, pl.lit(value, dtype=pl.String)
    raise Unsupported(f"value {value!r} ({type(value).__name__}) for column {col} ({dtype})")


def polars_condition(cond: Condition) -> Any:
    """One WHERE condition as a Polars boolean expression (SQL NULL semantics: a NULL never passes)."""
    import polars as pl

    if cond.op == "in":
        parts = []
        for v in cond.values:
            left, right = _polars_operands(cond.col, v)
            parts.append(left == right)
        return pl.any_horizontal(parts) if len(parts) > 1 else parts[0]
    if cond.op == "between":
        left, lo = _polars_operands(cond.col, cond.values[0])
        _, hi = _polars_operands(cond.col, cond.values[1])
        return (left >= lo) & (left <= hi)  # inclusive, and empty when lo > hi, as in SQL
    left, right = _polars_operands(cond.col, cond.values[0])
    return {"eq": left == right, "neq": left != right, "lt": left < right, "lte": left <= right,
            "gt": left > right, "gte": left >= right}[cond.op]


def polars_aggregate(agg: Agg) -> Any:
    """An aggregate with DuckDB's meaning: NULLs ignored; SUM/AVG/MIN/MAX of no value is NULL; COUNT is BIGINT."""
    import polars as pl

    name = agg.name
    if agg.col == "*":
        return pl.len().cast(pl.Int64).alias(name)
    col = pl.col(agg.col)
    dtype = _polars_types()[agg.col]
    if agg.func == "COUNT":
        return col.count().cast(pl.Int64).alias(name)
    if agg.func == "SUM":
        total = col.cast(pl.Int64).sum() if dtype in (pl.Int32, pl.Int64) else col.sum()
        return pl.when(col.count() > 0).then(total).otherwise(None).alias(name)
    if agg.func == "AVG":
        return col.cast(pl.Float64).mean().alias(name)
    if agg.func == "MIN":
        return col.min().alias(name)
    if agg.func == "MAX":
        return col.max().alias(name)
    raise Unsupported(f"aggregate {agg.name}")


def polars_plan(source: Any, query: Query) -> Any:
    """The query as a Polars LazyFrame over `source` (a LazyFrame with the lake's columns and `type`)."""
    lf = source
    if query.where:
        pred = polars_condition(query.where[0])
        for cond in query.where[1:]:
            pred = pred & polars_condition(cond)
        lf = lf.filter(pred)
    names = query.output_names
    if query.group_by:
        aggs = [polars_aggregate(a) for a in query.aggregates]
        lf = lf.group_by(list(query.group_by)).agg(aggs).select(names)
    elif query.aggregates:
        lf = lf.select([polars_aggregate(a) for a in query.aggregates]).select(names)
    else:
        lf = lf.select(list(query.select))
    if query.order_by:
        lf = lf.sort([o.name for o in query.order_by], descending=[o.desc for o in query.order_by],
                     nulls_last=True, maintain_order=True)  # DuckDB: NULLS LAST in both directions
    if query.limit is not None:
        lf = lf.head(query.limit)
    return lf


class PolarsLakeEngine:
    """Polars lazily scanning the lake's committed Parquet files, `type` from the Hive path."""

    name = "polars_lake"

    def __init__(self, lake_dir: str | os.PathLike) -> None:
        import polars as pl

        self.files = [str(f) for f in Lake.open(lake_dir).event_files()]
        self.pl = pl

    def source(self) -> Any:
        pl = self.pl
        if not self.files:
            return pl.LazyFrame(schema=_polars_types())
        return pl.scan_parquet(self.files, hive_partitioning=True, hive_schema={"type": pl.String})

    def run(self, query: Query) -> pa.Table:
        return polars_plan(self.source(), query).collect().to_arrow()

    def close(self) -> None:
        pass


class ProductEngine:
    """The product: a warmed `Workbench` (views loaded) and its safe batch runner, one query per run.

    The result cache and telemetry are off (every answer is computed; the lake is not written);
    `ms` is the runner's own compute time of the query (parse, plan, execution, fetch).
    """

    name = "product"

    def __init__(self, lake_dir: str | os.PathLike, memory_limit: str = MEMORY_LIMIT) -> None:
        from analytics.batch.runner import SafeBatchRunner
        from analytics.serving.workbench import Workbench

        t0 = time.perf_counter()
        self.wb = Workbench(lake_dir, memory_limit=memory_limit)
        self.health = self.wb.warm()
        self.startup_ms = (time.perf_counter() - t0) * 1000
        self.runner = SafeBatchRunner(self.wb, cache=False, persist_cache=False, telemetry=False)

    def run_timed(self, query: Query) -> tuple[pa.Table, float, str, str | None]:
        res = self.runner.run([query], keep_tables=True, parallel=False, batching=False)
        entry = res.report["queries"][0]
        if "error" in entry:
            raise RuntimeError(entry["error"])
        return res.tables[0], float(entry["ms"]), entry["route"], entry.get("fallback_reason")

    def run_batch(self, queries: Sequence[Query]) -> tuple[list[pa.Table | None], dict[str, Any], float]:
        """The whole workload as one run of the runner (batches, threads, shared lake scans), cache off."""
        t0 = time.perf_counter()
        res = self.runner.run(list(queries), keep_tables=True)
        return res.tables, res.report, (time.perf_counter() - t0) * 1000

    def plan_ms(self, query: Query) -> float:
        t0 = time.perf_counter()
        self.wb.plan(query)
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.runner.close()
        self.wb.close()


# ---------------------------------------------------------------------------------------------
# Memory: peak RSS of this process (and its children) while a phase runs


class RSSSampler:
    """Samples the RSS of a process tree every `interval` seconds; `peak` is the largest sum seen."""

    def __init__(self, pid: int | None = None, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        total = 0
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            return self.peak
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "RSSSampler":
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


@contextmanager
def measured(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Fill `record` with the `seconds` and `peak_rss_bytes` of the block."""
    t0 = time.perf_counter()
    with RSSSampler() as s:
        yield record
    record["seconds"] = round(time.perf_counter() - t0, 3)
    record["peak_rss_bytes"] = s.peak


def run_phase(name: str, phase_dir: str | os.PathLike, command: Sequence[str]) -> int:
    """Run `command` as phase `name`: pass its output through, record time and peak RSS in `phase_dir/name.json`.

    The record keeps every run (`runs`, newest last): `seconds`, `peak_rss_bytes` (sampled sum over
    the process tree), `max_process_rss_bytes` (the kernel's peak of the largest process), `exit_code`
    and `noop` (the command said it had nothing to do, e.g. an up-to-date lake). Returns the exit code.
    """
    out = Path(phase_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    noop = False
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
    with RSSSampler(proc.pid, interval=0.1) as sampler:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if any(m in line for m in NOOP_MARKERS):
                noop = True
        code = proc.wait()
    seconds = time.perf_counter() - t0
    max_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    path = out / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        record = {"name": name, "runs": []}
    record["runs"] = (record.get("runs") or [])[-19:] + [{
        "at": started, "seconds": round(seconds, 3), "peak_rss_bytes": sampler.peak,
        "max_process_rss_bytes": max_rss, "exit_code": code, "noop": noop, "command": list(command)}]
    write_atomic(path, json.dumps(record, indent=1))
    state = "nothing to do" if noop else ("ok" if code == 0 else f"FAILED (exit {code})")
    print(f"phase {name}: {state} in {seconds:.1f}s, peak RSS {format_bytes(max(sampler.peak, max_rss))}", flush=True)
    return code


def load_phases(phases: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    """Phase records (a directory of `run_phase` files, or a mapping) as {name: figures}.

    For each phase: the latest run that did work (`seconds`, `peak_rss_bytes`, ...) and whether the
    latest run was a no-op (`reused`: the data, lake or views were already up to date).
    """
    if phases is None:
        return {}
    if isinstance(phases, Mapping):
        raw = dict(phases)
    else:
        d = Path(phases)
        raw = {}
        if d.is_dir():
            for f in sorted(d.glob("*.json")):
                try:
                    raw[f.stem] = json.loads(f.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
    out: dict[str, Any] = {}
    for name, rec in raw.items():
        runs = rec.get("runs") if isinstance(rec, Mapping) else None
        if runs is None:  # already one flat record
            out[name] = dict(rec)
            continue
        if not runs:
            continue
        work = [r for r in runs if not r.get("noop") and r.get("exit_code", 0) == 0]
        chosen = dict(work[-1] if work else runs[-1])
        chosen["reused"] = bool(runs[-1].get("noop"))
        chosen["runs"] = len(runs)
        out[name] = chosen
    return out


# ---------------------------------------------------------------------------------------------
# Statistics


def _median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _p95(values: Sequence[float]) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    # linear interpolation between closest ranks (numpy's default)
    k = (len(vals) - 1) * 0.95
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def format_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 10_000:
        return f"{ms / 1000:,.1f} s"
    if ms >= 100:
        return f"{ms:,.0f} ms"
    if ms >= 1:
        return f"{ms:.2f} ms"
    return f"{ms:.3f} ms"


# ---------------------------------------------------------------------------------------------
# The run


def _check(query: Query, expected: pa.Table | None, actual: pa.Table) -> tuple[bool, str | None]:
    if expected is None:
        return False, "no baseline answer to compare with"
    reason = compare_rows(query, to_rows(query, expected), to_rows(query, actual))
    return reason is None, reason


def _bar(items: Sequence[Any], desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="q", disable=not progress, leave=True, dynamic_ncols=True)


def _time(fn: Callable[[], pa.Table]) -> tuple[pa.Table, float]:
    t0 = time.perf_counter()
    table = fn()
    return table, (time.perf_counter() - t0) * 1000


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def run_benchmark(raw_dir: str | os.PathLike | None, lake_dir: str | os.PathLike, *,
                  workloads: Sequence[str | os.PathLike] = DEFAULT_WORKLOADS, repeats: int = 5,
                  out_json: str | os.PathLike | None = None, phases: str | os.PathLike | Mapping[str, Any] | None = None,
                  engines: Sequence[str] = ENGINES, rows: int | None = None, progress: bool = True,
                  memory_limit: str = MEMORY_LIMIT) -> dict[str, Any]:
    """Run every workload query on every engine, compare each answer with the baseline, time it.

    `raw_dir` holds the CSVs the lake at `lake_dir` was prepared from (views built); without it the
    baseline does not run, nothing is checked and `all_match` is False (`checked` False). `repeats` warm
    runs per query and engine after the cold one (the baseline runs once). `phases`: the directory
    `run_phase` writes (or a mapping) with the generate/prepare/build figures. Returns the result
    (see the module doc) and writes it to `out_json` if given.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
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
    n_rows = int(rows) if rows else int(lake.manifest.get("totals", {}).get("rows_read") or 0)
    say(f"benchmark: {len(items)} queries ({', '.join(sorted({it['workload'] for it in items}))}) on "
        f"{n_rows:,} rows; engines {', '.join(engines)}; {repeats} warm repeats")
    load_start = os.getloadavg()

    per: dict[str, dict[str, dict[str, Any]]] = {it["id"]: {} for it in items}
    answers: dict[str, pa.Table] = {}
    engine_runs: dict[str, dict[str, Any]] = {}
    product_extra: dict[str, Any] = {}

    def record(engine: str, it: dict[str, Any], **fields: Any) -> None:
        per[it["id"]][engine] = fields

    def check(it: dict[str, Any], table: pa.Table) -> tuple[bool | None, str | None]:
        return _check(it["query"], answers.get(it["id"]), table) if checked else (None, "no baseline run")

    # -- baseline: once per query (it is slow), the reference answers
    with measured(engine_runs.setdefault("baseline", {})) if checked else _nothing():
        eng = BaselineEngine(raw_dir) if checked else None
        try:
            for it in (_bar(valid, "baseline", progress) if eng is not None else ()):
                try:
                    table, ms = _time(lambda: eng.run(it["query"]))
                except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                    record("baseline", it, status="error", error=_error_text(exc), match=False)
                    continue
                answers[it["id"]] = table
                record("baseline", it, status="ok", match=True, cold_ms=ms, warm_ms=[], ms=ms, rows=table.num_rows)
        finally:
            if eng is not None:
                eng.close()

    # -- peers over the lake: cold = a fresh connection / scan per query, then `repeats` warm runs
    for name, factory in (("duckdb_lake", lambda: DuckDBLakeEngine(lake_dir, memory_limit)),
                          ("polars_lake", lambda: PolarsLakeEngine(lake_dir))):
        if name not in engines:
            continue
        with measured(engine_runs.setdefault(name, {})):
            for it in _bar(valid, name, progress):
                q = it["query"]
                try:
                    eng = factory()
                except Exception as exc:  # noqa: BLE001 - the engine cannot start: every query fails on it
                    record(name, it, status="error", error=f"engine did not start: {_error_text(exc)}", match=False)
                    continue
                try:
                    table, cold = _time(lambda: eng.run(q))
                    warm = [_time(lambda: eng.run(q))[1] for _ in range(repeats)]
                except Unsupported as exc:
                    record(name, it, status="unsupported", reason=str(exc), match=None)
                    continue
                except Exception as exc:  # noqa: BLE001
                    record(name, it, status="error", error=_error_text(exc), match=False)
                    continue
                finally:
                    eng.close()
                ok, reason = check(it, table)
                record(name, it, status="ok" if ok is not False else "mismatch", match=ok, reason=reason, cold_ms=cold,
                       warm_ms=warm, ms=statistics.median(warm), rows=table.num_rows)

    # -- the product: warmed Workbench + runner; cold = first run of the query there
    if "product" in engines:
        with measured(engine_runs.setdefault("product", {})):
            try:
                eng = ProductEngine(lake_dir, memory_limit)
            except Exception as exc:  # noqa: BLE001 - recorded as a failure of every query, the report still comes
                for it in valid:
                    record("product", it, status="error", error=f"engine did not start: {_error_text(exc)}", match=False)
                eng = None
            try:
                if eng is None:
                    raise _Skip()
                product_extra["startup_ms"] = eng.startup_ms
                product_extra["unhealthy_views"] = {k: v for k, v in eng.health.items() if v is not None}
                for it in _bar(valid, "product", progress):
                    q = it["query"]
                    try:
                        table, cold, route, fallback = eng.run_timed(q)
                        runs = [eng.run_timed(q) for _ in range(repeats)]
                        plan_ms = [eng.plan_ms(q) for _ in range(max(repeats, 5))]
                    except Exception as exc:  # noqa: BLE001
                        record("product", it, status="error", error=_error_text(exc), match=False)
                        continue
                    warm = [r[1] for r in runs]
                    ok, reason = check(it, table)
                    routes = {route} | {r[2] for r in runs}
                    record("product", it, status="ok" if ok is not False else "mismatch", match=ok, reason=reason, cold_ms=cold,
                           warm_ms=warm, ms=statistics.median(warm), rows=table.num_rows, route=route,
                           fallback_reason=fallback, plan_ms=statistics.median(plan_ms),
                           route_stable=len(routes) == 1)
                # the whole workload as one batch: threads, shared lake scans; answers checked too
                say("product: the whole workload as one batch run (threads, shared lake scans, no cache)")
                try:
                    tables, report, wall = eng.run_batch([it["query"] for it in valid])
                except Exception as exc:  # noqa: BLE001 - the batch path failed: a failure, reported
                    product_extra["batch"] = {"error": _error_text(exc), "all_match": False,
                                              "mismatches": [{"id": "all", "reason": _error_text(exc)}]}
                    raise _Skip() from None
                batch_bad = []
                for it, table, entry in zip(valid, tables, report["queries"]):
                    if table is None or "error" in entry:
                        batch_bad.append({"id": it["id"], "reason": entry.get("error", "no answer")})
                        continue
                    ok, reason = check(it, table)
                    per[it["id"]]["product"]["batch_match"] = ok
                    per[it["id"]]["product"]["batch_ms"] = entry.get("ms")
                    if ok is False:
                        batch_bad.append({"id": it["id"], "reason": reason})
                product_extra["batch"] = {
                    "wall_ms": _r(wall, 3), "sum_query_ms": _r(sum(e.get("ms", 0) for e in report["queries"]), 3),
                    "lake_queries": report["lake_queries"], "lake_scans": report["lake_scans"],
                    "workers": report["workers"], "batches": len(report["batches"]),
                    "all_match": checked and not batch_bad, "mismatches": batch_bad,
                }
            except _Skip:
                pass
            finally:
                if eng is not None:
                    eng.close()

    result = summarize(items, per, engines=engines, repeats=repeats, rows=n_rows, raw_dir=raw_dir, lake=lake,
                       phases=load_phases(phases), engine_runs=engine_runs, product_extra=product_extra)
    if not checked:
        result["all_match"] = False
        result["targets"] = evaluate_targets(result)
    result["checked"] = checked
    result["environment"] = _environment(load_start)
    result["started_at"] = started_at
    result["seconds"] = round(time.perf_counter() - t_start, 3)
    result["phases"].setdefault("benchmark", {})
    result["phases"]["benchmark"].update({
        "seconds": result["seconds"],
        "peak_rss_bytes": max((r.get("peak_rss_bytes") or 0) for r in engine_runs.values()) if engine_runs else None,
        "engines": engine_runs,
    })
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out_json, json.dumps(result, indent=1, default=str))
        result["json"] = str(out_json)
    say(f"benchmark: done in {result['seconds']:.0f}s; "
        f"{'all answers match the baseline' if result['all_match'] else 'MISMATCHES: ' + ', '.join(m['id'] for m in result['mismatches'])}")
    return result


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


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


def _sizes(raw_dir: Path | None, lake: Lake) -> dict[str, Any]:
    from analytics.views.registry import load_registry

    csv = sum(f.stat().st_size for f in raw_dir.glob("*.csv")) if raw_dir is not None else 0
    lake_bytes = lake.size_bytes()
    views: dict[str, int] = {}
    for name, entry in load_registry(lake.root)["views"].items():
        f = lake.root / entry["file"]
        if f.is_file():
            views[name] = f.stat().st_size
    view_bytes = sum(views.values())
    return {
        "csv_bytes": csv, "lake_bytes": lake_bytes, "views_bytes": view_bytes, "views": views,
        "lake_to_csv": _r(lake_bytes / csv) if csv else None,
        "views_to_csv": _r(view_bytes / csv) if csv else None,
        "lake_and_views_to_csv": _r((lake_bytes + view_bytes) / csv) if csv else None,
    }


def checked_batch(product_extra: Mapping[str, Any]) -> bool:
    return "error" not in (product_extra.get("batch") or {})


def summarize(items: list[dict[str, Any]], per: dict[str, dict[str, dict[str, Any]]], *, engines: Sequence[str],
              repeats: int, rows: int, raw_dir: Path | None, lake: Lake, phases: dict[str, Any],
              engine_runs: dict[str, Any], product_extra: dict[str, Any]) -> dict[str, Any]:
    """The result document from the per-query, per-engine records."""
    queries: list[dict[str, Any]] = []
    mismatches: list[dict[str, Any]] = []
    unsupported: list[dict[str, Any]] = []
    for it in items:
        recs = per[it["id"]]
        prod = recs.get("product", {})
        entry: dict[str, Any] = {
            "id": it["id"], "workload": it["workload"], "index": it["index"], "query": it["raw"],
            "route": prod.get("route"), "fallback_reason": prod.get("fallback_reason"),
            "rows": recs.get("baseline", recs.get("product", {})).get("rows"),
            "engine_rows": {e: recs[e].get("rows") for e in engines if e in recs},
            "ms": {e: _r(recs[e].get("ms")) for e in engines if e in recs},
            "cold_ms": {e: _r(recs[e].get("cold_ms")) for e in engines if e in recs},
            "warm_ms": {e: [_r(x) for x in recs[e].get("warm_ms", [])] for e in engines if e in recs},
            # the fastest warm run: on a busy machine the median carries scheduling noise, the best less
            "best_ms": {e: _r(min(recs[e].get("warm_ms") or [recs[e]["ms"]])) for e in engines
                        if e in recs and recs[e].get("ms") is not None},
            "status": {e: recs[e].get("status") for e in engines if e in recs},
            "plan_ms": _r(prod.get("plan_ms")),
        }
        if it["error"]:
            entry.update(match=False, error=it["error"])
            mismatches.append({"id": it["id"], "engine": "all", "reason": it["error"]})
            queries.append(entry)
            continue
        engine_match: dict[str, bool | None] = {}
        for e in engines:
            rec = recs.get(e)
            if rec is None:
                engine_match[e] = False
                mismatches.append({"id": it["id"], "engine": e, "reason": "not run"})
                continue
            engine_match[e] = rec.get("match")
            if rec.get("status") == "unsupported":
                unsupported.append({"id": it["id"], "engine": e, "reason": rec.get("reason")})
            elif rec.get("match") is False:
                mismatches.append({"id": it["id"], "engine": e,
                                   "reason": rec.get("reason") or rec.get("error") or rec.get("status")})
        if prod.get("batch_match") is False and checked_batch(product_extra):
            engine_match["product_batch"] = False
            mismatches.append({"id": it["id"], "engine": "product (batch run)", "reason": "batch answer differs"})
        entry["engine_match"] = engine_match
        entry["match"] = all(v is not False for v in engine_match.values())
        if "product" in recs and recs["product"].get("ms") and recs["product"]["ms"] > 0:
            entry["speedup"] = {p: _r(recs[p]["ms"] / recs["product"]["ms"], 2)
                                for p in PEERS if p in recs and recs[p].get("ms") is not None}
        reasons = {e: recs[e].get("reason") or recs[e].get("error") for e in engines
                   if e in recs and (recs[e].get("match") is False or recs[e].get("status") == "unsupported")}
        if reasons:
            entry["reasons"] = reasons
        queries.append(entry)

    def ms_list(engine: str, sel: Callable[[dict[str, Any]], bool] = lambda q: True, key: str = "ms") -> list[float]:
        return [q[key][engine] for q in queries if sel(q) and q.get(key, {}).get(engine) is not None]

    engine_stats: dict[str, Any] = {}
    for e in engines:
        vals = ms_list(e)
        engine_stats[e] = {
            "label": ENGINE_LABELS[e], "queries": len(vals), "median_ms": _r(_median(vals)), "p95_ms": _r(_p95(vals)),
            "total_ms": _r(sum(vals)) if vals else None, "max_ms": _r(max(vals)) if vals else None,
            "cold_median_ms": _r(_median(ms_list(e, key="cold_ms"))),
            "best_median_ms": _r(_median(ms_list(e, key="best_ms"))),
            "cold_total_ms": _r(sum(ms_list(e, key="cold_ms"))) if vals else None,
            "peak_rss_bytes": engine_runs.get(e, {}).get("peak_rss_bytes"),
            "seconds": engine_runs.get(e, {}).get("seconds"),
        }
    # speedups of the product over each peer, on the queries both answered
    speedups: dict[str, Any] = {}
    if "product" in engines:
        for p in PEERS:
            if p not in engines:
                continue
            both = [q for q in queries if q["ms"].get(p) is not None and q["ms"].get("product")]
            if not both:
                continue
            ratios = [q["ms"][p] / q["ms"]["product"] for q in both]
            med_p, med_prod = _median([q["ms"][p] for q in both]), _median([q["ms"]["product"] for q in both])
            speedups[p] = {
                "queries": len(both),
                "of_medians": _r(med_p / med_prod, 2) if med_prod else None,
                "of_totals": _r(sum(q["ms"][p] for q in both) / sum(q["ms"]["product"] for q in both), 2),
                "median_per_query": _r(_median(ratios), 2), "min_per_query": _r(min(ratios), 2),
                "max_per_query": _r(max(ratios), 2),
            }

    routed = [q for q in queries if q.get("route")]
    workload_names = list(dict.fromkeys(it["workload"] for it in items))
    by_workload: dict[str, Any] = {}
    for w in workload_names:
        wq = [q for q in queries if q["workload"] == w]
        wr = [q for q in wq if q.get("route")]
        by_workload[w] = {
            "queries": len(wq), "all_match": all(q["match"] for q in wq),
            "view_hit_rate": _r(sum(1 for q in wr if q["route"] != LAKE) / len(wr)) if wr else None,
            "median_ms": {e: _r(_median(ms_list(e, lambda q, w=w: q["workload"] == w))) for e in engines},
            "total_ms": {e: _r(sum(ms_list(e, lambda q, w=w: q["workload"] == w))) for e in engines},
        }
    route_mix: dict[str, int] = {}
    for q in routed:
        route_mix[q["route"]] = route_mix.get(q["route"], 0) + 1
    view_ms = ms_list("product", lambda q: q.get("route") not in (None, LAKE)) if "product" in engines else []
    lake_ms = ms_list("product", lambda q: q.get("route") == LAKE) if "product" in engines else []
    plan = [q["plan_ms"] for q in queries if q.get("plan_ms") is not None]
    product = {
        **product_extra,
        "startup_ms": _r(product_extra.get("startup_ms"), 3),
        "view_queries": len(view_ms), "lake_queries": len(lake_ms),
        "view_median_ms": _r(_median(view_ms)), "view_p95_ms": _r(_p95(view_ms)),
        "view_best_median_ms": _r(_median(ms_list("product", lambda q: q.get("route") not in (None, LAKE), "best_ms")))
        if "product" in engines else None,
        "lake_median_ms": _r(_median(lake_ms)), "lake_p95_ms": _r(_p95(lake_ms)),
        "lake_max_ms": _r(max(lake_ms)) if lake_ms else None,
        "routing_overhead_median_ms": _r(_median(plan)), "routing_overhead_p95_ms": _r(_p95(plan)),
        "routing_overhead_share": _r(_median(plan) / _median(view_ms)) if plan and view_ms else None,
        "route_mix": dict(sorted(route_mix.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    if (product_extra.get("batch") or {}).get("error"):
        mismatches.append({"id": "all", "engine": "product (batch run)", "reason": product_extra["batch"]["error"]})
    all_match = not mismatches
    view_hit_rate = _r(sum(1 for q in routed if q["route"] != LAKE) / len(routed)) if routed else None
    result: dict[str, Any] = {
        "rows": rows,
        "all_match": all_match,
        "view_hit_rate": view_hit_rate,
        "view_hit_rate_judges": by_workload.get(JUDGES, {}).get("view_hit_rate"),
        "median_ms": {e: engine_stats[e]["median_ms"] for e in engines},
        "p95_ms": {e: engine_stats[e]["p95_ms"] for e in engines},
        "total_ms": {e: engine_stats[e]["total_ms"] for e in engines},
        "speedup": speedups,
        "engines": engine_stats,
        "product": product,
        "workloads": by_workload,
        "sizes": _sizes(raw_dir, lake),
        "phases": phases,
        "repeats": repeats,
        "n_queries": len(queries),
        "mismatches": mismatches,
        "unsupported": unsupported,
        "raw_dir": str(raw_dir) if raw_dir is not None else None, "lake_dir": str(lake.root), "lake_version": lake.version,
        "queries": queries,
    }
    result["targets"] = evaluate_targets(result)
    return result


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against this run (they are stated for 15M rows; reported, not asserted)."""
    prod = result.get("product", {})
    sp = result.get("speedup", {})

    def row(name: str, want: str, value: Any, ok: bool | None, shown: str) -> dict[str, Any]:
        return {"target": name, "want": want, "value": value, "shown": shown, "ok": ok}

    out = [row("every answer matches the baseline", "all match", result["all_match"], result["all_match"],
               "all match" if result["all_match"] else f"{len(result['mismatches'])} mismatch(es)")]
    v = prod.get("view_median_ms")
    out.append(row("view-routed median (warm)", f"<= {TARGETS['view_median_ms_max']:g} ms", v,
                   None if v is None else v <= TARGETS["view_median_ms_max"], format_ms(v)))
    for peer, key in (("baseline", "speedup_vs_baseline_min"), ("duckdb_lake", "speedup_vs_duckdb_lake_min")):
        s = sp.get(peer, {}).get("of_medians")
        out.append(row(f"speedup over {peer} on the median", f">= {TARGETS[key]:g}x", s,
                       None if s is None else s >= TARGETS[key], "-" if s is None else f"{s:,.0f}x"))
    h = result.get("view_hit_rate_judges")
    out.append(row("judges-style workload from views", f">= {TARGETS['judges_view_hit_rate_min']:.0%}", h,
                   None if h is None else h >= TARGETS["judges_view_hit_rate_min"], "-" if h is None else f"{h:.1%}"))
    p = prod.get("lake_p95_ms")
    out.append(row("lake fallback p95 (warm)", f"<= {TARGETS['lake_p95_ms_max']:g} ms", p,
                   None if p is None else p <= TARGETS["lake_p95_ms_max"], format_ms(p)))
    for r in out:
        r["at_target_scale"] = result.get("rows") == TARGET_ROWS
    return out


# ---------------------------------------------------------------------------------------------
# The text summary `make benchmark` prints


def format_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _color(text: str, code: str, enable: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if enable else text


def summary_table(result: Mapping[str, Any], color: bool | None = None) -> str:
    """The benchmark's figures as a plain-text table (ANSI red/green when `color`, default: stdout is a tty)."""
    if color is None:
        color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
    red = lambda s: _color(s, "31;1", color)  # noqa: E731
    green = lambda s: _color(s, "32", color)  # noqa: E731
    engines = [e for e in ENGINES if e in result["engines"]]
    lines: list[str] = []
    if not result.get("checked", True):
        status = red("ANSWERS NOT CHECKED (no raw data, no baseline run)")
    elif result["all_match"]:
        status = green("ALL ANSWERS MATCH THE BASELINE")
    else:
        status = red(f"{len(result['mismatches'])} MISMATCH(ES) WITH THE BASELINE")
    wl = ", ".join(f"{w} {v['queries']}" for w, v in result["workloads"].items())
    lines.append(f"Benchmark at {result['rows']:,} rows: {result['n_queries']} queries ({wl}), "
                 f"{result['repeats']} warm repeats - {status}")
    head = (f"{'engine':<14}{'median':>11}{'p95':>11}{'total':>11}{'cold median':>13}{'best median':>13}{'peak RSS':>11}"
            "   product speedup (of medians / per-query median)")
    lines.append(head)
    lines.append("-" * len(head))
    for e in engines:
        s = result["engines"][e]
        sp = result["speedup"].get(e)
        sp_text = f"{sp['of_medians']:,.1f}x / {sp['median_per_query']:,.1f}x" if sp and sp.get("of_medians") else ""
        lines.append(f"{e:<14}{format_ms(s['median_ms']):>11}{format_ms(s['p95_ms']):>11}{format_ms(s['total_ms']):>11}"
                     f"{format_ms(s['cold_median_ms']):>13}{format_ms(s.get('best_median_ms')):>13}"
                     f"{format_bytes(s.get('peak_rss_bytes')):>11}   {sp_text}")
    prod = result.get("product", {})
    if prod:
        hits = {w: v["view_hit_rate"] for w, v in result["workloads"].items() if v["view_hit_rate"] is not None}
        lines.append(f"view hit rate: {format_pct(result['view_hit_rate'])} of all queries"
                     + "".join(f"; {w} {h:.1%}" for w, h in hits.items()))
        lines.append(f"product: view-routed median {format_ms(prod.get('view_median_ms'))} "
                     f"(p95 {format_ms(prod.get('view_p95_ms'))}, best-run median {format_ms(prod.get('view_best_median_ms'))}, "
                     f"{prod.get('view_queries')} queries); lake-routed median "
                     f"{format_ms(prod.get('lake_median_ms'))}, p95 {format_ms(prod.get('lake_p95_ms'))} "
                     f"({prod.get('lake_queries')} queries)")
        lines.append(f"routing overhead (Workbench.plan): median {format_ms(prod.get('routing_overhead_median_ms'))}, "
                     f"p95 {format_ms(prod.get('routing_overhead_p95_ms'))}; startup + view loading "
                     f"{format_ms(prod.get('startup_ms'))}")
        b = prod.get("batch")
        if b and b.get("error"):
            lines.append(red(f"whole workload as one runner batch: FAILED - {b['error']}"))
        elif b:
            lines.append(f"whole workload as one runner batch: {format_ms(b['wall_ms'])} wall, {b['lake_queries']} lake "
                         f"queries in {b['lake_scans']} scan(s), {b['workers']} worker(s), "
                         + (green("answers match") if b["all_match"] else red("answers differ")))
    sz = result["sizes"]
    lines.append(f"sizes: CSV {format_bytes(sz['csv_bytes'])}; lake {format_bytes(sz['lake_bytes'])} "
                 f"({sz['lake_to_csv'] or 0:.2f}x CSV); views {format_bytes(sz['views_bytes'])} "
                 f"({sz['views_to_csv'] or 0:.3f}x CSV)")
    ph = result.get("phases") or {}
    parts = []
    for name in PHASE_ORDER:
        p = ph.get(name)
        if not p or p.get("seconds") is None:
            continue
        rss = max(p.get("peak_rss_bytes") or 0, p.get("max_process_rss_bytes") or 0) or None
        parts.append(f"{name} {p['seconds']:.1f}s (peak RSS {format_bytes(rss)})"
                     + (" [reused]" if p.get("reused") else ""))
    lines.append("phases: " + ("; ".join(parts) if parts else "not recorded"))
    env = result.get("environment") or {}
    if env:
        lines.append(f"machine: {env.get('affinity')} core(s) available, load average {env.get('loadavg_start', ['?'])[0]} "
                     f"-> {env.get('loadavg_end', ['?'])[0]}; duckdb {env.get('duckdb')}, polars {env.get('polars')}")
    lines.append("targets" + ("" if result["rows"] == TARGET_ROWS else f" (stated for {TARGET_ROWS:,} rows; this run has "
                                                                       f"{result['rows']:,})") + ":")
    for t in result["targets"]:
        mark = "  -  " if t["ok"] is None else (green(" met ") if t["ok"] else red("MISSED"))
        lines.append(f"  [{mark}] {t['target']}: {t['shown']} (want {t['want']})")
    for m in result["mismatches"]:
        lines.append(red(f"MISMATCH {m['id']} [{m['engine']}]: {m['reason']}"))
    for u in result.get("unsupported", []):
        lines.append(f"unsupported {u['id']} [{u['engine']}]: {u['reason']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The scale sweep


def sweep(sizes: Sequence[int], *, data_dir: str | os.PathLike = ROOT / "data", out_dir: str | os.PathLike = ROOT / "reports",
          workloads: Sequence[str | os.PathLike] = DEFAULT_WORKLOADS, repeats: int = 5, seed: int = 0,
          progress: bool = True) -> dict[str, Any]:
    """The benchmark at each size: generate (reused when present), prepare, build, benchmark.

    Data goes to `data_dir/raw-N` and `data_dir/lake-N` (the Makefile's layout), each run's JSON to
    `out_dir/benchmark-N.json`, the combined figures to `out_dir/sweep.json` (returned).
    """
    from analytics.lake.generator import generate
    from analytics.lake.prepare import prepare
    from analytics.views.build import build

    data, out = Path(data_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for n in sizes:
        raw, lake = data / f"raw-{n}", data / f"lake-{n}"
        phases: dict[str, Any] = {}
        stamp = raw / f".generated-seed{seed}"
        if not stamp.exists():
            with measured(phases.setdefault("generate", {})):
                generate(raw, n, seed=seed, progress=progress)
            stamp.touch()
        with measured(phases.setdefault("prepare", {})):
            summary = prepare(raw, lake, progress=progress)
        phases["prepare"]["reused"] = not summary["changed"]
        with measured(phases.setdefault("build", {})):
            built = build(lake, progress=progress)
        phases["build"]["reused"] = not built["built"]
        if built["failed"]:
            raise RuntimeError(f"view build failed at {n:,} rows: {built['failed']}")
        path = out / f"benchmark-{n}.json"
        run_benchmark(raw, lake, workloads=workloads, repeats=repeats, out_json=path, phases=phases, rows=n,
                      progress=progress)
        files.append(path)
    combined = sweep_from_files(files)
    write_atomic(out / "sweep.json", json.dumps(combined, indent=1, default=str))
    return combined


def sweep_from_files(paths: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Combine benchmark JSONs of several sizes: per engine, median / p95 / total ms against rows."""
    runs = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            runs.append(json.loads(p.read_text()))
    runs.sort(key=lambda r: r["rows"])
    engines = [e for e in ENGINES if any(e in r.get("median_ms", {}) for r in runs)]
    return {
        "rows": [r["rows"] for r in runs],
        "all_match": [r["all_match"] for r in runs],
        "view_hit_rate": [r.get("view_hit_rate") for r in runs],
        "engines": {e: {k: [r.get(k, {}).get(e) for r in runs] for k in ("median_ms", "p95_ms", "total_ms")}
                    for e in engines},
        "product_view_median_ms": [r.get("product", {}).get("view_median_ms") for r in runs],
        "product_lake_p95_ms": [r.get("product", {}).get("lake_p95_ms") for r in runs],
        "sizes": [r.get("sizes") for r in runs],
    }


# ---------------------------------------------------------------------------------------------
# Tables and figures for notebook 03


def queries_frame(result: Mapping[str, Any]) -> Any:
    """One row per query: workload, route, match per engine, warm median ms per engine, speedups."""
    import pandas as pd

    rows = []
    for q in result["queries"]:
        row: dict[str, Any] = {"id": q["id"], "workload": q["workload"], "route": q.get("route"),
                               "rows": q.get("rows"), "match": q["match"]}
        for e, ok in (q.get("engine_match") or {}).items():
            if e != "baseline":
                row[f"{e} ok"] = "unsupported" if ok is None else ("match" if ok else "MISMATCH")
        for e in ENGINES:
            if e in q.get("ms", {}):
                row[f"{e} ms"] = q["ms"][e]
        for p, s in (q.get("speedup") or {}).items():
            row[f"x vs {p}"] = s
        row["plan ms"] = q.get("plan_ms")
        row["reason"] = "; ".join(f"{e}: {r}" for e, r in (q.get("reasons") or {}).items())
        rows.append(row)
    return pd.DataFrame(rows)


def style_correctness(frame: Any) -> Any:
    """The queries table with mismatching rows and cells in red, unsupported ones in grey."""
    def cell(v: Any) -> str:
        if v is False or v == "MISMATCH":
            return "background-color: #f8d0d0; color: #a00000; font-weight: bold"
        if v == "unsupported":
            return "color: #888888"
        return ""

    def row(r: Any) -> list[str]:
        bad = r.get("match") is False
        return ["background-color: #fde8e8" if bad else "" for _ in r]

    cols = [c for c in frame.columns if c == "match" or c.endswith(" ok")]
    fmt = {c: "{:,.3f}" for c in frame.columns if c.endswith(" ms")}
    fmt.update({c: "{:,.1f}" for c in frame.columns if c.startswith("x vs")})
    styler = frame.style.apply(row, axis=1)
    styler = styler.map(cell, subset=cols) if hasattr(styler, "map") else styler.applymap(cell, subset=cols)
    return styler.format(fmt, na_rep="-")


def notebook_results(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per query, the product against the baseline in the flat form notebook 03 has always glued as `results`."""
    out = []
    for q in result["queries"]:
        rows = q.get("engine_rows") or {}
        row: dict[str, Any] = {"id": q["id"], "query": json.dumps(q["query"], separators=(",", ":")),
                               "rows": rows.get("product"), "route": q.get("route"),
                               "workbench_ms": q["ms"].get("product"), "workbench_cold_ms": q["cold_ms"].get("product")}
        if "baseline" in q["ms"]:
            row.update(baseline_rows=rows.get("baseline"), baseline_ms=q["ms"]["baseline"],
                       speedup=(q.get("speedup") or {}).get("baseline"))
        row["match"] = bool(q["match"]) if result.get("checked", True) else None
        row["reason"] = "; ".join(f"{e}: {r}" for e, r in (q.get("reasons") or {}).items()
                                  if (q.get("engine_match") or {}).get(e) is False) or q.get("error") or ""
        out.append(row)
    return out


def engines_frame(result: Mapping[str, Any]) -> Any:
    """One row per engine: median, p95, total, cold median, peak RSS, speedup of the product over it."""
    import pandas as pd

    rows = []
    for e, s in result["engines"].items():
        sp = result["speedup"].get(e, {})
        rows.append({"engine": e, "what": s["label"], "queries": s["queries"], "median ms": s["median_ms"],
                     "p95 ms": s["p95_ms"], "total ms": s["total_ms"], "cold median ms": s["cold_median_ms"],
                     "best-run median ms": s.get("best_median_ms"),
                     "peak RSS": format_bytes(s.get("peak_rss_bytes")),
                     "product speedup (of medians)": sp.get("of_medians"),
                     "product speedup (median per query)": sp.get("median_per_query")})
    return pd.DataFrame(rows)


def targets_frame(result: Mapping[str, Any]) -> Any:
    import pandas as pd

    return pd.DataFrame([{"target": t["target"], "want": t["want"], "this run": t["shown"],
                          "met": {True: "met", False: "MISSED", None: "-"}[t["ok"]]} for t in result["targets"]])


def figure_latency(result: Mapping[str, Any]) -> Any:
    """Per-query warm latency by engine (log scale), queries in workload order."""
    import plotly.graph_objects as go

    ids = [q["id"] for q in result["queries"]]
    fig = go.Figure()
    for e in ENGINES:
        if e not in result["engines"]:
            continue
        ys = [q["ms"].get(e) for q in result["queries"]]
        fig.add_trace(go.Scatter(x=ids, y=ys, mode="markers", name=e,
                                 text=[q.get("route") or "" for q in result["queries"]],
                                 hovertemplate="%{x}<br>%{y:.3f} ms<br>route %{text}"))
    bad = [q["id"] for q in result["queries"] if not q["match"]]
    for qid in bad:
        fig.add_vline(x=qid, line_color="red", line_width=2, opacity=0.5)
    fig.update_layout(title=f"Warm latency per query and engine at {result['rows']:,} rows (median of "
                            f"{result['repeats']}; baseline one run)", yaxis_type="log", yaxis_title="ms (log)",
                      xaxis_title="query", height=480)
    return fig


def figure_route_mix(result: Mapping[str, Any]) -> Any:
    """How many queries each route answered (views and the lake)."""
    import plotly.graph_objects as go

    mix = result["product"].get("route_mix", {})
    colors = ["#d62728" if r == LAKE else "#1f77b4" for r in mix]
    fig = go.Figure(go.Bar(x=list(mix.values()), y=list(mix.keys()), orientation="h", marker_color=colors))
    fig.update_layout(title=f"Route mix: view hit rate {format_pct(result['view_hit_rate'])}", xaxis_title="queries",
                      yaxis={"autorange": "reversed"}, height=120 + 28 * len(mix))
    return fig


def figure_ratios(result: Mapping[str, Any]) -> Any:
    """Distribution of the per-query speedup of the product over each peer (log scale)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for p in PEERS:
        vals = [q["speedup"][p] for q in result["queries"] if (q.get("speedup") or {}).get(p)]
        if vals:
            fig.add_trace(go.Box(y=vals, name=f"vs {p}", boxpoints="all", jitter=0.4,
                                 text=[q["id"] for q in result["queries"] if (q.get("speedup") or {}).get(p)]))
    fig.add_hline(y=1, line_dash="dot", line_color="grey")
    fig.update_layout(title="Speedup of the product per query (peer ms / product ms)", yaxis_type="log",
                      yaxis_title="x (log)", height=450)
    return fig


def figure_sweep(sweep_result: Mapping[str, Any], stat: str = "median_ms") -> Any:
    """Time against rows per engine, log axes."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for e, figs in sweep_result.get("engines", {}).items():
        fig.add_trace(go.Scatter(x=sweep_result["rows"], y=figs[stat], mode="lines+markers", name=e))
    fig.update_layout(title=f"Scale sweep: {stat.replace('_ms', '')} query time against rows", xaxis_type="log",
                      yaxis_type="log", xaxis_title="rows (log)", yaxis_title="ms (log)", height=450)
    return fig


# ---------------------------------------------------------------------------------------------
# `python -m analytics.bench.benchmark`: the Makefile's helpers


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analytics.bench.benchmark", description=(
        "benchmark helpers for the Makefile: time a phase, print a benchmark's summary, combine a sweep"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("phase", help="run a command as a timed phase (wall time, peak RSS) into DIR/NAME.json")
    p.add_argument("name", help="phase name, e.g. prepare")
    p.add_argument("--dir", required=True, help="directory of phase records")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    p = sub.add_parser("summary", help="print the summary table of a benchmark JSON; exit 1 on any mismatch")
    p.add_argument("json", help="the benchmark JSON (e.g. reports/benchmark.json)")
    p.add_argument("--report", default=None, help="report path to print at the end")
    p = sub.add_parser("sweep", help="combine benchmark JSONs of several sizes into one sweep JSON")
    p.add_argument("jsons", nargs="+", help="benchmark JSONs")
    p.add_argument("--out", required=True, help="the combined JSON to write")
    args = parser.parse_args(argv)
    if args.command == "phase":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("phase: give the command after --")
        return run_phase(args.name, args.dir, cmd)
    if args.command == "summary":
        path = Path(args.json)
        if not path.is_file():
            print(f"benchmark: error: {path} does not exist (did the notebook run?)", file=sys.stderr)
            return 2
        result = json.loads(path.read_text())
        print(summary_table(result))
        if args.report:
            print(f"report: {args.report}")
        print(f"figures: {path}")
        return 0 if result["all_match"] else 1
    combined = sweep_from_files(args.jsons)
    write_atomic(args.out, json.dumps(combined, indent=1))
    print(f"sweep over {', '.join(f'{n:,}' for n in combined['rows'])} rows in {args.out}")
    return 0 if all(combined["all_match"]) else 1


if __name__ == "__main__":
    sys.exit(main())
