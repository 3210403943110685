"""`analytics ingest`: a landing directory's parts into the lake and the views, one part at a time.

Must not hold logic a test cannot reach through the package: the command is a thin call into
`views.ingest` (it only sets up logging and turns Ctrl-C into a stop between steps).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from analytics.cli.common import EXIT_INTERRUPTED, AddCommand, CliError, open_lake, out_dir
from analytics.core import args as argtypes
from analytics.core.memory import DEFAULT_MEMORY_LIMIT


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), got {text!r}") from None
    if not value >= 0 or value > 86_400:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 86400, got {text!r}")
    return value


def cmd_ingest(args: argparse.Namespace) -> int:
    from analytics.lake.table import latest_version
    from analytics.views.ingest import IngestBusy, ingest

    out_dir(args.lake, "--lake")
    if latest_version(Path(args.lake)) is not None:
        open_lake(args.lake)  # a damaged state: stop before adding to a lake of unknown state
    if not os.path.isdir(args.raw):
        raise CliError(f"--raw: {args.raw} does not exist or is not a directory")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    stop = threading.Event()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: now (the lake and views stay crash-safe)
        print("analytics ingest: stopping after the current step (Ctrl-C again to stop now)", file=sys.stderr)
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        counts = ingest(args.raw, args.lake, watch=args.watch, interval=args.interval, settle=args.settle,
                        jobs=args.jobs, memory_limit=args.memory_limit, stop=stop, wait=not args.no_wait)
    except IngestBusy as exc:
        raise CliError(str(exc)) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    resumed = counts["resumed"]
    print(f"ingested {counts['taken'] + len(resumed)} part(s)"
          f"{f' ({len(resumed)} finished for an interrupted run: ' + ', '.join(resumed) + ')' if resumed else ''}, "
          f"dropped {counts['dropped']}, refused {len(counts['refused'])}"
          f"{' (' + ', '.join(counts['refused']) + ')' if counts['refused'] else ''}; "
          f"{len(counts['failed_steps'])} step(s) failed; "
          f"{len(counts['failed_views'])} view(s) failed; compacted {len(counts['compacted'])}")
    for why in counts["failed_steps"]:
        print(f"FAILED {why}", file=sys.stderr)
    if stop.is_set():
        return EXIT_INTERRUPTED
    return 1 if counts["refused"] or counts["failed_views"] or counts["failed_steps"] else 0


def register(add: AddCommand) -> None:
    p = add("ingest", cmd_ingest, "ingest a landing directory part by part: prepare each new, replaced or deleted "
            "part, then refresh the views by delta; with --watch, keep watching it")
    p.description = (
        "Each complete part of --raw goes through prepare as one segment (remediation, quarantine, manifest "
        "commit), then the views are refreshed at the cost of that part (a delta per view; for a replaced or "
        "deleted part, the days it covered are recomputed), then the next part. A part is complete when its "
        "name ends in .csv (hidden names and other suffixes, e.g. NAME.csv.tmp, are never read: write under "
        "such a name and rename) and its size and mtime have not changed for --settle seconds. Parts absent "
        "from --raw are dropped from the lake, as with prepare. A part whose header is not this data set's is "
        "refused (one line naming it) and the others go on; bad rows are quarantined. A step that fails (e.g. a "
        "full disk) leaves the last committed state served and makes the exit code 1. One ingest runs on a lake at "
        "a time: a second one waits for the first (or exits 2 with --no-wait). Ctrl-C stops between "
        "steps; a kill at any point leaves the last committed state served, and the next run resumes.")
    p.add_argument("--raw", required=True, help="landing directory of raw CSV parts")
    p.add_argument("--lake", required=True, help="lake directory (created if missing)")
    p.add_argument("--watch", action="store_true", help="keep watching --raw (default: ingest what is there, exit)")
    p.add_argument("--interval", type=_seconds, default=1.0, help="seconds between scans of --raw (default 1)")
    p.add_argument("--settle", type=_seconds, default=1.0,
                   help="seconds a part must stay unchanged before it is read (default 1); 0 takes a *.csv at "
                        "first sight: only for writers that write under another name and rename")
    p.add_argument("--jobs", type=argtypes.threads, default=None, help="views refreshed in parallel (default: cores)")
    p.add_argument("--memory-limit", type=argtypes.memory_size, default=DEFAULT_MEMORY_LIMIT,
                   help=f"DuckDB memory for each step (default {DEFAULT_MEMORY_LIMIT})")
    p.add_argument("--no-wait", action="store_true",
                   help="exit at once (code 2) when another ingest is running on --lake (default: wait for it)")
    p.add_argument("--quiet", action="store_true", help="log only warnings and errors")
