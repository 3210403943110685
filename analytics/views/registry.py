"""The view registry, `LAKE/views/_registry.json`, and the one rule of whether a registered view may serve.

Owns the registry's entry type (`ViewEntry`, with its `DeltaEntry`s: what an entry's JSON holds,
read from a registry of any age), the registry's location, reading it, recording a promoted
version in it (atomically), the files an entry names (its base version and its deltas, `views.delta`) and the sweep of the files
no entry names, and `staleness`: why a view's registered version must not answer for the lake as
it is now (not built, built from another definition or lake version, its Parquet or serving copy
or a delta's gone, truncated or noted damaged), or None. The workbench, the build and the guardrails all ask this one
function. Must not build or load views.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock

from analytics.core.checksum import stat_damage
from analytics.core.files import write_atomic
from analytics.lake.state import Lake
from analytics.views.catalog import ViewDef
from analytics.views.serving_copy import SUFFIX as SERVING_SUFFIX

VIEWS_DIR = "views"
REGISTRY = "_registry.json"
LOCK_TIMEOUT_S = 3600  # a build of one view may hold its lock this long


@dataclass(frozen=True)
class DeltaEntry:
    """One refresh of a registered version (`views.delta`): the aggregate of the segments it added,
    its own Parquet file (`file`, relative to the lake) and serving copy."""

    file: str
    segments: list[str]
    rows: int
    rows_by_type: dict[str, int]
    bytes: int
    checksum: dict[str, Any] | None
    serving: dict[str, Any]
    built_at: str

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> DeltaEntry:
        """A delta as the registry records it (keys this code does not know are left out)."""
        return cls(**{k: v for k, v in record.items() if k in _FIELDS[cls]})


@dataclass(frozen=True)
class ViewEntry:
    """The registry's record of a view's promoted version: its base Parquet file (`file`, relative to
    the lake) and serving copy, the deltas refreshes added since, what lake it covers and how it was
    built. The keys of its JSON are its fields; those added after the first registries (checksums,
    serving copies, deltas, proofs, ...) default to what an entry written before them means."""

    name: str
    version: int
    file: str
    columns: list[list[str]]  # [name, DuckDB type] in the catalog's order
    rows: int  # the base's rows (each delta counts its own)
    rows_by_type: dict[str, int]
    bytes: int  # the base Parquet file's
    built_at: str
    build_seconds: float
    lake_version: int | str  # the Delta data version it covers (a string: a lake of the old format)
    segments: list[str]  # the lake segments the version (base and deltas) covers
    definition: str  # `ViewDef.definition_hash` of the definition it was built from
    mode: str  # full | incremental | compacted | recomputed
    grain: str
    dims: list[str]
    checksum: dict[str, Any] | None = None  # None: built before checksums
    serving: dict[str, Any] | None = None  # None: built before serving copies
    deltas: list[DeltaEntry] = field(default_factory=list)
    price_totals: dict[str, str] | None = None  # exact sums of each price over base and deltas
    previous_files: list[str] = field(default_factory=list)  # the replaced version's, kept for its readers
    rollup: float | None = None  # lake rows per view row
    proof: dict[str, Any] | None = None  # the self-check before promotion (`views.proof`)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ViewEntry:
        """An entry as the registry records it, of any age (keys this code does not know are left out)."""
        known = {k: v for k, v in record.items() if k in _FIELDS[cls]}
        known["deltas"] = [DeltaEntry.from_json(d) for d in record.get("deltas") or ()]
        known["previous_files"] = list(record.get("previous_files") or ())
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        """The entry as the registry records it (the keys are the fields' names)."""
        return asdict(self)

    def versions(self) -> list[ViewEntry | DeltaEntry]:
        """The base, then each delta: every part holding files an answer reads."""
        return [self, *self.deltas]

    def base_bytes(self) -> int:
        """The base version's bytes on disk: its Parquet file and serving copy."""
        return self.bytes + int((self.serving or {}).get("bytes", 0))


_FIELDS = {cls: {f.name for f in fields(cls)} for cls in (DeltaEntry, ViewEntry)}


def registry_path(lake_root: str | os.PathLike) -> Path:
    """Where the lake's registry is."""
    return Path(lake_root) / VIEWS_DIR / REGISTRY


def load_registry(lake_root: str | os.PathLike) -> dict[str, ViewEntry]:
    """The registered version of each view, by name (none before the first build)."""
    path = registry_path(lake_root)
    if not path.is_file():
        return {}
    return {name: ViewEntry.from_json(e) for name, e in json.loads(path.read_text())["views"].items()}


def update_registry(lake_root: Path, entry: ViewEntry) -> None:
    """Record `entry` as its view's registered version, atomically, under the registry's lock. The
    other entries are written back as read (an entry's keys this code does not know are kept)."""
    path = registry_path(lake_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".registry.lock"), timeout=LOCK_TIMEOUT_S):
        reg = json.loads(path.read_text()) if path.is_file() else {"views": {}}
        reg["views"][entry.name] = entry.to_json()
        reg["updated_at"] = entry.built_at
        write_atomic(path, json.dumps(reg, indent=1, sort_keys=True))


