"""NULL checks: each price is set exactly on its own event type, COUNT(col) counts values and COUNT(*)
rows, and a row with a NULL key is quarantined, never in the lake nor silently dropped.

Owns `price_only_on_its_type`, `count_col_vs_count_star` and `null_keys_quarantined`, and their
August probes. Accounting itself is `checks.remediation`'s; this module only asks it. Must not
judge AVG (avg's) nor decide what is quarantined (lake.rules'), nor change the lake or the views.
"""
from __future__ import annotations

from typing import Any

from analytics.checks.guardrails.context import (
    KEY_COLUMNS,
    SAMPLES,
    CheckResult,
    Context,
    dict_rows,
    jsonable,
    one_row,
    probes_result,
)
from analytics.checks.remediation import raw_accounting, remediation_report
from analytics.core.sql import sql_string
from analytics.lake.rules import UNPARSED_REASONS
from analytics.query import compiler
from analytics.query.model import Agg, parse_query
from analytics.query.schema import NOT_NULL_IN_LAKE
from analytics.views.catalog import MEASURE_COLUMNS

PRICE_TYPE = {"bid_price": "impression", "total_price": "purchase"}  # the one type carrying each price


def price_only_on_its_type(ctx: Context) -> CheckResult:
    totals = ctx.lake_totals()
    cols = ", ".join(f"sum(nn_{m}) AS nn_{m}" for m in MEASURE_COLUMNS)
    sources = {"lake": dict_rows(ctx.con, f"SELECT type, sum(cnt) AS rows, {cols} FROM {totals} GROUP BY type ORDER BY type")}
    for h in ctx.views():
        sources[h.name] = dict_rows(ctx.con, f"SELECT type, sum(cnt) AS rows, {cols} FROM {h.rel} GROUP BY type ORDER BY type")
    deviations = []
    for name, rows in sources.items():
        for r in rows:
            for m, owner in PRICE_TYPE.items():
                n = r[f"nn_{m}"] or 0
                if r["type"] != owner and n:
                    deviations.append({"source": name, "column": m, "type": r["type"], "rows_with_value": n,
                                       "deviation": f"{m} set on {n:,} {r['type']} rows"})
                if r["type"] == owner and n != r["rows"]:
                    deviations.append({"source": name, "column": m, "type": r["type"], "rows_without_value": r["rows"] - n,
                                       "deviation": f"{m} missing on {r['rows'] - n:,} {owner} rows"})
    cond = " OR ".join(f"({m} IS NOT NULL AND type <> {sql_string(t)}) OR ({m} IS NULL AND type = {sql_string(t)})" for m, t in PRICE_TYPE.items())
    samples = dict_rows(ctx.con, f"SELECT type, ts, auction_id, {', '.join(MEASURE_COLUMNS)} FROM events WHERE {cond} "
                                 f"ORDER BY ts LIMIT {SAMPLES}") if any(d["source"] == "lake" for d in deviations) else []
    lake = {r["type"]: r for r in sources["lake"]}
    summary = ("; ".join(sorted({f"{d['source']}: {d['deviation']}" for d in deviations}))
               if deviations else
               ", ".join(f"{m} on {lake.get(t, {}).get(f'nn_{m}', 0):,}/{lake.get(t, {}).get('rows', 0):,} {t} rows and no other type"
                         for m, t in PRICE_TYPE.items()) + f" (lake and {len(sources) - 1} views)")
    return CheckResult(not deviations, {"summary": summary, "rule": {m: f"only on {t}" for m, t in PRICE_TYPE.items()},
                                        "per_type": sources, "deviations": deviations, "samples": samples,
                                        "skipped": ctx.skipped_views})


_AUGUST = [{"col": "day", "op": "gte", "val": "2024-08-01"}, {"col": "day", "op": "lte", "val": "2024-08-31"}]
# Probes over August on every view with a day; the whole period only on views without one (a day
# missing from a view is mv_consistency.reconcile's to report, not this check's).
COUNT_PROBES: tuple[tuple[dict[str, Any], bool], ...] = (
    ({"select": [{"COUNT": "*"}, {"COUNT": "bid_price"}, {"COUNT": "total_price"}], "from": "events", "where": _AUGUST}, True),
    ({"select": ["type", {"COUNT": "*"}, {"COUNT": "bid_price"}, {"COUNT": "total_price"}], "from": "events",
      "where": _AUGUST, "group_by": ["type"]}, True),
    ({"select": ["country", {"COUNT": "*"}, {"COUNT": "bid_price"}], "from": "events", "where": _AUGUST,
      "group_by": ["country"]}, True),
    ({"select": ["type", {"COUNT": "*"}, {"COUNT": "bid_price"}, {"COUNT": "total_price"}], "from": "events",
      "group_by": ["type"]}, False),
)


