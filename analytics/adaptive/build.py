"""`build --adaptive`: retire idle adaptive views and indexes, build the best proposals within the budget.

Owns the adaptive build (advice from `adaptive.advise`; each view built, checked and promoted by the
catalog's own `build_view`, each lake index by `lake.indexes.build_index`; the adaptive catalog file
rewritten once at the end), retirement (a view or index that served no query for `retire_after_s`,
measured from the telemetry's routes and indexes, is unlisted at once and its files deleted by a build
at least `RETIRE_GRACE_S` later, so a reader that planned on it still finds them) and keeping the
budget (kept definitions count against it; one whose build came out larger than the budget allows is
unlisted). Must not read the telemetry log (its events are given) nor route queries.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import time
from typing import Any, Callable, Iterable

import pyarrow as pa

from analytics.adaptive.advice import DEFAULT_RETIRE_AFTER_S, actual_bytes, advise
from analytics.adaptive.indexes import build_indexes, index_bytes, retire_indexes
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.lake.state import Lake
from analytics.views.adaptive_catalog import PREFIX, load_adaptive, save_adaptive, view_from_entry
from analytics.views.catalog import VIEWS, ViewDef
from analytics.views.registry import VIEWS_DIR, load_registry

RETIRE_GRACE_S = 3600  # a retired view's files stay this long for readers that planned on it


def last_served(events: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Per route (and lake index), the time of the last query it answered."""
    out: dict[str, str] = {}
    for ev in events:
        t = ev.get("time")
        for r in (ev.get("route"), ev.get("index")):
            if isinstance(r, str) and isinstance(t, str) and not ev.get("error") and t > out.get(r, ""):
                out[r] = t
    return out


