"""SQL text for the few places a value must be spelled in SQL: file paths and fixed domain strings.

Owns the one quoting rule. Query values never come here: they are bound as parameters.
"""
from __future__ import annotations


def sql_string(text: object) -> str:
    """`text` as a SQL string literal (single quotes doubled)."""
    return "'" + str(text).replace("'", "''") + "'"
