"""AVG checks: an average is SUM over the non-NULL COUNT of the whole selection, NULL over nothing,
and a view's stored average is the lake's.

Owns `nonnull_denominator`, `view_equals_lake`, `empty_is_null` and `no_average_of_averages`, their
probes (Q1, July-September, August, an empty July 2023) and the numeric tolerance they compare
with. Must not filter with BETWEEN where a BETWEEN fault would show (that is between's), nor
judge whether a view's totals reconcile (mv_consistency's), nor change the lake or the views.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from analytics.checks.guardrails.context import (
    SAMPLES,
    CheckResult,
    Context,
    dict_rows,
    jsonable,
    one_row,
    probes_result,
)
from analytics.core import db
from analytics.core.sql import sql_string
from analytics.query import compiler
from analytics.query.model import Agg, parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.serving import router
from analytics.views.catalog import MEASURE_COLUMNS, SUM_TYPE

REL_TOL = 1e-9


def _not_close_sql(a: str, b: str) -> str:
    """SQL true when two numbers differ beyond the contract's tolerance (NULL only equals NULL)."""
    return (f"(({a}) IS NULL) <> (({b}) IS NULL) OR abs(CAST({a} AS DOUBLE) - CAST({b} AS DOUBLE)) > "
            f"{REL_TOL} * greatest(abs(CAST({a} AS DOUBLE)), abs(CAST({b} AS DOUBLE)))")


def _exact_avg(m: str) -> str:
    return f"CAST(sum(CAST({m} AS {SUM_TYPE})) AS DOUBLE) / NULLIF(count({m}), 0)"


AVG_WINDOW = ("2024-08-01", "2024-08-31")  # views with a day are probed over this month, the others whole


