"""The result cache: answers keyed by the canonical query and the content they were computed from.

Owns the key (a query's canonical form, so the order of `where` items and the spelling of
equal values do not matter, plus a *content stamp*: the lake version and the version of every
view in the registry, and whether views are used) and the bounded store: an in-memory LRU of
Arrow tables capped in bytes and entries, and optionally an on-disk tier under
`LAKE/_cache/` (Arrow IPC files, written to a temporary name and renamed) so that a repeated
`analytics run` in a new process is answered without recomputing. A `prepare` or `build` that
changes content changes the stamp, so no old entry can be hit; the disk tier also deletes the
directories of other stamps the first time it stores under a new one. Must not run queries.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.ipc as ipc

from analytics.query.model import Query
from analytics.views.registry import ViewEntry

CACHE_DIR = "_cache"
DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_MAX_ENTRIES = 4096
DEFAULT_DISK_MAX_BYTES = 512 << 20
DEFAULT_DISK_MAX_ENTRY_BYTES = 64 << 20


def content_stamp(lake_version: str | None, registry: Mapping[str, ViewEntry], use_views: bool) -> str:
    """Changes whenever `prepare` changes the lake or `build` produces a new version of any view."""
    views = sorted((name, e.version, e.lake_version, e.definition)
                   for name, e in registry.items())
    text = json.dumps([lake_version, views, bool(use_views)], default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def query_hash(query: Query) -> str:
    return hashlib.blake2b(query.canonical().encode(), digest_size=8).hexdigest()


def cache_key(query: Query, stamp: str) -> str:
    return hashlib.blake2b(f"{stamp}\0{query.canonical()}".encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    table: pa.Table
    route: str
    fallback_reason: str | None = None

    @property
    def nbytes(self) -> int:
        return self.table.nbytes


class ResultCache:
    """Thread-safe bounded LRU of answers, with an optional persistent tier in `directory`."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES,
                 directory: str | os.PathLike | None = None, disk_max_bytes: int = DEFAULT_DISK_MAX_BYTES,
                 disk_max_entry_bytes: int = DEFAULT_DISK_MAX_ENTRY_BYTES) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.directory = Path(directory) if directory is not None else None
        self.disk_max_bytes = disk_max_bytes
        self.disk_max_entry_bytes = disk_max_entry_bytes
        self._lock = threading.Lock()
        self._mem: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._swept_stamps: set[str] = set()
        self._disk_bytes: dict[str, int] = {}
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0

    # ---- memory tier -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._mem)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str, stamp: str | None = None) -> CacheEntry | None:
        with self._lock:
            entry = self._mem.get(key)
            if entry is not None:
                self._mem.move_to_end(key)
                self.hits += 1
                return entry
        entry = self._disk_get(key, stamp) if stamp is not None else None
        with self._lock:
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self.disk_hits += 1
        self._mem_put(key, entry)
        return entry

    def put(self, key: str, entry: CacheEntry, stamp: str | None = None) -> None:
        if entry.nbytes > self.max_bytes // 4:
            return  # one huge answer must not flush everything else
        self._mem_put(key, entry)
        if stamp is not None:
            self._disk_put(key, entry, stamp)

    def _mem_put(self, key: str, entry: CacheEntry) -> None:
        with self._lock:
            old = self._mem.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._mem[key] = entry
            self._bytes += entry.nbytes
            while self._mem and (self._bytes > self.max_bytes or len(self._mem) > self.max_entries):
                _, evicted = self._mem.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._mem.clear()
            self._bytes = 0

    # ---- disk tier -------------------------------------------------------------------------------
    def _path(self, key: str, stamp: str) -> Path:
        assert self.directory is not None
        return self.directory / stamp / f"{key}.arrow"

    def _disk_get(self, key: str, stamp: str) -> CacheEntry | None:
        if self.directory is None:
            return None
        path = self._path(key, stamp)
        try:
            with pa.memory_map(str(path), "r") as source:
                table = ipc.open_file(source).read_all()
        except (OSError, pa.ArrowException):
            return None  # absent, evicted meanwhile, or unreadable: recompute
        meta = table.schema.metadata or {}
        route = meta.get(b"route", b"").decode()
        fallback = meta.get(b"fallback_reason")
        table = table.replace_schema_metadata(None)
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return CacheEntry(table, route, fallback.decode() if fallback else None)

    def _disk_put(self, key: str, entry: CacheEntry, stamp: str) -> None:
        if self.directory is None or entry.nbytes > self.disk_max_entry_bytes:
            return
        try:
            self._sweep_other_stamps(stamp)
            path = self._path(key, stamp)
            path.parent.mkdir(parents=True, exist_ok=True)
            meta = {b"route": entry.route.encode()}
            if entry.fallback_reason:
                meta[b"fallback_reason"] = entry.fallback_reason.encode()
            table = entry.table.replace_schema_metadata(meta)
            tmp = path.parent / f".{key}.{uuid.uuid4().hex}.tmp"
            try:
                with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            self._bound_disk(path.parent, path.stat().st_size)
        except OSError:
            pass  # a read-only or full disk only costs the persistence

    def _sweep_other_stamps(self, stamp: str) -> None:
        if stamp in self._swept_stamps or self.directory is None:
            return
        self._swept_stamps.add(stamp)
        if not self.directory.is_dir():
            return
        for d in self.directory.iterdir():
            if d.is_dir() and d.name != stamp:
                shutil.rmtree(d, ignore_errors=True)  # answers for content that no longer exists

    def _bound_disk(self, d: Path, added: int) -> None:
        """Keep the stamp's directory under `disk_max_bytes`, least recently used out first.

        The running total is per process (other processes' writes are seen at the next scan)."""
        with self._lock:
            known = self._disk_bytes.get(str(d))
            if known is not None:
                self._disk_bytes[str(d)] = known + added
                if known + added <= self.disk_max_bytes:
                    return
        try:
            files = [(f.stat(), f) for f in d.glob("*.arrow")]
        except OSError:
            return
        total = sum(st.st_size for st, _ in files)
        with self._lock:
            self._disk_bytes[str(d)] = total
        if total <= self.disk_max_bytes:
            return
        for st, f in sorted(files, key=lambda x: x[0].st_mtime):
            if total <= self.disk_max_bytes * 0.8:
                break
            f.unlink(missing_ok=True)
            total -= st.st_size
        with self._lock:
            self._disk_bytes[str(d)] = total

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self._mem), "bytes": self._bytes, "hits": self.hits, "misses": self.misses,
                "disk_hits": self.disk_hits, "persistent": self.directory is not None}


def disk_dir(lake_root: str | os.PathLike) -> Path:
    return Path(lake_root) / CACHE_DIR
