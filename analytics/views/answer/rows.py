"""A view's rows as the fast path reads them: pieces, their columns as numpy, the rows a filter keeps.

Owns the zero-copy access to a view version's Arrow data: `Piece` (one type's rows in time order,
e.g. a record batch of the memory-mapped serving copy, with its guard) with its sorted time columns
ready for binary search (`Times`: DATE as days, TIMESTAMP as microseconds, over the Arrow buffers;
`Marks`, values sampled at build, narrow a search to one checked window) and its
other columns as numpy over their buffers on first use (`Column`: integers, dates, doubles,
dictionary codes with their words, NULLs as a validity mask); `Rows`, the rows of a piece a query
keeps (a range or row numbers), and the numpy helpers that find them (integer comparisons,
small in-lists, runs turned into row numbers); and the kept rows' group keys and partials gathered
across pieces for `reaggregate` (`group_key`, `partial_values`). Nothing here reads a piece whole.
Must not choose views, aggregate, or touch files.
"""
from __future__ import annotations

import datetime as dt
from bisect import bisect_left, bisect_right
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analytics.query.model import Condition
from analytics.query.schema import EVENT_TYPES
from analytics.views.answer import reaggregate
from analytics.views.batch_guard import ServedBatch

EPOCH = dt.datetime(1970, 1, 1)
DAY_US = 86_400_000_000
TIME_KINDS = ("day", "week", "hour")  # stored as DATE or TIMESTAMP, monotone along the sort
TEXT_TIMES = ("minute",)  # 'YYYY-MM-DD HH:MM' text: fixed width, so its string order is time order


def us(value: Any) -> int:
    """A date or datetime as microseconds since the epoch (a DATE is its midnight, as in DuckDB)."""
    if isinstance(value, dt.datetime):
        return (value - EPOCH) // dt.timedelta(microseconds=1)
    return (value - EPOCH.date()).days * DAY_US


def bisect(column: pa.StringArray, value: str, right: bool, lo: int = 0, hi: int | None = None) -> int:
    """Where `value` goes in a sorted string column (left or right of equals), searching rows
    [lo, hi) and reading ~log2(n) cells instead of copying the column: Python compares code
    points, the order of DuckDB's byte-wise UTF-8 comparison."""
    hi = len(column) if hi is None else hi
    while lo < hi:
        mid = (lo + hi) // 2
        cell = column[mid].as_py()
        if cell < value or (right and cell == value):
            lo = mid + 1
        else:
            hi = mid
    return lo


UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}
# each integer dtype's (min, max), looked up per search instead of building np.iinfo (~2 µs)
LIMITS = {np.dtype(t): (int(np.iinfo(t).min), int(np.iinfo(t).max)) for t in
           (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)}
# a time unit of the finest time column a view sorts by, in microseconds (minute is text: no runs)
STEP_US = {"day": DAY_US, "hour": 3_600_000_000}


def contiguous(column: pa.ChunkedArray | pa.Array) -> pa.Array:
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
        combined.append(contiguous(columns[i]))
        columns[i] = None
    return pa.Table.from_arrays(combined, schema=schema)


Touch = Callable[[int, int], None]  # checks rows [lo, hi) of a column before they are read


class Marks(NamedTuple):
    """A sorted column's values at rows 0, every, 2*every, ... (`grid`) and at its last row
    (`last`), known without reading the column (a serving copy's registry record): a search
    reads one window of `every` rows, checked first by `touch`."""

    grid: Any  # np.ndarray of the column's dtype, or a list of text
    last: Any
    every: int
    touch: Touch

    def window(self, n: int, at: int) -> tuple[int, int]:
        """The rows [lo, hi) of a column of `n` rows that hold a search's answer when grid[at - 1] is
        before the value and grid[at] (if any) is not; checked by `touch`."""
        lo, hi = (at - 1) * self.every, min(at * self.every, n)
        self.touch(lo, hi)
        return lo, hi


def sorted_bound(values: np.ndarray, marks: Marks, key: np.integer, side: str) -> int:
    """`np.searchsorted(values, key, side)` over a sorted column, reading only the window of rows
    its `marks` pick (checked first by their `touch`): none when the key falls past the last value."""
    if key > marks.last or (side == "right" and key == marks.last):
        return len(values)
    at = int(np.searchsorted(np.asarray(marks.grid, dtype=values.dtype), key, side))
    if at == 0:  # at or before the first value
        return 0
    lo, hi = marks.window(len(values), at)
    return lo + int(np.searchsorted(values[lo:hi], key, side))


