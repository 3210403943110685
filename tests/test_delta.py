"""The lake as a Delta Lake table: other tools read exactly the committed rows, every run is one
version, time travel answers as the data stood, vacuum keeps what readers need, old lakes upgrade.

Every expected figure comes from the baseline (DuckDB over the raw CSVs of that moment), never
from the lake or the code under test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from helpers import state_file

from analytics import cli
from analytics.checks.baseline import connect_baseline
from analytics.lake.generator import generate
from analytics.lake.prepare import PrepareError, prepare
from analytics.lake.state import LEGACY_MANIFEST, Lake
from analytics.lake.table import EVENTS_DIR, VersionUnavailable, latest_version, resolve, vacuum
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench
from analytics.views.build import build
from analytics.views.registry import load_registry

PER_TYPE = "SELECT type, count(*), round(sum(bid_price), 6), round(sum(total_price), 6) FROM {} GROUP BY 1 ORDER BY 1"
# The script leaves by os._exit once its answer is written: a native thread pool torn down at
# interpreter exit can abort the process after the work is done ("terminate called without an
# active exception", exit -6; pola-rs/polars#24169, delta-rs#2184). Any failure before that still
# raises and exits 1.
READERS = r"""
import json, os, sys
import duckdb, polars as pl
from deltalake import DeltaTable
path, version = sys.argv[1], (int(sys.argv[2]) if len(sys.argv) > 2 else None)
q = "SELECT type, count(*), round(sum(bid_price), 6), round(sum(total_price), 6) FROM {} GROUP BY 1 ORDER BY 1"
ds = DeltaTable(path, version=version).to_pyarrow_dataset()
by_polars = pl.scan_delta(path, version=version).collect().to_arrow()
# a filter on ts: polars may skip files on the add actions' min/max, which must not lose a row
jan = pl.scan_delta(path, version=version).filter(pl.col("ts") < pl.datetime(2024, 2, 1)).select(pl.len()).collect()
print(json.dumps({"deltalake": duckdb.sql(q.format("ds")).fetchall(),
                  "polars": duckdb.sql(q.format("by_polars")).fetchall(), "polars_january": jan.item(),
                  "analytics_imported": any(m.split(".")[0] == "analytics" for m in sys.modules)}))
sys.stdout.flush()
os._exit(0)
"""


def baseline(raw: Path) -> dict:
    con = connect_baseline(raw)
    try:
        return {"per_type": [list(r) for r in con.execute(PER_TYPE.format("events")).fetchall()],
                "january": con.execute("SELECT count(*) FROM events WHERE ts < TIMESTAMP '2024-02-01'").fetchone()[0]}
    finally:
        con.close()


def read_with_other_tools(lake: Path, version: int | None = None) -> dict:
    """What deltalake, Polars and DuckDB over Arrow read, in a process that never imports analytics."""
    args = [sys.executable, "-c", READERS, str(lake / EVENTS_DIR)] + ([str(version)] if version is not None else [])
    proc = subprocess.run(args, capture_output=True, text=True, cwd="/", env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_read_alike(lake: Path, raw: Path, version: int | None = None) -> None:
    want = baseline(raw)
    got = read_with_other_tools(lake, version)
    assert not got["analytics_imported"]
    assert got["deltalake"] == want["per_type"] and got["polars"] == want["per_type"]
    assert got["polars_january"] == want["january"] > 0


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three raw parts of a small year (boundary rows included by the generator), and a fourth
    that replaces the second one's content."""
    root = tmp_path_factory.mktemp("delta-parts")
    generate(root / "a", 24_000, seed=21, parts=3, progress=False)
    generate(root / "b", 6_000, seed=22, parts=1, progress=False)
    return [*sorted((root / "a").glob("*.csv")), root / "b" / "events_part_00000.csv"]


def raw_of(tmp: Path, name: str, files: list[tuple[Path, str]]) -> Path:
    raw = tmp / name
    raw.mkdir()
    for src, as_name in files:
        shutil.copy(src, raw / as_name)
    return raw


