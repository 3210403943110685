"""The remediation report: what `prepare` read, kept and quarantined, and whether it all adds up.

Owns the reading of a lake's manifest and quarantine files into one JSON-able report: rows read,
in the lake and quarantined (per reason, per event type, per source file and per segment), the
accounting checks (read == lake + quarantined everywhere, manifest totals == sum of segments,
manifest counts == the rows actually in the committed Parquet files), the partition days each
event type covers, and a few offending rows per reason. Reads only what the manifest commits to;
must not change the lake nor decide what is quarantined (that is `lake.prepare`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from analytics.core import db
from analytics.core.sql import sql_string
from analytics.lake.rules import REASONS
from analytics.lake.state import Lake
from analytics.query.schema import EVENT_TYPES, RAW_HEADER

# Columns of a quarantine file, in order, as `lake.prepare` writes them.
QUARANTINE_COLUMNS: tuple[str, ...] = ("source_file", "line", "reason", *RAW_HEADER, "raw_line")


def _parquet_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def _sum_maps(maps: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in maps:
        for k, v in m.items():
            out[k] = out.get(k, 0) + v
    return out


def _check(checks: list[dict[str, Any]], name: str, expected: Any, actual: Any, detail: str = "") -> None:
    checks.append({"check": name, "ok": expected == actual, "expected": expected, "actual": actual,
                   **({"detail": detail} if detail else {})})


def _day_summary(days: set[str]) -> dict[str, Any]:
    ordered = sorted(days)
    return {"days": len(ordered), "first": ordered[0] if ordered else None,
            "last": ordered[-1] if ordered else None, "list": ordered}


def remediation_report(lake_dir: str | os.PathLike, samples: int = 5) -> dict[str, Any]:
    """Everything a person needs to trust (or distrust) what `prepare` did to the raw rows.

    Returns a JSON-able dict with `rows_read`, `rows_lake`, `rows_quarantined`,
    `quarantine_by_reason` (every known reason, zeros included), `quarantine_by_type`,
    `lake_by_type`, `by_source_file`, `segments`, `rejected` (parts prepare could not read, with
    the reason), `days_by_type`, `samples` (up to `samples`
    quarantined rows per reason, raw columns as text), `checks` (one entry per accounting check
    with expected/actual) and `ok` (all checks hold). Raises FileNotFoundError for a directory
    that is not a prepared lake.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    lake = Lake.open(lake_dir)
    manifest = lake.state
    segments = manifest.get("segments", [])
    totals = manifest.get("totals") or {}
    checks: list[dict[str, Any]] = []

    seg_rows: list[dict[str, Any]] = []
    for seg in segments:
        source = seg.get("source", {}).get("file", seg["segment"])
        read, in_lake, quarantined = seg["rows_read"], seg["rows_lake"], seg["rows_quarantined"]
        ok = read == in_lake + quarantined
        _check(checks, f"segment {seg['segment']} ({source}): rows_read == rows_lake + rows_quarantined",
               read, in_lake + quarantined)
        _check(checks, f"segment {seg['segment']} ({source}): rows_quarantined == sum by reason",
               quarantined, sum(seg["quarantine_by_reason"].values()))
        _check(checks, f"segment {seg['segment']} ({source}): rows_lake == sum by type",
               in_lake, sum(seg["lake_by_type"].values()))
        # the committed files hold exactly the rows the manifest counts
        for t, rel in sorted(seg["files"].items()):
            _check(checks, f"segment {seg['segment']} ({source}): rows in {rel}",
                   seg["lake_by_type"].get(t, 0), _parquet_rows(lake.root / rel))
        qfile = seg.get("quarantine_file")
        _check(checks, f"segment {seg['segment']} ({source}): rows in quarantine file {qfile}",
               quarantined, _parquet_rows(lake.root / qfile) if qfile else 0)
        seg_rows.append({
            "segment": seg["segment"], "source_file": source,
            "rows_read": read, "rows_lake": in_lake, "rows_quarantined": quarantined,
            "quarantine_by_reason": dict(sorted(seg["quarantine_by_reason"].items())),
            "ok": ok,
        })

    rows_read = totals.get("rows_read", 0)
    rows_lake = totals.get("rows_lake", 0)
    rows_quarantined = totals.get("rows_quarantined", 0)
    _check(checks, "total: rows_read == rows_lake + rows_quarantined", rows_read, rows_lake + rows_quarantined)
    for key in ("rows_read", "rows_lake", "rows_quarantined"):
        _check(checks, f"total: manifest {key} == sum over segments", totals.get(key, 0),
               sum(s[key] for s in segments))
    for key in ("lake_by_type", "quarantine_by_reason", "quarantine_by_type"):
        _check(checks, f"total: manifest {key} == sum over segments",
               dict(sorted((totals.get(key) or {}).items())),
               dict(sorted(_sum_maps([s[key] for s in segments]).items())))

    by_reason = {r: 0 for r in REASONS}
    by_reason.update(totals.get("quarantine_by_reason") or {})
    unknown = sorted(set(by_reason) - set(REASONS))
    _check(checks, "every quarantine reason is a known rule", [], unknown)

    qfiles = lake.quarantine_files()
    sample_rows: dict[str, list[dict[str, Any]]] = {r: [] for r, n in by_reason.items() if n}
    if qfiles:
        con = db.connect()
        listing = ", ".join(sql_string(str(f)) for f in qfiles)
        rel = f"read_parquet([{listing}], union_by_name = true)"
        cols = ", ".join(f'"{c}"' for c in QUARANTINE_COLUMNS)
        actual_by_reason = dict(con.execute(f"SELECT reason, count(*) FROM {rel} GROUP BY 1").fetchall())
        _check(checks, "quarantine files: rows per reason == manifest",
               {r: n for r, n in sorted(by_reason.items()) if n}, dict(sorted(actual_by_reason.items())))
        cur = None if not samples else con.execute(f"""
            SELECT {cols} FROM {rel}
            QUALIFY row_number() OVER (PARTITION BY reason ORDER BY source_file, line NULLS LAST, ts, auction_id) <= ?
            ORDER BY reason, source_file, line NULLS LAST, ts, auction_id""", [samples])
        if cur is not None:
            names = [d[0] for d in cur.description]
            for row in cur.fetchall():
                rec = dict(zip(names, row))
                if rec["line"] is not None:
                    rec["line"] = int(rec["line"])  # a CSV line number, whatever type Parquet kept
                sample_rows.setdefault(rec["reason"], []).append(rec)
        con.close()

    by_file: dict[str, dict[str, int]] = {}
    for s in seg_rows:
        f = by_file.setdefault(s["source_file"], {"rows_read": 0, "rows_lake": 0, "rows_quarantined": 0})
        for key in f:
            f[key] += s[key]
    days = lake.days_by_type()
    report = {
        "lake": str(lake.root),
        "lake_version": manifest.get("lake_version"),
        "updated_at": manifest.get("updated_at"),
        "rows_read": rows_read,
        "rows_lake": rows_lake,
        "rows_quarantined": rows_quarantined,
        "quarantined_fraction": rows_quarantined / rows_read if rows_read else 0.0,
        "lake_by_type": {t: (totals.get("lake_by_type") or {}).get(t, 0) for t in EVENT_TYPES},
        "quarantine_by_reason": by_reason,
        "quarantine_by_type": dict(sorted((totals.get("quarantine_by_type") or {}).items())),
        "by_source_file": [{"source_file": k, **v} for k, v in sorted(by_file.items())],
        "segments": seg_rows,
        "rejected": list(manifest.get("rejected") or []),
        "days_by_type": {t: _day_summary(days.get(t, set())) for t in EVENT_TYPES},
        "samples": sample_rows,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }
    return report


