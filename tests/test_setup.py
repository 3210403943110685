"""The build setup as it behaves: what `make help` lists exists, what each target does when it runs
(its steps, on which data, in which order, and what a failing step does: the recipes run for real
against stand-ins for the tools), `make setup` reinstalls exactly when pyproject.toml changed,
environment.yml pins what pyproject.toml pins, and .ci/run is a valid script. Nothing here reads the
Makefile's text or looks at data folders: every check runs make."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
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


# The targets below run for real, in a copy of the Makefile whose .venv holds stand-ins for python,
# ruff and lint-imports: each call is recorded (its arguments, one JSON list a line) and does nothing else, except
# making the directory an `--out` names and writing the JSON a `--json` names (what the recipes go on
# with), and failing when its
# arguments contain $FAIL. So a test sees which steps a target runs, on which data, in which order,
# and what it does when a step fails, in well under a second and without data.
STAND_IN = """#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["CALLS"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *args]) + "\\n")
if "--out" in args:
    os.makedirs(args[args.index("--out") + 1], exist_ok=True)
if "--json" in args:
    with open(args[args.index("--json") + 1], "w") as f:
        f.write("{}")
sys.exit(1 if os.environ.get("FAIL") and os.environ["FAIL"] in " ".join(args) else 0)
"""


def _stand_in(tmp_path: Path) -> Path:
    """A directory holding a copy of the Makefile and pyproject.toml, its .venv installed (stamped)
    with the stand-ins for python, ruff and lint-imports."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("python", "ruff", "lint-imports"):
        (bin_dir / tool).write_text(STAND_IN)
        (bin_dir / tool).chmod(0o755)
    (tmp_path / ".venv" / f".installed-{hashlib.sha256((tmp_path / 'pyproject.toml').read_bytes()).hexdigest()[:16]}"
     ).touch()
    return tmp_path


def _run(cwd: Path, *args: str, fail: str = "") -> tuple[int, list[list[str]]]:
    """`make ARGS` in the stand-in directory: its exit code and the calls made (the Jupyter kernel's
    registration left out)."""
    calls = cwd / "calls.jsonl"
    calls.unlink(missing_ok=True)
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CALLS": str(calls), "FAIL": fail})
    made = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return proc.returncode, [c for c in made if "register_kernel" not in " ".join(c)]


def _analytics(calls: list[list[str]]) -> list[list[str]]:
    """Each `python -m analytics ...` the calls ran, as its arguments after `-m analytics`, a timed
    phase's command (`bench phase NAME -- COMMAND`) as that command."""
    out = []
    for call in calls:
        if "analytics" not in call:
            continue
        args = call[call.index("analytics") + 1:]
        if args[:2] == ["bench", "phase"]:
            args = args[args.index("analytics", args.index("--")) + 1:]
        out.append(args)
    return out


def _option(args: list[str], name: str) -> str:
    assert name in args, f"{name} not given: {shlex.join(args)}"
    return args[args.index(name) + 1]


def _steps(calls: list[list[str]]) -> list[str]:
    """The analytics subcommands run, in order (`bench X` as `bench X`)."""
    return [" ".join(a[:2]) if a[0] == "bench" else a[0] for a in _analytics(calls)]


def test_make_test_runs_the_linter_then_pytest_on_two_workers_and_fails_when_either_fails(tmp_path: Path) -> None:
    cwd = _stand_in(tmp_path)
    code, calls = _run(cwd, "test")
    assert code == 0
    assert [c[0] for c in calls] == ["ruff", "lint-imports", "python"], calls
    ruff, _, pytest = calls
    assert ruff[1] == "check" and set(ruff[2:]) == {"analytics", "tests"}
    assert pytest[1:3] == ["-m", "pytest"] and _option(pytest, "-n") == "2" and pytest[-1] == "tests"
    # ruff failing stops the lint (the import contracts are the lint's second step), not the tests
    code, calls = _run(cwd, "test", fail="check")
    assert code != 0 and [c[0] for c in calls] == ["ruff", "python"], calls
    code, calls = _run(cwd, "test", fail="pytest")
    assert code != 0 and [c[0] for c in calls] == ["ruff", "lint-imports", "python"], calls


