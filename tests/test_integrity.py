"""Damaged bytes never answer: every kind of file an answer can come from, damaged every way.

For each kind (a view's serving copy, its Parquet file, a delta's serving copy, a lake segment, a
sorted lake index, a row-group key filter), bits are flipped in the header, the middle and the
last block, the file is truncated, deleted and replaced by a directory. Then: every answer equals
the baseline or the query fails with an error naming the file (never a wrong answer); the damage
is named on stderr once, by `explain`, `stats`, a guardrail and `analytics verify` (exit 1); and
`build` (views and indexes) or `prepare` (lake segments) repairs it, after which
`verify` exits 0 and the views answer again.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
from helpers import TARGETED, pages_of, resident_pages
from helpers import check_against_baseline as _check

from analytics.bench.pagecache import evict
from analytics.checks.guardrails import run_guardrails
from analytics.cli import main
from analytics.core.checksum import ChecksumError, check, file_record
from analytics.lake.damage import load_damage
from analytics.lake.integrity import REST, DamagedSegmentError, _chunk_ranges, _column_digests
from analytics.lake.prepare import prepare
from analytics.lake.state import Lake
from analytics.query.model import parse_query, types_selected
from analytics.query.results import to_rows
from analytics.serving.router import LAKE
from analytics.serving.workbench import Workbench
from analytics.views.adaptive_catalog import load_adaptive
from analytics.views.build import BuildError, build
from analytics.views.registry import load_registry


def _flip(path: Path, where: Callable[[int], int]) -> None:
    size = path.stat().st_size
    at = min(max(0, where(size)), size - 1)
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)[0]
        fh.seek(at)
        fh.write(bytes([byte ^ 0x04]))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "x").write_text("not the file")


DAMAGES: dict[str, Callable[[Path], None]] = {
    "flip-header": lambda p: _flip(p, lambda n: 9),
    "flip-middle": lambda p: _flip(p, lambda n: n // 2),
    "flip-last-block": lambda p: _flip(p, lambda n: n - 300),
    "truncate": _truncate,
    "delete": lambda p: p.unlink(),
    "directory": _directory,
}
VIEW = "mv_day_type_wide"
QUERY = TARGETED[VIEW]


def _verify(lake: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["verify", "--lake", str(lake), *flags])
    return rc, capsys.readouterr().out


def _named_everywhere(lake: Path, rel: str, capsys: pytest.CaptureFixture[str], query: dict) -> None:
    """`verify` names the file and exits 1; then `stats` and `explain` name it."""
    rc, out = _verify(lake, capsys)
    assert rc == 1 and f"DAMAGED {lake / rel}" in out, out
    assert rel in load_damage(lake)
    assert main(["stats", "--lake", str(lake)]) == 0
    assert f"unhealthy: {rel}" in capsys.readouterr().out
    qfile = lake.parent / "q.json"
    qfile.write_text(json.dumps([query]))
    main(["explain", "--lake", str(lake), "--queries", str(qfile)])
    assert Path(rel).name in capsys.readouterr().out


# ---- the checksum itself ----------------------------------------------------------------------------

def test_a_checksum_finds_every_damage_and_checks_only_the_blocks_asked(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * (3 * 16384 + 7))  # 3 blocks of 4 MiB and a bit
    record = file_record(path)
    assert len(record["xxh3"]) == 4 and record["size"] == path.stat().st_size
    check(path, record)
    _flip(path, lambda n: n // 2)
    with pytest.raises(ChecksumError, match="checksum mismatch in bytes"):
        check(path, record)
    check(path, record, start=0, stop=4 << 20)  # the first block alone is intact
    for damage in DAMAGES.values():
        path.write_bytes(bytes(range(256)) * (3 * 16384 + 7))
        damage(path)
        with pytest.raises(ChecksumError, match=r"mismatch|bytes|missing|not a regular file"):
            check(path, record)


# ---- views -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("kind", ["serving", "parquet"])
def test_a_damaged_view_file_never_answers_is_named_and_rebuilt(lake_copy, baseline, capsys, kind, damage):
    entry = load_registry(lake_copy)[VIEW]
    vdir = (lake_copy / entry.file).parent
    if kind == "serving":  # the largest file of the types the query reads
        recs = [r for t, r in entry.serving["types"].items() if t in types_selected(parse_query(QUERY).where)]
        target = vdir / max(recs, key=lambda r: r["bytes"])["file"]
    else:  # the Parquet version: read by the SQL path (the fast path off)
        target = lake_copy / entry.file
    rel = target.relative_to(lake_copy).as_posix()
    fast = kind == "serving"
    with Workbench(lake_copy, fast_path=fast) as wb:
        assert _check(baseline, wb, QUERY).route == VIEW
    DAMAGES[damage](target)
    capsys.readouterr()
    with Workbench(lake_copy, fast_path=fast) as wb:
        for _ in range(2):
            plan = _check(baseline, wb, QUERY)  # exact, from another view or the lake
            assert plan.route != VIEW
        assert wb.health[VIEW] is not None
    err = capsys.readouterr().err
    if damage in ("flip-header", "flip-middle", "flip-last-block"):  # found by reading: named once
        assert err.count(f"view {VIEW} is unhealthy") == 1 and rel in err, err
    _named_everywhere(lake_copy, rel, capsys, QUERY)
    report = run_guardrails(lake_copy, only="mv_consistency.present_readable")
    assert report["failed"] == 1 and VIEW in report["checks"][0]["evidence"]["summary"]
    summary = build(lake_copy, progress=False, jobs=1)
    assert summary["built"] == [VIEW] and not summary["failed"], summary
    assert _verify(lake_copy, capsys)[0] == 0
    with Workbench(lake_copy, fast_path=fast) as wb:
        assert _check(baseline, wb, QUERY).route == VIEW
        assert wb.health[VIEW] is None


def test_a_damaged_delta_never_answers_and_build_rebuilds_the_version(raw_dir, baseline, tmp_path, capsys):
    """A damaged base is never refreshed from (a new part rebuilds it in full); a version of base +
    delta with a flipped bit in the delta's serving copy sends the view's queries elsewhere, and
    build replaces the version with a new base."""
    first, lake = tmp_path / "first", tmp_path / "lake"
    first.mkdir()
    parts = sorted(raw_dir.glob("*.csv"))
    for p in parts[:-2]:
        shutil.copy2(p, first / p.name)
    prepare(first, lake, progress=False)
    build(lake, [VIEW], progress=False, jobs=1)
    DAMAGES["flip-middle"](lake / load_registry(lake)[VIEW].file)
    shutil.copy2(parts[-2], first / parts[-2].name)
    prepare(first, lake, progress=False)
    assert [r["mode"] for r in build(lake, [VIEW], progress=False, jobs=1)["views"]] == ["full"]
    shutil.copy2(parts[-1], first / parts[-1].name)
    prepare(first, lake, progress=False)
    build(lake, [VIEW], progress=False, jobs=1)
    entry = load_registry(lake)[VIEW]
    assert len(entry.deltas) == 1
    delta = entry.deltas[0]
    rec = max(delta.serving["types"].values(), key=lambda r: r["bytes"])
    target = (lake / entry.file).parent / rec["file"]
    DAMAGES["flip-middle"](target)
    with Workbench(lake) as wb:
        plan = _check(baseline, wb, QUERY)
        assert plan.route != VIEW
        assert "damaged" in wb.health[VIEW]
    rel = target.relative_to(lake).as_posix()
    rc, out = _verify(lake, capsys, "--views-only")
    assert rc == 1 and rel in out
    assert build(lake, [VIEW], progress=False, jobs=1)["built"] == [VIEW]
    assert not load_registry(lake)[VIEW].deltas
    assert _verify(lake, capsys)[0] == 0
    with Workbench(lake) as wb:
        assert _check(baseline, wb, QUERY).route == VIEW


# ---- the lake ----------------------------------------------------------------------------------------

LAKE_QUERY = {"select": ["type", {"COUNT": "*"}, {"SUM": "bid_price"}], "from": "events", "group_by": ["type"]}
# reads every column of the lake's files: every byte of them is in a column chunk or the footer
EVERY_COLUMN = {"select": ["type", *({"COUNT": c} for c in ("ts", "week", "day", "hour", "minute", "auction_id",
                                                              "advertiser_id", "publisher_id", "bid_price", "user_id",
                                                              "total_price", "country"))],
                "from": "events", "group_by": ["type"]}
YEAR = {"col": "day", "op": "between", "val": ["2024-01-01", "2024-12-31"]}  # a time filter the per-user view cannot take
POINT = {"select": ["type", {"COUNT": "*"}], "from": "events", "group_by": ["type"],
         "where": [{"col": "user_id", "op": "eq", "val": 5}, YEAR]}  # no view covers it: the lake


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_lake_segment_fails_its_queries_naming_its_part_and_prepare_reingests_it(
        lake_copy, raw_dir, baseline, capsys, damage):
    seg = Lake.open(lake_copy).state["segments"][0]
    rel, part = seg["files"]["impression"], seg["source"]["file"]
    DAMAGES[damage](lake_copy / rel)
    with Workbench(lake_copy) as wb:
        for _ in range(2):
            with pytest.raises(DamagedSegmentError, match=rf"{rel}.*raw part {part}"):
                wb.execute(EVERY_COLUMN, use_views=False)
            try:  # a query checks only the columns it reads: exact, or failing the same way
                _check(baseline, wb, LAKE_QUERY, use_views=False)
            except DamagedSegmentError as exc:
                assert rel in str(exc) and part in str(exc)
        assert _check(baseline, wb, LAKE_QUERY).route != LAKE  # the views are intact: they answer
    out = lake_copy.parent / "out"
    qfile = lake_copy.parent / "lq.json"
    qfile.write_text(json.dumps([EVERY_COLUMN]))
    assert main(["run", "--lake", str(lake_copy), "--queries", str(qfile), "--out", str(out), "--no-views",
                 "--no-cache", "--no-telemetry"]) == 1
    run = json.loads((out / "run.json").read_text())
    assert rel in run["queries"][0]["error"] and not (out / "q1.csv").exists()
    _named_everywhere(lake_copy, rel, capsys, POINT)
    with pytest.raises(BuildError, match=rel):
        build(lake_copy, progress=False, force=True)
    summary = prepare(raw_dir, lake_copy, progress=False)
    assert summary["added"] == [part]
    assert _verify(lake_copy, capsys)[0] == 0
    with Workbench(lake_copy) as wb:
        _check(baseline, wb, LAKE_QUERY, use_views=False)
        _check(baseline, wb, POINT)
    assert build(lake_copy, progress=False)["built"] == []  # the same content: the views stay current


# ---- lake indexes ------------------------------------------------------------------------------------

def _index_query(lake: Path, kind: str) -> tuple[str, dict]:
    import pyarrow.parquet as pq

    state = load_adaptive(lake)
    name, record = next((n, r) for n, r in state["indexes"].items() if r.get("kind", "sorted") == kind)
    seg = Lake.open(lake).state["segments"][0]
    value = pq.read_table(lake / seg["files"]["impression"], columns=[record["key"]]).column(0)[3].as_py()
    return name, {"select": ["type", {"COUNT": "*"}], "from": "events", "group_by": ["type"],
                  "where": [{"col": record["key"], "op": "eq", "val": value},
                            {"col": "type", "op": "in", "val": list(record["types"])}, YEAR]}


@pytest.mark.parametrize("damage", ["flip-middle", "truncate", "directory"])
@pytest.mark.parametrize("kind", ["sorted", "filter"])
def test_a_damaged_lake_index_is_left_out_named_and_rebuilt(adaptive_lake, baseline, tmp_path, capsys,  # noqa: F811
                                                            kind, damage):
    lake = tmp_path / "lake"
    shutil.copytree(adaptive_lake, lake)
    name, query = _index_query(lake, kind)
    with Workbench(lake) as wb:
        assert _check(baseline, wb, query).index == name
    record = load_adaptive(lake)["indexes"][name]
    rel, _ = max(record["checksums"].items(), key=lambda kv: kv[1]["size"])
    target = lake / record["dir"] / rel
    DAMAGES[damage](target)
    capsys.readouterr()
    with Workbench(lake) as wb:
        for _ in range(2):
            plan = _check(baseline, wb, query)
            assert plan.route == LAKE and plan.index is None
    if damage == "flip-middle":
        err = capsys.readouterr().err
        assert err.count(f"index {name} is unhealthy") == 1, err
    rc, out = _verify(lake, capsys, "--views-only")
    assert rc == 1 and str(target) in out
    assert build(lake, progress=False, jobs=1)["indexes"] == {name: "rebuilt"}
    assert _verify(lake, capsys)[0] == 0
    with Workbench(lake) as wb:
        assert _check(baseline, wb, query).index == name


# ---- verify ------------------------------------------------------------------------------------------

def test_verify_is_clean_on_a_fresh_lake_and_its_options_split_the_work(lake_dir, capsys):
    rc, out = _verify(lake_dir, capsys)
    assert rc == 0 and "0 damaged or missing" in out
    files = int(out.split("verified ")[1].split(" ")[0])
    lake_only = int(_verify(lake_dir, capsys, "--lake-only")[1].split("verified ")[1].split(" ")[0])
    views_only = int(_verify(lake_dir, capsys, "--views-only")[1].split("verified ")[1].split(" ")[0])
    assert lake_only + views_only == files and lake_only == sum(
        len(s["files"]) + bool(s.get("quarantine_file")) for s in Lake.open(lake_dir).state["segments"])
    assert main(["verify", "--lake", str(lake_dir / "nope")]) == 2


def test_a_lake_query_checks_the_column_chunks_it_reads_and_no_other(lake_copy, baseline):
    """A flipped bit in the `auction_id` chunk of one row group: a query that does not read the
    column answers exactly; one that reads it fails naming the file and its part."""
    import pyarrow.parquet as pq

    seg = Lake.open(lake_copy).state["segments"][0]
    rel, part = seg["files"]["impression"], seg["source"]["file"]
    meta = pq.read_metadata(lake_copy / rel)
    col = meta.schema.to_arrow_schema().names.index("auction_id")
    chunk = meta.row_group(meta.num_row_groups // 2).column(col)
    _flip(lake_copy / rel, lambda n: chunk.data_page_offset + chunk.total_compressed_size // 2)
    reads_it = {"select": ["type", {"COUNT": "auction_id"}], "from": "events", "group_by": ["type"]}
    with Workbench(lake_copy) as wb:
        _check(baseline, wb, LAKE_QUERY, use_views=False)
        with pytest.raises(DamagedSegmentError, match=rf"{rel} is damaged .*column auction_id.*raw part {part}"):
            wb.execute(reads_it, use_views=False)


def test_a_disk_cold_column_check_reads_only_that_columns_chunks(lake_copy):
    """A lake file's pages dropped, one column's digest taken: the page cache then holds that
    column's chunks and the footer, nothing else (its chunks lie spread over the file, and a
    plain first touch of each read around it: the whole file, 7.5 GB for one column at 245M)."""
    rel = Lake.open(lake_copy).state["segments"][0]["files"]["impression"]
    path = lake_copy / rel
    ranges = _chunk_ranges(path)
    os.sync()  # the copy's pages written back: only clean pages can be dropped
    evict(path.parent)
    assert not resident_pages(path)
    digests = _column_digests(path, ["user_id"])
    assert set(digests) == {REST, "user_id"}
    chunks = set().union(*(pages_of(start, start + length) for start, length in ranges["user_id"]))
    in_chunks = sorted(r for rs in ranges.values() for r in rs)
    ends = [0] + [start + length for start, length in in_chunks]
    starts = [start for start, _ in in_chunks] + [path.stat().st_size]
    rest = set().union(*(pages_of(a, b) for a, b in zip(ends, starts)))  # magic, footer: in no chunk
    size = path.stat().st_size
    rest |= pages_of(max(0, size - 64 * 1024), size)  # Arrow reads the footer with the file's last 64 KiB
    resident = resident_pages(path)
    assert chunks <= resident and resident <= chunks | rest, sorted(resident - chunks - rest)[:20]
    assert len(resident) * 4 < len(pages_of(0, size))


def test_a_damaged_lake_file_fails_the_queries_of_a_shared_scan_that_read_it(lake_copy, baseline):
    """Lake queries the runner answers through shared scans over `events`: a scan checks the columns
    its members read; a bit flipped in `auction_id` fails every query reading it, naming the file,
    and the queries that do not read it are answered exactly."""
    import pyarrow.parquet as pq

    from analytics.checks.baseline import baseline_query
    from analytics.query.results import compare_rows, read_csv_rows

    seg = Lake.open(lake_copy).state["segments"][0]
    rel = seg["files"]["impression"]
    meta = pq.read_metadata(lake_copy / rel)
    chunk = meta.row_group(0).column(meta.schema.to_arrow_schema().names.index("auction_id"))
    _flip(lake_copy / rel, lambda n: chunk.data_page_offset + chunk.total_compressed_size // 2)
    where = [{"col": "type", "op": "eq", "val": "impression"}]
    queries = [{"select": [g, {"COUNT": c}], "from": "events", "group_by": [g], "where": where}
               for g in ("country", "advertiser_id", "publisher_id") for c in ("ts", "auction_id", "user_id")]
    qfile, out = lake_copy.parent / "shared.json", lake_copy.parent / "shared-out"
    qfile.write_text(json.dumps(queries))
    assert main(["run", "--lake", str(lake_copy), "--queries", str(qfile), "--out", str(out), "--no-views",
                 "--no-cache", "--no-telemetry"]) == 1
    run = json.loads((out / "run.json").read_text())
    assert any(b.get("shared_scans") for b in run["batches"]), run["batches"]  # shared scans were tried
    for i, (raw, entry) in enumerate(zip(queries, run["queries"]), start=1):
        if raw["select"][1]["COUNT"] == "auction_id":
            assert rel in entry["error"] and not (out / f"q{i}.csv").exists(), entry
        else:
            q = parse_query(raw)
            want = to_rows(q, baseline_query(baseline, q))
            assert compare_rows(q, want, read_csv_rows(out / f"q{i}.csv")[1]) is None, entry
