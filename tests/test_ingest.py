"""`analytics ingest`: parts from a landing directory into the lake and the views, exact at every moment.

Every expected answer is the baseline (`analytics.checks.baseline`) over the raw CSVs of one set
of parts; the dirty part is a clean generated part plus hand-written malformed lines, so the
baseline of its state reads the clean part and the lake must quarantine exactly those lines.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from querygen import random_queries

from analytics.checks.baseline import baseline_query, connect_baseline
from analytics.lake.generator import generate
from analytics.lake.state import Lake
from analytics.query.model import parse_query
from analytics.query.results import compare_rows, to_rows
from analytics.serving.router import LAKE, Router
from analytics.serving.workbench import Workbench
from analytics.views.build import compact_due
from analytics.views.catalog import CATALOG
from analytics.views.ingest import ingest
from analytics.views.registry import load_registry

MALFORMED = [
    "1731484879000,bogus,00000000-0000-0000-0000-000000000001,1,2,,3,,DE",  # not an event type
    "1,2,3",  # wrong field count
    "1731484879000,impression,00000000-0000-0000-0000-000000000002,1,2,-5.0,3,,DE",  # negative price
    "notatime,click,00000000-0000-0000-0000-000000000003,1,2,,3,,DE",  # no timestamp
]
MEASURES = [{"COUNT": "*"}, {"SUM": "bid_price"}, {"MIN": "bid_price"}, {"MAX": "total_price"}, {"AVG": "total_price"}]
FIXED = [
    {"select": ["type", *MEASURES], "from": "events", "group_by": ["type"]},
    {"select": ["type", "day", *MEASURES], "from": "events", "group_by": ["type", "day"]},
    {"select": ["country", *MEASURES], "from": "events", "group_by": ["country"]},
    {"select": ["advertiser_id", {"COUNT": "*"}, {"MAX": "bid_price"}], "from": "events", "group_by": ["advertiser_id"]},
    {"select": [{"COUNT": "*"}, {"SUM": "total_price"}], "from": "events"},
]


def put(landing: Path, src: Path, name: str) -> None:
    """A writer's way: write under a temporary name, then rename into place."""
    tmp = landing / f"{name}.tmp"
    shutil.copy(src, tmp)
    tmp.rename(landing / name)


def expected_answers(parts: list[Path], queries: list[dict], tmp: Path) -> list[list[list[str]]]:
    """The baseline's answers over exactly these CSVs."""
    raw = tmp / f"state-{len(list(tmp.glob('state-*')))}"
    raw.mkdir()
    for p in parts:
        shutil.copy(p, raw / p.name.split("@")[0])
    con = connect_baseline(raw, materialize=True)
    try:
        return [to_rows(q, baseline_query(con, q)) for q in map(parse_query, queries)]
    finally:
        con.close()


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four clean parts, a replacement for part 1 (another content, same name) and a dirty part 3."""
    out = tmp_path_factory.mktemp("parts")
    generate(out / "gen", 48_000, seed=31, parts=4, progress=False)
    generate(out / "other", 9_000, seed=32, parts=1, progress=False)
    src = {f"p{i}": out / "gen" / f"events_part_0000{i}.csv" for i in range(4)}
    src["p1b"] = out / "other" / "events_part_00000.csv"
    dirty = out / "dirty.csv"
    dirty.write_text(src["p3"].read_text() + "\n".join(MALFORMED) + "\n")
    src["p3dirty"] = dirty
    return src


def name_of(key: str) -> str:
    return {"p1b": "events_part_00001.csv", "p3dirty": "events_part_00003.csv"}.get(key, f"events_part_0000{key[1]}.csv")


def with_name(parts: dict[str, Path], keys: list[str], clean: bool, tmp: Path) -> list[Path]:
    """The CSVs of a state, named as in the landing directory (the dirty part's clean original if `clean`)."""
    out = []
    for k in keys:
        src = parts["p3"] if (clean and k == "p3dirty") else parts[k]
        dst = tmp / "named" / f"{name_of(k)}@{k}"
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(src, dst)
        out.append(dst)
    return out


def matches(q: dict, got: list[list[str]], expected: list[list[list[str]]]) -> bool:
    pq = parse_query(q)
    return any(compare_rows(pq, e, got) is None for e in expected)


def wait_caught_up(lake: Path, landing: Path, timeout: float = 120) -> None:
    """Until the manifest holds exactly the landing's parts (names and sizes) and every view covers
    that lake version."""
    deadline = time.monotonic() + timeout
    # by name and size: a replaced part keeps its name (the sizes of the test's parts all differ)
    want = sorted((p.name, p.stat().st_size) for p in landing.glob("*.csv"))
    while time.monotonic() < deadline:
        try:
            lake_ = Lake.open(lake)
            reg = load_registry(lake)
            have = sorted((s["source"]["file"], s["source"]["size"]) for s in lake_.state["segments"])
            if have == want and len(reg) == len(CATALOG) and all(
                    e.lake_version == lake_.version for e in reg.values()):
                return
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"ingest did not catch up with {want}")


