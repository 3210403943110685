"""Guardrails: every check passes on clean data, and each one fails, alone, on the fault it guards against.

Faults are injected the way they happen: a Parquet file of the lake or of a view rewritten with
the bug (DuckDB COPY), the manifest or registry edited, a raw CSV carrying an odd row, or the
engine's own compiler/router patched to a plausible wrong formula. Each injector is registered
for its check with `@fault(check_id)` and run by one test parametrized over `G.CHECKS`: it runs
all 23 checks and asserts (through `env.assert_only`) that exactly that check fails and that its
evidence carries the numbers. A check without an injector is a failing case of that test, and so
is an injector that never asserts. A rewritten file's checksum is recorded as its writer would
record it. Fault injectors share a small private dataset (a full run takes ~3 s there); the
clean-data test uses the session's 200K-row lake.
"""
from __future__ import annotations

import csv
import datetime as dt
import functools
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb
import pytest
from helpers import edit_json, state_file

from analytics import cli
from analytics.checks import guardrails as G
from analytics.core.checksum import file_record
from analytics.lake.generator import generate
from analytics.lake.integrity import segment_record
from analytics.lake.prepare import prepare
from analytics.query import compiler as compiler_mod
from analytics.views import catalog
from analytics.views.build import build
from analytics.views.registry import load_registry, registry_path

FAULT_DAY = "2024-05-15"  # no probe of any check looks at May: faults placed here hit one check only
SMALL_ROWS = 30_000


# ---- fixtures and fault helpers -----------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small raw set (boundary rows and 0.5% dirty rows included) and its lake with every view: read-only."""
    base = tmp_path_factory.mktemp("guardrails")
    raw, lake = base / "raw", base / "lake"
    generate(raw, SMALL_ROWS, seed=11, parts=4, dirty=0.005, progress=False)
    prepare(raw, lake, progress=False)
    summary = build(lake, progress=False)
    assert not summary["failed"], summary["failed"]
    return raw, lake


def _con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def rewrite(path: Path, select: str) -> int:
    """Rewrite a Parquet file as `select`, a query over `t` (the file's current rows); returns rows changed."""
    con = _con()
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_parquet('{path}')")
    before = con.execute("SELECT count(*) FROM t").fetchall()[0][0]
    tmp = path.with_name(path.name + ".tmp")
    con.execute(f"COPY ({select}) TO '{tmp}' (FORMAT parquet)")
    changed = con.execute(f"SELECT count(*) FROM (SELECT * FROM read_parquet('{tmp}') EXCEPT ALL SELECT * FROM t)").fetchall()[0][0]
    after = con.execute(f"SELECT count(*) FROM read_parquet('{tmp}')").fetchall()[0][0]
    con.close()
    os.replace(tmp, path)
    _record_checksum(path)
    return changed + max(0, before - after)


def _record_checksum(path: Path) -> None:
    """Record the rewritten file's checksum where its writer would: the fault is a writer's bug, in
    what the bytes mean, not damage at rest (which tests/test_integrity.py injects)."""
    lake = next(p for p in path.parents if (p / "_state").is_dir())
    rel = path.relative_to(lake).as_posix()

    def in_registry(reg: dict) -> None:
        for entry in reg["views"].values():
            for version in [entry, *(entry.get("deltas") or [])]:
                if version["file"] == rel:
                    version["checksum"] = file_record(path)

    def in_manifest(manifest: dict) -> None:
        for seg in manifest["segments"]:
            if rel in (seg.get("checksums") or {}):
                seg["checksums"][rel] = segment_record(path)

    if rel.startswith("views/"):
        edit_json(registry_path(lake), in_registry)
    else:
        edit_json(state_file(lake), in_manifest)


def lake_file(lake: Path, type_: str, day: str = FAULT_DAY) -> Path:
    manifest = json.loads(state_file(lake).read_text())
    for seg in manifest["segments"]:
        if day in seg["days"].get(type_, []):
            return lake / seg["files"][type_]
    raise AssertionError(f"no {type_} file holds {day}")


def view_file(lake: Path, name: str) -> Path:
    return lake / load_registry(lake)[name].file


def rebuild(lake: Path) -> None:
    """Views rebuilt from a (faulty) lake, so the views agree with it and only the lake fault remains."""
    summary = build(lake, force=True, progress=False)
    assert not summary["failed"], summary["failed"]