def staleness(view: ViewDef, lake: Lake, entry: ViewEntry | None,
              damaged: Mapping[str, str] | None = None) -> str | None:
    """Why `entry` (the registry's record of `view`) must not answer for `lake` now, or None.

    Its files are checked as cheaply as a stat allows: each is a regular file of the size its
    checksum records (a truncated or grown file is damaged), and none is in `damaged` (the damage
    register, `lake.damage`: found damaged by a reader or `verify`). The bytes themselves are
    checked where they are read (`serving_copy`, the workbench) and by `analytics verify`."""
    if entry is None:
        return "not built"
    if entry.definition != view.definition_hash():
        return "catalog definition changed since the build"
    if not lake.covers(entry.lake_version):
        return f"built from lake version {entry.lake_version}, lake is now {lake.data_version}"
    if not (lake.root / entry.file).is_file():
        return f"file missing: {entry.file}"
    if not entry.serving:
        return "no serving copy (built before serving copies)"
    return files_damage(lake.root, entry, damaged)


def files_damage(lake_root: Path, entry: ViewEntry, damaged: Mapping[str, str] | None = None) -> str | None:
    """Why the files of registered version `entry` cannot answer (missing, not a regular file, not
    the size their checksum records, noted in `damaged`), or None. One stat per file."""
    vdir = (lake_root / entry.file).parent
    for name, record in entry_records(entry):
        path = vdir / name
        why = stat_damage(path, name, record)
        if why is not None:
            return why
        rel = path.relative_to(lake_root).as_posix()
        if damaged and rel in damaged:
            return f"damaged: {name}: {damaged[rel]}"
    return None


def entry_records(entry: ViewEntry) -> list[tuple[str, dict[str, Any] | None]]:
    """Each file name of a registered version (as `entry_files`) with its checksum record (None for
    a version built before checksums)."""
    out: list[tuple[str, dict[str, Any] | None]] = []
    for version in entry.versions():
        out.append((Path(version.file).name, version.checksum))
        if version.serving:
            out += [(r["file"], r.get("checksum")) for r in version.serving["types"].values()]
    return out


def entry_files(entry: ViewEntry) -> list[str]:
    """The file names (in the view's directory) of a registered version: its base Parquet and
    serving copy, then each delta's."""
    return [name for name, _ in entry_records(entry)]


def version_of(f: Path) -> int:
    """The version of a view file: `v12.parquet`, `v12.click.arrow`, `d12.parquet` -> 12."""
    head = f.name.split(".", 1)[0][1:]
    return int(head) if head.isdigit() else 0


def sweep_view_dir(vdir: Path, entry: ViewEntry | None) -> None:
    """Remove staging leftovers and the files that neither `entry` (the registered version) nor the
    version it replaced names, keeping the two newest base versions (the caller holds the view lock)."""
    keep = set(entry_files(entry) + entry.previous_files) if entry else set()
    for f in vdir.glob(".staging-*"):
        f.unlink(missing_ok=True)
    files = [f for f in [*vdir.glob("v*"), *vdir.glob("d*")] if f.suffix in (".parquet", SERVING_SUFFIX)]
    versions = sorted({version_of(f) for f in files if f.name.startswith("v")})
    for f in files:
        # a previous version stays for readers that still hold it
        if f.name not in keep and (f.name.startswith("d") or version_of(f) not in versions[-2:]):
            f.unlink(missing_ok=True)


def is_current(view: ViewDef, lake: Lake, entry: ViewEntry | None,
               damaged: Mapping[str, str] | None = None) -> bool:
    """Whether a registry entry is this definition built from this lake version, its files intact."""
    return staleness(view, lake, entry, damaged) is None
