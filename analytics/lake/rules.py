"""The remediation rules: which raw rows are untrustworthy and why, and how a kept row is typed.

Owns the raw CSV format as DuckDB reads it (`RAW_CSV_COLUMNS`, `raw_csv_sql`: every column as
text, one definition for prepare, the baseline and the guardrails), the limits on a raw line,
`REMEDIATION_RULES` (engine-neutral SQL over the raw text, first match wins), the meaning of the
functions they call, DuckDB's definitions of them, the reasons the reader and the raw-file
pre-pass report, and the typed lake projection. Must not read or write files.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from analytics.core.sql import sql_string
from analytics.query.schema import EVENT_TYPES, RAW_HEADER

# Every raw column is read as text, so a dirty file cannot derail type detection.
RAW_CSV_COLUMNS = "{" + ", ".join(f"{sql_string(c)}: 'VARCHAR'" for c in RAW_HEADER) + "}"


def raw_csv_sql(path: str, *, ignore_errors: bool = False, null_padding: bool = False,
                rejects: tuple[str, str] | None = None) -> str:
    """DuckDB's `read_csv(...)` of raw parts at `path` (a file or a glob): the header line, the
    columns of RAW_HEADER as text, `,` between fields, `"` quoting with `""` inside quotes.

    `ignore_errors` skips lines of another field count; `rejects=(table, scan)` stores them instead
    (with the line number and text); `null_padding` reads a short line with NULLs at its end."""
    options = [f"header = true, auto_detect = false, columns = {RAW_CSV_COLUMNS}",
               "delim = ',', quote = '\"', escape = '\"'"]
    if null_padding:
        options.append("null_padding = true")
    if ignore_errors:
        options.append("ignore_errors = true")
    if rejects is not None:
        options.append(f"store_rejects = true, rejects_table = {sql_string(rejects[0])}, "
                       f"rejects_scan = {sql_string(rejects[1])}")
    return f"read_csv({sql_string(path)}, {', '.join(options)})"


# A raw line longer than this (bytes, line break not counted) is quarantined as `line_too_long`
# without being parsed: no event row comes near it, and the reader's cost must stay bounded.
MAX_LINE_BYTES = 64 * 1024
# A line with more commas than this is split into fields by the pre-pass (`lake.rawfile`) before
# the reader sees it: DuckDB stores one reject per surplus field, each with a copy of the line, so
# its time grows with fields x bytes (a line of 160,000 fields took 73 s; 6 MB of 3 million, hours).
MAX_READER_FIELDS = 64

TS_MAX_MS = 4_102_444_800_000  # 2100-01-01: anything later is a corrupt timestamp

# First matching rule wins; every rule names a reason that the manifest counts.
# Engine-neutral: SQL over the raw text columns that calls the conversions of RULE_FUNCTIONS as
# plain functions; each engine supplies its own definitions (DUCKDB_FUNCTIONS below, the Spark
# engine's in engines/spark_engine.py) and expands them with `render_rule_sql`.
REMEDIATION_RULES: tuple[tuple[str, str], ...] = (
    ("ts_missing", "ts IS NULL"),
    ("ts_unparseable", "int64(ts) IS NULL"),
    ("ts_out_of_range", f"int64(ts) NOT BETWEEN 0 AND {TS_MAX_MS}"),
    ("type_invalid", "type IS NULL OR type NOT IN ({types})"),
    ("auction_id_missing", "auction_id IS NULL"),
    ("advertiser_id_missing", "advertiser_id IS NULL"),
    ("advertiser_id_invalid", "int32(advertiser_id) IS NULL"),
    ("publisher_id_missing", "publisher_id IS NULL"),
    ("publisher_id_invalid", "int32(publisher_id) IS NULL"),
    ("country_missing", "country IS NULL"),
    ("country_invalid", "NOT full_match(country, '[A-Z]{{2}}')"),
    ("user_id_invalid", "user_id IS NOT NULL AND int64(user_id) IS NULL"),
    # a price that is not a number at all parses to NULL, and NOT finite(NULL) is NULL: coalesce,
    # or it would pass every rule and break the typed projection (a crash, or a NULL price)
    ("price_unparseable", "(bid_price IS NOT NULL AND NOT coalesce(finite(float64(bid_price)), false)) OR "
                          "(total_price IS NOT NULL AND NOT coalesce(finite(float64(total_price)), false))"),
    ("price_negative", "float64(bid_price) < 0 OR float64(total_price) < 0"),
)
# What each function means, for every engine alike: the value DuckDB's TRY_CAST gives the text
# (NULL when it does not parse), whether a double is finite, whether a text matches a pattern whole.
RULE_FUNCTIONS: dict[str, str] = {
    "int64": "TRY_CAST(text AS BIGINT) as DuckDB casts it, else NULL",
    "int32": "TRY_CAST(text AS INTEGER) as DuckDB casts it, else NULL",
    "float64": "TRY_CAST(text AS DOUBLE) as DuckDB casts it, else NULL",
    "finite": "isfinite(double): not NaN nor +-inf; NULL stays NULL",
    "full_match": "the text matches the (RE2/Java-compatible) pattern as a whole",
}
DUCKDB_FUNCTIONS: dict[str, Callable[..., str]] = {
    "int64": lambda x: f"TRY_CAST({x} AS BIGINT)",
    "int32": lambda x: f"TRY_CAST({x} AS INTEGER)",
    "float64": lambda x: f"TRY_CAST({x} AS DOUBLE)",
    "finite": lambda x: f"isfinite({x})",
    "full_match": lambda x, pattern: f"regexp_full_match({x}, {pattern})",
}


def render_rule_sql(sql: str, functions: Mapping[str, Callable[..., str]]) -> str:
    """Expand each call `name(arg, ...)` of a function in `functions` by its definition, innermost
    first; quoted SQL strings are left alone. `name` must be one of RULE_FUNCTIONS."""
    names = re.compile(r"\b(" + "|".join(map(re.escape, functions)) + r")\s*\(")
    out: list[str] = []
    pos = 0
    while (m := names.search(sql, pos)) is not None:
        out.append(sql[pos:m.start()])
        args: list[str] = []
        depth, start, quoted, j = 0, m.end(), False, m.end()
        while True:
            c = sql[j]
            if quoted:
                quoted = c != "'"
            elif c == "'":
                quoted = True
            elif c == "(":
                depth += 1
            elif c == ")" and depth:
                depth -= 1
            elif c in ",)" and not depth:
                args.append(render_rule_sql(sql[start:j].strip(), functions))
                start = j + 1
                if c == ")":
                    break
            j += 1
        out.append(functions[m.group(1)](*args))
        pos = j + 1
    out.append(sql[pos:])
    return "".join(out)


def reason_case_sql(functions: Mapping[str, Callable[..., str]]) -> str:
    """`CASE WHEN <rule> THEN '<reason>' ... END` over the raw text columns, for one engine."""
    types = ", ".join(sql_string(t) for t in EVENT_TYPES)
    return "CASE " + " ".join(f"WHEN {render_rule_sql(cond.format(types=types), functions)} THEN '{name}'"
                              for name, cond in REMEDIATION_RULES) + " END"


# Reasons found before the rules: by the reader (a line of another field count) and by the raw-file
# pre-pass (a line that is not UTF-8 text, a line over MAX_LINE_BYTES).
WRONG_FIELD_COUNT = "wrong_field_count"
NOT_UTF8 = "not_utf8"
LINE_TOO_LONG = "line_too_long"
# a row quarantined for one of these never had its fields parsed
UNPARSED_REASONS: tuple[str, ...] = (WRONG_FIELD_COUNT, NOT_UTF8, LINE_TOO_LONG)
REASONS: tuple[str, ...] = tuple(r for r, _ in REMEDIATION_RULES) + UNPARSED_REASONS

# Typed lake columns from the raw text, all in UTC-naive time so no session zone can shift them.
LAKE_PROJECTION = """
    epoch_ms(CAST(ts AS BIGINT)) AS ts,
    CAST(epoch_ms(CAST(ts AS BIGINT)) AS DATE) AS day,
    CAST(date_trunc('week', epoch_ms(CAST(ts AS BIGINT))) AS DATE) AS week,
    date_trunc('hour', epoch_ms(CAST(ts AS BIGINT))) AS hour,
    strftime(epoch_ms(CAST(ts AS BIGINT)), '%Y-%m-%d %H:%M') AS minute,
    auction_id,
    CAST(advertiser_id AS INTEGER) AS advertiser_id,
    CAST(publisher_id AS INTEGER) AS publisher_id,
    CAST(bid_price AS DOUBLE) AS bid_price,
    CAST(user_id AS BIGINT) AS user_id,
    CAST(total_price AS DOUBLE) AS total_price,
    country
"""

