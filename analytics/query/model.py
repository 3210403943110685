"""The query model: parse and validate an analyst's JSON query into a typed, immutable `Query`.

Owns the grammar (select / from / where / group_by / order_by / limit), every validation
message, the coercion of values to each column's baseline type (exactly as DuckDB casts a
string literal, in UTC), and the canonical form used as a cache key. Everything downstream
(compiler, router, runner) trusts a `Query` and never re-validates. Must not build SQL or
touch data: the only DuckDB it uses is an in-memory connection that casts literal values (a
whole `in` list in one statement). Bounds what one query may ask for: at most `MAX_IN_VALUES`
values, a `limit` within BIGINT, error messages that quote at most `_SHOW` characters of a value.
"""
from __future__ import annotations

import datetime as dt
import gc
import json
import re
import threading
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Union

import duckdb

from analytics.query.schema import AGGREGATES, COLUMNS, EVENT_TYPES, Column

OPS: tuple[str, ...] = ("eq", "neq", "in", "between", "lt", "lte", "gt", "gte")
# Values one query may hold in its `in` lists, all conditions together: a 1M-value list is parsed,
# coerced and executed in a few hundred MB (compiler.predicate binds it as one list); past this the
# analyst is asked to split the query rather than the machine asked to hold it.
MAX_IN_VALUES = 1_000_000
MAX_LIMIT = 2**63 - 1  # DuckDB's LIMIT is a BIGINT
MAX_DEPTH = 100  # JSON nesting a query file may have (a query needs 5 levels)
_SHOW = 80  # characters of an offending value quoted in a message
_CAST_CHUNK = 65_536  # values cast by DuckDB per statement
QUERY_KEYS: tuple[str, ...] = ("select", "from", "where", "group_by", "order_by", "limit")
Value = Union[int, float, str, dt.date, dt.datetime]


class QueryError(ValueError):
    """A query that does not follow the grammar; the message names what and where."""


@dataclass(frozen=True)
class Agg:
    func: str  # upper-case, one of AGGREGATES
    col: str  # a column name, or "*" for COUNT(*)

    @property
    def name(self) -> str:
        return f"{self.func}({self.col})"


SelectItem = Union[str, Agg]


@dataclass(frozen=True)
class Condition:
    col: str
    op: str
    values: tuple[Value, ...]  # coerced; one value except for `in` (1+) and `between` (2)
    raw: tuple[str, ...]  # the values as the analyst wrote them, as strings (baseline binds these)


@dataclass(frozen=True)
class OrderItem:
    name: str  # an output name: a selected column or an aggregate such as COUNT(*)
    desc: bool = False


@dataclass(frozen=True)
class Query:
    select: tuple[SelectItem, ...]
    where: tuple[Condition, ...] = ()
    group_by: tuple[str, ...] = ()
    order_by: tuple[OrderItem, ...] = ()
    limit: int | None = None

    @property
    def output_names(self) -> list[str]:
        return [item.name if isinstance(item, Agg) else item for item in self.select]

    @property
    def aggregates(self) -> list[Agg]:
        return [item for item in self.select if isinstance(item, Agg)]

    @property
    def is_aggregate(self) -> bool:
        return bool(self.group_by) or bool(self.aggregates)

    def canonical(self) -> str:
        """A stable text for equal queries: `where` order and value spelling do not matter."""
        return self._canonical

    def __hash__(self) -> int:
        # the plan and shape memos look a query up several times per answer: hashed once
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash((self.select, self.where, self.group_by, self.order_by, self.limit))

    def __getstate__(self) -> dict[str, Any]:
        # a string's hash is salted per process: a pickled query hashes afresh where it lands
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    @cached_property
    def _canonical(self) -> str:
        # computed once per query object: the runner hashes it for the cache key and the report
        where = sorted(
            json.dumps([c.col, c.op, [_canonical_value(v) for v in
                                      (sorted(set(c.values), key=_canonical_value) if c.op == "in" else c.values)]])
            for c in self.where
        )
        return json.dumps({
            "select": [[i.func, i.col] if isinstance(i, Agg) else i for i in self.select],
            "where": where,
            "group_by": sorted(self.group_by),
            "order_by": [[o.name, o.desc] for o in self.order_by],
            "limit": self.limit,
        }, sort_keys=True)


