"""The serving copy of a view version: uncompressed Arrow IPC files that readers memory-map.

Owns writing it from the promoted Parquet version: one file per event type (found from the
registry without a scan), its rows as record batches in sort order, in a compact exact encoding:
price sums as int64 scaled by 10^PRICE_SCALE where the bound below holds, `type` and `country`
as int8 dictionary codes, only the prices the type holds (bid_price on impressions, total_price
on purchases in this data: the other types' four columns of a price are all NULL), and a price's
non-NULL count only where it differs from `cnt` somewhere (`as_cnt`: the rest read `cnt`).
Each file is written to a temp name, fsynced, checksummed in blocks of `CHECK_BLOCK`
(`core.checksum`), renamed atomically: a file, once named, is never changed, so a reader's
mapping stays valid while a newer version is promoted. Its registry record keeps, per type, the
checksum, each batch's byte span and rows (`layout`) and its sort column's values every
`MARK_ROWS` rows (`marks`: the time columns, or a timeless view's integer first dimension):
what lets a reader check only the bytes it reads (`batch_guard`).
Owns opening it too: memory map it with read-ahead off (this disk's 8 MiB read-around turned a
first touch of 4 KiB into 8 MiB), check it against its registry entry (size, schema, batches and
rows), check its head and footer, and hand out each batch with its guard, the counts left out
served as `cnt`'s buffer (`checked`: the whole files first, as a build's proof does). Must not
build the Parquet version, update the registry, or answer queries.
"""
from __future__ import annotations

import base64
import mmap
import os
import uuid
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from analytics.core.checksum import BlockChecker, ChecksumError, check, file_record
from analytics.core.sql import sql_string
from analytics.query.schema import EVENT_TYPES, PRICE_SCALE
from analytics.views.batch_guard import MARK_ROWS, BatchGuard, ServedBatch, marks_of
from analytics.views.catalog import MEASURE_COLUMNS, ViewDef

SUFFIX = ".arrow"
BATCH_ROWS = 1 << 20  # a type is written in batches of at most this many rows: the build holds one
# What the writer holds outside DuckDB: a batch being re-batched and its encoded copy, at ~100
# bytes a row for the widest view (measured: 1.43 GB peak RSS for a 1 GB budget at 245M rows,
# two jobs, before the build set this aside).
WRITER_MEMORY = 2 * BATCH_ROWS * 100
SCALE = 10 ** PRICE_SCALE
# 64 KiB: a first touch reads at most a block beyond what it needs on each side; a 1 GB file's
# record holds 16K digests (128 KiB packed)
CHECK_BLOCK = 64 << 10
# A price sum is stored as int64 `sum * 10^4` when the lake's total of that price, times 10^4,
# is below 2^63 (the build checks it per version). Prices are never negative (prepare quarantines
# them), so no group's sum, nor any re-aggregation of groups, exceeds that total: every value and
# every sum of values fits. 2^63 / 10^4 ~ 9.2e14 price units: at the largest supported scale
# (245M rows) this holds while the mean price stays below ~3.7M; past it the column stays DECIMAL.
INT64_MAX = 2**63 - 1
DICTIONARY_COLUMNS = ("type", "country")
_CODES = pa.int8()


class ServingError(ValueError):
    """A serving copy that cannot be used: missing, truncated, or not what its registry entry says."""


def scaled_sums(lake_totals: pa.Table) -> list[str]:
    """The sum columns that may be stored as scaled int64 for a lake with these totals."""
    out = []
    for m in MEASURE_COLUMNS:
        total = lake_totals.column(f"sum_{m}").to_pylist()
        if sum(v for v in total if v is not None) * SCALE <= INT64_MAX:
            out.append(f"sum_{m}")
    return out


