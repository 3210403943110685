"""`Workbench`: the Python face of the product, what notebooks and the CLI call.

Owns a warm DuckDB connection over one lake and answers queries through the router. Must stay
a thin shell: validation is `query.py`, SQL is `compiler.py`, the choice of source is
`router.py`.
"""
from __future__ import annotations

import os
from typing import Any

import pyarrow as pa

from . import db
from .compiler import compile_query
from .lake import Lake
from .query import Query, parse_query


class Workbench:
    """Answers JSON queries over a prepared lake.

    >>> wb = Workbench("data/lake")                                         # doctest: +SKIP
    >>> wb.query({"select": [{"COUNT": "*"}], "from": "events"})            # doctest: +SKIP
    """

    def __init__(self, lake: str | os.PathLike, *, memory_limit: str = "4GB", threads: int | None = None) -> None:
        self.lake = Lake.open(lake)
        self.memory_limit = memory_limit
        self.con = db.connect(memory_limit=memory_limit, threads=threads)
        self.lake.register(self.con, "events")

    @staticmethod
    def parse(query: dict[str, Any] | Query) -> Query:
        return query if isinstance(query, Query) else parse_query(query)

    def query(self, query: dict[str, Any] | Query) -> pa.Table:
        """The answer as an Arrow table, columns named as the contract's CSV header."""
        q = self.parse(query)
        sql, params = compile_query(q, "events")
        return db.fetch_arrow(self.con, sql, params)

    def explain(self, query: dict[str, Any] | Query) -> str:
        q = self.parse(query)
        sql, params = compile_query(q, "events")
        return f"route: lake\nsql: {sql}\nparams: {params!r}"

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Workbench":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