def _canonical_value(v: Value) -> str:
    return v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else repr(v)


def _allowed(names: Any) -> str:
    return ", ".join(names)


def _show(value: Any, as_json: bool = False) -> str:
    """`value` for a one-line message, cut to `_SHOW` characters (a query may hold megabytes)."""
    try:
        text = json.dumps(value, ensure_ascii=False) if as_json else repr(value)
    except (ValueError, TypeError, RecursionError):  # an int too long to print, a deep nest
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _SHOW else text[:_SHOW - 3] + "..."


def _column(name: Any, where: str) -> Column:
    if not isinstance(name, str) or name not in COLUMNS:
        raise QueryError(f"{where}: unknown column {_show(name)}; allowed: {_allowed(COLUMNS)}")
    return COLUMNS[name]


def _parse_select_item(item: Any, pos: int) -> SelectItem:
    where = f"select[{pos}]"
    if isinstance(item, str):
        _column(item, where)
        return item
    if not isinstance(item, dict) or len(item) != 1:
        raise QueryError(f"{where}: expected a column name or an aggregate like {{\"SUM\": \"bid_price\"}}, "
                         f"got {_show(item)}")
    (func, col), = item.items()
    func_u = func.upper() if isinstance(func, str) else func
    if func_u not in AGGREGATES:
        raise QueryError(f"{where}: unknown aggregate {_show(func)}; allowed: {_allowed(AGGREGATES)}")
    if col == "*":
        if func_u != "COUNT":
            raise QueryError(f"{where}: {func_u}(*) is not allowed; only COUNT takes '*'")
        return Agg("COUNT", "*")
    column = _column(col, where)
    if func_u in ("SUM", "AVG") and not column.numeric:
        numeric = [c.name for c in COLUMNS.values() if c.numeric]
        raise QueryError(f"{where}: {func_u} needs a numeric column, {col!r} is not; "
                         f"numeric columns: {_allowed(numeric)}")
    return Agg(func_u, col)


_cast_lock = threading.Lock()
_cast_con: duckdb.DuckDBPyConnection | None = None
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?")
_SMALL_INT = re.compile(r"-?\d{1,9}")


def _duckdb_cast(type_name: str, texts: list[str]) -> list[Any]:
    """Cast each text as DuckDB casts a string literal to `type_name`, in a UTC session, in one
    statement; None where it is not a valid `type_name`."""
    global _cast_con
    with _cast_lock:
        if _cast_con is None:
            _cast_con = duckdb.connect(":memory:")
            _cast_con.execute("SET TimeZone = 'UTC'")
            _cast_con.execute("SET threads = 1")  # one thread: rows come back in the list's order
        # the target type comes from the allow-list in schema.COLUMNS, never from the query
        rows = _cast_con.execute(f"SELECT TRY_CAST(v AS {type_name}) FROM (SELECT unnest(CAST(? AS VARCHAR[])) AS v)",
                                 [texts]).fetchall()
    return [r[0] for r in rows]


def _plain_value(column: Column, text: str) -> Value | None:
    """The value of a plainly written `text` (any text for a text column, an ISO date, an ISO
    timestamp without fraction or zone, read as UTC like the baseline's session, an integer of up to 9
    digits) without asking DuckDB: the first query of a process need not open a connection to read
    a week. None when DuckDB must decide."""
    if column.kind in ("str", "minute"):
        return text
    if column.baseline_type == "TIMESTAMPTZ" and _ISO_TIMESTAMP.fullmatch(text):
        try:
            return dt.datetime.fromisoformat(text)
        except ValueError:
            return None  # e.g. 24:00:00 or Feb 30: DuckDB decides and words the error
    if column.kind == "date" and _ISO_DATE.fullmatch(text):
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            return None  # let DuckDB decide and word the error the same way as for any other text
    if column.kind == "int" and _SMALL_INT.fullmatch(text):
        return int(text)
    return None


