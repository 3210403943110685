"""Named crash points: fault injection at every commit step, for tests that must hit the exact moment.

Owns the list of points and `crash_point(name)`: when the environment variable
`ANALYTICS_CRASH_AT` names the point (`NAME`, or `NAME@N` for its N-th passage in the process), the
process kills itself there with SIGKILL (no cleanup, no `finally`, as a power cut or the OOM killer
would). Production code calls `crash_point` at each
step between two durable states; tests set the variable, run a command, and check that the
previous state is served and the next run completes. Must not do anything else: with the
variable unset a call is one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "ANALYTICS_CRASH_AT"
# name -> the moment it stands for
POINTS: dict[str, str] = {
    "prepare:after-stage": "every new segment is written to staging; nothing is promoted",
    "prepare:mid-rename": "the first staged file is renamed into the lake; the others are not",
    "prepare:after-rename-before-commit": "every file is in place; the Delta log still names the old set",
    "commit:before-delta": "the commit's actions are ready; the Delta log has no new version",
    "commit:after-delta": "the Delta log has the new version; its state file is not written",
    "prepare:after-commit": "the new version and its state are committed; leftovers are not yet swept",
    "build:after-aggregate": "a view version is staged under a hidden name; nothing is checked or promoted",
    "build:after-rename-before-registry": "the new version file is in place; the registry still names the old one",
    "build:after-registry": "the registry names the new version; old versions are not yet swept",
    "ingest:after-take": "a landing part is linked into the lake's taken parts; prepare has not read it",
    "write:before-rename": "an atomic write's temporary file is complete and synced; the target is not renamed",
}
_passed: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here, at once, if `ANALYTICS_CRASH_AT` names this point (and this passage of it)."""
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; known: {', '.join(POINTS)}")
    wanted = os.environ.get(ENV)
    if wanted is None or not wanted.startswith(name):
        return
    at = wanted[len(name):]
    if at:
        if not at.startswith("@") or not at[1:].isdigit():
            return
        _passed[name] = _passed.get(name, 0) + 1
        if _passed[name] != int(at[1:]):
            return
    os.kill(os.getpid(), signal.SIGKILL)
