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
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import duckdb
from filelock import FileLock

from .results import write_atomic
from .schema import EVENT_TYPES, LAKE_TYPES, RAW_HEADER

if TYPE_CHECKING:  # pragma: no cover
    from .engines import Engine

SCHEMA_VERSION = 1
MANIFEST = "_manifest.json"
EVENTS_DIR = "events"
QUARANTINE_DIR = "quarantine"
STAGING_DIR = "_staging"
# Measured on 15M rows (ARCHITECTURE.md): smaller groups prune single-day scans better, larger
# ones cut per-group overhead on full scans; this size balances the judges-style workload.
DEFAULT_ROW_GROUP_SIZE = 122_880
TS_MAX_MS = 4_102_444_800_000  # 2100-01-01: anything later is a corrupt timestamp

# First matching rule wins; every rule names a reason that the manifest counts.
# Engine-neutral: SQL over the raw text columns that calls the conversions of RULE_FUNCTIONS as
# plain functions; each engine supplies its own definitions (DUCKDB_FUNCTIONS below, the Spark
# engine's in engines/spark_engine.py) and expands them with `render_rule_sql`.
REMEDIATION_RULES: tuple[tuple[str, str], ...] = (
    ("ts_missing", "ts IS NULL"),
    ("ts_unparseable", "int64(ts) IS NULL"),
    ("ts_out_of_range", f"int64(ts) NOT BETWEEN 0 AND {TS_MAX_MS}"),
    ("type_invalid", "type IS NULL OR type NOT IN ({types})"),
    ("auction_id_missing", "auction_id IS NULL"),
    ("advertiser_id_missing", "advertiser_id IS NULL"),
    ("advertiser_id_invalid", "int32(advertiser_id) IS NULL"),
    ("publisher_id_missing", "publisher_id IS NULL"),
    ("publisher_id_invalid", "int32(publisher_id) IS NULL"),
    ("country_missing", "country IS NULL"),
    ("country_invalid", "NOT full_match(country, '[A-Z]{{2}}')"),
    ("user_id_invalid", "user_id IS NOT NULL AND int64(user_id) IS NULL"),
    # a price that is not a number at all parses to NULL, and NOT finite(NULL) is NULL: coalesce,
    # or it would pass every rule and break the typed projection (a crash, or a NULL price)
    ("price_unparseable", "(bid_price IS NOT NULL AND NOT coalesce(finite(float64(bid_price)), false)) OR "
                          "(total_price IS NOT NULL AND NOT coalesce(finite(float64(total_price)), false))"),
    ("price_negative", "float64(bid_price) < 0 OR float64(total_price) < 0"),
)
# What each function means, for every engine alike: the value DuckDB's TRY_CAST gives the text
# (NULL when it does not parse), whether a double is finite, whether a text matches a pattern whole.
RULE_FUNCTIONS: dict[str, str] = {
    "int64": "TRY_CAST(text AS BIGINT) as DuckDB casts it, else NULL",
    "int32": "TRY_CAST(text AS INTEGER) as DuckDB casts it, else NULL",
    "float64": "TRY_CAST(text AS DOUBLE) as DuckDB casts it, else NULL",
    "finite": "isfinite(double): not NaN nor +-inf; NULL stays NULL",
    "full_match": "the text matches the (RE2/Java-compatible) pattern as a whole",
}
DUCKDB_FUNCTIONS: dict[str, Callable[..., str]] = {
    "int64": lambda x: f"TRY_CAST({x} AS BIGINT)",
    "int32": lambda x: f"TRY_CAST({x} AS INTEGER)",
    "float64": lambda x: f"TRY_CAST({x} AS DOUBLE)",
    "finite": lambda x: f"isfinite({x})",
    "full_match": lambda x, pattern: f"regexp_full_match({x}, {pattern})",
}