def failing(report: dict) -> set[str]:
    return {c["id"] for c in report["checks"] if not c["passed"]}


def check(report: dict, check_id: str) -> dict:
    return next(c for c in report["checks"] if c["id"] == check_id)


def assert_only(report: dict, check_id: str, *needles: str) -> dict:
    """Exactly `check_id` fails, and its evidence summary mentions every needle."""
    assert failing(report) == {check_id}, {c["id"]: c["evidence"].get("summary") for c in report["checks"] if not c["passed"]}
    c = check(report, check_id)
    summary = c["evidence"]["summary"]
    for needle in needles:
        assert needle in summary, summary
    return c


@dataclass
class FaultEnv:
    """What a fault injector works with: the small raw set and its clean lake (read-only), a private
    copy of that lake to break (made on first use), a monkeypatch and a scratch directory."""

    check_id: str
    raw: Path
    lake: Path
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    proofs: int = 0

    @functools.cached_property
    def broken(self) -> Path:
        dst = self.tmp_path / "broken"
        shutil.copytree(self.lake, dst)
        return dst

    def assert_only(self, report: dict, *needles: str) -> dict:
        """Exactly the check under test fails, and its evidence summary mentions every needle."""
        c = assert_only(report, self.check_id, *needles)
        self.proofs += 1
        return c


FaultInjector = Callable[[FaultEnv], None]
FAULTS: dict[str, list[FaultInjector]] = {}


def fault(check_id: str) -> Callable[[FaultInjector], FaultInjector]:
    """Register an injector for `check_id`: it breaks something, runs the guardrails and calls `env.assert_only`."""
    def register(inject: FaultInjector) -> FaultInjector:
        FAULTS.setdefault(check_id, []).append(inject)
        return inject
    return register


# ---- the registry and clean data ----------------------------------------------------------------

def test_registry_has_23_checks_in_7_categories() -> None:
    assert len(G.CHECKS) == 23
    assert len({c.id for c in G.CHECKS}) == 23
    assert Counter(c.category for c in G.CHECKS) == {
        "timezone": 3, "between": 2, "avg": 4, "mv_consistency": 5, "data_types": 4, "null_handling": 3,
        "date_boundaries": 2}
    assert all(c.id.startswith(c.category + ".") and c.description for c in G.CHECKS)
    # each check is the function of its id in its category's module
    assert [f"{c.func.__module__}.{c.func.__name__}" for c in G.CHECKS] == [f"{G.__name__}.{c.id}" for c in G.CHECKS]
    assert [c.id for c in G.select_checks("types")] == [c.id for c in G.CHECKS if c.category == "data_types"]
    with pytest.raises(G.GuardrailError, match="unknown category 'nope'"):
        G.select_checks("nope")


def test_clean_data_passes_every_check(lake_dir: Path, raw_dir: Path) -> None:
    report = G.run_guardrails(lake_dir, raw_dir)
    assert report["failed"] == 0, {c["id"]: c["evidence"].get("summary") for c in report["checks"] if not c["passed"]}
    assert report["passed"] == 23
    for c in report["checks"]:
        assert c["evidence"]["summary"], c["id"]  # every pass says what it compared
    raw_sides = [c["evidence"]["raw"]["compared"] for c in report["checks"] if isinstance(c["evidence"].get("raw"), dict)]
    assert raw_sides and all(raw_sides)
    json.dumps(report)  # JSON-able as returned


def test_dirty_data_passes_without_counting_quarantine_as_mismatch(small) -> None:
    report = G.run_guardrails(small[1], small[0])
    assert report["failed"] == 0, {c["id"]: c["evidence"].get("summary") for c in report["checks"] if not c["passed"]}
    keys = check(report, "null_handling.null_keys_quarantined")["evidence"]
    assert keys["accounting"]["rows_quarantined"] > 0
    assert sum(keys["raw"]["raw_null_keys"].values()) > 0
    assert keys["raw"]["raw_null_keys"] == keys["raw"]["quarantined_null_keys"]


# ---- timezone -----------------------------------------------------------------------------------

