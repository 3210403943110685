"""The benchmark's result document as a type: `BenchmarkSummary`, what `benchmark.json` holds.

Owns the document's fields, reading one (`from_json`, `read`: documents written before a field
existed still load) and writing one (`to_json`). Imported by the code that fills it (`summary`,
`run`) and the code that renders it (`text`, `figures`, `docs`, the benchmark notebook). Must not
compute, evaluate or render figures.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping


@dataclass
class BenchmarkSummary:
    """One benchmark run's result document, `benchmark.json`: `summarize`'s figures, then what the run
    adds (`checked`, `environment`, `started_at`, `seconds`) and the side benchmarks attached after it
    (`freshness`, `adaptive`: None when they did not run). Its fields are the document's keys in the
    order it is written; the nested figures stay JSON objects (their keys are documented where they
    are computed)."""

    rows: int
    all_match: bool
    view_hit_rate: float | None
    view_hit_rate_judges: float | None
    median_ms: dict[str, float | None]  # per engine, over every query it answered
    p95_ms: dict[str, float | None]
    total_ms: dict[str, float | None]
    speedup: dict[str, dict[str, Any]]  # per peer: the product over it (`_speedups`)
    engines: dict[str, dict[str, Any]]  # per engine: its statistics, label, peak RSS
    product: dict[str, Any]  # the product's own figures: routes, view/lake medians, routing overhead
    cold: dict[str, Any] | None  # the cold pass (`_cold_summary`); None when it did not run
    workloads: dict[str, dict[str, Any]]
    sizes: dict[str, Any]
    phases: dict[str, Any]
    repeats: int
    n_queries: int
    mismatches: list[dict[str, Any]]
    unsupported: list[dict[str, Any]]
    raw_dir: str | None
    lake_dir: str
    lake_version: int | str  # the Delta version it ran on (a string: a lake of the old format)
    target_rows: int
    queries: list[dict[str, Any]]  # per query (`_query_entry`)
    targets: list[dict[str, Any]] = field(default_factory=list)  # `evaluate_targets`
    checked: bool = True  # False: the answers were not compared with the baseline
    environment: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    seconds: float | None = None
    freshness: dict[str, Any] | None = None
    adaptive: dict[str, Any] | None = None
    # the disk-cold pass (`_cold_summary`, with the disk's `read_bandwidth`); None when it did not run
    cold_disk: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BenchmarkSummary:
        """A result document as written (keys this code does not know are left out)."""
        return cls(**{k: v for k, v in doc.items() if k in _SUMMARY_FIELDS})

    @classmethod
    def read(cls, path: str | os.PathLike) -> BenchmarkSummary:
        """The result document in the JSON file `path`."""
        return cls.from_json(json.loads(Path(path).read_text()))

    def cold_run(self, engine: str, workload: str, *, disk: bool = False) -> dict[str, Any]:
        """One cold engine's process figures for one workload, from the cold pass (or, with `disk`, the
        disk-cold pass); empty when that pass, engine or workload did not run."""
        summary = self.cold_disk if disk else self.cold
        return ((((summary or {}).get("engines") or {}).get(engine) or {}).get("workloads") or {}).get(workload) or {}

    def to_json(self) -> dict[str, Any]:
        """The document as written: every field, except side benchmarks and passes that did not run."""
        doc = asdict(self)
        for side in ("freshness", "adaptive", "cold_disk"):
            if doc[side] is None:
                del doc[side]
        return doc


_SUMMARY_FIELDS = {f.name for f in fields(BenchmarkSummary)}
