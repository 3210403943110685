"""The lake: raw CSV parts remediated into Parquet, with a quarantine, committed to a Delta table.

Owns `prepare` (read every `*.csv` with an explicit schema after the raw-file pre-pass of
`rawfile`, quarantine untrustworthy rows with a reason, write typed Parquet partitioned by
`type`, sorted by `ts`, ZSTD) and DuckDB's ingester. A run is one Delta commit (`table.commit`):
readers see exactly the files of the version they open, so files promoted by a run killed
before its commit stay invisible and are swept by the next run (each step between two durable
states is a named crash point of `core.faults`). Files a commit removes stay on disk for time
travel until `analytics vacuum`. Each CSV part becomes one *segment* (one file per type plus its
quarantine), so a new part is appended without rewriting anything else; a part that cannot be
read is listed as rejected and never stops the others. A lake of the old format (`_manifest.json`)
is upgraded in place by its next run. Must not know about queries or views.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import shutil
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any, Protocol, Sequence

import duckdb
from filelock import FileLock
from tqdm.auto import tqdm

from analytics.core import db
from analytics.core.faults import crash_point
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.core.sql import sql_string
from analytics.lake.integrity import cheap_damage, segment_record
from analytics.lake.rawfile import BOM, RawScan, scan_part
from analytics.lake.rules import (
    DUCKDB_FUNCTIONS,
    LAKE_PROJECTION,
    MAX_LINE_BYTES,
    NOT_UTF8,
    WRONG_FIELD_COUNT,
    raw_csv_sql,
    reason_case_sql,
)
from analytics.lake.state import (
    DEFAULT_ROW_GROUP_SIZE,
    LEGACY_MANIFEST,
    QUARANTINE_DIR,
    SCHEMA_VERSION,
    STAGING_DIR,
    Lake,
    RejectedPart,
    SegmentEntry,
    _segment_id,
    fingerprint,
)
from analytics.lake.table import (
    EVENTS_DIR,
    WRITE_LOCK,
    commit,
    files_of,
    latest_version,
    mark_pending,
    read_state,
    sweep_pending,
    totals,
)
from analytics.query.schema import EVENT_TYPES, RAW_HEADER

log = logging.getLogger(__name__)


class PrepareError(RuntimeError):
    """Input that prepare cannot ingest, or a step that failed; the message names the directory, file or columns."""


class Ingester(Protocol):
    """What executes the remediation of raw parts (`analytics.engines` has DuckDB's and Spark's)."""

    def ingest(self, parts: Sequence[tuple[Path, str]], stage: Path, *, row_group_size: int,
               progress: bool) -> list[SegmentEntry | RejectedPart]:
        """Remediate each `(csv_path, segment_id)` into files under `stage` (paths as in the lake);
        returns, per part and in order, its entry (without `source`) or why it could not be read."""


def _no_space(exc: BaseException) -> bool:
    return "No space left on device" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_header(path: Path) -> None:
    """The first line of a (non-empty) part must be RAW_HEADER, a UTF-8 byte order mark allowed.
    Raises OSError when the part cannot be read, PrepareError when the header is another."""
    with path.open("rb") as fh:
        first = fh.readline(MAX_LINE_BYTES + 1)
    if first.startswith(BOM):
        first = first[len(BOM):]
    if not first:
        return  # an empty part: counted with 0 rows
    try:
        text = first.decode("utf-8").strip("\r\n")
    except UnicodeDecodeError:
        raise PrepareError(f"{path}: header line is not UTF-8 text") from None
    cols = [c.strip() for c in text.split(",")] if text else []
    if tuple(cols) != RAW_HEADER:
        missing = [c for c in RAW_HEADER if c not in cols]
        extra = [c for c in cols if c not in RAW_HEADER]
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if extra:
            detail.append(f"unexpected {', '.join(extra)}"[:200])
        if not detail:
            detail.append("columns out of order")
        raise PrepareError(f"{path}: header is not the expected one ({'; '.join(detail)}); "
                           f"expected: {','.join(RAW_HEADER)}")


def empty_entry(seg_id: str) -> SegmentEntry:
    """The entry of a part with no rows (a 0-byte file, or a header alone)."""
    return SegmentEntry.counted(seg_id, files={}, days={}, lake_by_type={}, quarantine_file=None,
                                quarantine_by_reason={}, quarantine_by_type={})


def _read(con: duckdb.DuckDBPyConnection, src: Path, stage: Path) -> RejectedPart | RawScan:
    """The part's rows into `seg_rows` (with their reason) and the reader's rejects into `seg_rejects`,
    after the raw-file pre-pass; a part whose content the reader gives up on is a RejectedPart."""
    for table in ("seg_rows", "seg_rejects", "seg_reject_scans"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    try:
        scan = scan_part(src, stage / "_raw" / src.name)
        con.execute(f"""
            CREATE TEMP TABLE seg_rows AS
            SELECT *, {reason_case_sql(DUCKDB_FUNCTIONS)} AS reason
            FROM {raw_csv_sql(str(scan.read_path), rejects=("seg_rejects", "seg_reject_scans"))}
        """)
    except (duckdb.InvalidInputException, duckdb.ConversionException, OSError) as exc:
        # the part's bytes defeat the reader; a full disk, memory or an I/O error is the run's failure
        if _no_space(exc):
            raise
        return RejectedPart(src.name, f"cannot read: {_first_line(exc)}")
    return scan


def _ingest(con: duckdb.DuckDBPyConnection, src: Path, seg_id: str, stage: Path,
            row_group_size: int) -> SegmentEntry | RejectedPart:
    """Remediate one CSV part into staged Parquet files; returns its manifest entry (paths relative)."""
    scan = _read(con, src, stage)
    if isinstance(scan, RejectedPart):
        return scan
    types = ", ".join(sql_string(t) for t in EVENT_TYPES)
    files: dict[str, str] = {}
    for (t,) in con.execute("SELECT DISTINCT type FROM seg_rows WHERE reason IS NULL ORDER BY 1").fetchall():
        rel = f"{EVENTS_DIR}/type={t}/{seg_id}.parquet"
        out = stage / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"""
            COPY (SELECT {LAKE_PROJECTION} FROM seg_rows WHERE reason IS NULL AND type = ? ORDER BY ts)
            TO {sql_string(str(out))} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {int(row_group_size)})
        """, [t])
        files[t] = rel
    lake_by_type: dict[str, int] = {}
    days: dict[str, list[str]] = {}
    for t, n, d in con.execute("""
            SELECT type, count(*), list(DISTINCT CAST(CAST(epoch_ms(CAST(ts AS BIGINT)) AS DATE) AS VARCHAR) ORDER BY 1)
            FROM seg_rows WHERE reason IS NULL GROUP BY type ORDER BY type""").fetchall():
        lake_by_type[t] = n
        days[t] = sorted(d)

    # a rejected line as it is in the file: with CRLF endings DuckDB's csv_line keeps the previous "\n";
    # DuckDB's own encoding check is a second net behind the pre-pass's not_utf8
    nulls = ", ".join("NULL" for _ in RAW_HEADER)
    quarantined_sql = f"""
        SELECT {sql_string(src.name)} AS source_file, NULL::BIGINT AS line, reason,
               {', '.join(RAW_HEADER)}, NULL::VARCHAR AS raw_line
        FROM seg_rows WHERE reason IS NOT NULL
        UNION ALL
        SELECT {sql_string(src.name)}, line::BIGINT,
               CASE WHEN bool_or(error_type = 'INVALID ENCODING') THEN '{NOT_UTF8}' ELSE '{WRONG_FIELD_COUNT}' END,
               {nulls}, any_value(trim(csv_line, chr(13) || chr(10)))
        FROM seg_rejects GROUP BY line
    """
    if scan.diverted is not None:
        quarantined_sql += f"""
        UNION ALL
        SELECT {sql_string(src.name)}, line, reason, {nulls}, raw_line FROM read_parquet({sql_string(str(scan.diverted))})
        """
    by_reason = dict(con.execute(f"SELECT reason, count(*) FROM ({quarantined_sql}) GROUP BY 1").fetchall())
    by_type = dict(con.execute(f"""
        SELECT CASE WHEN type IN ({types}) THEN type ELSE '(invalid)' END, count(*)
        FROM ({quarantined_sql}) GROUP BY 1""").fetchall())
    quarantine_file = None
    if by_reason:
        quarantine_file = f"{QUARANTINE_DIR}/{seg_id}.parquet"
        (stage / quarantine_file).parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY ({quarantined_sql} ORDER BY line NULLS FIRST, reason) "
                    f"TO {sql_string(str(stage / quarantine_file))} (FORMAT parquet, COMPRESSION zstd)")
    con.execute("DROP TABLE seg_rows")
    if scan.diverted is not None:
        shutil.rmtree(scan.diverted.parent, ignore_errors=True)
    return SegmentEntry.counted(seg_id, files=files, days=days, lake_by_type=lake_by_type,
                                quarantine_file=quarantine_file, quarantine_by_reason=by_reason,
                                quarantine_by_type=by_type)


def ingest_parts(parts: Sequence[tuple[Path, str]], stage: Path, *, row_group_size: int, progress: bool,
                 memory_limit: str = DEFAULT_MEMORY_LIMIT) -> list[SegmentEntry | RejectedPart]:
    """`Ingester.ingest` on this machine with DuckDB: one connection, parts one after another.

    A part the reader cannot read is returned as a RejectedPart; any other failure (a full disk
    while writing, ...) is a PrepareError naming the part."""
    con = db.connect(memory_limit=memory_limit)
    try:
        con.execute("SET temp_directory = ?", [str(stage / "spill")])
        con.execute("SET preserve_insertion_order = false")
        con.execute(f"SET enable_progress_bar = {'true' if progress else 'false'}")
        entries: list[SegmentEntry | RejectedPart] = []
        bar = tqdm(parts, desc="prepare", unit="part", disable=not progress)
        for src, seg_id in bar:
            bar.set_postfix_str(src.name)
            try:
                entries.append(_ingest(con, src, seg_id, stage, row_group_size))
            except (duckdb.Error, OSError) as exc:
                raise PrepareError(f"{src}: {_first_line(exc)}") from None
        return entries
    finally:
        con.close()


def _entry_files(entry: SegmentEntry) -> list[str]:
    return list(entry.files.values()) + ([entry.quarantine_file] if entry.quarantine_file else [])


def _current(lake: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The state the run starts from: (the table's newest state or None, the segments to start from),
    the latter from the old format's manifest when the lake has not been upgraded yet."""
    latest = latest_version(lake)
    if latest is not None:
        state = read_state(lake, latest)
        return state, state
    if (lake / LEGACY_MANIFEST).is_file():
        return None, json.loads((lake / LEGACY_MANIFEST).read_text())
    return None, {"segments": [], "totals": {}, "rejected": [], "history": [], "lake_version": None}