class Times:
    """A sorted DATE or TIMESTAMP column as integers of its own unit (days, microseconds, ...),
    sharing the Arrow buffer: searching it costs no copy of the view. Values in microseconds are
    placed as DuckDB compares them: a DATE is its midnight. With `marks` a search reads one window
    of rows, checked first; without, it reads the column's ends and ~log2(n) cells."""

    def __init__(self, column: pa.ChunkedArray | pa.Array, marks: Marks | None = None) -> None:
        arr = contiguous(column)
        if pa.types.is_date32(arr.type):
            self.unit = DAY_US
        elif pa.types.is_timestamp(arr.type) and arr.type.unit in UNIT_US:
            self.unit = UNIT_US[arr.type.unit]
        else:
            raise ValueError(f"no time index for a {arr.type} column")
        self.values = buffer_values(arr, numpy_dtype(arr.type))
        if marks is not None:
            dtype = self.values.dtype
            marks = marks._replace(grid=np.array(marks.grid, dtype=dtype), last=dtype.type(marks.last))
        self.marks = marks

    def __len__(self) -> int:
        return len(self.values)

    def ascending(self) -> bool:
        return bool(np.all(self.values[1:] >= self.values[:-1]))

    def _key(self, value: int) -> np.integer:
        # of the column's own dtype: a wider key makes numpy cast (copy, so read) the whole column
        lo, hi = LIMITS[self.values.dtype]
        return self.values.dtype.type(min(max(value, lo), hi))

    def _ends(self) -> tuple[Any, Any]:
        if self.marks is not None:
            return self.marks.grid[0], self.marks.last
        return self.values[0], self.values[-1]

    def _search(self, key: np.integer, side: str) -> int:
        if self.marks is None:
            return int(np.searchsorted(self.values, key, side))
        return sorted_bound(self.values, self.marks, key, side)

    def left(self, us: int) -> int:
        """First row at or after `us`."""
        key = self._key(-(-us // self.unit))
        if not len(self.values):
            return 0
        # the ends first: a piece wholly before or after the key is settled without a search
        first, last = self._ends()
        if key <= first:
            return 0
        if key > last:
            return len(self.values)
        return self._search(key, "left")

    def right(self, us: int) -> int:
        """First row after `us`."""
        key = self._key(us // self.unit)
        if not len(self.values):
            return 0
        first, last = self._ends()
        if key < first:
            return 0
        if key >= last:
            return len(self.values)
        return self._search(key, "right")

    def mask(self, lo: int, hi: int, cond: Condition) -> np.ndarray:
        """Rows [lo, hi) kept by an `in` or `neq` condition."""
        exact = [t // self.unit for t in map(us, cond.values) if t % self.unit == 0]
        rows = self.values[lo:hi]
        if cond.op == "in":
            return np.isin(rows, exact)
        return rows != exact[0] if exact else np.ones(len(rows), dtype=bool)


def range_bounds(n: int, cond: Condition, left: Callable[[Any], int], right: Callable[[Any], int],
                 v: list[Any]) -> tuple[int, int] | None:
    """[lo, hi) of a sorted column of `n` rows kept by a range condition on values `v`, or None
    if not a range; `left`/`right` place a value before/after its equals."""
    op = cond.op
    if op == "eq":
        return left(v[0]), right(v[0])
    if op == "between":
        return left(v[0]), right(v[1])
    if op == "lt":
        return 0, left(v[0])
    if op == "lte":
        return 0, right(v[0])
    if op == "gt":
        return right(v[0]), n
    if op == "gte":
        return left(v[0]), n
    return None


class Column(NamedTuple):
    """A column of a piece as numpy over its Arrow buffer (no copy): integers, dates and timestamps
    as their integers, floats as floats, a dictionary column as its codes with `words`, its values
    (sorted: code order is text order, else `words` is None and codes are not used)."""

    values: np.ndarray
    type: pa.DataType
    dictionary: bool
    words: tuple[str, ...] | None
    valid: np.ndarray | None  # False where NULL (the value there is undefined); None: no NULLs
    listed: tuple[str, ...] | None  # a dictionary's values in code order, sorted or not


def numpy_dtype(typ: pa.DataType) -> np.dtype | None:
    """The numpy dtype over an Arrow type's values buffer: integers, dates and timestamps as their
    integers, doubles; None for others (text, decimals)."""
    if pa.types.is_integer(typ):
        return np.dtype(f"{'int' if pa.types.is_signed_integer(typ) else 'uint'}{typ.bit_width}")
    if pa.types.is_date32(typ):
        return np.dtype(np.int32)
    if pa.types.is_timestamp(typ) or pa.types.is_date64(typ):
        return np.dtype(np.int64)
    if pa.types.is_floating(typ) and typ.bit_width == 64:
        return np.dtype(np.float64)
    return None


def buffer_values(arr: pa.Array, dtype: np.dtype) -> np.ndarray:
    """The array's values as numpy straight over its data buffer: no copy, and no pandas
    (`Array.to_numpy` would import it: ~0.25 s of a cold process)."""
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def numpy_column(arr: pa.Array) -> Column | None:
    """`arr` as a `Column`; None for text and decimals."""
    typ, words, listed, dictionary = arr.type, None, None, pa.types.is_dictionary(arr.type)
    if dictionary:
        if arr.dictionary.null_count:
            return None
        listed = tuple(arr.dictionary.to_pylist())
        words = listed if list(listed) == sorted(listed) else None
        typ, arr = typ.value_type, arr.indices
    dtype = numpy_dtype(arr.type)
    if dtype is None:
        return None
    values = buffer_values(arr, dtype)
    valid = None
    if arr.null_count:
        bits = np.frombuffer(arr.buffers()[0], dtype=np.uint8)
        valid = np.unpackbits(bits, count=arr.offset + len(arr), bitorder="little")[arr.offset:].astype(bool)
    return Column(values, typ, dictionary, words, valid, listed)


ORDERING: dict[str, Callable[..., np.ndarray]] = {
    "lt": np.less, "lte": np.less_equal, "gt": np.greater, "gte": np.greater_equal,
    "between": lambda v, lo, hi: (v >= lo) & (v <= hi),
}


def integers(col: Column, values: Iterable[Any]) -> bool:
    """Whether an integer column is compared with integers that int64 holds (an ordering in numpy)."""
    return (not col.dictionary and pa.types.is_integer(col.type)
            and all(type(v) is int and -2**63 <= v < 2**63 for v in values))


def wanted_keys(col: Column, values: Iterable[Any], ordered: bool = True) -> list[Any] | None:
    """The column's keys of `values` (codes for a dictionary), sorted, of its dtype; values it cannot
    hold match nothing. None when it is not compared by integers: text, or (`ordered`: the keys
    must sort as the values do, as a binary search needs) a dictionary not in text order."""
    if col.dictionary:
        words = col.words if ordered else col.listed
        if words is None:
            return None
        index = {w: i for i, w in enumerate(words)}
        wanted = sorted(index[v] for v in {str(v) for v in values} if v in index)
    elif pa.types.is_integer(col.type):
        wanted = sorted({int(v) for v in values})
    else:
        return None
    lo, hi = LIMITS[col.values.dtype]
    return [col.values.dtype.type(v) for v in wanted if lo <= v <= hi]


def isin(values: np.ndarray, wanted: list[Any]) -> np.ndarray:
    """Rows of `values` equal to one of `wanted`: a comparison each for a few (np.isin's set-up
    costs ~20 µs), np.isin for more."""
    if len(wanted) > 4:
        return np.isin(values, wanted)
    kept = values == wanted[0]
    for w in wanted[1:]:
        kept |= values == w
    return kept


def ranges(firsts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
    """The row numbers of the runs [firsts[i], lasts[i]), in order, without a Python loop."""
    lengths = lasts - firsts
    kept = lengths > 0
    firsts, lengths = firsts[kept], lengths[kept]
    if not len(lengths):
        return np.empty(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(firsts - (ends - lengths), lengths) + np.arange(ends[-1])


def ascending(column: pa.ChunkedArray) -> bool:
    return len(column) < 2 or pc.all(pc.less_equal(column[:-1], column[1:])).as_py()


def text_bound(column: pa.StringArray, marks: Marks | None, value: str, right: bool) -> int:
    """`bisect` over a sorted text column, within the window `marks` picks when there are marks."""
    n = len(column)
    if marks is None or not n:
        return bisect(column, value, right)
    first, last = marks.grid[0], marks.last
    if value < first or (value == first and not right):
        return 0
    if value > last or (value == last and right):
        return n
    at = (bisect_right if right else bisect_left)(marks.grid, value)
    lo, hi = marks.window(n, at)
    return bisect(column, value, right, lo, hi)


Guard = Callable[..., None]  # (columns, lo, hi, index=None): checks those bytes before they are read


class Piece(NamedTuple):
    """Rows of one type in time order, with its time columns ready for binary search and its columns
    as numpy, made on first use (`column`). `guard`, when given, must be called with the columns
    and rows about to be read (a memory-mapped serving copy checks them: `views.batch_guard`)."""

    table: pa.Table
    times: dict[str, Times]
    texts: dict[str, pa.StringArray]
    columns: dict[str, Column | None]
    guard: Guard | None = None
    marks: dict[str, Marks] | None = None  # per sorted column with marks: its search windows

    def partial(self, name: str) -> Column | None:
        """The column `name` as numpy, NULLs marked; None when the piece lacks it or it is not numeric."""
        if name not in self.columns:
            # a race only makes two threads build the same zero-copy view
            self.columns[name] = (numpy_column(contiguous(self.table.column(name)))
                                  if name in self.table.schema.names else None)
        return self.columns[name]

    def column(self, name: str) -> Column | None:
        """The column `name` as numpy if it holds no NULL (a key or a filter's column), else None."""
        col = self.partial(name)
        return col if col is not None and col.valid is None else None


def piece_of(part: pa.Table | ServedBatch, time_cols: list[str], text_cols: list[str]) -> Piece:
    """A piece over a table, or over a serving copy's batch: its time searches then narrowed by the
    batch's marks to windows its guard checks."""
    if not isinstance(part, ServedBatch):
        return Piece(part, {c: Times(part.column(c)) for c in time_cols},
                     {c: contiguous(part.column(c)) for c in text_cols}, {})
    table, guard = part.table, part.guard
    marks: dict[str, Marks] = {}
    if guard is not None:
        grid_len = -(-table.num_rows // part.mark_rows)
        for c, values in part.marks.items():
            marks[c] = Marks(values[:grid_len], values[-1], part.mark_rows, lambda lo, hi, c=c: guard([c], lo, hi))
    return Piece(table, {c: Times(table.column(c), marks.get(c)) for c in time_cols},
                 {c: contiguous(table.column(c)) for c in text_cols}, {}, guard, marks)


class Rows(NamedTuple):
    """The rows of a piece a query keeps: [lo, hi), or the row numbers `index`; `arrow` the
    conditions left for Arrow to mask them by (text, ordering comparisons on a dictionary)."""

    lo: int
    hi: int
    index: np.ndarray | None
    arrow: list[Condition]

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else self.hi - self.lo

    def of(self, values: np.ndarray) -> np.ndarray:
        return values[self.index] if self.index is not None else values[self.lo:self.hi]


def run_starts(column: pa.StringArray, at: np.ndarray) -> np.ndarray | None:
    """For rows `at` of a sorted text column, the first row of each one's run of equal
    values, reading only the span the rows cover; None unless that span's values are all of one
    width (the minute's 'YYYY-MM-DD HH:MM' always is), compared as fixed-width bytes."""
    if not pa.types.is_string(column.type):
        return None
    if not len(at):
        return at
    a, b = int(at.min()), int(at.max()) + 1
    span = column.slice(a, b - a)
    offsets = np.frombuffer(span.buffers()[1], dtype=np.int32, count=len(span) + 1, offset=span.offset * 4)
    width = int(offsets[1] - offsets[0])
    if span.null_count or width <= 0 or int(offsets[-1] - offsets[0]) != width * len(span):
        return None
    data = np.frombuffer(span.buffers()[2], dtype=np.uint8, count=width * len(span), offset=int(offsets[0]))
    cells = data.view(f"S{width}")
    new_run = np.empty(len(cells), dtype=bool)
    new_run[0] = True
    np.not_equal(cells[1:], cells[:-1], out=new_run[1:])
    first = np.flatnonzero(new_run)
    return a + first[np.cumsum(new_run) - 1][at - a]


def group_key(name: str, selections: list[tuple[str, Piece, Rows]], own_runs: bool = False) -> reaggregate.Key | None:
    """Group key `name` over the kept rows as integers; None if it is not (text, another
    dictionary in some piece). `own_runs`: no two kept rows share a minute (each is its run)."""
    if name == "type":  # one type a piece: its code in the sorted names, no column read
        words = tuple(sorted(EVENT_TYPES))
        values = np.concatenate([np.full(len(rows), words.index(t), dtype=np.int8) for t, _, rows in selections])
        return reaggregate.vocabulary_key(name, values, pa.string(), words)
    if name in TEXT_TIMES:
        # one piece sorted by its minute text: a row's key is the first row of its minute's run,
        # so row numbers are in text order and the rows of one minute (one per other key of the
        # view: country, publisher, ...) fold into one group
        if len(selections) != 1 or name not in selections[0][1].texts:
            return None
        _, piece, rows = selections[0]
        at = rows.index if rows.index is not None else np.arange(rows.lo, rows.hi)
        starts = at if own_runs else run_starts(piece.texts[name], at)
        return None if starts is None else reaggregate.Key(name, starts, pa.string(), 1, piece.texts[name])
    cols = [piece.column(name) for _, piece, _ in selections]
    first = cols[0]
    if any(c is None or c.dictionary != first.dictionary for c in cols):
        return None
    if first.dictionary and (first.words is None or any(c.words != first.words for c in cols)):
        # each type's file has its own dictionary (or one not in text order): codes mapped
        # into the sorted union of the words, so that code order is text order
        words = tuple(sorted(set().union(*(c.listed for c in cols))))
        at = {w: i for i, w in enumerate(words)}
        codes = [np.array([at[w] for w in c.listed], dtype=np.int32)[rows.of(c.values)]
                 for c, (_, _, rows) in zip(cols, selections)]
        return reaggregate.vocabulary_key(name, np.concatenate(codes), first.type, words)
    step = 1
    if name in STEP_US and pa.types.is_timestamp(first.type) and first.type.unit in UNIT_US:
        step = STEP_US[name] // UNIT_US[first.type.unit]
    elif name == "week" and pa.types.is_date32(first.type):
        step = 7  # always a Monday: days 7 apart
    values = [rows.of(c.values) for c, (_, _, rows) in zip(cols, selections)]
    values = values[0] if len(values) == 1 else np.concatenate(values)
    if first.dictionary:
        return reaggregate.vocabulary_key(name, values, first.type, first.words)
    return reaggregate.Key(name, values, first.type, step)


def partial_values(name: str, how: str, selections: list[tuple[str, Piece, Rows]],
                   schema: pa.Schema) -> reaggregate.Measure | None:
    """Partial `name` over the kept rows, its NULLs (and the rows of a type without it, such as
    a price on clicks) marked not valid; None where its type needs Arrow (a float sum, text,
    decimals) or it is NULL everywhere."""
    cols = [piece.partial(name) for _, piece, _ in selections]
    typ = next((c.type for c in cols if c is not None), None)
    if typ is None and name in schema.names:  # no kept piece holds it: all NULL, typed as the view's
        typ = schema.field(name).type
    for c, (_, piece, _) in zip(cols, selections):
        if (c is None and name in piece.table.schema.names) or (c is not None and (c.dictionary or c.type != typ)):
            return None  # there but not numeric, or of another type in another piece
    if typ is None or (how == "sum" and not pa.types.is_integer(typ)):
        return None
    if all(c is not None and c.valid is None for c in cols):
        parts = [rows.of(c.values) for c, (_, _, rows) in zip(cols, selections)]
        values = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return reaggregate.Measure(values.astype(np.int64, copy=False) if how == "sum" else values, how, typ)
    dtype = np.dtype(np.int64) if how == "sum" else numpy_dtype(typ)
    if dtype is None:
        return None
    neutral = reaggregate.neutral(how, dtype)
    values, valid = [], []
    for c, (_, _, rows) in zip(cols, selections):
        if c is None:
            values.append(np.full(len(rows), neutral, dtype=dtype))
            valid.append(np.zeros(len(rows), dtype=bool))
            continue
        v = rows.of(c.values).astype(dtype, copy=False)
        ok = np.ones(len(v), dtype=bool) if c.valid is None else rows.of(c.valid)
        values.append(v if c.valid is None else np.where(ok, v, neutral))
        valid.append(ok)
    return reaggregate.Measure(np.concatenate(values), how, typ, np.concatenate(valid))