def nonnull_denominator(ctx: Context) -> CheckResult:
    per_source, fails = [], []
    avgs = [Agg("AVG", m) for m in MEASURE_COLUMNS]
    for h in ctx.views():
        keys = [c for c in h.view.group_columns if c != "type"]
        if not keys:
            continue
        windowed = "day" in h.view.group_columns
        qdict = {"select": keys + [{"AVG": m} for m in MEASURE_COLUMNS], "from": "events", "group_by": keys}
        if windowed:
            # gte/lte rather than between: a BETWEEN fault is between.*'s to report, not this check's
            qdict["where"] = [{"col": "day", "op": "gte", "val": AVG_WINDOW[0]}, {"col": "day", "op": "lte", "val": AVG_WINDOW[1]}]
        query = parse_query(qdict)
        sql, params = router.compile_for_view(query, h.view, h.rel)
        k = ", ".join(keys)
        where = f"WHERE day BETWEEN DATE '{AVG_WINDOW[0]}' AND DATE '{AVG_WINDOW[1]}'" if windowed else ""
        ref = ", ".join(f"CAST(sum(sum_{m}) AS DOUBLE) / NULLIF(sum(nn_{m}), 0) AS ref_{m}, "
                        f"CAST(sum(sum_{m}) AS DOUBLE) / NULLIF(sum(cnt), 0) AS per_row_{m}" for m in MEASURE_COLUMNS)
        diff = " OR ".join(f"(ref_{m} IS NOT NULL AND ({_not_close_sql(compiler.ident(a.name), f'ref_{m}')}))"
                           for m, a in zip(MEASURE_COLUMNS, avgs))
        sensitive = " OR ".join(f"(ref_{m} IS NOT NULL AND ({_not_close_sql(f'ref_{m}', f'per_row_{m}')}))"
                                for m in MEASURE_COLUMNS)
        with_sql = f"""
            WITH e AS (SELECT *, true AS in_engine FROM ({sql})),
                 r AS (SELECT {k}, {ref}, true AS in_view FROM {h.rel} {where} GROUP BY {k}),
                 j AS (SELECT * FROM e FULL OUTER JOIN r USING ({k}))"""
        try:
            got = one_row(ctx.con, f"""{with_sql}
                SELECT count(*) FILTER (in_view) AS groups,
                       count(*) FILTER ({' OR '.join(f'ref_{m} IS NOT NULL' for m in MEASURE_COLUMNS)}) AS groups_with_values,
                       count(*) FILTER ({diff}) AS differing,
                       count(*) FILTER (in_engine IS NULL OR in_view IS NULL) AS groups_on_one_side,
                       count(*) FILTER ({sensitive}) AS groups_where_count_star_differs
                FROM j""", params)
            sample = dict_rows(ctx.con, f"""{with_sql}
                SELECT {k}, {', '.join(f'{compiler.ident(a.name)} AS engine_{a.col}, ref_{a.col} AS sum_over_nonnull_{a.col}, '
                                       f'per_row_{a.col} AS sum_over_rows_{a.col}' for a in avgs)}
                FROM j WHERE {diff} OR in_engine IS NULL OR in_view IS NULL
                LIMIT {SAMPLES}""", params) if got["differing"] or got["groups_on_one_side"] else []
        except duckdb.Error as exc:
            fails.append(f"{h.name}: error {str(exc).splitlines()[0]}")
            continue
        per_source.append({"source": h.name, "group_by": keys, "window": list(AVG_WINDOW) if windowed else "all",
                           **got, "samples": sample})
        if got["differing"] or got["groups_on_one_side"]:
            fails.append(f"{h.name}: engine AVG differs from SUM/non-NULL COUNT in {got['differing']:,} of "
                         f"{got['groups_with_values']:,} groups" + (f" (e.g. {jsonable(sample[0])})" if sample else "")
                         + (f"; {got['groups_on_one_side']} groups on one side only" if got["groups_on_one_side"] else ""))
    # the lake route, per day
    qdict = {"select": ["day"] + [{"AVG": m} for m in MEASURE_COLUMNS], "from": "events", "group_by": ["day"]}
    query = parse_query(qdict)
    items = ", ".join(f"{_exact_avg(m)} AS {compiler.ident('AVG(' + m + ')')}" for m in MEASURE_COLUMNS)
    ref = db.fetch_arrow(ctx.con, f"SELECT day, {items} FROM events GROUP BY day")
    sql, params = compiler.compile_query(query, "events")
    why = compare_rows(query, to_rows(query, ref), ctx.answer_rows(query, sql, params))
    per_source.append({"source": "lake", "group_by": ["day"], "groups": ref.num_rows, "mismatch": why})
    if why:
        fails.append(f"lake: engine AVG per day differs from SUM/count(col): {why}")
    compared = sum(s.get("groups_with_values", s.get("groups", 0)) for s in per_source)
    sensitive = sum(s.get("groups_where_count_star_differs", 0) for s in per_source)
    summary = "; ".join(fails) if fails else (
        f"engine AVG = SUM / non-NULL COUNT in {compared:,} groups over {len(per_source)} sources "
        f"({sensitive:,} of them would differ with COUNT(*) as denominator)")
    ok = not fails and compared > 0
    if compared == 0 and not fails:
        summary = "nothing compared: no group holds a price"
    return CheckResult(ok, {"summary": summary, "compared": "engine AVG(col) per group (all group columns but type) vs "
                                                           "sum(sum_col)/sum(nn_col) of the same view file; lake AVG per day vs SUM/count(col)",
                            "sources": per_source, "skipped": ctx.skipped_views})