@fault("timezone.derived_columns_utc")
def derived_columns_written_in_a_local_zone(env: FaultEnv) -> None:
    local = "(ts - INTERVAL 4 HOUR)"  # New York summer time
    for t in ("serve", "impression"):
        assert rewrite(lake_file(env.broken, t), f"""
            SELECT * REPLACE (
                CASE WHEN day = DATE '{FAULT_DAY}' THEN CAST({local} AS DATE) ELSE day END AS day,
                CASE WHEN day = DATE '{FAULT_DAY}' THEN date_trunc('hour', {local}) ELSE hour END AS hour,
                CASE WHEN day = DATE '{FAULT_DAY}' THEN strftime({local}, '%Y-%m-%d %H:%M') ELSE minute END AS minute)
            FROM t""")
    rebuild(env.broken)
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "day ", "hour ", "minute ")
    assert c["evidence"]["bad_hour"] > 0 and c["evidence"]["samples"]


@fault("timezone.week_starts_monday")
def sunday_weeks_in_a_view(env: FaultEnv) -> None:
    assert rewrite(view_file(env.broken, "mv_day_type_wide"), """
        SELECT * REPLACE (CASE WHEN month(day) = 5 THEN week - 1 ELSE week END AS week) FROM t""")
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "mv_day_type_wide", "non-Monday")
    src = next(s for s in c["evidence"]["sources"] if s["source"] == "mv_day_type_wide")
    assert src["not_monday"] > 0 and src["samples"][0]["weekday"] == "Sunday"


@fault("timezone.session_zone_independent")
def lake_with_shifted_timestamps(env: FaultEnv) -> None:
    # ts itself written one hour off (local time taken for UTC), derived columns consistent with it
    shifted = "(ts + INTERVAL 1 HOUR)"
    rewrite(lake_file(env.broken, "impression"), f"""
        SELECT * REPLACE (
            CASE WHEN day = DATE '{FAULT_DAY}' THEN {shifted} ELSE ts END AS ts,
            CASE WHEN day = DATE '{FAULT_DAY}' THEN CAST({shifted} AS DATE) ELSE day END AS day,
            CASE WHEN day = DATE '{FAULT_DAY}' THEN CAST(date_trunc('week', {shifted}) AS DATE) ELSE week END AS week,
            CASE WHEN day = DATE '{FAULT_DAY}' THEN date_trunc('hour', {shifted}) ELSE hour END AS hour,
            CASE WHEN day = DATE '{FAULT_DAY}' THEN strftime({shifted}, '%Y-%m-%d %H:%M') ELSE minute END AS minute)
        FROM t ORDER BY ts""")
    rebuild(env.broken)
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "raw epoch ms", "buckets")
    assert c["evidence"]["raw"]["buckets_differing"] > 0
    # without the raw files the shift cannot be seen; the evidence says so instead of passing silently
    no_raw = G.run_guardrails(env.broken, only="timezone")
    assert check(no_raw, "timezone.session_zone_independent")["evidence"]["raw"]["compared"] is False


@fault("timezone.session_zone_independent")
def timestamptz_lake_file(env: FaultEnv) -> None:
    rewrite(lake_file(env.broken, "serve"), "SELECT * REPLACE (CAST(ts AS TIMESTAMPTZ) AS ts) FROM t")
    report = G.run_guardrails(env.broken)
    c = env.assert_only(report, "not zone-free", "Pacific/Kiritimati")
    assert c["evidence"]["non_zone_free_columns"][0]["column"] == "ts"


# ---- BETWEEN ------------------------------------------------------------------------------------

def _half_open_between(col: str):  # noqa: ANN202
    original = compiler_mod.condition_sql

    def condition_sql(cond, expr):  # noqa: ANN001, ANN202
        if cond.op == "between" and cond.col == col:
            return f"{expr} >= ? AND {expr} < ?"  # the classic bug: the upper end excluded
        return original(cond, expr)
    return condition_sql


@fault("between.day_inclusive")
def half_open_day_between(env: FaultEnv) -> None:
    env.monkeypatch.setattr(compiler_mod, "condition_sql", _half_open_between("day"))
    report = G.run_guardrails(env.lake, env.raw)
    c = env.assert_only(report, "answers differ", "was expected")
    assert all(e["rows_in_high_end"] > 0 for e in c["evidence"]["edges"])


