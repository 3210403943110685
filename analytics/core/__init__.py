"""Foundations every room stands on: DuckDB connections as the project needs them, SQL literal
quoting, atomic file writes and sizes. Must not know about queries, the lake or views.
"""
