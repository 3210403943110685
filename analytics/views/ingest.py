"""The ingest loop: parts from a landing directory into the lake, then into the views, one at a time.

Owns `ingest`: take each complete part of the landing directory (`lake.landing`), `prepare` it
as a new segment (remediation, quarantine, manifest commit), then refresh the views at the cost
of that part (`build`: a delta per view, or the days a replaced or deleted part covered
recomputed), then the next part. Compaction of views that hold COMPACT_AT deltas runs in a
background thread (under each view's lock) while the loop goes on. Every step is one of the
crash-safe steps of `prepare` and `build`, so a kill at any point leaves the last committed state
served; a restart first brings the lake and the views up to date with the taken parts (a part
is counted once: the manifest knows it by name and content). A part whose header is not this
data set's is refused with a one-line reason naming it, a part that cannot be read is listed
as rejected by prepare, bad rows are quarantined; the loop goes on with the next part. A step
that fails (a take or a prepare, e.g. on a full disk) leaves the last committed state served and
no temporary file, is logged and counted in `failed_steps` (the CLI exits non-zero). One ingest
at a time per lake: the loop holds the lake's ingest lock from start to end, so a second one waits
(saying so) or, with `wait=False`, raises IngestBusy at once. A stop request (`stop`, set by
Ctrl-C in the CLI) is honoured between steps.
Must not answer queries.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout

from analytics.core.faults import crash_point
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.lake.landing import TAKEN_DIR, Change, Landing
from analytics.lake.prepare import PrepareError, check_header, prepare
from analytics.lake.state import Lake
from analytics.lake.table import latest_version
from analytics.views.adaptive_catalog import all_views
from analytics.views.build import BuildError, build, compact_due
from analytics.views.delta import COMPACT_AT
from analytics.views.registry import load_registry

log = logging.getLogger(__name__)
LOCK = ".ingest.lock"  # in the lake's _ingest directory: held by the one ingest loop running on the lake


class IngestBusy(RuntimeError):
    """Another ingest holds the lake's lock and the caller asked not to wait."""


def _part_result(lake: Path, name: str) -> str:
    """What the lake's state says of one part: rows in the lake and quarantined (by reason), or why rejected."""
    manifest = Lake.open(lake).state
    for r in manifest.get("rejected") or ():
        if r["file"] == name:
            return f"rejected: {r['reason']}"
    for seg in manifest["segments"]:
        if seg["source"]["file"] == name:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(seg["quarantine_by_reason"].items()))
            return (f"{seg['rows_read']:,} rows: {seg['rows_lake']:,} in the lake, {seg['rows_quarantined']:,} "
                    f"quarantined{f' ({reasons})' if reasons else ''}")
    return "not in the lake"


class _Compactor:
    """At most one background compaction at a time."""

    def __init__(self, lake: Path, memory_limit: str) -> None:
        self.lake, self.memory_limit = lake, memory_limit
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compact")
        self.running: Future | None = None
        self.compacted: list[str] = []

    def maybe_start(self) -> None:
        if self.running is not None and not self.running.done():
            return
        if any(len(e.deltas) >= COMPACT_AT for e in load_registry(self.lake).values()):
            self.running = self.pool.submit(self._run)

    def _run(self) -> None:
        try:
            done = compact_due(self.lake, at=COMPACT_AT, memory_limit=self.memory_limit)
        except Exception as exc:  # noqa: BLE001 - a failed compaction leaves the deltas serving; retried later
            log.warning("ingest: compaction failed (the deltas keep serving): %s", str(exc).splitlines()[0])
            return
        if done:
            log.info("ingest: compacted %s", ", ".join(done))
            self.compacted += done

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _refresh(lake: Path, jobs: int | None, memory_limit: str) -> dict[str, Any]:
    started = time.perf_counter()
    # the smallest views first: the coarse ones, which answer most queries, are fresh soonest
    rows = {n: e.rows for n, e in load_registry(lake).items()}
    names = sorted(all_views(lake), key=lambda n: (rows.get(n, 0), n))  # adaptive views follow the lake too
    try:
        summary = build(lake, names, jobs=jobs, progress=False, memory_limit=memory_limit, compact_deltas=False)
    except BuildError as exc:  # e.g. a damaged lake segment: no view is built from it
        log.error("ingest: views not refreshed: %s", str(exc).splitlines()[0])
        return {"views": [], "built": [], "up_to_date": [], "failed": {"(every view)": str(exc).splitlines()[0]}}
    modes = sorted({r["mode"] for r in summary["views"] if r["status"] == "built"})
    log.info("ingest: views refreshed in %.2fs: %d built (%s), %d up to date, %d failed",
             time.perf_counter() - started, len(summary["built"]), ", ".join(modes) or "-",
             len(summary["up_to_date"]), len(summary["failed"]))
    for name, why in summary["failed"].items():
        log.error("ingest: view %s failed: %s", name, why)
    return summary


