"""Checksums of the files an answer can come from, and the check of a file against its record.

Owns the record's shape and the hash. A record is `{"size": bytes, "block": bytes per block,
"xxh3": [one hex digest per block]}`, or with `"xxh3_packed"` (base64 of the digests as
little-endian uint64) in place of the list for files of many small blocks: xxHash's XXH3-64 of
each fixed-size block of the file, so a reader that needs one part of a large file can check only
the blocks it reads (`check` with a byte range, or a `BlockChecker` over a mapping that checks
each block once, on first read), and a scrub checks whole files a block at a time in bounded memory. XXH3 is
not cryptographic: it finds the flipped bits, truncations and stray writes of a disk or a
careless hand, not a forger (measured on this machine: 23.7 GB/s, zlib's crc32 4.0 GB/s,
blake2b 0.9 GB/s; ARCHITECTURE.md). Writers call `file_record` on the file they have just
written and fsynced, before they name it in a registry or manifest. Must not know what the
files hold or where their records are kept.
"""
from __future__ import annotations

import base64
import mmap
import os
import stat
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import xxhash

BLOCK = 4 << 20  # 4 MiB: a record of a 1 GB file holds 256 digests; a check reads at most 4 MiB extra


class ChecksumError(ValueError):
    """A file that does not match its checksum record: damaged, truncated, missing or not a file."""

    def __init__(self, path: str | os.PathLike, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = str(path)
        self.why = why


def file_record(path: str | os.PathLike, block: int = BLOCK, packed: bool = False) -> dict[str, Any]:
    """The checksum record of the file at `path` as it is now (`packed`: digests as one base64 string)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        digests: list[int] = []
        if size:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    digests = [xxhash.xxh3_64_intdigest(view[i:i + block]) for i in range(0, size, block)]
                finally:
                    view.release()
    if packed:
        raw = np.array(digests, dtype="<u8").tobytes()
        return {"size": size, "block": block, "xxh3_packed": base64.b64encode(raw).decode()}
    return {"size": size, "block": block, "xxh3": [f"{d:016x}" for d in digests]}


def digests(record: Mapping[str, Any]) -> np.ndarray:
    """A record's block digests as uint64, whichever form it keeps them in."""
    if "xxh3_packed" in record:
        return np.frombuffer(base64.b64decode(record["xxh3_packed"]), dtype="<u8")
    return np.array([int(h, 16) for h in record["xxh3"]], dtype=np.uint64)


def _fitting(path: Path, actual: int, record: Mapping[str, Any]) -> tuple[int, int, np.ndarray]:
    """The record's size, block and digests, after checking that the file's `actual` size is the
    recorded one and that the digests fit it (ChecksumError otherwise)."""
    size, block, want = int(record["size"]), int(record["block"]), digests(record)
    if actual != size:
        raise ChecksumError(path, f"{actual:,} bytes, its checksum record says {size:,} (truncated or grown)")
    if len(want) != -(-size // block):
        raise ChecksumError(path, "its checksum record does not fit its size")
    return size, block, want


def stat_damage(path: str | os.PathLike, name: str, record: Mapping[str, Any] | None) -> str | None:
    """Why the file at `path` (called `name` in the reason) cannot be the one `record` describes,
    from one stat: missing, not a regular file, or not the recorded size; None when it may be."""
    try:
        st = os.stat(path)
    except OSError:
        return f"file missing: {name}"
    if not stat.S_ISREG(st.st_mode):
        return f"damaged: {name} is not a regular file"
    if record is not None and st.st_size != record["size"]:
        return f"damaged: {name} is {st.st_size:,} bytes, its checksum record says {record['size']:,}"
    return None


def check(path: str | os.PathLike, record: Mapping[str, Any] | None, start: int = 0, stop: int | None = None,
          progress: Callable[[int], None] | None = None) -> None:
    """Raise ChecksumError unless the file at `path` matches `record` in the blocks covering bytes
    [start, stop) (default: the whole file). The size is always checked. `progress(n)` is told of
    each block's bytes as it is read. A record of None (a file written before checksums) passes
    the existence check only."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ChecksumError(p, "missing") from None
    except OSError as exc:
        raise ChecksumError(p, f"unreadable: {exc.strerror}") from None
    if not p.is_file():
        raise ChecksumError(p, "not a regular file")
    if record is None:
        return
    size, block, want = _fitting(p, st.st_size, record)
    if not size:
        return
    stop = size if stop is None else min(stop, size)
    first, last = start // block, (max(stop, start + 1) - 1) // block
    try:
        # hashed through a read-only mapping: no copy into a buffer (measured 10-12 GB/s from the page
        # cache, against 1.5 GB/s for read() into a 4 MiB buffer)
        with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                for i in range(first, min(last + 1, len(want))):
                    data = view[i * block:(i + 1) * block]
                    if xxhash.xxh3_64_intdigest(data) != want[i]:
                        raise ChecksumError(p, f"checksum mismatch in bytes {i * block:,}-{i * block + len(data):,}")
                    # the block is hashed: drop it from this mapping, so a scrub of a large file
                    # holds one block, not the whole file, in its resident set
                    mm.madvise(mmap.MADV_DONTNEED, i * block, len(data))
                    if progress is not None:
                        progress(len(data))
            finally:
                data = None
                view.release()
    except OSError as exc:
        raise ChecksumError(p, f"unreadable: {exc.strerror or exc}") from None


class BlockChecker:
    """The blocks of one memory-mapped file checked against its record as they are first read.

    `ensure(start, stop)` (or `ensure_blocks`) checks the blocks covering those bytes that are not
    yet checked, each once: it first asks the kernel for all of them at once (`MADV_WILLNEED`,
    so a disk-cold read is a few large requests, not a page fault per 4 KiB), then hashes them
    through the same mapping the caller reads. Raises ChecksumError naming the first damaged
    block. The size is checked at construction. Two threads may hash the same block: both mark it."""

    def __init__(self, path: str | os.PathLike, mapping: mmap.mmap, record: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.map = mapping
        self.size, self.block, self.want = _fitting(self.path, len(mapping), record)
        self.checked = np.zeros(len(self.want), dtype=bool)
        self.complete = not len(self.want)

    def covered(self, start: int, stop: int) -> bool:
        """Whether the blocks covering bytes [start, stop) are all checked already."""
        block = self.block
        return self.complete or stop <= start or bool(self.checked[start // block:(stop - 1) // block + 1].all())

    def blocks(self, start: int, stop: int) -> np.ndarray:
        """The numbers of the blocks covering bytes [start, stop)."""
        return np.arange(start // self.block, (max(stop, start + 1) - 1) // self.block + 1)

    def ensure(self, start: int, stop: int) -> None:
        """Check the blocks covering bytes [start, stop)."""
        if self.complete or stop <= start:
            return
        first, last = start // self.block, min((stop - 1) // self.block, len(self.want) - 1)
        todo = first + np.flatnonzero(~self.checked[first:last + 1])
        if len(todo):
            self._check(todo)

    def ensure_blocks(self, blocks: np.ndarray) -> None:
        """Check the blocks numbered `blocks` (in any order, repeats allowed)."""
        if self.complete or not len(blocks):
            return
        todo = np.sort(blocks[~self.checked[blocks]])
        if len(todo):
            # repeats dropped by hand: np.unique's first call imports numpy.ma (~20 ms of a cold process)
            self._check(todo[np.concatenate(([True], todo[1:] != todo[:-1]))])

    def _check(self, todo: np.ndarray) -> None:
        block = self.block
        # one request per run of consecutive blocks, all issued before the first is hashed
        breaks = np.flatnonzero(np.diff(todo) != 1) + 1
        for run in np.split(todo, breaks):
            a = int(run[0]) * block
            self.map.madvise(mmap.MADV_WILLNEED, a, min(int(run[-1] + 1) * block, self.size) - a)
        view = memoryview(self.map)
        try:
            for i in todo.tolist():
                if xxhash.xxh3_64_intdigest(view[i * block:(i + 1) * block]) != self.want[i]:
                    raise ChecksumError(self.path, f"checksum mismatch in bytes {i * block:,}-"
                                                   f"{min((i + 1) * block, self.size):,}")
                self.checked[i] = True
        finally:
            view.release()
        self.complete = bool(self.checked.all()) if len(todo) else self.complete
