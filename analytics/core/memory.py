"""Memory sizes: the one default budget and how a size such as `512MB`, `4GiB` or `10%` is read.

Owns `DEFAULT_MEMORY_LIMIT` (every command's and function's default) and the parsing and
splitting of sizes as DuckDB reads them. Imports no DuckDB, so the command line can check a
`--memory-limit` before anything heavy loads.
"""
from __future__ import annotations

import re

import psutil

DEFAULT_MEMORY_LIMIT = "4GiB"
_UNITS = {"b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """Bytes in a DuckDB-style size: `512MB` (10^6), `4GiB` (2^30), `1.5GB`, `10%` of the machine's RAM."""
    t = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|[kmgt]i?b|[kmgt]|b)", t)
    if not m:
        raise ValueError(f"expected a memory size like 512MB, 4GB or 4GiB, got {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    size = int(psutil.virtual_memory().total * value / 100) if unit == "%" else int(value * _UNITS[unit])
    if size < 2**20:
        raise ValueError(f"memory size {text!r} is below 1MiB; DuckDB cannot run in that")
    return size


MIN_SHARE = 64 * 2**20  # below this a DuckDB connection spills on every aggregation


def split_memory(limit: str, parts: int, reserve: int = 0) -> str:
    """One of `parts` equal shares of the memory size `limit` after `reserve` bytes are set aside for
    what is held outside DuckDB, as a DuckDB size (whole MiB). A ValueError when a share would be
    below `MIN_SHARE`, naming the smallest limit that works."""
    share = (parse_size(limit) - reserve) // max(1, parts)
    if reserve and share < MIN_SHARE:
        least = -(-(reserve + MIN_SHARE * max(1, parts)) // 2**20)
        raise ValueError(f"memory limit {limit} is too small: {max(1, parts)} job(s) need at least {least}MiB "
                         f"({reserve // 2**20}MiB outside DuckDB + {MIN_SHARE // 2**20}MiB per job)")
    return f"{max(1, share // 2**20)}MiB"
