"""Adaptive views: the workload chooses what to precompute.

Owns advice (`advise`: the lake-routed query shapes of the telemetry generalised into candidate
view definitions, each with its estimated rows and bytes from the lake's statistics, the queries it
would serve and the measured lake time it would save; the cost model (`view_ms`: a view answer's
fixed cost plus the rows its type, time and first-dimension filters leave it to read) letting a view
serve only the shapes whose measured lake time it beats by `PAYS_BELOW`, so a shape it would read
whole is left out of it instead of refusing it for the others; the budget; view and lake index
candidates weighed together by measured lake time saved per byte) and `explain_lake` (for a lake-routed query, the view that would
cover it and why none was built). Advice is deterministic for a given telemetry log: windows are
measured back from the log's last event, ties broken by name. Building is `adaptive_build.py`.
Takes telemetry events as data: must not read the log (that is `batch.telemetry`), build, nor route
queries.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from analytics.adaptive.indexes import IndexProposal, index_bytes, index_candidates
from analytics.core import db
from analytics.core.memory import parse_size
from analytics.lake.state import Lake
from analytics.query.model import Query
from analytics.query.schema import EVENT_TYPES
from analytics.query.shape import SHAPE_DIMS, query_shape, shape_columns, shape_key, shape_query
from analytics.views.adaptive_catalog import PREFIX, load_adaptive, view_from_entry
from analytics.views.catalog import MEASURE_COLUMNS, ViewDef, coverage
from analytics.views.registry import load_registry

# The cost model of a view answer (the fast path: no statement to plan, no file to open): a fixed
# cost plus the rows it reads, those of the query's types in the slice its time filters and its
# first dimension's values keep (binary searches over the view's sort order); other filters are
# masks over that slice. Measured at 15M on this project's benchmark: ~0.2-0.5 ms for a few hundred
# rows, 1.9 ms for a top k over the 525K rows of a minute view (~4 ns a row); taken at 10 ns a row
# (the re-aggregation too) so that the estimate errs towards the lake.
VIEW_FIXED_MS = 0.5
VIEW_NS_PER_ROW = 10.0
# A view serves a shape only if its estimated answer takes at most this share of the shape's
# measured lake time: the rest of the time saved pays for its bytes and its build.
PAYS_BELOW = 0.5
_DAYS_OF = {"day": 1.0, "week": 7.0, "hour": 1 / 24, "minute": 1 / 1440}
_BETWEEN_DAYS = 7.0  # a range's width is not in the shape: taken as a week
DEFAULT_RETIRE_AFTER_S = 7 * 86400  # an adaptive view that served no query for this long is retired
_GRAIN_OF = {"minute": "minute", "hour": "hour", "day": "day", "week": "day"}
_GRAIN_ORDER = ("all", "day", "hour", "minute")
_BUCKETS_PER_DAY = {"all": 0.0, "day": 1.0, "hour": 24.0, "minute": 1440.0}
_DOMAIN_COLUMNS = ("country", "advertiser_id", "publisher_id", "user_id")  # auction_id: ~one per serve, never a rollup


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
    queries: int  # lake-routed queries of the log it serves
    saved_ms: float  # their measured lake time less the view's estimated time
    shapes: list[str]  # the shape keys it serves (those it covers and pays for)
    status: str = "proposed"  # proposed | refused | kept
    reason: str = ""
    view_ms: dict[str, float] = field(default_factory=dict)  # shape key -> estimated view answer ms

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


def shapes_by_route(events: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per route (a view's name, or the lake), the query shapes the telemetry saw it answer, the
    most frequent first: what a new version of that view proves itself on (`views.proof`)."""
    out: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
    for key, st in collect_shapes(events).items():
        for route, n in st.routes.items():
            out.setdefault(route, []).append((-n, key, st.shape))
    return {route: [shape for _, _, shape in sorted(found)] for route, found in out.items()}


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
    # the dimensions the shape picks values of first: the fast path finds a first dimension's
    # values by binary search within each time unit, the others by a mask over the slice
    points = {c for c, op, _ in shape["where"] if op in ("eq", "in")}
    dims.sort(key=lambda d: (d not in points, d))
    name = _name(grain, dims, shape["types"])
    view = ViewDef(name, grain, tuple(dims), tuple(shape["types"]) or EVENT_TYPES)
    why = coverage(view, q)
    return (None, why) if why is not None else (view, "")


