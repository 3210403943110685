"""Synthetic raw ad events: CSV parts with the shape of the real 245M-row data set.

Owns the raw format on the producing side (header, ms timestamps, empty fields for NULL,
4-decimal bid prices), the funnel model (serve -> impression -> click -> purchase sharing one
auction's ids, with increasing timestamps and the real type proportions), the boundary rows
every data set carries on purpose, the optional dirty rows a remediation step must quarantine,
and the chronological split into parts. Output is a pure function of (rows, seed, parts,
dirty). Must not know about the lake, views or queries: it only writes files a reader of the
real data would also get.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from tqdm.auto import tqdm

from analytics.query.schema import COUNTRIES, EVENT_TYPES, N_ADVERTISERS, N_PUBLISHERS, N_USERS, RAW_HEADER

PART_ROWS = 5_000_000
# Rows generated and written at a time: bounds a worker's memory (~0.55 GiB RSS) whatever the part size.
CHUNK_ROWS = 1_000_000
# Each worker holds one chunk; more workers than this would break the memory bound, not help I/O.
MAX_WORKERS = 4
PART_NAME = "events_part_{:05d}.csv"
PART_RE = re.compile(r"events_part_(\d{5,})\.csv")

# Counts of the real data set; the funnel probabilities below reproduce its proportions.
REAL_TYPE_COUNTS: dict[str, int] = {
    "serve": 160_644_823, "impression": 80_316_988, "click": 4_018_078, "purchase": 20_111,
}
_P_IMPRESSION = REAL_TYPE_COUNTS["impression"] / REAL_TYPE_COUNTS["serve"]
_P_CLICK = REAL_TYPE_COUNTS["click"] / REAL_TYPE_COUNTS["serve"]
_P_PURCHASE = REAL_TYPE_COUNTS["purchase"] / REAL_TYPE_COUNTS["serve"]
_ROWS_PER_FUNNEL = sum(REAL_TYPE_COUNTS.values()) / REAL_TYPE_COUNTS["serve"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
YEAR_START_S = int((dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) - _EPOCH).total_seconds())
SERVE_SPAN_S = 365 * 86_400  # serves from 2024-01-01 00:00:00 through 2024-12-30 23:59:59

COUNTRY_WEIGHT: dict[str, float] = {
    "US": 0.28, "JP": 0.09, "DE": 0.08, "IN": 0.14, "GB": 0.08, "FR": 0.06,
    "ES": 0.04, "AU": 0.03, "CA": 0.05, "MX": 0.05, "BR": 0.07, "KR": 0.03,
}
COUNTRY_PURCHASE_MEAN: dict[str, float] = {
    "US": 67.0, "JP": 65.5, "DE": 64.0, "IN": 62.0, "GB": 66.0, "FR": 63.5,
    "ES": 62.5, "AU": 66.5, "CA": 65.0, "MX": 62.0, "BR": 63.0, "KR": 64.5,
}
_COUNTRY_CDF = np.cumsum([COUNTRY_WEIGHT[c] for c in COUNTRIES])
_COUNTRY_CDF /= _COUNTRY_CDF[-1]  # ends at exactly 1.0, so no uniform draw falls past the last country
_PURCHASE_MEAN = np.array([COUNTRY_PURCHASE_MEAN[c] for c in COUNTRIES])
BID_MEAN, BID_SIGMA = 3.24, 0.6
PURCHASE_SIGMA = 0.6

# Funnels written into every data set of >= BOUNDARY_MIN_ROWS rows, as (serve, impression,
# click, purchase) UTC timestamps: day, leap-day, week (Sunday -> Monday) and year edges are
# where bucketing bugs hide. Each obeys the funnel rules (serve whole seconds, impression
# 0.3-3 s later). The year-end serve is the one serve on 2024-12-31: an impression at its last
# millisecond needs one.
BOUNDARY_MIN_ROWS = 1000
BOUNDARY_FUNNELS: tuple[tuple[str, ...], ...] = (
    ("2024-01-01 00:00:00.000", "2024-01-01 00:00:01.250", "2024-01-01 00:00:31.250",
     "2024-01-01 00:12:31.250"),
    ("2024-01-07 23:59:57.000", "2024-01-07 23:59:59.999"),
    ("2024-01-08 00:00:00.000",),
    ("2024-02-28 23:59:58.000", "2024-02-28 23:59:59.999"),
    ("2024-02-29 00:00:00.000", "2024-02-29 00:00:00.300"),
    ("2024-02-29 12:00:00.000", "2024-02-29 12:00:02.000", "2024-02-29 12:00:45.500",
     "2024-02-29 12:20:00.000"),
    ("2024-02-29 23:59:58.000", "2024-02-29 23:59:59.999", "2024-03-01 00:00:20.000"),
    ("2024-03-01 00:00:00.000",),
    ("2024-06-30 23:59:58.000", "2024-06-30 23:59:59.999"),
    ("2024-07-01 00:00:00.000", "2024-07-01 00:00:02.999"),
    ("2024-09-29 23:59:57.000", "2024-09-29 23:59:59.999"),
    ("2024-09-30 00:00:00.000",),
    ("2024-12-29 23:59:59.000", "2024-12-29 23:59:59.999"),
    ("2024-12-30 00:00:00.000", "2024-12-30 00:00:00.500"),
    ("2024-12-31 23:59:58.000", "2024-12-31 23:59:59.999"),
)

# Kinds of dirty rows, cycled in this order; each breaks exactly one rule a remediation step checks.
DIRTY_KINDS: tuple[str, ...] = (
    "ts_missing", "ts_unparseable", "type_invalid", "auction_id_missing",
    "advertiser_id_missing", "publisher_id_missing", "country_missing", "bid_price_negative",
    "wrong_field_count",
)

# the kinds that set one field of the line: (field index, new text)
_BLANKED: dict[str, tuple[int, bytes]] = {
    "ts_missing": (0, b""), "ts_unparseable": (0, b"abc"), "type_invalid": (1, b"bogus"),
    "auction_id_missing": (2, b""), "advertiser_id_missing": (3, b""), "publisher_id_missing": (4, b""),
    "country_missing": (8, b""),
}

_HEADER = (",".join(RAW_HEADER) + "\n").encode()
_WRITE_OPTIONS = pa_csv.WriteOptions(include_header=False, quoting_style="none", batch_size=8192)
_TYPE_DICT = pa.array(EVENT_TYPES)
_COUNTRY_DICT = pa.array(COUNTRIES)
# Byte value -> its two hex digits, so a UUID's 16 bytes become 32 characters in one gather.
_HEX_PAIRS = np.frombuffer(b"".join(f"{i:02x}".encode() for i in range(256)), dtype=np.uint16)


def _ms(text: str) -> int:
    stamp = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
    return (stamp - _EPOCH) // dt.timedelta(milliseconds=1)


def _boundary_table() -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([len(f) for f in BOUNDARY_FUNNELS], dtype=np.int64)
    ts = np.zeros((len(BOUNDARY_FUNNELS), 4), dtype=np.int64)
    for i, funnel in enumerate(BOUNDARY_FUNNELS):
        ts[i, : len(funnel)] = [_ms(t) for t in funnel]
    return counts, ts


_BOUNDARY_COUNTS, _BOUNDARY_TS = _boundary_table()


@dataclass(frozen=True)
class _PartTask:
    index: int
    seed: int
    rows: int
    first_row: int  # global index of the part's first row: dirty rows are counted globally
    slice_s: tuple[int, int]  # serve seconds since epoch, [lo, hi)
    boundary: tuple[int, ...]  # indexes into BOUNDARY_FUNNELS serving in this slice
    dirty: float
    path: str
    tmp_path: str


@dataclass(frozen=True)
class _PartResult:
    index: int
    path: str
    type_counts: tuple[int, ...]
    dirty_rows: int


def generate(out_dir: str | Path, rows: int, seed: int = 0, parts: int | None = None,
             dirty: float = 0.0, progress: bool = True) -> dict[str, Any]:
    """Write `rows` synthetic event rows as `events_part_NNNNN.csv` parts into `out_dir`.

    Part k holds the funnels whose serves fall in the k-th of `parts` equal slices of the
    365-day serve window (default one part per 5M rows), rows shuffled within it. A `dirty`
    fraction of rows is replaced by rows a remediation step must quarantine. The same
    arguments give the same bytes. Stale `events_part_*.csv` beyond the new part count are
    removed so the directory holds exactly one data set.

    Returns rows, parts, files, rows_per_type (clean rows), dirty_rows, seconds and
    rows_per_second.
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if parts is None:
        parts = max(1, math.ceil(rows / PART_ROWS))
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if not 0.0 <= dirty <= 1.0:
        raise ValueError(f"dirty must be a fraction in [0, 1], got {dirty}")
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        match = PART_RE.fullmatch(stale.name)
        if match and int(match.group(1)) >= parts:
            stale.unlink()

    tasks = _plan(out, rows, seed, parts, dirty)
    workers = min(parts, MAX_WORKERS, len(os.sched_getaffinity(0)))
    with tqdm(total=rows, unit="rows", unit_scale=True, desc="generate", disable=not progress) as bar:
        try:
            if workers == 1:
                results = [_write_part(task, bar.update) for task in tasks]
            else:
                results = _run_pool(tasks, workers, bar.update)
        except BaseException:
            for task in tasks:
                Path(task.tmp_path).unlink(missing_ok=True)
            raise
        bar.update(rows - bar.n)

    seconds = time.perf_counter() - started
    type_counts = np.sum([r.type_counts for r in results], axis=0, dtype=np.int64)
    return {
        "rows": rows,
        "parts": parts,
        "files": [r.path for r in sorted(results, key=lambda r: r.index)],
        "rows_per_type": {t: int(n) for t, n in zip(EVENT_TYPES, type_counts)},
        "dirty_rows": sum(r.dirty_rows for r in results),
        "seconds": seconds,
        "rows_per_second": rows / seconds if seconds > 0 else 0.0,
    }


