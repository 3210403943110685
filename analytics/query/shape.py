"""A query's shape: the query with its literal values dropped, what telemetry records per query and
adaptive advice generalises from.

Owns `query_shape` (the select list, the filtered columns with their operators and value counts,
the group-by, the event types selected, whether it orders or limits), its key, a stand-in `Query`
of a shape for the coverage rules, the columns a shape reads, and the entity columns a view may
keep as dimensions (`SHAPE_DIMS`). Must not choose or build views.
"""
from __future__ import annotations

import json
from typing import Any

from analytics.query.model import Agg, Condition, Query
from analytics.query.schema import EVENT_TYPES

# Columns a view may keep as an entity dimension (the time columns are its grain, `type` its key).
SHAPE_DIMS: tuple[str, ...] = ("country", "advertiser_id", "publisher_id", "user_id", "auction_id")


def query_shape(query: Query) -> dict[str, Any]:
    """What advice needs of a query, its literal values dropped: the select list, the filtered
    columns with their operators and value counts, the group-by, and the event types it selects
    (a type filter is a view's source filter, so its values are kept)."""
    types = set(EVENT_TYPES)
    where = []
    for c in query.where:
        if c.col == "type" and c.op in ("eq", "in"):
            types &= {str(v) for v in c.values}
        where.append([c.col, c.op, len(c.values)])
    return {
        "select": [[i.func, i.col] if isinstance(i, Agg) else i for i in query.select],
        "where": sorted(where),
        "group_by": sorted(query.group_by),
        "types": [t for t in EVENT_TYPES if t in types],
        "order_limit": bool(query.order_by) or query.limit is not None,
    }


def shape_key(shape: dict[str, Any]) -> str:
    return json.dumps(shape, sort_keys=True, separators=(",", ":"))


def shape_query(shape: dict[str, Any]) -> Query:
    """A stand-in `Query` of this shape (placeholder values) for the router's coverage rules, which
    read columns, operators and the selected types only."""
    select = tuple(Agg(i[0], i[1]) if isinstance(i, list) else i for i in shape["select"])
    types = tuple(shape["types"])
    where: list[Condition] = []
    for col, op, n in shape["where"]:
        if col == "type":
            continue
        where.append(Condition(col, op, (None,) * int(n), ("",) * int(n)))
    if types != EVENT_TYPES:
        where.append(Condition("type", "in", types, types))
    return Query(select, tuple(where), tuple(shape["group_by"]))


def shape_columns(shape: dict[str, Any]) -> set[str]:
    """Every column the shape reads."""
    cols = {i[1] for i in shape["select"] if isinstance(i, list) and i[1] != "*"}
    cols |= {i for i in shape["select"] if isinstance(i, str)}
    cols |= {c for c, _, _ in shape["where"]} | set(shape["group_by"])
    return cols