def view_equals_lake(ctx: Context) -> CheckResult:
    per_view, fails = [], []
    totals = ctx.lake_totals()
    priced_types = [t for (t,) in ctx.con.execute(
        f"SELECT DISTINCT type FROM {totals} WHERE {' OR '.join(f'nn_{m} > 0' for m in MEASURE_COLUMNS)} ORDER BY 1").fetchall()]
    if not priced_types:
        return CheckResult(False, {"summary": "nothing compared: the lake holds no price", "views": []})
    types = ", ".join(sql_string(t) for t in priced_types)
    v_measures = ", ".join(f"sum(sum_{m}) AS s_{m}, sum(nn_{m}) AS n_{m}" for m in MEASURE_COLUMNS)
    v_rows = ", ".join(f"sum_{m} AS s_{m}, nn_{m} AS n_{m}" for m in MEASURE_COLUMNS)
    l_measures = ", ".join(f"sum(CAST({m} AS {SUM_TYPE})) AS s_{m}, count({m}) AS n_{m}" for m in MEASURE_COLUMNS)
    avg = {side: {m: f"CAST({side}.s_{m} AS DOUBLE) / NULLIF({side}.n_{m}, 0)" for m in MEASURE_COLUMNS} for side in "vl"}
    diff = " OR ".join(f"({_not_close_sql(avg['v'][m], avg['l'][m])})" for m in MEASURE_COLUMNS)
    priced_view = f"type IN ({types}) AND ({' OR '.join(f'nn_{m} > 0' for m in MEASURE_COLUMNS)})"
    for h in ctx.views():
        k = ", ".join(h.view.group_columns)
        try:
            # groups matched on a 64-bit hash of the key: one aggregation per side, no wide join
            # view rows as they are (keys are unique: duplicates are unique_group_keys' to report)
            got = one_row(ctx.con, f"""
                WITH v AS (SELECT hash({k}) AS h, {v_rows} FROM {h.rel} WHERE {priced_view}),
                     l AS (SELECT hash({k}) AS h, {l_measures} FROM events WHERE type IN ({types}) GROUP BY h)
                SELECT count(v.h) AS view_groups, count(l.h) AS lake_groups,
                       count(*) FILTER (v.h IS NOT NULL AND l.h IS NOT NULL) AS compared,
                       count(*) FILTER (v.h IS NOT NULL AND l.h IS NOT NULL AND ({diff})) AS differing
                FROM v FULL OUTER JOIN l ON v.h = l.h""")
            sample = []
            if got["differing"]:  # confirm on the real keys (a hash collision would vanish here) and show them
                exact = f"""
                    WITH v AS (SELECT {k}, {v_measures} FROM {h.rel} WHERE {priced_view} GROUP BY ALL),
                         l AS (SELECT {k}, {l_measures} FROM events WHERE type IN ({types}) GROUP BY ALL)"""
                got["differing"] = one_row(ctx.con, f"{exact} SELECT count(*) AS n FROM v JOIN l USING ({k}) WHERE {diff}")["n"]
                sample = dict_rows(ctx.con, f"""{exact}
                    SELECT {', '.join(f'v.{c}' for c in h.view.group_columns)},
                           {', '.join(f'{avg["v"][m]} AS view_avg_{m}, {avg["l"][m]} AS lake_avg_{m}' for m in MEASURE_COLUMNS)}
                    FROM v JOIN l USING ({k}) WHERE {diff} ORDER BY ALL LIMIT {SAMPLES}""")
        except duckdb.Error as exc:
            fails.append(f"{h.name}: error {str(exc).splitlines()[0]}")
            continue
        per_view.append({"view": h.name, **got, "samples": sample})
        if got["differing"]:
            fails.append(f"{h.name}: AVG differs from the lake's in {got['differing']:,} of {got['compared']:,} groups, "
                         f"e.g. {jsonable(sample[0]) if sample else ''}")
        elif got["lake_groups"] and not got["compared"]:
            fails.append(f"{h.name}: no group in common with the lake's {got['lake_groups']:,} priced groups")
    compared = sum(v["compared"] for v in per_view)
    summary = "; ".join(fails) if fails else (
        f"stored AVG (sum/nn) equals the lake's exact AVG in all {compared:,} priced groups of {len(per_view)} views "
        f"(groups present on one side only are mv_consistency.reconcile's)")
    return CheckResult(not fails and bool(per_view), {
        "summary": summary if per_view else "no view to compare",
        "compared": f"per view key, types {priced_types}: sum(sum_col)/sum(nn_col) vs the lake's exact sum(col)/count(col)",
        "views": per_view, "skipped": ctx.skipped_views})


EMPTY_RANGE = ("2023-07-01", "2023-07-31")