def _plan(out: Path, rows: int, seed: int, parts: int, dirty: float) -> list[_PartTask]:
    bounds = [YEAR_START_S + SERVE_SPAN_S * k // parts for k in range(parts + 1)]
    by_part: dict[int, list[int]] = {}
    if rows >= BOUNDARY_MIN_ROWS:
        serve_s = _BOUNDARY_TS[:, 0] // 1000
        # The year-end serve lies past the window: it belongs to the last part.
        owner = np.clip(np.searchsorted(bounds, serve_s, side="right") - 1, 0, parts - 1)
        for funnel, k in enumerate(owner):
            by_part.setdefault(int(k), []).append(funnel)
    tasks = []
    first_row = 0
    for k in range(parts):
        n = rows // parts + (1 if k < rows % parts else 0)
        tasks.append(_PartTask(
            index=k, seed=seed, rows=n, first_row=first_row, slice_s=(bounds[k], bounds[k + 1]),
            boundary=tuple(by_part.get(k, ())), dirty=dirty,
            path=str(out / PART_NAME.format(k)), tmp_path=str(out / f".{PART_NAME.format(k)}.tmp"),
        ))
        first_row += n
    return tasks


def _run_pool(tasks: list[_PartTask], workers: int, report: Callable[[int], Any]) -> list[_PartResult]:
    """Write parts in `workers` child processes, each `python -m analytics.lake.generator TASK_JSON`.

    Fresh interpreters rather than multiprocessing: nothing of the caller (DuckDB threads, an
    unguarded `__main__`) is inherited or re-imported. Children report rows written on stdout.
    """
    pending = list(tasks)
    running: list[tuple[subprocess.Popen, _PartTask]] = []
    results: list[_PartResult] = []
    try:
        while pending or running:
            while pending and len(running) < workers:
                task = pending.pop(0)
                proc = subprocess.Popen([sys.executable, "-m", "analytics.lake.generator", json.dumps(asdict(task))],
                                        stdout=subprocess.PIPE, text=True)
                running.append((proc, task))
            proc, task = running[0]
            for line in proc.stdout:  # progress lines, then the result as JSON
                if line.startswith("{"):
                    results.append(_PartResult(**{**json.loads(line), "type_counts": tuple(json.loads(line)["type_counts"])}))
                else:
                    report(int(line))
            if proc.wait() != 0:
                raise RuntimeError(f"generating part {task.index} failed (exit code {proc.returncode})")
            running.pop(0)
    finally:
        for proc, _ in running:
            proc.kill()
    return results


def _write_part(task: _PartTask, report: Callable[[int], Any]) -> _PartResult:
    """Write one part to its temporary name, then rename: a killed run leaves no truncated part."""
    chunk_sizes = [CHUNK_ROWS] * (task.rows // CHUNK_ROWS)
    if task.rows % CHUNK_ROWS or not chunk_sizes:
        chunk_sizes.append(task.rows % CHUNK_ROWS)
    type_counts = np.zeros(len(EVENT_TYPES), dtype=np.int64)
    dirty_rows = 0
    first_row = task.first_row
    with open(task.tmp_path, "wb") as fh:
        fh.write(_HEADER)
        for j, n in enumerate(chunk_sizes):
            rng = np.random.default_rng(np.random.SeedSequence(task.seed, spawn_key=(task.index, j)))
            boundary = task.boundary if j == 0 else ()
            data, counts, n_dirty = _chunk(rng, n, task.slice_s, boundary, first_row, task.dirty)
            fh.write(data)
            type_counts += counts
            dirty_rows += n_dirty
            first_row += n
            report(n)
    os.replace(task.tmp_path, task.path)
    return _PartResult(task.index, task.path, tuple(int(c) for c in type_counts), dirty_rows)


def _chunk(rng: np.random.Generator, n_rows: int, slice_s: tuple[int, int], boundary: tuple[int, ...],
           first_row: int, dirty: float) -> tuple[Any, np.ndarray, int]:
    """CSV bytes (no header) of `n_rows` rows, their clean per-type counts and the dirty row count.

    Every chunk of a part draws serves over the whole part slice, so the concatenated chunks
    are as mixed in time as one shuffle of the part, at a chunk's memory.
    """
    counts, ts = _funnels(rng, n_rows, slice_s, boundary)
    n = counts.size
    starts = np.cumsum(counts) - counts
    # key = 4 * funnel + stage, which is also the index into the flattened (n, 4) ts table.
    key = np.repeat(4 * np.arange(n, dtype=np.int64) - starts, counts) + np.arange(n_rows, dtype=np.int64)
    rng.shuffle(key)
    funnel = key >> 2
    stage = (key & 3).astype(np.int8)

    auction_ids = _uuids(n, rng)
    advertiser = rng.integers(1, N_ADVERTISERS + 1, n, dtype=np.int32)
    publisher = rng.integers(1, N_PUBLISHERS + 1, n, dtype=np.int32)
    user = rng.integers(1, N_USERS + 1, n, dtype=np.int32)
    country = np.searchsorted(_COUNTRY_CDF, rng.random(n), side="right").astype(np.int8)
    # At least 0.0001 so a negated price (a dirty row) is really negative.
    bid = np.maximum(1, np.round(
        rng.lognormal(math.log(BID_MEAN) - BID_SIGMA**2 / 2, BID_SIGMA, n) * 10_000)).astype(np.int64)
    purchased = counts == 4
    total = np.zeros(n, dtype=np.int64)
    total[purchased] = np.round(_PURCHASE_MEAN[country[purchased]] * 100 * rng.lognormal(
        -PURCHASE_SIGMA**2 / 2, PURCHASE_SIGMA, int(purchased.sum())))

    table = pa.table({
        "ts": ts.ravel()[key],
        "type": pa.DictionaryArray.from_arrays(stage, _TYPE_DICT),
        # A dictionary over the funnels' ids: the writer expands it faster than a numpy gather.
        "auction_id": pa.DictionaryArray.from_arrays(funnel.astype(np.int32), auction_ids),
        "advertiser_id": advertiser[funnel],
        "publisher_id": publisher[funnel],
        "bid_price": _decimal(bid[funnel], stage == 1, 4),
        "user_id": user[funnel],
        "total_price": _decimal(total[funnel], stage == 3, 2),
        "country": pa.DictionaryArray.from_arrays(country[funnel], _COUNTRY_DICT),
    })
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(table, sink, _WRITE_OPTIONS)
    data = sink.getvalue()
    type_counts = np.bincount(stage, minlength=len(EVENT_TYPES))

    # floor(x + 0.5) of the global row bounds: chunks add up to round(dirty * rows) exactly.
    n_dirty = math.floor(dirty * (first_row + n_rows) + 0.5) - math.floor(dirty * first_row + 0.5)
    if n_dirty == 0:
        return data, type_counts, 0
    # Drawn after the clean rows, so the rows a dirty run keeps are those of the clean run.
    candidates = np.flatnonzero(funnel >= len(boundary))  # boundary rows stay valid
    rows_at = np.sort(rng.choice(candidates, size=min(n_dirty, candidates.size), replace=False))
    type_counts -= np.bincount(stage[rows_at], minlength=len(EVENT_TYPES))
    ordinal0 = math.floor(dirty * first_row + 0.5)
    return _spoil(data, rows_at, ordinal0), type_counts, int(rows_at.size)


def _funnels(rng: np.random.Generator, n_rows: int, slice_s: tuple[int, int],
             boundary: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Rows per funnel (summing to exactly `n_rows`) and each funnel's (serve, impression, click, purchase) ms."""
    b_counts = _BOUNDARY_COUNTS[list(boundary)]
    needed = n_rows - int(b_counts.sum())
    drawn = [b_counts]
    while needed > 0:
        u = rng.random(int(needed / _ROWS_PER_FUNNEL * 1.01) + 16)
        # One uniform per funnel: P(click) = P(impression) * P(click | impression), and so on.
        c = 1 + (u < _P_IMPRESSION).astype(np.int64) + (u < _P_CLICK) + (u < _P_PURCHASE)
        drawn.append(c)
        needed -= int(c.sum())
    counts = np.concatenate(drawn)
    # Cut the funnel list where it reaches n_rows; the last funnel keeps its leading stages only.
    ends = np.cumsum(counts)
    last = int(np.searchsorted(ends, n_rows))
    counts = counts[: last + 1]
    if counts.size:
        counts[last] -= ends[last] - n_rows
        if counts[last] == 0:
            counts = counts[:last]

    n_random = counts.size - len(boundary)
    delays = np.zeros((max(n_random, 0), 4), dtype=np.int64)
    delays[:, 0] = rng.integers(slice_s[0], slice_s[1], delays.shape[0]) * 1000
    delays[:, 1] = rng.integers(300, 3001, delays.shape[0])
    clicked = np.flatnonzero(counts[len(boundary):] >= 3)
    # Seconds to minutes after the impression; minutes after the click. Capped so a funnel
    # from the window's last second still ends on 2024-12-31.
    delays[clicked, 2] = np.clip(rng.lognormal(math.log(20_000), 1.0, clicked.size), 1_000, 1_800_000)
    bought = np.flatnonzero(counts[len(boundary):] == 4)
    delays[bought, 3] = np.clip(rng.lognormal(math.log(480_000), 0.7, bought.size), 60_000, 10_800_000)
    ts = np.concatenate([_BOUNDARY_TS[list(boundary)], np.cumsum(delays, axis=1)])[: counts.size]
    return counts, ts


def _uuids(n: int, rng: np.random.Generator) -> pa.Array:
    """`n` random UUID-4 strings."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    digits = _HEX_PAIRS[raw].view(np.uint8)  # (n, 32)
    text = np.empty((n, 36), dtype=np.uint8)
    text[:, [8, 13, 18, 23]] = ord("-")
    text[:, 0:8], text[:, 9:13], text[:, 14:18] = digits[:, 0:8], digits[:, 8:12], digits[:, 12:16]
    text[:, 19:23], text[:, 24:36] = digits[:, 16:20], digits[:, 20:32]
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text)])


def _decimal(units: np.ndarray, valid: np.ndarray, scale: int) -> pa.Array:
    """Integer units of 10**-scale as a decimal column: CSV prints exactly `scale` decimals."""
    validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.decimal64(18, scale), units.size, [validity, pa.py_buffer(units)])


def _spoil(data: pa.Buffer, rows_at: np.ndarray, ordinal0: int) -> bytes:
    """Replace the given data lines by dirty ones, cycling DIRTY_KINDS from global ordinal `ordinal0`."""
    raw = np.frombuffer(data, dtype=np.uint8)
    line_ends = np.flatnonzero(raw == ord("\n"))
    view = memoryview(data)
    pieces: list[Any] = []
    pos = 0
    for i, row in enumerate(rows_at.tolist()):
        start = int(line_ends[row - 1]) + 1 if row else 0
        end = int(line_ends[row])
        pieces.append(view[pos:start])
        fields = bytes(view[start:end]).split(b",")
        ordinal = ordinal0 + i
        kind = DIRTY_KINDS[ordinal % len(DIRTY_KINDS)]
        if kind in _BLANKED:
            field, value = _BLANKED[kind]
            fields[field] = value
        elif kind == "bid_price_negative":
            fields[1], fields[7] = b"impression", b""
            fields[5] = b"-" + (fields[5] or b"1.0000")
        elif (ordinal // len(DIRTY_KINDS)) % 2:
            # a 10th field with content: DuckDB (and so the baseline) reads a bare trailing comma
            # as the end of a complete 9-field row, which is not a broken line
            fields.append(b"extra")
        else:
            fields.pop()  # 8 fields
        pieces.append(b",".join(fields) + b"\n")
        pos = end + 1
    pieces.append(view[pos:])
    return b"".join(pieces)


if __name__ == "__main__":
    # a worker of `_run_pool`: write one part, report progress and the result on stdout
    _task = _PartTask(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[1]).items()})
    _result = _write_part(_task, lambda n: print(n, flush=True))
    print(json.dumps(asdict(_result)), flush=True)
