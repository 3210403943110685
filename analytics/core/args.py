"""Command-line values as people type them: row counts (`15M`), bounded integers, fractions, memory sizes.

Owns the argparse types of `analytics.cli`: each accepts what its help says and otherwise raises
`argparse.ArgumentTypeError` with one line naming the value and the allowed range, so a huge,
negative or misspelt number is a usage error, never a traceback later on. Imports nothing heavy
(the command line checks its arguments before DuckDB loads). Must not know what the values mean.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

from analytics.core.memory import parse_size

MAX_ROWS = 10**10  # 40x the full data set; past this a typo, not a plan


def memory_size(text: str) -> str:
    """A `--memory-limit` value, checked as DuckDB will read it and kept as written."""
    try:
        parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`."""
    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", "")) if len(text) <= 40 else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low:,} to {high:,}, got {text[:40]!r}")
        return value
    return parse


positive_int = int_in(1, 1_000_000)
threads = int_in(1, 1024)


def fraction(text: str) -> float:
    """A fraction from 0 to 1 (NaN is not one)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text[:40]!r}")
    return value


def rows(text: str) -> int:
    """Row counts accept `15000000`, `15_000_000`, `15M`, `500k`."""
    t = text.strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(t[-1:], 1)
    try:
        value = int(float(t[:-1]) * mult) if mult > 1 else int(t[:40])
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected a row count like 15000000 or 15M, got {text[:40]!r}") from None
    if not 0 < value <= MAX_ROWS:
        raise argparse.ArgumentTypeError(f"expected a row count from 1 to {MAX_ROWS:,}, got {text[:40]!r}")
    return value
