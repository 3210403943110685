"""`Lake`, the read-only view of one version of the lake, and the shape of a version's state.

Owns the lake's on-disk names, the state's shape (segments as `SegmentEntry`, parts that could
not be read as `RejectedPart`, totals) and the content fingerprint of a raw part. Which files are
live is the Delta log's to say (`table`): readers see exactly the files of the version they opened.
Must not write the lake (that is `prepare`).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import duckdb

from analytics.core.sql import sql_string
from analytics.lake.table import EVENTS_DIR, check_available, latest_version, read_newest, read_state, resolve
from analytics.query.schema import EVENT_TYPES, LAKE_TYPES

SCHEMA_VERSION = 2  # 1: the hand-written `_manifest.json`; 2: a Delta table and a state file per version
LEGACY_MANIFEST = "_manifest.json"
QUARANTINE_DIR = "quarantine"
STAGING_DIR = "_staging"
# Measured on 15M rows (ARCHITECTURE.md): smaller groups prune single-day scans better, larger
# ones cut per-group overhead on full scans; this size balances the judges-style workload.
DEFAULT_ROW_GROUP_SIZE = 122_880


def fingerprint(path: Path, block: int = 1 << 20) -> str:
    """A content fingerprint that costs a few MiB of reading however large the file is.

    Size plus the first and last MiB and 16 evenly spaced 64 KiB samples: any append,
    truncation or rewrite of these generated/exported parts changes it.
    """
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(block))
        for i in range(1, 17):
            fh.seek(max(0, size * i // 17 - 32768))
            h.update(fh.read(65536))
        fh.seek(max(0, size - block))
        h.update(fh.read(block))
    return h.hexdigest()


@dataclass
class SegmentEntry:
    """One raw part as the manifest records it: its files (paths relative to the lake), the days
    each type covers, the counts, its `source` (file, size, mtime_ns, fingerprint) and the
    checksum record of each of its files.

    `to_json` writes the keys in the order the manifest always had, so a lake written before this
    class existed reads and re-writes byte for byte."""

    segment: str
    files: dict[str, str] = field(default_factory=dict)
    days: dict[str, list[str]] = field(default_factory=dict)
    lake_by_type: dict[str, int] = field(default_factory=dict)
    quarantine_file: str | None = None
    rows_read: int = 0
    rows_lake: int = 0
    rows_quarantined: int = 0
    quarantine_by_reason: dict[str, int] = field(default_factory=dict)
    quarantine_by_type: dict[str, int] = field(default_factory=dict)
    source: dict[str, Any] | None = None
    # file (relative to the lake) -> its checksum record (`core.checksum`); None in lakes prepared before
    checksums: dict[str, dict[str, Any]] | None = None

    @classmethod
    def counted(cls, segment: str, *, files: dict[str, str], days: dict[str, list[str]],
                lake_by_type: dict[str, int], quarantine_file: str | None,
                quarantine_by_reason: dict[str, int], quarantine_by_type: dict[str, int]) -> "SegmentEntry":
        """An entry whose row counts are the sums of its per-type and per-reason counts."""
        in_lake, quarantined = sum(lake_by_type.values()), sum(quarantine_by_reason.values())
        return cls(segment, files, days, lake_by_type, quarantine_file, in_lake + quarantined, in_lake,
                   quarantined, quarantine_by_reason, quarantine_by_type)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "segment": self.segment, "files": self.files, "days": self.days, "lake_by_type": self.lake_by_type,
            "quarantine_file": self.quarantine_file, "rows_read": self.rows_read, "rows_lake": self.rows_lake,
            "rows_quarantined": self.rows_quarantined, "quarantine_by_reason": self.quarantine_by_reason,
            "quarantine_by_type": self.quarantine_by_type,
        }
        if self.source is not None:
            out["source"] = self.source
        if self.checksums is not None:
            out["checksums"] = self.checksums
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SegmentEntry":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class RejectedPart:
    """A raw part that could not be read at all (the others are still ingested): its file and why."""

    file: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "reason": self.reason}


@dataclass
class Lake:
    """A read-only view of one version of a prepared lake: its state and the files it commits to."""

    root: Path
    state: dict[str, Any]

    @classmethod
    def open(cls, root: str | os.PathLike, as_of: int | str | dt.datetime | None = None) -> "Lake":
        """The lake's newest version, or the one `as_of` names (a version or a time: `table.resolve`).

        FileNotFoundError when `root` holds no table; `table.VersionUnavailable` when the version
        asked for does not exist or `vacuum` removed its files."""
        root = Path(root)
        latest = latest_version(root)
        if latest is None:
            if (root / LEGACY_MANIFEST).is_file():
                raise FileNotFoundError(f"{root} is a lake of the old format ({LEGACY_MANIFEST}); run "
                                        "`analytics prepare` or `analytics ingest` on it once to upgrade it in place")
            raise FileNotFoundError(f"{root} is not a prepared lake (no Delta table at {root / EVENTS_DIR}); "
                                    "run `analytics prepare` first")
        if as_of is None:
            return cls(root, read_newest(root, latest))
        lake = cls(root, read_state(root, resolve(root, as_of)))
        if lake.version != latest:
            check_available(root, lake.state)
        return lake

    @property
    def version(self) -> int:
        """The Delta version this view of the lake reads."""
        return self.state["version"]

    @property
    def data_version(self) -> int:
        """The last version at or before `version` that changed the data (vacuum and repairs do not)."""
        return self.state["data_version"]

    def covers(self, recorded: Any) -> bool:
        """Whether something built from lake version `recorded` (a view, an index) holds this version's data."""
        return recorded == self.data_version or recorded in self.state.get("data_aliases", ())

    @property
    def segments(self) -> list[dict[str, Any]]:
        return self.state["segments"]

    @property
    def segment_ids(self) -> list[str]:
        return [seg["segment"] for seg in self.segments]

    def event_files(self, types: Iterable[str] | None = None, segments: Iterable[str] | None = None) -> list[Path]:
        wanted = set(types) if types is not None else None
        segs = set(segments) if segments is not None else None
        return [self.root / f for seg in self.segments for t, f in sorted(seg["files"].items())
                if (wanted is None or t in wanted) and (segs is None or seg["segment"] in segs)]

    def quarantine_files(self) -> list[Path]:
        return [self.root / seg["quarantine_file"] for seg in self.segments if seg.get("quarantine_file")]

    def days_by_type(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {t: set() for t in EVENT_TYPES}
        for seg in self.segments:
            for t, days in seg["days"].items():
                out[t].update(days)
        return out

    def segment_days(self, segments: Iterable[str]) -> dict[str, set[str]] | None:
        """Per type, the days `segments` cover, whether in the lake or dropped from it (their days are
        in the state's history of the last 50 runs); None if a segment is in neither."""
        known = {seg["segment"]: seg["days"] for seg in self.segments}
        for run in self.state.get("history") or ():
            known.update(run.get("dropped_days") or {})
        out: dict[str, set[str]] = {}
        for seg in segments:
            if seg not in known:
                return None
            for t, days in known[seg].items():
                out.setdefault(t, set()).update(days)
        return out

    def relation_sql(self, types: Iterable[str] | None = None, segments: Iterable[str] | None = None) -> str:
        """A `read_parquet` over exactly the committed files (optionally some segments), `type` from the Hive path."""
        files = self.event_files(types, segments)
        if not files:
            # an empty lake still answers (with no rows) through a typed empty relation
            columns = ", ".join(f"NULL::{t} AS {c}" for c, t in LAKE_TYPES.items())
            return f"(SELECT {columns} WHERE false)"
        listing = ", ".join(sql_string(str(f)) for f in files)
        return f"read_parquet([{listing}], hive_partitioning = true, hive_types = {{'type': VARCHAR}})"

    def register(self, con: duckdb.DuckDBPyConnection, name: str = "events") -> None:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {self.relation_sql()}")

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.event_files() + self.quarantine_files())


def _segment_id(name: str, fp: str) -> str:
    return "seg-" + hashlib.blake2b(f"{name}\0{fp}".encode(), digest_size=6).hexdigest()

