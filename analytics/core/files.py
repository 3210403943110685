"""Files as every step writes them: whole or not at all, and sizes as people read them.

Owns `write_atomic` (a temporary file beside the target, fsynced, renamed into place, so a
reader or a killed process never sees half a file) and `format_bytes`. Must not know what the
files hold.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from analytics.core.faults import crash_point


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path` and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would make results private to their writer
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        crash_point("write:before-rename")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_bytes(n: float | None) -> str:
    """`1536` -> `1.5 KiB`; None -> `-`."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
