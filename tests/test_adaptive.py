"""Adaptive views: telemetry shapes -> advice -> `build --adaptive` -> served like catalog views.

Differential: the second workload family (`bench/workload_family.py`) answered from adaptive views
equals the lake and the baseline. Advice is deterministic for a given log; a budget of zero builds
nothing; retiring a view while a query is planned on it neither errors nor answers wrongly; a
corrupt telemetry line is skipped with a warning naming it.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from helpers import check_against_baseline, record_family

from analytics.adaptive.advice import advise, explain_lake, minimal_view
from analytics.adaptive.build import build_adaptive
from analytics.batch.telemetry import log_path, read_events
from analytics.bench.workload_family import family
from analytics.checks.baseline import baseline_query
from analytics.core import db
from analytics.lake.index.keyfilter import META_FILE, KeyFilter, key_hashes
from analytics.lake.index.store import usable
from analytics.lake.state import Lake
from analytics.query.model import parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.query.shape import query_shape
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench
from analytics.views.adaptive_catalog import PREFIX, adaptive_path, index_def, load_adaptive, usable_indexes
from analytics.views.registry import VIEWS_DIR, load_registry

GIB = 2**30


def test_shapes_drop_literal_values_but_keep_the_type_filter():
    a, b = family(1, 10), family(2, 10)
    for qa, qb in zip(a, b):
        assert qa != qb  # other literal values...
        assert query_shape(parse_query(qa)) == query_shape(parse_query(qb))  # ...same shape
    shape = query_shape(parse_query(a[0]))
    assert shape["types"] == ["impression"] and ["publisher_id", "in", 3] in shape["where"]
    assert "2024" not in json.dumps(shape)


def test_family_b_from_adaptive_views_equals_lake_and_baseline(adaptive_lake, baseline):
    routes, indexes = Counter(), Counter()
    with Workbench(adaptive_lake) as wb:
        for seed in (2, 3):
            for raw in family(seed, 40):
                plan = check_against_baseline(baseline, wb, raw)
                routes[plan.route] += 1
                indexes[plan.index] += 1
                check_against_baseline(baseline, wb, raw, use_views=False)
        adaptive = {r: n for r, n in routes.items() if r.startswith(PREFIX)}
        assert len(adaptive) >= 3 and sum(adaptive.values()) >= 30, routes
        # user_id and auction_id point filters read the lake indexes (exactly, as checked above)
        assert {i for i in indexes if i} == {ix for ix in load_adaptive(adaptive_lake)["indexes"]}, indexes
        assert sum(n for i, n in indexes.items() if i) >= 16, indexes
        # the SQL path over the adaptive views' Parquet answers the same
    with Workbench(adaptive_lake, fast_path=False) as sql_only:
        for raw in family(4, 20):
            check_against_baseline(baseline, sql_only, raw)


def test_adaptive_views_are_checked_registered_and_carry_why(adaptive_lake):
    state = load_adaptive(adaptive_lake)
    registry = load_registry(adaptive_lake)
    for name, entry in state["views"].items():
        assert name.startswith(PREFIX) and name in registry
        assert registry[name].columns and registry[name].rollup > 0
        chosen = entry["chosen"]
        assert chosen["queries"] > 0 and chosen["shapes"] and chosen["est_rows"] > 0
    # per-user and per-auction keys: a lake index serves them for fewer bytes (or the view would not
    # beat the lake): refused, with the reason
    refused = {tuple(p["dims"]): p["reason"] for p in state["advice"]["refused"]}
    assert any("user_id" in dims for dims in refused) and any("auction_id" in dims for dims in refused)
    assert all(any(w in why for w in ("rollup", "budget", "lake index")) for why in refused.values()), refused


def test_the_view_registry_report_lists_adaptive_views_with_why(adaptive_lake):
    from analytics.reports.view_registry import registry_table
    from analytics.views.catalog import VIEWS

    state = load_adaptive(adaptive_lake)
    with Workbench(adaptive_lake) as wb:
        rows = {r["view"]: r for r in registry_table(adaptive_lake, wb.warm())}
    assert set(rows) == set(VIEWS) | set(state["views"])
    for name, entry in state["views"].items():
        assert rows[name]["healthy"] and rows[name]["rows"] == load_registry(adaptive_lake)[name].rows
        assert entry["note"] in rows[name]["origin"]
    assert {rows[n]["origin"] for n in VIEWS} == {"catalog"}


def test_explain_says_why_a_lake_query_has_no_adaptive_view(adaptive_lake):
    by_name = {t: q for t, q in zip(("pub", "min", "cph", "ser", "adv", "user", "users", "auction", "ts"), family(5, 9))}
    lines = explain_lake(str(adaptive_lake), parse_query(by_name["users"]))  # "user" is the per-user view's
    assert "would cover it; not built: " in lines[0] and ("rollup" in lines[0] or "lake index" in lines[0]), lines
    assert "ts (millisecond precision)" in explain_lake(str(adaptive_lake), parse_query(by_name["ts"]))[0]
    out = subprocess.run([sys.executable, "-m", "analytics", "explain", "--lake", str(adaptive_lake), "--queries",
                          str(Path(__file__).parent.parent / "queries" / "adaptive_b.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"route: {PREFIX}" in out.stdout and "adaptive: " in out.stdout


def test_advice_is_deterministic_for_a_given_log(adaptive_lake):
    lake = Lake.open(adaptive_lake)
    events = list(read_events(adaptive_lake))
    first = json.dumps(advise(lake, events, GIB, state={"views": {}, "indexes": {}, "retired": {}, "advice": None}),
                       sort_keys=True)
    again = json.dumps(advise(lake, list(read_events(adaptive_lake)), GIB,
                              state={"views": {}, "indexes": {}, "retired": {}, "advice": None}), sort_keys=True)
    assert first == again
    assert json.loads(first)["proposals"]


def test_budget_zero_builds_nothing(lake_copy):
    shutil.rmtree(lake_copy / "_telemetry", ignore_errors=True)
    events = record_family(lake_copy, seed=1, n=20)
    before = load_registry(lake_copy)
    summary = build_adaptive(str(lake_copy), events, budget=0, progress=False)
    assert summary["built"] == [] and summary["bytes"] == 0
    assert load_adaptive(lake_copy)["views"] == {}
    assert load_registry(lake_copy) == before
    assert not any(p.name.startswith(PREFIX) for p in (lake_copy / VIEWS_DIR).iterdir())
    assert all("budget" in p["reason"] or "rollup" in p["reason"] for p in summary["refused"])


def test_a_small_budget_is_respected(lake_copy):
    shutil.rmtree(lake_copy / "_telemetry", ignore_errors=True)
    events = record_family(lake_copy, seed=1, n=20)
    budget = 3 * 2**20
    summary = build_adaptive(str(lake_copy), events, budget=budget, progress=False)
    assert summary["bytes"] <= budget
    reg = load_registry(lake_copy)
    assert sum(reg[n].bytes + reg[n].serving["bytes"] for n in load_adaptive(lake_copy)["views"]) <= budget


def test_retiring_a_view_while_queries_use_it(lake_copy, baseline):
    shutil.rmtree(lake_copy / "_telemetry", ignore_errors=True)
    events = record_family(lake_copy, seed=1, n=20)
    build_adaptive(str(lake_copy), events, budget=2 * GIB, progress=False)
    queries = [q for q in family(2, 20)]
    wb = Workbench(lake_copy)
    planned = [(parse_query(q), wb.plan(q)) for q in queries]
    on_adaptive = [(q, p) for q, p in planned if p.route.startswith(PREFIX)]
    assert on_adaptive
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_querying() -> None:
        con = baseline.cursor()  # a DuckDB connection serves one thread at a time
        try:
            while not stop.is_set():
                for raw in queries:
                    check_against_baseline(con, wb, raw)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    t = threading.Thread(target=keep_querying)
    t.start()
    try:
        # nothing served for longer than retire_after: every adaptive view is retired
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
        summary = build_adaptive(str(lake_copy), [], budget=2 * GIB, retire_after_s=3600, now=later, progress=False)
        assert summary["retired"] and load_adaptive(lake_copy)["views"] == {}
        # a plan made before the retirement still answers, exactly
        for q, plan in on_adaptive:
            table, _ = wb.execute(q, plan=plan)
            assert compare_rows(q, to_rows(q, baseline_query(baseline, q)), to_rows(q, table)) is None
        # past the grace the files go; new plans no longer route there
        build_adaptive(str(lake_copy), [], budget=2 * GIB, retire_after_s=3600,
                       now=later + dt.timedelta(hours=2), progress=False)
        assert not any(p.name.startswith(PREFIX) for p in (lake_copy / VIEWS_DIR).iterdir())
        for q, _ in on_adaptive:
            assert not wb.plan(q).route.startswith(PREFIX)
    finally:
        stop.set()
        t.join()
        wb.close()
    assert not errors, errors[0]


def test_a_corrupt_telemetry_log_is_skipped_line_by_line(adaptive_lake, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(adaptive_lake, lake, ignore=shutil.ignore_patterns("views"))
    good = log_path(adaptive_lake).read_text().splitlines()
    lines = [good[0], "{not json", "[1, 2]", *good[1:], good[-1][: len(good[-1]) // 2]]  # the last one torn
    log_path(lake).write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "analytics", "advise", "--lake", str(lake)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "line 2 skipped" in proc.stderr and "line 3 skipped" in proc.stderr
    assert f"line {len(lines)} skipped" in proc.stderr
    assert "propose " in proc.stdout
    assert not adaptive_path(lake).exists()  # advice only writes nothing


def test_minimal_view_refuses_what_no_rollup_answers():
    for raw, why in (({"select": ["ts"], "from": "events"}, "raw rows"),
                     ({"select": [{"COUNT": "*"}], "from": "events",
                       "where": [{"col": "ts", "op": "lt", "val": "2024-02-01"}]}, "ts"),
                     ({"select": [{"COUNT": "*"}], "from": "events",
                       "where": [{"col": "bid_price", "op": "gt", "val": 2}]}, "price"),
                     ({"select": [{"SUM": "user_id"}], "from": "events"}, "derive")):
        view, reason = minimal_view(query_shape(parse_query(raw)))
        assert view is None and why in reason, (raw, reason)
    view, _ = minimal_view(query_shape(parse_query(family(1, 1)[0])))
    assert view is not None and view.grain == "hour" and view.dims == ("publisher_id",)
    assert view.types == ("impression",)


def test_a_lake_index_serves_only_the_lake_version_it_was_built_from(adaptive_lake, tmp_path):
    lake = Lake.open(adaptive_lake)
    state = load_adaptive(adaptive_lake)
    assert len(usable_indexes(lake, state)) == len(state["indexes"]) >= 2
    for name, record in state["indexes"].items():
        index = index_def(name, record)
        assert usable(index, lake, record) is None
        assert record["rows_by_type"] == {t: lake.state["totals"]["lake_by_type"].get(t, 0) for t in index.types}
        assert "lake version" in usable(index, lake, {**record, "lake_version": "other"})
        assert "definition changed" in usable(index, lake, {**record, "columns": record["columns"][:1] + ["country"]})
        assert "file missing" in usable(index, lake, {**record, "dir": "indexes/nope/v9"})
    # a query reading a column the index does not store stays on the whole lake
    with Workbench(adaptive_lake) as wb:
        plan = wb.plan({"select": ["publisher_id", {"COUNT": "*"}], "from": "events", "group_by": ["publisher_id"],
                        "where": [{"col": "user_id", "op": "eq", "val": 5}]})
        assert plan.route == LAKE and plan.index is None


def _auction_filter(lake: Path) -> tuple[str, dict]:
    state = load_adaptive(lake)
    name, record = next((n, r) for n, r in state["indexes"].items() if r["key"] == "auction_id")
    return name, record


def test_the_auction_filter_finds_every_row_group_of_a_key(adaptive_lake):
    """Ground truth read from the lake's files with pyarrow: for keys of every row group, the filter
    names every row group holding the key (a Bloom filter may add row groups, never drop one),
    rarely one that does not, and it is a fraction of the key column it replaces."""
    import pyarrow.parquet as pq

    lake = Lake.open(adaptive_lake)
    name, record = _auction_filter(adaptive_lake)
    assert record["kind"] == "filter" and record["bytes"] > 0
    kf = KeyFilter(adaptive_lake / record["dir"])
    position = {(t, rel, rg): g for g, (t, rel, rg, _) in enumerate(kf.groups)}
    holding: dict[str, set[int]] = {}
    key_bytes = 0
    for seg in lake.state["segments"]:
        for t, rel in seg["files"].items():
            pf = pq.ParquetFile(adaptive_lake / rel)
            for rg in range(pf.metadata.num_row_groups):
                col = pf.schema_arrow.names.index("auction_id")
                key_bytes += pf.metadata.row_group(rg).column(col).total_compressed_size
                for key in pf.read_row_group(rg, columns=["auction_id"]).column(0).to_pylist():
                    holding.setdefault(key, set()).add(position[(t, rel, rg)])
    assert len(position) == len(kf.groups) >= 8
    sample = sorted(holding)[:: max(1, len(holding) // 2000)]
    con = db.connect()
    false_positives = 0
    for key, h in zip(sample, key_hashes(con, sample)):
        found = set(kf.candidates(h.reshape(1)).tolist())
        assert holding[key] <= found, key
        false_positives += len(found - holding[key])
    con.close()
    assert len(sample) >= 1000
    assert false_positives <= 0.01 * len(sample) * len(kf.groups)  # ~0.05% a row group by design
    assert record["bytes"] < key_bytes / 2, (record["bytes"], key_bytes)


def test_a_damaged_auction_filter_sends_its_queries_to_the_whole_lake(adaptive_lake, baseline, tmp_path):
    lake_root = tmp_path / "lake"
    shutil.copytree(adaptive_lake, lake_root)
    name, record = _auction_filter(lake_root)
    import pyarrow.parquet as pq

    queries = [q for q in family(6, 40) if any(w["col"] == "auction_id" for w in q["where"])]
    # the family's auction ids are random (no rows); these are the lake's own, some with clicks
    seg = Lake.open(lake_root).state["segments"][0]
    real = [pq.read_table(lake_root / seg["files"][t], columns=["auction_id"]).column(0)[5].as_py()
            for t in ("serve", "impression", "click") if t in seg["files"]]
    queries += [
        {"select": ["type", {"COUNT": "*"}], "from": "events", "where": [{"col": "auction_id", "op": "in", "val": real}],
         "group_by": ["type"], "order_by": [{"col": "type", "dir": "asc"}]},
        {"select": ["day", "country", {"SUM": "bid_price"}, {"MAX": "ts"}], "from": "events",
         "where": [{"col": "auction_id", "op": "eq", "val": real[-1]}], "group_by": ["day", "country"]},
    ]
    with Workbench(lake_root) as wb:  # healthy: through the filter, exactly
        for raw in queries:
            assert check_against_baseline(baseline, wb, raw).index == name
        expected = [to_rows(parse_query(raw), wb.query(raw)) for raw in queries]
        failures: list[str] = []

        def worker() -> None:  # threads share the workbench, its filter and the lake's footers
            for _ in range(3):
                for raw, want in zip(queries, expected):
                    q = parse_query(raw)
                    if (why := compare_rows(q, want, to_rows(q, wb.query(raw)))) is not None:
                        failures.append(why)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures[:3]
    bits = lake_root / record["dir"] / "bits"
    whole = bits.read_bytes()
    with open(bits, "r+b") as fh:  # truncated
        fh.truncate(bits.stat().st_size // 2)
    lake = Lake.open(lake_root)
    assert "bytes" in usable(index_def(name, record), lake, record)
    with Workbench(lake_root) as wb:
        for raw in queries:
            plan = check_against_baseline(baseline, wb, raw)
            assert plan.route == LAKE and plan.index is None
    bits.write_bytes(whole)
    assert usable(index_def(name, record), lake, record) is None
    meta = lake_root / record["dir"] / META_FILE  # hashed by another DuckDB: hashes may differ
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "duckdb": "0.0.1"}))
    assert "DuckDB 0.0.1" in usable(index_def(name, record), lake, record)
