"""The outputs of a view answer: COUNT, SUM and AVG from re-aggregated partials, then order and limit.

An Arrow compute call costs 10-70 µs of fixed overhead on this machine whatever the rows, and a
view answer's outputs took two to five of them per aggregate (fill_null, cast, divide, if_else);
the numpy equivalents cost a few µs. Measured in one process at 15M rows, the 68 view-routed
judges and example queries: median `answer` 557 -> 482 µs. The numpy re-aggregation
(`reaggregate`) uses the same arithmetic; on the Arrow path (text keys, sparse key products) the
sort is Arrow's, a top-k selection only over many rows (its set-up costs ~0.7 ms). Owns too the
last guard of every view answer, `repeated_keys`: an answer whose group keys repeat is a wrong
answer, never written. Must not filter or group rows.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analytics.query.model import Query

# Top k by selection pays only on many rows: under this, one sort is cheaper (a select_k call costs
# ~0.7 ms of set-up on this machine, a sort of a few thousand rows ~40 µs)
SELECT_K_ROWS = 100_000
# top_candidates samples integers when they number over _SAMPLED_ABOVE per wanted row, taking
# _SAMPLE_PER_K per wanted row
_SAMPLED_ABOVE = 1024
_SAMPLE_PER_K = 64


def _numeric(arr: pa.Array) -> bool:
    return pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)


def _plain(arr: pa.Array | pa.ChunkedArray) -> pa.Array | None:
    """`arr` as one array without NULLs, or None."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return None if arr.null_count else arr


def count(partial: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """COUNT from its summed partial: BIGINT, 0 where no row was summed."""
    arr = _plain(partial)
    if arr is not None and pa.types.is_integer(arr.type):
        return arr if arr.type == pa.int64() else pa.array(arr.to_numpy().astype(np.int64))
    return pc.cast(pc.fill_null(partial, 0), pa.int64())


def doubles(values: np.ndarray, scale: int | None) -> np.ndarray:
    """Summed partials as DOUBLE, divided by `scale` when they are scaled int64."""
    values = values.astype(np.float64)
    return values / float(scale) if scale else values


def mean(sums: np.ndarray, nonnull: np.ndarray, scale: int | None) -> tuple[np.ndarray, np.ndarray]:
    """AVG from summed partials, and where it is NULL (no non-NULL value summed)."""
    counts = nonnull.astype(np.float64)
    empty = counts == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return doubles(sums, scale) / np.where(empty, 1.0, counts), empty


def total(partial: pa.Array | pa.ChunkedArray, scale: int | None) -> pa.Array | pa.ChunkedArray:
    """SUM as DOUBLE from its summed partial, divided by `scale` when it is a scaled int64."""
    arr = _plain(partial)
    if arr is not None and _numeric(arr):
        return pa.array(doubles(arr.to_numpy(), scale))
    as_double = pc.cast(partial, pa.float64())
    return pc.divide(as_double, float(scale)) if scale else as_double


def average(sums: pa.Array | pa.ChunkedArray, nonnull: pa.Array | pa.ChunkedArray,
            scale: int | None) -> pa.Array | pa.ChunkedArray:
    """AVG from summed partials: the sum over the non-NULL count, NULL where that count is 0."""
    arr, nn = _plain(sums), _plain(nonnull)
    if arr is not None and nn is not None and _numeric(arr) and pa.types.is_integer(nn.type):
        values, empty = mean(arr.to_numpy(), nn.to_numpy(), scale)
        return pa.array(values, mask=empty if empty.any() else None)
    counts = pc.cast(nonnull, pa.float64())
    return pc.divide(total(sums, scale), pc.if_else(pc.equal(counts, 0), None, counts))


def top_candidates(values: np.ndarray, desc: bool, k: int) -> np.ndarray:
    """The positions of the values at least as good as the k-th best (ties kept): a superset of any
    top k, found by one numpy partition. Many integers are first narrowed by a sample's k-th best,
    which is no better than the k-th best of all: the values at least as good as it hold every value
    at least as good as that (a partition of 525K counts took 5 ms, a compare 0.2 ms)."""
    if values.dtype.kind in "iu" and len(values) > _SAMPLED_ABOVE * k:
        sample = values[::len(values) // (_SAMPLE_PER_K * k)]
        bound = _kth(sample, desc, k)
        near = np.flatnonzero(values >= bound if desc else values <= bound)
        if len(near) < len(values):
            return near[top_candidates(values[near], desc, k)]
    kth = _kth(values, desc, k)
    return np.flatnonzero(values >= kth if desc else values <= kth)


def _kth(values: np.ndarray, desc: bool, k: int) -> Any:
    """The k-th best of `values` (largest first when `desc`)."""
    return np.partition(values, len(values) - k)[len(values) - k] if desc else np.partition(values, k - 1)[k - 1]


def _top_candidates(table: pa.Table, name: str, desc: bool, k: int) -> pa.Table | None:
    """The rows of `top_candidates` by a numeric column without NULLs; else None."""
    arr = _plain(table.column(name))
    if arr is None or not _numeric(arr):
        return None
    return table.take(top_candidates(arr.to_numpy(), desc, k))


def order_and_limit(table: pa.Table, query: Query) -> pa.Table:
    """`table` in the query's order (NULLs last), cut to its limit."""
    if query.order_by:
        keys = [(o.name, "descending" if o.desc else "ascending", "at_end") for o in query.order_by]
        if query.limit is not None and 0 < query.limit < table.num_rows and table.num_rows > SELECT_K_ROWS:
            # top k without sorting every row: the rows tied with or better than the k-th on the
            # first key (a numpy partition), else Arrow's selection (which places NULLs
            # differently, hence only without NULL keys); then the few left are sorted
            first = query.order_by[0]
            top = _top_candidates(table, first.name, first.desc, query.limit)
            if top is not None:
                table = top
            elif not any(table.column(o.name).null_count for o in query.order_by):
                table = table.take(pc.select_k_unstable(table, query.limit, [k[:2] for k in keys]))
        table = table.take(pc.sort_indices(table, sort_keys=keys))
    return table.slice(0, query.limit) if query.limit is not None else table


def repeated_keys(table: pa.Table, keys: tuple[str, ...]) -> int:
    """How many rows of an answer repeat an earlier row's group key: 0 for every correct answer
    (each group is one row), so anything else means the view answered wrongly. One dictionary
    encoding per key (NULL a key of its own) and one lexsort of the codes: ~20 µs on a few rows."""
    n = table.num_rows
    if n < 2 or not keys:
        return 0
    codes = []
    for k in keys:
        column = table.column(k)
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        indices = pc.dictionary_encode(column, null_encoding="encode").indices
        codes.append(np.frombuffer(indices.buffers()[1], dtype=np.int32, count=n, offset=indices.offset * 4))
    order = np.lexsort(codes[::-1])
    same = np.ones(n - 1, dtype=bool)
    for c in codes:
        ordered = c[order]
        same &= ordered[1:] == ordered[:-1]
    return int(same.sum())
