"""The reference: the public challenge's baseline, a DuckDB view over the raw CSVs in UTC.

Owns the one definition of what every answer must equal. The view reproduces the
challenge's casts and derived columns (`to_timestamp(ts / 1000.0)`, `DATE_TRUNC('week', ts)`,
...); the raw columns are read as text (the raw format of `lake.rules`, and nothing else of the
lake) so a dirty file cannot derail type detection, and
values are bound as the analyst's text so DuckDB casts them exactly like string literals.
Must not use the lake, the views or the query coercion of `query.py`: it is the independent
side of every differential test.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from analytics.core import db
from analytics.lake.rules import raw_csv_sql
from analytics.query.compiler import compile_query
from analytics.query.model import Query


def connect_baseline(raw_dir: str | Path, materialize: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the `events` view over `raw_dir/*.csv`, session time zone UTC.

    `materialize=True` parses the CSV text once into a table of the same text columns and keeps
    the casting view on top: the same semantics, without re-reading the files for every query
    (for test suites that ask the baseline hundreds of questions).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw directory {str(raw_dir)!r} does not exist")
    if not any(raw_dir.glob("*.csv")):
        raise FileNotFoundError(f"raw directory {str(raw_dir)!r} holds no *.csv files")
    con = db.connect()
    read = raw_csv_sql(str(raw_dir / "*.csv"), null_padding=True, ignore_errors=True)
    if materialize:
        con.execute(f"CREATE TABLE raw_text AS SELECT * FROM {read}")
        read = "raw_text"
    con.execute(f"""
        CREATE VIEW events AS
        WITH raw AS (
            SELECT * FROM {read}
        ), casted AS (
            SELECT
                to_timestamp(TRY_CAST(ts AS DOUBLE) / 1000.0) AS ts,
                type, auction_id,
                TRY_CAST(advertiser_id AS INTEGER) AS advertiser_id,
                TRY_CAST(publisher_id AS INTEGER) AS publisher_id,
                NULLIF(bid_price, '')::DOUBLE AS bid_price,
                TRY_CAST(user_id AS BIGINT) AS user_id,
                NULLIF(total_price, '')::DOUBLE AS total_price,
                country
            FROM raw
        )
        SELECT
            ts,
            DATE_TRUNC('week', ts) AS week,
            DATE(ts) AS day,
            DATE_TRUNC('hour', ts) AS hour,
            STRFTIME(ts, '%Y-%m-%d %H:%M') AS minute,
            type, auction_id, advertiser_id, publisher_id, bid_price, user_id, total_price, country
        FROM casted
    """)
    return con


def baseline_query(con: duckdb.DuckDBPyConnection, query: Query) -> pa.Table:
    sql, params = compile_query(query, "events", raw_values=True)
    return db.fetch_arrow(con, sql, params)
