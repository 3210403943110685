"""The page cache of a lake's files, for the disk-cold pass: dropping it, and the disk's cold read speed.

Owns `evict` (`posix_fadvise(POSIX_FADV_DONTNEED)` over every regular file below a directory: the
kernel drops their clean cached pages; it needs no root and touches no other file's pages) and
`cold_read_bandwidth` (the largest files below a directory read sequentially right after `evict`).
A page that a live process has memory-mapped stays cached, so the disk-cold pass evicts before each
new process, when none maps the lake. Must not write, nor evict outside the directory given.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

# a sample of the lake's largest files: long enough that one request's latency does not dominate
BANDWIDTH_SAMPLE_BYTES = 256 * 2**20
_CHUNK = 8 * 2**20


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def evict(root: str | os.PathLike) -> int:
    """Drop the cached pages of every file below `root`; the bytes of the files asked (a file removed meanwhile is skipped)."""
    total = 0
    for path in _files(Path(root)):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def cold_read_bandwidth(root: str | os.PathLike, sample_bytes: int = BANDWIDTH_SAMPLE_BYTES) -> dict[str, Any]:
    """Read the largest files below `root` (up to `sample_bytes`) sequentially from a dropped cache:
    `bytes`, `seconds`, `bytes_per_s` (None when there is nothing to read). Their pages are dropped again after."""
    sample, size = [], 0
    for path in sorted(_files(Path(root)), key=lambda p: p.stat().st_size, reverse=True):
        if size >= sample_bytes:
            break
        sample.append(path)
        size += path.stat().st_size
    read, seconds = 0, 0.0
    for path in sample:
        with open(path, "rb", buffering=0) as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            t0 = time.perf_counter()
            while chunk := fh.read(_CHUNK):
                read += len(chunk)
            seconds += time.perf_counter() - t0
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return {"bytes": read, "seconds": round(seconds, 4),
            "bytes_per_s": round(read / seconds) if read and seconds > 0 else None}
