"""The lake: raw CSV parts remediated into Parquet, with a quarantine and a manifest that commits.

Owns `prepare` (read every `*.csv` with an explicit schema, quarantine untrustworthy rows with
a reason, write typed Parquet partitioned by `type`, sorted by `ts`, ZSTD) and the `Lake`
reader. The manifest is the commit point: readers see exactly the files it lists, so files
promoted by a run that was killed before writing it stay invisible and are swept by the next
run. Each CSV part becomes one *segment* (one file per type plus its quarantine), so a new
part is appended without rewriting anything else. Must not know about queries or views.
"""
from __future__ import annotations

import datetime as dt
import json
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
from analytics.core.files import write_atomic
from analytics.core.memory import DEFAULT_MEMORY_LIMIT
from analytics.core.sql import sql_string
from analytics.lake.manifest import (
    DEFAULT_ROW_GROUP_SIZE,
    EVENTS_DIR,
    MANIFEST,
    QUARANTINE_DIR,
    SCHEMA_VERSION,
    STAGING_DIR,
    _empty_manifest,
    _lake_version,
    _segment_id,
    _totals,
    fingerprint,
)
from analytics.lake.rules import DUCKDB_FUNCTIONS, LAKE_PROJECTION, WRONG_FIELD_COUNT, reason_case_sql
from analytics.query.schema import EVENT_TYPES, RAW_HEADER


class PrepareError(RuntimeError):
    """Input that prepare cannot ingest; the message names the directory, file or columns."""


class Ingester(Protocol):
    """What executes the remediation of raw parts (`analytics.engines` has DuckDB's and Spark's)."""

    def ingest(self, parts: Sequence[tuple[Path, str]], stage: Path, *, row_group_size: int,
               progress: bool) -> list[dict[str, Any]]:
        """Remediate each `(csv_path, segment_id)` into files under `stage` (paths as in the lake);
        returns one manifest entry per part, in order, without its `source`."""


def check_header(path: Path) -> None:
    try:
        with path.open("r", encoding="utf-8", newline="") as fh:
            first = fh.readline().strip("\r\n")
    except OSError as exc:
        raise PrepareError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PrepareError(f"{path}: header is not UTF-8 text") from None
    cols = [c.strip() for c in first.split(",")] if first else []
    if tuple(cols) != RAW_HEADER:
        missing = [c for c in RAW_HEADER if c not in cols]
        extra = [c for c in cols if c not in RAW_HEADER]
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if extra:
            detail.append(f"unexpected {', '.join(extra)}")
        if not detail:
            detail.append("columns out of order")
        raise PrepareError(f"{path}: header is not the expected one ({'; '.join(detail)}); "
                           f"expected: {','.join(RAW_HEADER)}")




