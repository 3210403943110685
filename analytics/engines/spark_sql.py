"""Spark SQL text for the Spark engine's prepare: DuckDB's casts, its CSV line grammar, the lake projection.

Owns `SPARK_FUNCTIONS` (the remediation rules' conversions, with DuckDB's TRY_CAST results; Spark's
own casts differ: no `7.5` -> 8, no `1e3`, no `1_000`, no `0x10`, `7d` is a double ...), the
regular expressions that split a raw line into fields as DuckDB's reader does, the typed lake
projection in Spark SQL and the Spark names of the lake's types. Text only: must not start
Spark nor read or write files.
"""
from __future__ import annotations

from typing import Callable

from analytics.lake.rules import render_rule_sql
from analytics.query.schema import RAW_HEADER


# ---- the remediation functions, with DuckDB's TRY_CAST semantics --------------------------------
def spark_str(text: str) -> str:
    """A Spark SQL string literal (backslash escapes are on by default)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_WS = r"[\t\n\x0B\f\r ]"  # what DuckDB skips around a number (Spark's casts also skip \x00-\x1f)
_DIGITS = r"[0-9]+(?:_[0-9]+)*"  # DuckDB accepts single underscores between digits
_MANTISSA = rf"(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})"
_INT_DEC = rf"^{_WS}*[+-]?{_MANTISSA}(?:[eE][+-]?{_DIGITS}\.?)?{_WS}*$"  # rounds half away from zero
_INT_HEX = rf"^{_WS}*0[xX][0-9a-fA-F]+(?:_[0-9a-fA-F]+)*$"
_INT_BIN = rf"^{_WS}*0[bB][01]+(?:_[01]+)*$"
_FLOAT_DEC = rf"^{_WS}*(?:\+-|[+-])?{_MANTISSA}(?:[eE][+-]?{_DIGITS})?{_WS}*$"
_FLOAT_SPECIAL = rf"^{_WS}*(?:\+-|[+-])?(?:inf|infinity|nan){_WS}*$"


def _int_sql(x: str, spark_type: str) -> str:
    """DuckDB's TRY_CAST(x AS BIGINT|INTEGER): decimals round half away from zero, exponents,
    underscores, 0x/0b prefixes; NULL when it does not parse or overflows."""
    stripped = (f"regexp_replace(regexp_replace({x}, '([eE][+-]?[0-9_]+)[.]', '$1'), "
                f"{spark_str('_|' + _WS)}, '')")
    exponent = f"regexp_extract({x}, '[eE]([+-]?[0-9_]+)', 1)"
    exponent_ok = f"({exponent} = '' OR try_cast(replace({exponent}, '_', '') AS INT) BETWEEN -32768 AND 32767)"

    def based(prefix: str, base: int, max_digits: int) -> str:
        digits = f"regexp_replace({x}, {spark_str('^' + _WS + '*0' + prefix + '0*|_')}, '')"
        return (f"try_cast(CASE WHEN {digits} = '' THEN '0' WHEN length({digits}) <= {max_digits} "
                f"THEN conv({digits}, {base}, 10) END AS {spark_type})")

    # fast path: Spark's own integer parse accepts a subset of DuckDB's (same values) once no
    # character <= ' ' surrounds the number (Spark would trim control characters DuckDB keeps)
    fast = f"try_cast({x} AS {spark_type})"
    return (f"(CASE WHEN ascii({x}) > 32 AND ascii(right({x}, 1)) > 32 AND {fast} IS NOT NULL THEN {fast} "
            f"WHEN {x} RLIKE {spark_str(_INT_DEC)} AND {exponent_ok} "
            f"THEN try_cast(try_cast({stripped} AS DECIMAL(38,0)) AS {spark_type}) "
            f"WHEN {x} RLIKE {spark_str(_INT_HEX)} THEN {based('[xX]', 16, 16)} "
            f"WHEN {x} RLIKE {spark_str(_INT_BIN)} THEN {based('[bB]', 2, 64)} END)")


def _float_sql(x: str) -> str:
    """DuckDB's TRY_CAST(x AS DOUBLE): underscores, a `+-` sign, inf/infinity/nan in any case;
    no `d`/`f` suffixes nor hex; NULL when it does not parse."""
    stripped = (f"regexp_replace(regexp_replace({x}, {spark_str('^(' + _WS + '*)[+]-')}, '$1-'), "
                f"{spark_str('_|' + _WS)}, '')")
    special = f"lower(regexp_replace({x}, {spark_str(_WS + '|[+]')}, ''))"
    # fast path: between a leading and a trailing digit, without an x (Java's hex floats), what
    # Java's parser accepts is a decimal number DuckDB reads alike
    fast = f"try_cast({x} AS DOUBLE)"
    return (f"(CASE WHEN ascii({x}) BETWEEN 48 AND 57 AND ascii(right({x}, 1)) BETWEEN 48 AND 57 "
            f"AND instr(lower({x}), 'x') = 0 AND {fast} IS NOT NULL THEN {fast} "
            f"WHEN {x} RLIKE {spark_str(_FLOAT_DEC)} THEN try_cast({stripped} AS DOUBLE) "
            f"WHEN lower({x}) RLIKE {spark_str(_FLOAT_SPECIAL)} THEN CASE {special} "
            f"WHEN 'inf' THEN double('inf') WHEN 'infinity' THEN double('inf') "
            f"WHEN '-inf' THEN double('-inf') WHEN '-infinity' THEN double('-inf') ELSE double('nan') END END)")


SPARK_FUNCTIONS: dict[str, Callable[..., str]] = {
    "int64": lambda x: _int_sql(x, "BIGINT"),
    "int32": lambda x: _int_sql(x, "INT"),
    "float64": _float_sql,
    "finite": lambda x: f"(NOT isnan({x}) AND abs({x}) <> double('inf'))",
    # RLIKE finds; anchor it, with \z because Java's $ also matches before a final line break
    "full_match": lambda x, pattern: f"({x} RLIKE concat('^(?:', {pattern}, ')\\\\z'))",
}


class Conversions:
    """SPARK_FUNCTIONS, but each cast of a plain column becomes a column computed once
    (`_int64_ts`, ...): the rules and the projection name the same casts many times."""

    MEMO = ("int64", "int32", "float64")

    def __init__(self) -> None:
        self.columns: dict[str, str] = {}
        self.functions: dict[str, Callable[..., str]] = dict(SPARK_FUNCTIONS)
        for name in self.MEMO:
            self.functions[name] = self._memo(name)

    def _memo(self, name: str) -> Callable[..., str]:
        def convert(arg: str) -> str:
            if arg not in RAW_HEADER:
                return SPARK_FUNCTIONS[name](arg)
            column = f"_{name}_{arg}"
            self.columns.setdefault(column, SPARK_FUNCTIONS[name](arg))
            return column
        return convert

    def render(self, sql: str) -> str:
        return render_rule_sql(sql, self.functions)


# ---- the CSV line grammar of DuckDB's reader, as the lake's prepare configures it ---------------
_QFIELD = r'"(?:[^"]|"")*"|[^",][^,]*|'
QUOTED_LINE = rf"^(?:{_QFIELD})(?:,(?:{_QFIELD}))*$"
QTOKEN = rf",({_QFIELD})"
UNPARSEABLE_QUOTES = "(unparseable quotes)"

# Typed lake columns from the validated raw text, in the DuckDB engine's order (lake.LAKE_PROJECTION).
_TS = "CAST(timestamp_millis(int64(ts)) AS TIMESTAMP_NTZ)"  # session time zone is UTC
LAKE_PROJECTION: tuple[tuple[str, str], ...] = (
    ("ts", _TS),
    ("day", f"CAST({_TS} AS DATE)"),
    ("week", f"trunc(CAST({_TS} AS DATE), 'WEEK')"),  # the Monday on or before
    ("hour", f"date_trunc('HOUR', {_TS})"),
    ("minute", f"date_format({_TS}, 'yyyy-MM-dd HH:mm')"),
    ("auction_id", "auction_id"),
    ("advertiser_id", "int32(advertiser_id)"),
    ("publisher_id", "int32(publisher_id)"),
    ("bid_price", "float64(bid_price)"),
    ("user_id", "int64(user_id)"),
    ("total_price", "float64(total_price)"),
    ("country", "country"),
)
SPARK_TYPES = {"TIMESTAMP": "TIMESTAMP_NTZ", "DATE": "DATE", "VARCHAR": "STRING", "INTEGER": "INT",
                "BIGINT": "BIGINT", "DOUBLE": "DOUBLE"}
