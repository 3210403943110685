"""Correctness guardrails: 23 executable checks over the lake, the views and (when given) the raw CSVs.

Owns the registry of checks (`CHECKS`, listed in one place at the bottom, like an optimizer's
rules), the context they run in and the report they produce. A check is a small function
`(ctx) -> CheckResult(passed, evidence)`; its evidence says what was compared (sources, numbers,
sample offending rows), so a pass is never silent. Checks read what is on disk: the lake through
the manifest's committed files, every view through its registered Parquet file (never an
in-memory copy), and the raw CSVs through the same remediation rules `prepare` applies. Checks
of the engine's answers (BETWEEN, AVG, COUNT, date boundaries) plan and compile probe queries
with the product's own router and compiler, run them against every covering view file and the
lake, and compare with an independent reference (explicit `ts` ranges, exact DECIMAL sums, the
baseline's casts over the raw rows).

Each check owns one failure mode; its probes stay away from the others' so that a fault shows
up in exactly the check that guards it. Probe windows: BETWEEN around 2024-01-07/08, 06-30/07-01
and 09-29/30; AVG in Q1, July-September and August; date boundaries at 2024-02-28..03-01,
2024-12-30.. and the first/last day. Must not change the lake or the views.
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from analytics.core import db
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.lake.manifest import Lake
from analytics.lake.rules import REMEDIATION_RULES, WRONG_FIELD_COUNT, raw_csv_sql
from analytics.query import compiler
from analytics.query.model import Agg, Query, parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.query.schema import COUNTRIES, EVENT_TYPES, N_ADVERTISERS, N_PUBLISHERS, NOT_NULL_IN_LAKE
from analytics.serving import router
from analytics.views.build import duplicate_keys, file_schema, lake_totals, reconcile
from analytics.views.catalog import CATALOG, MEASURE_COLUMNS, SUM_TYPE, ViewDef
from analytics.views.registry import load_registry

CATEGORIES: tuple[str, ...] = (
    "timezone", "between", "avg", "mv_consistency", "data_types", "null_handling", "date_boundaries",
)
SAMPLES = 5
REL_TOL = 1e-9
# Session zones the time-zone check answers under: far east (+14), far west (-8/-7) and a half-hour zone.
OTHER_ZONES: tuple[str, ...] = ("Pacific/Kiritimati", "America/Los_Angeles", "Asia/Kolkata")
# Columns that identify an event: a raw row missing one is quarantined, never in the lake.
KEY_COLUMNS: tuple[str, ...] = ("ts", "type", "auction_id", "advertiser_id", "publisher_id", "country")
# Advertiser and publisher ids are a known, dense range in the real data; user ids are only
# known to be positive ("~1M users" gives no upper bound), so they are checked for that alone.
ID_RANGES: dict[str, tuple[int, int]] = {
    "advertiser_id": (1, N_ADVERTISERS), "publisher_id": (1, N_PUBLISHERS), "user_id": (1, 2**63 - 1),
}
PRICE_TYPE = {"bid_price": "impression", "total_price": "purchase"}  # the one type carrying each price


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


# ---- helpers ------------------------------------------------------------------------------------

def _q(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return compiler.ident(name)


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


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: Iterable[Any] = ()) -> dict[str, Any]:
    return _rows(con, sql, params)[0]


def _not_close_sql(a: str, b: str) -> str:
    """SQL true when two numbers differ beyond the contract's tolerance (NULL only equals NULL)."""
    return (f"(({a}) IS NULL) <> (({b}) IS NULL) OR abs(CAST({a} AS DOUBLE) - CAST({b} AS DOUBLE)) > "
            f"{REL_TOL} * greatest(abs(CAST({a} AS DOUBLE)), abs(CAST({b} AS DOUBLE)))")


def _day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def _reason_case_sql() -> str:
    """The remediation rules of `lake.py` as one DuckDB CASE over the raw text columns (first match wins)."""
    try:  # engine-neutral rules rendered for DuckDB, where lake.py provides that
        from analytics.lake.rules import DUCKDB_FUNCTIONS, reason_case_sql
    except ImportError:  # rules written in DuckDB SQL directly
        types = ", ".join(_q(t) for t in EVENT_TYPES)
        return "CASE " + " ".join(f"WHEN {cond.format(types=types)} THEN '{name}'"
                                  for name, cond in REMEDIATION_RULES) + " END"
    return reason_case_sql(DUCKDB_FUNCTIONS)


@dataclass
class ViewHandle:
    name: str
    view: ViewDef
    entry: dict[str, Any]
    path: Path

    @property
    def rel(self) -> str:
        return f"read_parquet({_q(str(self.path))})"


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
        self.registry: dict[str, dict[str, Any]] = load_registry(self.root)["views"]
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
        for view in CATALOG:
            entry = self.registry.get(view.name)
            if entry is None:
                self._skipped[view.name] = "no registry entry"
                continue
            path = self.root / entry["file"]
            if not path.is_file():
                self._skipped[view.name] = f"file missing: {entry['file']}"
                continue
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
        self._load_views()
        return dict(self._skipped)

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
        reason = _reason_case_sql()
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


def _probes_result(probes: list[Probe], summary_ok: str, extra: dict[str, Any] | None = None,
                   fail_extra: list[str] | None = None) -> CheckResult:
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


def _skipped(ctx: Context) -> dict[str, str]:
    return {n: f"{why} (see mv_consistency.present_readable)" for n, why in ctx.skipped_views.items()}


