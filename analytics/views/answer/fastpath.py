"""The view fast path: answer a covered query from a view's Arrow data, without SQL.

Owns `ArrowView`: a view's rows split by event type (typically the memory-mapped batches of its
serving copy), each slice sorted by time, whose time columns are searched in place (DATE as
days, TIMESTAMP as microseconds, the minute as text, no copies), so time filters become two
binary searches touching O(log n) pages instead of a scan; the remaining filters are masks
over the rows the searches keep (numpy over integer keys and dictionary codes, Arrow for text).
Rows, columns and masks are `rows`'. The kept rows' keys and partials go to numpy
(`reaggregate`: dense groups, exact int64 sums, order and limit); what it leaves (a text filter
Arrow must mask, a minute key across pieces, a key product too sparse) an Arrow group-by
following `query.aggregates` re-aggregates (skipped when each group is one view row), with the
outputs' arithmetic in numpy (`finish`) and an `order_by` a sort.
A piece with a guard (a serving copy's batch) is read only after the guard has checked the bytes:
its time searches read the window its marks pick, then the columns a step reads over the rows it
reads them (`views.batch_guard`), so a disk-cold answer reads what it needs, each block checked.
A view answer is a few hundred rows re-aggregated, where DuckDB's fixed cost of parsing and
planning a statement dominates; this path skips it. Semantics follow DuckDB's: a DATE
compared with a timestamp is read as its midnight, strings compare byte-wise, NULLs sort last,
COUNT over no rows is 0 and the other aggregates NULL. A query shape it does not handle returns
None and the caller runs the plan's SQL. Must not choose views, touch files, or read a guarded
piece's bytes before its guard.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analytics.query.model import Condition, Query
from analytics.query.schema import EVENT_TYPES
from analytics.views.answer import finish, reaggregate
from analytics.views.answer.rows import (
    ORDERING,
    STEP_US,
    TEXT_TIMES,
    TIME_KINDS,
    Piece,
    Rows,
    Times,
    ascending,
    contiguous,
    contiguous_table,
    group_key,
    integers,
    isin,
    partial_values,
    piece_of,
    range_bounds,
    ranges,
    sorted_bound,
    text_bound,
    us,
    wanted_keys,
)
from analytics.views.batch_guard import ServedBatch
from analytics.views.catalog import ViewDef, partial_columns
from analytics.views.serving_copy import SCALE

# pyarrow imports pandas on its first conversion of a Python value and pyarrow.acero on its first
# group_by: 0.45-0.5 s of a new process on this host. The numpy path needs neither (its arrays are
# built over buffers), so a process whose view answers all take it never pays for them; the Arrow
# path (text filters other than the minute's, sparse keys) pays once, on its first use.

# Query shapes remembered per view version; past this many distinct queries the memo starts afresh.
SHAPE_MEMO_SIZE = 4096
Parts = Sequence[pa.Table | ServedBatch]  # one type's rows: tables, or a serving copy's batches


class RepeatedKeys(ValueError):
    """A view's answer held a group twice: the view must not serve (the caller falls back)."""


class _Shape(NamedTuple):
    """What a view makes of a query, whatever its data: the partials it re-aggregates, the types
    it reads (sorted; None when a filter on `type` is left to SQL), whether each group is a row,
    and the columns read at the kept rows (group keys and partials: what a guard checks)."""

    needed: list[tuple[str, str]]
    types: list[str] | None
    one_row: bool
    read: tuple[str, ...]


