"""Raw-file hardening: prepare never tracebacks on bad input; every raw line is in the lake or
quarantined with a true reason, and the counts add up (BOM, empty parts, bytes that are not UTF-8,
overlong and hostile lines, unreadable parts, a full disk, an old manifest, random bytes)."""
from __future__ import annotations

import collections
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import pytest
from helpers import state_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analytics.lake.prepare as prepare_mod
from analytics.checks.remediation import format_report, remediation_report
from analytics.lake import rawfile
from analytics.lake.prepare import PrepareError, prepare
from analytics.lake.rules import MAX_LINE_BYTES, REMEDIATION_RULES
from analytics.lake.state import Lake, SegmentEntry
from analytics.query.schema import RAW_HEADER

HEADER = ",".join(RAW_HEADER).encode() + b"\n"
T0 = 1709251200000  # 2024-03-01 00:00:00 UTC


def good_rows(n: int, start: int = 0) -> list[bytes]:
    return [f"{T0 + i * 1000},serve,a{i},{1 + i % 7},{2 + i % 5},,{10 + i},,US".encode() for i in range(start, start + n)]


def write_part(path: Path, lines: list[bytes], *, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((rawfile.BOM if bom else b"") + HEADER + b"".join(line + b"\n" for line in lines))
    return path


def quarantined(lake: Path, reasons: tuple[str, ...]) -> list[tuple[str, int, str, str]]:
    """(source_file, line, reason, raw_line) of the quarantined rows with these reasons, in line order."""
    files = [str(f) for f in Lake.open(lake).quarantine_files()]
    if not files:
        return []
    return duckdb.connect().execute(
        "SELECT source_file, line, reason, raw_line FROM read_parquet(?) WHERE list_contains(?, reason) "
        "ORDER BY source_file, line", [files, list(reasons)]).fetchall()


def lake_rows(lake: Path) -> int:
    return duckdb.connect().execute(f"SELECT count(*) FROM {Lake.open(lake).relation_sql()}").fetchone()[0]


def test_a_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    write_part(tmp_path / "raw" / "events_part_00000.csv", good_rows(5), bom=True)
    totals = prepare(tmp_path / "raw", tmp_path / "lake", progress=False)["totals"]
    assert (totals["rows_read"], totals["rows_lake"], totals["rows_quarantined"]) == (5, 5, 0)


def test_an_empty_part_counts_zero_rows_and_the_others_are_ingested(tmp_path: Path, caplog) -> None:
    write_part(tmp_path / "raw" / "events_part_00000.csv", good_rows(5))
    (tmp_path / "raw" / "events_part_00001.csv").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        summary = prepare(tmp_path / "raw", tmp_path / "lake", progress=False)
    assert summary["totals"]["rows_lake"] == 5 == lake_rows(tmp_path / "lake")
    empty = [s for s in Lake.open(tmp_path / "lake").state["segments"] if s["source"]["file"] == "events_part_00001.csv"]
    assert len(empty) == 1 and (empty[0]["rows_read"], empty[0]["files"]) == (0, {})
    messages = [r.getMessage() for r in caplog.records]
    assert any("events_part_00001.csv is empty (0 bytes)" in m and "\n" not in m for m in messages), messages


@pytest.mark.parametrize("block", [rawfile.BLOCK, 4096])  # a small block puts bad lines across block edges
def test_rows_that_are_not_utf8_are_quarantined_near_the_top_and_far_down(tmp_path: Path, monkeypatch,
                                                                          block: int) -> None:
    monkeypatch.setattr(rawfile, "BLOCK", block)
    rows = good_rows(20_000)
    bad = {2: b"\xff" + rows[0][1:], 3: rows[1][:20] + b"\xc3(" + rows[1][22:], 19_999: rows[19_997] + b"\xe2\x82"}
    lines = [bad.get(i + 2, row) for i, row in enumerate(rows)]  # line number = index + 2 (after the header)
    write_part(tmp_path / "raw" / "events_part_00000.csv", lines)
    totals = prepare(tmp_path / "raw", tmp_path / "lake", progress=False)["totals"]
    assert totals["quarantine_by_reason"] == {"not_utf8": 3}
    assert (totals["rows_read"], totals["rows_lake"]) == (20_000, 19_997) and lake_rows(tmp_path / "lake") == 19_997
    got = quarantined(tmp_path / "lake", ("not_utf8",))
    assert [(line, raw) for _, line, _, raw in got] == [
        (n, bad[n].decode("utf-8", errors="backslashreplace")) for n in sorted(bad)]


def test_a_line_over_the_maximum_is_quarantined_as_line_too_long(tmp_path: Path) -> None:
    rows = good_rows(10)
    long_line = rows[3][:-2] + b"x" * (MAX_LINE_BYTES + 1)  # one byte over the limit
    write_part(tmp_path / "raw" / "events_part_00000.csv", rows[:3] + [long_line] + rows[4:])
    totals = prepare(tmp_path / "raw", tmp_path / "lake", progress=False)["totals"]
    assert totals["quarantine_by_reason"] == {"line_too_long": 1} and totals["rows_lake"] == 9
    [(_, line, _, raw)] = quarantined(tmp_path / "lake", ("line_too_long",))
    assert line == 5 and raw.startswith(long_line[:100].decode()) and raw.endswith(f"[{len(long_line):,} bytes]")


def test_hostile_lines_complete_and_are_quarantined(tmp_path: Path) -> None:
    rows = good_rows(6)
    huge = b"x," * 1_500_000  # 3 MB, 1.5 million fields: DuckDB alone would take hours (quadratic rejects)
    wide = b"x," * 20_000  # 40 KB, under the line limit, 20,000 fields: split by the pre-pass
    trailing = rows[5] + b"," * 1_000  # nine fields then empty ones: a row, as DuckDB reads it
    cr = b"x,\ry," * 100  # a bare carriage return among many fields (Python's csv module refuses it)
    part = write_part(tmp_path / "raw" / "events_part_00000.csv", rows[:2] + [huge, wide] + rows[2:5] + [trailing, cr])
    assert rawfile.first_diverted(part).line == 4
    totals = prepare(tmp_path / "raw", tmp_path / "lake", progress=False)["totals"]
    assert totals["quarantine_by_reason"] == {"line_too_long": 1, "wrong_field_count": 2}
    assert (totals["rows_read"], totals["rows_lake"]) == (9, 6)
    got = quarantined(tmp_path / "lake", ("line_too_long", "wrong_field_count"))
    assert [(line, reason) for _, line, reason, _ in got] == [
        (4, "line_too_long"), (5, "wrong_field_count"), (10, "wrong_field_count")]


def test_an_unreadable_part_is_rejected_and_the_others_are_ingested(tmp_path: Path) -> None:
    raw, lake = tmp_path / "raw", tmp_path / "lake"
    write_part(raw / "events_part_00000.csv", good_rows(5))
    (raw / "events_part_00001.csv").mkdir()  # a directory: cannot be opened (chmod 000 is no obstacle to root)
    # a part DuckDB's reader gives up on as a whole (a CRLF line in a LF file)
    (raw / "events_part_00002.csv").write_bytes(HEADER + good_rows(1)[0] + b"\n\r\n" + good_rows(1)[0] + b"\n")
    write_part(raw / "events_part_00003.csv", good_rows(4, start=10))
    summary = prepare(raw, lake, progress=False)
    assert summary["totals"]["rows_lake"] == 9 == lake_rows(lake)
    rejected = Lake.open(lake).state["rejected"]
    assert [r["file"] for r in rejected] == ["events_part_00001.csv", "events_part_00002.csv"]
    assert rejected[0]["reason"] == "cannot read: Is a directory" and "CSV" in rejected[1]["reason"]
    assert summary["rejected"] == rejected
    assert prepare(raw, lake, progress=False)["changed"] is False  # the same parts, rejected alike: nothing to do
    out = subprocess.run([sys.executable, "-m", "analytics", "remediation", "--lake", str(lake)],
                         capture_output=True, text=True)
    assert "REJECTED file events_part_00001.csv: cannot read: Is a directory" in out.stdout
    assert "REJECTED file events_part_00002.csv" in format_report(remediation_report(lake))
    (raw / "events_part_00001.csv").rmdir()
    write_part(raw / "events_part_00001.csv", good_rows(3, start=20))
    summary = prepare(raw, lake, progress=False)
    assert summary["added"] == ["events_part_00001.csv"] and summary["totals"]["rows_lake"] == 12
    assert [r["file"] for r in summary["rejected"]] == ["events_part_00002.csv"]


def test_a_full_disk_removes_the_staging_at_once_and_names_the_part(tmp_path: Path, monkeypatch) -> None:
    raw, lake = tmp_path / "raw", tmp_path / "lake"
    write_part(raw / "events_part_00000.csv", good_rows(5))
    prepare(raw, lake, progress=False)
    before = state_file(lake).read_bytes()
    write_part(raw / "events_part_00001.csv", good_rows(5, start=5))
    write_part(raw / "events_part_00002.csv", good_rows(5, start=10))
    real = prepare_mod._ingest
    seen: list[list[Path]] = []

    def disk_fills_up(con, src, seg_id, stage, row_group_size):
        seen.append(sorted(p for p in stage.rglob("*.parquet")))
        if src.name == "events_part_00002.csv":  # the first part is staged: the second COPY finds no room
            raise duckdb.IOException(f'IO Error: Could not write file "{stage}/x.parquet": No space left on device')
        return real(con, src, seg_id, stage, row_group_size)

    monkeypatch.setattr(prepare_mod, "_ingest", disk_fills_up)
    with pytest.raises(PrepareError) as err:
        prepare(raw, lake, progress=False)
    message = str(err.value)
    assert "\n" not in message and "events_part_00002.csv" in message and "No space left on device" in message
    assert seen[-1], "the failure must come after something was staged"
    assert not any((lake / "_staging").iterdir())
    assert state_file(lake).name == "00000000000000000000.json" and state_file(lake).read_bytes() == before


def test_a_state_written_before_segment_entries_reads_and_round_trips(tmp_path: Path) -> None:
    # a segment exactly as the code before SegmentEntry wrote it (key order included), and no `rejected`
    old_segment = {
        "segment": "seg-0123456789ab", "files": {"serve": "events/type=serve/seg-0123456789ab.parquet"},
        "days": {"serve": ["2024-03-01"]}, "lake_by_type": {"serve": 5}, "quarantine_file": None,
        "rows_read": 5, "rows_lake": 5, "rows_quarantined": 0, "quarantine_by_reason": {}, "quarantine_by_type": {},
        "source": {"file": "events_part_00000.csv", "size": 1, "mtime_ns": 2, "fingerprint": "ab"},
    }
    text = json.dumps(old_segment, indent=1)
    assert json.dumps(SegmentEntry.from_json(json.loads(text)).to_json(), indent=1) == text

    raw, lake = tmp_path / "raw", tmp_path / "lake"
    write_part(raw / "events_part_00000.csv", good_rows(5))
    prepare(raw, lake, progress=False)
    state = json.loads(state_file(lake).read_text())
    del state["rejected"]  # the old shape
    state_file(lake).write_text(json.dumps(state, indent=1))
    before = state_file(lake).read_bytes()
    assert lake_rows(lake) == 5 and remediation_report(lake)["ok"]
    assert prepare(raw, lake, progress=False)["changed"] is False
    assert state_file(lake).read_bytes() == before


# ---- property: random bytes appended to a valid part ---------------------------------------------
RULE_REASONS = {r for r, _ in REMEDIATION_RULES}
BASE = good_rows(40)
_line = st.one_of(
    st.binary(min_size=1, max_size=80),
    st.builds(lambda row, i, junk: row[:i] + junk + row[i:], st.sampled_from(BASE), st.integers(0, 60),
              st.binary(min_size=1, max_size=4)),
    # many fields (past the pre-pass's MAX_READER_FIELDS), the extra ones empty or not
    st.builds(lambda row, n, tail: row + b"," * n + tail, st.sampled_from(BASE), st.integers(0, 150),
              st.sampled_from([b"", b"x", b"\xff"])),
    st.builds(lambda n, byte: byte * n, st.sampled_from([MAX_LINE_BYTES, MAX_LINE_BYTES + 1]),
              st.sampled_from([b"y", b","])),
).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"").replace(b'"', b"") or b"x")  # one line, unquoted


