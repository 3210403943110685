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
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from analytics.query.model import Agg, Query
from analytics.query.schema import COLUMNS

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


_TIME_FORMATS = {"date": ("s", "%Y-%m-%d"), "week": ("s", "%Y-%m-%d"), "hour": ("s", "%Y-%m-%d %H:%M:%S"),
                 # at millisecond unit Arrow prints %S with three decimals: "SS.fff"
                 "timestamp": ("ms", "%Y-%m-%d %H:%M:%S")}


def format_column(column: pa.ChunkedArray, kind: str) -> list[str]:
    """One output column as printed strings, formatted in bulk (Arrow for time, repr for floats)."""
    if kind in _TIME_FORMATS and (pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)):
        unit, fmt = _TIME_FORMATS[kind]
        if pa.types.is_timestamp(column.type) and column.type.tz is not None:
            column = column.cast(pa.timestamp(column.type.unit))  # a zoned value holds a UTC instant: keep it
        naive = pc.cast(column, pa.timestamp(unit), safe=False)  # truncates below the printed unit
        return [v if v is not None else "" for v in pc.strftime(naive, format=fmt).to_pylist()]
    values = column.to_pylist()
    if pa.types.is_floating(column.type):
        return ["" if v is None else repr(v) for v in values]
    return [format_value(v, kind) for v in values]


def to_rows(query: Query, table: pa.Table) -> list[list[str]]:
    """The answer as printed strings, in the table's row order."""
    kinds = [output_kind(i) for i in query.select]
    columns = [format_column(table.column(i), k) for i, k in enumerate(kinds)]
    return [list(row) for row in zip(*columns)] if columns else []


def to_csv_text(query: Query, table: pa.Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(query.output_names)
    writer.writerows(to_rows(query, table))
    return buf.getvalue()


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
    # numbers are rounded so two spellings within tolerance usually sort next to each other
    key = []
    for v, k in zip(row, kinds):
        if k in ("float", "int") and v:
            key.append((0, float(f"{float(v):.9g}"), ""))
        else:
            key.append((1, 0.0, v))
    return tuple(key)


def _cmp_cell(a: str, b: str, kind: str, desc: bool) -> int:
    """Order of two printed cells as DuckDB sorts them (NULL last either way); 0 within tolerance."""
    if _cell_equal(a, b, kind):
        return 0
    if a == "" or b == "":
        return 1 if a == "" else -1
    if kind in ("float", "int"):
        c = (float(a) > float(b)) - (float(a) < float(b))
    else:
        c = (a > b) - (a < b)
    return -c if desc else c


def _cmp_keys(r1: Sequence[str], r2: Sequence[str], order: Sequence[tuple[int, str, bool]]) -> int:
    for i, kind, desc in order:
        c = _cmp_cell(r1[i], r2[i], kind, desc)
        if c:
            return c
    return 0


def compare_rows(query: Query, expected: list[list[str]], actual: list[list[str]],
                 expected_header: Sequence[str] | None = None,
                 actual_header: Sequence[str] | None = None) -> str | None:
    """None when `actual` is the same answer as `expected`, else a one-line reason.

    Floats compare to relative 1e-9. Without `order_by` rows compare as multisets (with `limit`
    and no order, only the row count is determined). With `order_by`, `actual` must be sorted by
    the order keys (keys equal within tolerance are ties, in any order) and hold the same rows;
    with `limit` cutting through a group of tied keys, which of the tied rows are kept is free.
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
    if not query.order_by:
        return _multiset_diff(expected, actual, kinds)
    order = [(names.index(o.name), kinds[names.index(o.name)], o.desc) for o in query.order_by]
    for n in range(1, len(actual)):
        if _cmp_keys(actual[n - 1], actual[n], order) > 0:
            return f"rows {n} and {n + 1} out of order: {actual[n - 1]} before {actual[n]}"
    truncated = query.limit is not None and len(expected) == query.limit and expected
    if truncated:
        last = expected[-1]
        for rows in (expected, actual):
            if _cmp_keys(rows[-1], last, order) != 0:
                return f"last row's order key differs: {rows[-1]} where {last} was expected"
        keep_e = [r for r in expected if _cmp_keys(r, last, order) != 0]
        keep_a = [r for r in actual if _cmp_keys(r, last, order) != 0]
        if len(keep_e) != len(keep_a):
            return f"{len(keep_a)} rows before the tied cut-off where {len(keep_e)} were expected"
        return _multiset_diff(keep_e, keep_a, kinds)
    return _multiset_diff(expected, actual, kinds)


def _multiset_diff(expected: list[list[str]], actual: list[list[str]], kinds: Sequence[str]) -> str | None:
    se = sorted(expected, key=lambda r: _sort_key(r, kinds))
    sa = sorted(actual, key=lambda r: _sort_key(r, kinds))
    if all(_rows_equal(e, a, kinds) for e, a in zip(se, sa)):
        return None
    # rounding put near-equal numbers on either side of a boundary: match row by row instead
    numeric = [k in ("float", "int") for k in kinds]
    pool: dict[tuple, list[list[str]]] = {}
    for e in expected:
        pool.setdefault(tuple(v for v, num in zip(e, numeric) if not num), []).append(e)
    for a in actual:
        candidates = pool.get(tuple(v for v, num in zip(a, numeric) if not num), [])
        match = next((i for i, e in enumerate(candidates) if _rows_equal(e, a, kinds)), None)
        if match is None:
            near = candidates[0] if candidates else None
            return f"row {a} where {near} was expected" if near else f"row {a} not expected"
        candidates.pop(match)
    return None
