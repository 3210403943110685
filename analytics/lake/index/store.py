"""Lake indexes: a narrow copy of some event types sorted by a point-lookup key, or a row-group key
filter (`keyfilter`), for the queries no view can beat the lake on.

A point filter on `user_id` or `auction_id` reads the whole key column of the ts-sorted lake (every
row group holds every key). An index is, per event type, one Parquet file of just the columns the
workload's queries of that key read, sorted by the key (then ts) in small row groups, so DuckDB's
min/max statistics skip all but the few row groups holding the wanted keys. Measured at 15M rows
(ARCHITECTURE.md): the lake answers a `user_id` point query in ~110-145 ms, a 16,384-row-group
index of (user_id, ts, prices) in ~5-9 ms at 0.26x the lake's bytes; 4,096-row groups were slower
(more statistics to read). DuckDB 2.0.1 writes Parquet bloom filters only for dictionary-encoded
columns, which the lake's user_id and auction_id are not (~110K distinct values per row group).

Owns `IndexDef` (key, types, columns, kind), building one (written to a staging directory, checked
against the lake: rows per type and an order-free hash sum of the key, or for a filter the rows per
type and a sampled key of every row group found in the written file; each file checksummed; then
renamed into place), whether a record is usable for the lake as it is now (its files there, of
their recorded sizes, none noted damaged), and the relation a query reads it through
(time columns derived from ts exactly as the lake's). Must not choose indexes (that is advice in
`views.adaptive`) nor route queries.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from analytics.core import db
from analytics.core.checksum import file_record, stat_damage
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.core.sql import sql_string
from analytics.lake.damage import load_damage
from analytics.lake.index import keyfilter
from analytics.lake.state import Lake
from analytics.query.schema import EVENT_TYPES

INDEX_DIR = "indexes"
INDEX_KEYS: tuple[str, ...] = ("user_id", "auction_id")
# Columns an index may store: the lake's base columns (`type` is the file, the time columns are derived).
BASE_COLUMNS: tuple[str, ...] = ("ts", "auction_id", "advertiser_id", "publisher_id", "bid_price", "user_id",
                                 "total_price", "country")
DERIVED_FROM_TS: dict[str, str] = {  # as prepare derives them (the timezone guardrail checks the lake's)
    "week": "CAST(date_trunc('week', ts) AS DATE)",
    "day": "CAST(ts AS DATE)",
    "hour": "date_trunc('hour', ts)",
    "minute": "strftime(ts, '%Y-%m-%d %H:%M')",
}
ROW_GROUP_ROWS = 16_384


class IndexBuildError(RuntimeError):
    """An index failed its checks against the lake; nothing was promoted."""


# The kind of index per key: a sorted copy for a key whose rows spread over the year (a user's
# events fall in every row group), a row-group filter for one whose rows sit close in time (an
# auction's few events: `lake.keyfilter`).
KIND_OF_KEY: dict[str, str] = {"user_id": "sorted", "auction_id": "filter"}
FILTER_ROWS = "__index_rows"  # the name a filter's rows are registered under for one statement


@dataclass(frozen=True)
class IndexDef:
    name: str
    key: str  # one of INDEX_KEYS
    types: tuple[str, ...]
    columns: tuple[str, ...]  # base columns stored, the key first (a filter stores only the key's hashes)
    kind: str = "sorted"  # sorted | filter (KIND_OF_KEY)

    @classmethod
    def of(cls, name: str, key: str, types: Any, columns: Any, kind: str = "sorted") -> "IndexDef":
        if key not in INDEX_KEYS:
            raise ValueError(f"index key {key!r}: allowed {', '.join(INDEX_KEYS)}")
        if kind not in ("sorted", "filter"):
            raise ValueError(f"index {name}: kind {kind!r}: allowed sorted, filter")
        cols = {key} if kind == "filter" else set(columns) | {key}
        bad = sorted(c for c in cols if c not in BASE_COLUMNS)
        if bad or not set(types) <= set(EVENT_TYPES) or not types:
            raise ValueError(f"index {name}: columns {bad} or types {sorted(types)} not allowed")
        return cls(name, key, tuple(t for t in EVENT_TYPES if t in set(types)),
                   (key,) + tuple(c for c in BASE_COLUMNS if c in cols and c != key), kind)

    def readable(self) -> set[str]:
        """The query columns this index answers for: its columns, `type`, and with ts the time columns
        (a filter reads the lake's own row groups: every column)."""
        if self.kind == "filter":
            return set(BASE_COLUMNS) | {"type"} | set(DERIVED_FROM_TS)
        return set(self.columns) | {"type"} | (set(DERIVED_FROM_TS) if "ts" in self.columns else set())

    def relation(self, files: Mapping[str, Path]) -> str:
        """A relation with the lake's column names over this index's files (one per type); for a
        filter, the rows it finds, registered for the statement under `FILTER_ROWS`."""
        if self.kind == "filter":
            return f"{FILTER_ROWS} AS events"
        items = ["type"] + list(self.columns) + ([f"{sql} AS {c}" for c, sql in DERIVED_FROM_TS.items()]
                                                 if "ts" in self.columns else [])
        listing = ", ".join(sql_string(str(files[t])) for t in self.types)
        return (f"(SELECT {', '.join(items)} FROM read_parquet([{listing}], hive_partitioning = true, "
                f"hive_types = {{'type': VARCHAR}})) AS events")


def index_files(lake_root: str | os.PathLike, record: Mapping[str, Any]) -> dict[str, Path]:
    vdir = Path(lake_root) / record["dir"]
    if record.get("kind") == "filter":
        return {"bits": vdir / keyfilter.BITS_FILE, "meta": vdir / keyfilter.META_FILE}
    return {t: vdir / f"type={t}" / "part.parquet" for t in record["types"]}


def index_records(record: Mapping[str, Any]) -> dict[str, dict[str, Any] | None]:
    """Each file of an index version, relative to the lake, with its checksum record (none for an
    index built before checksums: `usable` still checks that its files are there)."""
    return {f"{record['dir']}/{rel}": rec for rel, rec in (record.get("checksums") or {}).items()}


def files_damage(lake_root: Path, record: Mapping[str, Any], damaged: Mapping[str, str] | None = None) -> str | None:
    """Why an index version's files cannot answer (not the size their checksums record, not a
    regular file, noted in `damaged`), or None. One stat per file."""
    for rel, rec in index_records(record).items():
        why = stat_damage(lake_root / rel, rel, rec)
        if why is not None:
            return why
        if damaged and rel in damaged:
            return f"damaged: {rel}: {damaged[rel]}"
    return None


def usable(index: IndexDef, lake: Lake, record: Mapping[str, Any] | None,
           damaged: Mapping[str, str] | None = None) -> str | None:
    """Why this index record must not answer for `lake` now, or None (`damaged`: the damage
    register, `lake.damage`)."""
    if record is None:
        return "not built"
    if not lake.covers(record.get("lake_version")):
        return f"built from lake version {record.get('lake_version')}, lake is now {lake.data_version}"
    if (tuple(record.get("columns", ())) != index.columns or tuple(record.get("types", ())) != index.types
            or record.get("kind", "sorted") != index.kind):
        return "definition changed since the build"
    for f in index_files(lake.root, record).values():
        if not f.is_file():
            return f"file missing: {f.relative_to(lake.root)}"
    why = files_damage(lake.root, record, load_damage(lake.root) if damaged is None else damaged)
    if why is not None:
        return why
    if index.kind == "filter":
        return keyfilter.check_files(lake.root / record["dir"])
    return None


def _key_totals(con: Any, relation: str, key: str) -> dict[str, tuple[int, int]]:
    rows = con.execute(f"SELECT type, count(*), sum(hash({key})) FROM {relation} GROUP BY type").fetchall()
    return {t: (int(n), int(h or 0)) for t, n, h in rows}


def build_index(index: IndexDef, lake: Lake, *, version: int, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> dict[str, Any]:
    """Write, check and promote one index version; returns its record (for the adaptive catalog)."""
    started = time.perf_counter()
    idir = lake.root / INDEX_DIR / index.name
    idir.mkdir(parents=True, exist_ok=True)
    staging = idir / f".staging-{uuid.uuid4().hex}"
    final = idir / f"v{version}"
    write = _write_filter if index.kind == "filter" else _write_sorted
    try:
        rows, nbytes, extra = write(index, lake, staging, memory_limit)
        checksums = {f.relative_to(staging).as_posix(): file_record(f) for f in sorted(staging.rglob("*"))
                     if f.is_file()}
        shutil.rmtree(final, ignore_errors=True)  # a leftover of a killed build of this version
        os.replace(staging, final)
        for old in idir.glob("v*"):  # the previous version stays for readers that planned on it
            if old.name[1:].isdigit() and int(old.name[1:]) < version - 1:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, keyfilter.KeyFilterError):
            raise IndexBuildError(f"{index.name}: {exc}") from exc
        raise
    return {"key": index.key, **extra, "types": list(index.types), "columns": list(index.columns),
            "version": version, "dir": final.relative_to(lake.root).as_posix(), "lake_version": lake.data_version,
            "rows_by_type": rows, "bytes": nbytes, "checksums": checksums,
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - started, 3)}


