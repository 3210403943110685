"""Adaptive views: the workload chooses what to precompute.

Owns advice (`advise`: the lake-routed query shapes of the telemetry generalised into candidate
view definitions, each with its estimated rows and bytes from the lake's statistics, the queries it
would cover and the measured lake time it would save; the cost model refusing a view that would not
beat the lake or would break the budget) and `build_adaptive` (the best proposals built within the
budget by the catalog's own `build_view`, the adaptive catalog file rewritten, views that served no
query for `retire_after` retired). Advice is deterministic for a given telemetry log: windows are
measured back from the log's last event, ties broken by name. Takes telemetry events as data: must
not read the log (that is `batch.telemetry`) nor route queries.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import pyarrow as pa

from analytics.core.memory import DEFAULT_MEMORY_LIMIT, parse_size
from analytics.lake.manifest import Lake
from analytics.query.model import Query
from analytics.query.schema import COUNTRIES, EVENT_TYPES, N_ADVERTISERS, N_PUBLISHERS, N_USERS
from analytics.views.adaptive_catalog import (
    PREFIX,
    SHAPE_DIMS,
    load_adaptive,
    query_shape,
    save_adaptive,
    shape_columns,
    shape_key,
    shape_query,
    view_from_entry,
)
from analytics.views.adaptive_indexes import advise_indexes, build_indexes, index_bytes, retire_indexes
from analytics.views.catalog import MEASURE_COLUMNS, VIEWS, ViewDef, coverage
from analytics.views.registry import VIEWS_DIR, load_registry

# A view must hold at least this many lake rows per view row, or a query reading it whole costs
# about what the lake costs (per-user or per-auction keys): such shapes go to a lake index instead.
# A lower rollup still pays when every query it serves filters on time: the view is sorted by type
# and time, so the fast path reads that slice only, with no statement to plan and no files to open.
MIN_ROLLUP = 20.0
_TIME_FILTER_OPS = ("eq", "in", "between")
DEFAULT_RETIRE_AFTER_S = 7 * 86400  # an adaptive view that served no query for this long is retired
RETIRE_GRACE_S = 3600  # a retired view's files stay this long for readers that planned on it
_GRAIN_OF = {"minute": "minute", "hour": "hour", "day": "day", "week": "day"}
_GRAIN_ORDER = ("all", "day", "hour", "minute")
_BUCKETS_PER_DAY = {"all": 0.0, "day": 1.0, "hour": 24.0, "minute": 1440.0}
_DOMAIN = {"country": len(COUNTRIES), "advertiser_id": N_ADVERTISERS, "publisher_id": N_PUBLISHERS,
           "user_id": N_USERS}


def parse_budget(text: str) -> int:
    """Bytes of a budget: `0` (build nothing) or a size like `2GiB`, `500MB`."""
    if str(text).strip().lower() in ("0", "0b"):
        return 0
    return parse_size(text)


def parse_duration(text: str) -> float:
    """Seconds of a duration: `3600`, `90s`, `30m`, `12h`, `7d`."""
    t = str(text).strip().lower()
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in "smhd" else t) * mult
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise ValueError(f"expected a duration like 3600, 12h or 7d, got {text[:40]!r}")
    return value


@dataclass
class ShapeStats:
    shape: dict[str, Any]
    queries: int = 0
    lake_queries: int = 0
    lake_ms: float = 0.0  # measured compute time of its lake-routed answers (cache hits excluded)
    routes: dict[str, int] = field(default_factory=dict)


@dataclass
class Proposal:
    name: str
    grain: str
    dims: list[str]
    types: list[str]
    est_rows: int
    est_bytes: int
    rollup: float
    queries: int  # lake-routed queries of the log it covers
    saved_ms: float  # their measured lake time
    shapes: list[str]  # the shape keys it covers
    status: str = "proposed"  # proposed | refused | kept
    reason: str = ""

    def view(self) -> ViewDef:
        return ViewDef(self.name, self.grain, tuple(self.dims), tuple(self.types))


def collect_shapes(events: Iterable[dict[str, Any]], since: str | None = None) -> dict[str, ShapeStats]:
    """Per shape key: queries, lake-routed queries and their measured time, routes taken."""
    out: dict[str, ShapeStats] = {}
    for ev in events:
        shape = ev.get("shape")
        if not isinstance(shape, dict) or ev.get("error") or (since is not None and str(ev.get("time", "")) < since):
            continue
        key = shape_key(shape)
        st = out.get(key)
        if st is None:
            st = out[key] = ShapeStats(shape)
        st.queries += 1
        route = ev.get("route") if isinstance(ev.get("route"), str) else "?"
        st.routes[route] = st.routes.get(route, 0) + 1
        if route == "lake":
            st.lake_queries += 1
            if not ev.get("cache") and isinstance(ev.get("ms"), (int, float)):
                st.lake_ms += float(ev["ms"])
    return out


def minimal_view(shape: dict[str, Any]) -> tuple[ViewDef | None, str]:
    """The smallest view definition that answers every query of `shape` exactly, or None and why none can."""
    try:
        q = shape_query(shape)
    except (KeyError, TypeError, ValueError, IndexError):
        return None, "malformed shape"
    if not q.is_aggregate:
        return None, "lists raw rows: only the lake holds rows"
    cols = shape_columns(shape) - {"type"}
    grain, dims = "all", []
    for c in sorted(cols):
        if c == "ts":
            return None, "reads ts (millisecond precision): no rollup answers it exactly"
        if c in _GRAIN_OF:
            if _GRAIN_ORDER.index(_GRAIN_OF[c]) > _GRAIN_ORDER.index(grain):
                grain = _GRAIN_OF[c]
        elif c in SHAPE_DIMS:
            dims.append(c)
        elif c in MEASURE_COLUMNS and (c in {w[0] for w in shape["where"]} or c in shape["group_by"]):
            return None, f"filters or groups on {c}: a price is a measure, not a view key"
    name = _name(grain, dims, shape["types"])
    view = ViewDef(name, grain, tuple(dims), tuple(shape["types"]) or EVENT_TYPES)
    why = coverage(view, q)
    return (None, why) if why is not None else (view, "")


def _name(grain: str, dims: Iterable[str], types: Iterable[str]) -> str:
    dims, types = list(dims), [t for t in EVENT_TYPES if t in set(types)]
    digest = hashlib.blake2b(f"{grain}|{','.join(dims)}|{','.join(types)}".encode(), digest_size=3).hexdigest()
    tag = "all" if types == list(EVENT_TYPES) else "-".join(t[:3] for t in types)
    return f"{PREFIX}{grain}_{'_'.join(dims) if dims else 'type'}_{tag}_{digest}"


def estimate(view: ViewDef, lake: Lake) -> tuple[int, int, float]:
    """Estimated rows, bytes (Parquet + serving copy) and rollup of `view` over `lake`, from the
    manifest's rows and days per type and each key's domain: rows thrown uniformly into the
    view's key cells, K * (1 - exp(-n / K)) occupied (skew only makes the real view smaller)."""
    lake_by_type = (lake.manifest.get("totals") or {}).get("lake_by_type") or {}
    days = lake.days_by_type()
    rows = 0.0
    lake_rows = 0
    for t in view.types:
        n = lake_by_type.get(t, 0)
        lake_rows += n
        if not n:
            continue
        cells = max(1.0, _BUCKETS_PER_DAY[view.grain] * len(days.get(t, ())))
        for d in view.dims:
            cells *= _DOMAIN.get(d, n)
        rows += cells * -math.expm1(-n / cells)
    # serving copy (fixed width: type, cnt, the time columns, the keys, a priced type's four partials)
    # plus its Parquet twin, ~30% more
    width = 16 + {"all": 0, "day": 8, "hour": 16, "minute": 36}[view.grain]
    width += sum(36 if d == "auction_id" else 4 for d in view.dims)
    width += 32 if set(view.types) & {"impression", "purchase"} else 0
    per_row = width * 1.3
    rows_i = int(math.ceil(rows))
    return rows_i, int(rows_i * per_row), round(lake_rows / max(1, rows_i), 2)


