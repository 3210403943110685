"""No single query takes the machine: a 1,000,000-value `in` list is answered, and a 5,000,000-value one
refused, by `analytics run --memory-limit 512MB` with the process's peak RSS under 1 GiB.

Before, every value was one `?` parameter (~5 KB of DuckDB parse/bind/plan state each): 1M values
reached 5.2 GB under a 512MB limit, 5M values 24 GB. The peak is the run's own maximum RSS,
read by a wrapper process whose only child is the run (`RUSAGE_CHILDREN`).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from analytics.checks.baseline import baseline_query
from analytics.query.model import MAX_IN_VALUES, parse_query
from analytics.query.results import compare_rows, read_csv_rows, to_rows

GIB = 2**30
PEAK_RSS = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def run_peak(lake: Path, queries: list, out: Path) -> tuple[int, int]:
    """(exit code, peak RSS in bytes) of `analytics run --memory-limit 512MB` over `queries`."""
    qfile = out.parent / f"{out.name}.json"
    qfile.write_text(json.dumps(queries))
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "analytics", "run", "--lake", str(lake),
                           "--queries", str(qfile), "--out", str(out), "--memory-limit", "512MB", "--no-cache",
                           "--no-telemetry"], capture_output=True, text=True, check=True)
    rc, peak = proc.stdout.split()
    return int(rc), int(peak)


def test_a_million_value_in_list_is_answered_within_a_gib(lake_dir, baseline, tmp_path):
    raw = {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events", "group_by": ["type"],
           "where": [{"col": "user_id", "op": "in", "val": list(range(0, 2 * MAX_IN_VALUES, 2))}]}
    rc, peak = run_peak(lake_dir, [raw], tmp_path / "answered")
    assert rc == 0 and peak <= GIB, f"exit {rc}, peak RSS {peak / GIB:.2f} GiB"
    q = parse_query(raw)
    header, rows = read_csv_rows(tmp_path / "answered" / "q1.csv")
    assert compare_rows(q, to_rows(q, baseline_query(baseline, q)), rows, actual_header=header) is None


def test_a_five_million_value_in_list_is_refused_within_a_gib(lake_dir, tmp_path):
    raw = {"select": [{"COUNT": "*"}], "from": "events",
           "where": [{"col": "user_id", "op": "in", "val": list(range(5_000_000))}]}
    rc, peak = run_peak(lake_dir, [raw], tmp_path / "refused")
    assert rc == 1 and peak <= GIB, f"exit {rc}, peak RSS {peak / GIB:.2f} GiB"
    error = json.loads((tmp_path / "refused" / "run.json").read_text())["queries"][0]["error"]
    assert "holds 5,000,000 values; a query may hold at most 1,000,000" in error