def render_rule_sql(sql: str, functions: Mapping[str, Callable[..., str]]) -> str:
    """Expand each call `name(arg, ...)` of a function in `functions` by its definition, innermost
    first; quoted SQL strings are left alone. `name` must be one of RULE_FUNCTIONS."""
    names = re.compile(r"\b(" + "|".join(map(re.escape, functions)) + r")\s*\(")
    out: list[str] = []
    pos = 0
    while (m := names.search(sql, pos)) is not None:
        out.append(sql[pos:m.start()])
        args: list[str] = []
        depth, start, quoted, j = 0, m.end(), False, m.end()
        while True:
            c = sql[j]
            if quoted:
                quoted = c != "'"
            elif c == "'":
                quoted = True
            elif c == "(":
                depth += 1
            elif c == ")" and depth:
                depth -= 1
            elif c in ",)" and not depth:
                args.append(render_rule_sql(sql[start:j].strip(), functions))
                start = j + 1
                if c == ")":
                    break
            j += 1
        out.append(functions[m.group(1)](*args))
        pos = j + 1
    out.append(sql[pos:])
    return "".join(out)


def reason_case_sql(functions: Mapping[str, Callable[..., str]]) -> str:
    """`CASE WHEN <rule> THEN '<reason>' ... END` over the raw text columns, for one engine."""
    types = ", ".join(_sql_str(t) for t in EVENT_TYPES)
    return "CASE " + " ".join(f"WHEN {render_rule_sql(cond.format(types=types), functions)} THEN '{name}'"
                              for name, cond in REMEDIATION_RULES) + " END"


WRONG_FIELD_COUNT = "wrong_field_count"
REASONS: tuple[str, ...] = tuple(r for r, _ in REMEDIATION_RULES) + (WRONG_FIELD_COUNT,)

# Typed lake columns from the raw text, all in UTC-naive time so no session zone can shift them.
LAKE_PROJECTION = """
    epoch_ms(CAST(ts AS BIGINT)) AS ts,
    CAST(epoch_ms(CAST(ts AS BIGINT)) AS DATE) AS day,
    CAST(date_trunc('week', epoch_ms(CAST(ts AS BIGINT))) AS DATE) AS week,
    date_trunc('hour', epoch_ms(CAST(ts AS BIGINT))) AS hour,
    strftime(epoch_ms(CAST(ts AS BIGINT)), '%Y-%m-%d %H:%M') AS minute,
    auction_id,
    CAST(advertiser_id AS INTEGER) AS advertiser_id,
    CAST(publisher_id AS INTEGER) AS publisher_id,
    CAST(bid_price AS DOUBLE) AS bid_price,
    CAST(user_id AS BIGINT) AS user_id,
    CAST(total_price AS DOUBLE) AS total_price,
    country
"""


class PrepareError(RuntimeError):
    """Input that prepare cannot ingest; the message names the directory, file or columns."""


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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