def _ingest(con: duckdb.DuckDBPyConnection, src: Path, seg_id: str, stage: Path, row_group_size: int) -> dict[str, Any]:
    """Remediate one CSV part into staged Parquet files; returns its manifest entry (paths relative)."""
    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in RAW_HEADER) + "}"
    types = ", ".join(sql_string(t) for t in EVENT_TYPES)
    reason = reason_case_sql(DUCKDB_FUNCTIONS)
    con.execute("DROP TABLE IF EXISTS seg_rows")
    con.execute("DROP TABLE IF EXISTS seg_rejects")
    con.execute("DROP TABLE IF EXISTS seg_reject_scans")
    try:
        con.execute(f"""
            CREATE TEMP TABLE seg_rows AS
            SELECT *, {reason} AS reason
            FROM read_csv({sql_string(str(src))}, header = true, auto_detect = false, columns = {columns},
                          delim = ',', quote = '"', escape = '"', store_rejects = true,
                          rejects_table = 'seg_rejects', rejects_scan = 'seg_reject_scans')
        """)
    except duckdb.Error as exc:
        raise PrepareError(f"cannot read {src}: {str(exc).splitlines()[0]}") from None

    entry: dict[str, Any] = {"segment": seg_id, "files": {}, "days": {}, "lake_by_type": {}}
    for (t,) in con.execute("SELECT DISTINCT type FROM seg_rows WHERE reason IS NULL ORDER BY 1").fetchall():
        rel = f"{EVENTS_DIR}/type={t}/{seg_id}.parquet"
        out = stage / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"""
            COPY (SELECT {LAKE_PROJECTION} FROM seg_rows WHERE reason IS NULL AND type = ? ORDER BY ts)
            TO {sql_string(str(out))} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {int(row_group_size)})
        """, [t])
        entry["files"][t] = rel
    for t, n, days in con.execute("""
            SELECT type, count(*), list(DISTINCT CAST(CAST(epoch_ms(CAST(ts AS BIGINT)) AS DATE) AS VARCHAR) ORDER BY 1)
            FROM seg_rows WHERE reason IS NULL GROUP BY type ORDER BY type""").fetchall():
        entry["lake_by_type"][t] = n
        entry["days"][t] = sorted(days)

    # a rejected line as it is in the file: with CRLF endings DuckDB's csv_line keeps the previous "\n"
    quarantined_sql = f"""
        SELECT {sql_string(src.name)} AS source_file, NULL::BIGINT AS line, reason,
               {', '.join(RAW_HEADER)}, NULL::VARCHAR AS raw_line
        FROM seg_rows WHERE reason IS NOT NULL
        UNION ALL
        SELECT {sql_string(src.name)}, line::BIGINT, '{WRONG_FIELD_COUNT}', {', '.join('NULL' for _ in RAW_HEADER)},
               any_value(trim(csv_line, chr(13) || chr(10)))
        FROM seg_rejects GROUP BY line
    """
    by_reason = dict(con.execute(f"SELECT reason, count(*) FROM ({quarantined_sql}) GROUP BY 1").fetchall())
    by_type = dict(con.execute(f"""
        SELECT CASE WHEN type IN ({types}) THEN type ELSE '(invalid)' END, count(*)
        FROM ({quarantined_sql}) GROUP BY 1""").fetchall())
    n_quarantined = sum(by_reason.values())
    entry["quarantine_file"] = None
    if n_quarantined:
        rel = f"{QUARANTINE_DIR}/{seg_id}.parquet"
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY ({quarantined_sql} ORDER BY line NULLS FIRST, reason) TO {sql_string(str(stage / rel))} "
                    "(FORMAT parquet, COMPRESSION zstd)")
        entry["quarantine_file"] = rel
    n_accepted = con.execute("SELECT count(*) FROM seg_rows").fetchone()[0]
    n_rejected = sum(v for k, v in by_reason.items() if k == WRONG_FIELD_COUNT)
    entry.update({
        "rows_read": n_accepted + n_rejected,
        "rows_lake": sum(entry["lake_by_type"].values()),
        "rows_quarantined": n_quarantined,
        "quarantine_by_reason": by_reason,
        "quarantine_by_type": by_type,
    })
    con.execute("DROP TABLE seg_rows")
    return entry


def ingest_parts(parts: Sequence[tuple[Path, str]], stage: Path, *, row_group_size: int, progress: bool,
                 memory_limit: str = DEFAULT_MEMORY_LIMIT) -> list[dict[str, Any]]:
    """`Ingester.ingest` on this machine with DuckDB: one connection, parts one after another."""
    con = db.connect(memory_limit=memory_limit)
    try:
        con.execute("SET temp_directory = ?", [str(stage / "spill")])
        con.execute("SET preserve_insertion_order = false")
        entries = []
        bar = tqdm(parts, desc="prepare", unit="part", disable=not progress)
        for src, seg_id in bar:
            bar.set_postfix_str(src.name)
            entries.append(_ingest(con, src, seg_id, stage, row_group_size))
        return entries
    finally:
        con.close()


def _sweep(lake: Path, manifest: dict[str, Any]) -> None:
    """Remove what no committed manifest refers to: staging left by a killed run, orphan files."""
    shutil.rmtree(lake / STAGING_DIR, ignore_errors=True)
    live = {seg["files"][t] for seg in manifest["segments"] for t in seg["files"]}
    live |= {seg["quarantine_file"] for seg in manifest["segments"] if seg.get("quarantine_file")}
    for sub in (EVENTS_DIR, QUARANTINE_DIR):
        for f in (lake / sub).rglob("*.parquet") if (lake / sub).exists() else ():
            if f.relative_to(lake).as_posix() not in live:
                f.unlink(missing_ok=True)