def _write_sorted(index: IndexDef, lake: Lake, staging: Path, memory_limit: str
                  ) -> tuple[dict[str, int], int, dict[str, Any]]:
    """The sorted copy into `staging`, checked: rows per type and an order-free hash sum of the key."""
    con = db.connect(memory_limit=memory_limit)
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = false")
    try:
        for t in index.types:
            (staging / f"type={t}").mkdir(parents=True)
            order = index.key + (", ts" if "ts" in index.columns and index.key != "ts" else "")
            con.execute(f"COPY (SELECT {', '.join(index.columns)} FROM {lake.relation_sql([t])} ORDER BY {order}) "
                        f"TO {sql_string(str(staging / f'type={t}' / 'part.parquet'))} "
                        f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
        files = index_files(lake.root, {"dir": staging.relative_to(lake.root).as_posix(), "types": index.types})
        built = _key_totals(con, index.relation(files), index.key)
        want = _key_totals(con, lake.relation_sql(index.types), index.key)
    finally:
        con.close()
    if built != want:
        raise IndexBuildError(f"{index.name}: rows or key hash per type differ from the lake: {built} vs {want}")
    return ({t: want.get(t, (0, 0))[0] for t in index.types}, sum(f.stat().st_size for f in files.values()), {})


def _write_filter(index: IndexDef, lake: Lake, staging: Path, memory_limit: str
                  ) -> tuple[dict[str, int], int, dict[str, Any]]:
    """The row-group key filter into `staging` (checked by `keyfilter.build`), its rows per type
    checked against the manifest's."""
    meta = keyfilter.build(lake, index.key, index.types, staging, memory_limit)
    rows = {t: 0 for t in index.types}
    for t, _, _, n in meta["row_groups"]:
        rows[t] += int(n)
    want = (lake.state.get("totals") or {}).get("lake_by_type") or {}
    if any(rows[t] != int(want.get(t, 0)) for t in index.types):
        raise IndexBuildError(f"{index.name}: rows per type {rows} differ from the lake's {want}")
    return rows, int(meta["bytes"]), {"kind": "filter", "row_groups": len(meta["row_groups"])}


def column_bytes(lake: Lake, types: Any, columns: Any) -> int:
    """Compressed bytes of `columns` of `types` in the lake, from the Parquet footers (no data read):
    about what an index of them takes (its sorted key shrinks, its unsorted ts grows)."""
    files = lake.event_files(types)
    if not files:
        return 0
    con = db.connect()
    con.execute("SET enable_progress_bar = false")
    try:
        listing = ", ".join(sql_string(str(f)) for f in files)
        cols = list(columns)
        got = con.execute(f"SELECT sum(total_compressed_size) FROM parquet_metadata([{listing}]) "
                          f"WHERE path_in_schema IN ({', '.join('?' for _ in cols)})", cols).fetchone()[0]
        return int(got or 0)
    finally:
        con.close()
