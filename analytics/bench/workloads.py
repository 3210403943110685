"""Workload files: which queries the benchmark runs, in which order, under which ids.

Owns reading workload files (JSON lists of queries) into benchmark items and the default
workloads (`queries/examples.json`, `queries/judges.json`). Must not run or time queries.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from analytics.query.model import QueryError, load_queries, parse_query

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORKLOADS: tuple[Path, ...] = (ROOT / "queries" / "examples.json", ROOT / "queries" / "judges.json")
JUDGES = "judges"


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
