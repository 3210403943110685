"""The view fast path: answer a covered query from a view's Arrow data, without SQL.

Owns `ArrowView`: a view's rows split by event type (typically the memory-mapped batches of its
serving copy), each slice sorted by time, whose time columns are searched in place (DATE as
days, TIMESTAMP as microseconds, the minute as text, no copies), so time filters become two
binary searches touching O(log n) pages instead of a scan; the remaining filters are masks
over the rows the searches keep (numpy over integer keys and dictionary codes, Arrow for text), the
re-aggregation an Arrow group-by following `query.aggregates` (skipped when each group is one
view row), the outputs' arithmetic numpy (`finish`), an `order_by` a sort (a top-k selection on
many rows).
A view answer is a few hundred rows re-aggregated, where DuckDB's fixed cost of parsing and
planning a statement dominates; this path skips it. Semantics follow DuckDB's: a DATE
compared with a timestamp is read as its midnight, strings compare byte-wise, NULLs sort last,
COUNT over no rows is 0 and the other aggregates NULL. A query shape it does not handle returns
None and the caller runs the plan's SQL. Must not choose views or touch files.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import pandas  # noqa: F401 - see below
import pyarrow as pa
import pyarrow.acero  # noqa: F401 - see below
import pyarrow.compute as pc

from analytics.query.model import Condition, Query
from analytics.query.schema import EVENT_TYPES, PRICE_SCALE
from analytics.serving import finish
from analytics.views.catalog import ViewDef, partial_columns

# pyarrow imports pandas on its first conversion of a Python value (a query's literal) and
# pyarrow.acero on its first group_by, lazily: ~0.3 s that the first view query of a process would
# pay for libraries, not for its view. Imported with this module, they are paid once at start-up.
_EPOCH = dt.datetime(1970, 1, 1)
_DAY_US = 86_400_000_000
_TIME_KINDS = ("day", "week", "hour")  # stored as DATE or TIMESTAMP, monotone along the sort
_TEXT_TIMES = ("minute",)  # 'YYYY-MM-DD HH:MM' text: fixed width, so its string order is time order


def _us(value: Any) -> int:
    """A date or datetime as microseconds since the epoch (a DATE is its midnight, as in DuckDB)."""
    if isinstance(value, dt.datetime):
        return (value - _EPOCH) // dt.timedelta(microseconds=1)
    return (value - _EPOCH.date()).days * _DAY_US


def _bisect(column: pa.StringArray, value: str, right: bool) -> int:
    """Where `value` goes in a sorted string column (left or right of equals), reading ~log2(n) cells
    instead of copying the column: Python compares code points, the order of DuckDB's byte-wise
    UTF-8 comparison."""
    lo, hi = 0, len(column)
    while lo < hi:
        mid = (lo + hi) // 2
        cell = column[mid].as_py()
        if cell < value or (right and cell == value):
            lo = mid + 1
        else:
            hi = mid
    return lo


_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}
# a time unit of the finest time column a view sorts by, in microseconds (minute is text: no runs)
_STEP_US = {"day": _DAY_US, "hour": 3_600_000_000}


def _contiguous(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array over the column: its only chunk as it is (combine_chunks would copy even that)."""
    if isinstance(column, pa.Array):
        return column
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def contiguous_table(table: pa.Table) -> pa.Table:
    """`table` with each column in one contiguous array, as `ArrowView` needs (and DuckDB's
    registration shares). Combined a column at a time, each source column released as soon as it
    is copied: loading peaks at the view plus one column instead of twice the view."""
    schema, columns = table.schema, table.columns
    del table
    combined = []
    for i in range(len(columns)):
        combined.append(_contiguous(columns[i]))
        columns[i] = None
    return pa.Table.from_arrays(combined, schema=schema)


