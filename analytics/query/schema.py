"""The one table, `events`: its raw CSV layout, its columns as queries see them, and the lake's.

Owns the allow-list every other module takes column names from, the baseline's type of each
column (which decides how a query value is coerced), and the domain facts of the data (event
types, countries, id ranges). Must not touch data or build SQL beyond type names.
"""
from __future__ import annotations

from dataclasses import dataclass

RAW_HEADER: tuple[str, ...] = (
    "ts", "type", "auction_id", "advertiser_id", "publisher_id",
    "bid_price", "user_id", "total_price", "country",
)

EVENT_TYPES: tuple[str, ...] = ("serve", "impression", "click", "purchase")
COUNTRIES: tuple[str, ...] = ("US", "JP", "DE", "IN", "GB", "FR", "ES", "AU", "CA", "MX", "BR", "KR")
N_ADVERTISERS = 1654
N_PUBLISHERS = 1114
N_USERS = 1_000_000
# The event types whose rows carry each price (every other type leaves it NULL): an impression is
# where the bid is paid, a purchase is where the basket's total is.
PRICE_TYPES: dict[str, tuple[str, ...]] = {"bid_price": ("impression",), "total_price": ("purchase",)}

# Prices carry 4 decimals; views store sums as DECIMAL with this scale so they are exact.
PRICE_SCALE = 4


@dataclass(frozen=True)
class Column:
    """A column of `events` as the query language sees it.

    `baseline_type` is the DuckDB type the public baseline gives the column; a query value is
    cast to it exactly as DuckDB casts a string literal. `kind` groups columns by how values
    are compared and printed.
    """

    name: str
    baseline_type: str
    kind: str  # int | float | str | timestamp | date | hour | week | minute
    numeric: bool = False
    derived: bool = False


COLUMNS: dict[str, Column] = {
    c.name: c
    for c in (
        Column("ts", "TIMESTAMPTZ", "timestamp"),
        Column("week", "TIMESTAMPTZ", "week", derived=True),
        Column("day", "DATE", "date", derived=True),
        Column("hour", "TIMESTAMPTZ", "hour", derived=True),
        Column("minute", "VARCHAR", "minute", derived=True),
        Column("type", "VARCHAR", "str"),
        Column("auction_id", "VARCHAR", "str"),
        Column("advertiser_id", "INTEGER", "int", numeric=True),
        Column("publisher_id", "INTEGER", "int", numeric=True),
        Column("bid_price", "DOUBLE", "float", numeric=True),
        Column("user_id", "BIGINT", "int", numeric=True),
        Column("total_price", "DOUBLE", "float", numeric=True),
        Column("country", "VARCHAR", "str"),
    )
}

AGGREGATES: tuple[str, ...] = ("SUM", "COUNT", "AVG", "MIN", "MAX")

# Columns the lake guarantees non-NULL (rows missing them are quarantined by prepare).
NOT_NULL_IN_LAKE: frozenset[str] = frozenset(
    {"ts", "week", "day", "hour", "minute", "type", "auction_id", "advertiser_id", "publisher_id", "country"}
)

# Lake column types (Parquet via DuckDB). Time columns are stored UTC-naive so no session time
# zone can shift them; `type` is the Hive partition key and is not stored in the files.
LAKE_TYPES: dict[str, str] = {
    "ts": "TIMESTAMP",
    "week": "DATE",
    "day": "DATE",
    "hour": "TIMESTAMP",
    "minute": "VARCHAR",
    "type": "VARCHAR",
    "auction_id": "VARCHAR",
    "advertiser_id": "INTEGER",
    "publisher_id": "INTEGER",
    "bid_price": "DOUBLE",
    "user_id": "BIGINT",
    "total_price": "DOUBLE",
    "country": "VARCHAR",
}