def ingest(raw_dir: str | os.PathLike, lake_dir: str | os.PathLike, *, watch: bool = False, interval: float = 1.0,
           settle: float = 1.0, jobs: int | None = None, memory_limit: str = DEFAULT_MEMORY_LIMIT,
           stop: threading.Event | None = None, wait: bool = True,
           on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Ingest the landing directory `raw_dir` into `lake_dir` part by part; with `watch`, keep
    watching (every `interval` seconds) until `stop` is set. Returns counts of what was done;
    `on_step` is called with each part's result (name, action, outcome, seconds). Holds the lake's
    ingest lock throughout: waits for another ingest to finish, or raises IngestBusy if not `wait`."""
    raw, lake = Path(raw_dir), Path(lake_dir)
    if not raw.is_dir():
        raise PrepareError(f"landing directory {str(raw)!r} does not exist or is not a directory")
    (lake / TAKEN_DIR).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str((lake / TAKEN_DIR).parent / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise IngestBusy(f"another ingest is running on {lake}; not waiting (--no-wait)") from None
        log.warning("ingest: another ingest is running on %s; waiting for it to finish", lake)
        lock.acquire()
    try:
        return _loop(raw, lake, watch, interval, settle, jobs, memory_limit, stop or threading.Event(), on_step)
    finally:
        lock.release()


def _loop(raw: Path, lake: Path, watch: bool, interval: float, settle: float, jobs: int | None, memory_limit: str,
          stop: threading.Event, on_step: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    landing = Landing(raw, lake, settle)
    landing.sweep()
    counts: dict[str, Any] = {"taken": 0, "dropped": 0, "refused": [], "failed_views": {}, "steps": [],
                              "failed_steps": [], "resumed": []}
    if latest_version(lake) is not None:
        adopted = landing.adopt(seg["source"] for seg in Lake.open(lake).state["segments"] if seg.get("source"))
        if adopted:
            log.info("ingest: %d part(s) already in the lake as they are: %s", len(adopted), ", ".join(adopted[:5])
                     + (" ..." if len(adopted) > 5 else ""))
    compactor = _Compactor(lake, memory_limit)
    try:
        if any(landing.taken.glob("*.csv")):  # resume: a run killed between a step and the next
            try:
                summary = prepare(landing.taken, lake, progress=False, memory_limit=memory_limit,
                                  operation="ingest")
            except PrepareError as exc:
                log.error("ingest: resuming the parts taken by an earlier run failed: %s", str(exc).splitlines()[0])
                counts["failed_steps"].append(f"resume: {str(exc).splitlines()[0]}")
            else:
                counts["resumed"] = list(summary["added"])
                if summary["added"] or summary["dropped"]:
                    log.info("ingest: finished what an interrupted run had taken: %s",
                             ", ".join([f"took {n}" for n in summary["added"]]
                                       + [f"dropped {n}" for n in summary["dropped"]]))
                counts["failed_views"].update(_refresh(lake, jobs, memory_limit)["failed"])
        while not stop.is_set():
            changes, settling = landing.scan()
            for change in changes:
                if stop.is_set():
                    break
                step = _step(landing, lake, change, jobs, memory_limit, counts)
                if step is None:
                    continue
                counts["steps"].append(step)
                if on_step:
                    on_step(step)
                compactor.maybe_start()
            if not changes and not settling and not watch:
                break
            if not changes:
                stop.wait(interval if watch else min(interval, max(settle, 0.05)))
    finally:
        compactor.close()
    counts["compacted"] = compactor.compacted
    return counts


def _step(landing: Landing, lake: Path, change: Change, jobs: int | None, memory_limit: str,
          counts: dict[str, Any]) -> dict[str, Any] | None:
    """One part through prepare and the view refresh; None when the part is refused."""
    started = time.perf_counter()
    if change.action == "take":
        try:
            check_header(landing.landing / change.name)
        except (PrepareError, OSError) as exc:
            log.error("ingest: %s refused: %s", change.name, str(exc).splitlines()[0])
            landing.refuse(change.name)
            counts["refused"].append(change.name)
            return None
        try:
            landing.take(change.name)
        except OSError as exc:
            log.error("ingest: taking %s failed: %s", change.name, exc.strerror or str(exc).splitlines()[0])
            landing.refuse(change.name)  # left alone until it changes; the next run tries again
            counts["failed_steps"].append(f"take {change.name}: {exc.strerror or exc}")
            return None
        counts["taken"] += 1
    else:
        landing.drop(change.name)
        counts["dropped"] += 1
    crash_point("ingest:after-take")
    try:
        summary = prepare(landing.taken, lake, progress=False, memory_limit=memory_limit,
                          operation=f"ingest {change.action} {change.name}")
    except PrepareError as exc:
        log.error("ingest: prepare after %s %s failed: %s", change.action, change.name, str(exc).splitlines()[0])
        counts["failed_steps"].append(f"prepare after {change.action} {change.name}: {str(exc).splitlines()[0]}")
        return {"part": change.name, "action": change.action, "outcome": f"prepare failed: {exc}",
                "prepare_seconds": time.perf_counter() - started}
    prepared = time.perf_counter()
    outcome = _part_result(lake, change.name) if change.action == "take" else "dropped from the lake"
    log.info("ingest: %s %s: %s; lake version %s (prepare %.2fs)", change.action, change.name, outcome,
             summary["lake_version"], prepared - started)
    views = _refresh(lake, jobs, memory_limit)
    counts["failed_views"].update(views["failed"])
    return {"part": change.name, "action": change.action, "outcome": outcome, "lake_version": summary["lake_version"],
            "prepare_seconds": round(prepared - started, 3),
            "refresh_seconds": round(time.perf_counter() - prepared, 3),
            "views": {r["view"]: r.get("mode", r["status"]) for r in views["views"]}, "failed_views": views["failed"]}
