"""Views: registry, health-aware fallback, faults, concurrency, crashes, incremental refresh."""
from __future__ import annotations

import builtins
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest
from helpers import edit_json

from analytics.checks.baseline import baseline_query, connect_baseline
from analytics.core import db, faults
from analytics.core.checksum import file_record
from analytics.core.memory import parse_size
from analytics.lake.generator import generate
from analytics.lake.prepare import prepare
from analytics.lake.state import Lake
from analytics.query.model import parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench
from analytics.views.build import PROCESS_MEMORY, BuildError, build
from analytics.views.catalog import CATALOG, VIEWS
from analytics.views.delta import version_relation
from analytics.views.registry import load_registry, registry_path, staleness, update_registry
from analytics.views.serving_copy import WRITER_MEMORY

DAY_Q = {"select": ["day", {"SUM": "bid_price"}, {"COUNT": "*"}], "from": "events",
         "where": [{"col": "type", "op": "eq", "val": "impression"}], "group_by": ["day"]}
ADV_Q = {"select": ["advertiser_id", "type", {"COUNT": "*"}], "from": "events", "group_by": ["advertiser_id", "type"],
         "order_by": [{"col": "COUNT(*)", "dir": "desc"}]}


def _expect(baseline, raw):
    q = parse_query(raw)
    return q, to_rows(q, baseline_query(baseline, q))


def _same(wb, q, expected):
    table, plan = wb.execute(q)
    assert compare_rows(q, expected, to_rows(q, table)) is None, plan.describe()
    return plan


# the keys of the first registries (before checksums, serving copies, deltas and proofs)
FIRST_REGISTRY_KEYS = ("name", "version", "file", "columns", "rows", "rows_by_type", "bytes", "built_at",
                       "build_seconds", "lake_version", "segments", "definition", "mode", "grain", "dims")


def test_registry_entries_round_trip_and_an_old_lakes_entries_still_load(lake_dir, lake_copy):
    written = json.loads(registry_path(lake_dir).read_text())["views"]
    for name, entry in load_registry(lake_dir).items():
        assert entry.to_json() == written[name]  # byte for byte once dumped with sorted keys
    # an entry as the first builds wrote it, beside one holding a key of a newer writer
    old = {k: v for k, v in written["mv_day_type_wide"].items() if k in FIRST_REGISTRY_KEYS}
    edit_json(registry_path(lake_copy), lambda reg: reg["views"].update(
        mv_day_type_wide=old, mv_hour_type_wide={**written["mv_hour_type_wide"], "added_later": 1}))
    reg = load_registry(lake_copy)
    entry = reg["mv_day_type_wide"]
    assert (entry.checksum, entry.serving, entry.deltas, entry.previous_files, entry.proof) == (None, None, [], [], None)
    assert staleness(VIEWS["mv_day_type_wide"], Lake.open(lake_copy), entry) == "no serving copy (built before serving copies)"
    assert reg["mv_hour_type_wide"].to_json() == written["mv_hour_type_wide"]
    # rewriting one entry keeps the others as they were read, keys unknown to this code included
    update_registry(lake_copy, replace(reg["mv_day_country_wide"], mode="full"))
    assert json.loads(registry_path(lake_copy).read_text())["views"]["mv_hour_type_wide"]["added_later"] == 1


def test_registry_records_every_view(lake_dir):
    reg = load_registry(lake_dir)
    lake = Lake.open(lake_dir)
    assert set(reg) == set(VIEWS)
    for name, entry in reg.items():
        assert entry.columns == [[c, t] for c, t in VIEWS[name].schema()]
        assert entry.lake_version == lake.version and entry.version >= 1
        assert entry.rows == sum(entry.rows_by_type.values()) > 0
        assert entry.build_seconds >= 0 and entry.built_at
        assert (lake_dir / entry.file).is_file()
        serving = entry.serving
        files = [(lake_dir / entry.file).parent / r["file"] for r in serving["types"].values()]
        assert sum(f.stat().st_size for f in files) == serving["bytes"]
        assert set(serving["types"]) == {t for t, n in entry.rows_by_type.items() if n}
        assert serving["scaled"] == ["sum_bid_price", "sum_total_price"]  # small data: far below the bound
        # each type's file holds only the prices the type has
        assert {t: r["dropped"] for t, r in serving["types"].items()} == {
            "serve": [f"{p}_{m}" for m in ("bid_price", "total_price") for p in ("nn", "sum", "min", "max")],
            "click": [f"{p}_{m}" for m in ("bid_price", "total_price") for p in ("nn", "sum", "min", "max")],
            "impression": [f"{p}_total_price" for p in ("nn", "sum", "min", "max")],
            "purchase": [f"{p}_bid_price" for p in ("nn", "sum", "min", "max")]}, name
        assert entry.rollup >= 1.0


