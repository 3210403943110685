"""Query telemetry: one JSON line per answered (or failed) query, and the statistics over them.

Each line holds the query's hash and its shape (`views.adaptive_catalog.query_shape`: literal values
dropped), its route, the lake index it read if any, time, rows, cache and error: what `analytics
stats` summarises and `analytics advise` generalises into view and index definitions.

Owns `LAKE/_telemetry/queries.jsonl` (size-rotated to `queries.jsonl.1` ... `.N`) and
`analytics stats`. Recording never blocks or fails a query: `record` only puts the event on a
bounded queue (dropping it, and counting the drop, if the queue is full) and one background
thread per log file formats and appends the lines (the standard library's logging queue and
rotating file handlers); any OSError of that thread is swallowed and counted. Must not run queries.
"""
from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import logging.handlers
import os
import queue
import statistics
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


class _Enqueue(logging.handlers.QueueHandler):
    """Puts an event on the bounded queue as it is (the writer thread formats it): never blocks;
    a full queue drops the event and counts it."""

    def __init__(self, log: "TelemetryLog", q: queue.Queue[Any]) -> None:
        super().__init__(q)
        self.log = log

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def handleError(self, record: logging.LogRecord) -> None:
        self.log.dropped += 1


class _JsonLines(logging.handlers.RotatingFileHandler):
    """Appends each event as one JSON line, rotating at `max_bytes` to `.1` ... `.keep`; an OSError
    (a full disk, a file where the directory should be) is counted, never raised."""

    def __init__(self, log: "TelemetryLog") -> None:
        super().__init__(log.path, maxBytes=log.max_bytes, backupCount=log.keep, encoding="utf-8", delay=True)
        self.log = log

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record.msg, default=str, separators=(",", ":"))

    def emit(self, record: logging.LogRecord) -> None:
        done = getattr(record, "done", None)
        if done is not None:  # a flush marker: everything queued before it is written
            done.set()
            return
        errors = self.log.write_errors
        super().emit(record)
        if self.log.write_errors == errors:
            self.log.written += 1

    def handleError(self, record: logging.LogRecord) -> None:
        self.log.write_errors += 1
        self.log.dropped += 1


class TelemetryLog:
    """Appends events to one JSONL file from a background thread (the standard library's
    `QueueHandler` onto a bounded queue, a `QueueListener` thread, a `RotatingFileHandler`); use
    `telemetry_log()` to share one per file."""

    def __init__(self, path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self._enqueue = _Enqueue(self, self._queue)
        self._listener: logging.handlers.QueueListener | None = None
        self._start_lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.write_errors = 0

    def record(self, event: dict[str, Any]) -> None:
        """Queue one event; never blocks, never raises."""
        try:
            self._ensure_listener()
            self._enqueue.emit(logging.makeLogRecord({"msg": event}))
        except Exception:  # noqa: BLE001 - telemetry must never fail a query
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is on disk (or `timeout`); True if it is."""
        if self._listener is None:
            return True
        done = threading.Event()
        try:
            self._queue.put(logging.makeLogRecord({"done": done}), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _ensure_listener(self) -> None:
        if self._listener is not None:
            return
        with self._start_lock:
            if self._listener is None:
                listener = logging.handlers.QueueListener(self._queue, _JsonLines(self))
                listener.start()
                self._listener = listener


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


def percentile(values: Iterable[float | None], p: int) -> float | None:
    """The `p`-th percentile (1..99) of the values that are not None: linear interpolation between
    closest ranks (numpy's default; `statistics.quantiles`' inclusive method)."""
    xs = [v for v in values if v is not None]
    if len(xs) < 2:
        return xs[0] if xs else None
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1]


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
