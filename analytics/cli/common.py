"""What every `analytics` subcommand shares: one-line errors, exit codes, lake and path checks, progress.

Owns the exit codes (`EXIT_CODES`, printed in `--help`) and the helpers the command modules call.
Must not hold a command: each lives in its own module of `analytics.cli`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from analytics.core.files import write_atomic

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CODES: dict[int, str] = {EXIT_OK: "success", EXIT_FAILED: (
    "the command ran but something failed: a query errored (its run.json entry says why), a check or guardrail "
    "failed, answers differ, a view failed to build"), EXIT_BAD_INPUT: (
    "bad usage or bad input: an argument, a path, a query file, a raw file or a lake that cannot be used; one line "
    "on stderr names the file, where in it, and what is allowed"), EXIT_INTERNAL: (
    "an internal error (a bug) or out of memory: one line on stderr; ANALYTICS_TRACEBACK=1 shows the traceback"),
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)"}
TRACEBACK_ENV = "ANALYTICS_TRACEBACK"
# `add(name, func, help)`: registers a subcommand and returns its parser (built in `analytics.cli`)
AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def open_lake(path: str, as_of: str | None = None) -> None:
    """Refuse a `--lake` that is not a readable prepared lake (or has no version `as_of`) before any work starts."""
    from analytics.lake.state import Lake
    from analytics.lake.table import VersionUnavailable

    try:
        lake = Lake.open(path, as_of)
        _ = (lake.version, lake.segment_ids)  # the fields every command reads first: a damaged state fails here
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise CliError(first_line(exc)) from None
    except VersionUnavailable as exc:
        raise CliError(first_line(exc)) from None
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, OSError) as exc:
        raise CliError(f"the table state of {path} is damaged ({type(exc).__name__}: {first_line(exc)}); "
                       f"prepare the lake again into a new directory") from None


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def out_dir(path: str, flag: str = "--out") -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"{flag}: {path} exists and is not a directory")


def engine_from_args(args: argparse.Namespace) -> Any:
    """The engine `--engine` names: None for duckdb (each command's own default), else a started
    Spark engine (`--master`, `--spark-conf`); a Spark that cannot start is a one-line error."""
    if args.engine == "duckdb":
        for flag, value in (("--master", args.master), ("--spark-conf", args.spark_conf)):
            if value:
                raise CliError(f"{flag} applies to --engine spark only")
        return None
    conf = {}
    for item in args.spark_conf:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--spark-conf: expected KEY=VALUE, got {item!r}")
        conf[key.strip()] = value.strip()
    try:
        from analytics.engines import get_engine

        return get_engine(args.engine, master=args.master, conf=conf)
    except ImportError:
        raise CliError("--engine spark needs PySpark: pip install -e '.[spark]' (and Java 17+)") from None
    except Exception as exc:  # noqa: BLE001 - e.g. no Java, a master that does not answer
        raise CliError(f"cannot start Spark (--master {args.master or 'local[*]'}): {first_line(exc)}") from None


def add_engine_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                   help=f"where {what}: duckdb (this machine, the default) or spark (PySpark; docs/spark.md)")
    p.add_argument("--master", default=None, metavar="URL",
                   help="Spark master for --engine spark: local[*] (default), local[N], spark://HOST:7077, yarn, "
                        "k8s://...; under spark-submit, its --master applies")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting for --engine spark (repeatable), e.g. spark.executor.memory=8g")


def load_queries(path: str) -> list[Any]:
    from analytics.query.model import QueryError, load_queries

    try:
        return load_queries(path)
    except QueryError as exc:
        raise CliError(str(exc)) from None


@contextmanager
def progress_bar(total: int, what: str) -> Iterator[Callable[[int], None] | None]:
    """A tqdm bar on stderr when stderr is a terminal (never in a pipe or a log), as `progress(done)`."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="query", desc=what, file=sys.stderr, mininterval=0.5) as bar:
        yield lambda done: bar.update(done - bar.n)


def write_json(path: str, data: dict[str, Any], label: str) -> None:
    """Write a command's `--json` file atomically and say where it is."""
    try:
        write_atomic(path, json.dumps(data, indent=1, default=str))
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    print(f"{label} in {path}")


def print_run(report: dict[str, Any], out: str) -> None:
    for e in report["queries"]:
        if "error" in e:
            print(f"{e['id']}: ERROR {e['error']}")
        else:
            how = " (cache)" if e.get("cache") else (f" (shared scan {e['scan']})" if e.get("shared_scan") else "")
            print(f"{e['id']}: {e['rows']} rows in {e['ms']:.2f} ms via {e['route']}{how}")
    print(f"results in {out}/ ({report['errors']} error(s))")


def report_and_exit(args: argparse.Namespace, report: dict[str, Any], text: str, ok: bool) -> int:
    """Print a report, write it as JSON when asked; exit 0 when it holds, 1 when it does not."""
    print(text)
    if args.json:
        write_json(args.json, report, "report")
    return 0 if ok else 1
