"""A serving copy's batch as the fast path reads it, and the check of the bytes it reads first.

Owns `ServedBatch` (a record batch of a memory-mapped serving copy: the zero-copy table, its
guard, and `marks`, its time columns' values every `mark_rows` rows and at its last row, kept in
the checksummed registry) and `BatchGuard`: called with the columns and rows about to be read, it
has `core.checksum.BlockChecker` check the blocks holding them that no earlier read checked, the
batch's IPC metadata first (its buffers' places come from it). So a disk-cold query reads the
blocks its answer needs, each checked once, and no byte of a batch decides an answer unchecked:
the marks pick the window a time search reads, the guard checks it, the search runs inside it.
Must not read data for the caller, choose rows, or decide answers.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from analytics.core.checksum import BlockChecker

MARK_ROWS = 8192  # a time search reads one window of this many rows: 32-64 KiB of a time column
# an index of more rows than its span over this is checked as the span: fewer, larger reads
_SPAN_RATIO = 16
_EPOCH = dt.date(1970, 1, 1)


def marks_of(column: pa.ChunkedArray | pa.Array, every: int) -> list[Any]:
    """A sorted time column's values at rows 0, every, 2*every, ... and at its last row, as JSON
    holds them: a DATE as days since the epoch, a TIMESTAMP as integers of its unit, text as text."""
    n = len(column)
    picked = column.take(pa.array(sorted({*range(0, n, every), n - 1}), pa.int64()))
    if pa.types.is_date32(picked.type):
        return [(d - _EPOCH).days for d in picked.to_pylist()]
    if pa.types.is_timestamp(picked.type):
        return picked.cast(pa.int64()).to_pylist()
    return picked.to_pylist()


class BatchGuard:
    """The check of one batch's bytes as they are first read (see the module docstring). `meta`
    is the batch's metadata span [start, body) from the registry; None checks the whole file on
    the first call (a copy written before layouts were recorded). `aliases`: columns served as
    another column's buffers (a count equal to `cnt` on every row), checked as that column."""

    def __init__(self, checker: BlockChecker, base: int, batch: pa.RecordBatch, meta: tuple[int, int] | None,
                 aliases: Mapping[str, str] | None = None) -> None:
        self.checker = checker
        self.meta = meta
        self.ready = False
        # per column, its buffers' places in the file: ("bits", offset) for a validity bitmap,
        # ("fixed", offset, width) for values, ("text", offsets' offset, data's offset, offsets)
        self.places: dict[str, list[tuple[Any, ...]]] = {}
        for name, col in zip(batch.schema.names, batch.columns):
            arr = col.indices if pa.types.is_dictionary(col.type) else col
            bufs = arr.buffers()
            places: list[tuple[Any, ...]] = []
            if bufs[0] is not None:
                places.append(("bits", bufs[0].address - base))
            if pa.types.is_string(arr.type):
                offsets = np.frombuffer(bufs[1], dtype=np.int32, count=len(arr) + 1)
                places.append(("text", bufs[1].address - base, bufs[2].address - base, offsets))
            elif arr.type.bit_width == 1:  # booleans: a bitmap of values
                places.append(("bits", bufs[1].address - base))
            else:
                places.append(("fixed", bufs[1].address - base, arr.type.bit_width // 8))
            self.places[name] = places
        for alias, name in (aliases or {}).items():  # a column served as another one's buffers
            self.places[alias] = self.places[name]

    def __call__(self, columns: Sequence[str], lo: int, hi: int, index: np.ndarray | None = None) -> None:
        """Check the bytes of rows [lo, hi) of `columns` (only rows `index` when given: ascending,
        within [lo, hi)) before the caller reads them. Raises ChecksumError."""
        checker = self.checker
        if checker.complete:
            return
        if not self.ready:
            checker.ensure(*(self.meta or (0, checker.size)))
            self.ready = True
        if hi <= lo or (index is not None and not len(index)):
            return
        if index is not None:
            lo, hi = int(index[0]), int(index[-1]) + 1
            if len(index) * _SPAN_RATIO > hi - lo:
                index = None  # dense: the span is read whole
        places = [p for name in columns for p in self.places.get(name, ())]
        spans = [self._span(p, lo, hi) for p in places]
        # a query over rows already read checks a few bitmap slices and returns
        if not all(checker.covered(*span) for span in spans):
            if index is None:
                checker.ensure_blocks(np.concatenate([checker.blocks(*span) for span in spans]))
            else:
                block = checker.block
                checker.ensure_blocks(np.concatenate([
                    checker.blocks(*span) if p[0] == "text" else
                    (p[1] + (index >> 3 if p[0] == "bits" else index * p[2])) // block
                    for p, span in zip(places, spans)]))
        for p in places:  # text: the offsets are checked now, then the characters they point at
            if p[0] == "text":
                a, b = int(p[3][lo]), int(p[3][hi])
                checker.ensure(p[2] + a, p[2] + b)

    @staticmethod
    def _span(place: tuple[Any, ...], lo: int, hi: int) -> tuple[int, int]:
        """The bytes [start, stop) of rows [lo, hi) in one buffer (a text column's: its offsets)."""
        kind, off = place[0], place[1]
        if kind == "bits":
            return off + (lo >> 3), off + ((hi - 1) >> 3) + 1
        if kind == "text":
            return off + 4 * lo, off + 4 * (hi + 1)
        return off + lo * place[2], off + hi * place[2]


class ServedBatch(NamedTuple):
    """One record batch of a serving copy, ready for the fast path (see the module docstring)."""

    table: pa.Table
    guard: BatchGuard | None
    marks: dict[str, list[Any]]
    mark_rows: int
