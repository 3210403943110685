"""Pieces of a view's aggregation: per event type, contiguous day ranges whose groups fit the budget.

Owns the cut. A view is aggregated one type at a time; when a type's lake rows could make more
groups than a DuckDB connection's share holds in its hash table, the type is cut further into
contiguous ranges of days, each small enough, from the lake's rows per type and day (the build's
totals, so cutting costs no scan). A view's time columns are part of its key, so no group spans
two ranges, and ranges in ascending order keep the file's type-then-time order. Views without a
time grain are never cut: their groups are few whatever the rows. Must not run SQL beyond
rendering a piece's filter.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Callable, Mapping, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from analytics.core.memory import parse_size
from analytics.core.sql import sql_string
from analytics.views.catalog import ViewDef

# Bytes a group takes in DuckDB's hash aggregate for a view (its key, 13 aggregate states with two
# DECIMAL(38,4) sums, and the table's overhead), rounded up: a type of 14.4M groups failed in a
# 180 MiB share at 245M rows when aggregated whole.
GROUP_BYTES = 256
# Groups a day can hold in a view without entity dimensions, by grain: its time units.
UNITS_PER_DAY = {"day": 1, "hour": 24, "minute": 1440}
# A piece's groups may fill this share of the connection's memory; the rest is the sort, the
# scan's buffers and the result batches in flight.
PIECE_SHARE = 4


class Piece(NamedTuple):
    type: str
    days: tuple[dt.date, dt.date] | None  # inclusive; None: the whole type

    def where(self) -> str:
        """The piece's filter over the lake or over rows of the view's shape (both have `type`, `day`)."""
        sql = f"type = {sql_string(self.type)}"
        if self.days is not None:
            first, last = (sql_string(d.isoformat()) for d in self.days)
            sql += f" AND day BETWEEN CAST({first} AS DATE) AND CAST({last} AS DATE)"
        return sql


def cut(view: ViewDef, totals: pa.Table | None, memory_limit: str,
        distinct: Callable[[Sequence[str]], Mapping[str, int]] | None = None) -> list[Piece]:
    """The pieces of `view`, in file order (type, then time), for a connection of `memory_limit`;
    `totals` has the lake's rows per `type` and `day` (`cnt`), None when unknown (one piece a type).
    A day's groups are at most its rows, and at most its time units times the distinct values of
    each dimension (`distinct(columns)`, asked only when the rows alone do not fit), so a piece's
    groups never exceed the budget."""
    budget = max(1, parse_size(memory_limit) // PIECE_SHARE // GROUP_BYTES)
    pieces: list[Piece] = []
    for t in sorted(view.types):
        if totals is None or view.grain == "all":
            pieces.append(Piece(t, None))
            continue
        mine = totals.filter(pc.equal(totals.column("type"), t)).sort_by("day")
        days, rows = mine.column("day").to_pylist(), mine.column("cnt").to_pylist()
        if sum(rows) > budget and (distinct is not None or not view.dims):
            counts = distinct(view.dims) if view.dims else {}
            per_day = UNITS_PER_DAY[view.grain] * math.prod(counts.values())
            rows = [min(n, per_day) for n in rows]
        if sum(rows) <= budget:
            pieces.append(Piece(t, None))
            continue
        ranges, start, held = [], 0, 0
        for i, n in enumerate(rows):
            if held and held + n > budget:  # a day alone over the budget is still one piece
                ranges.append([days[start], days[i - 1]])
                start, held = i, 0
            held += n
        ranges.append([days[start], days[-1]])
        # the ends open: a row of a day the totals lack (none, while they come from the same lake
        # version) still falls in exactly one piece
        ranges[0][0], ranges[-1][1] = dt.date.min, dt.date.max
        pieces += [Piece(t, (first, last)) for first, last in ranges]
    return pieces