# what DuckDB hands back for each baseline type; anything else (DuckDB renders a date Python cannot
# hold, such as one BC, as text) is out of range
_PY_TYPES: dict[str, type] = {"DATE": dt.date, "TIMESTAMPTZ": dt.datetime, "INTEGER": int, "BIGINT": int,
                              "DOUBLE": float}


def _checked(column: Column, text: str, value: Any) -> Value:
    if value is None:
        raise QueryError(f"value {_show(text)} for column {column.name!r} is not a valid {column.baseline_type}")
    if not isinstance(value, _PY_TYPES[column.baseline_type]):
        raise QueryError(f"value {_show(text)} for column {column.name!r} is out of range for {column.baseline_type}")
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        # lake and views store UTC-naive timestamps
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def _cast_one(column: Column, text: str) -> Any:
    try:
        return _duckdb_cast(column.baseline_type, [text])[0]
    except (duckdb.Error, ValueError, OverflowError) as exc:  # e.g. a date Python cannot hold
        raise QueryError(f"value {_show(text)} for column {column.name!r} is out of range for "
                         f"{column.baseline_type}: {_show(str(exc))}") from None


def _coerce_all(col: str, texts: tuple[str, ...]) -> tuple[Value, ...]:
    """Every text of a condition as a value of the column, exactly as DuckDB casts a string literal;
    the texts DuckDB must decide are cast together, `_CAST_CHUNK` per statement."""
    column = COLUMNS[col]
    values: list[Any] = [_plain_value(column, t) for t in texts]
    pending = [i for i, v in enumerate(values) if v is None]
    for start in range(0, len(pending), _CAST_CHUNK):
        chunk = pending[start:start + _CAST_CHUNK]
        try:
            cast = _duckdb_cast(column.baseline_type, [texts[i] for i in chunk])
        except (duckdb.Error, ValueError, OverflowError):
            cast = [_cast_one(column, texts[i]) for i in chunk]  # one by one, to name the value at fault
        for i, v in zip(chunk, cast):
            values[i] = _checked(column, texts[i], v)
    return tuple(values)


@lru_cache(maxsize=65536)
def _coerce_text(col: str, text: str) -> Value:
    """One value, remembered: the same few values recur across a file of queries."""
    return _coerce_all(col, (text,))[0]


def _value_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QueryError(f"{where}: a value must be a string or a number, got {_show(value, as_json=True)}")
    if isinstance(value, float) and value != value:
        raise QueryError(f"{where}: NaN is not a value")
    try:
        return str(value)
    except ValueError:  # an integer past Python's 4300-digit printing limit: no column holds it
        raise QueryError(f"{where}: a number with more than 4300 digits is out of range for every column") from None


