"""Compare two result directories query by query (the contract's `compare` command).

Owns reading `q{i}.csv` pairs and judging them with `results.compare_rows`. Must not run
queries.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from analytics.query.model import QueryError, parse_query
from analytics.query.results import compare_rows, read_csv_rows


def compare_dirs(queries: Sequence[Any], expected_dir: str | Path, actual_dir: str | Path) -> list[dict[str, Any]]:
    """One `{"id", "match", "reason"}` per query; a query both sides failed to answer matches."""
    out = []
    for i, raw in enumerate(queries, start=1):
        qid = f"q{i}"
        exp, act = Path(expected_dir) / f"{qid}.csv", Path(actual_dir) / f"{qid}.csv"
        try:
            q = parse_query(raw)
        except QueryError as exc:
            out.append({"id": qid, "match": not exp.exists() and not act.exists(), "reason": f"invalid query: {exc}"})
            continue
        if not exp.exists() or not act.exists():
            missing = [str(p) for p in (exp, act) if not p.exists()]
            both = len(missing) == 2
            out.append({"id": qid, "match": both, "reason": "both failed" if both else f"missing {missing[0]}"})
            continue
        eh, er = read_csv_rows(exp)
        ah, ar = read_csv_rows(act)
        reason = compare_rows(q, er, ar, eh, ah)
        out.append({"id": qid, "match": reason is None, "reason": reason or ""})
    return out
