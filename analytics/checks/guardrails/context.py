"""What every guardrail check shares: the context it reads, the result it returns, and small helpers.

Owns `Context` (a UTC DuckDB connection with `events` over the lake's committed files, the view
registry, each view's Parquet file, the raw CSVs when given, and the scans several checks share:
`lake_totals`, `raw_summary`/`raw_minutes`, `lake_window`), the routes and probes that answer a
query on every covering view and the lake, `CheckResult`/`Check`, `GuardrailError`, and the helpers
more than one category uses. Must not hold a check, decide what a category judges, nor change the
lake or the views.
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from analytics.core import db
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.core.sql import sql_string
from analytics.lake.rules import DUCKDB_FUNCTIONS, raw_csv_sql, reason_case_sql
from analytics.lake.state import Lake
from analytics.query import compiler
from analytics.query.model import Query, parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.serving import router
from analytics.views.adaptive_catalog import all_views
from analytics.views.build import lake_totals
from analytics.views.catalog import MEASURE_COLUMNS, SUM_TYPE, ViewDef
from analytics.views.delta import version_relation
from analytics.views.registry import ViewEntry, load_registry, staleness

SAMPLES = 5  # offending rows shown per finding
# Columns that identify an event: a raw row missing one is quarantined, never in the lake.
KEY_COLUMNS: tuple[str, ...] = ("ts", "type", "auction_id", "advertiser_id", "publisher_id", "country")


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Check:
    id: str
    category: str
    description: str
    func: Callable[["Context"], CheckResult]


class GuardrailError(ValueError):
    """Bad arguments to a guardrails run (unknown category, missing raw directory)."""


def jsonable(value: Any) -> Any:
    """Evidence values as JSON: exact decimals as text, dates ISO, containers recursively."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, decimal.Decimal):  # counts (HUGEINT sums) as numbers, exact sums as text
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent >= 0 else str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, bytes):
        return value.hex()
    return value