def prepare(raw_dir: str | os.PathLike, lake_dir: str | os.PathLike, *, progress: bool = True,
            memory_limit: str = DEFAULT_MEMORY_LIMIT, row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
            engine: Ingester | None = None) -> dict[str, Any]:
    """Bring the lake in line with the CSV parts in `raw_dir`; returns a summary of what changed.

    New or changed parts are ingested, parts gone from `raw_dir` are dropped, unchanged parts
    are untouched; with nothing to do it is a no-op (`summary["changed"] is False`).
    """
    raw = Path(raw_dir)
    lake = Path(lake_dir)
    if not raw.is_dir():
        raise PrepareError(f"raw directory {str(raw)!r} does not exist or is not a directory")
    sources = sorted(raw.glob("*.csv"))
    if not sources:
        raise PrepareError(f"raw directory {str(raw)!r} holds no *.csv files")
    for src in sources:
        check_header(src)

    lake.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with FileLock(str(lake / ".prepare.lock")):
        manifest = json.loads((lake / MANIFEST).read_text()) if (lake / MANIFEST).is_file() else _empty_manifest()
        _sweep(lake, manifest)
        known = {seg["source"]["file"]: seg for seg in manifest["segments"]}
        keep: list[dict[str, Any]] = []
        todo: list[tuple[Path, str, dict[str, Any]]] = []
        for src in sources:
            st = src.stat()
            old = known.get(src.name)
            if old and old["source"]["size"] == st.st_size and old["source"]["mtime_ns"] == st.st_mtime_ns:
                keep.append(old)
                continue
            fp = fingerprint(src)
            if old and old["source"]["fingerprint"] == fp:
                old["source"]["mtime_ns"] = st.st_mtime_ns
                keep.append(old)
                continue
            todo.append((src, fp, {"file": src.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "fingerprint": fp}))
        dropped = sorted(set(known) - {s.name for s in sources})
        if not todo and not dropped:
            return {"changed": False, "lake_version": manifest["lake_version"], "added": [], "dropped": [],
                    "seconds": time.perf_counter() - started, "totals": manifest["totals"]}

        stage = lake / STAGING_DIR / uuid.uuid4().hex
        stage.mkdir(parents=True)
        ingest = engine.ingest if engine is not None else partial(ingest_parts, memory_limit=memory_limit)
        added = ingest([(src, _segment_id(src.name, fp)) for src, fp, _ in todo], stage,
                              row_group_size=row_group_size, progress=progress)
        for entry, (_, _, source) in zip(added, todo):
            entry["source"] = source

        # promote: move staged files into place (still invisible), then commit the manifest
        for entry in added:
            for rel in list(entry["files"].values()) + ([entry["quarantine_file"]] if entry["quarantine_file"] else []):
                (lake / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(stage / rel, lake / rel)
        segments = sorted(keep + added, key=lambda s: s["source"]["file"])
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        new_manifest = {
            "schema_version": SCHEMA_VERSION,
            "lake_version": _lake_version(segments),
            "created_at": manifest.get("created_at") or now,
            "updated_at": now,
            "layout": {"partitioning": ["type"], "sort": ["ts"], "compression": "zstd",
                       "row_group_size": row_group_size, "segment": "one file per source part and type"},
            "segments": segments,
            "totals": _totals(segments),
            "history": (manifest.get("history") or [])[-49:] + [
                {"at": now, "added": [e["source"]["file"] for e in added], "dropped": dropped}],
        }
        write_atomic(lake / MANIFEST, json.dumps(new_manifest, indent=1))
        _sweep(lake, new_manifest)
        changed_days: dict[str, set[str]] = {}
        replaced = [known[src.name] for src, _, _ in todo if src.name in known]
        for seg in added + replaced + [known[n] for n in dropped]:
            for t, days in seg["days"].items():
                changed_days.setdefault(t, set()).update(days)
        return {"changed": True, "lake_version": new_manifest["lake_version"],
                "added": [e["source"]["file"] for e in added], "dropped": dropped,
                "changed_days": {t: sorted(d) for t, d in changed_days.items()},
                "seconds": time.perf_counter() - started, "totals": new_manifest["totals"]}
