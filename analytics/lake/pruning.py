"""Lake pruning: the committed files a lake-routed query can need, from its types and time filters.

A lake query read `events`, a view over every committed file: at 245M rows 49 segments x 4 types,
196 files, each costing DuckDB a fraction of a millisecond to open and check even with cached
footers. The manifest records, per segment and type, the days it holds (a segment is one raw
part: ~8 days in the generated data), so the event types a query selects and the day range its
time filters allow name the files it can need. Measured at 245M rows, a 30-minute `ts` range over
clicks: 15.4 ms over all files, 11.3 ms over the click files, 5.6 ms over the one segment holding
that day. The day range is a superset of the days of every row the filters keep (a `week` value
covers its seven days, a `minute` text its day, open ends stay open), and DuckDB still applies
every filter: pruning changes which files are opened, never an answer.

Owns `day_bounds`, `lake_relation` and `lake_files` (the files it reads). Must not open files (the manifest is in memory) nor choose
views.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from analytics.lake.state import Lake
from analytics.query.model import Condition, Query, types_selected
from analytics.query.schema import EVENT_TYPES

_TIME_COLUMNS = ("ts", "day", "week", "hour", "minute")


def _day(value: Any) -> str:
    """The ISO day of a time value as the query holds it (datetime, date, or `minute` text)."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)[:10]  # 'YYYY-MM-DD HH:MM': a prefix orders as the text does


def _last_day(col: str, value: Any) -> str:
    """The last day a row with `col` = `value` can fall on (a week runs Monday to Sunday)."""
    if col == "week" and isinstance(value, dt.date):
        return _day(value + dt.timedelta(days=6))
    return _day(value)


def day_bounds(where: tuple[Condition, ...]) -> tuple[str | None, str | None]:
    """The first and last ISO day any row kept by `where`'s time filters can fall on (None: open)."""
    lo: str | None = None
    hi: str | None = None
    for c in where:
        if c.col not in _TIME_COLUMNS or c.op == "neq":
            continue
        vals = list(c.values)
        if c.op in ("eq", "in"):
            bounds = (min(_day(v) for v in vals), max(_last_day(c.col, v) for v in vals))
        elif c.op == "between":
            bounds = (_day(vals[0]), _last_day(c.col, vals[1]))
        elif c.op in ("lt", "lte"):
            bounds = (None, _last_day(c.col, vals[0]))
        elif c.op in ("gt", "gte"):
            bounds = (_day(vals[0]), None)
        else:
            continue
        if bounds[0] is not None:
            lo = bounds[0] if lo is None else max(lo, bounds[0])
        if bounds[1] is not None:
            hi = bounds[1] if hi is None else min(hi, bounds[1])
    return lo, hi


def lake_relation(lake: Lake, query: Query, default: str = "events") -> str:
    """The relation a lake-routed `query` reads: `default` (every file) when nothing prunes, else
    the files of its event types in the segments holding a day of its range. A segment whose days
    the manifest does not list for a type is kept."""
    pruned = _pruned(lake, query)
    return default if pruned is None else lake.relation_sql(*pruned)


def lake_files(lake: Lake, query: Query) -> list[Path]:
    """The committed files `lake_relation` reads for `query`."""
    pruned = _pruned(lake, query)
    return lake.event_files() if pruned is None else lake.event_files(*pruned)


def _pruned(lake: Lake, query: Query) -> tuple[list[str], list[str]] | None:
    """(types, segments) a lake-routed `query` can need; None when nothing prunes."""
    types = [t for t in EVENT_TYPES if t in types_selected(query.where)]
    lo, hi = day_bounds(query.where)
    if len(types) == len(EVENT_TYPES) and lo is None and hi is None:
        return None
    segments = []
    for seg in lake.state["segments"]:
        days_by_type = seg.get("days") or {}
        for t in types:
            if t not in seg["files"]:
                continue
            days = days_by_type.get(t)
            if days is None or any((lo is None or d >= lo) and (hi is None or d <= hi) for d in days):
                segments.append(seg["segment"])
                break
    return types, segments