def test_a_stream_of_parts_while_four_threads_query(parts, tmp_path):
    """Appended, dirty, replaced and deleted parts ingested by a watcher while 4 threads query one
    Workbench: every answer equals the baseline over one committed set of parts, with no error."""
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    steps = [("put", "p0"), ("put", "p1"), ("put", "p2"), ("put", "p3dirty"), ("put", "p1b"), ("del", "p0")]
    states, keys = [], []
    for action, key in steps:
        if action == "put":
            keys = [k for k in keys if name_of(k) != name_of(key)] + [key]
        else:
            keys = [k for k in keys if k != key]
        states.append(list(keys))
    queries = FIXED + random_queries(30, seed=5, view_shaped=True)
    expected = [[] for _ in queries]
    for keys in states:
        for i, rows in enumerate(expected_answers(with_name(parts, keys, True, tmp_path), queries, tmp_path)):
            expected[i].append(rows)

    put(landing, parts["p0"], name_of("p0"))
    ingest(landing, lake, settle=0)  # the first state, so the Workbench has a lake to open
    stop, watcher_stop = threading.Event(), threading.Event()
    watcher = threading.Thread(target=ingest, args=(landing, lake), daemon=True,
                               kwargs={"watch": True, "interval": 0.05, "settle": 0, "jobs": 1, "stop": watcher_stop})
    watcher.start()
    answers: list[tuple[int, list[list[str]], str]] = []
    errors: list[str] = []
    wb = Workbench(lake)

    def client(seed: int) -> None:
        i = seed
        while not stop.is_set():
            idx = i % len(queries)
            i += 7
            q = parse_query(queries[idx])
            try:
                table, plan = wb.execute(q)
                answers.append((idx, to_rows(q, table), plan.route))
            except Exception as exc:  # noqa: BLE001 - every error is a failure of the test
                errors.append(f"{type(exc).__name__}: {exc}")

    clients = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for c in clients:
        c.start()
    at_rest: list[tuple[int, str | None, str]] = []  # (state, why it differs, route) once caught up
    try:
        for n, (action, key) in enumerate(steps[1:], start=1):
            if action == "put":
                put(landing, parts[key], name_of(key))
            else:
                (landing / name_of(key)).unlink()
            wait_caught_up(lake, landing)
            for idx, raw in enumerate(queries):  # every query against the caught-up state, among the clients'
                q = parse_query(raw)
                table, plan = wb.execute(q)
                reason = compare_rows(q, expected[idx][n], to_rows(q, table))
                at_rest.append((n, reason, plan.route))
    finally:
        stop.set()
        watcher_stop.set()
        for c in clients:
            c.join()
        watcher.join(timeout=120)
    assert not errors, errors[:3]
    assert [(n, why) for n, why, _ in at_rest if why is not None] == []
    # the views served every caught-up state (a count of events, not of answers in a time window)
    assert all(sum(route != LAKE for s, _, route in at_rest if s == n) >= 10 for n in range(1, len(steps)))
    # the clients' answers during the stream, each equal to the baseline over one committed state
    # (a sample of at most 400, evenly spread: each check compares with every state)
    sample = answers[::max(1, len(answers) // 400)]
    wrong = [(queries[i], route) for i, rows, route in sample if not matches(queries[i], rows, expected[i])]
    assert not wrong, (len(wrong), wrong[:2])

    # the end state: the dirty part's malformed lines quarantined with reasons, the rest in the lake
    seg = next(s for s in Lake.open(lake).state["segments"] if s["source"]["file"] == name_of("p3dirty"))
    assert seg["rows_quarantined"] == len(MALFORMED) and len(seg["quarantine_by_reason"]) >= 3
    final = expected_answers(with_name(parts, states[-1], True, tmp_path), queries, tmp_path)
    wb.refresh()
    assert all(why is None for why in wb.health.values()), wb.health
    for q, rows in zip(queries, final):
        table, plan = wb.execute(parse_query(q))
        assert compare_rows(parse_query(q), rows, to_rows(parse_query(q), table)) is None, (plan.route, q)
    wb.close()


def test_views_with_pending_deltas_equal_the_baseline(parts, tmp_path):
    """Random view-shaped queries (with boundary rows) over views holding deltas, by the fast path
    and by SQL, then compacted: all equal the baseline over the committed parts."""
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    for key in ("p0", "p1", "p2", "p3"):
        put(landing, parts[key], name_of(key))
        ingest(landing, lake, settle=0)
    reg = load_registry(lake)
    assert all(len(e.deltas) == 3 for e in reg.values()), {n: len(e.deltas) for n, e in reg.items()}
    queries = FIXED + random_queries(260, seed=17, view_shaped=True)
    expected = expected_answers(with_name(parts, ["p0", "p1", "p2", "p3"], True, tmp_path), queries, tmp_path)

    def check_all(wb: Workbench) -> int:
        from_views = 0
        for q, rows in zip(queries, expected):
            pq = parse_query(q)
            table, plan = wb.execute(pq)
            assert compare_rows(pq, rows, to_rows(pq, table)) is None, (plan.route, q)
            from_views += plan.route != LAKE
        return from_views

    with Workbench(lake) as fast, Workbench(lake, fast_path=False) as sql:
        assert check_all(fast) >= 150
        assert check_all(sql) >= 150
        for view in CATALOG:  # each view alone, with its deltas, per type and day
            for raw in FIXED[:2]:
                q = parse_query(raw)
                plan = Router((view,)).plan(q, fast.registry, fast.health, {view.name: fast.table_name(view.name)})
                if plan.route == LAKE:
                    continue
                table, _ = fast.execute(q, plan=plan)
                assert compare_rows(q, expected[FIXED.index(raw)], to_rows(q, table)) is None, view.name
    assert sorted(compact_due(lake, at=1)) == sorted(v.name for v in CATALOG)
    assert all(e.deltas == [] and e.mode == "compacted" for e in load_registry(lake).values())
    with Workbench(lake) as wb:
        assert check_all(wb) >= 150


def test_a_header_that_is_not_this_data_sets_is_refused_and_the_others_go_on(parts, tmp_path, caplog):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    put(landing, parts["p0"], name_of("p0"))
    (landing / "alien.csv").write_text("a,b,c\n1,2,3\n")
    (landing / "half.csv.tmp").write_text("ts,type\n17")  # a part still being written: never read
    put(landing, parts["p2"], name_of("p2"))
    counts = ingest(landing, lake, settle=0)
    assert counts["refused"] == ["alien.csv"] and counts["taken"] == 2
    assert any("alien.csv refused" in r.getMessage() and "header" in r.getMessage() for r in caplog.records)
    have = sorted(s["source"]["file"] for s in Lake.open(lake).state["segments"])
    assert have == [name_of("p0"), name_of("p2")]
    q = parse_query(FIXED[0])
    exp = expected_answers(with_name(parts, ["p0", "p2"], True, tmp_path), [FIXED[0]], tmp_path)[0]
    with Workbench(lake) as wb:
        table, plan = wb.execute(q)
        assert plan.route != LAKE and compare_rows(q, exp, to_rows(q, table)) is None


def test_a_part_still_settling_is_not_read(parts, tmp_path):
    """With a settle time, a part seen for the first time waits; unchanged for the settle time, it is taken."""
    from analytics.lake.landing import Landing

    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copy(parts["p0"], landing / name_of("p0"))
    scan = Landing(landing, tmp_path / "lake", settle=5)
    assert scan.scan(now=100.0) == ([], 1)
    with (landing / name_of("p0")).open("a") as fh:  # the writer is still appending
        fh.write(parts["p1"].read_text().split("\n", 2)[1] + "\n")
    assert scan.scan(now=104.0) == ([], 1)
    assert scan.scan(now=108.0) == ([], 1)  # changed at 104: settles at 109
    changes, settling = scan.scan(now=109.5)
    assert [c.name for c in changes] == [name_of("p0")] and settling == 0


def test_ctrl_c_stops_the_watcher_between_steps(parts, tmp_path):
    """SIGINT while a part is being ingested: the step ends (the lake and every view at one version),
    the command exits 130, and a rerun finishes with each part counted once."""
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    put(landing, parts["p0"], name_of("p0"))
    proc = subprocess.Popen([sys.executable, "-m", "analytics", "ingest", "--raw", str(landing), "--lake", str(lake),
                             "--watch", "--interval", "0.05", "--settle", "0", "--jobs", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_caught_up(lake, landing)
        put(landing, parts["p1"], name_of("p1"))
        deadline = time.monotonic() + 60
        while name_of("p1") not in {s["source"]["file"] for s in Lake.open(lake).state["segments"]}:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)  # the manifest has the part; its view refresh is under way
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "stopping after the current step" in err
    version = Lake.open(lake).version
    assert all(e.lake_version == version for e in load_registry(lake).values())  # the step finished
    ingest(landing, lake, settle=0)
    q = parse_query(FIXED[0])
    exp = expected_answers(with_name(parts, ["p0", "p1"], True, tmp_path), [FIXED[0]], tmp_path)[0]
    with Workbench(lake) as wb:
        table, plan = wb.execute(q)
        assert plan.route != LAKE and compare_rows(q, exp, to_rows(q, table)) is None


def test_the_watcher_compacts_in_the_background_and_stays_exact(parts, tmp_path, monkeypatch):
    monkeypatch.setattr("analytics.views.ingest.COMPACT_AT", 2)
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    for key in ("p0", "p1", "p2", "p3"):
        put(landing, parts[key], name_of(key))
    counts = ingest(landing, lake, settle=0)
    assert counts["taken"] == 4 and counts["compacted"], counts
    reg = load_registry(lake)
    for name in counts["compacted"]:  # a new base (later parts may have added deltas to it since)
        assert reg[name].file != f"views/{name}/v1.parquet" and len(reg[name].deltas) < 3, reg[name]
    queries = FIXED + random_queries(60, seed=29, view_shaped=True)
    expected = expected_answers(with_name(parts, ["p0", "p1", "p2", "p3"], True, tmp_path), queries, tmp_path)
    with Workbench(lake) as wb:
        for q, rows in zip(queries, expected):
            pq = parse_query(q)
            table, plan = wb.execute(pq)
            assert compare_rows(pq, rows, to_rows(pq, table)) is None, (plan.route, q)
