"""Materialized views: the catalog (what each view is and what it can answer), the build (staged,
checked, proved and atomically promoted versions), the registry, the adaptive views' advice and
the fast path answering from one view (`answer`). Must not route queries.
"""

DEFAULT_BUDGET = "2GiB"  # bytes of adaptive views and indexes: stated here once, for the build and the CLI