def _ts_upper(day: dt.date) -> dt.datetime:
    """The last microsecond of `day`: the inclusive upper end of a day range as a ts value."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) - dt.timedelta(microseconds=1)


def _lake_file_schemas(ctx: Context) -> list[tuple[str, pa.Schema]]:
    return [(f.relative_to(ctx.root).as_posix(), pq.read_schema(f)) for f in ctx.lake.event_files()]


# ---- timezone -----------------------------------------------------------------------------------

def tz_derived_columns_utc(ctx: Context) -> CheckResult:
    cols = {"day": "CAST(ts AS DATE)", "hour": "date_trunc('hour', ts)", "minute": "strftime(ts, '%Y-%m-%d %H:%M')"}
    bad = " OR ".join(f"{c} IS DISTINCT FROM {e}" for c, e in cols.items())
    last_ms = "epoch_ms(ts) % 86400000 = 86399999"  # 23:59:59.999 UTC
    counts = _one(ctx.con, f"""
        SELECT count(*) AS rows, {', '.join(f'count(*) FILTER ({c} IS DISTINCT FROM {e}) AS bad_{c}' for c, e in cols.items())},
               count(*) FILTER ({last_ms}) AS rows_at_235959_999,
               count(*) FILTER ({last_ms} AND day IS DISTINCT FROM CAST(ts AS DATE)) AS bad_at_235959_999
        FROM events""")
    n_bad = sum(counts[f"bad_{c}"] for c in cols)
    samples = _rows(ctx.con, f"""
        SELECT type, ts, day, {cols['day']} AS utc_day, hour, {cols['hour']} AS utc_hour, minute, {cols['minute']} AS utc_minute
        FROM events WHERE {bad} ORDER BY ts LIMIT {SAMPLES}""") if n_bad else []
    summary = (f"{counts['rows']:,} lake rows: stored day/hour/minute equal the UTC values of ts"
               f" ({counts['rows_at_235959_999']} rows at 23:59:59.999 on their own day)") if not n_bad else (
        f"stored derived columns differ from ts in UTC: day {counts['bad_day']:,}, hour {counts['bad_hour']:,}, "
        f"minute {counts['bad_minute']:,} of {counts['rows']:,} rows")
    return CheckResult(n_bad == 0, {"summary": summary, "compared": "lake day, hour, minute vs CAST/date_trunc/strftime of ts, session UTC",
                                    **counts, "samples": samples})


def tz_week_monday(ctx: Context) -> CheckResult:
    sources = []
    lake = _one(ctx.con, """
        SELECT count(*) AS rows, count(*) FILTER (isodow(week) <> 1) AS not_monday,
               count(*) FILTER (week IS DISTINCT FROM CAST(date_trunc('week', ts) AS DATE)) AS not_week_of_ts
        FROM events""")
    lake_samples = _rows(ctx.con, f"""
        SELECT type, ts, day, week, dayname(week) AS weekday FROM events
        WHERE isodow(week) <> 1 OR week IS DISTINCT FROM CAST(date_trunc('week', ts) AS DATE) LIMIT {SAMPLES}""") \
        if lake["not_monday"] or lake["not_week_of_ts"] else []
    sources.append({"source": "lake", **lake, "samples": lake_samples})
    for h in ctx.views(having=("week",)):
        got = _one(ctx.con, f"""
            SELECT count(*) AS rows, count(*) FILTER (isodow(week) <> 1) AS not_monday,
                   count(*) FILTER (week IS DISTINCT FROM CAST(date_trunc('week', day) AS DATE)) AS not_week_of_day
            FROM {h.rel}""")
        samples = _rows(ctx.con, f"""
            SELECT type, day, week, dayname(week) AS weekday FROM {h.rel}
            WHERE isodow(week) <> 1 OR week IS DISTINCT FROM CAST(date_trunc('week', day) AS DATE) LIMIT {SAMPLES}""") \
            if got["not_monday"] or got["not_week_of_day"] else []
        sources.append({"source": h.name, **got, "samples": samples})
    # DuckDB's own calendar: ISO weeks start on Monday (2024-01-01 is one)
    calendar = ctx.con.execute("SELECT CAST(date_trunc('week', DATE '2024-01-07') AS DATE) = DATE '2024-01-01', "
                               "CAST(date_trunc('week', DATE '2024-12-31') AS DATE) = DATE '2024-12-30'").fetchall()[0]
    bad = [s for s in sources if s["not_monday"] or s.get("not_week_of_ts") or s.get("not_week_of_day")]
    ok = not bad and all(calendar)
    summary = (f"week is the Monday of its day in the lake and {len(sources) - 1} views "
               f"({sum(s['rows'] for s in sources):,} rows)") if ok else (
        "week is not the Monday starting its day: " + ", ".join(
            f"{s['source']} {s['not_monday']:,} non-Monday, {s.get('not_week_of_ts', s.get('not_week_of_day')):,} off its day"
            for s in bad) if bad else "DuckDB's week does not start on Monday")
    return CheckResult(ok, {"summary": summary, "compared": "week vs date_trunc('week', ts|day) and isodow = 1",
                            "sources": sources, "calendar_monday_start": all(calendar), "skipped": _skipped(ctx)})


def tz_session_independent(ctx: Context) -> CheckResult:
    fails: list[str] = []
    # 1. every connection of the package is UTC, whatever the process TZ
    probe_con = db.connect()
    zone = probe_con.execute("SELECT current_setting('TimeZone')").fetchall()[0][0]
    probe_con.close()
    if zone != "UTC":
        fails.append(f"db.connect() session time zone is {zone!r}, not UTC (process TZ={os.environ.get('TZ')!r})")
    # 2. time columns are stored zone-free in every lake file
    typed = []
    for rel, schema in _lake_file_schemas(ctx):
        for col, want in (("ts", "timestamp"), ("hour", "timestamp"), ("day", "date"), ("week", "date")):
            if col not in schema.names:
                typed.append({"file": rel, "column": col, "type": "missing"})
                continue
            t = schema.field(col).type
            zone_free = (pa.types.is_timestamp(t) and t.tz is None) if want == "timestamp" else pa.types.is_date(t)
            if not zone_free:
                typed.append({"file": rel, "column": col, "type": str(t)})
    if typed:
        fails.append(f"{len(typed)} lake time column(s) not zone-free, e.g. {typed[0]}")
    # 3. the UTC calendar of ts is the same under any session zone: a fingerprint of every row's
    #    (type, date, hour) per zone, the bucket histogram only to show a difference
    fingerprint = "SELECT count(*) AS n, sum(hash(type, CAST(ts AS DATE), hour(ts))) AS fp FROM events"
    histogram = "SELECT type, CAST(ts AS DATE) AS d, hour(ts) AS h, count(*) AS n FROM events GROUP BY ALL"
    utc_fp = ctx.con.execute(fingerprint).fetchall()[0]
    utc: dict[tuple, int] | None = None
    zones: dict[str, Any] = {}
    for zone_name in OTHER_ZONES:
        cur = ctx.con.cursor()
        try:
            cur.execute(f"SET TimeZone = {_q(zone_name)}")
            same = cur.execute(fingerprint).fetchall()[0] == utc_fp
            other = None if same else {(r[0], r[1], r[2]): r[3] for r in cur.execute(histogram).fetchall()}
        finally:
            cur.close()
        if other is None:
            zones[zone_name] = {"rows": utc_fp[0], "buckets_differing": 0}
            continue
        if utc is None:
            utc = {(r[0], r[1], r[2]): r[3] for r in ctx.con.execute(histogram).fetchall()}
        diff = sorted(k for k in set(utc) | set(other) if utc.get(k) != other.get(k))
        zones[zone_name] = {"rows": utc_fp[0], "buckets_differing": len(diff),
                            "sample": [{"type": k[0], "day": k[1], "hour": k[2], "utc": utc.get(k), zone_name: other.get(k)}
                                       for k in diff[:SAMPLES]]}
        fails.append(f"(type, day, hour) of ts under session {zone_name} differs from UTC in {len(diff):,} buckets")
    # 4. with raw: the lake's ts is the raw epoch milliseconds read as UTC (per type and hour)
    raw_cmp: dict[str, Any] = {"compared": False, "why": "no --raw: lake ts not compared with the raw epoch milliseconds"}
    if ctx.raw_summary():
        diff_rows = _rows(ctx.con, f"""
            WITH l AS (SELECT type, date_trunc('hour', ts) AS hour, count(*) AS n FROM events GROUP BY ALL),
                 r AS (SELECT type, utc_hour AS hour, sum(cnt) AS n FROM raw_minutes GROUP BY ALL)
            SELECT coalesce(l.type, r.type) AS type, coalesce(l.hour, r.hour) AS hour, l.n AS lake_rows, r.n AS raw_rows
            FROM l FULL OUTER JOIN r ON l.type = r.type AND l.hour = r.hour
            WHERE l.n IS DISTINCT FROM r.n ORDER BY 2, 1""")
        n_buckets = ctx.con.execute("SELECT count(DISTINCT (type, utc_hour)) FROM raw_minutes").fetchall()[0][0]
        raw_cmp = {"compared": True, "raw_buckets": n_buckets, "buckets_differing": len(diff_rows),
                   "sample": diff_rows[:SAMPLES]}
        if diff_rows:
            fails.append(f"lake rows per (type, UTC hour of ts) differ from the raw epoch ms in {len(diff_rows):,} of "
                         f"{n_buckets:,} buckets, e.g. {jsonable(diff_rows[0])}")
    summary = "; ".join(fails) if fails else (
        f"time columns zone-free in {len(ctx.lake.event_files())} files; (type, day, hour) of all {utc_fp[0]:,} rows identical "
        f"under UTC and {', '.join(OTHER_ZONES)}" + ("; lake ts = raw epoch ms per type and hour" if raw_cmp["compared"] else ""))
    return CheckResult(not fails, {"summary": summary, "session_zone_of_db_connect": zone, "process_TZ": os.environ.get("TZ"),
                                   "non_zone_free_columns": typed[:20], "zones": zones, "raw": raw_cmp})


# ---- BETWEEN ------------------------------------------------------------------------------------

BETWEEN_DAYS: tuple[tuple[str, str], ...] = (
    ("2024-06-30", "2024-07-01"), ("2024-09-29", "2024-09-29"), ("2024-01-07", "2024-01-08"), ("2024-09-23", "2024-09-30"),
)
BETWEEN_HOURS: tuple[tuple[str, str], ...] = (
    ("2024-06-30 23:00", "2024-07-01 00:00"), ("2024-09-29 22:00", "2024-09-29 23:00"), ("2024-07-01 00:00", "2024-07-01 00:00"),
)
BETWEEN_MINUTES: tuple[tuple[str, str], ...] = (
    ("2024-06-30 23:58", "2024-06-30 23:59"), ("2024-07-01 00:00", "2024-07-01 00:00"), ("2024-09-29 23:59", "2024-09-30 00:00"),
)


def _between_probe(ctx: Context, col: str, lo_ts: dt.datetime, hi_ts: dt.datetime, lo_txt: str, hi_txt: str,
                   lo_edge_end: dt.datetime, hi_edge_start: dt.datetime) -> tuple[Probe, dict[str, Any]]:
    qdict = {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events",
             "where": [{"col": col, "op": "between", "val": [lo_txt, hi_txt]}], "group_by": ["type"]}
    query = parse_query(qdict)
    ref = db.fetch_arrow(ctx.con, f"""
        SELECT type, count(*) AS "COUNT(*)", CAST(sum(CAST(bid_price AS {SUM_TYPE})) AS DOUBLE) AS "SUM(bid_price)"
        FROM events WHERE ts >= ? AND ts <= ? GROUP BY type""", [lo_ts, hi_ts])
    edges = _one(ctx.con, "SELECT count(*) FILTER (ts < ?) AS rows_in_low_end, count(*) FILTER (ts >= ?) AS rows_in_high_end "
                          "FROM events WHERE ts >= ? AND ts <= ?", [lo_edge_end, hi_edge_start, lo_ts, hi_ts])
    probe = ctx.probe(qdict, f"lake rows with ts >= {lo_ts} AND ts <= {hi_ts}", to_rows(query, ref))
    return probe, {"range": [lo_txt, hi_txt], "ts_from": lo_ts, "ts_to": hi_ts, **edges}


def between_day_inclusive(ctx: Context) -> CheckResult:
    probes, edges = [], []
    for lo, hi in BETWEEN_DAYS:
        lo_d, hi_d = _day(lo), _day(hi)
        p, e = _between_probe(ctx, "day", dt.datetime.combine(lo_d, dt.time()), _ts_upper(hi_d), lo, hi,
                              dt.datetime.combine(lo_d + dt.timedelta(days=1), dt.time()),
                              dt.datetime.combine(hi_d, dt.time()))
        probes.append(p)
        edges.append(e)
    return _probes_result(probes, "day BETWEEN keeps both end days whole, on every day view and the lake",
                          {"edges": edges, "skipped": _skipped(ctx)})


def between_hour_minute_inclusive(ctx: Context) -> CheckResult:
    probes, edges = [], []
    for col, ranges, width in (("hour", BETWEEN_HOURS, dt.timedelta(hours=1)), ("minute", BETWEEN_MINUTES, dt.timedelta(minutes=1))):
        for lo, hi in ranges:
            lo_t, hi_t = dt.datetime.fromisoformat(lo), dt.datetime.fromisoformat(hi)
            p, e = _between_probe(ctx, col, lo_t, hi_t + width - dt.timedelta(microseconds=1), lo, hi, lo_t + width, hi_t)
            probes.append(p)
            edges.append({"column": col, **e})
    return _probes_result(probes, "hour and minute BETWEEN keep both end buckets whole, on every hour/minute view and the lake",
                          {"edges": edges, "skipped": _skipped(ctx)})


# ---- AVG ----------------------------------------------------------------------------------------

def _exact_avg(m: str) -> str:
    return f"CAST(sum(CAST({m} AS {SUM_TYPE})) AS DOUBLE) / NULLIF(count({m}), 0)"


AVG_WINDOW = ("2024-08-01", "2024-08-31")  # views with a day are probed over this month, the others whole


def avg_nonnull_denominator(ctx: Context) -> CheckResult:
    per_source, fails = [], []
    avgs = [Agg("AVG", m) for m in MEASURE_COLUMNS]
    for h in ctx.views():
        keys = [c for c in h.view.group_columns if c != "type"]
        if not keys:
            continue
        windowed = "day" in h.view.group_columns
        qdict = {"select": keys + [{"AVG": m} for m in MEASURE_COLUMNS], "from": "events", "group_by": keys}
        if windowed:
            # gte/lte rather than between: a BETWEEN fault is between.*'s to report, not this check's
            qdict["where"] = [{"col": "day", "op": "gte", "val": AVG_WINDOW[0]}, {"col": "day", "op": "lte", "val": AVG_WINDOW[1]}]
        query = parse_query(qdict)
        sql, params = router.compile_for_view(query, h.view, h.rel)
        k = ", ".join(keys)
        where = f"WHERE day BETWEEN DATE '{AVG_WINDOW[0]}' AND DATE '{AVG_WINDOW[1]}'" if windowed else ""
        ref = ", ".join(f"CAST(sum(sum_{m}) AS DOUBLE) / NULLIF(sum(nn_{m}), 0) AS ref_{m}, "
                        f"CAST(sum(sum_{m}) AS DOUBLE) / NULLIF(sum(cnt), 0) AS per_row_{m}" for m in MEASURE_COLUMNS)
        diff = " OR ".join(f"(ref_{m} IS NOT NULL AND ({_not_close_sql(_ident(a.name), f'ref_{m}')}))"
                           for m, a in zip(MEASURE_COLUMNS, avgs))
        sensitive = " OR ".join(f"(ref_{m} IS NOT NULL AND ({_not_close_sql(f'ref_{m}', f'per_row_{m}')}))"
                                for m in MEASURE_COLUMNS)
        with_sql = f"""
            WITH e AS (SELECT *, true AS in_engine FROM ({sql})),
                 r AS (SELECT {k}, {ref}, true AS in_view FROM {h.rel} {where} GROUP BY {k}),
                 j AS (SELECT * FROM e FULL OUTER JOIN r USING ({k}))"""
        try:
            got = _one(ctx.con, f"""{with_sql}
                SELECT count(*) FILTER (in_view) AS groups,
                       count(*) FILTER ({' OR '.join(f'ref_{m} IS NOT NULL' for m in MEASURE_COLUMNS)}) AS groups_with_values,
                       count(*) FILTER ({diff}) AS differing,
                       count(*) FILTER (in_engine IS NULL OR in_view IS NULL) AS groups_on_one_side,
                       count(*) FILTER ({sensitive}) AS groups_where_count_star_differs
                FROM j""", params)
            sample = _rows(ctx.con, f"""{with_sql}
                SELECT {k}, {', '.join(f'{_ident(a.name)} AS engine_{a.col}, ref_{a.col} AS sum_over_nonnull_{a.col}, '
                                       f'per_row_{a.col} AS sum_over_rows_{a.col}' for a in avgs)}
                FROM j WHERE {diff} OR in_engine IS NULL OR in_view IS NULL
                LIMIT {SAMPLES}""", params) if got["differing"] or got["groups_on_one_side"] else []
        except duckdb.Error as exc:
            fails.append(f"{h.name}: error {str(exc).splitlines()[0]}")
            continue
        per_source.append({"source": h.name, "group_by": keys, "window": list(AVG_WINDOW) if windowed else "all",
                           **got, "samples": sample})
        if got["differing"] or got["groups_on_one_side"]:
            fails.append(f"{h.name}: engine AVG differs from SUM/non-NULL COUNT in {got['differing']:,} of "
                         f"{got['groups_with_values']:,} groups" + (f" (e.g. {jsonable(sample[0])})" if sample else "")
                         + (f"; {got['groups_on_one_side']} groups on one side only" if got["groups_on_one_side"] else ""))
    # the lake route, per day
    qdict = {"select": ["day"] + [{"AVG": m} for m in MEASURE_COLUMNS], "from": "events", "group_by": ["day"]}
    query = parse_query(qdict)
    items = ", ".join(f"{_exact_avg(m)} AS {_ident('AVG(' + m + ')')}" for m in MEASURE_COLUMNS)
    ref = db.fetch_arrow(ctx.con, f"SELECT day, {items} FROM events GROUP BY day")
    sql, params = compiler.compile_query(query, "events")
    why = compare_rows(query, to_rows(query, ref), ctx.answer_rows(query, sql, params))
    per_source.append({"source": "lake", "group_by": ["day"], "groups": ref.num_rows, "mismatch": why})
    if why:
        fails.append(f"lake: engine AVG per day differs from SUM/count(col): {why}")
    compared = sum(s.get("groups_with_values", s.get("groups", 0)) for s in per_source)
    sensitive = sum(s.get("groups_where_count_star_differs", 0) for s in per_source)
    summary = "; ".join(fails) if fails else (
        f"engine AVG = SUM / non-NULL COUNT in {compared:,} groups over {len(per_source)} sources "
        f"({sensitive:,} of them would differ with COUNT(*) as denominator)")
    ok = not fails and compared > 0
    if compared == 0 and not fails:
        summary = "nothing compared: no group holds a price"
    return CheckResult(ok, {"summary": summary, "compared": "engine AVG(col) per group (all group columns but type) vs "
                                                           "sum(sum_col)/sum(nn_col) of the same view file; lake AVG per day vs SUM/count(col)",
                            "sources": per_source, "skipped": _skipped(ctx)})


def avg_view_equals_lake(ctx: Context) -> CheckResult:
    per_view, fails = [], []
    totals = ctx.lake_totals()
    priced_types = [t for (t,) in ctx.con.execute(
        f"SELECT DISTINCT type FROM {totals} WHERE {' OR '.join(f'nn_{m} > 0' for m in MEASURE_COLUMNS)} ORDER BY 1").fetchall()]
    if not priced_types:
        return CheckResult(False, {"summary": "nothing compared: the lake holds no price", "views": []})
    types = ", ".join(_q(t) for t in priced_types)
    v_measures = ", ".join(f"sum(sum_{m}) AS s_{m}, sum(nn_{m}) AS n_{m}" for m in MEASURE_COLUMNS)
    v_rows = ", ".join(f"sum_{m} AS s_{m}, nn_{m} AS n_{m}" for m in MEASURE_COLUMNS)
    l_measures = ", ".join(f"sum(CAST({m} AS {SUM_TYPE})) AS s_{m}, count({m}) AS n_{m}" for m in MEASURE_COLUMNS)
    avg = {side: {m: f"CAST({side}.s_{m} AS DOUBLE) / NULLIF({side}.n_{m}, 0)" for m in MEASURE_COLUMNS} for side in "vl"}
    diff = " OR ".join(f"({_not_close_sql(avg['v'][m], avg['l'][m])})" for m in MEASURE_COLUMNS)
    priced_view = f"type IN ({types}) AND ({' OR '.join(f'nn_{m} > 0' for m in MEASURE_COLUMNS)})"
    for h in ctx.views():
        k = ", ".join(h.view.group_columns)
        try:
            # groups matched on a 64-bit hash of the key: one aggregation per side, no wide join
            # view rows as they are (keys are unique: duplicates are unique_group_keys' to report)
            got = _one(ctx.con, f"""
                WITH v AS (SELECT hash({k}) AS h, {v_rows} FROM {h.rel} WHERE {priced_view}),
                     l AS (SELECT hash({k}) AS h, {l_measures} FROM events WHERE type IN ({types}) GROUP BY h)
                SELECT count(v.h) AS view_groups, count(l.h) AS lake_groups,
                       count(*) FILTER (v.h IS NOT NULL AND l.h IS NOT NULL) AS compared,
                       count(*) FILTER (v.h IS NOT NULL AND l.h IS NOT NULL AND ({diff})) AS differing
                FROM v FULL OUTER JOIN l ON v.h = l.h""")
            sample = []
            if got["differing"]:  # confirm on the real keys (a hash collision would vanish here) and show them
                exact = f"""
                    WITH v AS (SELECT {k}, {v_measures} FROM {h.rel} WHERE {priced_view} GROUP BY ALL),
                         l AS (SELECT {k}, {l_measures} FROM events WHERE type IN ({types}) GROUP BY ALL)"""
                got["differing"] = _one(ctx.con, f"{exact} SELECT count(*) AS n FROM v JOIN l USING ({k}) WHERE {diff}")["n"]
                sample = _rows(ctx.con, f"""{exact}
                    SELECT {', '.join(f'v.{c}' for c in h.view.group_columns)},
                           {', '.join(f'{avg["v"][m]} AS view_avg_{m}, {avg["l"][m]} AS lake_avg_{m}' for m in MEASURE_COLUMNS)}
                    FROM v JOIN l USING ({k}) WHERE {diff} ORDER BY ALL LIMIT {SAMPLES}""")
        except duckdb.Error as exc:
            fails.append(f"{h.name}: error {str(exc).splitlines()[0]}")
            continue
        per_view.append({"view": h.name, **got, "samples": sample})
        if got["differing"]:
            fails.append(f"{h.name}: AVG differs from the lake's in {got['differing']:,} of {got['compared']:,} groups, "
                         f"e.g. {jsonable(sample[0]) if sample else ''}")
        elif got["lake_groups"] and not got["compared"]:
            fails.append(f"{h.name}: no group in common with the lake's {got['lake_groups']:,} priced groups")
    compared = sum(v["compared"] for v in per_view)
    summary = "; ".join(fails) if fails else (
        f"stored AVG (sum/nn) equals the lake's exact AVG in all {compared:,} priced groups of {len(per_view)} views "
        f"(groups present on one side only are mv_consistency.reconcile's)")
    return CheckResult(not fails and bool(per_view), {
        "summary": summary if per_view else "no view to compare",
        "compared": f"per view key, types {priced_types}: sum(sum_col)/sum(nn_col) vs the lake's exact sum(col)/count(col)",
        "views": per_view, "skipped": _skipped(ctx)})


EMPTY_RANGE = ("2023-07-01", "2023-07-31")


def avg_empty_is_null(ctx: Context) -> CheckResult:
    probes, fails, shapes = [], [], []
    # 1. a range with no rows: AVG/SUM/MIN/MAX NULL, COUNT 0
    in_range = ctx.con.execute("SELECT count(*) FROM events WHERE day BETWEEN ? AND ?",
                               [_day(EMPTY_RANGE[0]), _day(EMPTY_RANGE[1])]).fetchall()[0][0]
    q1 = {"select": [{"AVG": "bid_price"}, {"AVG": "total_price"}, {"SUM": "bid_price"}, {"COUNT": "*"},
                     {"MIN": "bid_price"}, {"MAX": "total_price"}], "from": "events",
          "where": [{"col": "day", "op": "between", "val": list(EMPTY_RANGE)}]}
    probes.append(ctx.probe(q1, f"no rows (lake holds {in_range} rows in {EMPTY_RANGE[0]}..{EMPTY_RANGE[1]}): one row of NULLs and COUNT 0",
                            [["", "", "", "0", "", ""]]))
    if in_range:
        fails.append(f"the empty probe range {EMPTY_RANGE} holds {in_range} lake rows")
    # 2. groups where a price has no non-NULL value: AVG must be NULL there (values elsewhere are other checks')
    q2 = {"select": ["type", {"AVG": "bid_price"}, {"AVG": "total_price"}], "from": "events", "group_by": ["type"]}
    query = parse_query(q2)
    ref = _rows(ctx.con, f"SELECT type, count(bid_price) AS nn_bid_price, count(total_price) AS nn_total_price FROM events GROUP BY type")
    expect = {r["type"]: [r["nn_bid_price"] == 0, r["nn_total_price"] == 0] for r in ref}
    empty_groups = sum(sum(v) for v in expect.values())
    for name, sql, params in ctx.routes(query):
        try:
            rows = ctx.answer_rows(query, sql, params)
        except duckdb.Error as exc:
            fails.append(f"{name}: error {str(exc).splitlines()[0]}")
            continue
        got = {r[0]: [r[1] == "", r[2] == ""] for r in rows}
        bad = [{"type": t, "AVG(bid_price)": r[1], "AVG(total_price)": r[2], "expected_null": expect.get(t)}
               for t, r in ((r[0], r) for r in rows) if t in expect and any(e and not g for e, g in zip(expect[t], got[t]))]
        bad += [{"type": t, "missing_group": True} for t in expect if t not in got]
        shapes.append({"source": name, "groups": len(rows), "wrong": bad})
        if bad:
            fails.append(f"{name}: AVG over no values is not NULL: {bad[0]}")
    result = _probes_result(probes, "", {"empty_groups_probed": empty_groups, "group_probe": q2, "group_sources": shapes,
                                         "skipped": _skipped(ctx)}, fail_extra=fails)
    if result.passed:
        result.evidence["summary"] = (f"AVG/SUM/MIN/MAX NULL and COUNT 0 over an empty range on {len(probes[0].sources)} sources; "
                                      f"AVG NULL in all {empty_groups} (type, price) groups without values on {len(shapes)} sources")
    return result


AVG_PROBES: tuple[dict[str, Any], ...] = (
    {"select": [{"AVG": "bid_price"}], "from": "events",
     "where": [{"col": "type", "op": "eq", "val": "impression"}, {"col": "day", "op": "between", "val": ["2024-01-01", "2024-03-31"]}]},
    {"select": ["country", {"AVG": "total_price"}], "from": "events",
     "where": [{"col": "type", "op": "eq", "val": "purchase"}, {"col": "day", "op": "between", "val": ["2024-06-01", "2024-12-31"]}],
     "group_by": ["country"]},
    {"select": ["week", {"AVG": "bid_price"}], "from": "events",
     "where": [{"col": "type", "op": "eq", "val": "impression"}, {"col": "day", "op": "between", "val": ["2024-07-01", "2024-09-29"]}],
     "group_by": ["week"]},
    {"select": ["day", {"AVG": "bid_price"}], "from": "events",
     "where": [{"col": "type", "op": "eq", "val": "impression"}, {"col": "day", "op": "between", "val": ["2024-08-01", "2024-08-07"]}],
     "group_by": ["day"]},
)


def avg_no_average_of_averages(ctx: Context) -> CheckResult:
    probes, contrast = [], []
    for qdict in AVG_PROBES:
        query = parse_query(qdict)
        exprs = {a: _exact_avg(a.col) for a in query.aggregates}
        sql, params = compiler.compile_query(query, "events", aggregate_sql=exprs)
        ref = ctx.answer_rows(query, sql, params)
        probes.append(ctx.probe(qdict, "lake: exact SUM / COUNT over the whole selection", ref))
        # what an average of per-row averages would answer, from the finest covering view
        for h in sorted(ctx.views(), key=lambda h: -len(h.view.group_columns)):
            if router.coverage(h.view, query) is None:
                wrong = {a: f"avg(CAST(sum_{a.col} AS DOUBLE) / NULLIF(nn_{a.col}, 0))" for a in query.aggregates}
                wsql, wparams = compiler.compile_query(query, h.rel, aggregate_sql=wrong)
                wrong_rows = ctx.answer_rows(query, wsql, wparams)
                contrast.append({"query": qdict, "view": h.name, "average_of_averages_sample": wrong_rows[:3],
                                 "would_differ": compare_rows(query, ref, wrong_rows) is not None})
                break
    sensitive = sum(c["would_differ"] for c in contrast)
    return _probes_result(probes, f"AVG over many groups is SUM/COUNT of the whole selection "
                                  f"({sensitive} of {len(contrast)} probes would differ as an average of averages)",
                          {"average_of_averages": contrast, "skipped": _skipped(ctx)})


# ---- MV consistency -----------------------------------------------------------------------------

def mv_reconcile(ctx: Context) -> CheckResult:
    totals = ctx.lake_totals()
    per_view, fails = [], []
    for h in ctx.views():
        try:
            bad = reconcile(ctx.con, h.view, h.rel, totals)
        except duckdb.Error as exc:
            fails.append(f"{h.name}: error {str(exc).splitlines()[0]}")
            continue
        keys = "type, day" if "day" in h.view.group_columns else "type"
        per_view.append({"view": h.name, "grain": keys, "groups_differing_sample": bad[:SAMPLES]})
        if bad:
            fails.append(f"{h.name}: totals per ({keys}) differ from the lake, e.g. {jsonable(bad[0])}")
    n_groups = ctx.con.execute(f"SELECT count(*), sum(cnt) FROM {totals}").fetchall()[0]
    summary = "; ".join(fails) if fails else (
        f"{len(per_view)} views reconcile with the lake's {n_groups[0]:,} (type, day) totals of rows, non-NULL counts "
        f"and exact sums ({n_groups[1] or 0:,} rows)")
    return CheckResult(not fails and bool(per_view), {"summary": summary if per_view else "no view to reconcile",
                                                      "views": per_view, "skipped": _skipped(ctx)})


def mv_current_lake_version(ctx: Context) -> CheckResult:
    per_view, fails = [], []
    segments = sorted(ctx.lake.segment_ids)
    for view in CATALOG:
        entry = ctx.registry.get(view.name)
        if entry is None:
            continue
        problems = []
        if entry.get("lake_version") != ctx.lake.version:
            problems.append(f"built from lake version {entry.get('lake_version')}, lake is {ctx.lake.version}")
        if sorted(entry.get("segments", [])) != segments:
            missing = sorted(set(segments) - set(entry.get("segments", [])))
            extra = sorted(set(entry.get("segments", [])) - set(segments))
            problems.append(f"segments differ: missing {missing}, gone {extra}")
        if entry.get("definition") != view.definition_hash():
            problems.append(f"definition {entry.get('definition')} is not the catalog's {view.definition_hash()}")
        per_view.append({"view": view.name, "version": entry.get("version"), "lake_version": entry.get("lake_version"),
                         "built_at": entry.get("built_at"), "problems": problems})
        if problems:
            fails.append(f"{view.name}: {'; '.join(problems)}")
    summary = "; ".join(fails) if fails else (
        f"{len(per_view)} views built from the current lake version {ctx.lake.version} ({len(segments)} segments) "
        "with the catalog's definitions")
    return CheckResult(not fails and bool(per_view), {"summary": summary if per_view else "no view registered",
                                                      "lake_version": ctx.lake.version, "views": per_view,
                                                      "skipped": _skipped(ctx)})


def mv_schema_matches_registry(ctx: Context) -> CheckResult:
    per_view, fails = [], []
    for h in ctx.views():
        catalog = [[c, t] for c, t in h.view.schema()]
        try:
            actual = file_schema(ctx.con, h.path)
        except duckdb.Error as exc:
            fails.append(f"{h.name}: error {str(exc).splitlines()[0]}")
            continue
        registered = h.entry.get("columns")
        diffs = []
        for label, other in (("registry", registered), ("catalog", catalog)):
            if actual != other:
                a, o = dict(map(tuple, actual)), dict(map(tuple, other or []))
                diffs.append({"against": label,
                              "differing": {c: {"file": a.get(c), label: o.get(c)} for c in sorted(set(a) | set(o)) if a.get(c) != o.get(c)},
                              "order_differs": [c for c, _ in actual] != [c for c, _ in (other or [])]})
        if registered != catalog:
            diffs.append({"against": "registry vs catalog", "registry": registered, "catalog": catalog})
        per_view.append({"view": h.name, "columns": len(actual), "differences": diffs})
        if diffs:
            fails.append(f"{h.name}: file schema differs from the {diffs[0]['against']}: {json.dumps(diffs[0].get('differing', ''))}")
    summary = "; ".join(fails) if fails else f"{len(per_view)} view files have exactly the registry's and catalog's columns and types"
    return CheckResult(not fails and bool(per_view), {"summary": summary if per_view else "no view to check",
                                                      "views": per_view, "skipped": _skipped(ctx)})


def mv_unique_group_keys(ctx: Context) -> CheckResult:
    per_view, fails = [], []
    for h in ctx.views():
        keys = ", ".join(h.view.group_columns)
        try:
            # one pass over a 64-bit key hash; only a suspected duplicate is confirmed by an exact GROUP BY
            rows, suspected = ctx.con.execute(f"SELECT count(*), count(*) - count(DISTINCT hash({keys})) FROM {h.rel}").fetchall()[0]
            n = duplicate_keys(ctx.con, h.view, h.rel) if suspected else 0
            sample = _rows(ctx.con, f"SELECT {keys}, count(*) AS copies FROM {h.rel} GROUP BY ALL HAVING count(*) > 1 "
                                    f"ORDER BY ALL LIMIT {SAMPLES}") if n else []
        except duckdb.Error as exc:
            fails.append(f"{h.name}: error {str(exc).splitlines()[0]}")
            continue
        per_view.append({"view": h.name, "rows": rows, "duplicate_keys": n, "samples": sample})
        if n:
            fails.append(f"{h.name}: {n:,} group keys appear more than once, e.g. {jsonable(sample[0])}")
    summary = "; ".join(fails) if fails else (
        f"{sum(v['rows'] for v in per_view):,} rows of {len(per_view)} views: every group key once")
    return CheckResult(not fails and bool(per_view), {"summary": summary if per_view else "no view to check",
                                                      "views": per_view, "skipped": _skipped(ctx)})


def mv_present_and_readable(ctx: Context) -> CheckResult:
    per_view, fails = [], []
    for view in CATALOG:
        entry = ctx.registry.get(view.name)
        if entry is None:
            per_view.append({"view": view.name, "problem": "no registry entry (never built)"})
            fails.append(f"{view.name}: not built")
            continue
        path = ctx.root / entry["file"]
        if not path.is_file():
            per_view.append({"view": view.name, "problem": f"file missing: {entry['file']}"})
            fails.append(f"{view.name}: file missing {entry['file']}")
            continue
        try:
            cols = [c for c, _ in file_schema(ctx.con, path)]
            got = _one(ctx.con, f"SELECT count(*) AS rows, {', '.join(f'sum(hash({_ident(c)})) AS {_ident(c)}' for c in cols)} "
                                f"FROM read_parquet({_q(str(path))})")
        except (duckdb.Error, OSError) as exc:
            per_view.append({"view": view.name, "problem": f"unreadable: {str(exc).splitlines()[0]}"})
            fails.append(f"{view.name}: unreadable ({str(exc).splitlines()[0]})")
            continue
        per_view.append({"view": view.name, "file": entry["file"], "rows": got["rows"], "registry_rows": entry.get("rows"),
                         "columns_decoded": len(cols), "bytes": path.stat().st_size})
    stale = sorted(set(ctx.registry) - {v.name for v in CATALOG})
    summary = "; ".join(fails) if fails else (
        f"all {len(CATALOG)} catalog views registered, present and fully decoded "
        f"({sum(v.get('rows', 0) for v in per_view):,} rows)")
    return CheckResult(not fails, {"summary": summary, "views": per_view, "registered_not_in_catalog": stale})


# ---- data types ---------------------------------------------------------------------------------

def types_ts_ms_precision(ctx: Context) -> CheckResult:
    fails = []
    typed = [{"file": rel, "type": str(s.field("ts").type)} for rel, s in _lake_file_schemas(ctx)
             if "ts" not in s.names or not pa.types.is_timestamp(s.field("ts").type) or s.field("ts").type.unit == "s"]
    if typed:
        fails.append(f"{len(typed)} lake file(s) store ts below millisecond precision, e.g. {typed[0]}")
    per_type = {r["type"]: r for r in _rows(ctx.con, """
        SELECT type, count(*) AS rows, count(*) FILTER (epoch_ms(ts) % 1000 <> 0) AS rows_with_ms,
               sum(epoch_ms(ts) % 1000) AS sum_ms, count(*) FILTER (epoch_us(ts) % 1000 <> 0) AS sub_ms_residue
        FROM events GROUP BY type ORDER BY type""")}
    residue = sum(r["sub_ms_residue"] for r in per_type.values())
    if residue:
        sample = _rows(ctx.con, f"SELECT type, ts, epoch_us(ts) AS epoch_us FROM events WHERE epoch_us(ts) % 1000 <> 0 LIMIT {SAMPLES}")
        fails.append(f"{residue:,} lake timestamps carry sub-millisecond residue (not whole ms), e.g. {jsonable(sample[0])}")
    raw: dict[str, Any] = {"compared": False, "why": "no --raw: millisecond tallies not compared with the raw epoch ms"}
    if ctx.raw_summary():
        raw_rows = {r["type"]: r for r in _rows(ctx.con, """
            SELECT type, sum(cnt) AS rows, sum(n_ms) AS rows_with_ms, sum(sum_ms) AS sum_ms
            FROM raw_summary WHERE accepted GROUP BY type""")}
        diffs = []
        for t in sorted(set(per_type) | set(raw_rows)):
            lake_t, raw_t = per_type.get(t, {}), raw_rows.get(t, {})
            for key in ("rows_with_ms", "sum_ms"):
                if (lake_t.get(key) or 0) != (raw_t.get(key) or 0):
                    diffs.append({"type": t, "tally": key, "lake": lake_t.get(key), "raw": raw_t.get(key)})
        raw = {"compared": True, "per_type": raw_rows, "differences": diffs}
        if diffs:
            fails.append(f"milliseconds lost between raw and lake: {diffs[0]}")
    summary = "; ".join(fails) if fails else (
        "ts keeps whole milliseconds: " + ", ".join(f"{t} {r['rows_with_ms']:,}/{r['rows']:,} with ms" for t, r in per_type.items())
        + ("; tallies equal the raw epoch ms" if raw["compared"] else " (no --raw: not compared with raw)"))
    return CheckResult(not fails, {"summary": summary, "lake_per_type": per_type, "file_types": typed[:20], "raw": raw})


def _on_grid(m: str) -> str:
    return f"{m} = CAST(CAST({m} AS {SUM_TYPE}) AS DOUBLE)"


def types_price_sums_exact(ctx: Context) -> CheckResult:
    fails = []
    typed = []
    for rel, s in _lake_file_schemas(ctx):
        for m in MEASURE_COLUMNS:
            t = s.field(m).type if m in s.names else None
            if t is None or not (pa.types.is_float64(t) or (pa.types.is_decimal(t) and t.scale >= 4)):
                typed.append({"file": rel, "column": m, "type": str(t)})
    if typed:
        fails.append(f"{len(typed)} lake price column(s) cannot hold 4 exact decimals, e.g. {typed[0]}")
    off = _one(ctx.con, f"""
        SELECT {', '.join(f'count({m}) AS nn_{m}, count(*) FILTER (NOT ({_on_grid(m)})) AS off_grid_{m}, '
                          f'sum(CAST({m} AS {SUM_TYPE})) AS sum_{m}' for m in MEASURE_COLUMNS)}
        FROM events""")
    n_off = sum(off[f"off_grid_{m}"] for m in MEASURE_COLUMNS)
    samples = _rows(ctx.con, f"""
        SELECT type, ts, {', '.join(f'{m}, CAST({m} AS {SUM_TYPE}) AS {m}_4dp' for m in MEASURE_COLUMNS)} FROM events
        WHERE {' OR '.join(f'NOT ({_on_grid(m)})' for m in MEASURE_COLUMNS)} LIMIT {SAMPLES}""") if n_off else []
    if n_off:
        fails.append(f"prices not exactly 4-decimal values: " + ", ".join(f"{m} {off[f'off_grid_{m}']:,}" for m in MEASURE_COLUMNS)
                     + f", e.g. {jsonable(samples[0])}")
    raw: dict[str, Any] = {"compared": False, "why": "no --raw: lake sums not compared with the raw text"}
    if ctx.raw_summary():
        cols = ", ".join(f"sum(nn_{m}) AS nn_{m}, sum(sum_{m}) AS sum_{m}" for m in MEASURE_COLUMNS)
        raw_t = {r["type"]: r for r in _rows(ctx.con, f"SELECT type, {cols} FROM raw_summary WHERE accepted GROUP BY type")}
        lake_cols = ", ".join(f"count({m}) AS nn_{m}, sum(CAST({m} AS {SUM_TYPE})) AS sum_{m}" for m in MEASURE_COLUMNS)
        lake_t = {r["type"]: r for r in _rows(ctx.con, f"SELECT type, {lake_cols} FROM events GROUP BY type")}
        diffs = [{"type": t, "measure": k, "lake": lake_t.get(t, {}).get(k), "raw": raw_t.get(t, {}).get(k)}
                 for t in sorted(set(raw_t) | set(lake_t)) for m in MEASURE_COLUMNS for k in (f"nn_{m}", f"sum_{m}")
                 if (lake_t.get(t, {}).get(k) or 0) != (raw_t.get(t, {}).get(k) or 0)]
        raw = {"compared": True, "differences": diffs, "raw_per_type": raw_t}
        if diffs:
            fails.append(f"exact sums differ from the raw text: {jsonable(diffs[0])}")
    summary = "; ".join(fails) if fails else (
        ", ".join(f"{off[f'nn_{m}']:,} {m} values on the 0.0001 grid (exact sum {off[f'sum_{m}']})" for m in MEASURE_COLUMNS)
        + ("; per-type counts and exact sums equal the raw text" if raw["compared"] else " (no --raw: not compared with raw)"))
    return CheckResult(not fails, {"summary": summary, "lake": off, "samples": samples, "file_types": typed[:20], "raw": raw})


def _id_offenders(ctx: Context, rel: str, cols: list[str]) -> tuple[dict[str, int], list[dict[str, Any]]]:
    cond = {c: f"{c} IS NOT NULL AND ({c} < {ID_RANGES[c][0]} OR {c} > {ID_RANGES[c][1]})" for c in cols}
    counts = _one(ctx.con, f"SELECT {', '.join(f'count(*) FILTER ({e}) AS {c}' for c, e in cond.items())} FROM {rel}")
    sample = _rows(ctx.con, f"SELECT {', '.join(cols)} FROM {rel} WHERE {' OR '.join(f'({e})' for e in cond.values())} "
                            f"LIMIT {SAMPLES}") if any(counts.values()) else []
    return counts, sample


def types_ids_integral_in_range(ctx: Context) -> CheckResult:
    fails, sources = [], []
    typed = []
    for rel, s in _lake_file_schemas(ctx):
        for c in ID_RANGES:
            t = s.field(c).type if c in s.names else None
            if t is None or not pa.types.is_integer(t):
                typed.append({"file": rel, "column": c, "type": str(t)})
    counts, sample = _id_offenders(ctx, "events", list(ID_RANGES))
    sources.append({"source": "lake", "out_of_range": counts, "samples": sample})
    for h in ctx.views():
        cols = [c for c in ID_RANGES if c in h.view.group_columns]
        if not cols:
            continue
        for c in cols:
            t = pq.read_schema(h.path).field(c).type
            if not pa.types.is_integer(t):
                typed.append({"file": h.entry["file"], "column": c, "type": str(t)})
        counts_v, sample_v = _id_offenders(ctx, h.rel, cols)
        sources.append({"source": h.name, "out_of_range": counts_v, "samples": sample_v})
    if typed:
        fails.append(f"{len(typed)} id column(s) not integer-typed, e.g. {typed[0]}")
    for s in sources:
        if any(s["out_of_range"].values()):
            fails.append(f"{s['source']}: ids out of range {s['out_of_range']}, e.g. {jsonable(s['samples'][0])}")
    ranges = ", ".join(f"{c} in {lo}..{hi}" for c, (lo, hi) in ID_RANGES.items())
    summary = "; ".join(fails) if fails else f"integer ids in range ({ranges}) in the lake and {len(sources) - 1} views"
    return CheckResult(not fails, {"summary": summary, "ranges": ID_RANGES, "sources": sources, "non_integer": typed[:20],
                                   "skipped": _skipped(ctx)})


def types_country_known(ctx: Context) -> CheckResult:
    known = ", ".join(_q(c) for c in COUNTRIES)
    sources, fails = [], []
    for name, rel in [("lake", "events")] + [(h.name, h.rel) for h in ctx.views(having=("country",))]:
        bad = _rows(ctx.con, f"SELECT country, count(*) AS rows FROM {rel} WHERE country IS NULL OR country NOT IN ({known}) "
                             "GROUP BY country ORDER BY rows DESC LIMIT 20")
        n = ctx.con.execute(f"SELECT count(DISTINCT country) FROM {rel}").fetchall()[0][0]
        sources.append({"source": name, "distinct_countries": n, "unknown": bad})
        if bad:
            fails.append(f"{name}: unknown country codes {[(b['country'], b['rows']) for b in bad[:5]]}")
    summary = "; ".join(fails) if fails else (
        f"every country in the lake and {len(sources) - 1} views is one of the {len(COUNTRIES)} known codes")
    return CheckResult(not fails, {"summary": summary, "known": list(COUNTRIES), "sources": sources, "skipped": _skipped(ctx)})


# ---- NULL handling ------------------------------------------------------------------------------

def null_price_only_on_its_type(ctx: Context) -> CheckResult:
    totals = ctx.lake_totals()
    cols = ", ".join(f"sum(nn_{m}) AS nn_{m}" for m in MEASURE_COLUMNS)
    sources = {"lake": _rows(ctx.con, f"SELECT type, sum(cnt) AS rows, {cols} FROM {totals} GROUP BY type ORDER BY type")}
    for h in ctx.views():
        sources[h.name] = _rows(ctx.con, f"SELECT type, sum(cnt) AS rows, {cols} FROM {h.rel} GROUP BY type ORDER BY type")
    deviations = []
    for name, rows in sources.items():
        for r in rows:
            for m, owner in PRICE_TYPE.items():
                n = r[f"nn_{m}"] or 0
                if r["type"] != owner and n:
                    deviations.append({"source": name, "column": m, "type": r["type"], "rows_with_value": n,
                                       "deviation": f"{m} set on {n:,} {r['type']} rows"})
                if r["type"] == owner and n != r["rows"]:
                    deviations.append({"source": name, "column": m, "type": r["type"], "rows_without_value": r["rows"] - n,
                                       "deviation": f"{m} missing on {r['rows'] - n:,} {owner} rows"})
    cond = " OR ".join(f"({m} IS NOT NULL AND type <> {_q(t)}) OR ({m} IS NULL AND type = {_q(t)})" for m, t in PRICE_TYPE.items())
    samples = _rows(ctx.con, f"SELECT type, ts, auction_id, {', '.join(MEASURE_COLUMNS)} FROM events WHERE {cond} "
                             f"ORDER BY ts LIMIT {SAMPLES}") if any(d["source"] == "lake" for d in deviations) else []
    lake = {r["type"]: r for r in sources["lake"]}
    summary = ("; ".join(sorted({f"{d['source'] if d['source'] != 'lake' else 'lake'}: {d['deviation']}" for d in deviations}))
               if deviations else
               ", ".join(f"{m} on {lake.get(t, {}).get(f'nn_{m}', 0):,}/{lake.get(t, {}).get('rows', 0):,} {t} rows and no other type"
                         for m, t in PRICE_TYPE.items()) + f" (lake and {len(sources) - 1} views)")
    return CheckResult(not deviations, {"summary": summary, "rule": {m: f"only on {t}" for m, t in PRICE_TYPE.items()},
                                        "per_type": sources, "deviations": deviations, "samples": samples,
                                        "skipped": _skipped(ctx)})


_AUGUST = [{"col": "day", "op": "gte", "val": "2024-08-01"}, {"col": "day", "op": "lte", "val": "2024-08-31"}]
# Probes over August on every view with a day; the whole period only on views without one (a day
# missing from a view is mv_consistency.reconcile's to report, not this check's).
COUNT_PROBES: tuple[tuple[dict[str, Any], bool], ...] = (
    ({"select": [{"COUNT": "*"}, {"COUNT": "bid_price"}, {"COUNT": "total_price"}], "from": "events", "where": _AUGUST}, True),
    ({"select": ["type", {"COUNT": "*"}, {"COUNT": "bid_price"}, {"COUNT": "total_price"}], "from": "events",
      "where": _AUGUST, "group_by": ["type"]}, True),
    ({"select": ["country", {"COUNT": "*"}, {"COUNT": "bid_price"}], "from": "events", "where": _AUGUST,
      "group_by": ["country"]}, True),
    ({"select": ["type", {"COUNT": "*"}, {"COUNT": "bid_price"}, {"COUNT": "total_price"}], "from": "events",
      "group_by": ["type"]}, False),
)


def null_count_col_vs_star(ctx: Context) -> CheckResult:
    probes, distinct = [], []
    for qdict, dated in COUNT_PROBES:
        query = parse_query(qdict)
        exprs = {a: ("count(*)" if a.col == "*" else f"count({a.col})") for a in query.aggregates}
        sql, params = compiler.compile_query(query, "events", aggregate_sql=exprs)
        ref = ctx.answer_rows(query, sql, params)
        probes.append(ctx.probe(qdict, "lake count(*) and count(col)", ref,
                                views=None if dated else (lambda v: "day" not in v.group_columns)))
        star = query.aggregates.index(Agg("COUNT", "*"))
        offset = len(query.select) - len(query.aggregates)
        distinct.append(sum(1 for r in ref for i in range(len(query.aggregates)) if i != star and r[offset + i] != r[offset + star]))
    n_distinct = sum(distinct)
    res = _probes_result(probes, f"COUNT(col) counts non-NULL values only, COUNT(*) every row "
                                 f"({n_distinct} answer cells where the two differ)",
                         {"cells_where_count_col_differs_from_count_star": distinct, "skipped": _skipped(ctx)},
                         fail_extra=[] if n_distinct else ["no probe where COUNT(col) and COUNT(*) differ: the data has no NULLs to tell them apart"])
    return res


def null_keys_quarantined(ctx: Context) -> CheckResult:
    from analytics.checks.remediation import remediation_report

    fails = []
    lake_cols = sorted(NOT_NULL_IN_LAKE)
    counts = _one(ctx.con, f"SELECT count(*) AS rows, {', '.join(f'count(*) - count({c}) AS {c}' for c in lake_cols)} FROM events")
    null_lake = {c: counts[c] for c in lake_cols if counts[c]}
    samples = _rows(ctx.con, f"SELECT {', '.join(['type'] + [c for c in lake_cols if c != 'type'])} FROM events "
                             f"WHERE {' OR '.join(f'{c} IS NULL' for c in lake_cols)} LIMIT {SAMPLES}") if null_lake else []
    if null_lake:
        fails.append(f"NULL keys in the lake: {null_lake}, e.g. {jsonable(samples[0])}")
    views = []
    for h in ctx.views():
        keys = h.view.group_columns
        got = _one(ctx.con, f"SELECT {', '.join(f'count(*) - count({c}) AS {c}' for c in keys)} FROM {h.rel}")
        bad = {c: n for c, n in got.items() if n}
        views.append({"view": h.name, "null_keys": bad})
        if bad:
            fails.append(f"{h.name}: NULL group keys {bad}")
    report = remediation_report(ctx.root, samples=0)
    acc_checks = list(report["checks"])
    if ctx.raw_dir is not None:
        try:  # the manifest against the raw parts themselves (line counts, fingerprints), when available
            from analytics.checks.remediation import raw_accounting
        except ImportError:
            raw_accounting = None
        if raw_accounting is not None:
            acc_checks += raw_accounting(ctx.root, ctx.raw_dir)
    failed_acc = [c for c in acc_checks if not c["ok"]]
    if failed_acc:
        fails.append(f"accounting does not hold: {failed_acc[0]['check']}: expected {failed_acc[0]['expected']}, "
                     f"got {failed_acc[0]['actual']}")
    raw: dict[str, Any] = {"compared": False, "why": "no --raw: raw NULL keys not compared with the quarantine"}
    if ctx.raw_summary():
        raw_nulls = _one(ctx.con, f"SELECT sum(cnt) AS rows, {', '.join(f'sum(null_{c}) AS {c}' for c in KEY_COLUMNS)} FROM raw_summary")
        qfiles = ctx.lake.quarantine_files()
        if qfiles:
            listing = ", ".join(_q(str(f)) for f in qfiles)
            q_nulls = _one(ctx.con, f"""
                SELECT count(*) AS rows, {', '.join(f'count(*) FILTER ({c} IS NULL) AS {c}' for c in KEY_COLUMNS)}
                FROM read_parquet([{listing}], union_by_name = true) WHERE reason <> {_q(WRONG_FIELD_COUNT)}""")
        else:
            q_nulls = {"rows": 0, **{c: 0 for c in KEY_COLUMNS}}
        totals = ctx.lake.manifest.get("totals", {})
        expected_read = totals.get("rows_read", 0) - (totals.get("quarantine_by_reason") or {}).get(WRONG_FIELD_COUNT, 0)
        diffs = {c: {"raw": int(raw_nulls[c] or 0), "quarantined": int(q_nulls[c] or 0)} for c in KEY_COLUMNS
                 if int(raw_nulls[c] or 0) != int(q_nulls[c] or 0)}
        raw = {"compared": True, "raw_rows": int(raw_nulls["rows"] or 0), "manifest_rows_read_parsed": expected_read,
               "raw_null_keys": {c: int(raw_nulls[c] or 0) for c in KEY_COLUMNS},
               "quarantined_null_keys": {c: int(q_nulls[c] or 0) for c in KEY_COLUMNS}, "differences": diffs}
        if diffs:
            fails.append(f"raw rows with a NULL key are not all quarantined: {diffs}")
        if raw["raw_rows"] != expected_read:
            fails.append(f"raw CSVs hold {raw['raw_rows']:,} parsable rows, the manifest read {expected_read:,}")
    summary = "; ".join(fails) if fails else (
        f"no NULL key in {counts['rows']:,} lake rows or {len(views)} views; accounting holds "
        f"(read {report['rows_read']:,} = lake {report['rows_lake']:,} + quarantined {report['rows_quarantined']:,}, "
        f"{len(acc_checks)} checks)" + ("; every raw NULL key is in the quarantine" if raw["compared"] else ""))
    return CheckResult(not fails, {"summary": summary, "lake_null_keys": {c: counts[c] for c in lake_cols}, "samples": samples,
                                   "views": views, "accounting_failed": failed_acc,
                                   "accounting": {k: report[k] for k in ("rows_read", "rows_lake", "rows_quarantined",
                                                                         "quarantine_by_reason")},
                                   "raw": raw, "skipped": _skipped(ctx)})


# ---- date boundaries ----------------------------------------------------------------------------

LEAP_YEAR_END_PROBES: tuple[dict[str, Any], ...] = (
    {"select": ["day", "type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events",
     "where": [{"col": "day", "op": "between", "val": ["2024-02-28", "2024-03-01"]}], "group_by": ["day", "type"]},
    {"select": ["hour", "type", {"COUNT": "*"}], "from": "events",
     "where": [{"col": "hour", "op": "between", "val": ["2024-02-28 23:00", "2024-03-01 00:00"]}], "group_by": ["hour", "type"]},
    {"select": ["minute", {"COUNT": "*"}], "from": "events",
     "where": [{"col": "minute", "op": "in", "val": ["2024-02-28 23:59", "2024-02-29 00:00", "2024-02-29 23:59", "2024-03-01 00:00"]}],
     "group_by": ["minute"]},
    {"select": ["day", "type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events",
     "where": [{"col": "day", "op": "between", "val": ["2024-12-30", "2025-01-01"]}], "group_by": ["day", "type"]},
    {"select": ["hour", "type", {"COUNT": "*"}], "from": "events",
     "where": [{"col": "hour", "op": "gte", "val": "2024-12-31 22:00"}], "group_by": ["hour", "type"]},
    {"select": [{"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events", "where": [{"col": "day", "op": "gte", "val": "2025-01-01"}]},
    {"select": ["week", "type", {"COUNT": "*"}], "from": "events",
     "where": [{"col": "week", "op": "eq", "val": "2024-12-30"}], "group_by": ["week", "type"]},
    {"select": ["minute", {"COUNT": "*"}], "from": "events",
     "where": [{"col": "minute", "op": "between", "val": ["2024-12-31 23:58", "2025-01-01 00:01"]}], "group_by": ["minute"]},
)


def _preaggregated(query: Query) -> dict[Agg, str]:
    """Aggregates over per-minute counts and exact sums (the boundary probes use only these)."""
    out = {}
    for a in query.aggregates:
        if a.col == "*":
            out[a] = "COALESCE(sum(cnt), 0)::BIGINT"
        elif a.col in MEASURE_COLUMNS and a.func == "COUNT":
            out[a] = f"COALESCE(sum(nn_{a.col}), 0)::BIGINT"
        elif a.col in MEASURE_COLUMNS and a.func == "SUM":
            out[a] = f"CAST(sum(sum_{a.col}) AS DOUBLE)"
        else:
            raise ValueError(f"a boundary probe cannot use {a.name}")
    return out


def _boundary_probes(ctx: Context, qdicts: Iterable[dict[str, Any]]) -> tuple[list[Probe], dict[str, Any]]:
    """Each query answered by every covering view and the lake (the engine), and with raw by the
    baseline's casts over the raw rows; the reference is the lake with every derived column
    recomputed from ts in UTC. Probes stay inside the boundary windows of `lake_window`."""
    probes = []
    window = ctx.lake_window()
    raw = ctx.raw_summary()
    for qdict in qdicts:
        query = parse_query(qdict)
        sql, params = compiler.compile_query(query, window)
        ref = ctx.answer_rows(query, sql, params)
        extra = {}
        if raw:
            bsql, bparams = compiler.compile_query(query, "raw_minutes", raw_values=True, aggregate_sql=_preaggregated(query))
            extra["baseline"] = ctx.answer_rows(query, bsql, bparams)
        probes.append(ctx.probe(qdict, "lake with day/hour/minute/week recomputed from ts (UTC)", ref, extra=extra))
    baseline = ({"compared": True, "rows": "accepted raw rows, the baseline's casts (to_timestamp(ts/1000.0), DATE, "
                                           "DATE_TRUNC, STRFTIME as values are bound as text), counted per minute"}
                if raw else {"compared": False, "why": "no --raw: the baseline was not asked"})
    return probes, baseline


def dates_leap_day_and_year_end(ctx: Context) -> CheckResult:
    probes, baseline = _boundary_probes(ctx, LEAP_YEAR_END_PROBES)
    counts = _one(ctx.con, """
        SELECT count(*) FILTER (day = DATE '2024-02-29') AS leap_day_rows,
               count(*) FILTER (day = DATE '2024-12-31' AND hour(ts) >= 22) AS dec31_late_rows,
               count(*) FILTER (day >= DATE '2025-01-01') AS rows_in_2025
        FROM events""")
    return _probes_result(probes, f"leap day ({counts['leap_day_rows']:,} rows), 2024-12-31 late "
                                  f"({counts['dec31_late_rows']:,} rows) and 2025 ({counts['rows_in_2025']:,} rows) agree",
                          {"lake_rows": counts, "baseline": baseline, "skipped": _skipped(ctx)})


def dates_first_last_day_complete(ctx: Context) -> CheckResult:
    fails: list[str] = []
    span = _one(ctx.con, "SELECT min(day) AS first_day, max(day) AS last_day, min(ts) AS first_ts, max(ts) AS last_ts FROM events")
    first, last = span["first_day"], span["last_day"]
    raw_span = None
    if ctx.raw_summary():
        raw_span = _one(ctx.con, "SELECT min(day) AS first_day, max(day) AS last_day FROM raw_minutes")
        if (raw_span["first_day"], raw_span["last_day"]) != (first, last):
            fails.append(f"the lake spans {first}..{last}, the raw rows {raw_span['first_day']}..{raw_span['last_day']}")
            first, last = raw_span["first_day"] or first, raw_span["last_day"] or last
    if first is None:
        return CheckResult(False, {"summary": "the lake holds no rows: no first or last day", "span": span})
    # the manifest's day index (what pruning, incremental refresh and the remediation report trust)
    actual = {(t, d.isoformat()) for t, d in ctx.con.execute("SELECT DISTINCT type, day FROM events").fetchall()}
    indexed = {(t, d) for t, days in ctx.lake.days_by_type().items() for d in days}
    missing = sorted(actual - indexed)
    phantom = sorted(indexed - actual)
    edges = {first.isoformat(), last.isoformat()}
    edge_missing = [x for x in missing if x[1] in edges]
    if missing or phantom:
        fails.append(f"manifest day index differs from the lake files: {len(missing)} (type, day) missing"
                     f"{' incl. ' + str(edge_missing[:4]) if edge_missing else ''}, {len(phantom)} listed without rows")
    probes = []
    for d in (first, last):
        qdicts = [{"select": ["hour", "type", {"COUNT": "*"}], "from": "events",
                   "where": [{"col": "day", "op": "eq", "val": d.isoformat()}], "group_by": ["hour", "type"]},
                  {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events",
                   "where": [{"col": "day", "op": "eq", "val": d.isoformat()}], "group_by": ["type"]}]
        got, baseline = _boundary_probes(ctx, qdicts)
        probes += got
    per_type = _rows(ctx.con, "SELECT type, count(*) FILTER (day = ?) AS first_day_rows, count(*) FILTER (day = ?) AS last_day_rows "
                              "FROM events GROUP BY type ORDER BY type", [first, last])
    res = _probes_result(probes, f"first day {first} and last day {last} complete in the manifest index, every day view, "
                                 f"the lake{' and the baseline' if raw_span else ''}",
                         {"span": span, "raw_span": raw_span, "per_type": per_type,
                          "manifest_index": {"missing": missing[:20], "listed_without_rows": phantom[:20],
                                             "pairs": len(actual)},
                          "baseline": baseline, "skipped": _skipped(ctx)}, fail_extra=fails)
    return res


# ---- the registry -------------------------------------------------------------------------------

CHECKS: tuple[Check, ...] = (
    Check("timezone.derived_columns_utc", "timezone",
          "stored day/hour/minute equal the UTC date, hour and minute of ts (a row at 23:59:59.999 stays on its day)",
          tz_derived_columns_utc),
    Check("timezone.week_starts_monday", "timezone",
          "every week in the lake and the views is a Monday and the week of its ts/day", tz_week_monday),
    Check("timezone.session_zone_independent", "timezone",
          "time columns are zone-free: the UTC calendar of ts is the same under any session zone, and equals the raw epoch ms",
          tz_session_independent),
    Check("between.day_inclusive", "between",
          "day BETWEEN a AND b includes both end days whole, on every day view and the lake", between_day_inclusive),
    Check("between.hour_minute_inclusive", "between",
          "hour and minute BETWEEN include both end buckets whole, on every hour/minute view and the lake",
          between_hour_minute_inclusive),
    Check("avg.nonnull_denominator", "avg",
          "AVG from a view = SUM / non-NULL COUNT of its stored measures, never SUM / COUNT(*)", avg_nonnull_denominator),
    Check("avg.view_equals_lake", "avg",
          "each view's per-group average equals the lake's exact AVG for the same group", avg_view_equals_lake),
    Check("avg.empty_is_null", "avg",
          "AVG (and SUM/MIN/MAX) over no rows or no values is NULL, COUNT is 0, on every route", avg_empty_is_null),
    Check("avg.no_average_of_averages", "avg",
          "AVG over a range spanning many view rows is SUM/COUNT of the whole range, never an average of averages",
          avg_no_average_of_averages),
    Check("mv_consistency.reconcile", "mv_consistency",
          "each view's rows, non-NULL counts and exact sums per type and day equal the lake's", mv_reconcile),
    Check("mv_consistency.current_lake_version", "mv_consistency",
          "each view was built from the current lake version and segments, with the catalog's definition",
          mv_current_lake_version),
    Check("mv_consistency.schema_matches_registry", "mv_consistency",
          "each view file's columns and types equal the registry's and the catalog's", mv_schema_matches_registry),
    Check("mv_consistency.unique_group_keys", "mv_consistency",
          "no view holds a group key twice", mv_unique_group_keys),
    Check("mv_consistency.present_readable", "mv_consistency",
          "every catalog view is registered, its file present and every column decodes", mv_present_and_readable),
    Check("data_types.ts_millisecond_precision", "data_types",
          "ts keeps exactly the raw milliseconds: no truncation to seconds, no sub-ms residue", types_ts_ms_precision),
    Check("data_types.price_sums_exact", "data_types",
          "bid_price/total_price are exact 4-decimal values; their exact sums equal the raw text's", types_price_sums_exact),
    Check("data_types.ids_integral_in_range", "data_types",
          "advertiser, publisher and user ids are integers within their known ranges, in the lake and the views",
          types_ids_integral_in_range),
    Check("data_types.country_known_code", "data_types",
          "country is one of the known 2-letter codes, in the lake and the views", types_country_known),
    Check("null_handling.price_only_on_its_type", "null_handling",
          "bid_price is set exactly on impressions and total_price exactly on purchases (deviations reported)",
          null_price_only_on_its_type),
    Check("null_handling.count_col_vs_count_star", "null_handling",
          "COUNT(col) counts non-NULL values and COUNT(*) rows, on every route", null_count_col_vs_star),
    Check("null_handling.null_keys_quarantined", "null_handling",
          "rows with a NULL key are quarantined, never in the lake nor silently dropped: the accounting holds",
          null_keys_quarantined),
    Check("date_boundaries.leap_day_and_year_end", "date_boundaries",
          "leap day, 2024-12-31 late and anything in 2025 answered identically by views, lake and baseline",
          dates_leap_day_and_year_end),
    Check("date_boundaries.first_last_day_complete", "date_boundaries",
          "first and last day are complete in the manifest's day index, every view, the lake and the baseline",
          dates_first_last_day_complete),
)
CHECKS_BY_ID: dict[str, Check] = {c.id: c for c in CHECKS}


def _category(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    aliases = {"tz": "timezone", "time_zone": "timezone", "mv": "mv_consistency", "views": "mv_consistency",
               "types": "data_types", "null": "null_handling", "nulls": "null_handling", "dates": "date_boundaries",
               "date": "date_boundaries"}
    key = aliases.get(key, key)
    if key not in CATEGORIES:
        raise GuardrailError(f"unknown category {name!r}; categories: {', '.join(CATEGORIES)}")
    return key


def select_checks(only: str | Iterable[str] | None = None) -> list[Check]:
    """The checks of the given categories (or check ids); all of them by default."""
    if only is None:
        return list(CHECKS)
    names = [only] if isinstance(only, str) else list(only)
    ids = {n for n in names if n in CHECKS_BY_ID}
    cats = {_category(n) for n in names if n not in CHECKS_BY_ID}
    return [c for c in CHECKS if c.category in cats or c.id in ids]


def run_guardrails(lake_dir: str | os.PathLike, raw_dir: str | os.PathLike | None = None,
                   only: str | Iterable[str] | None = None, *, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> dict[str, Any]:
    """Run the checks; returns `{"checks": [{"id", "category", "description", "passed", "evidence",
    "seconds"}], "passed": n, "failed": n, ...}` (JSON-able). A check that raises fails with the error."""
    checks = select_checks(only)
    started = time.perf_counter()
    ctx = Context(lake_dir, raw_dir, memory_limit=memory_limit)
    out = []
    try:
        for chk in checks:
            t0 = time.perf_counter()
            try:
                res = chk.func(ctx)
            except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check, never a pass
                res = CheckResult(False, {"summary": f"check raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                          "error": repr(exc)})
            out.append({"id": chk.id, "category": chk.category, "description": chk.description,
                        "passed": bool(res.passed), "evidence": jsonable(res.evidence),
                        "seconds": round(time.perf_counter() - t0, 3)})
    finally:
        ctx.close()
    n_ok = sum(c["passed"] for c in out)
    return {"checks": out, "passed": n_ok, "failed": len(out) - n_ok, "lake": str(Path(lake_dir)),
            "lake_version": ctx.lake.version, "raw": str(raw_dir) if raw_dir is not None else None,
            "seconds": round(time.perf_counter() - started, 3)}


def format_table(report: dict[str, Any]) -> str:
    """The report as text: checks grouped by category, one line each plus its evidence summary."""
    lines = []
    width = max((len(c["id"]) for c in report["checks"]), default=10)
    for cat in CATEGORIES:
        rows = [c for c in report["checks"] if c["category"] == cat]
        if not rows:
            continue
        lines.append(f"{cat} ({sum(r['passed'] for r in rows)}/{len(rows)})")
        for c in rows:
            lines.append(f"  {'PASS' if c['passed'] else 'FAIL'}  {c['id']:<{width}}  {c['seconds']:6.2f}s  {c['description']}")
            summary = c["evidence"].get("summary", "")
            if summary:
                lines.append(f"        {summary if len(summary) <= 400 else summary[:397] + '...'}")
    lines.append(f"{report['passed']} passed, {report['failed']} failed in {report['seconds']:.1f}s "
                 f"(lake {report['lake']} version {report['lake_version']}, raw {report['raw'] or 'not given'})")
    return "\n".join(lines)