@fault("between.hour_minute_inclusive")
def minute_view_with_seconds_in_labels(env: FaultEnv) -> None:
    assert rewrite(view_file(env.broken, "mv_minute_type_wide"), """
        SELECT * REPLACE (CASE WHEN day = DATE '2024-06-30' THEN minute || ':00' ELSE minute END AS minute) FROM t""")
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "mv_minute_type_wide")
    bad = [m["source"] for p in c["evidence"]["probes"] for m in p["mismatches"]]
    assert set(bad) == {"mv_minute_type_wide"}


@fault("between.hour_minute_inclusive")
def half_open_hour_between(env: FaultEnv) -> None:
    env.monkeypatch.setattr(compiler_mod, "condition_sql", _half_open_between("hour"))
    report = G.run_guardrails(env.lake, env.raw)
    env.assert_only(report, "answers differ")


# ---- AVG ----------------------------------------------------------------------------------------

def _patched_measure(func: str, template: str):  # noqa: ANN202
    """catalog.measure_expr (what SQL over a view computes) with the formula of `func` over a price
    replaced: `template` gets {m}."""
    original = catalog.measure_expr

    def measure_expr(f, col, view):  # noqa: ANN001, ANN202
        if f == func and col in ("bid_price", "total_price"):
            return template.format(m=col)
        return original(f, col, view)
    return measure_expr


@fault("avg.nonnull_denominator")
def avg_divided_by_row_count(env: FaultEnv) -> None:
    env.monkeypatch.setattr(catalog, "measure_expr", _patched_measure("AVG", "CAST(sum(sum_{m}) AS DOUBLE) / NULLIF(sum(cnt), 0)"))
    report = G.run_guardrails(env.lake, env.raw)
    c = env.assert_only(report, "engine AVG differs from SUM/non-NULL COUNT")
    src = next(s for s in c["evidence"]["sources"] if s["differing"])
    sample = src["samples"][0]
    assert sample["engine_bid_price"] is not None and sample["engine_bid_price"] != sample["sum_over_nonnull_bid_price"]


@fault("avg.view_equals_lake")
def view_with_swapped_sums(env: FaultEnv) -> None:
    # two advertisers' bid sums exchanged on one day: every per-day total still reconciles
    path = view_file(env.broken, "mv_day_advertiser_id_wide")
    con = _con()
    a, b = con.execute(f"""
        SELECT advertiser_id FROM read_parquet('{path}')
        WHERE type = 'impression' AND day = DATE '{FAULT_DAY}' AND nn_bid_price = 1
        ORDER BY sum_bid_price LIMIT 2""").fetchall()
    con.close()
    rewrite(path, f"""
        SELECT * REPLACE (CASE WHEN type = 'impression' AND day = DATE '{FAULT_DAY}' AND advertiser_id IN ({a[0]}, {b[0]})
            THEN (SELECT sum(sum_bid_price) FROM t WHERE type = 'impression' AND day = DATE '{FAULT_DAY}'
                  AND advertiser_id IN ({a[0]}, {b[0]})) - sum_bid_price ELSE sum_bid_price END AS sum_bid_price) FROM t""")
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "mv_day_advertiser_id_wide", "2 of")
    v = next(v for v in c["evidence"]["views"] if v["differing"])
    assert v["samples"][0]["view_avg_bid_price"] != v["samples"][0]["lake_avg_bid_price"]


@fault("avg.empty_is_null")
def avg_of_empty_as_zero(env: FaultEnv) -> None:
    env.monkeypatch.setattr(catalog, "measure_expr", _patched_measure(
        "AVG", "COALESCE(CAST(sum(sum_{m}) AS DOUBLE) / NULLIF(sum(nn_{m}), 0), 0)"))
    report = G.run_guardrails(env.lake, env.raw)
    c = env.assert_only(report, "AVG over no values is not NULL")
    assert any(s["wrong"] for s in c["evidence"]["group_sources"])


@fault("avg.no_average_of_averages")
def average_of_averages(env: FaultEnv) -> None:
    env.monkeypatch.setattr(catalog, "measure_expr", _patched_measure("AVG", "avg(CAST(sum_{m} AS DOUBLE) / NULLIF(nn_{m}, 0))"))
    report = G.run_guardrails(env.lake, env.raw)
    c = env.assert_only(report, "answers differ")
    assert any(x["would_differ"] for x in c["evidence"]["average_of_averages"])


