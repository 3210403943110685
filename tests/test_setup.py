"""The build setup: Makefile targets and variables, environment.yml in step with pyproject.toml, .ci/run."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(*args: str) -> str:
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _pins(requirements: list[str]) -> set[str]:
    return {r.replace(" ", "") for r in requirements if "==" in r}


def test_environment_yml_mirrors_the_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"])
    for reqs in project["optional-dependencies"].values():
        wanted |= _pins(reqs)
    env = (ROOT / "environment.yml").read_text()
    listed = set(re.findall(r"^\s+- ([A-Za-z0-9_.-]+==[^\s#]+)", env, re.M))
    assert listed == wanted, f"missing {sorted(wanted - listed)}, extra {sorted(listed - wanted)}"
    assert re.search(r"^\s+- python=3\.11$", env, re.M)
    assert re.search(r"^\s+- -e \.$", env, re.M)


def test_help_is_the_default_goal_and_lists_the_targets() -> None:
    out = _make()
    for target in ("setup", "test", "benchmark", "sweep", "reports", "help"):
        assert re.search(rf"^  {target}\s+\S", out, re.M), f"`make help` does not list {target}"


def test_benchmark_full_scale_uses_245m_rows() -> None:
    out = _make("-n", "benchmark", "SCALE=full")
    assert "generate --out data/raw-245000000 --rows 245000000" in out or (ROOT / "data/raw-245000000").is_dir()
    assert "prepare --raw data/raw-245000000 --lake data/lake-245000000" in out
    assert "build --lake data/lake-245000000" in out
    assert re.search(r"analytics\.reports\.notebooks --lake data/lake-245000000 --raw data/raw-245000000 .*--only 03_batch_benchmark", out)


def test_benchmark_default_rows() -> None:
    out = _make("-n", "benchmark")
    assert "--lake data/lake-15000000" in out and "-p rows=15000000" in out


def test_reports_on_an_existing_lake_generates_nothing() -> None:
    out = _make("-n", "reports", "LAKE=/some/lake", "RAW=/some/raw")
    assert "analytics.reports.notebooks --lake '/some/lake' --raw '/some/raw' --out reports" in out
    assert "generate" not in out and "prepare" not in out


def test_reports_with_rows_generates_and_prepares_first() -> None:
    out = _make("-n", "reports", "ROWS=1234")
    lines = out.splitlines()
    gen = next(i for i, l in enumerate(lines) if "generate --out data/raw-1234 --rows 1234" in l)
    prep = next(i for i, l in enumerate(lines) if "prepare --raw data/raw-1234 --lake data/lake-1234" in l)
    rep = next(i for i, l in enumerate(lines) if "analytics.reports.notebooks --lake data/lake-1234 --raw data/raw-1234" in l)
    assert gen < prep < rep


def test_sweep_runs_the_benchmark_per_size() -> None:
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^sweep:", text, re.M)
    assert "benchmark ROWS=$$rows SUFFIX=-$$rows" in text


def test_setup_is_a_no_op_when_installed() -> None:
    if not list((ROOT / ".venv").glob(".installed-*")):
        pytest.skip("`make setup` has not run in this checkout")
    out = _make("-n", "setup")
    assert "pip install" not in out and "venv" not in out.replace(".venv/bin/python", "")


def test_ci_run() -> None:
    script = ROOT / ".ci" / "run"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert "make test" in text and "chromium" in text
    subprocess.run(["bash", "-n", str(script)], check=True)