def _encode(batch: pa.RecordBatch, dictionaries: Mapping[str, pa.Array]) -> pa.RecordBatch:
    cols = []
    for name, col in zip(batch.schema.names, batch.columns):
        if name in dictionaries:
            codes = pc.index_in(col, value_set=dictionaries[name]).cast(_CODES)
            col = pa.DictionaryArray.from_arrays(codes, dictionaries[name])
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def _rebatch(reader: pa.RecordBatchReader, rows: int) -> Iterator[pa.RecordBatch]:
    """The reader's rows as batches of `rows` rows (the last one shorter): few, large batches keep
    a type's binary searches to a few pieces (DuckDB hands out one Parquet row group at a time)."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        held.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(held)
            yield table.slice(0, rows).combine_chunks().to_batches()[0]
            held = table.slice(rows).to_batches()
            count -= rows
    if count:
        yield pa.Table.from_batches(held).combine_chunks().to_batches()[0]


def _measure_shapes(con: duckdb.DuckDBPyConnection, source: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per type, (the prices it never holds, the prices it holds on every row): a price never held
    (no non-NULL value in any group) has its four columns all NULL (0 for the count) in that type,
    so its file leaves them out; one held on every row (bid_price on impressions) has its non-NULL
    count equal to `cnt` in every group, so its file leaves that count out and reads `cnt`."""
    items = ", ".join(f"sum(nn_{m}), bool_and(nn_{m} = cnt)" for m in MEASURE_COLUMNS)
    out = {}
    for t, *got in con.execute(f"SELECT type, {items} FROM {source} GROUP BY type").fetchall():
        pairs = list(zip(MEASURE_COLUMNS, got[0::2], got[1::2]))
        out[t] = ([m for m, n, _ in pairs if not n], [m for m, n, every in pairs if n and every])
    return out


def _mark_columns(view: ViewDef, schema: pa.Schema) -> tuple[str, ...]:
    """The columns a file keeps marks of: its time columns; for a view without time, its first
    dimension when that is an integer (rows of a type are sorted by it, so a point filter on it
    reads one window instead of the column: `fastpath._dim_runs`)."""
    if view.time_columns or not view.dims:
        return view.time_columns
    first = schema.field(view.dims[0]).type
    return (view.dims[0],) if pa.types.is_integer(first) else ()


def _in_order(keys: pa.Array, last: pa.Scalar | None) -> bool:
    """Whether `keys` ascend and start at or after `last` (the previous batch's last key)."""
    if last is not None and pc.less(keys[0], last).as_py():
        return False
    return len(keys) < 2 or bool(pc.all(pc.less_equal(keys[:-1], keys[1:])).as_py())


def write_serving_copy(con: duckdb.DuckDBPyConnection, view: ViewDef, parquet: Path, prefix: Path,
                       rows_by_type: Mapping[str, int], scaled: list[str]) -> dict[str, Any]:
    """Write the serving copy of the Parquet version `parquet`, one file `{prefix}.{type}.arrow` per
    event type with rows; returns its registry record: the scaled sums, the full schema (IPC bytes,
    base64), total bytes, and per type its file, bytes, batches and the measure columns it leaves out."""
    source = f"read_parquet({sql_string(parquet)})"
    dictionaries = {"type": pa.array(sorted(set(EVENT_TYPES) | set(rows_by_type)), pa.string())}
    if "country" in view.group_columns:
        countries = [r[0] for r in con.execute(f"SELECT DISTINCT country FROM {source} ORDER BY 1").fetchall()]
        dictionaries["country"] = pa.array(countries, pa.string())
    if any(len(d) > 127 for d in dictionaries.values()):
        raise ServingError(f"{view.name}: more distinct values than int8 codes hold")
    items = [f"CAST({c} * {SCALE} AS BIGINT) AS {c}" if c in scaled else c for c, _ in view.schema()]
    select = f"SELECT {', '.join(items)} FROM {source}"
    full = _encode(pa.RecordBatch.from_pylist([], schema=con.sql(f"{select} LIMIT 0").to_arrow_table().schema),
                   dictionaries).schema
    shapes = _measure_shapes(con, source)
    sort_key = view.sort_columns[1] if len(view.sort_columns) > 1 else None
    mark_columns = _mark_columns(view, full)
    types: dict[str, dict[str, Any]] = {}
    written: list[Path] = []
    try:
        for t in sorted(t for t, n in rows_by_type.items() if n):
            absent, held = shapes.get(t, ([], []))
            dropped = [f"{p}_{m}" for m in absent for p in ("nn", "sum", "min", "max")]
            as_cnt = [f"nn_{m}" for m in held]
            schema = _without(full, dropped + as_cnt)
            out = prefix.with_name(f"{prefix.name}.{t}{SUFFIX}")
            tmp = out.with_name(f".staging-{uuid.uuid4().hex}{SUFFIX}")
            written.append(tmp)
            spans, marks, last = [], {c: [] for c in mark_columns}, None
            keep = ", ".join(f.name for f in schema)
            # the Parquet version is sorted by type then time: read in file order, a batch at a time
            reader = con.sql(f"SELECT {keep} FROM ({select}) WHERE type = ?", params=[t]).to_arrow_reader(BATCH_ROWS)
            with open(tmp, "wb") as sink:
                with ipc.new_file(sink, schema) as writer:
                    for batch in _rebatch(reader, BATCH_ROWS):
                        if sort_key is not None:
                            keys = batch.column(sort_key)
                            if not _in_order(keys, last):
                                raise ServingError(f"{view.name}: {parquet.name} is not sorted by type then {sort_key}")
                            last = keys[-1]
                        start = sink.tell()
                        writer.write_batch(_encode(batch, dictionaries))
                        spans.append((start, sink.tell(), batch.num_rows))
                        for c in marks:
                            marks[c].append(marks_of(batch.column(c), MARK_ROWS))
                sink.flush()
                os.fsync(sink.fileno())
            checksum = file_record(tmp, CHECK_BLOCK, packed=True)  # just written: read back from the page cache
            layout = _layout(tmp, spans)
            os.replace(tmp, out)  # a new name: a file once named is never rewritten
            types[t] = {"file": out.name, "bytes": out.stat().st_size, "batches": len(spans), "dropped": dropped,
                        "as_cnt": as_cnt, "checksum": checksum, "layout": layout, "mark_rows": MARK_ROWS, "marks": marks}
    except BaseException:
        for tmp in written:
            tmp.unlink(missing_ok=True)
        raise
    return {"scaled": list(scaled), "schema": base64.b64encode(full.serialize().to_pybytes()).decode(),
            "bytes": sum(r["bytes"] for r in types.values()), "types": types}


