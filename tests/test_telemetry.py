"""Telemetry: one JSON line per query under LAKE/_telemetry, rotated, never blocking or failing a query;
`analytics stats` summarises view hit rate, cache hit rate and latency percentiles per route."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

from helpers import fresh

from analytics.batch.runner import SafeBatchRunner
from analytics.batch.telemetry import (
    QUEUE_SIZE,
    TelemetryLog,
    log_files,
    log_path,
    percentile,
    read_events,
    stats,
    telemetry_log,
)
from analytics.serving.workbench import Workbench

QUERIES = [
    {"select": ["day", {"COUNT": "*"}], "from": "events", "group_by": ["day"]},  # a view
    {"select": ["user_id", "country", {"COUNT": "*"}], "from": "events", "group_by": ["user_id", "country"],  # the lake
     "where": [{"col": "type", "op": "eq", "val": "purchase"}]},
    {"select": ["minute", {"MIN": "ts"}], "from": "events", "group_by": ["minute"],  # the lake, shares the scan
     "where": [{"col": "type", "op": "eq", "val": "purchase"}]},
    {"select": ["nope"], "from": "events"},  # invalid
]



def test_one_line_per_query_with_the_documented_fields(lake_copy):
    lake = fresh(lake_copy)
    with Workbench(lake) as wb:
        runner = SafeBatchRunner(wb, persist_cache=False, max_group_ratio=1.0)
        runner.run(QUERIES)
        runner.run(QUERIES)
        runner.close()  # flushes
    events = list(read_events(lake))
    assert len(events) == 2 * len(QUERIES)
    keys = {"time", "query", "route", "fallback", "ms", "rows", "cache", "shared_scan", "bytes_read", "error"}
    assert all(keys <= set(e) for e in events)
    first = events[:4]
    assert first[0]["route"].startswith("mv_") and first[0]["fallback"] is None and first[0]["cache"] is False
    assert first[1]["route"] == "lake" and first[1]["fallback"] and first[1]["shared_scan"] is True
    assert first[1]["bytes_read"] > 0 and first[1]["rows"] > 0 and first[1]["ms"] > 0
    assert first[3]["error"].startswith("invalid query") and first[3]["route"] is None
    assert [e["cache"] for e in events[4:7]] == [True, True, True]
    assert events[0]["query"] == events[4]["query"]
    s = stats(events)
    assert s["queries"] == 8 and s["errors"] == 2 and s["answered"] == 6
    assert s["view_hit_rate"] == round(2 / 6, 4) and s["cache_hit_rate"] == 0.5
    assert set(s["routes"]) == {"lake", first[0]["route"]} and s["routes"]["lake"]["n"] == 2
    assert s["cache"]["n"] == 3


def test_rotation_keeps_a_few_bounded_files(tmp_path):
    log = TelemetryLog(tmp_path / "_telemetry" / "queries.jsonl", max_bytes=2_000, keep=2)
    for i in range(300):
        log.record({"time": "t", "i": i, "pad": "x" * 40})
        if i % 25 == 0:
            log.flush()
    assert log.flush()
    files = log_files(tmp_path)
    names = [f.name for f in files]
    assert names[:2] == ["queries.jsonl.2", "queries.jsonl.1"] and set(names[2:]) <= {"queries.jsonl"}
    assert all(f.stat().st_size < 2_000 + 30 * 60 for f in files)
    numbers = [e["i"] for e in read_events(tmp_path)]
    assert numbers == sorted(numbers) and numbers[-1] == 299  # oldest first, newest kept


def test_a_broken_log_never_fails_or_blocks_a_query(lake_copy):
    lake = fresh(lake_copy)
    (lake / "_telemetry").write_text("a file where the directory should be")
    with Workbench(lake) as wb:
        runner = SafeBatchRunner(wb, cache=False, telemetry=TelemetryLog(log_path(lake)))
        out = runner.run(QUERIES[:2])
        assert out.errors == 0
        assert runner.telemetry.flush()
        assert runner.telemetry.write_errors >= 1 and runner.telemetry.written == 0
        runner.close()
    # recording is a non-blocking put even when nothing drains the queue: past its capacity each
    # event is dropped and counted (a blocking put would never return: the thread would stay alive)
    stuck = TelemetryLog(lake / "x.jsonl")
    stuck._ensure_listener = lambda: None  # no writer thread

    def fill() -> None:
        for i in range(QUEUE_SIZE + 100):
            stuck.record({"i": i})
    filler = threading.Thread(target=fill, daemon=True)
    filler.start()
    filler.join(timeout=120)
    assert not filler.is_alive() and stuck.dropped == 100


def test_percentiles():
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 50) == 50.5 and round(percentile(xs, 95), 2) == 95.05 and round(percentile(xs, 99), 2) == 99.01


def test_cli_stats(lake_copy, tmp_path):
    lake = fresh(lake_copy)
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps(QUERIES))
    for out in ("a", "b"):
        subprocess.run([sys.executable, "-m", "analytics", "run", "--lake", str(lake), "--queries", str(qfile),
                        "--out", str(tmp_path / out)], capture_output=True, check=False)
    proc = subprocess.run([sys.executable, "-m", "analytics", "stats", "--lake", str(lake), "--json", str(tmp_path / "s.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "view hit rate" in proc.stdout and "cache hit rate: 50.0%" in proc.stdout and "p99" in proc.stdout
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["queries"] == 8 and data["cache_hit_rate"] == 0.5 and "lake" in data["routes"]
    empty = subprocess.run([sys.executable, "-m", "analytics", "stats", "--lake", str(tmp_path)], capture_output=True, text=True)
    assert empty.returncode == 0 and "no telemetry" in empty.stdout
    missing = subprocess.run([sys.executable, "-m", "analytics", "stats", "--lake", str(tmp_path / "nope")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_shared_writer_per_lake(tmp_path):
    assert telemetry_log(tmp_path) is telemetry_log(tmp_path / ".")
