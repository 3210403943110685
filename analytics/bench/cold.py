"""The cold pass: each engine answers a whole workload in ONE NEW PROCESS, with no result cache.

Owns what "cold" means for serving: per engine and workload file (one process per file, so the
judges workload's figures stand alone, as the targets state them), a child process is started,
answers every query of the file once and exits; `COLD_REPEATS` such processes run one after the
other and are folded into one figure (their median wall and per-query `ms`, their largest peak
RSS, any wrong answer wins). The package is byte-compiled first, as `pip install` leaves it, so
no child pays for compiling its sources. Recorded per process: its wall time (fork to exit:
interpreter start, imports, opening the lake, loading views, every answer written), its peak RSS
and the bytes it read from storage (the child's `ru_maxrss` and `ru_inblock` as the kernel reports
them to `os.wait4` in the small launcher of `phases.py`: exact per child, not sampled) and each
query's `ms` and route from the child's `run.json`. A disk-cold pass (`disk_cold`) drops the lake's
pages from the page cache before each process (`pagecache.evict`). The engines:

- `product`: `python -m analytics run --lake L --queries Q --out O --no-cache --no-telemetry`
  (telemetry off so the benchmark does not write the lake it measures);
- `product_no_views`: the same with `--no-views`;
- `duckdb_lake`, `polars_lake`: `python -m analytics.bench.cold ENGINE ...` (this module's `main`),
  which answers every query once through `batch.runner.run_queries`, the same files as `run`.

Each answer (`q{i}.csv`) is checked against the baseline's answer when the benchmark has one.
Must not compute statistics across queries (`summary.py` does) nor keep the children's files: they live in a
temporary directory removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa

from analytics.bench import COLD_REPEATS
from analytics.bench.pagecache import evict
from analytics.bench.peers import DuckDBLakeEngine, Unsupported
from analytics.bench.phases import launched, read_launched
from analytics.bench.polars_engine import PolarsLakeEngine
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.query.model import Query, load_queries
from analytics.query.results import compare_rows, read_csv_rows, to_rows
from analytics.serving.router import LAKE

COLD_ENGINES: tuple[str, ...] = ("product", "product_no_views", "duckdb_lake", "polars_lake")
COLD_LABELS: dict[str, str] = {
    "product": "analytics run --no-cache (views on)",
    "product_no_views": "analytics run --no-cache --no-views",
    "duckdb_lake": "DuckDB over the lake, one process",
    "polars_lake": "Polars over the lake, one process",
}
CHILD_ENGINES: tuple[str, ...] = ("duckdb_lake", "polars_lake")
HOW = ("a new process per engine and workload file answers every query once, no result cache, the package "
       "byte-compiled as pip installs it, {repeats} such processes in a row: the median wall (fork to exit) and "
       "per-query ms, the largest peak RSS (the child's ru_maxrss, os.wait4)")
DISK_COLD_HOW = ("; disk-cold: before each process the lake's and views' pages are dropped from the page cache "
                 "(posix_fadvise DONTNEED), so it reads from disk every byte it touches (read_bytes: ru_inblock)")


def cold_engines(engines: Sequence[str]) -> list[str]:
    """The cold engines that go with the warm engines run: the product brings its `--no-views` twin."""
    want = set(engines) | ({"product_no_views"} if "product" in engines else set())
    return [e for e in COLD_ENGINES if e in want]


def command(engine: str, lake_dir: str | os.PathLike, queries: str | os.PathLike, out_dir: str | os.PathLike,
            memory_limit: str = DEFAULT_MEMORY_LIMIT) -> list[str]:
    """The child's command line for `engine` (one of `COLD_ENGINES`)."""
    if engine in ("product", "product_no_views"):
        cmd = [sys.executable, "-m", "analytics", "run", "--lake", str(lake_dir), "--queries", str(queries),
               "--out", str(out_dir), "--no-cache", "--no-telemetry", "--memory-limit", memory_limit]
        return cmd + (["--no-views"] if engine == "product_no_views" else [])
    if engine in CHILD_ENGINES:
        return [sys.executable, "-m", "analytics.bench.cold", engine, "--lake", str(lake_dir), "--queries",
                str(queries), "--out", str(out_dir), "--memory-limit", memory_limit]
    raise ValueError(f"cold engine must be one of {', '.join(COLD_ENGINES)}; got {engine!r}")