def _layout(path: Path, spans: list[tuple[int, int, int]]) -> list[list[int]]:
    """Per batch `[start, body, stop, rows]`: its IPC message's metadata (with the schema and
    dictionaries before the first batch) in [start, body), its buffers in [body, stop). Read from
    the file just written, whose bytes are the checksummed ones."""
    whole = pa.py_buffer(_map(path))
    reader = ipc.open_file(pa.BufferReader(whole))
    out = []
    for i, (start, stop, rows) in enumerate(spans):
        body = min((b.address - whole.address for b in _buffers(reader.get_batch(i)) if b.size), default=stop)
        if not start <= body <= stop:
            raise ServingError(f"{path.name}: batch {i} lies outside the bytes written for it")
        out.append([start, body, stop, rows])
    return out


def _map(path: Path) -> mmap.mmap:
    """The file memory-mapped read-only, without read-around: a page fault reads its page, and the
    reader asks for the ranges it needs (`BlockChecker`)."""
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    mm.madvise(mmap.MADV_RANDOM)
    return mm


def _buffers(batch: pa.RecordBatch) -> list[pa.Buffer]:
    """The batch's buffers (a dictionary column's indices; its dictionary sits before the first batch)."""
    out = []
    for col in batch.columns:
        arr = col.indices if pa.types.is_dictionary(col.type) else col
        out += [b for b in arr.buffers() if b is not None]
    return out


def _without(schema: pa.Schema, names: list[str]) -> pa.Schema:
    return pa.schema([f for f in schema if f.name not in names])


def serving_files(record: Mapping[str, Any]) -> list[str]:
    """The file names of a serving copy's record."""
    return [r["file"] for r in record["types"].values()]


def check_types(vdir: Path, record: Mapping[str, Any], types: Iterable[str]) -> None:
    """Check the files of `types` in serving-copy `record` (files in `vdir`) against their checksums
    (ChecksumError names the first damaged one): a whole read of each, ~12 GB/s from the page cache."""
    for t in types:
        rec = record["types"].get(t)
        if rec is not None:
            check(vdir / rec["file"], rec.get("checksum"))