# ---- MV consistency -----------------------------------------------------------------------------

@fault("mv_consistency.reconcile")
def view_missing_a_day(env: FaultEnv) -> None:
    assert rewrite(view_file(env.broken, "mv_day_country_wide"), f"SELECT * FROM t WHERE day <> DATE '{FAULT_DAY}'")
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "mv_day_country_wide", FAULT_DAY)
    bad = next(v for v in c["evidence"]["views"] if v["groups_differing_sample"])
    assert bad["groups_differing_sample"][0]["view_cnt"] is None and bad["groups_differing_sample"][0]["lake_cnt"] > 0


@fault("mv_consistency.current_lake_version")
def views_from_an_old_lake_version(env: FaultEnv) -> None:
    edit_json(state_file(env.broken), lambda m: m.update(data_version=123456789, data_aliases=[]))
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "lake is now 123456789")
    assert all(v["problems"] for v in c["evidence"]["views"])


@fault("mv_consistency.schema_matches_registry")
def registry_columns_edited(env: FaultEnv) -> None:
    def edit(reg):  # noqa: ANN001, ANN202
        cols = reg["views"]["mv_hour_country_wide"]["columns"]
        cols[[c for c, _ in cols].index("sum_bid_price")][1] = "DOUBLE"
    edit_json(registry_path(env.broken), edit)
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "mv_hour_country_wide", "sum_bid_price")
    v = next(v for v in c["evidence"]["views"] if v["differences"])
    assert v["differences"][0]["differing"]["sum_bid_price"] == {"file": "DECIMAL(38,4)", "registry": "DOUBLE"}


@fault("mv_consistency.unique_group_keys")
def duplicated_group_key(env: FaultEnv) -> None:
    # a zero-measure second row for an existing key: totals unchanged, the key twice
    rewrite(view_file(env.broken, "mv_day_type_wide"), f"""
        SELECT * FROM t UNION ALL
        SELECT * REPLACE (0::BIGINT AS cnt, 0::BIGINT AS nn_bid_price, 0::DECIMAL(38,4) AS sum_bid_price,
                          NULL AS min_bid_price, NULL AS max_bid_price)
        FROM t WHERE type = 'impression' AND day = DATE '{FAULT_DAY}'""")
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "mv_day_type_wide", "1 group keys")
    v = next(v for v in c["evidence"]["views"] if v["duplicate_keys"])
    assert v["samples"][0]["copies"] == 2 and v["samples"][0]["day"] == FAULT_DAY


@fault("mv_consistency.present_readable")
def truncated_view_file(env: FaultEnv) -> None:
    path = view_file(env.broken, "mv_hour_advertiser_id_wide")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = G.run_guardrails(env.broken, env.raw)
    env.assert_only(report, "mv_hour_advertiser_id_wide", "damaged: v1.parquet")  # its size is not its checksum's
    # the other checks say they left it out
    assert "mv_hour_advertiser_id_wide" in check(report, "mv_consistency.reconcile")["evidence"]["skipped"]


@fault("mv_consistency.present_readable")
def deleted_view_file(env: FaultEnv) -> None:
    view_file(env.broken, "mv_minute_type_wide").unlink()
    report = G.run_guardrails(env.broken, env.raw)
    env.assert_only(report, "mv_minute_type_wide", "file missing")


# ---- data types ---------------------------------------------------------------------------------

@fault("data_types.ts_millisecond_precision")
def timestamps_truncated_to_seconds(env: FaultEnv) -> None:
    assert rewrite(lake_file(env.broken, "impression"), f"""
        SELECT * REPLACE (CASE WHEN day = DATE '{FAULT_DAY}' THEN date_trunc('second', ts) ELSE ts END AS ts) FROM t""")
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "milliseconds lost", "impression")
    diff = c["evidence"]["raw"]["differences"][0]
    assert diff["lake"] < diff["raw"]


@fault("data_types.ts_millisecond_precision")
def sub_millisecond_residue(env: FaultEnv) -> None:
    rewrite(lake_file(env.broken, "click"), f"""
        SELECT * REPLACE (CASE WHEN day = DATE '{FAULT_DAY}' THEN ts + INTERVAL 1 MICROSECOND ELSE ts END AS ts) FROM t""")
    report = G.run_guardrails(env.broken)
    env.assert_only(report, "sub-millisecond residue")


