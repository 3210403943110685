"""The fast path's outputs, order and limit (`views.answer.finish`) against plain Arrow: a top k over many
rows (found by a numpy partition on the first key, ties kept) equals a full sort cut to k, ties on
the first key broken by the next keys, NULLs last; COUNT/SUM/AVG equal Arrow's arithmetic."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from analytics.query.model import parse_query
from analytics.views.answer import finish


def _table(n: int, seed: int, nulls: bool) -> pa.Table:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, n)  # many ties on the first key
    prices = pa.array(rng.integers(0, 1000, n) / 100, mask=(rng.random(n) < 0.01) if nulls else None)
    minutes = pa.array([f"2024-01-01 {i // 60 % 24:02d}:{i % 60:02d}" for i in rng.permutation(n)])
    return pa.table({"minute": minutes, "COUNT(*)": pa.array(counts, type=pa.int64()), "MAX(bid_price)": prices})


@pytest.mark.parametrize("first", ["COUNT(*)", "MAX(bid_price)", "minute"])
@pytest.mark.parametrize("desc", [True, False])
@pytest.mark.parametrize("nulls", [False, True])
def test_top_k_equals_a_full_sort(first, desc, nulls):
    table = _table(finish.SELECT_K_ROWS + 5_000, seed=len(first) + desc, nulls=nulls)
    others = [c for c in ("COUNT(*)", "minute", "MAX(bid_price)") if c != first]
    order = [{"col": first, "dir": "desc" if desc else "asc"}] + [{"col": c, "dir": "asc"} for c in others]
    q = parse_query({"select": ["minute", {"COUNT": "*"}, {"MAX": "bid_price"}], "from": "events",
                     "group_by": ["minute"], "order_by": order, "limit": 25})
    keys = [(o.name, "descending" if o.desc else "ascending", "at_end") for o in q.order_by]
    want = table.take(pc.sort_indices(table, sort_keys=keys)).slice(0, 25)
    assert finish.order_and_limit(table, q).equals(want)


@pytest.mark.parametrize("spread", [3, 1_000, 10**12])
@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint16, np.float64])
def test_top_candidates_are_every_value_as_good_as_the_kth_best(spread, dtype):
    """Integers past the sampling size are narrowed by a sample first: the positions must be those of
    the plain definition (every value at least as good as the k-th best, ties kept, in order),
    whatever the ties: few distinct values, all equal, the best ones between the sample's rows."""
    rng = np.random.default_rng(spread)
    n = 300_000
    values = rng.integers(0, min(spread, np.iinfo(dtype).max if dtype != np.float64 else spread), n).astype(dtype)
    values[rng.integers(0, n, 3)] = values.max() if spread > 3 else values[0]  # a few ties at the top
    for k in (1, 10, 25):
        for desc in (True, False):
            kth = np.sort(values)[::-1][k - 1] if desc else np.sort(values)[k - 1]
            want = np.flatnonzero(values >= kth if desc else values <= kth)
            assert np.array_equal(finish.top_candidates(values, desc, k), want), (k, desc)
    same = np.full(n, 7, dtype=dtype)
    assert np.array_equal(finish.top_candidates(same, True, 10), np.arange(n))


def test_outputs_equal_arrow_arithmetic_with_and_without_nulls():
    sums = pa.array([10_000, 25_000, None, 0], type=pa.int64())
    nn = pa.array([2, 5, 0, 0], type=pa.int64())
    for s, c in ((sums, nn), (sums.slice(0, 2), nn.slice(0, 2))):
        assert finish.count(c).to_pylist() == pc.cast(pc.fill_null(c, 0), pa.int64()).to_pylist()
        assert finish.total(s, 10_000).to_pylist() == pc.divide(pc.cast(s, pa.float64()), 10_000.0).to_pylist()
        expected = pc.divide(pc.divide(pc.cast(s, pa.float64()), 10_000.0),
                             pc.if_else(pc.equal(pc.cast(c, pa.float64()), 0), None, pc.cast(c, pa.float64())))
        assert finish.average(s, c, 10_000).to_pylist() == expected.to_pylist()
    assert finish.average(pa.array([0], pa.int64()), pa.array([0], pa.int64()), None).to_pylist() == [None]
