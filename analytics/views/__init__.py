"""Materialized views: the catalog (what each view is and what it can answer), the build (staged,
checked, atomically promoted versions) and the registry. Must not route or answer queries.
"""