def _parse_condition(cond: Any, pos: int, budget: int) -> Condition:
    """Condition `pos` of `where`; it may hold at most `budget` values (what `MAX_IN_VALUES` leaves)."""
    where = f"where[{pos}]"
    if not isinstance(cond, dict):
        raise QueryError(f"{where}: expected an object {{\"col\", \"op\", \"val\"}}, got {_show(cond)}")
    extra = set(cond) - {"col", "op", "val"}
    missing = {"col", "op", "val"} - set(cond)
    if extra or missing:
        raise QueryError(f"{where}: expected keys col, op, val; missing {sorted(missing)}, unknown {sorted(extra)}")
    column = _column(cond["col"], where)
    op = cond["op"]
    if op not in OPS:
        raise QueryError(f"{where}: unknown op {_show(op)} for column {column.name!r}; allowed: {_allowed(OPS)}")
    val = cond["val"]
    if op == "in":
        if not isinstance(val, list) or not val:
            raise QueryError(f"{where}: 'in' on {column.name!r} needs a non-empty list of values, "
                             f"got {_show(val, as_json=True)}")
        if len(val) > budget:
            raise QueryError(f"{where}: 'in' on {column.name!r} holds {len(val):,} values; a query may hold at most "
                             f"{MAX_IN_VALUES:,} in all (split it into several queries)")
        items = val
    elif op == "between":
        if not isinstance(val, list) or len(val) != 2:
            raise QueryError(f"{where}: 'between' on {column.name!r} needs exactly two values [low, high], "
                             f"got {_show(val, as_json=True)}")
        items = val
    else:
        if isinstance(val, list):
            raise QueryError(f"{where}: {op!r} on {column.name!r} takes one value, got a list (use 'in' for several)")
        items = [val]
    raw = tuple(_value_text(v, f"{where} ({column.name})") for v in items)
    try:
        values = (tuple(_coerce_text(column.name, t) for t in raw) if len(raw) <= 2
                  else _coerce_all(column.name, raw))
    except QueryError as exc:
        raise QueryError(f"{where}: {exc}") from None
    return Condition(column.name, op, values, raw)


def _parse_order_item(item: Any, pos: int, outputs: dict[str, str]) -> OrderItem:
    where = f"order_by[{pos}]"
    if isinstance(item, str):
        item = {"col": item}
    if not isinstance(item, dict) or "col" not in item or set(item) - {"col", "dir"}:
        raise QueryError(f"{where}: expected {{\"col\": <selected name>, \"dir\": \"asc\"|\"desc\"}}, "
                         f"got {_show(item)}")
    name = item["col"]
    key = _output_key(name) if isinstance(name, str) else None
    if key not in outputs:
        raise QueryError(f"{where}: {_show(name)} is not in the select list; "
                         f"order_by can use: {_allowed(outputs.values())}")
    direction = item.get("dir", "asc")
    if not isinstance(direction, str) or direction.lower() not in ("asc", "desc"):
        raise QueryError(f"{where}: dir must be 'asc' or 'desc', got {_show(direction)}")
    return OrderItem(outputs[key], direction.lower() == "desc")


def _output_key(name: str) -> str:
    """`sum(bid_price)` and `SUM(bid_price)` name the same output; column names stay exact."""
    m = re.fullmatch(r"\s*([A-Za-z]+)\s*\(\s*([A-Za-z_*]+)\s*\)\s*", name)
    return f"{m.group(1).upper()}({m.group(2)})" if m else name


