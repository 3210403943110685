"""The view registry, `LAKE/views/_registry.json`, and the one rule of whether a registered view may serve.

Owns the registry's location, reading it, recording a promoted version in it (atomically), the
files an entry names (its base version and its deltas, `views.delta`) and the sweep of the files
no entry names, and `staleness`: why a view's registered version must not answer for the lake as
it is now (not built, built from another definition or lake version, its Parquet or serving copy
or a delta's gone, truncated or noted damaged), or None. The workbench, the build and the guardrails all ask this one
function. Must not build or load views.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock

from analytics.core.checksum import stat_damage
from analytics.core.files import write_atomic
from analytics.lake.state import Lake
from analytics.views.catalog import ViewDef
from analytics.views.serving_copy import SUFFIX as SERVING_SUFFIX
from analytics.views.serving_copy import serving_files

VIEWS_DIR = "views"
REGISTRY = "_registry.json"
LOCK_TIMEOUT_S = 3600  # a build of one view may hold its lock this long


def registry_path(lake_root: str | os.PathLike) -> Path:
    return Path(lake_root) / VIEWS_DIR / REGISTRY


def load_registry(lake_root: str | os.PathLike) -> dict[str, Any]:
    path = registry_path(lake_root)
    if not path.is_file():
        return {"views": {}}
    return json.loads(path.read_text())


def update_registry(lake_root: Path, name: str, entry: dict[str, Any]) -> None:
    path = registry_path(lake_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".registry.lock"), timeout=LOCK_TIMEOUT_S):
        reg = load_registry(lake_root)
        reg["views"][name] = entry
        reg["updated_at"] = entry["built_at"]
        write_atomic(path, json.dumps(reg, indent=1, sort_keys=True))


def staleness(view: ViewDef, lake: Lake, entry: dict[str, Any] | None,
              damaged: Mapping[str, str] | None = None) -> str | None:
    """Why `entry` (the registry's record of `view`) must not answer for `lake` now, or None.

    Its files are checked as cheaply as a stat allows: each is a regular file of the size its
    checksum records (a truncated or grown file is damaged), and none is in `damaged` (the damage
    register, `lake.damage`: found damaged by a reader or `verify`). The bytes themselves are
    checked where they are read (`serving_copy`, the workbench) and by `analytics verify`."""
    if entry is None:
        return "not built"
    if entry["definition"] != view.definition_hash():
        return "catalog definition changed since the build"
    if not lake.covers(entry["lake_version"]):
        return f"built from lake version {entry['lake_version']}, lake is now {lake.data_version}"
    if not (lake.root / entry["file"]).is_file():
        return f"file missing: {entry['file']}"
    if not entry.get("serving"):
        return "no serving copy (built before serving copies)"
    return files_damage(lake.root, entry, damaged)


def files_damage(lake_root: Path, entry: Mapping[str, Any], damaged: Mapping[str, str] | None = None) -> str | None:
    """Why the files of registered version `entry` cannot answer (missing, not a regular file, not
    the size their checksum records, noted in `damaged`), or None. One stat per file."""
    vdir = (lake_root / entry["file"]).parent
    for name, record in entry_records(entry):
        path = vdir / name
        why = stat_damage(path, name, record)
        if why is not None:
            return why
        rel = path.relative_to(lake_root).as_posix()
        if damaged and rel in damaged:
            return f"damaged: {name}: {damaged[rel]}"
    return None


def entry_records(entry: Mapping[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """Each file name of a registered version (as `entry_files`) with its checksum record (None for
    a version built before checksums)."""
    out: list[tuple[str, dict[str, Any] | None]] = []
    for version in [entry, *(entry.get("deltas") or ())]:
        out.append((Path(version["file"]).name, version.get("checksum")))
        if version.get("serving"):
            out += [(r["file"], r.get("checksum")) for r in version["serving"]["types"].values()]
    return out


def entry_files(entry: dict[str, Any]) -> list[str]:
    """The file names (in the view's directory) of a registered version: its base Parquet and
    serving copy, then each delta's."""
    out = [Path(entry["file"]).name] + (serving_files(entry["serving"]) if entry.get("serving") else [])
    for delta in entry.get("deltas") or ():
        out += [Path(delta["file"]).name] + serving_files(delta["serving"])
    return out


def version_of(f: Path) -> int:
    """The version of a view file: `v12.parquet`, `v12.click.arrow`, `d12.parquet` -> 12."""
    head = f.name.split(".", 1)[0][1:]
    return int(head) if head.isdigit() else 0


def sweep_view_dir(vdir: Path, entry: dict[str, Any] | None) -> None:
    """Remove staging leftovers and the files that neither `entry` (the registered version) nor the
    version it replaced names, keeping the two newest base versions (the caller holds the view lock)."""
    keep = set(entry_files(entry) + (entry.get("previous_files") or [])) if entry else set()
    for f in vdir.glob(".staging-*"):
        f.unlink(missing_ok=True)
    files = [f for f in [*vdir.glob("v*"), *vdir.glob("d*")] if f.suffix in (".parquet", SERVING_SUFFIX)]
    versions = sorted({version_of(f) for f in files if f.name.startswith("v")})
    for f in files:
        # a previous version stays for readers that still hold it
        if f.name not in keep and (f.name.startswith("d") or version_of(f) not in versions[-2:]):
            f.unlink(missing_ok=True)


def is_current(view: ViewDef, lake: Lake, entry: dict[str, Any] | None,
               damaged: Mapping[str, str] | None = None) -> bool:
    """Whether a registry entry is this definition built from this lake version, its files intact."""
    return staleness(view, lake, entry, damaged) is None
