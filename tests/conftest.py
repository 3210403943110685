"""Shared fixtures: one small generated dataset (with boundary rows), its lake with every view built,
and the baseline over the same CSVs. Session-scoped and read-only: a test that changes a lake
works on `lake_copy`."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import record_family

from analytics.adaptive.build import build_adaptive
from analytics.checks.baseline import connect_baseline
from analytics.lake.generator import generate
from analytics.lake.prepare import prepare
from analytics.serving.workbench import Workbench
from analytics.views.build import build

TEST_ROWS = 200_000
TEST_PARTS = 4
TEST_SEED = 7


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    generate(out, TEST_ROWS, seed=TEST_SEED, parts=TEST_PARTS, progress=False)
    return out


@pytest.fixture(scope="session")
def lake_dir(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("lake")
    prepare(raw_dir, lake, progress=False)
    summary = build(lake, progress=False)
    assert not summary["failed"], summary["failed"]
    return lake


@pytest.fixture(scope="session")
def baseline(raw_dir: Path):
    con = connect_baseline(raw_dir, materialize=True)
    yield con
    con.close()


@pytest.fixture(scope="session")
def workbench(lake_dir: Path):
    wb = Workbench(lake_dir)
    yield wb
    wb.close()


@pytest.fixture
def lake_copy(lake_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the built lake, for tests that change or break it."""
    dst = tmp_path / "lake"
    shutil.copytree(lake_dir, dst)
    return dst

@pytest.fixture(scope="module")
def adaptive_lake(lake_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session lake copied, family A run against it (telemetry), then `build --adaptive` (a module
    fixture shared by the adaptive and integrity tests)."""
    lake = tmp_path_factory.mktemp("adaptive") / "lake"
    shutil.copytree(lake_dir, lake)
    shutil.rmtree(lake / "_telemetry", ignore_errors=True)
    events = record_family(lake, seed=1)
    summary = build_adaptive(str(lake), events, budget=2 * 2**30, progress=False)
    assert summary["built"] and not summary["failed"], summary
    return lake


# ---- markers: `make test-fast` leaves out what is marked `slow` or `integration` -------------------
# Tests taking 4 s or more on 2 cores (measured with --durations), and modules whose fixtures alone
# take 10-55 s; `integration`: subprocesses killed at crash points, notebooks, JupyterLab, Spark.
# Listed here, in one place; a name that no longer matches a test fails the collection.
SLOW_MODULES = {"test_adaptive.py", "test_benchmark.py", "test_guardrails.py", "test_ingest.py", "test_integrity.py",
                "test_ingest_guard.py"}
INTEGRATION_MODULES = {"test_lab.py", "test_notebooks.py", "test_spark.py", "test_build_crash.py", "test_ingest_crash.py"}
SLOW_TESTS = {
    "test_batch_guard.py::test_blocks_a_query_did_not_check_do_not_change_its_answer",
    "test_batch_guard.py::test_random_queries_over_many_small_batches_answer_like_the_baseline",
    "test_batching.py::test_batching_on_vs_off_identical_and_equal_to_baseline",
    "test_cache.py::test_cache_on_vs_off_identical_and_repeat_is_answered_from_cache",
    "test_cache.py::test_persists_across_processes_and_sweeps_stale_stamps",
    "test_differential.py::test_cli_run_matches_baseline_under_a_non_utc_process_time_zone",
    "test_differential.py::test_random_queries_of_the_whole_grammar_lake_matches_baseline",
    "test_differential_users.py::test_user_queries_from_the_per_user_view_equal_lake_equal_baseline",
    "test_differential_views.py::test_fast_path_answers_from_a_view_whose_rows_lost_their_order",
    "test_differential_views.py::test_numpy_and_arrow_reaggregation_both_equal_the_baseline",
    "test_differential_views.py::test_random_view_shaped_queries_views_equal_lake_equal_baseline",
    "test_differential_views.py::test_runs_of_the_first_dimension_found_by_search_equal_the_baseline",
    "test_generator.py::test_default_parts_one_per_five_million",
    "test_generator.py::test_exact_row_count_and_header",
    "test_generator.py::test_same_seed_same_bytes_other_seed_differs",
    "test_lake.py::test_new_part_is_appended_without_rewriting_others",
    "test_lake.py::test_prepare_killed_at_each_commit_step_serves_a_whole_lake",
    "test_lake.py::test_removed_part_is_dropped",
    "test_memory_bounds.py::test_a_million_value_in_list_is_answered_within_a_gib",
    "test_pruning.py::test_pruned_lake_answers_equal_the_baseline_at_segment_edges",
    "test_query.py::test_long_in_lists_are_one_list_parameter_and_answer_like_the_baseline",
    "test_query_properties.py::test_any_json_is_a_query_or_a_query_error",
    "test_query_properties.py::test_any_query_file_is_queries_or_a_query_error",
    "test_query_properties.py::test_near_valid_queries_are_a_query_or_a_query_error",
    "test_query_properties.py::test_query_shaped_json_is_a_query_or_a_query_error",
    "test_rawfile.py::test_random_bytes_appended_to_a_part_are_in_the_lake_or_quarantined_with_a_true_reason",
    "test_remediation.py::test_generated_dirty_data_accounts",
    "test_runner.py::test_a_killed_run_leaves_only_complete_files",
    "test_runner.py::test_bad_query_files_give_clear_errors",
    "test_runner.py::test_cli_memory_limit_and_exit_code",
    "test_runner.py::test_parallel_vs_sequential_identical",
    "test_runner.py::test_progress_bar_only_on_a_terminal",
    "test_serving_copy.py::test_a_mapped_version_stays_valid_while_another_process_promotes_new_ones",
    "test_telemetry.py::test_cli_stats",
    "test_view_space.py::test_every_buildable_view_answers_like_the_baseline",
    "test_views.py::test_a_view_cut_into_day_ranges_equals_the_view_built_whole",
    "test_views.py::test_build_killed_at_each_commit_step_leaves_whole_views_and_the_next_build_cleans_up",
    "test_views.py::test_four_different_views_build_at_once",
    "test_views.py::test_lake_change_after_build_makes_views_fall_back_then_incremental_refresh",
    "test_views.py::test_rebuild_while_eight_threads_query",
    "test_views.py::test_two_builds_of_one_view_never_both_write",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = Path(str(item.fspath)).name
        name = f"{module}::{item.originalname}"
        if module in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
        if module in SLOW_MODULES or name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    # against the tests each collected module defines, not those selected: `pytest FILE::TEST` collects one
    defined = {f"{Path(str(i.fspath)).name}::{name}" for i in items if getattr(i, "module", None)
               for name in vars(i.module) if name.startswith("test_")}
    collected = {Path(str(i.fspath)).name for i in items}
    stale = sorted(n for n in SLOW_TESTS if n.split("::")[0] in collected and n not in defined)
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS names tests that do not exist: {stale}")
