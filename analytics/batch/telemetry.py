"""Query telemetry: one JSON line per answered (or failed) query, and the statistics over them.

Each line holds the query's hash and its shape (`views.adaptive_catalog.query_shape`: literal values
dropped), its route, the lake index it read if any, time, rows, cache and error: what `analytics
stats` summarises and `analytics advise` generalises into view and index definitions.

Owns `LAKE/_telemetry/queries.jsonl` (size-rotated to `queries.jsonl.1` ... `.N`) and
`analytics stats`. Recording never blocks or fails a query: `record` only puts the event on a
bounded queue (dropping it, and counting the drop, if the queue is full) and one background
thread per log file appends the lines; any OSError of that thread is swallowed and counted.
Must not run queries.
"""
from __future__ import annotations

import atexit
import datetime as dt
import json
import math
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

TELEMETRY_DIR = "_telemetry"
LOG_NAME = "queries.jsonl"
DEFAULT_MAX_BYTES = 8 << 20
DEFAULT_KEEP = 3
QUEUE_SIZE = 65536


def log_path(lake_root: str | os.PathLike) -> Path:
    return Path(lake_root) / TELEMETRY_DIR / LOG_NAME


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class TelemetryLog:
    """Appends events to one JSONL file from a background thread; use `telemetry_log()` to share one."""

    def __init__(self, path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.write_errors = 0

    def record(self, event: dict[str, Any]) -> None:
        """Queue one event; never blocks, never raises."""
        try:
            self._ensure_thread()
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
        except Exception:  # noqa: BLE001 - telemetry must never fail a query
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is on disk (or `timeout`); True if it is."""
        if self._thread is None:
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"telemetry:{self.path}", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            lines: list[str] = []
            waiters: list[threading.Event] = []
            while True:  # drain what is queued: one write per burst
                if isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    try:
                        lines.append(json.dumps(item, default=str, separators=(",", ":")))
                    except (TypeError, ValueError):
                        self.dropped += 1
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if lines:
                self._write(lines)
            for w in waiters:
                w.set()

    def _write(self, lines: list[str]) -> None:
        data = ("\n".join(lines) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            self.written += len(lines)
            if size >= self.max_bytes:
                self._rotate()
        except OSError:
            self.write_errors += 1
            self.dropped += len(lines)

    def _rotate(self) -> None:
        """queries.jsonl -> .1 -> .2 ... ; the oldest beyond `keep` is removed."""
        try:
            oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
            oldest.unlink(missing_ok=True)
            for k in range(self.keep - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{k}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{k + 1}"))
            if self.keep > 0:
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            else:
                self.path.unlink(missing_ok=True)
        except OSError:
            self.write_errors += 1


_logs: dict[str, TelemetryLog] = {}
_logs_lock = threading.Lock()


def telemetry_log(lake_root: str | os.PathLike, **kwargs: Any) -> TelemetryLog:
    """The process's one writer for this lake's log (several runners share it)."""
    path = log_path(lake_root).resolve()
    with _logs_lock:
        log = _logs.get(str(path))
        if log is None:
            log = _logs[str(path)] = TelemetryLog(path, **kwargs)
        return log


@atexit.register
def _flush_all() -> None:
    for log in list(_logs.values()):
        log.flush(timeout=2.0)


# ---- reading and statistics -------------------------------------------------------------------
def log_files(lake_root: str | os.PathLike) -> list[Path]:
    """The log and its rotated predecessors, oldest first."""
    path = log_path(lake_root)
    rotated = sorted(path.parent.glob(f"{LOG_NAME}.*"),
                     key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0, reverse=True)
    return [p for p in rotated if p.suffix[1:].isdigit()] + ([path] if path.exists() else [])


def read_events(lake_root: str | os.PathLike,
                on_bad_line: Callable[[Path, int, str], None] | None = None) -> Iterator[dict[str, Any]]:
    """Every recorded event, oldest first; a torn or foreign line is skipped (and, with
    `on_bad_line`, reported as file, 1-based line number, why)."""
    for f in log_files(lake_root):
        try:
            with f.open(encoding="utf-8", errors="replace") as fh:
                for n, line in enumerate(fh, start=1):
                    try:
                        ev = json.loads(line)
                    except (ValueError, RecursionError) as exc:  # torn, foreign, or nested past the parser
                        if on_bad_line is not None and line.strip():
                            on_bad_line(f, n, f"not JSON ({str(exc).splitlines()[0][:60]})")
                        continue
                    if isinstance(ev, dict):
                        yield ev
                    elif on_bad_line is not None:
                        on_bad_line(f, n, f"not an event object but {type(ev).__name__}")
        except OSError as exc:
            if on_bad_line is not None:
                on_bad_line(f, 0, f"unreadable ({exc.strerror or exc})")
            continue


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), `p` in 0..100."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stats(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """View hit rate, cache hit rate, and latency percentiles per route (computed answers; cache hits apart)."""
    total = errors = answered = view_hits = cache_hits = shared = lake = 0
    by_route: dict[str, list[float]] = {}
    cached_ms: list[float] = []
    first = last = None
    for ev in events:
        total += 1
        t = ev.get("time")
        first = t if first is None else first
        last = t
        if ev.get("error"):
            errors += 1
            continue
        answered += 1
        route = ev.get("route") if isinstance(ev.get("route"), str) and ev.get("route") else "?"
        if route != "lake":
            view_hits += 1
        else:
            lake += 1
        ms = ev.get("ms")
        if ev.get("cache"):
            cache_hits += 1
            if isinstance(ms, (int, float)):
                cached_ms.append(float(ms))
            continue
        if ev.get("shared_scan"):
            shared += 1
        if isinstance(ms, (int, float)):
            by_route.setdefault(route, []).append(float(ms))

    def summary(ms: list[float]) -> dict[str, Any]:
        return {"n": len(ms), "p50": _r(percentile(ms, 50)), "p95": _r(percentile(ms, 95)),
                "p99": _r(percentile(ms, 99)), "max": _r(max(ms) if ms else None)}

    routes = {r: summary(v) for r, v in sorted(by_route.items(), key=lambda kv: (-len(kv[1]), kv[0]))}
    return {
        "queries": total, "answered": answered, "errors": errors,
        "view_hit_rate": _rate(view_hits, answered), "cache_hit_rate": _rate(cache_hits, answered),
        "lake_queries": lake, "shared_scan_queries": shared,
        "routes": routes, "cache": summary(cached_ms), "first": first, "last": last,
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def format_stats(s: dict[str, Any]) -> str:
    if not s["queries"]:
        return "no telemetry recorded yet"
    pct = lambda x: "n/a" if x is None else f"{x * 100:.1f}%"  # noqa: E731
    lines = [
        f"queries: {s['queries']:,} ({s['answered']:,} answered, {s['errors']:,} failed) from {s['first']} to {s['last']}",
        f"view hit rate:  {pct(s['view_hit_rate'])} of answered queries routed to a view",
        f"cache hit rate: {pct(s['cache_hit_rate'])} of answered queries served from the result cache",
        f"lake queries: {s['lake_queries']:,}, computed through a shared scan: {s['shared_scan_queries']:,}",
        "",
        f"{'route':<34} {'n':>7} {'p50 ms':>10} {'p95 ms':>10} {'p99 ms':>10}",
    ]
    rows = list(s["routes"].items()) + ([("(cache hit)", s["cache"])] if s["cache"]["n"] else [])
    for route, r in rows:
        f = lambda x: "" if x is None else f"{x:,.2f}"  # noqa: E731
        lines.append(f"{route:<34} {r['n']:>7,} {f(r['p50']):>10} {f(r['p95']):>10} {f(r['p99']):>10}")
    return "\n".join(lines)