def parse_query(obj: Any) -> Query:
    """Validate a JSON query (already decoded) and return the typed `Query`.

    Raises `QueryError` naming the offending part: which key, column, op or value, and what
    is allowed instead.
    """
    if not isinstance(obj, dict):
        raise QueryError(f"a query must be a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - set(QUERY_KEYS)
    if unknown:
        raise QueryError(f"unknown key(s) {_show(sorted(unknown))}; allowed: {_allowed(QUERY_KEYS)}")
    if obj.get("from", "events") != "events":
        raise QueryError(f"from: unknown table {_show(obj['from'])}; the only table is 'events'")

    select_raw = obj.get("select")
    if not isinstance(select_raw, list) or not select_raw:
        raise QueryError("select: needs a non-empty list of columns and aggregates")
    select = tuple(_parse_select_item(item, i) for i, item in enumerate(select_raw))
    names = [i.name if isinstance(i, Agg) else i for i in select]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise QueryError(f"select: {', '.join(dupes)} selected more than once")

    where_raw = obj.get("where", [])
    if where_raw is None:
        where_raw = []
    if not isinstance(where_raw, list):
        raise QueryError(f"where: expected a list of conditions, got {type(where_raw).__name__}")
    conditions = []
    budget = MAX_IN_VALUES
    for i, c in enumerate(where_raw):
        conditions.append(_parse_condition(c, i, budget))
        budget -= len(conditions[-1].values)
    where = tuple(conditions)

    group_raw = obj.get("group_by", [])
    if group_raw is None:
        group_raw = []
    if not isinstance(group_raw, list):
        raise QueryError(f"group_by: expected a list of column names, got {type(group_raw).__name__}")
    group_by = tuple(_column(g, f"group_by[{i}]").name for i, g in enumerate(group_raw))
    if len(set(group_by)) != len(group_by):
        raise QueryError("group_by: a column is listed more than once")

    has_aggs = any(isinstance(i, Agg) for i in select)
    if has_aggs or group_by:
        loose = [i for i in select if isinstance(i, str) and i not in group_by]
        if loose:
            raise QueryError(
                f"select: column(s) {', '.join(map(repr, loose))} neither grouped nor aggregated; "
                f"add them to group_by or wrap them in an aggregate")

    outputs = {_output_key(n): n for n in names}
    order_raw = obj.get("order_by", [])
    if order_raw is None:
        order_raw = []
    if not isinstance(order_raw, list):
        raise QueryError(f"order_by: expected a list of {{\"col\", \"dir\"}}, got {type(order_raw).__name__}")
    order_by = tuple(_parse_order_item(o, i, outputs) for i, o in enumerate(order_raw))

    limit = obj.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_LIMIT):
        raise QueryError(f"limit: must be a positive integer no larger than {MAX_LIMIT} (2^63-1), "
                         f"got {_show(limit, as_json=True)}")

    return Query(select=select, where=where, group_by=group_by, order_by=order_by, limit=limit)


def _line_col(text: str | bytes, offset: int) -> str:
    nl = "\n" if isinstance(text, str) else b"\n"
    line = text.count(nl, 0, offset) + 1
    return f"line {line} column {offset - (text.rfind(nl, 0, offset) + 1) + 1}"


_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep(text: str) -> int | None:
    """Offset of the first bracket nested deeper than `MAX_DEPTH` (strings skipped), if any."""
    depth = 0
    for m in _BRACKETS.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return m.start()
        elif tok in "]}":
            depth -= 1
    return None


def load_queries(path: str) -> list[Any]:
    """Read a query file: a JSON list of queries (or one query object), UTF-8. Raises QueryError naming
    the file, where in it, and what is allowed."""
    where = f"query file {str(path)!r}"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise QueryError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise QueryError(f"{where} is a directory; expected a JSON file holding a list of queries") from None
    except OSError as exc:
        raise QueryError(f"{where} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QueryError(f"{where} is not UTF-8 text: byte 0x{data[exc.start]:02x} at {_line_col(data, exc.start)} "
                         f"(offset {exc.start}); save it as UTF-8") from None
    del data
    collecting = gc.isenabled()
    gc.disable()  # JSON builds no cycles; collecting while it builds 500K queries made loading superlinear
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QueryError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        at = _too_deep(text)
        pos = f" at {_line_col(text, at)}" if at is not None else ""
        raise QueryError(f"{where} nests JSON deeper than {MAX_DEPTH} levels{pos}; a query needs at most 5") from None
    except ValueError:  # Python reads integers of at most 4300 digits
        m = re.search(r"\d{4301,}", text)
        pos = f" at {_line_col(text, m.start())}" if m else ""
        raise QueryError(f"{where} holds a number with more than 4300 digits{pos}; no column holds one") from None
    except MemoryError:
        raise QueryError(f"{where} ({len(text):,} characters) does not fit in memory as JSON") from None
    finally:
        if collecting:
            gc.enable()
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise QueryError(f"{where} must hold a JSON list of queries, got {type(parsed).__name__}")
    if not parsed:
        raise QueryError(f"{where} holds no queries")
    return parsed


def types_selected(where: tuple[Condition, ...]) -> set[str]:
    """The event types the `type` equality and in-list filters of `where` allow."""
    types = set(EVENT_TYPES)
    for c in where:
        if c.col == "type" and c.op in ("eq", "in"):
            types &= {str(v) for v in c.values}
    return types
