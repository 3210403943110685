"""DuckDB connections as this project needs them: UTC always, bounded memory, Arrow results.

Owns every `duckdb.connect` of the package (so the session time zone can never be forgotten)
and the one way a statement's answer is fetched. Must not know about queries or the lake.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Sequence

import duckdb
import psutil
import pyarrow as pa


DEFAULT_MEMORY_LIMIT = "4GiB"
_UNITS = {"b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes in a DuckDB-style size: `512MB` (10^6), `4GiB` (2^30), `1.5GB`, `10%` of the machine's RAM."""
    t = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|[kmgt]i?b|[kmgt]|b)", t)
    if not m:
        raise ValueError(f"expected a memory size like 512MB, 4GB or 4GiB, got {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    size = int(psutil.virtual_memory().total * value / 100) if unit == "%" else int(value * _UNITS[unit])
    if size < 2**20:
        raise ValueError(f"memory size {text!r} is below 1MiB; DuckDB cannot run in that")
    return size


def split_memory(limit: str, parts: int) -> str:
    """One of `parts` equal shares of the memory size `limit`, as a DuckDB size (whole MiB)."""
    return f"{max(1, parse_size(limit) // max(1, parts) // 2**20)}MiB"


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