def _warn_rejected(rejected: list[RejectedPart]) -> None:
    for r in rejected:
        log.warning("analytics prepare: %s rejected (%s); the other parts are in the lake", r.file, r.reason)


def _source(src: Path) -> dict[str, Any]:
    """The part's identity as the manifest records it (OSError when it cannot be read)."""
    st = src.stat()
    return {"file": src.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "fingerprint": fingerprint(src)}


def prepare(raw_dir: str | os.PathLike, lake_dir: str | os.PathLike, *, progress: bool = True,
            memory_limit: str = DEFAULT_MEMORY_LIMIT, row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
            engine: Ingester | None = None, operation: str = "prepare") -> dict[str, Any]:
    """Bring the lake in line with the CSV parts in `raw_dir`; returns a summary of what changed.

    New or changed parts are ingested, parts gone from `raw_dir` are dropped, unchanged parts
    are untouched, all in one Delta commit (`operation` names it in the commit's metadata); with
    nothing to do it is a no-op (`summary["changed"] is False`). A part that cannot be read is
    listed in the state's `rejected` (and the summary's) with the reason, and the others are
    still ingested; an empty part counts with 0 rows. A header that is not RAW_HEADER stops
    everything before anything is written (the part is not this data set's).
    """
    raw = Path(raw_dir)
    lake = Path(lake_dir)
    if not raw.is_dir():
        raise PrepareError(f"raw directory {str(raw)!r} does not exist or is not a directory")
    sources = sorted(raw.glob("*.csv"))
    if not sources:
        raise PrepareError(f"raw directory {str(raw)!r} holds no *.csv files")
    unreadable: dict[str, RejectedPart] = {}
    for src in sources:
        try:
            check_header(src)
        except OSError as exc:
            unreadable[src.name] = RejectedPart(src.name, f"cannot read: {exc.strerror or _first_line(exc)}")

    lake.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with FileLock(str(lake / WRITE_LOCK)):
        base, current = _current(lake)
        shutil.rmtree(lake / STAGING_DIR, ignore_errors=True)
        sweep_pending(lake, files_of(current["segments"]))
        known = {seg["source"]["file"]: seg for seg in current["segments"] if seg.get("source")}
        # segments whose files are missing, truncated or noted damaged (`analytics verify`, a query):
        # re-ingested from their raw part like a changed part; the other segments are not read
        bad = cheap_damage(Lake(lake, current))
        damaged = {seg["segment"] for seg in current["segments"]
                   if any(rel in bad for rel in [*seg["files"].values(), seg.get("quarantine_file")])}
        keep: list[dict[str, Any]] = []
        todo: list[tuple[Path, dict[str, Any]]] = []
        for src in sources:
            if src.name in unreadable:
                continue
            old = known.get(src.name)
            if old and old["segment"] in damaged:
                log.warning("analytics prepare: segment %s of %s is damaged; re-ingesting the part",
                            old["segment"], src.name)
                old = None
            try:
                st = src.stat()
                if old and old["source"]["size"] == st.st_size and old["source"]["mtime_ns"] == st.st_mtime_ns:
                    keep.append(old)
                    continue
                source = _source(src)
            except OSError as exc:
                unreadable[src.name] = RejectedPart(src.name, f"cannot read: {exc.strerror or _first_line(exc)}")
                continue
            if old and old["source"]["fingerprint"] == source["fingerprint"]:
                old["source"]["mtime_ns"] = source["mtime_ns"]
                keep.append(old)
                continue
            todo.append((src, source))
        rejected = sorted(unreadable.values(), key=lambda r: r.file)
        version = base["version"] if base else None
        unchanged = {"changed": False, "lake_version": version, "added": [], "dropped": [],
                     "rejected": current.get("rejected") or [], "totals": current["totals"]}

        def same_as_before(added: list[SegmentEntry]) -> bool:
            return (base is not None and not added and set(known) == {seg["source"]["file"] for seg in keep}
                    and [r.to_json() for r in rejected] == unchanged["rejected"])

        if not todo and same_as_before([]):
            _warn_rejected(rejected)
            return {**unchanged, "seconds": time.perf_counter() - started}

        stage = lake / STAGING_DIR / uuid.uuid4().hex
        stage.mkdir(parents=True)
        try:
            added = _stage(todo, stage, rejected, engine, row_group_size=row_group_size, progress=progress,
                           memory_limit=memory_limit)
            if same_as_before(added):  # only parts that were rejected before, and are again
                shutil.rmtree(stage, ignore_errors=True)
                _warn_rejected(rejected)
                return {**unchanged, "seconds": time.perf_counter() - started}
            moves = _name_files(added, stage)
            crash_point("prepare:after-stage")
            # promote: move staged files into place (still invisible: no version lists them), then commit
            mark_pending(lake, moves)
            for n, (rel, staged) in enumerate(moves.items()):
                (lake / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, lake / rel)
                if n == 0:
                    crash_point("prepare:mid-rename")
            crash_point("prepare:after-rename-before-commit")
            segments = sorted(keep + [e.to_json() for e in added], key=lambda s: s["source"]["file"])
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            dropped = sorted(set(known) - {seg["source"]["file"] for seg in segments})
            live = {seg["segment"] for seg in segments}
            leaving = [seg for seg in current["segments"] if seg["segment"] not in live or seg["segment"] in damaged]
            # the days each segment leaving the lake covered: what a view refresh must recompute
            gone = {seg["segment"]: seg["days"] for seg in leaving if seg["segment"] not in live}
            run = {"at": now, "operation": operation, "added": [e.source["file"] for e in added],
                   "dropped": dropped, "dropped_days": gone}
            layout = {"partitioning": ["type"], "sort": ["ts"], "compression": "zstd",
                      "row_group_size": row_group_size, "segment": "one file per source part and type"}
            new_state = {
                "schema_version": SCHEMA_VERSION, "created_at": current.get("created_at") or now, "updated_at": now,
                "layout": layout, "segments": segments, "totals": totals(segments),
                "history": (current.get("history") or [])[-49:] + [run],
                "rejected": [r.to_json() for r in rejected],
            }
            upgrade = base is None and current.get("lake_version") is not None
            # damaged segments re-ingested from unchanged parts, nothing else: the same rows in new
            # files (Delta's dataChange=false), so what was built from the lake stays valid
            repair = (base is not None and {e.segment for e in added} <= damaged
                      and live == {seg["segment"] for seg in current["segments"]})
            # the commit's metadata holds what a reader needs to rebuild the state from the log alone
            described = segments if base is None else [e.to_json() for e in added]
            meta = {"operation": "upgrade" if upgrade else "repair" if repair else operation, "parts_added": run["added"],
                    "parts_dropped": dropped, "rejected": new_state["rejected"], "accounting": totals(described),
                    "segments": described, "layout": layout, "history": run}
            added_files = [rel for seg in described for rel in seg["files"].values()]
            removed_files = [rel for seg in leaving for rel in seg["files"].values()] if base else []
            if upgrade and not added and not dropped:
                # the same data as the old format's version: what was built from it stays valid
                meta["data_aliases"] = [current["lake_version"]]
            state = commit(lake, base, new_state, added=added_files, removed=removed_files, meta=meta,
                           data_change=not repair)
        except BaseException as exc:  # nothing half-staged stays behind, whatever stopped the run
            shutil.rmtree(stage, ignore_errors=True)
            if isinstance(exc, PrepareError) or not isinstance(exc, Exception):
                raise
            names = ", ".join(src.name for src, _ in todo) or "the lake's upgrade"
            raise PrepareError(f"prepare of {names} failed: {_first_line(exc)}") from None
        crash_point("prepare:after-commit")
        (lake / LEGACY_MANIFEST).unlink(missing_ok=True)
        sweep_pending(lake, files_of(state["segments"]))
        shutil.rmtree(lake / STAGING_DIR, ignore_errors=True)
        _warn_rejected(rejected)
        changed_days: dict[str, set[str]] = {}
        for seg in [e.to_json() for e in added] + leaving:
            for t, days in seg["days"].items():
                changed_days.setdefault(t, set()).update(days)
        return {"changed": True, "lake_version": state["version"],
                "added": [e.source["file"] for e in added], "dropped": dropped,
                "rejected": state["rejected"],
                "changed_days": {t: sorted(d) for t, d in changed_days.items()},
                "seconds": time.perf_counter() - started, "totals": state["totals"]}