def test_make_test_fast_leaves_out_the_slow_and_integration_tests(tmp_path: Path) -> None:
    code, calls = _run(_stand_in(tmp_path), "test-fast")
    assert code == 0 and len(calls) == 1
    assert _option(calls[0], "-m") == "pytest" and _option(calls[0][3:], "-m") == "not slow and not integration"


def test_benchmark_full_scale_runs_every_phase_on_245m_rows_in_order(tmp_path: Path) -> None:
    code, calls = _run(_stand_in(tmp_path), "benchmark", "SCALE=full")
    assert code == 0
    assert _steps(calls) == ["generate", "prepare", "build", "benchmark", "generate", "bench freshness",
                             "bench adaptive", "bench reports", "bench summary", "bench docs"]
    generate, prepare, build, bench, part, fresh, adaptive, report, _, docs = _analytics(calls)
    assert _option(generate, "--rows") == _option(bench, "--rows") == "245000000"
    raw, lake = _option(generate, "--out"), _option(prepare, "--lake")
    assert _option(prepare, "--raw") == _option(bench, "--raw") == _option(fresh, "--raw") == raw
    assert _option(build, "--lake") == _option(bench, "--lake") == _option(fresh, "--lake") == lake
    assert _option(adaptive, "--copy-of") == _option(report, "--lake") == lake
    # the ingest benchmark's part is 5M rows at this scale, and the adaptive budget 20 GiB
    assert _option(part, "--rows") == "5000000" and _option(fresh, "--part").startswith(_option(part, "--out"))
    assert _option(adaptive, "--budget") == "20GiB"
    result = _option(bench, "--json")
    assert _option(fresh, "--into") == _option(adaptive, "--into") == _option(docs, "--json") == result
    assert _option(report, "--only") == "03_batch_benchmark"


def test_a_benchmark_mismatch_still_writes_the_report_and_fails_the_target(tmp_path: Path) -> None:
    code, calls = _run(_stand_in(tmp_path), "benchmark", "ROWS=1000", fail="--workload")
    assert code != 0
    assert _steps(calls)[3:] == ["benchmark", "generate", "bench freshness", "bench adaptive", "bench reports",
                                 "bench summary", "bench docs"]


def test_benchmark_defaults_to_15m_rows_and_a_1m_row_part(tmp_path: Path) -> None:
    code, calls = _run(_stand_in(tmp_path), "benchmark")
    assert code == 0
    generate, *_ = _analytics(calls)
    part = next(a for a in _analytics(calls)[1:] if a[0] == "generate")
    assert _option(generate, "--rows") == "15000000" and _option(part, "--rows") == "1000000"
    assert "rows=15000000" in _analytics(calls)[7]  # the report is told the size


def test_reports_on_an_existing_lake_generates_nothing(tmp_path: Path) -> None:
    code, calls = _run(_stand_in(tmp_path), "reports", "LAKE=/some/lake", "RAW=/some/raw")
    assert code == 0 and _steps(calls) == ["bench reports"]
    (report,) = _analytics(calls)
    assert (_option(report, "--lake"), _option(report, "--raw")) == ("/some/lake", "/some/raw")


def test_reports_with_rows_generates_prepares_and_builds_first(tmp_path: Path) -> None:
    code, calls = _run(_stand_in(tmp_path), "reports", "ROWS=1234")
    assert code == 0 and _steps(calls) == ["generate", "prepare", "build", "bench reports"]
    generate, prepare, build, report = _analytics(calls)
    assert _option(generate, "--rows") == "1234"
    assert _option(prepare, "--raw") == _option(report, "--raw") == _option(generate, "--out")
    assert _option(build, "--lake") == _option(report, "--lake") == _option(prepare, "--lake")
    # made once: a second run reuses the raw data (prepare and build are incremental by themselves)
    assert _steps(_run(tmp_path, "reports", "ROWS=1234")[1]) == ["prepare", "build", "bench reports"]


def test_sweep_runs_the_benchmark_per_size_then_the_sweep(tmp_path: Path) -> None:
    code, calls = _run(_stand_in(tmp_path), "sweep", "SWEEP_ROWS=1000 2000")
    assert code == 0
    runs = [a for a in _analytics(calls) if a[0] == "benchmark"]
    assert [_option(a, "--rows") for a in runs] == ["1000", "2000"]
    sweep = _analytics(calls)[-1]
    assert sweep[:2] == ["bench", "sweep"] and sweep[2:4] == [_option(a, "--json") for a in runs]


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