@dataclass
class Lake:
    """A read-only view of a prepared lake: its manifest and the files it commits to."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Lake":
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{root} is not a prepared lake (no {MANIFEST}); run `analytics prepare` first")
        return cls(root, json.loads(path.read_text()))

    @property
    def version(self) -> str:
        return self.manifest["lake_version"]

    @property
    def segment_ids(self) -> list[str]:
        return [seg["segment"] for seg in self.manifest["segments"]]

    def event_files(self, types: Iterable[str] | None = None, segments: Iterable[str] | None = None) -> list[Path]:
        wanted = set(types) if types is not None else None
        segs = set(segments) if segments is not None else None
        return [self.root / f for seg in self.manifest["segments"] for t, f in sorted(seg["files"].items())
                if (wanted is None or t in wanted) and (segs is None or seg["segment"] in segs)]

    def quarantine_files(self) -> list[Path]:
        return [self.root / seg["quarantine_file"] for seg in self.manifest["segments"] if seg.get("quarantine_file")]

    def days_by_type(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {t: set() for t in EVENT_TYPES}
        for seg in self.manifest["segments"]:
            for t, days in seg["days"].items():
                out[t].update(days)
        return out

    def relation_sql(self, types: Iterable[str] | None = None, segments: Iterable[str] | None = None) -> str:
        """A `read_parquet` over exactly the committed files (optionally some segments), `type` from the Hive path."""
        files = self.event_files(types, segments)
        if not files:
            # an empty lake still answers (with no rows) through a typed empty relation
            columns = ", ".join(f"NULL::{t} AS {c}" for c, t in LAKE_TYPES.items())
            return f"(SELECT {columns} WHERE false)"
        listing = ", ".join(_sql_str(str(f)) for f in files)
        return f"read_parquet([{listing}], hive_partitioning = true, hive_types = {{'type': VARCHAR}})"

    def register(self, con: duckdb.DuckDBPyConnection, name: str = "events") -> None:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {self.relation_sql()}")

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.event_files() + self.quarantine_files())


def _empty_manifest() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "lake_version": None, "segments": [], "totals": {}, "layout": {}}


def _lake_version(segments: list[dict[str, Any]]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for seg in sorted(segments, key=lambda s: s["segment"]):
        h.update(seg["segment"].encode())
    return h.hexdigest()


def _totals(segments: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"rows_read": 0, "rows_lake": 0, "rows_quarantined": 0, "lake_by_type": {},
                              "quarantine_by_reason": {}, "quarantine_by_type": {}}
    for seg in segments:
        for key in ("rows_read", "rows_lake", "rows_quarantined"):
            totals[key] += seg[key]
        for key in ("lake_by_type", "quarantine_by_reason", "quarantine_by_type"):
            for k, v in seg[key].items():
                totals[key][k] = totals[key].get(k, 0) + v
    return totals


def _segment_id(name: str, fp: str) -> str:
    return "seg-" + hashlib.blake2b(f"{name}\0{fp}".encode(), digest_size=6).hexdigest()


def _ingest(con: duckdb.DuckDBPyConnection, src: Path, seg_id: str, stage: Path, row_group_size: int) -> dict[str, Any]:
    """Remediate one CSV part into staged Parquet files; returns its manifest entry (paths relative)."""
    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in RAW_HEADER) + "}"
    types = ", ".join(_sql_str(t) for t in EVENT_TYPES)
    reason = reason_case_sql(DUCKDB_FUNCTIONS)
    con.execute("DROP TABLE IF EXISTS seg_rows")
    con.execute("DROP TABLE IF EXISTS seg_rejects")
    con.execute("DROP TABLE IF EXISTS seg_reject_scans")
    try:
        con.execute(f"""
            CREATE TEMP TABLE seg_rows AS
            SELECT *, {reason} AS reason
            FROM read_csv({_sql_str(str(src))}, header = true, auto_detect = false, columns = {columns},
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
            TO {_sql_str(str(out))} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {int(row_group_size)})
        """, [t])
        entry["files"][t] = rel
    for t, n, days in con.execute("""
            SELECT type, count(*), list(DISTINCT CAST(CAST(epoch_ms(CAST(ts AS BIGINT)) AS DATE) AS VARCHAR) ORDER BY 1)
            FROM seg_rows WHERE reason IS NULL GROUP BY type ORDER BY type""").fetchall():
        entry["lake_by_type"][t] = n
        entry["days"][t] = sorted(days)

    # a rejected line as it is in the file: with CRLF endings DuckDB's csv_line keeps the previous "\n"
    quarantined_sql = f"""
        SELECT {_sql_str(src.name)} AS source_file, NULL::BIGINT AS line, reason,
               {', '.join(RAW_HEADER)}, NULL::VARCHAR AS raw_line
        FROM seg_rows WHERE reason IS NOT NULL
        UNION ALL
        SELECT {_sql_str(src.name)}, line::BIGINT, '{WRONG_FIELD_COUNT}', {', '.join('NULL' for _ in RAW_HEADER)},
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
        con.execute(f"COPY ({quarantined_sql} ORDER BY line NULLS FIRST, reason) TO {_sql_str(str(stage / rel))} "
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
            memory_limit: str = "4GB", row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
            engine: "Engine | None" = None) -> dict[str, Any]:
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
        if engine is None:
            from .engines.duckdb_engine import DuckDBEngine

            engine = DuckDBEngine(memory_limit=memory_limit)
        added = engine.ingest([(src, _segment_id(src.name, fp)) for src, fp, _ in todo], stage,
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