def _name_files(added: list[SegmentEntry], stage: Path) -> dict[str, Path]:
    """Give each staged file its name in the lake, unique to this run (a file removed by a commit stays
    for time travel until vacuum, so a part ingested again never writes over it), and record its checksum;
    returns lake path -> staged file."""
    run = uuid.uuid4().hex[:8]
    moves: dict[str, Path] = {}

    def rename(rel: str) -> str:
        new = rel.removesuffix(".parquet") + f".{run}.parquet"
        moves[new] = stage / rel
        return new

    for entry in added:
        entry.files = {t: rename(rel) for t, rel in entry.files.items()}
        if entry.quarantine_file:
            entry.quarantine_file = rename(entry.quarantine_file)
        entry.checksums = {rel: segment_record(moves[rel]) for rel in _entry_files(entry)}
    return moves


def _stage(todo: list[tuple[Path, dict[str, Any]]], stage: Path, rejected: list[RejectedPart],
           engine: Ingester | None, *, row_group_size: int, progress: bool, memory_limit: str) -> list[SegmentEntry]:
    """Ingest the parts of `todo` into `stage`; returns their entries (with `source`), in order.
    Empty parts get an empty entry without an engine; parts the engine cannot read join `rejected`."""
    added: list[SegmentEntry] = []
    work = []
    for src, source in todo:
        seg_id = _segment_id(src.name, source["fingerprint"])
        if source["size"] == 0:
            log.warning("analytics prepare: %s is empty (0 bytes); counted with 0 rows", src.name)
            entry = empty_entry(seg_id)
            entry.source = source
            added.append(entry)
        else:
            work.append((src, seg_id, source))
    if work:
        ingest = engine.ingest if engine is not None else partial(ingest_parts, memory_limit=memory_limit)
        results = ingest([(src, seg_id) for src, seg_id, _ in work], stage,
                         row_group_size=row_group_size, progress=progress)
        for result, (_, _, source) in zip(results, work):
            if isinstance(result, RejectedPart):
                rejected.append(result)
            else:
                result.source = source
                added.append(result)
    rejected.sort(key=lambda r: r.file)
    return sorted(added, key=lambda e: e.source["file"])
