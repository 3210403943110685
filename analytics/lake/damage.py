"""The damage register, `LAKE/_damaged.json`: files found not to match their checksum, by any process.

A query that finds a damaged view, index or lake file (`core.checksum`), and `analytics verify`,
note it here, so every later process knows it without reading the file again: the workbench
marks the view or index unhealthy at once, `stats`, `explain` and the guardrails name it, and
`build` and `prepare` repair it. An entry names the file (relative to the lake) with the
identity it had when found damaged (size, mtime, inode; None when missing): it applies only
while the file on disk is still that one, so a file a repair replaced under the same name (a
re-ingested lake segment) is never blamed for its predecessor, and entries of files since
rewritten or removed are pruned on the next write. Written atomically under a lock. Must not
check files nor repair them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from filelock import FileLock

from analytics.core.files import write_atomic

DAMAGED = "_damaged.json"
LOCK = ".damaged.lock"


def damage_path(lake_root: str | os.PathLike) -> Path:
    return Path(lake_root) / DAMAGED


def _identity(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read(lake_root: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(damage_path(lake_root).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_damage(lake_root: str | os.PathLike) -> dict[str, str]:
    """Relative path -> why, for every noted file that is still the file found damaged."""
    root = Path(lake_root)
    out = {}
    for rel, rec in _read(root).items():
        if isinstance(rec, dict) and _identity(root / rel) == rec.get("identity"):
            out[rel] = str(rec.get("why", "damaged"))
    return out


def update_damage(lake_root: str | os.PathLike, found: Mapping[str, str], clean: Iterable[str] = ()) -> None:
    """Note `found` (relative path -> why) as damaged and `clean` as checked clean; prune the entries
    that no longer apply. Never raises for a read-only lake: the note is a hint, the check decides."""
    root = Path(lake_root)
    try:
        with FileLock(str(root / LOCK), timeout=60):
            reg = _read(root)
            for rel in clean:
                reg.pop(rel, None)
            for rel, why in found.items():
                reg[rel] = {"why": why, "identity": _identity(root / rel)}
            reg = {rel: rec for rel, rec in reg.items()
                   if isinstance(rec, dict) and _identity(root / rel) == rec.get("identity")}
            if reg or damage_path(root).exists():
                write_atomic(damage_path(root), json.dumps(reg, indent=1, sort_keys=True))
    except OSError:
        pass
