"""A serving copy's bytes are checked as they are first read, and only those: views built in many
small batches (1,024 rows, marks every 64 rows, 4 KiB checksum blocks) answer random queries like
the baseline; a damaged block a query reads sends it elsewhere, named; damaged blocks it does not
read change nothing; a registry without layouts still checks whole files."""
from __future__ import annotations

import datetime as dt
import gc
import os
import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from helpers import edit_json, fresh, pages_of, resident_pages, same_answer
from querygen import random_queries, user_queries

from analytics.bench.pagecache import evict
from analytics.checks.baseline import baseline_query
from analytics.core.checksum import file_record
from analytics.query.model import parse_query
from analytics.query.results import to_rows
from analytics.serving.workbench import Workbench
from analytics.views import serving_copy
from analytics.views.batch_guard import marks_of
from analytics.views.build import build
from analytics.views.registry import load_registry, registry_path

VIEWS = ["mv_day_country_advertiser_id_wide", "mv_minute_type_wide", "mv_hour_country_wide", "mv_all_adv_type_counts",
         "mv_all_user_id"]
ONE_DAY_Q = {"select": ["advertiser_id", {"SUM": "bid_price"}, {"COUNT": "*"}], "from": "events",
             "where": [{"col": "type", "op": "eq", "val": "impression"}, {"col": "country", "op": "eq", "val": "US"},
                       {"col": "day", "op": "eq", "val": "2024-06-01"}], "group_by": ["advertiser_id"]}


@pytest.fixture(scope="module")
def small_batches(lake_dir, tmp_path_factory):
    """The session lake copied, VIEWS rebuilt in small batches, marks and checksum blocks, the
    other views unregistered (so that view-shaped queries come to these)."""
    lake = tmp_path_factory.mktemp("small-batches") / "lake"
    shutil.copytree(lake_dir, lake)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serving_copy, "BATCH_ROWS", 1024)
        mp.setattr(serving_copy, "MARK_ROWS", 64)
        mp.setattr(serving_copy, "CHECK_BLOCK", 4096)
        build(lake, VIEWS, force=True, progress=False)
    edit_json(registry_path(lake), lambda reg: [reg["views"].pop(n) for n in list(reg["views"]) if n not in VIEWS])
    return fresh(lake)


def check_against_baseline(baseline, wb, raw):
    """The workbench's answer must be the baseline's (float order keys tied within 1e-9 in either
    order); returns the plan that answered."""
    q = parse_query(raw)
    table, plan = wb.execute(q)
    why = same_answer(q, to_rows(q, baseline_query(baseline, q)), to_rows(q, table))
    assert why is None, f"{plan.route}: {why}\nquery: {raw}"
    return plan


def _files(lake, name):
    entry = load_registry(lake)[name]
    vdir = (lake / entry.file).parent
    return {t: (vdir / rec["file"], rec) for t, rec in entry.serving["types"].items()}


def _checkers(wb, name):
    view = wb._arrow[wb.table_name(name)]
    return {p.guard.checker.path: p.guard.checker for ps in view.slices.values() for p in ps}


def _flip(path, at):
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_each_batch_span_and_marks_are_recorded_and_true(small_batches):
    for name in VIEWS:
        view_files = _files(small_batches, name)
        assert any(rec["batches"] > 1 for _, rec in view_files.values()), name
        for path, rec in view_files.values():
            reader = ipc.open_file(pa.memory_map(str(path)))
            assert [n for *_, n in rec["layout"]] == [reader.get_batch(i).num_rows for i in range(rec["batches"])]
            ends = [stop for _, _, stop, _ in rec["layout"]]
            assert all(a <= b <= c for a, b, c, _ in rec["layout"]) and ends == sorted(ends) < [path.stat().st_size]
            for col, per_batch in rec["marks"].items():
                for i, marks in enumerate(per_batch):  # read here with Arrow, not through the guard
                    values = reader.get_batch(i).column(col)
                    rows = sorted({*range(0, len(values), 64), len(values) - 1})
                    assert marks == marks_of(values.take(pa.array(rows)), 1)


def test_random_queries_over_many_small_batches_answer_like_the_baseline(small_batches, baseline):
    served = 0
    with Workbench(small_batches, memory_limit="1GiB") as wb:
        for raw in random_queries(300, seed=11, view_shaped=True) + user_queries(80, seed=13):
            served += check_against_baseline(baseline, wb, raw).route in VIEWS
    assert served >= 160, served


