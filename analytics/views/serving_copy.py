"""The serving copy of a view version: an uncompressed Arrow IPC file that readers memory-map.

Owns writing it from the promoted Parquet version (one event type after another, each type a
run of record batches in time order, so a type's slice is found from the registry without a
scan), in a compact exact encoding: price sums as int64 scaled by 10^PRICE_SCALE where the bound
below holds, `type` and `country` as int8 dictionary codes. Written to a temp name, fsynced,
renamed atomically: a file, once named, is never changed, so a reader's mapping stays valid
while a newer version is promoted. Owns opening it too: memory map, check it against its
registry entry (size, schema, rows per type), and hand out each type's batches as zero-copy
tables; pages no query touches are never read. Must not build the Parquet version, update the
registry, or answer queries.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from analytics.core.sql import sql_string
from analytics.query.schema import EVENT_TYPES, PRICE_SCALE
from analytics.views.catalog import MEASURE_COLUMNS, ViewDef

SUFFIX = ".arrow"
BATCH_ROWS = 1 << 20  # a type is written in batches of at most this many rows: the build holds one
SCALE = 10 ** PRICE_SCALE
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


def write_serving_copy(con: duckdb.DuckDBPyConnection, view: ViewDef, parquet: Path, out: Path,
                       rows_by_type: Mapping[str, int], scaled: list[str]) -> dict[str, Any]:
    """Write the serving copy of the Parquet version `parquet` to `out`; returns its registry record
    (file name, bytes, columns, scaled sums, and per type its [first batch, batches])."""
    source = f"read_parquet({sql_string(parquet)})"
    dictionaries = {"type": pa.array(sorted(set(EVENT_TYPES) | set(rows_by_type)), pa.string())}
    if "country" in view.group_columns:
        countries = [r[0] for r in con.execute(f"SELECT DISTINCT country FROM {source} ORDER BY 1").fetchall()]
        dictionaries["country"] = pa.array(countries, pa.string())
    if any(len(d) > 127 for d in dictionaries.values()):
        raise ServingError(f"{view.name}: more distinct values than int8 codes hold")
    items = [f"CAST({c} * {SCALE} AS BIGINT) AS {c}" if c in scaled else c for c, _ in view.schema()]
    select = f"SELECT {', '.join(items)} FROM {source} WHERE type = ?"
    sort_key = view.time_columns[0] if view.time_columns else None
    tmp = out.with_name(f".staging-{uuid.uuid4().hex}{SUFFIX}")
    types: dict[str, list[int]] = {}
    n_batches = 0
    try:
        with open(tmp, "wb") as sink:
            writer = None
            for t in sorted(set(rows_by_type) | set(view.types)):
                first, last = n_batches, None
                # the Parquet version is sorted by type then time: read in file order, one batch at a time
                reader = con.sql(select, params=[t]).to_arrow_reader(BATCH_ROWS)
                if writer is None:  # from the schema, so a view without rows still gets its (empty) copy
                    empty = _encode(pa.RecordBatch.from_pylist([], schema=reader.schema), dictionaries)
                    writer = ipc.new_file(sink, empty.schema)
                for batch in _rebatch(reader, BATCH_ROWS):
                    if sort_key is not None:
                        keys = batch.column(sort_key)
                        keys = keys.view(pa.int32() if pa.types.is_date32(keys.type) else pa.int64()).to_numpy() \
                            if not pa.types.is_string(keys.type) else np.array(keys.to_pylist(), dtype=object)
                        if (last is not None and keys[0] < last) or bool(np.any(keys[1:] < keys[:-1])):
                            raise ServingError(f"{view.name}: {parquet.name} is not sorted by type then {sort_key}")
                        last = keys[-1]
                    writer.write_batch(_encode(batch, dictionaries))
                    n_batches += 1
                types[t] = [first, n_batches - first]
            writer.close()
            sink.flush()
            os.fsync(sink.fileno())
        schema = ipc.open_file(str(tmp)).schema
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"file": out.name, "bytes": out.stat().st_size, "scaled": list(scaled), "types": types,
            "columns": [[f.name, str(f.type)] for f in schema]}


def open_serving_copy(path: Path, entry: Mapping[str, Any]) -> tuple[dict[str, list[pa.Table]], pa.Schema]:
    """Memory-map the serving copy of registry `entry` at `path`, checked against the entry: each
    type's batches as single-chunk tables (no data page read yet), and the file's schema."""
    record = entry.get("serving")
    if not record:
        raise ServingError("no serving copy recorded (built before serving copies): rebuild the view")
    try:
        size = path.stat().st_size
        if size != record["bytes"]:
            raise ServingError(f"{path.name} is {size} bytes, the registry says {record['bytes']}")
        reader = ipc.open_file(pa.memory_map(str(path), "r"))
        columns = [[f.name, str(f.type)] for f in reader.schema]
        if columns != record["columns"]:
            raise ServingError(f"{path.name}: schema differs from the registry: {columns} vs {record['columns']}")
        pieces: dict[str, list[pa.Table]] = {}
        for t, (first, count) in record["types"].items():
            batches = [reader.get_batch(i) for i in range(first, first + count)]
            for b in batches:
                b.validate()  # buffer sizes agree with the lengths: no read past the mapping
            rows = sum(b.num_rows for b in batches)
            if rows != entry["rows_by_type"].get(t):
                raise ServingError(f"{path.name}: {rows} rows of type {t}, the registry says {entry['rows_by_type'].get(t)}")
            pieces[t] = [pa.Table.from_batches([b]) for b in batches]
        if sum(c for _, c in record["types"].values()) != reader.num_record_batches:
            raise ServingError(f"{path.name}: {reader.num_record_batches} batches, the registry lists "
                               f"{sum(c for _, c in record['types'].values())}")
    except (OSError, pa.ArrowException) as exc:
        raise ServingError(f"{path.name}: {str(exc).splitlines()[0]}") from exc
    return pieces, reader.schema
