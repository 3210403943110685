"""The adaptive catalog, `LAKE/views/_adaptive.json`: view and index definitions the workload chose.

Owns the file (read tolerantly, written atomically under a lock), the `ViewDef`s and lake
`IndexDef`s it declares (`usable_indexes`: those that may answer for the lake now),
`all_views` (the fixed catalog plus these: what the workbench, the router and the guardrails
iterate). Definitions are data: each carries how it was chosen (the shapes, queries
and measured lake time behind it); nothing here is written into code. Must not build views, read
telemetry or choose what to build (that is `adaptive.py`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from analytics.core.files import write_atomic
from analytics.lake.index.store import IndexDef, index_files, usable
from analytics.lake.state import Lake
from analytics.query.schema import EVENT_TYPES
from analytics.query.shape import SHAPE_DIMS
from analytics.views.catalog import CATALOG, TIME_GRAINS, VIEWS, ViewDef
from analytics.views.registry import VIEWS_DIR, load_registry

ADAPTIVE = "_adaptive.json"
PREFIX = "ad_"  # adaptive view names start so: never a catalog name


def adaptive_path(lake_root: str | os.PathLike) -> Path:
    return Path(lake_root) / VIEWS_DIR / ADAPTIVE


def empty_state() -> dict[str, Any]:
    return {"views": {}, "indexes": {}, "retired": {}, "advice": None}


def load_adaptive(lake_root: str | os.PathLike) -> dict[str, Any]:
    """The adaptive catalog; an absent or unreadable file is an empty one (serving never fails on it)."""
    path = adaptive_path(lake_root)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return empty_state()
    if not isinstance(state, dict):
        return empty_state()
    out = empty_state()
    for k in out:
        if isinstance(state.get(k), dict):
            out[k] = state[k]
    return out


def save_adaptive(lake_root: str | os.PathLike, state: dict[str, Any]) -> None:
    path = adaptive_path(lake_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".adaptive.lock"), timeout=60):
        write_atomic(path, json.dumps(state, indent=1, sort_keys=True, default=str))


def view_from_entry(name: str, entry: dict[str, Any]) -> ViewDef | None:
    """The `ViewDef` an adaptive entry declares, or None if the entry is malformed (then it is ignored)."""
    try:
        grain, dims, types = entry["grain"], tuple(entry["dims"]), tuple(entry["types"])
    except (KeyError, TypeError):
        return None
    if (not name.startswith(PREFIX) or grain not in TIME_GRAINS or not types
            or not set(types) <= set(EVENT_TYPES) or any(d not in SHAPE_DIMS for d in dims)):
        return None
    ordered = tuple(t for t in EVENT_TYPES if t in types)
    return ViewDef(name, grain, dims, ordered, note=f"adaptive: {entry.get('note', '')}".strip())


def adaptive_views(lake_root: str | os.PathLike, state: dict[str, Any] | None = None) -> tuple[ViewDef, ...]:
    state = load_adaptive(lake_root) if state is None else state
    out = []
    for name in sorted(state["views"]):
        view = view_from_entry(name, state["views"][name])
        if view is not None and name not in VIEWS:
            out.append(view)
    return tuple(out)


def all_views(lake_root: str | os.PathLike, state: dict[str, Any] | None = None) -> dict[str, ViewDef]:
    """The fixed catalog, then the lake's adaptive views: every view that may serve this lake."""
    out = {v.name: v for v in CATALOG}
    out.update({v.name: v for v in adaptive_views(lake_root, state)})
    return out


def index_def(name: str, record: dict[str, Any]) -> IndexDef | None:
    try:
        return IndexDef.of(name, record["key"], record["types"], record["columns"], record.get("kind", "sorted"))
    except (KeyError, TypeError, ValueError):
        return None


def usable_indexes(lake: Lake, state: dict[str, Any] | None = None) -> list[tuple[IndexDef, str]]:
    """The lake indexes of the adaptive catalog that may answer for `lake` now, each with the relation
    that reads it."""
    state = load_adaptive(lake.root) if state is None else state
    out = []
    for name in sorted(state["indexes"]):
        record = state["indexes"][name]
        index = index_def(name, record) if isinstance(record, dict) else None
        if index is not None and usable(index, lake, record) is None:
            out.append((index, index.relation(index_files(lake.root, record))))
    return out


def covered_lake_versions(lake_root: Path) -> set[int]:
    """The lake versions the registered views and lake indexes were built from: `vacuum` keeps them."""
    covered = [e.lake_version for e in load_registry(lake_root).values()]
    covered += [r.get("lake_version") for r in load_adaptive(lake_root)["indexes"].values() if isinstance(r, dict)]
    return {v for v in covered if isinstance(v, int)}