def count_data_lines(path: str | os.PathLike, block: int = 1 << 24) -> int:
    """Non-empty lines after the header line of a CSV file, read in blocks (no parsing)."""
    import numpy as np

    lines = empty = 0
    tail = b""  # the last two bytes before the block, so empty lines across blocks are seen
    last = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            buf = np.frombuffer(tail + chunk, dtype=np.uint8)
            nl = buf == 10
            k = len(tail)
            lines += int(nl[k:].sum())
            # an empty line ends in "\n" right after "\n" (or "\r\n" right after "\n")
            empty += int((nl[max(k, 1):] & nl[max(k, 1) - 1:-1]).sum())
            if buf.size >= 3:
                cr = buf == 13
                empty += int((nl[max(k, 2):] & cr[max(k, 2) - 1:-1] & nl[max(k, 2) - 2:-2]).sum())
            tail = (tail + chunk)[-2:]
            last = chunk[-1:]
    lines += 1 if last not in (b"", b"\n") else 0
    return max(0, lines - empty - 1)


def raw_accounting(lake_dir: str | os.PathLike, raw_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Checks of the manifest against the raw parts themselves, independent of DuckDB's CSV reader.

    Per source file the manifest counts: the file still exists unchanged (same fingerprint) and
    its non-empty data lines equal `rows_read`. Every `*.csv` in `raw_dir` is in the lake or in its
    `rejected` list (else `prepare` has not run since it appeared).
    """
    from analytics.lake.state import fingerprint

    lake = Lake.open(lake_dir)
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise FileNotFoundError(f"raw directory {str(raw)!r} does not exist or is not a directory")
    checks: list[dict[str, Any]] = []
    known = set()
    for seg in lake.state.get("segments", []):
        name = seg["source"]["file"]
        known.add(name)
        path = raw / name
        if not path.is_file():
            _check(checks, f"raw {name}: present in {raw}", True, False)
            continue
        same = fingerprint(path) == seg["source"]["fingerprint"]
        _check(checks, f"raw {name}: unchanged since prepare (fingerprint)", True, same)
        if same:
            _check(checks, f"raw {name}: data lines == rows_read", seg["rows_read"], count_data_lines(path))
    known |= {r["file"] for r in lake.state.get("rejected") or []}
    extra = sorted(p.name for p in raw.glob("*.csv") if p.name not in known)
    _check(checks, f"raw {raw}: every *.csv part is in the lake or listed as rejected", [], extra)
    return checks


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text for a terminal."""
    lines = [
        f"lake {report['lake']} (version {report['lake_version']})",
        f"rows read {report['rows_read']:,} = in lake {report['rows_lake']:,} + quarantined "
        f"{report['rows_quarantined']:,} ({report['quarantined_fraction']:.3%})",
    ]
    for t, n in report["lake_by_type"].items():
        d = report["days_by_type"][t]
        span = f"{d['first']} .. {d['last']}" if d["days"] else "-"
        lines.append(f"  in lake {t}: {n:,} rows over {d['days']} day(s) {span}")
    for reason, n in report["quarantine_by_reason"].items():
        if n:
            lines.append(f"  quarantined {reason}: {n:,}")
    for t, n in report["quarantine_by_type"].items():
        lines.append(f"  quarantined type {t}: {n:,}")
    for f in report["by_source_file"]:
        lines.append(f"  file {f['source_file']}: read {f['rows_read']:,}, lake {f['rows_lake']:,}, "
                     f"quarantined {f['rows_quarantined']:,}")
    for r in report["rejected"]:
        lines.append(f"  REJECTED file {r['file']}: {r['reason']} (not in the lake; the other parts are)")
    failed = [c for c in report["checks"] if not c["ok"]]
    for c in failed:
        lines.append(f"CHECK FAILED {c['check']}: expected {c['expected']}, got {c['actual']}")
    lines.append(f"accounting: {'ok' if not failed else 'FAILED'} ({len(report['checks']) - len(failed)}/"
                 f"{len(report['checks'])} checks hold)")
    return "\n".join(lines)