def build_adaptive(lake_dir: str, events: Iterable[dict[str, Any]], *, budget: int,
                   retire_after_s: float = DEFAULT_RETIRE_AFTER_S, memory_limit: str = DEFAULT_MEMORY_LIMIT,
                   progress: bool = True, now: dt.datetime | None = None,
                   log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Retire idle adaptive views, then build the best proposals within `budget` with `build_view`,
    each checked and promoted like a catalog view; returns what was retired, built, refused."""
    from analytics.views.build import BuildError, DuckDBAggregator, build_view

    started = time.perf_counter()
    lake = Lake.open(lake_dir)
    events = list(events)
    now = now or dt.datetime.now(dt.timezone.utc)
    state = load_adaptive(lake.root)
    served = last_served(events)
    retired = []
    for name in sorted(state["views"]):
        entry = state["views"][name]
        last = max(served.get(name, ""), str(entry.get("created_at", "")))
        if not last or _age_s(last, now) > retire_after_s:
            state["retired"][name] = {"retired_at": _iso(now), "last_served": served.get(name),
                                      "definition": entry}
            del state["views"][name]
            retired.append(name)
    # a smaller budget than the views kept use: the largest go first
    kept_bytes = {n: actual_bytes(lake, n) for n in state["views"]}
    for name in sorted(kept_bytes, key=lambda n: (-kept_bytes[n], n)):
        if sum(kept_bytes.values()) <= budget:
            break
        state["retired"][name] = {"retired_at": _iso(now), "last_served": served.get(name),
                                  "reason": "over the budget", "definition": state["views"].pop(name)}
        del kept_bytes[name]
        retired.append(name)
    _sweep_retired(lake, state, now)
    retired += retire_indexes(lake, state, served, now, retire_after_s, _age_s, RETIRE_GRACE_S)
    advice = advise(lake, events, budget, window_s=retire_after_s, state=state)
    engine = DuckDBAggregator(memory_limit)
    totals_cache: list[pa.Table] = []

    def totals() -> pa.Table:
        if not totals_cache:
            totals_cache.append(engine.lake_totals(lake))
        return totals_cache[0]

    built, failed = [], {}
    proposed = {p["name"] for p in advice["proposals"]}
    for name in sorted(set(state["views"]) - proposed):  # kept views follow the lake (incrementally)
        view = view_from_entry(name, state["views"][name])
        try:
            if view is not None:
                build_view(view, lake, totals, memory_limit=memory_limit, engine=engine)
        except (BuildError, OSError, *engine.errors) as exc:
            failed[name] = str(exc).splitlines()[0]
    for p in advice["proposals"]:
        view = ViewDef(p["name"], p["grain"], tuple(p["dims"]), tuple(p["types"]))
        try:  # it proves itself on the telemetry's shapes it was chosen for, among others
            res = build_view(view, lake, totals, memory_limit=memory_limit, engine=engine,
                             shapes=[json.loads(k) for k in p["shapes"]])
        except (BuildError, OSError, *engine.errors) as exc:
            failed[p["name"]] = str(exc).splitlines()[0]
            continue
        if p["status"] == "kept":
            continue
        entry = load_registry(lake.root)[view.name]
        actual = entry.base_bytes()
        if sum(actual_bytes(lake, n) for n in state["views"]) + index_bytes(state) + actual > budget:
            # the estimate was low: unlisted at once, so it never serves; its files go with the sweep
            state["retired"][view.name] = {"retired_at": _iso(now), "reason": f"built {actual:,} bytes: over the budget",
                                           "definition": {"grain": view.grain, "dims": list(view.dims),
                                                          "types": list(view.types)}}
            failed[view.name] = f"built {actual:,} bytes, over the budget; not listed"
            continue
        chosen = {k: p[k] for k in ("est_rows", "est_bytes", "rollup", "queries", "saved_ms", "shapes")}
        state["views"][view.name] = {"grain": view.grain, "dims": list(view.dims), "types": list(view.types),
                                     "created_at": _iso(now), "chosen": chosen,
                                     "built": {"rows": entry.rows, "bytes": actual,
                                               "seconds": res.get("seconds", 0.0), "version": entry.version},
                                     "note": f"covers {p['queries']} lake queries of {len(p['shapes'])} shape(s)"}
        state["retired"].pop(view.name, None)
        built.append({"view": view.name, **state["views"][view.name]["built"]})
        log(f"{view.name}: built {entry.rows:,} rows, {actual:,} bytes")
    ix_started = time.perf_counter()
    ix_built, ix_failed = build_indexes(lake, [ix for ix in advice["indexes"] if ix["status"] != "refused"], state,
                                        now, memory_limit)
    failed.update(ix_failed)
    for ix in sorted(ix_built, key=lambda b: -b["bytes"]):  # the estimate was low: unlisted, swept later
        total = sum(actual_bytes(lake, n) for n in state["views"]) + index_bytes(state)
        if total > budget:
            rec = state["indexes"].pop(ix["index"])
            state["retired"][ix["index"]] = {"retired_at": _iso(now), "index": True, "definition": rec,
                                             "reason": f"built {rec['bytes']:,} bytes: over the budget"}
            failed[ix["index"]] = f"built {rec['bytes']:,} bytes, over the budget; not listed"
            ix_built.remove(ix)
    state["advice"] = {k: advice[k] for k in ("since", "events", "shapes", "lake_shapes", "budget", "refused",
                                                "uncovered", "indexes")}
    state["advice"]["advised_at"] = _iso(now)
    save_adaptive(lake.root, state)
    return {"retired": retired, "built": built, "indexes": ix_built, "failed": failed,
            "refused": advice["refused"] + [ix for ix in advice["indexes"] if ix["status"] == "refused"],
            "uncovered": advice["uncovered"], "budget": budget,
            "bytes": sum(v["built"]["bytes"] for v in state["views"].values() if "built" in v) + index_bytes(state),
            "seconds": round(time.perf_counter() - started, 3), "index_seconds": round(time.perf_counter() - ix_started, 3)}


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def _age_s(iso: str, now: dt.datetime) -> float:
    try:
        t = dt.datetime.fromisoformat(iso)
    except ValueError:
        return math.inf
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return (now - t).total_seconds()


def _sweep_retired(lake: Lake, state: dict[str, Any], now: dt.datetime) -> None:
    """Delete the files of views retired longer than the grace ago (a reader that planned on one
    before it was retired still finds its files until then)."""
    for name in sorted(state["retired"]):
        rec = state["retired"][name]
        if name in state["views"] or name in VIEWS or not name.startswith(PREFIX):
            continue
        if _age_s(str(rec.get("retired_at", "")), now) > RETIRE_GRACE_S and not rec.get("swept"):
            shutil.rmtree(lake.root / VIEWS_DIR / name, ignore_errors=True)
            rec["swept"] = _iso(now)
