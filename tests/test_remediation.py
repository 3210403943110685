"""The remediation report and `analytics remediation`: counts, accounting checks, samples, days."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from helpers import state_file

from analytics.checks.remediation import remediation_report
from analytics.cli import main
from analytics.lake.generator import generate
from analytics.lake.prepare import prepare
from analytics.lake.rules import REASONS
from analytics.lake.state import Lake

HEADER = "ts,type,auction_id,advertiser_id,publisher_id,bid_price,user_id,total_price,country\n"
# 2024-03-01 00:00:00 UTC and 2024-03-02 12:00:00 UTC in ms
T1, T2 = 1709251200000, 1709380800000

PART_A = HEADER + "".join([
    f"{T1},serve,a1,1,2,,10,,US\n",
    f"{T1 + 500},impression,a1,1,2,1.2500,10,,US\n",
    f"{T2},serve,a2,3,4,,11,,JP\n",
    ",serve,a3,1,2,,10,,US\n",                          # ts_missing
    f"{T1},bogus,a4,1,2,,10,,US\n",                      # type_invalid
    f"{T1},impression,a5,1,2,-1.5000,10,,DE\n",          # price_negative
    f"{T1},serve,a6,1,2,,10,US\n",                       # 8 fields: wrong_field_count
])
PART_B = HEADER + "".join([
    f"{T2},purchase,b1,5,6,,12,99.5000,GB\n",
    "abc,serve,b2,5,6,,12,,GB\n",                       # ts_unparseable
    f"{T2},click,b3,5,6,,12,,\n",                        # country_missing
])


@pytest.fixture(scope="module")
def hand_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("remediation_hand")
    raw = root / "raw"
    raw.mkdir()
    (raw / "events_part_00000.csv").write_text(PART_A)
    (raw / "events_part_00001.csv").write_text(PART_B)
    prepare(raw, root / "lake", progress=False)
    return root / "lake"


def test_counts_reasons_and_accounting(hand_lake: Path) -> None:
    r = remediation_report(hand_lake)
    assert (r["rows_read"], r["rows_lake"], r["rows_quarantined"]) == (10, 4, 6)
    assert r["ok"], [c for c in r["checks"] if not c["ok"]]
    assert set(r["quarantine_by_reason"]) == set(REASONS)  # zeros included, so charts show every rule
    nonzero = {k: v for k, v in r["quarantine_by_reason"].items() if v}
    assert nonzero == {"ts_missing": 1, "type_invalid": 1, "price_negative": 1, "wrong_field_count": 1,
                       "ts_unparseable": 1, "country_missing": 1}
    assert r["lake_by_type"] == {"serve": 2, "impression": 1, "click": 0, "purchase": 1}
    assert r["quarantine_by_type"] == {"(invalid)": 2, "click": 1, "impression": 1, "serve": 2}
    assert r["by_source_file"] == [
        {"source_file": "events_part_00000.csv", "rows_read": 7, "rows_lake": 3, "rows_quarantined": 4},
        {"source_file": "events_part_00001.csv", "rows_read": 3, "rows_lake": 1, "rows_quarantined": 2},
    ]
    assert [s["ok"] for s in r["segments"]] == [True, True]
    assert r["quarantined_fraction"] == pytest.approx(0.6)
    json.dumps(r)  # JSON-able as it is


def test_days_by_type(hand_lake: Path) -> None:
    days = remediation_report(hand_lake)["days_by_type"]
    assert days["serve"] == {"days": 2, "first": "2024-03-01", "last": "2024-03-02",
                             "list": ["2024-03-01", "2024-03-02"]}
    assert days["purchase"]["list"] == ["2024-03-02"]
    assert days["click"] == {"days": 0, "first": None, "last": None, "list": []}


def test_samples_show_the_offending_rows(hand_lake: Path) -> None:
    s = remediation_report(hand_lake, samples=5)["samples"]
    assert set(s) == {"ts_missing", "type_invalid", "price_negative", "wrong_field_count",
                      "ts_unparseable", "country_missing"}
    assert s["type_invalid"][0]["type"] == "bogus"
    assert s["type_invalid"][0]["auction_id"] == "a4"
    assert s["price_negative"][0]["bid_price"] == "-1.5000"
    assert s["ts_unparseable"][0]["ts"] == "abc" and s["ts_unparseable"][0]["source_file"] == "events_part_00001.csv"
    bad = s["wrong_field_count"][0]
    assert bad["raw_line"] == f"{T1},serve,a6,1,2,,10,US" and isinstance(bad["line"], int)
    files = [str(f) for f in (hand_lake / "quarantine").glob("*.parquet")]
    schema = dict(duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet({files!r})").fetchall()[i][:2] for i in range(3))
    assert schema == {"source_file": "VARCHAR", "line": "BIGINT", "reason": "VARCHAR"}
    assert remediation_report(hand_lake, samples=0)["samples"] == {r: [] for r in s}


def test_samples_are_capped_per_reason(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "p.csv").write_text(HEADER + "".join(f"{T1},bogus,x{i},1,2,,10,,US\n" for i in range(9)))
    prepare(raw, tmp_path / "lake", progress=False)
    r = remediation_report(tmp_path / "lake", samples=3)
    assert r["quarantine_by_reason"]["type_invalid"] == 9 and r["rows_lake"] == 0
    assert [x["auction_id"] for x in r["samples"]["type_invalid"]] == ["x0", "x1", "x2"]
    assert r["ok"]


def _tamper(lake: Path, edit) -> None:  # noqa: ANN001
    path = state_file(lake)
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_a_manifest_that_does_not_add_up_fails(hand_lake: Path, tmp_path: Path) -> None:
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(hand_lake, lake)

    def edit(m):  # noqa: ANN001, ANN202
        m["segments"][0]["rows_lake"] += 1
        m["totals"]["rows_lake"] += 1
    _tamper(lake, edit)
    r = remediation_report(lake)
    assert not r["ok"]
    failed = [c["check"] for c in r["checks"] if not c["ok"]]
    assert any("rows_read == rows_lake + rows_quarantined" in c and c.startswith("segment") for c in failed)
    assert any(c.startswith("total: rows_read == rows_lake") for c in failed)
    assert not r["segments"][0]["ok"] and r["segments"][1]["ok"]


def test_counts_are_checked_against_the_files(hand_lake: Path, tmp_path: Path) -> None:
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(hand_lake, lake)

    def edit(m):  # noqa: ANN001, ANN202 - self-consistent numbers that the Parquet files contradict
        seg = m["segments"][0]
        seg["lake_by_type"]["serve"] += 1
        seg["rows_lake"] += 1
        seg["rows_read"] += 1
        for key in ("rows_lake", "rows_read"):
            m["totals"][key] += 1
        m["totals"]["lake_by_type"]["serve"] += 1
    _tamper(lake, edit)
    r = remediation_report(lake)
    failed = [c for c in r["checks"] if not c["ok"]]
    serve_file = Lake.open(lake).state["segments"][0]["files"]["serve"]
    assert [c["check"].split(": ", 1)[1] for c in failed] == [f"rows in {serve_file}"]
    assert failed[0]["expected"] == 3 and failed[0]["actual"] == 2


def test_generated_dirty_data_accounts(tmp_path: Path) -> None:
    generate(tmp_path / "raw", 5000, seed=3, parts=2, dirty=0.05, progress=False)
    prepare(tmp_path / "raw", tmp_path / "lake", progress=False)
    r = remediation_report(tmp_path / "lake", samples=2)
    assert r["ok"], [c for c in r["checks"] if not c["ok"]]
    assert r["rows_read"] == 5000 == r["rows_lake"] + r["rows_quarantined"]
    assert r["rows_quarantined"] > 0 and len(r["by_source_file"]) == 2
    assert all(1 <= len(v) <= 2 for v in r["samples"].values())
    assert sum(d["days"] for d in r["days_by_type"].values()) > 300


def test_cli(hand_lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rem.json"
    assert main(["remediation", "--lake", str(hand_lake), "--json", str(out), "--samples", "1"]) == 0
    text = capsys.readouterr().out
    assert "rows read 10 = in lake 4 + quarantined 6" in text
    assert "accounting: ok" in text
    data = json.loads(out.read_text())
    assert data["ok"] and data["rows_quarantined"] == 6
    assert all(len(v) == 1 for v in data["samples"].values())


def test_cli_errors(tmp_path: Path, hand_lake: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["remediation", "--lake", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("analytics remediation: error:") and "nope" in err and "\n" not in err
    assert main(["remediation", "--lake", str(hand_lake), "--json", str(tmp_path / "no" / "dir" / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write" in err and "\n" not in err


def test_cli_exits_1_when_a_check_fails(hand_lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(hand_lake, lake)
    _tamper(lake, lambda m: m["totals"].__setitem__("rows_read", 11))
    assert main(["remediation", "--lake", str(lake)]) == 1
    assert "CHECK FAILED total: rows_read == rows_lake + rows_quarantined: expected 11, got 10" in capsys.readouterr().out


def test_raw_accounting_matches_the_files(hand_lake: Path) -> None:
    from analytics.checks.remediation import raw_accounting

    raw = hand_lake.parent / "raw"
    checks = raw_accounting(hand_lake, raw)
    assert all(c["ok"] for c in checks), checks
    lines = [c for c in checks if "data lines" in c["check"]]
    assert [(c["expected"], c["actual"]) for c in lines] == [(7, 7), (3, 3)]


def test_raw_accounting_catches_changed_missing_and_new_files(hand_lake: Path, tmp_path: Path) -> None:
    import shutil

    from analytics.checks.remediation import raw_accounting

    raw = tmp_path / "raw"
    shutil.copytree(hand_lake.parent / "raw", raw)
    with (raw / "events_part_00000.csv").open("a") as fh:
        fh.write(f"{T1},serve,zz,1,2,,10,,US\n")
    (raw / "events_part_00001.csv").unlink()
    (raw / "events_part_00002.csv").write_text(HEADER)
    failed = {c["check"]: c for c in raw_accounting(hand_lake, raw) if not c["ok"]}
    assert set(failed) == {
        "raw events_part_00000.csv: unchanged since prepare (fingerprint)",
        f"raw events_part_00001.csv: present in {raw}",
        f"raw {raw}: every *.csv part is in the lake or listed as rejected",
    }
    assert failed[f"raw {raw}: every *.csv part is in the lake or listed as rejected"]["actual"] == ["events_part_00002.csv"]
    with pytest.raises(FileNotFoundError):
        raw_accounting(hand_lake, tmp_path / "nope")


@pytest.mark.parametrize("text, expected", [
    (b"h\n1\n2\n", 2), (b"h\n1\n2", 2), (b"", 0), (b"h\n", 0), (b"h\n\n1\n\n\n2\n", 2),
    (b"h\r\n1\r\n\r\n2\r\n", 2),
])
def test_count_data_lines(tmp_path: Path, text: bytes, expected: int) -> None:
    from analytics.checks.remediation import count_data_lines

    path = tmp_path / "f.csv"
    path.write_bytes(text)
    assert [count_data_lines(path, block=b) for b in (1, 2, 3, 7, 1 << 20)] == [expected] * 5