def _name(grain: str, dims: Iterable[str], types: Iterable[str]) -> str:
    dims, types = list(dims), [t for t in EVENT_TYPES if t in set(types)]
    digest = hashlib.blake2b(f"{grain}|{','.join(dims)}|{','.join(types)}".encode(), digest_size=3).hexdigest()
    tag = "all" if types == list(EVENT_TYPES) else "-".join(t[:3] for t in types)
    return f"{PREFIX}{grain}_{'_'.join(dims) if dims else 'type'}_{tag}_{digest}"


Domains = dict[str, dict[str, int]]  # type -> key column -> distinct values in the lake


def lake_domains(lake: Lake) -> Domains:
    """Per event type, the distinct values of each key column in the lake (DuckDB's HyperLogLog,
    ~2% error; one scan of four narrow columns: ~1 s at 15M rows). Measured, not assumed: the
    same code must judge rollups on data of any key distribution."""
    files = lake.event_files()
    if not files:
        return {}
    con = db.connect()
    con.execute("SET enable_progress_bar = false")
    try:
        got = con.execute(f"SELECT type, {', '.join(f'approx_count_distinct({c})' for c in _DOMAIN_COLUMNS)} "
                          f"FROM {lake.relation_sql()} GROUP BY type").fetchall()
    finally:
        con.close()
    return {row[0]: {c: int(v or 0) for c, v in zip(_DOMAIN_COLUMNS, row[1:])} for row in got}


def estimate(view: ViewDef, lake: Lake, domains: Domains) -> tuple[int, int, float]:
    """Estimated rows, bytes (Parquet + serving copy) and rollup of `view` over `lake`, from the
    manifest's rows and days per type and each key's measured domain (`lake_domains`): rows thrown
    uniformly into the view's key cells, K * (1 - exp(-n / K)) occupied (skew only makes the real
    view smaller)."""
    lake_by_type = (lake.state.get("totals") or {}).get("lake_by_type") or {}
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
            cells *= max(1, (domains.get(t) or {}).get(d) or n)
        rows += cells * -math.expm1(-n / cells)
    # serving copy (fixed width: type, cnt, the time columns, the keys, a priced type's four partials)
    # plus its Parquet twin, ~30% more
    width = 16 + {"all": 0, "day": 8, "hour": 16, "minute": 36}[view.grain]
    width += sum(36 if d == "auction_id" else 4 for d in view.dims)
    width += 32 if set(view.types) & {"impression", "purchase"} else 0
    per_row = width * 1.3
    rows_i = int(math.ceil(rows))
    return rows_i, int(rows_i * per_row), round(lake_rows / max(1, rows_i), 2)


def view_ms(view: ViewDef, est_rows: int, shape: dict[str, Any], lake: Lake, domains: Domains) -> float:
    """Estimated ms of a view answer to a query of `shape`: `VIEW_FIXED_MS` plus `VIEW_NS_PER_ROW`
    for each row it reads, the view's rows of the shape's types (in proportion to the lake's) cut
    by its time filters (one value of a time column keeps that many days of the lake's) and by the
    values of the view's first dimension (runs found by binary search)."""
    lake_by_type = (lake.state.get("totals") or {}).get("lake_by_type") or {}
    types = [t for t in view.types if t in (shape["types"] or view.types)]
    held = sum(lake_by_type.get(t, 0) for t in view.types) or 1
    rows = est_rows * sum(lake_by_type.get(t, 0) for t in types) / held
    days = max((len(v) for v in lake.days_by_type().values()), default=1) or 1
    fraction = 1.0
    first = view.dims[0] if view.dims else None
    for col, op, n in shape["where"]:
        if col in _DAYS_OF and view.grain != "all" and op in ("eq", "in", "between"):
            kept_days = _BETWEEN_DAYS if op == "between" else int(n) * _DAYS_OF[col]
            fraction = min(fraction, max(kept_days, _DAYS_OF[view.grain if view.grain != "all" else "day"]) / days)
    for col, op, n in shape["where"]:
        if col == first and op in ("eq", "in"):
            domain = max((domains.get(t) or {}).get(col, 0) for t in types) if types else 0
            fraction *= min(1.0, int(n) / domain) if domain else 1.0
    return VIEW_FIXED_MS + rows * fraction * VIEW_NS_PER_ROW / 1e6


