"""Row-group key filters: which of the lake's row groups may hold a key, so a point query reads those only.

An `auction_id`'s few events (a serve, then an impression, a click, a purchase seconds to hours
later) lie in one or two row groups of each type's ts-sorted files, but a point filter on it reads
the whole key column: every row group's min/max spans the key space. The sorted copy that serves
`user_id` (`lake.indexes`) measured 4.59 GB at 245M rows for `auction_id`, random UUIDs barely
compressing, and did not fit the adaptive budget. This filter keeps one Bloom filter of the key's
hashes per row group, bit-sliced: the bits of one position for all N row groups are adjacent, so a
lookup reads `K_HASHES` runs of N/8 bytes of a memory-mapped file, ANDs them, and reads only the
row groups left. `BITS_PER_ROW` bits per row of the largest row group: ~0.05% false positives per
row group, ~0.5 GB at 245M rows (2,000 row groups of 122,880 rows).

Exact by construction: a filter can add row groups to read (a false positive costs one row
group), never drop one; the rows read are filtered on the key itself, and the query's own SQL runs
over them. Keys are hashed by DuckDB's `hash()` of the VARCHAR value, so a filter is tied to the
DuckDB version that built it (`usable` refuses another). Owns building, checking and reading a
filter; must not choose which keys get one (`views.adaptive_indexes`) nor route queries.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analytics.core import db
from analytics.lake.state import Lake
from analytics.query.schema import LAKE_TYPES

BITS_PER_ROW = 16
K_HASHES = 11  # the false-positive optimum for 16 bits a row: 16 * ln 2
BITS_FILE = "bits"
META_FILE = "filter.json"


class KeyFilterError(RuntimeError):
    """A filter failed its checks; nothing was promoted."""


def row_groups(lake: Lake, types: Iterable[str]) -> list[list[Any]]:
    """[type, file relative to the lake, row group, rows] of every row group of `types`, in a fixed order."""
    wanted, out = set(types), []
    for seg in lake.state["segments"]:
        for t, rel in sorted(seg["files"].items()):
            if t in wanted:
                meta = pq.ParquetFile(lake.root / rel).metadata
                out.extend([t, rel, i, meta.row_group(i).num_rows] for i in range(meta.num_row_groups))
    return out


def _shape(groups: Sequence[Sequence[Any]]) -> tuple[int, int]:
    """(bits per row group filter, bytes per bit position) for these row groups."""
    largest = max((int(g[3]) for g in groups), default=1)
    return max(64, BITS_PER_ROW * largest), max(1, math.ceil(len(groups) / 8))


def estimate_bytes(lake: Lake, types: Iterable[str]) -> int:
    """The filter's exact size for the lake as it is (from the Parquet footers: no data read)."""
    m, width = _shape(row_groups(lake, types))
    return m * width


def _positions(hashes: np.ndarray, m: int) -> np.ndarray:
    """The K_HASHES bit positions of each 64-bit hash (double hashing), shape (n, K_HASHES)."""
    h = hashes.astype(np.uint64)
    h1, h2 = h & np.uint64(0xFFFFFFFF), (h >> np.uint64(32)) | np.uint64(1)
    steps = np.arange(K_HASHES, dtype=np.uint64)
    return ((h1[:, None] + steps[None, :] * h2[:, None]) % np.uint64(m)).astype(np.int64)


def key_hashes(con: duckdb.DuckDBPyConnection, values: Iterable[Any]) -> np.ndarray:
    """DuckDB's hash of each value as VARCHAR: the hash the build took of the lake's column."""
    vals = [str(v) for v in values]
    if not vals:
        return np.empty(0, dtype=np.uint64)
    got = con.execute("SELECT hash(v) AS h FROM (SELECT unnest(?::VARCHAR[]) AS v)", [vals]).fetchnumpy()["h"]
    return np.asarray(got, dtype=np.uint64)