def test_each_run_is_one_version_that_other_tools_read_exactly(parts: list[Path], tmp_path: Path) -> None:
    p0, p1, p2, replacement = parts
    raw, lake = tmp_path / "raw", tmp_path / "lake"
    raw.mkdir()
    states = []
    for p in (p0, p1):
        shutil.copy(p, raw / p.name)
    prepare(raw, lake, progress=False)  # version 0
    states.append(raw_of(tmp_path, "s0", [(p0, p0.name), (p1, p1.name)]))
    shutil.copy(p2, raw / p2.name)  # an ingest of a new part
    prepare(raw, lake, progress=False, operation="ingest")
    states.append(raw_of(tmp_path, "s1", [(p0, p0.name), (p1, p1.name), (p2, p2.name)]))
    shutil.copy(replacement, raw / p1.name)  # a part replaced by other content
    prepare(raw, lake, progress=False)
    states.append(raw_of(tmp_path, "s2", [(p0, p0.name), (replacement, p1.name), (p2, p2.name)]))
    (raw / p0.name).unlink()  # a part deleted
    prepare(raw, lake, progress=False)
    states.append(raw_of(tmp_path, "s3", [(replacement, p1.name), (p2, p2.name)]))

    assert latest_version(lake) == 3  # one version per run that changed something
    assert prepare(raw, lake, progress=False)["changed"] is False and latest_version(lake) == 3
    for version, state_raw in enumerate(states):
        assert_read_alike(lake, state_raw, version)  # time travel with other tools: the removed files stay
        assert Lake.open(lake, as_of=version).state["totals"]["rows_lake"] == sum(r[1] for r in baseline(state_raw)["per_type"])
    assert_read_alike(lake, states[-1])

    from deltalake import DeltaTable
    history = {h["version"]: h for h in DeltaTable(str(lake / EVENTS_DIR)).history()}
    assert history[1]["analytics"]["operation"] == "ingest"
    assert history[1]["analytics"]["parts_added"] == [p2.name]
    assert history[3]["analytics"]["parts_dropped"] == [p0.name]
    assert history[1]["analytics"]["accounting"]["rows_read"] == sum(r[1] for r in baseline(raw_of(
        tmp_path, "only-p2", [(p2, p2.name)]))["per_type"])


