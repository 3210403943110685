"""The build setup as it behaves: what `make help` lists exists, what `make -n TARGET` would run (in
order, on which data), `make setup` reinstalls exactly when pyproject.toml changed, environment.yml
pins what pyproject.toml pins, and .ci/run is a valid script. Nothing here reads the Makefile's text
or looks at data folders: every check runs make."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _make(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _commands(out: str) -> list[str]:
    """`make -n` output as one command per item: continuation lines joined."""
    return [c.strip() for c in re.sub(r"\\\n\s*", " ", out).splitlines() if c.strip()]


def _index(commands: list[str], pattern: str) -> int:
    hits = [i for i, c in enumerate(commands) if re.search(pattern, c)]
    assert hits, f"no command matches {pattern!r} in:\n" + "\n".join(commands)
    return hits[0]


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


def test_help_is_the_default_goal_and_every_listed_target_exists() -> None:
    out = _make()
    listed = re.findall(r"^  ([a-z][a-z-]*)\s+\S", out, re.M)
    assert {"setup", "test", "benchmark", "sweep", "reports", "help", "clean"} <= set(listed), listed
    for target in listed:
        # -q: exit 0 when up to date, 1 when it would run, 2 when make knows no such target
        proc = subprocess.run(["make", "-q", target], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode in (0, 1), f"`make help` lists {target}, but: {proc.stderr.strip()}"


def test_test_runs_pytest_on_two_workers_then_nbval() -> None:
    # -W: as if the lake code changed, so the notebooks' small data set is due whether or not it exists
    commands = _commands(_make("-n", "test", "-W", "analytics/lake/prepare.py"))
    pytest_run = _index(commands, r"-m pytest -n 2 --dist loadfile\s+tests$")
    nbval_run = _index(commands, r"-m pytest .*--nbval-lax .*notebooks$")
    data = _index(commands, r"-m analytics prepare --raw data/nbval/clean/raw --lake data/nbval/clean/lake")
    assert data < pytest_run < nbval_run


def test_benchmark_full_scale_runs_every_phase_on_245m_rows_in_order() -> None:
    commands = _commands(_make("-n", "benchmark", "SCALE=full"))
    gen = _index(commands, r"-m analytics generate --out data/raw-245000000 --rows 245000000 --seed 0")
    prep = _index(commands, r"-m analytics prepare --raw data/raw-245000000 --lake data/lake-245000000 ")
    build = _index(commands, r"-m analytics build --lake data/lake-245000000$")
    bench = _index(commands, r"-m analytics benchmark --raw data/raw-245000000 --lake data/lake-245000000 .*"
                             r"--rows 245000000")
    report = _index(commands, r"-m analytics bench reports --lake data/lake-245000000 --raw data/raw-245000000 "
                              r".*--only 03_batch_benchmark")
    assert gen < prep < build < bench <= report
    fresh = _index(commands, r"-m analytics bench freshness measure --lake data/lake-245000000 --raw data/raw-245000000 "
                             r"--part data/part-5000000-seed7/events_part_00000\.csv .*--into reports/benchmark\.json")
    adaptive = _index(commands, r"-m analytics bench adaptive --lake data/work-245000000/adaptive "
                                r"--copy-of data/lake-245000000 --budget 20GiB\s+--into reports/benchmark\.json")
    assert bench <= fresh <= adaptive <= report
    # the run is recorded under docs/benchmarks/, which regenerates docs/benchmark.md and README's table
    joined = " ".join(commands)
    assert joined.index("-m analytics bench reports") < joined.index("-m analytics bench docs --json reports/benchmark.json")


def test_benchmark_defaults_to_15m_rows() -> None:
    commands = _commands(_make("-n", "benchmark"))
    _index(commands, r"-m analytics prepare --raw data/raw-15000000 --lake data/lake-15000000 ")
    _index(commands, r"-p rows=15000000 ")
    _index(commands, r"-m analytics generate --out data/part-1000000-seed7/ --rows 1000000 --seed 7 --parts 1")


def test_reports_on_an_existing_lake_generates_nothing() -> None:
    commands = _commands(_make("-n", "reports", "LAKE=/some/lake", "RAW=/some/raw"))
    _index(commands, r"-m analytics bench reports --lake '/some/lake' --raw '/some/raw' --out reports")
    assert not [c for c in commands if re.search(r"-m analytics (generate|prepare|build)\b", c)]


def test_reports_with_rows_generates_prepares_and_builds_first() -> None:
    commands = _commands(_make("-n", "reports", "ROWS=1234"))
    gen = _index(commands, r"-m analytics generate --out data/raw-1234 --rows 1234")
    prep = _index(commands, r"-m analytics prepare --raw data/raw-1234 --lake data/lake-1234")
    build = _index(commands, r"-m analytics build --lake data/lake-1234")
    rep = _index(commands, r"-m analytics bench reports --lake data/lake-1234 --raw data/raw-1234")
    assert gen < prep < build < rep


def test_sweep_runs_the_benchmark_per_size_then_the_sweep() -> None:
    commands = _commands(_make("-n", "sweep", "SWEEP_ROWS=1000 2000"))
    first = _index(commands, r"-m analytics benchmark .*--rows 1000 .*--json reports/benchmark-1000\.json")
    second = _index(commands, r"-m analytics benchmark .*--rows 2000 .*--json reports/benchmark-2000\.json")
    sweep = _index(commands, r"-m analytics bench sweep reports/benchmark-1000\.json reports/benchmark-2000\.json "
                             r"--out reports/sweep\.json")
    assert first < second < sweep


def test_setup_installs_exactly_when_pyproject_changed(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    stamp = venv / f".installed-{hashlib.sha256((tmp_path / 'pyproject.toml').read_bytes()).hexdigest()[:16]}"
    stamp.touch()
    assert "pip install" not in _make("-n", "setup", cwd=tmp_path)  # installed for this pyproject.toml
    with (tmp_path / "pyproject.toml").open("a") as fh:
        fh.write("\n# a change\n")
    assert re.search(r"pip install --quiet -e '\.\[dev\]'", _make("-n", "setup", cwd=tmp_path))


def test_ci_run() -> None:
    script = ROOT / ".ci" / "run"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert "make test" in text and "chromium" in text
    subprocess.run(["bash", "-n", str(script)], check=True)


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_make_kernel_writes_nothing_to_home(tmp_path: Path) -> None:
    """The `analytics` kernel lives in .venv: `make kernel` (and a registration into an empty prefix,
    which really runs `ipykernel install`) leave a temporary HOME exactly as empty as they found it."""
    import json
    import os
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "XDG_", "IPYTHON"))}
    env["HOME"] = str(home)
    proc = subprocess.run(["make", "--no-print-directory", "kernel"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"kernel analytics: (registered in \.venv|up to date)\n", proc.stdout), proc.stdout
    spec = json.loads((Path(sys.prefix) / "share/jupyter/kernels/analytics/kernel.json").read_text())
    assert os.path.abspath(spec["argv"][0]) == os.path.abspath(sys.executable)

    prefix = tmp_path / "prefix"
    code = "from analytics.reports.notebooks import register_kernel as r; import sys; print(r(prefix=sys.argv[1]), r(prefix=sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(prefix)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]  # installed once, then found up to date
    assert "share/jupyter/kernels/analytics/kernel.json" in _files_under(prefix)
    assert _files_under(home) == []