def build(lake: Lake, key: str, types: Iterable[str], dest: Path, memory_limit: str) -> dict[str, Any]:
    """Write the filter of `key` over `types` into the new directory `dest` (the caller renames it
    into place); check it; return its meta (also written to `dest`)."""
    groups = row_groups(lake, types)
    m, width = _shape(groups)
    bits = np.zeros((m, width), dtype=np.uint8)  # one row per bit position: a lookup reads K rows
    column = np.zeros(m, dtype=np.uint8)  # the byte column of 8 row groups being filled
    samples: list[tuple[int, int]] = []  # (row group, a hash it holds): checked after the build
    con = db.connect(memory_limit=memory_limit)
    con.execute("SET preserve_insertion_order = true")  # rows in file order: split by row group below
    try:
        g = 0
        for rel in dict.fromkeys(grp[1] for grp in groups):
            hashes = con.execute(f"SELECT hash({key}) AS h FROM read_parquet(?)",
                                 [str(lake.root / rel)]).fetchnumpy()["h"]
            start = 0
            while g < len(groups) and groups[g][1] == rel:
                n = int(groups[g][3])
                chunk = np.asarray(hashes[start:start + n], dtype=np.uint64)
                start += n
                if len(chunk):
                    column[_positions(chunk, m).ravel()] |= np.uint8(1 << (g % 8))
                    samples.append((g, int(chunk[len(chunk) // 2])))
                if g % 8 == 7 or g == len(groups) - 1:
                    bits[:, g // 8] = column
                    column[:] = 0
                g += 1
            if start != len(hashes):
                raise KeyFilterError(f"{rel}: {len(hashes):,} rows read, {start:,} in its row groups")
    finally:
        con.close()
    dest.mkdir(parents=True)
    bits.tofile(dest / BITS_FILE)
    meta = {"key": key, "m": m, "k": K_HASHES, "width": width, "row_groups": groups,
            "duckdb": duckdb.__version__, "bytes": m * width}
    (dest / META_FILE).write_text(json.dumps(meta))
    written = KeyFilter(dest)
    missed = [g for g, h in samples if g not in set(written.candidates(np.array([h], dtype=np.uint64)).tolist())]
    if missed:
        raise KeyFilterError(f"a key of row group {missed[0]} is not found in the written filter")
    return meta


def check_files(directory: Path) -> str | None:
    """Why the filter in `directory` cannot be read as it is, or None."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
        size = (directory / BITS_FILE).stat().st_size
    except (OSError, ValueError) as exc:
        return f"unreadable: {exc}"
    if not isinstance(meta, dict) or size != meta.get("m", -1) * meta.get("width", -1):
        return f"{BITS_FILE} holds {size:,} bytes, its meta says otherwise"
    if meta.get("duckdb") != duckdb.__version__:
        return f"keys hashed by DuckDB {meta.get('duckdb')}, this is {duckdb.__version__}"
    return None


class KeyFilter:
    """A built filter, memory-mapped: `candidates` of key hashes, `rows` of key values."""

    def __init__(self, directory: Path) -> None:
        meta = json.loads((directory / META_FILE).read_text())
        self.key: str = meta["key"]
        self.m, self.width = int(meta["m"]), int(meta["width"])
        self.groups: list[list[Any]] = meta["row_groups"]
        self.bits = np.memmap(directory / BITS_FILE, dtype=np.uint8, mode="r", shape=(self.m, self.width))

    def candidates(self, hashes: np.ndarray) -> np.ndarray:
        """Numbers of the row groups that may hold any of the hashed keys."""
        hit = np.zeros(self.width, dtype=np.uint8)
        for pos in _positions(hashes, self.m):
            hit |= np.bitwise_and.reduce(self.bits[pos], axis=0)
        return np.flatnonzero(np.unpackbits(hit, bitorder="little")[:len(self.groups)])

    def rows(self, lake_root: Path, con: duckdb.DuckDBPyConnection, values: Sequence[Any],
             columns: Iterable[str]) -> pa.Table:
        """The lake rows whose key is one of `values`: `columns` (lake names; `type` from the file)."""
        wanted = [c for c in dict.fromkeys(columns) if c != "type"]
        by_file: dict[tuple[str, str], list[int]] = {}
        for g in self.candidates(key_hashes(con, values)).tolist():
            t, rel, rg, _ = self.groups[g]
            by_file.setdefault((t, rel), []).append(int(rg))
        keys = pa.array([str(v) for v in values], type=pa.string())
        parts = []
        for (t, rel), rgs in by_file.items():
            path = str(lake_root / rel)
            got = pq.ParquetFile(path, metadata=_footer(path)).read_row_groups(
                rgs, columns=list(dict.fromkeys([self.key, *wanted])))
            got = got.filter(pc.is_in(got.column(self.key), value_set=keys)).select(wanted)
            parts.append(got.append_column("type", pa.array([t] * got.num_rows, type=pa.string())))
        if not parts:
            return pa.schema([pa.field(c, _ARROW_TYPES[LAKE_TYPES[c]]) for c in [*wanted, "type"]]).empty_table()
        return pa.concat_tables(parts)


_ARROW_TYPES = {"TIMESTAMP": pa.timestamp("us"), "DATE": pa.date32(), "VARCHAR": pa.string(), "INTEGER": pa.int32(),
                "BIGINT": pa.int64(), "DOUBLE": pa.float64()}


@lru_cache(maxsize=1024)
def _footer(path: str) -> pq.FileMetaData:
    # a lake file never changes under its name (prepare writes new segments): its footer is parsed
    # once; the metadata is immutable, so threads share it (each read opens its own reader)
    return pq.read_metadata(path)