class _Times:
    """A sorted DATE or TIMESTAMP column as integers of its own unit (days, microseconds, ...),
    sharing the Arrow buffer: searching it costs no copy of the view. Values in microseconds are
    placed as DuckDB compares them: a DATE is its midnight."""

    def __init__(self, column: pa.ChunkedArray | pa.Array) -> None:
        arr = _contiguous(column)
        if pa.types.is_date32(arr.type):
            dtype, self.unit = np.dtype(np.int32), _DAY_US
        elif pa.types.is_timestamp(arr.type) and arr.type.unit in _UNIT_US:
            dtype, self.unit = np.dtype(np.int64), _UNIT_US[arr.type.unit]
        else:
            raise ValueError(f"no time index for a {arr.type} column")
        # numpy straight over the data buffer (Array.to_numpy would import pandas: ~0.25 s cold)
        self.values = np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)

    def __len__(self) -> int:
        return len(self.values)

    def ascending(self) -> bool:
        return bool(np.all(self.values[1:] >= self.values[:-1]))

    def _key(self, value: int) -> np.integer:
        # of the column's own dtype: a wider key makes numpy cast (copy, so read) the whole column
        info = np.iinfo(self.values.dtype)
        return self.values.dtype.type(min(max(value, info.min), info.max))

    def left(self, us: int) -> int:
        """First row at or after `us`."""
        key, values = self._key(-(-us // self.unit)), self.values
        # the ends first: a piece wholly before or after the key is settled without a search
        if not len(values) or key <= values[0]:
            return 0
        if key > values[-1]:
            return len(values)
        return int(np.searchsorted(values, key, "left"))

    def right(self, us: int) -> int:
        """First row after `us`."""
        key, values = self._key(us // self.unit), self.values
        if not len(values) or key < values[0]:
            return 0
        if key >= values[-1]:
            return len(values)
        return int(np.searchsorted(values, key, "right"))

    def mask(self, lo: int, hi: int, cond: Condition) -> np.ndarray:
        """Rows [lo, hi) kept by an `in` or `neq` condition."""
        exact = [us // self.unit for us in map(_us, cond.values) if us % self.unit == 0]
        rows = self.values[lo:hi]
        if cond.op == "in":
            return np.isin(rows, exact)
        return rows != exact[0] if exact else np.ones(len(rows), dtype=bool)


def _sorted_codes(column: pa.ChunkedArray | pa.Array, values: Iterable[Any]) -> tuple[np.ndarray, list[Any]] | None:
    """An integer column as numpy over its buffer and the wanted values as its keys, sorted; for a
    dictionary column its codes, when the dictionary is sorted (so code order is value order) and
    the wanted values are keys of it. None for anything else (text, nulls)."""
    arr = _contiguous(column)
    if arr.null_count:
        return None
    if pa.types.is_dictionary(arr.type):
        words = arr.dictionary.to_pylist()
        if words != sorted(words):
            return None
        index = {w: i for i, w in enumerate(words)}
        wanted = sorted(index[v] for v in {str(v) for v in values} if v in index)
        arr = arr.indices
    elif pa.types.is_integer(arr.type):
        wanted = sorted({int(v) for v in values})
    else:
        return None
    dtype = np.dtype(f"{'int' if pa.types.is_signed_integer(arr.type) else 'uint'}{arr.type.bit_width}")
    info = np.iinfo(dtype)
    wanted = [dtype.type(v) for v in wanted if info.min <= v <= info.max]
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize), wanted


def _ascending(column: pa.ChunkedArray) -> bool:
    return len(column) < 2 or pc.all(pc.less_equal(column[:-1], column[1:])).as_py()


class _Piece(NamedTuple):
    """Rows of one type in time order, with its time columns ready for binary search."""

    table: pa.Table
    times: dict[str, _Times]
    texts: dict[str, pa.StringArray]


class ArrowView:
    """One view version, ready to answer the queries the router sends to it: per event type, its
    rows as pieces (single-chunk tables, each in time order), e.g. the record batches of a
    memory-mapped serving copy, then those of its deltas (with `unique_keys=False`: a key may
    then appear in several pieces, and every answer re-aggregates). Nothing here reads a piece whole: time filters are
    binary searches, masks run on the rows the searches keep. `scaled` names sum columns stored as
    int64 times 10^PRICE_SCALE; dictionary columns are compared by code and decoded on output."""

    def __init__(self, view: ViewDef, pieces: dict[str, list[pa.Table]], schema: pa.Schema,
                 scaled: Iterable[str] = (), unique_keys: bool = True) -> None:
        self.view = view
        self.unique_keys = unique_keys  # False when a key may repeat across pieces (a base and its deltas)
        self.schema = schema
        self.scaled = frozenset(scaled)
        time_cols = [c for c in view.time_columns if c in _TIME_KINDS]
        text_cols = [c for c in view.time_columns if c in _TEXT_TIMES]
        self.slices: dict[str, list[_Piece]] = {}
        for t, parts in pieces.items():
            kept = [_Piece(p, {c: _Times(p.column(c)) for c in time_cols},
                           {c: _contiguous(p.column(c)) for c in text_cols}) for p in parts if p.num_rows]
            if kept:
                self.slices[t] = kept

    @classmethod
    def from_table(cls, view: ViewDef, table: pa.Table, scaled: Iterable[str] = ()) -> "ArrowView":
        """A view over an in-memory table in any row order: each type's rows made one slice, sorted
        by time if they are not (binary search needs time order)."""
        table = contiguous_table(cls._decoded(table))
        types = table.column("type")
        time_cols = [c for c in view.time_columns if c in _TIME_KINDS]
        text_cols = [c for c in view.time_columns if c in _TEXT_TIMES]
        pieces = {}
        for t in EVENT_TYPES:
            is_t = pc.equal(types, t)  # a bitmap: no per-row index array for a view of 30M rows
            n = pc.sum(is_t).as_py() or 0
            if not n:
                continue
            lo = pc.index(types, t).as_py()
            contiguous = pc.all(is_t.slice(lo, n)).as_py()
            part = table.slice(lo, n) if contiguous else table.filter(is_t)
            if not all(_Times(part.column(c)).ascending() for c in time_cols) or not all(
                    _ascending(part.column(c)) for c in text_cols):
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
        types = set(self.slices)
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
    def _bounds(n: int, cond: Condition, left: Callable[[Any], int], right: Callable[[Any], int],
                v: list[Any]) -> tuple[int, int] | None:
        """[lo, hi) of a sorted column of `n` rows kept by a range condition on values `v`, or None
        if not a range; `left`/`right` place a value before/after its equals."""
        return {
            "eq": lambda: (left(v[0]), right(v[0])),
            "between": lambda: (left(v[0]), right(v[1])),
            "lt": lambda: (0, left(v[0])),
            "lte": lambda: (0, right(v[0])),
            "gt": lambda: (right(v[0]), n),
            "gte": lambda: (left(v[0]), n),
        }.get(cond.op, lambda: None)()

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

    def _filtered(self, query: Query, columns: list[str]) -> pa.Table | None:
        """The view rows `query` keeps, with only `columns`, dictionary columns decoded; None when a
        filter is left to SQL."""
        types = self._types(query.where)
        if types is None:
            return None
        parts = []
        for t in sorted(types):
            for piece in self.slices.get(t, ()):
                part = self._filter_piece(piece, query, columns)
                if part is NotImplemented:
                    return None
                if part is not None:
                    parts.append(self._project(part, columns))
        if not parts:
            return self._decoded(self.schema.empty_table().select(columns))
        return self._decoded(pa.concat_tables(parts) if len(parts) > 1 else parts[0])

    def _filter_piece(self, piece: _Piece, query: Query, columns: list[str]) -> Any:
        """Rows of one piece kept by the query's filters, with `columns` and those the filters left to
        masks read (None if none; NotImplemented for SQL)."""
        times, texts = piece.times, piece.texts
        lo, hi = 0, piece.table.num_rows
        rest = []
        for c in query.where:
            if c.col == "type":
                continue
            if c.col in times:
                ts = times[c.col]
                b = self._bounds(len(ts), c, ts.left, ts.right, [_us(x) for x in c.values])
            elif c.col in texts:
                col = texts[c.col]
                b = self._bounds(len(col), c, lambda x: _bisect(col, x, False), lambda x: _bisect(col, x, True),
                                 [str(x) for x in c.values])
            else:
                b = None
            if b is None:
                rest.append(c)
            else:
                lo, hi = max(lo, b[0]), min(hi, b[1])
        if hi <= lo:
            return None
        runs = self._dim_runs(piece, lo, hi, rest)
        if runs is not None:
            cond, rows = runs
            if not len(rows):
                return None
            rest = [c for c in rest if c is not cond]
        # only the columns read from here on: a take copies each column it is given
        names = set(piece.table.schema.names)
        table = piece.table.select([c for c in dict.fromkeys([*columns, *(c.col for c in rest)]) if c in names])
        part = table.take(rows) if runs is not None else table.slice(lo, hi - lo)
        # numpy masks over the columns' buffers where they apply (integer keys, dictionary codes):
        # a few µs each, where an Arrow compute call costs tens; Arrow for text and ordering
        masks: list[np.ndarray] = []
        arrow_mask = None
        for c in rest:
            if c.col in times:  # only `in` / `neq` are left on a time column
                masks.append(times[c.col].mask(lo, hi, c))
                continue
            column = _contiguous(part.column(c.col))
            codes = _sorted_codes(column, c.values) if c.op in ("eq", "in", "neq") else None
            if codes is not None:
                values, wanted = codes
                kept = values == wanted[0] if len(wanted) == 1 else np.isin(values, wanted)
                masks.append(~kept if c.op == "neq" else kept)
                continue
            try:
                m = self._mask(column, c)
            except NotImplementedError:
                return NotImplemented
            arrow_mask = m if arrow_mask is None else pc.and_(arrow_mask, m)
        mask = (np.logical_and.reduce(masks) if len(masks) > 1 else masks[0]) if masks else None
        if arrow_mask is None:
            # the kept rows' numbers, then one take: cheaper than packing a bitmap for the filter
            return part if mask is None else part.take(np.flatnonzero(mask))
        return part.filter(arrow_mask if mask is None else pc.and_(arrow_mask, pa.array(mask)))

    # A search costs ~5 µs of interpreter and numpy calls, a mask ~2.5 ns a row plus ~50 µs of calls
    # (the mask, then the filter): runs pay only when the searches number under 1/2000 of the rows
    # plus 20,000 (measured at 15M: 366 days x 3 values over a 20K-row slice took 1.26 ms by search,
    # 0.23 ms by mask; 3 values over a 1,654-row slice 15 µs by search, ~100 µs by mask)
    _ROWS_PER_SEARCH = 2000
    _MASK_FIXED_ROWS = 20_000

    def _dim_runs(self, piece: _Piece, lo: int, hi: int, rest: list[Condition]
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
        codes = _sorted_codes(piece.table.column(cond.col), cond.values)
        if codes is None:
            return None
        values, wanted = codes
        starts, ends = np.array([lo]), np.array([hi])
        if len(wanted) * self._ROWS_PER_SEARCH > hi - lo + self._MASK_FIXED_ROWS:
            return None
        if self.view.time_columns:
            time0 = self.view.time_columns[0]
            if time0 not in _STEP_US or time0 not in piece.times:
                return None
            times = piece.times[time0]
            step = _STEP_US[time0] // times.unit
            within = times.values[lo:hi]
            units = np.arange(within[0], within[-1] + step, step, dtype=within.dtype)
            if len(units) * len(wanted) * self._ROWS_PER_SEARCH > hi - lo + self._MASK_FIXED_ROWS:
                return None
            starts = np.searchsorted(within, units, "left") + lo
            ends = np.append(starts[1:], hi)
        runs = []
        for a, b in zip(starts.tolist(), ends.tolist()):
            seg = values[a:b]
            for w in wanted:
                left, right = np.searchsorted(seg, w, "left"), np.searchsorted(seg, w, "right")
                if right > left:
                    runs.append(np.arange(a + left, a + right))
        return cond, (np.concatenate(runs) if runs else np.empty(0, dtype=np.int64))

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

    def answer(self, query: Query) -> pa.Table | None:
        """The answer, or None when this shape is left to SQL."""
        aggs = query.aggregates
        needed = sorted({pair for a in aggs for pair in self._needs(a.func, a.col)})
        columns = list(dict.fromkeys([*query.group_by, *(c for c, _ in needed)]))
        rows = self._filtered(query, columns)
        if rows is None:
            return None
        if query.group_by and self._one_row_per_group(query):
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
            scale = 10 ** PRICE_SCALE if pairs[0][0] in self.scaled else None
            if item.func == "COUNT":
                out[item.name] = finish.count(first)
            elif item.func == "SUM":
                out[item.name] = finish.total(first, scale)
            elif item.func == "AVG":
                out[item.name] = finish.average(first, got[pairs[1]], scale)
            else:
                out[item.name] = first
        return finish.order_and_limit(pa.table(out), query)
