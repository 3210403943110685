"""The synthetic raw data: exact format, real shape, funnel invariants, boundaries, parts, dirt.

Files are read back with DuckDB and the csv module, never with the generator's own code.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import re
from pathlib import Path

import duckdb
import pytest

from analytics.lake.generator import generate
from analytics.lake.rules import RAW_CSV_COLUMNS
from analytics.query.schema import COUNTRIES, EVENT_TYPES, N_ADVERTISERS, N_PUBLISHERS, N_USERS, RAW_HEADER

HEADER_LINE = "ts,type,auction_id,advertiser_id,publisher_id,bid_price,user_id,total_price,country"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def ms(text: str) -> int:
    stamp = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
    return int(stamp.timestamp()) * 1000 + stamp.microsecond // 1000


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def data_lines(directory: Path) -> list[list[str]]:
    rows = []
    for path in sorted(directory.glob("events_part_*.csv")):
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            assert next(reader) == list(RAW_HEADER)
            rows.extend(reader)
    return rows


def events(directory: Path) -> duckdb.DuckDBPyConnection:
    """A connection with `raw` (every field as text, plus its file) over the parts in `directory`."""
    con = duckdb.connect()
    # the raw columns of `lake.rules`, but no quoting: the generator never quotes, so a field is its bytes
    con.execute(f"""
        CREATE VIEW raw AS SELECT * FROM read_csv('{directory}/events_part_*.csv', header = true,
            auto_detect = false, columns = {RAW_CSV_COLUMNS}, filename = true, quote = '', escape = '')
    """)
    return con


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gen200k")
    return out, generate(out, 200_000, seed=7, progress=False)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, 30_000, seed=seed, parts=2, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    other = digest(tmp_path / "c")
    assert other.keys() == digest(tmp_path / "a").keys()
    assert all(other[k] != v for k, v in digest(tmp_path / "a").items())


@pytest.mark.parametrize(("rows", "parts"), [(0, None), (1, None), (2, None), (999, None), (1000, None),
                                             (12_345, None), (10_001, 3), (5, 4)])
def test_exact_row_count_and_header(tmp_path: Path, rows: int, parts: int | None) -> None:
    summary = generate(tmp_path, rows, seed=1, parts=parts, progress=False)
    files = sorted(tmp_path.glob("events_part_*.csv"))
    assert [p.name for p in files] == [f"events_part_{k:05d}.csv" for k in range(parts or 1)]
    assert summary["files"] == [str(p) for p in files]
    for path in files:
        assert path.read_text().split("\n", 1)[0] == HEADER_LINE
    assert len(data_lines(tmp_path)) == rows == summary["rows"]
    assert sum(summary["rows_per_type"].values()) == rows
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_default_parts_one_per_five_million(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = generate(tmp_path, 0, progress=False)
    assert summary["parts"] == 1
    from analytics.lake import generator
    monkeypatch.setattr(generator, "PART_ROWS", 1_000)
    assert generate(tmp_path, 2_001, progress=False)["parts"] == 3


def test_summary(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    con = events(out)
    counts = dict(con.execute("SELECT type, count(*) FROM raw GROUP BY type").fetchall())
    assert summary["rows_per_type"] == {t: counts.get(t, 0) for t in EVENT_TYPES}
    assert summary["rows"] == 200_000 and summary["parts"] == 1 and summary["dirty_rows"] == 0
    assert summary["seconds"] > 0 and summary["rows_per_second"] > 0


def test_type_proportions(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    counts = dict(events(out).execute("SELECT type, count(*) FROM raw GROUP BY type").fetchall())
    assert set(counts) == set(EVENT_TYPES)
    real = {"serve": 160_644_823, "impression": 80_316_988, "click": 4_018_078, "purchase": 20_111}
    for t, tolerance in (("serve", 0.005), ("impression", 0.005), ("click", 0.001)):
        assert counts[t] / 200_000 == pytest.approx(real[t] / 245_000_000, abs=tolerance), t
    assert 3 <= counts["purchase"] <= 40  # ~16 expected


def test_field_formats_and_domains(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    con = events(out)
    bad = con.execute(f"""
        SELECT count(*) FILTER (NOT regexp_full_match(ts, '[0-9]{{13}}')),
               count(*) FILTER (NOT regexp_full_match(auction_id, '{UUID4.pattern}')),
               count(*) FILTER (CAST(advertiser_id AS INTEGER) NOT BETWEEN 1 AND {N_ADVERTISERS}),
               count(*) FILTER (CAST(publisher_id AS INTEGER) NOT BETWEEN 1 AND {N_PUBLISHERS}),
               count(*) FILTER (CAST(user_id AS INTEGER) NOT BETWEEN 1 AND {N_USERS}),
               count(*) FILTER (country NOT IN ({", ".join(f"'{c}'" for c in COUNTRIES)})),
               count(*) FILTER ((type = 'impression') != (bid_price IS NOT NULL)),
               count(*) FILTER (NOT regexp_full_match(bid_price, '[0-9]+\\.[0-9]{{4}}')),
               count(*) FILTER ((type = 'purchase') != (total_price IS NOT NULL)),
               count(*) FILTER (NOT regexp_full_match(total_price, '[0-9]+\\.[0-9]{{2}}([0-9]{{2}})?'))
        FROM raw
    """).fetchone()
    assert bad == (0,) * 10
    bid_mean, bid_min, total_mean, distinct_countries, distinct_adv = con.execute("""
        SELECT avg(CAST(bid_price AS DOUBLE)), min(CAST(bid_price AS DOUBLE)),
               avg(CAST(total_price AS DOUBLE)), count(DISTINCT country), count(DISTINCT advertiser_id)
        FROM raw
    """).fetchone()
    assert bid_mean == pytest.approx(3.24, abs=0.1) and bid_min >= 0
    assert 35 < total_mean < 100  # ~64, from only a handful of purchases
    assert distinct_countries == len(COUNTRIES) and distinct_adv > N_ADVERTISERS * 0.95


def test_funnels_consistent(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    con = events(out)
    stats = con.execute("""
        WITH e AS (SELECT *, CAST(ts AS BIGINT) AS t FROM raw)
        SELECT count(*) FILTER (type = 'serve' AND t % 1000 != 0),
               (SELECT count(*) FROM (SELECT auction_id FROM e WHERE type = 'serve'
                                       GROUP BY auction_id HAVING count(*) > 1)),
               (SELECT count(*) FROM (SELECT auction_id, type FROM e GROUP BY ALL HAVING count(*) > 1))
        FROM e
    """).fetchone()
    assert stats == (0, 0, 0)  # serves on whole seconds; one row per type and auction
    orphans = con.execute("""
        WITH e AS (SELECT *, CAST(ts AS BIGINT) AS t FROM raw),
             s AS (SELECT * FROM e WHERE type = 'serve')
        SELECT count(*) FROM e LEFT JOIN s USING (auction_id)
        WHERE e.type != 'serve' AND (s.t IS NULL OR s.t >= e.t OR s.advertiser_id != e.advertiser_id
              OR s.publisher_id != e.publisher_id OR s.user_id != e.user_id OR s.country != e.country)
    """).fetchone()[0]
    assert orphans == 0
    # Each later stage follows the previous one: impression 0.3-3 s after its serve, click
    # after its impression, purchase after its click.
    steps = con.execute("""
        WITH e AS (SELECT auction_id, type, CAST(ts AS BIGINT) AS t FROM raw),
             p AS (PIVOT e ON type IN ('serve', 'impression', 'click', 'purchase') USING first(t)
                   GROUP BY auction_id)
        SELECT count(*) FILTER (impression IS NOT NULL AND impression - serve NOT BETWEEN 300 AND 3000),
               count(*) FILTER (click IS NOT NULL AND (impression IS NULL OR click <= impression)),
               count(*) FILTER (purchase IS NOT NULL AND (click IS NULL OR purchase <= click)),
               count(*) FILTER (click IS NOT NULL)
        FROM p
    """).fetchone()
    assert steps[:3] == (0, 0, 0) and steps[3] > 0


def test_time_range(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    first_serve, last_bulk_serve, serves_on_dec_31, last_event = events(out).execute(f"""
        WITH e AS (SELECT type, CAST(ts AS BIGINT) AS t FROM raw)
        SELECT min(t) FILTER (type = 'serve'),
               max(t) FILTER (type = 'serve' AND t < {ms("2024-12-31 00:00:00")}),
               count(*) FILTER (type = 'serve' AND t >= {ms("2024-12-31 00:00:00")}),
               max(t)
        FROM e
    """).fetchone()
    assert first_serve == ms("2024-01-01 00:00:00")
    assert ms("2024-12-30 00:00:00") <= last_bulk_serve < ms("2024-12-31 00:00:00")
    assert serves_on_dec_31 == 1  # the year-end boundary funnel only
    assert last_event == ms("2024-12-31 23:59:59.999")


def test_boundary_rows_present(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    found = set(events(out).execute("SELECT type, CAST(ts AS BIGINT) FROM raw").fetchall())
    midnights = ("2024-01-01", "2024-01-08", "2024-02-29", "2024-03-01", "2024-07-01", "2024-09-30",
                 "2024-12-30")
    for day in midnights:
        assert ("serve", ms(f"{day} 00:00:00")) in found, day
    # Last millisecond of a day, Sundays (week ends) among them, and of the year.
    for day in ("2024-01-07", "2024-02-28", "2024-02-29", "2024-06-30", "2024-09-29", "2024-12-29",
                "2024-12-31"):
        assert ("impression", ms(f"{day} 23:59:59.999")) in found, day
    leap_day = {t for t, ts in found if ms("2024-02-29 00:00:00") <= ts < ms("2024-03-01 00:00:00")}
    assert leap_day == set(EVENT_TYPES)


def test_no_boundary_rows_below_1000_rows(tmp_path: Path) -> None:
    generate(tmp_path, 999, seed=2, progress=False)
    stamps = [int(r[0]) for r in data_lines(tmp_path)]
    assert ms("2024-12-31 23:59:59.999") not in stamps and ms("2024-01-01 00:00:00") not in stamps


def test_parts_are_chronological(tmp_path: Path) -> None:
    generate(tmp_path, 40_000, seed=5, parts=4, progress=False)
    spans = events(tmp_path).execute("""
        SELECT parse_filename(filename), count(*),
               min(CAST(ts AS BIGINT)) FILTER (type = 'serve'), max(CAST(ts AS BIGINT)) FILTER (type = 'serve')
        FROM raw GROUP BY ALL ORDER BY 1
    """).fetchall()
    assert [s[0] for s in spans] == [f"events_part_{k:05d}.csv" for k in range(4)]
    start, quarter = ms("2024-01-01 00:00:00"), 365 * 86_400_000 // 4
    for k, (_, n, lo, hi) in enumerate(spans):
        assert n == 10_000
        assert start + k * quarter <= lo
        assert hi < start + (k + 1) * quarter or k == 3  # the last part also holds the year-end serve


def test_rows_shuffled_within_part(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    lines = data_lines(out)
    first_types = {r[1] for r in lines[:100]}
    stamps = [int(r[0]) for r in lines[:1000]]
    assert len(first_types) >= 2 and stamps != sorted(stamps)


def test_stale_parts_removed(tmp_path: Path) -> None:
    generate(tmp_path, 3_000, parts=3, progress=False)
    (tmp_path / "other.txt").write_text("kept")
    generate(tmp_path, 3_000, parts=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events_part_00000.csv", "other.txt"]


DIRTY_CHECKS = {
    "ts_missing": lambda r: len(r) == 9 and r[0] == "",
    "ts_unparseable": lambda r: len(r) == 9 and r[0] == "abc",
    "type_invalid": lambda r: len(r) == 9 and r[1] == "bogus",
    "auction_id_missing": lambda r: len(r) == 9 and r[2] == "",
    "advertiser_id_missing": lambda r: len(r) == 9 and r[3] == "",
    "publisher_id_missing": lambda r: len(r) == 9 and r[4] == "",
    "country_missing": lambda r: len(r) == 9 and r[8] == "",
    "bid_price_negative": lambda r: len(r) == 9 and r[1] == "impression" and float(r[5]) < 0,
    "fields_8": lambda r: len(r) == 8,
    "fields_10": lambda r: len(r) == 10,
}


def test_dirty_rows(tmp_path: Path) -> None:
    summary = generate(tmp_path / "dirty", 20_000, seed=9, dirty=0.01, progress=False)
    lines = data_lines(tmp_path / "dirty")
    assert len(lines) == 20_000 and summary["dirty_rows"] == 200
    assert sum(summary["rows_per_type"].values()) == 20_000 - 200
    found = {kind: sum(map(check, lines)) for kind, check in DIRTY_CHECKS.items()}
    assert all(n > 0 for n in found.values()), found
    assert sum(found.values()) == 200
    # The rows a dirty run keeps are exactly rows of the clean run.
    generate(tmp_path / "clean", 20_000, seed=9, progress=False)
    clean_lines = data_lines(tmp_path / "clean")
    assert not any(check(r) for r in clean_lines for check in DIRTY_CHECKS.values())
    kept = [r for r in lines if not any(check(r) for check in DIRTY_CHECKS.values())]
    assert len(kept) == 19_800 and set(map(tuple, kept)) <= set(map(tuple, clean_lines))


def test_dirty_rows_spare_boundary_rows(tmp_path: Path) -> None:
    generate(tmp_path, 1_000, seed=3, dirty=0.5, progress=False)
    stamps = {r[0] for r in data_lines(tmp_path)}
    assert str(ms("2024-12-31 23:59:59.999")) in stamps and str(ms("2024-02-29 00:00:00")) in stamps


@pytest.mark.parametrize("kwargs", [{"rows": -1}, {"rows": 10, "parts": 0}, {"rows": 10, "dirty": 1.5}])
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, progress=False, **kwargs)
