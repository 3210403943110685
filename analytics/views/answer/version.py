"""A registered view version opened for the fast path: its serving copy, then its deltas'.

Owns `open_version`, shared by the serving workbench (a version opened on first use) and the proof a
version gives before it is registered (`views.proof`), so both answer from exactly the same
pieces. Opening memory-maps files and reads no data page. Must not check health or choose views.
"""
from __future__ import annotations

from pathlib import Path

from analytics.views.answer.fastpath import ArrowView
from analytics.views.catalog import ViewDef
from analytics.views.registry import ViewEntry
from analytics.views.serving_copy import open_serving_copy


def open_version(root: Path, view: ViewDef, entry: ViewEntry, *, checked: bool = True) -> ArrowView:
    """The fast path over registry `entry` of `view` (its files under `root`): the base's pieces per
    type, then each delta's; keys may then repeat across pieces, so every answer re-aggregates.
    Raises `ServingError` when a serving copy does not match its entry (with `checked`, its bytes
    their checksums too; the workbench checks them per type on first use instead)."""
    vdir = (root / entry.file).parent
    pieces, schema = open_serving_copy(vdir, entry.serving, entry.rows_by_type, checked=checked)
    for delta in entry.deltas:
        for t, more in open_serving_copy(vdir, delta.serving, delta.rows_by_type, checked=checked)[0].items():
            pieces.setdefault(t, []).extend(more)
    return ArrowView(view, pieces, schema, scaled=entry.serving["scaled"], unique_keys=not entry.deltas)
