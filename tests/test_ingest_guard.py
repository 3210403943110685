"""One ingest at a time, failures that say so, nothing left behind; and `--budget`'s bounds.

Two and three `analytics ingest` processes started together on one lake: one works, the others
wait (and say so) and find nothing left to do; the lake and the views answer exactly the baseline
of all parts, nothing lost or doubled, no traceback. A second ingest with `--no-wait` exits 2 at
once. A take or a prepare that fails (a full disk, simulated by a patched write) exits non-zero,
leaves no temporary file, and the previous state is served exactly. A run that finishes a part an
interrupted run had taken says so.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from analytics.checks.baseline import baseline_query, connect_baseline
from analytics.cli import main
from analytics.core.faults import ENV
from analytics.lake.generator import generate
from analytics.lake.landing import TAKEN_DIR
from analytics.lake.state import Lake
from analytics.query.model import parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.serving.workbench import Workbench
from analytics.views.ingest import LOCK

QUERIES = [
    {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events", "group_by": ["type"]},
    {"select": ["day", {"COUNT": "*"}, {"MAX": "total_price"}], "from": "events", "group_by": ["day"],
     "where": [{"col": "type", "op": "eq", "val": "purchase"}]},
    {"select": ["country", {"COUNT": "*"}], "from": "events", "group_by": ["country"]},
]
VIEWS = ["--jobs", "1"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("guard-parts")
    generate(out, 24_000, seed=41, parts=3, progress=False)
    return sorted(out.glob("*.csv"))


def _expected(parts: list[Path], tmp: Path) -> list[list[list[str]]]:
    raw = tmp / f"baseline-{len(parts)}"
    raw.mkdir()
    for p in parts:
        shutil.copy(p, raw / p.name)
    con = connect_baseline(raw, materialize=True)
    try:
        return [to_rows(q, baseline_query(con, q)) for q in map(parse_query, QUERIES)]
    finally:
        con.close()


def _served(lake: Path, expected: list, use_views: bool = True) -> None:
    with Workbench(lake) as wb:
        for raw, want in zip(QUERIES, expected):
            q = parse_query(raw)
            assert compare_rows(q, want, to_rows(q, wb.execute(q, use_views=use_views)[0])) is None, raw


def _leftovers(lake: Path) -> list[str]:
    """Temporary files of any step: a taking copy, a prepare stage, a view staging file, an atomic write."""
    out = []
    for p in lake.rglob("*"):
        n = p.name
        if n.endswith(".taking") or n.startswith(".taking-") or n.startswith(".staging-") or n.endswith(".tmp"):
            out.append(str(p))
    if (lake / "_staging").exists() and any((lake / "_staging").iterdir()):
        out.append(str(lake / "_staging"))
    return out


def _ingest_proc(landing: Path, lake: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    return subprocess.Popen([sys.executable, "-m", "analytics", "ingest", "--raw", str(landing), "--lake", str(lake),
                             "--settle", "0", *VIEWS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_ingests_on_one_lake_take_turns_and_count_each_part_once(parts, tmp_path, n):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    for p in parts:
        shutil.copy(p, landing / p.name)
    procs = [_ingest_proc(landing, lake) for _ in range(n)]
    results = [p.communicate(timeout=900) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, (out, err)
        assert "Traceback" not in err and "error" not in err.lower(), err
    taken = [int(out.split("ingested ")[1].split(" ")[0]) for out, _ in results]
    assert sum(taken) == len(parts), results  # each part once: nothing doubled, nothing lost
    assert sum("waiting for it to finish" in err for _, err in results) >= 1, [e for _, e in results]
    manifest = Lake.open(lake).state
    assert sorted(s["source"]["file"] for s in manifest["segments"]) == [p.name for p in parts]
    expected = _expected(parts, tmp_path)
    _served(lake, expected)
    _served(lake, expected, use_views=False)
    assert _leftovers(lake) == []


def test_a_second_ingest_with_no_wait_exits_2_at_once_and_without_it_waits(parts, tmp_path, capsys):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    shutil.copy(parts[0], landing / parts[0].name)
    lock_path = lake / TAKEN_DIR
    lock_path.parent.mkdir(parents=True)
    with FileLock(str(lock_path.parent / LOCK)):
        started = time.perf_counter()
        assert main(["ingest", "--raw", str(landing), "--lake", str(lake), "--settle", "0", "--no-wait"]) == 2
        assert time.perf_counter() - started < 30
        err = capsys.readouterr().err
        assert "another ingest is running" in err and "Traceback" not in err
        waiting = _ingest_proc(landing, lake, "--quiet")
        time.sleep(1.5)
        assert waiting.poll() is None  # still waiting for the lock this test holds
    out, err = waiting.communicate(timeout=900)
    assert waiting.returncode == 0 and "waiting for it to finish" in err and "ingested 1 part(s)" in out, (out, err)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_prepare_that_fails_inside_ingest_exits_nonzero_leaves_nothing_and_serves_the_previous_state(
        parts, tmp_path, capsys, monkeypatch):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    shutil.copy(parts[0], landing / parts[0].name)
    assert main(["ingest", "--raw", str(landing), "--lake", str(lake), "--settle", "0", *VIEWS, "--quiet"]) == 0
    before = _expected(parts[:1], tmp_path)
    _served(lake, before)
    shutil.copy(parts[1], landing / parts[1].name)
    # the disk fills while the new segment's files are checksummed, after they are staged
    monkeypatch.setattr("analytics.lake.prepare.segment_record", _no_space)
    capsys.readouterr()
    assert main(["ingest", "--raw", str(landing), "--lake", str(lake), "--settle", "0", *VIEWS, "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "1 step(s) failed" in captured.out and "No space left on device" in captured.err
    assert _leftovers(lake) == []
    _served(lake, before)
    _served(lake, before, use_views=False)
    monkeypatch.undo()  # space again: the next run finishes the part the failed one had taken
    assert main(["ingest", "--raw", str(landing), "--lake", str(lake), "--settle", "0", *VIEWS, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"ingested 1 part(s) (1 finished for an interrupted run: {parts[1].name})" in out, out
    _served(lake, _expected(parts[:2], tmp_path))


def test_a_take_that_fails_leaves_no_temporary_file_and_never_one_named_as_a_part(parts, tmp_path, capsys,
                                                                                  monkeypatch):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    shutil.copy(parts[0], landing / parts[0].name)
    seen: list[str] = []

    def half_copy(src, dst, *args, **kwargs):  # a copy (no hard link) that runs out of space midway
        seen.append(Path(dst).name)
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("analytics.lake.landing.os.link", _no_space)
    monkeypatch.setattr("analytics.lake.landing.shutil.copy2", half_copy)
    assert main(["ingest", "--raw", str(landing), "--lake", str(lake), "--settle", "0", *VIEWS, "--quiet"]) == 1
    assert seen and not any(Path(n).match("*.csv") for n in seen), seen
    assert _leftovers(lake) == [] and not list((lake / TAKEN_DIR).iterdir())
    assert "take" in capsys.readouterr().err


def test_a_rerun_says_what_it_finished_for_a_killed_run(parts, tmp_path):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    shutil.copy(parts[0], landing / parts[0].name)
    env = {**{k: v for k, v in os.environ.items() if k != ENV}, ENV: "ingest:after-take"}
    killed = subprocess.run([sys.executable, "-m", "analytics", "ingest", "--raw", str(landing), "--lake", str(lake),
                             "--settle", "0", *VIEWS, "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9
    proc = _ingest_proc(landing, lake, "--quiet")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"ingested 1 part(s) (1 finished for an interrupted run: {parts[0].name})" in out, out
    _served(lake, _expected(parts[:1], tmp_path))


@pytest.mark.parametrize("budget", ["0", "0B", "900TiB"])
def test_a_budget_of_nothing_or_beyond_the_free_disk_is_refused_in_one_line(lake_dir, capsys, budget):
    with pytest.raises(SystemExit) as exit_:
        code = main(["advise", "--lake", str(lake_dir), "--budget", budget])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--budget" in errors[0], err