def test_time_travel_answers_as_the_data_stood(parts: list[Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    p0, p1, p2, _ = parts
    raw, lake = raw_of(tmp_path, "raw", [(p0, p0.name), (p1, p1.name)]), tmp_path / "lake"
    prepare(raw, lake, progress=False)
    build(lake, progress=False)
    between = time.time()
    time.sleep(0.05)
    shutil.copy(p2, raw / p2.name)
    prepare(raw, lake, progress=False)  # version 1; the views are now stale
    old = baseline(raw_of(tmp_path, "old", [(p0, p0.name), (p1, p1.name)]))["per_type"]
    new = baseline(raw)["per_type"]
    query = {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}, {"SUM": "total_price"}],
             "from": "events", "group_by": ["type"], "order_by": [{"col": "type", "dir": "asc"}]}

    def answer(**kw: object) -> tuple[list, str, int, int | None]:
        with Workbench(lake, **kw) as wb:
            table, plan = wb.execute(query)
        rows = [[t, n, None if b is None else round(b, 6), None if p is None else round(p, 6)]
                for t, n, b, p in zip(*table.to_pydict().values())]
        return rows, plan.route, plan.lake_version, plan.view_version

    rows, route, version, view_version = answer(as_of=0)
    assert rows == old and route != LAKE and version == 0 and view_version == 1  # the views hold exactly version 0
    stamp = dt_iso(between)
    assert resolve(lake, stamp) == 0 and answer(as_of=stamp)[:3] == (old, route, 0)
    rows, route, version, _ = answer()
    assert rows == new and route == LAKE and version == 1  # the views are stale: the lake answers

    queries = tmp_path / "q.json"
    queries.write_text(json.dumps([query]))
    assert cli.main(["run", "--lake", str(lake), "--queries", str(queries), "--out", str(tmp_path / "r0"),
                     "--as-of", "0", "--no-telemetry"]) == 0
    entry = json.loads((tmp_path / "r0" / "run.json").read_text())["queries"][0]
    assert entry["lake_version"] == 0 and entry["route"] != LAKE and entry["view_version"] == 1
    assert cli.main(["run", "--lake", str(lake), "--queries", str(queries), "--out", str(tmp_path / "r1"),
                     "--no-telemetry"]) == 0
    entry = json.loads((tmp_path / "r1" / "run.json").read_text())["queries"][0]
    assert entry["lake_version"] == 1 and entry["route"] == LAKE and "view_version" not in entry
    capsys.readouterr()
    for bad, said in (("7", "version 7 of"), ("1999-01-01T00:00:00Z", "no version committed at or before"),
                      ("yesterday", "neither a version number nor an ISO timestamp")):
        assert cli.main(["run", "--lake", str(lake), "--queries", str(queries), "--out", str(tmp_path / "rx"),
                         "--as-of", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and "\n" not in err


def dt_iso(epoch: float) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def test_vacuum_keeps_what_a_running_reader_and_the_views_read(parts: list[Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    p0, p1, _, replacement = parts
    raw, lake = raw_of(tmp_path, "raw", [(p0, p0.name), (p1, p1.name)]), tmp_path / "lake"
    prepare(raw, lake, progress=False)
    old_files = Lake.open(lake).event_files()
    query = {"select": [{"COUNT": "*"}], "from": "events"}
    old_count = sum(r[1] for r in baseline(raw)["per_type"])
    reader = Workbench(lake, use_views=False)  # a long-running reader of version 0, mid-work
    shutil.copy(replacement, raw / p1.name)
    prepare(raw, lake, progress=False)  # version 1 removes p1's old files from the table
    with Workbench(lake, as_of=0, use_views=False) as wb:  # its lease keeps version 0 too
        assert cli.main(["vacuum", "--lake", str(lake), "--retain", "0"]) == 0
        assert wb.query(query).column(0)[0].as_py() == old_count
    assert all(f.exists() for f in old_files)  # both readers still hold version 0
    reader.close()
    assert vacuum(lake, parse("0"))["removed_files"]  # the last reader is gone: now they go
    assert not all(f.exists() for f in old_files)
    capsys.readouterr()
    assert cli.main(["run", "--lake", str(lake), "--queries", str(write_json(tmp_path / "q.json", [query])),
                     "--out", str(tmp_path / "r"), "--as-of", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "version 0 of" in err and "no longer available" in err and "\n" not in err
    assert_read_alike(lake, raw)  # the newest version is whole

    # a version a registered view covers is kept whatever the retention, until the view moves on
    lake2 = tmp_path / "lake2"
    raw2 = raw_of(tmp_path, "raw2", [(p0, p0.name)])
    prepare(raw2, lake2, progress=False)
    build(lake2, ["mv_day_type_wide"], progress=False)  # covers version 0
    v0_files = Lake.open(lake2).event_files()
    shutil.copy(p1, raw2 / p0.name)  # the part's content replaced: version 1 removes version 0's files
    prepare(raw2, lake2, progress=False)
    assert cli.main(["vacuum", "--lake", str(lake2), "--retain", "0"]) == 0
    assert all(f.exists() for f in v0_files) and Lake.open(lake2, as_of=0).version == 0
    build(lake2, ["mv_day_type_wide"], progress=False)  # the view now covers version 1
    assert load_registry(lake2)["mv_day_type_wide"].lake_version == 1
    assert cli.main(["vacuum", "--lake", str(lake2), "--retain", "0"]) == 0
    assert not any(f.exists() for f in v0_files)
    with pytest.raises(VersionUnavailable, match="no longer available"):
        Lake.open(lake2, as_of=0)
    assert cli.main(["vacuum", "--lake", str(lake2), "--retain", "soon"]) == 2


def parse(text: str):  # noqa: ANN201
    from analytics.lake.table import parse_retention
    return parse_retention(text)


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_another_writer_between_read_and_commit_is_rebased_over_never_lost(parts: list[Path], tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from deltalake import write_deltalake

    import analytics.lake.table as table_mod

    p0, p1, p2, _ = parts
    raw, lake = raw_of(tmp_path, "raw", [(p0, p0.name)]), tmp_path / "lake"
    prepare(raw, lake, progress=False)
    foreign = _click_rows(lake)
    real = table_mod._table
    done = []

    def racing(root: Path, version: int | None = None):  # noqa: ANN202
        if version is not None and not done:  # our commit is about to start from `version`
            done.append(True)
            write_deltalake(str(root / EVENTS_DIR), foreign, mode="append", partition_by=["type"])
        return real(root, version)

    monkeypatch.setattr(table_mod, "_table", racing)
    shutil.copy(p1, raw / p1.name)
    summary = prepare(raw, lake, progress=False)
    monkeypatch.undo()
    assert done and summary["lake_version"] == 2  # rebased: the other writer took version 1
    after = Lake.open(lake)
    assert any(seg.get("foreign") for seg in after.segments)  # its file is live and counted
    both = baseline(raw_of(tmp_path, "both", [(p0, p0.name), (p1, p1.name)]))["per_type"]
    clicks = {r[0]: r[1] for r in both}["click"] + foreign.num_rows
    got = read_with_other_tools(lake)["deltalake"]
    assert {r[0]: r[1] for r in got}["click"] == clicks
    with Workbench(lake, use_views=False) as wb:
        n = wb.query({"select": [{"COUNT": "*"}], "from": "events", "where": [
            {"col": "type", "op": "eq", "val": "click"}]}).column(0)[0].as_py()
    assert n == clicks
    assert after.state["totals"]["lake_by_type"]["click"] == clicks

    # a writer whose commit conflicts (the file it removes is gone) fails cleanly; nothing is lost
    def conflicting(root: Path, version: int | None = None):  # noqa: ANN202
        if version is not None and len(done) == 1:
            done.append(True)
            from deltalake import DeltaTable
            DeltaTable(str(root / EVENTS_DIR)).delete("type = 'impression'")
        return real(root, version)

    monkeypatch.setattr(table_mod, "_table", conflicting)
    (raw / p0.name).unlink()
    shutil.copy(p2, raw / p2.name)
    with pytest.raises(PrepareError, match="failed"):
        prepare(raw, lake, progress=False)
    monkeypatch.undo()
    assert latest_version(lake) == 3  # the other writer's delete; ours never half-landed
    Lake.open(lake)
    summary = prepare(raw, lake, progress=False)  # the next run lands it on top
    assert summary["changed"] and latest_version(lake) == 4


def _click_rows(lake: Path) -> pa.Table:
    import pyarrow.parquet as pq
    return pq.read_table(Lake.open(lake).event_files(["click"])[0]).slice(0, 5).append_column(
        "type", pa.array(["click"] * 5))


def test_a_lake_of_the_old_format_is_upgraded_in_place_and_its_views_stay_valid(parts: list[Path],
                                                                                 tmp_path: Path) -> None:
    p0, p1, _, _ = parts
    raw, lake = raw_of(tmp_path, "raw", [(p0, p0.name), (p1, p1.name)]), tmp_path / "lake"
    prepare(raw, lake, progress=False)
    build(lake, ["mv_day_type_wide"], progress=False)
    # the old format: the manifest alone, and the views built from its version
    state = Lake.open(lake).state
    manifest = {k: v for k, v in state.items() if k not in ("version", "data_version", "data_aliases")}
    manifest.update(schema_version=1, lake_version="9d540673faa20967")
    (lake / LEGACY_MANIFEST).write_text(json.dumps(manifest))
    shutil.rmtree(lake / EVENTS_DIR / "_delta_log")
    shutil.rmtree(lake / "_state")
    registry = json.loads((lake / "views" / "_registry.json").read_text())
    registry["views"]["mv_day_type_wide"]["lake_version"] = "9d540673faa20967"
    (lake / "views" / "_registry.json").write_text(json.dumps(registry))
    with pytest.raises(FileNotFoundError, match="old format"):
        Lake.open(lake)

    summary = prepare(raw, lake, progress=False)
    assert summary["changed"] and latest_version(lake) == 0 and not (lake / LEGACY_MANIFEST).exists()
    assert_read_alike(lake, raw)
    assert build(lake, ["mv_day_type_wide"], progress=False)["up_to_date"] == ["mv_day_type_wide"]
    with Workbench(lake) as wb:
        table, plan = wb.execute({"select": ["day", {"COUNT": "*"}], "from": "events", "group_by": ["day"]})
    assert plan.route == "mv_day_type_wide" and sum(table.column(1).to_pylist()) == sum(
        r[1] for r in baseline(raw)["per_type"])


def test_a_missing_state_file_is_derived_from_the_log(parts: list[Path], tmp_path: Path) -> None:
    p0, p1, _, _ = parts
    raw, lake = raw_of(tmp_path, "raw", [(p0, p0.name)]), tmp_path / "lake"
    prepare(raw, lake, progress=False)
    shutil.copy(p1, raw / p1.name)
    prepare(raw, lake, progress=False)
    before = Lake.open(lake).state
    state_file(lake).unlink()  # as if killed between the commit and its state file
    after = Lake.open(lake).state
    assert state_file(lake).is_file()
    for key in ("version", "data_version", "segments", "totals", "rejected", "layout"):
        assert after[key] == before[key], key
    assert duckdb.sql(f"SELECT count(*) FROM {Lake.open(lake).relation_sql()}").fetchall()[0][0] == sum(
        r[1] for r in baseline(raw)["per_type"])


def test_a_reader_between_a_commit_and_its_state_file_reads_the_version_before(parts: list[Path],
                                                                              tmp_path: Path) -> None:
    from filelock import FileLock

    from analytics.lake.table import WRITE_LOCK

    p0, p1, _, _ = parts
    raw, lake = raw_of(tmp_path, "raw", [(p0, p0.name)]), tmp_path / "lake"
    prepare(raw, lake, progress=False)
    shutil.copy(p1, raw / p1.name)
    prepare(raw, lake, progress=False)
    state_file(lake).unlink()  # version 1 is committed, its state file not yet written
    with FileLock(str(lake / WRITE_LOCK)):  # ... by a writer still at work
        assert Lake.open(lake).version == 0  # a whole version: a moment earlier
        assert not state_file(lake).exists()
    assert Lake.open(lake).version == 1  # no writer: derived from the log
