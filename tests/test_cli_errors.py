"""Every `analytics` subcommand over a corpus of bad inputs: never a traceback, always the documented
exit code, and for bad input one line on stderr naming what is wrong.

The corpus is generated here (bad paths, directories where files go and the reverse, empty and
blank files, non-UTF-8 and UTF-16 text, JSON nested 100,000 deep, numbers of 5,000 digits, a
`limit` of 10^30, wrong types, unknown columns and aggregates, bad sizes, negative and huge
counts, damaged lakes and raw parts). Each case runs through the command line's `main` in this
process, and a few as a new process too, as an analyst runs them.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from analytics.cli import EXIT_BAD_INPUT, EXIT_CODES, EXIT_FAILED, build_parser, main

BAD, FAILED = EXIT_BAD_INPUT, EXIT_FAILED
COUNT = {"select": [{"COUNT": "*"}], "from": "events"}

# name -> bytes of a query file
QUERY_FILES: dict[str, bytes] = {
    "empty.json": b"",
    "blank.json": b"  \n\t\n",
    "latin1.json": '[{"select": ["country"], "where": [{"col": "country", "op": "eq", "val": "Fran\xe7a"}]}]'.encode("latin-1"),
    "utf16.json": json.dumps([COUNT]).encode("utf-16"),
    "deep_list.json": b"[" * 100_000,
    "deep_object.json": b'{"a": ' * 100_000,
    "bignumber.json": b"[" + b"9" * 5000 + b"]",
    "truncated.json": b'[{"select": [',
    "string.json": b'"SELECT * FROM events"',
    "number.json": b"42",
    "null.json": b"null",
    "emptylist.json": b"[]",
    # valid JSON, bad queries: answered per query (exit 1), the other queries still run
    "hugelimit.json": json.dumps([{**COUNT, "limit": 10**30}, COUNT]).encode(),
    "unknown.json": json.dumps([{"select": ["nope"]}, {"select": [{"MEDIAN": "bid_price"}]}, COUNT]).encode(),
    "wrongtypes.json": json.dumps([{"select": "day"}, {**COUNT, "where": {"col": "day"}}, {**COUNT, "limit": "10"},
                                   {**COUNT, "where": [{"col": "user_id", "op": "eq", "val": [[[1]]]}]},
                                   {**COUNT, "group_by": [7]}, 17, None, [COUNT]]).encode(),
    "badvalues.json": json.dumps([{**COUNT, "where": [{"col": "day", "op": "eq", "val": "2024-02-30"}]},
                                  {**COUNT, "where": [{"col": "user_id", "op": "eq", "val": 10**30}]},
                                  {**COUNT, "where": [{"col": "day", "op": "between", "val": ["5877642-06-25 (BC)",
                                                                                            "2024-01-01"]}]},
                                  {**COUNT, "limit": -3}]).encode(),
    "nan.json": b'[{"select": [{"COUNT": "*"}], "where": [{"col": "bid_price", "op": "eq", "val": NaN}]}]',
    "biginlist.json": json.dumps([{**COUNT, "where": [{"col": "user_id", "op": "in",
                                                       "val": list(range(1_000_001))}]}]).encode(),
}

# (args, exit code, text that must be in the output: stderr for BAD, stdout for FAILED)
# {C}: the corpus, {L}: a built lake, {R}: its raw parts, {O}: a fresh output directory
RUN = "run --no-telemetry --no-cache --lake {L} --out {O}/r --queries"
CASES: list[tuple[str, int, str]] = [
    # generate
    ("generate --out {C}/afile.txt --rows 10", BAD, "afile.txt exists and is not a directory"),
    ("generate --out {O}/g --rows -5", BAD, "--rows"),
    ("generate --out {O}/g --rows 0", BAD, "--rows"),
    ("generate --out {O}/g --rows lots", BAD, "'lots'"),
    ("generate --out {O}/g --rows 1e400", BAD, "--rows"),
    ("generate --out {O}/g --rows " + "9" * 50, BAD, "--rows"),
    ("generate --out {O}/g --rows 10 --dirty 2", BAD, "--dirty"),
    ("generate --out {O}/g --rows 10 --dirty nan", BAD, "--dirty"),
    ("generate --out {O}/g --rows 10 --dirty -0.5", BAD, "--dirty"),
    ("generate --out {O}/g --rows 10 --seed -1", BAD, "--seed"),
    ("generate --out {O}/g --rows 10 --seed " + "9" * 30, BAD, "--seed"),
    ("generate --out {O}/g --rows 10 --parts 0", BAD, "--parts"),
    ("generate --out {O}/g --rows 10 --parts -3", BAD, "--parts"),
    # prepare
    ("prepare --raw {C}/nope --lake {O}/l", BAD, "nope"),
    ("prepare --raw {C}/afile.txt --lake {O}/l", BAD, "afile.txt"),
    ("prepare --raw {C}/emptydir --lake {O}/l", BAD, "emptydir"),
    ("prepare --raw {R} --lake {C}/afile.txt", BAD, "afile.txt"),
    ("prepare --raw {R} --lake {C}/badlake", BAD, "badlake is damaged"),
    ("prepare --raw {R} --lake {C}/listlake", BAD, "listlake is damaged"),
    ("prepare --raw {R} --lake {O}/l --memory-limit lots", BAD, "--memory-limit"),
    ("prepare --raw {R} --lake {O}/l --memory-limit 0MB", BAD, "--memory-limit"),
    ("prepare --raw {R} --lake {O}/l --memory-limit -1GB", BAD, "--memory-limit"),
    # build
    ("ingest --raw {C}/nope --lake {O}/l", BAD, "nope does not exist"),
    ("ingest --raw {C}/afile.txt --lake {O}/l", BAD, "afile.txt"),
    ("ingest --raw {R} --lake {C}/afile.txt", BAD, "afile.txt exists and is not a directory"),
    ("ingest --raw {R} --lake {C}/badlake", BAD, "badlake is damaged"),
    ("ingest --raw {R} --lake {O}/l --interval -1", BAD, "--interval"),
    ("ingest --raw {R} --lake {O}/l --settle lots", BAD, "--settle"),
    ("ingest --raw {C}/alienland --lake {O}/l --settle 0", FAILED, "refused 1 (alien.csv)"),
    ("build --lake {C}/nope", BAD, "nope is not a prepared lake"),
    ("build --lake {C}/emptydir", BAD, "emptydir is not a prepared lake"),
    ("build --lake {C}/afile.txt", BAD, "afile.txt is not a prepared lake"),
    ("build --lake {C}/badlake", BAD, "badlake is damaged"),
    ("build --lake {C}/listlake", BAD, "listlake is damaged"),
    ("build --lake {L} --views nope", BAD, "unknown view(s) nope"),
    ("build --lake {L} --jobs -1", BAD, "--jobs"),
    ("build --lake {L} --jobs " + "9" * 12, BAD, "--jobs"),
    ("build --lake {L} --memory-limit 5XB", BAD, "--memory-limit"),
    ("build --lake {L} --memory-limit 200MB --jobs 2", BAD, "--memory-limit: memory limit 200MB is too small: 2 job(s) need at least"),
    ("build --lake {L} --adaptive --views mv_day_type_wide", BAD, "--adaptive builds what the telemetry advises"),
    ("build --lake {L} --adaptive --budget lots", BAD, "--budget"),
    ("build --lake {L} --adaptive --retire-after soon", BAD, "--retire-after"),
    # advise
    ("advise --lake {C}/nope", BAD, "nope is not a prepared lake"),
    ("advise --lake {C}/badlake", BAD, "badlake is damaged"),
    ("advise --lake {L} --budget -1GB", BAD, "--budget"),
    ("advise --lake {L} --budget 0", BAD, "--budget"),
    ("advise --lake {L} --budget 900TiB", BAD, "free on the disk"),
    ("build --lake {L} --adaptive --budget 0", BAD, "--budget"),
    ("advise --lake {L} --budget " + "9" * 50, BAD, "--budget"),
    ("advise --lake {L} --retire-after -3d", BAD, "--retire-after"),
    # run: query files that cannot be read
    *[(f"{RUN} {{C}}/{name}", BAD, f"{name}' {why}") for name, why in (
        ("empty.json", "is not valid JSON: Expecting value: line 1 column 1"),
        ("blank.json", "is not valid JSON: Expecting value: line 3 column 1"),
        ("latin1.json", "is not UTF-8 text: byte 0xe7 at line 1 column 79"),
        ("utf16.json", "is not UTF-8 text: byte 0xff at line 1 column 1"),
        ("deep_list.json", "nests JSON deeper than 100 levels at line 1 column 101"),
        ("deep_object.json", "nests JSON deeper than 100 levels at line 1 column 601"),
        ("bignumber.json", "holds a number with more than 4300 digits at line 1 column 2"),
        ("truncated.json", "is not valid JSON: Expecting value: line 1 column 14"),
        ("string.json", "must hold a JSON list of queries, got str"),
        ("number.json", "must hold a JSON list of queries, got int"),
        ("null.json", "must hold a JSON list of queries, got NoneType"),
        ("emptylist.json", "holds no queries"))],
    (f"{RUN} {{C}}/adir", BAD, "adir' is a directory"),
    (f"{RUN} {{C}}/nope.json", BAD, "nope.json' does not exist"),
    # run: readable files, bad queries (each one an error, the rest answered)
    (f"{RUN} {{C}}/hugelimit.json", FAILED, "limit: must be a positive integer no larger than 9223372036854775807"),
    (f"{RUN} {{C}}/unknown.json", FAILED, "unknown aggregate 'MEDIAN'"),
    (f"{RUN} {{C}}/wrongtypes.json", FAILED, "group_by[0]: unknown column 7"),
    (f"{RUN} {{C}}/badvalues.json", FAILED, "out of range for DATE"),
    (f"{RUN} {{C}}/nan.json", FAILED, "NaN is not a value"),
    (f"{RUN} {{C}}/biginlist.json", FAILED, "holds 1,000,001 values; a query may hold at most 1,000,000"),
    # run: bad places and options
    ("run --lake {C}/nope --queries {C}/unknown.json --out {O}/r", BAD, "nope is not a prepared lake"),
    ("run --lake {C}/afile.txt --queries {C}/unknown.json --out {O}/r", BAD, "afile.txt is not a prepared lake"),
    ("run --lake {C}/badlake --queries {C}/unknown.json --out {O}/r", BAD, "is damaged"),
    ("run --lake {L} --queries {C}/answers.json --out {O}/r --as-of 99", BAD, "version 99 of"),
    ("run --lake {L} --queries {C}/answers.json --out {O}/r --as-of soon", BAD, "neither a version number nor"),
    ("run --lake {C}/listlake --queries {C}/unknown.json --out {O}/r", BAD, "is damaged"),
    ("run --lake {L} --queries {C}/unknown.json --out {C}/afile.txt", BAD, "afile.txt exists and is not a directory"),
    (f"{RUN} {{C}}/unknown.json --batch-size 0", BAD, "--batch-size"),
    (f"{RUN} {{C}}/unknown.json --batch-size " + "9" * 30, BAD, "--batch-size"),
    (f"{RUN} {{C}}/unknown.json --workers -2", BAD, "--workers"),
    (f"{RUN} {{C}}/unknown.json --memory-limit lots", BAD, "--memory-limit"),
    (f"{RUN} {{C}}/unknown.json --engine oracle", BAD, "--engine"),
    (f"{RUN} {{C}}/unknown.json --master local[2]", BAD, "--master applies to --engine spark only"),
    # baseline
    ("baseline --raw {C}/nope --queries {C}/unknown.json --out {O}/b", BAD, "nope"),
    ("baseline --raw {C}/afile.txt --queries {C}/unknown.json --out {O}/b", BAD, "afile.txt"),
    ("baseline --raw {C}/emptydir --queries {C}/unknown.json --out {O}/b", BAD, "emptydir"),
    ("baseline --raw {R} --queries {C}/deep_list.json --out {O}/b", BAD, "deep_list.json"),
    ("baseline --raw {R} --queries {C}/latin1.json --out {O}/b", BAD, "latin1.json"),
    ("baseline --raw {R} --queries {C}/adir --out {O}/b", BAD, "adir"),
    ("baseline --raw {R} --queries {C}/unknown.json --out {C}/afile.txt", BAD, "afile.txt"),
    ("baseline --raw {R} --queries {C}/badvalues.json --out {O}/b", FAILED, "not a valid DATE"),
    # compare
    ("compare --queries {C}/deep_object.json {C}/adir {C}/adir", BAD, "deep_object.json"),
    ("compare --queries {C}/unknown.json {C}/nope {C}/adir", BAD, "nope"),
    ("compare --queries {C}/unknown.json {C}/adir {C}/afile.txt", BAD, "afile.txt"),
    ("compare --queries {C}/utf16.json {C}/adir {C}/adir", BAD, "utf16.json"),
    ("compare --queries {C}/emptylist.json {C}/adir {C}/adir", BAD, "holds no queries"),
    ("compare --queries {C}/answers.json {C}/badanswers {C}/badanswers", BAD, "badanswers"),
    # explain
    ("explain --lake {L} --queries {C}/bignumber.json", BAD, "more than 4300 digits"),
    ("explain --lake {C}/nope --queries {C}/unknown.json", BAD, "nope is not a prepared lake"),
    ("explain --lake {C}/badlake --queries {C}/unknown.json", BAD, "is damaged"),
    ("explain --lake {L} --queries {C}/hugelimit.json", FAILED, "limit: must be a positive integer"),
    ("explain --lake {L} --queries {C}/wrongtypes.json", FAILED, "a query must be a JSON object, got NoneType"),
    # stats
    ("stats --lake {C}/nope", BAD, "nope"),
    ("stats --lake {C}/afile.txt", BAD, "afile.txt"),
    ("stats --lake {C}/badtelemetry --json {C}/adir", BAD, "adir"),
    # remediation
    ("verify --lake {C}/nope", BAD, "nope is not a prepared lake"),
    ("verify --lake {C}/badlake", BAD, "is damaged"),
    ("verify --lake {L} --views-only --lake-only", BAD, "not allowed with argument"),
    ("remediation --lake {C}/nope", BAD, "nope is not a prepared lake"),
    ("remediation --lake {C}/badlake", BAD, "is damaged"),
    ("remediation --lake {L} --samples -1", BAD, "--samples"),
    ("remediation --lake {L} --samples many", BAD, "--samples"),
    # vacuum
    ("vacuum --lake {C}/nope", BAD, "nope is not a prepared lake"),
    ("vacuum --lake {C}/badlake", BAD, "is damaged"),
    ("vacuum --lake {L} --retain soon", BAD, "--retain: retention 'soon' is not a duration"),
    ("vacuum --lake {L} --retain 1w", BAD, "use e.g. 7d, 12h, 30m or 0"),
    # guardrails
    ("guardrails --lake {C}/nope", BAD, "nope is not a prepared lake"),
    ("guardrails --lake {C}/listlake", BAD, "is damaged"),
    ("guardrails --lake {L} --only nope", BAD, "unknown category 'nope'"),
    ("guardrails --lake {L} --raw {C}/nope --only timezone", BAD, "nope"),
    ("guardrails --lake {L} --memory-limit lots", BAD, "--memory-limit"),
    # benchmark
    ("benchmark --raw {C}/nope --lake {L}", BAD, "nope"),
    ("benchmark --raw {R} --lake {C}/nope", BAD, "nope is not a prepared lake"),
    ("benchmark --raw {R} --lake {C}/badlake", BAD, "is damaged"),
    ("benchmark --raw {R} --lake {L} --workload {C}/deep_list.json", BAD, "deep_list.json"),
    ("benchmark --raw {R} --lake {L} --workload {C}/adir", BAD, "adir"),
    ("benchmark --raw {R} --lake {L} --repeats 0", BAD, "--repeats"),
    ("benchmark --raw {R} --lake {L} --rows -1", BAD, "--rows"),
    # bench: the benchmark's tools
    ("bench frobnicate", BAD, "invalid choice"),
    ("bench summary {C}/nope.json", BAD, "nope.json does not exist"),
    ("bench freshness measure --lake {C}/nope --raw {R} --part {C}/afile.txt --work {O}/w", BAD,
     "nope is not a prepared lake"),
    # no such command, no arguments
    ("frobnicate", BAD, "invalid choice"),
    ("run", BAD, "required"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    c = tmp_path_factory.mktemp("corpus")
    for name, content in QUERY_FILES.items():
        (c / name).write_bytes(content)
    for d in ("adir", "emptydir", "badlake", "listlake", "badanswers", "badtelemetry/_telemetry"):
        (c / d).mkdir(parents=True)
    (c / "afile.txt").write_text("not a directory\n")
    (c / "alienland").mkdir()
    (c / "alienland" / "alien.csv").write_text("a,b,c\n1,2,3\n")
    for name, text in (("badlake", "{not json"), ("listlake", "[1, 2]")):  # a table whose state file is damaged
        (c / name / "events" / "_delta_log").mkdir(parents=True)
        (c / name / "events" / "_delta_log" / "00000000000000000000.json").write_text("{}")
        (c / name / "_state").mkdir()
        (c / name / "_state" / "00000000000000000000.json").write_text(text)
    (c / "answers.json").write_text(json.dumps([COUNT]))
    (c / "badanswers" / "q1.csv").write_bytes(b"COUNT(*)\n\xff\xfe\n")
    (c / "badtelemetry" / "_telemetry" / "queries.jsonl").write_bytes(b"[" * 100_000 + b"\n\xff\n{\"route\": [1]}\n")
    return c


def test_the_corpus_covers_every_subcommand():
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 - argparse has no public list
    covered = {args.split()[0] for args, _, _ in CASES}
    assert commands <= covered, f"no bad-input case for {sorted(commands - covered)}"
    assert len(CASES) >= 100 and len(QUERY_FILES) >= 18


def test_exit_codes_are_documented_in_help():
    help_text = build_parser().format_help()
    for code in EXIT_CODES:
        assert f"\n  {code:>3}  " in help_text


def _in_process(argv: list[str]) -> tuple[int, str, str]:
    """`analytics ARGV` run by `main` in this process (what the command line does after its imports):
    exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    return code, out.getvalue(), err.getvalue()


def _subprocess(argv: list[str]) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "analytics", *argv], capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


# a few cases also run as a new process, as an analyst runs them: the interpreter, the entry point
# and real file descriptors; the rest run in this process (118 interpreters took ~150 s)
AS_PROCESS = {0, 60, len(CASES) - 1}


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c[0][:60] for c in CASES])
def test_bad_input_is_one_line_with_the_documented_exit_code(i, corpus, lake_dir, raw_dir, tmp_path):
    args, code, needle = CASES[i]
    argv = args.format(C=corpus, L=lake_dir, R=raw_dir, O=tmp_path).split()
    for run in (_in_process, _subprocess) if i in AS_PROCESS else (_in_process,):
        got, stdout, stderr = run(argv)
        assert "Traceback" not in stderr, stderr[-3000:]
        assert got == code, (run.__name__, got, stderr[-1000:], stdout[-1000:])
        if code == BAD:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 or lines[0].startswith("usage:"), stderr
            assert needle in lines[-1], lines[-1]
        else:
            assert needle in stdout, stdout[-2000:]
