"""Helpers shared by the test modules: the public examples and one targeted query per catalog view,
comparing answers with the baseline and with each other, a lake copy without what earlier runs
left, and a run of the adaptive workload family with telemetry. Imported by tests, never by the
package."""
from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from analytics.batch.runner import SafeBatchRunner
from analytics.batch.telemetry import read_events
from analytics.bench.workload_family import family
from analytics.checks.baseline import baseline_query
from analytics.query.model import parse_query
from analytics.query.results import compare_rows, output_kind, to_rows
from analytics.serving.workbench import Workbench

EXAMPLES = json.loads((Path(__file__).parent.parent / "queries" / "examples.json").read_text())

# one query per catalog view, so each is proven by at least one differential comparison
TARGETED = {
    "mv_day_advertiser_id_wide": {"select": ["day", {"SUM": "bid_price"}], "from": "events", "group_by": ["day"],
                                  "where": [{"col": "advertiser_id", "op": "eq", "val": 7},
                                            {"col": "type", "op": "eq", "val": "impression"}]},
    "mv_day_country_wide": {"select": ["week", "country", {"COUNT": "*"}], "from": "events", "group_by": ["week", "country"],
                            "where": [{"col": "type", "op": "eq", "val": "click"}]},
    "mv_day_type_wide": {"select": ["week", {"AVG": "bid_price"}, {"MAX": "bid_price"}], "from": "events", "group_by": ["week"],
                         "order_by": [{"col": "week", "dir": "desc"}]},
    "mv_hour_advertiser_id_wide": {"select": ["hour", {"COUNT": "*"}], "from": "events", "group_by": ["hour"],
                                   "where": [{"col": "advertiser_id", "op": "in", "val": [3, "4"]},
                                             {"col": "day", "op": "eq", "val": "2024-02-29"}]},
    "mv_all_adv_type_counts": EXAMPLES[3],
    "mv_day_publisher_id_wide": {"select": ["publisher_id", {"SUM": "bid_price"}], "from": "events",
                                 "group_by": ["publisher_id"], "where": [{"col": "day", "op": "between", "val": ["2024-12-30", "2024-12-31"]}],
                                 "order_by": [{"col": "SUM(bid_price)", "dir": "desc"}], "limit": 5},
    "mv_day_country_publisher_id_wide": EXAMPLES[1],
    "mv_day_country_advertiser_id_wide": {"select": ["advertiser_id", {"COUNT": "*"}], "from": "events", "group_by": ["advertiser_id"],
                                          "where": [{"col": "country", "op": "eq", "val": "JP"},
                                                    {"col": "day", "op": "between", "val": ["2024-02-28", "2024-03-01"]}]},
    "mv_hour_type_wide": {"select": ["hour", {"COUNT": "*"}], "from": "events", "group_by": ["hour"],
                          "where": [{"col": "hour", "op": "between", "val": ["2024-12-31 00:00", "2024-12-31 23:00"]}]},
    "mv_hour_country_wide": {"select": ["hour", "country", {"SUM": "total_price"}], "from": "events", "group_by": ["hour", "country"],
                             "where": [{"col": "day", "op": "eq", "val": "2024-07-01"}, {"col": "type", "op": "eq", "val": "purchase"}]},
    "mv_minute_type_wide": EXAMPLES[4],
    "mv_all_country_publisher_id": {"select": ["country", "publisher_id", {"MIN": "bid_price"}, {"COUNT": "bid_price"}],
                                    "from": "events", "group_by": ["country", "publisher_id"],
                                    "order_by": [{"col": "COUNT(bid_price)", "dir": "desc"}], "limit": 10},
    "mv_all_user_id": {"select": ["type", {"COUNT": "*"}, {"AVG": "bid_price"}, {"SUM": "total_price"}], "from": "events",
                       "where": [{"col": "user_id", "op": "in", "val": [7, 4014, 999_999, "12"]}], "group_by": ["type"],
                       "order_by": [{"col": "type"}]},
}


def edit_json(path: Path, fn: Callable[[Any], None]) -> None:
    """Change a JSON file (a registry, a manifest) in place as `fn` changes its parsed document: a
    writer's bug, or a state the code cannot produce, made by hand."""
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=1))


def fresh(lake: Path) -> Path:
    """A lake copy without what earlier runs on the shared lake left (cache, telemetry)."""
    for d in ("_cache", "_telemetry"):
        shutil.rmtree(lake / d, ignore_errors=True)
    return lake


