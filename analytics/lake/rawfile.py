"""The raw-file pre-pass: the lines of a CSV part that no CSV reader should be handed, found in one
streamed pass.

Owns the byte-level checks `prepare` makes before an engine parses a part: a UTF-8 byte order
mark is dropped; a line longer than `rules.MAX_LINE_BYTES` (`line_too_long`), a line that is not
UTF-8 (`not_utf8`) or a line with so many surplus fields that DuckDB's reject bookkeeping would
turn quadratic (`wrong_field_count`, see `rules.MAX_READER_FIELDS`) is *diverted*: the part is
copied with that line left empty (so the line numbers the reader reports stay the file's) and the
line goes to a side file for the quarantine. Blocks are read one at a time, a line's unfinished
tail is kept only up to the maximum, so memory is bounded and time is proportional to the bytes.
Must not parse fields beyond these checks nor decide the remediation rules (that is `rules`).
"""
from __future__ import annotations

import codecs
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analytics.lake.rules import (
    LINE_TOO_LONG,
    MAX_LINE_BYTES,
    MAX_READER_FIELDS,
    NOT_UTF8,
    WRONG_FIELD_COUNT,
)
from analytics.query.schema import RAW_HEADER

BOM = b"\xef\xbb\xbf"
BLOCK = 1 << 24
KEPT_BYTES = 1024  # of a too-long line, what the quarantine keeps (with the line's length)
_BATCH = 10_000
DIVERTED_SCHEMA = pa.schema([("line", pa.int64()), ("reason", pa.string()), ("raw_line", pa.string())])


@dataclass(frozen=True)
class Diverted:
    """A line kept from the reader: its 1-based line number in the part, why, and its text."""

    line: int
    reason: str
    raw_line: str


Piece = Union[bytes, Diverted]


@dataclass
class RawScan:
    """What the reader should read for one part: the part itself, or a copy without the diverted
    lines (then `diverted` is the Parquet file of those lines, `by_reason` their counts)."""

    read_path: Path
    diverted: Path | None = None
    by_reason: dict[str, int] = field(default_factory=dict)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", errors="backslashreplace")


def _too_long(line_no: int, head: bytes, size: int) -> Diverted:
    return Diverted(line_no, LINE_TOO_LONG, f"{_text(head[:KEPT_BYTES])}... [{size:,} bytes]")


def _surplus_fields(line: str) -> bool:
    """Whether DuckDB's reader would find fields after the ninth that are not all empty."""
    try:
        fields = next(csv.reader([line]), [])
    except csv.Error:  # a bare carriage return inside the line: no quoting to honour, split plainly
        fields = line.split(",")
    return len(fields) > len(RAW_HEADER) and any(fields[len(RAW_HEADER):])


def _lines(body: bytes, line_no: int, max_line: int) -> Iterator[Piece]:
    """`body` (whole lines, the last one maybe without its line break) as runs of good bytes and
    diverted lines; `line_no` is the number of its first line. Line 1 (the header) is never diverted."""
    arr = np.frombuffer(body, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if not body.endswith(b"\n"):
        ends = np.append(ends, len(body))
    starts = np.concatenate(([0], ends[:-1] + 1))
    commas = np.flatnonzero(arr == 44)
    n_commas = np.searchsorted(commas, ends) - np.searchsorted(commas, starts)
    suspects = set(np.flatnonzero((ends - starts > max_line) | (n_commas > MAX_READER_FIELDS)).tolist())
    pos, view = 0, memoryview(body)
    while pos < len(body):  # each bad UTF-8 sequence marks its line; decoding resumes after that line
        try:
            codecs.utf_8_decode(view[pos:], "strict", True)
            break
        except UnicodeDecodeError as exc:
            i = int(np.searchsorted(ends, pos + exc.start))
            suspects.add(i)
            pos = int(ends[i]) + 1
    if not suspects:
        yield body
        return
    done = 0
    for i in sorted(suspects):
        if line_no + i == 1:
            continue
        start, end = int(starts[i]), int(ends[i])
        raw = body[start:end]
        if end - start > max_line:
            bad: Diverted | None = _too_long(line_no + i, raw, end - start)
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad = Diverted(line_no + i, NOT_UTF8, _text(raw))
            else:
                bad = Diverted(line_no + i, WRONG_FIELD_COUNT, text.rstrip("\r")) if _surplus_fields(text) else None
        if bad is not None:
            yield body[done:start]
            yield bad
            done = min(end + 1, len(body))
    yield body[done:]


def pieces(path: Path, max_line: int = MAX_LINE_BYTES) -> Iterator[Piece]:
    """The part at `path` as runs of bytes to hand the reader and the lines diverted from it (each
    stands for one line: who copies the part writes a line break in its place). Raises OSError."""
    line_no = 1
    pending = b""  # the unfinished last line of what was read, never longer than max_line
    long_line: tuple[int, bytes, int] | None = None  # (line number, first bytes, size so far)
    with path.open("rb") as fh:
        block = fh.read(BLOCK)
        if block.startswith(BOM):
            block = block[len(BOM):]
        while block:
            if long_line is not None:
                nl = block.find(b"\n")
                if nl < 0:
                    long_line = (long_line[0], long_line[1], long_line[2] + len(block))
                    block = fh.read(BLOCK)
                    continue
                yield _too_long(long_line[0], long_line[1], long_line[2] + nl)
                line_no += 1
                long_line, block = None, block[nl + 1:]
            buf = pending + block if pending else block
            cut = buf.rfind(b"\n") + 1
            if cut:
                yield from _lines(buf[:cut], line_no, max_line)
                line_no += buf.count(b"\n", 0, cut)
            pending = buf[cut:]
            if len(pending) > max_line:
                long_line, pending = (line_no, pending[:KEPT_BYTES], len(pending)), b""
            block = fh.read(BLOCK)
    if long_line is not None:
        yield _too_long(*long_line)
    elif pending:
        yield from _lines(pending, line_no, max_line)


def first_diverted(path: Path) -> Diverted | None:
    """The first line of the part that the pre-pass would divert, or None (reads up to it)."""
    return next((p for p in pieces(path) if isinstance(p, Diverted)), None)


def scan_part(src: Path, work: Path) -> RawScan:
    """Check the part; when a line must be diverted, write the copy and the diverted lines under `work`.

    Two passes only for a part that has such a line: the first stops at it."""
    if first_diverted(src) is None:
        return RawScan(src)
    work.mkdir(parents=True, exist_ok=True)
    copy, side = work / src.name, work / f"{src.name}.diverted.parquet"
    counts: dict[str, int] = {}
    batch: list[Diverted] = []
    with copy.open("wb") as out, pq.ParquetWriter(side, DIVERTED_SCHEMA) as writer:
        def flush() -> None:
            writer.write_table(pa.Table.from_pylist([vars(d) for d in batch], schema=DIVERTED_SCHEMA))
            batch.clear()

        for piece in pieces(src):
            if isinstance(piece, Diverted):
                out.write(b"\n")
                counts[piece.reason] = counts.get(piece.reason, 0) + 1
                batch.append(piece)
                if len(batch) >= _BATCH:
                    flush()
            else:
                out.write(piece)
        if batch:
            flush()
    return RawScan(copy, side, counts)
