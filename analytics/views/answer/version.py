"""A registered view version opened for the fast path: its serving copy, then its deltas'.

Owns `open_version`, shared by the serving workbench (a version opened on first use) and the proof a
version gives before it is registered (`views.proof`), so both answer from exactly the same
pieces. Opening memory-maps files and reads no data page. Must not check health or choose views.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from analytics.views.answer.fastpath import ArrowView
from analytics.views.batch_guard import ServedBatch
from analytics.views.catalog import ViewDef
from analytics.views.registry import ViewEntry
from analytics.views.serving_copy import open_serving_copy


def open_version(root: Path, view: ViewDef, entry: ViewEntry, *, checked: bool = True) -> ArrowView:
    """The fast path over registry `entry` of `view` (its files under `root`): the base's pieces per
    type, then each delta's; keys may then repeat across pieces, so every answer re-aggregates.
    With `checked` every file is opened now and its bytes checked whole (raising ChecksumError or
    ServingError); without, a type's files are opened on its first query and their batches
    checked as they are read, so those errors come from the answer (the workbench's way)."""
    vdir = (root / entry.file).parent
    opens, schema = open_serving_copy(vdir, entry.serving, entry.rows_by_type, checked=checked)
    openers = {t: [o] for t, o in opens.items()}
    for delta in entry.deltas:
        for t, more in open_serving_copy(vdir, delta.serving, delta.rows_by_type, checked=checked)[0].items():
            openers.setdefault(t, []).append(more)
    pieces = {t: partial(_concat, opens_of_type) for t, opens_of_type in openers.items()}
    view = ArrowView(view, pieces, schema, scaled=entry.serving["scaled"], unique_keys=not entry.deltas)
    if checked:
        view.slices  # noqa: B018 - every file opened (and checked whole) now
    return view


def _concat(opens: list[Callable[[], list[ServedBatch]]]) -> list[ServedBatch]:
    return [batch for open_type in opens for batch in open_type()]
