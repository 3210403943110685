"""Data-type checks: ts keeps whole milliseconds, prices are exact 4-decimal values, ids are integers
in range and countries known codes, in the lake, the views and (with raw) against the raw text.

Owns `ts_millisecond_precision`, `price_sums_exact`, `ids_integral_in_range` and
`country_known_code`, and the id ranges. Must not judge NULLs (null_handling's) nor time zones
(timezone's), nor change the lake or the views.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from analytics.checks.guardrails.context import SAMPLES, CheckResult, Context, dict_rows, jsonable, one_row
from analytics.core.sql import sql_string
from analytics.query.schema import COUNTRIES, N_ADVERTISERS, N_PUBLISHERS
from analytics.views.catalog import MEASURE_COLUMNS, SUM_TYPE

# Advertiser and publisher ids are a known, dense range in the real data; user ids are only
# known to be positive ("~1M users" gives no upper bound), so they are checked for that alone.
ID_RANGES: dict[str, tuple[int, int]] = {
    "advertiser_id": (1, N_ADVERTISERS), "publisher_id": (1, N_PUBLISHERS), "user_id": (1, 2**63 - 1),
}


def ts_millisecond_precision(ctx: Context) -> CheckResult:
    fails = []
    typed = [{"file": rel, "type": str(s.field("ts").type)} for rel, s in ctx.lake_file_schemas()
             if "ts" not in s.names or not pa.types.is_timestamp(s.field("ts").type) or s.field("ts").type.unit == "s"]
    if typed:
        fails.append(f"{len(typed)} lake file(s) store ts below millisecond precision, e.g. {typed[0]}")
    per_type = {r["type"]: r for r in dict_rows(ctx.con, """
        SELECT type, count(*) AS rows, count(*) FILTER (epoch_ms(ts) % 1000 <> 0) AS rows_with_ms,
               sum(epoch_ms(ts) % 1000) AS sum_ms, count(*) FILTER (epoch_us(ts) % 1000 <> 0) AS sub_ms_residue
        FROM events GROUP BY type ORDER BY type""")}
    residue = sum(r["sub_ms_residue"] for r in per_type.values())
    if residue:
        sample = dict_rows(ctx.con, f"SELECT type, ts, epoch_us(ts) AS epoch_us FROM events WHERE epoch_us(ts) % 1000 <> 0 LIMIT {SAMPLES}")
        fails.append(f"{residue:,} lake timestamps carry sub-millisecond residue (not whole ms), e.g. {jsonable(sample[0])}")
    raw: dict[str, Any] = {"compared": False, "why": "no --raw: millisecond tallies not compared with the raw epoch ms"}
    if ctx.raw_summary():
        raw_rows = {r["type"]: r for r in dict_rows(ctx.con, """
            SELECT type, sum(cnt) AS rows, sum(n_ms) AS rows_with_ms, sum(sum_ms) AS sum_ms
            FROM raw_summary WHERE accepted GROUP BY type""")}
        diffs = []
        for t in sorted(set(per_type) | set(raw_rows)):
            lake_t, raw_t = per_type.get(t, {}), raw_rows.get(t, {})
            for key in ("rows_with_ms", "sum_ms"):
                if (lake_t.get(key) or 0) != (raw_t.get(key) or 0):
                    diffs.append({"type": t, "tally": key, "lake": lake_t.get(key), "raw": raw_t.get(key)})
        raw = {"compared": True, "per_type": raw_rows, "differences": diffs}
        if diffs:
            fails.append(f"milliseconds lost between raw and lake: {diffs[0]}")
    summary = "; ".join(fails) if fails else (
        "ts keeps whole milliseconds: " + ", ".join(f"{t} {r['rows_with_ms']:,}/{r['rows']:,} with ms" for t, r in per_type.items())
        + ("; tallies equal the raw epoch ms" if raw["compared"] else " (no --raw: not compared with raw)"))
    return CheckResult(not fails, {"summary": summary, "lake_per_type": per_type, "file_types": typed[:20], "raw": raw})


def _on_grid(m: str) -> str:
    return f"{m} = CAST(CAST({m} AS {SUM_TYPE}) AS DOUBLE)"


def price_sums_exact(ctx: Context) -> CheckResult:
    fails = []
    typed = []
    for rel, s in ctx.lake_file_schemas():
        for m in MEASURE_COLUMNS:
            t = s.field(m).type if m in s.names else None
            if t is None or not (pa.types.is_float64(t) or (pa.types.is_decimal(t) and t.scale >= 4)):
                typed.append({"file": rel, "column": m, "type": str(t)})
    if typed:
        fails.append(f"{len(typed)} lake price column(s) cannot hold 4 exact decimals, e.g. {typed[0]}")
    off = one_row(ctx.con, f"""
        SELECT {', '.join(f'count({m}) AS nn_{m}, count(*) FILTER (NOT ({_on_grid(m)})) AS off_grid_{m}, '
                          f'sum(CAST({m} AS {SUM_TYPE})) AS sum_{m}' for m in MEASURE_COLUMNS)}
        FROM events""")
    n_off = sum(off[f"off_grid_{m}"] for m in MEASURE_COLUMNS)
    samples = dict_rows(ctx.con, f"""
        SELECT type, ts, {', '.join(f'{m}, CAST({m} AS {SUM_TYPE}) AS {m}_4dp' for m in MEASURE_COLUMNS)} FROM events
        WHERE {' OR '.join(f'NOT ({_on_grid(m)})' for m in MEASURE_COLUMNS)} LIMIT {SAMPLES}""") if n_off else []
    if n_off:
        fails.append("prices not exactly 4-decimal values: " + ", ".join(f"{m} {off[f'off_grid_{m}']:,}" for m in MEASURE_COLUMNS)
                     + f", e.g. {jsonable(samples[0])}")
    raw: dict[str, Any] = {"compared": False, "why": "no --raw: lake sums not compared with the raw text"}
    if ctx.raw_summary():
        cols = ", ".join(f"sum(nn_{m}) AS nn_{m}, sum(sum_{m}) AS sum_{m}" for m in MEASURE_COLUMNS)
        raw_t = {r["type"]: r for r in dict_rows(ctx.con, f"SELECT type, {cols} FROM raw_summary WHERE accepted GROUP BY type")}
        lake_cols = ", ".join(f"count({m}) AS nn_{m}, sum(CAST({m} AS {SUM_TYPE})) AS sum_{m}" for m in MEASURE_COLUMNS)
        lake_t = {r["type"]: r for r in dict_rows(ctx.con, f"SELECT type, {lake_cols} FROM events GROUP BY type")}
        diffs = [{"type": t, "measure": k, "lake": lake_t.get(t, {}).get(k), "raw": raw_t.get(t, {}).get(k)}
                 for t in sorted(set(raw_t) | set(lake_t)) for m in MEASURE_COLUMNS for k in (f"nn_{m}", f"sum_{m}")
                 if (lake_t.get(t, {}).get(k) or 0) != (raw_t.get(t, {}).get(k) or 0)]
        raw = {"compared": True, "differences": diffs, "raw_per_type": raw_t}
        if diffs:
            fails.append(f"exact sums differ from the raw text: {jsonable(diffs[0])}")
    summary = "; ".join(fails) if fails else (
        ", ".join(f"{off[f'nn_{m}']:,} {m} values on the 0.0001 grid (exact sum {off[f'sum_{m}']})" for m in MEASURE_COLUMNS)
        + ("; per-type counts and exact sums equal the raw text" if raw["compared"] else " (no --raw: not compared with raw)"))
    return CheckResult(not fails, {"summary": summary, "lake": off, "samples": samples, "file_types": typed[:20], "raw": raw})


def _id_offenders(ctx: Context, rel: str, cols: list[str]) -> tuple[dict[str, int], list[dict[str, Any]]]:
    cond = {c: f"{c} IS NOT NULL AND ({c} < {ID_RANGES[c][0]} OR {c} > {ID_RANGES[c][1]})" for c in cols}
    counts = one_row(ctx.con, f"SELECT {', '.join(f'count(*) FILTER ({e}) AS {c}' for c, e in cond.items())} FROM {rel}")
    sample = dict_rows(ctx.con, f"SELECT {', '.join(cols)} FROM {rel} WHERE {' OR '.join(f'({e})' for e in cond.values())} "
                                f"LIMIT {SAMPLES}") if any(counts.values()) else []
    return counts, sample


def ids_integral_in_range(ctx: Context) -> CheckResult:
    fails, sources = [], []
    typed = []
    for rel, s in ctx.lake_file_schemas():
        for c in ID_RANGES:
            t = s.field(c).type if c in s.names else None
            if t is None or not pa.types.is_integer(t):
                typed.append({"file": rel, "column": c, "type": str(t)})
    counts, sample = _id_offenders(ctx, "events", list(ID_RANGES))
    sources.append({"source": "lake", "out_of_range": counts, "samples": sample})
    for h in ctx.views():
        cols = [c for c in ID_RANGES if c in h.view.group_columns]
        if not cols:
            continue
        for c in cols:
            t = pq.read_schema(h.path).field(c).type
            if not pa.types.is_integer(t):
                typed.append({"file": h.entry.file, "column": c, "type": str(t)})
        counts_v, sample_v = _id_offenders(ctx, h.rel, cols)
        sources.append({"source": h.name, "out_of_range": counts_v, "samples": sample_v})
    if typed:
        fails.append(f"{len(typed)} id column(s) not integer-typed, e.g. {typed[0]}")
    for s in sources:
        if any(s["out_of_range"].values()):
            fails.append(f"{s['source']}: ids out of range {s['out_of_range']}, e.g. {jsonable(s['samples'][0])}")
    ranges = ", ".join(f"{c} in {lo}..{hi}" for c, (lo, hi) in ID_RANGES.items())
    summary = "; ".join(fails) if fails else f"integer ids in range ({ranges}) in the lake and {len(sources) - 1} views"
    return CheckResult(not fails, {"summary": summary, "ranges": ID_RANGES, "sources": sources, "non_integer": typed[:20],
                                   "skipped": ctx.skipped_views})


def country_known_code(ctx: Context) -> CheckResult:
    known = ", ".join(sql_string(c) for c in COUNTRIES)
    sources, fails = [], []
    for name, rel in [("lake", "events")] + [(h.name, h.rel) for h in ctx.views(having=("country",))]:
        bad = dict_rows(ctx.con, f"SELECT country, count(*) AS rows FROM {rel} WHERE country IS NULL OR country NOT IN ({known}) "
                                 "GROUP BY country ORDER BY rows DESC LIMIT 20")
        n = ctx.con.execute(f"SELECT count(DISTINCT country) FROM {rel}").fetchall()[0][0]
        sources.append({"source": name, "distinct_countries": n, "unknown": bad})
        if bad:
            fails.append(f"{name}: unknown country codes {[(b['country'], b['rows']) for b in bad[:5]]}")
    summary = "; ".join(fails) if fails else (
        f"every country in the lake and {len(sources) - 1} views is one of the {len(COUNTRIES)} known codes")
    return CheckResult(not fails, {"summary": summary, "known": list(COUNTRIES), "sources": sources, "skipped": ctx.skipped_views})

