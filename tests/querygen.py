"""Random queries of the whole grammar, for differential tests against the baseline.

Every op, every derived column, every aggregate, group-by of 0-3 columns, order_by and limit.
Values are drawn around the data's domain (2024, the 12 countries, id ranges) and include the
boundaries (midnight, last millisecond, leap day, year end, Monday week starts) and spellings
of the same value as string or number. `view_shaped=True` favours shapes a rollup can answer.
"""
from __future__ import annotations

import datetime as dt
import random
from typing import Any

from analytics.query.schema import COUNTRIES, EVENT_TYPES, N_USERS

DIMS = ["day", "week", "hour", "minute", "type", "country", "advertiser_id", "publisher_id"]
VIEW_DIMS = ["day", "week", "hour", "type", "country", "advertiser_id", "publisher_id"]
MEASURES = ["bid_price", "total_price"]
BOUNDARY_DAYS = ["2024-01-01", "2024-02-28", "2024-02-29", "2024-03-01", "2024-06-30", "2024-07-01",
                 "2024-12-30", "2024-12-31", "2025-01-01"]


def _day(rng: random.Random) -> dt.date:
    if rng.random() < 0.3:
        return dt.date.fromisoformat(rng.choice(BOUNDARY_DAYS))
    return dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(366))


def _value(rng: random.Random, col: str) -> Any:
    if col == "type":
        return rng.choice(EVENT_TYPES + ("bogus",) if rng.random() < 0.05 else EVENT_TYPES)
    if col == "country":
        return rng.choice(COUNTRIES + ("ZZ",) if rng.random() < 0.05 else COUNTRIES)
    if col == "advertiser_id":
        v = rng.randint(1, 60)
        return str(v) if rng.random() < 0.3 else v
    if col == "publisher_id":
        v = rng.randint(1, 40)
        return str(v) if rng.random() < 0.3 else v
    if col == "user_id":
        return rng.randint(1, 2000)
    if col == "bid_price":
        return rng.choice([0.5, 1, "2.5", 3.2405, 5, 10])
    if col == "total_price":
        return rng.choice([10, 50.5, "62.0", 100])
    if col == "day":
        d = _day(rng)
        return d.isoformat()
    if col == "week":
        d = _day(rng)
        if rng.random() < 0.85:
            d -= dt.timedelta(days=d.weekday())  # a Monday, as weeks are
        return d.isoformat()
    if col == "hour":
        d = _day(rng)
        h = rng.choice([0, 0, 12, 23, rng.randrange(24)])
        return f"{d.isoformat()} {h:02d}:00" + (":00" if rng.random() < 0.5 else "")
    if col == "minute":
        d = _day(rng)
        text = f"{d.isoformat()} {rng.randrange(24):02d}:{rng.choice([0, 59, rng.randrange(60)]):02d}"
        # minute compares as text: a bare day sorts before its minutes, a longer string after its prefix
        return rng.choice([text, text, text, d.isoformat(), text + ":30"])
    if col == "ts":
        d = _day(rng)
        return rng.choice([f"{d.isoformat()} 00:00:00", f"{d.isoformat()} 23:59:59.999",
                           f"{d.isoformat()} 12:34:56.789", d.isoformat()])
    raise ValueError(col)


def _condition(rng: random.Random, col: str) -> dict[str, Any]:
    ordered = col not in ("type", "country")
    ops = ["eq", "neq", "in"] + (["between", "lt", "lte", "gt", "gte"] if ordered else [])
    if col in ("type", "country", "day", "week") and rng.random() < 0.5:
        ops = ["eq", "in", "between"] if ordered else ["eq", "in"]
    op = rng.choice(ops)
    if op == "in":
        return {"col": col, "op": op, "val": [_value(rng, col) for _ in range(rng.randint(1, 3))]}
    if op == "between":
        a, b = _value(rng, col), _value(rng, col)
        if str(a) > str(b) and rng.random() < 0.9:
            a, b = b, a
        return {"col": col, "op": op, "val": [a, b]}
    return {"col": col, "op": op, "val": _value(rng, col)}


