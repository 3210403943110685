"""The memory guard of the batch runner: an RSS watch that stops one statement before it takes the machine.

Owns `MemoryGuard` (a background thread that polls the process RSS while watched statements run
and interrupts a DuckDB cursor whose statement grew the process by more than the limit),
`MemoryLimitError`, the exceptions that mean "this query ran out of memory" and the one message
that names the query and the limit. Must not decide what to retry or run queries itself: that
is `runner.SafeBatchRunner`.
"""
from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import duckdb
import psutil
import pyarrow as pa

from analytics.core.files import format_bytes


class MemoryLimitError(RuntimeError):
    """A query needed more memory than the limit allows."""


@dataclass
class Watch:
    cursor: duckdb.DuckDBPyConnection
    base: int  # process RSS when the statement started
    tripped: int | None = None  # RSS growth in bytes when the guard fired
    overlapped: bool = False  # another watched statement ran at the same time


class MemoryGuard:
    """RSS watch over the statements in flight: interrupts one when the process grew by more than
    `limit` since it started.

    Growth is counted from the RSS at each statement's start, so memory held before it (loaded
    views, the cache, the answers of the batch so far) is not blamed on it; DuckDB's own
    `memory_limit` bounds what its operators take. Statements that overlap share the blame: each
    is marked `overlapped`, and the runner retries a tripped, overlapped query alone before
    calling it too big.
    """

    def __init__(self, limit: int, poll_s: float = 0.005) -> None:
        self.limit = limit
        self.poll_s = poll_s
        self._proc = psutil.Process()
        self._lock = threading.Lock()
        self._active: dict[int, Watch] = {}
        self._ids = itertools.count()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.trips = 0

    def rss(self) -> int:
        try:
            return self._proc.memory_info().rss
        except psutil.Error:
            return 0

    @contextmanager
    def watch(self, cursor: duckdb.DuckDBPyConnection) -> Iterator[Watch]:
        w = Watch(cursor, self.rss())
        token = next(self._ids)
        with self._lock:
            if self._active:
                w.overlapped = True
                for other in self._active.values():
                    other.overlapped = True
            self._active[token] = w
        self._ensure_thread()
        self._wake.set()
        try:
            yield w
        finally:
            grown = self.rss() - w.base
            with self._lock:
                if w.tripped is None and grown > self.limit:
                    w.tripped = grown  # a spike between two polls, or an answer too big to hold
                    self.trips += 1
                del self._active[token]

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="memory-guard", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                busy = bool(self._active)
            if not busy:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            rss = self.rss()
            with self._lock:
                for w in self._active.values():
                    if w.tripped is None and rss - w.base > self.limit:
                        w.tripped = rss - w.base
                        self.trips += 1
                        try:
                            w.cursor.interrupt()
                        except Exception:  # noqa: BLE001 - a closed cursor has nothing to stop
                            pass
            time.sleep(self.poll_s)


class GuardTrip(Exception):
    """Raised by the runner when the guard fired on a statement that still returned."""


# what "this query ran out of memory" looks like, whoever noticed it first
MEMORY_ERRORS: tuple[type[BaseException], ...] = (
    duckdb.OutOfMemoryException, MemoryError, MemoryLimitError, GuardTrip, pa.ArrowMemoryError)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def check_answer(table: pa.Table, limit: int) -> None:
    """Refuse an answer larger than the limit: holding it would be the memory the limit forbids."""
    # the buffers' whole sizes bound the bytes referenced; those (nbytes walks each slice's
    # offsets) are counted only for an answer that might be near the limit
    if table.get_total_buffer_size() > limit and table.nbytes > limit:
        raise MemoryLimitError(f"its answer ({table.num_rows:,} rows) takes {format_bytes(table.nbytes)} in memory")


def memory_error_message(query_id: str, limit_text: str, limit: int, exc: BaseException | None,
                         grown: int | None) -> str:
    """One line naming the query, the limit and what went over it."""
    limit_s = f"memory limit {limit_text} ({format_bytes(limit)})"
    advice = "narrow its filters, add a limit, or raise --memory-limit"
    if isinstance(exc, MemoryLimitError):
        return f"{query_id} exceeded the {limit_s}: {exc}; {advice}"
    if grown is not None:
        return (f"{query_id} exceeded the {limit_s}: the process grew by {format_bytes(grown)} while it ran, "
                f"so it was stopped; {advice}")
    return f"{query_id} exceeded the {limit_s}: {first_line(exc) if exc else 'out of memory'}; {advice}"
