"""The disk-cold pass's eviction: after `evict`, a new process reads the file from disk (the kernel's
ru_inblock, as the cold pass records it); before, it finds the pages cached."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from analytics.bench.pagecache import cold_read_bandwidth, evict
from analytics.bench.phases import launched, read_launched

SIZE = 32 * 2**20


def _child_reads(path: Path, figures: Path) -> int:
    """Bytes a new process read from storage while reading `path` to its end."""
    code = f"open({str(path)!r}, 'rb').read()"
    subprocess.run(launched([sys.executable, "-I", "-S", "-c", code], figures), check=True)
    return read_launched(figures)["read_bytes"]


def test_evict_makes_the_next_process_read_the_files_from_disk(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    (lake / "events").mkdir(parents=True)
    data = lake / "events" / "part.parquet"
    with open(data, "wb") as fh:
        fh.write(os.urandom(SIZE))
        fh.flush()
        os.fsync(fh.fileno())  # written back: a dirty page cannot be dropped
    data.read_bytes()
    assert _child_reads(data, tmp_path / "warm") < SIZE // 10  # cached: nothing (or next to nothing) from disk
    assert evict(lake) == SIZE
    assert _child_reads(data, tmp_path / "cold") >= SIZE * 9 // 10


def test_cold_read_bandwidth_reads_the_largest_files(tmp_path: Path) -> None:
    for name, size in (("big", 8 * 2**20), ("small", 2**20)):
        (tmp_path / name).write_bytes(os.urandom(size))
    got = cold_read_bandwidth(tmp_path, sample_bytes=4 * 2**20)
    assert got["bytes"] == 8 * 2**20 and got["bytes_per_s"] > 0  # the largest first, until the sample is covered
    assert cold_read_bandwidth(tmp_path / "nothing-here")["bytes_per_s"] is None
