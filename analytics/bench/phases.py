"""Phases: wall time and peak RSS of a block of this process, or of a command run as a phase.

Owns `RSSSampler` (the sampled RSS of a process tree), `measured` (a block's seconds and peak
RSS), the launcher that measures a command's own peak RSS exactly (`launched`, `read_launched`:
the cold pass uses it too), `run_phase` (what `analytics bench phase` runs: the Makefile wraps generate,
prepare and build in it and each run lands in `DIR/NAME.json`) and `load_phases` (those records
as the figures the benchmark reports). Must not run queries or interpret what a phase does,
beyond noticing that it said it had nothing to do.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import psutil

from analytics.core.files import format_bytes, write_atomic

PHASE_ORDER: tuple[str, ...] = ("generate", "prepare", "build", "benchmark")
NOOP_MARKERS: tuple[str, ...] = ("nothing to do",)


class RSSSampler:
    """Samples the RSS of a process tree every `interval` seconds; `peak` is the largest sum seen."""

    def __init__(self, pid: int | None = None, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        total = 0
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            return self.peak
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "RSSSampler":
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


@contextmanager
def measured(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Fill `record` with the `seconds` and `peak_rss_bytes` of the block."""
    t0 = time.perf_counter()
    with RSSSampler() as s:
        yield record
    record["seconds"] = round(time.perf_counter() - t0, 3)
    record["peak_rss_bytes"] = s.peak


# A child's ru_maxrss starts from the RSS of the process it was forked from (Linux keeps the
# high-water mark across exec), so a measured command is forked from this small stdlib-only
# launcher (`python -I -S`, about 10 MiB) rather than from a Python process with the package
# loaded (hundreds of MiB). It writes the command's wall seconds (fork to exit), ru_maxrss (KiB on
# Linux), exit code and ru_inblock (512-byte blocks read from storage, page faults on memory-mapped
# files included: what a disk-cold run really read) to the file in argv[1], and exits with that code.
_LAUNCHER = """import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        print(f"cannot run {sys.argv[2]}: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as fh:
    fh.write(f"{wall} {usage.ru_maxrss} {code} {usage.ru_inblock}")
sys.exit(code if code >= 0 else 128 - code)
"""


def launched(command: Sequence[str], figures: Path) -> list[str]:
    """`command` behind the launcher, which writes its figures to `figures` (see `read_launched`)."""
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(figures), *command]


def read_launched(figures: Path) -> dict[str, Any] | None:
    """`seconds`, `max_rss_bytes` (the command's own peak RSS), `exit_code` and `read_bytes` (what it
    read from storage); None if the launcher wrote nothing."""
    try:
        wall, maxrss, code, inblock = figures.read_text().split()
    except (OSError, ValueError):
        return None
    return {"seconds": float(wall), "max_rss_bytes": int(maxrss) * 1024, "exit_code": int(code),
            "read_bytes": int(inblock) * 512}


def run_phase(name: str, phase_dir: str | os.PathLike, command: Sequence[str]) -> int:
    """Run `command` as phase `name`: pass its output through, record time and peak RSS in `phase_dir/name.json`.

    The record keeps every run (`runs`, newest last): `seconds`, `peak_rss_bytes` (sampled sum over
    the process tree, the launcher's few MiB included), `max_process_rss_bytes` (the kernel's peak of
    the command's process), `exit_code` and `noop` (the command said it had nothing to do, e.g. an
    up-to-date lake). Returns the exit code.
    """
    out = Path(phase_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    noop = False
    with tempfile.TemporaryDirectory(prefix="analytics-phase-") as tmp:
        figures = Path(tmp) / "rusage"
        proc = subprocess.Popen(launched(command, figures), stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
        with RSSSampler(proc.pid, interval=0.1) as sampler:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                if any(m in line for m in NOOP_MARKERS):
                    noop = True
            code = proc.wait()
        launch = read_launched(figures)
    seconds = time.perf_counter() - t0
    max_rss = launch["max_rss_bytes"] if launch else None
    code = launch["exit_code"] if launch else code
    path = out / f"{name}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        record = {"name": name, "runs": []}
    record["runs"] = (record.get("runs") or [])[-19:] + [{
        "at": started, "seconds": round(seconds, 3), "peak_rss_bytes": sampler.peak,
        "max_process_rss_bytes": max_rss, "exit_code": code, "noop": noop, "command": list(command)}]
    write_atomic(path, json.dumps(record, indent=1))
    state = "nothing to do" if noop else ("ok" if code == 0 else f"FAILED (exit {code})")
    print(f"phase {name}: {state} in {seconds:.1f}s, peak RSS {format_bytes(max(sampler.peak, max_rss or 0))}", flush=True)
    return code


def load_phases(phases: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    """Phase records (a directory of `run_phase` files, or a mapping) as {name: figures}.

    For each phase: the latest run that did work (`seconds`, `peak_rss_bytes`, ...) and whether the
    latest run was a no-op (`reused`: the data, lake or views were already up to date).
    """
    if phases is None:
        return {}
    if isinstance(phases, Mapping):
        raw = dict(phases)
    else:
        d = Path(phases)
        raw = {}
        if d.is_dir():
            for f in sorted(d.glob("*.json")):
                try:
                    raw[f.stem] = json.loads(f.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
    out: dict[str, Any] = {}
    for name, rec in raw.items():
        runs = rec.get("runs") if isinstance(rec, Mapping) else None
        if runs is None:  # already one flat record
            out[name] = dict(rec)
            continue
        if not runs:
            continue
        work = [r for r in runs if not r.get("noop") and r.get("exit_code", 0) == 0]
        chosen = dict(work[-1] if work else runs[-1])
        chosen["reused"] = bool(runs[-1].get("noop"))
        chosen["runs"] = len(runs)
        out[name] = chosen
    return out
