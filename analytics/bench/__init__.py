"""The benchmark: every engine on every workload, checked against the baseline, timed warm and cold.

Modules, in the order a run uses them: `workloads` (the query files), `peers` and
`polars_engine` (the engines compared), `phases` (wall time and peak RSS of a phase), `run`
(`run_benchmark`: one loop over the engines), `cold` (each engine in new processes, one per
workload at a time, medians over `COLD_REPEATS`), `summary` (the result document's figures and the
targets), `result` (that document's type, `BenchmarkSummary`), `text` (the summary table), `figures` (notebook 03's tables and charts), `docs`
(docs/benchmark.md and README's table from the runs kept in docs/benchmarks/) and `__main__`
(`analytics bench phase | summary | sweep | docs`, the Makefile's helpers). Must
not be imported by the product: nothing below `bench` in the data flow depends on it.
"""

# new processes per engine and workload in the cold pass; its figures are their medians
COLD_REPEATS = 3