def open_serving_copy(vdir: Path, record: Mapping[str, Any] | None, rows_by_type: Mapping[str, int], *,
                      checked: bool = True) -> tuple[dict[str, Callable[[], list[ServedBatch]]], pa.Schema]:
    """Serving copy `record` (a registered base's or delta's, files in `vdir`), checked against the
    record and the version's `rows_by_type`: per type, what opens its file (memory-mapped, checked
    against the record, its batches each with its guard: a process opens only the types it
    answers), and the full schema. With `checked`, each file's bytes are first checked whole
    against its checksum; without, only the head and footer are, and each batch's guard checks the
    rest as it is read (a record written before batch layouts were recorded: the whole file when
    opened). Opening raises ChecksumError for damaged bytes, ServingError for any other mismatch."""
    if not record:
        raise ServingError("no serving copy recorded (built before serving copies): rebuild the view")
    expected_types = {t for t, n in rows_by_type.items() if n}
    if set(record["types"]) != expected_types:
        raise ServingError(f"serving copy holds types {sorted(record['types'])}, the view {sorted(expected_types)}")
    try:
        full = ipc.read_schema(pa.py_buffer(base64.b64decode(record["schema"])))
    except (ValueError, pa.ArrowException) as exc:
        raise ServingError(f"schema unreadable: {str(exc).splitlines()[0]}") from exc
    return {t: partial(_open_type, vdir, rec, _without(full, rec["dropped"]), rows_by_type[t], checked)
            for t, rec in record["types"].items()}, full


def _open_type(vdir: Path, rec: Mapping[str, Any], schema: pa.Schema, rows: int, checked: bool) -> list[ServedBatch]:
    try:
        return _open_file(vdir, rec, schema, rows, checked)
    except (ChecksumError, ServingError):
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ServingError(str(exc).splitlines()[0]) from exc


def _open_file(vdir: Path, rec: Mapping[str, Any], schema: pa.Schema, rows: int, checked: bool) -> list[ServedBatch]:
    path = vdir / rec["file"]
    size = path.stat().st_size
    if size != rec["bytes"]:
        raise ServingError(f"{rec['file']} is {size} bytes, the registry says {rec['bytes']}")
    mm = _map(path)
    checker = BlockChecker(path, mm, rec["checksum"]) if rec.get("checksum") else None
    layout = rec.get("layout")
    if checker is not None and (checked or not layout):
        checker.ensure(0, size)  # without a layout (an older record) no batch can be checked alone
    elif checker is not None:
        for start, body, _, _ in layout[1:]:  # the other batches' metadata, asked for at once
            page = start - start % mmap.PAGESIZE
            mm.madvise(mmap.MADV_WILLNEED, page, body - page)
        # the schema, dictionaries and first batch's metadata, and the footer: all of them parsed
        # now, asked for together (one wait on the disk, not two)
        checker.ensure_blocks(np.concatenate([checker.blocks(0, layout[0][1]), checker.blocks(layout[-1][2], size)]))
    whole = pa.py_buffer(mm)
    reader = ipc.open_file(pa.BufferReader(whole))
    as_cnt = rec.get("as_cnt", [])
    stored = _without(schema, as_cnt)
    if not reader.schema.equals(stored):
        raise ServingError(f"{rec['file']}: schema differs from the registry: {reader.schema} vs {stored}")
    if reader.num_record_batches != rec["batches"] or (layout and len(layout) != rec["batches"]):
        raise ServingError(f"{rec['file']}: {reader.num_record_batches} batches, the registry says {rec['batches']}")
    out = []
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        batch.validate()  # buffer sizes agree with the lengths: no read past the mapping
        meta = None
        if layout:
            start, body, stop, n = layout[i]
            if batch.num_rows != n:
                raise ServingError(f"{rec['file']}: batch {i} holds {batch.num_rows} rows, the registry says {n}")
            if any(not (body <= b.address - whole.address and b.address - whole.address + b.size <= stop)
                   for b in _buffers(batch) if b.size):
                raise ServingError(f"{rec['file']}: batch {i} reads bytes outside its span")
            meta = (start, body)
        aliases = dict.fromkeys(as_cnt, "cnt")
        guard = None if checker is None else BatchGuard(checker, whole.address, batch, meta, aliases)
        marks = {c: per_batch[i] for c, per_batch in rec.get("marks", {}).items()}
        # a count the file leaves out is `cnt` itself: the same buffer under both names
        table = pa.Table.from_arrays([batch.column(aliases.get(f.name, f.name)) for f in schema], schema=schema)
        out.append(ServedBatch(table, guard, marks, rec.get("mark_rows", MARK_ROWS)))
    got = sum(b.table.num_rows for b in out)
    if got != rows:
        raise ServingError(f"{rec['file']}: {got} rows, the registry says {rows}")
    return out
