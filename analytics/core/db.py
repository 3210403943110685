"""DuckDB connections as this project needs them: UTC always, bounded memory, Arrow results.

Owns every `duckdb.connect` of the package (so the session time zone can never be forgotten)
and the one way a statement's answer is fetched. Must not know about queries or the lake.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import duckdb
import pyarrow as pa


def connect(database: str = ":memory:", *, memory_limit: str | None = None, threads: int | None = None,
            read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection whose session time zone is UTC whatever the process's `TZ` is."""
    con = duckdb.connect(database, read_only=read_only)
    con.execute("SET TimeZone = 'UTC'")
    if database == ":memory:":
        # an in-memory database would otherwise spill into ./.tmp of whatever directory we run in
        con.execute("SET temp_directory = ?", [os.path.join(tempfile.gettempdir(), f"analytics-duckdb-{os.getpid()}")])
    if memory_limit:
        con.execute("SET memory_limit = ?", [memory_limit])
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pa.Table:
    """Run one read-only statement and hold its whole answer in memory as Arrow."""
    return con.sql(sql, params=list(params) if params else None).to_arrow_table()


def cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A new connection to the same database for another thread; session settings are per
    connection, so the time zone is set again."""
    cur = con.cursor()
    cur.execute("SET TimeZone = 'UTC'")
    return cur
