"""Advice and builds of lake indexes: for the point-lookup shapes no view beats the lake on.

Owns the lake index candidates of the lake-routed query shapes: per key (`user_id`, `auction_id`),
the shapes with an eq/in filter on it give the index's types and columns (their union; time columns
come from ts) and its kind (`KIND_OF_KEY`: a sorted copy, or a row-group filter), its bytes are
estimated from the lake's Parquet footers; `adaptive.advise` weighs them
against the view candidates for the same budget (measured lake time saved per byte). Owns building
the proposals (`lake.indexes.build_index`, checked against the lake) into the adaptive catalog and
retiring the idle ones, as `adaptive.py` does for views. Must not route queries.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from dataclasses import dataclass
from typing import Any, Mapping

from analytics.lake.index.keyfilter import estimate_bytes
from analytics.lake.index.store import (
    BASE_COLUMNS,
    DERIVED_FROM_TS,
    INDEX_DIR,
    INDEX_KEYS,
    KIND_OF_KEY,
    IndexBuildError,
    IndexDef,
    build_index,
    column_bytes,
    usable,
)
from analytics.lake.state import Lake
from analytics.query.schema import EVENT_TYPES
from analytics.query.shape import shape_columns
from analytics.views.adaptive_catalog import index_def

IX_PREFIX = "ix_"


def _key_of(shape: dict[str, Any]) -> str | None:
    ops = {c: op for c, op, _ in shape["where"] if op in ("eq", "in")}
    return next((k for k in INDEX_KEYS if k in ops), None)


def _stored(shape: dict[str, Any]) -> set[str]:
    cols = shape_columns(shape) - {"type"}
    return {("ts" if c in DERIVED_FROM_TS else c) for c in cols}


@dataclass
class IndexProposal:
    name: str
    key: str
    types: list[str]
    columns: list[str]
    est_bytes: int
    queries: int  # lake-routed queries of the log it would serve
    saved_ms: float  # their measured lake time
    shapes: list[str]
    status: str = "proposed"  # proposed | refused | kept
    reason: str = ""
    kind: str = "sorted"  # sorted | filter (`lake.indexes.KIND_OF_KEY`)


def index_candidates(lake: Lake, shapes: Mapping[str, Any], state: dict[str, Any]) -> list[IndexProposal]:
    """One lake index per key for the lake-routed `shapes` (key -> ShapeStats) with a point filter on
    it: the union of their types and columns, bytes from the lake's footers (or the kept build's)."""
    by_key: dict[str, list[str]] = {}
    for k in sorted(shapes):
        key = _key_of(shapes[k].shape)
        if key is not None and _stored(shapes[k].shape) <= set(BASE_COLUMNS):
            by_key.setdefault(key, []).append(k)
    out = []
    for key, keys in sorted(by_key.items()):
        kind = KIND_OF_KEY[key]
        types = {t for k in keys for t in shapes[k].shape["types"]} or set(EVENT_TYPES)
        cols = {key} if kind == "filter" else set().union(*(_stored(shapes[k].shape) for k in keys)) | {key}
        tag = "" if kind == "sorted" else f"|{kind}"  # a sorted index keeps the name it had before filters
        digest = hashlib.blake2b(f"{key}|{sorted(types)}|{sorted(cols)}{tag}".encode(), digest_size=3).hexdigest()
        index = IndexDef.of(f"{IX_PREFIX}{key}_{digest}", key, types, cols, kind)
        kept = state["indexes"].get(index.name)
        if isinstance(kept, dict) and "bytes" in kept:
            est = int(kept["bytes"])
        else:
            est = estimate_bytes(lake, index.types) if kind == "filter" else column_bytes(lake, index.types, index.columns)
        out.append(IndexProposal(index.name, key, list(index.types), list(index.columns), est,
                                 sum(shapes[k].lake_queries for k in keys), round(sum(shapes[k].lake_ms for k in keys), 3),
                                 keys, status="kept" if kept is not None else "proposed", kind=kind))
    return out


def index_bytes(state: dict[str, Any]) -> int:
    return sum(int(r.get("bytes", 0)) for r in state["indexes"].values() if isinstance(r, dict))


def build_indexes(lake: Lake, proposals: list[dict[str, Any]], state: dict[str, Any], now: dt.datetime,
                  memory_limit: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Build (or refresh for a new lake version) the proposed indexes into `state`; (built, failed)."""
    built, failed = [], {}
    for p in proposals:
        index = IndexDef.of(p["name"], p["key"], p["types"], p["columns"], p.get("kind", "sorted"))
        old = state["indexes"].get(index.name)
        if usable(index, lake, old) is None:
            continue
        try:
            record = build_index(index, lake, version=(int(old["version"]) + 1) if old else 1, memory_limit=memory_limit)
        except (IndexBuildError, OSError, RuntimeError) as exc:
            failed[index.name] = str(exc).splitlines()[0]
            continue
        record["created_at"] = (old or {}).get("created_at", now.isoformat(timespec="milliseconds"))
        record["chosen"] = {k: p[k] for k in ("est_bytes", "shapes", "queries", "saved_ms")}
        state["indexes"][index.name] = record
        state["retired"].pop(index.name, None)
        built.append({"index": index.name, "bytes": record["bytes"], "seconds": record["build_seconds"]})
    return built, failed


def retire_indexes(lake: Lake, state: dict[str, Any], served: Mapping[str, str], now: dt.datetime,
                   retire_after_s: float, age_s: Any, grace_s: float) -> list[str]:
    """Unlist indexes that served no query for `retire_after_s`; delete the files of those unlisted
    longer than `grace_s` ago."""
    retired = []
    for name in sorted(state["indexes"]):
        rec = state["indexes"][name]
        last = max(served.get(name, ""), str(rec.get("created_at", "")) if isinstance(rec, dict) else "")
        if index_def(name, rec if isinstance(rec, dict) else {}) is None or not last or age_s(last, now) > retire_after_s:
            state["retired"][name] = {"retired_at": now.isoformat(timespec="milliseconds"), "index": True,
                                      "last_served": served.get(name), "definition": rec}
            del state["indexes"][name]
            retired.append(name)
    for name, rec in sorted(state["retired"].items()):
        if rec.get("index") and name not in state["indexes"] and not rec.get("swept") \
                and age_s(str(rec.get("retired_at", "")), now) > grace_s:
            shutil.rmtree(lake.root / INDEX_DIR / name, ignore_errors=True)
            rec["swept"] = now.isoformat(timespec="milliseconds")
    return retired