def check_against_baseline(baseline, workbench, raw_query, use_views=True, expected=None):
    """The workbench's answer to `raw_query` must be the baseline's; returns the plan that answered.
    `expected`: the baseline's rows, when the caller checks several answers against one baseline query."""
    q = parse_query(raw_query)
    if expected is None:
        expected = to_rows(q, baseline_query(baseline, q))
    table, plan = workbench.execute(q, use_views=use_views)
    reason = compare_rows(q, expected, to_rows(q, table))
    assert reason is None, f"{plan.route}: {reason}\nquery: {json.dumps(raw_query)}\n{plan.describe()}"
    return plan


# ---- comparing answers --------------------------------------------------------------------------
def _quantize(q, rows: list[list[str]]) -> list[list[str]]:
    """Float cells of order keys to 10 significant digits: keys equal within tolerance become ties."""
    names = q.output_names
    idx = {names.index(o.name) for o in q.order_by if output_kind(q.select[names.index(o.name)]) == "float"}
    return [[f"{float(v):.10g}" if i in idx and v else v for i, v in enumerate(r)] for r in rows]


def _sorted(q, rows: list[list[str]]) -> list[list[str]]:
    names = q.output_names
    keys = [(names.index(o.name), o.desc, output_kind(q.select[names.index(o.name)])) for o in q.order_by]

    def cmp(a: list[str], b: list[str]) -> int:
        for i, desc, kind in keys:
            x, y = a[i], b[i]
            if x == y:
                continue
            if x == "" or y == "":  # NULLs last, as DuckDB orders them
                return 1 if x == "" else -1
            if kind in ("int", "float"):
                x, y = float(x), float(y)
            c = (x > y) - (x < y)
            return -c if desc else c
        return 0

    return sorted(rows, key=functools.cmp_to_key(cmp))


def same_answer(q, expected: list[list[str]], actual: list[list[str]]) -> str | None:
    """`compare_rows`, except that rows whose float order keys tie within 1e-9 may come in either
    order (summing in another order moves the last bit, and with it a tie-break)."""
    why = compare_rows(q, expected, actual)
    if why is None or not q.order_by:
        return why
    if not any(output_kind(q.select[q.output_names.index(o.name)]) == "float" for o in q.order_by):
        return why
    return compare_rows(q, _sorted(q, _quantize(q, expected)), _sorted(q, _quantize(q, actual)))


def tables_match(q, expected, actual) -> str | None:
    """None when two Arrow answers are the same answer: equal tables (up to row order where free), else `same_answer`."""
    if expected.schema != actual.schema:
        return f"schema {actual.schema} differs from {expected.schema}"
    if expected.equals(actual):
        return None
    keys = [(n, "ascending") for n in expected.column_names]
    if expected.sort_by(keys).equals(actual.sort_by(keys)):  # the same rows...
        if not q.order_by:
            return None
        order = [o.name for o in q.order_by]
        if expected.select(order).equals(actual.select(order)):  # ...in the same order of keys
            return None
    return same_answer(q, to_rows(q, expected), to_rows(q, actual))


def record_family(lake: Path, seed: int, n: int = 40) -> list[dict]:
    """Run `n` queries of the adaptive workload family `seed` (telemetry on); the events recorded."""
    with Workbench(lake) as wb:
        runner = SafeBatchRunner(wb, cache=False, persist_cache=False)
        runner.run(family(seed, n), batching=False)
        runner.close()  # flushes the telemetry
    return list(read_events(lake))


def state_file(lake: Path) -> Path:
    """The state file of the lake's newest Delta version: where a test edits what the lake says of itself."""
    from analytics.lake.table import latest_version, state_path
    return state_path(lake, latest_version(lake))


def resident_pages(path: Path) -> set[int]:
    """The numbers of the file's pages now in the page cache (mincore(2) over a fresh mapping,
    which itself reads nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                              ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    try:
        assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0, ctypes.get_errno()
    finally:
        libc.munmap(addr, size)
    return {i for i in range(pages) if vec[i] & 1}


def pages_of(start: int, stop: int) -> set[int]:
    """The page numbers holding bytes [start, stop)."""
    return set(range(start // mmap.PAGESIZE, -(-stop // mmap.PAGESIZE))) if stop > start else set()
