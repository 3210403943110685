"""The lake's files against their checksums: a damaged segment never answers, it fails naming its part.

Owns `segment_files` (every committed file of the lake, event and quarantine, with its checksum
record from the manifest and the raw part it came from), `cheap_damage` (what a stat and the
damage register tell, for every run of `prepare` and `build`) and `check_segments`, the full
check of some files' bytes that raises `DamagedSegmentError` naming the file and its raw part and
notes it in the damage register (`lake.damage`). Files checked clean are remembered for the life
of the process: a lake file never changes under its name except by a re-ingest, which writes a
new inode (the memo is keyed by inode and mtime). Must not repair (that is `prepare`) nor know
about views.
"""
from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from analytics.core.checksum import ChecksumError, check
from analytics.lake.damage import load_damage, update_damage
from analytics.lake.manifest import Lake


class DamagedSegmentError(RuntimeError):
    """A lake file that does not match its checksum: the queries that read it fail, naming it."""


@dataclass(frozen=True)
class SegmentFile:
    rel: str  # path relative to the lake
    record: dict[str, Any] | None  # checksum record; None for lakes prepared before checksums
    part: str  # the raw part it came from


def segment_files(lake: Lake, paths: Iterable[Path] | None = None) -> list[SegmentFile]:
    """The lake's committed files (or those of them in `paths`) with their records and raw parts."""
    # paths as `Lake.event_files` gives them: under lake.root as it was opened
    wanted = {Path(p).relative_to(lake.root).as_posix() for p in paths} if paths is not None else None
    out = []
    for seg in lake.manifest["segments"]:
        part = (seg.get("source") or {}).get("file", seg["segment"])
        records = seg.get("checksums") or {}
        rels = list(seg["files"].values()) + ([seg["quarantine_file"]] if seg.get("quarantine_file") else [])
        out += [SegmentFile(rel, records.get(rel), part) for rel in rels if wanted is None or rel in wanted]
    return out


def _message(f: SegmentFile, why: str) -> str:
    return (f"lake file {f.rel} is damaged ({why}); it came from raw part {f.part}: run `analytics prepare` "
            f"with {f.part} in the raw directory to re-ingest it")


def cheap_damage(lake: Lake, damaged: Mapping[str, str] | None = None) -> dict[str, str]:
    """The lake files a stat or the damage register says are damaged: relative path -> message naming
    the raw part. No file is read."""
    damaged = load_damage(lake.root) if damaged is None else damaged
    out = {}
    for f in segment_files(lake):
        try:
            st = os.stat(lake.root / f.rel)
        except OSError:
            out[f.rel] = _message(f, "missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            out[f.rel] = _message(f, "not a regular file")
        elif f.record is not None and st.st_size != f.record["size"]:
            out[f.rel] = _message(f, f"{st.st_size:,} bytes, its checksum record says {f.record['size']:,}")
        elif f.rel in damaged:
            out[f.rel] = _message(f, damaged[f.rel])
    return out


_checked: set[tuple[str, int, int]] = set()  # (path, inode, mtime_ns) of files checked clean in this process
_lock = threading.Lock()


def check_segments(lake: Lake, paths: Iterable[Path] | None = None) -> None:
    """Check the bytes of the lake's files in `paths` (default: all) against their checksums, each
    once per process; raise DamagedSegmentError for the first damaged one (noted in the register)."""
    for f in segment_files(lake, paths):
        path = lake.root / f.rel
        try:
            st = os.stat(path)
            key = (str(path), st.st_ino, st.st_mtime_ns)
        except OSError:
            key = None
        if key is not None and key in _checked:
            continue
        try:
            check(path, f.record)
        except ChecksumError as exc:
            update_damage(lake.root, {f.rel: exc.why})
            raise DamagedSegmentError(_message(f, exc.why)) from None
        if key is not None:
            with _lock:
                _checked.add(key)
