"""Answering a file of queries: the safe batch runner (memory guard, shared scans, result cache)
and the query telemetry. Must not build views or check answers.
"""