def _serves(view: ViewDef, est_rows: int, keys: Iterable[str], shapes: dict[str, ShapeStats], lake: Lake,
            domains: Domains) -> dict[str, float]:
    """The shapes among `keys` the view pays for (estimated answer at most `PAYS_BELOW` of the
    shape's measured lake time per query), each with that estimate."""
    out = {}
    for k in keys:
        st = shapes[k]
        per_query = st.lake_ms / st.lake_queries if st.lake_queries else 0.0
        ms = view_ms(view, est_rows, st.shape, lake, domains)
        if ms <= PAYS_BELOW * per_query:
            out[k] = round(ms, 3)
    return out


def _refusal(p: Proposal, shapes: dict[str, ShapeStats], by_index: dict[str, str]) -> str:
    served = sorted({by_index[k] for k in p.shapes if k in by_index})
    if served:
        return f"its queries are served by the lake index {', '.join(served)}"
    return p.reason or "not worth its bytes"


def _union(a: ViewDef, b: ViewDef) -> ViewDef:
    grain = max(a.grain, b.grain, key=_GRAIN_ORDER.index)
    dims = tuple(d for d in SHAPE_DIMS if d in set(a.dims) | set(b.dims))
    types = tuple(t for t in EVENT_TYPES if t in set(a.types) | set(b.types))
    return ViewDef(_name(grain, dims, types), grain, dims, types)


def _candidates(lake_shapes: dict[str, ShapeStats]) -> tuple[dict[str, ViewDef], dict[str, str], set[str]]:
    """Each shape's minimal view, and the union of every two of the same types (one view for two
    shapes when it is barely bigger); why the shapes no view can answer cannot; the minimal names."""
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
    for i, a in enumerate(base):
        for b in base[i + 1:]:
            if a.types == b.types:
                u = _union(a, b)
                candidates.setdefault(u.name, u)
    return candidates, not_viewable, minimal


