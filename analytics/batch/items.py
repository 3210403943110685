"""A run's queries and files: per-query state, the run's result, one-line errors, the output directory.

Owns `QueryItem` (what the runner knows of one query as it goes: parsed query, plan, answer,
timings, error, and its `run.json` entry), `RunResult`, `describe_error` (the one-line text of a
failure) and the output directory of the contract: `q{i}.csv` written atomically, leftovers of a
killed run and answers of an earlier run of the same indices removed first. Must not run queries.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from analytics.batch.memory import first_line
from analytics.core.files import write_atomic
from analytics.query.model import Query, QueryError
from analytics.query.results import to_csv_text
from analytics.serving.router import LAKE, Plan


@dataclass
class QueryItem:
    idx: int  # 1-based position in the file
    raw: Any
    query: Query | None = None
    qhash: str | None = None
    key: str | None = None
    plan: "Plan | None" = None
    table: pa.Table | None = None
    route: str | None = None
    fallback: str | None = None
    ms_pre: float = 0.0  # parse, cache lookup, plan
    ms_exec: float = 0.0  # execution and fetch (a shared scan's share included)
    cache: bool = False
    same_as: "QueryItem | None" = None
    scan: str | None = None  # id of the shared scan that answered it
    scan_members: int = 0
    bytes_read: int | None = None
    disk_bytes: int | None = None  # a view answer: what its thread read from storage (mapped pages included)
    error: str | None = None
    retry_alone: bool = False
    computed: bool = False  # executed now (not from the cache)
    rows: int | None = None
    lake_version: int | None = None  # the Delta version of the lake the answer reflects
    view_version: int | None = None  # for a view route: the view's registered version

    @property
    def id(self) -> str:
        return f"q{self.idx}"

    def reset(self) -> None:
        self.table = None
        self.ms_exec = 0.0
        self.scan = None
        self.scan_members = 0
        self.bytes_read = None
        self.disk_bytes = None
        self.error = None
        self.retry_alone = False

    def entry(self) -> dict[str, Any]:
        e: dict[str, Any] = {"id": self.id}
        if self.error is not None:
            e["error"] = self.error
            if self.qhash:
                e["query_hash"] = self.qhash
            return e
        e.update(ms=round(self.ms_pre + self.ms_exec, 3), route=self.route, rows=self.rows,
                 cache=self.cache, shared_scan=self.scan is not None)
        if self.scan is not None:
            e.update(scan=self.scan, scan_members=self.scan_members)
        if self.same_as is not None:
            e["same_as"] = self.same_as.id
        if self.route == LAKE and self.fallback:
            e["fallback_reason"] = self.fallback
        if self.bytes_read is not None:
            e["bytes_read"] = self.bytes_read
        if self.disk_bytes is not None:
            e["disk_read_bytes"] = self.disk_bytes
        e["lake_version"] = self.lake_version
        if self.route != LAKE:
            e["view_version"] = self.view_version
        e["query_hash"] = self.qhash
        return e


@dataclass
class RunResult:
    """What a run produced: the `run.json` data and, when kept, each answer (None where it failed)."""

    report: dict[str, Any]
    tables: list[pa.Table | None] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.report["errors"]


def describe_error(exc: BaseException) -> str:
    """A failure as one line: `invalid query: ...` for a validation error, else the exception's type and first line."""
    if isinstance(exc, QueryError):
        return f"invalid query: {exc}"
    return f"{type(exc).__name__}: {first_line(exc)}"


_TMP_LEFTOVER = re.compile(r"^\.(q\d+\.csv|run\.json)\..*\.tmp$")


def prepare_out_dir(out: Path, n: int) -> None:
    """Create `out`; remove temporary files a killed run left and answers of these indices from an earlier run."""
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        if _TMP_LEFTOVER.match(f.name):
            f.unlink(missing_ok=True)
    for i in range(1, n + 1):
        (out / f"q{i}.csv").unlink(missing_ok=True)
    (out / "run.json").unlink(missing_ok=True)


def write_answers(out: Path, items: Sequence[QueryItem]) -> None:
    """`q{i}.csv` of every answered item, each written atomically."""
    for it in items:
        if it.error is None and it.table is not None:
            write_atomic(out / f"{it.id}.csv", to_csv_text(it.query, it.table))
