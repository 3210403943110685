"""The lake's table: `LAKE/events` is a Delta Lake table; this module commits to it and reads its versions.

Owns the Delta side of the lake: a commit (add and remove actions, with the raw parts and the
remediation accounting in the commit's metadata, written by `deltalake`), the newest version (a
listing of `_delta_log`), the state of a version (`_state/<version>.json`: each segment's live
files, days, counts, raw part and checksums), time travel (`resolve`), reader leases and `vacuum`.

The Delta log alone says which files are live. A state file is written after each commit from
the log's own list of files and is used only for the version it is named after; when it is
missing (a process killed between the commit and the state, or a commit by another tool) it is
derived again from the log: the live files from `deltalake`, each segment's details from the
commits' metadata. Serving reads one directory listing and one JSON file; `deltalake` is imported
only to write, derive, resolve a timestamp or vacuum (it costs ~30 ms to import).
Must not know about queries or views.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from analytics.core.faults import crash_point
from analytics.core.files import write_atomic

if TYPE_CHECKING:
    from deltalake import DeltaTable

EVENTS_DIR = "events"
WRITE_LOCK = ".prepare.lock"  # held by the one writer (`prepare`, ingest's steps) from reading the state to its commit
LOG_DIR = f"{EVENTS_DIR}/_delta_log"
STATE_DIR = "_state"
READERS_DIR = "_readers"
PENDING = f"{STATE_DIR}/pending.json"  # files promoted for a commit that has not happened yet
META_KEY = "analytics"  # the key of this package's part of a commit's metadata
_COMMIT = re.compile(r"^(\d{20})\.json$")
# columns whose min/max go into the add actions' stats, so other engines skip files on them too
# the lake files' columns as DuckDB writes them (`prepare`): the table's schema when it starts empty
EVENTS_SCHEMA = pa.schema([
    ("ts", pa.timestamp("us")), ("day", pa.date32()), ("week", pa.date32()), ("hour", pa.timestamp("us")),
    ("minute", pa.string()), pa.field("auction_id", pa.string(), nullable=False), ("advertiser_id", pa.int32()),
    ("publisher_id", pa.int32()), ("bid_price", pa.float64()), ("user_id", pa.int64()),
    ("total_price", pa.float64()), pa.field("country", pa.string(), nullable=False)])
_STATS_COLUMNS = ("ts", "day", "week", "hour", "advertiser_id", "publisher_id", "user_id")


class VersionUnavailable(LookupError):
    """A version asked for by time travel that the table does not have, or whose files vacuum removed."""


def latest_version(root: Path) -> int | None:
    """The newest committed version of the lake's table, from a listing of its log; None if no table."""
    try:
        names = os.listdir(root / LOG_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return None
    versions = [int(m.group(1)) for m in map(_COMMIT.match, names) if m]
    return max(versions) if versions else None


def state_path(root: Path, version: int) -> Path:
    return root / STATE_DIR / f"{version:020d}.json"


def read_state(root: Path, version: int) -> dict[str, Any]:
    """The state of `version`: its state file, or derived from the log (and then written) when missing."""
    try:
        state = json.loads(state_path(root, version).read_text())
    except FileNotFoundError:
        return derive_state(root, version)
    if state.get("version") != version:
        raise ValueError(f"{state_path(root, version)} describes version {state.get('version')}, not {version}")
    return state


def read_newest(root: Path, latest: int) -> dict[str, Any]:
    """The state of the newest version a reader can take: `latest`, or, while a writer that has just
    committed it is still writing its state file, the version before (a whole version all the same:
    the reader is simply a moment earlier); derived from the log when no writer is at work."""
    if not state_path(root, latest).is_file() and latest > 0 and state_path(root, latest - 1).is_file():
        try:
            FileLock(str(root / WRITE_LOCK)).acquire(timeout=0).lock.release()
        except Timeout:
            return read_state(root, latest - 1)
        except OSError:
            pass  # a read-only lake: no writer can be at work
    return read_state(root, latest)


def _table(root: Path, version: int | None = None) -> "DeltaTable":
    from deltalake import DeltaTable
    return DeltaTable(str(root / EVENTS_DIR), version=version)


def resolve(root: Path, as_of: int | str | dt.datetime) -> int:
    """The version `as_of` names: a version number, or the last version committed at or before a time
    (an ISO timestamp; UTC unless it names its zone). VersionUnavailable when there is none."""
    latest = latest_version(root)
    if latest is None:
        raise VersionUnavailable(f"{root} has no table yet; run `analytics prepare` first")
    if isinstance(as_of, int) or (isinstance(as_of, str) and as_of.strip().isdigit()):
        version = int(as_of)
        if not 0 <= version <= latest:
            raise VersionUnavailable(f"version {version} of {root} does not exist (versions 0 to {latest})")
        return version
    when = as_of if isinstance(as_of, dt.datetime) else _parse_time(str(as_of))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    at_ms = when.timestamp() * 1000
    committed = [int(h["version"]) for h in _table(root).history() if h.get("timestamp", 0) <= at_ms]
    if not committed:
        raise VersionUnavailable(f"{root} has no version committed at or before {when.isoformat()}")
    return max(committed)


def _parse_time(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise VersionUnavailable(f"--as-of {text!r} is neither a version number nor an ISO timestamp "
                                 "(e.g. 2024-06-01T12:00:00Z)") from None


def check_available(root: Path, state: dict[str, Any]) -> None:
    """VersionUnavailable, in one line, when files of an old version were removed by `vacuum`."""
    missing = [rel for seg in state["segments"] for rel in seg["files"].values() if not (root / rel).exists()]
    if missing:
        kept = available_versions(root)
        raise VersionUnavailable(
            f"version {state['version']} of {root} is no longer available: `analytics vacuum` removed its files "
            f"({len(missing)} of them, e.g. {missing[0]}); versions still available: {_ranges(kept)}")


def available_versions(root: Path) -> list[int]:
    """The versions with a state file (vacuum removes the state files of the versions it removes)."""
    found = (re.match(r"^(\d{20})\.json$", p.name) for p in (root / STATE_DIR).glob("*.json"))
    return sorted(int(m.group(1)) for m in found if m)


def _ranges(versions: list[int]) -> str:
    if not versions:
        return "none"
    out, start = [], versions[0]
    for a, b in zip(versions, versions[1:] + [None]):
        if b != a + 1:
            out.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ", ".join(out)


# ---- writing -----------------------------------------------------------------------------------
def file_stats(path: Path) -> str:
    """The Delta `stats` of a Parquet file, from its footer: rows, nulls per column, min/max of the
    integer, date and timestamp columns (other engines skip files with them)."""
    md = pq.read_metadata(path)
    schema = md.schema.to_arrow_schema()
    nulls = {name: 0 for name in schema.names}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    for r in range(md.num_row_groups):
        group = md.row_group(r)
        for i, name in enumerate(schema.names):
            st = group.column(i).statistics
            if st is None:
                nulls.pop(name, None)
                continue
            if name in nulls:
                nulls[name] += st.null_count
            if name in _STATS_COLUMNS and st.has_min_max:
                mins[name] = st.min if name not in mins else min(mins[name], st.min)
                maxs[name] = st.max if name not in maxs else max(maxs[name], st.max)
    return json.dumps({"numRecords": md.num_rows, "minValues": {k: _stat_value(v) for k, v in mins.items()},
                       "maxValues": {k: _stat_value(v) for k, v in maxs.items()}, "nullCount": nulls})


def _stat_value(v: Any) -> Any:
    if isinstance(v, dt.datetime):  # the lake's timestamps are whole milliseconds (ms epoch input)
        return v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}"
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


def _partition(rel: str) -> str:
    """`events/type=click/...` -> `click`."""
    return rel.split("/")[1].split("=", 1)[1]


def _table_path(rel: str) -> str:
    return rel[len(EVENTS_DIR) + 1:]


def files_of(segments: Iterable[dict[str, Any]]) -> set[str]:
    """Every file `segments` name, event and quarantine (paths relative to the lake)."""
    return {rel for seg in segments
            for rel in [*seg["files"].values(), *([seg["quarantine_file"]] if seg.get("quarantine_file") else [])]}


def mark_pending(root: Path, files: Iterable[str]) -> None:
    """Name the files about to be promoted, so that a run killed before its commit has them swept."""
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    write_atomic(root / PENDING, json.dumps(sorted(files)))


def sweep_pending(root: Path, live: set[str]) -> None:
    """Remove the files a killed run promoted but never committed (those not live now)."""
    try:
        files = json.loads((root / PENDING).read_text())
    except FileNotFoundError:
        return
    for rel in files:
        if rel not in live:
            (root / rel).unlink(missing_ok=True)
    (root / PENDING).unlink(missing_ok=True)


def commit(root: Path, base: dict[str, Any] | None, new_state: dict[str, Any], *, added: Iterable[str],
           removed: Iterable[str], meta: dict[str, Any], data_change: bool = True) -> dict[str, Any]:
    """Commit the lake files `added` and `removed` (paths relative to the lake) as one Delta version
    on top of `base` (the state read before; None creates the table), with `meta` in the commit's
    metadata; returns `new_state` as committed (its version, checked against the log's files).
    `meta["data_aliases"]` names versions of the old format holding the same data (an upgrade).

    Another writer's commit in between is rebased over by `deltalake` when the two do not conflict;
    the state is then derived from the log, so nothing either wrote is lost. A conflict raises."""
    from deltalake.transaction import AddAction, CommitProperties, RemoveAction, create_table_with_add_actions

    added, removed = sorted(added), sorted(removed)
    now_ms = int(time.time() * 1000)
    adds = [AddAction(_table_path(rel), (root / rel).stat().st_size, {"type": _partition(rel)},
                      (root / rel).stat().st_mtime_ns // 1_000_000, data_change, file_stats(root / rel))
            for rel in added]
    by_path = {rel: rec for seg in (base or {}).get("segments", []) for rel, rec in _file_records(seg)}
    removes = [RemoveAction(_table_path(rel), data_change, now_ms, (by_path.get(rel) or {}).get("size"),
                            {"type": _partition(rel)}) for rel in removed]
    token = uuid.uuid4().hex
    props = CommitProperties(custom_metadata={META_KEY: {**meta, "commit": token, "data_change": data_change}},
                             max_commit_retries=5)
    crash_point("commit:before-delta")
    if base is None:
        from deltalake import Schema
        create_table_with_add_actions(str(root / EVENTS_DIR), Schema.from_arrow(_schema(root, added)), adds, mode="error",
                                      partition_by=["type"], name="events",
                                      description="ad events, remediated (analytics prepare)",
                                      commit_properties=props)
    else:
        table = _table(root, base["version"])
        table.create_write_transaction([*adds, *removes], mode="append", schema=table.schema(),
                                       partition_by=["type"], commit_properties=props)
    crash_point("commit:after-delta")
    table = _table(root)
    version = _version_of(table, token)
    if version != (-1 if base is None else base["version"]) + 1:
        return derive_state(root, version)  # rebased over another writer's commit: the log decides
    state = {**new_state, "version": version,
             "data_version": version if data_change else (base or {}).get("data_version", version),
             "data_aliases": meta.get("data_aliases", []) if data_change else (base or {}).get("data_aliases", [])}
    live = {rel for seg in state["segments"] for rel in seg["files"].values()}
    logged = {f"{EVENTS_DIR}/{p}" for p in _add_actions(table).column("path").to_pylist()}
    if live != logged:
        return derive_state(root, version)
    write_state(root, state)
    return state


def write_state(root: Path, state: dict[str, Any]) -> None:
    """Write the state file of `state["version"]` (whole or not at all)."""
    (root / STATE_DIR).mkdir(exist_ok=True)
    write_atomic(state_path(root, state["version"]), json.dumps(state, indent=1))


def _file_records(seg: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    records = seg.get("checksums") or {}
    return [(rel, records.get(rel)) for rel in seg["files"].values()]


def _schema(root: Path, files: list[str]) -> pa.Schema:
    base = pq.read_schema(root / files[0]) if files else EVENTS_SCHEMA
    return base.append(pa.field("type", pa.string()))


def _add_actions(table: "DeltaTable") -> pa.Table:
    """The live files of `table`'s version with their stats (`deltalake` hands an arro3 table over)."""
    return pa.table(table.get_add_actions(flatten=True))


def _version_of(table: "DeltaTable", token: str) -> int:
    for entry in table.history(20):
        if (entry.get(META_KEY) or {}).get("commit") == token:
            return int(entry["version"])
    raise RuntimeError(f"the commit {token} is not in the table's last 20 versions")


def commit_metadata(table: "DeltaTable") -> dict[int, dict[str, Any]]:
    """Per version still in the log: its Delta operation and this package's part of its metadata."""
    return {int(h["version"]): {"delta_operation": h.get("operation"), **(h.get(META_KEY) or {})}
            for h in table.history()}


def totals(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """The lake's row counts (read, in the lake, quarantined, by type and by reason) summed over `segments`."""
    out: dict[str, Any] = {"rows_read": 0, "rows_lake": 0, "rows_quarantined": 0, "lake_by_type": {},
                           "quarantine_by_reason": {}, "quarantine_by_type": {}}
    for seg in segments:
        for key in ("rows_read", "rows_lake", "rows_quarantined"):
            out[key] += seg[key]
        for key in ("lake_by_type", "quarantine_by_reason", "quarantine_by_type"):
            for k, v in seg[key].items():
                out[key][k] = out[key].get(k, 0) + v
    return out


# ---- deriving a version's state from the log ---------------------------------------------------
def derive_state(root: Path, version: int) -> dict[str, Any]:
    """The state of `version` from the Delta log (and written to its state file): the live files are the
    log's; each segment's details come from the newest older state file and the metadata of the commits
    after it, and a file no commit of this package describes (another tool's) is a segment of its own."""
    table = _table(root, version)
    live = {f"{EVENTS_DIR}/{a['path']}": a for a in _add_actions(table).to_pylist()}
    older = [v for v in available_versions(root) if v < version]
    base = json.loads(state_path(root, older[-1]).read_text()) if older else {}
    after = base.get("version", -1)
    meta = {v: m for v, m in commit_metadata(table).items() if after < v <= version}
    known = {seg["segment"]: seg for seg in base.get("segments", [])}
    history, rejected, layout = list(base.get("history", [])), base.get("rejected", []), base.get("layout", {})
    dropped: set[str] = set()
    for v in sorted(meta):
        m = meta[v]
        known.update((seg["segment"], seg) for seg in m.get("segments", []))
        dropped |= set(m.get("parts_dropped", []))
        if "history" in m:
            history.append(m["history"])
            rejected, layout = m.get("rejected", rejected), m.get("layout", layout)
    segments, claimed = [], set()
    for seg in known.values():
        files = {t: rel for t, rel in seg["files"].items() if rel in live}
        if not files and (seg["files"] or (seg.get("source") or {}).get("file") in dropped):
            continue  # all its files removed; a part with no rows stays until it is dropped
        keep = {**seg, "files": files, "days": {t: d for t, d in seg["days"].items() if t in files},
                "lake_by_type": {t: n for t, n in seg["lake_by_type"].items() if t in files}}
        segments.append(keep)
        claimed.update(files.values())
    segments += [_foreign_segment(rel, action) for rel, action in sorted(live.items()) if rel not in claimed]
    # a commit of another tool may have changed the data; vacuum's and those marked so have not
    changed = [v for v in range(after + 1, version + 1) if v not in meta or (
        meta[v].get("data_change", True) and not str(meta[v].get("delta_operation")).startswith("VACUUM"))]
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    state = {
        "schema_version": 2, "version": version,
        "data_version": max(changed) if changed else base.get("data_version", version),
        "data_aliases": meta.get(max(changed), {}).get("data_aliases", []) if changed
        else base.get("data_aliases", []),
        "created_at": base.get("created_at") or now, "updated_at": now, "layout": layout,
        "segments": sorted(segments, key=lambda s: ((s.get("source") or {}).get("file") or "", s["segment"])),
        "totals": {}, "history": history[-50:], "rejected": rejected,
    }
    state["totals"] = totals(state["segments"])
    check_available(root, state)  # an old version whose files vacuum removed is not brought back
    write_state(root, state)
    return state


def _foreign_segment(rel: str, action: dict[str, Any]) -> dict[str, Any]:
    """A live file written by another tool: its days from its stats (the whole year when it has none)."""
    t = _partition(rel)
    lo, hi = action.get("min.day"), action.get("max.day")
    if isinstance(lo, dt.date) and isinstance(hi, dt.date):
        days = [(lo + dt.timedelta(d)).isoformat() for d in range((hi - lo).days + 1)]
    else:
        days = None
    n = int(action.get("num_records") or 0)
    seg = {"segment": "ext-" + uuid.uuid5(uuid.NAMESPACE_URL, rel).hex[:12], "files": {t: rel},
           "days": {t: days} if days is not None else {}, "lake_by_type": {t: n}, "quarantine_file": None,
           "rows_read": n, "rows_lake": n, "rows_quarantined": 0, "quarantine_by_reason": {},
           "quarantine_by_type": {}, "source": None, "foreign": True}
    return seg


# ---- readers and retention ---------------------------------------------------------------------
def take_lease(root: Path, version: int) -> Path | None:
    """Note that this process reads `version`, so that `vacuum` keeps its files; None if the lake is read-only."""
    path = root / READERS_DIR / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    try:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"pid": os.getpid(), "version": version}))
    except OSError:
        return None
    return path


def leased_versions(root: Path) -> set[int]:
    """The versions read by live processes (a lease left by a dead process is removed)."""
    out = set()
    for path in (root / READERS_DIR).glob("*.json"):
        try:
            lease = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if psutil.pid_exists(lease["pid"]):
            out.add(int(lease["version"]))
        else:
            path.unlink(missing_ok=True)
    return out


def parse_retention(text: str) -> dt.timedelta:
    """`7d`, `12h`, `30m`, `0` -> a duration; ValueError naming the forms allowed."""
    m = re.fullmatch(r"\s*(\d+)\s*([dhm]?)\s*", text)
    if not m:
        raise ValueError(f"retention {text!r} is not a duration: use e.g. 7d, 12h, 30m or 0")
    n, unit = int(m.group(1)), m.group(2) or "d"
    return dt.timedelta(**{{"d": "days", "h": "hours", "m": "minutes"}[unit]: n})


def vacuum(root: Path, retain: dt.timedelta, keep_versions: Iterable[int] = (), *,
           dry_run: bool = False) -> dict[str, Any]:
    """Remove the files (events and quarantine) that no kept version references. Kept: the current
    version, every version committed within `retain`, those in `keep_versions` (views) and those
    leased by running readers. The state files of the other versions go too: time travel to them
    then fails in one line. Returns what was (or, with `dry_run`, would be) removed."""
    latest = latest_version(root)
    if latest is None:
        raise VersionUnavailable(f"{root} has no table; nothing to vacuum")
    table = _table(root)
    horizon = (dt.datetime.now(dt.timezone.utc) - retain).timestamp() * 1000
    recent = {int(h["version"]) for h in table.history() if h.get("timestamp", 0) >= horizon}
    keep = {latest} | recent | set(keep_versions) | leased_versions(root)
    keep = {v for v in keep if 0 <= v <= latest}
    states = {v: read_state(root, v) for v in available_versions(root) if v in keep}
    referenced = {rel for s in states.values() for rel in files_of(s["segments"])}
    files = table.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False,
                         keep_versions=sorted(keep))
    events = sorted(f"{EVENTS_DIR}/{f}" for f in files if f"{EVENTS_DIR}/{f}" not in referenced)
    quarantine = sorted(p.relative_to(root).as_posix() for p in (root / "quarantine").glob("*.parquet")
                        if p.relative_to(root).as_posix() not in referenced)
    dropped = [v for v in available_versions(root) if v not in keep]
    size = sum((root / rel).stat().st_size for rel in events + quarantine if (root / rel).exists())
    if not dry_run:
        if events:
            table.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False,
                         keep_versions=sorted(keep))
        for rel in quarantine:
            (root / rel).unlink(missing_ok=True)
        for v in dropped:
            state_path(root, v).unlink(missing_ok=True)
        newest = latest_version(root)
        if newest is not None and newest != latest:  # vacuum's own commits change no data
            current = states[latest]
            for v in range(latest + 1, newest + 1):
                write_state(root, {**current, "version": v})
    return {"kept_versions": sorted(keep), "removed_versions": dropped, "removed_files": events + quarantine,
            "bytes": size, "dry_run": dry_run}
