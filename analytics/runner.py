"""The batch runner: answer a file of queries, time compute only, write results atomically.

Owns the contract's `run` output: `q{i}.csv` per answered query and `run.json`. Results are
held in memory (Arrow) while timed; files are written after timing, each to a temporary name
renamed into place, so a killed run never leaves a truncated `q{i}.csv`. A failing query is
recorded in `run.json` and never stops the others. Must not choose routes or build SQL.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa

from .query import Query, QueryError, parse_query
from .results import to_csv_text, write_atomic

# answer(query) -> (table, route)
Answerer = Callable[[Query], tuple[pa.Table, str]]


def run_queries(answer: Answerer, queries: Sequence[Any], out_dir: str | Path,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Answer each query, write `q{i}.csv` and `run.json` into `out_dir`; returns the run.json data."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    answers: list[tuple[int, Query, pa.Table]] = []
    for i, raw in enumerate(queries, start=1):
        entry: dict[str, Any] = {"id": f"q{i}"}
        try:
            t0 = time.perf_counter()
            q = parse_query(raw)
            table, route = answer(q)
            entry["ms"] = round((time.perf_counter() - t0) * 1000, 3)
            entry.update(route=route, rows=table.num_rows)
            answers.append((i, q, table))
        except QueryError as exc:
            entry.update(error=f"invalid query: {exc}")
        except Exception as exc:  # an execution failure must not stop the batch
            entry.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
        entries.append(entry)
    for i, q, table in answers:
        write_atomic(out / f"q{i}.csv", to_csv_text(q, table))
    stale = {f"q{i}.csv" for i in range(1, len(queries) + 1)} - {f"q{i}.csv" for i, _, _ in answers}
    for name in stale:  # an old answer to a query that now failed must not pass for a new one
        (out / name).unlink(missing_ok=True)
    report = {"queries": entries, "errors": sum(1 for e in entries if "error" in e), **(extra or {})}
    write_atomic(out / "run.json", json.dumps(report, indent=1, default=str))
    return report