def _time_filtered(shape: dict[str, Any]) -> bool:
    return any(c in _GRAIN_OF and op in _TIME_FILTER_OPS for c, op, _ in shape["where"])


def _union(a: ViewDef, b: ViewDef) -> ViewDef:
    grain = max(a.grain, b.grain, key=_GRAIN_ORDER.index)
    dims = tuple(d for d in SHAPE_DIMS if d in set(a.dims) | set(b.dims))
    types = tuple(t for t in EVENT_TYPES if t in set(a.types) | set(b.types))
    return ViewDef(_name(grain, dims, types), grain, dims, types)


def advise(lake: Lake, events: Iterable[dict[str, Any]], budget: int, *, window_s: float = DEFAULT_RETIRE_AFTER_S,
           state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Proposals (and refusals) for the lake-routed shapes of `events`, chosen greedily by measured lake
    time saved per byte within `budget` bytes (the adaptive views already kept count against it)."""
    events = list(events)
    times = [str(e["time"]) for e in events if isinstance(e, dict) and e.get("time")]
    since = _iso_minus(max(times), window_s) if times else None
    shapes = collect_shapes(events, since)
    state = load_adaptive(lake.root) if state is None else state
    kept = {n: v for n in sorted(state["views"]) if (v := view_from_entry(n, state["views"][n])) is not None}
    lake_shapes = {k: s for k, s in shapes.items() if s.lake_queries}
    candidates: dict[str, ViewDef] = {}
    not_viewable: dict[str, str] = {}
    for key in sorted(lake_shapes):
        view, why = minimal_view(lake_shapes[key].shape)
        if view is None:
            not_viewable[key] = why
        else:
            candidates[view.name] = view
    minimal = set(candidates)
    base = sorted(candidates.values(), key=lambda v: v.name)
    for i, a in enumerate(base):  # generalise: one view for two shapes of the same types when it is barely bigger
        for b in base[i + 1:]:
            if a.types == b.types:
                u = _union(a, b)
                candidates.setdefault(u.name, u)
    scored: list[Proposal] = []
    for name in sorted(candidates):
        view = candidates[name]
        covered = [k for k in sorted(lake_shapes) if k not in not_viewable
                   and coverage(view, shape_query(lake_shapes[k].shape)) is None]
        if not covered:
            continue
        rows, size, rollup = estimate(view, lake)
        scored.append(Proposal(name, view.grain, list(view.dims), list(view.types), rows, size, rollup,
                               sum(lake_shapes[k].lake_queries for k in covered),
                               round(sum(lake_shapes[k].lake_ms for k in covered), 3), covered))
    used = kept_bytes = sum(_actual_bytes(lake, n) for n in kept) + index_bytes(state)
    chosen: list[Proposal] = []
    refused: list[Proposal] = []
    done: set[str] = set()
    for name, view in kept.items():  # what the kept views cover needs nothing new
        cov = [k for k in sorted(lake_shapes) if k not in not_viewable
               and coverage(view, shape_query(lake_shapes[k].shape)) is None]
        rows, size, rollup = estimate(view, lake)
        chosen.append(Proposal(name, view.grain, list(view.dims), list(view.types), rows, size, rollup,
                               sum(lake_shapes[k].lake_queries for k in cov),
                               round(sum(lake_shapes[k].lake_ms for k in cov), 3), cov, status="kept"))
        done.update(cov)
    pool = [p for p in scored if p.name not in kept]
    while pool:
        def gain(p: Proposal) -> float:
            return sum(lake_shapes[k].lake_ms + 1e-3 * lake_shapes[k].lake_queries for k in p.shapes if k not in done)
        pool = [p for p in pool if gain(p) > 0]
        if not pool:
            break
        pool.sort(key=lambda p: (-gain(p) / max(1, p.est_bytes), p.est_bytes, p.name))
        best = pool.pop(0)
        unpruned = [k for k in best.shapes if not _time_filtered(lake_shapes[k].shape)]
        if best.rollup < MIN_ROLLUP and unpruned:
            best.status, best.reason = "refused", (
                f"rollup {best.rollup:g} lake rows per view row < {MIN_ROLLUP:g} and {len(unpruned)} of its shapes "
                "read it whole (no time filter): about as large and slow as the lake it would replace")
        elif used + best.est_bytes > budget:
            best.status, best.reason = "refused", (f"needs ~{best.est_bytes:,} bytes; {max(0, budget - used):,} of the "
                                                   f"{budget:,}-byte budget left")
        if best.status == "refused":
            if best.name in minimal:  # a refused generalisation is not news; a shape's own view is
                refused.append(best)
            continue
        used += best.est_bytes
        chosen.append(best)
        done.update(best.shapes)
    indexes, ix_refused, ix_used = advise_indexes(lake, lake_shapes, done, budget - used, state)
    used += ix_used
    by_index = {k: ix["name"] for ix in indexes for k in ix["shapes"]}
    # a shape no proposal covers gets the refusal of its own minimal view (or why no view can answer it)
    uncovered = {}
    for k in sorted(lake_shapes):
        if k in done:
            continue
        own = next((p for p in refused if k in p.shapes and len(p.shapes) == 1), None) or \
            next((p for p in refused if k in p.shapes), None)
        uncovered[k] = not_viewable.get(k) or (own.reason if own else "no candidate")
        if k in by_index:
            uncovered[k] += f"; the lake index {by_index[k]} serves it instead"
    return {"since": since, "events": len(events), "shapes": len(shapes), "lake_shapes": len(lake_shapes),
            "budget": budget, "bytes_kept": kept_bytes, "bytes_used": used, "proposals": [asdict(p) for p in chosen],
            "refused": [asdict(p) for p in refused], "uncovered": uncovered, "indexes": indexes + ix_refused,
            "shape_stats": {k: {"queries": s.queries, "lake_queries": s.lake_queries, "lake_ms": round(s.lake_ms, 3),
                                "routes": dict(sorted(s.routes.items()))} for k, s in sorted(shapes.items())},
            "kept": sorted(kept)}


def _iso_minus(iso: str, seconds: float) -> str:
    try:
        t = dt.datetime.fromisoformat(iso)
    except ValueError:
        return ""
    return (t - dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _actual_bytes(lake: Lake, name: str) -> int:
    entry = load_registry(lake.root)["views"].get(name) or {}
    return int(entry.get("bytes", 0)) + int((entry.get("serving") or {}).get("bytes", 0))


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
    kept_bytes = {n: _actual_bytes(lake, n) for n in state["views"]}
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
        try:
            res = build_view(view, lake, totals, memory_limit=memory_limit, engine=engine)
        except (BuildError, OSError, *engine.errors) as exc:
            failed[p["name"]] = str(exc).splitlines()[0]
            continue
        if p["status"] == "kept":
            continue
        entry = load_registry(lake.root)["views"][view.name]
        actual = entry["bytes"] + entry["serving"]["bytes"]
        if sum(_actual_bytes(lake, n) for n in state["views"]) + index_bytes(state) + actual > budget:
            # the estimate was low: unlisted at once, so it never serves; its files go with the sweep
            state["retired"][view.name] = {"retired_at": _iso(now), "reason": f"built {actual:,} bytes: over the budget",
                                           "definition": {"grain": view.grain, "dims": list(view.dims),
                                                          "types": list(view.types)}}
            failed[view.name] = f"built {actual:,} bytes, over the budget; not listed"
            continue
        chosen = {k: p[k] for k in ("est_rows", "est_bytes", "rollup", "queries", "saved_ms", "shapes")}
        state["views"][view.name] = {"grain": view.grain, "dims": list(view.dims), "types": list(view.types),
                                     "created_at": _iso(now), "chosen": chosen,
                                     "built": {"rows": entry["rows"], "bytes": entry["bytes"] + entry["serving"]["bytes"],
                                               "seconds": res.get("seconds", 0.0), "version": entry["version"]},
                                     "note": f"covers {p['queries']} lake queries of {len(p['shapes'])} shape(s)"}
        state["retired"].pop(view.name, None)
        built.append({"view": view.name, **state["views"][view.name]["built"]})
        log(f"{view.name}: built {entry['rows']:,} rows, {state['views'][view.name]['built']['bytes']:,} bytes")
    ix_built, ix_failed = build_indexes(lake, [ix for ix in advice["indexes"] if ix["status"] != "refused"], state,
                                        now, memory_limit)
    failed.update(ix_failed)
    for ix in sorted(ix_built, key=lambda b: -b["bytes"]):  # the estimate was low: unlisted, swept later
        total = sum(_actual_bytes(lake, n) for n in state["views"]) + index_bytes(state)
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
            "seconds": round(time.perf_counter() - started, 3)}


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



def explain_lake(lake_root: str, query: Query) -> list[str]:
    """For a lake-routed query: which adaptive view would cover it and why none serves it (from the
    adaptive catalog's last advice), for `analytics explain`."""
    state = load_adaptive(lake_root)
    shape = query_shape(query)
    key = shape_key(shape)
    view, why = minimal_view(shape)
    advice = state.get("advice") or {}
    notes = [f"adaptive: lake index {ix['name']} would serve it; not built: {ix['reason']}"
             for ix in advice.get("indexes", []) if key in ix.get("shapes", []) and ix.get("status") == "refused"]
    if view is None:
        return [f"adaptive: no view can answer this shape: {why}"] + notes
    for name in sorted(state["views"]):
        kept = view_from_entry(name, state["views"][name])
        if kept is not None and coverage(kept, query) is None:
            return [f"adaptive: {name} covers it but is not healthy (see `analytics build --adaptive`)"]
    for p in advice.get("refused", []):
        if key in p.get("shapes", []):
            return [f"adaptive: {p['name']} would cover it; not built: {p['reason']}"] + notes
    if key in (advice.get("uncovered") or {}):
        return [f"adaptive: {view.name} would cover it; not built: {advice['uncovered'][key]}"] + notes
    return [f"adaptive: {view.name} would cover it; not built: the shape was not in the telemetry when last "
            f"advised ({advice.get('advised_at', 'never')})"]