def _proposal(view: ViewDef, covered: list[str], lake_shapes: dict[str, ShapeStats], lake: Lake,
              domains: Domains) -> Proposal:
    """`view` weighed for the shapes it covers: it serves those it pays for (a covered shape it
    would read whole, too slowly, is left out of it rather than refusing it for the others), and
    is refused, saying why, when it pays for none."""
    rows, size, rollup = estimate(view, lake, domains)
    paid = _serves(view, rows, covered, lake_shapes, lake, domains)
    served = [k for k in covered if k in paid]
    p = Proposal(view.name, view.grain, list(view.dims), list(view.types), rows, size, rollup,
                 sum(lake_shapes[k].lake_queries for k in served), _saved(served, paid, lake_shapes),
                 served or covered, view_ms=paid)
    if not served:
        worst = min(covered, key=lambda k: lake_shapes[k].lake_ms / max(1, lake_shapes[k].lake_queries))
        lake_ms = lake_shapes[worst].lake_ms / max(1, lake_shapes[worst].lake_queries)
        est = view_ms(view, rows, lake_shapes[worst].shape, lake, domains)
        p.status, p.reason = "refused", (f"a view answer would take ~{est:.1f} ms (~{rows:,} rows, rollup {rollup:g}), "
                                         f"no less than {PAYS_BELOW:g}x the lake's measured {lake_ms:.1f} ms")
    return p


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
    candidates, not_viewable, minimal = _candidates(lake_shapes)
    domains = lake_domains(lake) if candidates or kept else {}
    scored: list[Proposal] = []
    for name in sorted(candidates):
        view = candidates[name]
        covered = [k for k in sorted(lake_shapes) if k not in not_viewable
                   and coverage(view, shape_query(lake_shapes[k].shape)) is None]
        if covered:
            scored.append(_proposal(view, covered, lake_shapes, lake, domains))
    used = kept_bytes = sum(actual_bytes(lake, n) for n in kept) + index_bytes(state)
    chosen: list[Proposal] = []
    refused: list[Proposal] = []
    ix_refused: list[IndexProposal] = []
    done: set[str] = set()  # shapes a chosen view or index serves
    by_view: set[str] = set()
    for name, view in kept.items():  # what the kept views cover needs nothing new
        cov = [k for k in sorted(lake_shapes) if k not in not_viewable
               and coverage(view, shape_query(lake_shapes[k].shape)) is None]
        rows, size, rollup = estimate(view, lake, domains)
        chosen.append(Proposal(name, view.grain, list(view.dims), list(view.types), rows, size, rollup,
                               sum(lake_shapes[k].lake_queries for k in cov),
                               round(sum(lake_shapes[k].lake_ms for k in cov), 3), cov, status="kept"))
        done.update(cov)
        by_view.update(cov)
    indexes: list[IndexProposal] = []
    pool: list[Proposal | IndexProposal] = [p for p in scored if p.name not in kept and p.status != "refused"]
    for ix in index_candidates(lake, lake_shapes, state):
        if ix.status == "kept":  # built earlier: its bytes are counted in `used` already
            indexes.append(ix)
            done.update(ix.shapes)
        else:
            pool.append(ix)
    while pool:
        def gain(p: Proposal | IndexProposal) -> float:
            """Measured lake ms its shapes not yet served would save (a view's estimated ms deducted)."""
            cost = p.view_ms if isinstance(p, Proposal) else {}
            return sum(lake_shapes[k].lake_ms - cost.get(k, 0.0) * lake_shapes[k].lake_queries
                       + 1e-3 * lake_shapes[k].lake_queries for k in p.shapes if k not in done)
        pool = [p for p in pool if gain(p) > 0]
        if not pool:
            break
        pool.sort(key=lambda p: (-gain(p) / max(1, p.est_bytes), p.est_bytes, p.name))
        best = pool.pop(0)
        if used + best.est_bytes > budget:
            best.status, best.reason = "refused", (f"needs ~{best.est_bytes:,} bytes; {max(0, budget - used):,} of the "
                                                   f"{budget:,}-byte budget left")
        if best.status == "refused":
            if isinstance(best, IndexProposal):
                ix_refused.append(best)
            elif best.name in minimal:  # a refused generalisation is not news; a shape's own view is
                refused.append(best)
            continue
        used += best.est_bytes
        (indexes if isinstance(best, IndexProposal) else chosen).append(best)
        done.update(best.shapes)
        if isinstance(best, Proposal):
            by_view.update(best.shapes)
    by_index = {k: ix.name for ix in indexes for k in ix.shapes}
    # a shape's own view that was never weighed (a chosen index served its shapes first) still says why
    weighed = {p.name for p in chosen + refused}
    for p in scored:
        if p.name in minimal and p.name not in weighed and not set(p.shapes) <= by_view:
            p.reason = _refusal(p, lake_shapes, by_index)
            p.status = "refused"
            refused.append(p)
    # a shape no proposal covers gets the refusal of its own minimal view (or why no view can answer it)
    uncovered = {}
    for k in sorted(lake_shapes):
        if k in by_view:
            continue
        own = next((p for p in refused if k in p.shapes and len(p.shapes) == 1), None) or \
            next((p for p in refused if k in p.shapes), None)
        uncovered[k] = not_viewable.get(k) or (own.reason if own else "no candidate")
        if k in by_index:
            uncovered[k] += f"; the lake index {by_index[k]} serves it instead"
    return {"since": since, "events": len(events), "shapes": len(shapes), "lake_shapes": len(lake_shapes),
            "budget": budget, "bytes_kept": kept_bytes, "bytes_used": used, "proposals": [asdict(p) for p in chosen],
            "refused": [asdict(p) for p in refused], "uncovered": uncovered, "indexes": [asdict(ix) for ix in indexes + ix_refused],
            "shape_stats": {k: {"queries": s.queries, "lake_queries": s.lake_queries, "lake_ms": round(s.lake_ms, 3),
                                "routes": dict(sorted(s.routes.items()))} for k, s in sorted(shapes.items())},
            "kept": sorted(kept)}


def _saved(keys: Iterable[str], paid: dict[str, float], shapes: dict[str, ShapeStats]) -> float:
    """Measured lake ms of the shapes' queries less their estimated view ms."""
    return round(sum(shapes[k].lake_ms - paid[k] * shapes[k].lake_queries for k in keys), 3)


def _iso_minus(iso: str, seconds: float) -> str:
    try:
        t = dt.datetime.fromisoformat(iso)
    except ValueError:
        return ""
    return (t - dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def actual_bytes(lake: Lake, name: str) -> int:
    """Bytes of a view's registered version: its Parquet and its serving copy."""
    entry = load_registry(lake.root).get(name)
    return entry.base_bytes() if entry else 0


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
