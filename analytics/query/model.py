"""The query model: parse and validate an analyst's JSON query into a typed, immutable `Query`.

Owns the grammar (select / from / where / group_by / order_by / limit), every validation
message, the coercion of values to each column's baseline type (exactly as DuckDB casts a
string literal, in UTC), and the canonical form used as a cache key. Everything downstream
(compiler, router, runner) trusts a `Query` and never re-validates. Must not build SQL or
touch data: the only DuckDB it uses is an in-memory connection that casts literal values.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

import duckdb

from analytics.query.schema import AGGREGATES, COLUMNS, Column

OPS: tuple[str, ...] = ("eq", "neq", "in", "between", "lt", "lte", "gt", "gte")
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


def _column(name: Any, where: str) -> Column:
    if not isinstance(name, str) or name not in COLUMNS:
        raise QueryError(f"{where}: unknown column {name!r}; allowed: {_allowed(COLUMNS)}")
    return COLUMNS[name]


def _parse_select_item(item: Any, pos: int) -> SelectItem:
    where = f"select[{pos}]"
    if isinstance(item, str):
        _column(item, where)
        return item
    if not isinstance(item, dict) or len(item) != 1:
        raise QueryError(f"{where}: expected a column name or an aggregate like {{\"SUM\": \"bid_price\"}}, got {item!r}")
    (func, col), = item.items()
    func_u = func.upper() if isinstance(func, str) else func
    if func_u not in AGGREGATES:
        raise QueryError(f"{where}: unknown aggregate {func!r}; allowed: {_allowed(AGGREGATES)}")
    if col == "*":
        if func_u != "COUNT":
            raise QueryError(f"{where}: {func_u}(*) is not allowed; only COUNT takes '*'")
        return Agg("COUNT", "*")
    column = _column(col, where)
    if func_u in ("SUM", "AVG") and not column.numeric:
        numeric = [c.name for c in COLUMNS.values() if c.numeric]
        raise QueryError(f"{where}: {func_u} needs a numeric column, {col!r} is not; numeric columns: {_allowed(numeric)}")
    return Agg(func_u, col)


_cast_lock = threading.Lock()
_cast_con: duckdb.DuckDBPyConnection | None = None
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _duckdb_cast(type_name: str, text: str) -> Any:
    """Cast `text` as DuckDB casts a string literal to `type_name`, in a UTC session."""
    global _cast_con
    with _cast_lock:
        if _cast_con is None:
            _cast_con = duckdb.connect(":memory:")
            _cast_con.execute("SET TimeZone = 'UTC'")
        # the target type comes from the allow-list in schema.COLUMNS, never from the query
        return _cast_con.execute(f"SELECT TRY_CAST(CAST(? AS VARCHAR) AS {type_name})", [text]).fetchone()[0]


@lru_cache(maxsize=65536)
def _coerce_text(col: str, text: str) -> Value:
    column = COLUMNS[col]
    if column.kind in ("str", "minute"):
        return text
    if column.kind == "date" and _ISO_DATE.fullmatch(text):
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            pass  # let DuckDB decide and word the error the same way as for any other text
    if column.kind == "int" and re.fullmatch(r"-?\d{1,9}", text):
        return int(text)
    try:
        value = _duckdb_cast(column.baseline_type, text)
    except (duckdb.Error, ValueError, OverflowError) as exc:  # e.g. a date Python cannot hold
        raise QueryError(f"value {text!r} for column {col!r} is out of range for {column.baseline_type}: {exc}") from None
    if value is None:
        raise QueryError(f"value {text!r} for column {col!r} is not a valid {column.baseline_type}")
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        # lake and views store UTC-naive timestamps
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def _value_text(value: Any, where: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise QueryError(f"{where}: a value must be a string or a number, got {json.dumps(value)}")
    if isinstance(value, float) and value != value:
        raise QueryError(f"{where}: NaN is not a value")
    return value if isinstance(value, str) else str(value)


def _parse_condition(cond: Any, pos: int) -> Condition:
    where = f"where[{pos}]"
    if not isinstance(cond, dict):
        raise QueryError(f"{where}: expected an object {{\"col\", \"op\", \"val\"}}, got {cond!r}")
    extra = set(cond) - {"col", "op", "val"}
    missing = {"col", "op", "val"} - set(cond)
    if extra or missing:
        raise QueryError(f"{where}: expected keys col, op, val; missing {sorted(missing)}, unknown {sorted(extra)}")
    column = _column(cond["col"], where)
    op = cond["op"]
    if op not in OPS:
        raise QueryError(f"{where}: unknown op {op!r} for column {column.name!r}; allowed: {_allowed(OPS)}")
    val = cond["val"]
    if op == "in":
        if not isinstance(val, list) or not val:
            raise QueryError(f"{where}: 'in' on {column.name!r} needs a non-empty list of values, got {json.dumps(val)}")
        items = val
    elif op == "between":
        if not isinstance(val, list) or len(val) != 2:
            raise QueryError(f"{where}: 'between' on {column.name!r} needs exactly two values [low, high], got {json.dumps(val)}")
        items = val
    else:
        if isinstance(val, list):
            raise QueryError(f"{where}: {op!r} on {column.name!r} takes one value, got a list (use 'in' for several)")
        items = [val]
    raw = tuple(_value_text(v, f"{where} ({column.name})") for v in items)
    try:
        values = tuple(_coerce_text(column.name, t) for t in raw)
    except QueryError as exc:
        raise QueryError(f"{where}: {exc}") from None
    return Condition(column.name, op, values, raw)


def _parse_order_item(item: Any, pos: int, outputs: dict[str, str]) -> OrderItem:
    where = f"order_by[{pos}]"
    if isinstance(item, str):
        item = {"col": item}
    if not isinstance(item, dict) or "col" not in item or set(item) - {"col", "dir"}:
        raise QueryError(f"{where}: expected {{\"col\": <selected name>, \"dir\": \"asc\"|\"desc\"}}, got {item!r}")
    name = item["col"]
    key = _output_key(name) if isinstance(name, str) else None
    if key not in outputs:
        raise QueryError(f"{where}: {name!r} is not in the select list; order_by can use: {_allowed(outputs.values())}")
    direction = item.get("dir", "asc")
    if not isinstance(direction, str) or direction.lower() not in ("asc", "desc"):
        raise QueryError(f"{where}: dir must be 'asc' or 'desc', got {direction!r}")
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
        raise QueryError(f"unknown key(s) {sorted(unknown)}; allowed: {_allowed(QUERY_KEYS)}")
    if obj.get("from", "events") != "events":
        raise QueryError(f"from: unknown table {obj['from']!r}; the only table is 'events'")

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
    where = tuple(_parse_condition(c, i) for i, c in enumerate(where_raw))

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
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise QueryError(f"limit: must be a positive integer, got {json.dumps(limit)}")

    return Query(select=select, where=where, group_by=group_by, order_by=order_by, limit=limit)


def load_queries(path: str) -> list[Any]:
    """Read a query file: a JSON list of queries (or one query object). Raises QueryError."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise QueryError(f"query file {path!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise QueryError(f"query file {path!r} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise QueryError(f"query file {path!r} must hold a JSON list of queries, got {type(data).__name__}")
    if not data:
        raise QueryError(f"query file {path!r} holds no queries")
    return data
