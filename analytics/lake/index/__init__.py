"""The lake's secondary indexes, in one place: their definitions, builds and usability (`store`:
per-type copies sorted by key, and the kind that is only a row-group filter) and the row-group key
filter itself (`keyfilter`). Must not choose what to index (that is `adaptive.indexes`) nor route.
"""