@fault("data_types.price_sums_exact")
def prices_through_float32(env: FaultEnv) -> None:
    assert rewrite(lake_file(env.broken, "impression"), f"""
        SELECT * REPLACE (CASE WHEN day = DATE '{FAULT_DAY}' THEN CAST(CAST(bid_price AS FLOAT) AS DOUBLE)
                          ELSE bid_price END AS bid_price) FROM t""")
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "not exactly 4-decimal values", "bid_price")
    assert c["evidence"]["lake"]["off_grid_bid_price"] > 0 and c["evidence"]["samples"]


@fault("data_types.ids_integral_in_range")
def advertiser_id_out_of_range(env: FaultEnv) -> None:
    rewrite(lake_file(env.broken, "serve"), f"""
        SELECT * REPLACE (CASE WHEN ts = (SELECT min(ts) FROM t WHERE day = DATE '{FAULT_DAY}') THEN 0 ELSE advertiser_id END
                          AS advertiser_id) FROM t""")
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "lake: ids out of range", "'advertiser_id': 1")
    assert c["evidence"]["sources"][0]["samples"][0]["advertiser_id"] == 0


@fault("data_types.country_known_code")
def unknown_country_code(env: FaultEnv) -> None:
    rewrite(lake_file(env.broken, "serve"), f"""
        SELECT * REPLACE (CASE WHEN ts = (SELECT min(ts) FROM t WHERE day = DATE '{FAULT_DAY}') THEN 'UK' ELSE country END
                          AS country) FROM t""")
    report = G.run_guardrails(env.broken, env.raw)
    env.assert_only(report, "('UK', 1)")


# ---- NULL handling ------------------------------------------------------------------------------

@fault("null_handling.price_only_on_its_type")
def bid_price_on_a_serve_in_the_raw_data(env: FaultEnv) -> None:
    raw, lake = env.tmp_path / "raw", env.tmp_path / "lake"
    shutil.copytree(env.raw, raw)
    # the data itself carries a serve with a bid: prepare keeps it (not a remediation rule)
    part = sorted(raw.glob("*.csv"))[1]
    with part.open(newline="") as fh:
        rows = list(csv.reader(fh))
    day_ms = (dt.datetime.fromisoformat(FAULT_DAY) - dt.datetime(1970, 1, 1)) // dt.timedelta(milliseconds=1)
    i = next(i for i, r in enumerate(rows[1:], 1) if r[1] == "serve" and day_ms <= int(r[0]) < day_ms + 86_400_000)
    rows[i][5] = "2.5000"
    with part.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    prepare(raw, lake, progress=False)
    build(lake, progress=False)
    report = G.run_guardrails(lake, raw)
    c = env.assert_only(report, "bid_price set on 1 serve rows")
    assert c["evidence"]["samples"][0]["type"] == "serve" and c["evidence"]["samples"][0]["bid_price"] == 2.5


@fault("null_handling.count_col_vs_count_star")
def count_col_answered_as_count_star(env: FaultEnv) -> None:
    env.monkeypatch.setattr(catalog, "measure_expr", _patched_measure("COUNT", "COALESCE(sum(cnt), 0)::BIGINT"))
    report = G.run_guardrails(env.lake, env.raw)
    c = env.assert_only(report, "answers differ")
    bad = {m["source"] for p in c["evidence"]["probes"] for m in p["mismatches"]}
    assert "lake" not in bad and bad


@fault("null_handling.null_keys_quarantined")
def null_keyed_row_in_the_lake(env: FaultEnv) -> None:
    rewrite(lake_file(env.broken, "serve"), f"""
        SELECT * REPLACE (CASE WHEN ts = (SELECT min(ts) FROM t WHERE day = DATE '{FAULT_DAY}') THEN NULL ELSE advertiser_id END
                          AS advertiser_id) FROM t""")
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "NULL keys in the lake", "'advertiser_id': 1")
    assert c["evidence"]["samples"][0]["advertiser_id"] is None


@fault("null_handling.null_keys_quarantined")
def silently_dropped_rows(env: FaultEnv) -> None:
    rewrite(lake_file(env.broken, "serve"), f"SELECT * FROM t WHERE NOT (day = DATE '{FAULT_DAY}' AND hour(ts) = 12)")
    rebuild(env.broken)
    report = G.run_guardrails(env.broken)
    env.assert_only(report, "accounting does not hold")