def test_build_with_nothing_to_do_says_so(lake_dir):
    summary = build(lake_dir, progress=False)
    assert summary["built"] == [] and len(summary["up_to_date"]) == len(CATALOG)
    out = subprocess.run([sys.executable, "-m", "analytics", "build", "--lake", str(lake_dir), "--quiet"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "nothing to do" in out.stdout


def test_build_memory_limit_is_shared_by_its_jobs(lake_copy, monkeypatch):
    seen: list[str | None] = []
    real = db.connect

    def spy(*args, memory_limit=None, **kwargs):
        seen.append(memory_limit)
        return real(*args, memory_limit=memory_limit, **kwargs)
    monkeypatch.setattr(db, "connect", spy)
    summary = build(lake_copy, ["mv_day_type_wide", "mv_hour_type_wide"], jobs=2, force=True, memory_limit="1GiB",
                    progress=False)
    assert summary["built"] == ["mv_day_type_wide", "mv_hour_type_wide"]
    # every job the same share, the process and each job's serving-copy writer set aside first: the
    # shares and the reserves fit the budget and leave less than a MiB of it unused
    shares = {parse_size(m) for m in seen if m is not None}
    assert len(shares) == 1, seen
    used = 2 * shares.pop() + PROCESS_MEMORY + 2 * WRITER_MEMORY
    assert 2**30 - 2**20 < used <= 2**30, used


@pytest.mark.parametrize("name", ["mv_hour_advertiser_id_wide", "mv_minute_type_wide"])
def test_a_view_cut_into_day_ranges_equals_the_view_built_whole(lake_copy, baseline, monkeypatch, name):
    """A type whose groups could outgrow the connection's share is aggregated in ranges of days:
    the file must be the same rows in the same order as when each type is aggregated whole."""
    from analytics.views import day_ranges

    con = duckdb.connect()
    whole_entry = load_registry(lake_copy)[name]
    read = f"SELECT * FROM read_parquet('{lake_copy / whole_entry.file}')"
    whole = con.execute(read).fetchall()
    cuts: list[int] = []
    real_cut = day_ranges.cut

    def spy(*args, **kwargs):
        out = real_cut(*args, **kwargs)
        cuts.append(len(out))
        return out
    monkeypatch.setattr(day_ranges, "GROUP_BYTES", 2**30 // 4000)  # a budget of ~1,000 groups a piece in 1GiB
    monkeypatch.setattr("analytics.views.build.cut", spy)
    summary = build(lake_copy, [name], jobs=1, force=True, memory_limit="1GiB", progress=False)
    assert summary["built"] == [name], summary
    assert max(cuts) > len(VIEWS[name].types), cuts  # really cut into more pieces than types
    entry = load_registry(lake_copy)[name]
    assert entry.version == whole_entry.version + 1
    assert con.execute(f"SELECT * FROM read_parquet('{lake_copy / entry.file}')").fetchall() == whole
    q, expected = _expect(baseline, DAY_Q)
    _same(Workbench(lake_copy), q, expected)


def test_build_rejects_a_bad_memory_limit_clearly(lake_dir):
    out = subprocess.run([sys.executable, "-m", "analytics", "build", "--lake", str(lake_dir), "--memory-limit", "lots"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--memory-limit" in out.stderr and "'lots'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_view_is_a_clear_error(lake_dir):
    with pytest.raises(BuildError, match="unknown view\\(s\\) mv_nope; the catalog has: mv_day_advertiser_id_wide"):
        build(lake_dir, ["mv_nope"], progress=False)


def test_explain_shows_route_candidates_costs_rejections_and_sql(workbench):
    text = workbench.explain(DAY_Q)
    assert text.startswith("route: mv_day_type_wide")
    assert "candidate mv_day_type_wide: est." in text and "rows scanned" in text
    assert "rejected mv_all_adv_type_counts: cannot group by day" in text
    assert "sql: SELECT" in text and "params: ['impression']" in text


def test_routing_opens_no_file(workbench, monkeypatch):
    workbench.refresh()

    def forbidden(*a, **k):
        raise AssertionError("routing opened a file")
    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(os, "open", forbidden)
    assert workbench.plan(DAY_Q).route == "mv_day_type_wide"


def test_plans_are_remembered_until_the_registry_or_a_views_health_changes(lake_copy, baseline):
    wb = Workbench(lake_copy)
    q, expected = _expect(baseline, DAY_Q)
    first = wb.plan(q)
    assert first.route == "mv_day_type_wide" and wb.plan(DAY_Q) is first
    # a rebuild promotes a new version: the registry changed, so the plan is made again, for it
    build(lake_copy, ["mv_day_type_wide"], force=True, progress=False)
    again = wb.plan(q)
    assert again is not first and "mv_day_type_wide__v2" in again.sql
    assert _same(wb, q, expected).route == "mv_day_type_wide"
    # the file breaks after planning: the remembered plan still names it until execution finds out
    _overwrite_same_size(_serving_file(lake_copy, "mv_day_type_wide", "impression"))
    wb2 = Workbench(lake_copy)
    assert wb2.plan(q).route == "mv_day_type_wide"
    plan = _same(wb2, q, expected)
    assert plan.route != "mv_day_type_wide" and wb2.plan(q) is plan


def test_deleted_view_file_falls_back_to_the_lake(lake_copy, baseline):
    q, expected = _expect(baseline, DAY_Q)
    entry = load_registry(lake_copy)["mv_day_type_wide"]
    (lake_copy / entry.file).unlink()
    wb = Workbench(lake_copy)
    plan = _same(wb, q, expected)
    assert plan.route != "mv_day_type_wide"
    assert "file missing" in wb.health["mv_day_type_wide"]
    # every covering view gone: the lake answers, and says why
    for name in ("mv_day_country_wide", "mv_day_advertiser_id_wide", "mv_day_publisher_id_wide", "mv_hour_type_wide",
                 "mv_hour_advertiser_id_wide", "mv_hour_country_wide", "mv_minute_type_wide",
                 "mv_day_country_publisher_id_wide", "mv_day_country_advertiser_id_wide"):
        (lake_copy / load_registry(lake_copy)[name].file).unlink()
    wb = Workbench(lake_copy)
    plan = _same(wb, q, expected)
    assert plan.route == LAKE and "file missing" in plan.fallback_reason


def _overwrite_same_size(path: Path) -> None:
    """Garbage of the file's own size, written to a new file renamed over it (a mapping of the old
    file elsewhere stays valid)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"\x00garbage" * (path.stat().st_size // 8) + b"\x00" * (path.stat().st_size % 8))
    os.replace(tmp, path)


def _serving_file(lake: Path, name: str, t: str) -> Path:
    """The serving copy file holding type `t` of view `name`."""
    entry = load_registry(lake)[name]
    return (lake / entry.file).parent / entry.serving["types"][t]["file"]


def _only_view(lake: Path, name: str) -> None:
    """Remove every view but `name` from the registry, so covered queries can only go to it or the lake."""
    def only(reg: dict) -> None:
        reg["views"] = {name: reg["views"][name]}
    edit_json(registry_path(lake), only)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_damaged_serving_copy_makes_the_view_unhealthy_and_the_lake_answers(lake_copy, baseline, damage):
    q, expected = _expect(baseline, ADV_Q)
    _only_view(lake_copy, "mv_all_adv_type_counts")
    path = _serving_file(lake_copy, "mv_all_adv_type_counts", "click")
    if damage == "garbage":
        _overwrite_same_size(path)
    elif damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        path.unlink()
    wb = Workbench(lake_copy)
    plan = _same(wb, q, expected)
    assert plan.route == LAKE
    why = wb.health["mv_all_adv_type_counts"]
    assert ("file missing" if damage == "missing" else f"damaged: {path.name}") in why, why  # named by its checksum
    assert "mv_all_adv_type_counts" in plan.fallback_reason


def test_serving_copy_whose_schema_differs_from_registry_is_unhealthy(lake_copy, baseline):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    q, expected = _expect(baseline, ADV_Q)
    _only_view(lake_copy, "mv_all_adv_type_counts")
    path = _serving_file(lake_copy, "mv_all_adv_type_counts", "purchase")
    table = ipc.open_file(pa.memory_map(str(path))).read_all().drop_columns(["max_total_price"])
    tmp = path.with_name("other.arrow")
    with ipc.new_file(str(tmp), table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)
    # the registry's size and checksum agree with the new file: only the schema tells them apart
    def rewritten(reg: dict) -> None:
        rec = reg["views"]["mv_all_adv_type_counts"]["serving"]["types"]["purchase"]
        rec.update(bytes=path.stat().st_size, checksum=file_record(path))
    edit_json(registry_path(lake_copy), rewritten)
    wb = Workbench(lake_copy)
    assert _same(wb, q, expected).route == LAKE
    assert "schema differs" in wb.health["mv_all_adv_type_counts"]


def test_view_parquet_whose_schema_differs_from_registry_is_unhealthy_for_sql(lake_copy, baseline):
    q, expected = _expect(baseline, ADV_Q)
    entry = load_registry(lake_copy)["mv_all_adv_type_counts"]
    path = lake_copy / entry.file
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * EXCLUDE (max_total_price) FROM read_parquet('{path}')) TO '{path}.tmp' (FORMAT parquet)")
    os.replace(f"{path}.tmp", path)
    # its checksum recorded as the registry's: only the schema tells them apart
    def rewritten(reg: dict) -> None:
        reg["views"]["mv_all_adv_type_counts"]["checksum"] = file_record(path)
    edit_json(registry_path(lake_copy), rewritten)
    wb = Workbench(lake_copy, fast_path=False)  # the shapes the fast path leaves to SQL read the Parquet
    assert _same(wb, q, expected).route != "mv_all_adv_type_counts"
    assert "schema differs" in wb.health["mv_all_adv_type_counts"]


def _append_part(lake: Path, raw_src: Path, tmp: Path) -> Path:
    """Prepare the lake again with one more CSV part (a copy of a part with new auction ids)."""
    raw = tmp / "raw_more"
    shutil.copytree(raw_src, raw)
    extra = tmp / "extra"
    generate(extra, 3_000, seed=99, parts=1, progress=False)
    shutil.copy(extra / "events_part_00000.csv", raw / "events_part_99999.csv")
    prepare(raw, lake, progress=False)
    return raw


def test_lake_change_after_build_makes_views_fall_back_then_incremental_refresh(lake_copy, raw_dir, tmp_path):
    wb = Workbench(lake_copy)
    wb.warm()
    raw = _append_part(lake_copy, raw_dir, tmp_path)
    base = connect_baseline(raw, materialize=True)
    q, expected = _expect(base, DAY_Q)
    plan = _same(wb, q, expected)  # the live workbench notices the new lake version
    assert plan.route == LAKE and "built from lake version" in plan.fallback_reason
    summary = build(lake_copy, progress=False)
    assert {r["mode"] for r in summary["views"]} == {"incremental"}
    assert _same(wb, q, expected).route == "mv_day_type_wide"
    # incremental result (the base and its delta, re-aggregated) == full rebuild, row for row
    con = duckdb.connect()
    reg = load_registry(lake_copy)
    assert all(len(e.deltas) == 1 for e in reg.values())
    incremental = {n: con.execute(f"{VIEWS[n].reaggregate_sql(version_relation(lake_copy, e))} ORDER BY ALL").fetchall()
                   for n, e in reg.items()}
    build(lake_copy, force=True, progress=False)
    reg = load_registry(lake_copy)
    for n, e in reg.items():
        assert e.mode == "full"
        assert con.execute(f"SELECT * FROM read_parquet('{lake_copy / e.file}') ORDER BY ALL").fetchall() == incremental[n], n
    for raw_q in (ADV_Q, {"select": ["minute", {"COUNT": "*"}], "from": "events", "group_by": ["minute"],
                          "where": [{"col": "day", "op": "eq", "val": "2024-12-31"}]}):
        q, expected = _expect(base, raw_q)
        assert _same(wb, q, expected).route != LAKE


def test_rebuild_while_eight_threads_query(lake_copy, baseline):
    wb = Workbench(lake_copy)
    cases = [_expect(baseline, DAY_Q), _expect(baseline, ADV_Q)]
    errors: list[str] = []
    routes: set[str] = set()
    stop = threading.Event()

    def worker(k: int) -> None:
        while not stop.is_set():
            q, expected = cases[k % 2]
            try:
                table, plan = wb.execute(q)
                routes.add(plan.route)
                reason = compare_rows(q, expected, to_rows(q, table))
                if reason:
                    errors.append(f"{plan.route}: {reason}")
            except Exception as exc:  # noqa: BLE001 - any error fails the test
                errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            build(lake_copy, ["mv_day_type_wide", "mv_all_adv_type_counts"], force=True, progress=False)
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert load_registry(lake_copy)["mv_day_type_wide"].version == 3
    assert "mv_day_type_wide" in routes


def _build_proc(lake: Path, *views: str, force: bool = True) -> subprocess.Popen:
    args = [sys.executable, "-m", "analytics", "build", "--lake", str(lake), "--quiet", "--views", *views]
    return subprocess.Popen(args + (["--force"] if force else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_builds_of_one_view_never_both_write(lake_copy):
    name = "mv_hour_advertiser_id_wide"
    entry = load_registry(lake_copy)[name]
    # the view made stale (its recorded definition is another's) so there is real work: the lock
    # lets one build it, the other then finds it current
    update_registry(lake_copy, replace(entry, definition="an older definition"))
    procs = [_build_proc(lake_copy, name, force=False) for _ in range(2)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert load_registry(lake_copy)[name].version == entry.version + 1
    assert sorted("built v" in out for out, _ in outs) == [False, True], outs
    procs = [_build_proc(lake_copy, name) for _ in range(2)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    after = load_registry(lake_copy)[name]
    assert after.version == entry.version + 3  # serialized: each forced build made its own version
    vdir = lake_copy / "views" / "mv_hour_advertiser_id_wide"
    assert not list(vdir.glob(".staging-*"))


def test_four_different_views_build_at_once(lake_copy, baseline):
    names = ["mv_day_type_wide", "mv_day_country_wide", "mv_hour_type_wide", "mv_minute_type_wide"]
    procs = [_build_proc(lake_copy, n) for n in names]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    reg = load_registry(lake_copy)
    assert all(reg[n].version == 2 for n in names)
    q, expected = _expect(baseline, DAY_Q)
    assert _same(Workbench(lake_copy), q, expected).route == "mv_day_type_wide"


@pytest.mark.parametrize("point", ["build:after-aggregate", "build:after-rename-before-registry",
                                   "build:after-registry"])
def test_build_killed_at_each_commit_step_leaves_whole_views_and_the_next_build_cleans_up(lake_copy, baseline, point):
    before = load_registry(lake_copy)
    args = [sys.executable, "-m", "analytics", "build", "--lake", str(lake_copy), "--quiet", "--force",
            "--views", *[v.name for v in CATALOG]]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, faults.ENV: point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr  # killed at that step, not before nor after
    after = load_registry(lake_copy)
    staged = list((lake_copy / "views").rglob(".staging-*"))
    unregistered = [f for f in (lake_copy / "views").rglob("v*.parquet")
                    if f.relative_to(lake_copy).as_posix() not in {e.file for e in after.values()}]
    if point == "build:after-aggregate":
        assert after == before and staged and not unregistered
    elif point == "build:after-rename-before-registry":
        assert after == before and unregistered
    else:  # this view's new version is registered; its old one is not yet swept
        assert [n for n in after if after[n] != before[n]] and unregistered
    wb = Workbench(lake_copy)
    for raw in (DAY_Q, ADV_Q):
        q, expected = _expect(baseline, raw)
        _same(wb, q, expected)
    for name, entry in after.items():
        assert (lake_copy / entry.file).is_file(), name
    build(lake_copy, progress=False)
    assert not list((lake_copy / "views").rglob(".staging-*"))
    assert all(h is None for h in Workbench(lake_copy).warm().values())


def test_a_view_that_fails_its_check_is_not_promoted(lake_copy, monkeypatch):
    import pyarrow.compute as pc

    import analytics.views.build as views_mod

    real = views_mod.lake_totals

    def off_by_one(con, lake):  # the lake's totals disagree with what the view will hold
        t = real(con, lake)
        return t.set_column(t.schema.get_field_index("cnt"), "cnt", pc.add(t.column("cnt"), 1))

    monkeypatch.setattr(views_mod, "lake_totals", off_by_one)
    before = load_registry(lake_copy)["mv_day_type_wide"]
    summary = build(lake_copy, ["mv_day_type_wide"], force=True, progress=False)
    assert "do not reconcile" in summary["failed"]["mv_day_type_wide"]
    assert load_registry(lake_copy)["mv_day_type_wide"] == before
    assert not list((lake_copy / "views" / "mv_day_type_wide").glob(".staging-*"))
