"""The output arithmetic of a view answer in numpy: COUNT, SUM and AVG from re-aggregated partials.

An Arrow compute call costs 10-70 µs of fixed overhead on this machine whatever the rows, and a
view answer's outputs took two to five of them per aggregate (fill_null, cast, divide, if_else);
the numpy equivalents cost a few µs. Measured in one process at 15M rows, the 68 view-routed
judges and example queries: median `answer` 557 -> 482 µs. (A numpy group-by was measured too and
lost to Acero's: 195 against 117 µs median; the group-by stays Arrow.) Each function returns None
where a NULL needs Arrow's semantics, and the caller then takes the Arrow path: same answer,
slower. Must not filter, group or order rows.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def _numeric(arr: pa.Array) -> bool:
    return pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)


def _plain(arr: pa.Array | pa.ChunkedArray) -> pa.Array | None:
    """`arr` as one array without NULLs, or None."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return None if arr.null_count else arr


def count(partial: pa.Array | pa.ChunkedArray) -> pa.Array | None:
    """COUNT from its summed partial: BIGINT."""
    arr = _plain(partial)
    if arr is None or not pa.types.is_integer(arr.type):
        return None
    return arr if arr.type == pa.int64() else pa.array(arr.to_numpy().astype(np.int64))


def scaled_sum(partial: pa.Array | pa.ChunkedArray, scale: int | None) -> pa.Array | None:
    """SUM as DOUBLE from its summed partial, divided by `scale` when it is a scaled int64."""
    arr = _plain(partial)
    if arr is None or not _numeric(arr):
        return None
    values = arr.to_numpy().astype(np.float64)
    return pa.array(values / float(scale) if scale else values)


def average(total: pa.Array | pa.ChunkedArray, nonnull: pa.Array | pa.ChunkedArray,
            scale: int | None) -> pa.Array | None:
    """AVG from summed partials: the sum over the non-NULL count, NULL where that count is 0."""
    sums, nn = scaled_sum(total, scale), _plain(nonnull)
    if sums is None or nn is None or not pa.types.is_integer(nn.type):
        return None
    counts = nn.to_numpy().astype(np.float64)
    empty = counts == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        values = sums.to_numpy() / np.where(empty, 1.0, counts)
    return pa.array(values, mask=empty if empty.any() else None)
