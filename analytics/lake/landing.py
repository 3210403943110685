"""The landing directory that `analytics ingest` watches: which parts are complete, and the taken copy.

Owns the rule of when a part may be read and the directory of taken parts that `prepare` reads
(`LAKE/_ingest/parts`). A part is a `*.csv` file (hidden names and any other suffix, such as
`NAME.csv.tmp` or `NAME.csv.part`, are never read: a writer writes under such a name and
renames) whose size, mtime and inode have not changed for `settle` seconds (with `settle=0` it
is taken at first sight: only for writers that rename). Taking a part hard-links it (a copy
across file systems) into the taken directory under a temporary name that can never match a
part (hidden, ending in `.taking`), then renames it; a take that fails (a full disk) leaves no
temporary file: prepare sees a whole part or none, and a part replaced in the landing directory by a rename keeps its
old content in the taken directory until the new one is taken. A part gone from the landing
directory is dropped from the taken one. Changes come one part at a time, so each becomes one
prepare. Must not prepare the lake or refresh views (that is `views.ingest`).
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

TAKEN_DIR = "_ingest/parts"
TAKING = ".taking"  # the suffix of a part being taken


@dataclass(frozen=True)
class Change:
    """One step for the ingest loop: `take` a part (new or replaced) or `drop` it (gone)."""

    action: str
    name: str


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class Landing:
    """A landing directory and the taken copy of its complete parts (under the lake)."""

    def __init__(self, landing: str | os.PathLike, lake: str | os.PathLike, settle: float) -> None:
        self.landing = Path(landing)
        self.taken = Path(lake) / TAKEN_DIR
        self.settle = settle
        self._seen: dict[str, tuple[tuple[int, int, int], float]] = {}  # name -> identity, first seen unchanged
        self._refused: dict[str, tuple[int, int, int]] = {}  # name -> identity of content refused as it is

    def _parts(self) -> dict[str, os.stat_result]:
        out = {}
        for p in self.landing.glob("*.csv"):
            if p.name.startswith("."):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # renamed away meanwhile
                continue
            if p.is_file():
                out[p.name] = st
        return out

    def _taken(self) -> dict[str, os.stat_result]:
        if not self.taken.is_dir():
            return {}
        return {p.name: p.stat() for p in self.taken.glob("*.csv")}

    def scan(self, now: float | None = None) -> tuple[list[Change], int]:
        """The changes to make, in name order (drops first), and how many parts are still settling."""
        now = time.monotonic() if now is None else now
        parts, taken = self._parts(), self._taken()
        changes = [Change("drop", n) for n in sorted(set(taken) - set(parts))]
        settling = 0
        for name in sorted(parts):
            ident = _identity(parts[name])
            old = taken.get(name)
            if old is not None and (_identity(old) == ident or (old.st_size, old.st_mtime_ns) == ident[:2]):
                continue  # taken as it is (a hard link shares the inode; a copy keeps size and mtime)
            if self._refused.get(name) == ident:
                continue
            seen = self._seen.get(name)
            if seen is None or seen[0] != ident:
                self._seen[name] = (ident, now)
                seen = self._seen[name]
            if now - seen[1] < self.settle:
                settling += 1
                continue
            changes.append(Change("take", name))
        for name in set(self._seen) - set(parts):
            del self._seen[name]
        return changes, settling

    def adopt(self, sources: Iterable[dict[str, Any]]) -> list[str]:
        """Take at once the parts the lake already holds as they are (`sources`: the manifest's
        `source` records), so that a lake prepared from this directory is not re-read part by part."""
        known = {s["file"]: (s["size"], s["mtime_ns"]) for s in sources}
        taken = self._taken()
        adopted = []
        for name, st in sorted(self._parts().items()):
            if name not in taken and known.get(name) == (st.st_size, st.st_mtime_ns):
                self.take(name)
                adopted.append(name)
        return adopted

    def take(self, name: str) -> Path:
        """Link (or copy) a landing part into the taken directory, atomically; returns its path there."""
        self.taken.mkdir(parents=True, exist_ok=True)
        src, dst = self.landing / name, self.taken / name
        tmp = self.taken / f".{name}.{uuid.uuid4().hex[:8]}{TAKING}"  # never `*.csv`: prepare cannot read it
        try:
            try:
                os.link(src, tmp)
            except OSError:  # another file system, or links not allowed: a copy keeps size and mtime
                shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._seen.pop(name, None)
        return dst

    def drop(self, name: str) -> None:
        (self.taken / name).unlink(missing_ok=True)

    def refuse(self, name: str) -> None:
        """Leave the part's current content alone until it changes (it cannot be ingested as it is)."""
        try:
            self._refused[name] = _identity((self.landing / name).stat())
        except FileNotFoundError:
            pass
        self._seen.pop(name, None)

    def sweep(self) -> None:
        """Remove half-made links left by a killed run."""
        for pattern in (f".*{TAKING}", ".taking-*"):  # the second: named by runs before this one
            for tmp in self.taken.glob(pattern) if self.taken.is_dir() else ():
                tmp.unlink(missing_ok=True)