def random_query(rng: random.Random, view_shaped: bool = False) -> dict[str, Any]:
    dims = VIEW_DIMS if view_shaped else DIMS
    n_group = rng.choice([0, 1, 1, 1, 2, 2, 3])
    group_by = rng.sample(dims, n_group)
    if "minute" in group_by and len(group_by) > 1 and rng.random() < 0.7:
        group_by.remove("minute")  # minute x entity is huge: keep it rare
    aggs: list[dict[str, str]] = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        func = rng.choice(["COUNT", "COUNT", "SUM", "AVG", "MIN", "MAX"])
        if func == "COUNT":
            col = rng.choice(["*", "*", "bid_price", "total_price"] + ([] if view_shaped else ["user_id", "advertiser_id"]))
        elif func in ("MIN", "MAX") and not view_shaped and rng.random() < 0.3:
            col = rng.choice(["ts", "day", "hour", "minute", "advertiser_id"])
        else:
            col = rng.choice(MEASURES + ([] if view_shaped else ["advertiser_id", "user_id"]))
        agg = {func: col}
        if agg not in aggs:
            aggs.append(agg)
    select: list[Any] = list(group_by) + aggs
    if rng.random() < 0.2 and group_by:
        select = aggs + list(group_by)
    where_cols = ["type", "day", "country", "advertiser_id", "week", "hour", "publisher_id", "minute"]
    if not view_shaped:
        where_cols += ["ts", "bid_price", "user_id", "total_price"]
    where = []
    if rng.random() < 0.75:
        where.append(_condition(rng, "type"))
    if {"hour", "minute"} & set(group_by) and len(group_by) > 1:
        # keep fine-grained multi-column answers small: one day of them
        where.append({"col": "day", "op": "eq", "val": _value(rng, "day")})
    for col in rng.sample(where_cols, rng.choice([0, 1, 1, 2, 3])):
        where.append(_condition(rng, col))
    q: dict[str, Any] = {"select": select, "from": "events"}
    if where:
        rng.shuffle(where)
        q["where"] = where
    if group_by:
        q["group_by"] = group_by
    names = [s if isinstance(s, str) else f"{next(iter(s))}({next(iter(s.values()))})" for s in select]
    if rng.random() < 0.6:
        q["order_by"] = [{"col": n, "dir": rng.choice(["asc", "desc"])} for n in rng.sample(names, rng.randint(1, min(2, len(names))))]
    if rng.random() < 0.3:
        q["limit"] = rng.choice([1, 5, 10, 100])
    return q


def random_queries(n: int, seed: int = 0, view_shaped: bool = False) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [random_query(rng, view_shaped) for _ in range(n)]


def user_query(rng: random.Random) -> dict[str, Any]:
    """A query of one user or a range of them: what the whole-period per-user view answers (a point
    or in-list filter on user_id, by type or by user), with other shapes of user filter mixed in."""
    op = rng.choice(["eq", "eq", "in", "in", "between", "lt", "gte", "neq"])
    if op == "eq":
        cond: dict[str, Any] = {"col": "user_id", "op": op, "val": rng.randint(1, N_USERS)}
    elif op == "in":
        cond = {"col": "user_id", "op": op, "val": [rng.randint(1, N_USERS) for _ in range(rng.randint(1, 40))]}
    elif op == "between":
        lo = rng.randint(0, N_USERS)
        cond = {"col": "user_id", "op": op, "val": [lo, lo + rng.randint(0, 20_000)]}
    else:
        cond = {"col": "user_id", "op": op, "val": rng.randint(1, N_USERS)}
    where = [cond] + ([_condition(rng, "type")] if rng.random() < 0.4 else [])
    rng.shuffle(where)
    group_by = rng.choice([[], ["type"], ["user_id"], ["type", "user_id"], ["user_id", "type"]])
    aggs: list[dict[str, str]] = []
    for _ in range(rng.randint(1, 3)):
        func = rng.choice(["COUNT", "COUNT", "SUM", "AVG", "MIN", "MAX"])
        agg = {func: rng.choice(["*", "bid_price", "total_price"]) if func == "COUNT" else rng.choice(MEASURES)}
        if agg not in aggs:
            aggs.append(agg)
    q: dict[str, Any] = {"select": list(group_by) + aggs, "from": "events", "where": where}
    if group_by:
        q["group_by"] = group_by
        keys = [{"col": c, "dir": rng.choice(["asc", "desc"])} for c in group_by]
        if rng.random() < 0.5:  # the top users by a measure, ties broken by the keys
            q["order_by"] = [{"col": f"{next(iter(aggs[0]))}({next(iter(aggs[0].values()))})", "dir": "desc"}] + keys
            q["limit"] = rng.choice([1, 5, 10])
        else:
            q["order_by"] = keys
    return q


def user_queries(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [user_query(rng) for _ in range(n)]
