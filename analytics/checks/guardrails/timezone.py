"""Time-zone checks: derived time columns are the UTC calendar of ts, weeks start on Monday, and no
session zone can shift what is stored.

Owns `derived_columns_utc`, `week_starts_monday` and `session_zone_independent`, and the session
zones the last one answers under. Must not judge the engine's range filters (between) nor the
boundary days (date_boundaries), nor change the lake or the views.
"""
from __future__ import annotations

import os
from typing import Any

import pyarrow as pa

from analytics.checks.guardrails.context import SAMPLES, CheckResult, Context, dict_rows, jsonable, one_row
from analytics.core import db
from analytics.core.sql import sql_string

# Session zones the time-zone check answers under: far east (+14), far west (-8/-7) and a half-hour zone.
OTHER_ZONES: tuple[str, ...] = ("Pacific/Kiritimati", "America/Los_Angeles", "Asia/Kolkata")


def derived_columns_utc(ctx: Context) -> CheckResult:
    cols = {"day": "CAST(ts AS DATE)", "hour": "date_trunc('hour', ts)", "minute": "strftime(ts, '%Y-%m-%d %H:%M')"}
    bad = " OR ".join(f"{c} IS DISTINCT FROM {e}" for c, e in cols.items())
    last_ms = "epoch_ms(ts) % 86400000 = 86399999"  # 23:59:59.999 UTC
    counts = one_row(ctx.con, f"""
        SELECT count(*) AS rows, {', '.join(f'count(*) FILTER ({c} IS DISTINCT FROM {e}) AS bad_{c}' for c, e in cols.items())},
               count(*) FILTER ({last_ms}) AS rows_at_235959_999,
               count(*) FILTER ({last_ms} AND day IS DISTINCT FROM CAST(ts AS DATE)) AS bad_at_235959_999
        FROM events""")
    n_bad = sum(counts[f"bad_{c}"] for c in cols)
    samples = dict_rows(ctx.con, f"""
        SELECT type, ts, day, {cols['day']} AS utc_day, hour, {cols['hour']} AS utc_hour, minute, {cols['minute']} AS utc_minute
        FROM events WHERE {bad} ORDER BY ts LIMIT {SAMPLES}""") if n_bad else []
    summary = (f"{counts['rows']:,} lake rows: stored day/hour/minute equal the UTC values of ts"
               f" ({counts['rows_at_235959_999']} rows at 23:59:59.999 on their own day)") if not n_bad else (
        f"stored derived columns differ from ts in UTC: day {counts['bad_day']:,}, hour {counts['bad_hour']:,}, "
        f"minute {counts['bad_minute']:,} of {counts['rows']:,} rows")
    return CheckResult(n_bad == 0, {"summary": summary, "compared": "lake day, hour, minute vs CAST/date_trunc/strftime of ts, session UTC",
                                    **counts, "samples": samples})


def week_starts_monday(ctx: Context) -> CheckResult:
    sources = []
    lake = one_row(ctx.con, """
        SELECT count(*) AS rows, count(*) FILTER (isodow(week) <> 1) AS not_monday,
               count(*) FILTER (week IS DISTINCT FROM CAST(date_trunc('week', ts) AS DATE)) AS not_week_of_ts
        FROM events""")
    lake_samples = dict_rows(ctx.con, f"""
        SELECT type, ts, day, week, dayname(week) AS weekday FROM events
        WHERE isodow(week) <> 1 OR week IS DISTINCT FROM CAST(date_trunc('week', ts) AS DATE) LIMIT {SAMPLES}""") \
        if lake["not_monday"] or lake["not_week_of_ts"] else []
    sources.append({"source": "lake", **lake, "samples": lake_samples})
    for h in ctx.views(having=("week",)):
        got = one_row(ctx.con, f"""
            SELECT count(*) AS rows, count(*) FILTER (isodow(week) <> 1) AS not_monday,
                   count(*) FILTER (week IS DISTINCT FROM CAST(date_trunc('week', day) AS DATE)) AS not_week_of_day
            FROM {h.rel}""")
        samples = dict_rows(ctx.con, f"""
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
                            "sources": sources, "calendar_monday_start": all(calendar), "skipped": ctx.skipped_views})


def session_zone_independent(ctx: Context) -> CheckResult:
    fails: list[str] = []
    # 1. every connection of the package is UTC, whatever the process TZ
    probe_con = db.connect()
    zone = probe_con.execute("SELECT current_setting('TimeZone')").fetchall()[0][0]
    probe_con.close()
    if zone != "UTC":
        fails.append(f"db.connect() session time zone is {zone!r}, not UTC (process TZ={os.environ.get('TZ')!r})")
    # 2. time columns are stored zone-free in every lake file
    typed = []
    for rel, schema in ctx.lake_file_schemas():
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
            cur.execute(f"SET TimeZone = {sql_string(zone_name)}")
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
        diff_rows = dict_rows(ctx.con, """
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

