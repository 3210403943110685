"""The benchmark: every engine on every workload, checked against the baseline, timed.
"""
