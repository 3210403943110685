"""README and ARCHITECTURE stay short, current and free of a run diary; the benchmark they show is generated.

A newcomer reads README in five minutes: it must stay under its size, hold no commit hashes or
remarks about the machine of one run, and carry exactly one benchmark table, the one
`analytics bench docs` generates from the latest JSON under docs/benchmarks/ (as does
docs/benchmark.md). ARCHITECTURE gets the same limits at its own size.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from analytics.bench import docs, summary
from analytics.bench.result import BenchmarkSummary
from analytics.bench.targets import FULL_SCALE_ROWS

ROOT = Path(__file__).resolve().parent.parent
LIMITS = {"README.md": 10 * 1024, "ARCHITECTURE.md": 20 * 1024}
# a run of 7-40 hex digits with both a digit and a letter reads as a commit (1000000 and "decade" do not)
SHA = re.compile(r"(?<![0-9A-Za-z_])(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}(?![0-9A-Za-z_])")
DIARY = re.compile(r"this host|load average|earlier today|this morning|this session", re.I)


def diary_problems(text: str, limit: int) -> list[str]:
    problems = [f"{len(text.encode())} bytes, over {limit}"] if len(text.encode()) > limit else []
    problems += [f"commit-like {m.group()!r}" for m in SHA.finditer(text)]
    problems += [f"run-diary phrase {m.group()!r}" for m in DIARY.finditer(text)]
    return problems


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_the_doc_is_short_and_keeps_no_run_diary(name: str) -> None:
    assert diary_problems((ROOT / name).read_text(), LIMITS[name]) == []


@pytest.mark.parametrize("addition, problem", [
    ("measured at commit b562b21", "commit-like 'b562b21'"),
    ("see 4586071c0ffee", "commit-like '4586071c0ffee'"),
    ("on this host the load average was 7", "run-diary phrase 'this host'"),
    ("x" * 11 * 1024, "over 10240"),
])
def test_the_checks_catch_a_diary_creeping_back(addition: str, problem: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert any(problem in p for p in diary_problems(readme + "\n" + addition, LIMITS["README.md"]))
    # numbers and words made of hex letters are not commits
    assert diary_problems("1,000,000 rows in 1000000 parts; a decade of facades", 100) == []


def test_readme_shows_one_benchmark_table_generated_from_the_latest_run() -> None:
    readme = (ROOT / "README.md").read_text()
    runs = docs.load_history(ROOT / "docs" / "benchmarks")
    assert docs.readme_block(runs[-1]) in readme  # regenerate with `analytics bench docs`
    assert len(re.findall(r"^\| engine \| median \|", readme, re.M)) == 1
    assert f"**{runs[-1].rows:,} generated rows**" in readme  # the data size is said with the table
    assert (ROOT / "docs" / "benchmark.md").read_text() == docs.benchmark_md(runs)


def test_recorded_runs_read_and_write_back_byte_for_byte(tmp_path: Path) -> None:
    for path in sorted((ROOT / "docs" / "benchmarks").glob("*.json")):
        summary.write(tmp_path / path.name, BenchmarkSummary.read(path))
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_docs_record_each_run_and_rewrite_only_the_block(tmp_path: Path) -> None:
    (latest,) = sorted((ROOT / "docs" / "benchmarks").glob("*.json"))[-1:]
    result = BenchmarkSummary.read(latest)
    older = replace(result, started_at="2026-01-02T03:04:05+00:00", rows=5000)
    (tmp_path / "older.json").write_text(json.dumps(older.to_json()))
    history = tmp_path / "benchmarks"
    assert docs.record(tmp_path / "older.json", history).name == "2026-01-02T0304-5000.json"
    assert docs.record(latest, history).name == latest.name
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{docs.README_START}\nstale table\n{docs.README_END}\n\nafter\n")
    written = docs.write_docs(history, tmp_path / "benchmark.md", readme)
    assert written.started_at == result.started_at  # the latest by date, not by file order
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "stale table" not in text
    assert docs.headline(result) in text and "**5,000 generated rows**" not in text  # the older run is not the latest
    page = (tmp_path / "benchmark.md").read_text()
    assert "| 2026-01-02 03:04 | 5,000 |" in page and page.count("| engine | median |") == 1
    assert not SHA.search(page) and not DIARY.search(page)
    with pytest.raises(ValueError, match="no benchmark markers"):
        docs.replace_readme_block("# no markers", "block")


def test_the_page_keeps_the_latest_full_scale_run_and_its_targets_beside_a_later_smaller_run() -> None:
    """Targets stated at 245M rows are judged on a 245M run: after a later 15M run the page still
    shows the latest full-scale run's engines and targets; with no such run, no such section."""
    (latest,) = sorted((ROOT / "docs" / "benchmarks").glob("*.json"))[-1:]
    small = BenchmarkSummary.read(latest)
    full = replace(small, started_at="2026-01-02T03:04:05+00:00", rows=FULL_SCALE_ROWS)
    later = replace(small, started_at="2026-02-02T03:04:05+00:00", rows=15_000_000)
    page = docs.benchmark_md([full, later])
    section = page[page.index("## Latest full-scale run"):page.index("## Every recorded run")]
    assert f"**{FULL_SCALE_ROWS:,} generated rows**" in section and docs.targets_table(full) in section
    assert "## Latest full-scale run" not in docs.benchmark_md([later]) + docs.benchmark_md([later, full])
