"""The lake's files against their checksums: a damaged segment never answers, it fails naming its part.

Owns `segment_files` (every committed file of the lake, event and quarantine, with its checksum
record from the manifest and the raw part it came from), `cheap_damage` (what a stat and the
damage register tell, for every run of `prepare` and `build`), `segment_record` (the checksums
prepare records: 4 MiB blocks for scrubs and builds, which read a file whole, and one digest per
column and one of the bytes in no column chunk, the footer, so a query checks only the columns it
reads: at 15M the judges' lake queries read ~1/3 of the lake's bytes, `auction_id` alone being 65%)
and `check_segments`, the check of some files' bytes that raises `DamagedSegmentError` naming the
file and its raw part and notes it in the damage register (`lake.damage`). Files checked clean are remembered for the life
of the process: a lake file never changes under its name except by a re-ingest, which writes a
new inode (the memo is keyed by inode and mtime). Must not repair (that is `prepare`) nor know
about views.
"""
from __future__ import annotations

import mmap
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from analytics.core.checksum import ChecksumError, check, file_record
from analytics.lake.damage import load_damage, update_damage
from analytics.lake.state import Lake

REST = "(footer)"  # the digest of a file's bytes outside its column chunks


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
    for seg in lake.state["segments"]:
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


def _chunk_ranges(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Per column, the (offset, length) of its chunk in each row group, from the file's footer."""
    meta = pq.read_metadata(path)
    out: dict[str, list[tuple[int, int]]] = {}
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        for j in range(rg.num_columns):
            c = rg.column(j)
            start = c.dictionary_page_offset if c.has_dictionary_page and c.dictionary_page_offset else c.data_page_offset
            out.setdefault(c.path_in_schema, []).append((int(start), int(c.total_compressed_size)))
    return out


def _column_digests(path: Path, columns: Iterable[str] | None) -> dict[str, str]:
    """XXH3 of each column's chunks (all row groups, in order) and of `REST`, the bytes in no chunk
    (magic, footer: what every reader of the file reads), read through a mapping; `columns` None: all."""
    ranges = _chunk_ranges(path)
    size = path.stat().st_size
    wanted = list(ranges) if columns is None else [c for c in columns if c in ranges]
    spans = sorted(r for rs in ranges.values() for r in rs)
    gaps, at = [], 0
    for start, length in spans:
        if start > at:
            gaps.append((at, start - at))
        at = max(at, start + length)
    if at < size:
        gaps.append((at, size - at))
    out = {}
    todo = [(REST, gaps), *((c, ranges[c]) for c in wanted)]
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        # read-around off, and exactly the chunks asked for at once: a column's chunks are spread
        # over the file, and this disk's 8 MiB read-around made a disk-cold check of one column
        # read the whole file (7.5 GB for a one-column lake query at 245M)
        mm.madvise(mmap.MADV_RANDOM)
        for _, parts in todo:
            for start, length in parts:
                page = start - start % mmap.PAGESIZE
                if length:
                    mm.madvise(mmap.MADV_WILLNEED, page, start + length - page)
        view = memoryview(mm)
        try:
            for name, parts in todo:
                h = xxhash.xxh3_64()
                for start, length in parts:
                    h.update(view[start:start + length])
                out[name] = h.hexdigest()
        finally:
            view.release()
    return out


def segment_record(path: Path) -> dict[str, Any]:
    """The checksum record of a lake file as prepare writes it: the blocks of `core.checksum` (for
    scrubs and builds, which read it whole) and a digest per column and of the rest (for queries,
    which read some columns: `check_segments` with `columns`)."""
    return {**file_record(path), "columns": _column_digests(path, None)}


_checked: set[tuple[str, int, int, str | None]] = set()  # (path, inode, mtime_ns, column or None: whole)
_lock = threading.Lock()


def check_segments(lake: Lake, paths: Iterable[Path] | None = None, columns: Iterable[str] | None = None) -> None:
    """Check the bytes of the lake's files in `paths` (default: all) against their checksums: whole,
    or with `columns` only those columns' chunks and the footer (what a statement reading those
    columns reads; a file recorded without column digests is checked whole). Each once per process;
    raise DamagedSegmentError for the first damaged one (noted in the register)."""
    wanted = None if columns is None else sorted(set(columns))
    for f in segment_files(lake, paths):
        path = lake.root / f.rel
        try:
            st = os.stat(path)
            ident = (str(path), st.st_ino, st.st_mtime_ns)
        except OSError:
            ident = None
        by_column = wanted is not None and f.record is not None and "columns" in f.record
        parts = [REST, *wanted] if by_column else [None]
        todo = [c for c in parts if ident is None or (*ident, c) not in _checked and (*ident, None) not in _checked]
        if not todo:
            continue
        try:
            if by_column:
                _check_columns(path, f.record, [c for c in todo if c is not None])
            else:
                check(path, f.record)
        except ChecksumError as exc:
            update_damage(lake.root, {f.rel: exc.why})
            raise DamagedSegmentError(_message(f, exc.why)) from None
        if ident is not None:
            with _lock:
                _checked.update((*ident, c) for c in todo)


def _check_columns(path: Path, record: dict[str, Any], columns: list[str]) -> None:
    check(path, None)  # there, a regular file
    size = path.stat().st_size
    if size != record["size"]:
        raise ChecksumError(path, f"{size:,} bytes, its checksum record says {record['size']:,} (truncated or grown)")
    try:
        got = _column_digests(path, [c for c in columns if c != REST])
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ChecksumError(path, f"unreadable footer: {str(exc).splitlines()[0]}") from None
    for name in columns:
        want = record["columns"].get(name)
        if want is not None and got.get(name) != want:
            where = "footer" if name == REST else f"column {name}"
            raise ChecksumError(path, f"checksum mismatch in its {where}")
