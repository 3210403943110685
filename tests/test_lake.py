"""prepare: remediation accounting, layout, no-op re-runs, appends, crash safety, clear errors."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from helpers import state_file

from analytics.core import faults
from analytics.lake.generator import generate
from analytics.lake.prepare import PrepareError, prepare
from analytics.lake.state import Lake
from analytics.lake.table import latest_version, vacuum
from analytics.query.schema import EVENT_TYPES, RAW_HEADER


@pytest.fixture(scope="module")
def dirty_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dirty")
    generate(out, 20_000, seed=3, parts=2, dirty=0.02, progress=False)
    return out


def _count_csv_rows(raw: Path) -> int:
    return sum(sum(1 for _ in f.open()) - 1 for f in raw.glob("*.csv"))


def test_dirty_rows_are_quarantined_with_reasons_and_nothing_is_lost(dirty_raw, tmp_path):
    summary = prepare(dirty_raw, tmp_path / "lake", progress=False)
    totals = summary["totals"]
    assert totals["rows_read"] == _count_csv_rows(dirty_raw) == 20_000
    assert totals["rows_read"] == totals["rows_lake"] + totals["rows_quarantined"]
    assert totals["rows_quarantined"] == 400  # 2% dirty, each kind of fault quarantined
    reasons = totals["quarantine_by_reason"]
    for reason in ("ts_missing", "ts_unparseable", "type_invalid", "auction_id_missing", "advertiser_id_missing",
                   "publisher_id_missing", "country_missing", "price_negative", "wrong_field_count"):
        assert reasons.get(reason, 0) > 0, reason
    assert sum(totals["quarantine_by_type"].values()) == totals["rows_quarantined"]
    lake = Lake.open(tmp_path / "lake")
    con = duckdb.connect()
    files = [str(f) for f in lake.quarantine_files()]
    q = con.execute(f"SELECT reason, count(*), count(line), count(source_file) FROM read_parquet({files}) GROUP BY 1").fetchall()
    by_reason = {r: n for r, n, _, _ in q}
    assert by_reason == reasons
    assert all(nsrc == n for _, n, _, nsrc in q)
    assert all(nline == n for r, n, nline, _ in q if r == "wrong_field_count")  # DuckDB gives their line numbers
    in_lake = con.execute(f"SELECT count(*) FROM {lake.relation_sql()}").fetchone()[0]
    assert in_lake == totals["rows_lake"]
    nulls = con.execute(f"SELECT count(*) FROM {lake.relation_sql()} WHERE advertiser_id IS NULL OR publisher_id IS NULL "
                        "OR country IS NULL OR auction_id IS NULL OR ts IS NULL OR bid_price < 0").fetchone()[0]
    assert nulls == 0


def test_layout_is_typed_partitioned_sorted_and_derived_in_utc(lake_dir):
    lake = Lake.open(lake_dir)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'America/Los_Angeles'")  # a session zone must not matter
    for t in EVENT_TYPES:
        files = lake.event_files([t])
        assert files and all(f.parent.name == f"type={t}" for f in files)
    f = str(lake.event_files(["impression"])[0])
    meta = con.execute(f"SELECT DISTINCT compression FROM parquet_metadata('{f}')").fetchall()
    assert meta == [("ZSTD",)]
    schema = dict(con.execute(f"DESCRIBE SELECT * FROM read_parquet('{f}')").fetchall()[i][:2] for i in range(12))
    assert schema["ts"] == "TIMESTAMP" and schema["day"] == "DATE" and schema["advertiser_id"] == "INTEGER"
    unsorted = con.execute(f"SELECT count(*) FROM (SELECT ts < lag(ts) OVER () AS back FROM read_parquet('{f}')) WHERE back").fetchone()[0]
    assert unsorted == 0
    wrong = con.execute(f"""SELECT count(*) FROM read_parquet('{f}') WHERE
        day <> CAST(ts AS DATE) OR hour <> date_trunc('hour', ts) OR week <> CAST(date_trunc('week', ts) AS DATE)
        OR isodow(week) <> 1 OR minute <> strftime(ts, '%Y-%m-%d %H:%M')""").fetchone()[0]
    assert wrong == 0


def test_rerun_on_unchanged_input_is_a_noop(raw_dir, lake_copy):
    version, before = latest_version(lake_copy), state_file(lake_copy).read_bytes()
    summary = prepare(raw_dir, lake_copy, progress=False)
    assert summary["changed"] is False
    assert latest_version(lake_copy) == version and state_file(lake_copy).read_bytes() == before


def test_new_part_is_appended_without_rewriting_others(tmp_path):
    raw = tmp_path / "raw"
    generate(raw, 12_000, seed=5, parts=3, progress=False)
    last = raw / "events_part_00002.csv"
    held = tmp_path / "held.csv"
    shutil.move(last, held)
    lake = tmp_path / "lake"
    first = prepare(raw, lake, progress=False)
    stamps = {f: f.stat().st_mtime_ns for f in Lake.open(lake).event_files()}
    shutil.move(held, last)
    second = prepare(raw, lake, progress=False)
    assert second["changed"] and second["added"] == ["events_part_00002.csv"]
    assert second["lake_version"] != first["lake_version"]
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # untouched
    assert second["totals"]["rows_lake"] == 12_000
    assert set(second["changed_days"]["serve"]) <= set(Lake.open(lake).days_by_type()["serve"])


def test_removed_part_is_dropped(tmp_path):
    raw = tmp_path / "raw"
    generate(raw, 6_000, seed=5, parts=2, progress=False)
    prepare(raw, tmp_path / "lake", progress=False)
    before = set((tmp_path / "lake" / "events").rglob("*.parquet"))
    (raw / "events_part_00001.csv").unlink()
    summary = prepare(raw, tmp_path / "lake", progress=False)
    assert summary["dropped"] == ["events_part_00001.csv"]
    lake = Lake.open(tmp_path / "lake")
    assert len(lake.state["segments"]) == 1
    # the dropped part's files stay for time travel to version 0, until vacuum removes them
    assert set((tmp_path / "lake" / "events").rglob("*.parquet")) == before
    vacuum(tmp_path / "lake", dt.timedelta(0))
    assert sorted((tmp_path / "lake" / "events").rglob("*.parquet")) == sorted(lake.event_files())


def _served_by_type(lake: Lake) -> dict[str, int]:
    """Rows per type as a reader of the committed files sees them."""
    con = duckdb.connect()
    return dict(con.execute(f"SELECT type, count(*) FROM {lake.relation_sql()} GROUP BY type").fetchall())


@pytest.fixture(scope="module")
def crash_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("crash_raw")
    generate(raw, 40_000, seed=9, parts=4, dirty=0.01, progress=False)
    return raw


COMMITTED = ("commit:after-delta", "prepare:after-commit")  # killed once the Delta log has the new version


@pytest.mark.parametrize("point", ["prepare:after-stage", "prepare:mid-rename", "prepare:after-rename-before-commit",
                                   "commit:before-delta", *COMMITTED])
def test_prepare_killed_at_each_commit_step_serves_a_whole_lake(crash_raw, tmp_path, point):
    raw = tmp_path / "raw"
    shutil.copytree(crash_raw, raw)
    held = tmp_path / "held"
    held.mkdir()
    for name in ("events_part_00002.csv", "events_part_00003.csv"):
        shutil.move(raw / name, held / name)
    lake = tmp_path / "lake"
    prepare(raw, lake, progress=False)
    before = Lake.open(lake).state
    for f in held.iterdir():
        shutil.move(f, raw / f.name)
    proc = subprocess.run([sys.executable, "-m", "analytics", "prepare", "--raw", str(raw), "--lake", str(lake),
                           "--quiet"], capture_output=True, text=True, env={**os.environ, faults.ENV: point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr  # killed at that step, not before nor after it
    after = Lake.open(lake)
    if point in COMMITTED:  # the new version, its state derived from the log when its file was not written
        assert after.version == 1 and len(after.state["segments"]) == 4
    else:  # the previous version, and exactly its rows, whatever was staged or promoted
        assert after.state == before
    assert _served_by_type(after) == after.state["totals"]["lake_by_type"]

    summary = prepare(raw, lake, progress=False)  # the next run finishes the job and sweeps leftovers
    assert summary["changed"] is (point not in COMMITTED)
    final = Lake.open(lake)
    segments = final.state["segments"]
    assert sorted(s["source"]["file"] for s in segments) == sorted(p.name for p in raw.glob("*.csv"))
    assert final.state["totals"]["rows_read"] == 40_000
    assert final.state["totals"]["rows_lake"] == sum(s["rows_lake"] for s in segments)
    assert final.state["totals"] == prepare(raw, tmp_path / "fresh", progress=False)["totals"]  # as if never killed
    assert _served_by_type(final) == final.state["totals"]["lake_by_type"]  # no part counted twice
    assert not (lake / "_staging").exists()
    assert sorted((lake / "events").rglob("*.parquet")) == sorted(final.event_files())
    assert len(list((lake / "quarantine").rglob("*.parquet"))) == len(final.quarantine_files())


def test_clear_errors(tmp_path):
    with pytest.raises(PrepareError, match="does not exist"):
        prepare(tmp_path / "missing", tmp_path / "lake")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="holds no \\*.csv files"):
        prepare(tmp_path / "empty", tmp_path / "lake")
    bad = tmp_path / "bad"
    bad.mkdir()
    header = [c for c in RAW_HEADER if c != "country"] + ["region"]
    (bad / "events_part_00000.csv").write_text(",".join(header) + "\n")
    with pytest.raises(PrepareError, match="missing country; unexpected region"):
        prepare(bad, tmp_path / "lake")


def test_cli_prepare_errors_are_one_line_and_nonzero(tmp_path):
    out = subprocess.run([sys.executable, "-m", "analytics", "prepare", "--raw", str(tmp_path / "nope"), "--lake",
                          str(tmp_path / "lake")], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "does not exist" in out.stderr


def test_prepare_ignores_process_time_zone(raw_dir, lake_dir, tmp_path):
    env = {**os.environ, "TZ": "Pacific/Kiritimati"}
    subprocess.run([sys.executable, "-m", "analytics", "prepare", "--raw", str(raw_dir), "--lake", str(tmp_path / "lake"),
                    "--quiet"], check=True, env=env, capture_output=True)
    a, b = Lake.open(lake_dir), Lake.open(tmp_path / "lake")
    con = duckdb.connect()
    sql = "SELECT type, day, hour, count(*) FROM {} GROUP BY ALL EXCEPT SELECT type, day, hour, count(*) FROM {} GROUP BY ALL"
    assert con.execute(sql.format(a.relation_sql(), b.relation_sql())).fetchall() == []
    assert a.version == b.version