def test_a_user_point_query_checks_the_windows_its_marks_pick(small_batches, baseline):
    """A view without time keeps marks of its first dimension: a point filter on user_id searches
    one window of each type's batch that holds the user, and reads nothing of the other batches
    (not even their metadata: the marks' ends settle them). Fails when a search reads its column."""
    name = "mv_all_user_id"
    files = _files(small_batches, name)
    assert all(list(rec["marks"]) == ["user_id"] for _, rec in files.values())
    serve = files["serve"][1]["marks"]["user_id"]
    user = serve[len(serve) // 2][1]  # a user of the middle batch: batches before and after it
    q = {"select": ["type", {"COUNT": "*"}, {"AVG": "bid_price"}], "from": "events",
         "where": [{"col": "user_id", "op": "eq", "val": user}], "group_by": ["type"]}
    with Workbench(small_batches) as wb:
        assert check_against_baseline(baseline, wb, q).route == name
        for path, checker in _checkers(wb, name).items():
            rec = next(r for p, r in files.values() if p == path)
            holding = [i for i, m in enumerate(rec["marks"]["user_id"]) if m[0] <= user <= m[-1]]
            meta = sum(-(-(body - start) // checker.block) + 1 for start, body, _, _ in rec["layout"][:1])
            assert len(holding) <= 2 and int(checker.checked.sum()) <= meta + 2 + 6 * len(holding), (
                path.name, int(checker.checked.sum()), len(checker.checked))


def test_a_one_day_query_checks_a_few_blocks_of_a_large_view(small_batches, baseline):
    name = VIEWS[0]
    with Workbench(small_batches) as wb:
        assert check_against_baseline(baseline, wb, ONE_DAY_Q).route == name
        checkers = _checkers(wb, name)
        checked = sum(int(c.checked.sum()) for c in checkers.values())
        blocks = sum(len(c.checked) for c in checkers.values())
    assert 0 < checked * 20 < blocks, (checked, blocks)


def test_blocks_a_query_did_not_check_do_not_change_its_answer(small_batches, baseline):
    """Each of these queries is answered, its unchecked blocks damaged (a byte flipped in up to 30
    of them, in every file of the view), and answered again by a new workbench: like the baseline,
    from the same view unless the damage was found. A block the answer depends on but the guard
    skipped would fail here."""
    rng = random.Random(5)
    queries = [ONE_DAY_Q] + random_queries(40, seed=23, view_shaped=True)
    tried = same = 0
    for raw in queries:
        with Workbench(small_batches, memory_limit="1GiB") as wb:
            plan = check_against_baseline(baseline, wb, raw)
            if plan.route not in VIEWS or wb.table_name(plan.route) not in wb._arrow:
                continue
            unchecked = {path: np.flatnonzero(~c.checked) for path, c in _checkers(wb, plan.route).items()}
            block = next(iter(_checkers(wb, plan.route).values())).block
        flipped = []
        for path, blocks in unchecked.items():
            for b in rng.sample(list(blocks), min(30, len(blocks))):
                at = int(b) * block + rng.randrange(min(block, path.stat().st_size - int(b) * block))
                _flip(path, at)
                flipped.append((path, at))
        try:
            with Workbench(small_batches, memory_limit="1GiB") as wb:
                again = check_against_baseline(baseline, wb, raw)
                # the same view, or another route because opening it met a damaged batch's metadata
                # (parsed at open, checked whole by the structural check's failure): never silently
                assert again.route == plan.route or "damaged" in wb.health[plan.route], (raw, again.route)
                same += again.route == plan.route
        finally:
            for path, at in flipped:
                _flip(path, at)
        tried += bool(flipped)
    assert tried >= 10 and same >= tried // 2, (tried, same)


@pytest.mark.parametrize("where", ["data", "metadata", "head", "footer"])
def test_a_damaged_block_a_query_reads_sends_it_elsewhere_named(small_batches, baseline, where, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(small_batches, lake)
    name = VIEWS[0]
    path, rec = _files(lake, name)["impression"]
    with Workbench(lake) as wb:
        check_against_baseline(baseline, wb, ONE_DAY_Q)
        checker = _checkers(wb, name)[path]
        read = (np.flatnonzero(checker.checked) * checker.block).tolist()
    # a batch holding the day's rows (by its first and last day, the marks' ends), read by the query
    day = (dt.date(2024, 6, 1) - dt.date(1970, 1, 1)).days
    i = next(i for i, m in enumerate(rec["marks"]["day"]) if m[0] <= day <= m[-1])
    start, body, stop, _ = rec["layout"][i]
    at = {"data": next(a for a in read if body <= a and a + checker.block <= stop), "metadata": (start + body) // 2,
          "head": 8, "footer": rec["bytes"] - 12}[where]
    _flip(path, at)
    with Workbench(lake) as wb:
        assert check_against_baseline(baseline, wb, ONE_DAY_Q).route != name
        assert f"damaged: {path.name}" in wb.health[name], wb.health[name]


def test_a_registry_without_layouts_checks_whole_files(small_batches, baseline, tmp_path):
    """A serving copy registered before layouts (no layout or marks, 4 MiB hex checksums) answers
    exactly, and a byte damaged anywhere in a file it opens sends the query elsewhere."""
    lake = tmp_path / "lake"
    shutil.copytree(small_batches, lake)
    name = VIEWS[0]

    def older(reg: dict) -> None:
        for t, rec in reg["views"][name]["serving"]["types"].items():
            for key in ("layout", "marks", "mark_rows"):
                rec.pop(key)
            rec["checksum"] = file_record(_files(lake, name)[t][0])
    edit_json(registry_path(lake), older)
    with Workbench(lake) as wb:
        assert check_against_baseline(baseline, wb, ONE_DAY_Q).route == name
    path, rec = _files(lake, name)["impression"]
    _flip(path, rec["bytes"] // 3)  # far from the day's rows
    with Workbench(lake) as wb:
        assert check_against_baseline(baseline, wb, ONE_DAY_Q).route != name
        assert "damaged" in wb.health[name]


def test_a_time_search_checks_the_rows_it_compares(small_batches):
    """A count over three days reads no day value after the search: the rows the search compared
    on each side of each bound must still have been checked (the marks' window, `Marks.window`)."""
    raw = {"select": [{"COUNT": "*"}], "from": "events",
           "where": [{"col": "type", "op": "eq", "val": "impression"},
                     {"col": "day", "op": "between", "val": ["2024-06-01", "2024-06-03"]}]}
    bounds = [(dt.date(2024, 6, d) - dt.date(1970, 1, 1)).days for d in (1, 4)]
    with Workbench(small_batches) as wb:
        plan = wb.execute(raw)[1]
        assert plan.route in VIEWS
        compared = 0
        for piece in wb._arrow[wb.table_name(plan.route)].slices["impression"]:
            values, checker = piece.times["day"].values, piece.guard.checker
            _, offset, width = piece.guard.places["day"][-1]
            for key in bounds:
                row = int(np.searchsorted(values, key))
                if 0 < row < len(values):
                    compared += 1
                    for r in (row - 1, row):
                        assert checker.checked[(offset + r * width) // checker.block], (plan.route, key, r)
    assert compared >= 2, compared


def test_a_batch_read_has_its_metadata_checked_first(small_batches):
    """Where a batch's buffers lie comes from its IPC metadata: every batch whose guard let a read
    through has had [start, body) of its layout checked (`BatchGuard`'s first call)."""
    name = VIEWS[0]
    path, rec = _files(small_batches, name)["impression"]
    with Workbench(small_batches) as wb:
        wb.execute(ONE_DAY_Q)
        pieces = wb._arrow[wb.table_name(name)].slices["impression"]
        let_through = [i for i, p in enumerate(pieces) if p.guard.ready]
        checker = pieces[0].guard.checker
        assert 0 < len(let_through) < len(pieces)
        for i in let_through:
            start, body, _, _ = rec["layout"][i]
            assert checker.checked[start // checker.block:(body - 1) // checker.block + 1].all(), i


def test_a_disk_cold_query_reads_only_blocks_it_checks(small_batches):
    """With the view's pages dropped from the page cache, a one-day query leaves in it only the
    blocks its guard checked and the batches' metadata (asked for at open): no read-around of
    the pages it faults in, nothing read unchecked. Fails when pages are faulted in plainly (neither
    the mapping's MADV_RANDOM nor the checker's MADV_WILLNEED first: read-around brings neighbours)."""
    name = VIEWS[0]
    path, rec = _files(small_batches, name)["impression"]
    gc.collect()  # earlier tests' mappings gone and their writes (damage, undone) written back:
    os.sync()  # only a clean page no process maps can be dropped
    evict(path.parent)
    assert not resident_pages(path)
    with Workbench(small_batches) as wb:
        wb.execute(ONE_DAY_Q)
        checker = _checkers(wb, name)[path]
        allowed = set().union(*(pages_of(int(b) * checker.block, (int(b) + 1) * checker.block)
                                for b in np.flatnonzero(checker.checked)),
                              *(pages_of(start, body) for start, body, _, _ in rec["layout"]))
        resident = resident_pages(path)
    assert resident and resident <= allowed, sorted(resident - allowed)[:20]
    assert len(resident) * 8 < -(-rec["bytes"] // 4096)  # and that is a small share of the file


def test_warm_opens_every_types_files_and_names_one_that_cannot_open(small_batches, tmp_path):
    """`warm` loads views now instead of on first use: each type's files opened (a query opens only
    its types'), so a serving file that cannot open makes its view unhealthy at warm, named."""
    lake = tmp_path / "lake"
    shutil.copytree(small_batches, lake)
    name = VIEWS[0]
    path, rec = _files(lake, name)["purchase"]
    _flip(path, rec["bytes"] - 12)  # its footer: same size, so only opening the file finds it
    with Workbench(lake) as wb:
        health = wb.warm()
    assert health[name] is not None and path.name in health[name], health[name]
    assert all(health[v] is None for v in VIEWS if v != name)
