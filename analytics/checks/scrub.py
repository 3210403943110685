"""The scrub behind `analytics verify`: every file an answer can come from, read against its checksum.

Owns the list of a lake's checksummed files (`files`: lake segments and their quarantine from
the manifest, each registered view version's Parquet files and serving copies from the
registry, each lake index of the adaptive catalog) and `scrub`, which reads them all a block at
a time (`core.checksum`: bounded memory whatever the lake's size), notes what it finds in the
damage register (`lake.damage`: damaged files found, clean files cleared) and returns the
damaged and missing files with what they belong to. A file recorded before checksums existed is
checked for presence only and listed as unrecorded. Must not repair (`build` and `prepare` do).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from analytics.core.checksum import ChecksumError, check
from analytics.lake.damage import update_damage
from analytics.lake.index.store import index_records
from analytics.lake.integrity import segment_files
from analytics.lake.state import Lake
from analytics.views.adaptive_catalog import load_adaptive
from analytics.views.registry import entry_records, load_registry


@dataclass(frozen=True)
class Checked:
    rel: str  # relative to the lake
    record: dict[str, Any] | None  # None: written before checksums
    owner: str  # what it belongs to, as a person repairs it ("view mv_x v3", "lake segment of raw part p.csv")


def files(lake: Lake, *, views: bool = True, segments: bool = True) -> list[Checked]:
    """The checksummed files of the lake: its segments' and/or its views' and indexes'."""
    out: list[Checked] = []
    if segments:
        out += [Checked(f.rel, f.record, f"lake segment of raw part {f.part}") for f in segment_files(lake)]
    if views:
        for name, entry in sorted(load_registry(lake.root).items()):
            vdir = Path(entry.file).parent.as_posix()
            out += [Checked(f"{vdir}/{n}", rec, f"view {name} v{entry.version}") for n, rec in entry_records(entry)]
        for name, record in sorted(load_adaptive(lake.root)["indexes"].items()):
            if isinstance(record, dict) and record.get("dir"):
                out += [Checked(rel, rec, f"index {name} v{record.get('version')}")
                        for rel, rec in index_records(record).items()]
    return out


def scrub(lake_root: str | os.PathLike, *, views: bool = True, segments: bool = True,
          progress: Callable[[int], None] | None = None,
          total: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Check every file of `files` against its checksum; `total(bytes)` is told the bytes to read
    first, `progress(n)` each block read. Returns the counts and each damaged file with its owner."""
    started = time.perf_counter()
    lake = Lake.open(lake_root)
    todo = files(lake, views=views, segments=segments)
    if total is not None:
        total(sum(int(c.record["size"]) for c in todo if c.record))
    damaged: list[dict[str, str]] = []
    clean: list[str] = []
    nbytes = 0
    for c in todo:
        try:
            check(lake.root / c.rel, c.record, progress=progress)
        except ChecksumError as exc:
            damaged.append({"file": str(lake.root / c.rel), "rel": c.rel, "why": exc.why, "owner": c.owner})
            continue
        clean.append(c.rel)
        nbytes += int(c.record["size"]) if c.record else 0
    update_damage(lake.root, {d["rel"]: d["why"] for d in damaged}, clean)
    return {"files": len(todo), "bytes": nbytes, "damaged": damaged,
            "unrecorded": [c.rel for c in todo if c.record is None],
            "seconds": round(time.perf_counter() - started, 3)}