def run_child(cmd: Sequence[str], log: Path) -> dict[str, Any]:
    """Run `cmd` with its output in `log`: `wall_ms` (fork to exit), `peak_rss_bytes` (its own ru_maxrss),
    `read_bytes` (read from storage, its memory-mapped pages included), `exit_code`."""
    figures = log.with_suffix(".rusage")
    with open(log, "w", encoding="utf-8") as fh:
        code = subprocess.run(launched(cmd, figures), stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    launch = read_launched(figures)
    if launch is None:
        return {"wall_ms": None, "peak_rss_bytes": None, "read_bytes": None, "exit_code": code}
    return {"wall_ms": round(launch["seconds"] * 1000, 3), "peak_rss_bytes": launch["max_rss_bytes"],
            "read_bytes": launch["read_bytes"], "exit_code": launch["exit_code"]}


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _record(query: Query, entry: Mapping[str, Any], answer: Path, expected: pa.Table | None,
            checked: bool) -> dict[str, Any]:
    """One query's cold record from the child's `run.json` entry and `q{i}.csv`, checked against `expected`."""
    if "error" in entry:
        if str(entry["error"]).startswith(f"{Unsupported.__name__}:"):
            return {"status": "unsupported", "match": None, "reason": entry["error"]}
        return {"status": "error", "match": False, "reason": entry["error"]}
    rec: dict[str, Any] = {"ms": entry.get("ms"), "route": entry.get("route"), "rows": entry.get("rows"),
                           "read_bytes": entry.get("disk_read_bytes")}
    if not checked:
        return {**rec, "status": "ok", "match": None}
    if expected is None:
        return {**rec, "status": "mismatch", "match": False, "reason": "no baseline answer to compare with"}
    header, rows = read_csv_rows(answer)
    reason = compare_rows(query, to_rows(query, expected), rows, None, header)
    return {**rec, "status": "ok" if reason is None else "mismatch", "match": reason is None, "reason": reason}


def _one_process(e: str, lake_dir: Path, queries: Path, out: Path, log: Path, its: Sequence[dict[str, Any]],
                 answers: Mapping[str, pa.Table], checked: bool, memory_limit: str,
                 disk_cold: bool) -> tuple[dict[str, Any], list]:
    """One new process of engine `e` answering the file `queries`: its figures and one record per item.
    `disk_cold`: the lake's pages (its files and views) are dropped from the page cache first."""
    if disk_cold:
        evict(lake_dir)
    proc = run_child(command(e, lake_dir, queries, out, memory_limit), log)
    report = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else None
    if report is None:
        proc["error"] = f"the process left no run.json (exit {proc['exit_code']}): {_last_line(log)}"
        return proc, [{"status": "error", "match": False, "reason": proc["error"]} for _ in its]
    recs = [_record(it["query"], entry, out / f"q{k}.csv", answers.get(it["id"]), checked)
            for k, (it, entry) in enumerate(zip(its, report["queries"]), start=1)]
    missing = {"status": "error", "match": False, "reason": f"not in the process's run.json (exit {proc['exit_code']})"}
    return proc, recs + [missing] * (len(its) - len(recs))


def _fold_processes(procs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The repeats of one process: the median wall and bytes read, the largest peak RSS, the first failure."""
    walls = [p["wall_ms"] for p in procs]
    rss = [p["peak_rss_bytes"] for p in procs if p["peak_rss_bytes"] is not None]
    read = [p["read_bytes"] for p in procs if p.get("read_bytes") is not None]
    proc = {"wall_ms": None if None in walls else statistics.median(walls), "wall_ms_runs": walls,
            "peak_rss_bytes": max(rss) if rss else None, "read_bytes": round(statistics.median(read)) if read else None,
            "exit_code": next((p["exit_code"] for p in procs if p["exit_code"]), procs[0]["exit_code"])}
    error = next((p["error"] for p in procs if "error" in p), None)
    return proc if error is None else {**proc, "error": error}


def _fold_records(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The repeats of one query: its median `ms` when every repeat answered it right, else the first wrong record."""
    bad = next((r for r in recs if r["status"] != "ok"), None)
    if bad is not None:
        return bad
    read = [r["read_bytes"] for r in recs if r.get("read_bytes") is not None]
    return {**recs[0], "ms": statistics.median(r["ms"] for r in recs), "ms_runs": [r["ms"] for r in recs],
            "read_bytes": round(statistics.median(read)) if read else None}


def byte_compile(package_dir: str | os.PathLike | None = None) -> bool:
    """The package's modules (default: this one's) byte-compiled, as `pip install` leaves a package:
    a cold process then loads them instead of compiling its sources, which it would do on every
    start where PYTHONDONTWRITEBYTECODE is set (measured: ~70-100 ms of a ~0.7 s cold run). True if
    all compiled."""
    import compileall

    import analytics

    return bool(compileall.compile_dir(str(package_dir or Path(analytics.__file__).parent), quiet=1))


def cold_pass(lake_dir: str | os.PathLike, items: Sequence[dict[str, Any]], answers: Mapping[str, pa.Table], *,
              engines: Sequence[str], checked: bool, repeats: int = COLD_REPEATS,
              memory_limit: str = DEFAULT_MEMORY_LIMIT, disk_cold: bool = False,
              say: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Every valid query of each workload in `items`, answered by new processes per cold engine and workload.

    Each (engine, workload) runs `repeats` new processes, one after the other; the figures are
    their medians (wall, each query's `ms`) and the largest peak RSS. `answers`: the baseline's
    answers by item id (checked when `checked`: every repeat's answer is). Returns `how`, `engines`
    (per engine its `command` and `processes`: workload, wall_ms, wall_ms_runs, peak_rss_bytes,
    exit_code, queries, errors, and `error` when a child left no `run.json`) and `records` (per
    item id and engine: status, match, reason, ms, ms_runs, route, rows, and read_bytes: what a view
    answer's thread read from storage, median of the repeats). `disk_cold`: before each
    process the lake's pages are dropped from the page cache (`pagecache.evict`), so it reads from
    disk what it touches; the default starts with whatever the cache holds.
    """
    if repeats < 1:
        raise ValueError(f"cold repeats must be >= 1, got {repeats}")
    if not byte_compile():
        say("cold: the package could not be byte-compiled (a read-only checkout?): each cold run also compiles it")
    lake_dir = Path(lake_dir).resolve()
    workloads: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        if it["query"] is not None:
            workloads.setdefault(it["workload"], []).append(it)
    runs: dict[str, Any] = {}
    records: dict[str, dict[str, Any]] = {it["id"]: {} for it in items}
    with tempfile.TemporaryDirectory(prefix="analytics-cold-") as tmp:
        root = Path(tmp)
        for w, its in workloads.items():
            (root / f"{w}.json").write_text(json.dumps([it["raw"] for it in its]))
        for e in engines:
            processes = []
            for w, its in workloads.items():
                say(f"{'disk-cold' if disk_cold else 'cold'}: {e} answers {w} ({len(its)} queries), "
                    f"{repeats} new process(es) in a row")
                done = [_one_process(e, lake_dir, root / f"{w}.json", root / e / w / str(r), root / f"{e}-{w}-{r}.log",
                                     its, answers, checked, memory_limit, disk_cold) for r in range(repeats)]
                proc = {"workload": w, **_fold_processes([d[0] for d in done]), "queries": len(its)}
                for k, it in enumerate(its):
                    records[it["id"]][e] = _fold_records([d[1][k] for d in done])
                proc["errors"] = sum(1 for it in its if records[it["id"]].get(e, {}).get("status") == "error")
                processes.append(proc)
            shown = ["python", *command(e, "LAKE", "QUERIES.json", "OUT", memory_limit)[1:]]
            runs[e] = {"command": shlex.join(shown), "processes": processes}
    how = HOW.format(repeats=repeats) + (DISK_COLD_HOW if disk_cold else "")
    return {"how": how, "repeats": repeats, "disk_cold": disk_cold, "engines": runs, "records": records}


def main(argv: Sequence[str] | None = None) -> int:
    """The child for DuckDB or Polars over the lake: every query of a file once, `q{i}.csv` and `run.json` into OUT."""
    from analytics.batch.simple import run_queries

    parser = argparse.ArgumentParser(prog="python -m analytics.bench.cold", description=(
        "answer every query of a file once with a peer engine over the lake, as `analytics run` does "
        "(q{i}.csv and run.json with each query's ms): the cold pass's child"))
    parser.add_argument("engine", choices=CHILD_ENGINES)
    parser.add_argument("--lake", required=True, help="prepared lake directory")
    parser.add_argument("--queries", required=True, help="JSON file with a list of queries")
    parser.add_argument("--out", required=True, help="directory for q{i}.csv and run.json")
    parser.add_argument("--memory-limit", default=DEFAULT_MEMORY_LIMIT,
                        help=f"DuckDB memory limit (default {DEFAULT_MEMORY_LIMIT})")
    args = parser.parse_args(argv)
    queries = load_queries(args.queries)
    engine = (DuckDBLakeEngine(args.lake, args.memory_limit) if args.engine == "duckdb_lake"
              else PolarsLakeEngine(args.lake))
    try:
        report = run_queries(lambda q: (engine.run(q), LAKE), queries, args.out, extra={"engine": args.engine})
    finally:
        engine.close()
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