def dict_rows(con: duckdb.DuckDBPyConnection, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """The rows of `sql` as dicts keyed by column name."""
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def one_row(con: duckdb.DuckDBPyConnection, sql: str, params: Iterable[Any] = ()) -> dict[str, Any]:
    return dict_rows(con, sql, params)[0]


def presence(view: ViewDef, lake: Lake, entry: ViewEntry | None) -> str | None:
    """`staleness` on registration and file alone: "not built", "file missing: ..." or None, whatever
    definition and lake version the entry was built from (those are judged by
    mv_consistency.current_lake_version, a missing file by mv_consistency.present_readable)."""
    if entry is not None:
        entry = replace(entry, definition=view.definition_hash(), lake_version=lake.data_version)
    return staleness(view, lake, entry)


@dataclass
class ViewHandle:
    name: str
    view: ViewDef
    entry: ViewEntry
    path: Path

    @property
    def rel(self) -> str:
        """The version's rows: its file, or its base and deltas merged to one row per key (`views.delta`)."""
        if not self.entry.deltas:
            return f"read_parquet({sql_string(str(self.path))})"
        root = self.path.parents[len(Path(self.entry.file).parts) - 1]
        return f"({self.view.reaggregate_sql(version_relation(root, self.entry))})"


@dataclass
class Probe:
    """The outcome of one probe query answered by several sources and compared with a reference."""

    query: dict[str, Any]
    reference: str
    reference_rows: list[list[str]]
    sources: list[str] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    def evidence(self) -> dict[str, Any]:
        return {"query": self.query, "reference": self.reference, "rows": len(self.reference_rows),
                "reference_sample": self.reference_rows[:4], "compared_with": self.sources,
                "mismatches": self.mismatches}


# ---- context ------------------------------------------------------------------------------------

class Context:
    """What checks read: a UTC DuckDB connection with `events` over the lake's committed files,
    the registry, each view's Parquet file and, with `raw`, the raw CSVs."""

    def __init__(self, lake_dir: str | os.PathLike, raw_dir: str | os.PathLike | None = None, *,
                 memory_limit: str = DEFAULT_MEMORY_LIMIT) -> None:
        self.lake = Lake.open(lake_dir)
        self.root = self.lake.root
        self.raw_dir = Path(raw_dir) if raw_dir is not None else None
        if self.raw_dir is not None:
            if not self.raw_dir.is_dir():
                raise GuardrailError(f"raw directory {str(self.raw_dir)!r} does not exist or is not a directory")
            if not any(self.raw_dir.glob("*.csv")):
                raise GuardrailError(f"raw directory {str(self.raw_dir)!r} holds no *.csv files")
        self.con = db.connect(memory_limit=memory_limit)
        self.con.execute("SET enable_progress_bar = false")  # the report is the output
        self.lake.register(self.con, "events")
        # the lake with every derived column recomputed from ts in UTC: an engine-independent reference
        self.con.execute("""
            CREATE OR REPLACE TEMP VIEW events_from_ts AS
            SELECT ts, CAST(date_trunc('week', ts) AS DATE) AS week, CAST(ts AS DATE) AS day,
                   date_trunc('hour', ts) AS hour, strftime(ts, '%Y-%m-%d %H:%M') AS minute,
                   type, auction_id, advertiser_id, publisher_id, bid_price, user_id, total_price, country
            FROM events""")
        self.registry: dict[str, ViewEntry] = load_registry(self.root)
        # the catalog and the lake's adaptive views: the same checks hold for both
        self.catalog: tuple[ViewDef, ...] = tuple(all_views(self.root).values())
        self._views: list[ViewHandle] | None = None
        self._skipped: dict[str, str] = {}
        self._done: set[str] = set()

    def close(self) -> None:
        self.con.close()

    # views ---------------------------------------------------------------------------------------
    def _load_views(self) -> None:
        if self._views is not None:
            return
        self._views = []
        for view in self.catalog:
            entry = self.registry.get(view.name)
            absent = presence(view, self.lake, entry)
            if absent is not None:
                self._skipped[view.name] = absent
                continue
            path = self.root / entry.file
            try:
                pq.read_metadata(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable footer
                self._skipped[view.name] = f"unreadable: {str(exc).splitlines()[0]}"
                continue
            self._views.append(ViewHandle(view.name, view, entry, path))

    def views(self, having: Iterable[str] = ()) -> list[ViewHandle]:
        """Views whose file can be opened (others are `mv_consistency.present_readable`'s finding)."""
        self._load_views()
        need = set(having)
        return [h for h in self._views or [] if need <= set(h.view.group_columns)]

    @property
    def skipped_views(self) -> dict[str, str]:
        """Views left out and why, as evidence: a check's pass covers only the views it could open."""
        self._load_views()
        return {n: f"{why} (see mv_consistency.present_readable)" for n, why in self._skipped.items()}

    def lake_file_schemas(self) -> list[tuple[str, pa.Schema]]:
        """Each committed lake file (relative path) with its Parquet schema."""
        return [(f.relative_to(self.root).as_posix(), pq.read_schema(f)) for f in self.lake.event_files()]

    # shared scans --------------------------------------------------------------------------------
    def lake_totals(self) -> str:
        """`lake_totals`: per type and day, rows, non-NULL counts and exact sums (one lake scan)."""
        if "lake_totals" not in self._done:
            self.con.register("lake_totals_arrow", lake_totals(self.con, self.lake))
            self.con.execute("CREATE OR REPLACE TEMP TABLE lake_totals AS SELECT * FROM lake_totals_arrow")
            self.con.unregister("lake_totals_arrow")
            self._done.add("lake_totals")
        return "lake_totals"

    def _raw_text(self) -> str:
        reason = reason_case_sql(DUCKDB_FUNCTIONS)
        # the same reader options and remediation rules as `prepare`; wrong-field-count lines are
        # skipped here (prepare quarantines them with the raw line)
        return f"(SELECT *, {reason} AS reason FROM {raw_csv_sql(str(self.raw_dir / '*.csv'), ignore_errors=True)})"

    def raw_summary(self) -> str | None:
        """`raw_summary`, the one pass over the raw CSVs: per type and UTC minute (the baseline's cast,
        `to_timestamp(ts / 1000.0)`), the accepted rows' counts, millisecond tallies and exact price sums,
        plus every row's NULL key columns (rejected rows in one group). Also creates `raw_minutes`, the
        accepted minutes with the baseline's derived columns. None without raw."""
        if self.raw_dir is None:
            return None
        if "raw_summary" not in self._done:
            ms = "TRY_CAST(ts AS BIGINT)"
            nulls = ", ".join(f"count(*) FILTER ({c} IS NULL) AS null_{c}" for c in KEY_COLUMNS)
            prices = ", ".join(
                f"count({m}) FILTER (reason IS NULL) AS nn_{m}, "
                f"sum(TRY_CAST({m} AS {SUM_TYPE})) FILTER (reason IS NULL) AS sum_{m}" for m in MEASURE_COLUMNS)
            self.con.execute(f"""
                CREATE OR REPLACE TEMP TABLE raw_summary AS
                SELECT reason IS NULL AS accepted,
                       CASE WHEN reason IS NULL THEN type END AS type,
                       CASE WHEN reason IS NULL THEN date_trunc('minute', to_timestamp(TRY_CAST(ts AS DOUBLE) / 1000.0)) END AS minute_ts,
                       count(*) AS cnt,
                       count(*) FILTER (reason IS NULL AND {ms} % 1000 <> 0) AS n_ms,
                       sum({ms} % 1000) FILTER (reason IS NULL) AS sum_ms,
                       {prices}, {nulls}
                FROM {self._raw_text()} GROUP BY ALL""")
            self.con.execute(f"""
                CREATE OR REPLACE TEMP VIEW raw_minutes AS
                SELECT type, DATE_TRUNC('week', minute_ts) AS week, DATE(minute_ts) AS day,
                       DATE_TRUNC('hour', minute_ts) AS hour, STRFTIME(minute_ts, '%Y-%m-%d %H:%M') AS minute,
                       CAST(DATE_TRUNC('hour', minute_ts) AS TIMESTAMP) AS utc_hour,
                       cnt, {', '.join(f'nn_{m}, sum_{m}' for m in MEASURE_COLUMNS)}
                FROM raw_summary WHERE accepted""")
            self._done.add("raw_summary")
        return "raw_summary"

    def lake_window(self) -> str:
        """`lake_window`: the lake's rows on the boundary days (first and last day, anything before
        2024-01-02, 2024-02-28..03-01, 2024-12-30 and later) with day/hour/minute/week recomputed from
        ts in UTC: the reference for boundary probes, without recomputing them for every row."""
        if "lake_window" not in self._done:
            first, last = self.con.execute("SELECT min(day), max(day) FROM events").fetchall()[0]
            windows = ["ts < TIMESTAMP '2024-01-02'", "(ts >= TIMESTAMP '2024-02-28' AND ts < TIMESTAMP '2024-03-02')",
                       "ts >= TIMESTAMP '2024-12-30'"]
            for d in (first, last):
                if d is not None:
                    windows.append(f"(ts >= TIMESTAMP '{d}' AND ts < TIMESTAMP '{d + dt.timedelta(days=1)}')")
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE lake_window AS SELECT * FROM events_from_ts "
                             f"WHERE {' OR '.join(windows)}")
            self._done.add("lake_window")
        return "lake_window"

    # engine --------------------------------------------------------------------------------------
    def routes(self, query: Query, lake: bool = True,
               views: Callable[[ViewDef], bool] | None = None) -> list[tuple[str, str, list[Any]]]:
        """The engine's SQL for `query` on every covering view file (those `views` selects) and on the
        lake, as the router and compiler produce it for serving."""
        out = []
        for h in self.views():
            if (views is None or views(h.view)) and router.coverage(h.view, query) is None:
                sql, params = router.compile_for_view(query, h.view, h.rel)
                out.append((h.name, sql, list(params)))
        if lake:
            sql, params = compiler.compile_query(query, "events")
            out.append(("lake", sql, list(params)))
        return out

    def answer_rows(self, query: Query, sql: str, params: Iterable[Any] = ()) -> list[list[str]]:
        return to_rows(query, db.fetch_arrow(self.con, sql, list(params)))

    def probe(self, qdict: dict[str, Any], reference: str, ref_rows: list[list[str]],
              extra: dict[str, list[list[str]]] | None = None, lake: bool = True,
              views: Callable[[ViewDef], bool] | None = None) -> Probe:
        """Answer `qdict` on every route (and `extra` precomputed sources); compare each with the reference."""
        query = parse_query(qdict)
        probe = Probe(qdict, reference, ref_rows)
        sources: list[tuple[str, Callable[[], list[list[str]]]]] = []
        for name, sql, params in self.routes(query, lake=lake, views=views):
            sources.append((name, lambda sql=sql, params=params: self.answer_rows(query, sql, params)))
        for name, rows in (extra or {}).items():
            sources.append((name, lambda rows=rows: rows))
        for name, get in sources:
            probe.sources.append(name)
            try:
                rows = get()
            except duckdb.Error as exc:
                probe.mismatches.append({"source": name, "reason": f"error: {str(exc).splitlines()[0]}"})
                continue
            why = compare_rows(query, ref_rows, rows)
            if why:
                probe.mismatches.append({"source": name, "reason": why, "rows": len(rows), "sample": rows[:4]})
        return probe


def probes_result(probes: list[Probe], summary_ok: str, extra: dict[str, Any] | None = None,
                  fail_extra: list[str] | None = None) -> CheckResult:
    """Fails on any probe mismatch (the first one quoted) or any of `fail_extra`; evidence holds every probe."""
    bad = [p for p in probes if p.mismatches]
    n_answers = sum(len(p.sources) for p in probes)
    fails = list(fail_extra or [])
    if bad:
        first = bad[0].mismatches[0]
        fails.insert(0, f"{sum(len(p.mismatches) for p in bad)} of {n_answers} answers differ, e.g. "
                        f"{first['source']} on {json.dumps(bad[0].query)}: {first['reason']}")
    evidence = {"summary": "; ".join(fails) if fails else f"{n_answers} answers to {len(probes)} probes match: {summary_ok}",
                "probes": [p.evidence() for p in probes], **(extra or {})}
    return CheckResult(not fails, evidence)

