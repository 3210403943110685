"""The query language: the `events` columns (allow-list), the JSON grammar and its validation, the
SQL compiler, the result format and what "the same answer" means. Must not touch the lake or views.
"""