def empty_is_null(ctx: Context) -> CheckResult:
    probes, fails, shapes = [], [], []
    # 1. a range with no rows: AVG/SUM/MIN/MAX NULL, COUNT 0
    in_range = ctx.con.execute("SELECT count(*) FROM events WHERE day BETWEEN ? AND ?",
                               [dt.date.fromisoformat(EMPTY_RANGE[0]), dt.date.fromisoformat(EMPTY_RANGE[1])]).fetchall()[0][0]
    q1 = {"select": [{"AVG": "bid_price"}, {"AVG": "total_price"}, {"SUM": "bid_price"}, {"COUNT": "*"},
                     {"MIN": "bid_price"}, {"MAX": "total_price"}], "from": "events",
          "where": [{"col": "day", "op": "between", "val": list(EMPTY_RANGE)}]}
    probes.append(ctx.probe(q1, f"no rows (lake holds {in_range} rows in {EMPTY_RANGE[0]}..{EMPTY_RANGE[1]}): one row of NULLs and COUNT 0",
                            [["", "", "", "0", "", ""]]))
    if in_range:
        fails.append(f"the empty probe range {EMPTY_RANGE} holds {in_range} lake rows")
    # 2. groups where a price has no non-NULL value: AVG must be NULL there (values elsewhere are other checks')
    q2 = {"select": ["type", {"AVG": "bid_price"}, {"AVG": "total_price"}], "from": "events", "group_by": ["type"]}
    query = parse_query(q2)
    ref = dict_rows(ctx.con, "SELECT type, count(bid_price) AS nn_bid_price, count(total_price) AS nn_total_price FROM events GROUP BY type")
    expect = {r["type"]: [r["nn_bid_price"] == 0, r["nn_total_price"] == 0] for r in ref}
    empty_groups = sum(sum(v) for v in expect.values())
    for name, sql, params in ctx.routes(query):
        try:
            rows = ctx.answer_rows(query, sql, params)
        except duckdb.Error as exc:
            fails.append(f"{name}: error {str(exc).splitlines()[0]}")
            continue
        got = {r[0]: [r[1] == "", r[2] == ""] for r in rows}
        bad = [{"type": t, "AVG(bid_price)": r[1], "AVG(total_price)": r[2], "expected_null": expect.get(t)}
               for t, r in ((r[0], r) for r in rows) if t in expect and any(e and not g for e, g in zip(expect[t], got[t]))]
        bad += [{"type": t, "missing_group": True} for t in expect if t not in got]
        shapes.append({"source": name, "groups": len(rows), "wrong": bad})
        if bad:
            fails.append(f"{name}: AVG over no values is not NULL: {bad[0]}")
    result = probes_result(probes, "", {"empty_groups_probed": empty_groups, "group_probe": q2, "group_sources": shapes,
                                        "skipped": ctx.skipped_views}, fail_extra=fails)
    if result.passed:
        result.evidence["summary"] = (f"AVG/SUM/MIN/MAX NULL and COUNT 0 over an empty range on {len(probes[0].sources)} sources; "
                                      f"AVG NULL in all {empty_groups} (type, price) groups without values on {len(shapes)} sources")
    return result


AVG_PROBES: tuple[dict[str, Any], ...] = (
    {"select": [{"AVG": "bid_price"}], "from": "events",
     "where": [{"col": "type", "op": "eq", "val": "impression"}, {"col": "day", "op": "between", "val": ["2024-01-01", "2024-03-31"]}]},
    {"select": ["country", {"AVG": "total_price"}], "from": "events",
     "where": [{"col": "type", "op": "eq", "val": "purchase"}, {"col": "day", "op": "between", "val": ["2024-06-01", "2024-12-31"]}],
     "group_by": ["country"]},
    {"select": ["week", {"AVG": "bid_price"}], "from": "events",
     "where": [{"col": "type", "op": "eq", "val": "impression"}, {"col": "day", "op": "between", "val": ["2024-07-01", "2024-09-29"]}],
     "group_by": ["week"]},
    {"select": ["day", {"AVG": "bid_price"}], "from": "events",
     "where": [{"col": "type", "op": "eq", "val": "impression"}, {"col": "day", "op": "between", "val": ["2024-08-01", "2024-08-07"]}],
     "group_by": ["day"]},
)


def no_average_of_averages(ctx: Context) -> CheckResult:
    probes, contrast = [], []
    for qdict in AVG_PROBES:
        query = parse_query(qdict)
        exprs = {a: _exact_avg(a.col) for a in query.aggregates}
        sql, params = compiler.compile_query(query, "events", aggregate_sql=exprs)
        ref = ctx.answer_rows(query, sql, params)
        probes.append(ctx.probe(qdict, "lake: exact SUM / COUNT over the whole selection", ref))
        # what an average of per-row averages would answer, from the finest covering view
        for h in sorted(ctx.views(), key=lambda h: -len(h.view.group_columns)):
            if router.coverage(h.view, query) is None:
                wrong = {a: f"avg(CAST(sum_{a.col} AS DOUBLE) / NULLIF(nn_{a.col}, 0))" for a in query.aggregates}
                wsql, wparams = compiler.compile_query(query, h.rel, aggregate_sql=wrong)
                wrong_rows = ctx.answer_rows(query, wsql, wparams)
                contrast.append({"query": qdict, "view": h.name, "average_of_averages_sample": wrong_rows[:3],
                                 "would_differ": compare_rows(query, ref, wrong_rows) is not None})
                break
    sensitive = sum(c["would_differ"] for c in contrast)
    return probes_result(probes, f"AVG over many groups is SUM/COUNT of the whole selection "
                                 f"({sensitive} of {len(contrast)} probes would differ as an average of averages)",
                         {"average_of_averages": contrast, "skipped": ctx.skipped_views})