# ---- date boundaries ----------------------------------------------------------------------------

@fault("date_boundaries.leap_day_and_year_end")
def leap_day_hour_mislabelled_in_a_view(env: FaultEnv) -> None:
    assert rewrite(view_file(env.broken, "mv_hour_type_wide"), """
        SELECT * REPLACE (CASE WHEN hour = TIMESTAMP '2024-02-29 23:00' THEN TIMESTAMP '2024-03-01 00:00' ELSE hour END AS hour)
        FROM t""")
    report = G.run_guardrails(env.broken, env.raw)
    c = env.assert_only(report, "mv_hour_type_wide")
    assert {m["source"] for p in c["evidence"]["probes"] for m in p["mismatches"]} == {"mv_hour_type_wide"}


@fault("date_boundaries.first_last_day_complete")
def last_day_missing_from_the_day_index(env: FaultEnv) -> None:
    def edit(m):  # noqa: ANN001, ANN202
        for seg in m["segments"]:
            for t in seg["days"]:
                seg["days"][t] = [d for d in seg["days"][t] if d != "2024-12-31"]
    edit_json(state_file(env.broken), edit)
    report = G.run_guardrails(env.broken, env.raw)
    env.assert_only(report, "lake state's day index", "2024-12-31")


# ---- every check against its faults ------------------------------------------------------------

def _fault_cases() -> list:
    """One case per (check, injector), in registry order; a check without an injector, or an injector
    for an id that is not a check, is a case of its own that fails."""
    ids = [c.id for c in G.CHECKS]
    cases = [pytest.param(cid, inject, id=f"{cid}-{inject.__name__}") for cid in ids for inject in FAULTS.get(cid, [])]
    cases += [pytest.param(cid, None, id=f"{cid}-no-injector") for cid in ids if cid not in FAULTS]
    cases += [pytest.param(cid, inject, id=f"{cid}-{inject.__name__}") for cid in FAULTS if cid not in ids
              for inject in FAULTS[cid]]
    return cases


@pytest.mark.parametrize("check_id, inject", _fault_cases())
def test_fault_fails_its_check_alone(check_id: str, inject: FaultInjector | None, small, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # a check no injected fault can make fail is not done
    assert inject is not None, f"no fault injector for {check_id}: register one with @fault({check_id!r})"
    assert check_id in G.CHECKS_BY_ID, f"{inject.__name__} is registered for {check_id!r}, which is not a check"
    env = FaultEnv(check_id, small[0], small[1], tmp_path, monkeypatch)
    inject(env)
    assert env.proofs, f"{inject.__name__} never asserted that {check_id} fails alone"


# ---- interfaces ---------------------------------------------------------------------------------

def test_cli_prints_table_writes_json_and_exits_by_outcome(small, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.json"
    assert cli.main(["guardrails", "--lake", str(small[1]), "--raw", str(small[0]), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "timezone (3/3)" in text and "23 passed, 0 failed" in text
    data = json.loads(out.read_text())
    assert data["passed"] == 23 and data["failed"] == 0
    assert set(data["checks"][0]) >= {"id", "category", "passed", "evidence"}

    broken = tmp_path / "broken"
    shutil.copytree(small[1], broken)
    edit_json(state_file(broken), lambda m: m.update(data_version=987654321, data_aliases=[]))
    assert cli.main(["guardrails", "--lake", str(broken), "--only", "mv_consistency", "--json", str(out)]) == 1
    data = json.loads(out.read_text())
    assert {c["category"] for c in data["checks"]} == {"mv_consistency"} and data["failed"] == 1
    assert "FAIL  mv_consistency.current_lake_version" in capsys.readouterr().out

    assert cli.main(["guardrails", "--lake", str(small[1]), "--only", "bogus"]) == 2
    assert "unknown category 'bogus'" in capsys.readouterr().err


def test_run_guardrails_returns_the_report(small) -> None:
    report = G.run_guardrails(small[1], only="null_handling")
    assert report["passed"] == 3 and report["failed"] == 0
    assert [c["category"] for c in report["checks"]] == ["null_handling"] * 3