class ArrowView:
    """One view version, ready to answer the queries the router sends to it: per event type, its
    rows as pieces (single-chunk tables, each in time order), e.g. the record batches of a
    memory-mapped serving copy (`ServedBatch`: read only after its guard checked the bytes), then
    those of its deltas (with `unique_keys=False`: a key may then appear in several pieces, and
    every answer re-aggregates). Nothing here reads a piece whole: time filters are binary
    searches, masks run on the rows the searches keep. `scaled` names sum columns stored as int64
    times 10^PRICE_SCALE; dictionary columns are compared by code and decoded on output."""

    def __init__(self, view: ViewDef, pieces: Mapping[str, Parts | Callable[[], Parts]], schema: pa.Schema,
                 scaled: Iterable[str] = (), unique_keys: bool = True) -> None:
        self.view = view
        self.unique_keys = unique_keys  # False when a key may repeat across pieces (a base and its deltas)
        self.schema = schema
        self.scaled = frozenset(scaled)
        self._shapes: dict[Query, _Shape] = {}
        self._time_cols = [c for c in view.time_columns if c in TIME_KINDS]
        self._text_cols = [c for c in view.time_columns if c in TEXT_TIMES]
        # a type's parts, or what opens them: a serving copy's files are opened on their type's first query
        self._sources = dict(pieces)
        self._slices: dict[str, list[Piece]] = {}

    def _pieces(self, t: str) -> list[Piece]:
        """Type `t`'s pieces, opened on first use (a race opens them twice, the same way)."""
        got = self._slices.get(t)
        if got is None:
            source = self._sources.get(t, ())
            parts = source() if callable(source) else source
            got = [p for p in (piece_of(x, self._time_cols, self._text_cols) for x in parts) if p.table.num_rows]
            self._slices[t] = got
        return got

    @property
    def slices(self) -> dict[str, list[Piece]]:
        """Every type's pieces (all opened), types without rows left out."""
        return {t: ps for t in self._sources if (ps := self._pieces(t))}

    @classmethod
    def from_table(cls, view: ViewDef, table: pa.Table, scaled: Iterable[str] = ()) -> "ArrowView":
        """A view over an in-memory table in any row order: each type's rows made one slice, sorted
        by time if they are not (binary search needs time order)."""
        table = contiguous_table(cls._decoded(table))
        types = table.column("type")
        time_cols = [c for c in view.time_columns if c in TIME_KINDS]
        text_cols = [c for c in view.time_columns if c in TEXT_TIMES]
        pieces = {}
        for t in EVENT_TYPES:
            is_t = pc.equal(types, t)  # a bitmap: no per-row index array for a view of 30M rows
            n = pc.sum(is_t).as_py() or 0
            if not n:
                continue
            lo = pc.index(types, t).as_py()
            together = pc.all(is_t.slice(lo, n)).as_py()
            part = table.slice(lo, n) if together else table.filter(is_t)
            if not all(Times(part.column(c)).ascending() for c in time_cols) or not all(
                    ascending(part.column(c)) for c in text_cols):
                part = contiguous_table(part.sort_by([(c, "ascending") for c in view.sort_columns[1:]]))
            pieces[t] = [part]
        return cls(view, pieces, table.schema, scaled)

    @property
    def table(self) -> pa.Table:
        """All rows as one (chunked, zero-copy) table."""
        parts = [self._project(p.table, self.schema.names) for ps in self.slices.values() for p in ps]
        return pa.concat_tables(parts) if parts else self.schema.empty_table()

    # ---- filtering ---------------------------------------------------------------------------
    def _types(self, where: tuple[Condition, ...]) -> set[str] | None:
        types = set(self._sources)
        for c in where:
            if c.col != "type":
                continue
            vals = {str(v) for v in c.values}
            if c.op in ("eq", "in"):
                types &= vals
            elif c.op == "neq":
                types -= vals
            else:
                return None  # ordering comparisons on type: leave them to SQL
        return types

    @staticmethod
    def _mask(column: pa.Array, cond: Condition) -> pa.Array:
        vals = list(cond.values)
        if pa.types.is_dictionary(column.type):
            if cond.op not in ("eq", "in", "neq"):
                column = column.dictionary_decode()  # an ordering comparison: compare the text
            else:
                # compare codes, not text: a value missing from the dictionary matches no row
                codes = {v: i for i, v in enumerate(column.dictionary.to_pylist())}
                wanted = pa.array([codes[v] for v in map(str, vals) if v in codes], type=column.indices.type)
                kept = pc.is_in(column.indices, value_set=wanted)
                return pc.invert(kept) if cond.op == "neq" else kept
        if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type)):
            raise NotImplementedError(column.type)
        if cond.op == "in":
            return pc.is_in(column, value_set=pa.array(vals, type=column.type))
        scalars = [pa.scalar(v, type=column.type) for v in vals]  # one or two: never an `in` list
        if cond.op == "between":
            return pc.and_(pc.greater_equal(column, scalars[0]), pc.less_equal(column, scalars[1]))
        fn = {"eq": pc.equal, "neq": pc.not_equal, "lt": pc.less, "lte": pc.less_equal,
              "gt": pc.greater, "gte": pc.greater_equal}[cond.op]
        return fn(column, scalars[0])

    def _shape(self, query: Query) -> _Shape:
        """What the view makes of the query's shape, worked out once per query (no data read)."""
        shape = self._shapes.get(query)
        if shape is None:
            types = self._types(query.where)
            needed = sorted({pair for a in query.aggregates for pair in self._needs(a.func, a.col)})
            read = [*query.group_by, *(c for c, _ in needed)]
            shape = _Shape(needed, None if types is None else sorted(types),
                           bool(query.group_by) and self._one_row_per_group(query),
                           tuple(c for c in dict.fromkeys(read) if c != "type"))
            if len(self._shapes) >= SHAPE_MEMO_SIZE:
                self._shapes.clear()
            self._shapes[query] = shape
        return shape

    def _selections(self, query: Query, shape: _Shape) -> list[tuple[str, Piece, Rows]] | None:
        """Each piece's rows `query` keeps, by type (pieces keeping none left out); None when a
        filter on `type` is left to SQL."""
        if shape.types is None:
            return None
        out = []
        for t in shape.types:
            for piece in self._pieces(t):
                rows = self._select(piece, query)
                if rows is not None:
                    if piece.guard is not None:  # and the filters left to Arrow, read at these rows
                        piece.guard([*shape.read, *(c.col for c in rows.arrow)], rows.lo, rows.hi, rows.index)
                    out.append((t, piece, rows))
        return out

    def _filtered(self, selections: list[tuple[str, Piece, Rows]], columns: list[str]) -> pa.Table | None:
        """The rows of `selections` with only `columns`, dictionary columns decoded; None when a
        filter is left to SQL."""
        parts = []
        for _, piece, rows in selections:
            part = self._filter_piece(piece, rows, columns)
            if part is NotImplemented:
                return None
            parts.append(self._project(part, columns))
        if not parts:
            return self._decoded(self.schema.empty_table().select(columns))
        return self._decoded(pa.concat_tables(parts) if len(parts) > 1 else parts[0])

    def _select(self, piece: Piece, query: Query) -> Rows | None:
        """The rows of one piece the query's filters keep (None if none): time ranges by binary
        search, the first dimension's values by runs (`_dim_runs`), the other integer and dictionary
        filters by numpy masks (a few µs each, where an Arrow compute call costs tens), the rest
        left to Arrow."""
        times, texts = piece.times, piece.texts
        lo, hi = 0, piece.table.num_rows
        rest = []
        for c in query.where:
            if c.col == "type":
                continue
            if c.col in times:
                ts = times[c.col]
                b = range_bounds(len(ts), c, ts.left, ts.right, [us(x) for x in c.values])
            elif c.col in texts:
                col, marks = texts[c.col], (piece.marks or {}).get(c.col)
                b = range_bounds(len(col), c, lambda x, col=col, m=marks: text_bound(col, m, x, False),
                                 lambda x, col=col, m=marks: text_bound(col, m, x, True), [str(x) for x in c.values])
            else:
                b = None
            if b is None:
                rest.append(c)
            else:
                lo, hi = max(lo, b[0]), min(hi, b[1])
        if hi <= lo:
            return None
        index = None
        runs = self._dim_runs(piece, lo, hi, rest)
        if runs is not None:
            cond, index = runs
            if not len(index):
                return None
            rest = [c for c in rest if c is not cond]
        rows = Rows(lo, hi, index, [])
        masks: list[np.ndarray] = []
        if rest and piece.guard is not None:  # the masks below read these columns over [lo, hi)
            piece.guard([c.col for c in rest], lo, hi)
        for c in rest:
            if c.col in times:  # only `in` / `neq` are left on a time column (and then no runs)
                masks.append(times[c.col].mask(lo, hi, c))
                continue
            col = piece.column(c.col)
            if c.op in ORDERING and col is not None and integers(col, c.values):
                bounds = [np.int64(v) for v in c.values]  # int64: compared without the column's wrap-around
                masks.append(ORDERING[c.op](rows.of(col.values), *bounds))
                continue
            wanted = None
            if col is not None and c.op in ("eq", "in", "neq"):
                wanted = wanted_keys(col, c.values, ordered=False)  # codes of any dictionary, sorted or not
            if wanted is None:
                rows.arrow.append(c)
                continue
            kept = isin(rows.of(col.values), wanted) if wanted else np.zeros(len(rows), dtype=bool)
            masks.append(~kept if c.op == "neq" else kept)
        if not masks:
            return rows
        mask = np.logical_and.reduce(masks) if len(masks) > 1 else masks[0]
        kept_rows = index[mask] if index is not None else lo + np.flatnonzero(mask)
        return Rows(lo, hi, kept_rows, rows.arrow) if len(kept_rows) else None

    @staticmethod
    def _filter_piece(piece: Piece, rows: Rows, columns: list[str]) -> Any:
        """The `rows` of one piece as a table of `columns` and those the filters left to Arrow read,
        masked by those filters (NotImplemented for a filter Arrow cannot run: SQL's)."""
        # only the columns read from here on: a take copies each column it is given
        names = set(piece.table.schema.names)
        table = piece.table.select([c for c in dict.fromkeys([*columns, *(c.col for c in rows.arrow)]) if c in names])
        part = table.take(rows.index) if rows.index is not None else table.slice(rows.lo, rows.hi - rows.lo)
        if not rows.arrow:
            return part
        mask = None
        for c in rows.arrow:
            try:
                m = ArrowView._mask(contiguous(part.column(c.col)), c)
            except NotImplementedError:
                return NotImplemented
            mask = m if mask is None else pc.and_(mask, m)
        return part.filter(mask)

    # A search costs ~5 µs of interpreter and numpy calls, a mask ~2.5 ns a row plus ~50 µs of calls
    # (the mask, then the filter): runs pay only when the searches number under 1/2000 of the rows
    # plus 20,000 (measured at 15M: 366 days x 3 values over a 20K-row slice took 1.26 ms by search,
    # 0.23 ms by mask; 3 values over a 1,654-row slice 15 µs by search, ~100 µs by mask)
    _ROWS_PER_SEARCH = 2000
    _MASK_FIXED_ROWS = 20_000

    def _dim_runs(self, piece: Piece, lo: int, hi: int, rest: list[Condition]
                  ) -> tuple[Condition, np.ndarray] | None:
        """The `eq`/`in` condition on the view's first dimension and the row numbers in [lo, hi) it
        keeps, found by binary search instead of a mask: rows are sorted by the finest time column
        then that dimension, so within each time unit its values form runs. None when that does not
        apply (no such condition, a time filter left to a mask, a text or unsorted-dictionary
        column, or more searches than the rows repay: `_ROWS_PER_SEARCH`)."""
        dims = self.view.dims
        cond = next((c for c in rest if dims and c.col == dims[0] and c.op in ("eq", "in")), None)
        if cond is None or any(c.col in piece.times or c.col in piece.texts for c in rest):
            return None
        col = piece.column(cond.col)
        wanted = wanted_keys(col, cond.values) if col is not None else None
        if wanted is None:
            return None
        values = col.values
        starts, ends = np.array([lo]), np.array([hi])
        if len(wanted) * self._ROWS_PER_SEARCH > hi - lo + self._MASK_FIXED_ROWS:
            return None
        if self.view.time_columns:
            time0 = self.view.time_columns[0]
            if time0 not in STEP_US or time0 not in piece.times:
                return None
            if piece.guard is not None:  # the searches below read both columns over [lo, hi)
                piece.guard([time0, cond.col], lo, hi)
            times = piece.times[time0]
            step = STEP_US[time0] // times.unit
            within = times.values[lo:hi]
            units = np.arange(within[0], within[-1] + step, step, dtype=within.dtype)
            if len(units) * len(wanted) * self._ROWS_PER_SEARCH > hi - lo + self._MASK_FIXED_ROWS:
                return None
            starts = np.searchsorted(within, units, "left") + lo
            ends = np.append(starts[1:], hi)
        elif (marks := (piece.marks or {}).get(cond.col)) is not None:  # sorted by it, with marks
            bounds = [[sorted_bound(values, marks, k, side) for k in wanted] for side in ("left", "right")]
            return cond, ranges(*np.clip(np.array(bounds, dtype=np.int64), lo, hi))
        elif piece.guard is not None:
            piece.guard([cond.col], lo, hi)
        keys = np.array(wanted, dtype=values.dtype)
        firsts, lasts = [], []
        for a, b in zip(starts.tolist(), ends.tolist()):
            seg = values[a:b]
            firsts.append(np.searchsorted(seg, keys, "left") + a)
            lasts.append(np.searchsorted(seg, keys, "right") + a)
        return cond, ranges(np.concatenate(firsts), np.concatenate(lasts))

    def _project(self, part: pa.Table, columns: list[str]) -> pa.Table:
        """`columns` of `part`; a price column its type's file leaves out is all NULL there."""
        names = set(part.schema.names)
        if all(c in names for c in columns):
            return part.select(columns)
        arrays = [part.column(c) if c in names else pa.nulls(part.num_rows, self.schema.field(c).type) for c in columns]
        return pa.table(arrays, schema=pa.schema([self.schema.field(c) for c in columns]))

    @staticmethod
    def _decoded(table: pa.Table) -> pa.Table:
        for i, field in enumerate(table.schema):
            if pa.types.is_dictionary(field.type):
                table = table.set_column(i, field.name, pc.cast(table.column(i), field.type.value_type))
        return table

    # ---- aggregation -------------------------------------------------------------------------
    def _needs(self, func: str, col: str) -> list[tuple[str, str]]:
        """The (view column, Arrow aggregation) pairs an aggregate re-aggregates from (the rules of
        `query.aggregates`; the router sends only aggregates the view covers)."""
        return partial_columns(func, col, self.view)

    def _one_row_per_group(self, query: Query) -> bool:
        """Whether the query's groups are the view's own rows, so re-aggregating is the identity:
        it groups by the view's finest time column and every dimension, and by `type` unless the
        filters keep a single type (coarser time columns follow from the finest). Never when keys
        repeat across pieces (deltas): their rows must be re-aggregated."""
        if not self.unique_keys:
            return False
        key = set(self.view.time_columns[:1]) | set(self.view.dims)
        types = self._types(query.where)
        if types is None or len(types) > 1:
            key.add("type")
        return key <= set(query.group_by)

    def _output_types(self, query: Query) -> dict[str, pa.DataType]:
        """Each output's type, as an answer over rows would have it (dictionary columns decoded)."""
        def decoded(column: str) -> pa.DataType:
            t = self.schema.field(column).type
            return t.value_type if pa.types.is_dictionary(t) else t
        out = {}
        for item in query.select:
            if isinstance(item, str):
                out[item] = decoded(item)
            elif item.func == "COUNT":
                out[item.name] = pa.int64()
            elif item.func in ("SUM", "AVG"):
                out[item.name] = pa.float64()
            else:
                out[item.name] = decoded(self._needs(item.func, item.col)[0][0])
        return out

    def _answer_numpy(self, query: Query, shape: _Shape,
                      selections: list[tuple[str, Piece, Rows]]) -> pa.Table | None:
        """The answer re-aggregated by numpy (`reaggregate`), or None to take Arrow's path."""
        if not selections:
            return reaggregate.empty(query, self._output_types(query))
        if any(rows.arrow for _, _, rows in selections):
            return None
        # without dimensions a group that is one view row is one time unit: its own run
        keys = [group_key(g, selections, shape.one_row and not self.view.dims) for g in query.group_by]
        measures = {pair: partial_values(*pair, selections, self.schema) for pair in shape.needed}
        if any(k is None for k in keys) or any(m is None for m in measures.values()):
            return None
        n = sum(len(rows) for _, _, rows in selections)
        return reaggregate.answer(query, keys, measures, n, self._needs, self.scaled, shape.one_row)

    def answer(self, query: Query) -> pa.Table | None:
        """The answer, or None when this shape is left to SQL. Raises `RepeatedKeys` rather than
        return an answer in which a group appears twice."""
        table = self._answer(query)
        # a group key left out of the select may make the others repeat rightly: checked when all are there
        if (table is not None and query.group_by and set(query.group_by) <= set(table.column_names)
                and (repeated := finish.repeated_keys(table, query.group_by))):
            raise RepeatedKeys(f"{self.view.name} answered {repeated} row(s) repeating a group key of "
                               f"{', '.join(query.group_by)}")
        return table

    def _answer(self, query: Query) -> pa.Table | None:
        shape = self._shape(query)
        needed = shape.needed
        selections = self._selections(query, shape)
        if selections is None:
            return None
        fast = self._answer_numpy(query, shape, selections)
        if fast is not None:
            return fast
        columns = list(dict.fromkeys([*query.group_by, *(c for c, _ in needed)]))
        rows = self._filtered(selections, columns)
        if rows is None:
            return None
        if shape.one_row:
            grouped = rows  # keys are unique in a view: each row is a group, its measures the group's
            got = {pair: rows.column(pair[0]) for pair in needed}
        elif query.group_by:
            grouped = rows.group_by(list(query.group_by), use_threads=False).aggregate(list(needed))
            got = {pair: grouped.column(f"{pair[0]}_{pair[1]}") for pair in needed}
        else:
            grouped = None
            got = {}
            for col, fn in needed:
                scalar = getattr(pc, fn)(rows.column(col)) if rows.num_rows else pa.scalar(None, rows.column(col).type)
                got[(col, fn)] = pa.array([scalar.as_py()], type=rows.column(col).type if fn != "sum" or
                                          not pa.types.is_integer(rows.column(col).type) else pa.int64())
        out = {}
        for item in query.select:
            if isinstance(item, str):
                out[item] = grouped.column(item)
                continue
            pairs = self._needs(item.func, item.col)
            first = got[pairs[0]]
            scale = SCALE if pairs[0][0] in self.scaled else None
            if item.func == "COUNT":
                out[item.name] = finish.count(first)
            elif item.func == "SUM":
                out[item.name] = finish.total(first, scale)
            elif item.func == "AVG":
                out[item.name] = finish.average(first, got[pairs[1]], scale)
            else:
                out[item.name] = first
        return finish.order_and_limit(pa.table(out), query)