def count_col_vs_count_star(ctx: Context) -> CheckResult:
    probes, distinct = [], []
    for qdict, dated in COUNT_PROBES:
        query = parse_query(qdict)
        exprs = {a: ("count(*)" if a.col == "*" else f"count({a.col})") for a in query.aggregates}
        sql, params = compiler.compile_query(query, "events", aggregate_sql=exprs)
        ref = ctx.answer_rows(query, sql, params)
        probes.append(ctx.probe(qdict, "lake count(*) and count(col)", ref,
                                views=None if dated else (lambda v: "day" not in v.group_columns)))
        star = query.aggregates.index(Agg("COUNT", "*"))
        offset = len(query.select) - len(query.aggregates)
        distinct.append(sum(1 for r in ref for i in range(len(query.aggregates)) if i != star and r[offset + i] != r[offset + star]))
    n_distinct = sum(distinct)
    return probes_result(probes, f"COUNT(col) counts non-NULL values only, COUNT(*) every row "
                                 f"({n_distinct} answer cells where the two differ)",
                         {"cells_where_count_col_differs_from_count_star": distinct, "skipped": ctx.skipped_views},
                         fail_extra=[] if n_distinct else ["no probe where COUNT(col) and COUNT(*) differ: the data has no NULLs to tell them apart"])


def null_keys_quarantined(ctx: Context) -> CheckResult:
    fails = []
    lake_cols = sorted(NOT_NULL_IN_LAKE)
    counts = one_row(ctx.con, f"SELECT count(*) AS rows, {', '.join(f'count(*) - count({c}) AS {c}' for c in lake_cols)} FROM events")
    null_lake = {c: counts[c] for c in lake_cols if counts[c]}
    samples = dict_rows(ctx.con, f"SELECT {', '.join(['type'] + [c for c in lake_cols if c != 'type'])} FROM events "
                                 f"WHERE {' OR '.join(f'{c} IS NULL' for c in lake_cols)} LIMIT {SAMPLES}") if null_lake else []
    if null_lake:
        fails.append(f"NULL keys in the lake: {null_lake}, e.g. {jsonable(samples[0])}")
    views = []
    for h in ctx.views():
        keys = h.view.group_columns
        got = one_row(ctx.con, f"SELECT {', '.join(f'count(*) - count({c}) AS {c}' for c in keys)} FROM {h.rel}")
        bad = {c: n for c, n in got.items() if n}
        views.append({"view": h.name, "null_keys": bad})
        if bad:
            fails.append(f"{h.name}: NULL group keys {bad}")
    report = remediation_report(ctx.root, samples=0)
    acc_checks = list(report["checks"])
    if ctx.raw_dir is not None:  # the manifest against the raw parts themselves (line counts, fingerprints)
        acc_checks += raw_accounting(ctx.root, ctx.raw_dir)
    failed_acc = [c for c in acc_checks if not c["ok"]]
    if failed_acc:
        fails.append(f"accounting does not hold: {failed_acc[0]['check']}: expected {failed_acc[0]['expected']}, "
                     f"got {failed_acc[0]['actual']}")
    raw: dict[str, Any] = {"compared": False, "why": "no --raw: raw NULL keys not compared with the quarantine"}
    if ctx.raw_summary():
        raw_nulls = one_row(ctx.con, f"SELECT sum(cnt) AS rows, {', '.join(f'sum(null_{c}) AS {c}' for c in KEY_COLUMNS)} FROM raw_summary")
        qfiles = ctx.lake.quarantine_files()
        if qfiles:
            listing = ", ".join(sql_string(str(f)) for f in qfiles)
            q_nulls = one_row(ctx.con, f"""
                SELECT count(*) AS rows, {', '.join(f'count(*) FILTER ({c} IS NULL) AS {c}' for c in KEY_COLUMNS)}
                FROM read_parquet([{listing}], union_by_name = true) WHERE reason NOT IN ({', '.join(map(sql_string, UNPARSED_REASONS))})""")
        else:
            q_nulls = {"rows": 0, **{c: 0 for c in KEY_COLUMNS}}
        totals = ctx.lake.state.get("totals", {})
        by_reason = totals.get("quarantine_by_reason") or {}
        expected_read = totals.get("rows_read", 0) - sum(by_reason.get(r, 0) for r in UNPARSED_REASONS)
        diffs = {c: {"raw": int(raw_nulls[c] or 0), "quarantined": int(q_nulls[c] or 0)} for c in KEY_COLUMNS
                 if int(raw_nulls[c] or 0) != int(q_nulls[c] or 0)}
        raw = {"compared": True, "raw_rows": int(raw_nulls["rows"] or 0), "manifest_rows_read_parsed": expected_read,
               "raw_null_keys": {c: int(raw_nulls[c] or 0) for c in KEY_COLUMNS},
               "quarantined_null_keys": {c: int(q_nulls[c] or 0) for c in KEY_COLUMNS}, "differences": diffs}
        if diffs:
            fails.append(f"raw rows with a NULL key are not all quarantined: {diffs}")
        if raw["raw_rows"] != expected_read:
            fails.append(f"raw CSVs hold {raw['raw_rows']:,} parsable rows, the manifest read {expected_read:,}")
    summary = "; ".join(fails) if fails else (
        f"no NULL key in {counts['rows']:,} lake rows or {len(views)} views; accounting holds "
        f"(read {report['rows_read']:,} = lake {report['rows_lake']:,} + quarantined {report['rows_quarantined']:,}, "
        f"{len(acc_checks)} checks)" + ("; every raw NULL key is in the quarantine" if raw["compared"] else ""))
    return CheckResult(not fails, {"summary": summary, "lake_null_keys": {c: counts[c] for c in lake_cols}, "samples": samples,
                                   "views": views, "accounting_failed": failed_acc,
                                   "accounting": {k: report[k] for k in ("rows_read", "rows_lake", "rows_quarantined",
                                                                         "quarantine_by_reason")},
                                   "raw": raw, "skipped": ctx.skipped_views})

