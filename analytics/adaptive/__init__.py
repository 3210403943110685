"""Adaptive views and lake indexes: the workload chooses what to precompute, above the views.

`advice` generalises the telemetry's lake-routed query shapes into view and lake index candidates
and weighs them (the cost model, the budget); `indexes` proposes, builds and retires the lake
indexes; `build` is `analytics build --adaptive` (retire idle ones, build the best proposals with
the catalog's own `build_view`). What they choose is data in the adaptive catalog
(`views.adaptive_catalog`), which the views, the router and the workbench read. Must not route or
answer queries.
"""
