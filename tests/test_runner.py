"""The safe batch runner: batches of at most 20, a memory guard that fails one query clearly and lets the
others answer, compute-only timing, atomic files that a killed run never leaves truncated, parallel
answers equal to sequential ones, and clear errors for bad query files."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from helpers import fresh, tables_match
from querygen import random_queries

import analytics.batch.items as items_mod
import analytics.batch.runner as runner_mod
from analytics.batch.runner import SafeBatchRunner
from analytics.core.memory import parse_size, split_memory
from analytics.query.model import parse_query
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench

VIEW_Q = {"select": ["day", {"COUNT": "*"}], "from": "events", "group_by": ["day"]}
TYPE_Q = {"select": ["type", {"COUNT": "*"}], "from": "events", "group_by": ["type"]}
HUGE_Q = {"select": ["auction_id", "user_id", "ts", "country", "minute"], "from": "events"}  # every row


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analytics", *args], capture_output=True, text=True, cwd=cwd)



def test_parse_and_split_memory_sizes():
    assert parse_size("512MB") == 512 * 10**6 and parse_size("4GiB") == 4 * 2**30 and parse_size("1.5 gb") == 15 * 10**8
    for bad in ("", "12", "5XB", "-1GB", "100KB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert split_memory("4GiB", 2) == "2048MiB" and split_memory("6GB", 12) == "476MiB"
    with pytest.raises(ValueError, match="'lots'"):
        split_memory("lots", 2)
    # what is held outside DuckDB comes off the top before the jobs share the rest
    assert split_memory("4GiB", 2, reserve=2**30) == "1536MiB"
    with pytest.raises(ValueError, match=r"2 job\(s\) need at least 1152MiB \(1024MiB outside DuckDB"):
        split_memory("1GiB", 2, reserve=2**30)


def test_more_than_20_queries_are_split_into_reported_batches(workbench):
    queries = [VIEW_Q, TYPE_Q, {"select": ["nope"], "from": "events"}] * 15
    runner = SafeBatchRunner(workbench, cache=False, telemetry=False)
    out = runner.run(queries)
    assert [len(b["queries"]) for b in out.report["batches"]] == [20, 20, 5]
    assert out.report["batches"][1]["queries"][0] == "q21" and out.report["batch_size"] == 20
    assert len(out.report["queries"]) == 45 and out.errors == 15 and out.report["complete"]
    assert [len(b["queries"]) for b in runner.run(queries, batch_size=7).report["batches"]] == [7] * 6 + [3]
    runner.close()


def test_parallel_vs_sequential_identical(workbench):
    raw = random_queries(100, seed=41) + random_queries(100, seed=42, view_shaped=True)
    runner = SafeBatchRunner(workbench, cache=False, telemetry=False)
    par = runner.run(raw, parallel=True)
    seq = runner.run(raw, parallel=False)
    runner.close()
    assert par.report["workers"] == (os.cpu_count() or 1) and seq.report["workers"] == 1
    for i, (r, e1, e2) in enumerate(zip(raw, par.report["queries"], seq.report["queries"])):
        assert ("error" in e1) == ("error" in e2), (e1, e2)
        if "error" in e1:
            continue
        assert e1["route"] == e2["route"]
        why = tables_match(parse_query(r), seq.tables[i], par.tables[i])
        assert why is None, f"q{i + 1}: {why}\n{json.dumps(r)}"
    assert sum(1 for e in par.report["queries"] if "error" not in e) >= 180


def test_lake_work_takes_the_pool_and_view_answers_the_calling_thread(workbench, monkeypatch):
    raw = random_queries(30, seed=43) + random_queries(30, seed=44, view_shaped=True)
    seen: list[tuple[str, str]] = []
    real = workbench.execute

    def spy(query, plan=None):
        seen.append((plan.route if plan is not None else "?", threading.current_thread().name))
        return real(query, plan=plan)
    monkeypatch.setattr(workbench, "execute", spy)
    runner = SafeBatchRunner(workbench, cache=False, telemetry=False, batching=False, parallel=True)
    runner.run(raw)
    runner.close()
    me = threading.current_thread().name
    on_lake = {name for route, name in seen if route == LAKE}
    on_views = {name for route, name in seen if route != LAKE}
    assert on_lake and on_views, seen
    assert on_views == {me} and me not in on_lake and all(n.startswith("query") for n in on_lake), seen


@pytest.mark.parametrize("parallel", [True, False])
def test_memory_guard_fails_the_one_query_clearly_and_the_others_answer(lake_copy, tmp_path, monkeypatch, parallel):
    monkeypatch.chdir(tmp_path)  # DuckDB may spill into ./.tmp
    lake = fresh(lake_copy)
    queries = [VIEW_Q, TYPE_Q, HUGE_Q, {"select": [{"COUNT": "*"}], "from": "events"}]
    with Workbench(lake, memory_limit="16MB") as wb:
        runner = SafeBatchRunner(wb, cache=False, telemetry=False, parallel=parallel)
        out = runner.run(queries, tmp_path / "out")
        runner.close()
    entries = out.report["queries"]
    assert "error" in entries[2], entries[2]
    assert entries[2]["error"].startswith("q3 exceeded the memory limit 16MB")
    assert all("error" not in e for i, e in enumerate(entries) if i != 2), entries
    assert sorted(p.name for p in (tmp_path / "out").glob("q*.csv")) == ["q1.csv", "q2.csv", "q4.csv"]
    assert out.report["memory_limit"] == "16MB"


def test_cli_memory_limit_and_exit_code(lake_copy, tmp_path):
    lake = fresh(lake_copy)
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps([VIEW_Q, HUGE_Q, TYPE_Q]))
    proc = cli("run", "--lake", str(lake), "--queries", str(qfile), "--out", str(tmp_path / "out"),
               "--memory-limit", "16MB", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert "q2 exceeded the memory limit 16MB" in run["queries"][1]["error"]
    assert "q2: ERROR q2 exceeded the memory limit 16MB" in proc.stdout
    assert [e.get("rows") for e in run["queries"]][::2] == [366, 4]
    bad = cli("run", "--lake", str(lake), "--queries", str(qfile), "--out", str(tmp_path / "o2"), "--memory-limit", "lots")
    assert bad.returncode == 2 and "--memory-limit" in bad.stderr and "'lots'" in bad.stderr


def test_run_json_and_timing_excludes_writing(lake_copy, tmp_path, monkeypatch):
    lake = fresh(lake_copy)
    real, clock = items_mod.to_csv_text, time.perf_counter
    skipped = [0.0]

    def slow(q, table):  # writing takes an hour on the clock: it must not show in ms
        skipped[0] += 3600.0
        return real(q, table)

    monkeypatch.setattr(items_mod, "to_csv_text", slow)
    monkeypatch.setattr(time, "perf_counter", lambda: clock() + skipped[0])
    lake_q = {"select": ["auction_id", {"COUNT": "*"}], "from": "events", "group_by": ["auction_id"],
              "where": [{"col": "type", "op": "eq", "val": "click"}]}
    with Workbench(lake) as wb:
        wb.warm()
        runner = SafeBatchRunner(wb, telemetry=False)
        report = runner.run([VIEW_Q, lake_q, TYPE_Q], tmp_path / "out").report
        runner.close()
    assert report == json.loads((tmp_path / "out" / "run.json").read_text())
    q1, q2, q3 = report["queries"]
    assert q1["route"] != LAKE and q2["route"] == LAKE and q2["fallback_reason"]
    assert {"id", "ms", "route", "rows", "cache"} <= set(q1) and q1["cache"] is False
    assert skipped[0] and all(e["ms"] < 3_600_000 for e in report["queries"]), report["queries"]
    assert report["lake_queries"] == 1 and report["lake_scans"] == 1 and report["errors"] == 0
    assert (tmp_path / "out" / "q2.csv").read_text().startswith("auction_id,COUNT(*)\n")


def test_one_failing_query_never_stops_the_batch(workbench, monkeypatch):
    real = workbench.execute

    def flaky(q, use_views=None, plan=None):
        if q.group_by == ("type",):
            raise RuntimeError("disk on fire\nsecond line")
        return real(q, use_views, plan)

    monkeypatch.setattr(workbench, "execute", flaky)
    runner = SafeBatchRunner(workbench, cache=False, telemetry=False)
    out = runner.run([VIEW_Q, TYPE_Q, 7, {"select": ["day"], "from": "events", "group_by": ["week"]}, VIEW_Q])
    runner.close()
    e = out.report["queries"]
    assert e[1]["error"] == "RuntimeError: disk on fire"
    assert e[2]["error"] == "invalid query: a query must be a JSON object, got int"
    assert e[3]["error"].startswith("invalid query: select: column(s) 'day' neither grouped nor aggregated")
    assert "error" not in e[0] and "error" not in e[4] and out.errors == 3


def test_bad_query_files_give_clear_errors(lake_dir, tmp_path):
    cases = {
        "empty.json": ("[]", "holds no queries"),
        "notjson.json": ("{\"select\": [", "is not valid JSON"),
        "string.json": ("\"SELECT 1\"", "must hold a JSON list of queries, got str"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        proc = cli("run", "--lake", str(lake_dir), "--queries", str(tmp_path / name), "--out", str(tmp_path / "o"),
                   "--no-telemetry", "--no-cache")
        assert proc.returncode == 2 and message in proc.stderr and name in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "mixed.json").write_text(json.dumps([[VIEW_Q], "COUNT", VIEW_Q]))
    proc = cli("run", "--lake", str(lake_dir), "--queries", str(tmp_path / "mixed.json"), "--out", str(tmp_path / "m"),
               "--no-telemetry", "--no-cache")
    assert proc.returncode == 1
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["queries"][0]["error"] == "invalid query: a query must be a JSON object, got list"
    assert run["queries"][1]["error"] == "invalid query: a query must be a JSON object, got str"
    assert run["queries"][2]["rows"] == 366
    assert sorted(p.name for p in (tmp_path / "m").glob("*.csv")) == ["q3.csv"]


def test_a_killed_run_leaves_only_complete_files(lake_copy, tmp_path):
    """Killed while answers are written (the crash point `write:before-rename` at its 1st, 5th and
    9th passage: that answer's temporary file complete, not renamed): every answer file there is
    complete, none of the later ones is, and the next run sweeps the temporary files and completes."""
    lake = fresh(lake_copy)
    queries = [{"select": ["auction_id", "ts", "bid_price"], "from": "events",
                "where": [{"col": "type", "op": "eq", "val": t}], "order_by": [{"col": "ts"}, {"col": "auction_id"}],
                "limit": 800 + i} for i in range(6) for t in ("serve", "impression")]
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps(queries))
    args = ["--lake", str(lake), "--queries", str(qfile), "--no-telemetry", "--no-cache", "--batch-size", "4"]
    assert cli("run", *args, "--out", str(tmp_path / "ref")).returncode == 0
    reference = {p.name: p.read_text() for p in (tmp_path / "ref").glob("q*.csv")}
    assert len(reference) == 12
    for passage in (1, 5, 9):
        out = tmp_path / f"killed{passage}"
        out.mkdir()
        (out / "q5.csv").write_text("an answer from an older run\n")
        proc = subprocess.run([sys.executable, "-m", "analytics", "run", *args, "--out", str(out)],
                              env={**os.environ, "ANALYTICS_CRASH_AT": f"write:before-rename@{passage}"},
                              capture_output=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL
        written = {p.name: p.read_text() for p in out.glob("q*.csv")}
        assert len(written) <= passage - 1, sorted(written)  # (run.json snapshots are writes too)
        for name, text in written.items():
            assert text == reference[name], f"{name} is not the complete answer"
        assert [p.name for p in out.iterdir() if p.name.startswith(".")], "the killed write left its temporary file"
        # the next run sweeps the temporary files and completes
        assert cli("run", *args, "--out", str(out)).returncode == 0
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
        assert {p.name: p.read_text() for p in out.glob("q*.csv")} == reference


def test_runner_over_a_workbench_caches_across_runs(lake_copy):
    lake = fresh(lake_copy)
    with Workbench(lake) as wb, SafeBatchRunner(wb) as runner:
        out = runner.run([VIEW_Q, TYPE_Q, VIEW_Q])
        again = runner.run([TYPE_Q])
    assert [t.num_rows for t in out.tables] == [366, 4, 366] and out.errors == 0
    assert [e["cache"] for e in out.report["queries"]] == [False, False, True]
    assert again.report["queries"][0]["cache"] is True
    assert (lake / "_telemetry" / "queries.jsonl").read_text().count("\n") == 4


def test_a_long_run_is_linear_and_reports_progress(workbench, tmp_path, monkeypatch):
    n = 400
    queries = [VIEW_Q, TYPE_Q, {"select": ["nope"]}, 7] * (n // 4)
    calls = [0]
    real_entry = items_mod.QueryItem.entry

    def counting(self):
        calls[0] += 1
        return real_entry(self)

    snapshots: list[int] = []
    real_write = runner_mod.write_atomic

    def spy(path, text):
        if Path(path).name == "run.json":
            snapshots.append(len(json.loads(text)["queries"]))
        return real_write(path, text)

    monkeypatch.setattr(items_mod.QueryItem, "entry", counting)
    monkeypatch.setattr(runner_mod, "write_atomic", spy)
    monkeypatch.setattr(runner_mod, "SNAPSHOT_EVERY_S", float("inf"))
    seen: list[int] = []
    with SafeBatchRunner(workbench, persist_cache=False, telemetry=False, batch_size=1) as runner:
        out = runner.run(queries, tmp_path / "out", progress=seen.append)
    assert calls[0] == n  # each query's entry is made once, not once per batch
    assert seen == list(range(1, n + 1))
    assert snapshots[-1] == n and sum(snapshots[:-1]) <= 2 * n, snapshots  # partial run.json: on doubling only
    assert out.report == json.loads((tmp_path / "out" / "run.json").read_text()) and out.errors == n // 2


def test_progress_bar_only_on_a_terminal(lake_dir, tmp_path):
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps([VIEW_Q, TYPE_Q] * 30))
    args = [sys.executable, "-m", "analytics", "run", "--lake", str(lake_dir), "--queries", str(qfile),
            "--no-telemetry", "--no-cache"]
    piped = subprocess.run([*args, "--out", str(tmp_path / "piped")], capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stderr == ""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    proc = subprocess.run([*args, "--out", str(tmp_path / "tty")], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.returncode == 0
    assert b"60/60" in shown and b"query" in shown, shown[-500:]


def test_long_in_lists_share_a_scan_and_answer_as_alone(lake_dir):
    advertisers = [list(range(0, 1600, 7)), list(range(0, 1600, 5)), list(range(1, 1000, 3))]  # > INLINE_IN_VALUES
    queries = [{"select": ["country", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events", "group_by": ["country"],
                "where": [{"col": "advertiser_id", "op": "in", "val": ids}, {"col": "type", "op": "eq", "val": "click"}]}
               for ids in advertisers]
    with Workbench(lake_dir, use_views=False) as wb, \
            SafeBatchRunner(wb, cache=False, telemetry=False, max_groups=1e12, max_group_ratio=1e9) as runner:
        shared = runner.run(queries)
        alone = runner.run(queries, batching=False)
    assert [s["queries"] for s in shared.report["batches"][0]["shared_scans"] if s["ok"]] == [["q1", "q2", "q3"]]
    for q, a, b in zip(queries, shared.tables, alone.tables):
        assert tables_match(parse_query(q), b, a) is None
