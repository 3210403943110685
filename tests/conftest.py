"""Shared fixtures: one small generated dataset (with boundary rows), its lake with every view built,
and the baseline over the same CSVs. Session-scoped and read-only: a test that changes a lake
works on `lake_copy`."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
