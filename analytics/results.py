"""Result format: typed answers (Arrow) to the contract's CSV text, and the comparison of two answers.

Owns how each value is printed (day/week `YYYY-MM-DD`, hour `YYYY-MM-DD HH:MM:SS`, ts with
milliseconds, floats as shortest round-trip, NULL empty) and what "the same answer" means
(floats to relative 1e-9, row order only where `order_by` asks for it). Must not run queries.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from .query import Agg, Query
from .schema import COLUMNS

REL_TOL = 1e-9


def output_kind(item: str | Agg) -> str:
    """How an output column prints: a column's kind, or int/float for counts, sums and averages."""
    if isinstance(item, Agg):
        if item.func == "COUNT":
            return "int"
        if item.func == "AVG":
            return "float"
        if item.func == "SUM":
            return COLUMNS[item.col].kind  # int or float
        return COLUMNS[item.col].kind
    return COLUMNS[item].kind


def _utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def format_value(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind in ("date", "week"):
        if isinstance(value, dt.datetime):
            value = _utc_naive(value)
        return value.strftime("%Y-%m-%d")
    if kind == "hour":
        return _utc_naive(value).strftime("%Y-%m-%d %H:%M:%S")
    if kind == "timestamp":
        value = _utc_naive(value)
        return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"
    if isinstance(value, float):
        return repr(value)
    if kind == "float":
        return repr(float(value))  # Decimal or int from exact view sums
    return str(value)


def to_rows(query: Query, table: pa.Table) -> list[list[str]]:
    """The answer as printed strings, in the table's row order."""
    kinds = [output_kind(i) for i in query.select]
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return [[format_value(v, k) for v, k in zip(values, kinds)] for values in zip(*columns)]


def to_csv_text(query: Query, table: pa.Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(query.output_names)
    writer.writerows(to_rows(query, table))
    return buf.getvalue()


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path` and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_csv_rows(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path}: empty file, expected a header line")
    return rows[0], rows[1:]


def _cell_equal(a: str, b: str, kind: str) -> bool:
    if a == b:
        return True
    if kind in ("float", "int") and a and b:
        try:
            x, y = float(a), float(b)
        except ValueError:
            return False
        return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=0.0) or (x == 0 and abs(y) < 1e-12) or (y == 0 and abs(x) < 1e-12)
    return False


def _rows_equal(r1: Sequence[str], r2: Sequence[str], kinds: Sequence[str]) -> bool:
    return len(r1) == len(r2) and all(_cell_equal(a, b, k) for a, b, k in zip(r1, r2, kinds))


def _sort_key(row: Sequence[str], kinds: Sequence[str]) -> tuple:
    # numbers are rounded so two spellings within tolerance sort next to each other
    key = []
    for v, k in zip(row, kinds):
        if k in ("float", "int") and v:
            key.append((0, float(f"{float(v):.9g}"), ""))
        else:
            key.append((1, 0.0, v))
    return tuple(key)


def compare_rows(query: Query, expected: list[list[str]], actual: list[list[str]],
                 expected_header: Sequence[str] | None = None,
                 actual_header: Sequence[str] | None = None) -> str | None:
    """None when `actual` is the same answer as `expected`, else a one-line reason.

    Floats compare to relative 1e-9. With `order_by`, the sequence of order keys must match and
    rows may differ only inside a group of equal keys; with `limit` and ties at the cut-off the
    tied rows may legitimately differ, so only their keys are compared. Without `order_by` rows
    compare as multisets (with `limit` and no order, only the row count is determined).
    """
    kinds = [output_kind(i) for i in query.select]
    names = query.output_names
    for label, header in (("expected", expected_header), ("actual", actual_header)):
        if header is not None and list(header) != names:
            return f"{label} header {list(header)} differs from {names}"
    if len(expected) != len(actual):
        return f"row count differs: expected {len(expected)}, got {len(actual)}"
    if query.limit is not None and not query.order_by and query.limit <= len(expected):
        return None
    if query.order_by:
        idx = [names.index(o.name) for o in query.order_by]
        okinds = [kinds[i] for i in idx]
        for n, (e, a) in enumerate(zip(expected, actual)):
            if not _rows_equal([e[i] for i in idx], [a[i] for i in idx], okinds):
                return f"row {n + 1}: order key {[a[i] for i in idx]} where {[e[i] for i in idx]} was expected"
        # group rows by equal order keys and compare each group as a multiset
        groups_e: list[list[list[str]]] = []
        groups_a: list[list[list[str]]] = []
        for n, (e, a) in enumerate(zip(expected, actual)):
            if n and _rows_equal([e[i] for i in idx], [expected[n - 1][i] for i in idx], okinds):
                groups_e[-1].append(e)
                groups_a[-1].append(a)
            else:
                groups_e.append([e])
                groups_a.append([a])
        truncated = query.limit is not None and len(expected) == query.limit
        for g, (ge, ga) in enumerate(zip(groups_e, groups_a)):
            if truncated and g == len(groups_e) - 1:
                break  # ties at the cut-off: which of them are kept is free
            reason = _multiset_diff(ge, ga, kinds)
            if reason:
                return reason
        return None
    return _multiset_diff(expected, actual, kinds)


def _multiset_diff(expected: list[list[str]], actual: list[list[str]], kinds: Sequence[str]) -> str | None:
    se = sorted(expected, key=lambda r: _sort_key(r, kinds))
    sa = sorted(actual, key=lambda r: _sort_key(r, kinds))
    for e, a in zip(se, sa):
        if not _rows_equal(e, a, kinds):
            return f"row {a} where {e} was expected"
    return None