def _expected(line: bytes) -> str:
    """What an appended line must become, decided without the code under test."""
    if len(line) > MAX_LINE_BYTES:
        return "line_too_long"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    fields = line.split(b",")
    if len(fields) < len(RAW_HEADER) or any(fields[len(RAW_HEADER):]):
        return "wrong_field_count"
    return "row"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_line, min_size=1, max_size=8))
def test_random_bytes_appended_to_a_part_are_in_the_lake_or_quarantined_with_a_true_reason(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="rawprop") as tmp:
        raw, lake = Path(tmp) / "raw", Path(tmp) / "lake"
        write_part(raw / "events_part_00000.csv", BASE + lines)
        totals = prepare(raw, lake, progress=False)["totals"]
        first = len(BASE) + 2  # line number of the first appended line
        expected = {first + i: _expected(line) for i, line in enumerate(lines)}
        assert totals["rows_read"] == len(BASE) + len(lines)
        assert totals["rows_read"] == totals["rows_lake"] + totals["rows_quarantined"]
        report = remediation_report(lake)
        assert report["ok"], [c for c in report["checks"] if not c["ok"]]
        by_line = {line: reason for _, line, reason, _ in
                   quarantined(lake, ("not_utf8", "wrong_field_count", "line_too_long"))}
        assert by_line == {n: r for n, r in expected.items() if r != "row"}
        # the parsed lines: each one either in the lake or quarantined by a rule, with its own fields
        rows = [lines[n - first] for n, r in expected.items() if r == "row"]
        want = collections.Counter(tuple(f.decode() or None for f in line.split(b",")[:len(RAW_HEADER)]) for line in rows)
        files = [str(f) for f in Lake.open(lake).quarantine_files()]
        ruled = duckdb.connect().execute(
            f"SELECT reason, {', '.join(RAW_HEADER)} FROM read_parquet(?) WHERE line IS NULL", [files]
        ).fetchall() if files else []
        assert {r for r, *_ in ruled} <= RULE_REASONS
        assert not collections.Counter(tuple(fields) for _, *fields in ruled) - want
        assert totals["rows_lake"] == len(BASE) + len(rows) - len(ruled)
