"""Answering a file of queries: the safe batch runner (memory guard, shared scans, result cache)
and the query telemetry. Must not build views or check answers.
"""

DEFAULT_BATCH_SIZE = 20  # queries per batch: stated here once, for the runner and the command line
